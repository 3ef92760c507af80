//! Every route's path template and every header name of the API, defined once: the server's
//! router (opscore-http), the client SDK (opscore-client) and the CLI use these constants.
//!
//! Templates use `{name}` for a path parameter (the syntax of OpenAPI and of axum 0.8).

pub const HEALTH: &str = "/health";
pub const OPENAPI_JSON: &str = "/openapi.json";
pub const AGENTS: &str = "/v1/opscore/agents";
pub const AGENT: &str = "/v1/opscore/agent/{agentId}";
pub const AGENT_STATE: &str = "/v1/opscore/agent/{agentId}/state";
pub const AGENT_STATE_HISTORY: &str = "/v1/opscore/agent/{agentId}/state/history";
pub const AGENT_WORKFLOW: &str = "/v1/opscore/agent/{agentId}/workflow";
pub const AGENT_SESSIONS: &str = "/v1/opscore/agent/{agentId}/sessions";
pub const WORKFLOWS: &str = "/v1/opscore/workflows";
pub const WORKFLOW: &str = "/v1/opscore/workflows/{workflowId}";
/// The latest sessions of every agent.
pub const SESSIONS: &str = "/v1/opscore/sessions";
/// Starts a session of a definition routed by capability, without naming an agent (issue 18).
pub const WORKFLOW_SESSIONS: &str = "/v1/opscore/workflows/{workflowId}/sessions";
pub const SESSION: &str = "/v1/opscore/sessions/{sessionId}";
/// The operator console (a page, public: the API calls it makes carry the bearer key).
pub const CONSOLE: &str = "/console";
/// The console's assets (`/console/assets/{file}`).
pub const CONSOLE_ASSET: &str = "/console/assets/{file}";
pub const SESSION_CANCEL: &str = "/v1/opscore/sessions/{sessionId}/cancel";
/// AgentKit's signed registration webhook.
pub const NOTIFY: &str = "/v1/opscore/internal/agent/notify";

/// Header names (lower case, as HTTP/2 and the `http` crate spell them).
pub mod headers {
    pub const AUTHORIZATION: &str = "authorization";
    pub const CONTENT_TYPE: &str = "content-type";
    /// A retried trigger with the same key returns the same session.
    pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
    /// `true` on the answer to a trigger that was a replay of an earlier one.
    pub const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";
    /// Lower-case hex HMAC-SHA256(secret, timestamp + "." + raw body).
    pub const AGENTKIT_SIGNATURE: &str = "x-agentkit-signature";
    /// Unix seconds (RFC 3339 accepted too).
    pub const AGENTKIT_TIMESTAMP: &str = "x-agentkit-timestamp";
    /// Seconds to wait before retrying a 503.
    pub const RETRY_AFTER: &str = "retry-after";
    /// The id of a request, in the logs and on the response.
    pub const REQUEST_ID: &str = "x-request-id";
    /// The AWS X-Ray trace id of a request (set by the Lambda glue from the invocation's context),
    /// in the request's log lines.
    pub const TRACE_ID: &str = "x-amzn-trace-id";
}

/// The segments of `template` with its parameters filled in, in order (not percent-encoded: the
/// caller encodes each segment). `segments(AGENT_STATE, &["a1"])` is
/// `["v1", "opscore", "agent", "a1", "state"]`.
///
/// # Panics
///
/// If `params` has fewer values than the template has parameters (a programming error).
pub fn segments<'a>(template: &'a str, params: &[&'a str]) -> Vec<&'a str> {
    let mut params = params.iter();
    template
        .trim_start_matches('/')
        .split('/')
        .map(|s| {
            if s.starts_with('{') {
                params.next().copied().expect("a value for every path parameter")
            } else {
                s
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_fill_the_parameters_in_order() {
        assert_eq!(
            segments(AGENT_STATE, &["a1"]),
            ["v1", "opscore", "agent", "a1", "state"]
        );
        assert_eq!(segments(OPENAPI_JSON, &[]), ["openapi.json"]);
        assert_eq!(
            segments(SESSION_CANCEL, &["s"]),
            ["v1", "opscore", "sessions", "s", "cancel"]
        );
    }
}
