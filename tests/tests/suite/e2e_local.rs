//! End to end over real HTTP: the local stack (embedded store, real runner loop), a fake AgentKit
//! and a simulated reference agent, all following the AgentKit contract. The agent registers with
//! AgentKit, AgentKit sends the signed webhook, the agent reports idle (retrying on 404), an
//! operator triggers the 2-step sample workflow, and the session completes.

use opscore_core::config::{Config, Secret};
use opscore_local::{Options, Stack, StoreChoice};
use opscore_tests::fake::{Behaviour, FakeAgentKit, RunAnswer, SimulatedAgent};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct Env {
    stack: Stack,
    agentkit: FakeAgentKit,
    agent: SimulatedAgent,
    http: reqwest::Client,
    key: String,
}

async fn env(behaviour: Behaviour) -> Env {
    env_on(StoreChoice::Ephemeral, behaviour).await
}

/// The local stack on `store` with a fake AgentKit that knows its webhook: fresh API key and
/// webhook secret, the runner sweeping every 200 ms. What the end-to-end and console tests start.
// `secret` and `webhook` are read by the console's browser test (feature `browser`) only.
#[cfg_attr(not(feature = "browser"), allow(dead_code))]
pub(crate) struct LocalStack {
    pub stack: Stack,
    pub agentkit: FakeAgentKit,
    pub key: String,
    pub secret: String,
    /// The stack's webhook URL (where AgentKit posts its signed deliveries).
    pub webhook: String,
}

pub(crate) async fn local_stack(store: StoreChoice, table: &str) -> LocalStack {
    // AgentKit must exist before the stack (the stack is configured with its URL) and the stack
    // before AgentKit sends webhooks: bind AgentKit first, with the stack's port chosen ahead.
    let key = format!("k-{}", uuid::Uuid::new_v4().simple());
    let secret = format!("s-{}", uuid::Uuid::new_v4().simple());
    let port = opscore_tests::free_port();
    let webhook = format!("http://127.0.0.1:{port}/v1/opscore/internal/agent/notify");
    let agentkit = FakeAgentKit::start(webhook.clone(), secret.clone()).await;
    let config = Config {
        api_keys: vec![Secret::new(&key)],
        webhook_secrets: vec![Secret::new(&secret)],
        agentkit_api_url: Some(agentkit.url()),
        ..Config::default()
    };
    let stack = Stack::start(Options {
        port,
        store,
        table: table.into(),
        sweep_every: Duration::from_millis(200),
        config,
    })
    .await
    .expect("stack starts");
    LocalStack {
        stack,
        agentkit,
        key,
        secret,
        webhook,
    }
}

async fn env_on(store: StoreChoice, behaviour: Behaviour) -> Env {
    let LocalStack {
        stack, agentkit, key, ..
    } = local_stack(store, "e2e").await;
    let agent = SimulatedAgent::start(
        &agentkit.url(),
        &stack.url(),
        &key,
        "sim-agent",
        Arc::new(Mutex::new(behaviour)),
    )
    .await;
    Env {
        stack,
        agentkit,
        agent,
        http: reqwest::Client::new(),
        key,
    }
}

impl Env {
    async fn get(&self, path: &str) -> Value {
        self.http
            .get(format!("{}{path}", self.stack.url()))
            .bearer_auth(&self.key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn trigger(&self, body: Value) -> String {
        let r = self
            .http
            .post(format!(
                "{}/v1/opscore/agent/{}/workflow",
                self.stack.url(),
                self.agent.id
            ))
            .bearer_auth(&self.key)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["message"], "Workflow triggered successfully");
        v["sessionId"].as_str().unwrap().to_owned()
    }

    async fn wait_for_end(&self, session: &str, limit: Duration) -> Value {
        let start = Instant::now();
        loop {
            let v = self.get(&format!("/v1/opscore/sessions/{session}")).await;
            if matches!(v["status"].as_str(), Some("completed" | "failed" | "cancelled")) {
                return v;
            }
            assert!(start.elapsed() < limit, "session did not end within {limit:?}: {v:#}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sample_workflow_runs_end_to_end_on_the_default_store() {
    sample_runs(StoreChoice::Ephemeral).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sample_workflow_runs_end_to_end_on_the_memory_store() {
    sample_runs(StoreChoice::Memory).await;
}

async fn sample_runs(store: StoreChoice) {
    let e = env_on(store, Behaviour::Complete(Duration::from_millis(20))).await;
    let agent = e.get(&format!("/v1/opscore/agent/{}", e.agent.id)).await;
    assert_eq!(
        agent["agentName"], "sim-agent",
        "registered through AgentKit's signed webhook: {agent}"
    );
    assert_eq!(
        agent["metadata"]["description"], "simulated ✓",
        "non-ASCII survives the \\u escaping"
    );
    assert_eq!(agent["state"]["state"], "idle");

    let session = e.trigger(json!({"workflowDefinitionId": "sample_workflow_id"})).await;
    let done = e.wait_for_end(&session, Duration::from_secs(30)).await;
    assert_eq!(done["status"], "completed", "{done:#}");
    assert!(done["endTime"].is_string());
    let tasks = done["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 2);
    assert!(
        tasks.iter().all(|t| t["status"] == "succeeded" && t["attempt"] == 1),
        "{done:#}"
    );

    // The contract's /run body: top-level ids and task name, payload = parameters.
    let runs = e.agentkit.runs();
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0]["senderId"], "opscore");
    assert_eq!(runs[0]["messageType"], "workflow_task");
    assert_eq!(runs[0]["task_name"], "First Step");
    assert_eq!(runs[0]["opscore_session_id"], session);
    assert_eq!(runs[0]["payload"], json!({"message": "This is the first step."}));
    assert_eq!(runs[1]["task_name"], "Second Step");
    assert_eq!(runs[1]["payload"], json!({"value": 123}));
    assert_eq!(
        e.agent.tasks.lock().unwrap().len(),
        2,
        "AgentKit forwarded both tasks to the agent"
    );
    let history = e
        .get(&format!("/v1/opscore/agent/{}/state/history?limit=100", e.agent.id))
        .await;
    assert!(
        history["items"].as_array().unwrap().len() >= 5,
        "idle + 2 × (active, idle): {history}"
    );
    e.stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agentkit_unavailable_twice_then_accepting_still_completes() {
    let e = env(Behaviour::Complete(Duration::from_millis(10))).await;
    e.agentkit.script([RunAnswer::Status(503), RunAnswer::Status(503)]);
    let def = json!({"id": "fast_retry", "name": "Fast retry", "retryPolicy": {"maxRetries": 3, "baseDelaySeconds": 0.2, "maxDelaySeconds": 0.5},
                     "tasks": [{"taskId": "only", "name": "Only", "parameters": {"n": 1}}]});
    let session = e.trigger(json!({"workflowDefinition": def})).await;
    let done = e.wait_for_end(&session, Duration::from_secs(30)).await;
    assert_eq!(done["status"], "completed", "{done:#}");
    let attempts = done["tasks"][0]["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 3, "{done:#}");
    assert!(attempts[0]["error"].as_str().unwrap().contains("503"));
    e.stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_always_fails_fails_the_session_with_its_cause() {
    let e = env(Behaviour::Fail).await;
    let def = json!({"id": "doomed", "name": "Doomed", "retryPolicy": {"maxRetries": 1, "baseDelaySeconds": 0.1, "maxDelaySeconds": 0.1},
                     "tasks": [{"taskId": "t1", "name": "T1"}]});
    let session = e.trigger(json!({"workflowDefinition": def})).await;
    let done = e.wait_for_end(&session, Duration::from_secs(30)).await;
    assert_eq!(done["status"], "failed", "{done:#}");
    assert_eq!(done["error"]["code"], "retries_exhausted");
    assert_eq!(done["error"]["attempts"], 2);
    assert!(
        done["error"]["message"].as_str().unwrap().contains("simulated failure"),
        "{done:#}"
    );
    e.stack.stop().await;
}

/// Issue 13, defect 5: while AgentKit hangs on agent A's `/run`, agent B's one-task workflow
/// completes within a second (before: 9.6 s, the whole batch waited for A's dispatch).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_dispatch_holds_up_no_other_agent() {
    let e = env(Behaviour::Complete(Duration::from_millis(20))).await;
    let b = SimulatedAgent::start(
        &e.agentkit.url(),
        &e.stack.url(),
        &e.key,
        "agent-b",
        Arc::new(Mutex::new(Behaviour::Complete(Duration::from_millis(20)))),
    )
    .await;
    let one_task = json!({"workflowDefinition": {"id": "one", "name": "one", "version": "1",
        "tasks": [{"taskId": "only", "name": "Only", "parameters": {}, "nextTaskId": null}]}});
    // A's dispatch: AgentKit answers only after 30 s (the client gives up at 10 s).
    e.agentkit.script([RunAnswer::Slow(Duration::from_secs(30))]);
    let a_session = e.trigger(one_task.clone()).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while e.agentkit.runs().is_empty() {
        assert!(Instant::now() < deadline, "A's task never reached AgentKit");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = Instant::now();
    let r = e
        .http
        .post(format!("{}/v1/opscore/agent/{}/workflow", e.stack.url(), b.id))
        .bearer_auth(&e.key)
        .json(&one_task)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let b_session = r.json::<Value>().await.unwrap()["sessionId"]
        .as_str()
        .unwrap()
        .to_owned();
    let v = e.wait_for_end(&b_session, Duration::from_secs(1)).await;
    assert_eq!(v["status"], "completed", "{v:#}");
    eprintln!(
        "agent B's workflow completed in {:?} while A's dispatch hung",
        started.elapsed()
    );
    let a = e.get(&format!("/v1/opscore/sessions/{a_session}")).await;
    assert_eq!(a["status"], "running", "A is still waiting for AgentKit: {a:#}");
    e.stack.stop().await;
}

/// A request that is refused anyway (no valid key) is answered from its head: the server does not
/// wait for (or read) a body of a megabyte first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unauthenticated_request_is_refused_before_its_body_is_read() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let e = env(Behaviour::Complete(Duration::from_millis(20))).await;
    let mut s = tokio::net::TcpStream::connect(e.stack.addr).await.unwrap();
    s.write_all(
        b"POST /v1/opscore/agent/a1/state HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
          Content-Length: 1000000\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
        .await
        .expect("answered without the body")
        .unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(answer.contains("\"code\":\"unauthorized\""), "{answer}");
    e.stack.stop().await;
}

/// Issue 15: the local stack serves the engine's figures as Prometheus text at `GET /metrics`
/// (no API key: no ids in it), the same figures the functions write as EMF lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_metrics_serves_the_run_as_prometheus_text() {
    let e = env(Behaviour::Complete(Duration::from_millis(20))).await;
    let session = e.trigger(json!({"workflowDefinitionId": "sample_workflow_id"})).await;
    let done = e.wait_for_end(&session, Duration::from_secs(30)).await;
    assert_eq!(done["status"], "completed", "{done:#}");
    // A delivery without a signature: refused, and counted by its reason.
    let refused = e
        .http
        .post(format!("{}/v1/opscore/internal/agent/notify", e.stack.url()))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);

    let r = e
        .http
        .get(format!("{}{}", e.stack.url(), opscore_local::METRICS_PATH))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4"),
        "{:?}",
        r.headers()
    );
    let text = r.text().await.unwrap();
    let value = |series: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
            .trim()
            .parse()
            .unwrap()
    };
    let wf = r#"{workflow_id="sample_workflow_id"}"#;
    assert_eq!(value(&format!("tasks_dispatched{wf}")), 2.0);
    assert_eq!(value(&format!("tasks_succeeded{wf}")), 2.0);
    assert_eq!(value(&format!("sessions_completed{wf}")), 1.0);
    assert_eq!(value(&format!("trigger_to_dispatch_ms_count{wf}")), 1.0);
    assert_eq!(value(&format!("task_run_time_ms_count{wf}")), 2.0);
    assert_eq!(value(r#"webhook_deliveries_refused{reason="unauthorized"}"#), 1.0);
    assert!(text.contains("# TYPE task_run_time_ms histogram"), "{text}");
    assert!(
        !text.contains(&e.agent.id) && !text.contains(&session),
        "no agent or session id in the figures:\n{text}"
    );
    e.stack.stop().await;
}

/// Routing by capability (issue 18) over HTTP: three simulated agents registered through the fake
/// AgentKit with different capabilities, a stored definition routed by capability, four sessions
/// started without naming an agent (`POST /v1/opscore/workflows/{id}/sessions`). Every task runs
/// on an agent announcing its capability and every session completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routed_sessions_started_without_an_agent_run_across_a_pool_of_agents() {
    let e = env(Behaviour::Complete(Duration::from_millis(20))).await;
    let behaviour = || Arc::new(Mutex::new(Behaviour::Complete(Duration::from_millis(30))));
    let mut pool = Vec::new();
    for (name, caps) in [
        ("summariser-1", &["summarise"][..]),
        ("summariser-2", &["summarise", "spell"][..]),
        ("translator", &["translate"][..]),
    ] {
        let a = SimulatedAgent::start_with(&e.agentkit.url(), &e.stack.url(), &e.key, name, behaviour(), caps).await;
        pool.push((a, caps));
    }
    let def = json!({"id": "routed_pair", "name": "Summarise then translate", "routeByCapability": true, "tasks": [
        {"taskId": "summary", "name": "Summarise", "agentCapability": "summarise", "nextTaskId": "translation"},
        {"taskId": "translation", "name": "Translate", "agentCapability": "translate"}]});
    let r = e
        .http
        .post(format!("{}/v1/opscore/workflows", e.stack.url()))
        .bearer_auth(&e.key)
        .json(&def)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let start = |payload: Value| {
        let (http, url, key) = (e.http.clone(), e.stack.url(), e.key.clone());
        async move {
            let r = http
                .post(format!("{url}/v1/opscore/workflows/routed_pair/sessions"))
                .bearer_auth(&key)
                .json(&json!({"initialPayload": payload}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 202);
            let v: Value = r.json().await.unwrap();
            v["sessionId"].as_str().unwrap().to_owned()
        }
    };
    let sessions = futures::future::join_all((0..4).map(|i| start(json!({"doc": i})))).await;
    for s in &sessions {
        let done = e.wait_for_end(s, Duration::from_secs(30)).await;
        assert_eq!(done["status"], "completed", "{done:#}");
        assert_eq!(done["agentId"], "opscore.routed");
        for t in done["tasks"].as_array().unwrap() {
            let holder = t["agentId"].as_str().expect("the task names the agent it ran on");
            let (_, caps) = pool
                .iter()
                .find(|(a, _)| a.id == holder)
                .unwrap_or_else(|| panic!("{holder} is not in the pool: {t:#}"));
            assert!(caps.contains(&t["capability"].as_str().unwrap()), "{t:#}");
        }
    }
    // The env's own agent announces none of these capabilities and ran nothing; the translator,
    // the only agent announcing `translate`, ran all four translations.
    assert!(e.agent.tasks.lock().unwrap().is_empty());
    let translator = &pool[2].0;
    assert_eq!(translator.tasks.lock().unwrap().len(), 4);
    let summaries: usize = pool[..2].iter().map(|(a, _)| a.tasks.lock().unwrap().len()).sum();
    assert_eq!(summaries, 4);
    // A definition with a task that is not routed cannot start without an agent.
    let r = e
        .http
        .post(format!(
            "{}/v1/opscore/workflows/sample_workflow_id/sessions",
            e.stack.url()
        ))
        .bearer_auth(&e.key)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["errors"][0]["field"], "routeByCapability", "{body}");
}
