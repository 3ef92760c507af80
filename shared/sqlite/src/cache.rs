//! Decoded images of committed agents and open sessions, kept in front of SQLite.
//!
//! Why it can be trusted: one process owns the data file (the data-file lock) and in it one thread
//! writes (the writer). That thread stages the images of what a group of writes changes while the
//! group's transaction is open, and publishes them here after the COMMIT and before any write of
//! the group is answered. So what this cache holds is always the committed image (a reader that
//! finds nothing here reads SQLite, which gives the same answer), and a write's caller reads its
//! own write back. Readers never insert: a reader's snapshot may be older than a commit it races
//! with, and only the writer knows which image is the latest.
//!
//! Why it exists: without it every read (the runner reads a session and its tasks before each
//! conditional write) and every write's condition decoded JSON out of SQLite's pages: measured, the
//! largest part of a task's cost. Here a read is a hash lookup and a clone.
//!
//! Bounded: at most [`MAX_AGENTS`] agents and [`MAX_SESSIONS`] open sessions (with their tasks);
//! a session that ends leaves the cache, and past a bound arbitrary entries are dropped (they are
//! read from SQLite again when needed).

use opscore_core::agent::Agent;
use opscore_core::ids::{AgentId, SessionId, TaskId};
use opscore_core::session::Session;
use opscore_core::store::Change;
use opscore_core::task::TaskInstance;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

/// Agents kept at most.
const MAX_AGENTS: usize = 16_384;
/// Open sessions kept at most (each with its workflow definition and its tasks).
const MAX_SESSIONS: usize = 8_192;
/// Committed changes kept for the feed's consumer at most; one that falls further behind reads
/// the rest from the feed table.
const MAX_RECENT_CHANGES: usize = 16_384;

/// An item as stored (its JSON, which the change feed records as the old image of the next
/// write) and decoded.
#[derive(Debug)]
pub(crate) struct Image<T> {
    pub raw: Arc<str>,
    pub item: Arc<T>,
}

impl<T> Clone for Image<T> {
    fn clone(&self) -> Self {
        Image {
            raw: self.raw.clone(),
            item: self.item.clone(),
        }
    }
}

impl<T> Image<T> {
    pub fn new(raw: impl Into<Arc<str>>, item: T) -> Self {
        Image {
            raw: raw.into(),
            item: Arc::new(item),
        }
    }
}

/// A session with every task instance it has: enough to answer `get_session` alone.
#[derive(Debug, Clone)]
pub(crate) struct SessionEntry {
    pub session: Image<Session>,
    pub tasks: Vec<Image<TaskInstance>>,
}

impl SessionEntry {
    pub fn task(&self, id: &TaskId) -> Option<&Image<TaskInstance>> {
        self.tasks.iter().find(|t| &t.item.task_id == id)
    }

    pub fn put_task(&mut self, task: Image<TaskInstance>) {
        match self.tasks.iter_mut().find(|t| t.item.task_id == task.item.task_id) {
            Some(slot) => *slot = task,
            None => self.tasks.push(task),
        }
    }
}

#[derive(Default)]
pub(crate) struct ItemCache {
    inner: Mutex<Committed>,
    /// The latest committed changes of the feed, decoded, with their sequence numbers: without
    /// gaps (every feed row is staged, and published only if committed), oldest first.
    recent: Mutex<VecDeque<(u64, Change)>>,
}

#[derive(Default)]
struct Committed {
    agents: HashMap<AgentId, Image<Agent>>,
    sessions: HashMap<SessionId, SessionEntry>,
    /// Pending tasks by agent, every agent with at least one (not a cache: complete).
    pending: HashMap<AgentId, usize>,
}

impl ItemCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, Committed> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn agent(&self, id: &AgentId) -> Option<Image<Agent>> {
        self.lock().agents.get(id).cloned()
    }

    pub fn session(&self, id: &SessionId) -> Option<SessionEntry> {
        self.lock().sessions.get(id).cloned()
    }

    /// The writer read an item from SQLite that no write of the open group touched: that is the
    /// committed image.
    pub fn fill_agent(&self, agent: Image<Agent>) {
        let mut c = self.lock();
        bound(&mut c.agents, MAX_AGENTS);
        c.agents.insert(agent.item.id().clone(), agent);
    }

    pub fn fill_session(&self, entry: SessionEntry) {
        if entry.session.item.status.is_terminal() {
            return;
        }
        let mut c = self.lock();
        bound(&mut c.sessions, MAX_SESSIONS);
        c.sessions.insert(entry.session.item.session_id, entry);
    }

    /// The committed changes after sequence number `after`, at most `limit`, if this cache still
    /// holds every one of them (`None`: read the feed table).
    pub fn changes_after(&self, after: u64, limit: usize) -> Option<Vec<(u64, Change)>> {
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        let first = recent.front()?.0;
        if first > after + 1 {
            return None;
        }
        let skip = (after + 1 - first) as usize;
        Some(recent.iter().skip(skip).take(limit).cloned().collect())
    }

    /// The consumer is done with every change up to `through`.
    pub fn forget_changes(&self, through: u64) {
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        while recent.front().is_some_and(|(seq, _)| *seq <= through) {
            recent.pop_front();
        }
    }

    /// Makes a committed group's images the current ones and its changes readable. Called by the
    /// writer after COMMIT and before it answers the group's callers.
    ///
    /// Images before changes: a consumer that sees a change must find at least that change's
    /// images when it reads (as on DynamoDB, where the stream follows the table).
    pub fn publish(&self, staged: Staged) {
        if !(staged.agents.is_empty() && staged.sessions.is_empty() && staged.pending.is_empty()) {
            let mut c = self.lock();
            for (id, agent) in staged.agents {
                c.agents.insert(id, agent);
            }
            bound(&mut c.agents, MAX_AGENTS);
            for (id, entry) in staged.sessions {
                match entry {
                    Some(e) if !e.session.item.status.is_terminal() => {
                        c.sessions.insert(id, e);
                    }
                    // Ended (rarely read again), or its task set is not known whole.
                    _ => {
                        c.sessions.remove(&id);
                    }
                }
            }
            bound(&mut c.sessions, MAX_SESSIONS);
            for (agent, delta) in staged.pending {
                let n = c.pending.entry(agent.clone()).or_default();
                *n = n.saturating_add_signed(delta);
                if *n == 0 {
                    c.pending.remove(&agent);
                }
            }
        }
        if !staged.changes.is_empty() {
            let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
            recent.extend(staged.changes);
            while recent.len() > MAX_RECENT_CHANGES {
                recent.pop_front();
            }
        }
    }

    /// Counts of pending tasks by agent, as the store holds them when it opens.
    pub fn set_pending(&self, counts: HashMap<AgentId, usize>) {
        self.lock().pending = counts;
    }

    /// Whether `agent` has a pending task (due or not): exact, since every task write passes the
    /// writer. An agent without one (the usual case for an agent reporting while it has no work)
    /// needs no query for runnable tasks.
    pub fn has_pending(&self, agent: &AgentId) -> bool {
        self.lock().pending.contains_key(agent)
    }
}

/// Past `max` entries, drops an eighth of them (whichever the map yields first): a dropped entry
/// costs one read from SQLite the next time it is needed.
fn bound<K: std::hash::Hash + Eq + Clone, V>(map: &mut HashMap<K, V>, max: usize) {
    if map.len() < max {
        return;
    }
    let victims: Vec<K> = map.keys().take(max / 8 + 1).cloned().collect();
    for k in victims {
        map.remove(&k);
    }
}

/// What the open group of writes changed, not yet committed: the writer's own view, consulted
/// before the committed cache. A job whose condition fails has its stagings undone with it.
#[derive(Default)]
pub(crate) struct Staged {
    agents: HashMap<AgentId, Image<Agent>>,
    /// `None`: the session's task set is not known whole; it leaves the cache at publish.
    sessions: HashMap<SessionId, Option<SessionEntry>>,
    /// The group's feed rows, in order.
    changes: Vec<(u64, Change)>,
    /// How the group changed each agent's count of pending tasks, in order.
    pending: Vec<(AgentId, isize)>,
    /// What the running job replaced, newest last, to put back if the job is undone.
    undo: Vec<Undo>,
    /// How many feed rows and pending-count changes the group had when the running job started.
    changes_before_job: usize,
    pending_before_job: usize,
}

enum Undo {
    Agent(AgentId, Option<Image<Agent>>),
    Session(SessionId, Option<Option<SessionEntry>>),
}

impl Staged {
    pub fn agent(&self, id: &AgentId) -> Option<&Image<Agent>> {
        self.agents.get(id)
    }

    /// `Some(None)`: staged as not known whole (read SQLite, do not cache).
    pub fn session(&self, id: &SessionId) -> Option<Option<&SessionEntry>> {
        self.sessions.get(id).map(Option::as_ref)
    }

    pub fn put_agent(&mut self, agent: Image<Agent>) {
        let id = agent.item.id().clone();
        let was = self.agents.insert(id.clone(), agent);
        self.undo.push(Undo::Agent(id, was));
    }

    pub fn put_session(&mut self, id: SessionId, entry: Option<SessionEntry>) {
        let was = self.sessions.insert(id, entry);
        self.undo.push(Undo::Session(id, was));
    }

    pub fn push_change(&mut self, seq: u64, change: Change) {
        self.changes.push((seq, change));
    }

    /// A task of `agent` became pending (+1) or stopped being pending (-1).
    pub fn count_pending(&mut self, agent: &AgentId, delta: isize) {
        self.pending.push((agent.clone(), delta));
    }

    /// A job starts: what it stages from here on can be undone alone.
    pub fn begin_job(&mut self) {
        self.undo.clear();
        self.changes_before_job = self.changes.len();
        self.pending_before_job = self.pending.len();
    }

    /// The job's condition failed and its writes were rolled back: so are its stagings.
    pub fn undo_job(&mut self) {
        self.changes.truncate(self.changes_before_job);
        self.pending.truncate(self.pending_before_job);
        while let Some(u) = self.undo.pop() {
            match u {
                Undo::Agent(id, Some(was)) => {
                    self.agents.insert(id, was);
                }
                Undo::Agent(id, None) => {
                    self.agents.remove(&id);
                }
                Undo::Session(id, Some(was)) => {
                    self.sessions.insert(id, was);
                }
                Undo::Session(id, None) => {
                    self.sessions.remove(&id);
                }
            }
        }
    }
}
