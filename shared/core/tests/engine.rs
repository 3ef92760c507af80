//! Workflow engine scenarios (issue: workflow engine), driven through the real App and Runner
//! with a scripted AgentKit (the Dispatcher port) and a simulated agent that reports state the
//! way the reference agent does. Time is a manual clock, so retries, leases and timeouts are
//! exercised without sleeping.

use opscore_core::agent::{StateName, StateReport};
use opscore_core::app::DefinitionSource;
use opscore_core::ids::AgentId;
use opscore_core::memory::InMemoryStore;
use opscore_core::runner::{DispatchOutcome, RunnerError, Step};
use opscore_core::session::{FailureCode, SessionStatus};
use opscore_core::store::Store;
use opscore_core::task::TaskStatus;
use opscore_core::testing::{EngineWorld as World, ScriptedAgentKit, agent_details, engine};
use opscore_core::time::{Clock, ManualClock};
use opscore_core::workflow::WorkflowDefinition;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

fn unavailable() -> DispatchOutcome {
    DispatchOutcome::Failed {
        retryable: true,
        reason: "AgentKit answered 503 Service Unavailable".into(),
    }
}

fn sample(retry: Value) -> WorkflowDefinition {
    let mut v = json!({"id":"sample_workflow_id","name":"Sample","version":"1.0","tasks":[
        {"taskId":"step_1","name":"First Step","parameters":{"message":"This is the first step."},"nextTaskId":"step_2"},
        {"taskId":"step_2","name":"Second Step","parameters":{"value":123},"nextTaskId":null}]});
    if let Value::Object(extra) = retry {
        v.as_object_mut().unwrap().extend(extra);
    }
    WorkflowDefinition::from_value(v).unwrap()
}

#[tokio::test]
async fn two_step_sample_completes_in_order_with_the_contract_payloads() {
    let mut w = World::new().await;
    w.report("idle", None).await;
    let s = w.trigger(sample(json!(null))).await;
    let d = w.dispatches();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].task_name, "First Step");
    assert_eq!(
        d[0].payload,
        json!({"message":"This is the first step."}),
        "entry payload defaults to its parameters"
    );
    assert_eq!(w.status(s).await, SessionStatus::Running);
    w.work_last_task().await;
    let d = w.dispatches();
    assert_eq!(d.len(), 2, "nextTaskId is followed");
    assert_eq!(d[1].task_name, "Second Step");
    assert_eq!(d[1].payload, json!({"value":123}));
    w.work_last_task().await;
    let v = w.app.session(&s).await.unwrap();
    assert_eq!(v.session.status, SessionStatus::Completed);
    assert!(v.session.end_time.is_some());
    assert_eq!(v.session.result.as_ref().unwrap()["finalTaskId"], "step_2");
    assert!(
        v.tasks
            .iter()
            .all(|t| t.status == TaskStatus::Succeeded && t.attempt == 1)
    );
    let agent = w.app.agent(&w.agent).await.unwrap();
    assert!(agent.inflight.is_none(), "the agent is released at the end");
}

#[tokio::test]
async fn initial_payload_goes_to_the_entry_task_only() {
    let mut w = World::new().await;
    w.report("idle", None).await;
    let t = w
        .app
        .trigger(
            &w.agent,
            DefinitionSource::Inline(Box::new(sample(json!(null)))),
            Some(json!({"x": 1})),
            None,
        )
        .await
        .unwrap();
    w.pump().await.unwrap();
    assert_eq!(w.dispatches()[0].payload, json!({"x": 1}));
    w.work_last_task().await;
    assert_eq!(w.dispatches()[1].payload, json!({"value": 123}));
    w.work_last_task().await;
    assert_eq!(w.status(t.session_id).await, SessionStatus::Completed);
}

#[tokio::test]
async fn a_busy_agent_waits_then_proceeds() {
    let mut w = World::new().await;
    w.report("active", None).await;
    let s = w.trigger(sample(json!(null))).await;
    assert!(w.dispatches().is_empty(), "no dispatch to a busy agent");
    w.advance(60.0).await;
    assert!(
        w.dispatches().is_empty(),
        "the sweep does not dispatch to a busy agent either"
    );
    w.report("IDLE", None).await;
    assert_eq!(
        w.dispatches().len(),
        1,
        "dispatched as soon as the agent reports idle (any case)"
    );
    w.work_last_task().await;
    w.work_last_task().await;
    assert_eq!(w.status(s).await, SessionStatus::Completed);
}

#[tokio::test]
async fn agentkit_503_twice_then_202_succeeds_after_two_retries_with_growing_delays() {
    let mut w = World::new().await;
    w.agentkit.script.lock().unwrap().extend([unavailable(), unavailable()]);
    w.report("idle", None).await;
    let s = w
        .trigger(sample(
            json!({"retryPolicy": {"maxRetries": 3, "baseDelaySeconds": 2, "maxDelaySeconds": 300}}),
        ))
        .await;
    let mut delays = Vec::new();
    for retry in 1..=2u32 {
        let v = w.app.session(&s).await.unwrap();
        let t = &v.tasks[0];
        assert_eq!(t.status, TaskStatus::Pending);
        assert_eq!(t.attempt, retry);
        let delay = (t.due_at - w.clock.now()).to_std().unwrap_or_default();
        assert!(
            delay <= Duration::from_secs(2u64 << (retry - 1)),
            "retry {retry}: {delay:?} above its ceiling"
        );
        delays.push(delay);
        w.advance(delay.as_secs_f64() + 0.001).await;
    }
    assert_eq!(w.dispatches().len(), 3);
    let v = w.app.session(&s).await.unwrap();
    assert_eq!(v.tasks[0].status, TaskStatus::Dispatched);
    assert_eq!(v.tasks[0].attempts.len(), 3);
    assert!(v.tasks[0].attempts[0].error.as_deref().unwrap().contains("503"));
    w.work_last_task().await;
    w.work_last_task().await;
    assert_eq!(w.status(s).await, SessionStatus::Completed);
}

#[tokio::test]
async fn agentkit_always_503_fails_the_session_with_its_cause() {
    let mut w = World::new().await;
    w.agentkit.script.lock().unwrap().extend((0..10).map(|_| unavailable()));
    w.report("idle", None).await;
    let s = w
        .trigger(sample(
            json!({"retryPolicy": {"maxRetries": 3, "baseDelaySeconds": 1, "maxDelaySeconds": 2}}),
        ))
        .await;
    for _ in 0..6 {
        w.advance(2.1).await;
    }
    let v = w.app.session(&s).await.unwrap();
    assert_eq!(v.session.status, SessionStatus::Failed);
    let e = v.session.error.unwrap();
    assert_eq!(e.code, FailureCode::RetriesExhausted);
    assert_eq!(e.attempts, Some(4));
    assert_eq!(e.task_id.unwrap().as_str(), "step_1");
    assert!(
        e.message.contains("step_1") && e.message.contains("4 attempts") && e.message.contains("503"),
        "{}",
        e.message
    );
    assert_eq!(w.dispatches().len(), 4, "1 attempt + maxRetries 3");
    assert!(w.app.agent(&w.agent).await.unwrap().inflight.is_none());
}

#[tokio::test]
async fn a_non_retryable_rejection_fails_at_once() {
    let mut w = World::new().await;
    w.agentkit.script.lock().unwrap().push_back(DispatchOutcome::Failed {
        retryable: false,
        reason: "AgentKit answered 422".into(),
    });
    w.report("idle", None).await;
    let s = w.trigger(sample(json!(null))).await;
    let v = w.app.session(&s).await.unwrap();
    assert_eq!(v.session.status, SessionStatus::Failed);
    assert_eq!(v.session.error.unwrap().code, FailureCode::DispatchRejected);
}

#[tokio::test]
async fn an_agent_reporting_error_is_retried() {
    let mut w = World::new().await;
    w.report("idle", None).await;
    let s = w
        .trigger(sample(
            json!({"retryPolicy": {"maxRetries": 2, "baseDelaySeconds": 1, "maxDelaySeconds": 1}}),
        ))
        .await;
    let id = w.last_dispatch_id();
    w.report("active", Some(json!({"opscore_task_id": id}))).await;
    w.report("error", Some(json!({"opscore_task_id": id, "error": "model timeout"})))
        .await;
    let v = w.app.session(&s).await.unwrap();
    assert_eq!(v.tasks[0].status, TaskStatus::Pending);
    assert!(v.tasks[0].last_error.as_deref().unwrap().contains("model timeout"));
    // The agent is in `error`, so even a due retry waits until it is idle again.
    w.advance(1.5).await;
    assert_eq!(w.dispatches().len(), 1);
    w.report("idle", None).await;
    assert_eq!(w.dispatches().len(), 2);
    w.work_last_task().await;
    w.work_last_task().await;
    assert_eq!(w.status(s).await, SessionStatus::Completed);
}

#[tokio::test]
async fn an_agent_stuck_in_unknown_hits_the_dispatch_timeout() {
    let mut w = World::new().await;
    let s = w.trigger(sample(json!({"dispatchTimeoutSeconds": 30}))).await;
    w.advance(29.0).await;
    assert_eq!(w.status(s).await, SessionStatus::Started);
    w.advance(2.0).await;
    let v = w.app.session(&s).await.unwrap();
    assert_eq!(v.session.status, SessionStatus::Failed);
    let e = v.session.error.unwrap();
    assert_eq!(e.code, FailureCode::DispatchTimeout);
    assert!(e.message.contains("UNKNOWN"), "{}", e.message);
    assert!(w.dispatches().is_empty());
}

#[tokio::test]
async fn a_task_that_runs_too_long_times_out_and_is_retried() {
    let mut w = World::new().await;
    w.report("idle", None).await;
    let def = sample(
        json!({"taskTimeoutSeconds": 10, "retryPolicy": {"maxRetries": 1, "baseDelaySeconds": 1, "maxDelaySeconds": 1}}),
    );
    let s = w.trigger(def).await;
    let first = w.last_dispatch_id();
    w.report("active", Some(json!({"opscore_task_id": first}))).await;
    w.advance(10.5).await;
    let v = w.app.session(&s).await.unwrap();
    assert_eq!(v.tasks[0].status, TaskStatus::Pending);
    assert!(v.tasks[0].last_error.as_deref().unwrap().contains("timed out"));
    // A late "done" for the timed-out attempt must not complete anything.
    w.report("idle", Some(json!({"opscore_task_id": first}))).await;
    w.advance(1.5).await;
    let second = w.last_dispatch_id();
    assert_ne!(first, second, "each attempt has its own opscore_task_id");
    assert_eq!(w.app.session(&s).await.unwrap().tasks[0].status, TaskStatus::Dispatched);
    w.report("active", Some(json!({"opscore_task_id": second}))).await;
    w.advance(10.5).await;
    assert_eq!(
        w.status(s).await,
        SessionStatus::Failed,
        "second timeout exhausts maxRetries 1"
    );
}

/// Issue 14: `task_timeout` was documented and never produced. A task whose last attempt runs
/// past its timeout fails the session with it, whether the agent started the attempt or not.
#[tokio::test]
async fn a_task_whose_last_attempt_runs_too_long_fails_with_task_timeout() {
    let mut w = World::new().await;
    w.report("idle", None).await;
    let def = sample(
        json!({"taskTimeoutSeconds": 10, "retryPolicy": {"maxRetries": 1, "baseDelaySeconds": 1, "maxDelaySeconds": 1}}),
    );
    let s = w.trigger(def).await;
    // Attempt 1: AgentKit accepted it, the agent never said `active`; the run deadline holds.
    w.advance(9.5).await;
    assert_eq!(w.app.session(&s).await.unwrap().tasks[0].status, TaskStatus::Dispatched);
    w.advance(1.0).await;
    let v = w.app.session(&s).await.unwrap();
    assert_eq!(v.tasks[0].status, TaskStatus::Pending, "a retry is left");
    assert_eq!(v.session.error, None);
    // Attempt 2: the agent starts it and never finishes.
    w.advance(1.5).await;
    assert_eq!(w.dispatches().len(), 2);
    let second = w.last_dispatch_id();
    w.report("active", Some(json!({"opscore_task_id": second}))).await;
    w.advance(10.5).await;
    let v = w.app.session(&s).await.unwrap();
    assert_eq!(v.session.status, SessionStatus::Failed);
    assert_eq!(v.tasks[0].status, TaskStatus::Failed);
    let e = v.session.error.unwrap();
    assert_eq!(e.code, FailureCode::TaskTimeout);
    assert_eq!(e.attempts, Some(2));
    assert_eq!(e.task_id.as_ref().unwrap().as_str(), "step_1");
    assert!(
        e.message.contains("step_1") && e.message.contains("did not finish within 10 s"),
        "{}",
        e.message
    );
    assert!(
        e.last_error.as_deref().unwrap().contains("timed out after 10 s"),
        "{e:?}"
    );
    assert!(w.app.agent(&w.agent).await.unwrap().inflight.is_none());
    assert_eq!(w.dispatches().len(), 2, "nothing more runs");
}

/// The last attempt's lease expiring (its runner died before AgentKit's answer was recorded) is
/// not the task running too long: the session fails with `retries_exhausted`, not `task_timeout`.
#[tokio::test]
async fn a_last_attempt_lost_with_its_runner_exhausts_the_retries() {
    let mut w = World::new().await;
    w.report("idle", None).await;
    w.runner.inject_fault(Step::AfterDispatch);
    let def = sample(json!({"taskTimeoutSeconds": 10, "retryPolicy": {"maxRetries": 0}}));
    let t = w
        .app
        .trigger(&w.agent, DefinitionSource::Inline(Box::new(def)), None, None)
        .await
        .unwrap();
    assert!(matches!(w.pump().await, Err(RunnerError::Aborted(Step::AfterDispatch))));
    w.pump().await.unwrap();
    w.advance(31.0).await;
    let v = w.app.session(&t.session_id).await.unwrap();
    assert_eq!(v.session.status, SessionStatus::Failed);
    let e = v.session.error.unwrap();
    assert_eq!(e.code, FailureCode::RetriesExhausted);
    assert_eq!(e.attempts, Some(1));
    assert!(e.last_error.as_deref().unwrap().contains("lease expired"), "{e:?}");
}

#[tokio::test]
async fn active_then_idle_without_task_id_completes_the_inflight_task() {
    let mut w = World::new().await;
    w.report("idle", None).await;
    let s = w.trigger(sample(json!(null))).await;
    w.report("idle", None).await;
    assert_eq!(
        w.app.session(&s).await.unwrap().tasks[0].status,
        TaskStatus::Dispatched,
        "idle without id before active completes nothing"
    );
    w.report("active", None).await;
    w.report("idle", None).await;
    assert_eq!(w.dispatches().len(), 2);
    w.report("active", None).await;
    w.report("idle", None).await;
    assert_eq!(w.status(s).await, SessionStatus::Completed);
}

#[tokio::test]
async fn cancel_mid_run_releases_the_agent() {
    let mut w = World::new().await;
    w.report("idle", None).await;
    let s = w.trigger(sample(json!(null))).await;
    w.report("active", Some(json!({"opscore_task_id": w.last_dispatch_id()})))
        .await;
    let v = w.app.cancel_session(&s).await.unwrap();
    assert_eq!(v.session.status, SessionStatus::Cancelled);
    assert_eq!(v.tasks[0].status, TaskStatus::Cancelled);
    assert!(w.app.cancel_session(&s).await.is_err(), "a second cancel is a conflict");
    w.report("idle", Some(json!({"opscore_task_id": w.last_dispatch_id()})))
        .await;
    assert_eq!(w.dispatches().len(), 1, "nothing more runs");
    assert!(w.app.agent(&w.agent).await.unwrap().inflight.is_none());
    assert_eq!(w.status(s).await, SessionStatus::Cancelled);
}

#[tokio::test]
async fn deregistration_mid_run_fails_the_session_with_that_cause() {
    let mut w = World::new().await;
    w.report("idle", None).await;
    let s = w.trigger(sample(json!(null))).await;
    let other = w.trigger(sample(json!(null))).await;
    w.app.deregister_agent(&w.agent.clone()).await.unwrap();
    w.pump().await.unwrap();
    for id in [s, other] {
        let v = w.app.session(&id).await.unwrap();
        assert_eq!(v.session.status, SessionStatus::Failed);
        assert_eq!(v.session.error.unwrap().code, FailureCode::AgentDeregistered);
    }
    assert!(
        w.app
            .trigger(
                &w.agent,
                DefinitionSource::Inline(Box::new(sample(json!(null)))),
                None,
                None
            )
            .await
            .is_err()
    );
}

#[tokio::test]
async fn the_same_change_delivered_twice_dispatches_once() {
    let (store, mut changes) = InMemoryStore::with_changes();
    let store: Arc<dyn Store> = Arc::new(store);
    let clock = ManualClock::at(chrono::Utc::now());
    let agentkit = Arc::new(ScriptedAgentKit::default());
    let (app, runner) = engine(store, &clock, agentkit.clone());
    let agent = AgentId::parse("dup-agent").unwrap();
    app.register_agent(agent_details(&agent, "a")).await.unwrap();
    let report = StateReport {
        agent_id: agent.clone(),
        state: StateName::parse("idle").unwrap(),
        details: None,
        timestamp: clock.now(),
    };
    app.report_state(&report).await.unwrap();
    app.trigger(
        &agent,
        DefinitionSource::Inline(Box::new(sample(json!(null)))),
        None,
        None,
    )
    .await
    .unwrap();
    let mut batch = Vec::new();
    while let Ok(c) = changes.try_recv() {
        batch.push(c);
    }
    for _ in 0..2 {
        for c in &batch {
            runner.on_change(c).await.unwrap();
        }
    }
    assert_eq!(agentkit.seen.lock().unwrap().len(), 1);
}

/// The runner dies between each pair of steps; the lease and the sweep recover every time, and
/// the task completes exactly once.
#[tokio::test]
async fn a_runner_aborted_between_steps_is_recovered_exactly_once() {
    for step in [
        Step::AfterClaim,
        Step::AfterDispatch,
        Step::AfterConfirm,
        Step::BeforeComplete,
    ] {
        let mut w = World::new().await;
        w.report("idle", None).await;
        w.runner.inject_fault(step);
        let t = w
            .app
            .trigger(
                &w.agent,
                DefinitionSource::Inline(Box::new(sample(json!(null)))),
                None,
                None,
            )
            .await
            .unwrap();
        let s = t.session_id;
        // Deliver changes; the one that hits the fault fails (the batch would be retried).
        let mut failed = false;
        while let Ok(c) = w.changes.try_recv() {
            if let Err(e) = w.runner.on_change(&c).await {
                assert!(matches!(e, RunnerError::Aborted(_)));
                failed = true;
            }
        }
        if step == Step::BeforeComplete {
            assert!(!failed);
            let id = w.last_dispatch_id();
            w.report("active", Some(json!({"opscore_task_id": id}))).await;
            w.runner.inject_fault(Step::BeforeComplete);
            let report = w.next_report("idle", Some(json!({"opscore_task_id": id})));
            w.app.report_state(&report).await.unwrap();
            let mut redelivery = Vec::new();
            while let Ok(c) = w.changes.try_recv() {
                redelivery.push(c);
            }
            assert!(
                w.runner.on_change(&redelivery[0]).await.is_err(),
                "dies before recording completion"
            );
            // The stream redelivers the record: completion happens once.
            for c in &redelivery {
                w.runner.on_change(c).await.unwrap();
            }
            w.pump().await.unwrap();
        } else {
            assert!(failed, "{step:?} fault fired");
            // The lease expires; the sweep fails the attempt and schedules a retry.
            for _ in 0..5 {
                w.advance(31.0).await;
            }
        }
        let v = w.app.session(&s).await.unwrap();
        let t1 = v.tasks.iter().find(|t| t.task_id.as_str() == "step_1").unwrap();
        if step != Step::BeforeComplete {
            assert!(t1.attempt >= 1, "{step:?}");
            assert!(matches!(t1.status, TaskStatus::Dispatched), "{step:?}: {:?}", t1.status);
            w.work_last_task().await;
        }
        w.work_last_task().await;
        let v = w.app.session(&s).await.unwrap();
        assert_eq!(v.session.status, SessionStatus::Completed, "{step:?}");
        let succeeded_attempts: usize = v
            .tasks
            .iter()
            .flat_map(|t| &t.attempts)
            .filter(|a| a.outcome.as_deref() == Some("succeeded"))
            .count();
        assert_eq!(succeeded_attempts, 2, "{step:?}: each task succeeded exactly once");
    }
}

#[tokio::test]
async fn idempotency_key_returns_the_same_session() {
    let w = World::new().await;
    let key = opscore_core::ids::IdempotencyKey::parse("req-1").unwrap();
    let a = w
        .app
        .trigger(
            &w.agent,
            DefinitionSource::Inline(Box::new(sample(json!(null)))),
            None,
            Some(key.clone()),
        )
        .await
        .unwrap();
    let b = w
        .app
        .trigger(
            &w.agent,
            DefinitionSource::Inline(Box::new(sample(json!(null)))),
            None,
            Some(key),
        )
        .await
        .unwrap();
    assert_eq!(a.session_id, b.session_id);
    assert!(a.created && !b.created);
    assert_eq!(
        w.app
            .list_sessions(&w.agent, opscore_core::store::PageRequest::first(10))
            .await
            .unwrap()
            .items
            .len(),
        1
    );
}

/// Issue 13, defect 6: a key is bound to the request it first came with. The same request again
/// is a replay; another payload or another definition with the same key is refused (422), and
/// nothing new is created.
#[tokio::test]
async fn idempotency_key_reused_with_another_request_is_refused() {
    let w = World::new().await;
    let key = opscore_core::ids::IdempotencyKey::parse("req-1").unwrap();
    let trigger = |payload: Option<serde_json::Value>, def: serde_json::Value| {
        let app = w.app.clone();
        let agent = w.agent.clone();
        let key = key.clone();
        async move {
            app.trigger(
                &agent,
                DefinitionSource::Inline(Box::new(sample(def))),
                payload,
                Some(key),
            )
            .await
        }
    };
    let first = trigger(Some(json!({"a": 1, "b": 2})), json!(null)).await.unwrap();
    assert!(first.created);
    // The same request (keys in another order): a replay.
    let again = trigger(Some(json!({"b": 2, "a": 1})), json!(null)).await.unwrap();
    assert_eq!((again.session_id, again.created), (first.session_id, false));
    // Another payload, no payload, another definition: refused.
    for (payload, def) in [
        (Some(json!({"a": 1, "b": 3})), json!(null)),
        (None, json!(null)),
        (Some(json!({"a": 1, "b": 2})), json!({"retryPolicy": {"maxRetries": 1}})),
    ] {
        match trigger(payload.clone(), def.clone()).await {
            Err(opscore_core::AppError::Invalid { message, problems }) => {
                assert!(message.contains("different request"), "{message}");
                assert_eq!(problems[0].field, "Idempotency-Key");
            }
            other => panic!("{payload:?} {def}: expected 422, got {other:?}"),
        }
    }
    assert_eq!(
        w.app
            .list_sessions(&w.agent, opscore_core::store::PageRequest::first(10))
            .await
            .unwrap()
            .items
            .len(),
        1
    );
}

/// A three-task workflow on an agent that names its attempts: the first task is claimed, the
/// next ones are handed to the agent as it finishes the last (no claim, no read of the session,
/// no look for runnable tasks in between), and the runner reads the session from the store
/// not once: it acts on the images it wrote.
#[tokio::test]
async fn a_session_runs_on_its_agent_from_the_images_the_runner_wrote() {
    let mut w = World::new().await;
    w.report("idle", None).await;
    let def = WorkflowDefinition::from_value(json!({"id":"three","name":"Three","tasks":[
        {"taskId":"a","name":"A","nextTaskId":"b"},
        {"taskId":"b","name":"B","nextTaskId":"c"},
        {"taskId":"c","name":"C"}]}))
    .unwrap();
    w.calls.take();
    let s = w.trigger(def).await;
    for _ in 0..3 {
        w.work_last_task().await;
    }
    assert_eq!(w.status(s).await, SessionStatus::Completed);
    let names: Vec<_> = w.dispatches().iter().map(|d| d.task_name.clone()).collect();
    assert_eq!(names, ["A", "B", "C"]);
    let calls = w.calls.take();
    println!("store calls for a three-task session: {calls:?}");
    // The status read by the test itself (`w.status`) is the one get_session.
    assert_eq!(calls.get("get_session"), Some(&1), "{calls:?}");
    // Only the release at the end looks for the agent's next work.
    assert_eq!(calls.get("runnable_tasks"), Some(&1), "{calls:?}");
    // Trigger 1; claim, confirm; then per task `active` and `idle` reports (6), the running
    // mark (3), the completion with hand-over and its confirm (2 × 2), the last completion (1).
    assert_eq!(calls.get("commit"), Some(&(1 + 2 + 3 + 4 + 1)), "{calls:?}");
    assert_eq!(calls.get("report_state"), Some(&6), "{calls:?}");
}

/// The agent finished a task but reported again before the runner handed it the next one: the
/// hand-over is refused, the agent released, and the next task waits, pending, until the agent
/// is idle again.
#[tokio::test]
async fn a_hand_over_refused_leaves_the_next_task_pending_for_a_claim() {
    let mut w = World::new().await;
    w.report("idle", None).await;
    let s = w.trigger(sample(json!(null))).await;
    let id = w.last_dispatch_id();
    w.report("active", Some(json!({"opscore_task_id": id}))).await;
    // `idle` naming the attempt, then `busy` before the runner sees either.
    let idle = w.next_report("idle", Some(json!({"opscore_task_id": id})));
    w.app.report_state(&idle).await.unwrap();
    let busy = w.next_report("busy", None);
    w.app.report_state(&busy).await.unwrap();
    w.pump().await.unwrap();
    let v = w.app.session(&s).await.unwrap();
    let step_2 = v.tasks.iter().find(|t| t.task_id.as_str() == "step_2").unwrap();
    assert_eq!(step_2.status, TaskStatus::Pending, "not handed to a busy agent");
    assert_eq!(w.app.agent(&w.agent).await.unwrap().inflight, None, "released");
    assert_eq!(w.dispatches().len(), 1);
    w.report("idle", None).await;
    assert_eq!(w.dispatches().len(), 2, "claimed once the agent is idle");
    w.work_last_task().await;
    assert_eq!(w.status(s).await, SessionStatus::Completed);
}
