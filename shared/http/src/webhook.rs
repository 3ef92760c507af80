//! `POST /v1/opscore/internal/agent/notify`: AgentKit's signed registration webhook.

use crate::auth;
use crate::error::{ErrorBody, HttpError};
use crate::extract::{Body, MAX_BODY_BYTES, json_value as json_body};
use crate::router::{Api, json};
use axum::extract::{FromRequest, Request, State};
use axum::response::Response;
use http::{HeaderMap, StatusCode};
use opscore_api::Accepted;
use opscore_api::paths::{self, headers};
use opscore_core::agent::AgentDetails;
use opscore_core::app::App;
use opscore_core::config::{Config, Secret};
use opscore_core::delivery::{AgentKitEvent, DeliveryOutcome};
use opscore_core::ids::AgentId;
use opscore_core::store::RegisterOutcome;
use opscore_core::time::{self, Timestamp};
use opscore_core::workflow::Problem;
use serde_json::{Map, Value, json};

#[utoipa::path(post, path = paths::NOTIFY,
    params(("X-AgentKit-Timestamp" = String, Header, description = "Unix seconds"),
           ("X-AgentKit-Signature" = String, Header, description = "hex HMAC-SHA256(secret, timestamp + '.' + raw body)")),
    request_body(content = Object, description = "AgentKit REGISTER / DEREGISTER event"),
    responses((status = 200, body = Accepted), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 413, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(crate) async fn notify(State(api): State<std::sync::Arc<Api>>, req: Request) -> Result<Response, HttpError> {
    // The headers by reference (no copy of the map), then the body.
    let (parts, body) = req.into_parts();
    let result = async {
        let Body(body) = Body::<MAX_BODY_BYTES>::from_request(Request::new(body), &()).await?;
        let secrets = api.credentials.webhook_secrets.current().await;
        handle(&api.app, &api.config, &secrets, &parts.headers, &body).await
    }
    .await;
    // Every refusal counts once, by its code (the figure an operator alarms on: a wrong secret
    // or a skewed clock shows as `unauthorized`, a missing one as `not_configured`).
    if let Err(e) = &result {
        api.app.metrics.webhook_refused(e.code());
    }
    result
}

/// Verifies (against `secrets`, the webhook's current HMAC secrets), parses and applies one
/// delivery (a replay is answered 200 and has no effect).
pub async fn handle(
    app: &App,
    config: &Config,
    secrets: &[Secret],
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, HttpError> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let now = app.now();
    let signature = header(headers::AGENTKIT_SIGNATURE);
    auth::verify_webhook(
        signature,
        header(headers::AGENTKIT_TIMESTAMP),
        body,
        secrets,
        now,
        config.webhook_tolerance,
    )?;
    let event = parse_event(body)?;
    // A byte-identical delivery has the same signature. Remember it for twice the window (past
    // which the timestamp check refuses it anyway), so a replay has no second effect.
    let delivery_id = signature.unwrap_or_default().trim().to_ascii_lowercase();
    let agent_id = match &event {
        AgentKitEvent::Register(d) => d.agent_id.clone(),
        AgentKitEvent::Deregister(id) => id.clone(),
    };
    tracing::Span::current().record("agent_id", agent_id.as_str());
    let outcome = app
        .apply_delivery(&delivery_id, event, config.webhook_tolerance * 2)
        .await?;
    let body = match outcome {
        DeliveryOutcome::Duplicate => {
            tracing::info!("duplicate webhook delivery ignored");
            json!({"status":"success","message":"Duplicate delivery ignored"})
        }
        DeliveryOutcome::Registered(outcome) => {
            let what = match *outcome {
                RegisterOutcome::Created(_) => "created",
                RegisterOutcome::Unchanged(_) => "unchanged",
                RegisterOutcome::Updated(_) => "updated",
            };
            tracing::info!(outcome = what, "agent registered");
            json!({"status":"success","message":format!("Agent {agent_id} registered successfully."),"outcome":what})
        }
        DeliveryOutcome::Deregistered => {
            tracing::info!("agent deregistered");
            json!({"status":"success","message":format!("Agent {agent_id} deregistered successfully.")})
        }
    };
    Ok(json(StatusCode::OK, &body))
}

/// Accepts every payload variant AgentKit sends (see the contract): `metadata` `{}`, `null` or
/// an object; `registration_time` / `registrationTime` or neither; `event_type` in any case.
pub fn parse_event(body: &[u8]) -> Result<AgentKitEvent, HttpError> {
    let v = json_body(body)?;
    let Value::Object(obj) = v else {
        return Err(HttpError::bad_request("webhook body must be a JSON object"));
    };
    let event_type = match obj.get("event_type") {
        Some(Value::String(s)) => s.to_ascii_uppercase(),
        None | Some(Value::Null) => return Err(HttpError::bad_request("event_type is required")),
        Some(_) => return Err(HttpError::bad_request("event_type must be a string")),
    };
    let details = match obj.get("agent_details") {
        Some(Value::Object(d)) => d,
        None | Some(Value::Null) => {
            return Err(HttpError::invalid(
                "agent_details is required",
                vec![Problem::new("agent_details", "is required")],
            ));
        }
        Some(_) => {
            return Err(HttpError::invalid(
                "agent_details must be an object",
                vec![Problem::new("agent_details", "must be an object")],
            ));
        }
    };
    match event_type.as_str() {
        "REGISTER" => parse_details(details).map(AgentKitEvent::Register),
        "DEREGISTER" => parse_agent_id(details, &mut Vec::new())
            .map(AgentKitEvent::Deregister)
            .ok_or_else(|| HttpError::bad_request("agent_details.agentId is required and must be a valid agent id")),
        other => Err(HttpError::bad_request(format!(
            "unknown event_type {other:?}; expected REGISTER or DEREGISTER"
        ))),
    }
}

fn parse_agent_id(d: &Map<String, Value>, p: &mut Vec<Problem>) -> Option<AgentId> {
    match d.get("agentId") {
        Some(Value::String(s)) => match AgentId::parse(s.as_str()) {
            Ok(id) => Some(id),
            Err(e) => {
                p.push(Problem::new("agent_details.agentId", e.to_string()));
                None
            }
        },
        None | Some(Value::Null) => {
            p.push(Problem::new("agent_details.agentId", "is required"));
            None
        }
        Some(_) => {
            p.push(Problem::new("agent_details.agentId", "must be a string"));
            None
        }
    }
}

fn parse_details(d: &Map<String, Value>) -> Result<AgentDetails, HttpError> {
    let mut p = Vec::new();
    let agent_id = parse_agent_id(d, &mut p);
    // The original answered 400 for an empty agentId; keep that.
    if matches!(d.get("agentId"), Some(Value::String(s)) if s.is_empty()) {
        return Err(HttpError::bad_request("agent_details.agentId must not be empty"));
    }
    let mut text = |name: &str, required: bool, max: usize| -> Option<String> {
        let field = format!("agent_details.{name}");
        match d.get(name) {
            Some(Value::String(s)) if s.chars().count() > max => {
                p.push(Problem::new(field, format!("must be at most {max} characters")));
                None
            }
            Some(Value::String(s)) if required && s.trim().is_empty() => {
                p.push(Problem::new(field, "must not be empty"));
                None
            }
            Some(Value::String(s)) => Some(s.clone()),
            None | Some(Value::Null) if !required => Some(String::new()),
            None | Some(Value::Null) => {
                p.push(Problem::new(field, "is required"));
                None
            }
            Some(_) => {
                p.push(Problem::new(field, "must be a string"));
                None
            }
        }
    };
    let agent_name = text("agentName", true, 256);
    let version = text("version", false, 64);
    let contact_endpoint = text("contactEndpoint", true, 2048);
    if let Some(u) = &contact_endpoint
        && !u.is_empty()
        && !is_http_url(u)
    {
        p.push(Problem::new("agent_details.contactEndpoint", "must be an http(s) URL"));
    }
    let capabilities = match d.get("capabilities") {
        None | Some(Value::Null) => Some(Vec::new()),
        Some(Value::Array(a)) if a.iter().all(Value::is_string) && a.len() <= 256 => {
            Some(a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
        }
        Some(_) => {
            p.push(Problem::new(
                "agent_details.capabilities",
                "must be an array of at most 256 strings",
            ));
            None
        }
    };
    let metadata = match d.get("metadata") {
        None | Some(Value::Null) => Some(Map::new()),
        Some(Value::Object(m)) => Some(m.clone()),
        Some(_) => {
            p.push(Problem::new("agent_details.metadata", "must be an object or null"));
            None
        }
    };
    let registration_time = match d.get("registration_time").or_else(|| d.get("registrationTime")) {
        None | Some(Value::Null) => Some(None),
        Some(Value::String(s)) => match parse_lenient_time(s) {
            Some(t) => Some(Some(t)),
            None => {
                p.push(Problem::new(
                    "agent_details.registration_time",
                    "must be an ISO-8601 timestamp",
                ));
                None
            }
        },
        Some(_) => {
            p.push(Problem::new("agent_details.registration_time", "must be a string"));
            None
        }
    };
    match (
        agent_id,
        agent_name,
        version,
        contact_endpoint,
        capabilities,
        metadata,
        registration_time,
    ) {
        (
            Some(agent_id),
            Some(agent_name),
            Some(version),
            Some(contact_endpoint),
            Some(capabilities),
            Some(metadata),
            Some(registration_time),
        ) if p.is_empty() => Ok(AgentDetails {
            agent_id,
            agent_name,
            version,
            capabilities,
            contact_endpoint,
            metadata,
            registration_time,
        }),
        _ => {
            let fields: Vec<&str> = p.iter().map(|p| p.field.as_str()).collect();
            Err(HttpError::invalid(
                format!("invalid agent_details: {}", fields.join(", ")),
                p,
            ))
        }
    }
}

fn is_http_url(u: &str) -> bool {
    let rest = u.strip_prefix("http://").or_else(|| u.strip_prefix("https://"));
    rest.is_some_and(|r| {
        !r.is_empty() && !r.starts_with('/') && !r.chars().any(|c| c.is_whitespace() || c.is_control())
    })
}

/// RFC 3339, or Python's `isoformat()` without an offset (taken as UTC).
fn parse_lenient_time(s: &str) -> Option<Timestamp> {
    time::parse_rfc3339(s).or_else(|| {
        chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
            .ok()
            .map(|n| n.and_utc())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_every_contract_variant() {
        let a = br#"{"event_type":"register","agent_details":{"agentId":"a1","agentName":"n","version":"2.0","capabilities":["plan"],"contactEndpoint":"http://h/task","metadata":{}}}"#;
        let b = br#"{"event_type":"REGISTER","agent_details":{"agentId":"a1","agentName":"n","capabilities":[],"version":"0.1.0","contactEndpoint":"http://h/task","metadata":null,"registration_time":"2026-11-23T22:50:30.434824Z"}}"#;
        let c = br#"{"event_type":"Register","agent_details":{"agentId":"a1","agentName":"n","version":"1","contactEndpoint":"https://h/task","metadata":{"description":"x","config":{"k":1}},"registrationTime":"2026-11-23T22:50:30.434824"}}"#;
        for body in [&a[..], &b[..], &c[..]] {
            assert!(
                matches!(parse_event(body), Ok(AgentKitEvent::Register(_))),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        let Ok(AgentKitEvent::Register(d)) = parse_event(b) else {
            panic!()
        };
        assert!(d.metadata.is_empty() && d.registration_time.is_some());
        assert!(matches!(
            parse_event(br#"{"event_type":"deregister","agent_details":{"agentId":"a1"}}"#),
            Ok(AgentKitEvent::Deregister(_))
        ));
    }

    #[test]
    fn refusals_name_what_is_wrong() {
        let e = parse_event(br#"{"event_type":"EXPLODE","agent_details":{}}"#).unwrap_err();
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        let e = parse_event(
            br#"{"event_type":"REGISTER","agent_details":{"agentId":"","agentName":"n","contactEndpoint":"http://h"}}"#,
        )
        .unwrap_err();
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        let e = parse_event(br#"{"event_type":"REGISTER","agent_details":{"agentId":"a","agentName":5,"capabilities":"x","contactEndpoint":"ftp://h","metadata":[]}}"#).unwrap_err();
        assert_eq!(e.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let msg = e.to_string();
        for f in ["agentName", "capabilities", "contactEndpoint", "metadata"] {
            assert!(msg.contains(f), "{msg}");
        }
    }
}
