//! Task instances: `pending → dispatched → running → succeeded | failed` (and `cancelled`).

use crate::ids::{AgentId, DispatchId, SessionId, TaskId};
use crate::time::{self, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

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
    pub agent_id: AgentId,
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

impl TaskInstance {
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
    pub fn current_attempt_mut(&mut self) -> Option<&mut Attempt> {
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
