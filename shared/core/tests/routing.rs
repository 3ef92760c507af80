//! Routing by capability (issue 18), driven through the real App and Runner on the in-memory
//! store ([`EngineWorld`]): routed tasks go to any available agent announcing their capability,
//! one task per agent, the agent available longest first, the oldest task first.

use opscore_core::ids::{AgentId, SessionId};
use opscore_core::runner::DispatchRequest;
use opscore_core::session::{FailureCode, SessionStatus};
use opscore_core::task::TaskStatus;
use opscore_core::testing::EngineWorld as World;
use opscore_core::workflow::WorkflowDefinition;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};

/// A chain of tasks, one per capability given, routed by capability unless `routed` is false.
fn chain(id: &str, capabilities: &[&str], routed: bool, extra: Value) -> WorkflowDefinition {
    let tasks: Vec<Value> = capabilities
        .iter()
        .enumerate()
        .map(|(i, c)| {
            json!({"taskId": format!("step_{i}"), "name": format!("Step {i}"), "agentCapability": c,
                   "parameters": {"n": i},
                   "nextTaskId": (i + 1 < capabilities.len()).then(|| format!("step_{}", i + 1))})
        })
        .collect();
    let mut v = json!({"id": id, "name": id, "tasks": tasks, "routeByCapability": routed});
    if let Value::Object(extra) = extra {
        v.as_object_mut().unwrap().extend(extra);
    }
    WorkflowDefinition::from_value(v).unwrap()
}

/// The dispatches sent since `from`, in order.
fn since(w: &World, from: usize) -> Vec<DispatchRequest> {
    w.dispatches()[from..].to_vec()
}

/// The session's own agent, registered again announcing the capability `work`.
async fn home_announcing_work(w: &mut World) -> AgentId {
    let home = w.agent.clone();
    let mut details = opscore_core::testing::agent_details(&home, "sim");
    details.capabilities = vec!["work".into()];
    w.app.register_agent(details).await.unwrap();
    w.pump().await.unwrap();
    home
}

async fn inflight(w: &World, agent: &AgentId) -> Option<String> {
    w.app.agent(agent).await.unwrap().inflight.map(|i| i.dispatch.render())
}

#[tokio::test]
async fn a_two_step_workflow_needing_two_capabilities_runs_on_two_agents() {
    let mut w = World::new().await;
    let summariser = w.add_idle_agent(&["summarise"]).await;
    let translator = w.add_idle_agent(&["translate", "spell"]).await;
    w.report("idle", None).await;
    let s = w
        .trigger(chain("two", &["summarise", "translate"], true, json!(null)))
        .await;
    let d = w.dispatches();
    assert_eq!(d.len(), 1);
    assert_eq!((&d[0].agent_id, d[0].task_name.as_str()), (&summariser, "Step 0"));
    assert_eq!(d[0].payload, json!({"n": 0}));
    assert_eq!(inflight(&w, &summariser).await, Some(d[0].dispatch_id.clone()));
    assert_eq!(
        inflight(&w, &w.agent).await,
        None,
        "the session's own agent is not used"
    );
    // Completion comes from the agent holding the attempt, not from the session's agent.
    w.report("idle", Some(json!({"opscore_task_id": d[0].dispatch_id})))
        .await;
    assert_eq!(w.dispatches().len(), 1, "another agent's report completes nothing");
    w.work(&d[0]).await;
    let d = w.dispatches();
    assert_eq!(d.len(), 2);
    assert_eq!((&d[1].agent_id, d[1].task_name.as_str()), (&translator, "Step 1"));
    w.work(&d[1]).await;
    let v = w.app.session(&s).await.unwrap();
    assert_eq!(v.session.status, SessionStatus::Completed);
    let ran_on: HashMap<String, AgentId> = v
        .tasks
        .iter()
        .map(|t| (t.task_id.to_string(), t.agent_id.clone()))
        .collect();
    assert_eq!(ran_on["step_0"], summariser);
    assert_eq!(ran_on["step_1"], translator);
    for a in [&summariser, &translator] {
        assert_eq!(inflight(&w, a).await, None, "released at the end");
    }
}

#[tokio::test]
async fn routing_is_opt_in_and_a_definition_without_it_runs_on_the_sessions_agent() {
    let mut w = World::new().await;
    let capable = w.add_idle_agent(&["summarise"]).await;
    w.report("idle", None).await;
    let s = w.trigger(chain("plain", &["summarise"], false, json!(null))).await;
    let d = w.dispatches();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].agent_id, w.agent, "agentCapability alone routes nothing");
    assert_eq!(inflight(&w, &capable).await, None);
    w.work_last_task().await;
    assert_eq!(w.status(s).await, SessionStatus::Completed);
}

/// 100 one-task sessions over 10 capable agents: ten run at a time, one per agent; each agent
/// runs ten (the one available longest goes first), and tasks start in the order they became
/// runnable (none starved).
#[tokio::test]
async fn a_hundred_routed_tasks_over_ten_agents_run_ten_at_a_time_one_per_agent() {
    let mut w = World::new().await;
    let mut pool = Vec::new();
    for _ in 0..10 {
        pool.push(w.add_idle_agent(&["work"]).await);
    }
    let mut sessions: Vec<SessionId> = Vec::new();
    for i in 0..100 {
        sessions.push(w.trigger(chain(&format!("job{i}"), &["work"], true, json!(null))).await);
        w.clock.advance(chrono::Duration::milliseconds(1));
    }
    let mut done = 0;
    let mut ran: HashMap<AgentId, usize> = HashMap::new();
    let mut order: Vec<SessionId> = Vec::new();
    while done < 100 {
        let wave = since(&w, done);
        assert!(!wave.is_empty(), "stalled after {done} tasks");
        assert!(wave.len() <= 10, "at most ten at a time: {}", wave.len());
        let agents: HashSet<_> = wave.iter().map(|d| d.agent_id.clone()).collect();
        assert_eq!(agents.len(), wave.len(), "one task per agent");
        if done + 10 <= 100 {
            assert_eq!(wave.len(), 10, "every idle agent is busy while tasks wait");
        }
        for d in &wave {
            assert!(pool.contains(&d.agent_id));
            *ran.entry(d.agent_id.clone()).or_default() += 1;
            order.push(d.session_id);
        }
        done += wave.len();
        for d in &wave {
            w.work(d).await;
        }
    }
    assert_eq!(w.dispatches().len(), 100, "no task ran twice");
    assert_eq!(order, sessions, "oldest runnable first");
    for a in &pool {
        assert_eq!(ran.get(a), Some(&10), "every agent took its share");
    }
    for s in sessions {
        assert_eq!(w.status(s).await, SessionStatus::Completed);
    }
}

#[tokio::test]
async fn the_holder_deregistering_mid_task_fails_that_attempt_only_and_the_retry_lands_elsewhere() {
    let mut w = World::new().await;
    let first = w.add_idle_agent(&["work"]).await;
    let second = w.add_idle_agent(&["work"]).await;
    let s = w.trigger(chain("dereg", &["work"], true, json!(null))).await;
    let d = w.dispatches();
    assert_eq!(d[0].agent_id, first, "the agent available longest goes first");
    w.report_as(&first, "active", Some(json!({"opscore_task_id": d[0].dispatch_id})))
        .await;
    w.app.deregister_agent(&first).await.unwrap();
    w.pump().await.unwrap();
    let v = w.app.session(&s).await.unwrap();
    assert_eq!(v.session.status, SessionStatus::Running, "only the attempt failed");
    assert_eq!(v.tasks[0].status, TaskStatus::Pending);
    assert_eq!(v.tasks[0].attempts[0].error.as_deref(), Some("agent was deregistered"));
    // The retry's backoff (at most 2 s on the first retry) passes: it goes to the other agent.
    w.advance(2.5).await;
    let d = w.dispatches();
    assert_eq!(d.len(), 2);
    assert_eq!(d[1].agent_id, second);
    assert!(d[1].dispatch_id.ends_with(":2"), "attempt 2: {}", d[1].dispatch_id);
    w.work(&d[1]).await;
    assert_eq!(w.status(s).await, SessionStatus::Completed);
}

#[tokio::test]
async fn a_routed_session_cancelled_mid_run_frees_its_holder_for_the_next_task() {
    let mut w = World::new().await;
    let only = w.add_idle_agent(&["work"]).await;
    let s = w
        .trigger(chain("cancelled", &["work", "work"], true, json!(null)))
        .await;
    let waiting = w.trigger(chain("waiting", &["work"], true, json!(null))).await;
    assert_eq!(w.dispatches().len(), 1, "one agent, one task");
    assert_eq!(w.dispatches()[0].session_id, s);
    w.app.cancel_session(&s).await.unwrap();
    w.pump().await.unwrap();
    assert_eq!(w.status(s).await, SessionStatus::Cancelled);
    let d = w.dispatches();
    assert_eq!(d.len(), 2, "the freed agent takes the waiting task");
    assert_eq!((&d[1].agent_id, d[1].session_id), (&only, waiting));
    w.work(&d[1]).await;
    assert_eq!(w.status(waiting).await, SessionStatus::Completed);
    assert_eq!(
        w.status(s).await,
        SessionStatus::Cancelled,
        "a late report changes nothing"
    );
}

#[tokio::test]
async fn a_capability_no_agent_has_waits_then_fails_with_dispatch_timeout_naming_it() {
    let mut w = World::new().await;
    w.add_idle_agent(&["other"]).await;
    w.report("idle", None).await;
    let s = w
        .trigger(chain(
            "nobody",
            &["unheard-of"],
            true,
            json!({"dispatchTimeoutSeconds": 60}),
        ))
        .await;
    assert!(w.dispatches().is_empty());
    w.advance(30.0).await;
    assert_eq!(w.status(s).await, SessionStatus::Started, "still waiting");
    w.advance(31.0).await;
    let v = w.app.session(&s).await.unwrap();
    assert_eq!(v.session.status, SessionStatus::Failed);
    let e = v.session.error.unwrap();
    assert_eq!(e.code, FailureCode::DispatchTimeout);
    assert!(e.message.contains("\"unheard-of\""), "{}", e.message);
}

#[tokio::test]
async fn an_agent_becoming_idle_takes_the_oldest_of_its_own_and_its_capabilities_tasks() {
    let mut w = World::new().await;
    // The session's agent announces the capability too; it is busy at first.
    let home = home_announcing_work(&mut w).await;
    w.report("active", None).await;
    let routed = w.trigger(chain("routed", &["work"], true, json!(null))).await;
    w.clock.advance(chrono::Duration::seconds(1));
    let own = w.trigger(chain("own", &["work"], false, json!(null))).await;
    assert!(w.dispatches().is_empty());
    w.report("idle", None).await;
    let d = w.dispatches();
    assert_eq!(d.len(), 1, "one task per agent");
    assert_eq!(
        (&d[0].agent_id, d[0].session_id),
        (&home, routed),
        "the older one first"
    );
    w.work(&d[0]).await;
    let d = w.dispatches();
    assert_eq!((&d[1].agent_id, d[1].session_id), (&home, own));
}

#[tokio::test]
async fn a_session_started_without_an_agent_runs_every_task_on_capable_agents() {
    use opscore_core::app::DefinitionSource;
    let mut w = World::new().await;
    let summariser = w.add_idle_agent(&["summarise"]).await;
    let translator = w.add_idle_agent(&["translate"]).await;
    let def = chain("pooled", &["summarise", "translate"], true, json!(null));
    let t = w
        .app
        .start_routed(DefinitionSource::Inline(Box::new(def)), Some(json!({"doc": 1})), None)
        .await
        .unwrap();
    w.pump().await.unwrap();
    let d = w.dispatches();
    assert_eq!((&d[0].agent_id, &d[0].payload), (&summariser, &json!({"doc": 1})));
    w.work(&d[0]).await;
    let d = w.dispatches();
    assert_eq!(d[1].agent_id, translator);
    w.work(&d[1]).await;
    let v = w.app.session(&t.session_id).await.unwrap();
    assert_eq!(v.session.status, SessionStatus::Completed);
    assert_eq!(v.session.agent_id.as_str(), opscore_core::session::ROUTED_POOL);
    let pool = AgentId::parse(opscore_core::session::ROUTED_POOL).unwrap();
    let listed = w
        .app
        .list_sessions(&pool, opscore_core::store::PageRequest::first(10))
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 1, "listed under the pool's id");
    // No agent may take the pool's id.
    let err = w
        .app
        .register_agent(opscore_core::testing::agent_details(&pool, "impostor"))
        .await
        .unwrap_err();
    assert!(matches!(err, opscore_core::AppError::Invalid { .. }), "{err:?}");
}

#[tokio::test]
async fn a_session_without_an_agent_needs_every_task_routed() {
    use opscore_core::app::DefinitionSource;
    let w = World::new().await;
    for (def, field) in [
        (chain("off", &["x"], false, json!(null)), "routeByCapability"),
        (
            WorkflowDefinition::from_value(
                json!({"id": "half", "name": "half", "routeByCapability": true, "tasks": [
                {"taskId": "a", "name": "A", "agentCapability": "x", "nextTaskId": "b"},
                {"taskId": "b", "name": "B"}]}),
            )
            .unwrap(),
            "tasks[1].agentCapability",
        ),
    ] {
        match w
            .app
            .start_routed(DefinitionSource::Inline(Box::new(def)), None, None)
            .await
        {
            Err(opscore_core::AppError::Invalid { problems, .. }) => assert_eq!(problems[0].field, field),
            other => panic!("expected 422, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_trigger_can_switch_routing_on_for_one_session() {
    use opscore_core::app::DefinitionSource;
    let mut w = World::new().await;
    let capable = w.add_idle_agent(&["summarise"]).await;
    w.report("idle", None).await;
    let def = chain("per-session", &["summarise"], false, json!(null));
    let agent = w.agent.clone();
    let t = w
        .app
        .trigger_with(&agent, DefinitionSource::Inline(Box::new(def)), None, None, true)
        .await
        .unwrap();
    w.pump().await.unwrap();
    let d = w.dispatches();
    assert_eq!((&d[0].agent_id, d[0].session_id), (&capable, t.session_id));
}

/// An agent that finishes a task while routed tasks wait for its capability is handed the oldest
/// of them in the completion's own transaction: it is never released, listed idle and claimed.
#[tokio::test]
async fn an_agent_finishing_while_routed_tasks_wait_is_handed_the_oldest_in_its_completion() {
    let mut w = World::new().await;
    let worker = w.add_idle_agent(&["work"]).await;
    let mut sessions = Vec::new();
    for i in 0..3 {
        sessions.push(w.trigger(chain(&format!("job{i}"), &["work"], true, json!(null))).await);
        w.clock.advance(chrono::Duration::milliseconds(1));
    }
    let d = w.dispatches();
    assert_eq!(d.len(), 1, "one agent, one task; two wait");
    w.report_as(&worker, "active", Some(json!({"opscore_task_id": d[0].dispatch_id})))
        .await;
    w.calls.take();
    w.report_as(&worker, "idle", Some(json!({"opscore_task_id": d[0].dispatch_id})))
        .await;
    let d = w.dispatches();
    assert_eq!((d.len(), d[1].session_id), (2, sessions[1]), "the oldest waiting next");
    let calls = w.calls.take();
    assert_eq!(
        calls.get("commit"),
        Some(&2),
        "the completion with the hand-over, then the dispatch's acceptance: {calls:?}"
    );
    assert_eq!(calls.get("idle_agents"), None, "{calls:?}");
    assert_eq!(w.status(sessions[0]).await, SessionStatus::Completed);
    assert_eq!(inflight(&w, &worker).await, Some(d[1].dispatch_id.clone()));
    w.work(&d[1]).await;
    w.work(&w.dispatches()[2].clone()).await;
    for s in sessions {
        assert_eq!(w.status(s).await, SessionStatus::Completed);
    }
    assert_eq!(inflight(&w, &worker).await, None, "released after the last");
}

/// The runner's belief that routed tasks wait is only a hint: when the waiting task is gone
/// (cancelled) by the time the agent finishes, the agent is released and listed, and the next
/// routed task goes to it at once.
#[tokio::test]
async fn a_finishing_agent_finding_no_waiting_task_is_released_and_takes_the_next_at_once() {
    let mut w = World::new().await;
    let worker = w.add_idle_agent(&["work"]).await;
    let first = w.trigger(chain("first", &["work"], true, json!(null))).await;
    let waiting = w.trigger(chain("waiting", &["work"], true, json!(null))).await;
    assert_eq!(w.dispatches().len(), 1);
    w.app.cancel_session(&waiting).await.unwrap();
    w.pump().await.unwrap();
    let d = w.dispatches();
    w.work(&d[0]).await;
    assert_eq!(w.status(first).await, SessionStatus::Completed);
    assert_eq!(w.dispatches().len(), 1, "nothing was waiting any more");
    assert_eq!(inflight(&w, &worker).await, None);
    let later = w.trigger(chain("later", &["work"], true, json!(null))).await;
    let d = w.dispatches();
    assert_eq!((d.len(), &d[1].agent_id, d[1].session_id), (2, &worker, later));
}

/// An agent finishing a routed task while both a task of its own and a routed one wait takes
/// the older: its own tasks are never passed over for routed ones handed in a completion.
#[tokio::test]
async fn a_finishing_agent_with_its_own_task_waiting_takes_the_older_of_own_and_routed() {
    let mut w = World::new().await;
    home_announcing_work(&mut w).await;
    w.report("idle", None).await;
    let routed_first = w.trigger(chain("r1", &["work"], true, json!(null))).await;
    w.clock.advance(chrono::Duration::seconds(1));
    let own = w.trigger(chain("own", &["work"], false, json!(null))).await;
    w.clock.advance(chrono::Duration::seconds(1));
    let routed_later = w.trigger(chain("r2", &["work"], true, json!(null))).await;
    let d = w.dispatches();
    assert_eq!((d.len(), d[0].session_id), (1, routed_first));
    w.work(&d[0]).await;
    let d = w.dispatches();
    assert_eq!((d.len(), d[1].session_id), (2, own), "its own task is older");
    w.work(&d[1]).await;
    let d = w.dispatches();
    assert_eq!((d.len(), d[2].session_id), (3, routed_later));
}

/// Two routed tasks become runnable together with one idle agent: the first claims it and the
/// second, finding it being claimed, leaves it alone and waits. If the first claim then fails
/// because its own task moved (its session was cancelled meanwhile), the agent is not left idle
/// beside the waiting task: it looks for waiting tasks as if it had just become available.
#[tokio::test]
async fn an_agent_skipped_for_a_claim_that_then_fails_still_takes_the_waiting_task() {
    use opscore_core::app::DefinitionSource;
    use opscore_core::store::Change;
    let mut w = World::new().await;
    let worker = w.add_idle_agent(&["work"]).await;
    let mut tasks = Vec::new();
    for name in ["first", "second"] {
        let def = DefinitionSource::Inline(Box::new(chain(name, &["work"], true, json!(null))));
        let t = w.app.trigger(&w.agent, def, None, None).await.unwrap();
        w.clock.advance(chrono::Duration::milliseconds(1));
        tasks.push(t.session_id);
    }
    let mut changes = Vec::new();
    while let Ok(c) = w.changes.try_recv() {
        changes.push(c);
    }
    let runnable = |s: SessionId| {
        changes
            .iter()
            .find(|c| matches!(c, Change::Task { new: Some(t), .. } if t.session_id == s))
            .expect("the entry task's change")
    };
    // The first task's claim is held until its session is cancelled; the second task runs its
    // lookup meanwhile.
    let gate = w.calls.hold_next_commit();
    let (first, second) = (runnable(tasks[0]), runnable(tasks[1]));
    let cancel_first = async {
        tokio::task::yield_now().await;
        w.app.cancel_session(&tasks[0]).await.unwrap();
        gate.notify_one();
    };
    let (a, b, ()) = tokio::join!(w.runner.on_change(first), w.runner.on_change(second), cancel_first);
    a.unwrap();
    b.unwrap();
    let d = w.dispatches();
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!((&d[0].agent_id, d[0].session_id), (&worker, tasks[1]));
    w.pump().await.unwrap();
    assert_eq!(w.status(tasks[0]).await, SessionStatus::Cancelled);
    w.work(&d[0]).await;
    assert_eq!(w.status(tasks[1]).await, SessionStatus::Completed);
}
