//! The application layer's error: what went wrong, in terms a client can act on.
//! The HTTP layer maps it to a status code in exactly one place.

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
            StoreError::Unavailable(m) => AppError::Unavailable(format!("storage unavailable, retry later: {m}")),
            StoreError::InvalidCursor => AppError::BadRequest("invalid pagination cursor".into()),
            StoreError::Corrupt(m) => AppError::Internal(format!("corrupt stored item: {m}")),
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

impl From<AgentWriteError> for AppError {
    fn from(e: AgentWriteError) -> Self {
        match e {
            AgentWriteError::NotFound => AppError::NotFound("Agent not found".into()),
            AgentWriteError::Deregistered => AppError::Conflict("Agent is deregistered".into()),
            AgentWriteError::Store(s) => s.into(),
        }
    }
}
