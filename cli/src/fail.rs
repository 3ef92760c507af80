//! Why a command failed, its exit code, and a message a person can act on (or, with --json, the
//! API's error shape on stderr).

use opscore_client::{Error, FieldError};
use serde_json::json;

pub const FAILED_SESSION: u8 = 1;
pub const USAGE: u8 = 2;
pub const AUTH: u8 = 3;
pub const NOT_FOUND: u8 = 4;
pub const INVALID: u8 = 5;
pub const SERVER: u8 = 6;
pub const INTERRUPTED: u8 = 130;

#[derive(Debug)]
pub enum Failure {
    Api(Error),
    /// The command line is wrong in a way clap cannot see (a --details that is not JSON, an
    /// unreadable file).
    Usage(String),
    NoKey,
    /// A local file failed the same validation the API applies.
    Invalid {
        detail: String,
        errors: Vec<FieldError>,
    },
    /// Ctrl-C while watching.
    Interrupted {
        session_id: String,
    },
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Api(e)
    }
}

impl Failure {
    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::Usage(_) => USAGE,
            Failure::NoKey => AUTH,
            Failure::Invalid { .. } => INVALID,
            Failure::Interrupted { .. } => INTERRUPTED,
            Failure::Api(e) => match e {
                Error::Config(_) => USAGE,
                Error::Unauthorized { .. } => AUTH,
                Error::NotFound { .. } => NOT_FOUND,
                Error::Conflict { .. } | Error::Validation { .. } => INVALID,
                Error::RateLimited { .. }
                | Error::Server { .. }
                | Error::Network { .. }
                | Error::Timeout { .. }
                | Error::Decode { .. } => SERVER,
            },
        }
    }

    /// A stable machine-readable code: the API's own when it sent one.
    pub fn code(&self) -> String {
        let s = match self {
            Failure::Usage(_) => "usage",
            Failure::NoKey => "no_api_key",
            Failure::Invalid { .. } => "validation_failed",
            Failure::Interrupted { .. } => "interrupted",
            Failure::Api(e) => match e {
                Error::Config(_) => "usage",
                Error::Unauthorized { .. } => "unauthorized",
                Error::NotFound { code, .. } => return code.clone(),
                Error::Conflict { .. } => "conflict",
                Error::Validation { code, .. } if !code.is_empty() => return code.clone(),
                Error::Validation { .. } => "bad_request",
                Error::RateLimited { .. } => "rate_limited",
                Error::Server { code, .. } if !code.is_empty() => return code.clone(),
                Error::Server { .. } => "server_error",
                Error::Network { .. } => "network",
                Error::Timeout { .. } => "timeout",
                Error::Decode { .. } => "unexpected_response",
            },
        };
        s.to_owned()
    }

    fn errors(&self) -> &[FieldError] {
        match self {
            Failure::Invalid { errors, .. } => errors,
            Failure::Api(e) => e.field_errors(),
            _ => &[],
        }
    }

    /// The message: a headline, then the field problems and a hint, each on its own line.
    pub fn message(&self, api_url: &str) -> String {
        let mut lines = Vec::new();
        let mut hint = None;
        match self {
            Failure::Usage(m) => lines.push(format!("error: {m}")),
            Failure::NoKey => {
                lines.push("error: no API key given".to_owned());
                hint = Some(
                    "pass --api-key KEY or set OPSCORE_API_KEY (the local stack prints its key when it starts)"
                        .to_owned(),
                );
            }
            Failure::Invalid { detail, .. } => lines.push(format!("error: {detail}:")),
            Failure::Interrupted { session_id } => {
                lines.push("stopped watching; the session goes on".to_owned());
                hint = Some(format!("follow it again with: opscore session watch {session_id}"));
            }
            Failure::Api(e) => match e {
                Error::Config(m) => lines.push(format!("error: {m}")),
                Error::Unauthorized { status, detail } => {
                    lines.push(format!("error: the API refused the API key (HTTP {status}: {detail})"));
                    hint = Some(
                        "check --api-key or OPSCORE_API_KEY: it must be one of the keys the API is configured with"
                            .to_owned(),
                    );
                }
                Error::NotFound { code, detail } if code == "no_route" => {
                    lines.push(format!("error: the API at {api_url} has no such route ({detail})"));
                    hint = Some(
                        "check --api-url or OPSCORE_API_URL: it is the API's base URL, with its stage path if it has one"
                            .to_owned(),
                    );
                }
                Error::NotFound { detail, .. } => lines.push(format!("error: {detail}")),
                Error::Conflict { detail } => lines.push(format!("error: conflict: {detail}")),
                Error::Validation { detail, errors, .. } => lines.push(format!("error: {}", headline(detail, errors))),
                Error::RateLimited { detail, .. } => {
                    lines.push(format!("error: the API is limiting requests ({detail})"));
                    hint = Some("wait a little and try again".to_owned());
                }
                Error::Server { status, detail, .. } => {
                    lines.push(format!("error: the API failed (HTTP {status}): {detail}"));
                    hint = Some("try again shortly; if it persists, look at the API's logs".to_owned());
                }
                Error::Network { url, message } => {
                    lines.push(format!("error: cannot reach the API at {url}: {message}"));
                    hint = Some(format!(
                        "check --api-url or OPSCORE_API_URL (now {api_url}) and that the API is running"
                    ));
                }
                Error::Timeout { url, after } => {
                    lines.push(format!(
                        "error: the API at {url} did not answer within {} s",
                        after.as_secs_f64()
                    ));
                    hint = Some("try again, or allow longer with --timeout SECONDS".to_owned());
                }
                Error::Decode { url, status, message } => {
                    lines.push(format!(
                        "error: unexpected answer from {url} (HTTP {status}): {message}"
                    ));
                    hint = Some(format!("is {api_url} an Ops-Core state API?"));
                }
            },
        }
        for p in self.errors() {
            if p.field.is_empty() {
                lines.push(format!("  - {}", p.message));
            } else {
                lines.push(format!("  - {}: {}", p.field, p.message));
            }
        }
        if let Some(h) = hint {
            lines.push(format!("hint: {h}"));
        }
        lines.join("\n")
    }

    pub fn report(&self, json: bool, api_url: &str) {
        if json {
            let detail = self.message(api_url);
            let first = detail.lines().next().unwrap_or_default();
            let detail = first.strip_prefix("error: ").unwrap_or(first).trim_end_matches(':');
            let body = json!({"detail": detail, "code": self.code(), "errors": self.errors()});
            eprintln!("{body}");
        } else {
            eprintln!("{}", self.message(api_url));
        }
    }
}

/// The API's validation detail is `"<what>: <field>: <message>; ..."` — the list is printed below,
/// one problem a line, so the headline keeps only `"<what>"`.
fn headline(detail: &str, errors: &[FieldError]) -> String {
    if errors.is_empty() {
        return detail.to_owned();
    }
    let joined: Vec<String> = errors
        .iter()
        .map(|p| {
            if p.field.is_empty() {
                p.message.clone()
            } else {
                format!("{}: {}", p.field, p.message)
            }
        })
        .collect();
    match detail.strip_suffix(&joined.join("; ")) {
        Some(what) if what.ends_with(": ") => format!("{}:", what.trim_end_matches(": ")),
        _ => format!("{detail}:"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(f: &str, m: &str) -> FieldError {
        FieldError::new(f, m)
    }

    #[test]
    fn validation_headline_drops_the_repeated_list() {
        let errors = vec![p("name", "is required"), p("", "must be an object")];
        assert_eq!(
            headline(
                "workflow definition is invalid: name: is required; must be an object",
                &errors
            ),
            "workflow definition is invalid:"
        );
        assert_eq!(headline("something else", &errors), "something else:");
        assert_eq!(headline("malformed JSON", &[]), "malformed JSON");
    }

    #[test]
    fn exit_codes_by_class() {
        let e = |s| Failure::Api(Error::from_response(s, None, b"{}"));
        assert_eq!(e(401).exit_code(), AUTH);
        assert_eq!(e(403).exit_code(), AUTH);
        assert_eq!(e(404).exit_code(), NOT_FOUND);
        assert_eq!(e(409).exit_code(), INVALID);
        assert_eq!(e(422).exit_code(), INVALID);
        assert_eq!(e(400).exit_code(), INVALID);
        assert_eq!(e(429).exit_code(), SERVER);
        assert_eq!(e(500).exit_code(), SERVER);
        assert_eq!(Failure::NoKey.exit_code(), AUTH);
        assert_eq!(Failure::Usage("x".into()).exit_code(), USAGE);
        assert_eq!(Failure::Api(Error::Config("x".into())).exit_code(), USAGE);
    }

    #[test]
    fn messages_list_every_problem_and_never_debug() {
        let f = Failure::Api(Error::Validation {
            status: 422,
            code: "validation_failed".into(),
            detail: "workflow definition is invalid: name: is required; tasks[0].taskId: is required".into(),
            errors: vec![p("name", "is required"), p("tasks[0].taskId", "is required")],
        });
        let m = f.message("http://h");
        assert_eq!(
            m,
            "error: workflow definition is invalid:\n  - name: is required\n  - tasks[0].taskId: is required"
        );
        let n = Failure::Api(Error::Network {
            url: "http://h/health".into(),
            message: "Connection refused (os error 111)".into(),
        })
        .message("http://h");
        assert!(n.contains("cannot reach the API at http://h/health"));
        assert!(n.contains("hint: check --api-url"));
        assert!(!n.contains("Network {"));
    }
}
