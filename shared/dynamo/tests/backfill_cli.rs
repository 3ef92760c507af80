//! `opscore-backfill-keys` as an operator runs it, against the embedded store: its flags, the
//! JSON line per page, `--dry-run`, `--start-after`, and a second run that changes nothing.
//! (The backfill's cases against DynamoDB Local are in `opscore-tests`, `dynamo_cases`.)

use aws_sdk_dynamodb::types::AttributeValue;
use opscore_core::agent::AgentDetails;
use opscore_core::ids::AgentId;
use opscore_core::store::{PageRequest, Store};
use opscore_dynamo::{DynamoStore, EmbeddedDynamo, ensure_table};
use serde_json::Value;

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

/// Runs the binary and returns its exit status and the JSON lines it printed.
async fn backfill(args: Vec<String>) -> (bool, Vec<Value>) {
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_opscore-backfill-keys"))
            .args(args)
            .output()
            .expect("the binary runs")
    })
    .await
    .unwrap();
    let lines = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect();
    (out.status.success(), lines)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_backfills_old_keys_and_resumes_from_a_printed_position() {
    let server = EmbeddedDynamo::start().await.unwrap();
    let client = server.client().await;
    ensure_table(&client, "opscore").await.unwrap();
    let store = DynamoStore::new(client.clone(), "opscore");
    let now = chrono::Utc::now();
    let agents = ["a1", "a2", "a3"];
    for a in agents {
        store.register_agent(details(a), now).await.unwrap();
        // The keys the code before issue 16 wrote.
        client
            .update_item()
            .table_name("opscore")
            .key("pk", AttributeValue::S(format!("AGENT#{a}")))
            .key("sk", AttributeValue::S("A".into()))
            .update_expression("SET gsi1pk = :g1, gsi2pk = :g2")
            .expression_attribute_values(":g1", AttributeValue::S("AGENTS".into()))
            .expression_attribute_values(":g2", AttributeValue::S("STATE#UNKNOWN".into()))
            .send()
            .await
            .unwrap();
    }
    let listed = || async {
        store
            .list_agents(None, PageRequest::first(10))
            .await
            .unwrap()
            .items
            .len()
    };
    assert_eq!(listed().await, 0);

    let base = vec![
        "--table".to_string(),
        "opscore".into(),
        "--endpoint".into(),
        server.endpoint.clone(),
    ];
    let with = |extra: &[&str]| {
        let mut a = base.clone();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let (ok, lines) = backfill(with(&["--dry-run"])).await;
    assert!(ok);
    let last = lines.last().unwrap();
    assert_eq!(
        (last["done"].clone(), last["dryRun"].clone()),
        (true.into(), true.into())
    );
    assert_eq!(last["counts"]["updated"], 3);
    assert_eq!(listed().await, 0, "a dry run writes nothing");

    // One item per page: the first page's `next` is where an interrupted run resumes.
    let (ok, lines) = backfill(with(&["--page-size", "1"])).await;
    assert!(ok);
    let first_next = serde_json::to_string(&lines[0]["next"]).unwrap();
    assert_eq!(lines.last().unwrap()["counts"]["updated"], 3);
    assert_eq!(listed().await, 3);

    let (ok, lines) = backfill(with(&["--start-after", &first_next])).await;
    assert!(ok);
    let resumed = &lines.last().unwrap()["counts"];
    assert_eq!(
        (resumed["updated"].clone(), resumed["current"].clone()),
        (0.into(), 2.into()),
        "{lines:?}"
    );

    let (ok, lines) = backfill(base.clone()).await;
    assert!(ok);
    let again = &lines.last().unwrap()["counts"];
    assert_eq!(
        (again["updated"].clone(), again["current"].clone()),
        (0.into(), 3.into())
    );

    let (ok, _) = backfill(with(&["--start-after", "not json"])).await;
    assert!(!ok, "a malformed position is refused");
    server.stop().await;
}
