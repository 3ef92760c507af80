//! The storage port. Every state change is one conditional write or one atomic group of them;
//! adapters never read and then write unconditionally.

use crate::agent::{Agent, AgentDetails, CurrentState, HistoryEntry, Inflight, StateName, StateReport};
use crate::ids::{AgentId, DispatchId, IdempotencyKey, SessionId, WorkflowId, WorkflowVersion};
use crate::session::{Session, SessionStatus};
use crate::task::{TaskInstance, TaskKey, TaskStatus};
use crate::time::Timestamp;
use crate::workflow::WorkflowDefinition;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The store could not be reached or throttled us: the caller may retry later (→ 503).
    #[error("storage unavailable: {message}")]
    Unavailable {
        message: String,
        /// What the store's client said, when it said something (SQLite, the AWS SDK).
        #[source]
        source: Option<ErrorSource>,
    },
    /// A pagination cursor that this store did not issue, or issued for another list (→ 400).
    #[error("invalid pagination cursor")]
    InvalidCursor,
    /// An item in the store that cannot be read back (a bug or a hand edit).
    #[error("corrupt item: {message}")]
    Corrupt {
        message: String,
        #[source]
        source: Option<ErrorSource>,
    },
}

impl StoreError {
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::Unavailable {
            message: message.into(),
            source: None,
        }
    }
    /// Unavailable because of `source`, kept for whoever walks the error chain.
    pub fn unavailable_because(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Unavailable {
            message: message.into(),
            source: Some(ErrorSource::new(source)),
        }
    }
    pub fn corrupt(message: impl Into<String>) -> Self {
        Self::Corrupt {
            message: message.into(),
            source: None,
        }
    }
    pub fn corrupt_because(message: impl Into<String>, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Corrupt {
            message: message.into(),
            source: Some(ErrorSource::new(source)),
        }
    }
}

/// A lower layer's error kept as a [`StoreError`]'s source. Shared (`Arc`), so store errors stay
/// cheap to clone (a group commit answers every caller with its error); equal when their messages
/// are, so errors stay comparable in tests.
#[derive(Debug, Clone)]
pub struct ErrorSource(Arc<dyn std::error::Error + Send + Sync>);

impl ErrorSource {
    pub fn new(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self(Arc::new(e))
    }
}

impl std::fmt::Display for ErrorSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for ErrorSource {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

impl PartialEq for ErrorSource {
    fn eq(&self, other: &Self) -> bool {
        self.to_string() == other.to_string()
    }
}

impl Eq for ErrorSource {}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    pub limit: u32,
    pub cursor: Option<String>,
}

impl PageRequest {
    pub fn first(limit: u32) -> Self {
        Self { limit, cursor: None }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Opaque and URL-safe (`[A-Za-z0-9_-]`); pass back to the same list (same agent, same
    /// filter) to get the next page; any other list refuses it. `None` on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RegisterOutcome {
    Created(Agent),
    /// A redelivery with the same details: nothing written.
    Unchanged(Agent),
    /// Details changed (or a deregistered agent came back); state and history kept.
    Updated(Agent),
}

#[derive(Debug, Clone, PartialEq)]
pub enum ReportOutcome {
    /// The report is newer than the stored state and is now current. (It carries nothing: the
    /// adapter would need a read after its write to say more, and the stream has the new image.)
    Applied,
    /// Older than (or as old as) the stored state: kept in history only.
    Stale { current: CurrentState },
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AgentWriteError {
    #[error("agent not found")]
    NotFound,
    #[error("agent is deregistered")]
    Deregistered,
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, Clone, PartialEq)]
pub enum PutWorkflowOutcome {
    Created(StoredWorkflow),
    /// The same id and version with the same content: an idempotent retry.
    Identical(StoredWorkflow),
    /// The same id and version with other content: definitions are immutable.
    Conflict(StoredWorkflow),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredWorkflow {
    pub definition: WorkflowDefinition,
    #[serde(with = "crate::time::rfc3339")]
    pub created_at: Timestamp,
}

/// A write intent, named for its condition. A batch of them commits atomically or not at all.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// Must not exist.
    CreateSession(Session),
    /// Must be in `from` at revision `next.rev - 1`.
    TransitionSession { from: SessionStatus, next: Session },
    /// The session must exist and not be terminal (guards a task write against a concurrent cancel).
    CheckSessionOpen(SessionId),
    /// Must not exist.
    CreateTask(TaskInstance),
    /// Must be in `from` at revision `next.rev - 1`.
    TransitionTask { from: TaskStatus, next: TaskInstance },
    /// Must not exist (or be expired); on conflict the existing session id and the fingerprint
    /// stored with it come back in [`Existing::IdempotencyKey`]. `fingerprint` identifies the
    /// request the key came with (opaque to the store: kept and returned as given), so that a
    /// key reused with another request can be refused.
    CreateIdempotencyKey {
        agent_id: AgentId,
        key: IdempotencyKey,
        session_id: SessionId,
        fingerprint: String,
        ttl: Duration,
    },
    /// The agent must exist, not be deregistered, be idle, and hold no task.
    ClaimAgent { agent_id: AgentId, inflight: Inflight },
    /// [`Write::ClaimAgent`] for a task routed by `capability` (issue 18): the agent must also
    /// announce it (a registration may have changed its capabilities since the index was read).
    /// `inflight.routed_by` names the same capability. The agent's idle-agents entry for it
    /// leaves the index in the same write, on every store.
    ClaimAgentFor {
        agent_id: AgentId,
        inflight: Inflight,
        capability: String,
    },
    /// The agent's in-flight task must be exactly this one.
    ReleaseAgent { agent_id: AgentId, dispatch: DispatchId },
    /// The agent must exist, not be deregistered, be idle, and hold exactly `from`; it then holds
    /// `to`. A release and a claim in one write (one item cannot take two writes of a
    /// transaction): the runner gives an agent that finished a task the session's next one, or
    /// (routing, issue 18) the oldest waiting task routed by one of its capabilities. When
    /// `to.routed_by` names a capability, the agent must also announce it, as for
    /// [`Write::ClaimAgentFor`]; it holds no idle-agents entry, so none leaves.
    HandOverAgent {
        agent_id: AgentId,
        from: DispatchId,
        to: Inflight,
    },
    /// Must not exist: remembers a signed webhook delivery (by its signature) until `expires_at`,
    /// so a byte-identical replay inside the freshness window has no second effect.
    CreateDeliveryRecord { id: String, expires_at: Timestamp },
    /// Must exist: makes a delivery record count as absent again (it expires now), so that a
    /// delivery whose effect failed after it was recorded can be redelivered.
    ExpireDeliveryRecord { id: String },
}

/// A write intent's name, without its data: what a conflict reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteKind {
    CreateSession,
    TransitionSession,
    CheckSessionOpen,
    CreateTask,
    TransitionTask,
    CreateIdempotencyKey,
    ClaimAgent,
    ClaimAgentFor,
    ReleaseAgent,
    HandOverAgent,
    CreateDeliveryRecord,
    ExpireDeliveryRecord,
}

impl Write {
    pub fn kind(&self) -> WriteKind {
        match self {
            Write::CreateSession(_) => WriteKind::CreateSession,
            Write::TransitionSession { .. } => WriteKind::TransitionSession,
            Write::CheckSessionOpen(_) => WriteKind::CheckSessionOpen,
            Write::CreateTask(_) => WriteKind::CreateTask,
            Write::TransitionTask { .. } => WriteKind::TransitionTask,
            Write::CreateIdempotencyKey { .. } => WriteKind::CreateIdempotencyKey,
            Write::ClaimAgent { .. } => WriteKind::ClaimAgent,
            Write::ClaimAgentFor { .. } => WriteKind::ClaimAgentFor,
            Write::ReleaseAgent { .. } => WriteKind::ReleaseAgent,
            Write::HandOverAgent { .. } => WriteKind::HandOverAgent,
            Write::CreateDeliveryRecord { .. } => WriteKind::CreateDeliveryRecord,
            Write::ExpireDeliveryRecord { .. } => WriteKind::ExpireDeliveryRecord,
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CommitError {
    /// The condition of `writes[index]`, a `write`, did not hold; nothing was written. Callers
    /// decide by `write` (which intent lost), not by position.
    #[error("the condition of {write:?} (write {index} of the batch) did not hold")]
    Conflict {
        index: usize,
        write: WriteKind,
        existing: Option<Existing>,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What stood in the way, where the store can say without a second read.
#[derive(Debug, Clone, PartialEq)]
pub enum Existing {
    /// The session the key already names, and the fingerprint of the request it came with
    /// (`None` for a key stored before fingerprints were kept: treated as the same request).
    IdempotencyKey {
        session_id: SessionId,
        fingerprint: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct SessionView {
    pub session: Session,
    /// The task instances created so far (one per task reached), in no particular order.
    pub tasks: Vec<TaskInstance>,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    // Agents
    async fn register_agent(&self, details: AgentDetails, now: Timestamp) -> Result<RegisterOutcome, StoreError>;
    /// Marks the agent deregistered (kept, with its history). Idempotent.
    async fn deregister_agent(&self, id: &AgentId, now: Timestamp) -> Result<Agent, AgentWriteError>;
    async fn report_state(
        &self,
        report: &StateReport,
        received_at: Timestamp,
        history_ttl: Duration,
    ) -> Result<ReportOutcome, AgentWriteError>;
    async fn get_agent(&self, id: &AgentId) -> Result<Option<Agent>, StoreError>;
    /// By agent id; with `state`, only agents currently in that state.
    async fn list_agents(&self, state: Option<&StateName>, page: PageRequest) -> Result<Page<Agent>, StoreError>;
    /// Newest report timestamp first.
    async fn state_history(&self, id: &AgentId, page: PageRequest) -> Result<Page<HistoryEntry>, StoreError>;

    // Workflow definitions
    async fn put_workflow(&self, def: &WorkflowDefinition, now: Timestamp) -> Result<PutWorkflowOutcome, StoreError>;
    /// A given version, or the most recently created one.
    async fn get_workflow(
        &self,
        id: &WorkflowId,
        version: Option<&WorkflowVersion>,
    ) -> Result<Option<StoredWorkflow>, StoreError>;
    async fn list_workflows(&self, page: PageRequest) -> Result<Page<StoredWorkflow>, StoreError>;

    // Sessions and tasks
    async fn commit(&self, writes: Vec<Write>) -> Result<(), CommitError>;
    async fn get_session(&self, id: &SessionId) -> Result<Option<SessionView>, StoreError>;
    /// Newest first.
    async fn list_sessions(&self, agent: &AgentId, page: PageRequest) -> Result<Page<Session>, StoreError>;
    /// The sessions of every agent, newest start first (sessions started at the same instant by
    /// session id, descending); with `status`, only sessions currently in that status. What an
    /// operator looks at first (the console's sessions view, `GET /v1/opscore/sessions`).
    async fn list_sessions_across_agents(
        &self,
        status: Option<SessionStatus>,
        page: PageRequest,
    ) -> Result<Page<Session>, StoreError>;
    async fn get_task(&self, key: &TaskKey) -> Result<Option<TaskInstance>, StoreError>;
    /// Pending tasks of this agent that are due by `now`, oldest due first.
    async fn runnable_tasks(&self, agent: &AgentId, now: Timestamp, limit: u32) -> Result<Vec<TaskKey>, StoreError>;
    /// Tasks whose timer has fired by `now` (retry due, lease expired, deadline passed).
    async fn due_timers(&self, now: Timestamp, limit: u32) -> Result<Vec<TaskKey>, StoreError>;

    // Routing by capability (docs/architecture.md, "Routing by capability"). Both lists are
    // indexes the store keeps in the same atomic write as the change that moves an item in or out
    // of them; neither is a scan.
    /// Available agents (registered, not deregistered, `idle`, holding no task) announcing
    /// `capability`, the one available longest first. An entry may be a moment stale on an
    /// eventually consistent store: a claim is conditioned on the agent, so that is harmless.
    async fn idle_agents(&self, capability: &str, limit: u32) -> Result<Vec<AgentId>, StoreError>;
    /// Pending routed tasks of `capability` that are due by `now`, oldest due first.
    async fn routed_tasks(&self, capability: &str, now: Timestamp, limit: u32) -> Result<Vec<RoutedTask>, StoreError>;
    /// Brings the idle-agents index in line with an agent change the runner is handling (`old`
    /// and `new`: the images before and after, as the stream gives them). A store that keeps the
    /// index in the agent write's own transaction (in-memory, SQLite) has nothing to do here. The
    /// DynamoDB adapter cannot: a state report is written without reading the agent first, so
    /// it does not know whether the agent became available. It writes the index entries here,
    /// conditioned on the agent item still being as `new` shows it.
    async fn sync_idle_agent(&self, old: Option<&Agent>, new: &Agent) -> Result<(), StoreError> {
        let _ = (old, new);
        Ok(())
    }
}

/// A pending routed task as its capability's runnable list gives it: enough to pick the oldest
/// among an agent's own tasks and its capabilities' without reading the task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutedTask {
    pub key: TaskKey,
    pub due_at: Timestamp,
}

/// The capabilities of `agent` that go into the idle-agents index while it is available: each
/// announced capability that a routed task could name ([`crate::workflow::check_capability`]),
/// once. Every store indexes exactly these.
pub fn indexed_capabilities(agent: &Agent) -> Vec<&str> {
    let mut caps: Vec<&str> = agent
        .details
        .capabilities
        .iter()
        .map(String::as_str)
        .filter(|c| crate::workflow::check_capability(c).is_ok())
        .collect();
    caps.sort_unstable();
    caps.dedup();
    caps.truncate(MAX_INDEXED_CAPABILITIES);
    caps
}

/// At most this many capabilities of one agent are indexed (the first in byte order): the
/// DynamoDB adapter moves all of an agent's entries in one transaction (at most 100 members).
pub const MAX_INDEXED_CAPABILITIES: usize = 32;

/// What an agent write does to the idle-agents index, from the images before and after: the
/// capabilities whose entries leave and those whose entries join (stamped with the time of this
/// write: it is when the agent became available). An agent that stays available with the same
/// capabilities keeps its entries and its place in line (a heartbeat `idle` does not send it to
/// the back); one whose capabilities changed while available is re-entered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdleIndexMove {
    pub leave: Vec<String>,
    pub join: Vec<String>,
}

impl IdleIndexMove {
    pub fn of(old: Option<&Agent>, new: Option<&Agent>) -> Self {
        let entries = |a: Option<&Agent>| -> Vec<String> {
            a.filter(|a| a.is_available())
                .map(|a| indexed_capabilities(a).into_iter().map(str::to_owned).collect())
                .unwrap_or_default()
        };
        let (before, after) = (entries(old), entries(new));
        if before == after {
            return Self::default();
        }
        Self {
            leave: before,
            join: after,
        }
    }
    pub fn is_empty(&self) -> bool {
        self.leave.is_empty() && self.join.is_empty()
    }
}

/// One change to a stored item, as a table stream reports it: the image before and after.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Agent {
        old: Option<Arc<Agent>>,
        new: Option<Arc<Agent>>,
    },
    Session {
        old: Option<Arc<Session>>,
        new: Option<Arc<Session>>,
    },
    Task {
        old: Option<Arc<TaskInstance>>,
        new: Option<Arc<TaskInstance>>,
    },
}

/// Which lane of a runner handles a change (see [`Change::lane`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Lane {
    Agent(AgentId),
    Session(SessionId),
}

impl Change {
    /// The lane a runner handles this change in: the agent's (its changes strictly in order),
    /// except a routed task waiting for an agent (routing, issue 18), which is no agent's yet:
    /// it gets its session's lane, so that the dispatches of routed tasks do not queue behind one
    /// another in the lane of the agent their sessions were started on. Handling such a change
    /// only tries a conditional claim, which needs no order with the agent's changes.
    pub fn lane(&self) -> Option<Lane> {
        match self {
            Change::Task { new: Some(t), .. } if t.runnable_capability().is_some() => Some(Lane::Session(t.session_id)),
            _ => self.agent_id().cloned().map(Lane::Agent),
        }
    }

    /// The agent the changed item belongs to: the runner keeps each agent's changes in order.
    pub fn agent_id(&self) -> Option<&AgentId> {
        match self {
            Change::Agent { old, new } => new.as_deref().or(old.as_deref()).map(Agent::id),
            Change::Session { old, new } => new.as_deref().or(old.as_deref()).map(|s| &s.agent_id),
            Change::Task { old, new } => new.as_deref().or(old.as_deref()).map(|t| &t.agent_id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn a_store_error_keeps_its_source() {
        let io = || std::io::Error::new(std::io::ErrorKind::TimedOut, "disk did not answer");
        let e = StoreError::unavailable_because("sqlite: disk did not answer", io());
        assert_eq!(
            e.source().map(|s| s.to_string()).as_deref(),
            Some("disk did not answer")
        );
        assert_eq!(e, e.clone(), "clones share the source");
        assert_eq!(e, StoreError::unavailable_because("sqlite: disk did not answer", io()));
        assert!(StoreError::unavailable("no client error").source().is_none());
    }
}
