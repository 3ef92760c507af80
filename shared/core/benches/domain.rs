//! Domain hot paths: what every request or runner step pays before any I/O.

use criterion::{Criterion, criterion_group, criterion_main};
use opscore_core::agent::{AgentDetails, StateName, StateReport};
use opscore_core::ids::{AgentId, DispatchId, SessionId, TaskId};
use opscore_core::memory::InMemoryStore;
use opscore_core::store::Store;
use opscore_core::workflow::{Format, RetryPolicy, WorkflowDefinition};
use serde_json::json;
use std::hint::black_box;
use std::time::Duration;

fn chain(n: usize) -> Vec<u8> {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            json!({"taskId": format!("t{i}"), "name": format!("Task {i}"), "parameters": {"i": i},
                        "nextTaskId": if i + 1 < n { json!(format!("t{}", i + 1)) } else { json!(null) }})
        })
        .collect();
    serde_json::to_vec(&json!({"id": "chain", "name": "Chain", "tasks": tasks})).unwrap()
}

fn bench(c: &mut Criterion) {
    c.bench_function("state_name_parse_known_mixed_case", |b| {
        b.iter(|| StateName::parse(black_box("IDLE")))
    });
    c.bench_function("state_name_parse_custom", |b| {
        b.iter(|| StateName::parse(black_box("waiting-for-gpu")))
    });
    c.bench_function("agent_id_parse_uuid", |b| {
        b.iter(|| AgentId::parse(black_box("af8e59ab-6b62-47d1-b0af-fcb520de8640")))
    });
    let d = DispatchId {
        session_id: SessionId::new(),
        task_id: TaskId::parse("step_1").unwrap(),
        attempt: 2,
    };
    let rendered = d.render();
    c.bench_function("dispatch_id_parse", |b| {
        b.iter(|| DispatchId::parse(black_box(&rendered)))
    });
    let sample = include_bytes!("../../../local/sample-workflow.json");
    c.bench_function("workflow_parse_validate_sample_json", |b| {
        b.iter(|| WorkflowDefinition::parse(black_box(sample), Format::Json))
    });
    let big = chain(100);
    c.bench_function("workflow_parse_validate_100_tasks", |b| {
        b.iter(|| WorkflowDefinition::parse(black_box(&big), Format::Json))
    });
    let policy = RetryPolicy::default();
    c.bench_function("retry_backoff", |b| {
        b.iter(|| policy.backoff(black_box(3), black_box(0.5)))
    });
    let details = AgentDetails {
        agent_id: AgentId::parse("a1").unwrap(),
        agent_name: "n".into(),
        version: "1".into(),
        capabilities: vec!["summarize".into(), "translate".into()],
        contact_endpoint: "http://127.0.0.1:9400/task".into(),
        metadata: json!({"description": "x", "config": {"model": "m"}})
            .as_object()
            .unwrap()
            .clone(),
        registration_time: None,
    };
    c.bench_function("agent_details_digest", |b| b.iter(|| black_box(&details).digest()));

    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let store = InMemoryStore::new();
    rt.block_on(store.register_agent(details.clone(), chrono::Utc::now()))
        .unwrap();
    let mut ts = chrono::Utc::now();
    c.bench_function("memory_store_report_state", |b| {
        b.iter(|| {
            ts += chrono::Duration::microseconds(1);
            let r = StateReport {
                agent_id: details.agent_id.clone(),
                state: StateName::parse("idle").unwrap(),
                details: None,
                timestamp: ts,
            };
            rt.block_on(store.report_state(&r, ts, Duration::from_secs(60)))
                .unwrap()
        })
    });
}

criterion_group! {
    name = domain;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = bench
}
criterion_main!(domain);
