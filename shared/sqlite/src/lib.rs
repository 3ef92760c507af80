//! The local stack's store: the storage port on SQLite in WAL mode, in a file (durable across
//! restarts and crashes) or in a temporary file (a throwaway store for tests).
//!
//! - **Writes** go through one writer thread (`writer`) that commits waiting writes together;
//!   each write intent's condition is checked inside the transaction, so the port's semantics
//!   (the contract suite) hold with no read-modify-write outside a transaction.
//! - **The change feed**: every committed change to an agent, session or task is appended to the
//!   `feed` table in the same transaction. [`SqliteStore::read_feed`] gives it in commit order and
//!   [`SqliteStore::trim_feed`] drops what the consumer has handled, so a consumer that restarts
//!   (after a crash too) resumes where it stopped: no acknowledged change is ever skipped.
//! - **Reads** of agents and open sessions come from a cache of decoded items that the writer keeps
//!   coherent (`cache`); other reads use a small pool of read connections, which WAL lets run
//!   beside the writer.
//! - **Expiry** (history retention, idempotency keys, webhook delivery records) is judged at read
//!   and condition time like DynamoDB's TTL, and [`SqliteStore::sweep_expired`] deletes.
//! - **One process per file**: [`lock::DataLock`].

mod cache;
mod cursor;
pub mod lock;
mod writer;

use async_trait::async_trait;
use cache::{Image, ItemCache, SessionEntry};
use opscore_core::agent::{Agent, AgentDetails, HistoryEntry, Registration, StateName, StateReport};
use opscore_core::ids::{AgentId, SessionId, TaskId, WorkflowId, WorkflowVersion};
use opscore_core::runner::Runner;
use opscore_core::session::{Session, SessionStatus};
use opscore_core::store::*;
use opscore_core::task::{TaskInstance, TaskKey};
use opscore_core::time::{self, Clock, SystemClock, Timestamp};
use opscore_core::workflow::WorkflowDefinition;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use writer::{Tx, Verdict, Writer};

pub use lock::{DataLock, LockError};

/// Bumped when the schema changes incompatibly; a file of another version is refused, not mangled.
const SCHEMA_VERSION: &str = "1";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS agents (
    id TEXT PRIMARY KEY, state TEXT NOT NULL, item TEXT NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS agents_by_state ON agents (state, id);
-- seq (the rowid) is the arrival order: it breaks ties between reports with one timestamp, and
-- oldest-first it is the order in which history expires.
CREATE TABLE IF NOT EXISTS history (
    seq INTEGER PRIMARY KEY, agent_id TEXT NOT NULL, ts_secs INTEGER NOT NULL,
    ts_nanos INTEGER NOT NULL, expires_at INTEGER NOT NULL, item TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS history_by_agent ON history (agent_id, ts_secs, ts_nanos);
CREATE TABLE IF NOT EXISTS workflows (
    id TEXT NOT NULL, version TEXT NOT NULL, created_at INTEGER NOT NULL, item TEXT NOT NULL,
    PRIMARY KEY (id, version)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS workflows_latest ON workflows (id, created_at);
CREATE TABLE IF NOT EXISTS sessions (
    session_id TEXT PRIMARY KEY, agent_id TEXT NOT NULL, started INTEGER NOT NULL,
    item TEXT NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS sessions_by_agent ON sessions (agent_id, started, session_id);
-- The latest sessions across agents (added after schema 1 shipped: created on open if missing).
CREATE INDEX IF NOT EXISTS sessions_by_start ON sessions (started, session_id);
CREATE TABLE IF NOT EXISTS tasks (
    session_id TEXT NOT NULL, task_id TEXT NOT NULL, agent_id TEXT NOT NULL, status TEXT NOT NULL,
    due_at INTEGER NOT NULL, timer_at INTEGER, item TEXT NOT NULL,
    PRIMARY KEY (session_id, task_id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS tasks_runnable ON tasks (agent_id, due_at) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS tasks_timers ON tasks (timer_at) WHERE timer_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS idempotency (
    agent_id TEXT NOT NULL, key TEXT NOT NULL, session_id TEXT NOT NULL, fingerprint TEXT NOT NULL,
    expires_at INTEGER NOT NULL, PRIMARY KEY (agent_id, key)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS idempotency_expiry ON idempotency (expires_at);
CREATE TABLE IF NOT EXISTS deliveries (id TEXT PRIMARY KEY, expires_at INTEGER NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS deliveries_expiry ON deliveries (expires_at);
-- Routing by capability (issue 18): available agents by capability, in the order they became
-- available (since = the feed position of the change that made them so), and pending routed
-- tasks by capability, oldest due first. Both are written in the transaction of the agent or task
-- write that moves an item in or out. (A routed pending task's `tasks.status` column is 'routed',
-- so that it is in its capability's list and not in its agent's `tasks_runnable`.)
CREATE TABLE IF NOT EXISTS idle_agents (
    capability TEXT NOT NULL, since INTEGER NOT NULL, agent_id TEXT NOT NULL,
    PRIMARY KEY (capability, since, agent_id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS idle_agents_by_agent ON idle_agents (agent_id);
CREATE TABLE IF NOT EXISTS routed_tasks (
    capability TEXT NOT NULL, due_at INTEGER NOT NULL, session_id TEXT NOT NULL, task_id TEXT NOT NULL,
    PRIMARY KEY (capability, due_at, session_id, task_id)) WITHOUT ROWID;
-- AUTOINCREMENT: a sequence number is never reused, even once the feed is trimmed empty.
CREATE TABLE IF NOT EXISTS feed (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, old TEXT, new TEXT);
";

/// How much of the page cache each connection may keep (KiB): bounds memory whatever the file size.
const CACHE_KIB: i64 = 8 * 1024;
/// Read connections kept open between reads (more are opened under load, then closed).
const IDLE_READERS: usize = 8;
/// The writer checkpoints itself only if the WAL grows past this many pages (the checkpointer
/// thread normally keeps it far smaller).
const WRITER_CHECKPOINT_PAGES: u32 = 16_384;
/// Expired history rows deleted per sweep step (oldest first), and steps per sweep at most.
const SWEEP_BATCH: i64 = 2_000;
const SWEEP_STEPS: usize = 50;

/// What a commit survives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// A crash of the process (SIGKILL, panic, OOM): the WAL is written before a write is
    /// acknowledged, and synced at checkpoints. A power cut may lose the last moments. The default.
    Process,
    /// A power cut too: every commit is synced to disk (`synchronous=FULL`); slower.
    Sync,
    /// Nothing: a temporary store deleted when dropped.
    Throwaway,
}

pub struct SqliteStore {
    // Dropped first: the writer finishes what was sent and checkpoints before the files go.
    writer: Writer,
    _checkpointer: Option<Checkpointer>,
    readers: Mutex<Vec<Connection>>,
    cache: Arc<ItemCache>,
    path: PathBuf,
    durability: Durability,
    clock: Arc<dyn Clock>,
    feed: Arc<Notify>,
    _lock: Option<DataLock>,
    temp: Option<TempFiles>,
}

/// Removes a throwaway store's files when the store is dropped.
struct TempFiles(PathBuf);

impl Drop for TempFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Locked(#[from] LockError),
    #[error("cannot open {path}: {message}")]
    Sqlite { path: String, message: String },
    #[error("{path} holds schema version {found}; this build reads version {SCHEMA_VERSION}")]
    Schema { path: String, found: String },
    #[error("cannot create {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Maps an SQLite error to the port's: a busy or locked database is "try again", others too (the
/// caller answers 503 and the client retries); nothing here is the client's fault.
pub(crate) fn sql_error(e: rusqlite::Error) -> StoreError {
    StoreError::unavailable_because(format!("sqlite: {e}"), e)
}

fn to_json<T: Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::corrupt_because(format!("cannot encode an item: {e}"), e))
}

fn from_json<T: DeserializeOwned>(s: &str) -> Result<T, StoreError> {
    serde_json::from_str(s).map_err(|e| StoreError::corrupt_because(format!("cannot decode an item: {e}"), e))
}

/// A sortable key for instants the server made (session starts, due times, timers).
fn nanos(t: Timestamp) -> i64 {
    time::to_nanos(t)
}

impl SqliteStore {
    /// Opens (creating if needed) the store in `path`, locked to this process.
    pub fn open(path: &Path, durability: Durability) -> Result<SqliteStore, OpenError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| OpenError::Io {
                path: dir.display().to_string(),
                source,
            })?;
        }
        let lock = DataLock::acquire(path)?;
        let mut store = Self::open_unlocked(path, durability)?;
        store._lock = Some(lock);
        Ok(store)
    }

    /// A store in a fresh temporary directory, deleted when the store is dropped: for tests and
    /// for `opscore-local --ephemeral`.
    pub fn temporary() -> Result<SqliteStore, OpenError> {
        let dir = std::env::temp_dir().join(format!("opscore-sqlite-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).map_err(|source| OpenError::Io {
            path: dir.display().to_string(),
            source,
        })?;
        let temp = TempFiles(dir.clone());
        let mut store = Self::open_unlocked(&dir.join("opscore.db"), Durability::Throwaway)?;
        store.temp = Some(temp);
        Ok(store)
    }

    fn open_unlocked(path: &Path, durability: Durability) -> Result<SqliteStore, OpenError> {
        let fail = |e: rusqlite::Error| OpenError::Sqlite {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        let conn = connect(path, durability, true).map_err(fail)?;
        conn.execute_batch(SCHEMA).map_err(fail)?;
        let found: Option<String> = conn
            .query_row("SELECT value FROM meta WHERE key = 'schema'", [], |r| r.get(0))
            .optional()
            .map_err(fail)?;
        match found {
            None => {
                conn.execute("INSERT INTO meta (key, value) VALUES ('schema', ?1)", [SCHEMA_VERSION])
                    .map_err(fail)?;
            }
            Some(v) if v == SCHEMA_VERSION => {}
            Some(found) => {
                return Err(OpenError::Schema {
                    path: path.display().to_string(),
                    found,
                });
            }
        }
        let feed = Arc::new(Notify::new());
        let cache = Arc::new(ItemCache::default());
        cache.set_pending(pending_counts(&conn).map_err(fail)?);
        let checkpointer = Checkpointer::start(path, durability).map_err(fail)?;
        let cue = checkpointer.cue();
        Ok(SqliteStore {
            writer: Writer::start(conn, feed.clone(), cache.clone(), move || cue.wrote()),
            _checkpointer: Some(checkpointer),
            readers: Mutex::new(Vec::new()),
            cache,
            path: path.to_owned(),
            durability,
            clock: Arc::new(SystemClock),
            feed,
            _lock: None,
            temp: None,
        })
    }

    /// Judges expiry by `clock` (a test's pinned time) instead of the wall clock.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn is_temporary(&self) -> bool {
        self.temp.is_some()
    }

    fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let pooled = self.readers.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let conn = match pooled {
            Some(c) => c,
            None => connect(&self.path, self.durability, false).map_err(sql_error)?,
        };
        let result = f(&conn);
        let mut pool = self.readers.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < IDLE_READERS {
            pool.push(conn);
        }
        result
    }

    fn now_secs(&self) -> i64 {
        self.clock.now().timestamp()
    }

    // ----- the change feed -----

    /// Woken (one permit) after every commit that appended to the feed.
    pub fn feed_signal(&self) -> Arc<Notify> {
        self.feed.clone()
    }

    /// Changes after sequence number `after`, in commit order, at most `limit`.
    ///
    /// Changes committed since the consumer last caught up come from memory, with their old
    /// images; older ones (after a restart, or a consumer far behind) from the feed table,
    /// without (see `append_feed`).
    pub fn read_feed(&self, after: u64, limit: usize) -> Result<Vec<(u64, Change)>, StoreError> {
        if let Some(changes) = self.recent_changes(after, limit) {
            return Ok(changes);
        }
        self.read(|c| {
            let mut st = c
                .prepare_cached("SELECT seq, kind, old, new FROM feed WHERE seq > ?1 ORDER BY seq LIMIT ?2")
                .map_err(sql_error)?;
            let rows = st
                .query_map(params![after as i64, limit as i64], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, Option<String>>(2)?,
                        r.get::<_, Option<String>>(3)?,
                    ))
                })
                .map_err(sql_error)?;
            let mut out = Vec::new();
            for row in rows {
                let (seq, kind, old, new) = row.map_err(sql_error)?;
                out.push((seq as u64, change_of(&kind, old.as_deref(), new.as_deref())?));
            }
            Ok(out)
        })
    }

    /// [`SqliteStore::read_feed`] if it needs no read of the table (never blocks): `None` means
    /// call `read_feed`.
    pub fn recent_changes(&self, after: u64, limit: usize) -> Option<Vec<(u64, Change)>> {
        self.cache.changes_after(after, limit)
    }

    /// Drops every change up to and including `through`: the consumer has handled them.
    pub async fn trim_feed(&self, through: u64) -> Result<usize, StoreError> {
        self.cache.forget_changes(through);
        self.writer
            .write(move |tx| {
                let n = tx
                    .conn
                    .prepare_cached("DELETE FROM feed WHERE seq <= ?1")
                    .and_then(|mut s| s.execute([through as i64]))
                    .map_err(sql_error)?;
                Ok(Verdict::Keep(n))
            })
            .await
    }

    /// How many changes wait in the feed (for the banner and tests).
    pub fn feed_len(&self) -> Result<u64, StoreError> {
        self.read(|c| {
            c.query_row("SELECT count(*) FROM feed", [], |r| r.get::<_, i64>(0))
                .map(|n| n as u64)
                .map_err(sql_error)
        })
    }

    /// Deletes what has expired by now: history past its retention, idempotency keys and webhook
    /// delivery records past their expiry. Until then reads and conditions already ignore them.
    pub async fn sweep_expired(&self) -> Result<Swept, StoreError> {
        let now = self.now_secs();
        self.writer
            .write(move |tx| {
                let c = tx.conn;
                let mut swept = Swept::default();
                // History expires oldest first: look at the oldest rows and stop at the first
                // batch that is not all expired, so a sweep never scans the whole table.
                for _ in 0..SWEEP_STEPS {
                    let n = c
                        .prepare_cached(
                            "DELETE FROM history WHERE seq IN \
                             (SELECT seq FROM history ORDER BY seq LIMIT ?1) AND expires_at < ?2",
                        )
                        .and_then(|mut s| s.execute(params![SWEEP_BATCH, now]))
                        .map_err(sql_error)?;
                    swept.history += n;
                    if (n as i64) < SWEEP_BATCH {
                        break;
                    }
                }
                swept.idempotency_keys = c
                    .execute("DELETE FROM idempotency WHERE expires_at < ?1", [now])
                    .map_err(sql_error)?;
                swept.delivery_records = c
                    .execute("DELETE FROM deliveries WHERE expires_at < ?1", [now])
                    .map_err(sql_error)?;
                Ok(Verdict::Keep(swept))
            })
            .await
    }
}

/// Copies the WAL back into the database from a thread of its own, so that the copy and its
/// fsync never stall the writer (SQLite's own auto-checkpoint runs in the committing connection:
/// measured, it was most of the p99 of a state report). A PASSIVE checkpoint never blocks the
/// writer or readers; the writer's own auto-checkpoint stays as a backstop at a larger size.
///
/// It runs after commits, at most every [`CHECKPOINT_EVERY`], and sleeps while nothing is written.
/// Small and often is what keeps the tail short: measured under `wrk` (20,000 reports/s), a
/// checkpoint every 1 s gave a p99 of 30-53 ms, every 200 ms 11 ms, every 20 ms 5.7-6.7 ms, every
/// 5 ms 5.1-5.5 ms: a big checkpoint takes a core for long enough to starve the writer.
struct Checkpointer {
    cue: CheckpointCue,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Tells the checkpointer that the WAL grew, or that it must stop.
#[derive(Clone)]
struct CheckpointCue(Arc<(Mutex<CueState>, std::sync::Condvar)>);

#[derive(Default)]
struct CueState {
    wrote: bool,
    stop: bool,
}

impl CheckpointCue {
    fn wrote(&self) {
        let (lock, wake) = &*self.0;
        let mut st = lock.lock().unwrap_or_else(|e| e.into_inner());
        if !st.wrote {
            st.wrote = true;
            wake.notify_one();
        }
    }

    fn stop(&self) {
        let (lock, wake) = &*self.0;
        lock.lock().unwrap_or_else(|e| e.into_inner()).stop = true;
        wake.notify_all();
    }

    /// Waits for a write (true) or the stop (false).
    fn next(&self) -> bool {
        let (lock, wake) = &*self.0;
        let mut st = lock.lock().unwrap_or_else(|e| e.into_inner());
        while !st.wrote && !st.stop {
            st = wake.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        st.wrote = false;
        !st.stop
    }
}

/// The checkpointer runs at most this often (while writes come).
const CHECKPOINT_EVERY: Duration = Duration::from_millis(5);

impl Checkpointer {
    fn start(path: &Path, durability: Durability) -> rusqlite::Result<Checkpointer> {
        // Read-write: a checkpoint writes the database file (never a row).
        let conn = connect(path, durability, true)?;
        let cue = CheckpointCue(Arc::default());
        let next = cue.clone();
        let thread = std::thread::Builder::new()
            .name("opscore-sqlite-checkpoint".into())
            .spawn(move || {
                while next.next() {
                    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                        tracing::debug!(error = %e, "checkpoint skipped");
                    }
                    std::thread::sleep(CHECKPOINT_EVERY);
                }
            })
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        Ok(Checkpointer {
            cue,
            thread: Some(thread),
        })
    }

    fn cue(&self) -> CheckpointCue {
        self.cue.clone()
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.cue.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What one [`SqliteStore::sweep_expired`] deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Swept {
    pub history: usize,
    pub idempotency_keys: usize,
    pub delivery_records: usize,
}

fn connect(path: &Path, durability: Durability, writer: bool) -> rusqlite::Result<Connection> {
    let flags = if writer {
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let conn = Connection::open_with_flags(path, flags)?;
    let synchronous = match durability {
        Durability::Process => "NORMAL",
        Durability::Sync => "FULL",
        Durability::Throwaway => "OFF",
    };
    conn.execute_batch(&format!(
        "PRAGMA busy_timeout = 5000;
         PRAGMA cache_size = -{CACHE_KIB};
         PRAGMA temp_store = MEMORY;"
    ))?;
    if writer {
        conn.execute_batch(&format!(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = {synchronous};
             PRAGMA wal_autocheckpoint = {WRITER_CHECKPOINT_PAGES};"
        ))?;
    }
    // The query planner's stability guarantee: without it, SQLite (built with STAT4) re-prepares a
    // statement on every new binding of a parameter that a partial index's WHERE is compared
    // with (runnable_tasks, due_timers) — about 2 % of the runner's CPU in scenario R.
    conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

fn change_of(kind: &str, old: Option<&str>, new: Option<&str>) -> Result<Change, StoreError> {
    fn image<T: DeserializeOwned>(s: Option<&str>) -> Result<Option<Arc<T>>, StoreError> {
        s.map(|s| from_json(s).map(Arc::new)).transpose()
    }
    Ok(match kind {
        "agent" => Change::Agent {
            old: image(old)?,
            new: image(new)?,
        },
        "session" => Change::Session {
            old: image(old)?,
            new: image(new)?,
        },
        "task" => Change::Task {
            old: image(old)?,
            new: image(new)?,
        },
        other => return Err(StoreError::corrupt(format!("feed entry of unknown kind {other:?}"))),
    })
}

/// Appends a change to the feed table and stages it, decoded, for the consumer.
///
/// The row keeps only the new image, and only of a change the runner acts on: the consumer gets
/// both images from the staged change, and after a restart (rows read back from the table) it
/// handles a change with no old image, which the runner treats as "anything may have changed"
/// (it is safe to handle a change twice). A change the runner never acts on (a session's, a task
/// that is not pending) keeps its row, so the order and the positions stay whole, but no image:
/// those images were over half of the feed's bytes, and nothing a restart needs.
fn append_feed(tx: &Tx<'_>, kind: &str, new: &str, change: Change) -> Result<(), StoreError> {
    let image = Runner::acts_on(&change).then_some(new);
    tx.conn
        .prepare_cached("INSERT INTO feed (kind, new) VALUES (?1, ?2)")
        .and_then(|mut s| s.execute(params![kind, image]))
        .map_err(sql_error)?;
    let seq = tx.conn.last_insert_rowid() as u64;
    tx.staged.borrow_mut().push_change(seq, change);
    tx.appended_to_feed();
    Ok(())
}

/// The agent as stored in SQLite (its JSON and decoded).
fn read_agent(c: &Connection, id: &AgentId) -> Result<Option<Image<Agent>>, StoreError> {
    let raw: Option<String> = c
        .prepare_cached("SELECT item FROM agents WHERE id = ?1")
        .and_then(|mut s| s.query_row([id.as_str()], |r| r.get(0)).optional())
        .map_err(sql_error)?;
    raw.map(|raw| from_json(&raw).map(|a| Image::new(raw, a))).transpose()
}

/// The session and every task it has, as stored in SQLite (one snapshot when `c` is in a
/// transaction).
fn read_session(c: &Connection, id: &SessionId) -> Result<Option<SessionEntry>, StoreError> {
    let sid = id.to_string();
    let raw: Option<String> = c
        .prepare_cached("SELECT item FROM sessions WHERE session_id = ?1")
        .and_then(|mut s| s.query_row([&sid], |r| r.get(0)).optional())
        .map_err(sql_error)?;
    let Some(raw) = raw else {
        return Ok(None);
    };
    let session = Image::new(raw.as_str(), from_json(&raw)?);
    let mut st = c
        .prepare_cached("SELECT item FROM tasks WHERE session_id = ?1 ORDER BY task_id")
        .map_err(sql_error)?;
    let rows = st.query_map([&sid], |r| r.get::<_, String>(0)).map_err(sql_error)?;
    let mut tasks = Vec::new();
    for raw in rows {
        let raw = raw.map_err(sql_error)?;
        tasks.push(Image::new(raw.as_str(), from_json(&raw)?));
    }
    Ok(Some(SessionEntry { session, tasks }))
}

/// The agent as the writer sees it: staged by the open group, else committed (cached, else read
/// and cached).
fn load_agent(tx: &Tx<'_>, id: &AgentId) -> Result<Option<Image<Agent>>, StoreError> {
    if let Some(a) = tx.staged.borrow().agent(id) {
        return Ok(Some(a.clone()));
    }
    committed(
        tx.cache.agent(id),
        || read_agent(tx.conn, id),
        |a| tx.cache.fill_agent(a),
    )
}

/// The session and its tasks as the writer sees them (see [`load_agent`]).
fn load_session(tx: &Tx<'_>, id: &SessionId) -> Result<Option<SessionEntry>, StoreError> {
    match tx.staged.borrow().session(id) {
        Some(Some(e)) => return Ok(Some(e.clone())),
        // Staged as not known whole: SQLite, inside this transaction, has it right.
        Some(None) => return read_session(tx.conn, id),
        None => {}
    }
    committed(
        tx.cache.session(id),
        || read_session(tx.conn, id),
        |e| tx.cache.fill_session(e),
    )
}

/// The committed image: the cached one, else read from SQLite and cached (an item no write of the
/// open group touched reads the same inside the group's transaction as committed).
fn committed<T: Clone>(
    cached: Option<T>,
    read: impl FnOnce() -> Result<Option<T>, StoreError>,
    fill: impl FnOnce(T),
) -> Result<Option<T>, StoreError> {
    if cached.is_some() {
        return Ok(cached);
    }
    let found = read()?;
    if let Some(item) = &found {
        fill(item.clone());
    }
    Ok(found)
}

/// Writes the agent's new image, appends the change to the feed and stages the new image for
/// the cache.
fn save_agent(tx: &Tx<'_>, old: Option<&Image<Agent>>, agent: &Agent) -> Result<(), StoreError> {
    let new = Image::new(to_json(agent)?, agent.clone());
    let (id, state) = (agent.id().as_str(), agent.current.state.as_str());
    // An agent that exists is updated, naming the state column only when it changes: a REPLACE
    // deletes and inserts the row and its index entries, and an UPDATE naming `state` rewrites
    // its index entry even when the value stays (most agent writes are claims, hand-overs and
    // releases, which keep the state).
    let updated = match old {
        Some(o) if o.item.current.state == agent.current.state => tx
            .conn
            .prepare_cached("UPDATE agents SET item = ?2 WHERE id = ?1")
            .and_then(|mut s| s.execute(params![id, &*new.raw])),
        Some(_) => tx
            .conn
            .prepare_cached("UPDATE agents SET state = ?2, item = ?3 WHERE id = ?1")
            .and_then(|mut s| s.execute(params![id, state, &*new.raw])),
        None => Ok(0),
    }
    .map_err(sql_error)?;
    if updated == 0 {
        tx.conn
            .prepare_cached("INSERT OR REPLACE INTO agents (id, state, item) VALUES (?1, ?2, ?3)")
            .and_then(|mut s| s.execute(params![id, state, &*new.raw]))
            .map_err(sql_error)?;
    }
    let change = Change::Agent {
        old: old.map(|o| o.item.clone()),
        new: Some(new.item.clone()),
    };
    append_feed(tx, "agent", &new.raw, change)?;
    let moved = IdleIndexMove::of(old.map(|o| &*o.item), Some(agent));
    if !moved.is_empty() {
        reindex_idle_agent(tx, agent.id(), moved)?;
    }
    tx.staged.borrow_mut().put_agent(new);
    Ok(())
}

/// Moves the agent in the idle-agents index, in the write's transaction: its entries leave,
/// and those it joins with are stamped with the feed position just appended (the change that
/// made it available), which orders agents by how long they have been available.
fn reindex_idle_agent(tx: &Tx<'_>, agent: &AgentId, moved: IdleIndexMove) -> Result<(), StoreError> {
    let since = tx.conn.last_insert_rowid();
    if !moved.leave.is_empty() {
        tx.conn
            .prepare_cached("DELETE FROM idle_agents WHERE agent_id = ?1")
            .and_then(|mut s| s.execute([agent.as_str()]))
            .map_err(sql_error)?;
    }
    for capability in &moved.join {
        tx.conn
            .prepare_cached("INSERT OR REPLACE INTO idle_agents (capability, since, agent_id) VALUES (?1, ?2, ?3)")
            .and_then(|mut s| s.execute(params![capability, since, agent.as_str()]))
            .map_err(sql_error)?;
    }
    Ok(())
}

/// Keeps the routed runnable index in step with a task write, in its transaction.
fn reindex_routed_task(tx: &Tx<'_>, old: Option<&TaskInstance>, new: &TaskInstance) -> Result<(), StoreError> {
    let (was, is) = (
        old.and_then(|o| o.runnable_capability().map(|c| (c, nanos(o.due_at)))),
        new.runnable_capability().map(|c| (c, nanos(new.due_at))),
    );
    if was == is {
        return Ok(());
    }
    let (sid, tid) = (new.session_id.to_string(), new.task_id.as_str());
    if let Some((capability, due)) = was {
        tx.conn
            .prepare_cached(
                "DELETE FROM routed_tasks WHERE capability = ?1 AND due_at = ?2 AND session_id = ?3 AND task_id = ?4",
            )
            .and_then(|mut s| s.execute(params![capability, due, sid, tid]))
            .map_err(sql_error)?;
    }
    if let Some((capability, due)) = is {
        tx.conn
            .prepare_cached(
                "INSERT OR REPLACE INTO routed_tasks (capability, due_at, session_id, task_id) VALUES (?1, ?2, ?3, ?4)",
            )
            .and_then(|mut s| s.execute(params![capability, due, sid, tid]))
            .map_err(sql_error)?;
    }
    Ok(())
}

/// The `tasks.status` column: the task's status, except that a pending routed task is `routed`,
/// which keeps it out of its agent's runnable list (`tasks_runnable`, pending counts).
fn status_column(t: &TaskInstance) -> &'static str {
    if t.runnable_capability().is_some() {
        "routed"
    } else {
        t.status.as_str()
    }
}

/// Stages what a session or task write did to the session's entry: edits the entry the writer
/// sees, or (if there is none) reads it whole from SQLite, which already holds the write.
fn stage_session(tx: &Tx<'_>, id: SessionId, edit: impl FnOnce(&mut SessionEntry)) -> Result<(), StoreError> {
    let staged = tx.staged.borrow().session(&id).map(|e| e.cloned());
    let entry = match staged {
        Some(None) => None,
        Some(Some(mut e)) => {
            edit(&mut e);
            Some(e)
        }
        None => match tx.cache.session(&id) {
            Some(mut e) => {
                edit(&mut e);
                Some(e)
            }
            None => read_session(tx.conn, &id)?,
        },
    };
    tx.staged.borrow_mut().put_session(id, entry);
    Ok(())
}

fn query_items<T: DeserializeOwned>(
    c: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<T>, StoreError> {
    let mut st = c.prepare_cached(sql).map_err(sql_error)?;
    let rows = st.query_map(params, |r| r.get::<_, String>(0)).map_err(sql_error)?;
    rows.map(|r| r.map_err(sql_error).and_then(|s| from_json(&s))).collect()
}

/// How many pending tasks each agent has (the partial index `tasks_runnable` answers).
fn pending_counts(c: &Connection) -> rusqlite::Result<HashMap<AgentId, usize>> {
    let mut st = c.prepare("SELECT agent_id, count(*) FROM tasks WHERE status = 'pending' GROUP BY agent_id")?;
    let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
    let mut counts = HashMap::new();
    for row in rows {
        let (agent, n) = row?;
        // An id that no longer parses cannot be asked about; its tasks stay where they are.
        if let Ok(agent) = AgentId::parse(agent) {
            counts.insert(agent, n as usize);
        }
    }
    Ok(counts)
}

/// Task keys (session id, task id) selected by `sql`: the index answers, no item is decoded.
fn query_keys(c: &Connection, sql: &str, params: impl rusqlite::Params) -> Result<Vec<TaskKey>, StoreError> {
    let mut st = c.prepare_cached(sql).map_err(sql_error)?;
    let rows = st
        .query_map(params, |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
        .map_err(sql_error)?;
    let mut keys = Vec::new();
    for row in rows {
        let (session, task) = row.map_err(sql_error)?;
        keys.push(TaskKey {
            session_id: SessionId::parse(&session)
                .map_err(|e| StoreError::corrupt(format!("task row's session id: {e}")))?,
            task_id: TaskId::parse(task).map_err(|e| StoreError::corrupt(format!("task row's task id: {e}")))?,
        });
    }
    Ok(keys)
}

/// Cuts a page of `limit + 1` fetched items to `limit`, with a cursor made from the last one kept.
fn page_of<T>(mut items: Vec<T>, limit: usize, cursor: impl Fn(&T) -> String) -> Page<T> {
    let next_cursor = if items.len() > limit {
        items.truncate(limit);
        items.last().map(cursor)
    } else {
        None
    };
    Page { items, next_cursor }
}

/// Where a page of a session list starts: after the session a cursor of `list` names, by its
/// start (nanoseconds) and its id.
fn session_cursor(page: &PageRequest, list: &str) -> Result<Option<(i64, String)>, StoreError> {
    let Some(c) = &page.cursor else {
        return Ok(None);
    };
    let k = cursor::decode(c, list, 2)?;
    Ok(Some((cursor::int(&k[0])?, k[1].clone())))
}

fn limit_of(page: &PageRequest) -> usize {
    page.limit.max(1) as usize
}

#[async_trait]
impl Store for SqliteStore {
    async fn register_agent(&self, details: AgentDetails, now: Timestamp) -> Result<RegisterOutcome, StoreError> {
        self.writer
            .write(move |tx| {
                let old = load_agent(tx, &details.agent_id)?;
                Ok(Verdict::Keep(
                    match Agent::registration(old.as_ref().map(|o| &*o.item), details, now) {
                        Registration::Create(agent) => {
                            save_agent(tx, None, &agent)?;
                            RegisterOutcome::Created(agent)
                        }
                        Registration::Unchanged => {
                            RegisterOutcome::Unchanged((*old.expect("unchanged: it exists").item).clone())
                        }
                        Registration::Update(agent) => {
                            save_agent(tx, old.as_ref(), &agent)?;
                            RegisterOutcome::Updated(agent)
                        }
                    },
                ))
            })
            .await
    }

    async fn deregister_agent(&self, id: &AgentId, now: Timestamp) -> Result<Agent, AgentWriteError> {
        let id = id.clone();
        self.writer
            .write(move |tx| {
                let Some(old) = load_agent(tx, &id)? else {
                    return Ok(Verdict::Undo(Err(AgentWriteError::NotFound)));
                };
                let Some(agent) = old.item.deregistered(now) else {
                    return Ok(Verdict::Keep(Ok((*old.item).clone())));
                };
                save_agent(tx, Some(&old), &agent)?;
                Ok(Verdict::Keep(Ok(agent)))
            })
            .await?
    }

    async fn report_state(
        &self,
        report: &StateReport,
        received_at: Timestamp,
        history_ttl: Duration,
    ) -> Result<ReportOutcome, AgentWriteError> {
        let report = report.clone();
        let expires_at = received_at.timestamp().saturating_add(history_ttl.as_secs() as i64);
        self.writer
            .write(move |tx| {
                let Some(old) = load_agent(tx, &report.agent_id)? else {
                    return Ok(Verdict::Undo(Err(AgentWriteError::NotFound)));
                };
                if old.item.is_deregistered() {
                    return Ok(Verdict::Undo(Err(AgentWriteError::Deregistered)));
                }
                let applied = old.item.current.is_superseded_by(report.timestamp);
                let entry = to_json(&HistoryEntry::of(&report, received_at, applied))?;
                tx.conn
                    .prepare_cached(
                        "INSERT INTO history (agent_id, ts_secs, ts_nanos, expires_at, item) \
                         VALUES (?1, ?2, ?3, ?4, ?5)",
                    )
                    .and_then(|mut s| {
                        s.execute(params![
                            report.agent_id.as_str(),
                            report.timestamp.timestamp(),
                            report.timestamp.timestamp_subsec_nanos(),
                            expires_at,
                            entry
                        ])
                    })
                    .map_err(sql_error)?;
                if !applied {
                    return Ok(Verdict::Keep(Ok(ReportOutcome::Stale {
                        current: old.item.current.clone(),
                    })));
                }
                save_agent(tx, Some(&old), &old.item.with_report(&report, received_at))?;
                Ok(Verdict::Keep(Ok(ReportOutcome::Applied)))
            })
            .await?
    }

    async fn get_agent(&self, id: &AgentId) -> Result<Option<Agent>, StoreError> {
        if let Some(a) = self.cache.agent(id) {
            return Ok(Some((*a.item).clone()));
        }
        self.read(|c| Ok(read_agent(c, id)?.map(|a| (*a.item).clone())))
    }

    async fn list_agents(&self, state: Option<&StateName>, page: PageRequest) -> Result<Page<Agent>, StoreError> {
        // The filter is part of the list: a cursor of all agents is no cursor of the idle ones.
        let list = format!("agents\u{1e}{}", state.map(StateName::as_str).unwrap_or("*"));
        let after = match &page.cursor {
            Some(c) => cursor::decode(c, &list, 1)?.remove(0),
            None => String::new(),
        };
        let limit = limit_of(&page);
        let items: Vec<Agent> = self.read(|c| match state {
            Some(st) => query_items(
                c,
                "SELECT item FROM agents WHERE state = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
                params![st.as_str(), after, limit as i64 + 1],
            ),
            None => query_items(
                c,
                "SELECT item FROM agents WHERE id > ?1 ORDER BY id LIMIT ?2",
                params![after, limit as i64 + 1],
            ),
        })?;
        Ok(page_of(items, limit, |a| cursor::encode(&list, &[a.id().as_str()])))
    }

    async fn state_history(&self, id: &AgentId, page: PageRequest) -> Result<Page<HistoryEntry>, StoreError> {
        let list = format!("history\u{1e}{id}");
        let after = match &page.cursor {
            Some(c) => {
                let k = cursor::decode(c, &list, 3)?;
                Some((cursor::int(&k[0])?, cursor::int(&k[1])?, cursor::int(&k[2])?))
            }
            None => None,
        };
        let limit = limit_of(&page);
        let rows: Vec<(i64, i64, i64, String)> = self.read(|c| {
            let (secs, ns, seq) = after.unwrap_or((i64::MAX, i64::MAX, i64::MAX));
            let mut st = c
                .prepare_cached(
                    "SELECT ts_secs, ts_nanos, seq, item FROM history \
                     WHERE agent_id = ?1 AND (ts_secs, ts_nanos, seq) < (?2, ?3, ?4) \
                     ORDER BY ts_secs DESC, ts_nanos DESC, seq DESC LIMIT ?5",
                )
                .map_err(sql_error)?;
            let rows = st
                .query_map(params![id.as_str(), secs, ns, seq, limit as i64 + 1], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })
                .map_err(sql_error)?;
            rows.map(|r| r.map_err(sql_error)).collect()
        })?;
        let mut keyed = Vec::with_capacity(rows.len());
        for (secs, ns, seq, item) in rows {
            keyed.push(((secs, ns, seq), from_json::<HistoryEntry>(&item)?));
        }
        let page = page_of(keyed, limit, |((secs, ns, seq), _)| {
            cursor::encode(&list, &[&secs.to_string(), &ns.to_string(), &seq.to_string()])
        });
        Ok(Page {
            items: page.items.into_iter().map(|(_, e)| e).collect(),
            next_cursor: page.next_cursor,
        })
    }

    async fn put_workflow(&self, def: &WorkflowDefinition, now: Timestamp) -> Result<PutWorkflowOutcome, StoreError> {
        let def = def.clone();
        self.writer
            .write(move |tx| {
                let existing: Option<String> = tx
                    .conn
                    .prepare_cached("SELECT item FROM workflows WHERE id = ?1 AND version = ?2")
                    .and_then(|mut s| {
                        s.query_row(params![def.id.as_str(), def.version.as_str()], |r| r.get(0))
                            .optional()
                    })
                    .map_err(sql_error)?;
                if let Some(raw) = existing {
                    let existing: StoredWorkflow = from_json(&raw)?;
                    return Ok(Verdict::Keep(if existing.definition.same_content(&def) {
                        PutWorkflowOutcome::Identical(existing)
                    } else {
                        PutWorkflowOutcome::Conflict(existing)
                    }));
                }
                let stored = StoredWorkflow {
                    definition: def,
                    created_at: now,
                };
                let item = to_json(&stored)?;
                tx.conn
                    .prepare_cached("INSERT INTO workflows (id, version, created_at, item) VALUES (?1, ?2, ?3, ?4)")
                    .and_then(|mut s| {
                        s.execute(params![
                            stored.definition.id.as_str(),
                            stored.definition.version.as_str(),
                            nanos(now),
                            item
                        ])
                    })
                    .map_err(sql_error)?;
                Ok(Verdict::Keep(PutWorkflowOutcome::Created(stored)))
            })
            .await
    }

    async fn get_workflow(
        &self,
        id: &WorkflowId,
        version: Option<&WorkflowVersion>,
    ) -> Result<Option<StoredWorkflow>, StoreError> {
        self.read(|c| {
            let found = match version {
                Some(v) => query_items(
                    c,
                    "SELECT item FROM workflows WHERE id = ?1 AND version = ?2",
                    params![id.as_str(), v.as_str()],
                )?,
                None => query_items(
                    c,
                    "SELECT item FROM workflows WHERE id = ?1 ORDER BY created_at DESC, version DESC LIMIT 1",
                    params![id.as_str()],
                )?,
            };
            Ok(found.into_iter().next())
        })
    }

    async fn list_workflows(&self, page: PageRequest) -> Result<Page<StoredWorkflow>, StoreError> {
        const LIST: &str = "workflows";
        let (id, version) = match &page.cursor {
            Some(c) => {
                let mut k = cursor::decode(c, LIST, 2)?;
                let v = k.pop().unwrap_or_default();
                (k.pop().unwrap_or_default(), v)
            }
            None => (String::new(), String::new()),
        };
        let limit = limit_of(&page);
        let items: Vec<StoredWorkflow> = self.read(|c| {
            query_items(
                c,
                "SELECT item FROM workflows WHERE (id, version) > (?1, ?2) ORDER BY id, version LIMIT ?3",
                params![id, version, limit as i64 + 1],
            )
        })?;
        Ok(page_of(items, limit, |w| {
            cursor::encode(LIST, &[w.definition.id.as_str(), w.definition.version.as_str()])
        }))
    }

    async fn commit(&self, writes: Vec<Write>) -> Result<(), CommitError> {
        let now = self.now_secs();
        // The new images are encoded here, on the caller's thread: the writer, which every write
        // of the store waits for, only runs the statements.
        let encoded = writes.iter().map(encode_image).collect::<Result<Vec<_>, _>>()?;
        self.writer
            .write(move |tx| match check(tx, &writes, now)? {
                Err(conflict) => Ok(Verdict::Undo(Err(conflict))),
                Ok(loaded) => {
                    apply(tx, writes, encoded, loaded, now)?;
                    Ok(Verdict::Keep(Ok(())))
                }
            })
            .await?
    }

    async fn get_session(&self, id: &SessionId) -> Result<Option<SessionView>, StoreError> {
        let entry = match self.cache.session(id) {
            Some(e) => Some(e),
            None => self.read(|c| {
                // One read transaction: the session and its tasks from the same snapshot.
                let tx = c.unchecked_transaction().map_err(sql_error)?;
                read_session(&tx, id)
            })?,
        };
        Ok(entry.map(|e| SessionView {
            session: (*e.session.item).clone(),
            tasks: e.tasks.iter().map(|t| (*t.item).clone()).collect(),
        }))
    }

    async fn list_sessions(&self, agent: &AgentId, page: PageRequest) -> Result<Page<Session>, StoreError> {
        let list = format!("sessions\u{1e}{agent}");
        let after = session_cursor(&page, &list)?;
        let limit = limit_of(&page);
        // Newest first; sessions started in the same nanosecond by session id.
        let items: Vec<Session> = self.read(|c| match &after {
            None => query_items(
                c,
                "SELECT item FROM sessions WHERE agent_id = ?1 ORDER BY started DESC, session_id LIMIT ?2",
                params![agent.as_str(), limit as i64 + 1],
            ),
            Some((started, sid)) => query_items(
                c,
                "SELECT item FROM sessions WHERE agent_id = ?1 \
                 AND (started < ?2 OR (started = ?2 AND session_id > ?3)) \
                 ORDER BY started DESC, session_id LIMIT ?4",
                params![agent.as_str(), started, sid, limit as i64 + 1],
            ),
        })?;
        Ok(page_of(items, limit, |s| {
            cursor::encode(&list, &[&nanos(s.start_time).to_string(), &s.session_id.to_string()])
        }))
    }

    async fn list_sessions_across_agents(
        &self,
        status: Option<SessionStatus>,
        page: PageRequest,
    ) -> Result<Page<Session>, StoreError> {
        let list = match status {
            None => "all sessions".to_owned(),
            Some(st) => format!("all sessions\u{1e}{}", st.as_str()),
        };
        let after = session_cursor(&page, &list)?;
        let limit = limit_of(&page);
        // Newest first, then session id descending (the index `sessions_by_start` walked
        // backwards); the status is read from the stored item (`?1` NULL: any status).
        let status = status.map(|s| s.as_str());
        let items: Vec<Session> = self.read(|c| match &after {
            None => query_items(
                c,
                "SELECT item FROM sessions WHERE (?1 IS NULL OR json_extract(item, '$.status') = ?1) \
                 ORDER BY started DESC, session_id DESC LIMIT ?2",
                params![status, limit as i64 + 1],
            ),
            Some((started, sid)) => query_items(
                c,
                "SELECT item FROM sessions WHERE (?1 IS NULL OR json_extract(item, '$.status') = ?1) \
                 AND (started < ?2 OR (started = ?2 AND session_id < ?3)) \
                 ORDER BY started DESC, session_id DESC LIMIT ?4",
                params![status, started, sid, limit as i64 + 1],
            ),
        })?;
        Ok(page_of(items, limit, |s| {
            cursor::encode(&list, &[&nanos(s.start_time).to_string(), &s.session_id.to_string()])
        }))
    }

    async fn get_task(&self, key: &TaskKey) -> Result<Option<TaskInstance>, StoreError> {
        if let Some(e) = self.cache.session(&key.session_id) {
            return Ok(e.task(&key.task_id).map(|t| (*t.item).clone()));
        }
        self.read(|c| {
            let raw: Option<String> = c
                .prepare_cached("SELECT item FROM tasks WHERE session_id = ?1 AND task_id = ?2")
                .and_then(|mut s| {
                    s.query_row(params![key.session_id.to_string(), key.task_id.as_str()], |r| r.get(0))
                        .optional()
                })
                .map_err(sql_error)?;
            raw.map(|raw| from_json(&raw)).transpose()
        })
    }

    async fn runnable_tasks(&self, agent: &AgentId, now: Timestamp, limit: u32) -> Result<Vec<TaskKey>, StoreError> {
        if !self.cache.has_pending(agent) {
            return Ok(Vec::new());
        }
        self.read(|c| query_keys(c, RUNNABLE_TASKS, params![agent.as_str(), nanos(now), limit]))
    }

    async fn due_timers(&self, now: Timestamp, limit: u32) -> Result<Vec<TaskKey>, StoreError> {
        self.read(|c| query_keys(c, DUE_TIMERS, params![nanos(now), limit]))
    }

    async fn idle_agents(&self, capability: &str, limit: u32) -> Result<Vec<AgentId>, StoreError> {
        self.read(|c| {
            let mut st = c.prepare_cached(IDLE_AGENTS).map_err(sql_error)?;
            let rows = st
                .query_map(params![capability, limit], |r| r.get::<_, String>(0))
                .map_err(sql_error)?;
            rows.map(|r| {
                let id = r.map_err(sql_error)?;
                AgentId::parse(id).map_err(|e| StoreError::corrupt(format!("idle agent's id: {e}")))
            })
            .collect()
        })
    }

    async fn routed_tasks(&self, capability: &str, now: Timestamp, limit: u32) -> Result<Vec<RoutedTask>, StoreError> {
        self.read(|c| {
            let mut st = c.prepare_cached(ROUTED_TASKS).map_err(sql_error)?;
            let rows = st
                .query_map(params![capability, nanos(now), limit], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?))
                })
                .map_err(sql_error)?;
            rows.map(|r| {
                let (session, task, due) = r.map_err(sql_error)?;
                Ok(RoutedTask {
                    key: TaskKey {
                        session_id: SessionId::parse(&session)
                            .map_err(|e| StoreError::corrupt(format!("routed task's session id: {e}")))?,
                        task_id: TaskId::parse(task)
                            .map_err(|e| StoreError::corrupt(format!("routed task's task id: {e}")))?,
                    },
                    due_at: time::from_nanos(due),
                })
            })
            .collect()
        })
    }
}

/// Available agents announcing a capability, available longest first.
const IDLE_AGENTS: &str = "SELECT agent_id FROM idle_agents WHERE capability = ?1 ORDER BY since, agent_id LIMIT ?2";
/// Due pending routed tasks of a capability, oldest first.
const ROUTED_TASKS: &str = "SELECT session_id, task_id, due_at FROM routed_tasks WHERE capability = ?1 AND due_at <= ?2 \
     ORDER BY due_at, session_id, task_id LIMIT ?3";

/// An agent's due pending tasks, oldest first (the partial index `tasks_runnable` answers).
const RUNNABLE_TASKS: &str = "SELECT session_id, task_id FROM tasks WHERE agent_id = ?1 AND status = 'pending' \
     AND due_at <= ?2 ORDER BY due_at LIMIT ?3";
/// Tasks whose timer fell due, earliest first (the partial index `tasks_timers` answers).
const DUE_TIMERS: &str =
    "SELECT session_id, task_id FROM tasks WHERE timer_at IS NOT NULL AND timer_at <= ?1 ORDER BY timer_at LIMIT ?2";

/// The image each write replaces, when it replaces one.
enum Replaced {
    Nothing,
    Session(Image<Session>),
    Task(Image<TaskInstance>),
    Agent(Image<Agent>),
}

/// Checks every write's condition against the state before the batch (as DynamoDB's
/// TransactWriteItems does); nothing is written here.
fn check(tx: &Tx<'_>, writes: &[Write], now: i64) -> Result<Result<Vec<Replaced>, CommitError>, StoreError> {
    let c = tx.conn;
    let task_of = |session: &SessionId, task: &TaskId| -> Result<Option<Image<TaskInstance>>, StoreError> {
        Ok(load_session(tx, session)?.and_then(|e| e.task(task).cloned()))
    };
    let mut loaded = Vec::with_capacity(writes.len());
    for (index, w) in writes.iter().enumerate() {
        let write = w.kind();
        let conflict = |existing| Ok(Err(CommitError::Conflict { index, write, existing }));
        let replaced = match w {
            Write::CreateSession(s) => {
                if load_session(tx, &s.session_id)?.is_some() {
                    return conflict(None);
                }
                Replaced::Nothing
            }
            Write::TransitionSession { from, next } => match load_session(tx, &next.session_id)? {
                Some(e) if e.session.item.status == *from && e.session.item.rev + 1 == next.rev => {
                    Replaced::Session(e.session)
                }
                _ => return conflict(None),
            },
            Write::CheckSessionOpen(id) => match load_session(tx, id)? {
                Some(e) if !e.session.item.status.is_terminal() => Replaced::Nothing,
                _ => return conflict(None),
            },
            Write::CreateTask(t) => {
                if task_of(&t.session_id, &t.task_id)?.is_some() {
                    return conflict(None);
                }
                Replaced::Nothing
            }
            Write::TransitionTask { from, next } => match task_of(&next.session_id, &next.task_id)? {
                Some(cur) if cur.item.status == *from && cur.item.rev + 1 == next.rev => Replaced::Task(cur),
                _ => return conflict(None),
            },
            Write::CreateIdempotencyKey { agent_id, key, .. } => {
                let existing: Option<(String, String, i64)> = c
                    .prepare_cached(
                        "SELECT session_id, fingerprint, expires_at FROM idempotency WHERE agent_id = ?1 AND key = ?2",
                    )
                    .and_then(|mut s| {
                        s.query_row(params![agent_id.as_str(), key.as_str()], |r| {
                            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                        })
                        .optional()
                    })
                    .map_err(sql_error)?;
                // A key past its expiry counts as absent (DynamoDB's `expiresAt < :now`).
                if let Some((session, fingerprint, expires)) = existing
                    && expires >= now
                {
                    let session_id = SessionId::parse(&session)
                        .map_err(|e| StoreError::corrupt(format!("idempotency key's session id: {e}")))?;
                    return conflict(Some(Existing::IdempotencyKey {
                        session_id,
                        fingerprint: Some(fingerprint),
                    }));
                }
                Replaced::Nothing
            }
            Write::ClaimAgent { agent_id, .. } => match load_agent(tx, agent_id)? {
                Some(a) if a.item.is_available() => Replaced::Agent(a),
                _ => return conflict(None),
            },
            Write::ClaimAgentFor {
                agent_id, capability, ..
            } => match load_agent(tx, agent_id)? {
                Some(a) if a.item.is_available() && indexed_capabilities(&a.item).contains(&capability.as_str()) => {
                    Replaced::Agent(a)
                }
                _ => return conflict(None),
            },
            Write::ReleaseAgent { agent_id, dispatch } => match load_agent(tx, agent_id)? {
                Some(a) if a.item.inflight.as_ref().is_some_and(|i| &i.dispatch == dispatch) => Replaced::Agent(a),
                _ => return conflict(None),
            },
            Write::HandOverAgent { agent_id, from, to } => match load_agent(tx, agent_id)? {
                Some(a) if a.item.can_hand_over(from, to) => Replaced::Agent(a),
                _ => return conflict(None),
            },
            Write::CreateDeliveryRecord { id, .. } => {
                let expires: Option<i64> = c
                    .prepare_cached("SELECT expires_at FROM deliveries WHERE id = ?1")
                    .and_then(|mut s| s.query_row([id], |r| r.get(0)).optional())
                    .map_err(sql_error)?;
                if expires.is_some_and(|e| e >= now) {
                    return conflict(None);
                }
                Replaced::Nothing
            }
            Write::ExpireDeliveryRecord { id } => {
                let exists: Option<i64> = c
                    .prepare_cached("SELECT 1 FROM deliveries WHERE id = ?1")
                    .and_then(|mut s| s.query_row([id], |r| r.get(0)).optional())
                    .map_err(sql_error)?;
                if exists.is_none() {
                    return conflict(None);
                }
                Replaced::Nothing
            }
        };
        loaded.push(replaced);
    }
    Ok(Ok(loaded))
}

/// The JSON a write stores as its item's new image (a session's or a task's), if it stores one.
fn encode_image(w: &Write) -> Result<Option<String>, StoreError> {
    match w {
        Write::CreateSession(s) | Write::TransitionSession { next: s, .. } => to_json(s).map(Some),
        Write::CreateTask(t) | Write::TransitionTask { next: t, .. } => to_json(t).map(Some),
        _ => Ok(None),
    }
}

/// Writes what [`check`] allowed; `encoded` holds each write's [`encode_image`].
fn apply(
    tx: &Tx<'_>,
    writes: Vec<Write>,
    encoded: Vec<Option<String>>,
    loaded: Vec<Replaced>,
    now: i64,
) -> Result<(), StoreError> {
    let c = tx.conn;
    let exec = |sql: &str, p: &[&dyn rusqlite::ToSql]| -> Result<(), StoreError> {
        c.prepare_cached(sql)
            .and_then(|mut s| s.execute(p))
            .map(drop)
            .map_err(sql_error)
    };
    for ((w, encoded), old) in writes.into_iter().zip(encoded).zip(loaded) {
        match w {
            Write::CreateSession(s) | Write::TransitionSession { next: s, .. } => {
                let old = match old {
                    Replaced::Session(o) => Some(o.item),
                    _ => None,
                };
                let created = old.is_none();
                let new = encoded.map_or_else(|| to_json(&s), Ok)?;
                let key = s.session_id.to_string();
                // A transition updates the item in place: a session's agent and start time never
                // change, so its index entries stay (a REPLACE would delete and insert the row and
                // both index entries on every transition).
                let updated = match &old {
                    Some(o) => {
                        debug_assert!(o.agent_id == s.agent_id && o.start_time == s.start_time);
                        c.prepare_cached("UPDATE sessions SET item = ?2 WHERE session_id = ?1")
                            .and_then(|mut st| st.execute(params![key, new]))
                            .map_err(sql_error)?
                    }
                    None => 0,
                };
                if updated == 0 {
                    exec(
                        "INSERT OR REPLACE INTO sessions (session_id, agent_id, started, item) VALUES (?1, ?2, ?3, ?4)",
                        &[&key, &s.agent_id.as_str(), &nanos(s.start_time), &new],
                    )?;
                }
                let id = s.session_id;
                let image = Image::new(new, s);
                let change = Change::Session {
                    old,
                    new: Some(image.item.clone()),
                };
                append_feed(tx, "session", &image.raw, change)?;
                if created && tx.staged.borrow().session(&id).is_none() && tx.cache.session(&id).is_none() {
                    // Checked absent before the batch, and no task of it written since: it has none.
                    tx.staged.borrow_mut().put_session(
                        id,
                        Some(SessionEntry {
                            session: image,
                            tasks: Vec::new(),
                        }),
                    );
                } else {
                    stage_session(tx, id, |e| e.session = image)?;
                }
            }
            Write::CreateTask(t) | Write::TransitionTask { next: t, .. } => {
                let old = match old {
                    Replaced::Task(o) => Some(o.item),
                    _ => None,
                };
                // Routed tasks wait in their capability's list, not in an agent's.
                let was_pending = old.as_ref().filter(|o| o.is_runnable_by_agent());
                let is_pending = t.is_runnable_by_agent();
                match (was_pending, is_pending) {
                    (None, true) => tx.staged.borrow_mut().count_pending(&t.agent_id, 1),
                    (Some(o), false) => tx.staged.borrow_mut().count_pending(&o.agent_id, -1),
                    _ => {}
                }
                reindex_routed_task(tx, old.as_deref(), &t)?;
                let new = encoded.map_or_else(|| to_json(&t), Ok)?;
                let row: [&dyn rusqlite::ToSql; 7] = [
                    &t.session_id.to_string(),
                    &t.task_id.as_str(),
                    &t.agent_id.as_str(),
                    &status_column(&t),
                    &nanos(t.due_at),
                    &t.timer_at.map(nanos),
                    &new,
                ];
                // A transition updates the row it checked (cheaper than a REPLACE's delete and
                // insert of the row and every index entry); a new task is inserted.
                let updated = match old {
                    Some(_) => c
                        .prepare_cached(
                            "UPDATE tasks SET agent_id = ?3, status = ?4, due_at = ?5, timer_at = ?6, item = ?7 \
                             WHERE session_id = ?1 AND task_id = ?2",
                        )
                        .and_then(|mut s| s.execute(&row[..]))
                        .map_err(sql_error)?,
                    None => 0,
                };
                if updated == 0 {
                    exec(
                        "INSERT OR REPLACE INTO tasks (session_id, task_id, agent_id, status, due_at, timer_at, item) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                        &row,
                    )?;
                }
                let id = t.session_id;
                let image = Image::new(new, t);
                let change = Change::Task {
                    old,
                    new: Some(image.item.clone()),
                };
                append_feed(tx, "task", &image.raw, change)?;
                stage_session(tx, id, |e| e.put_task(image))?;
            }
            Write::CreateIdempotencyKey {
                agent_id,
                key,
                session_id,
                fingerprint,
                ttl,
            } => exec(
                "INSERT OR REPLACE INTO idempotency (agent_id, key, session_id, fingerprint, expires_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                &[
                    &agent_id.as_str(),
                    &key.as_str(),
                    &session_id.to_string(),
                    &fingerprint,
                    &now.saturating_add(ttl.as_secs() as i64),
                ],
            )?,
            Write::ClaimAgent { agent_id, inflight } | Write::ClaimAgentFor { agent_id, inflight, .. } => {
                let Replaced::Agent(old) = old else {
                    unreachable!("checked: the agent exists")
                };
                debug_assert_eq!(old.item.id(), &agent_id);
                let mut agent = (*old.item).clone();
                agent.inflight = Some(inflight);
                save_agent(tx, Some(&old), &agent)?;
            }
            Write::ReleaseAgent { .. } => {
                let Replaced::Agent(old) = old else {
                    unreachable!("checked: the agent exists")
                };
                let mut agent = (*old.item).clone();
                agent.inflight = None;
                save_agent(tx, Some(&old), &agent)?;
            }
            Write::HandOverAgent { to, .. } => {
                let Replaced::Agent(old) = old else {
                    unreachable!("checked: the agent exists")
                };
                let mut agent = (*old.item).clone();
                agent.inflight = Some(to);
                save_agent(tx, Some(&old), &agent)?;
            }
            Write::CreateDeliveryRecord { id, expires_at } => exec(
                "INSERT OR REPLACE INTO deliveries (id, expires_at) VALUES (?1, ?2)",
                &[&id, &expires_at.timestamp()],
            )?,
            Write::ExpireDeliveryRecord { id } => exec("DELETE FROM deliveries WHERE id = ?1", &[&id])?,
            Write::CheckSessionOpen(_) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use opscore_core::task::TaskStatus;

    fn details(id: &str) -> AgentDetails {
        AgentDetails {
            agent_id: AgentId::parse(id).unwrap(),
            agent_name: id.into(),
            version: "1".into(),
            capabilities: vec![],
            contact_endpoint: "http://127.0.0.1:9/task".into(),
            metadata: Default::default(),
            registration_time: None,
        }
    }

    /// The hot reads are prepared once per connection, not again on every new binding (which
    /// SQLite's STAT4 build does for a parameter compared with a partial index's WHERE unless
    /// the planner's stability guarantee is on).
    #[test]
    fn hot_reads_are_not_prepared_again_for_new_bindings() {
        let store = SqliteStore::temporary().unwrap();
        let c = connect(&store.path, Durability::Throwaway, false).unwrap();
        for (sql, bindings) in [
            (
                RUNNABLE_TASKS,
                vec![params!["a", 1, 10], params!["b", 2, 10], params!["c", 3, 5]],
            ),
            (DUE_TIMERS, vec![params![1, 10], params![2, 10], params![3, 5]]),
        ] {
            for p in bindings {
                let mut st = c.prepare_cached(sql).unwrap();
                st.query(p).unwrap().next().unwrap();
            }
            let st = c.prepare_cached(sql).unwrap();
            assert_eq!(st.get_status(rusqlite::StatementStatus::RePrepare), 0, "{sql}");
        }
    }

    /// A write undone after it staged an image must leave neither the image in the cache nor its
    /// change in the feed (the contract suite's conflicts are found before anything is staged).
    #[tokio::test]
    async fn an_undone_write_leaves_nothing_in_the_cache_or_the_feed() {
        let store = SqliteStore::temporary().unwrap();
        let kept = Agent::new(details("kept"), SystemClock.now());
        let undone = Agent::new(details("undone"), SystemClock.now());
        let (k, u) = (kept.clone(), undone.clone());
        store
            .writer
            .write(move |tx| {
                save_agent(tx, None, &k)?;
                Ok(Verdict::Keep(()))
            })
            .await
            .unwrap();
        store
            .writer
            .write(move |tx| {
                save_agent(tx, None, &u)?;
                Ok(Verdict::Undo(()))
            })
            .await
            .unwrap();
        assert_eq!(store.get_agent(kept.id()).await.unwrap(), Some(kept.clone()));
        assert_eq!(store.get_agent(undone.id()).await.unwrap(), None);
        assert!(store.cache.agent(undone.id()).is_none());
        let feed = store.read_feed(0, 10).unwrap();
        assert_eq!(feed.len(), 1, "{feed:?}");
        assert_eq!(feed[0].1.agent_id(), Some(kept.id()));
    }

    /// A job that leaves writes it wants undone (here: an undo after a write; in practice an I/O
    /// error half-way) rolls its whole group back, as jobs run without a savepoint each: the jobs
    /// grouped before it are answered "unavailable" and nothing of them is committed, and the
    /// jobs behind it run in the next group.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_job_undone_after_writing_rolls_its_group_back_and_the_rest_runs_next() {
        let store = Arc::new(SqliteStore::temporary().unwrap());
        let agent = |id: &str| Agent::new(details(id), SystemClock.now());
        // Holds the writer while the next three are queued, so that they share one group.
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let holder = {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .writer
                    .write(move |_| {
                        started_tx.send(()).unwrap();
                        std::thread::sleep(Duration::from_millis(300));
                        Ok(Verdict::Keep(()))
                    })
                    .await
            })
        };
        tokio::task::block_in_place(|| started_rx.recv()).unwrap();
        let queued = |a: Agent, verdict: fn(()) -> Verdict<()>| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .writer
                    .write(move |tx| {
                        save_agent(tx, None, &a)?;
                        Ok(verdict(()))
                    })
                    .await
            })
        };
        let before = queued(agent("before"), Verdict::Keep);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let spoiler = queued(agent("spoiler"), Verdict::Undo);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let behind = queued(agent("behind"), Verdict::Keep);
        holder.await.unwrap().unwrap();
        let unavailable = |r: Result<(), StoreError>| matches!(r, Err(StoreError::Unavailable { .. }));
        assert!(unavailable(before.await.unwrap()));
        assert!(unavailable(spoiler.await.unwrap()));
        behind.await.unwrap().unwrap();
        for (id, there) in [("before", false), ("spoiler", false), ("behind", true)] {
            let id = AgentId::parse(id).unwrap();
            assert_eq!(store.get_agent(&id).await.unwrap().is_some(), there, "{id}");
        }
        let feed: Vec<_> = store.read_feed(0, 10).unwrap();
        assert_eq!(feed.len(), 1, "{feed:?}");
        assert_eq!(feed[0].1.agent_id().map(AgentId::as_str), Some("behind"));
    }

    /// After a restart the feed gives back, with its image, every change the runner acts on (an
    /// agent's, a task becoming pending), and of the others only their place in the order.
    #[tokio::test]
    async fn the_feed_table_keeps_the_images_the_runner_acts_on() {
        let store = SqliteStore::temporary().unwrap();
        let now = SystemClock.now();
        store.register_agent(details("fed"), now).await.unwrap();
        let def = WorkflowDefinition::from_value(serde_json::json!({
            "id": "fed", "name": "Fed", "tasks": [{"taskId": "t1", "name": "T1"}]
        }))
        .unwrap();
        let session = Session::start(AgentId::parse("fed").unwrap(), def, None, None, now);
        let pending = TaskInstance::new(
            &session,
            &session.definition.tasks[0],
            serde_json::Value::Null,
            now,
            Duration::from_secs(60),
        );
        let claimed = pending.claim(now, now).unwrap();
        store
            .commit(vec![Write::CreateSession(session), Write::CreateTask(pending)])
            .await
            .unwrap();
        store
            .commit(vec![Write::TransitionTask {
                from: TaskStatus::Pending,
                next: claimed,
            }])
            .await
            .unwrap();
        // As after a restart: nothing in memory, the table answers.
        store.cache.forget_changes(u64::MAX);
        let feed: Vec<_> = store.read_feed(0, 10).unwrap().into_iter().map(|(_, c)| c).collect();
        let shape: Vec<_> = feed
            .iter()
            .map(|c| match c {
                Change::Agent { new, .. } => ("agent", new.is_some()),
                Change::Session { new, .. } => ("session", new.is_some()),
                Change::Task { new, .. } => ("task", new.as_ref().map(|t| t.status) == Some(TaskStatus::Pending)),
            })
            .collect();
        assert_eq!(
            shape,
            [("agent", true), ("session", false), ("task", true), ("task", false)],
            "{feed:?}"
        );
    }

    #[test]
    fn the_runnable_index_names_the_pending_status() {
        // tasks_runnable is a partial index on the literal 'pending'.
        assert_eq!(TaskStatus::Pending.as_str(), "pending");
    }
}
