//! Validating newtypes for every identifier that crosses a trust boundary.
//!
//! Ids end up inside DynamoDB keys (`AGENT#{id}`), URLs and log lines, so they are bounded and
//! restricted to characters that cannot break a key (`#`), a path (`/`) or a log line (controls).

use serde::{Deserialize, Serialize};
use std::fmt;

/// Why an id was refused; rendered into the 4xx body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {max} characters (got {got})")]
    TooLong { max: usize, got: usize },
    #[error("contains a character that is not allowed: {0:?} (allowed: {1})")]
    BadChar(char, &'static str),
    /// `.` and `..` name the current and the parent path segment: in a URL they would not stay
    /// an id (a dispatch to `/v1/agents/../run` is a POST to `/v1/run`).
    #[error("must not be \".\" or \"..\"")]
    DotSegment,
}

fn check(s: &str, max: usize, ok: fn(char) -> bool, allowed: &'static str, path: bool) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty);
    }
    // Ids that may stand in a URL path (agents, workflows; tasks and versions alike, as they
    // share the alphabet) must not be a dot segment.
    if path && (s == "." || s == "..") {
        return Err(IdError::DotSegment);
    }
    let n = s.chars().count();
    if n > max {
        return Err(IdError::TooLong { max, got: n });
    }
    match s.chars().find(|c| !ok(*c)) {
        Some(c) => Err(IdError::BadChar(c, allowed)),
        None => Ok(()),
    }
}

fn id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $max:expr, $pred:expr, $allowed:expr, $path:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub const MAX_LEN: usize = $max;
            pub fn parse(s: impl Into<String>) -> Result<Self, IdError> {
                let s = s.into();
                check(&s, $max, $pred, $allowed, $path)?;
                Ok(Self(s))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                Self::parse(s)
            }
        }
        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

id_type!(
    /// An agent id. AgentKit chooses UUIDs; operators may use other ids, so any
    /// `[A-Za-z0-9._-]` string up to 128 characters is accepted.
    AgentId, 128, id_char, "letters, digits, '-', '_', '.'", true
);
id_type!(
    /// A workflow definition id (`sample_workflow_id`).
    WorkflowId, 128, id_char, "letters, digits, '-', '_', '.'", true
);
id_type!(
    /// A task id inside a workflow definition (`step_1`).
    TaskId, 128, id_char, "letters, digits, '-', '_', '.'", true
);
id_type!(
    /// A workflow version label (`1.0`).
    WorkflowVersion, 64, id_char, "letters, digits, '-', '_', '.'", true
);
id_type!(
    /// A client-chosen `Idempotency-Key`: any visible ASCII, 255 characters at most.
    IdempotencyKey, 255, |c: char| c.is_ascii_graphic(), "visible ASCII", false
);

/// A workflow session id: a UUID minted by Ops-Core.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SessionId(uuid::Uuid);

impl SessionId {
    pub fn new() -> Self {
        Self(uuid::Uuid::new_v4())
    }
    pub fn parse(s: &str) -> Result<Self, IdError> {
        if s.is_empty() {
            return Err(IdError::Empty);
        }
        uuid::Uuid::parse_str(s)
            .map(Self)
            .map_err(|_| IdError::BadChar(s.chars().next().unwrap_or('?'), "a UUID"))
    }
}
impl Default for SessionId {
    fn default() -> Self {
        Self::new()
    }
}
impl TryFrom<String> for SessionId {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        Self::parse(&s)
    }
}
impl From<SessionId> for String {
    fn from(v: SessionId) -> String {
        v.0.to_string()
    }
}
impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The id Ops-Core sends as `opscore_task_id` and expects back in `details.opscore_task_id`.
///
/// It names one *attempt* of one task (`{session}:{task}:{attempt}`), so a late report about an
/// earlier attempt can never complete a later one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DispatchId {
    pub session_id: SessionId,
    pub task_id: TaskId,
    pub attempt: u32,
}

impl DispatchId {
    pub fn render(&self) -> String {
        format!("{}:{}:{}", self.session_id, self.task_id, self.attempt)
    }
    pub fn parse(s: &str) -> Option<Self> {
        let mut it = s.splitn(3, ':');
        let session_id = SessionId::parse(it.next()?).ok()?;
        let task_id = TaskId::parse(it.next()?).ok()?;
        let attempt = it.next()?.parse().ok()?;
        Some(Self {
            session_id,
            task_id,
            attempt,
        })
    }
}

impl fmt::Display for DispatchId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_reject_key_and_path_breakers() {
        assert!(AgentId::parse("af8e59ab-6b62-47d1-b0af-fcb520de8640").is_ok());
        assert_eq!(AgentId::parse(""), Err(IdError::Empty));
        assert!(matches!(AgentId::parse("a#b"), Err(IdError::BadChar('#', _))));
        assert!(matches!(AgentId::parse("a/b"), Err(IdError::BadChar('/', _))));
        assert!(matches!(AgentId::parse("a\nb"), Err(IdError::BadChar('\n', _))));
        assert!(matches!(AgentId::parse("x".repeat(129)), Err(IdError::TooLong { .. })));
        assert!(IdempotencyKey::parse("req 1").is_err());
        assert!(IdempotencyKey::parse("req-1:abc/def").is_ok());
    }

    /// Issue 13, defect 2: `.` and `..` are path segments of their own (a dispatch to
    /// `/v1/agents/../run` is a POST to `/v1/run`): no id that can stand in a path may be one.
    #[test]
    fn dot_segments_are_refused_in_every_path_id() {
        for dots in [".", ".."] {
            assert!(AgentId::parse(dots).is_err(), "{dots}");
            assert!(WorkflowId::parse(dots).is_err(), "{dots}");
            assert!(TaskId::parse(dots).is_err(), "{dots}");
            assert!(WorkflowVersion::parse(dots).is_err(), "{dots}");
            assert!(
                serde_json::from_str::<AgentId>(&format!("\"{dots}\"")).is_err(),
                "{dots}"
            );
        }
        for fine in ["...", ".a", "a.", "a..b", "1.0"] {
            assert!(AgentId::parse(fine).is_ok(), "{fine}");
            assert!(WorkflowVersion::parse(fine).is_ok(), "{fine}");
        }
    }

    #[test]
    fn dispatch_id_round_trips() {
        let d = DispatchId {
            session_id: SessionId::new(),
            task_id: TaskId::parse("step_1").unwrap(),
            attempt: 3,
        };
        assert_eq!(DispatchId::parse(&d.render()), Some(d));
        assert_eq!(DispatchId::parse("step_1"), None);
        assert_eq!(DispatchId::parse(""), None);
    }

    #[test]
    fn serde_validates() {
        assert!(serde_json::from_str::<AgentId>("\"ok-1\"").is_ok());
        assert!(serde_json::from_str::<AgentId>("\"no#\"").is_err());
        assert!(serde_json::from_str::<SessionId>("\"not-a-uuid\"").is_err());
    }
}
