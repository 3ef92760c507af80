//! The `opscore` binary against the local stack (in-process, embedded store, port 0) over real
//! HTTP: every command's happy path, exit codes by error class, `--json` output, and
//! `workflow run --watch` with a fake AgentKit whose simulated agent reports state the way the
//! reference agent does.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use opscore_core::config::{Config, Secret};
use opscore_local::{Options, Stack};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const KEY: &str = "cli-test-key";
const SECRET: &str = "cli-test-secret";
const AGENT: &str = "cli-agent-1";
/// A sample-workflow run takes well under a second; this only bounds a hang.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(90);

struct Env {
    stack: Stack,
    dir: PathBuf,
}

impl Env {
    /// The stack with explicit keys; `agentkit` is where it dispatches (default: a closed port).
    async fn start(name: &str, agentkit: Option<String>) -> Env {
        let config = Config {
            api_keys: vec![Secret::new(KEY)],
            webhook_secrets: vec![Secret::new(SECRET)],
            agentkit_api_url: Some(agentkit.unwrap_or_else(|| format!("http://{}", closed_port()))),
            json_logs: false,
            ..Config::default()
        };
        let stack = Stack::start(Options {
            port: 0,
            store: opscore_local::StoreChoice::Ephemeral,
            table: "opscore-cli-test".into(),
            sweep_every: Duration::from_millis(200),
            config,
        })
        .await
        .expect("the local stack starts");
        let dir =
            PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("cli-{name}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        Env { stack, dir }
    }

    fn url(&self) -> String {
        self.stack.url()
    }

    fn file(&self, name: &str, content: &str) -> String {
        let p = self.dir.join(name);
        std::fs::write(&p, content).unwrap();
        p.to_string_lossy().into_owned()
    }

    /// Runs `opscore ARGS` with the stack's URL and key in the environment.
    async fn run(&self, args: &[&str]) -> Out {
        self.run_with(
            args,
            &[
                ("OPSCORE_API_URL", Some(self.url())),
                ("OPSCORE_API_KEY", Some(KEY.into())),
            ],
        )
        .await
    }

    /// Runs `opscore ARGS` with exactly the given OPSCORE_* variables (`None` removes one).
    async fn run_with(&self, args: &[&str], vars: &[(&str, Option<String>)]) -> Out {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_opscore"));
        cmd.args(args)
            .env_remove("OPSCORE_API_URL")
            .env_remove("OPSCORE_API_KEY")
            .env_remove("OPSCORE_TIMEOUT")
            .env("OPSCORE_WATCH_INTERVAL_MS", "100")
            .stdin(std::process::Stdio::null());
        for (k, v) in vars {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        let shown = format!("opscore {}", args.join(" "));
        // Blocking wait on a worker thread, so the in-process stack keeps serving meanwhile.
        let child = cmd
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("the opscore binary runs");
        let pid = child.id();
        let mut waiting = tokio::task::spawn_blocking(move || child.wait_with_output());
        let output = match tokio::time::timeout(COMMAND_TIMEOUT, &mut waiting).await {
            Ok(r) => r.unwrap().unwrap(),
            Err(_) => {
                // Only the child this test started, by its id; then show what it had printed.
                let _ = std::process::Command::new("kill").arg(pid.to_string()).status();
                let o = waiting.await.unwrap().unwrap();
                panic!(
                    "`{shown}` did not finish within {COMMAND_TIMEOUT:?}\n--- stdout\n{}\n--- stderr\n{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                );
            }
        };
        Out {
            cmd: shown,
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Registers an agent through the signed notify webhook, as AgentKit does.
    async fn register(&self, agent_id: &str, contact: &str) {
        let body = json!({
            "event_type": "REGISTER",
            "agent_details": {
                "agentId": agent_id,
                "agentName": "cli-test-agent",
                "version": "1.0",
                "capabilities": ["test_capability", "another_capability"],
                "contactEndpoint": contact,
                "metadata": {"team": "ops"}
            }
        })
        .to_string();
        let ts = chrono::Utc::now().timestamp().to_string();
        let sig = opscore_http::auth::sign(SECRET, &ts, body.as_bytes());
        let resp = reqwest::Client::new()
            .post(format!("{}/v1/opscore/internal/agent/notify", self.url()))
            .header("content-type", "application/json")
            .header("X-AgentKit-Timestamp", ts)
            .header("X-AgentKit-Signature", sig)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200, "{}", resp.text().await.unwrap_or_default());
    }

    async fn stop(self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        self.stack.stop().await;
    }
}

fn closed_port() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

#[derive(Debug)]
struct Out {
    cmd: String,
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    #[track_caller]
    fn expect(&self, code: i32) -> &Self {
        assert_eq!(
            self.code, code,
            "`{}` exited {} (wanted {code})\n--- stdout\n{}\n--- stderr\n{}",
            self.cmd, self.code, self.stdout, self.stderr
        );
        self
    }

    #[track_caller]
    fn ok(&self) -> &Self {
        self.expect(0)
    }

    #[track_caller]
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("`{}` printed no JSON ({e}):\n{}", self.cmd, self.stdout))
    }

    #[track_caller]
    fn says(&self, text: &str) -> &Self {
        assert!(
            self.stdout.contains(text),
            "`{}`: stdout lacks {text:?}:\n{}\n--- stderr\n{}",
            self.cmd,
            self.stdout,
            self.stderr
        );
        self
    }

    #[track_caller]
    fn complains(&self, text: &str) -> &Self {
        assert!(
            self.stderr.contains(text),
            "`{}`: stderr lacks {text:?}:\n{}",
            self.cmd,
            self.stderr
        );
        self
    }

    /// A person-facing error: no panic, no Debug output, nothing on stdout.
    #[track_caller]
    fn clean_error(&self) -> &Self {
        assert!(!self.stderr.contains("panicked"), "{}", self.stderr);
        assert!(!self.stderr.contains("RUST_BACKTRACE"), "{}", self.stderr);
        for debug in [
            "Api(",
            "Validation {",
            "NotFound {",
            "Network {",
            "Unauthorized {",
            "Some(",
        ] {
            assert!(!self.stderr.contains(debug), "Debug output in:\n{}", self.stderr);
        }
        assert!(self.stdout.trim().is_empty(), "stdout on error:\n{}", self.stdout);
        self
    }
}

const WORKFLOW_YAML: &str = "\
id: cli_yaml_wf
name: CLI YAML workflow
description: created by the CLI tests
version: \"1.0\"
tasks:
  - taskId: fetch
    name: Fetch
    parameters:
      url: https://example.com
    nextTaskId: store
  - taskId: store
    name: Store
";

const WORKFLOW_JSON: &str = r#"{"id":"cli_json_wf","name":"CLI JSON workflow","version":"2.0","tasks":[{"taskId":"only","name":"Only step","parameters":{"n":1}}]}"#;

const WORKFLOW_YML: &str = "id: cli_yml_wf\nname: CLI yml workflow\ntasks:\n  - taskId: one\n    name: One\n";

/// Several problems at once: an empty name, a dangling nextTaskId, a duplicate taskId.
const INVALID_YAML: &str = "\
id: bad_wf
name: \"\"
tasks:
  - taskId: a
    name: A
    nextTaskId: nowhere
  - taskId: a
    name: Again
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_needs_no_key_and_prints_json() {
    let env = Env::start("health", None).await;
    env.run_with(&["health"], &[("OPSCORE_API_URL", Some(env.url()))])
        .await
        .ok()
        .says("ok");
    let out = env.run(&["health", "--json"]).await;
    assert_eq!(out.ok().json(), json!({"status": "ok"}));
    // The flag works as well as the variable, and before or after the command.
    let url = env.url();
    env.run_with(&["--api-url", &url, "--json", "health"], &[]).await.ok();
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_commands_happy_path() {
    let env = Env::start("agent", None).await;
    env.register(AGENT, "http://127.0.0.1:9/task").await;

    env.run(&["agent", "report", AGENT, "idle", "--details", r#"{"note":"ready"}"#])
        .await
        .ok()
        .says(&format!("Agent {AGENT} is now idle"));
    let r = env.run(&["agent", "report", AGENT, "idle", "--json"]).await.ok().json();
    assert_eq!(r["applied"], true);
    assert_eq!(r["status"], "success");

    env.run(&["agent", "list"])
        .await
        .ok()
        .says(AGENT)
        .says("idle")
        .says("AGENT");
    env.run(&["agent", "list", "--state", "idle"]).await.ok().says(AGENT);
    env.run(&["agent", "list", "--state", "active"])
        .await
        .ok()
        .says("No agents in state active.");
    let list = env.run(&["agent", "list", "--json"]).await.ok().json();
    assert_eq!(list["items"][0]["agentId"], AGENT);
    assert_eq!(list["items"][0]["state"]["state"], "idle");
    assert!(list["nextCursor"].is_null());

    env.run(&["agent", "get", AGENT])
        .await
        .ok()
        .says("cli-test-agent")
        .says("test_capability, another_capability")
        .says("idle");
    let a = env.run(&["agent", "get", AGENT, "--json"]).await.ok().json();
    assert_eq!(a["agentId"], AGENT);
    assert_eq!(a["agentName"], "cli-test-agent");
    assert_eq!(a["metadata"]["team"], "ops");

    env.run(&["agent", "state", AGENT]).await.ok().says("idle");
    let s = env.run(&["agent", "state", AGENT, "--json"]).await.ok().json();
    assert_eq!(s["agentId"], AGENT);
    assert_eq!(s["state"], "idle");

    env.run(&["agent", "report", AGENT, "active", "--details", r#"{"step":2}"#])
        .await
        .ok();
    env.run(&["agent", "history", AGENT])
        .await
        .ok()
        .says("TIMESTAMP")
        .says("active")
        .says(r#"{"note":"ready"}"#);
    let h = env
        .run(&["agent", "history", AGENT, "--limit", "2", "--json"])
        .await
        .ok()
        .json();
    let items = h["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{h}");
    assert_eq!(items[0]["state"], "active", "newest first");
    assert!(!h["nextCursor"].is_null(), "a third report is left: {h}");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflow_commands_happy_path() {
    let env = Env::start("workflow", None).await;
    let yaml = env.file("flow.yaml", WORKFLOW_YAML);
    let json_file = env.file("flow.json", WORKFLOW_JSON);
    let yml = env.file("flow.yml", WORKFLOW_YML);

    env.run(&["workflow", "create", &yaml])
        .await
        .ok()
        .says("Created workflow cli_yaml_wf version 1.0 (2 tasks).");
    env.run(&["workflow", "create", &yaml])
        .await
        .ok()
        .says("already stored with the same content");
    let w = env.run(&["workflow", "create", &json_file, "--json"]).await.ok().json();
    assert_eq!(w["id"], "cli_json_wf");
    assert_eq!(w["version"], "2.0");
    assert!(w["createdAt"].is_string());
    env.run(&["workflow", "create", &yml]).await.ok().says("cli_yml_wf");

    env.run(&["workflow", "list"])
        .await
        .ok()
        .says("sample_workflow_id")
        .says("cli_yaml_wf")
        .says("cli_json_wf")
        .says("cli_yml_wf");
    let l = env.run(&["workflow", "list", "--json"]).await.ok().json();
    let ids: Vec<&str> = l["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["id"].as_str().unwrap())
        .collect();
    for id in ["sample_workflow_id", "cli_yaml_wf", "cli_json_wf", "cli_yml_wf"] {
        assert!(ids.contains(&id), "{ids:?}");
    }

    env.run(&["workflow", "get", "cli_yaml_wf"])
        .await
        .ok()
        .says("fetch (entry)")
        .says("store")
        .says("https://example.com");
    let g = env
        .run(&["workflow", "get", "sample_workflow_id", "--json"])
        .await
        .ok()
        .json();
    assert_eq!(g["tasks"].as_array().unwrap().len(), 2);
    assert_eq!(g["tasks"][0]["nextTaskId"], "step_2");

    // Same id and version, different content: a conflict (5).
    let changed = env.file("changed.yaml", &WORKFLOW_YAML.replace("name: Store", "name: Store it"));
    env.run(&["workflow", "create", &changed])
        .await
        .expect(5)
        .clean_error()
        .complains("conflict")
        .complains("give the change a new version");
    // Not a definition file, or no file: usage (2).
    let txt = env.file("flow.txt", WORKFLOW_JSON);
    env.run(&["workflow", "create", &txt])
        .await
        .expect(2)
        .clean_error()
        .complains(".json, .yaml or .yml");
    let missing = env.dir.join("missing.yaml");
    env.run(&["workflow", "create", missing.to_str().unwrap()])
        .await
        .expect(2)
        .clean_error()
        .complains("cannot read");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_commands_happy_path() {
    // AgentKit is a closed port here: sessions start and wait; nothing completes.
    let env = Env::start("session", None).await;
    env.register(AGENT, "http://127.0.0.1:9/task").await;
    env.run(&["agent", "report", AGENT, "idle"]).await.ok();

    env.run(&["workflow", "run", AGENT, "--id", "sample_workflow_id"])
        .await
        .ok()
        .says("Started workflow sample_workflow_id")
        .says("opscore session watch");
    let t = env
        .run(&["workflow", "run", AGENT, "--id", "sample_workflow_id", "--json"])
        .await
        .ok()
        .json();
    let sid = t["sessionId"].as_str().unwrap().to_owned();
    assert_eq!(t["workflowId"], "sample_workflow_id");

    env.run(&["session", "get", &sid])
        .await
        .ok()
        .says(&sid)
        .says("sample_workflow_id version 1.0")
        .says("step_1")
        .says("step_2");
    let d = env.run(&["session", "get", &sid, "--json"]).await.ok().json();
    assert_eq!(d["sessionId"], sid.as_str());
    assert_eq!(d["agentId"], AGENT);
    assert_eq!(d["tasks"].as_array().unwrap().len(), 2);

    env.run(&["session", "list", AGENT])
        .await
        .ok()
        .says(&sid)
        .says("SESSION");
    let l = env.run(&["session", "list", AGENT, "--json"]).await.ok().json();
    assert_eq!(l["items"].as_array().unwrap().len(), 2, "{l}");
    // Without an agent: the latest sessions of every agent, by status.
    env.run(&["session", "list"]).await.ok().says(&sid).says("AGENT");
    let completed = env
        .run(&["session", "list", "--status", "completed", "--json"])
        .await
        .ok()
        .json();
    assert!(
        completed["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["status"] == "completed"),
        "{completed}"
    );
    env.run(&["session", "list", "--status", "done"])
        .await
        .expect(2)
        .complains("--status must be one of");
    env.run(&["session", "list", AGENT, "--status", "failed"])
        .await
        .expect(2)
        .complains("leave out AGENT");

    env.run(&["session", "cancel", &sid])
        .await
        .ok()
        .says("Cancelled session");
    let d = env.run(&["session", "get", &sid, "--json"]).await.ok().json();
    assert_eq!(d["status"], "cancelled");
    assert_eq!(d["error"]["code"], "cancelled");
    let cancelled = env
        .run(&["session", "list", "--status", "cancelled", "--json"])
        .await
        .ok()
        .json();
    assert_eq!(cancelled["items"][0]["sessionId"], sid.as_str(), "{cancelled}");
    // An ended session cannot be cancelled: a conflict (5).
    env.run(&["session", "cancel", &sid])
        .await
        .expect(5)
        .clean_error()
        .complains("already ended");
    // Watching an ended session prints its end at once; cancelled exits 1.
    env.run(&["session", "watch", &sid])
        .await
        .expect(1)
        .says("was cancelled");

    // An inline definition from a file, with a payload.
    let yaml = env.file("inline.yaml", WORKFLOW_YAML);
    let t = env
        .run(&[
            "workflow",
            "run",
            AGENT,
            "--file",
            &yaml,
            "--payload",
            r#"{"x":1}"#,
            "--json",
        ])
        .await
        .ok()
        .json();
    assert_eq!(t["workflowId"], "cli_yaml_wf");
    let sid2 = t["sessionId"].as_str().unwrap().to_owned();
    let c = env.run(&["session", "cancel", &sid2, "--json"]).await.ok().json();
    assert_eq!(c["status"], "cancelled");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_or_missing_key_exits_3() {
    let env = Env::start("auth", None).await;
    let url = Some(env.url());
    let bad = env
        .run_with(
            &["agent", "list"],
            &[
                ("OPSCORE_API_URL", url.clone()),
                ("OPSCORE_API_KEY", Some("wrong".into())),
            ],
        )
        .await;
    bad.expect(3)
        .clean_error()
        .complains("the API refused the API key")
        .complains("OPSCORE_API_KEY");
    let bad_flag = env.run(&["--api-key", "wrong", "workflow", "list"]).await;
    bad_flag.expect(3).clean_error();
    let none = env
        .run_with(&["session", "list", AGENT], &[("OPSCORE_API_URL", url.clone())])
        .await;
    none.expect(3)
        .clean_error()
        .complains("no API key")
        .complains("--api-key");
    let j = env
        .run_with(
            &["agent", "list", "--json"],
            &[("OPSCORE_API_URL", url), ("OPSCORE_API_KEY", Some("wrong".into()))],
        )
        .await;
    j.expect(3);
    let err: Value = serde_json::from_str(j.stderr.trim()).expect("--json errors are JSON on stderr");
    assert_eq!(err["code"], "unauthorized");
    assert!(err["detail"].as_str().unwrap().contains("refused"));
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_ids_exit_4() {
    let env = Env::start("unknown", None).await;
    env.register(AGENT, "http://127.0.0.1:9/task").await;
    let nobody_session = uuid::Uuid::new_v4().to_string();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["agent", "get", "nobody"], "Agent not found: nobody"),
        (vec!["agent", "state", "nobody"], "Agent not found"),
        (vec!["agent", "history", "nobody"], "Agent not found"),
        (vec!["agent", "report", "nobody", "idle"], "Agent not found"),
        (
            vec!["workflow", "get", "no_such_workflow"],
            "Workflow definition not found",
        ),
        (
            vec!["workflow", "run", AGENT, "--id", "no_such_workflow"],
            "Workflow definition not found",
        ),
        (
            vec!["workflow", "run", "nobody", "--id", "sample_workflow_id"],
            "not found",
        ),
        (vec!["session", "get", &nobody_session], "Session not found"),
        (vec!["session", "cancel", &nobody_session], "Session not found"),
        (vec!["session", "watch", &nobody_session], "Session not found"),
        (vec!["session", "list", "nobody"], "Agent not found"),
    ];
    for (args, msg) in cases {
        env.run(&args).await.expect(4).clean_error().complains(msg);
    }
    // A base URL without its stage path gives 404 too, with a hint about --api-url.
    let prefixed = format!("{}/prod", env.url());
    env.run_with(
        &["agent", "list"],
        &[
            ("OPSCORE_API_URL", Some(prefixed)),
            ("OPSCORE_API_KEY", Some(KEY.into())),
        ],
    )
    .await
    .expect(4)
    .clean_error()
    .complains("no such route")
    .complains("--api-url");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_workflow_file_exits_5_listing_every_problem() {
    let env = Env::start("invalid", None).await;
    env.register(AGENT, "http://127.0.0.1:9/task").await;
    let bad = env.file("bad.yaml", INVALID_YAML);

    let out = env.run(&["workflow", "create", &bad]).await;
    out.expect(5).clean_error().complains("workflow definition is invalid");
    let listed: Vec<&str> = out.stderr.lines().filter(|l| l.starts_with("  - ")).collect();
    assert!(listed.len() >= 3, "every problem on its own line:\n{}", out.stderr);
    out.complains("name: must not be empty")
        .complains("tasks[0].nextTaskId")
        .complains("nowhere")
        .complains("duplicate taskId");

    // --json: the API's error body on stderr, with every problem.
    let j = env.run(&["workflow", "create", &bad, "--json"]).await;
    j.expect(5);
    let err: Value = serde_json::from_str(j.stderr.trim()).unwrap();
    assert_eq!(err["code"], "validation_failed");
    assert_eq!(err["errors"].as_array().unwrap().len(), listed.len());
    assert!(err["errors"][0]["field"].is_string() && err["errors"][0]["message"].is_string());

    // The same file run inline is checked before anything is sent, with the same list.
    let run = env.run(&["workflow", "run", AGENT, "--file", &bad]).await;
    run.expect(5)
        .clean_error()
        .complains("is not a valid workflow definition");
    assert_eq!(
        run.stderr.lines().filter(|l| l.starts_with("  - ")).count(),
        listed.len()
    );

    // Not even YAML.
    let garbage = env.file("garbage.yml", "tasks: [unclosed\n  - : :");
    env.run(&["workflow", "create", &garbage]).await.expect(5).clean_error();
    // A JSON body the API refuses for its state value.
    env.run(&["agent", "report", AGENT, " idle "])
        .await
        .expect(5)
        .clean_error()
        .complains("state");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_and_network_errors() {
    let env = Env::start("usage", None).await;
    // Missing --id/--file: clap's usage error.
    env.run(&["workflow", "run", AGENT]).await.expect(2);
    env.run(&["agent", "nonsense"]).await.expect(2);
    env.run(&["agent", "report", AGENT, "idle", "--details", "[1]"])
        .await
        .expect(2)
        .clean_error()
        .complains("--details must be a JSON object");
    env.run(&["workflow", "run", AGENT, "--id", "sample_workflow_id", "--payload", "{"])
        .await
        .expect(2)
        .clean_error()
        .complains("--payload is not valid JSON");
    env.run(&["--api-url", "ftp://example.com", "agent", "list"])
        .await
        .expect(2)
        .clean_error()
        .complains("http:// or https://");
    // Nobody listening: 6, naming the URL.
    let down = format!("http://{}", closed_port());
    env.run_with(
        &["agent", "list"],
        &[
            ("OPSCORE_API_URL", Some(down.clone())),
            ("OPSCORE_API_KEY", Some(KEY.into())),
        ],
    )
    .await
    .expect(6)
    .clean_error()
    .complains(&format!("cannot reach the API at {down}"))
    .complains("hint:");
    env.run_with(&["--json", "health"], &[("OPSCORE_API_URL", Some(down))])
        .await
        .expect(6)
        .complains("\"code\":\"network\"");
    env.stop().await;
}

// ----- workflow run --watch with a fake AgentKit and a simulated agent -----

/// AgentKit as Ops-Core sees it: `POST /v1/agents/{id}/run` answers 202 and the agent then
/// reports `active` and `idle` naming the task, like the reference agent.
struct FakeAgentKit {
    url: String,
    stack: Mutex<Option<String>>,
    dispatches: Mutex<Vec<Value>>,
}

impl FakeAgentKit {
    async fn start() -> Arc<FakeAgentKit> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let fake = Arc::new(FakeAgentKit {
            url: format!("http://{}", listener.local_addr().unwrap()),
            stack: Mutex::new(None),
            dispatches: Mutex::new(Vec::new()),
        });
        let f = fake.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let f = f.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                        let f = f.clone();
                        async move { Ok::<_, std::convert::Infallible>(f.handle(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        fake
    }

    async fn handle(self: Arc<Self>, req: hyper::Request<Incoming>) -> hyper::Response<Full<Bytes>> {
        let path = req.uri().path().to_owned();
        let agent_id = path
            .strip_prefix("/v1/agents/")
            .and_then(|p| p.strip_suffix("/run"))
            .map(str::to_owned);
        let (Some(agent_id), true) = (agent_id, req.method() == hyper::Method::POST) else {
            return respond(404, json!({"detail": "not found"}));
        };
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let Ok(body) = serde_json::from_slice::<Value>(&body) else {
            return respond(400, json!({"detail": "bad JSON"}));
        };
        let task_id = body["opscore_task_id"].as_str().unwrap_or_default().to_owned();
        self.dispatches.lock().unwrap().push(body);
        let stack = self.stack.lock().unwrap().clone().expect("stack URL set");
        let agent = agent_id.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(150)).await;
            report(&stack, &agent, "active", &task_id).await;
            tokio::time::sleep(Duration::from_millis(150)).await;
            report(&stack, &agent, "idle", &task_id).await;
        });
        respond(
            202,
            json!({
                "status": "success",
                "message": format!("Task accepted for agent {agent_id}. Dispatch scheduled."),
                "data": {"agentId": agent_id, "dispatch_status": "scheduled"},
                "error_code": null
            }),
        )
    }
}

fn respond(status: u16, body: Value) -> hyper::Response<Full<Bytes>> {
    let mut r = hyper::Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
    r.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

/// The simulated agent's state report, as the reference agent sends it.
async fn report(stack: &str, agent_id: &str, state: &str, task_id: &str) {
    let body = json!({
        "agentId": agent_id,
        "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, false),
        "state": state,
        "details": {"opscore_task_id": task_id}
    });
    let resp = reqwest::Client::new()
        .post(format!("{stack}/v1/opscore/agent/{agent_id}/state"))
        .bearer_auth(KEY)
        .json(&body)
        .send()
        .await
        .expect("the stack answers the agent");
    assert_eq!(resp.status().as_u16(), 202, "{}", resp.text().await.unwrap_or_default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflow_run_watch_completes_the_sample_with_a_fake_agent() {
    let agentkit = FakeAgentKit::start().await;
    let env = Env::start("watch", Some(agentkit.url.clone())).await;
    *agentkit.stack.lock().unwrap() = Some(env.url());
    env.register(AGENT, &format!("{}/task", agentkit.url)).await;
    env.run(&["agent", "report", AGENT, "idle"]).await.ok();

    let out = env
        .run(&["workflow", "run", AGENT, "--id", "sample_workflow_id", "--watch"])
        .await;
    println!("--- transcript\n{}", out.stdout);
    out.ok()
        .says("Started workflow sample_workflow_id")
        .says("step_1")
        .says("step_2")
        .says("succeeded")
        .says("session completed")
        .says("completed in");
    // One line per change: step_1 is seen succeeding exactly once.
    let step1_done = out
        .stdout
        .lines()
        .filter(|l| l.contains("step_1") && l.contains("succeeded"))
        .count();
    assert_eq!(step1_done, 1, "{}", out.stdout);
    assert!(out.stdout.contains("attempt 1/4"), "{}", out.stdout);

    let sid = out
        .stdout
        .lines()
        .find_map(|l| {
            l.split("session ")
                .nth(1)
                .filter(|s| s.len() >= 36)
                .map(|s| s[..36].to_owned())
        })
        .expect("the session id is printed");
    let d = env.run(&["session", "get", &sid, "--json"]).await.ok().json();
    assert_eq!(d["status"], "completed");
    assert_eq!(d["result"]["finalTaskId"], "step_2");
    for t in d["tasks"].as_array().unwrap() {
        assert_eq!(t["status"], "succeeded", "{t}");
        assert_eq!(t["attempt"], 1, "{t}");
    }
    let sent = agentkit.dispatches.lock().unwrap().clone();
    let names: Vec<&str> = sent.iter().map(|d| d["task_name"].as_str().unwrap()).collect();
    assert_eq!(names, ["First Step", "Second Step"]);

    // Watching the ended session prints its end at once.
    env.run(&["session", "watch", &sid]).await.ok().says("completed");

    // Once more for scripts: --watch --json prints the final session as the API shapes it.
    let j = env
        .run(&[
            "workflow",
            "run",
            AGENT,
            "--id",
            "sample_workflow_id",
            "--watch",
            "--json",
        ])
        .await
        .ok()
        .json();
    assert_eq!(j["status"], "completed");
    assert_eq!(j["workflowId"], "sample_workflow_id");
    assert_eq!(j["tasks"].as_array().unwrap().len(), 2);
    env.stop().await;
}
