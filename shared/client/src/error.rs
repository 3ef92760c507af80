//! The client's error: one variant per class of failure, built from the API's JSON error body
//! `{"detail": "...", "code": "...", "errors": [{"field", "message"}]}`.

use opscore_core::workflow::Problem;
use serde::Deserialize;
use std::time::Duration;

/// One field the API found fault with (the `errors` items of a 422 answer).
pub type FieldError = Problem;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// 401 (no key, or a key the API does not accept) or 403 (refused in front of the API).
    #[error("unauthorized ({status}): {detail}")]
    Unauthorized { status: u16, detail: String },
    /// 404: an unknown agent, workflow or session (`code` `not_found`), or no such route
    /// (`code` `no_route`: usually a base URL without its stage path).
    #[error("{detail}")]
    NotFound { code: String, detail: String },
    /// 409: the request contradicts what is stored (a session that already ended, a workflow
    /// version that exists with different content, a deregistered agent).
    #[error("{detail}")]
    Conflict { detail: String },
    /// 400, 413, 415, 422 and other 4xx: the request itself is wrong. `errors` lists every field
    /// problem the API named (422); it may be empty (400).
    #[error("{detail}")]
    Validation {
        status: u16,
        code: String,
        detail: String,
        errors: Vec<FieldError>,
    },
    /// 429: too many requests (retried first, when the call is idempotent).
    #[error("rate limited ({status}): {detail}")]
    RateLimited {
        status: u16,
        detail: String,
        retry_after: Option<Duration>,
    },
    /// 5xx (or an unexpected 1xx/3xx): the API or something in front of it failed.
    #[error("server error ({status}): {detail}")]
    Server { status: u16, code: String, detail: String },
    /// No HTTP answer at all: connection refused, DNS failure, TLS failure, reset.
    #[error("cannot reach {url}: {message}")]
    Network { url: String, message: String },
    /// No answer within the configured timeout.
    #[error("no answer from {url} within {} s", after.as_secs_f64())]
    Timeout { url: String, after: Duration },
    /// A success status whose body is not the JSON this call expects.
    #[error("unexpected answer from {url} ({status}): {message}")]
    Decode { url: String, status: u16, message: String },
    /// The client was configured wrongly (a base URL that is not an http(s) URL, a bad header value).
    #[error("invalid client configuration: {0}")]
    Config(String),
}

impl Error {
    /// The HTTP status behind the error, if there was an answer.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Unauthorized { status, .. }
            | Error::Validation { status, .. }
            | Error::RateLimited { status, .. }
            | Error::Server { status, .. }
            | Error::Decode { status, .. } => Some(*status),
            Error::NotFound { .. } => Some(404),
            Error::Conflict { .. } => Some(409),
            Error::Network { .. } | Error::Timeout { .. } | Error::Config(_) => None,
        }
    }

    /// Whether trying the same request again may succeed: network errors, timeouts, 429, 502,
    /// 503 and 504. (Whether it is *safe* to try again depends on the call: see [`crate::retry`].)
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Network { .. } | Error::Timeout { .. } | Error::RateLimited { .. } => true,
            Error::Server { status, .. } => matches!(status, 502..=504),
            _ => false,
        }
    }

    /// The field problems of a validation error (empty for every other error).
    pub fn field_errors(&self) -> &[FieldError] {
        match self {
            Error::Validation { errors, .. } => errors,
            _ => &[],
        }
    }

    /// Builds the error for a non-success answer from its status, `Retry-After` and body.
    pub fn from_response(status: u16, retry_after: Option<&str>, body: &[u8]) -> Self {
        let parsed = serde_json::from_slice::<ErrorBody>(body).ok();
        let (detail, code, errors) = match parsed {
            Some(b) => (
                b.detail
                    .or(b.message)
                    .filter(|d| !d.trim().is_empty())
                    .unwrap_or_else(|| fallback_detail(status, body)),
                b.code.unwrap_or_default(),
                b.errors,
            ),
            None => (fallback_detail(status, body), String::new(), Vec::new()),
        };
        match status {
            401 | 403 => Error::Unauthorized { status, detail },
            404 => Error::NotFound {
                code: if code.is_empty() { "not_found".into() } else { code },
                detail,
            },
            409 => Error::Conflict { detail },
            429 => Error::RateLimited {
                status,
                detail,
                retry_after: retry_after.and_then(parse_retry_after),
            },
            400..=499 => Error::Validation {
                status,
                code,
                detail,
                errors,
            },
            _ => Error::Server { status, code, detail },
        }
    }

    pub(crate) fn from_reqwest(url: &str, timeout: Duration, e: &reqwest::Error) -> Self {
        if e.is_timeout() {
            return Error::Timeout {
                url: url.to_owned(),
                after: timeout,
            };
        }
        Error::Network {
            url: url.to_owned(),
            message: root_cause(e),
        }
    }
}

/// The API's error body. `message` is what API Gateway itself answers with (`{"message":"Forbidden"}`).
#[derive(Debug, Deserialize)]
struct ErrorBody {
    #[serde(default)]
    detail: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    errors: Vec<FieldError>,
}

fn fallback_detail(status: u16, body: &[u8]) -> String {
    let text: String = String::from_utf8_lossy(body).trim().chars().take(200).collect();
    if text.is_empty() || text.starts_with('<') {
        let reason = reqwest::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("unexpected status");
        format!("HTTP {status} {reason}")
    } else {
        format!("HTTP {status}: {text}")
    }
}

fn parse_retry_after(v: &str) -> Option<Duration> {
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// The innermost cause of a transport error ("Connection refused (os error 111)"), which says more
/// than reqwest's "error sending request for url (...)".
fn root_cause(e: &reqwest::Error) -> String {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg = s.to_string();
        source = s.source();
    }
    if e.is_connect() && !msg.to_ascii_lowercase().contains("connect") {
        msg = format!("connection failed: {msg}");
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_map_to_variants() {
        let e = Error::from_response(
            401,
            None,
            br#"{"detail":"missing or invalid API key","code":"unauthorized"}"#,
        );
        assert_eq!(
            e,
            Error::Unauthorized {
                status: 401,
                detail: "missing or invalid API key".into()
            }
        );
        // API Gateway's own refusal.
        let e = Error::from_response(403, None, br#"{"message":"Forbidden"}"#);
        assert!(matches!(e, Error::Unauthorized { status: 403, ref detail } if detail == "Forbidden"));

        let e = Error::from_response(404, None, br#"{"detail":"Agent not found: x","code":"not_found"}"#);
        assert_eq!(
            e,
            Error::NotFound {
                code: "not_found".into(),
                detail: "Agent not found: x".into()
            }
        );
        let e = Error::from_response(404, None, br#"{"detail":"no route for GET /x","code":"no_route"}"#);
        assert!(matches!(e, Error::NotFound { ref code, .. } if code == "no_route"));

        let e = Error::from_response(
            409,
            None,
            br#"{"detail":"Session s has already ended: completed","code":"conflict"}"#,
        );
        assert!(matches!(e, Error::Conflict { ref detail } if detail.contains("already ended")));

        let e = Error::from_response(
            422,
            None,
            br#"{"detail":"workflow definition is invalid: name: is required; tasks: must not be empty","code":"validation_failed","errors":[{"field":"name","message":"is required"},{"field":"tasks","message":"must not be empty"}]}"#,
        );
        match &e {
            Error::Validation {
                status, code, errors, ..
            } => {
                assert_eq!(*status, 422);
                assert_eq!(code, "validation_failed");
                assert_eq!(errors.len(), 2);
                assert_eq!(errors[0].field, "name");
                assert_eq!(errors[1].message, "must not be empty");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(e.field_errors().len(), 2);

        let e = Error::from_response(400, None, br#"{"detail":"malformed JSON","code":"bad_request"}"#);
        assert!(matches!(e, Error::Validation { status: 400, ref errors, .. } if errors.is_empty()));
        let e = Error::from_response(
            415,
            None,
            br#"{"detail":"Content-Type","code":"unsupported_media_type"}"#,
        );
        assert!(matches!(e, Error::Validation { status: 415, .. }));

        let e = Error::from_response(429, Some("7"), br#"{"message":"Too Many Requests"}"#);
        assert_eq!(
            e,
            Error::RateLimited {
                status: 429,
                detail: "Too Many Requests".into(),
                retry_after: Some(Duration::from_secs(7))
            }
        );
        let e = Error::from_response(
            503,
            Some("1"),
            br#"{"detail":"store unavailable","code":"unavailable"}"#,
        );
        assert!(matches!(e, Error::Server { status: 503, ref code, .. } if code == "unavailable"));
        assert!(e.is_transient());
        let e = Error::from_response(500, None, br#"{"detail":"boom","code":"internal"}"#);
        assert!(!e.is_transient());
    }

    #[test]
    fn bodies_that_are_not_the_error_shape_still_give_a_detail() {
        let e = Error::from_response(502, None, b"<html>Bad Gateway</html>");
        assert_eq!(
            e,
            Error::Server {
                status: 502,
                code: String::new(),
                detail: "HTTP 502 Bad Gateway".into()
            }
        );
        let e = Error::from_response(500, None, b"");
        assert!(matches!(e, Error::Server { ref detail, .. } if detail == "HTTP 500 Internal Server Error"));
        let e = Error::from_response(404, None, b"nothing here");
        assert!(
            matches!(e, Error::NotFound { ref detail, ref code } if detail == "HTTP 404: nothing here" && code == "not_found")
        );
        let e = Error::from_response(422, None, br#"{"detail":"","errors":[]}"#);
        assert!(matches!(e, Error::Validation { ref detail, .. } if detail.starts_with("HTTP 422")));
    }

    #[test]
    fn statuses_and_transience() {
        assert_eq!(Error::Conflict { detail: "x".into() }.status(), Some(409));
        let net = Error::Network {
            url: "u".into(),
            message: "refused".into(),
        };
        assert_eq!(net.status(), None);
        assert!(net.is_transient());
        for s in [502, 503, 504] {
            assert!(Error::from_response(s, None, b"").is_transient(), "{s}");
        }
        for s in [400, 401, 404, 409, 422, 500, 501] {
            assert!(!Error::from_response(s, None, b"").is_transient(), "{s}");
        }
    }
}
