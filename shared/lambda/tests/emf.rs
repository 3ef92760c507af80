//! The EMF lines the functions write: a workflow run on the in-process engine, recorded through
//! the global recorder the functions install (`emf::install`), flushed as an invocation ends.
//! One test in this binary: the recorder is the process's.

use opscore_core::agent::{StateName, StateReport};
use opscore_core::app::DefinitionSource;
use opscore_core::ids::AgentId;
use opscore_core::memory::InMemoryStore;
use opscore_core::metrics::{Metrics, names};
use opscore_core::store::Store;
use opscore_core::testing::{ScriptedAgentKit, agent_details, engine};
use opscore_core::time::{Clock, ManualClock};
use opscore_core::workflow::WorkflowDefinition;
use opscore_lambda::emf;
use serde_json::{Value, json};
use std::sync::Arc;

#[tokio::test]
async fn an_invocation_writes_one_emf_line_per_dimension_set_and_no_ids() {
    let collector = emf::install().unwrap();
    let (store, mut changes) = InMemoryStore::with_changes();
    let store: Arc<dyn Store> = Arc::new(store);
    let clock = ManualClock::at(chrono::Utc::now());
    // The engine as the functions build it: Metrics::global(), the EMF collector.
    let (app, runner) = engine(store, &clock, Arc::new(ScriptedAgentKit::default()));
    let agent = AgentId::parse("agent-emf-7f3a").unwrap();
    app.register_agent(agent_details(&agent, "emf")).await.unwrap();
    let idle = StateReport {
        agent_id: agent.clone(),
        state: StateName::parse("idle").unwrap(),
        details: None,
        timestamp: clock.now(),
    };
    app.report_state(&idle).await.unwrap();
    let def = WorkflowDefinition::from_value(json!({"id": "wf_emf", "name": "EMF", "version": "1",
        "tasks": [{"taskId": "only", "name": "Only"}]}))
    .unwrap();
    let session = app
        .trigger(&agent, DefinitionSource::Inline(Box::new(def)), None, None)
        .await
        .unwrap()
        .session_id;
    while let Ok(c) = changes.try_recv() {
        runner.on_change(&c).await.unwrap();
    }
    app.cancel_session(&session).await.unwrap();
    Metrics::global().webhook_refused("unauthorized");

    let mut out = Vec::new();
    emf::flush_to(collector, &mut out);
    let text = String::from_utf8(out).unwrap();
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let mut seen = Vec::new();
    for line in &lines {
        let aws = &line["_aws"];
        assert!(aws["Timestamp"].as_u64().unwrap() > 1_700_000_000_000, "{line}");
        let directives = aws["CloudWatchMetrics"].as_array().unwrap();
        assert_eq!(directives.len(), 1, "{line}");
        let d = &directives[0];
        assert_eq!(d["Namespace"], emf::NAMESPACE);
        for set in d["Dimensions"].as_array().unwrap() {
            for dim in set.as_array().unwrap() {
                let dim = dim.as_str().unwrap();
                assert!(
                    [names::WORKFLOW, names::REASON, names::WRITE].contains(&dim),
                    "dimension {dim} in {line}"
                );
                assert!(line[dim].is_string(), "the dimension's value is on the line: {line}");
            }
        }
        for m in d["Metrics"].as_array().unwrap() {
            let name = m["Name"].as_str().unwrap();
            let (_, unit, _) = names::ALL.iter().find(|(n, _, _)| *n == name).expect("a known metric");
            let unit = match unit {
                metrics::Unit::Milliseconds => "Milliseconds",
                _ => "Count",
            };
            assert_eq!(m["Unit"], unit, "{line}");
            let dims: Vec<&str> = d["Dimensions"][0]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap())
                .collect();
            seen.push((
                name.to_owned(),
                dims.iter()
                    .map(|k| line[*k].as_str().unwrap().to_owned())
                    .collect::<Vec<_>>(),
                line[name].clone(),
            ));
        }
    }
    let value = |name: &str, dims: &[&str]| {
        seen.iter()
            .find(|(n, d, _)| n == name && d == dims)
            .map(|(_, _, v)| v.clone())
            .unwrap_or_else(|| panic!("no {name} {dims:?} in:\n{text}"))
    };
    assert_eq!(value(names::TASKS_DISPATCHED, &["wf_emf"]), json!(1));
    assert_eq!(value(names::SESSIONS_CANCELLED, &["wf_emf"]), json!(1));
    assert_eq!(value(names::WEBHOOK_DELIVERIES_REFUSED, &["unauthorized"]), json!(1));
    // A latency is the list of the invocation's values (CloudWatch takes an array).
    assert_eq!(value(names::TRIGGER_TO_DISPATCH_MS, &["wf_emf"]), json!([0.0]));
    // No agent or session id anywhere on the lines: not as a dimension, not as a property.
    assert!(
        !text.contains(agent.as_str()) && !text.contains(&session.to_string()),
        "{text}"
    );

    // The next invocation starts afresh: nothing recorded, nothing written.
    let mut out = Vec::new();
    emf::flush_to(collector, &mut out);
    assert!(out.is_empty(), "{}", String::from_utf8_lossy(&out));
}
