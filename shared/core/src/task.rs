//! Task instances: `pending → dispatched → running → succeeded | failed` (and `cancelled`).
//!
//! Every change of a task is one of the transitions on [`TaskInstance`] below: each checks the
//! transition table ([`TaskStatus::can_become`]) and makes the next version (`rev` bumped,
//! `updated_at` set) in one place, so the runner and the use cases decide *when* a task moves,
//! never *how*.

use crate::ids::{AgentId, DispatchId, SessionId, TaskId};
use crate::session::Session;
use crate::time::{self, Timestamp, after};
use crate::workflow::TaskDefinition;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    /// Waiting to be dispatched (first attempt, or a retry once `dueAt` passes).
    Pending,
    /// Claimed for one attempt; sent, or being sent, to AgentKit.
    Dispatched,
    /// The agent reported `active` for this attempt.
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl TaskStatus {
    pub const ALL: [TaskStatus; 6] = [
        Self::Pending,
        Self::Dispatched,
        Self::Running,
        Self::Succeeded,
        Self::Failed,
        Self::Cancelled,
    ];

    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
    /// Whether an attempt is out with the agent (the agent's in-flight marker names it).
    pub fn holds_agent(self) -> bool {
        matches!(self, Self::Dispatched | Self::Running)
    }
    /// The transition table. `dispatched → succeeded` is allowed: agents that report `idle` with
    /// the task id without an `active` first. `dispatched | running → pending` is a retry.
    pub fn can_become(self, to: TaskStatus) -> bool {
        use TaskStatus::*;
        matches!(
            (self, to),
            (Pending, Dispatched | Failed | Cancelled)
                | (Dispatched, Running | Succeeded | Pending | Failed | Cancelled)
                | (Running, Succeeded | Pending | Failed | Cancelled)
        )
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Dispatched => "dispatched",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

/// One attempt's timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Attempt {
    pub attempt: u32,
    /// The `opscore_task_id` sent with this attempt.
    pub dispatch_id: String,
    #[serde(with = "time::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub claimed_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "time::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub accepted_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "time::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub started_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "time::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub ended_at: Option<Timestamp>,
    /// `succeeded`, `failed`, `cancelled` once the attempt is over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskInstance {
    pub session_id: SessionId,
    pub task_id: TaskId,
    /// The agent the task runs on. For a routed task (`capability` set): the session's agent
    /// until a claim, then the agent that holds (or last held) an attempt.
    pub agent_id: AgentId,
    /// Routed by this capability: while pending, any available agent announcing it may claim
    /// the task (the capability's runnable index lists it, not the agent's). `None`: the task
    /// runs on `agent_id`, as every task did before routing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capability: Option<String>,
    pub name: String,
    pub payload: Value,
    pub next_task_id: Option<TaskId>,
    pub status: TaskStatus,
    /// Attempts started so far (0 until the first claim).
    pub attempt: u32,
    pub max_retries: u32,
    #[serde(with = "time::rfc3339")]
    pub created_at: Timestamp,
    #[serde(with = "time::rfc3339")]
    pub updated_at: Timestamp,
    /// While pending: not before this instant (a retry's backoff).
    #[serde(with = "time::rfc3339")]
    pub due_at: Timestamp,
    /// While pending: fail if still not dispatched by then.
    #[serde(with = "time::rfc3339::option")]
    pub dispatch_deadline: Option<Timestamp>,
    /// While dispatched and not yet accepted by AgentKit: the claimant's lease.
    #[serde(with = "time::rfc3339::option")]
    pub lease_expires_at: Option<Timestamp>,
    /// Once accepted: the attempt fails if the agent has not finished by then.
    #[serde(with = "time::rfc3339::option")]
    pub run_deadline: Option<Timestamp>,
    /// When the sweep must look at this task next; `None` once terminal.
    #[serde(with = "time::rfc3339::option")]
    pub timer_at: Option<Timestamp>,
    pub attempts: Vec<Attempt>,
    pub result: Option<Map<String, Value>>,
    pub last_error: Option<String>,
    pub rev: u64,
}

/// A task transition that does not apply to the task as it is: the transition table
/// ([`TaskStatus::can_become`]) does not allow it, or a same-status update found the task in a
/// status it does not apply to. (Named apart from the session's
/// [`TransitionError`](crate::session::TransitionError).)
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot {transition} a task that is {}", .from.as_str())]
pub struct TaskTransitionError {
    /// The transition refused: `claim`, `accept`, `start running`, `retry`, `succeed`, `fail`,
    /// `cancel` or `park`.
    pub transition: &'static str,
    /// The task's status when it was refused.
    pub from: TaskStatus,
}

impl TaskInstance {
    /// A new pending task for `def` in `session`, due at once. It fails if it is not dispatched
    /// within the definition's dispatch timeout; until then the sweep looks at it after `recheck`
    /// (a safety net should the change that would dispatch it be lost), or at the deadline if
    /// that comes first.
    pub fn new(session: &Session, def: &TaskDefinition, payload: Value, now: Timestamp, recheck: Duration) -> Self {
        let deadline = after(now, session.definition.dispatch_timeout());
        Self {
            session_id: session.session_id,
            task_id: def.task_id.clone(),
            agent_id: session.agent_id.clone(),
            capability: session.definition.routed_capability(def).map(str::to_owned),
            name: def.name.clone(),
            payload,
            next_task_id: def.next_task_id.clone(),
            status: TaskStatus::Pending,
            attempt: 0,
            max_retries: session.definition.max_retries_for(def),
            created_at: now,
            updated_at: now,
            due_at: now,
            dispatch_deadline: Some(deadline),
            lease_expires_at: None,
            run_deadline: None,
            timer_at: Some(after(now, recheck).min(deadline)),
            attempts: Vec::new(),
            result: None,
            last_error: None,
            rev: 0,
        }
    }

    /// `pending → dispatched`: a runner claimed the task for its next attempt. The attempt count
    /// goes up and the attempt's record is opened. The dispatch deadline is met; the timer is the
    /// claimant's lease (`lease_until`), so that if the claimant dies before it has recorded
    /// AgentKit's answer, the sweep fails the attempt when the lease expires.
    pub fn claim(&self, now: Timestamp, lease_until: Timestamp) -> Result<Self, TaskTransitionError> {
        let mut next = self.become_status("claim", TaskStatus::Dispatched, now)?;
        next.attempt += 1;
        next.dispatch_deadline = None;
        next.lease_expires_at = Some(lease_until);
        next.timer_at = Some(lease_until);
        let dispatch = DispatchId {
            session_id: next.session_id,
            task_id: next.task_id.clone(),
            attempt: next.attempt,
        };
        next.attempts.push(Attempt {
            attempt: next.attempt,
            dispatch_id: dispatch.render(),
            claimed_at: now,
            accepted_at: None,
            started_at: None,
            ended_at: None,
            outcome: None,
            error: None,
        });
        Ok(next)
    }

    /// [`Self::claim`] of a routed task by `agent`, any available agent announcing its
    /// capability: the attempt is `agent`'s, so it is the one whose reports complete it and whose
    /// in-flight marker names it. Refused for a task that is not routed (it has its agent).
    pub fn claim_by(
        &self,
        agent: &AgentId,
        now: Timestamp,
        lease_until: Timestamp,
    ) -> Result<Self, TaskTransitionError> {
        if self.capability.is_none() {
            return Err(TaskTransitionError {
                transition: "claim by capability",
                from: self.status,
            });
        }
        let mut next = self.claim(now, lease_until)?;
        next.agent_id = agent.clone();
        Ok(next)
    }

    /// Pending and waiting in its agent's runnable list (`runnable_tasks`).
    pub fn is_runnable_by_agent(&self) -> bool {
        self.status == TaskStatus::Pending && self.capability.is_none()
    }

    /// Pending and waiting in its capability's runnable list (`routed_tasks`): the capability.
    pub fn runnable_capability(&self) -> Option<&str> {
        (self.status == TaskStatus::Pending)
            .then_some(self.capability.as_deref())
            .flatten()
    }

    /// Same status (`dispatched` or `running`): AgentKit accepted the attempt. The lease is over;
    /// the run deadline is the timer now: the attempt fails if the agent has not finished by
    /// then. A run deadline already set is kept (the agent's `active` can be recorded before
    /// AgentKit's answer), so one attempt has one deadline.
    pub fn accept(&self, now: Timestamp, run_deadline: Timestamp) -> Result<Self, TaskTransitionError> {
        let mut next = self.keep_status("accept", self.status.holds_agent(), now)?;
        if let Some(a) = next.current_attempt_mut() {
            a.accepted_at.get_or_insert(now);
        }
        next.await_run_deadline(run_deadline);
        Ok(next)
    }

    /// `dispatched → running`: the agent reported `active` for the attempt. That also means the
    /// attempt reached the agent, so the lease is over as in [`Self::accept`] and the run
    /// deadline (kept if already set) is the timer. A second `active` is refused: the task is
    /// running already.
    pub fn start_running(&self, now: Timestamp, run_deadline: Timestamp) -> Result<Self, TaskTransitionError> {
        let mut next = self.become_status("start running", TaskStatus::Running, now)?;
        if let Some(a) = next.current_attempt_mut() {
            a.started_at.get_or_insert(now);
        }
        next.await_run_deadline(run_deadline);
        Ok(next)
    }

    /// `dispatched | running → pending`: the attempt failed with `error` and the task will be
    /// tried again. The attempt is closed as failed; the task is due again at `due_at` (the
    /// backoff) and fails if it is still not dispatched by `dispatch_deadline`. The lease and the
    /// run deadline belonged to the failed attempt and are cleared. Whether a retry is due at all
    /// (retryable, [`Self::retries_left`]) is the caller's decision.
    pub fn retry_later(
        &self,
        now: Timestamp,
        error: &str,
        due_at: Timestamp,
        dispatch_deadline: Timestamp,
    ) -> Result<Self, TaskTransitionError> {
        let mut next = self.become_status("retry", TaskStatus::Pending, now)?;
        next.close_attempt(now, "failed", Some(error));
        next.last_error = Some(error.to_owned());
        next.due_at = due_at;
        next.dispatch_deadline = Some(dispatch_deadline);
        next.lease_expires_at = None;
        next.run_deadline = None;
        next.timer_at = Some(due_at);
        Ok(next)
    }

    /// `dispatched | running → succeeded`: the agent reported the attempt done; `result` is what
    /// it reported with it (its `details`). Like every ending, it clears every timer and closes
    /// the attempt.
    pub fn succeed(&self, now: Timestamp, result: Option<Map<String, Value>>) -> Result<Self, TaskTransitionError> {
        let mut next = self.end("succeed", TaskStatus::Succeeded, now, None)?;
        next.result = result;
        Ok(next)
    }

    /// `pending | dispatched | running → failed`: the task failed for good with `error` (no
    /// retries left, a failure a retry would not mend, not dispatched in time, its agent gone).
    /// `error` is its last error and, if an attempt was out, that attempt's error.
    pub fn fail(&self, now: Timestamp, error: &str) -> Result<Self, TaskTransitionError> {
        let mut next = self.end("fail", TaskStatus::Failed, now, Some(error))?;
        next.last_error = Some(error.to_owned());
        Ok(next)
    }

    /// `pending | dispatched | running → cancelled`: its session was cancelled. `reason` is
    /// recorded on the attempt out with the agent, if any; the task's last error is not changed
    /// (a cancellation is not an error of the task).
    pub fn cancel(&self, now: Timestamp, reason: &str) -> Result<Self, TaskTransitionError> {
        self.end("cancel", TaskStatus::Cancelled, now, Some(reason))
    }

    /// Same status (`pending`): the sweep found the task due but could not dispatch it (the agent
    /// is busy or not idle). The agent's next change dispatches it; the sweep's timer moves to the
    /// dispatch deadline, when it fails the task if it is still waiting.
    pub fn park(&self, now: Timestamp) -> Result<Self, TaskTransitionError> {
        let mut next = self.keep_status("park", self.status == TaskStatus::Pending, now)?;
        next.timer_at = next.dispatch_deadline;
        Ok(next)
    }

    /// Into terminal status `to`: no timer of any kind is left (the sweep never looks at an ended
    /// task), and the attempt out with the agent, if any, is closed with `to` as its outcome.
    fn end(
        &self,
        transition: &'static str,
        to: TaskStatus,
        now: Timestamp,
        error: Option<&str>,
    ) -> Result<Self, TaskTransitionError> {
        debug_assert!(to.is_terminal(), "{to:?}");
        let mut next = self.become_status(transition, to, now)?;
        next.dispatch_deadline = None;
        next.lease_expires_at = None;
        next.run_deadline = None;
        next.timer_at = None;
        if self.status.holds_agent() {
            next.close_attempt(now, to.as_str(), error);
        }
        Ok(next)
    }

    /// A status change, if the transition table allows it.
    fn become_status(
        &self,
        transition: &'static str,
        to: TaskStatus,
        now: Timestamp,
    ) -> Result<Self, TaskTransitionError> {
        self.next_version(transition, self.status.can_become(to), to, now)
    }

    /// A same-status update, if it applies to the current status (`applies`).
    fn keep_status(
        &self,
        transition: &'static str,
        applies: bool,
        now: Timestamp,
    ) -> Result<Self, TaskTransitionError> {
        self.next_version(transition, applies, self.status, now)
    }

    /// The one place a next version is made: every write of a task is conditioned on the
    /// revision it read, so every version, same status or not, has a new `rev`.
    fn next_version(
        &self,
        transition: &'static str,
        allowed: bool,
        to: TaskStatus,
        now: Timestamp,
    ) -> Result<Self, TaskTransitionError> {
        if !allowed {
            return Err(TaskTransitionError {
                transition,
                from: self.status,
            });
        }
        let mut next = self.clone();
        next.status = to;
        next.rev += 1;
        next.updated_at = now;
        Ok(next)
    }

    /// The attempt reached the agent: the lease is over and the run deadline (the first one set
    /// for this attempt) is the timer.
    fn await_run_deadline(&mut self, run_deadline: Timestamp) {
        self.lease_expires_at = None;
        let deadline = *self.run_deadline.get_or_insert(run_deadline);
        self.timer_at = Some(deadline);
    }

    fn close_attempt(&mut self, now: Timestamp, outcome: &str, error: Option<&str>) {
        if let Some(a) = self.current_attempt_mut() {
            a.ended_at = Some(now);
            a.outcome = Some(outcome.to_owned());
            a.error = error.map(str::to_owned);
        }
    }

    pub fn key(&self) -> TaskKey {
        TaskKey {
            session_id: self.session_id,
            task_id: self.task_id.clone(),
        }
    }
    /// The id of the attempt currently out with the agent.
    pub fn current_dispatch(&self) -> Option<DispatchId> {
        self.status.holds_agent().then(|| DispatchId {
            session_id: self.session_id,
            task_id: self.task_id.clone(),
            attempt: self.attempt,
        })
    }
    pub fn retries_left(&self) -> bool {
        self.attempt <= self.max_retries
    }
    fn current_attempt_mut(&mut self) -> Option<&mut Attempt> {
        let n = self.attempt;
        self.attempts.iter_mut().rev().find(|a| a.attempt == n)
    }
}

/// The key of a task instance.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TaskKey {
    pub session_id: SessionId,
    pub task_id: TaskId,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workflow::WorkflowDefinition;
    use TaskStatus::*;

    fn t0() -> Timestamp {
        time::parse_rfc3339("2030-01-01T00:00:00Z").unwrap()
    }

    /// `s` seconds after [`t0`].
    fn at(s: i64) -> Timestamp {
        t0() + chrono::Duration::seconds(s)
    }

    /// A fresh task (dispatch timeout 600 s, recheck 30 s, maxRetries 2), made the way
    /// a trigger makes it.
    fn fresh() -> TaskInstance {
        let def = WorkflowDefinition::from_value(serde_json::json!({
            "id": "w", "name": "n", "dispatchTimeoutSeconds": 600,
            "retryPolicy": {"maxRetries": 2},
            "tasks": [{"taskId": "a", "name": "A", "parameters": {"x": 1}}]}))
        .unwrap();
        let session = Session::start(AgentId::parse("agent").unwrap(), def, None, None, t0());
        let entry = session.definition.entry().clone();
        TaskInstance::new(&session, &entry, Value::Null, t0(), Duration::from_secs(30))
    }

    /// The fresh task claimed at 1 s with a lease to 31 s.
    fn claimed() -> TaskInstance {
        fresh().claim(at(1), at(31)).unwrap()
    }

    /// A task in `status` as far as the transition table is concerned.
    fn in_status(status: TaskStatus) -> TaskInstance {
        TaskInstance { status, ..claimed() }
    }

    fn refused(r: Result<TaskInstance, TaskTransitionError>, transition: &str, from: TaskStatus) {
        match r {
            Err(e) => assert_eq!((e.transition, e.from), (transition, from), "{e}"),
            Ok(t) => panic!("{transition} from {from:?} was allowed: {:?}", t.status),
        }
    }

    #[test]
    fn a_new_task_is_pending_and_due_at_once() {
        let t = fresh();
        assert_eq!((t.status, t.attempt, t.rev, t.max_retries), (Pending, 0, 0, 2));
        assert_eq!(t.due_at, t0());
        assert_eq!(t.dispatch_deadline, Some(at(600)));
        assert_eq!(t.timer_at, Some(at(30)), "the recheck comes before the deadline");
        assert_eq!((t.lease_expires_at, t.run_deadline), (None, None));
        assert!(t.attempts.is_empty());
    }

    #[test]
    fn claim_opens_an_attempt_under_a_lease() {
        let t = claimed();
        assert_eq!((t.status, t.attempt, t.rev), (Dispatched, 1, 1));
        assert_eq!(t.updated_at, at(1));
        assert_eq!(t.lease_expires_at, Some(at(31)));
        assert_eq!(t.timer_at, Some(at(31)));
        assert_eq!(t.dispatch_deadline, None, "met");
        assert_eq!(t.attempts.len(), 1);
        let a = &t.attempts[0];
        assert_eq!((a.attempt, a.claimed_at), (1, at(1)));
        assert_eq!(Some(a.dispatch_id.clone()), t.current_dispatch().map(|d| d.render()));
        assert!(a.dispatch_id.ends_with(":a:1"), "{}", a.dispatch_id);
        refused(t.claim(at(2), at(32)), "claim", Dispatched);
        refused(in_status(Running).claim(at(2), at(32)), "claim", Running);
    }

    #[test]
    fn accept_turns_the_lease_into_a_run_deadline_once() {
        let t = claimed().accept(at(2), at(62)).unwrap();
        assert_eq!((t.status, t.rev, t.updated_at), (Dispatched, 2, at(2)));
        assert_eq!(t.lease_expires_at, None);
        assert_eq!((t.run_deadline, t.timer_at), (Some(at(62)), Some(at(62))));
        assert_eq!(t.attempts[0].accepted_at, Some(at(2)));
        // Accepted again (a re-read after a lost write): the first deadline and instant stay.
        let again = t.accept(at(5), at(65)).unwrap();
        assert_eq!(
            (again.run_deadline, again.timer_at, again.rev),
            (Some(at(62)), Some(at(62)), 3)
        );
        assert_eq!(again.attempts[0].accepted_at, Some(at(2)));
        // A running attempt can still be accepted (the agent's `active` was recorded first).
        let running = claimed().start_running(at(2), at(62)).unwrap();
        assert_eq!(running.accept(at(3), at(63)).unwrap().status, Running);
        refused(fresh().accept(at(2), at(62)), "accept", Pending);
        refused(in_status(Succeeded).accept(at(2), at(62)), "accept", Succeeded);
    }

    #[test]
    fn start_running_keeps_the_deadline_acceptance_set() {
        let t = claimed().start_running(at(3), at(63)).unwrap();
        assert_eq!((t.status, t.rev, t.updated_at), (Running, 2, at(3)));
        assert_eq!(t.lease_expires_at, None, "the agent has it: the lease is over");
        assert_eq!((t.run_deadline, t.timer_at), (Some(at(63)), Some(at(63))));
        assert_eq!(t.attempts[0].started_at, Some(at(3)));
        let accepted_first = claimed().accept(at(2), at(62)).unwrap();
        let t = accepted_first.start_running(at(3), at(63)).unwrap();
        assert_eq!((t.run_deadline, t.timer_at, t.rev), (Some(at(62)), Some(at(62)), 3));
        refused(t.start_running(at(4), at(64)), "start running", Running);
        refused(fresh().start_running(at(4), at(64)), "start running", Pending);
    }

    #[test]
    fn retry_later_closes_the_attempt_and_waits_for_the_backoff() {
        let running = claimed().start_running(at(3), at(63)).unwrap();
        let t = running.retry_later(at(63), "timed out", at(65), at(665)).unwrap();
        assert_eq!((t.status, t.rev, t.updated_at, t.attempt), (Pending, 3, at(63), 1));
        assert_eq!(t.due_at, at(65));
        assert_eq!(t.dispatch_deadline, Some(at(665)));
        assert_eq!(t.timer_at, Some(at(65)));
        assert_eq!(
            (t.lease_expires_at, t.run_deadline),
            (None, None),
            "the failed attempt's timers"
        );
        assert_eq!(t.last_error.as_deref(), Some("timed out"));
        let a = &t.attempts[0];
        assert_eq!(
            (a.ended_at, a.outcome.as_deref(), a.error.as_deref()),
            (Some(at(63)), Some("failed"), Some("timed out"))
        );
        assert_eq!(t.current_dispatch(), None, "no attempt is out");
        // The next claim is attempt 2 with a record of its own.
        let second = t.claim(at(65), at(95)).unwrap();
        assert_eq!((second.attempt, second.attempts.len()), (2, 2));
        assert_eq!(
            second.attempts[0].outcome.as_deref(),
            Some("failed"),
            "attempt 1 untouched"
        );
        assert!(second.attempts[1].dispatch_id.ends_with(":a:2"));
        // From dispatched as well (AgentKit answered 503).
        assert_eq!(
            claimed().retry_later(at(2), "503", at(4), at(604)).unwrap().status,
            Pending
        );
        refused(fresh().retry_later(at(2), "x", at(4), at(604)), "retry", Pending);
        refused(
            in_status(Failed).retry_later(at(2), "x", at(4), at(604)),
            "retry",
            Failed,
        );
    }

    #[test]
    fn succeed_records_the_result_and_clears_every_timer() {
        let mut result = Map::new();
        result.insert("output".into(), "done".into());
        let t = claimed()
            .start_running(at(3), at(63))
            .unwrap()
            .succeed(at(9), Some(result.clone()))
            .unwrap();
        assert_eq!((t.status, t.rev, t.updated_at), (Succeeded, 3, at(9)));
        assert_eq!(t.result, Some(result));
        assert_eq!(
            (t.timer_at, t.lease_expires_at, t.run_deadline, t.dispatch_deadline),
            (None, None, None, None)
        );
        let a = &t.attempts[0];
        assert_eq!(
            (a.ended_at, a.outcome.as_deref(), a.error.as_deref()),
            (Some(at(9)), Some("succeeded"), None)
        );
        // Straight from dispatched: agents that report `idle` with the id and no `active`.
        assert_eq!(claimed().succeed(at(9), None).unwrap().status, Succeeded);
        refused(fresh().succeed(at(9), None), "succeed", Pending);
        refused(t.succeed(at(10), None), "succeed", Succeeded);
    }

    #[test]
    fn fail_ends_the_task_with_its_last_error() {
        let t = claimed().fail(at(5), "AgentKit answered 422").unwrap();
        assert_eq!((t.status, t.rev, t.updated_at), (Failed, 2, at(5)));
        assert_eq!(t.last_error.as_deref(), Some("AgentKit answered 422"));
        assert_eq!((t.timer_at, t.lease_expires_at, t.run_deadline), (None, None, None));
        let a = &t.attempts[0];
        assert_eq!(
            (a.outcome.as_deref(), a.error.as_deref()),
            (Some("failed"), Some("AgentKit answered 422"))
        );
        // A pending task (not dispatched in time): no attempt to close, the deadline cleared.
        let t = fresh().fail(at(600), "not dispatched within 600 s").unwrap();
        assert_eq!((t.status, t.rev), (Failed, 1));
        assert_eq!((t.timer_at, t.dispatch_deadline), (None, None));
        assert!(t.attempts.is_empty());
        // A pending retry: the earlier attempt's record stays as it was.
        let waiting = claimed().retry_later(at(2), "503", at(4), at(604)).unwrap();
        let t = waiting.fail(at(5), "agent was deregistered").unwrap();
        assert_eq!(t.attempts[0].error.as_deref(), Some("503"));
        assert_eq!(t.attempts[0].ended_at, Some(at(2)));
        refused(t.fail(at(6), "again"), "fail", Failed);
        refused(in_status(Cancelled).fail(at(6), "x"), "fail", Cancelled);
    }

    #[test]
    fn cancel_closes_the_attempt_and_leaves_the_last_error() {
        let waiting = claimed().retry_later(at(2), "503", at(4), at(604)).unwrap();
        let t = waiting.cancel(at(3), "session cancelled").unwrap();
        assert_eq!((t.status, t.rev), (Cancelled, 3));
        assert_eq!(
            t.last_error.as_deref(),
            Some("503"),
            "a cancellation is not the task's error"
        );
        assert_eq!((t.timer_at, t.dispatch_deadline), (None, None));
        let t = claimed().cancel(at(3), "session cancelled").unwrap();
        let a = &t.attempts[0];
        assert_eq!(
            (a.outcome.as_deref(), a.error.as_deref()),
            (Some("cancelled"), Some("session cancelled"))
        );
        assert_eq!(t.last_error, None);
        refused(t.cancel(at(4), "again"), "cancel", Cancelled);
        refused(in_status(Succeeded).cancel(at(4), "late"), "cancel", Succeeded);
    }

    #[test]
    fn park_waits_for_the_dispatch_deadline() {
        let t = fresh().park(at(30)).unwrap();
        assert_eq!((t.status, t.rev, t.updated_at), (Pending, 1, at(30)));
        assert_eq!(t.timer_at, Some(at(600)));
        assert_eq!(t.due_at, t0(), "still due: the agent's next change dispatches it");
        refused(claimed().park(at(30)), "park", Dispatched);
    }

    /// Every transition consults the table: from each status, a status change is allowed
    /// exactly when `can_become` allows it.
    #[test]
    fn every_transition_follows_the_table() {
        for from in TaskStatus::ALL {
            let t = in_status(from);
            let n = at(100);
            let cases: [(TaskStatus, bool); 7] = [
                (Dispatched, t.claim(n, n).is_ok()),
                (Running, t.start_running(n, n).is_ok()),
                (Pending, t.retry_later(n, "e", n, n).is_ok()),
                (Succeeded, t.succeed(n, None).is_ok()),
                (Failed, t.fail(n, "e").is_ok()),
                (Cancelled, t.cancel(n, "e").is_ok()),
                (from, t.accept(n, n).is_ok()),
            ];
            for (i, (to, ok)) in cases.into_iter().enumerate() {
                let expected = if i == 6 {
                    from.holds_agent()
                } else {
                    from.can_become(to)
                };
                assert_eq!(ok, expected, "{from:?} -> {to:?} (case {i})");
            }
            assert_eq!(t.park(n).is_ok(), from == Pending, "park from {from:?}");
        }
    }

    #[test]
    fn a_refusal_names_the_transition_and_the_status() {
        let e = in_status(Succeeded).fail(t0(), "x").unwrap_err();
        assert_eq!(e.to_string(), "cannot fail a task that is succeeded");
    }

    #[test]
    fn terminal_tasks_are_final() {
        for from in TaskStatus::ALL {
            for to in TaskStatus::ALL {
                if from.is_terminal() {
                    assert!(!from.can_become(to));
                }
            }
            assert!(!from.can_become(from), "{from:?} -> itself");
        }
        assert!(!TaskStatus::Pending.can_become(TaskStatus::Running));
        assert!(!TaskStatus::Pending.can_become(TaskStatus::Succeeded));
    }
}
