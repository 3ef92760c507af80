//! The storage contract, written once and run against every adapter of the port
//! ([`crate::store_contract_tests!`] stamps out one `#[tokio::test]` per case and store).
//!
//! The in-memory store is the reference; every other store must give the same answers.

use crate::stores::Fixture;
use chrono::Duration as ChronoDuration;
use opscore_core::agent::{AgentDetails, CurrentState, Inflight, KnownState, StateName, StateReport};
use opscore_core::ids::{AgentId, DispatchId, IdempotencyKey, SessionId, TaskId, WorkflowId, WorkflowVersion};
use opscore_core::session::{FailureCause, FailureCode, Session, SessionStatus};
use opscore_core::store::*;
use opscore_core::task::{Attempt, TaskInstance, TaskKey, TaskStatus};
use opscore_core::time::{self, Timestamp};
use opscore_core::workflow::WorkflowDefinition;
use serde_json::{Map, Value, json};
use std::time::Duration;

pub const HISTORY_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

// ----- builders -----

/// A fixed instant plus `secs` seconds.
pub fn t(secs: i64) -> Timestamp {
    time::parse_rfc3339("2026-03-01T12:00:00Z").expect("valid") + ChronoDuration::seconds(secs)
}

pub fn aid(s: &str) -> AgentId {
    AgentId::parse(s).expect("valid agent id")
}

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        other => panic!("not an object: {other}"),
    }
}

/// Details with JSON that native DynamoDB maps would not give back (1.0, 1e300, deep nesting).
pub fn details(id: &str) -> AgentDetails {
    AgentDetails {
        agent_id: aid(id),
        agent_name: format!("Agent {id}"),
        version: "1.0.0".into(),
        capabilities: vec!["summarize".into(), "translate".into()],
        contact_endpoint: format!("http://127.0.0.1:9/{id}/task"),
        metadata: obj(json!({
            "region": "eu-west-1",
            "weight": 1.0,
            "huge": 1e300,
            "nested": {"a": {"b": {"c": [1, 2.5, null, "x", {"d": true}]}}},
            "empty": {},
        })),
        registration_time: Some(t(-100)),
    }
}

pub fn report(id: &str, state: &str, at: Timestamp) -> StateReport {
    StateReport {
        agent_id: aid(id),
        state: StateName::parse(state).expect("valid state"),
        details: Some(obj(json!({"load": 0.5, "note": format!("{state} at {at}")}))),
        timestamp: at,
    }
}

pub fn definition(id: &str, version: &str) -> WorkflowDefinition {
    WorkflowDefinition::from_value(json!({
        "id": id,
        "name": format!("Workflow {id}"),
        "version": version,
        "tasks": [
            {"taskId": "fetch", "name": "Fetch", "nextTaskId": "summarize",
             "parameters": {"url": "https://example.com", "threshold": 1.0, "huge": 1e300}},
            {"taskId": "summarize", "name": "Summarize", "timeoutSeconds": 30.0}
        ],
        "retryPolicy": {"maxRetries": 2, "baseDelaySeconds": 1.5, "maxDelaySeconds": 60.0}
    }))
    .expect("valid definition")
}

pub fn session(agent: &str, start: Timestamp) -> Session {
    Session::start(
        aid(agent),
        definition("wf", "1.0"),
        Some(json!({"input": 1.0, "list": [1, 2.5, null]})),
        None,
        start,
    )
}

pub fn task(s: &Session, id: &str, status: TaskStatus, due: Timestamp) -> TaskInstance {
    TaskInstance {
        session_id: s.session_id,
        task_id: TaskId::parse(id).expect("valid task id"),
        agent_id: s.agent_id.clone(),
        capability: None,
        name: format!("Task {id}"),
        payload: json!({"threshold": 1.0, "items": [1, 2, 3]}),
        next_task_id: None,
        status,
        attempt: 0,
        max_retries: 3,
        created_at: due,
        updated_at: due,
        due_at: due,
        dispatch_deadline: Some(due + ChronoDuration::seconds(600)),
        lease_expires_at: None,
        run_deadline: None,
        timer_at: Some(due + ChronoDuration::seconds(600)),
        attempts: vec![],
        result: None,
        last_error: None,
        rev: 0,
    }
}

/// The next revision of `t` in `status`.
pub fn moved(t: &TaskInstance, status: TaskStatus) -> TaskInstance {
    let mut n = t.clone();
    n.status = status;
    n.rev += 1;
    n.updated_at += ChronoDuration::seconds(1);
    if status != TaskStatus::Pending {
        n.timer_at = None;
    }
    n
}

fn dispatch_of(t: &TaskInstance, attempt: u32) -> DispatchId {
    DispatchId {
        session_id: t.session_id,
        task_id: t.task_id.clone(),
        attempt,
    }
}

fn claimed(t: &TaskInstance, at: Timestamp) -> TaskInstance {
    let mut n = moved(t, TaskStatus::Dispatched);
    n.attempt += 1;
    n.lease_expires_at = Some(at + ChronoDuration::seconds(30));
    n.timer_at = n.lease_expires_at;
    n.attempts.push(Attempt {
        attempt: n.attempt,
        dispatch_id: dispatch_of(&n, n.attempt).render(),
        claimed_at: at,
        accepted_at: None,
        started_at: None,
        ended_at: None,
        outcome: None,
        error: None,
    });
    n
}

#[track_caller]
fn assert_conflict(r: Result<(), CommitError>, index: usize) {
    match r {
        Err(CommitError::Conflict {
            index: i,
            existing: None,
            ..
        }) if i == index => {}
        other => panic!("expected a conflict at write {index}, got {other:?}"),
    }
}

async fn agent(f: &Fixture, id: &str) -> opscore_core::agent::Agent {
    f.store.get_agent(&aid(id)).await.expect("read").expect("agent exists")
}

async fn registered_idle(f: &Fixture, id: &str) {
    f.store.register_agent(details(id), t(0)).await.expect("register");
    let r = f
        .store
        .report_state(&report(id, "idle", t(1)), t(1), HISTORY_TTL)
        .await
        .expect("report");
    assert!(matches!(r, ReportOutcome::Applied));
}

async fn all_pages<T, F, Fut>(limit: u32, mut fetch: F) -> Vec<Vec<T>>
where
    F: FnMut(PageRequest) -> Fut,
    Fut: std::future::Future<Output = Result<Page<T>, StoreError>>,
{
    let mut pages = Vec::new();
    let mut cursor = None;
    loop {
        let page = fetch(PageRequest { limit, cursor }).await.expect("page");
        let next = page.next_cursor.clone();
        pages.push(page.items);
        match next {
            Some(c) => cursor = Some(c),
            None => return pages,
        }
        assert!(pages.len() < 100, "pagination does not end");
    }
}

// ----- agents -----

pub async fn register_creates_agent_in_unknown_state(f: Fixture) {
    let out = f.store.register_agent(details("a1"), t(0)).await.unwrap();
    let RegisterOutcome::Created(a) = out else {
        panic!("expected Created, got {out:?}");
    };
    assert_eq!(a.details, details("a1"));
    assert_eq!(a.current, CurrentState::registered(t(0)));
    assert_eq!(a.current.state.as_str(), "UNKNOWN");
    assert_eq!(a.current.ordering_nanos, None);
    assert_eq!((a.registered_at, a.updated_at, a.deregistered_at), (t(0), t(0), None));
    assert_eq!(a.inflight, None);
    assert_eq!(f.store.get_agent(&aid("a1")).await.unwrap(), Some(a));
    assert_eq!(f.store.get_agent(&aid("nobody")).await.unwrap(), None);
}

pub async fn register_identical_redelivery_writes_nothing(f: Fixture) {
    let RegisterOutcome::Created(first) = f.store.register_agent(details("a1"), t(0)).await.unwrap() else {
        panic!("not created");
    };
    // AgentKit restarted: same agent, new registration_time.
    let mut again = details("a1");
    again.registration_time = Some(t(500));
    let out = f.store.register_agent(again, t(600)).await.unwrap();
    assert_eq!(out, RegisterOutcome::Unchanged(first.clone()));
    assert_eq!(agent(&f, "a1").await, first);
}

pub async fn register_changed_details_keeps_state_and_history(f: Fixture) {
    registered_idle(&f, "a1").await;
    let mut changed = details("a1");
    changed.version = "2.0.0".into();
    changed.capabilities.push("classify".into());
    changed.registration_time = None;
    let out = f.store.register_agent(changed.clone(), t(20)).await.unwrap();
    let RegisterOutcome::Updated(a) = out else {
        panic!("expected Updated, got {out:?}");
    };
    assert_eq!(a.details, changed);
    assert_eq!(a.current.state.as_str(), "idle");
    assert_eq!(a.current.version, 1);
    assert_eq!((a.registered_at, a.updated_at), (t(0), t(20)));
    assert_eq!(agent(&f, "a1").await, a);
    let h = f.store.state_history(&aid("a1"), PageRequest::first(10)).await.unwrap();
    assert_eq!(h.items.len(), 1);
}

pub async fn deregister_is_idempotent_and_keeps_the_agent(f: Fixture) {
    assert_eq!(
        f.store.deregister_agent(&aid("nobody"), t(0)).await,
        Err(AgentWriteError::NotFound)
    );
    registered_idle(&f, "a1").await;
    let a = f.store.deregister_agent(&aid("a1"), t(5)).await.unwrap();
    assert_eq!(a.deregistered_at, Some(t(5)));
    assert!(a.is_deregistered());
    assert_eq!(a.current.state.as_str(), "idle");
    let again = f.store.deregister_agent(&aid("a1"), t(9)).await.unwrap();
    assert_eq!(again, a, "a second deregistration changes nothing");
    assert_eq!(agent(&f, "a1").await, a);
    let h = f.store.state_history(&aid("a1"), PageRequest::first(10)).await.unwrap();
    assert_eq!(h.items.len(), 1, "history is kept");
}

pub async fn deregistered_agent_refuses_reports_until_registered_again(f: Fixture) {
    registered_idle(&f, "a1").await;
    f.store.deregister_agent(&aid("a1"), t(5)).await.unwrap();
    assert_eq!(
        f.store
            .report_state(&report("a1", "active", t(6)), t(6), HISTORY_TTL)
            .await,
        Err(AgentWriteError::Deregistered)
    );
    // Same details: a deregistered agent coming back is an update, not a no-op.
    let out = f.store.register_agent(details("a1"), t(7)).await.unwrap();
    let RegisterOutcome::Updated(a) = out else {
        panic!("expected Updated, got {out:?}");
    };
    assert_eq!(a.deregistered_at, None);
    assert_eq!(a.current.state.as_str(), "idle", "state kept");
    let r = f
        .store
        .report_state(&report("a1", "active", t(8)), t(8), HISTORY_TTL)
        .await
        .unwrap();
    assert_eq!(r, ReportOutcome::Applied);
    assert_eq!(f.store.get_agent(&aid("a1")).await.unwrap().unwrap().current.version, 2);
    let h = f.store.state_history(&aid("a1"), PageRequest::first(10)).await.unwrap();
    assert_eq!(h.items.len(), 2, "the refused report is not in history");
}

pub async fn report_for_unknown_agent_is_not_found(f: Fixture) {
    assert_eq!(
        f.store
            .report_state(&report("nobody", "idle", t(1)), t(1), HISTORY_TTL)
            .await,
        Err(AgentWriteError::NotFound)
    );
    let h = f
        .store
        .state_history(&aid("nobody"), PageRequest::first(10))
        .await
        .unwrap();
    assert_eq!(h.items.len(), 0);
    assert_eq!(h.next_cursor, None);
}

pub async fn reports_apply_only_when_newer_and_history_keeps_all(f: Fixture) {
    f.store.register_agent(details("a1"), t(100)).await.unwrap();
    // The first real report wins even though its clock is behind the registration.
    let r1 = f
        .store
        .report_state(&report("a1", "IDLE", t(-1000)), t(101), HISTORY_TTL)
        .await
        .unwrap();
    assert_eq!(r1, ReportOutcome::Applied);
    let c1 = f.store.get_agent(&aid("a1")).await.unwrap().unwrap().current;
    assert_eq!(c1.state.as_str(), "idle");
    assert_eq!(c1.version, 1);
    assert_eq!(c1.ordering_nanos, Some(time::order_key(t(-1000))));
    // Newer: applied; no details this time.
    let mut busy = report("a1", "BUSY", t(50));
    busy.details = None;
    let r2 = f.store.report_state(&busy, t(102), HISTORY_TTL).await.unwrap();
    let expected = CurrentState {
        state: StateName::parse("BUSY").unwrap(),
        details: None,
        timestamp: t(50),
        ordering_nanos: Some(time::order_key(t(50))),
        version: 2,
    };
    assert_eq!(r2, ReportOutcome::Applied);
    assert_eq!(f.store.get_agent(&aid("a1")).await.unwrap().unwrap().current, expected);
    // Older, and as old: stale.
    let r3 = f
        .store
        .report_state(&report("a1", "error", t(40)), t(103), HISTORY_TTL)
        .await
        .unwrap();
    assert_eq!(
        r3,
        ReportOutcome::Stale {
            current: expected.clone()
        }
    );
    let r4 = f
        .store
        .report_state(&report("a1", "active", t(50)), t(104), HISTORY_TTL)
        .await
        .unwrap();
    assert_eq!(
        r4,
        ReportOutcome::Stale {
            current: expected.clone()
        }
    );
    let a = agent(&f, "a1").await;
    assert_eq!(a.current, expected);
    assert_eq!(a.updated_at, t(102));
    // History: every report, newest report timestamp first (ties: later arrival first).
    let h = f.store.state_history(&aid("a1"), PageRequest::first(10)).await.unwrap();
    let seen: Vec<_> = h
        .items
        .iter()
        .map(|e| (e.state.as_str().to_owned(), e.timestamp, e.received_at, e.applied))
        .collect();
    assert_eq!(
        seen,
        vec![
            ("active".into(), t(50), t(104), false),
            ("BUSY".into(), t(50), t(102), true),
            ("error".into(), t(40), t(103), false),
            ("idle".into(), t(-1000), t(101), true),
        ]
    );
    assert_eq!(h.items[0].details, report("a1", "active", t(50)).details);
    assert_eq!(h.items[1].details, None);
    assert_eq!(h.next_cursor, None);
}

pub async fn history_is_newest_first_and_paginates(f: Fixture) {
    f.store.register_agent(details("a1"), t(0)).await.unwrap();
    let order = [4, 1, 6, 3, 5, 2];
    for (i, s) in order.iter().enumerate() {
        f.store
            .report_state(&report("a1", "active", t(*s)), t(10 + i as i64), HISTORY_TTL)
            .await
            .unwrap();
    }
    let a1 = aid("a1");
    for (limit, sizes) in [(3u32, vec![3, 3]), (4, vec![4, 2]), (6, vec![6]), (100, vec![6])] {
        let pages = all_pages(limit, |p| f.store.state_history(&a1, p)).await;
        assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), sizes, "limit {limit}");
        let ts: Vec<_> = pages.concat().iter().map(|e| e.timestamp).collect();
        assert_eq!(ts, (1..=6).rev().map(t).collect::<Vec<_>>(), "limit {limit}");
    }
    let applied: Vec<_> = all_pages(10, |p| f.store.state_history(&a1, p))
        .await
        .concat()
        .iter()
        .map(|e| e.applied)
        .collect();
    // Arrival order 4,1,6,3,5,2: 4 applies, 1 is stale, 6 applies, the rest are stale.
    assert_eq!(applied, vec![true, false, true, false, false, false]);
}

pub async fn list_agents_paginates_and_filters_by_state(f: Fixture) {
    for id in ["a3", "a0", "a4", "a1", "a2"] {
        f.store.register_agent(details(id), t(0)).await.unwrap();
    }
    for id in ["a1", "a3"] {
        f.store
            .report_state(&report(id, "idle", t(1)), t(1), HISTORY_TTL)
            .await
            .unwrap();
    }
    let ids = |pages: Vec<Vec<opscore_core::agent::Agent>>| {
        pages
            .into_iter()
            .map(|p| p.into_iter().map(|a| a.id().to_string()).collect::<Vec<_>>())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ids(all_pages(2, |p| f.store.list_agents(None, p)).await),
        vec![vec!["a0", "a1"], vec!["a2", "a3"], vec!["a4"]]
    );
    assert_eq!(
        ids(all_pages(5, |p| f.store.list_agents(None, p)).await),
        vec![vec!["a0", "a1", "a2", "a3", "a4"]]
    );
    let idle = StateName::known(KnownState::Idle);
    assert_eq!(
        ids(all_pages(1, |p| f.store.list_agents(Some(&idle), p)).await),
        vec![vec!["a1"], vec!["a3"]]
    );
    let unknown = StateName::known(KnownState::Unknown);
    assert_eq!(
        ids(all_pages(10, |p| f.store.list_agents(Some(&unknown), p)).await),
        vec![vec!["a0", "a2", "a4"]]
    );
    let custom = StateName::parse("BUSY").unwrap();
    assert_eq!(
        ids(all_pages(10, |p| f.store.list_agents(Some(&custom), p)).await),
        vec![Vec::<String>::new()]
    );
    // A deregistered agent is still listed (and kept its state).
    f.store.deregister_agent(&aid("a1"), t(2)).await.unwrap();
    assert_eq!(
        ids(all_pages(10, |p| f.store.list_agents(Some(&idle), p)).await),
        vec![vec!["a1", "a3"]]
    );
}

pub async fn concurrent_reports_newest_wins_and_history_keeps_all(f: Fixture) {
    f.store.register_agent(details("a1"), t(0)).await.unwrap();
    let before = f.dynamo.as_ref().map(|d| d.store.request_counts());
    let mut stamps: Vec<i64> = (1..=32).collect();
    fastrand::shuffle(&mut stamps);
    let handles: Vec<_> = stamps
        .iter()
        .map(|s| {
            let store = f.store.clone();
            let r = report("a1", &format!("S{s}"), t(*s));
            tokio::spawn(async move { store.report_state(&r, t(100), HISTORY_TTL).await })
        })
        .collect();
    let mut applied = 0;
    for h in handles {
        match h.await.unwrap().expect("report") {
            ReportOutcome::Applied => applied += 1,
            ReportOutcome::Stale { .. } => {}
        }
    }
    if let (Some(d), Some(before)) = (&f.dynamo, before) {
        // Retries of transactions cancelled by concurrent ones show here.
        println!(
            "32 concurrent reports on {}: {}",
            f.name,
            d.store.request_counts() - before
        );
    }
    let a = agent(&f, "a1").await;
    assert_eq!(a.current.state.as_str(), "S32");
    assert_eq!(a.current.timestamp, t(32));
    assert_eq!(a.current.version, applied, "the version counts applied reports");
    let a1 = aid("a1");
    let h: Vec<_> = all_pages(100, |p| f.store.state_history(&a1, p)).await.concat();
    assert_eq!(h.len(), 32);
    assert_eq!(h.iter().filter(|e| e.applied).count() as u64, applied);
    assert_eq!(
        h.iter().map(|e| e.timestamp).collect::<Vec<_>>(),
        (1..=32).rev().map(t).collect::<Vec<_>>()
    );
}

// ----- workflows -----

pub async fn put_workflow_is_created_identical_or_conflict(f: Fixture) {
    let def = definition("wf", "1.0");
    let created = f.store.put_workflow(&def, t(0)).await.unwrap();
    let stored = StoredWorkflow {
        definition: def.clone(),
        created_at: t(0),
    };
    assert_eq!(created, PutWorkflowOutcome::Created(stored.clone()));
    // A retry (numbers like 1.0 must come back exactly, or this would be a conflict).
    assert_eq!(
        f.store.put_workflow(&def, t(5)).await.unwrap(),
        PutWorkflowOutcome::Identical(stored.clone())
    );
    let mut other = def.clone();
    other.name = "Renamed".into();
    assert_eq!(
        f.store.put_workflow(&other, t(6)).await.unwrap(),
        PutWorkflowOutcome::Conflict(stored.clone())
    );
    assert_eq!(
        f.store.get_workflow(&def.id, Some(&def.version)).await.unwrap(),
        Some(stored)
    );
}

/// A definition as a user sends it: JSON text whose numbers the parser must read exactly, or the
/// stored form (re-parsed on every read) differs from a fresh parse of the same text and an
/// identical retry is refused as a conflict. Found by the `workflow_definition` fuzzer: a 24-digit
/// integer read to a neighbouring double by serde_json's default fast float parser.
pub async fn put_workflow_from_text_is_identical_on_retry(f: Fixture) {
    let text = br#"{"id": "wf-numbers", "name": "Numbers", "version": "1.0", "tasks": [
        {"taskId": "t", "name": "T", "parameters": {
            "bigInteger": 222222222222222222222222, "pastU64": 18446744073709551616,
            "u64Max": 18446744073709551615, "i64Min": -9223372036854775808,
            "digits": 123456789.123456789012345, "tenth": 0.1, "max": 1.7976931348623157e308,
            "tiny": 5e-324, "exponent": 2.2250738585072011e-308, "negativeZero": -0.0}}]}"#;
    let parse = || WorkflowDefinition::parse(text, opscore_core::workflow::Format::Json).expect("valid definition");
    let def = parse();
    let PutWorkflowOutcome::Created(stored) = f.store.put_workflow(&def, t(0)).await.unwrap() else {
        panic!("a new definition is created");
    };
    assert_eq!(
        f.store.put_workflow(&parse(), t(1)).await.unwrap(),
        PutWorkflowOutcome::Identical(stored.clone())
    );
    let read = f.store.get_workflow(&def.id, None).await.unwrap().unwrap();
    assert!(
        read.definition.same_content(&parse()),
        "the stored form reads back as the text parses"
    );
}

pub async fn get_workflow_by_version_or_latest(f: Fixture) {
    let id = WorkflowId::parse("wf").unwrap();
    for (v, at) in [("1.0", 1), ("2.0", 3), ("1.5", 2)] {
        f.store.put_workflow(&definition("wf", v), t(at)).await.unwrap();
    }
    f.store
        .put_workflow(&definition("wf-other", "9.0"), t(9))
        .await
        .unwrap();
    let latest = f.store.get_workflow(&id, None).await.unwrap().unwrap();
    assert_eq!(latest.definition.version.as_str(), "2.0");
    assert_eq!(latest.created_at, t(3));
    let v15 = WorkflowVersion::parse("1.5").unwrap();
    let got = f.store.get_workflow(&id, Some(&v15)).await.unwrap().unwrap();
    assert_eq!(got.definition, definition("wf", "1.5"));
    let v3 = WorkflowVersion::parse("3.0").unwrap();
    assert_eq!(f.store.get_workflow(&id, Some(&v3)).await.unwrap(), None);
    let missing = WorkflowId::parse("missing").unwrap();
    assert_eq!(f.store.get_workflow(&missing, None).await.unwrap(), None);
}

pub async fn list_workflows_paginates_by_id_and_version(f: Fixture) {
    for (id, v) in [
        ("wf-b", "1.0"),
        ("wf-a", "2.0"),
        ("wf-a", "1.0"),
        ("wf", "1.0"),
        ("wf-b", "1.1"),
    ] {
        f.store.put_workflow(&definition(id, v), t(0)).await.unwrap();
    }
    let pages = all_pages(2, |p| f.store.list_workflows(p)).await;
    let keys: Vec<Vec<String>> = pages
        .iter()
        .map(|p| {
            p.iter()
                .map(|w| format!("{}@{}", w.definition.id, w.definition.version))
                .collect()
        })
        .collect();
    assert_eq!(
        keys,
        vec![
            vec!["wf@1.0", "wf-a@1.0"],
            vec!["wf-a@2.0", "wf-b@1.0"],
            vec!["wf-b@1.1"]
        ]
    );
}

// ----- sessions and tasks -----

pub async fn session_and_tasks_round_trip(f: Fixture) {
    let mut s = session("a1", t(0));
    s.idempotency_key = Some(IdempotencyKey::parse("req-1:abc/def#x").unwrap());
    let mut t1 = task(&s, "fetch", TaskStatus::Pending, t(0));
    t1.next_task_id = Some(TaskId::parse("summarize").unwrap());
    let mut t2 = claimed(&task(&s, "summarize", TaskStatus::Pending, t(1)), t(2));
    t2.result = Some(obj(json!({"summary": "ok", "score": 1.0})));
    t2.last_error = Some("first attempt timed out".into());
    // Task ids may start with characters that sort before digits.
    let t3 = task(&s, "-early.task", TaskStatus::Pending, t(0));
    f.store
        .commit(vec![
            Write::CreateSession(s.clone()),
            Write::CreateTask(t1.clone()),
            Write::CreateTask(t2.clone()),
            Write::CreateTask(t3.clone()),
        ])
        .await
        .unwrap();
    let view = f.store.get_session(&s.session_id).await.unwrap().unwrap();
    assert_eq!(view.session, s);
    let mut tasks = view.tasks;
    tasks.sort_by(|a, b| a.task_id.cmp(&b.task_id));
    assert_eq!(tasks, vec![t3.clone(), t1.clone(), t2.clone()]);
    assert_eq!(f.store.get_task(&t2.key()).await.unwrap(), Some(t2));
    // A terminal session with a result and an error cause.
    let running = s.transition(SessionStatus::Running, t(3)).unwrap();
    let mut failed = running.transition(SessionStatus::Failed, t(4)).unwrap();
    failed.result = Some(json!({"partial": [1.0, 2]}));
    failed.error = Some(FailureCause {
        code: FailureCode::RetriesExhausted,
        message: "gave up".into(),
        task_id: Some(TaskId::parse("fetch").unwrap()),
        attempts: Some(4),
        last_error: None,
    });
    for (from, next) in [
        (SessionStatus::Started, running),
        (SessionStatus::Running, failed.clone()),
    ] {
        f.store
            .commit(vec![Write::TransitionSession { from, next }])
            .await
            .unwrap();
    }
    let view = f.store.get_session(&s.session_id).await.unwrap().unwrap();
    assert_eq!(view.session, failed);
    assert_eq!(view.tasks.len(), 3);
}

pub async fn missing_sessions_and_tasks_read_as_none(f: Fixture) {
    let id = SessionId::new();
    assert_eq!(f.store.get_session(&id).await.unwrap(), None);
    let key = TaskKey {
        session_id: id,
        task_id: TaskId::parse("x").unwrap(),
    };
    assert_eq!(f.store.get_task(&key).await.unwrap(), None);
    assert_eq!(f.store.commit(vec![]).await, Ok(()));
}

pub async fn create_session_and_task_must_not_exist(f: Fixture) {
    let s = session("a1", t(0));
    let t1 = task(&s, "fetch", TaskStatus::Pending, t(0));
    f.store
        .commit(vec![Write::CreateSession(s.clone()), Write::CreateTask(t1.clone())])
        .await
        .unwrap();
    let mut changed = s.clone();
    changed.initial_payload = None;
    assert_conflict(f.store.commit(vec![Write::CreateSession(changed)]).await, 0);
    let mut t1b = t1.clone();
    t1b.name = "other".into();
    assert_conflict(f.store.commit(vec![Write::CreateTask(t1b)]).await, 0);
    let view = f.store.get_session(&s.session_id).await.unwrap().unwrap();
    assert_eq!(view.session, s);
    assert_eq!(view.tasks, vec![t1]);
}

pub async fn batch_is_atomic_when_its_third_write_fails(f: Fixture) {
    let s1 = session("a1", t(0));
    let existing = task(&s1, "fetch", TaskStatus::Pending, t(0));
    f.store
        .commit(vec![
            Write::CreateSession(s1.clone()),
            Write::CreateTask(existing.clone()),
        ])
        .await
        .unwrap();
    let s2 = session("a1", t(1));
    let t2 = task(&s2, "fetch", TaskStatus::Pending, t(1));
    let r = f
        .store
        .commit(vec![
            Write::CreateSession(s2.clone()),
            Write::CreateTask(t2.clone()),
            Write::CreateTask(existing.clone()),
        ])
        .await;
    assert_conflict(r, 2);
    assert_eq!(f.store.get_session(&s2.session_id).await.unwrap(), None);
    assert_eq!(f.store.get_task(&t2.key()).await.unwrap(), None);
    let listed = f.store.list_sessions(&aid("a1"), PageRequest::first(10)).await.unwrap();
    assert_eq!(listed.items, vec![s1]);
}

pub async fn idempotency_key_conflict_names_the_existing_session(f: Fixture) {
    let key = IdempotencyKey::parse("req-1").unwrap();
    let create = |s: &Session| {
        vec![
            Write::CreateIdempotencyKey {
                agent_id: s.agent_id.clone(),
                key: key.clone(),
                session_id: s.session_id,
                fingerprint: "fp-1".into(),
                ttl: Duration::from_secs(86_400),
            },
            Write::CreateSession(s.clone()),
        ]
    };
    let s1 = session("a1", t(0));
    f.store.commit(create(&s1)).await.unwrap();
    let s2 = session("a1", t(1));
    assert_eq!(
        f.store.commit(create(&s2)).await,
        Err(CommitError::Conflict {
            index: 0,
            write: WriteKind::CreateIdempotencyKey,
            existing: Some(Existing::IdempotencyKey {
                session_id: s1.session_id,
                fingerprint: Some("fp-1".into()),
            })
        })
    );
    assert_eq!(f.store.get_session(&s2.session_id).await.unwrap(), None);
    // Alone (a single-item write), the same answer.
    let mut alone = create(&s2);
    alone.truncate(1);
    assert_eq!(
        f.store.commit(alone).await,
        Err(CommitError::Conflict {
            index: 0,
            write: WriteKind::CreateIdempotencyKey,
            existing: Some(Existing::IdempotencyKey {
                session_id: s1.session_id,
                fingerprint: Some("fp-1".into()),
            })
        })
    );
    // Keys are per agent.
    let s3 = session("a2", t(2));
    f.store.commit(create(&s3)).await.unwrap();
}

pub async fn delivery_record_is_created_once(f: Fixture) {
    let w = || Write::CreateDeliveryRecord {
        id: "v1=5257a869e7ecebeda32affa62cdca3fa51cad7e77a0e56ff536d0ce8e108d8bd".into(),
        expires_at: chrono::Utc::now() + ChronoDuration::minutes(5),
    };
    f.store.commit(vec![w()]).await.unwrap();
    assert_conflict(f.store.commit(vec![w()]).await, 0);
}

pub async fn delivery_record_counts_as_absent_once_expired(f: Fixture) {
    let id = "v1=0c1f5ad0d2b4a0f5c7f2a3bc2a8f1c4ed3e0a6b9f8d7c6b5a4f3e2d1c0b9a8f7";
    let create = |expires_at| Write::CreateDeliveryRecord {
        id: id.into(),
        expires_at,
    };
    let commit = async |w: Write| f.store.commit(vec![w]).await;
    let now = chrono::Utc::now();
    // Past its expiry (TTL may not have deleted it yet): a new delivery with that id is recorded.
    commit(create(now - ChronoDuration::minutes(1))).await.unwrap();
    commit(create(now + ChronoDuration::minutes(5))).await.unwrap();
    assert_conflict(commit(create(now + ChronoDuration::minutes(5))).await, 0);
    // Expired on purpose (the delivery's effect failed): a resend is recorded again.
    commit(Write::ExpireDeliveryRecord { id: id.into() }).await.unwrap();
    commit(create(now + ChronoDuration::minutes(5))).await.unwrap();
    // Only a record that exists can be expired.
    assert_conflict(
        commit(Write::ExpireDeliveryRecord {
            id: "v1=never-recorded".into(),
        })
        .await,
        0,
    );
}

pub async fn expired_idempotency_key_no_longer_blocks(f: Fixture) {
    let key = IdempotencyKey::parse("k").unwrap();
    let create = |session_id| Write::CreateIdempotencyKey {
        agent_id: aid("a1"),
        key: key.clone(),
        session_id,
        fingerprint: "fp".into(),
        ttl: Duration::ZERO,
    };
    // Start early in a second, so that the key (expiring at this second) still holds just after.
    while chrono::Utc::now().timestamp_subsec_millis() > 300 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let s1 = SessionId::new();
    f.store.commit(vec![create(s1)]).await.unwrap();
    assert!(matches!(
        f.store.commit(vec![create(SessionId::new())]).await,
        Err(CommitError::Conflict { .. })
    ));
    // TTL deletes late (up to days on AWS): the condition itself ignores an expired key.
    let expiry = chrono::Utc::now().timestamp();
    while chrono::Utc::now().timestamp() <= expiry {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    f.store.commit(vec![create(SessionId::new())]).await.unwrap();
}

pub async fn session_transition_needs_status_and_revision(f: Fixture) {
    let s = session("a1", t(0));
    f.store.commit(vec![Write::CreateSession(s.clone())]).await.unwrap();
    let running = s.transition(SessionStatus::Running, t(1)).unwrap();
    let wrong_from = Write::TransitionSession {
        from: SessionStatus::Running,
        next: running.clone(),
    };
    assert_conflict(f.store.commit(vec![wrong_from]).await, 0);
    let mut skipped = running.clone();
    skipped.rev = 2;
    assert_conflict(
        f.store
            .commit(vec![Write::TransitionSession {
                from: SessionStatus::Started,
                next: skipped,
            }])
            .await,
        0,
    );
    assert_eq!(f.store.get_session(&s.session_id).await.unwrap().unwrap().session, s);
    let ok = Write::TransitionSession {
        from: SessionStatus::Started,
        next: running.clone(),
    };
    f.store.commit(vec![ok.clone()]).await.unwrap();
    assert_eq!(
        f.store.get_session(&s.session_id).await.unwrap().unwrap().session,
        running
    );
    // A replay of the same transition is refused: the revision moved on.
    assert_conflict(f.store.commit(vec![ok]).await, 0);
    // A transition of a session that does not exist.
    let ghost = session("a1", t(0)).transition(SessionStatus::Running, t(1)).unwrap();
    assert_conflict(
        f.store
            .commit(vec![Write::TransitionSession {
                from: SessionStatus::Started,
                next: ghost,
            }])
            .await,
        0,
    );
}

pub async fn check_session_open_refuses_terminal_and_missing_sessions(f: Fixture) {
    let s = session("a1", t(0));
    f.store.commit(vec![Write::CreateSession(s.clone())]).await.unwrap();
    // Alone, and guarding a task write.
    f.store
        .commit(vec![Write::CheckSessionOpen(s.session_id)])
        .await
        .unwrap();
    let t1 = task(&s, "fetch", TaskStatus::Pending, t(0));
    f.store
        .commit(vec![
            Write::CreateTask(t1.clone()),
            Write::CheckSessionOpen(s.session_id),
        ])
        .await
        .unwrap();
    let missing = SessionId::new();
    assert_conflict(f.store.commit(vec![Write::CheckSessionOpen(missing)]).await, 0);
    let cancelled = s.transition(SessionStatus::Cancelled, t(1)).unwrap();
    f.store
        .commit(vec![Write::TransitionSession {
            from: SessionStatus::Started,
            next: cancelled,
        }])
        .await
        .unwrap();
    let t2 = task(&s, "summarize", TaskStatus::Pending, t(1));
    assert_conflict(
        f.store
            .commit(vec![
                Write::CreateTask(t2.clone()),
                Write::CheckSessionOpen(s.session_id),
            ])
            .await,
        1,
    );
    assert_eq!(f.store.get_task(&t2.key()).await.unwrap(), None);
    assert_conflict(f.store.commit(vec![Write::CheckSessionOpen(s.session_id)]).await, 0);
}

pub async fn task_transition_needs_status_and_revision(f: Fixture) {
    let s = session("a1", t(0));
    let t1 = task(&s, "fetch", TaskStatus::Pending, t(0));
    f.store
        .commit(vec![Write::CreateSession(s.clone()), Write::CreateTask(t1.clone())])
        .await
        .unwrap();
    let next = claimed(&t1, t(1));
    assert_conflict(
        f.store
            .commit(vec![Write::TransitionTask {
                from: TaskStatus::Running,
                next: next.clone(),
            }])
            .await,
        0,
    );
    let mut skipped = next.clone();
    skipped.rev = 5;
    assert_conflict(
        f.store
            .commit(vec![Write::TransitionTask {
                from: TaskStatus::Pending,
                next: skipped,
            }])
            .await,
        0,
    );
    assert_eq!(f.store.get_task(&t1.key()).await.unwrap(), Some(t1.clone()));
    let ok = Write::TransitionTask {
        from: TaskStatus::Pending,
        next: next.clone(),
    };
    f.store.commit(vec![ok.clone()]).await.unwrap();
    assert_eq!(f.store.get_task(&t1.key()).await.unwrap(), Some(next.clone()));
    assert_conflict(f.store.commit(vec![ok]).await, 0);
    let done = moved(&next, TaskStatus::Succeeded);
    f.store
        .commit(vec![Write::TransitionTask {
            from: TaskStatus::Dispatched,
            next: done.clone(),
        }])
        .await
        .unwrap();
    assert_eq!(f.store.get_task(&t1.key()).await.unwrap(), Some(done));
}

pub async fn claim_and_release_agent_conditions(f: Fixture) {
    let s = session("a1", t(0));
    let t1 = task(&s, "fetch", TaskStatus::Pending, t(0));
    let inflight = |attempt| Inflight {
        dispatch: dispatch_of(&t1, attempt),
        since: t(10),
        routed_by: None,
    };
    let claim = |attempt| Write::ClaimAgent {
        agent_id: aid("a1"),
        inflight: inflight(attempt),
    };
    // Unknown agent; registered but not idle.
    assert_conflict(f.store.commit(vec![claim(1)]).await, 0);
    f.store.register_agent(details("a1"), t(0)).await.unwrap();
    assert_conflict(f.store.commit(vec![claim(1)]).await, 0);
    f.store
        .report_state(&report("a1", "idle", t(1)), t(1), HISTORY_TTL)
        .await
        .unwrap();
    f.store.commit(vec![claim(1)]).await.unwrap();
    assert_eq!(agent(&f, "a1").await.inflight, Some(inflight(1)));
    // Holding a task: no second claim.
    assert_conflict(f.store.commit(vec![claim(2)]).await, 0);
    let release = |attempt| Write::ReleaseAgent {
        agent_id: aid("a1"),
        dispatch: dispatch_of(&t1, attempt),
    };
    assert_conflict(f.store.commit(vec![release(2)]).await, 0);
    assert_eq!(agent(&f, "a1").await.inflight, Some(inflight(1)));
    f.store.commit(vec![release(1)]).await.unwrap();
    assert_eq!(agent(&f, "a1").await.inflight, None);
    assert_conflict(f.store.commit(vec![release(1)]).await, 0);
    // Busy (a non-idle state), then deregistered.
    f.store
        .report_state(&report("a1", "active", t(2)), t(2), HISTORY_TTL)
        .await
        .unwrap();
    assert_conflict(f.store.commit(vec![claim(2)]).await, 0);
    f.store
        .report_state(&report("a1", "idle", t(3)), t(3), HISTORY_TTL)
        .await
        .unwrap();
    f.store.deregister_agent(&aid("a1"), t(4)).await.unwrap();
    assert_conflict(f.store.commit(vec![claim(2)]).await, 0);
    // The claim leaves the rest of the agent alone.
    let a = agent(&f, "a1").await;
    assert_eq!(a.current.state.as_str(), "idle");
    assert_eq!(a.inflight, None);
}

pub async fn hand_over_agent_conditions(f: Fixture) {
    let s = session("a1", t(0));
    let t1 = task(&s, "fetch", TaskStatus::Pending, t(0));
    let t2 = task(&s, "store", TaskStatus::Pending, t(0));
    let holding = |held: &TaskInstance, attempt| Inflight {
        dispatch: dispatch_of(held, attempt),
        since: t(10),
        routed_by: None,
    };
    let hand_over = |from: DispatchId| Write::HandOverAgent {
        agent_id: aid("a1"),
        from,
        to: holding(&t2, 1),
    };
    // Unknown agent; an idle agent that holds nothing (a hand-over is not a claim).
    assert_conflict(f.store.commit(vec![hand_over(dispatch_of(&t1, 1))]).await, 0);
    registered_idle(&f, "a1").await;
    assert_conflict(f.store.commit(vec![hand_over(dispatch_of(&t1, 1))]).await, 0);
    f.store
        .commit(vec![Write::ClaimAgent {
            agent_id: aid("a1"),
            inflight: holding(&t1, 1),
        }])
        .await
        .unwrap();
    // Holding another attempt than the one named.
    assert_conflict(f.store.commit(vec![hand_over(dispatch_of(&t1, 2))]).await, 0);
    // Not idle: the agent is still at work on the attempt.
    f.store
        .report_state(&report("a1", "active", t(11)), t(11), HISTORY_TTL)
        .await
        .unwrap();
    assert_conflict(f.store.commit(vec![hand_over(dispatch_of(&t1, 1))]).await, 0);
    assert_eq!(agent(&f, "a1").await.inflight, Some(holding(&t1, 1)));
    // Idle again, holding the attempt: it takes the next task, and only once.
    f.store
        .report_state(&report("a1", "idle", t(12)), t(12), HISTORY_TTL)
        .await
        .unwrap();
    f.store.commit(vec![hand_over(dispatch_of(&t1, 1))]).await.unwrap();
    let a = agent(&f, "a1").await;
    assert_eq!(a.inflight, Some(holding(&t2, 1)));
    assert_eq!(a.current.state.as_str(), "idle");
    assert_conflict(f.store.commit(vec![hand_over(dispatch_of(&t1, 1))]).await, 0);
    // Handed a task routed by a capability (issue 18): only one the agent announces.
    let routed = |capability: &str| Write::HandOverAgent {
        agent_id: aid("a1"),
        from: dispatch_of(&t2, 1),
        to: Inflight {
            routed_by: Some(capability.into()),
            ..holding(&t1, 2)
        },
    };
    assert_conflict(f.store.commit(vec![routed("classify")]).await, 0);
    assert_eq!(agent(&f, "a1").await.inflight, Some(holding(&t2, 1)));
    f.store.commit(vec![routed("translate")]).await.unwrap();
    let a = agent(&f, "a1").await;
    assert_eq!(a.inflight.as_ref().map(|i| &i.dispatch), Some(&dispatch_of(&t1, 2)));
    assert_eq!(a.inflight.and_then(|i| i.routed_by).as_deref(), Some("translate"));
    // Deregistered: no hand-over, whatever it holds.
    f.store.deregister_agent(&aid("a1"), t(13)).await.unwrap();
    let from_t1 = Write::HandOverAgent {
        agent_id: aid("a1"),
        from: dispatch_of(&t1, 2),
        to: holding(&t2, 2),
    };
    assert_conflict(f.store.commit(vec![from_t1]).await, 0);
    assert_eq!(
        agent(&f, "a1").await.inflight.map(|i| i.dispatch),
        Some(dispatch_of(&t1, 2))
    );
}

pub async fn concurrent_claims_of_one_task_have_one_winner(f: Fixture) {
    registered_idle(&f, "a1").await;
    let s = session("a1", t(0));
    let t1 = task(&s, "fetch", TaskStatus::Pending, t(0));
    f.store
        .commit(vec![Write::CreateSession(s.clone()), Write::CreateTask(t1.clone())])
        .await
        .unwrap();
    let handles: Vec<_> = (0..16)
        .map(|i| {
            let store = f.store.clone();
            let next = claimed(&t1, t(10 + i));
            tokio::spawn(async move {
                let writes = vec![
                    Write::ClaimAgent {
                        agent_id: next.agent_id.clone(),
                        inflight: Inflight {
                            dispatch: dispatch_of(&next, next.attempt),
                            since: t(10 + i),
                            routed_by: None,
                        },
                    },
                    Write::TransitionTask {
                        from: TaskStatus::Pending,
                        next: next.clone(),
                    },
                    Write::CheckSessionOpen(next.session_id),
                ];
                (next, store.commit(writes).await)
            })
        })
        .collect();
    let mut winners = Vec::new();
    let mut lost_at = [0; 3];
    for h in handles {
        let (next, r) = h.await.unwrap();
        match r {
            Ok(()) => winners.push(next),
            Err(CommitError::Conflict {
                index,
                write,
                existing: None,
            }) if index < 2 => {
                let named = [WriteKind::ClaimAgent, WriteKind::TransitionTask][index];
                assert_eq!(write, named, "a conflict names the write at its index");
                lost_at[index] += 1
            }
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    println!("16 concurrent claims on {}: lost at write {lost_at:?}", f.name);
    assert_eq!(winners.len(), 1, "exactly one claim wins");
    assert_eq!(f.store.get_task(&t1.key()).await.unwrap(), Some(winners[0].clone()));
    let a = agent(&f, "a1").await;
    assert_eq!(a.inflight.map(|i| i.since), Some(winners[0].attempts[0].claimed_at));
}

pub async fn concurrent_terminal_transitions_of_one_session_have_one_winner(f: Fixture) {
    let s = session("a1", t(0));
    let running = s.transition(SessionStatus::Running, t(1)).unwrap();
    f.store.commit(vec![Write::CreateSession(s.clone())]).await.unwrap();
    f.store
        .commit(vec![Write::TransitionSession {
            from: SessionStatus::Started,
            next: running.clone(),
        }])
        .await
        .unwrap();
    let handles: Vec<_> = [SessionStatus::Completed, SessionStatus::Cancelled]
        .into_iter()
        .map(|to| {
            let store = f.store.clone();
            let next = running.transition(to, t(2)).unwrap();
            tokio::spawn(async move {
                let r = store
                    .commit(vec![Write::TransitionSession {
                        from: SessionStatus::Running,
                        next: next.clone(),
                    }])
                    .await;
                (next, r)
            })
        })
        .collect();
    let mut winners = Vec::new();
    for h in handles {
        let (next, r) = h.await.unwrap();
        match r {
            Ok(()) => winners.push(next),
            Err(CommitError::Conflict {
                index: 0,
                write: WriteKind::TransitionSession,
                existing: None,
            }) => {}
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one terminal transition wins");
    assert_eq!(
        f.store.get_session(&s.session_id).await.unwrap().unwrap().session,
        winners[0]
    );
}

pub async fn list_sessions_newest_first_and_paginates(f: Fixture) {
    let mut created = Vec::new();
    for start in [3, 1, 5, 2, 4] {
        let s = session("a1", t(start));
        f.store.commit(vec![Write::CreateSession(s.clone())]).await.unwrap();
        created.push(s);
    }
    let other = session("a2", t(9));
    f.store.commit(vec![Write::CreateSession(other.clone())]).await.unwrap();
    let a1 = aid("a1");
    let pages = all_pages(2, |p| f.store.list_sessions(&a1, p)).await;
    let starts: Vec<Vec<Timestamp>> = pages.iter().map(|p| p.iter().map(|s| s.start_time).collect()).collect();
    assert_eq!(starts, vec![vec![t(5), t(4)], vec![t(3), t(2)], vec![t(1)]]);
    let all: Vec<Session> = pages.concat();
    for s in &created {
        assert!(all.contains(s), "listed exactly as stored");
    }
    assert_eq!(
        f.store.list_sessions(&aid("a2"), PageRequest::first(10)).await.unwrap(),
        Page {
            items: vec![other],
            next_cursor: None
        }
    );
    assert_eq!(
        f.store.list_sessions(&aid("a3"), PageRequest::first(10)).await.unwrap(),
        Page {
            items: vec![],
            next_cursor: None
        }
    );
}

/// Moves a stored session to `to` (one conditional write) and returns it as stored.
async fn session_to(f: &Fixture, s: &Session, to: SessionStatus, at: Timestamp) -> Session {
    let next = s.transition(to, at).expect("a valid transition");
    f.store
        .commit(vec![Write::TransitionSession {
            from: s.status,
            next: next.clone(),
        }])
        .await
        .unwrap();
    next
}

pub async fn list_sessions_across_agents_newest_first_by_status_and_paginates(f: Fixture) {
    let mut stored = Vec::new();
    for (agent, start) in [
        ("a1", 3),
        ("a2", 1),
        ("a3", 5),
        ("a1", 2),
        ("a2", 4),
        ("a3", 6),
        ("a1", 7),
        ("a2", 7),
    ] {
        let s = session(agent, t(start));
        f.store.commit(vec![Write::CreateSession(s.clone())]).await.unwrap();
        stored.push(s);
    }
    // t(5): failed, t(4): cancelled, t(6): running; the rest stay started.
    let running = session_to(&f, &stored[2], SessionStatus::Running, t(10)).await;
    stored[2] = session_to(&f, &running, SessionStatus::Failed, t(11)).await;
    stored[4] = session_to(&f, &stored[4], SessionStatus::Cancelled, t(12)).await;
    stored[5] = session_to(&f, &stored[5], SessionStatus::Running, t(13)).await;
    // Newest start first; the two started at t(7) by session id, descending.
    let mut expected = stored.clone();
    expected.sort_by_key(|s| std::cmp::Reverse((s.start_time, s.session_id.to_string())));
    for limit in [1, 2, 3, 5, 100] {
        let pages = all_pages(limit, |p| f.store.list_sessions_across_agents(None, p)).await;
        assert!(pages.iter().all(|p| p.len() <= limit as usize));
        assert_eq!(
            pages.concat(),
            expected,
            "limit {limit}: every session once, as stored, in order"
        );
    }
    let only = |st: SessionStatus| -> Vec<Session> { expected.iter().filter(|s| s.status == st).cloned().collect() };
    for st in SessionStatus::ALL {
        for limit in [1, 2] {
            let got = all_pages(limit, |p| f.store.list_sessions_across_agents(Some(st), p))
                .await
                .concat();
            assert_eq!(got, only(st), "{} with limit {limit}", st.as_str());
        }
    }
    assert_eq!(only(SessionStatus::Started).len(), 5);
    assert_eq!(
        f.store
            .list_sessions_across_agents(Some(SessionStatus::Completed), PageRequest::first(10))
            .await
            .unwrap(),
        Page {
            items: vec![],
            next_cursor: None
        }
    );
    // A session that changes status between two pages keeps its place: listed exactly once.
    let first = f
        .store
        .list_sessions_across_agents(None, PageRequest::first(3))
        .await
        .unwrap();
    assert_eq!(first.items, expected[..3]);
    let later = expected[5].clone();
    assert_eq!(later.status, SessionStatus::Started);
    let moved = session_to(&f, &later, SessionStatus::Completed, t(20)).await;
    let rest = all_pages(2, |p| {
        let cursor = p.cursor.clone().or(first.next_cursor.clone());
        f.store
            .list_sessions_across_agents(None, PageRequest { limit: p.limit, cursor })
    })
    .await
    .concat();
    let mut want = expected[3..].to_vec();
    want[2] = moved;
    assert_eq!(rest, want);
}

pub async fn runnable_tasks_are_pending_due_oldest_first(f: Fixture) {
    let s = session("a1", t(0));
    let other = session("a2", t(0));
    let due10 = task(&s, "due10", TaskStatus::Pending, t(10));
    let due5 = task(&s, "due5", TaskStatus::Pending, t(5));
    let later = task(&s, "later", TaskStatus::Pending, t(50));
    let dispatched = claimed(&task(&s, "busy", TaskStatus::Pending, t(1)), t(2));
    let foreign = task(&other, "foreign", TaskStatus::Pending, t(1));
    let mut writes = vec![Write::CreateSession(s.clone()), Write::CreateSession(other.clone())];
    for x in [&due10, &due5, &later, &dispatched, &foreign] {
        writes.push(Write::CreateTask(x.clone()));
    }
    f.store.commit(writes).await.unwrap();
    let a1 = aid("a1");
    assert_eq!(
        f.store.runnable_tasks(&a1, t(20), 10).await.unwrap(),
        vec![due5.key(), due10.key()]
    );
    assert_eq!(f.store.runnable_tasks(&a1, t(20), 1).await.unwrap(), vec![due5.key()]);
    assert_eq!(
        f.store.runnable_tasks(&a1, t(10), 10).await.unwrap(),
        vec![due5.key(), due10.key()]
    );
    assert_eq!(f.store.runnable_tasks(&a1, t(4), 10).await.unwrap(), vec![]);
    f.store
        .commit(vec![Write::TransitionTask {
            from: TaskStatus::Pending,
            next: claimed(&due5, t(21)),
        }])
        .await
        .unwrap();
    assert_eq!(
        f.store.runnable_tasks(&a1, t(60), 10).await.unwrap(),
        vec![due10.key(), later.key()]
    );
    assert_eq!(
        f.store.runnable_tasks(&aid("a2"), t(60), 10).await.unwrap(),
        vec![foreign.key()]
    );
}

pub async fn due_timers_cover_every_task_in_timer_order(f: Fixture) {
    let mut order: Vec<i64> = (1..=20).collect();
    fastrand::shuffle(&mut order);
    let mut writes = Vec::new();
    let mut by_timer = Vec::new();
    for i in &order {
        // One session each: the timers spread over every shard of a sharded index.
        let s = session("a1", t(0));
        let mut x = task(&s, "fetch", TaskStatus::Pending, t(0));
        x.timer_at = Some(t(*i));
        writes.push(Write::CreateSession(s));
        writes.push(Write::CreateTask(x.clone()));
        by_timer.push((*i, x));
    }
    let s = session("a1", t(0));
    let mut no_timer = task(&s, "done", TaskStatus::Pending, t(0));
    no_timer.timer_at = None;
    let mut future = task(&s, "future", TaskStatus::Pending, t(0));
    future.timer_at = Some(t(1000));
    writes.push(Write::CreateSession(s));
    writes.push(Write::CreateTask(no_timer));
    writes.push(Write::CreateTask(future));
    for chunk in writes.chunks(20) {
        f.store.commit(chunk.to_vec()).await.unwrap();
    }
    by_timer.sort_by_key(|(i, _)| *i);
    let expected: Vec<TaskKey> = by_timer
        .iter()
        .filter(|(i, _)| *i <= 15)
        .map(|(_, x)| x.key())
        .collect();
    assert_eq!(f.store.due_timers(t(15), 100).await.unwrap(), expected);
    assert_eq!(f.store.due_timers(t(15), 5).await.unwrap(), expected[..5].to_vec());
    assert_eq!(f.store.due_timers(t(0), 100).await.unwrap(), vec![]);
    // A task whose timer is cleared leaves the index.
    let (_, first) = &by_timer[0];
    let mut next = moved(first, TaskStatus::Failed);
    next.timer_at = None;
    f.store
        .commit(vec![Write::TransitionTask {
            from: TaskStatus::Pending,
            next,
        }])
        .await
        .unwrap();
    assert_eq!(f.store.due_timers(t(15), 100).await.unwrap(), expected[1..].to_vec());
}

pub async fn invalid_cursors_are_refused(f: Fixture) {
    f.store.register_agent(details("a1"), t(0)).await.unwrap();
    let bad = || PageRequest {
        limit: 10,
        cursor: Some(String::new()),
    };
    let long = || PageRequest {
        limit: 10,
        cursor: Some("x".repeat(4096)),
    };
    for page in [bad(), long()] {
        assert_eq!(
            f.store.list_agents(None, page.clone()).await.err(),
            Some(StoreError::InvalidCursor)
        );
        assert_eq!(
            f.store
                .list_agents(Some(&StateName::known(KnownState::Idle)), page.clone())
                .await
                .err(),
            Some(StoreError::InvalidCursor)
        );
        assert_eq!(
            f.store.state_history(&aid("a1"), page.clone()).await.err(),
            Some(StoreError::InvalidCursor)
        );
        assert_eq!(
            f.store.list_workflows(page.clone()).await.err(),
            Some(StoreError::InvalidCursor)
        );
        assert_eq!(
            f.store.list_sessions_across_agents(None, page.clone()).await.err(),
            Some(StoreError::InvalidCursor)
        );
        assert_eq!(
            f.store
                .list_sessions_across_agents(Some(SessionStatus::Failed), page.clone())
                .await
                .err(),
            Some(StoreError::InvalidCursor)
        );
        assert_eq!(
            f.store.list_sessions(&aid("a1"), page).await.err(),
            Some(StoreError::InvalidCursor)
        );
    }
}

// ----- issue 13: hostile input -----

/// A timestamp given as an RFC 3339 string (any year chrono can hold).
fn ts(s: &str) -> Timestamp {
    time::parse_rfc3339(s).unwrap_or_else(|| panic!("not RFC 3339: {s}"))
}

/// Issue 13, defect 1: reports are ordered correctly across the whole range of timestamps, not
/// only 1677-2262 (where nanoseconds fit an i64): a report from year 1 or 1600 is old, not the
/// newest possible, and cannot freeze the agent.
pub async fn reports_order_across_the_whole_timestamp_range(f: Fixture) {
    f.store.register_agent(details("a1"), t(0)).await.unwrap();
    let apply = async |at: Timestamp, n: i64| {
        f.store
            .report_state(&report("a1", "active", at), t(n), HISTORY_TTL)
            .await
            .unwrap()
    };
    assert_eq!(apply(t(1), 1).await, ReportOutcome::Applied);
    for old in [
        "0001-01-01T00:00:00Z",
        "1600-01-01T00:00:00Z",
        "1677-09-21T00:12:43.145224191Z",
        "1969-12-31T23:59:59.999999999Z",
    ] {
        assert!(
            matches!(apply(ts(old), 2).await, ReportOutcome::Stale { .. }),
            "{old} must be older than {}",
            t(1)
        );
    }
    assert_eq!(
        apply(t(2), 3).await,
        ReportOutcome::Applied,
        "a later real report still applies"
    );
    let a = agent(&f, "a1").await;
    assert_eq!(a.current.timestamp, t(2));
    // The far ends, against each other.
    f.store.register_agent(details("a2"), t(0)).await.unwrap();
    let order = [
        "0001-01-01T00:00:00Z",
        "0001-01-01T00:00:00.000000001Z",
        "1677-09-21T00:12:43.145224191Z",
        "1677-09-21T00:12:43.145224192Z",
        "2262-04-11T23:47:16.854775807Z",
        "2262-04-11T23:47:16.854775808Z",
        "9999-12-31T23:59:59.999999999Z",
    ];
    for (i, s) in order.iter().enumerate() {
        let r = f
            .store
            .report_state(&report("a2", "active", ts(s)), t(10 + i as i64), HISTORY_TTL)
            .await
            .unwrap();
        assert_eq!(r, ReportOutcome::Applied, "{s} is newer than the one before");
        assert_eq!(agent(&f, "a2").await.current.timestamp, ts(s));
    }
    // Delivered the other way round, each is older than the newest one.
    for s in order[..order.len() - 1].iter().rev() {
        let r = f
            .store
            .report_state(&report("a2", "idle", ts(s)), t(30), HISTORY_TTL)
            .await
            .unwrap();
        assert!(matches!(r, ReportOutcome::Stale { .. }), "{s}");
    }
    let a2 = aid("a2");
    let h: Vec<Timestamp> = all_pages(3, |p| f.store.state_history(&a2, p))
        .await
        .concat()
        .iter()
        .map(|e| e.timestamp)
        .collect();
    let mut want: Vec<Timestamp> = order
        .iter()
        .chain(order[..order.len() - 1].iter())
        .map(|s| ts(s))
        .collect();
    want.sort_by(|a, b| b.cmp(a));
    assert_eq!(h, want, "history newest first across the whole range");
}

/// Issue 13, defect 6: an idempotency key remembers a fingerprint of the request it came with,
/// and a conflict gives it back, so the caller can tell a retry from a reuse.
pub async fn idempotency_key_keeps_the_fingerprint_of_its_request(f: Fixture) {
    let key = IdempotencyKey::parse("req-fp").unwrap();
    let create = |s: &Session, fingerprint: &str| {
        vec![
            Write::CreateIdempotencyKey {
                agent_id: s.agent_id.clone(),
                key: key.clone(),
                session_id: s.session_id,
                fingerprint: fingerprint.to_owned(),
                ttl: Duration::from_secs(86_400),
            },
            Write::CreateSession(s.clone()),
        ]
    };
    let s1 = session("a1", t(0));
    f.store.commit(create(&s1, "fp-one")).await.unwrap();
    let s2 = session("a1", t(1));
    let expected = Err(CommitError::Conflict {
        index: 0,
        write: WriteKind::CreateIdempotencyKey,
        existing: Some(Existing::IdempotencyKey {
            session_id: s1.session_id,
            fingerprint: Some("fp-one".into()),
        }),
    });
    assert_eq!(f.store.commit(create(&s2, "fp-two")).await, expected);
    let mut alone = create(&s2, "fp-two");
    alone.truncate(1);
    assert_eq!(f.store.commit(alone).await, expected);
}

/// Issue 13, defect 7: concurrent re-registrations of one agent with different details all land
/// (last writer wins); none is refused as "kept changing concurrently".
pub async fn concurrent_reregistrations_with_different_details_all_land(f: Fixture) {
    registered_idle(&f, "a1").await;
    let n = 48;
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let store = f.store.clone();
            let mut d = details("a1");
            d.version = format!("v{i}");
            tokio::spawn(async move { store.register_agent(d, t(10 + i)).await })
        })
        .collect();
    let mut errors = Vec::new();
    for h in handles {
        match h.await.unwrap() {
            Ok(RegisterOutcome::Updated(_) | RegisterOutcome::Unchanged(_)) => {}
            Ok(other) => errors.push(format!("unexpected {other:?}")),
            Err(e) => errors.push(e.to_string()),
        }
    }
    assert!(errors.is_empty(), "{} of {n} failed: {errors:?}", errors.len());
    let a = agent(&f, "a1").await;
    assert!(
        a.details.version.starts_with('v'),
        "one of the writes won: {}",
        a.details.version
    );
    assert_eq!(a.current.state.as_str(), "idle", "state kept");
    assert_eq!(a.details.digest(), {
        let mut d = details("a1");
        d.version = a.details.version.clone();
        d.digest()
    });
}

/// Issue 13, defect 8: cursors are URL-safe and opaque (no `#`, nothing to escape), paging with
/// `limit=1` ends, and a cursor is refused by every list but the one that issued it.
pub async fn cursors_are_url_safe_and_bound_to_their_list(f: Fixture) {
    for id in ["a1", "a2", "a3"] {
        registered_idle(&f, id).await;
        f.store
            .report_state(&report(id, "idle", t(2)), t(2), HISTORY_TTL)
            .await
            .unwrap();
    }
    for (i, v) in ["1.0", "2.0"].iter().enumerate() {
        f.store.put_workflow(&definition("wf", v), t(i as i64)).await.unwrap();
    }
    for start in [1, 2] {
        f.store
            .commit(vec![Write::CreateSession(session("a1", t(start)))])
            .await
            .unwrap();
    }
    let first = PageRequest::first(1);
    let idle = StateName::known(KnownState::Idle);
    let (a1, a2) = (aid("a1"), aid("a2"));
    let cursors = [
        (
            "agents",
            f.store.list_agents(None, first.clone()).await.unwrap().next_cursor,
        ),
        (
            "idle agents",
            f.store
                .list_agents(Some(&idle), first.clone())
                .await
                .unwrap()
                .next_cursor,
        ),
        (
            "history a1",
            f.store.state_history(&a1, first.clone()).await.unwrap().next_cursor,
        ),
        (
            "history a2",
            f.store.state_history(&a2, first.clone()).await.unwrap().next_cursor,
        ),
        (
            "workflows",
            f.store.list_workflows(first.clone()).await.unwrap().next_cursor,
        ),
        (
            "sessions a1",
            f.store.list_sessions(&a1, first.clone()).await.unwrap().next_cursor,
        ),
        (
            "all sessions",
            f.store
                .list_sessions_across_agents(None, first.clone())
                .await
                .unwrap()
                .next_cursor,
        ),
        (
            "started sessions",
            f.store
                .list_sessions_across_agents(Some(SessionStatus::Started), first.clone())
                .await
                .unwrap()
                .next_cursor,
        ),
    ];
    for (name, c) in &cursors {
        let c = c.as_deref().unwrap_or_else(|| panic!("{name}: a second page exists"));
        assert!(
            c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "{name}: cursor {c:?} is not URL-safe"
        );
    }
    // Every list, fed every cursor: only its own is accepted.
    for (own, c) in &cursors {
        let page = PageRequest {
            limit: 1,
            cursor: c.clone(),
        };
        let answers = [
            ("agents", f.store.list_agents(None, page.clone()).await.err()),
            (
                "idle agents",
                f.store.list_agents(Some(&idle), page.clone()).await.err(),
            ),
            ("history a1", f.store.state_history(&a1, page.clone()).await.err()),
            ("history a2", f.store.state_history(&a2, page.clone()).await.err()),
            ("workflows", f.store.list_workflows(page.clone()).await.err()),
            ("sessions a1", f.store.list_sessions(&a1, page.clone()).await.err()),
            (
                "all sessions",
                f.store.list_sessions_across_agents(None, page.clone()).await.err(),
            ),
            (
                "started sessions",
                f.store
                    .list_sessions_across_agents(Some(SessionStatus::Started), page.clone())
                    .await
                    .err(),
            ),
        ];
        for (list, err) in answers {
            if list == *own {
                assert_eq!(err, None, "{list} refused its own cursor");
            } else {
                assert_eq!(
                    err,
                    Some(StoreError::InvalidCursor),
                    "{list} accepted a cursor of {own}"
                );
            }
        }
    }
    // limit=1 walks every list to its end, each item once.
    let agents: Vec<_> = all_pages(1, |p| f.store.list_agents(None, p)).await.concat();
    assert_eq!(agents.len(), 3);
    let history: Vec<_> = all_pages(1, |p| f.store.state_history(&a1, p)).await.concat();
    assert_eq!(history.len(), 2);
}

// ----- routing by capability (issue 18) -----

pub(crate) fn capable(id: &str, capabilities: &[&str]) -> AgentDetails {
    AgentDetails {
        capabilities: capabilities.iter().map(|c| c.to_string()).collect(),
        ..details(id)
    }
}

/// Runs an agent write, then hands the agent's images before and after to
/// `sync_idle_agent`, as the runner does with the change (a no-op on stores that keep the index
/// in the write itself).
async fn settle<Fut: std::future::Future>(f: &Fixture, id: &str, write: Fut) -> Fut::Output {
    let before = f.store.get_agent(&aid(id)).await.unwrap();
    let out = write.await;
    let after = f.store.get_agent(&aid(id)).await.unwrap().expect("the agent exists");
    f.store.sync_idle_agent(before.as_ref(), &after).await.unwrap();
    // Index entries are stamped with the store's clock: keep two availabilities apart.
    tokio::time::sleep(Duration::from_millis(2)).await;
    out
}

async fn idle_for(f: &Fixture, capability: &str) -> Vec<String> {
    f.store
        .idle_agents(capability, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.to_string())
        .collect()
}

/// A routed copy of `t`: pending in `capability`'s list instead of its agent's.
pub(crate) fn routed(t: &TaskInstance, capability: &str) -> TaskInstance {
    TaskInstance {
        capability: Some(capability.into()),
        ..t.clone()
    }
}

pub async fn idle_agents_by_capability_longest_available_first(f: Fixture) {
    let at = |s: i64| t(s);
    for (id, caps) in [("a1", &["x", "y"][..]), ("a2", &["x"][..]), ("a3", &["y", "y"][..])] {
        settle(&f, id, f.store.register_agent(capable(id, caps), at(0)))
            .await
            .unwrap();
    }
    assert!(idle_for(&f, "x").await.is_empty(), "registered agents are not idle yet");
    for (i, id) in ["a2", "a1", "a3"].into_iter().enumerate() {
        settle(
            &f,
            id,
            f.store
                .report_state(&report(id, "idle", at(1 + i as i64)), at(1), HISTORY_TTL),
        )
        .await
        .unwrap();
    }
    assert_eq!(idle_for(&f, "x").await, ["a2", "a1"]);
    assert_eq!(
        idle_for(&f, "y").await,
        ["a1", "a3"],
        "a capability announced twice is one entry"
    );
    assert!(idle_for(&f, "z").await.is_empty());
    assert_eq!(f.store.idle_agents("x", 1).await.unwrap(), vec![aid("a2")]);
    // A heartbeat keeps an agent's place in line.
    settle(
        &f,
        "a2",
        f.store.report_state(&report("a2", "idle", at(10)), at(10), HISTORY_TTL),
    )
    .await
    .unwrap();
    assert_eq!(idle_for(&f, "x").await, ["a2", "a1"]);
    // A claim takes the agent out of every capability's list; its release puts it at the back.
    let s = session("a2", at(0));
    let task1 = routed(&task(&s, "fetch", TaskStatus::Pending, at(0)), "x");
    f.store
        .commit(vec![Write::CreateSession(s.clone()), Write::CreateTask(task1.clone())])
        .await
        .unwrap();
    let mut next = claimed(&task1, at(11));
    next.agent_id = aid("a1");
    let dispatch = dispatch_of(&next, 1);
    // Only for a capability it announces.
    let for_capability = |capability: &str| {
        vec![Write::ClaimAgentFor {
            agent_id: aid("a1"),
            inflight: Inflight {
                dispatch: dispatch.clone(),
                since: at(11),
                routed_by: Some(capability.into()),
            },
            capability: capability.into(),
        }]
    };
    match f.store.commit(for_capability("z")).await {
        Err(CommitError::Conflict {
            index: 0,
            write: WriteKind::ClaimAgentFor,
            existing: None,
        }) => {}
        other => panic!("a claim for a capability a1 lacks: {other:?}"),
    }
    settle(
        &f,
        "a1",
        f.store.commit(vec![
            Write::ClaimAgent {
                agent_id: aid("a1"),
                inflight: Inflight {
                    dispatch: dispatch.clone(),
                    since: at(11),
                    routed_by: None,
                },
            },
            Write::TransitionTask {
                from: TaskStatus::Pending,
                next,
            },
        ]),
    )
    .await
    .unwrap();
    assert_eq!(idle_for(&f, "x").await, ["a2"]);
    assert_eq!(idle_for(&f, "y").await, ["a3"]);
    settle(
        &f,
        "a1",
        f.store.commit(vec![Write::ReleaseAgent {
            agent_id: aid("a1"),
            dispatch,
        }]),
    )
    .await
    .unwrap();
    assert_eq!(idle_for(&f, "x").await, ["a2", "a1"]);
    assert_eq!(idle_for(&f, "y").await, ["a3", "a1"]);
    // Busy, deregistered, or no longer announcing it: out of the list.
    settle(
        &f,
        "a2",
        f.store
            .report_state(&report("a2", "active", at(12)), at(12), HISTORY_TTL),
    )
    .await
    .unwrap();
    assert_eq!(idle_for(&f, "x").await, ["a1"]);
    settle(&f, "a3", f.store.deregister_agent(&aid("a3"), at(13)))
        .await
        .unwrap();
    assert_eq!(idle_for(&f, "y").await, ["a1"]);
    settle(&f, "a1", f.store.register_agent(capable("a1", &["z"]), at(14)))
        .await
        .unwrap();
    assert!(idle_for(&f, "x").await.is_empty());
    assert!(idle_for(&f, "y").await.is_empty());
    assert_eq!(idle_for(&f, "z").await, ["a1"]);
    // Registered again, still idle: back in its capabilities' lists.
    settle(&f, "a3", f.store.register_agent(capable("a3", &["y"]), at(15)))
        .await
        .unwrap();
    assert_eq!(idle_for(&f, "y").await, ["a3"]);
}

pub async fn routed_tasks_wait_in_their_capability_list_not_their_agents(f: Fixture) {
    let s = session("a1", t(0));
    let other = session("a2", t(0));
    let due10 = routed(&task(&s, "due10", TaskStatus::Pending, t(10)), "x");
    let due5 = routed(&task(&other, "due5", TaskStatus::Pending, t(5)), "x");
    let later = routed(&task(&s, "later", TaskStatus::Pending, t(50)), "x");
    let elsewhere = routed(&task(&s, "elsewhere", TaskStatus::Pending, t(1)), "y");
    let named = task(&s, "named", TaskStatus::Pending, t(1));
    let mut writes = vec![Write::CreateSession(s.clone()), Write::CreateSession(other.clone())];
    for x in [&due10, &due5, &later, &elsewhere, &named] {
        writes.push(Write::CreateTask(x.clone()));
    }
    f.store.commit(writes).await.unwrap();
    let keys = |l: Vec<RoutedTask>| l.into_iter().map(|r| r.key).collect::<Vec<_>>();
    let listed = f.store.routed_tasks("x", t(20), 10).await.unwrap();
    assert_eq!(
        listed,
        vec![
            RoutedTask {
                key: due5.key(),
                due_at: t(5)
            },
            RoutedTask {
                key: due10.key(),
                due_at: t(10)
            }
        ]
    );
    assert_eq!(
        keys(f.store.routed_tasks("x", t(20), 1).await.unwrap()),
        vec![due5.key()]
    );
    assert!(f.store.routed_tasks("x", t(4), 10).await.unwrap().is_empty());
    assert_eq!(
        keys(f.store.routed_tasks("y", t(20), 10).await.unwrap()),
        vec![elsewhere.key()]
    );
    assert_eq!(
        f.store.runnable_tasks(&aid("a1"), t(60), 10).await.unwrap(),
        vec![named.key()],
        "routed tasks are not in their agent's list"
    );
    // Claimed (by any agent): out of the list; retried: back, at its new due time.
    let mut next = claimed(&due5, t(21));
    next.agent_id = aid("a7");
    f.store
        .commit(vec![Write::TransitionTask {
            from: TaskStatus::Pending,
            next: next.clone(),
        }])
        .await
        .unwrap();
    assert_eq!(
        keys(f.store.routed_tasks("x", t(60), 10).await.unwrap()),
        vec![due10.key(), later.key()]
    );
    assert!(f.store.runnable_tasks(&aid("a7"), t(60), 10).await.unwrap().is_empty());
    let mut retry = moved(&next, TaskStatus::Pending);
    retry.due_at = t(30);
    f.store
        .commit(vec![Write::TransitionTask {
            from: TaskStatus::Dispatched,
            next: retry.clone(),
        }])
        .await
        .unwrap();
    assert_eq!(
        keys(f.store.routed_tasks("x", t(60), 10).await.unwrap()),
        vec![due10.key(), due5.key(), later.key()]
    );
    assert!(
        f.store.runnable_tasks(&aid("a7"), t(60), 10).await.unwrap().is_empty(),
        "a retried routed task is not its last holder's"
    );
    let view = f.store.get_session(&other.session_id).await.unwrap().unwrap();
    assert_eq!(view.tasks, vec![retry], "the capability round-trips");
}

/// 16 routed tasks and 16 idle capable agents, every task claimed concurrently the way the runner
/// claims one (the capability's idle agents in turn, agent marker and task in one commit): each
/// agent ends up with at most one task, every task with exactly one agent.
pub async fn routed_claims_race_one_agent_per_task_one_task_per_agent(f: Fixture) {
    const N: usize = 16;
    for i in 0..N {
        let id = format!("r{i:02}");
        settle(&f, &id, f.store.register_agent(capable(&id, &["race"]), t(0)))
            .await
            .unwrap();
        settle(
            &f,
            &id,
            f.store.report_state(&report(&id, "idle", t(1)), t(1), HISTORY_TTL),
        )
        .await
        .unwrap();
    }
    let mut tasks = Vec::new();
    for i in 0..N {
        let s = session("home", t(0));
        let x = routed(&task(&s, &format!("job{i:02}"), TaskStatus::Pending, t(0)), "race");
        f.store
            .commit(vec![Write::CreateSession(s), Write::CreateTask(x.clone())])
            .await
            .unwrap();
        tasks.push(x);
    }
    let handles: Vec<_> = tasks
        .iter()
        .cloned()
        .map(|x| {
            let store = f.store.clone();
            tokio::spawn(async move {
                for _round in 0..N {
                    let candidates = store.idle_agents("race", N as u32).await.unwrap();
                    for agent in candidates {
                        let mut next = claimed(&x, t(10));
                        next.agent_id = agent.clone();
                        let writes = vec![
                            Write::ClaimAgentFor {
                                agent_id: agent.clone(),
                                inflight: Inflight {
                                    dispatch: dispatch_of(&next, 1),
                                    since: t(10),
                                    routed_by: Some("race".into()),
                                },
                                capability: "race".into(),
                            },
                            Write::TransitionTask {
                                from: TaskStatus::Pending,
                                next,
                            },
                            Write::CheckSessionOpen(x.session_id),
                        ];
                        match store.commit(writes).await {
                            Ok(()) => return Some(agent),
                            Err(CommitError::Conflict {
                                write: WriteKind::ClaimAgentFor,
                                ..
                            }) => continue,
                            Err(e) => panic!("unexpected {e:?}"),
                        }
                    }
                }
                None
            })
        })
        .collect();
    let mut holders = Vec::new();
    for h in handles {
        holders.push(h.await.unwrap().expect("every task gets an agent"));
    }
    let distinct: std::collections::HashSet<_> = holders.iter().collect();
    assert_eq!(distinct.len(), N, "no agent holds two tasks: {holders:?}");
    for (x, holder) in tasks.iter().zip(&holders) {
        let stored = f.store.get_task(&x.key()).await.unwrap().unwrap();
        assert_eq!((stored.status, &stored.agent_id), (TaskStatus::Dispatched, holder));
        let agent = f.store.get_agent(holder).await.unwrap().unwrap();
        assert_eq!(
            agent.inflight.map(|i| i.dispatch),
            Some(dispatch_of(&stored, 1)),
            "the holder's marker names its task"
        );
    }
    assert!(f.store.routed_tasks("race", t(60), 100).await.unwrap().is_empty());
}

/// Stamps out one `#[tokio::test]` per contract case for a store fixture
/// (`async fn() -> Fixture`), inside the calling module.
#[macro_export]
macro_rules! store_contract_tests {
    ($fixture:path) => {
        $crate::store_contract_tests!(@cases $fixture;
            register_creates_agent_in_unknown_state,
            register_identical_redelivery_writes_nothing,
            register_changed_details_keeps_state_and_history,
            deregister_is_idempotent_and_keeps_the_agent,
            deregistered_agent_refuses_reports_until_registered_again,
            report_for_unknown_agent_is_not_found,
            reports_apply_only_when_newer_and_history_keeps_all,
            history_is_newest_first_and_paginates,
            list_agents_paginates_and_filters_by_state,
            concurrent_reports_newest_wins_and_history_keeps_all,
            put_workflow_is_created_identical_or_conflict,
            put_workflow_from_text_is_identical_on_retry,
            get_workflow_by_version_or_latest,
            list_workflows_paginates_by_id_and_version,
            session_and_tasks_round_trip,
            missing_sessions_and_tasks_read_as_none,
            create_session_and_task_must_not_exist,
            batch_is_atomic_when_its_third_write_fails,
            idempotency_key_conflict_names_the_existing_session,
            delivery_record_is_created_once,
            delivery_record_counts_as_absent_once_expired,
            expired_idempotency_key_no_longer_blocks,
            session_transition_needs_status_and_revision,
            check_session_open_refuses_terminal_and_missing_sessions,
            task_transition_needs_status_and_revision,
            claim_and_release_agent_conditions,
            hand_over_agent_conditions,
            concurrent_claims_of_one_task_have_one_winner,
            concurrent_terminal_transitions_of_one_session_have_one_winner,
            list_sessions_newest_first_and_paginates,
            list_sessions_across_agents_newest_first_by_status_and_paginates,
            runnable_tasks_are_pending_due_oldest_first,
            due_timers_cover_every_task_in_timer_order,
            invalid_cursors_are_refused,
            reports_order_across_the_whole_timestamp_range,
            idempotency_key_keeps_the_fingerprint_of_its_request,
            concurrent_reregistrations_with_different_details_all_land,
            cursors_are_url_safe_and_bound_to_their_list,
            idle_agents_by_capability_longest_available_first,
            routed_tasks_wait_in_their_capability_list_not_their_agents,
            routed_claims_race_one_agent_per_task_one_task_per_agent,
        );
    };
    (@cases $fixture:path; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let fixture = $fixture().await;
                $crate::run_case(stringify!($case), $crate::contract::$case(fixture)).await;
            }
        )*
    };
}
