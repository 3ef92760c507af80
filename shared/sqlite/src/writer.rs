//! The one writer: a thread that owns the write connection and commits every write of the store.
//!
//! Callers send a job and wait for its answer. The thread takes every job that is waiting (up to
//! [`MAX_GROUP`]) into one transaction, runs them one after the other, commits once, and only then
//! answers: an acknowledged write is committed (group commit — one commit for many writes is what
//! makes a durable store fast).
//!
//! No savepoint per job: a job decides whether its writes stand before it writes (the port's
//! conditions are checked first), so a job that is undone (`Verdict::Undo`) or fails has, in
//! every case but an I/O or encoding error half-way, written nothing, and there is nothing to roll
//! back (whether it wrote is read off the connection's change counter). Measured, a savepoint around every job was three statements more per job and a copy of
//! every page it touched into the sub-journal. When a job does leave writes that must go (an error
//! after its first write, or an undo after writing), the whole group's transaction is rolled back:
//! the jobs that ran before it in the group are answered "unavailable, nothing written" (they were
//! not committed; a caller retries), so is that job unless it ran first (then it gets its own
//! answer), and the jobs not yet run go into the next group.

use crate::cache::{ItemCache, Staged};
use opscore_core::store::StoreError;
use rusqlite::Connection;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;
use tokio::sync::{Notify, oneshot};

/// At most this many jobs share one transaction: bounds the latency a big group adds.
pub const MAX_GROUP: usize = 256;

/// What a job's body sees: the connection (inside the group's transaction), a flag it sets when it
/// appended to the change feed (so the feed's consumer is woken after the commit), the committed
/// item cache, and the images the open group has staged for it.
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

/// Whether a job's writes stay (`Keep`) or are undone (`Undo`, a condition did not hold). A job
/// should decide `Undo` before it writes: an undo after a write costs the whole group a rollback.
pub enum Verdict<T> {
    Keep(T),
    Undo(T),
}

/// What running a job gave: the answer to send once the group's fate is known, and whether the job
/// left writes that must be undone (the group is then rolled back).
struct Ran {
    answer: Box<dyn FnOnce(Result<(), StoreError>) + Send>,
    spoiled: bool,
}

trait Job: Send {
    fn run(self: Box<Self>, tx: &Tx<'_>) -> Ran;
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
    fn run(self: Box<Self>, tx: &Tx<'_>) -> Ran {
        let this = *self;
        let changes_before = tx.conn.total_changes();
        let appended_before = tx.appended.get();
        tx.staged.borrow_mut().begin_job();
        let result = (this.body)(tx);
        let kept = matches!(result, Ok(Verdict::Keep(_)));
        let mut spoiled = false;
        if !kept {
            tx.appended.set(appended_before);
            tx.staged.borrow_mut().undo_job();
            spoiled = tx.conn.total_changes() != changes_before;
        }
        let outcome = result.map(|v| match v {
            Verdict::Keep(v) | Verdict::Undo(v) => v,
        });
        let reply = this.reply;
        // Undone too: its condition may have been judged on the writes of jobs before it in the
        // group, which stand only if the group commits.
        let answer = Box::new(move |committed: Result<(), StoreError>| {
            let _ = reply.send(committed.and(outcome));
        });
        Ran { answer, spoiled }
    }
    fn fail(self: Box<Self>, e: StoreError) {
        let _ = self.reply.send(Err(e));
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
    // Jobs taken from the channel but not run: they were behind a job that spoiled its group.
    let mut carried: VecDeque<Box<dyn Job>> = VecDeque::new();
    loop {
        let first = match carried.pop_front() {
            Some(j) => j,
            None => match rx.recv() {
                Ok(j) => j,
                Err(_) => break,
            },
        };
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match carried.pop_front().map(Ok).unwrap_or_else(|| rx.try_recv()) {
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
        let mut answers = Vec::with_capacity(group.len());
        let mut jobs = group.into_iter();
        let mut spoiler = None;
        for job in jobs.by_ref() {
            let ran = job.run(&tx);
            if ran.spoiled {
                spoiler = Some(ran.answer);
                break;
            }
            answers.push(ran.answer);
        }
        if let Some(spoiler) = spoiler {
            // The only way to undo that job's writes is to undo the group's.
            if let Err(e) = conn.execute_batch("ROLLBACK") {
                tracing::warn!(error = %e, "rolling back a failed group of writes failed");
            }
            let undone = StoreError::unavailable("a write grouped with this one failed; nothing was written, retry");
            // Its own outcome (its error, or what it decided when it undid itself) stands if no
            // job before it in the group, now rolled back, could have swayed it.
            spoiler(if answers.is_empty() {
                Ok(())
            } else {
                Err(undone.clone())
            });
            for answer in answers {
                answer(Err(undone.clone()));
            }
            carried.extend(jobs);
            continue;
        }
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
