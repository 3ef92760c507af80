//! The runner's Lambda handler on real stream batches from Amazon DynamoDB Local: agents are
//! handled concurrently, one agent's failure is reported by its sequence number without holding
//! up the others, and redelivering from that checkpoint (what Lambda does) dispatches nothing twice.

use aws_lambda_events::event::dynamodb::Event as StreamEvent;
use opscore_core::agent::{StateName, StateReport};
use opscore_core::app::DefinitionSource;
use opscore_core::ids::AgentId;
use opscore_core::runner::Step;
use opscore_core::store::Store;
use opscore_core::time::{Clock, ManualClock};
use opscore_core::workflow::WorkflowDefinition;
use opscore_dynamo::StreamTail;
use opscore_lambda::handle_stream_batch;
use opscore_tests::fake::{ScriptedAgentKit, TEST_LEASE, agent_details, engine};
use opscore_tests::stores;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;

fn one_step() -> WorkflowDefinition {
    WorkflowDefinition::from_value(json!({"id":"one","name":"One","version":"1",
        "tasks":[{"taskId":"only","name":"Only","parameters":{},"nextTaskId":null}]}))
    .unwrap()
}

fn sequence_number(batch: &StreamEvent, i: usize) -> String {
    batch.records[i].change.sequence_number.clone().unwrap()
}

/// The agent a record's item belongs to (every item of ours carries `agentId`).
fn agent_of(record: &aws_lambda_events::event::dynamodb::EventRecord) -> Option<String> {
    let image = if record.change.new_image.is_empty() {
        &record.change.old_image
    } else {
        &record.change.new_image
    };
    match image.get("agentId") {
        Some(serde_dynamo::AttributeValue::S(s)) => Some(s.clone()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "dynamodb-local"),
    ignore = "needs DynamoDB Local: --features opscore-tests/dynamodb-local"
)]
async fn one_agents_failure_is_checkpointed_and_the_others_go_on() {
    let fx = stores::dynamodb_local().await;
    let dynamo = fx.dynamo();
    let mut tail = StreamTail::start(dynamo.streams_client().await, &dynamo.table)
        .await
        .unwrap();
    let store: Arc<dyn Store> = fx.store.clone();
    let clock = ManualClock::at(chrono::Utc::now());
    let agentkit = Arc::new(ScriptedAgentKit::default());
    let (app, runner) = engine(store, &clock, agentkit.clone());
    let lease = TEST_LEASE;

    let agents: Vec<AgentId> = (0..3)
        .map(|i| AgentId::parse(format!("batch-agent-{i}")).unwrap())
        .collect();
    for (i, agent) in agents.iter().enumerate() {
        app.register_agent(agent_details(agent, "batch")).await.unwrap();
        let idle = StateReport {
            agent_id: agent.clone(),
            state: StateName::parse("idle").unwrap(),
            details: None,
            timestamp: clock.now() + chrono::Duration::milliseconds(i as i64),
        };
        app.report_state(&idle).await.unwrap();
        app.trigger(agent, DefinitionSource::Inline(Box::new(one_step())), None, None)
            .await
            .unwrap();
    }
    let records = tail.poll_records().await.unwrap();
    let batch: StreamEvent = serde_json::from_value(opscore_dynamo::lambda_event(&records, tail.stream_arn())).unwrap();
    let per_agent: BTreeMap<String, usize> =
        batch
            .records
            .iter()
            .filter_map(agent_of)
            .fold(BTreeMap::new(), |mut m, a| {
                *m.entry(a).or_default() += 1;
                m
            });
    assert_eq!(
        per_agent.len(),
        3,
        "records of all three agents in one batch: {per_agent:?}"
    );

    // The first claim "dies" right after its transaction: that record fails.
    runner.inject_fault(Step::AfterClaim);
    let response = handle_stream_batch(&runner, &batch).await;
    assert_eq!(response.batch_item_failures.len(), 1, "{response:?}");
    let failed_seq = response.batch_item_failures[0].item_identifier.clone().unwrap();
    let failed_at = (0..batch.records.len())
        .find(|i| sequence_number(&batch, *i) == failed_seq)
        .expect("the failure names a record of the batch");
    let failed_agent = agent_of(&batch.records[failed_at]).expect("an agent's record failed");
    let dispatched: Vec<String> = agentkit
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|d| d.agent_id.to_string())
        .collect();
    assert_eq!(
        dispatched.len(),
        2,
        "the two other agents were not held up: {dispatched:?}"
    );
    assert!(!dispatched.contains(&failed_agent));

    // Lambda resumes from the lowest failed sequence number: the failed record and everything
    // after it, including records of agents already handled. Nothing is dispatched twice, and the
    // claim the dead invocation left is held by its lease.
    let mut redelivery = batch.clone();
    redelivery.records = batch.records[failed_at..].to_vec();
    let response = handle_stream_batch(&runner, &redelivery).await;
    assert!(response.batch_item_failures.is_empty(), "{response:?}");
    assert_eq!(agentkit.seen.lock().unwrap().len(), 2);

    // The lease runs out; the schedule's sweep fails that attempt (a retry with backoff, at most
    // 2 s by default) and a later sweep dispatches it, once.
    clock.advance(chrono::Duration::seconds(lease.as_secs() as i64 + 1));
    assert_eq!(runner.sweep().await.unwrap().failed_attempts, 1);
    clock.advance(chrono::Duration::seconds(5));
    runner.sweep().await.unwrap();
    let more = tail.poll_records().await.unwrap();
    let later: StreamEvent = serde_json::from_value(opscore_dynamo::lambda_event(&more, tail.stream_arn())).unwrap();
    let response = handle_stream_batch(&runner, &later).await;
    assert!(response.batch_item_failures.is_empty(), "{response:?}");
    let mut by_agent: BTreeMap<String, usize> = BTreeMap::new();
    for d in agentkit.seen.lock().unwrap().iter() {
        *by_agent.entry(d.agent_id.to_string()).or_default() += 1;
    }
    assert_eq!(
        by_agent,
        agents.iter().map(|a| (a.to_string(), 1)).collect::<BTreeMap<_, _>>(),
        "every agent's task dispatched exactly once"
    );
}
