//! Replays every Lambda event fixture in `events/` (the same files `sam local invoke -e` uses)
//! through the real request conversion and handlers, in manifest order, against one in-memory
//! store, with the clock pinned to the AgentKit captures' signing time.

use opscore_core::app::{App, Settings};
use opscore_core::config::{Config, Secret};
use opscore_core::memory::InMemoryStore;
use opscore_core::time::ManualClock;
use opscore_http::{Surface, router};
use opscore_tests::call::{call_lambda, lambda_reply};
use serde_json::Value;
use std::path::PathBuf;
use std::sync::Arc;

fn events_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../events")
}

#[tokio::test]
async fn every_fixture_gets_its_expected_status_and_a_json_body() {
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(events_dir().join("manifest.json")).unwrap()).unwrap();
    let signed_at = chrono::DateTime::from_timestamp(manifest["signedAt"].as_i64().unwrap(), 0).unwrap();
    let clock = ManualClock::at(signed_at);
    // The store judges replay records' expiry by the same pinned time as the app.
    let store = Arc::new(InMemoryStore::new().with_clock(Arc::new(clock.clone())));
    let app = App::new(store, Arc::new(clock.clone()), Settings::default());
    let config = Config {
        api_keys: vec![Secret::new(manifest["apiKey"].as_str().unwrap())],
        webhook_secrets: vec![Secret::new(manifest["webhookSecret"].as_str().unwrap())],
        ..Config::default()
    };
    let state_api = router(app.clone(), config.clone(), Surface::StateApi);
    let webhook = router(app, config, Surface::Webhook);
    let invocations = manifest["invocations"].as_array().unwrap();
    assert!(invocations.len() >= 30);
    for inv in invocations {
        let name = inv["fixture"].as_str().unwrap();
        let raw = std::fs::read_to_string(events_dir().join(name)).unwrap();
        let req =
            lambda_http::request::from_str(&raw).unwrap_or_else(|e| panic!("{name}: not a Lambda HTTP event: {e}"));
        let api = match inv["function"].as_str().unwrap() {
            "StateApiFunction" => &state_api,
            "NotifyWebhookFunction" => &webhook,
            other => panic!("{name}: unknown function {other}"),
        };
        let resp = call_lambda(api, req).await;
        let status = resp.status().as_u16();
        let body = match resp.body() {
            lambda_http::Body::Text(t) => t.clone(),
            other => panic!("{name}: unexpected body {other:?}"),
        };
        assert_eq!(u64::from(status), inv["status"].as_u64().unwrap(), "{name}: {body}");
        let json: Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("{name}: body is not JSON: {body}"));
        if status >= 400 {
            assert!(
                json["detail"].as_str().is_some_and(|d| !d.is_empty()),
                "{name}: error body without detail: {body}"
            );
        }
        assert_eq!(resp.headers()["content-type"], "application/json", "{name}");
    }
}

/// The same captured delivery, once as text and once base64-encoded (function URLs may do
/// either): the base64 one verifies too, and being byte-identical, it is a replay.
#[tokio::test]
async fn base64_delivery_verifies_and_is_recognised_as_a_replay() {
    let raw = std::fs::read_to_string(events_dir().join("notify-register-base64.json")).unwrap();
    let v: Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(v["isBase64Encoded"], true);
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(events_dir().join("manifest.json")).unwrap()).unwrap();
    let clock = ManualClock::at(chrono::DateTime::from_timestamp(manifest["signedAt"].as_i64().unwrap(), 0).unwrap());
    let store = InMemoryStore::new().with_clock(Arc::new(clock.clone()));
    let app = App::new(Arc::new(store), Arc::new(clock), Settings::default());
    let config = Config {
        webhook_secrets: vec![Secret::new(manifest["webhookSecret"].as_str().unwrap())],
        ..Config::default()
    };
    let api = router(app.clone(), config, Surface::Webhook);
    let first = lambda_reply(call_lambda(&api, lambda_http::request::from_str(&raw).unwrap()).await);
    assert_eq!(first.status, 200, "{}", String::from_utf8_lossy(&first.body));
    assert!(String::from_utf8_lossy(&first.body).contains("registered successfully"));
    let again = lambda_reply(call_lambda(&api, lambda_http::request::from_str(&raw).unwrap()).await);
    assert_eq!(again.status, 200);
    assert!(
        String::from_utf8_lossy(&again.body).contains("Duplicate delivery"),
        "{}",
        String::from_utf8_lossy(&again.body)
    );
}
