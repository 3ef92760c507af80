//! The real release binaries under the Lambda Runtime Interface Emulator (`aws-lambda-rie`,
//! shipped inside the SAM CLI package), exactly as Lambda runs a `provided.al2023` function,
//! against Amazon DynamoDB Local:
//! - the state API and notify webhook replay every fixture of `events/manifest.json`;
//! - the runner gets the table's real stream records as a Lambda DynamoDB event (and the same
//!   batch again: no second dispatch), then a scheduled event.
//!
//! - the state API reads its keys from Secrets Manager (moto's server) and picks up a rotation
//!   without a restart.
//!
//! It prints the figures of the packaging issue: binary sizes, init durations, RSS after 1,000
//! invocations. Run by `.ci/run` on the bootstraps `sam build` made
//! (`OPSCORE_SAM_BUILD_DIR=.aws-sam/build`), or by hand after `cargo build --release`:
//! `cargo test -p opscore-tests --test lambda_rie -- --ignored --nocapture`.

use opscore_tests::ddb_local::DynamoDbLocal;
use opscore_tests::fake::FakeAgentKit;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

struct Function {
    name: &'static str,
    port: u16,
    _child: Child,
    log: PathBuf,
    http: reqwest::Client,
}

impl Function {
    async fn start(name: &'static str, bin: &Path, rie: &Path, env: &[(&str, String)], logs: &Path) -> Self {
        let (port, api_port) = (opscore_tests::free_port(), opscore_tests::free_port());
        let log = logs.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(rie)
            .arg("--runtime-interface-emulator-address")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--runtime-api-address")
            .arg(format!("127.0.0.1:{api_port}"))
            .arg(bin)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("AWS_LAMBDA_FUNCTION_NAME", name)
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
            .env("OPSCORE_LOG_FORMAT", "json")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("start {} under {}: {e}", bin.display(), rie.display()));
        let f = Self {
            name,
            port,
            _child: child,
            log,
            http: reqwest::Client::new(),
        };
        // The emulator listens at once; the function's process starts on the first invoke.
        let until = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(Instant::now() < until, "{name}: emulator did not listen");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        f
    }

    async fn invoke(&self, event: &Value) -> Value {
        let url = format!(
            "http://127.0.0.1:{}/2015-03-31/functions/function/invocations",
            self.port
        );
        let resp = self
            .http
            .post(url)
            .json(event)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{}: invoke: {e}", self.name));
        let text = resp.text().await.unwrap();
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("{}: not JSON: {text}", self.name))
    }

    /// The pid of the function's own process (the emulator's child, found by its executable).
    fn function_pid(&self, bin: &Path) -> Option<u32> {
        let bin = std::fs::canonicalize(bin).ok()?;
        std::fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
            (std::fs::read_link(entry.path().join("exe")).ok().as_deref() == Some(bin.as_path()))
                .then(|| entry.file_name().to_str()?.parse().ok())
                .flatten()
        })
    }

    /// RSS of the function's own process (the emulator's child, found by its executable).
    fn function_rss_kb(&self, bin: &Path) -> Option<u64> {
        let bin = std::fs::canonicalize(bin).ok()?;
        for entry in std::fs::read_dir("/proc").ok()?.flatten() {
            if std::fs::read_link(entry.path().join("exe")).ok().as_deref() == Some(bin.as_path()) {
                let status = std::fs::read_to_string(entry.path().join("status")).ok()?;
                return status
                    .lines()
                    .find(|l| l.starts_with("VmRSS:"))?
                    .split_whitespace()
                    .nth(1)?
                    .parse()
                    .ok();
            }
        }
        None
    }

    /// The CloudWatch embedded-metric-format lines the function wrote (JSON with `_aws`).
    fn emf_lines(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v.get("_aws").is_some())
            .collect()
    }

    /// The value of `metric` on this function's EMF lines whose dimensions are `dims`.
    fn emf_value(&self, metric: &str, dims: &[(&str, &str)]) -> Option<Value> {
        self.emf_lines().into_iter().find_map(|l| {
            let d = &l["_aws"]["CloudWatchMetrics"][0];
            let named = d["Metrics"].as_array()?.iter().any(|m| m["Name"] == metric);
            let set: Vec<&str> = d["Dimensions"][0]
                .as_array()?
                .iter()
                .filter_map(Value::as_str)
                .collect();
            let same = set.len() == dims.len() && dims.iter().all(|(k, v)| set.contains(k) && l[*k] == *v);
            (d["Namespace"] == "OpsCore" && named && same).then(|| l[metric].clone())
        })
    }

    fn init_lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("INIT") || l.contains("Init Duration"))
            .map(str::to_owned)
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs `cargo build --release` and tools/bin/aws-lambda-rie; .ci/run runs it with --ignored"]
async fn release_binaries_under_the_runtime_emulator() {
    let release = std::env::var("OPSCORE_RELEASE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root().join("target/release"));
    let rie = std::env::var("OPSCORE_RIE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root().join("tools/bin/aws-lambda-rie"));
    assert!(rie.exists(), "{} is missing: run tools/install-sam.sh", rie.display());
    // `sam build` output (`.aws-sam/build/<Function>/bootstrap`) when given, else cargo's release folder.
    let bins = match std::env::var("OPSCORE_SAM_BUILD_DIR").map(PathBuf::from) {
        Ok(dir) => ["StateApiFunction", "NotifyWebhookFunction", "WorkflowRunnerFunction"]
            .map(|f| dir.join(f).join("bootstrap")),
        Err(_) => ["state-api", "notify-webhook", "workflow-runner"].map(|b| release.join(b)),
    };
    for b in &bins {
        assert!(b.exists(), "{} is missing: run cargo build --release", b.display());
    }

    let ddb = DynamoDbLocal::shared().await;
    let (_client, table) = ddb.fresh_table().await;
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("events/manifest.json")).unwrap()).unwrap();
    let agentkit = FakeAgentKit::start("http://127.0.0.1:9/unused".into(), "unused".into()).await;
    agentkit.know("af8e59ab-6b62-47d1-b0af-fcb520de8640", "http://127.0.0.1:9/task");
    let env = vec![
        ("OPSCORE_TABLE_NAME", table.clone()),
        ("OPSCORE_DDB_ENDPOINT", ddb.endpoint.clone()),
        ("AWS_ACCESS_KEY_ID", "local".into()),
        ("AWS_SECRET_ACCESS_KEY", "local".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("OPSCORE_API_KEY", manifest["apiKey"].as_str().unwrap().into()),
        (
            "OPSCORE_WEBHOOK_SECRET",
            manifest["webhookSecret"].as_str().unwrap().into(),
        ),
        // The fixtures carry AgentKit's captured signatures from 2026-11-23.
        ("OPSCORE_WEBHOOK_TOLERANCE_SECONDS", "315360000".into()),
        ("AGENTKIT_API_URL", agentkit.url()),
    ];
    let logs = std::env::temp_dir().join(format!("opscore-rie-{}", std::process::id()));
    std::fs::create_dir_all(&logs).unwrap();
    let api = Function::start("state-api", &bins[0], &rie, &env, &logs).await;
    let webhook = Function::start("notify-webhook", &bins[1], &rie, &env, &logs).await;
    let runner = Function::start("workflow-runner", &bins[2], &rie, &env, &logs).await;
    let mut tail = opscore_dynamo::StreamTail::start(
        opscore_dynamo::streams_client_for_endpoint(Some(&ddb.endpoint)).await,
        &table,
    )
    .await
    .unwrap();

    // 1. Every HTTP fixture, in order, through the real binaries.
    let mut session_id = None;
    for inv in manifest["invocations"].as_array().unwrap() {
        let name = inv["fixture"].as_str().unwrap();
        let f = match inv["function"].as_str().unwrap() {
            "StateApiFunction" => &api,
            "NotifyWebhookFunction" => &webhook,
            other => panic!("{other}"),
        };
        let event: Value =
            serde_json::from_str(&std::fs::read_to_string(root().join("events").join(name)).unwrap()).unwrap();
        let out = f.invoke(&event).await;
        assert_eq!(out["statusCode"], inv["status"], "{name}: {out}");
        let body: Value = serde_json::from_str(out["body"].as_str().unwrap_or("null")).unwrap_or(Value::Null);
        if name == "trigger.json" {
            session_id = body["sessionId"].as_str().map(str::to_owned);
        }
    }
    let session_id = session_id.expect("trigger.json returned a session");

    // 2. The runner, fed the table's own stream records in Lambda's event format.
    let records = tail.poll_records().await.unwrap();
    assert!(!records.is_empty());
    let batch = opscore_dynamo::lambda_event(&records, tail.stream_arn());
    if std::env::var_os("OPSCORE_WRITE_FIXTURES").is_some() {
        std::fs::write(
            root().join("events/runner-stream.json"),
            serde_json::to_string_pretty(&batch).unwrap() + "\n",
        )
        .unwrap();
    }
    let out = runner.invoke(&batch).await;
    assert_eq!(out, json!({"batchItemFailures": []}), "{out}");
    let runs = agentkit.runs();
    assert_eq!(runs.len(), 1, "the first task was dispatched once: {runs:?}");
    assert_eq!(runs[0]["opscore_session_id"], session_id);
    assert_eq!(runs[0]["task_name"], "First Step");
    assert_eq!(
        runs[0]["payload"],
        json!({"message": "hello"}),
        "initialPayload goes to the entry task"
    );
    assert!(runs[0]["opscore_task_id"].as_str().unwrap().starts_with(&session_id));
    // The same batch again (Lambda redelivers after a failure): no second dispatch.
    assert_eq!(runner.invoke(&batch).await, json!({"batchItemFailures": []}));
    // What the dispatch itself wrote (claim, acceptance) changes nothing more.
    let more = tail.poll_records().await.unwrap();
    assert_eq!(
        runner
            .invoke(&opscore_dynamo::lambda_event(&more, tail.stream_arn()))
            .await,
        json!({"batchItemFailures": []})
    );
    assert_eq!(agentkit.runs().len(), 1);
    let session = api
        .invoke(&json!({"version":"2.0","routeKey":"$default","rawPath":format!("/v1/opscore/sessions/{session_id}"),"rawQueryString":"",
            "headers":{"authorization":format!("Bearer {}", manifest["apiKey"].as_str().unwrap())},
            "requestContext":{"http":{"method":"GET","path":format!("/v1/opscore/sessions/{session_id}"),"protocol":"HTTP/1.1","sourceIp":"127.0.0.1","userAgent":"t"},
            "requestId":"rie-session","routeKey":"$default","stage":"$default","accountId":"1","apiId":"a","domainName":"d","domainPrefix":"d","time":"t","timeEpoch":0},
            "isBase64Encoded":false}))
        .await;
    let session: Value = serde_json::from_str(session["body"].as_str().unwrap()).unwrap();
    assert_eq!(session["status"], "running", "{session}");
    assert_eq!(session["tasks"][0]["status"], "dispatched", "{session}");

    // The figures, as EMF lines on the functions' stdout (issue 15): the refused deliveries of
    // the fixtures by reason, the runner's dispatch and trigger → dispatch latency by workflow;
    // no session id on any line.
    assert_eq!(
        webhook.emf_value("webhook_deliveries_refused", &[("reason", "unauthorized")]),
        Some(json!(1)),
        "notify-bad-signature.json and notify-unsigned.json, one invocation each: {:#?}",
        webhook.emf_lines()
    );
    let workflow = session["workflowId"].as_str().unwrap();
    assert_eq!(
        runner.emf_value("tasks_dispatched", &[("workflow_id", workflow)]),
        Some(json!(1)),
        "{:#?}",
        runner.emf_lines()
    );
    assert!(
        runner
            .emf_value("trigger_to_dispatch_ms", &[("workflow_id", workflow)])
            .is_some()
    );
    for f in [&api, &webhook, &runner] {
        for l in f.emf_lines() {
            assert!(!l.to_string().contains(&session_id), "{}: {l}", f.name);
        }
    }

    // 3. The schedule: a sweep.
    let schedule: Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("events/runner-schedule.json")).unwrap()).unwrap();
    let out = runner.invoke(&schedule).await;
    assert!(out["examined"].is_u64(), "{out}");

    // 4. Figures (printed, not asserted: speed belongs to benchmarks).
    let health: Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("events/health.json")).unwrap()).unwrap();
    let t = Instant::now();
    for _ in 0..1000 {
        assert_eq!(api.invoke(&health).await["statusCode"], 200);
    }
    let per_invoke = t.elapsed() / 1000;
    println!("\nRelease binaries under aws-lambda-rie:");
    for (f, bin) in [(&api, &bins[0]), (&webhook, &bins[1]), (&runner, &bins[2])] {
        let size = std::fs::metadata(bin).unwrap().len();
        println!(
            "  {:<16} {:>5.1} MB stripped; RSS now {:?} kB",
            f.name,
            size as f64 / 1e6,
            f.function_rss_kb(bin)
        );
        for l in f.init_lines() {
            println!("    {l}");
        }
    }
    println!(
        "  state-api: 1,000 health invocations, {per_invoke:?} each through the emulator; RSS after them: {:?} kB",
        api.function_rss_kb(&bins[0])
    );
    let _ = std::fs::remove_dir_all(&logs);
}

/// The release state-api bootstrap under the emulator, its keys in a Secrets Manager secret (moto's
/// server): the key of the cold start is accepted; after `PutSecretValue` "new,old" and the refresh
/// interval (1 s here) the new key is accepted too, without a restart of the function's process;
/// after "new" the old key is refused. Polled, not timed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs `cargo build --release`, tools/bin/aws-lambda-rie and moto's server; .ci/run runs it with --ignored"]
async fn the_release_state_api_picks_up_a_rotated_secret_without_restart() {
    let rie = std::env::var("OPSCORE_RIE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root().join("tools/bin/aws-lambda-rie"));
    assert!(rie.exists(), "{} is missing: run tools/install-sam.sh", rie.display());
    let bin = match std::env::var("OPSCORE_SAM_BUILD_DIR").map(PathBuf::from) {
        Ok(dir) => dir.join("StateApiFunction/bootstrap"),
        Err(_) => std::env::var("OPSCORE_RELEASE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| root().join("target/release"))
            .join("state-api"),
    };
    assert!(bin.exists(), "{} is missing: run cargo build --release", bin.display());

    let moto = opscore_tests::moto::MotoServer::start().await;
    let sm = opscore_lambda::SecretsManagerSource::client_for_endpoint(Some(&moto.endpoint)).await;
    let (old, new) = ("rie-old-key-0123456789abcdef", "rie-new-key-fedcba9876543210");
    let put = async |text: &str| {
        sm.put_secret_value()
            .secret_id("opscore/rie/api-keys")
            .secret_string(text)
            .send()
            .await
            .expect("PutSecretValue");
    };
    sm.create_secret()
        .name("opscore/rie/api-keys")
        .secret_string(old)
        .send()
        .await
        .expect("CreateSecret");
    let ddb = DynamoDbLocal::shared().await;
    let (_client, table) = ddb.fresh_table().await;
    let env = vec![
        ("OPSCORE_TABLE_NAME", table),
        ("OPSCORE_DDB_ENDPOINT", ddb.endpoint.clone()),
        ("AWS_ACCESS_KEY_ID", "local".into()),
        ("AWS_SECRET_ACCESS_KEY", "local".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("OPSCORE_API_KEY_SECRET_ID", "opscore/rie/api-keys".into()),
        ("OPSCORE_SECRETS_ENDPOINT", moto.endpoint.clone()),
        ("OPSCORE_SECRET_REFRESH_SECONDS", "1".into()),
    ];
    let logs = std::env::temp_dir().join(format!("opscore-rie-secrets-{}", std::process::id()));
    std::fs::create_dir_all(&logs).unwrap();
    let api = Function::start("state-api", &bin, &rie, &env, &logs).await;
    let list = |key: &str| {
        json!({"version":"2.0","routeKey":"$default","rawPath":"/v1/opscore/agents","rawQueryString":"",
            "headers":{"authorization":format!("Bearer {key}")},
            "requestContext":{"http":{"method":"GET","path":"/v1/opscore/agents","protocol":"HTTP/1.1","sourceIp":"127.0.0.1","userAgent":"t"},
            "requestId":"rie-secrets","routeKey":"$default","stage":"$default","accountId":"1","apiId":"a","domainName":"d","domainPrefix":"d","time":"t","timeEpoch":0},
            "isBase64Encoded":false})
    };
    let status = async |key: &str| api.invoke(&list(key)).await["statusCode"].clone();
    let until = async |key: &str, want: u16| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while status(key).await != want {
            assert!(
                Instant::now() < deadline,
                "{key} never answered {want}; log: {}",
                std::fs::read_to_string(&api.log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    assert_eq!(status(old).await, 200, "the key read at cold start");
    assert_eq!(status(new).await, 401);
    let pid = api.function_pid(&bin);
    put(&format!("{new},{old}")).await;
    until(new, 200).await;
    assert_eq!(status(old).await, 200, "the old key is accepted during the switch");
    put(new).await;
    until(old, 401).await;
    assert_eq!(status(new).await, 200);
    assert_eq!(
        api.function_pid(&bin),
        pid,
        "the same function process throughout: no restart"
    );
    assert!(pid.is_some());
    let _ = std::fs::remove_dir_all(&logs);
}
