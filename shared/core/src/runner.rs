//! The workflow runner: reacts to table changes and to timers, dispatches tasks to idle agents
//! through AgentKit, reads completion from state reports, retries with backoff, and ends every
//! session `completed` or `failed` with its cause.
//!
//! Every step is a conditional write against the state it read, so two runners (or one stream
//! batch delivered twice) can race freely: one wins, the other re-reads and finds nothing to do.

use crate::agent::{Agent, Inflight, KnownState};
use crate::app::{LOST_WRITE_RETRIES, Settings};
use crate::ids::{AgentId, DispatchId, SessionId};
use crate::images::{self, RecentImages, Source};
use crate::metrics::Metrics;
use crate::session::{FailureCause, FailureCode, Session, SessionStatus};
use crate::store::*;
use crate::task::{TaskInstance, TaskKey, TaskStatus};
use crate::time::{Clock, Timestamp, after, render};
use crate::wake_up::{TimerQueue, TimerQueueError, WakeUp, WakeUpOutcome, wake_up_delay};
use async_trait::async_trait;
use serde_json::{Value, json};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod routing;

/// What the runner sends to AgentKit (`POST /v1/agents/{agentId}/run`).
#[derive(Debug, Clone, PartialEq)]
pub struct DispatchRequest {
    pub agent_id: AgentId,
    pub session_id: SessionId,
    /// `opscore_task_id`: names this attempt.
    pub dispatch_id: String,
    pub task_name: String,
    pub payload: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub enum DispatchOutcome {
    /// AgentKit accepted (2xx): scheduled, not done.
    Accepted,
    /// Not accepted. `retryable`: 5xx, 429, timeouts, connection errors, 404 (AgentKit may learn
    /// the agent again); not retryable: other 4xx (our request is wrong and will stay wrong).
    Failed { retryable: bool, reason: String },
    /// AgentKit answered a redirect (3xx). Never followed (a 302 would turn the task into a GET
    /// elsewhere, a 307 re-post it to another host): the attempt fails, not retried, and the
    /// session fails with code `dispatch_redirected`.
    Redirected { status: u16, location: String },
}

/// The port to AgentKit.
#[async_trait]
pub trait Dispatcher: Send + Sync + 'static {
    async fn dispatch(&self, req: &DispatchRequest) -> DispatchOutcome;
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RunnerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("still conflicting after {LOST_WRITE_RETRIES} re-reads")]
    Contended,
    /// A wake-up that had to be re-armed could not be sent (its message is redelivered).
    #[error(transparent)]
    TimerQueue(#[from] TimerQueueError),
    /// A fault injected by a test: the runner "died" at this step.
    #[error("aborted at {0:?} (fault injection)")]
    Aborted(Step),
}

/// The points between the runner's steps where a test can make it die.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Step {
    AfterClaim,
    AfterDispatch,
    AfterConfirm,
    BeforeComplete,
    BeforeFailAttempt,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct SweepReport {
    pub examined: usize,
    pub dispatched: usize,
    pub failed_attempts: usize,
    pub parked: usize,
}

/// How many agents' changes one batch handles at once (see [`by_agent`]).
pub const CONCURRENT_AGENTS: usize = 64;

/// Runs `handle` over a batch of changes the way the runner needs them ordered: one agent's
/// changes strictly in batch order, different agents' changes concurrently (at most `limit`
/// agents at once). Order matters within an agent (its `active` before its `idle`, a task's
/// claim before its completion); across agents every step is a conditional write, so they may
/// interleave freely. At an agent's first failure the rest of that agent's changes are skipped,
/// to be redelivered after it; other agents go on.
///
/// Returns the failed changes (position in `changes`, error), in batch order. The skipped ones
/// all come after a failed one of the same agent, so a consumer that resumes from the earliest
/// failure (Lambda's checkpoint for partial batch failures) misses none of them.
pub async fn by_agent<'a, F, Fut, E>(changes: &'a [Change], limit: usize, handle: F) -> Vec<(usize, E)>
where
    F: Fn(&'a Change) -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
{
    // Routing (issue 18): a routed task waiting for an agent is handled in its session's lane.
    in_lanes(changes, Change::lane, limit, handle).await
}

/// [`by_agent`] for any items and any lane key.
pub async fn in_lanes<'a, T, K, F, Fut, E>(
    items: &'a [T],
    lane_key: impl Fn(&'a T) -> K,
    limit: usize,
    handle: F,
) -> Vec<(usize, E)>
where
    K: std::hash::Hash + Eq,
    F: Fn(&'a T) -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
{
    use futures::StreamExt;
    let mut lanes: Vec<Vec<usize>> = Vec::new();
    let mut lane_of: std::collections::HashMap<K, usize> = std::collections::HashMap::new();
    for (i, item) in items.iter().enumerate() {
        let lane = *lane_of.entry(lane_key(item)).or_insert_with(|| {
            lanes.push(Vec::new());
            lanes.len() - 1
        });
        lanes[lane].push(i);
    }
    let handle = &handle;
    let mut failed: Vec<(usize, E)> = futures::stream::iter(lanes)
        .map(|lane| async move {
            for i in lane {
                if let Err(e) = handle(&items[i]).await {
                    return Some((i, e));
                }
            }
            None
        })
        .buffer_unordered(limit.max(1))
        .filter_map(std::future::ready)
        .collect()
        .await;
    failed.sort_by_key(|(i, _)| *i);
    failed
}

pub struct Runner {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    dispatcher: Arc<dyn Dispatcher>,
    settings: Settings,
    lease: Duration,
    faults: Mutex<HashSet<Step>>,
    metrics: Metrics,
    /// Where wake-ups for task timers go (SQS on AWS); `None`: timers wait for the sweep.
    timer_queue: Option<Arc<dyn TimerQueue>>,
    /// What the runner starts from instead of reading a session again (see [`crate::images`]).
    recent: RecentImages,
    /// When a finishing agent should look for a waiting routed task (routing.rs).
    routing: routing::RoutingHints,
}

/// A task and the session it belongs to: read together (one query of the session's partition),
/// or taken from the runner's recent images (`recent`; see [`crate::images`] for when that is
/// allowed).
#[derive(Clone)]
struct Loaded {
    session: Arc<Session>,
    task: Arc<TaskInstance>,
    recent: bool,
}

impl Runner {
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        dispatcher: Arc<dyn Dispatcher>,
        settings: Settings,
    ) -> Self {
        Self {
            store,
            clock,
            dispatcher,
            lease: settings.lease,
            settings,
            faults: Mutex::default(),
            metrics: Metrics::global(),
            timer_queue: None,
            recent: RecentImages::new(images::DEFAULT_CAPACITY),
            routing: routing::RoutingHints::default(),
        }
    }

    /// The same runner, recording its figures into `metrics` (the global recorder otherwise).
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Commits the writes of `session` through [`Metrics::commit`], which counts what they did.
    /// What they wrote becomes the recent images of the session; a conflict means those are
    /// stale, so they are dropped.
    async fn commit(&self, session: &Session, writes: Vec<Write>) -> Result<(), CommitError> {
        let written = images::images_of(&writes);
        let result = self
            .metrics
            .commit(self.store.as_ref(), Some(&session.definition.id), writes)
            .await;
        match &result {
            Ok(()) => written.into_iter().for_each(|i| self.recent.remember(i)),
            Err(_) => self.recent.forget(&session.session_id),
        }
        result
    }

    /// Arms a wake-up on `queue` for every new task timer this runner sees in a change, and
    /// handles the wake-ups ([`Self::on_wake_up`]): timers act within about a second of their
    /// instant instead of at the next sweep.
    pub fn with_timer_queue(mut self, queue: Arc<dyn TimerQueue>) -> Self {
        self.timer_queue = Some(queue);
        self
    }

    /// Makes the runner stop right after `step`, once (tests of crash recovery).
    pub fn inject_fault(&self, step: Step) {
        self.faults.lock().unwrap_or_else(|e| e.into_inner()).insert(step);
    }

    fn fault(&self, step: Step) -> Result<(), RunnerError> {
        if self.faults.lock().unwrap_or_else(|e| e.into_inner()).remove(&step) {
            return Err(RunnerError::Aborted(step));
        }
        Ok(())
    }

    /// The task `key` and its session, from `source`. What is read from the store becomes the
    /// session's recent images.
    async fn load(&self, key: &TaskKey, source: Source) -> Result<Option<Loaded>, RunnerError> {
        if source == Source::Recent
            && let Some((session, task)) = self.recent.get(key)
        {
            return Ok(Some(Loaded {
                session,
                task,
                recent: true,
            }));
        }
        let Some(view) = self.store.get_session(&key.session_id).await? else {
            self.recent.forget(&key.session_id);
            return Ok(None);
        };
        let session = Arc::new(view.session);
        self.recent.remember(images::Image::Session(session.clone()));
        let mut found = None;
        for task in view.tasks {
            let task = Arc::new(task);
            if task.task_id == key.task_id {
                found = Some(task.clone());
            }
            self.recent.remember(images::Image::Task(task));
        }
        Ok(found.map(|task| Loaded {
            session,
            task,
            recent: false,
        }))
    }

    /// Whether [`Runner::on_change`] can ever act on a change's state: on an agent's, and on a
    /// task's that left it pending; never on a session's (a timer a change sets is found again
    /// through the timer index, whatever the change). A durable feed need not keep the image of
    /// a change the runner does not act on (the SQLite store keeps only its place in the order).
    pub fn acts_on(change: &Change) -> bool {
        match change {
            Change::Agent { new, .. } => new.is_some(),
            Change::Task { new: Some(t), .. } => t.status == TaskStatus::Pending,
            Change::Task { new: None, .. } | Change::Session { .. } => false,
        }
    }

    /// Handles one change record. Safe to call twice with the same record.
    pub async fn on_change(&self, change: &Change) -> Result<(), RunnerError> {
        match change {
            Change::Session { new: Some(s), .. } => self.recent.remember(images::Image::Session(s.clone())),
            Change::Task { new: Some(t), .. } => self.recent.remember(images::Image::Task(t.clone())),
            Change::Session {
                old: Some(s),
                new: None,
            } => self.recent.forget(&s.session_id),
            Change::Task {
                old: Some(t),
                new: None,
            } => self.recent.forget(&t.session_id),
            _ => {}
        }
        if let Change::Task { old, new: Some(t) } = change {
            self.arm_new_timer(old.as_deref(), t).await;
        }
        match change {
            Change::Task { new: Some(t), .. } if t.status == TaskStatus::Pending && t.due_at <= self.clock.now() => {
                self.try_dispatch(&t.key()).await.map(drop)
            }
            Change::Agent { old, new: Some(a) } => {
                let old = old.as_deref();
                // The idle-agents index of stores that cannot keep it in the agent's own write.
                self.store.sync_idle_agent(old, a).await?;
                if a.is_deregistered() {
                    if old.is_none_or(|o| !o.is_deregistered()) {
                        self.fail_agent_tasks(a).await?;
                    }
                    return Ok(());
                }
                if old.is_none_or(|o| o.current.version < a.current.version) {
                    self.on_report(a).await?;
                }
                if a.is_available() && old.is_none_or(|o| !o.is_available() || o.current.version < a.current.version) {
                    // Its own tasks and, if it announces capabilities, routed ones (routing.rs).
                    self.dispatch_next_for_agent(a).await?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// A new state report was applied to `agent` (the image right after it).
    async fn on_report(&self, agent: &Agent) -> Result<(), RunnerError> {
        let Some(Inflight { dispatch, .. }) = &agent.inflight else {
            return Ok(());
        };
        let reported = agent.current.reported_task_id();
        let names_this_attempt = reported == Some(dispatch.render().as_str());
        match agent.current.state.as_known() {
            Some(KnownState::Idle) => {
                // Idle naming this attempt completes it. Idle naming nothing completes it only if
                // the agent was seen `active` for it (documented: agents that report no task id).
                let completes =
                    |t: &TaskInstance| names_this_attempt || (reported.is_none() && t.status == TaskStatus::Running);
                if let Some(l) = self.find_attempt(dispatch, completes).await? {
                    self.complete(dispatch, agent, l).await?;
                }
            }
            Some(KnownState::Active) if reported.is_none() || names_this_attempt => self.mark_running(dispatch).await?,
            Some(KnownState::Error) if reported.is_none() || names_this_attempt => {
                let why = agent
                    .current
                    .details
                    .as_ref()
                    .and_then(|d| d.get("error").or_else(|| d.get("message")))
                    .map(|v| v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string()))
                    .unwrap_or_else(|| "no details".into());
                self.fail_attempt_of(dispatch, format!("agent reported error: {why}"), true)
                    .await?;
            }
            _ => {}
        }
        Ok(())
    }

    /// The attempt `dispatch` with its session, if it is the task's current attempt and `wanted`
    /// holds for the task: from the recent images first, from the store when they lack it or
    /// when `wanted` does not hold on them (doing nothing is decided on the store's state only).
    async fn find_attempt(
        &self,
        dispatch: &DispatchId,
        wanted: impl Fn(&TaskInstance) -> bool,
    ) -> Result<Option<Loaded>, RunnerError> {
        let key = task_key(dispatch);
        for source in [Source::Recent, Source::Store] {
            let Some(l) = self.load(&key, source).await? else {
                return Ok(None);
            };
            if l.task.current_dispatch().as_ref() == Some(dispatch) && wanted(&l.task) {
                return Ok(Some(l));
            }
            if !l.recent {
                return Ok(None);
            }
        }
        Ok(None)
    }

    /// Tries the agent's oldest due tasks until one is claimed or the agent is taken.
    pub async fn dispatch_next_for(&self, agent: &AgentId) -> Result<(), RunnerError> {
        for key in self.store.runnable_tasks(agent, self.clock.now(), 10).await? {
            match self.try_dispatch(&key).await? {
                Claim::Dispatched | Claim::AgentBusy => return Ok(()),
                Claim::NotRunnable => continue,
            }
        }
        Ok(())
    }

    /// Claims a pending task for one attempt (agent marker + task + session in one transaction),
    /// then sends it to AgentKit and records the answer.
    pub async fn try_dispatch(&self, key: &TaskKey) -> Result<Claim, RunnerError> {
        let mut source = Source::Recent;
        for _ in 0..LOST_WRITE_RETRIES {
            let Some(Loaded { session, task, recent }) = self.load(key, source).await? else {
                return Ok(Claim::NotRunnable);
            };
            // Routing (issue 18): a routed task is claimed by any capable agent (routing.rs).
            if task.capability.is_some() {
                return self.dispatch_routed(key, Loaded { session, task, recent }).await;
            }
            let now = self.clock.now();
            let runnable = task.due_at <= now && !session.status.is_terminal();
            // Only a pending task can be claimed.
            let next = match task.claim(now, after(now, self.lease)) {
                Ok(next) if runnable => next,
                // Not runnable: decided on the store's state only.
                _ if recent => {
                    source = Source::Store;
                    continue;
                }
                _ => return Ok(Claim::NotRunnable),
            };
            let dispatch = next.current_dispatch().expect("dispatched holds the agent");
            let (session_write, session_after) = if session.status == SessionStatus::Started {
                let running = session
                    .transition(SessionStatus::Running, now)
                    .expect("started → running");
                let write = Write::TransitionSession {
                    from: session.status,
                    next: running.clone(),
                };
                (write, Arc::new(running))
            } else {
                (Write::CheckSessionOpen(session.session_id), session.clone())
            };
            let writes = vec![
                Write::ClaimAgent {
                    agent_id: task.agent_id.clone(),
                    inflight: Inflight {
                        dispatch: dispatch.clone(),
                        since: now,
                        routed_by: None,
                    },
                },
                Write::TransitionTask {
                    from: TaskStatus::Pending,
                    next: next.clone(),
                },
                session_write,
            ];
            match self.commit(&session, writes).await {
                Ok(()) => {}
                // The agent is not available (busy, not idle, deregistered): it stays pending
                // and is picked up when the agent frees up.
                Err(CommitError::Conflict {
                    write: WriteKind::ClaimAgent,
                    ..
                }) => return Ok(Claim::AgentBusy),
                Err(CommitError::Conflict { .. }) => {
                    source = Source::Store;
                    continue;
                }
                Err(CommitError::Store(e)) => return Err(e.into()),
            }
            let claimed = Loaded {
                session: session_after,
                task: Arc::new(next),
                recent: true,
            };
            self.send(claimed).await?;
            return Ok(Claim::Dispatched);
        }
        Err(RunnerError::Contended)
    }

    /// Sends a claimed attempt to AgentKit and records the answer.
    async fn send(&self, claimed: Loaded) -> Result<(), RunnerError> {
        self.fault(Step::AfterClaim)?;
        let task = &claimed.task;
        let dispatch = task.current_dispatch().expect("claimed holds the agent");
        let outcome = self
            .dispatcher
            .dispatch(&DispatchRequest {
                agent_id: task.agent_id.clone(),
                session_id: task.session_id,
                dispatch_id: dispatch.render(),
                task_name: task.name.clone(),
                payload: task.payload.clone(),
            })
            .await;
        self.fault(Step::AfterDispatch)?;
        match outcome {
            // What the claim wrote is what confirm would read back: no read (a report that
            // changed the task since makes the write conflict and re-read).
            DispatchOutcome::Accepted => self.confirm(&dispatch, claimed).await,
            DispatchOutcome::Failed { retryable, reason } => {
                self.fail_attempt_of(&dispatch, format!("dispatch failed: {reason}"), retryable)
                    .await
            }
            DispatchOutcome::Redirected { status, location } => {
                let why = format!(
                    "dispatch failed: AgentKit answered {status} (redirect to {location:?}); redirects are not followed"
                );
                self.fail_attempt_with(&dispatch, why, false, FailureCode::DispatchRedirected)
                    .await
            }
        }
    }

    /// AgentKit accepted: the lease becomes a run deadline.
    async fn confirm(&self, dispatch: &DispatchId, claimed: Loaded) -> Result<(), RunnerError> {
        self.update_attempt(dispatch, Some(claimed), |l, now, _| {
            // The attempt is current (dispatched or running), so acceptance applies.
            let next = l.task.accept(now, after(now, run_timeout(l))).ok()?;
            Some((
                vec![Write::TransitionTask {
                    from: l.task.status,
                    next,
                }],
                (),
            ))
        })
        .await?;
        self.fault(Step::AfterConfirm)
    }

    async fn mark_running(&self, dispatch: &DispatchId) -> Result<(), RunnerError> {
        self.update_attempt(dispatch, None, |l, now, _| {
            // Refused unless dispatched: a second `active` for a running attempt changes nothing.
            let next = l.task.start_running(now, after(now, run_timeout(l))).ok()?;
            Some((
                vec![Write::TransitionTask {
                    from: l.task.status,
                    next,
                }],
                (),
            ))
        })
        .await
        .map(drop)
    }

    /// The attempt succeeded: task done, and the next task created or the session completed —
    /// one transaction. The agent that finished is handed the session's next task in the same
    /// transaction (claimed for it, then sent): a started session runs to its end on its agent
    /// without a read, a claim or a wait behind later sessions between its tasks. When the next
    /// task is not its own (routed, or none) and routed tasks wait for one of its capabilities,
    /// it is handed the oldest of them instead (routing.rs). Otherwise (or when the hand-over is
    /// refused: the agent reported again or was deregistered meanwhile, or the routed task was
    /// claimed) the agent is released and the next task waits, pending, for a claim.
    async fn complete(&self, dispatch: &DispatchId, agent: &Agent, loaded: Loaded) -> Result<(), RunnerError> {
        self.fault(Step::BeforeComplete)?;
        let details = &agent.current.details;
        let recheck = self.settings.recheck_after;
        let next_of = |l: &Loaded, now: Timestamp| {
            let id = l.task.next_task_id.as_ref()?;
            let def = l.session.definition.task(id)?;
            Some(TaskInstance::new(
                &l.session,
                def,
                Value::Object(def.parameters.clone()),
                now,
                recheck,
            ))
        };
        // The session's next task goes to this agent when it is unrouted and the agent's own.
        let own_next = |next: &TaskInstance, l: &Loaded| next.capability.is_none() && next.agent_id == l.task.agent_id;
        let routed = match next_of(&loaded, self.clock.now()) {
            Some(next) if own_next(&next, &loaded) => None,
            _ => self.routed_hand_over_for(agent, &loaded.session.session_id).await?,
        };
        let handed_over = self
            .update_attempt(dispatch, Some(loaded), |l, now, lost| {
                let done = l.task.succeed(now, details.clone()).ok()?;
                // What the agent does next if not handed its session's next task: the waiting
                // routed task (first try only: a conflict may be that task's), or nothing.
                let (free, routed_writes, routed_task) = match routed.as_ref().filter(|_| lost.is_none()) {
                    Some(r) => (
                        Write::HandOverAgent {
                            agent_id: l.task.agent_id.clone(),
                            from: dispatch.clone(),
                            to: r.inflight.clone(),
                        },
                        r.writes.clone(),
                        Some(r.claimed.clone()),
                    ),
                    None => (
                        Write::ReleaseAgent {
                            agent_id: l.task.agent_id.clone(),
                            dispatch: dispatch.clone(),
                        },
                        Vec::new(),
                        None,
                    ),
                };
                let Some(next) = next_of(l, now) else {
                    let mut s = l.session.transition(SessionStatus::Completed, now).ok()?;
                    s.result = Some(json!({
                        "message": "Workflow completed",
                        "finalTaskId": l.task.task_id,
                        "output": details.clone().map(Value::Object).unwrap_or(Value::Null),
                    }));
                    let mut writes = vec![
                        free,
                        Write::TransitionTask {
                            from: l.task.status,
                            next: done,
                        },
                        Write::TransitionSession {
                            from: l.session.status,
                            next: s,
                        },
                    ];
                    writes.extend(routed_writes);
                    return Some((writes, routed_task));
                };
                let hand_over = own_next(&next, l) && lost != Some(WriteKind::HandOverAgent);
                let (agent_write, next, handed, extra) = match next.claim(now, after(now, self.lease)) {
                    Ok(claimed) if hand_over => {
                        let to = Inflight {
                            dispatch: claimed.current_dispatch().expect("claimed holds the agent"),
                            since: now,
                            routed_by: None,
                        };
                        let write = Write::HandOverAgent {
                            agent_id: l.task.agent_id.clone(),
                            from: dispatch.clone(),
                            to,
                        };
                        let handed = Loaded {
                            session: l.session.clone(),
                            task: Arc::new(claimed.clone()),
                            recent: true,
                        };
                        (write, claimed, Some(handed), Vec::new())
                    }
                    _ => (free, next, routed_task, routed_writes),
                };
                let mut writes = vec![
                    agent_write,
                    Write::TransitionTask {
                        from: l.task.status,
                        next: done,
                    },
                    Write::CreateTask(next),
                    Write::CheckSessionOpen(l.session.session_id),
                ];
                writes.extend(extra);
                Some((writes, handed))
            })
            .await;
        if let Some(r) = &routed {
            self.routing.unpick(&r.key);
            let took_it = matches!(&handed_over, Ok(Some(Some(h))) if h.task.key() == r.key);
            if !took_it {
                // What this runner remembers of it may be what the losing transaction assumed.
                self.recent.forget(&r.key.session_id);
            }
        }
        if let Some(Some(claimed)) = handed_over? {
            self.send(claimed).await?;
        }
        Ok(())
    }

    /// Ends the current attempt as failed: a retry after backoff while retries remain (and the
    /// failure is retryable), otherwise the task and its session fail with the cause.
    async fn fail_attempt_of(&self, dispatch: &DispatchId, error: String, retryable: bool) -> Result<(), RunnerError> {
        self.fail_attempt_with(dispatch, error, retryable, FailureCode::RetriesExhausted)
            .await
    }

    /// [`Self::fail_attempt_of`] with the failure code the session gets if it fails.
    async fn fail_attempt_with(
        &self,
        dispatch: &DispatchId,
        error: String,
        retryable: bool,
        code: FailureCode,
    ) -> Result<(), RunnerError> {
        self.fault(Step::BeforeFailAttempt)?;
        self.update_attempt(dispatch, None, |l, now, _| {
            let mut writes = vec![Write::ReleaseAgent {
                agent_id: l.task.agent_id.clone(),
                dispatch: dispatch.clone(),
            }];
            writes.extend(self.fail_writes(l, now, &error, retryable, code)?);
            Some((writes, ()))
        })
        .await
        .map(drop)
    }

    /// The writes that fail the current attempt of `l` (or its pending task): a retry while
    /// the failure is `retryable` and retries remain, else the task fails and its session with
    /// `code`. `None` when the task is no longer in a status this applies to.
    fn fail_writes(
        &self,
        l: &Loaded,
        now: Timestamp,
        error: &str,
        retryable: bool,
        code: FailureCode,
    ) -> Option<Vec<Write>> {
        let t = &l.task;
        let def = &l.session.definition;
        if retryable && t.retries_left() {
            let due_at = after(now, def.retry_policy().backoff(t.attempt, fastrand::f64()));
            let next = t
                .retry_later(now, error, due_at, after(due_at, def.dispatch_timeout()))
                .ok()?;
            return Some(vec![Write::TransitionTask { from: t.status, next }]);
        }
        let failed = t.fail(now, error).ok()?;
        let attempts = t.attempt;
        let message = match code {
            FailureCode::RetriesExhausted if attempts > 0 => format!(
                "task {} ({}) failed after {attempts} attempt{}: {error}",
                t.task_id,
                t.name,
                if attempts == 1 { "" } else { "s" }
            ),
            FailureCode::TaskTimeout => format!(
                "task {} ({}) did not finish within {} s, and no retries were left after {attempts} attempt{}",
                t.task_id,
                t.name,
                run_timeout(l).as_secs_f64(),
                if attempts == 1 { "" } else { "s" }
            ),
            _ => format!("task {} ({}) failed: {error}", t.task_id, t.name),
        };
        // A failure a retry would not mend: the dispatch was refused, the retries were not used up.
        let code = if !retryable && code == FailureCode::RetriesExhausted {
            FailureCode::DispatchRejected
        } else {
            code
        };
        let mut writes = vec![Write::TransitionTask {
            from: t.status,
            next: failed,
        }];
        if let Ok(mut s) = l.session.transition(SessionStatus::Failed, now) {
            s.error = Some(FailureCause {
                code,
                message,
                task_id: Some(t.task_id.clone()),
                attempts: Some(attempts),
                last_error: Some(error.to_owned()),
            });
            writes.push(Write::TransitionSession {
                from: l.session.status,
                next: s,
            });
        }
        Some(writes)
    }

    /// Starts from `known` (what the caller just read or wrote) or the attempt's recent images,
    /// builds writes from it, commits; re-reads the store and repeats on conflict (`build` is told
    /// which write lost). Stops quietly, returning `None`, when the attempt is no longer current
    /// or `build` finds nothing to do on the store's state (someone else finished it).
    async fn update_attempt<T>(
        &self,
        dispatch: &DispatchId,
        mut known: Option<Loaded>,
        build: impl Fn(&Loaded, Timestamp, Option<WriteKind>) -> Option<(Vec<Write>, T)>,
    ) -> Result<Option<T>, RunnerError> {
        let key = task_key(dispatch);
        let mut source = Source::Recent;
        let mut lost = None;
        for _ in 0..LOST_WRITE_RETRIES {
            let l = match known.take() {
                Some(l) => l,
                None => match self.load(&key, source).await? {
                    Some(l) => l,
                    None => return Ok(None),
                },
            };
            let current = l.task.current_dispatch().as_ref() == Some(dispatch);
            let Some((writes, value)) = current.then(|| build(&l, self.clock.now(), lost)).flatten() else {
                // Nothing to do: decided on the store's state only.
                if l.recent {
                    source = Source::Store;
                    continue;
                }
                return Ok(None);
            };
            match self.commit(&l.session, writes).await {
                Ok(()) => return Ok(Some(value)),
                Err(CommitError::Conflict { write, .. }) => {
                    lost = Some(write);
                    source = Source::Store;
                }
                Err(CommitError::Store(e)) => return Err(e.into()),
            }
        }
        Err(RunnerError::Contended)
    }

    /// The agent was deregistered: every task it holds or waits for fails with that cause.
    async fn fail_agent_tasks(&self, agent: &Agent) -> Result<(), RunnerError> {
        let why = "agent was deregistered";
        if let Some(i) = &agent.inflight {
            self.update_attempt(&i.dispatch, None, |l, now, _| {
                let mut w = vec![Write::ReleaseAgent {
                    agent_id: l.task.agent_id.clone(),
                    dispatch: i.dispatch.clone(),
                }];
                // A routed task fails only this attempt: its retry may go to another agent.
                let retryable = l.task.capability.is_some();
                w.extend(self.fail_writes(l, now, why, retryable, FailureCode::AgentDeregistered)?);
                Some((w, ()))
            })
            .await?;
        }
        let far_future = after(self.clock.now(), Duration::from_secs(100 * 365 * 86_400));
        for key in self.store.runnable_tasks(agent.id(), far_future, 1000).await? {
            self.fail_pending(&key, why, FailureCode::AgentDeregistered).await?;
        }
        Ok(())
    }

    async fn fail_pending(&self, key: &TaskKey, why: &str, code: FailureCode) -> Result<(), RunnerError> {
        for _ in 0..LOST_WRITE_RETRIES {
            let Some(l) = self.load(key, Source::Store).await? else {
                return Ok(());
            };
            if l.task.status != TaskStatus::Pending {
                return Ok(());
            }
            let Some(writes) = self.fail_writes(&l, self.clock.now(), why, false, code) else {
                return Ok(());
            };
            match self.commit(&l.session, writes).await {
                Ok(()) => return Ok(()),
                Err(CommitError::Conflict { .. }) => continue,
                Err(CommitError::Store(e)) => return Err(e.into()),
            }
        }
        Err(RunnerError::Contended)
    }

    /// A change gave `task` a timer it did not have before (`old`: the image before the change,
    /// as the stream reports it): send a wake-up for it. A failed send is only logged: the sweep
    /// still finds the timer, at most a minute late, and the change itself must not be retried
    /// for it (that would hold up the agent's later changes).
    async fn arm_new_timer(&self, old: Option<&TaskInstance>, task: &TaskInstance) {
        let Some(queue) = &self.timer_queue else {
            return;
        };
        let Some(wake_up) = WakeUp::for_task(task) else {
            return;
        };
        if old.is_some_and(|o| wake_up.is_current_for(o)) {
            // Same timer as before the change: its wake-up is already on its way.
            return;
        }
        if let Err(e) = self.send_wake_up(queue.as_ref(), &wake_up).await {
            tracing::warn!(session_id = %task.session_id, task_id = %task.task_id, error = %e,
                "wake-up not sent; the sweep will find the timer");
        }
    }

    async fn send_wake_up(&self, queue: &dyn TimerQueue, wake_up: &WakeUp) -> Result<(), TimerQueueError> {
        let delay = wake_up_delay(wake_up.timer_at, self.clock.now(), queue.max_delay());
        queue.schedule(wake_up, delay).await
    }

    /// Handles one wake-up from the timer queue. Idempotent: a wake-up for a timer the task no
    /// longer has does nothing; one that arrives before its timer is due (a timer further ahead
    /// than the queue's longest delay) is sent again for the time left; a due one is handled as
    /// the sweep handles it, every step a conditional write, so a duplicate finds nothing to do.
    pub async fn on_wake_up(&self, wake_up: &WakeUp) -> Result<WakeUpOutcome, RunnerError> {
        let key = wake_up.task_key();
        let Some(task) = self.store.get_task(&key).await? else {
            return Ok(WakeUpOutcome::MovedOn);
        };
        if !wake_up.is_current_for(&task) {
            return Ok(WakeUpOutcome::MovedOn);
        }
        if wake_up.timer_at > self.clock.now() {
            let Some(queue) = &self.timer_queue else {
                // No queue to re-arm on (a runner without one was handed a wake-up).
                return Ok(WakeUpOutcome::LeftToSweep);
            };
            self.send_wake_up(queue.as_ref(), wake_up).await?;
            return Ok(WakeUpOutcome::Rearmed);
        }
        self.on_timer(&key, &mut SweepReport::default()).await?;
        Ok(WakeUpOutcome::Handled)
    }

    /// Handles every task whose timer has fired: due retries, expired leases, deadlines.
    /// Sessions are handled concurrently (a session's tasks in timer order), so one hung dispatch
    /// holds up only its own session's timers.
    pub async fn sweep(&self) -> Result<SweepReport, RunnerError> {
        let keys = self.store.due_timers(self.clock.now(), 100).await?;
        let report = Mutex::new(SweepReport {
            examined: keys.len(),
            ..SweepReport::default()
        });
        let failed = in_lanes(
            &keys,
            |k: &TaskKey| k.session_id,
            CONCURRENT_AGENTS,
            |key| {
                let report = &report;
                async move {
                    let mut mine = SweepReport::default();
                    let result = self.on_timer(key, &mut mine).await;
                    let mut total = report.lock().unwrap_or_else(|e| e.into_inner());
                    total.dispatched += mine.dispatched;
                    total.failed_attempts += mine.failed_attempts;
                    total.parked += mine.parked;
                    match result {
                        // Only an injected fault stops the sweep (tests of crash recovery).
                        Err(e @ RunnerError::Aborted(_)) => Err(e),
                        Err(e) => {
                            // One bad task must not stop the sweep of the others; it stays due.
                            tracing::warn!(session_id = %key.session_id, task_id = %key.task_id, error = %e, "timer handling failed");
                            Ok(())
                        }
                        Ok(()) => Ok(()),
                    }
                }
            },
        )
        .await;
        if let Some((_, e)) = failed.into_iter().next() {
            return Err(e);
        }
        Ok(report.into_inner().unwrap_or_else(|e| e.into_inner()))
    }

    async fn on_timer(&self, key: &TaskKey, report: &mut SweepReport) -> Result<(), RunnerError> {
        let Some(l) = self.load(key, Source::Store).await? else {
            return Ok(());
        };
        let now = self.clock.now();
        if l.task.timer_at.is_none_or(|t| t > now) {
            return Ok(());
        }
        match l.task.status {
            TaskStatus::Pending => {
                if l.task.dispatch_deadline.is_some_and(|d| d <= now) {
                    let waited = l.session.definition.dispatch_timeout().as_secs_f64();
                    let why = if let Some(capability) = &l.task.capability {
                        format!(
                            "not dispatched within {waited} s: no agent with capability {capability:?} became available"
                        )
                    } else {
                        let agent = self.store.get_agent(&l.task.agent_id).await?;
                        let state = agent
                            .map(|a| a.current.state.to_string())
                            .unwrap_or_else(|| "unknown agent".into());
                        format!(
                            "not dispatched within {waited} s: the agent never became available (last state: {state})"
                        )
                    };
                    self.fail_pending(key, &why, FailureCode::DispatchTimeout).await?;
                    report.failed_attempts += 1;
                    return Ok(());
                }
                match self.try_dispatch(key).await? {
                    Claim::Dispatched => report.dispatched += 1,
                    Claim::AgentBusy | Claim::NotRunnable => {
                        // Not dispatchable now: wait for the agent's next change, and look again
                        // at the dispatch deadline.
                        if let Ok(next) = l.task.park(now)
                            && self
                                .commit(
                                    &l.session,
                                    vec![Write::TransitionTask {
                                        from: l.task.status,
                                        next,
                                    }],
                                )
                                .await
                                .is_ok()
                        {
                            report.parked += 1;
                        }
                    }
                }
            }
            TaskStatus::Dispatched | TaskStatus::Running => {
                let dispatch = l.task.current_dispatch().expect("holds the agent");
                // An expired lease is the runner's failure, not the task's: if it was the last
                // attempt, the retries are exhausted. A run deadline is the task's own timeout.
                let (why, code) = if l.task.lease_expires_at.is_some_and(|t| t <= now) {
                    (
                        "the runner that claimed it stopped before AgentKit's answer was recorded (lease expired)"
                            .to_owned(),
                        FailureCode::RetriesExhausted,
                    )
                } else if l.task.run_deadline.is_some_and(|t| t <= now) {
                    (
                        format!("timed out after {} s", run_timeout(&l).as_secs_f64()),
                        FailureCode::TaskTimeout,
                    )
                } else {
                    return Ok(());
                };
                self.fail_attempt_with(&dispatch, why, true, code).await?;
                report.failed_attempts += 1;
            }
            _ => {}
        }
        Ok(())
    }
}

/// What a dispatch attempt came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    Dispatched,
    AgentBusy,
    NotRunnable,
}

/// The task an attempt belongs to.
fn task_key(dispatch: &DispatchId) -> TaskKey {
    TaskKey {
        session_id: dispatch.session_id,
        task_id: dispatch.task_id.clone(),
    }
}

fn run_timeout(l: &Loaded) -> Duration {
    let def = l.session.definition.task(&l.task.task_id);
    def.map(|d| l.session.definition.task_timeout(d))
        .unwrap_or(Duration::from_secs_f64(crate::workflow::DEFAULT_TASK_TIMEOUT))
}

/// For log lines and error bodies.
pub fn describe(t: &TaskInstance) -> String {
    format!(
        "{}:{} {} attempt {} (updated {})",
        t.session_id,
        t.task_id,
        t.status.as_str(),
        t.attempt,
        render(t.updated_at)
    )
}

#[cfg(test)]
mod tests {
    use super::in_lanes;
    use std::sync::Mutex;
    use std::time::Duration;
    use tokio::sync::Notify;

    /// (lane, label, fails)
    type Item = (&'static str, &'static str, bool);

    #[tokio::test]
    async fn lanes_run_concurrently_and_keep_their_own_order() {
        let items: Vec<Item> = vec![
            ("a", "a1", false),
            ("b", "b1", false),
            ("a", "a2", false),
            ("b", "b2", false),
        ];
        let seen = Mutex::new(Vec::new());
        let b_started = Notify::new();
        // a1 cannot finish until b1 has started: a runner that handled lanes one after the
        // other would never get there.
        let failed = tokio::time::timeout(
            Duration::from_secs(5),
            in_lanes(
                &items,
                |i| i.0,
                8,
                |&(_, label, _)| {
                    let (seen, b_started) = (&seen, &b_started);
                    async move {
                        seen.lock().unwrap().push(label);
                        match label {
                            "a1" => b_started.notified().await,
                            "b1" => b_started.notify_one(),
                            _ => {}
                        }
                        Ok::<(), ()>(())
                    }
                },
            ),
        )
        .await
        .expect("lanes ran one after the other");
        assert!(failed.is_empty());
        let seen = seen.into_inner().unwrap();
        let pos = |l: &str| seen.iter().position(|s| *s == l).unwrap();
        assert_eq!(seen.len(), 4);
        assert!(pos("a1") < pos("a2") && pos("b1") < pos("b2"), "{seen:?}");
        assert!(pos("b1") < pos("a2"), "b1 waited for lane a: {seen:?}");
    }

    #[tokio::test]
    async fn a_failure_skips_the_rest_of_its_lane_only() {
        let items: Vec<Item> = vec![
            ("a", "a1", false),
            ("b", "b1", true),
            ("a", "a2", true),
            ("b", "b2", false),
            ("a", "a3", false),
            ("c", "c1", false),
        ];
        let seen = Mutex::new(Vec::new());
        let failed = in_lanes(
            &items,
            |i| i.0,
            8,
            |&(_, label, fails)| {
                let seen = &seen;
                async move {
                    seen.lock().unwrap().push(label);
                    if fails { Err(label) } else { Ok(()) }
                }
            },
        )
        .await;
        assert_eq!(failed, vec![(1, "b1"), (2, "a2")], "in batch order");
        let mut seen = seen.into_inner().unwrap();
        seen.sort();
        assert_eq!(seen, vec!["a1", "a2", "b1", "c1"], "b2 and a3 wait for redelivery");
    }

    #[tokio::test]
    async fn a_limit_of_one_is_one_lane_at_a_time() {
        let items: Vec<Item> = vec![("a", "a1", false), ("b", "b1", false), ("a", "a2", false)];
        let seen = Mutex::new(Vec::new());
        in_lanes(
            &items,
            |i| i.0,
            1,
            |&(_, label, _)| {
                let seen = &seen;
                async move {
                    tokio::task::yield_now().await;
                    seen.lock().unwrap().push(label);
                    Ok::<(), ()>(())
                }
            },
        )
        .await;
        assert_eq!(seen.into_inner().unwrap(), vec!["a1", "a2", "b1"]);
    }
}
