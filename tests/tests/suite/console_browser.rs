//! The operator console in a real browser (feature `browser`; `bash .ci/run` turns it on): the local
//! stack on a free port of 127.0.0.1, a fake AgentKit and four simulated agents following the
//! AgentKit contract, then `node tests/browser/console.mjs <url> <key>`, which drives Debian's
//! Chromium through the console with playwright-core and fails on the first step that does not
//! hold. Needs `/usr/bin/chromium` (Debian package `chromium`) and `npm ci --prefix tests/browser`.
//!
//! What the script finds when it starts: agents `worker` (finishes a task in 4 s),
//! `slow-worker` (takes 10 minutes), `failing-worker` (reports `error`) and `retired-worker`
//! (deregistered through AgentKit's signed webhook); workflows `console-demo` (fetch →
//! summarize), `long-task`, `fails` (no retry) and `routed-demo` (one task routed by
//! `console-routed`, which only `worker` announces); one session, `fails` on `failing-worker`,
//! already failed.

use opscore_local::{Stack, StoreChoice};
use opscore_tests::fake::{Behaviour, FakeAgentKit, SimulatedAgent, hmac_hex, python_compact_json};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The whole browser run: every step of the script, one process.
const SCRIPT_LIMIT: Duration = Duration::from_secs(300);

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .to_path_buf()
}

async fn agent(agentkit: &FakeAgentKit, stack: &Stack, key: &str, name: &str, b: Behaviour) -> SimulatedAgent {
    SimulatedAgent::start(&agentkit.url(), &stack.url(), key, name, Arc::new(Mutex::new(b))).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_works_in_a_real_browser() {
    let root = workspace_root();
    let script = root.join("tests/browser/console.mjs");
    assert!(
        root.join("tests/browser/node_modules/playwright-core").is_dir(),
        "playwright-core is missing: run `npm ci --prefix tests/browser`"
    );
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&chromium).exists(),
        "{chromium} is missing: `apt-get install chromium` (Debian), or set CHROMIUM"
    );

    let crate::e2e_local::LocalStack {
        stack,
        agentkit,
        key,
        secret,
        webhook,
    } = crate::e2e_local::local_stack(StoreChoice::Ephemeral, "console").await;
    let http = reqwest::Client::new();
    let url = stack.url();

    // The only agent announcing `console-routed`: the routed session lands on it.
    let _worker = SimulatedAgent::start_with(
        &agentkit.url(),
        &stack.url(),
        &key,
        "worker",
        Arc::new(Mutex::new(Behaviour::Complete(Duration::from_secs(4)))),
        &["test_capability", "console-routed"],
    )
    .await;
    let _slow = agent(
        &agentkit,
        &stack,
        &key,
        "slow-worker",
        Behaviour::Complete(Duration::from_secs(600)),
    )
    .await;
    let failing = agent(&agentkit, &stack, &key, "failing-worker", Behaviour::Fail).await;
    let retired = agent(
        &agentkit,
        &stack,
        &key,
        "retired-worker",
        Behaviour::Complete(Duration::ZERO),
    )
    .await;

    // Retired through AgentKit's signed DEREGISTER webhook, as AgentKit would.
    let raw = python_compact_json(&json!({"event_type": "DEREGISTER", "agent_details": {"agentId": retired.id}}));
    let ts = chrono::Utc::now().timestamp().to_string();
    let r = http
        .post(&webhook)
        .header("content-type", "application/json")
        .header("X-AgentKit-Timestamp", &ts)
        .header("X-AgentKit-Signature", hmac_hex(&secret, &ts, raw.as_bytes()))
        .body(raw)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "deregistered: {}", r.text().await.unwrap_or_default());

    for def in [
        json!({"id": "console-demo", "name": "Console demo", "version": "1.0",
               "description": "Fetches, then summarizes.",
               "retryPolicy": {"maxRetries": 2, "baseDelaySeconds": 1, "maxDelaySeconds": 10},
               "tasks": [{"taskId": "fetch", "name": "Fetch", "nextTaskId": "summarize", "timeoutSeconds": 30},
                         {"taskId": "summarize", "name": "Summarize", "maxRetries": 1}]}),
        json!({"id": "long-task", "name": "Long task", "version": "1.0", "taskTimeoutSeconds": 900,
               "tasks": [{"taskId": "wait", "name": "Wait"}]}),
        json!({"id": "fails", "name": "Fails", "version": "1.0",
               "tasks": [{"taskId": "explode", "name": "Explode", "maxRetries": 0}]}),
        json!({"id": "routed-demo", "name": "Routed demo", "version": "1.0", "routeByCapability": true,
               "tasks": [{"taskId": "route", "name": "Route", "agentCapability": "console-routed"}]}),
    ] {
        let r = http
            .post(format!("{url}/v1/opscore/workflows"))
            .bearer_auth(&key)
            .json(&def)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
    }

    // One failed session for the operator to find.
    let r: Value = http
        .post(format!("{url}/v1/opscore/agent/{}/workflow", failing.id))
        .bearer_auth(&key)
        .json(&json!({"workflowDefinitionId": "fails"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let failed = r["sessionId"].as_str().expect("a session id").to_owned();
    let start = Instant::now();
    loop {
        let v: Value = http
            .get(format!("{url}/v1/opscore/sessions/{failed}"))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if v["status"] == "failed" {
            assert_eq!(v["error"]["code"], "retries_exhausted", "{v:#}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the session did not fail: {v:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mut node = tokio::process::Command::new("node");
    node.arg(&script)
        .arg(&url)
        .arg(&key)
        .current_dir(&root)
        .env("CHROMIUM", &chromium)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let mut child = node.spawn().expect("node runs (Node.js 18 or newer)");
    let status = match tokio::time::timeout(SCRIPT_LIMIT, child.wait()).await {
        Ok(status) => status.expect("node ran"),
        Err(_) => {
            let _ = child.kill().await;
            panic!("the browser test did not end within {SCRIPT_LIMIT:?}");
        }
    };
    assert!(
        status.success(),
        "tests/browser/console.mjs failed ({status}); its output is above"
    );
    stack.stop().await;
}
