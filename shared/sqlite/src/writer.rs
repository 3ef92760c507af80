//! The one writer: a thread that owns the write connection and commits every write of the store.
//!
//! Callers send a job and wait for its answer. The thread takes every job that is waiting (up to
//! [`MAX_GROUP`]) into one transaction, runs each inside its own savepoint (so one job's failed
//! condition undoes only that job), commits once, and only then answers: an acknowledged write is
//! committed (group commit — one commit for many writes is what makes a durable store fast).

use crate::cache::{ItemCache, Staged};
use opscore_core::store::StoreError;
use rusqlite::Connection;
use std::cell::{Cell, RefCell};
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;
use tokio::sync::{Notify, oneshot};

/// At most this many jobs share one transaction: bounds the latency a big group adds.
pub const MAX_GROUP: usize = 256;

/// What a job's body sees: the connection (inside a transaction and a savepoint), a flag it
/// sets when it appended to the change feed (so the feed's consumer is woken after the commit),
/// the committed item cache, and the images the open group has staged for it.
pub struct Tx<'a> {
    pub conn: &'a Connection,
    appended: &'a Cell<bool>,
    pub(crate) cache: &'a ItemCache,
    pub(crate) staged: &'a RefCell<Staged>,
}

impl Tx<'_> {
    pub fn appended_to_feed(&self) {
        self.appended.set(true);
    }
}

/// Whether a job's writes stay (`Keep`) or are undone (`Undo`, a condition did not hold).
pub enum Verdict<T> {
    Keep(T),
    Undo(T),
}

trait Job: Send {
    /// Runs the body in a savepoint; returns what to answer once the commit's fate is known.
    fn run(self: Box<Self>, tx: &Tx<'_>) -> Box<dyn FnOnce(Result<(), StoreError>) + Send>;
    fn fail(self: Box<Self>, e: StoreError);
}

struct Typed<T, F> {
    body: F,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<T, F> Job for Typed<T, F>
where
    T: Send + 'static,
    F: FnOnce(&Tx<'_>) -> Result<Verdict<T>, StoreError> + Send,
{
    fn run(self: Box<Self>, tx: &Tx<'_>) -> Box<dyn FnOnce(Result<(), StoreError>) + Send> {
        let this = *self;
        let outcome = savepoint(tx, this.body);
        let reply = this.reply;
        Box::new(move |committed| {
            let _ = reply.send(committed.and(outcome));
        })
    }
    fn fail(self: Box<Self>, e: StoreError) {
        let _ = self.reply.send(Err(e));
    }
}

fn savepoint<T>(tx: &Tx<'_>, body: impl FnOnce(&Tx<'_>) -> Result<Verdict<T>, StoreError>) -> Result<T, StoreError> {
    // Cached statements: parsing these three on every write was measurable.
    let run = |sql: &str| {
        tx.conn
            .prepare_cached(sql)
            .and_then(|mut s| s.execute([]))
            .map(drop)
            .map_err(crate::sql_error)
    };
    let appended_before = tx.appended.get();
    tx.staged.borrow_mut().begin_job();
    run("SAVEPOINT job")?;
    let result = body(tx);
    if !matches!(result, Ok(Verdict::Keep(_))) {
        tx.appended.set(appended_before);
        tx.staged.borrow_mut().undo_job();
        run("ROLLBACK TO job")?;
    }
    run("RELEASE job")?;
    match result? {
        Verdict::Keep(v) | Verdict::Undo(v) => Ok(v),
    }
}

pub struct Writer {
    jobs: Option<mpsc::Sender<Box<dyn Job>>>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    /// `after_commit` runs after every commit that wrote something (the checkpointer's cue).
    pub fn start(
        conn: Connection,
        feed: Arc<Notify>,
        cache: Arc<ItemCache>,
        after_commit: impl Fn() + Send + 'static,
    ) -> Writer {
        let (tx, rx) = mpsc::channel::<Box<dyn Job>>();
        let thread = std::thread::Builder::new()
            .name("opscore-sqlite-writer".into())
            .spawn(move || run(conn, rx, feed, cache, after_commit))
            .expect("spawn the writer thread");
        Writer {
            jobs: Some(tx),
            thread: Some(thread),
        }
    }

    /// Runs `body` in the next group's transaction; answers once that transaction committed.
    pub async fn write<T, F>(&self, body: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Tx<'_>) -> Result<Verdict<T>, StoreError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: Box<dyn Job> = Box::new(Typed { body, reply });
        self.jobs
            .as_ref()
            .expect("open until dropped")
            .send(job)
            .map_err(|_| StoreError::unavailable("the store is closed"))?;
        answer
            .await
            .map_err(|_| StoreError::unavailable("the store's writer stopped"))?
    }
}

impl Drop for Writer {
    /// Lets the writer finish every job already sent, checkpoint and close its connection.
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(
    conn: Connection,
    rx: mpsc::Receiver<Box<dyn Job>>,
    feed: Arc<Notify>,
    cache: Arc<ItemCache>,
    after_commit: impl Fn(),
) {
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(j) => group.push(j),
                Err(_) => break,
            }
        }
        let begin = conn.prepare_cached("BEGIN IMMEDIATE").and_then(|mut s| s.execute([]));
        if let Err(e) = begin {
            let e = crate::sql_error(e);
            for job in group {
                job.fail(e.clone());
            }
            continue;
        }
        let appended = Cell::new(false);
        let staged = RefCell::new(Staged::default());
        let tx = Tx {
            conn: &conn,
            appended: &appended,
            cache: &cache,
            staged: &staged,
        };
        let answers: Vec<_> = group.into_iter().map(|job| job.run(&tx)).collect();
        let committed = conn
            .prepare_cached("COMMIT")
            .and_then(|mut s| s.execute([]))
            .map(drop)
            .map_err(|e| {
                let _ = conn.execute_batch("ROLLBACK");
                crate::sql_error(e)
            });
        let ok = committed.is_ok();
        // Before any answer: a caller reads its own write back from the cache.
        if ok {
            cache.publish(staged.into_inner());
        }
        for answer in answers {
            answer(committed.clone());
        }
        if ok && appended.get() {
            feed.notify_one();
        }
        if ok {
            after_commit();
        }
    }
    // Every sender is gone: fold the WAL into the database so the next start opens a tidy file.
    if let Err(e) = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)") {
        tracing::warn!(error = %e, "final checkpoint failed");
    }
}
