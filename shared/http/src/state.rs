//! `POST /v1/opscore/agent/{agentId}/state`: the body as the wire type [`StateUpdateRequest`],
//! read with every problem reported at once, then turned into the core's [`StateReport`].

use crate::error::HttpError;
use crate::extract::{FromJson, json_object};
use opscore_api::StateUpdateRequest;
use opscore_core::agent::{StateName, StateReport};
use opscore_core::ids::AgentId;
use opscore_core::time;
use opscore_core::workflow::Problem;
use serde_json::Value;

/// Largest `details` of a state report, serialised.
pub const MAX_DETAILS_BYTES: usize = 32 * 1024;

impl FromJson for StateUpdateRequest {
    /// Type problems are 422, all named at once; malformed JSON is 400.
    fn from_json(body: &[u8]) -> Result<Self, HttpError> {
        let mut obj = json_object(body)?;
        let mut problems = Vec::new();
        let mut string_field = |name: &str| match obj.remove(name) {
            Some(Value::String(s)) => Some(s),
            None | Some(Value::Null) => {
                problems.push(Problem::new(name, "is required"));
                None
            }
            Some(_) => {
                problems.push(Problem::new(name, "must be a string"));
                None
            }
        };
        let agent_id = string_field("agentId");
        let timestamp = string_field("timestamp");
        let state = string_field("state");
        let details = match obj.remove("details") {
            None | Some(Value::Null) => None,
            Some(Value::Object(m)) => Some(m),
            Some(_) => {
                problems.push(Problem::new("details", "must be an object or null"));
                None
            }
        };
        if let Some(d) = &details {
            let size = serde_json::to_vec(d).map(|v| v.len()).unwrap_or(usize::MAX);
            if size > MAX_DETAILS_BYTES {
                problems.push(Problem::new(
                    "details",
                    format!("is {size} bytes; at most {MAX_DETAILS_BYTES} are accepted"),
                ));
            }
        }
        if let Some(Err(e)) = state.as_deref().map(StateName::parse) {
            problems.push(Problem::new("state", e.to_string()));
        }
        match (agent_id, timestamp, state) {
            (Some(agent_id), Some(timestamp), Some(state)) if problems.is_empty() => Ok(StateUpdateRequest {
                agent_id,
                timestamp,
                state,
                details,
            }),
            _ => Err(HttpError::invalid(
                summarise("invalid state report", &problems),
                problems,
            )),
        }
    }
}

/// The report of a well-typed body: a body `agentId` that differs from the path and a timestamp
/// that is not RFC 3339 are 400.
pub fn into_report(path_id: &AgentId, body: StateUpdateRequest) -> Result<StateReport, HttpError> {
    if body.agent_id != path_id.as_str() {
        return Err(HttpError::bad_request(format!(
            "agentId in the body ({:?}) does not match the path ({path_id})",
            body.agent_id
        )));
    }
    let ts = &body.timestamp;
    let timestamp = time::parse_rfc3339(ts)
        .ok_or_else(|| HttpError::bad_request(format!("timestamp must be RFC 3339 with Z or an offset, got {ts:?}")))?;
    let state = StateName::parse(&body.state).map_err(|e| {
        HttpError::invalid(
            format!("invalid state report: state: {e}"),
            vec![Problem::new("state", e.to_string())],
        )
    })?;
    Ok(StateReport {
        agent_id: path_id.clone(),
        state,
        details: body.details,
        timestamp,
    })
}

/// Parses and validates a state report body against the agent of the path.
pub fn parse_state_report(path_id: &AgentId, body: &[u8]) -> Result<StateReport, HttpError> {
    into_report(path_id, StateUpdateRequest::from_json(body)?)
}

/// A report from further ahead than the clock-skew allowance is refused: as the newest state it
/// would hold the agent until real time caught up (for good, before issue 13, past 2262).
pub fn check_report_clock(
    report: &StateReport,
    now: time::Timestamp,
    max_skew: std::time::Duration,
) -> Result<(), HttpError> {
    let limit = chrono::Duration::from_std(max_skew)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .unwrap_or(time::Timestamp::MAX_UTC);
    if report.timestamp <= limit {
        return Ok(());
    }
    let message = format!(
        "is {} ahead of the server clock ({}); at most {} s ahead is accepted (any time before {} is)",
        describe_ahead(report.timestamp - now),
        time::render(now),
        max_skew.as_secs(),
        time::render(limit),
    );
    Err(HttpError::invalid(
        format!("invalid state report: timestamp {message}"),
        vec![Problem::new("timestamp", message)],
    ))
}

fn describe_ahead(d: chrono::Duration) -> String {
    let s = d.num_seconds();
    if s < 3 * 86_400 {
        format!("{s} s")
    } else {
        format!("{} days", s / 86_400)
    }
}

/// `what: field: message; field: message`.
pub(crate) fn summarise(what: &str, problems: &[Problem]) -> String {
    let list: Vec<String> = problems
        .iter()
        .map(|p| {
            if p.field.is_empty() {
                p.message.clone()
            } else {
                format!("{}: {}", p.field, p.message)
            }
        })
        .collect();
    format!("{what}: {}", list.join("; "))
}
