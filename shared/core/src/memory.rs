//! The in-memory adapter of the storage port: the reference semantics for the contract suite,
//! and the store of the fastest tests and benches. One mutex makes every batch atomic.

use crate::agent::{Agent, AgentDetails, HistoryEntry, Registration, StateName, StateReport};
use crate::ids::{AgentId, IdempotencyKey, SessionId, TaskId, WorkflowId, WorkflowVersion};
use crate::session::{Session, SessionStatus};
use crate::store::*;
use crate::task::{TaskInstance, TaskKey};
use crate::time::{self, Clock, SystemClock, Timestamp};
use crate::workflow::WorkflowDefinition;
use async_trait::async_trait;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

#[derive(Default)]
struct State {
    agents: BTreeMap<AgentId, Agent>,
    /// Per agent, keyed by (report order key, arrival sequence).
    history: HashMap<AgentId, BTreeMap<(i128, u64), HistoryEntry>>,
    seq: u64,
    workflows: BTreeMap<(WorkflowId, WorkflowVersion), StoredWorkflow>,
    sessions: HashMap<SessionId, Session>,
    tasks: BTreeMap<(SessionId, TaskId), TaskInstance>,
    /// → (session, request fingerprint, expiry in epoch seconds: the resolution of DynamoDB's TTL)
    idempotency: HashMap<(AgentId, IdempotencyKey), (SessionId, String, i64)>,
    deliveries: HashMap<String, Timestamp>,
    /// The idle-agents index: (capability, when the agent became available as a sequence
    /// number, agent), and the sequence number of each agent in it.
    idle: BTreeSet<(String, u64, AgentId)>,
    idle_since: HashMap<AgentId, u64>,
    /// The routed runnable index: (capability, due, session, task) of pending routed tasks.
    routed: BTreeSet<(String, Timestamp, SessionId, TaskId)>,
}

impl State {
    /// Keeps the idle-agents index in step with an agent write (under the same lock).
    fn reindex_agent(&mut self, old: Option<&Agent>, new: &Agent) {
        let m = IdleIndexMove::of(old, Some(new));
        if m.is_empty() {
            return;
        }
        let id = new.id().clone();
        if let Some(since) = self.idle_since.remove(&id) {
            for c in m.leave {
                self.idle.remove(&(c, since, id.clone()));
            }
        }
        if !m.join.is_empty() {
            self.seq += 1;
            let since = self.seq;
            self.idle_since.insert(id.clone(), since);
            for c in m.join {
                self.idle.insert((c, since, id.clone()));
            }
        }
    }

    /// Keeps the routed runnable index in step with a task write (under the same lock).
    fn reindex_task(&mut self, old: Option<&TaskInstance>, new: &TaskInstance) {
        if let Some(o) = old
            && let Some(c) = o.runnable_capability()
        {
            self.routed
                .remove(&(c.to_owned(), o.due_at, o.session_id, o.task_id.clone()));
        }
        if let Some(c) = new.runnable_capability() {
            self.routed
                .insert((c.to_owned(), new.due_at, new.session_id, new.task_id.clone()));
        }
    }
}

pub struct InMemoryStore {
    state: Mutex<State>,
    changes: Option<UnboundedSender<Change>>,
    /// What expiry (idempotency keys, delivery records) is judged against: the wall clock, as
    /// DynamoDB's TTL is, unless a test pins time for the store as it does for the app.
    clock: Arc<dyn Clock>,
}

impl Default for InMemoryStore {
    fn default() -> Self {
        Self {
            state: Mutex::default(),
            changes: None,
            clock: Arc::new(SystemClock),
        }
    }
}

impl InMemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Judges expiry by `clock` (a test's pinned time) instead of the wall clock.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// A store that also emits every change, like a table stream with new and old images.
    pub fn with_changes() -> (Self, UnboundedReceiver<Change>) {
        let (tx, rx) = unbounded_channel();
        (
            Self {
                changes: Some(tx),
                ..Self::default()
            },
            rx,
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave a half-applied batch (batches are checked
        // before any mutation), so a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn emit(&self, change: Change) {
        if let Some(tx) = &self.changes {
            let _ = tx.send(change);
        }
    }
}

/// One page of `items` (sorted by key) after the cursor's key. Keys never leave the store as
/// they are: a cursor is [`encode_cursor`] of the list's name and the last key of the page.
fn page_of<T: Clone>(items: Vec<(String, T)>, page: &PageRequest, list: &str) -> Result<Page<T>, StoreError> {
    let start = match &page.cursor {
        None => 0,
        Some(c) => {
            let after = decode_cursor(c, list)?;
            items.iter().position(|(k, _)| *k > after).unwrap_or(items.len())
        }
    };
    let limit = page.limit.max(1) as usize;
    let slice: Vec<_> = items[start..].iter().take(limit).cloned().collect();
    let next_cursor = if start + slice.len() < items.len() {
        slice.last().map(|(k, _)| encode_cursor(list, k))
    } else {
        None
    };
    Ok(Page {
        items: slice.into_iter().map(|(_, v)| v).collect(),
        next_cursor,
    })
}

const MAX_CURSOR_LEN: usize = 1024;

/// A cursor: base64url (no padding) of the JSON `[list, key]`. URL-safe, and bound to the list
/// (its name includes the agent or the filter) that issued it.
fn encode_cursor(list: &str, key: &str) -> String {
    use base64::Engine as _;
    let json = serde_json::to_vec(&(list, key)).expect("strings serialise");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
}

/// The key in a cursor of `list`; anything else (another list's cursor, a raw key, garbage) is
/// [`StoreError::InvalidCursor`].
fn decode_cursor(cursor: &str, list: &str) -> Result<String, StoreError> {
    use base64::Engine as _;
    if cursor.is_empty() || cursor.len() > MAX_CURSOR_LEN {
        return Err(StoreError::InvalidCursor);
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .map_err(|_| StoreError::InvalidCursor)?;
    match serde_json::from_slice::<(String, String)>(&bytes) {
        Ok((l, key)) if l == list && !key.is_empty() => Ok(key),
        _ => Err(StoreError::InvalidCursor),
    }
}

/// The name a list's cursors are bound to.
fn agents_list(state: Option<&StateName>) -> String {
    match state {
        None => "agents".into(),
        Some(s) => format!("agents?state={s}"),
    }
}

#[async_trait]
impl Store for InMemoryStore {
    async fn register_agent(&self, details: AgentDetails, now: Timestamp) -> Result<RegisterOutcome, StoreError> {
        let (outcome, change) = {
            let mut s = self.lock();
            let old = s.agents.get(&details.agent_id).cloned();
            match Agent::registration(old.as_ref(), details, now) {
                Registration::Create(agent) => {
                    s.reindex_agent(None, &agent);
                    s.agents.insert(agent.id().clone(), agent.clone());
                    (
                        RegisterOutcome::Created(agent.clone()),
                        Some(Change::Agent {
                            old: None,
                            new: Some(Arc::new(agent)),
                        }),
                    )
                }
                Registration::Unchanged => (RegisterOutcome::Unchanged(old.expect("unchanged: it exists")), None),
                Registration::Update(agent) => {
                    let old = old.expect("updated: it exists");
                    s.reindex_agent(Some(&old), &agent);
                    s.agents.insert(agent.id().clone(), agent.clone());
                    (
                        RegisterOutcome::Updated(agent.clone()),
                        Some(Change::Agent {
                            old: Some(Arc::new(old)),
                            new: Some(Arc::new(agent)),
                        }),
                    )
                }
            }
        };
        if let Some(c) = change {
            self.emit(c);
        }
        Ok(outcome)
    }

    async fn deregister_agent(&self, id: &AgentId, now: Timestamp) -> Result<Agent, AgentWriteError> {
        let (agent, change) = {
            let mut s = self.lock();
            let old = s.agents.get(id).cloned().ok_or(AgentWriteError::NotFound)?;
            let Some(agent) = old.deregistered(now) else {
                return Ok(old);
            };
            s.reindex_agent(Some(&old), &agent);
            s.agents.insert(id.clone(), agent.clone());
            (
                agent.clone(),
                Change::Agent {
                    old: Some(Arc::new(old)),
                    new: Some(Arc::new(agent)),
                },
            )
        };
        self.emit(change);
        Ok(agent)
    }

    async fn report_state(
        &self,
        report: &StateReport,
        received_at: Timestamp,
        _ttl: Duration,
    ) -> Result<ReportOutcome, AgentWriteError> {
        let (outcome, change) = {
            let mut s = self.lock();
            let old = s
                .agents
                .get(&report.agent_id)
                .cloned()
                .ok_or(AgentWriteError::NotFound)?;
            if old.is_deregistered() {
                return Err(AgentWriteError::Deregistered);
            }
            let applied = old.current.is_superseded_by(report.timestamp);
            s.seq += 1;
            let seq = s.seq;
            s.history.entry(report.agent_id.clone()).or_default().insert(
                (time::order_key(report.timestamp), seq),
                HistoryEntry::of(report, received_at, applied),
            );
            if applied {
                let agent = old.with_report(report, received_at);
                s.reindex_agent(Some(&old), &agent);
                s.agents.insert(agent.id().clone(), agent.clone());
                (
                    ReportOutcome::Applied,
                    Some(Change::Agent {
                        old: Some(Arc::new(old)),
                        new: Some(Arc::new(agent)),
                    }),
                )
            } else {
                (ReportOutcome::Stale { current: old.current }, None)
            }
        };
        if let Some(c) = change {
            self.emit(c);
        }
        Ok(outcome)
    }

    async fn get_agent(&self, id: &AgentId) -> Result<Option<Agent>, StoreError> {
        Ok(self.lock().agents.get(id).cloned())
    }

    async fn list_agents(&self, state: Option<&StateName>, page: PageRequest) -> Result<Page<Agent>, StoreError> {
        let s = self.lock();
        let items = s
            .agents
            .values()
            .filter(|a| state.is_none_or(|st| &a.current.state == st))
            .map(|a| (a.id().to_string(), a.clone()))
            .collect();
        page_of(items, &page, &agents_list(state))
    }

    async fn state_history(&self, id: &AgentId, page: PageRequest) -> Result<Page<HistoryEntry>, StoreError> {
        let s = self.lock();
        // Newest first: invert the key so that ascending cursor order is newest-first.
        let items = s
            .history
            .get(id)
            .map(|h| {
                h.iter()
                    .rev()
                    // BOUND - key is in (0, 2 * BOUND): 23 digits sort numerically, newest first.
                    .map(|((ts, seq), e)| {
                        let inverted = time::ORDER_KEY_BOUND - ts;
                        (format!("{inverted:023}#{:020}", u64::MAX - seq), e.clone())
                    })
                    .collect()
            })
            .unwrap_or_default();
        page_of(items, &page, &format!("history/{id}"))
    }

    async fn put_workflow(&self, def: &WorkflowDefinition, now: Timestamp) -> Result<PutWorkflowOutcome, StoreError> {
        let mut s = self.lock();
        let key = (def.id.clone(), def.version.clone());
        Ok(match s.workflows.get(&key) {
            Some(existing) if existing.definition.same_content(def) => PutWorkflowOutcome::Identical(existing.clone()),
            Some(existing) => PutWorkflowOutcome::Conflict(existing.clone()),
            None => {
                let stored = StoredWorkflow {
                    definition: def.clone(),
                    created_at: now,
                };
                s.workflows.insert(key, stored.clone());
                PutWorkflowOutcome::Created(stored)
            }
        })
    }

    async fn get_workflow(
        &self,
        id: &WorkflowId,
        version: Option<&WorkflowVersion>,
    ) -> Result<Option<StoredWorkflow>, StoreError> {
        let s = self.lock();
        Ok(match version {
            Some(v) => s.workflows.get(&(id.clone(), v.clone())).cloned(),
            None => s
                .workflows
                .iter()
                .filter(|((wid, _), _)| wid == id)
                .map(|(_, w)| w)
                .max_by_key(|w| w.created_at)
                .cloned(),
        })
    }

    async fn list_workflows(&self, page: PageRequest) -> Result<Page<StoredWorkflow>, StoreError> {
        let s = self.lock();
        let items = s
            .workflows
            .iter()
            .map(|((id, v), w)| (format!("{id}#{v}"), w.clone()))
            .collect();
        page_of(items, &page, "workflows")
    }

    async fn commit(&self, writes: Vec<Write>) -> Result<(), CommitError> {
        let mut changes = Vec::new();
        // A record whose TTL attribute (epoch seconds) is before now counts as absent: the
        // DynamoDB adapter's `expiresAt < :now`, at the same one-second resolution.
        let now = self.clock.now().timestamp();
        let expired = |expires: i64| expires < now;
        {
            let mut s = self.lock();
            // Check every condition first, then apply: all or nothing.
            for (index, w) in writes.iter().enumerate() {
                let write = w.kind();
                let conflict = |existing| Err(CommitError::Conflict { index, write, existing });
                match w {
                    Write::CreateSession(x) if s.sessions.contains_key(&x.session_id) => {
                        return conflict(None);
                    }
                    Write::TransitionSession { from, next } => match s.sessions.get(&next.session_id) {
                        Some(cur) if cur.status == *from && cur.rev + 1 == next.rev => {}
                        _ => return conflict(None),
                    },
                    Write::CheckSessionOpen(id) => match s.sessions.get(id) {
                        Some(cur) if !cur.status.is_terminal() => {}
                        _ => return conflict(None),
                    },
                    Write::CreateTask(t) if s.tasks.contains_key(&(t.session_id, t.task_id.clone())) => {
                        return conflict(None);
                    }
                    Write::TransitionTask { from, next } => {
                        match s.tasks.get(&(next.session_id, next.task_id.clone())) {
                            Some(cur) if cur.status == *from && cur.rev + 1 == next.rev => {}
                            _ => return conflict(None),
                        }
                    }
                    Write::CreateIdempotencyKey { agent_id, key, .. } => {
                        if let Some((existing, fingerprint, expires)) =
                            s.idempotency.get(&(agent_id.clone(), key.clone()))
                            && !expired(*expires)
                        {
                            return conflict(Some(Existing::IdempotencyKey {
                                session_id: *existing,
                                fingerprint: Some(fingerprint.clone()),
                            }));
                        }
                    }
                    Write::ClaimAgent { agent_id, .. } => match s.agents.get(agent_id) {
                        Some(a) if a.is_available() => {}
                        _ => return conflict(None),
                    },
                    Write::ClaimAgentFor {
                        agent_id, capability, ..
                    } => match s.agents.get(agent_id) {
                        Some(a) if a.is_available() && indexed_capabilities(a).contains(&capability.as_str()) => {}
                        _ => return conflict(None),
                    },
                    Write::ReleaseAgent { agent_id, dispatch } => match s.agents.get(agent_id) {
                        Some(a) if a.inflight.as_ref().is_some_and(|i| &i.dispatch == dispatch) => {}
                        _ => return conflict(None),
                    },
                    Write::HandOverAgent { agent_id, from, to } => match s.agents.get(agent_id) {
                        Some(a) if a.can_hand_over(from, to) => {}
                        _ => return conflict(None),
                    },
                    // As in DynamoDB, a record past its expiry counts as absent.
                    Write::CreateDeliveryRecord { id, .. }
                        if s.deliveries
                            .get(id)
                            .is_some_and(|expires| !expired(expires.timestamp())) =>
                    {
                        return conflict(None);
                    }
                    Write::ExpireDeliveryRecord { id } if !s.deliveries.contains_key(id) => return conflict(None),
                    _ => {}
                }
            }
            for w in writes {
                match w {
                    Write::CreateSession(x) | Write::TransitionSession { next: x, .. } => {
                        let old = s.sessions.insert(x.session_id, x.clone());
                        changes.push(Change::Session {
                            old: old.map(Arc::new),
                            new: Some(Arc::new(x)),
                        });
                    }
                    Write::CreateTask(t) | Write::TransitionTask { next: t, .. } => {
                        let old = s.tasks.insert((t.session_id, t.task_id.clone()), t.clone());
                        s.reindex_task(old.as_ref(), &t);
                        changes.push(Change::Task {
                            old: old.map(Arc::new),
                            new: Some(Arc::new(t)),
                        });
                    }
                    Write::CreateIdempotencyKey {
                        agent_id,
                        key,
                        session_id,
                        fingerprint,
                        ttl,
                    } => {
                        if s.idempotency.len().is_multiple_of(PRUNE_EVERY) {
                            s.idempotency.retain(|_, (_, _, expires)| !expired(*expires));
                        }
                        let expires = now + ttl.as_secs() as i64;
                        s.idempotency
                            .insert((agent_id, key), (session_id, fingerprint, expires));
                    }
                    Write::ClaimAgent { agent_id, inflight } | Write::ClaimAgentFor { agent_id, inflight, .. } => {
                        let a = s.agents.get_mut(&agent_id).expect("checked above");
                        let old = a.clone();
                        a.inflight = Some(inflight);
                        let new = a.clone();
                        s.reindex_agent(Some(&old), &new);
                        changes.push(Change::Agent {
                            old: Some(Arc::new(old)),
                            new: Some(Arc::new(new)),
                        });
                    }
                    Write::ReleaseAgent { agent_id, .. } => {
                        let a = s.agents.get_mut(&agent_id).expect("checked above");
                        let old = a.clone();
                        a.inflight = None;
                        let new = a.clone();
                        s.reindex_agent(Some(&old), &new);
                        changes.push(Change::Agent {
                            old: Some(Arc::new(old)),
                            new: Some(Arc::new(new)),
                        });
                    }
                    Write::HandOverAgent { agent_id, to, .. } => {
                        let a = s.agents.get_mut(&agent_id).expect("checked above");
                        let old = a.clone();
                        a.inflight = Some(to);
                        changes.push(Change::Agent {
                            old: Some(Arc::new(old)),
                            new: Some(Arc::new(a.clone())),
                        });
                    }
                    Write::CreateDeliveryRecord { id, expires_at } => {
                        if s.deliveries.len().is_multiple_of(PRUNE_EVERY) {
                            s.deliveries.retain(|_, expires| !expired(expires.timestamp()));
                        }
                        s.deliveries.insert(id, expires_at);
                    }
                    Write::ExpireDeliveryRecord { id } => {
                        s.deliveries.remove(&id);
                    }
                    Write::CheckSessionOpen(_) => {}
                }
            }
        }
        for c in changes {
            self.emit(c);
        }
        Ok(())
    }

    async fn get_session(&self, id: &SessionId) -> Result<Option<SessionView>, StoreError> {
        let s = self.lock();
        Ok(s.sessions.get(id).map(|session| SessionView {
            session: session.clone(),
            tasks: s
                .tasks
                // "-" is the smallest task id: '-' sorts before every other allowed character.
                .range((*id, TaskId::parse("-").expect("valid"))..)
                .take_while(|((sid, _), _)| sid == id)
                .map(|(_, t)| t.clone())
                .collect(),
        }))
    }

    async fn list_sessions(&self, agent: &AgentId, page: PageRequest) -> Result<Page<Session>, StoreError> {
        let s = self.lock();
        let mut items: Vec<(String, Session)> = s
            .sessions
            .values()
            .filter(|x| &x.agent_id == agent)
            .map(|x| {
                (
                    format!(
                        "{:023}#{}",
                        time::ORDER_KEY_BOUND - time::order_key(x.start_time),
                        x.session_id
                    ),
                    x.clone(),
                )
            })
            .collect();
        items.sort_by(|a, b| a.0.cmp(&b.0));
        page_of(items, &page, &format!("sessions/{agent}"))
    }

    async fn list_sessions_across_agents(
        &self,
        status: Option<SessionStatus>,
        page: PageRequest,
    ) -> Result<Page<Session>, StoreError> {
        let s = self.lock();
        // Newest first, then session id descending: the complement of both makes an ascending key.
        let mut items: Vec<(String, Session)> = s
            .sessions
            .values()
            .filter(|x| status.is_none_or(|st| x.status == st))
            .map(|x| {
                let id_desc: String = x
                    .session_id
                    .to_string()
                    .bytes()
                    .map(|b| char::from(b'~' - (b - b' ')))
                    .collect();
                (
                    format!(
                        "{:023}#{id_desc}",
                        time::ORDER_KEY_BOUND - time::order_key(x.start_time)
                    ),
                    x.clone(),
                )
            })
            .collect();
        items.sort_by(|a, b| a.0.cmp(&b.0));
        let list = match status {
            None => "sessions".to_owned(),
            Some(st) => format!("sessions?status={}", st.as_str()),
        };
        page_of(items, &page, &list)
    }

    async fn get_task(&self, key: &TaskKey) -> Result<Option<TaskInstance>, StoreError> {
        Ok(self.lock().tasks.get(&(key.session_id, key.task_id.clone())).cloned())
    }

    async fn runnable_tasks(&self, agent: &AgentId, now: Timestamp, limit: u32) -> Result<Vec<TaskKey>, StoreError> {
        let s = self.lock();
        let mut due: Vec<_> = s
            .tasks
            .values()
            .filter(|t| &t.agent_id == agent && t.is_runnable_by_agent() && t.due_at <= now)
            .collect();
        due.sort_by_key(|t| t.due_at);
        Ok(due.into_iter().take(limit as usize).map(TaskInstance::key).collect())
    }

    async fn idle_agents(&self, capability: &str, limit: u32) -> Result<Vec<AgentId>, StoreError> {
        let s = self.lock();
        Ok(s.idle
            .range((capability.to_owned(), 0, AgentId::parse("-").expect("valid"))..)
            .take_while(|(c, _, _)| c == capability)
            .take(limit as usize)
            .map(|(_, _, a)| a.clone())
            .collect())
    }

    async fn routed_tasks(&self, capability: &str, now: Timestamp, limit: u32) -> Result<Vec<RoutedTask>, StoreError> {
        let s = self.lock();
        let from = (
            capability.to_owned(),
            Timestamp::MIN_UTC,
            SessionId::parse("00000000-0000-0000-0000-000000000000").expect("the nil UUID"),
            TaskId::parse("-").expect("valid"),
        );
        Ok(s.routed
            .range(from..)
            .take_while(|(c, due, _, _)| c == capability && *due <= now)
            .take(limit as usize)
            .map(|(_, due, session_id, task_id)| RoutedTask {
                key: TaskKey {
                    session_id: *session_id,
                    task_id: task_id.clone(),
                },
                due_at: *due,
            })
            .collect())
    }

    async fn due_timers(&self, now: Timestamp, limit: u32) -> Result<Vec<TaskKey>, StoreError> {
        let s = self.lock();
        let mut due: Vec<_> = s
            .tasks
            .values()
            .filter(|t| t.timer_at.is_some_and(|at| at <= now))
            .collect();
        due.sort_by_key(|t| t.timer_at);
        Ok(due.into_iter().take(limit as usize).map(TaskInstance::key).collect())
    }
}

/// Expired idempotency keys and delivery records are dropped (what TTL does for the table) when
/// their map reaches a multiple of this size, so a long-running in-memory stack stays bounded.
const PRUNE_EVERY: usize = 1024;
