//! The embedded store as the local stack uses it: file-backed across a restart, TTL sweeps,
//! and a table created by `ensure_table` once only. (The full storage contract runs in
//! `opscore-tests`, against DynamoDB Local and this store.)

use opscore_core::agent::{AgentDetails, StateName, StateReport};
use opscore_core::ids::AgentId;
use opscore_core::store::{PageRequest, RegisterOutcome, Store};
use opscore_dynamo::{DynamoStore, EmbeddedDynamo, ensure_table};
use std::time::Duration;

fn details(id: &str) -> AgentDetails {
    AgentDetails {
        agent_id: AgentId::parse(id).unwrap(),
        agent_name: "n".into(),
        version: "1".into(),
        capabilities: vec!["x".into()],
        contact_endpoint: "http://127.0.0.1:9/task".into(),
        metadata: serde_json::Map::new(),
        registration_time: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_backed_store_survives_a_restart() {
    let path = std::env::temp_dir().join(format!("opscore-embedded-{}.db", uuid::Uuid::new_v4()));
    let now = chrono::Utc::now();
    {
        let server = EmbeddedDynamo::start_with_file(&path).await.unwrap();
        let client = server.client().await;
        assert!(ensure_table(&client, "opscore").await.unwrap(), "created");
        assert!(!ensure_table(&client, "opscore").await.unwrap(), "exists");
        let store = DynamoStore::new(client, "opscore");
        assert!(matches!(
            store.register_agent(details("a1"), now).await.unwrap(),
            RegisterOutcome::Created(_)
        ));
        server.stop().await;
    }
    let server = EmbeddedDynamo::start_with_file(&path).await.unwrap();
    let client = server.client().await;
    assert!(!ensure_table(&client, "opscore").await.unwrap(), "kept");
    let store = DynamoStore::new(client, "opscore");
    let agent = store.get_agent(&AgentId::parse("a1").unwrap()).await.unwrap().unwrap();
    assert_eq!(agent.details, details("a1"));
    server.stop().await;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_sweep_removes_expired_history() {
    let server = EmbeddedDynamo::start().await.unwrap();
    let client = server.client().await;
    ensure_table(&client, "opscore").await.unwrap();
    let store = DynamoStore::new(client, "opscore");
    let long_ago = opscore_core::time::parse_rfc3339("2020-01-01T00:00:00Z").unwrap();
    store.register_agent(details("a1"), long_ago).await.unwrap();
    let report = |at| StateReport {
        agent_id: AgentId::parse("a1").unwrap(),
        state: StateName::parse("idle").unwrap(),
        details: None,
        timestamp: at,
    };
    // Received long ago with a one-day retention: already expired. A fresh one is kept.
    store
        .report_state(&report(long_ago), long_ago, Duration::from_secs(86_400))
        .await
        .unwrap();
    let now = chrono::Utc::now();
    store
        .report_state(&report(now), now, Duration::from_secs(86_400))
        .await
        .unwrap();
    let a1 = AgentId::parse("a1").unwrap();
    assert_eq!(
        store
            .state_history(&a1, PageRequest::first(10))
            .await
            .unwrap()
            .items
            .len(),
        2
    );
    let db = server.database().clone();
    let deleted = tokio::task::spawn_blocking(move || db.sweep_ttl())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(deleted, 1);
    let left = store.state_history(&a1, PageRequest::first(10)).await.unwrap().items;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].timestamp, now);
    // The agent itself has no TTL.
    assert!(store.get_agent(&a1).await.unwrap().is_some());
}
