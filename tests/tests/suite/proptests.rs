//! Property tests (proptest) of the three rules everything else rests on:
//!
//! 1. **Report ordering**: whatever order reports arrive in, and however many agents report at
//!    once, the current state is the report with the newest timestamp and history holds every
//!    report (in-memory store, and the embedded DynamoDB-compatible store with fewer cases).
//! 2. **State machines**: driving the real `App` + `Runner` with random event sequences (reports
//!    idle/active/error/other naming the right, a wrong, an earlier or no attempt; clock jumps;
//!    sweeps; cancels; deregistrations and re-registrations; AgentKit answering 2xx, 5xx or 4xx;
//!    new triggers), every task and session change seen on the change stream is allowed by
//!    `can_become`, nothing ever leaves a terminal state, and nothing is created in a later state.
//! 3. **Definition validation** accepts exactly the well-formed chains: unique ids, every
//!    `nextTaskId` (and `entryTaskId`) resolves, no cycle, every task reachable from the entry,
//!    at least one task.
//!
//! Case counts: `PROPTEST_CASES` overrides the defaults below (512 / 48 / 512 / 4096).

use opscore_core::agent::{AgentDetails, StateName, StateReport};
use opscore_core::app::{App, DefinitionSource, Settings};
use opscore_core::ids::{AgentId, SessionId};
use opscore_core::memory::InMemoryStore;
use opscore_core::runner::{DispatchOutcome, Runner};
use opscore_core::session::SessionStatus;
use opscore_core::store::{Change, PageRequest, Store};
use opscore_core::task::TaskStatus;
use opscore_core::time::{Clock, ManualClock};
use opscore_core::workflow::WorkflowDefinition;
use opscore_dynamo::{DynamoStore, EmbeddedDynamo, create_table};
use opscore_sqlite::SqliteStore;
use opscore_tests::fake::{ScriptedAgentKit, engine};
use proptest::prelude::*;
use proptest::test_runner::{Config as PtConfig, TestCaseError};
use serde_json::{Value, json};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};

fn cases(default: u32) -> PtConfig {
    let n = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    PtConfig {
        cases: n,
        // Shrinking a failure of the async cases can take long; the seed is printed anyway.
        max_shrink_iters: 256,
        failure_persistence: None,
        ..PtConfig::default()
    }
}

fn base_time() -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp(1_795_474_230, 0).unwrap()
}

fn details(id: &AgentId) -> AgentDetails {
    AgentDetails {
        agent_id: id.clone(),
        agent_name: "prop".into(),
        version: "1".into(),
        capabilities: vec![],
        contact_endpoint: "http://127.0.0.1:9/task".into(),
        metadata: Default::default(),
        registration_time: None,
    }
}

fn rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    })
}

// ------------------------------------------------------------------------------------------------
// 1. Report ordering

/// One report: which agent (0..agents), its timestamp offset in ms (distinct per agent), its state.
#[derive(Debug, Clone)]
struct Rep {
    agent: usize,
    offset_ms: i64,
    state: &'static str,
}

const STATES: &[&str] = &["idle", "active", "error", "finished", "initializing", "Busy-Thinking"];

/// Up to 3 agents, up to 10 reports each, distinct timestamps per agent, delivered in a random
/// order (the shuffle), some sent concurrently.
fn reports_strategy() -> impl Strategy<Value = (usize, Vec<Rep>, Vec<bool>)> {
    (1usize..=3)
        .prop_flat_map(|agents| {
            let per_agent = proptest::collection::vec(
                (
                    proptest::collection::btree_set(-5_000i64..5_000, 1..=10),
                    proptest::collection::vec(proptest::sample::select(STATES), 10),
                ),
                agents,
            );
            (Just(agents), per_agent)
        })
        .prop_map(|(agents, per_agent)| {
            let mut reps = Vec::new();
            for (a, (offsets, states)) in per_agent.into_iter().enumerate() {
                for (i, off) in offsets.into_iter().enumerate() {
                    reps.push(Rep {
                        agent: a,
                        offset_ms: off,
                        state: states[i],
                    });
                }
            }
            (agents, reps)
        })
        .prop_flat_map(|(agents, reps)| {
            let n = reps.len();
            (
                Just(agents),
                Just(reps).prop_shuffle(),
                proptest::collection::vec(any::<bool>(), n),
            )
        })
}

async fn check_reports(
    store: Arc<dyn Store>,
    agents: usize,
    reps: Vec<Rep>,
    concurrent: Vec<bool>,
) -> Result<(), TestCaseError> {
    let app = App::new(store, Arc::new(ManualClock::at(base_time())), Settings::default());
    let ids: Vec<AgentId> = (0..agents)
        .map(|_| AgentId::parse(uuid::Uuid::new_v4().to_string()).unwrap())
        .collect();
    for id in &ids {
        app.register_agent(details(id)).await.unwrap();
    }
    let report = |r: &Rep, i: usize| StateReport {
        agent_id: ids[r.agent].clone(),
        state: StateName::parse(r.state).unwrap(),
        details: Some(json!({"i": i}).as_object().unwrap().clone()),
        // Far in the past as well as in the future: the agent's clock is not ours.
        timestamp: base_time() + chrono::Duration::milliseconds(r.offset_ms * 1_000 + 7),
    };
    // Deliver in the shuffled order; runs of `concurrent == true` go out at once.
    let mut i = 0;
    while i < reps.len() {
        let mut j = i + 1;
        while j < reps.len() && concurrent[j] {
            j += 1;
        }
        let batch: Vec<_> = (i..j).map(|k| report(&reps[k], k)).collect();
        let results = futures::future::join_all(batch.iter().map(|r| app.report_state(r))).await;
        for r in results {
            r.map_err(|e| TestCaseError::fail(format!("report refused: {e}")))?;
        }
        i = j;
    }
    for (a, id) in ids.iter().enumerate() {
        let mine: Vec<(usize, &Rep)> = reps.iter().enumerate().filter(|(_, r)| r.agent == a).collect();
        let (newest_i, newest) = mine.iter().max_by_key(|(_, r)| r.offset_ms).unwrap();
        let cur = app.agent_state(id).await.unwrap();
        let want_state = StateName::parse(newest.state).unwrap();
        prop_assert_eq!(cur.state.as_str(), want_state.as_str());
        prop_assert_eq!(cur.details.as_ref().and_then(|d| d.get("i")), Some(&json!(newest_i)));
        prop_assert_eq!(cur.timestamp, report(newest, *newest_i).timestamp);
        // History: every report, each once; exactly the newest is applied among the latest.
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let page = app.history(id, PageRequest { limit: 100, cursor }).await.unwrap();
            seen.extend(page.items);
            cursor = page.next_cursor;
            if cursor.is_none() {
                break;
            }
        }
        prop_assert_eq!(seen.len(), mine.len(), "history holds every report");
        let got: BTreeSet<i64> = seen
            .iter()
            .map(|h| h.details.as_ref().unwrap()["i"].as_i64().unwrap())
            .collect();
        let want: BTreeSet<i64> = mine.iter().map(|(k, _)| *k as i64).collect();
        prop_assert_eq!(got, want);
        // Newest first.
        prop_assert!(seen.windows(2).all(|w| w[0].timestamp >= w[1].timestamp));
        prop_assert!(seen[0].applied, "the newest report was applied");
        // The number of applied reports equals the state version.
        let applied = seen.iter().filter(|h| h.applied).count() as u64;
        prop_assert_eq!(cur.version, applied);
    }
    Ok(())
}

#[test]
fn reports_in_any_order_memory() {
    let mut runner = proptest::test_runner::TestRunner::new(cases(512));
    runner
        .run(&reports_strategy(), |(agents, reps, conc)| {
            rt().block_on(check_reports(Arc::new(InMemoryStore::new()), agents, reps, conc))
        })
        .unwrap();
}

#[test]
fn reports_in_any_order_sqlite() {
    // A fresh store per case, as for the in-memory store: the two timings compare the stores.
    let mut runner = proptest::test_runner::TestRunner::new(cases(512));
    runner
        .run(&reports_strategy(), |(agents, reps, conc)| {
            let store = Arc::new(SqliteStore::temporary().expect("temporary sqlite store"));
            rt().block_on(check_reports(store, agents, reps, conc))
        })
        .unwrap();
}

#[test]
fn reports_in_any_order_embedded() {
    // One embedded store for all cases (fresh agents per case).
    let store: Arc<dyn Store> = rt().block_on(async {
        let server = EmbeddedDynamo::start().await.expect("embedded store starts");
        let client = server.client().await;
        create_table(&client, "opscore").await.unwrap();
        // Leak the server: it must outlive every case of this test.
        Box::leak(Box::new(server));
        Arc::new(DynamoStore::new(client, "opscore".to_string())) as Arc<dyn Store>
    });
    let mut runner = proptest::test_runner::TestRunner::new(cases(48));
    runner
        .run(&reports_strategy(), |(agents, reps, conc)| {
            rt().block_on(check_reports(store.clone(), agents, reps, conc))
        })
        .unwrap();
}

// ------------------------------------------------------------------------------------------------
// 2. Session and task state machines under random event sequences

#[derive(Debug, Clone, Copy)]
enum TaskRef {
    /// The attempt out with the agent now (if any).
    Current,
    /// An attempt dispatched earlier (if any).
    Earlier,
    /// Something that is no attempt.
    Wrong,
    /// No `opscore_task_id`.
    None,
}

#[derive(Debug, Clone)]
enum Ev {
    Report {
        state: &'static str,
        task: TaskRef,
        stale: bool,
    },
    Advance(i64),
    Sweep,
    Cancel(usize),
    Deregister,
    Reregister,
    Trigger {
        tasks: usize,
        max_retries: u32,
    },
    AgentKit(u8),
}

fn ev_strategy() -> impl Strategy<Value = Ev> {
    let task = prop_oneof![
        4 => Just(TaskRef::Current),
        1 => Just(TaskRef::Earlier),
        1 => Just(TaskRef::Wrong),
        3 => Just(TaskRef::None),
    ];
    prop_oneof![
        10 => (proptest::sample::select(&["idle", "active", "error", "Busy", "finished"][..]), task, proptest::bool::weighted(0.1))
            .prop_map(|(state, task, stale)| Ev::Report { state, task, stale }),
        3 => proptest::sample::select(&[1i64, 3, 31, 120, 700, 4_000][..]).prop_map(Ev::Advance),
        2 => Just(Ev::Sweep),
        1 => (0usize..4).prop_map(Ev::Cancel),
        1 => Just(Ev::Deregister),
        1 => Just(Ev::Reregister),
        2 => (1usize..=3, 0u32..=2).prop_map(|(tasks, max_retries)| Ev::Trigger { tasks, max_retries }),
        2 => (0u8..3).prop_map(Ev::AgentKit),
    ]
}

struct Machine {
    clock: ManualClock,
    app: App,
    runner: Runner,
    agentkit: Arc<ScriptedAgentKit>,
    changes: Changes,
    agent: AgentId,
    sessions: Vec<SessionId>,
    ticks: i64,
    observed: usize,
    /// Terminal statuses seen per task/session: once seen, never changed.
    terminal_tasks: HashMap<(String, String), TaskStatus>,
    terminal_sessions: HashMap<String, SessionStatus>,
    transitions: HashSet<String>,
}

fn chain(tasks: usize, max_retries: u32) -> WorkflowDefinition {
    let ts: Vec<Value> = (0..tasks)
        .map(|i| {
            json!({"taskId": format!("t{i}"), "name": format!("T{i}"),
                   "nextTaskId": if i + 1 < tasks { json!(format!("t{}", i + 1)) } else { Value::Null }})
        })
        .collect();
    WorkflowDefinition::from_value(json!({
        "id": "prop", "name": "Prop", "tasks": ts,
        "retryPolicy": {"maxRetries": max_retries, "baseDelaySeconds": 1, "maxDelaySeconds": 4},
        "dispatchTimeoutSeconds": 600, "taskTimeoutSeconds": 300
    }))
    .unwrap()
}

/// Where the machine's changes come from: the in-memory store's channel, or the SQLite store's
/// durable feed (read, then trimmed, as the local stack does).
enum Changes {
    Channel(tokio::sync::mpsc::UnboundedReceiver<Change>),
    Feed(Arc<SqliteStore>, u64),
}

impl Changes {
    async fn next_batch(&mut self) -> Vec<Change> {
        match self {
            Changes::Channel(rx) => std::iter::from_fn(|| rx.try_recv().ok()).collect(),
            Changes::Feed(store, after) => {
                let batch = store.read_feed(*after, 1_000).expect("feed reads");
                if let Some((last, _)) = batch.last() {
                    *after = *last;
                    store.trim_feed(*last).await.expect("feed trims");
                }
                batch.into_iter().map(|(_, c)| c).collect()
            }
        }
    }
}

#[derive(Clone, Copy)]
enum StoreKind {
    Memory,
    Sqlite,
}

impl Machine {
    async fn new(kind: StoreKind) -> Self {
        let clock = ManualClock::at(base_time());
        let (store, changes): (Arc<dyn Store>, Changes) = match kind {
            StoreKind::Memory => {
                let (store, rx) = InMemoryStore::with_changes();
                (
                    Arc::new(store.with_clock(Arc::new(clock.clone()))),
                    Changes::Channel(rx),
                )
            }
            StoreKind::Sqlite => {
                let store = Arc::new(
                    SqliteStore::temporary()
                        .expect("temporary sqlite store")
                        .with_clock(Arc::new(clock.clone())),
                );
                (store.clone(), Changes::Feed(store, 0))
            }
        };
        let agentkit = Arc::new(ScriptedAgentKit::default());
        let (app, runner) = engine(store, &clock, agentkit.clone());
        let agent = AgentId::parse("prop-agent").unwrap();
        app.register_agent(details(&agent)).await.unwrap();
        Self {
            clock,
            app,
            runner,
            agentkit,
            changes,
            agent,
            sessions: vec![],
            ticks: 0,
            observed: 0,
            terminal_tasks: HashMap::new(),
            terminal_sessions: HashMap::new(),
            transitions: HashSet::new(),
        }
    }

    fn check(&mut self, c: &Change) -> Result<(), TestCaseError> {
        self.observed += 1;
        match c {
            Change::Task { old, new } => {
                let new = new.as_ref().ok_or_else(|| TestCaseError::fail("a task was deleted"))?;
                let key = (new.session_id.to_string(), new.task_id.to_string());
                match old {
                    // Pending, or claimed for the agent that finished the session's previous
                    // task (a hand-over): its first attempt, under a lease.
                    None if new.status == TaskStatus::Dispatched => {
                        prop_assert_eq!(new.attempt, 1, "a task created claimed is on its first attempt");
                        prop_assert!(new.lease_expires_at.is_some(), "a task created claimed has a lease");
                        self.transitions.insert("task created Dispatched (hand-over)".into());
                    }
                    None => prop_assert_eq!(new.status, TaskStatus::Pending, "a task is created pending or claimed"),
                    Some(old) => {
                        prop_assert!(
                            !old.status.is_terminal(),
                            "task left terminal {:?} (→ {:?})",
                            old.status,
                            new.status
                        );
                        if old.status != new.status {
                            prop_assert!(
                                old.status.can_become(new.status),
                                "task {:?} → {:?} is not in the table",
                                old.status,
                                new.status
                            );
                            self.transitions
                                .insert(format!("task {:?}->{:?}", old.status, new.status));
                        }
                        prop_assert!(new.attempt >= old.attempt, "attempt went backwards");
                    }
                }
                if let Some(t) = self.terminal_tasks.get(&key) {
                    prop_assert_eq!(*t, new.status, "a terminal task was written again");
                }
                if new.status.is_terminal() {
                    self.terminal_tasks.insert(key, new.status);
                }
            }
            Change::Session { old, new } => {
                let new = new
                    .as_ref()
                    .ok_or_else(|| TestCaseError::fail("a session was deleted"))?;
                let key = new.session_id.to_string();
                match old {
                    None => prop_assert_eq!(new.status, SessionStatus::Started, "a session is created started"),
                    Some(old) => {
                        prop_assert!(!old.status.is_terminal(), "session left terminal {:?}", old.status);
                        if old.status != new.status {
                            prop_assert!(
                                old.status.can_become(new.status),
                                "session {:?} → {:?} is not in the table",
                                old.status,
                                new.status
                            );
                            self.transitions
                                .insert(format!("session {:?}->{:?}", old.status, new.status));
                        }
                        prop_assert!(new.rev > old.rev, "session revision did not move");
                    }
                }
                if let Some(t) = self.terminal_sessions.get(&key) {
                    prop_assert_eq!(*t, new.status, "a terminal session was written again");
                }
                prop_assert_eq!(new.status.is_terminal(), new.end_time.is_some(), "endTime iff terminal");
                if new.status.is_terminal() {
                    self.terminal_sessions.insert(key, new.status);
                }
            }
            Change::Agent { .. } => {}
        }
        Ok(())
    }

    /// Feeds every change to the checker and the runner (a stream consumer), until quiet.
    async fn pump(&mut self) -> Result<(), TestCaseError> {
        loop {
            let batch = self.changes.next_batch().await;
            if batch.is_empty() {
                return Ok(());
            }
            for c in batch {
                self.check(&c)?;
                self.runner
                    .on_change(&c)
                    .await
                    .map_err(|e| TestCaseError::fail(format!("runner failed on a change: {e}")))?;
            }
        }
    }

    async fn step(&mut self, ev: &Ev) -> Result<(), TestCaseError> {
        match ev {
            Ev::Report { state, task, stale } => {
                self.ticks += 1;
                let seen = self.agentkit.seen.lock().unwrap().clone();
                let current = self
                    .app
                    .agent(&self.agent)
                    .await
                    .ok()
                    .and_then(|a| a.inflight.map(|i| i.dispatch.render()));
                let id = match task {
                    TaskRef::Current => current.or_else(|| seen.last().map(|r| r.dispatch_id.clone())),
                    TaskRef::Earlier => seen.first().map(|r| r.dispatch_id.clone()),
                    TaskRef::Wrong => Some("no-such-session:t0:1".to_string()),
                    TaskRef::None => None,
                };
                let mut d = serde_json::Map::new();
                if let Some(id) = id {
                    d.insert("opscore_task_id".into(), json!(id));
                }
                if *state == "error" {
                    d.insert("error".into(), json!("boom"));
                }
                let ts = if *stale {
                    self.clock.now() - chrono::Duration::hours(1)
                } else {
                    self.clock.now() + chrono::Duration::microseconds(self.ticks)
                };
                let report = StateReport {
                    agent_id: self.agent.clone(),
                    state: StateName::parse(state).unwrap(),
                    details: Some(d),
                    timestamp: ts,
                };
                // A deregistered agent's report is refused (409): that is fine here.
                let _ = self.app.report_state(&report).await;
            }
            Ev::Advance(s) => self.clock.advance(chrono::Duration::seconds(*s)),
            Ev::Sweep => {
                self.runner
                    .sweep()
                    .await
                    .map_err(|e| TestCaseError::fail(format!("sweep failed: {e}")))?;
            }
            Ev::Cancel(i) => {
                if let Some(s) = self.sessions.get(*i % self.sessions.len().max(1)) {
                    let _ = self.app.cancel_session(s).await;
                }
            }
            Ev::Deregister => {
                let _ = self.app.deregister_agent(&self.agent).await;
            }
            Ev::Reregister => {
                self.app.register_agent(details(&self.agent)).await.unwrap();
            }
            Ev::Trigger { tasks, max_retries } => {
                if let Ok(t) = self
                    .app
                    .trigger(
                        &self.agent,
                        DefinitionSource::Inline(Box::new(chain(*tasks, *max_retries))),
                        None,
                        None,
                    )
                    .await
                {
                    self.sessions.push(t.session_id);
                }
            }
            Ev::AgentKit(k) => {
                let answer = match k {
                    0 => DispatchOutcome::Accepted,
                    1 => DispatchOutcome::Failed {
                        retryable: true,
                        reason: "503".into(),
                    },
                    _ => DispatchOutcome::Failed {
                        retryable: false,
                        reason: "400".into(),
                    },
                };
                self.agentkit.script.lock().unwrap().push_back(answer);
            }
        }
        self.pump().await
    }
}

/// Transitions seen over all cases of the run (printed, to show the sequences reach them all).
static SEEN_TRANSITIONS: OnceLock<Mutex<BTreeSet<String>>> = OnceLock::new();

#[test]
fn session_and_task_state_machines_memory() {
    state_machines(StoreKind::Memory);
}

#[test]
fn session_and_task_state_machines_sqlite() {
    state_machines(StoreKind::Sqlite);
}

fn state_machines(kind: StoreKind) {
    let mut runner = proptest::test_runner::TestRunner::new(cases(512));
    let events = proptest::collection::vec(ev_strategy(), 1..80);
    let total_changes = std::sync::atomic::AtomicUsize::new(0);
    runner
        .run(&events, |evs| {
            rt().block_on(async {
                let mut m = Machine::new(kind).await;
                m.pump().await?;
                // Every sequence starts with a session so that something is always in play.
                m.step(&Ev::Trigger {
                    tasks: 2,
                    max_retries: 1,
                })
                .await?;
                for ev in &evs {
                    m.step(ev).await?;
                }
                // Let time run out: every open session must end (timeouts), still by the table.
                for _ in 0..30 {
                    m.step(&Ev::Advance(700)).await?;
                    m.step(&Ev::Sweep).await?;
                }
                for s in &m.sessions {
                    let v = m.app.session(s).await.unwrap();
                    prop_assert!(
                        v.session.status.is_terminal(),
                        "session still {:?} after every deadline passed",
                        v.session.status
                    );
                    for t in &v.tasks {
                        prop_assert!(t.status.is_terminal(), "task still {:?}", t.status);
                    }
                }
                total_changes.fetch_add(m.observed, std::sync::atomic::Ordering::Relaxed);
                SEEN_TRANSITIONS
                    .get_or_init(Default::default)
                    .lock()
                    .unwrap()
                    .extend(m.transitions.iter().cloned());
                Ok(())
            })
        })
        .unwrap();
    let seen = SEEN_TRANSITIONS.get_or_init(Default::default).lock().unwrap();
    eprintln!(
        "state machines: {} changes checked; transitions seen: {:?}",
        total_changes.into_inner(),
        *seen
    );
    // The generator must reach the interesting edges, or the property says little.
    for must in [
        "task Pending->Dispatched",
        "task Dispatched->Running",
        "task Dispatched->Succeeded",
        "task Running->Succeeded",
        "task Dispatched->Pending",
        "task Pending->Failed",
        "task Pending->Cancelled",
        "session Started->Running",
        "session Running->Completed",
        "session Running->Failed",
        "session Running->Cancelled",
    ] {
        assert!(seen.contains(must), "no sequence reached {must}");
    }
}

// ------------------------------------------------------------------------------------------------
// 3. Definition validation = exactly the well-formed chains

#[derive(Debug, Clone)]
struct Graph {
    /// (task id index, next index) — ids come from a small pool so duplicates happen; index 7
    /// never names a task, so dangling references happen.
    tasks: Vec<(u8, Option<u8>)>,
    entry: Option<u8>,
}

fn graph_strategy() -> impl Strategy<Value = Graph> {
    let id = 0u8..8;
    (
        proptest::collection::vec((0u8..7, proptest::option::weighted(0.8, id.clone())), 0..7),
        proptest::option::weighted(0.25, id),
    )
        .prop_map(|(tasks, entry)| Graph { tasks, entry })
}

/// Builds mostly-valid chains too: a random permutation linked in order, then maybe one edit.
fn chain_strategy() -> impl Strategy<Value = Graph> {
    (1usize..7)
        .prop_flat_map(|n| {
            (
                Just((0..n as u8).collect::<Vec<_>>()).prop_shuffle(),
                0usize..8,
                0u8..8,
                0u8..8,
            )
        })
        .prop_map(|(order, edit, a, b)| {
            let n = order.len();
            let mut tasks: Vec<(u8, Option<u8>)> = order
                .iter()
                .enumerate()
                .map(|(i, id)| (*id, order.get(i + 1).copied()))
                .collect();
            let entry = Some(order[0]);
            // Present the tasks in a rotated order so "entry = first task" is not always true.
            tasks.rotate_left((a as usize) % n);
            match edit {
                0 => tasks[(b as usize) % n].1 = Some(a % 8), // maybe a cycle, dangling or skip
                1 => tasks[(b as usize) % n].1 = None,        // maybe an unreachable tail
                2 => tasks[(b as usize) % n].0 = a % 7,       // maybe a duplicate id
                _ => {}
            }
            Graph { tasks, entry }
        })
}

fn oracle(g: &Graph) -> bool {
    if g.tasks.is_empty() {
        return false;
    }
    let ids: Vec<u8> = g.tasks.iter().map(|t| t.0).collect();
    let unique: HashSet<u8> = ids.iter().copied().collect();
    if unique.len() != ids.len() {
        return false;
    }
    let next: HashMap<u8, Option<u8>> = g.tasks.iter().copied().collect();
    if g.tasks.iter().any(|(_, n)| n.is_some_and(|n| !next.contains_key(&n))) {
        return false;
    }
    let entry = g.entry.unwrap_or(g.tasks[0].0);
    if !next.contains_key(&entry) {
        return false;
    }
    // A cycle anywhere (functional graph: follow each node).
    for &start in &ids {
        let mut seen = HashSet::new();
        let mut cur = Some(start);
        while let Some(c) = cur {
            if !seen.insert(c) {
                return false;
            }
            cur = next[&c];
        }
    }
    // Reachability from the entry.
    let mut reached = HashSet::new();
    let mut cur = Some(entry);
    while let Some(c) = cur {
        reached.insert(c);
        cur = next[&c];
    }
    reached.len() == ids.len()
}

fn definition_json(g: &Graph) -> Value {
    let tasks: Vec<Value> = g
        .tasks
        .iter()
        .map(|(id, next)| {
            let mut t = json!({"taskId": format!("t{id}"), "name": format!("Task {id}")});
            if let Some(n) = next {
                t["nextTaskId"] = json!(format!("t{n}"));
            }
            t
        })
        .collect();
    let mut d = json!({"id": "g", "name": "G", "tasks": tasks});
    if let Some(e) = g.entry {
        d["entryTaskId"] = json!(format!("t{e}"));
    }
    d
}

fn check_definition(g: Graph) -> Result<(), TestCaseError> {
    let d = definition_json(&g);
    let got = WorkflowDefinition::from_value(d.clone());
    let want = oracle(&g);
    prop_assert_eq!(got.is_ok(), want, "definition {} → {:?}", d, got.err());
    // The same through both wire formats.
    let yaml = serde_norway::to_string(&d).unwrap();
    let via_yaml = WorkflowDefinition::parse(yaml.as_bytes(), opscore_core::workflow::Format::Yaml);
    prop_assert_eq!(via_yaml.is_ok(), want);
    Ok(())
}

#[test]
fn definition_validation_accepts_exactly_the_well_formed_chains() {
    let mut runner = proptest::test_runner::TestRunner::new(cases(4096));
    let accepted = std::cell::Cell::new(0u32);
    let total = std::cell::Cell::new(0u32);
    runner
        .run(&prop_oneof![graph_strategy(), chain_strategy()], |g| {
            total.set(total.get() + 1);
            if oracle(&g) {
                accepted.set(accepted.get() + 1);
            }
            check_definition(g)
        })
        .unwrap();
    eprintln!("definitions: {} cases, {} well-formed", total.get(), accepted.get());
    // Both sides of the oracle must be well represented.
    assert!(accepted.get() * 10 >= total.get(), "too few valid graphs generated");
    assert!(
        accepted.get() * 10 <= total.get() * 9,
        "too few invalid graphs generated"
    );
}
