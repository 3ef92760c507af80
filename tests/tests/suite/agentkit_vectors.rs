//! The real deliveries captured from AgentKit (`events/agentkit-webhook-vectors.json`, as AgentKit
//! signed them): each verifies byte for byte with the clock
//! pinned to its timestamp, registers its agent with every field as sent, is refused once the
//! clock moves past the window, and a replay has no second effect.

use http::{HeaderMap, HeaderValue, Method};
use opscore_core::app::{App, Settings};
use opscore_core::config::{Config, Secret};
use opscore_core::ids::AgentId;
use opscore_core::memory::InMemoryStore;
use opscore_core::store::Store;
use opscore_core::time::ManualClock;
use opscore_http::{Surface, router};
use opscore_tests::call::call;
use serde_json::Value;
use std::sync::Arc;

#[tokio::test]
async fn every_captured_delivery_verifies_and_registers_its_agent() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../events/agentkit-webhook-vectors.json");
    let vectors: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let deliveries = vectors["deliveries"].as_array().unwrap();
    assert_eq!(deliveries.len(), 3);
    for d in deliveries {
        let ts = d["header_X-AgentKit-Timestamp"].as_str().unwrap();
        let raw = d["raw_body"].as_str().unwrap();
        let sent = chrono::DateTime::from_timestamp(ts.parse().unwrap(), 0).unwrap();
        let clock = ManualClock::at(sent);
        // The store judges the replay record's expiry by the same pinned time as the app.
        let store = Arc::new(InMemoryStore::new().with_clock(Arc::new(clock.clone())));
        let app = App::new(store.clone(), Arc::new(clock.clone()), Settings::default());
        let config = Config {
            webhook_secrets: vec![Secret::new(d["secret"].as_str().unwrap())],
            ..Config::default()
        };
        let api = router(app, config, Surface::Webhook);
        let request = |sig: &str| {
            let mut h = HeaderMap::new();
            h.insert("content-type", HeaderValue::from_static("application/json"));
            h.insert("x-agentkit-timestamp", HeaderValue::from_str(ts).unwrap());
            h.insert("x-agentkit-signature", HeaderValue::from_str(sig).unwrap());
            call(
                &api,
                Method::POST,
                "/v1/opscore/internal/agent/notify",
                h,
                raw.as_bytes().to_vec(),
            )
        };
        let sig = d["header_X-AgentKit-Signature"].as_str().unwrap();

        let resp = request(sig).await;
        assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
        let body: Value = serde_json::from_str(raw).unwrap();
        let details = &body["agent_details"];
        let id = AgentId::parse(details["agentId"].as_str().unwrap()).unwrap();
        let agent = store.get_agent(&id).await.unwrap().expect("registered");
        assert_eq!(agent.details.agent_name, details["agentName"].as_str().unwrap());
        assert_eq!(agent.details.version, details["version"].as_str().unwrap());
        assert_eq!(
            agent.details.contact_endpoint,
            details["contactEndpoint"].as_str().unwrap()
        );
        assert_eq!(
            serde_json::to_value(&agent.details.capabilities).unwrap(),
            details["capabilities"]
        );
        match &details["metadata"] {
            Value::Null => assert!(agent.details.metadata.is_empty()),
            m => assert_eq!(
                &Value::Object(agent.details.metadata.clone()),
                m,
                "metadata (non-ASCII included) kept as sent"
            ),
        }
        assert_eq!(agent.current.state.as_str(), "UNKNOWN");

        // A replay inside the window: 200, no second effect.
        let replay = request(sig).await;
        assert_eq!(replay.status, 200);
        assert!(String::from_utf8_lossy(&replay.body).contains("Duplicate"));
        assert_eq!(store.get_agent(&id).await.unwrap().unwrap(), agent);

        // One flipped bit in the signature, or the clock 301 s later: refused.
        let mut bad = sig.to_owned();
        bad.replace_range(0..1, if sig.starts_with('0') { "1" } else { "0" });
        assert_eq!(request(&bad).await.status, 401);
        clock.advance(chrono::Duration::seconds(301));
        assert_eq!(request(sig).await.status, 401);
    }
}
