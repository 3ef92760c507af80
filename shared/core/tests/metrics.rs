//! The engine's figures (opscore_core::metrics): workflow runs through the real App and Runner
//! (scripted AgentKit, manual clock) produce the expected counts, with bounded dimensions only.

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use opscore_core::metrics::{Metrics, names};
use opscore_core::runner::DispatchOutcome;
use opscore_core::session::SessionStatus;
use opscore_core::testing::EngineWorld;
use opscore_core::workflow::WorkflowDefinition;
use serde_json::{Value, json};
use std::sync::Arc;

/// The engine's world, recording its figures into a recorder of its own.
struct World {
    engine: EngineWorld,
    snapshotter: Snapshotter,
}

impl std::ops::Deref for World {
    type Target = EngineWorld;
    fn deref(&self) -> &EngineWorld {
        &self.engine
    }
}

impl std::ops::DerefMut for World {
    fn deref_mut(&mut self) -> &mut EngineWorld {
        &mut self.engine
    }
}

impl World {
    async fn new() -> Self {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let metrics = Metrics::to(Arc::new(recorder));
        let engine =
            EngineWorld::with(|app, runner| (app.with_metrics(metrics.clone()), runner.with_metrics(metrics))).await;
        Self { engine, snapshotter }
    }

    /// The reference agent's work on the last dispatch, taking 3.5 s (the run time recorded).
    async fn work_last_task(&mut self) {
        let id = self.last_dispatch_id();
        self.advance(1.5).await;
        self.report("active", Some(json!({"opscore_task_id": id}))).await;
        self.advance(2.0).await;
        self.report("idle", Some(json!({"opscore_task_id": id}))).await;
    }

    /// Every figure recorded so far: (name, labels, value). Once: a snapshot drains the histograms.
    fn figures(&self) -> Figures {
        Figures(
            self.snapshotter
                .snapshot()
                .into_vec()
                .into_iter()
                .map(|(k, _, _, v)| {
                    let key = k.key();
                    let labels = key
                        .labels()
                        .map(|l| (l.key().to_owned(), l.value().to_owned()))
                        .collect();
                    (key.name().to_owned(), labels, v)
                })
                .collect(),
        )
    }
}

/// A figure: its name, its labels (dimensions) and its value.
type Figure = (String, Vec<(String, String)>, DebugValue);

struct Figures(Vec<Figure>);

impl Figures {
    fn count(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.0
            .iter()
            .filter(|(n, l, _)| n == name && l.len() == labels.len())
            .filter(|(_, l, _)| labels.iter().all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v)))
            .map(|(_, _, v)| match v {
                DebugValue::Counter(n) => *n,
                other => panic!("{name} is not a counter: {other:?}"),
            })
            .sum()
    }

    fn samples(&self, name: &str, workflow: &str) -> Vec<f64> {
        self.0
            .iter()
            .filter(|(n, l, _)| n == name && l == &[(names::WORKFLOW.to_owned(), workflow.to_owned())])
            .flat_map(|(_, _, v)| match v {
                DebugValue::Histogram(values) => values.iter().map(|v| v.into_inner()).collect::<Vec<_>>(),
                other => panic!("{name} is not a histogram: {other:?}"),
            })
            .collect()
    }
}

fn two_steps(id: &str, extra: Value) -> WorkflowDefinition {
    let mut v = json!({"id": id, "name": "Two steps", "version": "1", "tasks": [
        {"taskId": "step_1", "name": "First", "nextTaskId": "step_2"},
        {"taskId": "step_2", "name": "Second", "nextTaskId": null}]});
    if let Value::Object(extra) = extra {
        v.as_object_mut().unwrap().extend(extra);
    }
    WorkflowDefinition::from_value(v).unwrap()
}

fn unavailable() -> DispatchOutcome {
    DispatchOutcome::Failed {
        retryable: true,
        reason: "AgentKit answered 503".into(),
    }
}

#[tokio::test]
async fn a_completed_a_failed_and_a_cancelled_run_are_counted_by_workflow_and_reason() {
    let mut w = World::new().await;
    w.report("idle", None).await;
    let retry = json!({"retryPolicy": {"maxRetries": 1, "baseDelaySeconds": 1, "maxDelaySeconds": 1}});

    // Completes: its first dispatch is refused once (503), retried, then both steps succeed.
    w.agentkit.script.lock().unwrap().push_back(unavailable());
    let ok = w.trigger(two_steps("wf_ok", retry.clone())).await;
    w.advance(1.1).await;
    w.work_last_task().await;
    w.work_last_task().await;
    assert_eq!(
        w.app.session(&ok).await.unwrap().session.status,
        SessionStatus::Completed
    );

    // Fails: AgentKit refuses every attempt (1 + 1 retry).
    w.agentkit.script.lock().unwrap().extend([unavailable(), unavailable()]);
    let failed = w.trigger(two_steps("wf_fail", retry.clone())).await;
    w.advance(1.1).await;
    let v = w.app.session(&failed).await.unwrap();
    assert_eq!(v.session.status, SessionStatus::Failed);

    // Cancelled while its first task runs.
    let cancelled = w.trigger(two_steps("wf_cancel", retry)).await;
    w.app.cancel_session(&cancelled).await.unwrap();

    let wf = |id: &'static str| [(names::WORKFLOW, id)];
    let w = (w.figures(), w);
    let (f, w) = (&w.0, &w.1);
    assert_eq!(
        f.count(names::TASKS_DISPATCHED, &wf("wf_ok")),
        3,
        "2 attempts of step_1, 1 of step_2"
    );
    assert_eq!(f.count(names::TASKS_RETRIED, &wf("wf_ok")), 1);
    assert_eq!(f.count(names::TASKS_SUCCEEDED, &wf("wf_ok")), 2);
    assert_eq!(f.count(names::SESSIONS_COMPLETED, &wf("wf_ok")), 1);

    assert_eq!(f.count(names::TASKS_DISPATCHED, &wf("wf_fail")), 2);
    assert_eq!(f.count(names::TASKS_RETRIED, &wf("wf_fail")), 1);
    let by_reason = [(names::WORKFLOW, "wf_fail"), (names::REASON, "retries_exhausted")];
    assert_eq!(f.count(names::TASKS_FAILED, &by_reason), 1);
    assert_eq!(f.count(names::SESSIONS_FAILED, &by_reason), 1);
    assert_eq!(f.count(names::SESSIONS_COMPLETED, &wf("wf_fail")), 0);

    assert_eq!(f.count(names::TASKS_DISPATCHED, &wf("wf_cancel")), 1);
    assert_eq!(f.count(names::SESSIONS_CANCELLED, &wf("wf_cancel")), 1);
    assert_eq!(f.count(names::TASKS_SUCCEEDED, &wf("wf_cancel")), 0);

    // One trigger → dispatch latency per session (its first claim); the retried session's first
    // claim came at once, so 0 ms on the manual clock.
    assert_eq!(f.samples(names::TRIGGER_TO_DISPATCH_MS, "wf_ok"), vec![0.0]);
    assert_eq!(f.samples(names::TRIGGER_TO_DISPATCH_MS, "wf_cancel").len(), 1);
    // Run time of each successful attempt: claim → idle, 3.5 s of manual clock each.
    assert_eq!(f.samples(names::TASK_RUN_TIME_MS, "wf_ok"), vec![3500.0, 3500.0]);

    // Bounded dimensions only: no agent or session id anywhere.
    for (name, labels, _) in &f.0 {
        for (k, v) in labels {
            assert!(
                [names::WORKFLOW, names::REASON, names::WRITE].contains(&k.as_str()),
                "{name} has dimension {k}"
            );
            for id in [
                w.agent.to_string(),
                ok.to_string(),
                failed.to_string(),
                cancelled.to_string(),
            ] {
                assert!(!v.contains(&id), "{name} {k}={v} carries an id");
            }
        }
    }
}

#[tokio::test]
async fn a_claim_of_a_busy_agent_counts_as_a_conflict_of_its_write() {
    let mut w = World::new().await;
    w.report("idle", None).await;
    w.trigger(two_steps("wf_a", json!(null))).await;
    // The agent holds wf_a's task: wf_b's claim is refused by the agent's condition.
    let b = w.trigger(two_steps("wf_b", json!(null))).await;
    w.runner
        .try_dispatch(&opscore_core::task::TaskKey {
            session_id: b,
            task_id: opscore_core::ids::TaskId::parse("step_1").unwrap(),
        })
        .await
        .unwrap();
    let f = w.figures();
    assert!(f.count(names::WRITE_CONFLICTS, &[(names::WRITE, "ClaimAgent")]) >= 1);
    assert_eq!(f.count(names::TASKS_DISPATCHED, &[(names::WORKFLOW, "wf_b")]), 0);
}
