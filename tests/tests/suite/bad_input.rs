//! The bad-input table: malformed requests of every kind, each answered with a 4xx JSON error
//! that says what is wrong — never a 5xx, never a panic, and nothing written.

use http::{HeaderMap, HeaderValue, Method};
use opscore_core::agent::{StateName, StateReport};
use opscore_core::app::{App, Settings};
use opscore_core::config::{Config, Secret};
use opscore_core::ids::AgentId;
use opscore_core::memory::InMemoryStore;
use opscore_core::store::{PageRequest, Store};
use opscore_core::time::{self, Clock, ManualClock};
use opscore_http::auth::sign;
use opscore_http::{Surface, router};
use opscore_tests::call::call;
use opscore_tests::fake::agent_details;
use serde_json::{Value, json};
use std::sync::Arc;

const KEY: &str = "table-key";
const SECRET: &str = "table-secret";
const AGENT: &str = "known-agent";

struct Case {
    name: &'static str,
    method: Method,
    path: String,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    expect: u16,
}

fn case(name: &'static str, method: Method, path: &str, body: impl Into<Vec<u8>>, expect: u16) -> Case {
    Case {
        name,
        method,
        path: path.into(),
        headers: vec![("authorization", format!("Bearer {KEY}"))],
        body: body.into(),
        expect,
    }
}

fn no_auth(mut c: Case) -> Case {
    c.headers.retain(|(k, _)| *k != "authorization");
    c
}

fn with(mut c: Case, k: &'static str, v: &str) -> Case {
    c.headers.retain(|(h, _)| *h != k);
    c.headers.push((k, v.into()));
    c
}

fn report(agent: &str, ts: Value, state: Value, details: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({"agentId": agent, "timestamp": ts, "state": state, "details": details})).unwrap()
}

fn webhook(name: &'static str, body: &str, ts: &str, sig: Option<String>, expect: u16) -> Case {
    let mut c = no_auth(case(
        name,
        Method::POST,
        "/v1/opscore/internal/agent/notify",
        body.as_bytes().to_vec(),
        expect,
    ));
    c.headers.push(("x-agentkit-timestamp", ts.into()));
    if let Some(s) = sig {
        c.headers.push(("x-agentkit-signature", s));
    }
    c
}

fn cases(now: i64) -> Vec<Case> {
    let st = format!("/v1/opscore/agent/{AGENT}/state");
    // In the past (a report further ahead than the clock-skew allowance is refused).
    let ok_ts = json!("2025-01-01T00:00:00Z");
    let ahead = |secs: i64| {
        json!(time::render(
            chrono::DateTime::from_timestamp(now + secs, 0).expect("in range")
        ))
    };
    let good = report(AGENT, ok_ts.clone(), json!("idle"), json!({}));
    let now_s = now.to_string();
    let signed =
        |name, body: &str, expect| webhook(name, body, &now_s, Some(sign(SECRET, &now_s, body.as_bytes())), expect);
    let reg = r#"{"event_type":"REGISTER","agent_details":{"agentId":"new-agent","agentName":"n","version":"1","contactEndpoint":"http://h/task"}}"#;
    let tr = format!("/v1/opscore/agent/{AGENT}/workflow");
    let wf_json = json!({"id":"w","name":"W","tasks":[{"taskId":"a","name":"A"}]});
    vec![
        // Authentication (decided before the body is looked at).
        no_auth(case("no Authorization header, bad body", Method::POST, &st, "{", 401)),
        with(case("wrong key", Method::POST, &st, good.clone(), 401), "authorization", "Bearer nope"),
        with(case("Basic scheme", Method::POST, &st, good.clone(), 401), "authorization", &format!("Basic {KEY}")),
        with(case("empty bearer", Method::POST, &st, good.clone(), 401), "authorization", "Bearer "),
        with(case("key without scheme", Method::POST, &st, good.clone(), 401), "authorization", KEY),
        no_auth(case("GET state without key", Method::GET, &st, "", 401)),
        // Body syntax.
        case("empty body", Method::POST, &st, "", 400),
        case("truncated JSON", Method::POST, &st, "{\"agentId\":", 400),
        case("JSON array", Method::POST, &st, "[1,2]", 422),
        case("JSON string", Method::POST, &st, "\"idle\"", 422),
        case("JSON null", Method::POST, &st, "null", 422),
        case("trailing garbage", Method::POST, &st, [good.clone(), b" xyz".to_vec()].concat(), 400),
        case("invalid UTF-8", Method::POST, &st, vec![b'{', 0xff, 0xfe, b'}'], 400),
        case("nested 10k deep", Method::POST, &st, "[".repeat(10_000), 400),
        case("body over 64 KB", Method::POST, &st, report(AGENT, ok_ts.clone(), json!("idle"), json!({"x": "y".repeat(70_000)})), 413),
        // Field types and values.
        case("agentId missing", Method::POST, &st, serde_json::to_vec(&json!({"timestamp": ok_ts, "state": "idle"})).unwrap(), 422),
        case("agentId number", Method::POST, &st, report_raw(json!(5), ok_ts.clone(), json!("idle")), 422),
        case("agentId differs from path", Method::POST, &st, report("other", ok_ts.clone(), json!("idle"), json!({})), 400),
        case("timestamp missing", Method::POST, &st, serde_json::to_vec(&json!({"agentId": AGENT, "state": "idle"})).unwrap(), 422),
        case("timestamp number", Method::POST, &st, report(AGENT, json!(1795474230), json!("idle"), json!({})), 422),
        case("timestamp prose", Method::POST, &st, report(AGENT, json!("yesterday"), json!("idle"), json!({})), 400),
        case("timestamp without offset", Method::POST, &st, report(AGENT, json!("2030-01-01T00:00:00"), json!("idle"), json!({})), 400),
        case("timestamp month 13", Method::POST, &st, report(AGENT, json!("2030-13-01T00:00:00Z"), json!("idle"), json!({})), 400),
        // Issue 13, defect 1: a report from further ahead than the clock-skew allowance.
        case("timestamp 301 s ahead", Method::POST, &st, report(AGENT, ahead(301), json!("idle"), json!({})), 422),
        case("timestamp year 9999", Method::POST, &st, report(AGENT, json!("9999-12-31T23:59:59.999999999Z"), json!("idle"), json!({})), 422),
        case("timestamp year 2262+", Method::POST, &st, report(AGENT, json!("2262-04-12T00:00:00Z"), json!("idle"), json!({})), 422),
        case("state missing", Method::POST, &st, serde_json::to_vec(&json!({"agentId": AGENT, "timestamp": ok_ts})).unwrap(), 422),
        case("state empty", Method::POST, &st, report(AGENT, ok_ts.clone(), json!(""), json!({})), 422),
        case("state 65 chars", Method::POST, &st, report(AGENT, ok_ts.clone(), json!("x".repeat(65)), json!({})), 422),
        case("state with newline", Method::POST, &st, report(AGENT, ok_ts.clone(), json!("idle\n"), json!({})), 422),
        case("state NUL", Method::POST, &st, report(AGENT, ok_ts.clone(), json!("\u{0}"), json!({})), 422),
        case("state padded", Method::POST, &st, report(AGENT, ok_ts.clone(), json!(" idle "), json!({})), 422),
        case("state number", Method::POST, &st, report(AGENT, ok_ts.clone(), json!(3), json!({})), 422),
        case("state object", Method::POST, &st, report(AGENT, ok_ts.clone(), json!({"s": 1}), json!({})), 422),
        case("details array", Method::POST, &st, report(AGENT, ok_ts.clone(), json!("idle"), json!([1])), 422),
        case("details string", Method::POST, &st, report(AGENT, ok_ts.clone(), json!("idle"), json!("x")), 422),
        case("details over 32 KB", Method::POST, &st, report(AGENT, ok_ts.clone(), json!("idle"), json!({"x": "y".repeat(33_000)})), 422),
        case("everything wrong at once", Method::POST, &st, serde_json::to_vec(&json!({"agentId": 1, "timestamp": [], "state": null, "details": 2})).unwrap(), 422),
        // Ids, paths and methods.
        case("unknown agent", Method::POST, "/v1/opscore/agent/nobody/state", report("nobody", ok_ts.clone(), json!("idle"), json!({})), 404),
        case("encoded # in id", Method::POST, "/v1/opscore/agent/a%23b/state", good.clone(), 400),
        case("encoded / in id", Method::GET, "/v1/opscore/agent/a%2Fb/state", "", 400),
        case("id of 129 chars", Method::GET, &format!("/v1/opscore/agent/{}/state", "a".repeat(129)), "", 400),
        case("unicode id", Method::GET, "/v1/opscore/agent/%E2%80%AEagent/state", "", 400),
        case("dot-dot id", Method::GET, "/v1/opscore/agent/../state", "", 400),
        case("dot id", Method::GET, "/v1/opscore/agent/./state", "", 400),
        case("dot-dot workflow id", Method::GET, "/v1/opscore/workflows/..", "", 400),
        case("double slash", Method::GET, "//health", "", 404),
        case("empty id", Method::GET, "/v1/opscore/agent//state", "", 400),
        case("unknown route", Method::GET, "/v1/opscore/agentz", "", 404),
        case("DELETE state", Method::DELETE, &st, "", 405),
        case("PUT workflows", Method::PUT, "/v1/opscore/workflows", "{}", 405),
        case("GET trigger", Method::GET, &tr, "", 405),
        case("OPTIONS health", Method::OPTIONS, "/health", "", 405),
        // Query strings.
        case("limit 0", Method::GET, "/v1/opscore/agents?limit=0", "", 400),
        case("limit words", Method::GET, "/v1/opscore/agents?limit=ten", "", 400),
        case("limit 1000", Method::GET, &format!("/v1/opscore/agent/{AGENT}/state/history?limit=1000"), "", 400),
        case("limit twice", Method::GET, "/v1/opscore/agents?limit=1&limit=2", "", 400),
        case("empty cursor", Method::GET, "/v1/opscore/agents?cursor=", "", 400),
        case("empty state filter", Method::GET, "/v1/opscore/agents?state=", "", 400),
        // Issue 13, defect 8: cursors are opaque; a raw key or a cursor of another list is refused.
        case("raw key as cursor", Method::GET, &format!("/v1/opscore/agent/{AGENT}/state/history?cursor=00000000000000000001%23x"), "", 400),
        case("agent id as cursor", Method::GET, "/v1/opscore/agents?cursor=a", "", 400),
        case("not base64 cursor", Method::GET, "/v1/opscore/agents?cursor=%21%21%21", "", 400),
        case("history of unknown agent", Method::GET, "/v1/opscore/agent/nobody/state/history", "", 404),
        // Triggers.
        case("trigger with both", Method::POST, &tr, serde_json::to_vec(&json!({"workflowDefinitionId": "w", "workflowDefinition": wf_json})).unwrap(), 422),
        case("trigger with neither", Method::POST, &tr, "{}", 422),
        case("trigger id number", Method::POST, &tr, "{\"workflowDefinitionId\": 7}", 422),
        case("trigger inline invalid", Method::POST, &tr, serde_json::to_vec(&json!({"workflowDefinition": {"id": "x", "tasks": []}})).unwrap(), 422),
        case("trigger payload array", Method::POST, &tr, serde_json::to_vec(&json!({"workflowDefinition": wf_json, "initialPayload": [1]})).unwrap(), 422),
        with(case("bad Idempotency-Key", Method::POST, &tr, serde_json::to_vec(&json!({"workflowDefinition": wf_json})).unwrap(), 400), "idempotency-key", "has space"),
        // Issue 13, defect 6: an Idempotency-Key that is not visible ASCII is refused, not ignored.
        with(case("non-ASCII Idempotency-Key", Method::POST, &tr, serde_json::to_vec(&json!({"workflowDefinition": wf_json})).unwrap(), 400), "idempotency-key", "k\u{e9}y"),
        with(case("Idempotency-Key with a tab", Method::POST, &tr, serde_json::to_vec(&json!({"workflowDefinition": wf_json})).unwrap(), 400), "idempotency-key", "a\tb"),
        with(case("Idempotency-Key of 256 chars", Method::POST, &tr, serde_json::to_vec(&json!({"workflowDefinition": wf_json})).unwrap(), 400), "idempotency-key", &"k".repeat(256)),
        case("trigger unknown agent", Method::POST, "/v1/opscore/agent/nobody/workflow", serde_json::to_vec(&json!({"workflowDefinition": wf_json})).unwrap(), 404),
        case("trigger unknown workflow", Method::POST, &tr, "{\"workflowDefinitionId\": \"nope\"}", 404),
        // Definitions.
        with(case("definition as text/plain", Method::POST, "/v1/opscore/workflows", serde_json::to_vec(&wf_json).unwrap(), 415), "content-type", "text/plain"),
        with(case("broken YAML", Method::POST, "/v1/opscore/workflows", "id: [unclosed", 422), "content-type", "application/yaml"),
        case("cyclic definition", Method::POST, "/v1/opscore/workflows", serde_json::to_vec(&json!({"id":"c","name":"C","tasks":[{"taskId":"a","name":"A","nextTaskId":"b"},{"taskId":"b","name":"B","nextTaskId":"a"}]})).unwrap(), 422),
        case("definition over 256 KB", Method::POST, "/v1/opscore/workflows", vec![b' '; 300_000], 413),
        case("workflow id with #", Method::GET, "/v1/opscore/workflows/a%23b", "", 400),
        case("unknown workflow", Method::GET, "/v1/opscore/workflows/nope", "", 404),
        case("workflow bad version", Method::GET, "/v1/opscore/workflows/nope?version=a%20b", "", 400),
        // Sessions.
        case("session id not a UUID", Method::GET, "/v1/opscore/sessions/123", "", 400),
        case("cancel unknown session", Method::POST, "/v1/opscore/sessions/00000000-0000-4000-8000-000000000000/cancel", "", 404),
        // The webhook.
        webhook("webhook unsigned", reg, &now_s, None, 401),
        webhook("webhook wrong signature", reg, &now_s, Some("ab".repeat(32)), 401),
        webhook("webhook short signature", reg, &now_s, Some("abcd".into()), 401),
        webhook("webhook signature not hex", reg, &now_s, Some("zz".repeat(32)), 401),
        webhook("webhook signed with another secret", reg, &now_s, Some(sign("other", &now_s, reg.as_bytes())), 401),
        webhook("webhook 301 s old", reg, &(now - 301).to_string(), Some(sign(SECRET, &(now - 301).to_string(), reg.as_bytes())), 401),
        webhook("webhook 301 s ahead", reg, &(now + 301).to_string(), Some(sign(SECRET, &(now + 301).to_string(), reg.as_bytes())), 401),
        webhook("webhook timestamp prose", reg, "soon", Some(sign(SECRET, "soon", reg.as_bytes())), 401),
        signed("webhook malformed JSON", "{\"event_type\":", 400),
        signed("webhook unknown event", r#"{"event_type":"EXPLODE","agent_details":{"agentId":"a"}}"#, 400),
        signed("webhook without agent_details", r#"{"event_type":"REGISTER"}"#, 422),
        signed("webhook details wrong types", r#"{"event_type":"REGISTER","agent_details":{"agentId":"a","agentName":1,"capabilities":"x","contactEndpoint":"ftp://x","metadata":[]}}"#, 422),
        signed("webhook empty agentId", r#"{"event_type":"REGISTER","agent_details":{"agentId":"","agentName":"n","contactEndpoint":"http://h/t"}}"#, 400),
        // Issue 13, defect 2: ids that are path segments of their own.
        signed("webhook agentId .", r#"{"event_type":"REGISTER","agent_details":{"agentId":".","agentName":"n","contactEndpoint":"http://h/t"}}"#, 422),
        signed("webhook agentId ..", r#"{"event_type":"REGISTER","agent_details":{"agentId":"..","agentName":"n","contactEndpoint":"http://h/t"}}"#, 422),
        signed("webhook deregister ..", r#"{"event_type":"DEREGISTER","agent_details":{"agentId":".."}}"#, 400),
        signed("webhook deregister unknown", r#"{"event_type":"DEREGISTER","agent_details":{"agentId":"nobody"}}"#, 404),
        no_auth(case("webhook GET", Method::GET, "/v1/opscore/internal/agent/notify", "", 405)),
        webhook("webhook over 64 KB", &" ".repeat(70_000), &now_s, Some(sign(SECRET, &now_s, " ".repeat(70_000).as_bytes())), 413),
    ]
}

fn report_raw(agent: Value, ts: Value, state: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({"agentId": agent, "timestamp": ts, "state": state})).unwrap()
}

#[tokio::test]
async fn every_malformed_request_is_a_clear_4xx_and_writes_nothing() {
    let (store, mut changes) = InMemoryStore::with_changes();
    let store = Arc::new(store);
    let clock = ManualClock::at(chrono::Utc::now());
    let app = App::new(store.clone(), Arc::new(clock.clone()), Settings::default());
    let agent = AgentId::parse(AGENT).unwrap();
    app.register_agent(agent_details(&agent, "known")).await.unwrap();
    let first = StateReport {
        agent_id: agent.clone(),
        state: StateName::parse("idle").unwrap(),
        details: None,
        timestamp: clock.now(),
    };
    app.report_state(&first).await.unwrap();
    while changes.try_recv().is_ok() {}
    let before = store.get_agent(&agent).await.unwrap();

    let config = Config {
        api_keys: vec![Secret::new(KEY)],
        webhook_secrets: vec![Secret::new(SECRET)],
        ..Config::default()
    };
    let api = router(app, config, Surface::Both);
    let table = cases(clock.now().timestamp());
    assert!(table.len() >= 50, "{} cases", table.len());
    let mut failures = Vec::new();
    for c in &table {
        let mut headers = HeaderMap::new();
        for (k, v) in &c.headers {
            // Bytes as given (a non-ASCII header value is what a hostile client can send).
            headers.insert(*k, HeaderValue::from_bytes(v.as_bytes()).unwrap());
        }
        let resp = call(&api, c.method.clone(), &c.path, headers, c.body.clone()).await;
        let body = String::from_utf8_lossy(&resp.body).into_owned();
        let json: Option<Value> = serde_json::from_str(&body).ok();
        let detail = json.as_ref().and_then(|j| j["detail"].as_str()).unwrap_or("");
        if resp.status.as_u16() != c.expect
            || detail.is_empty()
            || json.as_ref().and_then(|j| j["code"].as_str()).is_none()
        {
            failures.push(format!("{}: got {} {body}, want {}", c.name, resp.status, c.expect));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases wrong:\n{}",
        failures.len(),
        table.len(),
        failures.join("\n")
    );
    assert!(changes.try_recv().is_err(), "a rejected request wrote something");
    assert_eq!(store.get_agent(&agent).await.unwrap(), before);
    assert_eq!(
        store
            .state_history(&agent, PageRequest::first(100))
            .await
            .unwrap()
            .items
            .len(),
        1
    );
    assert!(
        store
            .list_workflows(PageRequest::first(10))
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert!(
        store
            .get_agent(&AgentId::parse("new-agent").unwrap())
            .await
            .unwrap()
            .is_none()
    );
    println!("{} malformed requests, all refused with a clear 4xx", table.len());
}
