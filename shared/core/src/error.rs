//! The application layer's error: what went wrong, in terms a client can act on.
//! The HTTP layer maps it to a status code in exactly one place.

use crate::ids::{AgentId, SessionId, WorkflowId, WorkflowVersion};
use crate::store::{AgentWriteError, CommitError, StoreError};
use crate::workflow::Problem;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AppError {
    /// The request is malformed (400).
    #[error("{0}")]
    BadRequest(String),
    /// The request is well-formed but its content is invalid; lists every problem (422).
    #[error("{message}")]
    Invalid { message: String, problems: Vec<Problem> },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// The store is unreachable or throttling; retry later (503).
    #[error("{0}")]
    Unavailable(String),
    /// A stored item could not be read back; our bug, not the client's (500).
    #[error("{0}")]
    Internal(String),
}

impl AppError {
    pub fn invalid(message: impl Into<String>, problems: Vec<Problem>) -> Self {
        Self::Invalid {
            message: message.into(),
            problems,
        }
    }
}

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable { message, .. } => {
                AppError::Unavailable(format!("storage unavailable, retry later: {message}"))
            }
            StoreError::InvalidCursor => AppError::BadRequest("invalid pagination cursor".into()),
            StoreError::Corrupt { message, .. } => AppError::Internal(format!("corrupt stored item: {message}")),
        }
    }
}

impl From<CommitError> for AppError {
    fn from(e: CommitError) -> Self {
        match e {
            CommitError::Store(s) => s.into(),
            CommitError::Conflict { .. } => AppError::Conflict("a concurrent change won; retry the request".into()),
        }
    }
}

/// The "not found" and "deregistered" answers, worded once.
impl AppError {
    pub fn agent_not_found(id: &AgentId) -> Self {
        AppError::NotFound(format!("Agent not found: {id}"))
    }
    pub fn agent_deregistered(id: &AgentId) -> Self {
        AppError::Conflict(format!("Agent is deregistered: {id}"))
    }
    pub fn workflow_not_found(id: &WorkflowId, version: Option<&WorkflowVersion>) -> Self {
        match version {
            Some(v) => AppError::NotFound(format!("Workflow definition not found: {id} version {v}")),
            None => AppError::NotFound(format!("Workflow definition not found: {id}")),
        }
    }
    pub fn session_not_found(id: &SessionId) -> Self {
        AppError::NotFound(format!("Session not found: {id}"))
    }
    /// A write to agent `id` that the store refused.
    pub fn agent_write(e: AgentWriteError, id: &AgentId) -> Self {
        match e {
            AgentWriteError::NotFound => Self::agent_not_found(id),
            AgentWriteError::Deregistered => Self::agent_deregistered(id),
            AgentWriteError::Store(s) => s.into(),
        }
    }
}
