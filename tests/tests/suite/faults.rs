//! Fault injection: failing neighbours must never cost a write or leave half of one.
//!
//! - DynamoDB Local stopped mid-run (process killed), then frozen (SIGSTOP): the API answers 503
//!   with a JSON error and `Retry-After`, writes nothing half, and recovers by itself once the
//!   store is back (same port, same `-dbPath`). The time a request takes to fail is printed.
//! - A store that fails between a webhook's delivery record and its effect: the redelivery is
//!   not swallowed as a duplicate.
//! - AgentKit slower than the dispatch timeout: the attempt fails and is retried, not lost; a late
//!   report about the slow attempt cannot complete the retry.
//! - The webhook freshness window over HTTP: skew of 299 s accepted, 301 s refused (both ways).
//!
//! Needs Java 17+ and `npm ci --prefix tools/dynamodb-local` for the first test.

use async_trait::async_trait;
use opscore_agentkit::AgentKitClient;
use opscore_core::agent::{Agent, AgentDetails, HistoryEntry, StateName, StateReport};
use opscore_core::app::{App, DefinitionSource, Settings};
use opscore_core::config::{Config, Secret};
use opscore_core::ids::{AgentId, SessionId, WorkflowId, WorkflowVersion};
use opscore_core::memory::InMemoryStore;
use opscore_core::session::{Session, SessionStatus};
use opscore_core::store::*;
use opscore_core::task::{TaskInstance, TaskKey, TaskStatus};
use opscore_core::time::{Clock, ManualClock, Timestamp};
use opscore_core::workflow::WorkflowDefinition;
use opscore_http::auth::sign;
use opscore_http::{Surface, router};
use opscore_local::{Options, Stack, StoreChoice};
use opscore_tests::call::call as call_router;
use opscore_tests::fake::{FakeAgentKit, RunAnswer, agent_details};
use serde_json::{Value, json};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const KEY: &str = "faults-key";
const SECRET: &str = "faults-secret";

fn config(agentkit: Option<String>) -> Config {
    Config {
        api_keys: vec![Secret::new(KEY)],
        webhook_secrets: vec![Secret::new(SECRET)],
        // Nothing listens on port 9: dispatches fail fast and are retried.
        agentkit_api_url: Some(agentkit.unwrap_or_else(|| "http://127.0.0.1:9".into())),
        ..Config::default()
    }
}

fn register_body(agent: &str) -> String {
    json!({"event_type": "REGISTER", "agent_details": {"agentId": agent, "agentName": "f", "version": "1",
           "contactEndpoint": "http://127.0.0.1:9/task"}})
    .to_string()
}

async fn post_webhook(http: &reqwest::Client, url: &str, body: &str, ts: i64) -> (u16, Value) {
    let ts = ts.to_string();
    let r = http
        .post(format!("{url}/v1/opscore/internal/agent/notify"))
        .header("content-type", "application/json")
        .header("x-agentkit-timestamp", &ts)
        .header("x-agentkit-signature", sign(SECRET, &ts, body.as_bytes()))
        .body(body.to_owned())
        .send()
        .await
        .expect("webhook request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

struct Answer {
    status: u16,
    retry_after: Option<String>,
    body: Value,
    took: Duration,
}

async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    body: Option<Value>,
    headers: &[(&str, &str)],
) -> Answer {
    let started = Instant::now();
    let mut rb = http.request(method, url).bearer_auth(KEY);
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    let r = rb.send().await.expect("request");
    let status = r.status().as_u16();
    let retry_after = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
    let body = r.json().await.unwrap_or(Value::Null);
    Answer {
        status,
        retry_after,
        body,
        took: started.elapsed(),
    }
}

fn report_body(agent: &str, ts: &str, state: &str, n: u32) -> Value {
    json!({"agentId": agent, "timestamp": ts, "state": state, "details": {"n": n}})
}

// ------------------------------------------------------------------------------------------------
// DynamoDB Local with a data directory, so a restart on the same port finds the same table.

struct Ddb {
    child: Option<Child>,
    port: u16,
    dir: std::path::PathBuf,
}

impl Ddb {
    fn spawn(port: u16, dir: &std::path::Path) -> Child {
        let jar = opscore_tests::ddb_local::jar_dir().expect("DynamoDB Local installed");
        Command::new("java")
            .arg("-Xmx256m")
            .arg(format!(
                "-Djava.library.path={}",
                jar.join("DynamoDBLocal_lib").display()
            ))
            .arg("-jar")
            .arg(jar.join("DynamoDBLocal.jar"))
            .args(["-sharedDb", "-disableTelemetry", "-dbPath"])
            .arg(dir)
            .args(["-port", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("java starts")
    }

    async fn start() -> Ddb {
        let dir = std::env::temp_dir().join(format!("opscore-faults-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let port = opscore_tests::free_port();
        let mut d = Ddb {
            child: Some(Self::spawn(port, &dir)),
            port,
            dir,
        };
        d.wait_ready().await;
        d
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    async fn wait_ready(&mut self) {
        let client = opscore_dynamo::client_for_endpoint(Some(&self.endpoint())).await;
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(60) {
            if client.list_tables().send().await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("DynamoDB Local did not come up on {}", self.endpoint());
    }

    /// Stops the store the way a host shutdown does (SIGTERM), and waits until it is gone.
    /// (SIGKILL can lose DynamoDB Local's last acknowledged writes: it is a test tool, not a
    /// durable database; that would test DynamoDB Local, not Ops-Core.)
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(10) {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    async fn restart(&mut self) {
        self.kill();
        self.child = Some(Self::spawn(self.port, &self.dir));
        self.wait_ready().await;
    }

    fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let ok = Command::new("kill")
                .arg(format!("-{sig}"))
                .arg(c.id().to_string())
                .status()
                .unwrap()
                .success();
            assert!(ok, "kill -{sig}");
        }
    }
}

impl Drop for Ddb {
    fn drop(&mut self) {
        self.signal("CONT");
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn assert_unavailable(a: &Answer, what: &str) {
    assert_eq!(a.status, 503, "{what}: {:?}", a.body);
    assert_eq!(a.body["code"], "unavailable", "{what}: {:?}", a.body);
    assert!(
        a.body["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "{what}: {:?}",
        a.body
    );
    assert!(
        a.retry_after.as_deref().is_some_and(|r| r.parse::<u64>().is_ok()),
        "{what}: Retry-After {:?}",
        a.retry_after
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "dynamodb-local"),
    ignore = "needs DynamoDB Local: --features opscore-tests/dynamodb-local"
)]
async fn dynamodb_outage_answers_503_writes_nothing_half_and_recovers() {
    let mut ddb = Ddb::start().await;
    let stack = Stack::start(Options {
        port: 0,
        store: StoreChoice::Dynamo {
            endpoint: ddb.endpoint(),
        },
        table: "faults".into(),
        sweep_every: Duration::from_millis(500),
        config: config(None),
    })
    .await
    .expect("stack starts");
    let url = stack.url();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    let now = || chrono::Utc::now();
    let ts = |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let state_url = format!("{url}/v1/opscore/agent/fa/state");
    let get = async |u: String| call(&http, reqwest::Method::GET, u, None, &[]).await;
    let report = async |state: &str, n: u32| {
        let body = report_body("fa", &ts(now()), state, n);
        call(&http, reqwest::Method::POST, state_url.clone(), Some(body), &[]).await
    };

    // Healthy: register, report.
    assert_eq!(
        post_webhook(&http, &url, &register_body("fa"), now().timestamp())
            .await
            .0,
        200
    );
    let a = report("idle", 1).await;
    assert_eq!(a.status, 202, "{:?}", a.body);

    // ---- Stopped: the process is gone (connection refused).
    ddb.kill();
    let down_at = Instant::now();
    let mut fail_times = Vec::new();
    let a = report("active", 2).await;
    assert_unavailable(&a, "report while stopped");
    fail_times.push(("POST state", a.took));
    let a = get(state_url.clone()).await;
    assert_unavailable(&a, "read while stopped");
    fail_times.push(("GET state", a.took));
    let trigger_url = format!("{url}/v1/opscore/agent/fa/workflow");
    let trigger = json!({"workflowDefinitionId": "sample_workflow_id"});
    let trigger_with_key = async || {
        let key = [("idempotency-key", "k-outage")];
        call(
            &http,
            reqwest::Method::POST,
            trigger_url.clone(),
            Some(trigger.clone()),
            &key,
        )
        .await
    };
    let a = trigger_with_key().await;
    assert_unavailable(&a, "trigger while stopped");
    fail_times.push(("POST workflow", a.took));
    let wh_body = register_body("fb");
    let wh_ts = now().timestamp();
    let (s, b) = post_webhook(&http, &url, &wh_body, wh_ts).await;
    assert_eq!(s, 503, "webhook while stopped: {b}");
    for (what, took) in &fail_times {
        eprintln!("store stopped: {what} failed with 503 after {took:?}");
    }

    // ---- Back on the same port and data: the stack recovers by itself.
    ddb.restart().await;
    let restarted = Instant::now();
    let recovered = loop {
        let a = report("idle", 3).await;
        if a.status == 202 {
            break restarted.elapsed();
        }
        assert_unavailable(&a, "report while recovering");
        assert!(restarted.elapsed() < Duration::from_secs(30), "no recovery within 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!(
        "store restarted: first request accepted {recovered:?} after the store was back ({:?} of outage in all)",
        down_at.elapsed()
    );

    // Nothing half-written: the refused report left no history, the state is the last accepted
    // one, and the version counts exactly the applied reports.
    let cur = get(state_url.clone()).await;
    assert_eq!(cur.status, 200);
    assert_eq!(cur.body["state"], "idle");
    assert_eq!(cur.body["details"]["n"], 3);
    let hist = get(format!("{state_url}/history?limit=100")).await;
    let ns: Vec<i64> = hist.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["details"]["n"].as_i64().unwrap())
        .collect();
    assert_eq!(
        ns,
        vec![3, 1],
        "history holds exactly the accepted reports: {}",
        hist.body
    );
    // The refused trigger, retried with its key, creates exactly one session.
    let a = trigger_with_key().await;
    assert_eq!(a.status, 202, "{:?}", a.body);
    let b = trigger_with_key().await;
    assert_eq!(a.body["sessionId"], b.body["sessionId"]);
    let sessions = get(format!("{url}/v1/opscore/agent/fa/sessions")).await;
    assert_eq!(sessions.body["items"].as_array().unwrap().len(), 1, "{}", sessions.body);
    let sid = a.body["sessionId"].as_str().unwrap().to_owned();
    let s = get(format!("{url}/v1/opscore/sessions/{sid}")).await;
    assert_eq!(s.status, 200);
    // A session is never without its first task (created in the same transaction).
    assert_eq!(s.body["tasks"][0]["taskId"], "step_1", "{}", s.body);
    assert_ne!(s.body["tasks"][0]["status"], "waiting", "{}", s.body);
    // The refused webhook, redelivered byte for byte, is not taken for a duplicate.
    let (s, b) = post_webhook(&http, &url, &wh_body, wh_ts).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(get(format!("{url}/v1/opscore/agent/fb")).await.status, 200);

    // ---- Frozen: the process is there but answers nothing (SIGSTOP).
    ddb.signal("STOP");
    let a = get(state_url.clone()).await;
    eprintln!("store frozen: GET state answered {} after {:?}", a.status, a.took);
    assert_unavailable(&a, "read while frozen");
    let a = report("active", 4).await;
    eprintln!("store frozen: POST state answered {} after {:?}", a.status, a.took);
    assert_unavailable(&a, "report while frozen");
    assert!(
        a.took < Duration::from_secs(15),
        "a frozen store must fail a request within 15 s, took {:?}",
        a.took
    );
    ddb.signal("CONT");
    let thawed = Instant::now();
    loop {
        let a = get(state_url.clone()).await;
        if a.status == 200 {
            // A write whose answer was lost may have landed; if it did, it landed whole: the
            // state's version and the applied history entries agree. It may land between two of
            // our reads (it was queued in the frozen process), so read until both reads agree.
            let (mut n, mut applied, mut version);
            let settle = Instant::now();
            loop {
                let hist = get(format!("{state_url}/history?limit=100")).await;
                let items = hist.body["items"].as_array().unwrap().clone();
                n = items.len();
                applied = items.iter().filter(|h| h["applied"] == true).count();
                let st = get(state_url.clone()).await;
                version = st.body["version"].as_u64().unwrap() as usize;
                if version == applied || settle.elapsed() > Duration::from_secs(10) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            assert!(n == 2 || n == 3, "{n} history entries");
            assert_eq!(version, applied, "state version vs applied reports in history");
            eprintln!(
                "store thawed: recovered after {:?} (frozen write landed: {})",
                thawed.elapsed(),
                n == 3
            );
            break;
        }
        assert!(
            thawed.elapsed() < Duration::from_secs(30),
            "no recovery within 30 s after thaw"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stack.stop().await;
}

// ------------------------------------------------------------------------------------------------
// A store that fails one chosen operation once, in front of the in-memory store.

struct Flaky {
    inner: Arc<dyn Store>,
    fail_register: AtomicBool,
}

fn down() -> StoreError {
    StoreError::unavailable("injected outage")
}

#[async_trait]
impl Store for Flaky {
    async fn register_agent(&self, details: AgentDetails, now: Timestamp) -> Result<RegisterOutcome, StoreError> {
        if self.fail_register.swap(false, Ordering::SeqCst) {
            return Err(down());
        }
        self.inner.register_agent(details, now).await
    }
    async fn deregister_agent(&self, id: &AgentId, now: Timestamp) -> Result<Agent, AgentWriteError> {
        self.inner.deregister_agent(id, now).await
    }
    async fn report_state(
        &self,
        report: &StateReport,
        received_at: Timestamp,
        history_ttl: Duration,
    ) -> Result<ReportOutcome, AgentWriteError> {
        self.inner.report_state(report, received_at, history_ttl).await
    }
    async fn get_agent(&self, id: &AgentId) -> Result<Option<Agent>, StoreError> {
        self.inner.get_agent(id).await
    }
    async fn list_agents(&self, state: Option<&StateName>, page: PageRequest) -> Result<Page<Agent>, StoreError> {
        self.inner.list_agents(state, page).await
    }
    async fn state_history(&self, id: &AgentId, page: PageRequest) -> Result<Page<HistoryEntry>, StoreError> {
        self.inner.state_history(id, page).await
    }
    async fn put_workflow(&self, def: &WorkflowDefinition, now: Timestamp) -> Result<PutWorkflowOutcome, StoreError> {
        self.inner.put_workflow(def, now).await
    }
    async fn get_workflow(
        &self,
        id: &WorkflowId,
        version: Option<&WorkflowVersion>,
    ) -> Result<Option<StoredWorkflow>, StoreError> {
        self.inner.get_workflow(id, version).await
    }
    async fn list_workflows(&self, page: PageRequest) -> Result<Page<StoredWorkflow>, StoreError> {
        self.inner.list_workflows(page).await
    }
    async fn commit(&self, writes: Vec<Write>) -> Result<(), CommitError> {
        self.inner.commit(writes).await
    }
    async fn get_session(&self, id: &SessionId) -> Result<Option<SessionView>, StoreError> {
        self.inner.get_session(id).await
    }
    async fn list_sessions(&self, agent: &AgentId, page: PageRequest) -> Result<Page<Session>, StoreError> {
        self.inner.list_sessions(agent, page).await
    }
    async fn list_sessions_across_agents(
        &self,
        status: Option<SessionStatus>,
        page: PageRequest,
    ) -> Result<Page<Session>, StoreError> {
        self.inner.list_sessions_across_agents(status, page).await
    }
    async fn get_task(&self, key: &TaskKey) -> Result<Option<TaskInstance>, StoreError> {
        self.inner.get_task(key).await
    }
    async fn runnable_tasks(&self, agent: &AgentId, now: Timestamp, limit: u32) -> Result<Vec<TaskKey>, StoreError> {
        self.inner.runnable_tasks(agent, now, limit).await
    }
    async fn due_timers(&self, now: Timestamp, limit: u32) -> Result<Vec<TaskKey>, StoreError> {
        self.inner.due_timers(now, limit).await
    }
    async fn idle_agents(&self, capability: &str, limit: u32) -> Result<Vec<AgentId>, StoreError> {
        self.inner.idle_agents(capability, limit).await
    }
    async fn routed_tasks(&self, capability: &str, now: Timestamp, limit: u32) -> Result<Vec<RoutedTask>, StoreError> {
        self.inner.routed_tasks(capability, now, limit).await
    }
    async fn sync_idle_agent(&self, old: Option<&Agent>, new: &Agent) -> Result<(), StoreError> {
        self.inner.sync_idle_agent(old, new).await
    }
}

/// The webhook first records the delivery (its replay guard), then registers. If the store fails
/// in between, the delivery must not count as handled: AgentKit's (or an operator's) redelivery
/// of the same bytes has to register the agent, not be dropped as a duplicate.
#[tokio::test]
async fn webhook_failing_after_its_delivery_record_is_not_lost_memory() {
    webhook_failing_after_its_delivery_record(Arc::new(InMemoryStore::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_failing_after_its_delivery_record_is_not_lost_embedded() {
    let f = opscore_tests::stores::embedded().await;
    webhook_failing_after_its_delivery_record(f.store.clone()).await;
}

async fn webhook_failing_after_its_delivery_record(inner: Arc<dyn Store>) {
    // The DynamoDB adapter compares record expiry with the wall clock: use it.
    let now = chrono::Utc::now();
    let store = Arc::new(Flaky {
        inner,
        fail_register: AtomicBool::new(true),
    });
    let app = App::new(store.clone(), Arc::new(ManualClock::at(now)), Settings::default());
    let api = router(app, config(None), Surface::Both);
    let body = register_body("flaky-agent");
    let ts = now.timestamp().to_string();
    let req = || {
        let mut h = http::HeaderMap::new();
        h.insert("content-type", "application/json".parse().unwrap());
        h.insert("x-agentkit-timestamp", ts.parse().unwrap());
        h.insert(
            "x-agentkit-signature",
            sign(SECRET, &ts, body.as_bytes()).parse().unwrap(),
        );
        call_router(
            &api,
            http::Method::POST,
            "/v1/opscore/internal/agent/notify",
            h,
            body.clone().into_bytes(),
        )
    };
    let first = req().await;
    assert_eq!(first.status.as_u16(), 503, "{}", String::from_utf8_lossy(&first.body));
    assert!(first.headers.contains_key("retry-after"));
    let again = req().await;
    assert_eq!(again.status.as_u16(), 200, "{}", String::from_utf8_lossy(&again.body));
    let id = AgentId::parse("flaky-agent").unwrap();
    assert!(
        store.get_agent(&id).await.unwrap().is_some(),
        "the redelivered registration was dropped as a duplicate: {}",
        String::from_utf8_lossy(&again.body)
    );
    // And a true replay after success is still a no-op duplicate.
    let replay = req().await;
    assert_eq!(replay.status.as_u16(), 200);
    assert!(String::from_utf8_lossy(&replay.body).contains("Duplicate"));
}

// ------------------------------------------------------------------------------------------------
// AgentKit slower than the dispatch timeout.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agentkit_slower_than_the_dispatch_timeout_is_retried_not_lost() {
    let agentkit = FakeAgentKit::start("http://127.0.0.1:9/unused".into(), SECRET.into()).await;
    agentkit.know("slow-agent", "http://127.0.0.1:9/task");
    // The first /run answers after 1.5 s; the client gives up after 300 ms.
    agentkit.script([RunAnswer::Slow(Duration::from_millis(1500)), RunAnswer::Accept]);
    let (store, mut changes) = InMemoryStore::with_changes();
    let store: Arc<dyn Store> = Arc::new(store);
    let clock = ManualClock::at(chrono::Utc::now());
    let dispatcher =
        AgentKitClient::with_timeouts(&agentkit.url(), Duration::from_millis(200), Duration::from_millis(300)).unwrap();
    let (app, runner) = opscore_tests::fake::engine(store.clone(), &clock, Arc::new(dispatcher));
    let agent = AgentId::parse("slow-agent").unwrap();
    app.register_agent(agent_details(&agent, "slow")).await.unwrap();
    let mut tick = 0;
    let mut report = async |state: &str, task: Option<&str>| {
        tick += 1;
        let details = task.map(|t| json!({"opscore_task_id": t}).as_object().unwrap().clone());
        app.report_state(&StateReport {
            agent_id: agent.clone(),
            state: StateName::parse(state).unwrap(),
            details,
            timestamp: clock.now() + chrono::Duration::microseconds(tick),
        })
        .await
        .unwrap();
    };
    let def = WorkflowDefinition::from_value(json!({"id": "slow", "name": "Slow",
        "tasks": [{"taskId": "only", "name": "Only"}],
        "retryPolicy": {"maxRetries": 2, "baseDelaySeconds": 1, "maxDelaySeconds": 2}}))
    .unwrap();
    let t = app
        .trigger(&agent, DefinitionSource::Inline(Box::new(def)), None, None)
        .await
        .unwrap();
    report("idle", None).await;
    let pump = async |changes: &mut tokio::sync::mpsc::UnboundedReceiver<Change>| {
        while let Ok(c) = changes.try_recv() {
            runner.on_change(&c).await.unwrap();
        }
    };
    let started = Instant::now();
    pump(&mut changes).await;
    eprintln!("slow AgentKit: the first attempt gave up after {:?}", started.elapsed());
    let view = app.session(&t.session_id).await.unwrap();
    let task = &view.tasks[0];
    assert_eq!(
        task.status,
        TaskStatus::Pending,
        "the timed-out attempt is scheduled again: {task:?}"
    );
    assert_eq!(task.attempt, 1);
    let first = &task.attempts[0];
    assert!(
        first.error.as_deref().is_some_and(|e| e.contains("did not answer")),
        "{first:?}"
    );
    let first_id = first.dispatch_id.clone();
    // The retry falls due; the sweep dispatches it; AgentKit accepts at once this time.
    clock.advance(chrono::Duration::seconds(3));
    runner.sweep().await.unwrap();
    pump(&mut changes).await;
    let task = app.session(&t.session_id).await.unwrap().tasks.remove(0);
    assert_eq!(task.status, TaskStatus::Dispatched, "{task:?}");
    assert_eq!(task.attempt, 2);
    let second_id = task.attempts[1].dispatch_id.clone();
    assert_ne!(first_id, second_id);
    // AgentKit got both (the slow one did reach it: dispatch is at-least-once).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let runs: Vec<String> = agentkit
        .runs()
        .iter()
        .map(|r| r["opscore_task_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(runs, vec![first_id.clone(), second_id.clone()]);
    // The agent finishes the slow attempt late: that cannot complete the retry…
    report("idle", Some(&first_id)).await;
    pump(&mut changes).await;
    let task = app.session(&t.session_id).await.unwrap().tasks.remove(0);
    assert_eq!(
        task.status,
        TaskStatus::Dispatched,
        "a report about attempt 1 completed attempt 2"
    );
    // …the report naming the retry does, exactly once.
    report("idle", Some(&second_id)).await;
    pump(&mut changes).await;
    let view = app.session(&t.session_id).await.unwrap();
    assert_eq!(view.tasks[0].status, TaskStatus::Succeeded);
    assert!(view.session.status.is_terminal());
}

// ------------------------------------------------------------------------------------------------
// The freshness window, over HTTP against the stack.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_clock_skew_299_s_accepted_301_s_refused() {
    let stack = Stack::start(Options {
        port: 0,
        store: StoreChoice::Memory,
        table: "skew".into(),
        sweep_every: Duration::from_secs(1),
        config: config(None),
    })
    .await
    .expect("stack starts");
    let url = stack.url();
    let http = reqwest::Client::new();
    for (i, skew) in [299i64, -299, 301, -301].into_iter().enumerate() {
        let body = register_body(&format!("skew-{i}"));
        let (status, b) = post_webhook(&http, &url, &body, chrono::Utc::now().timestamp() + skew).await;
        let want = if skew.abs() < 300 { 200 } else { 401 };
        assert_eq!(status, want, "skew {skew} s: {b}");
        if want == 401 {
            assert_eq!(b["code"], "unauthorized");
            assert!(b["detail"].as_str().unwrap().contains("server clock"), "{b}");
        }
        let got = call(
            &http,
            reqwest::Method::GET,
            format!("{url}/v1/opscore/agent/skew-{i}"),
            None,
            &[],
        )
        .await;
        assert_eq!(got.status, if want == 200 { 200 } else { 404 }, "skew {skew} s");
    }
    stack.stop().await;
}
