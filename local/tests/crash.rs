//! The default store under crashes, on the real `opscore-local` binary as a child process:
//! SIGKILL at random points under a mixed load (state reports, workflow triggers, task
//! completions), restart on the same data file, and check that
//! - every state report that got a 2xx is in the agent's history, and its current state is at
//!   least as new as the newest acknowledged report;
//! - every trigger that got a 2xx has its session, and every session ends `completed`, once;
//! - no task attempt reaches AgentKit twice, and a task gets a second attempt only when its
//!   previous attempt's dispatch was in flight at a kill (its lease then expires and it is retried);
//!
//! plus: a second process on the same file is refused, naming the holder; SIGTERM exits 0.
//!
//! AgentKit and the agents are fakes that follow the contract: `/run` answers 202 and the agent
//! reports `active`, then `idle` naming the task, each report retried until it gets a 2xx (an
//! agent whose Ops-Core is restarting keeps trying).

use opscore_tests::fake::{JsonServer, hmac_hex, python_compact_json};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const KEY: &str = "crash-test-key";
const SECRET: &str = "crash-test-secret";
const WORKERS: usize = 4;
const REPORTERS: usize = 3;
const KILLS: usize = 6;

struct Opscore {
    child: Child,
    url: String,
}

fn start(data: &Path, port: u16, agentkit: &str) -> Opscore {
    let mut child = Command::new(env!("CARGO_BIN_EXE_opscore-local"))
        .args(["--port", &port.to_string(), "--data"])
        .arg(data)
        .env("OPSCORE_API_KEY", KEY)
        .env("OPSCORE_WEBHOOK_SECRET", SECRET)
        .env("AGENTKIT_API_URL", agentkit)
        // A dispatch cut off by a kill is retried once its lease expires: keep that short.
        .env("OPSCORE_LEASE_SECONDS", "2")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("opscore-local starts");
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(url) = line.strip_prefix("READY ") {
                let _ = tx.send(url.to_owned());
            }
        }
    });
    let url = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("opscore-local prints READY within 30 s");
    Opscore { child, url }
}

/// A failing test must not leave its child running.
impl Drop for Opscore {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Opscore {
    fn kill(self) {
        drop(self); // SIGKILL
    }

    fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().expect("kill runs");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "opscore-local did not stop within 30 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// What the fake AgentKit saw: every attempt sent to `/run`, with when it arrived.
#[derive(Default)]
struct Seen {
    runs: Vec<(String, Instant)>,
}

/// AgentKit's `/run` and the agents behind it. `opscore` is where the agents report (it changes
/// port never; the process behind it changes).
async fn agentkit(opscore: Arc<Mutex<String>>, seen: Arc<Mutex<Seen>>) -> JsonServer {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("client");
    JsonServer::start(Arc::new(
        move |method: http::Method, path: String, body: bytes::Bytes| {
            let (opscore, seen, http) = (opscore.clone(), seen.clone(), http.clone());
            Box::pin(async move {
                let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
                let ("POST", ["v1", "agents", agent, "run"]) = (method.as_str(), segs.as_slice()) else {
                    return (404u16, json!({"detail": "Not Found"}));
                };
                let task: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let dispatch = task["opscore_task_id"].as_str().unwrap_or_default().to_owned();
                seen.lock().unwrap().runs.push((dispatch.clone(), Instant::now()));
                let agent = agent.to_string();
                let answer = json!({"status": "success", "data": {"agentId": agent, "dispatch_status": "scheduled"}});
                tokio::spawn(async move {
                    let url = opscore.lock().unwrap().clone();
                    report_until_acked(&http, &url, &agent, "active", json!({"opscore_task_id": dispatch})).await;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    let details = json!({"opscore_task_id": dispatch, "result": "done"});
                    report_until_acked(&http, &url, &agent, "idle", details).await;
                });
                (202, answer)
            }) as futures::future::BoxFuture<'static, (u16, Value)>
        },
    ))
    .await
}

fn now_ts() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.6f+00:00").to_string()
}

async fn report(http: &reqwest::Client, url: &str, agent: &str, state: &str, ts: &str, details: Value) -> bool {
    http.post(format!("{url}/v1/opscore/agent/{agent}/state"))
        .bearer_auth(KEY)
        .json(&json!({"agentId": agent, "timestamp": ts, "state": state, "details": details}))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

/// An agent whose Ops-Core is restarting keeps its report and tries again (for up to a minute).
async fn report_until_acked(http: &reqwest::Client, url: &str, agent: &str, state: &str, details: Value) {
    let ts = now_ts();
    for _ in 0..600 {
        if report(http, url, agent, state, &ts, details.clone()).await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{agent}'s {state} report was never acknowledged");
}

async fn register(http: &reqwest::Client, url: &str, agent: &str) {
    let details = json!({"agentId": agent, "agentName": agent, "version": "1.0", "capabilities": ["c"],
        "contactEndpoint": "http://127.0.0.1:9/task", "metadata": {}});
    let raw = python_compact_json(&json!({"event_type": "REGISTER", "agent_details": details}));
    let ts = chrono::Utc::now().timestamp().to_string();
    let status = http
        .post(format!("{url}/v1/opscore/internal/agent/notify"))
        .header("content-type", "application/json")
        .header("X-AgentKit-Timestamp", &ts)
        .header("X-AgentKit-Signature", hmac_hex(SECRET, &ts, raw.as_bytes()))
        .body(raw)
        .send()
        .await
        .expect("webhook answers")
        .status();
    assert!(status.is_success(), "registering {agent}: {status}");
}

async fn get(http: &reqwest::Client, url: &str) -> Value {
    let r = http.get(url).bearer_auth(KEY).send().await.expect("answers");
    assert!(r.status().is_success(), "GET {url}: {}", r.status());
    r.json().await.expect("JSON")
}

/// What the load got acknowledged: sessions triggered, and each reporter's acknowledged timestamps.
#[derive(Default)]
struct Acked {
    sessions: Vec<String>,
    reports: HashMap<String, Vec<String>>,
}

/// Triggers and reports until `stop`; records every 2xx.
async fn load(url: String, acked: Arc<Mutex<Acked>>, stop: tokio::sync::watch::Receiver<bool>) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("client");
    let mut jobs = Vec::new();
    for w in 0..WORKERS {
        let (http, url, acked, stop) = (http.clone(), url.clone(), acked.clone(), stop.clone());
        jobs.push(tokio::spawn(async move {
            while !*stop.borrow() {
                let r = http
                    .post(format!("{url}/v1/opscore/agent/worker-{w}/workflow"))
                    .bearer_auth(KEY)
                    .json(&json!({"workflowDefinitionId": "crash-wf"}))
                    .send()
                    .await;
                if let Ok(r) = r
                    && r.status().is_success()
                    && let Ok(v) = r.json::<Value>().await
                {
                    acked
                        .lock()
                        .unwrap()
                        .sessions
                        .push(v["sessionId"].as_str().unwrap().to_owned());
                }
                tokio::time::sleep(Duration::from_millis(30 + fastrand::u64(0..40))).await;
            }
        }));
    }
    for r in 0..REPORTERS {
        let (http, url, acked, stop) = (http.clone(), url.clone(), acked.clone(), stop.clone());
        jobs.push(tokio::spawn(async move {
            let agent = format!("reporter-{r}");
            while !*stop.borrow() {
                let ts = now_ts();
                let state = if fastrand::bool() { "idle" } else { "active" };
                if report(&http, &url, &agent, state, &ts, json!({"n": ts})).await {
                    acked.lock().unwrap().reports.entry(agent.clone()).or_default().push(ts);
                }
                tokio::time::sleep(Duration::from_millis(fastrand::u64(0..5))).await;
            }
        }));
    }
    for j in jobs {
        let _ = j.await;
    }
}

fn data_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("opscore-crash-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_work_survives_sigkill_at_random_points() {
    let dir = data_dir();
    let data = dir.join("opscore.db");
    let port = opscore_tests::free_port();
    let url = format!("http://127.0.0.1:{port}");
    let seen = Arc::new(Mutex::new(Seen::default()));
    let ak = agentkit(Arc::new(Mutex::new(url.clone())), seen.clone()).await;
    let http = reqwest::Client::new();

    let first = start(&data, port, &ak.url());
    for id in (0..WORKERS)
        .map(|w| format!("worker-{w}"))
        .chain((0..REPORTERS).map(|r| format!("reporter-{r}")))
    {
        register(&http, &url, &id).await;
    }
    let wf = json!({"id": "crash-wf", "name": "crash", "version": "1",
        "retryPolicy": {"maxRetries": 20, "baseDelaySeconds": 0.05, "maxDelaySeconds": 0.2},
        "tasks": [{"taskId": "a", "name": "A", "parameters": {}, "nextTaskId": "b"},
                  {"taskId": "b", "name": "B", "parameters": {}, "nextTaskId": null}]});
    let r = http
        .post(format!("{url}/v1/opscore/workflows"))
        .bearer_auth(KEY)
        .json(&wf)
        .send()
        .await
        .expect("answers");
    assert!(
        r.status().is_success(),
        "workflow: {}",
        r.text().await.unwrap_or_default()
    );
    for w in 0..WORKERS {
        assert!(report(&http, &url, &format!("worker-{w}"), "idle", &now_ts(), json!({})).await);
    }

    let acked = Arc::new(Mutex::new(Acked::default()));
    let (stop_load, stop_rx) = tokio::sync::watch::channel(false);
    let loader = tokio::spawn(load(url.clone(), acked.clone(), stop_rx));

    let mut kills = Vec::new();
    let mut running = first;
    for _ in 0..KILLS {
        tokio::time::sleep(Duration::from_millis(fastrand::u64(300..1500))).await;
        running.kill();
        kills.push(Instant::now());
        tokio::time::sleep(Duration::from_millis(fastrand::u64(0..200))).await;
        running = start(&data, port, &ak.url());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = stop_load.send(true);
    loader.await.expect("load ends");

    let acked = std::mem::take(&mut *acked.lock().unwrap());
    assert!(
        acked.sessions.len() >= 10,
        "the load got too little through to mean anything: {} sessions",
        acked.sessions.len()
    );

    // Every acknowledged session ends, completed (retries are allowed; failing is not).
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut statuses: BTreeMap<String, usize> = BTreeMap::new();
    for sid in &acked.sessions {
        let v = loop {
            let v = get(&http, &format!("{url}/v1/opscore/sessions/{sid}")).await;
            if matches!(v["status"].as_str(), Some("completed" | "failed" | "cancelled")) {
                break v;
            }
            assert!(Instant::now() < deadline, "session {sid} did not end: {v:#}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        *statuses.entry(v["status"].as_str().unwrap().to_owned()).or_default() += 1;
        assert_eq!(v["status"], "completed", "session {sid}: {v:#}");
    }

    // Every acknowledged report is in history; the current state is at least as new.
    let mut reports = 0;
    for (agent, stamps) in &acked.reports {
        let mut history = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut u = format!("{url}/v1/opscore/agent/{agent}/state/history?limit=100");
            if let Some(c) = &cursor {
                u.push_str(&format!("&cursor={c}"));
            }
            let page = get(&http, &u).await;
            for e in page["items"].as_array().expect("items") {
                history.push(e["details"]["n"].as_str().unwrap_or_default().to_owned());
            }
            match page["nextCursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => break,
            }
        }
        for ts in stamps {
            assert!(
                history.contains(ts),
                "{agent}: acknowledged report {ts} is not in history"
            );
            reports += 1;
        }
        let state = get(&http, &format!("{url}/v1/opscore/agent/{agent}/state")).await;
        let newest = stamps.iter().max().expect("some reports");
        let current = state["details"]["n"].as_str().unwrap_or_default();
        assert!(
            current >= newest.as_str(),
            "{agent}: current {current} older than acked {newest}"
        );
    }

    // No attempt reached AgentKit twice; a second attempt only after a kill cut the first short.
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    let mut per_attempt: HashMap<&str, usize> = HashMap::new();
    for (d, _) in &seen.runs {
        *per_attempt.entry(d.as_str()).or_default() += 1;
    }
    let twice: Vec<_> = per_attempt.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "attempts dispatched twice: {twice:?}");
    let mut per_task: HashMap<String, Vec<Instant>> = HashMap::new();
    for (d, at) in &seen.runs {
        // Dispatch ids are `{session}:{task}:{attempt}`.
        let task = d.rsplit_once(':').map(|(t, _)| t.to_owned()).unwrap_or_default();
        per_task.entry(task).or_default().push(*at);
    }
    let mut retried = 0;
    for (task, mut times) in per_task {
        times.sort();
        for pair in times.windows(2) {
            retried += 1;
            // The earlier attempt was cut short: a kill came between it and the retry.
            assert!(
                kills.iter().any(|k| *k >= pair[0] && *k <= pair[1]),
                "{task} was retried without a kill in between"
            );
        }
    }
    eprintln!(
        "crash test: {KILLS} kills, {} sessions acknowledged ({statuses:?}), {reports} reports acknowledged, \
         {} attempts sent, {retried} retried after a kill",
        acked.sessions.len(),
        seen.runs.len()
    );

    // A graceful stop: SIGTERM ends the process with exit 0.
    let status = running.terminate();
    assert!(status.success(), "SIGTERM exit status: {status:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_on_the_same_file_is_refused_and_sigterm_exits_0() {
    let dir = data_dir();
    let data = dir.join("opscore.db");
    let first = start(&data, opscore_tests::free_port(), "http://127.0.0.1:9");
    let second = Command::new(env!("CARGO_BIN_EXE_opscore-local"))
        .args(["--port", &opscore_tests::free_port().to_string(), "--data"])
        .arg(&data)
        .env("OPSCORE_API_KEY", KEY)
        .env("OPSCORE_WEBHOOK_SECRET", SECRET)
        .output()
        .expect("runs");
    assert!(
        !second.status.success(),
        "a second process on the same file must not start"
    );
    let err = String::from_utf8_lossy(&second.stderr);
    let pid = first.child.id().to_string();
    assert!(
        err.contains("in use by another Ops-Core process") && err.contains(&pid),
        "the refusal names the holder (pid {pid}): {err}"
    );
    let status = first.terminate();
    assert!(status.success(), "SIGTERM exit status: {status:?}");
    // Once the holder has stopped, the file opens again, with what was written kept.
    let again = start(&data, opscore_tests::free_port(), "http://127.0.0.1:9");
    let http = reqwest::Client::new();
    let wf = get(&http, &format!("{}/v1/opscore/workflows/sample_workflow_id", again.url)).await;
    assert_eq!(wf["id"], "sample_workflow_id", "{wf}");
    assert!(again.terminate().success());
    let _ = std::fs::remove_dir_all(&dir);
}
