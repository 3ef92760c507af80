//! Workflow sessions: `started → running → completed | failed | cancelled`.

use crate::ids::{AgentId, IdempotencyKey, SessionId, TaskId};
use crate::time::{self, Timestamp};
use crate::workflow::WorkflowDefinition;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The agent id a session started without an agent carries (routing by capability, issue 18):
/// every task of it is routed, so it runs on no agent of its own; its sessions are listed under
/// this id (`GET /v1/opscore/agent/opscore.routed/sessions`), and no agent may register with it.
pub const ROUTED_POOL: &str = "opscore.routed";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SessionStatus {
    Started,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl SessionStatus {
    pub const ALL: [SessionStatus; 5] = [
        Self::Started,
        Self::Running,
        Self::Completed,
        Self::Failed,
        Self::Cancelled,
    ];

    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }
    /// The transition table. A terminal status is final; nothing goes back to `started`.
    pub fn can_become(self, to: SessionStatus) -> bool {
        use SessionStatus::*;
        matches!(
            (self, to),
            (Started, Running) | (Started | Running, Completed | Failed | Cancelled)
        )
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Started => "started",
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
    /// The status named `name`, or an error that lists the names (for a filter given as text:
    /// the API's `?status=`, the CLI's `--status`).
    pub fn parse(name: &str) -> Result<Self, String> {
        Self::ALL.into_iter().find(|st| st.as_str() == name).ok_or_else(|| {
            let names: Vec<&str> = Self::ALL.iter().map(|st| st.as_str()).collect();
            format!("must be one of {}; got {name:?}", names.join(", "))
        })
    }
}

/// Why a session failed, for machines (`error.code`). Stored and sent as these strings:
///
/// - `retries_exhausted`: a task's last attempt failed (AgentKit unavailable, the agent reported
///   `error`, the runner that claimed it died) and no retries were left;
/// - `dispatch_timeout`: a task was not dispatched within `dispatchTimeoutSeconds`: its agent
///   never became available;
/// - `task_timeout`: a task's last attempt did not finish within its timeout (`timeoutSeconds`,
///   else `taskTimeoutSeconds`) and no retries were left;
/// - `dispatch_rejected`: AgentKit refused a dispatch with an answer a retry would not change
///   (a 4xx other than 404, 408 and 429);
/// - `dispatch_redirected`: AgentKit answered a dispatch with a redirect, which is never followed;
/// - `agent_deregistered`: the agent was deregistered while it held or waited for a task;
/// - `cancelled`: the session was cancelled by request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FailureCode {
    RetriesExhausted,
    DispatchTimeout,
    TaskTimeout,
    DispatchRejected,
    DispatchRedirected,
    AgentDeregistered,
    Cancelled,
}

impl FailureCode {
    pub const ALL: [FailureCode; 7] = [
        Self::RetriesExhausted,
        Self::DispatchTimeout,
        Self::TaskTimeout,
        Self::DispatchRejected,
        Self::DispatchRedirected,
        Self::AgentDeregistered,
        Self::Cancelled,
    ];

    /// The wire and stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RetriesExhausted => "retries_exhausted",
            Self::DispatchTimeout => "dispatch_timeout",
            Self::TaskTimeout => "task_timeout",
            Self::DispatchRejected => "dispatch_rejected",
            Self::DispatchRedirected => "dispatch_redirected",
            Self::AgentDeregistered => "agent_deregistered",
            Self::Cancelled => "cancelled",
        }
    }
}

impl std::fmt::Display for FailureCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a session failed: names the task, its attempts and the last error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailureCause {
    pub code: FailureCode,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub task_id: Option<TaskId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    pub session_id: SessionId,
    pub agent_id: AgentId,
    /// A snapshot: later versions of the definition do not change a running session.
    pub definition: WorkflowDefinition,
    pub initial_payload: Option<Value>,
    pub idempotency_key: Option<IdempotencyKey>,
    pub status: SessionStatus,
    #[serde(with = "time::rfc3339")]
    pub start_time: Timestamp,
    #[serde(with = "time::rfc3339::option")]
    pub end_time: Option<Timestamp>,
    #[serde(with = "time::rfc3339")]
    pub updated_at: Timestamp,
    pub result: Option<Value>,
    pub error: Option<FailureCause>,
    /// Bumped by every write; transitions are conditioned on it.
    pub rev: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("session cannot go from {from} to {to}")]
pub struct TransitionError {
    pub from: &'static str,
    pub to: &'static str,
}

impl Session {
    pub fn start(
        agent_id: AgentId,
        definition: WorkflowDefinition,
        initial_payload: Option<Value>,
        idempotency_key: Option<IdempotencyKey>,
        now: Timestamp,
    ) -> Self {
        Self {
            session_id: SessionId::new(),
            agent_id,
            definition,
            initial_payload,
            idempotency_key,
            status: SessionStatus::Started,
            start_time: now,
            end_time: None,
            updated_at: now,
            result: None,
            error: None,
            rev: 0,
        }
    }

    /// The next version of this session in `to`; terminal statuses set `endTime`.
    pub fn transition(&self, to: SessionStatus, now: Timestamp) -> Result<Session, TransitionError> {
        if !self.status.can_become(to) {
            return Err(TransitionError {
                from: self.status.as_str(),
                to: to.as_str(),
            });
        }
        let mut next = self.clone();
        next.status = to;
        next.updated_at = now;
        next.rev += 1;
        if to.is_terminal() {
            next.end_time = Some(now);
        }
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_is_final_and_sets_end_time() {
        use SessionStatus::*;
        for from in SessionStatus::ALL {
            for to in SessionStatus::ALL {
                if from.is_terminal() {
                    assert!(!from.can_become(to), "{from:?} -> {to:?}");
                }
            }
        }
        assert!(!Running.can_become(Started));
        assert!(Started.can_become(Cancelled));
        let def = crate::workflow::WorkflowDefinition::from_value(serde_json::json!(
            {"id":"w","name":"n","tasks":[{"taskId":"a","name":"A"}]}))
        .unwrap();
        let now = chrono::Utc::now();
        let s = Session::start(AgentId::parse("a").unwrap(), def, None, None, now);
        let r = s.transition(Running, now).unwrap();
        assert_eq!(r.end_time, None);
        let c = r.transition(Completed, now).unwrap();
        assert_eq!(c.end_time, Some(now));
        assert_eq!(c.rev, 2);
        assert!(c.transition(Failed, now).is_err());
    }

    /// The codes are stored in sessions and sent to clients: their strings never change.
    #[test]
    fn failure_codes_keep_their_strings() {
        let strings = [
            "retries_exhausted",
            "dispatch_timeout",
            "task_timeout",
            "dispatch_rejected",
            "dispatch_redirected",
            "agent_deregistered",
            "cancelled",
        ];
        for (code, s) in FailureCode::ALL.into_iter().zip(strings) {
            assert_eq!(code.as_str(), s);
            assert_eq!(code.to_string(), s);
            assert_eq!(serde_json::to_value(code).unwrap(), Value::String(s.into()));
            assert_eq!(
                serde_json::from_value::<FailureCode>(Value::String(s.into())).unwrap(),
                code
            );
        }
        // A cause as stored before the enum reads back the same.
        let stored = serde_json::json!({"code": "dispatch_timeout", "message": "m", "taskId": "step_1", "attempts": 0});
        let cause: FailureCause = serde_json::from_value(stored.clone()).unwrap();
        assert_eq!(cause.code, FailureCode::DispatchTimeout);
        assert_eq!(serde_json::to_value(&cause).unwrap(), stored);
        assert!(serde_json::from_value::<FailureCode>(Value::String("RetriesExhausted".into())).is_err());
    }
}
