//! The runner's side of the change feed in the local stack: read changes in commit order, hand
//! each agent's changes to a lane of their own (in order within the agent, agents independent of
//! each other, so one agent's slow AgentKit call holds up nobody else), and report back how far
//! everything is handled so the source can forget it durably.

use opscore_core::runner::Runner;
use opscore_core::store::{Change, Lane as ChangeLane};
use opscore_sqlite::SqliteStore;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio::sync::{Notify, watch};

/// Changes read but not yet handled, at most: bounds memory when the runner falls behind.
const MAX_AHEAD: usize = 10_000;
/// Changes read from the source at once.
const READ_BATCH: usize = 256;
/// How long a stop waits for the changes being handled (a dispatch's own timeout is 10 s).
const STOP_GRACE: Duration = Duration::from_secs(15);

/// Where changes come from. `position` is increasing in commit order.
pub enum Source {
    /// The SQLite store's durable feed: on start, everything not yet trimmed is read again.
    Sqlite(Arc<SqliteStore>),
    /// A channel of changes: the in-memory store's, or the one [`pump_stream`] fills from
    /// DynamoDB's stream.
    Channel {
        rx: UnboundedReceiver<Change>,
        next_position: u64,
    },
}

impl Source {
    /// The next changes after `after` (the last position read), or `None` once stopping.
    async fn next(&mut self, after: u64, stop: &mut watch::Receiver<bool>) -> Option<Vec<(u64, Change)>> {
        loop {
            if *stop.borrow() {
                return None;
            }
            match self {
                Source::Sqlite(store) => {
                    // Register for the signal before reading, so a commit in between is not missed.
                    let signal = store.feed_signal();
                    let notified = signal.notified();
                    // Recent changes are in memory; a read of the table (after a restart, or far
                    // behind) runs off the async workers, which serve the HTTP requests.
                    let read = match store.recent_changes(after, READ_BATCH) {
                        Some(changes) => Ok(Ok(changes)),
                        None => {
                            let db = store.clone();
                            tokio::task::spawn_blocking(move || db.read_feed(after, READ_BATCH)).await
                        }
                    };
                    match read {
                        Ok(Ok(changes)) if !changes.is_empty() => return Some(changes),
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => tracing::warn!(error = %e, "reading the change feed failed"),
                        Err(e) => tracing::warn!(error = %e, "reading the change feed failed"),
                    }
                    tokio::select! {
                        _ = notified => {}
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = stop.changed() => return None,
                    }
                }
                Source::Channel { rx, next_position } => {
                    return tokio::select! {
                        first = rx.recv() => {
                            let mut batch = vec![first?];
                            while batch.len() < READ_BATCH && let Ok(c) = rx.try_recv() {
                                batch.push(c);
                            }
                            Some(number(batch, next_position))
                        }
                        _ = stop.changed() => None,
                    };
                }
            }
        }
    }
}

/// Follows DynamoDB's stream (DynamoDB Local or AWS) into a channel for [`Source::Channel`]: a
/// poll is never cancelled half-way (that could drop records), whatever the consumer is doing.
/// Woken by the writes this process serves, with a slow poll for other writers.
pub async fn pump_stream(
    mut tail: opscore_dynamo::StreamTail,
    wake: Arc<Notify>,
    to: UnboundedSender<Change>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        match tail.poll().await {
            Ok(changes) if !changes.is_empty() => {
                for c in changes {
                    if to.send(c).is_err() {
                        return;
                    }
                }
                continue; // drain until the stream is empty
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "stream poll failed"),
        }
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = stop.changed() => return,
        }
    }
}

fn number(changes: Vec<Change>, next: &mut u64) -> Vec<(u64, Change)> {
    changes
        .into_iter()
        .map(|c| {
            *next += 1;
            (*next, c)
        })
        .collect()
}

type Lane = UnboundedSender<(u64, Change)>;

/// Runs until `stop`: reads the source, handles every change through `runner` in per-agent
/// lanes, and tells the source how far it is safe to forget. On stop, the changes being handled
/// are finished (within `STOP_GRACE`); queued ones stay in a durable source for the next start.
pub async fn consume(source: Source, runner: Arc<Runner>, mut stop: watch::Receiver<bool>) {
    let trimmer = Trimmer::of(&source);
    // The reader runs on its own and hands over whole batches: a read is never cancelled half-way
    // (with the SQLite feed that would be a decoded batch thrown away), and a full channel holds
    // it back when the lanes fall behind.
    let (batches_tx, mut batches) = tokio::sync::mpsc::channel::<Vec<(u64, Change)>>(2);
    let reader = tokio::spawn(read_all(source, batches_tx, stop.clone()));
    let lanes: Arc<Mutex<HashMap<Option<ChangeLane>, Lane>>> = Arc::default();
    let (done_tx, mut done_rx) = unbounded_channel::<u64>();
    let mut pending: BTreeSet<u64> = BTreeSet::new();
    let mut last_read = 0u64;
    loop {
        tokio::select! {
            batch = batches.recv(), if pending.len() < MAX_AHEAD => {
                let Some(batch) = batch else { break };
                let mut map = lanes.lock().unwrap_or_else(|e| e.into_inner());
                for (position, change) in batch {
                    last_read = last_read.max(position);
                    pending.insert(position);
                    let key = change.lane();
                    let lane = map.entry(key.clone()).or_insert_with(|| {
                        spawn_lane(key, runner.clone(), lanes.clone(), done_tx.clone(), stop.clone())
                    });
                    // A lane only ends under the map's lock once its queue is empty: it is alive.
                    let _ = lane.send((position, change));
                }
            }
            Some(position) = done_rx.recv() => {
                pending.remove(&position);
                while let Ok(p) = done_rx.try_recv() {
                    pending.remove(&p);
                }
            }
            _ = stop.changed() => break,
        }
        trimmer.handled_through(watermark(&pending, last_read));
    }
    reader.abort();
    // Stopping: wait for the changes being handled now, then record how far we got.
    drop(done_tx);
    let deadline = tokio::time::Instant::now() + STOP_GRACE;
    while !pending.is_empty() {
        match tokio::time::timeout_at(deadline, done_rx.recv()).await {
            Ok(Some(position)) => {
                pending.remove(&position);
            }
            // Every lane has ended (the rest of their queues was dropped) or the grace ran out.
            Ok(None) | Err(_) => break,
        }
    }
    trimmer.finish(watermark(&pending, last_read)).await;
}

/// Everything below the oldest change still pending is handled (or all that was read).
fn watermark(pending: &BTreeSet<u64>, last_read: u64) -> u64 {
    pending.first().map(|p| p - 1).unwrap_or(last_read)
}

async fn read_all(
    mut source: Source,
    to: tokio::sync::mpsc::Sender<Vec<(u64, Change)>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut after = 0;
    while let Some(batch) = source.next(after, &mut stop).await {
        after = batch.last().map(|(p, _)| *p).unwrap_or(after);
        if to.send(batch).await.is_err() {
            return;
        }
    }
}

/// Records how far the feed is handled, off the consumer's path (a trim is a write): at most one
/// trim under way, and not more often than [`TRIM_EVERY`].
struct Trimmer {
    store: Option<Arc<SqliteStore>>,
    state: Arc<Mutex<TrimState>>,
}

#[derive(Default)]
struct TrimState {
    trimmed: u64,
    running: Option<tokio::task::JoinHandle<()>>,
    last: Option<tokio::time::Instant>,
}

/// How often the handled part of the feed is trimmed at most. Small trims often: a trim is a
/// DELETE in the writer's transaction, and the writes grouped with it wait for it (measured under
/// `wrk` at 20,000 reports/s: trimming every 2 s gave a p99 of 25 ms, every 100 ms 11 ms, every
/// 10 ms 7.6-10.6 ms before the checkpoints were made small too).
const TRIM_EVERY: Duration = Duration::from_millis(10);

impl Trimmer {
    fn of(source: &Source) -> Trimmer {
        Trimmer {
            store: match source {
                Source::Sqlite(store) => Some(store.clone()),
                // A stream keeps its own 24 h; the in-memory channel has already let go.
                Source::Channel { .. } => None,
            },
            state: Arc::default(),
        }
    }

    fn handled_through(&self, through: u64) {
        let Some(store) = &self.store else { return };
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let busy = st.running.as_ref().is_some_and(|t| !t.is_finished());
        let recent = st.last.is_some_and(|t| t.elapsed() < TRIM_EVERY);
        if through <= st.trimmed || busy || recent {
            return;
        }
        st.last = Some(tokio::time::Instant::now());
        let (store, state) = (store.clone(), self.state.clone());
        st.running = Some(tokio::spawn(async move {
            match store.trim_feed(through).await {
                Ok(_) => {
                    let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
                    st.trimmed = st.trimmed.max(through);
                }
                Err(e) => tracing::warn!(error = %e, "recording the feed position failed; it is retried"),
            }
        }));
    }

    /// At stop: waits for the trim under way, then records the final position.
    async fn finish(&self, through: u64) {
        let Some(store) = &self.store else { return };
        let running = self.state.lock().unwrap_or_else(|e| e.into_inner()).running.take();
        if let Some(t) = running {
            let _ = t.await;
        }
        if let Err(e) = store.trim_feed(through).await {
            tracing::warn!(error = %e, "recording the final feed position failed; the rest is handled again");
        }
    }
}

fn spawn_lane(
    key: Option<ChangeLane>,
    runner: Arc<Runner>,
    lanes: Arc<Mutex<HashMap<Option<ChangeLane>, Lane>>>,
    done: UnboundedSender<u64>,
    stop: watch::Receiver<bool>,
) -> Lane {
    let (tx, mut rx) = unbounded_channel::<(u64, Change)>();
    tokio::spawn(async move {
        loop {
            let next = match rx.try_recv() {
                Ok(item) => item,
                Err(_) => {
                    let mut map = lanes.lock().unwrap_or_else(|e| e.into_inner());
                    match rx.try_recv() {
                        Ok(item) => item,
                        Err(_) => {
                            // Nothing queued, and nothing can be queued while we hold the map.
                            map.remove(&key);
                            return;
                        }
                    }
                }
            };
            if *stop.borrow() {
                // Stopping: leave the rest for the next start (a durable source still has it).
                lanes.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
                return;
            }
            let (position, change) = next;
            deliver(&runner, &change).await;
            let _ = done.send(position);
            // A busy agent's lane would otherwise run its whole queue without giving the worker
            // back (its reads do not yield): the HTTP requests on that worker would wait.
            tokio::task::yield_now().await;
        }
    });
    tx
}

/// Like Lambda's stream event source: a failing change is retried (a few times here) before the
/// consumer moves on, so one bad change cannot stall its agent for good; the task's own timer
/// brings back whatever was left undone.
async fn deliver(runner: &Runner, change: &Change) {
    for attempt in 1..=3 {
        match runner.on_change(change).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(attempt, error = %e, "change handling failed");
                tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
            }
        }
    }
}
