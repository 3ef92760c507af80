//! The state API (API Gateway HTTP API) and the notify webhook (function URL): routing, parsing,
//! validation. Handlers turn requests into use-case calls on [`App`]; errors become responses
//! only in [`HttpError::into_response`].

use crate::auth;
use crate::error::HttpError;
use crate::request::{ApiRequest, ApiResponse};
use crate::webhook;
use http::{Method, StatusCode};
use opscore_api::*;
use opscore_core::agent::{StateName, StateReport};
use opscore_core::app::{App, DefinitionSource};
use opscore_core::config::Config;
use opscore_core::ids::{AgentId, IdempotencyKey, SessionId, WorkflowId, WorkflowVersion};
use opscore_core::store::PageRequest;
use opscore_core::time;
use opscore_core::workflow::{Format, Problem, WorkflowDefinition};
use serde_json::{Map, Value};
use tracing::Instrument;

/// Largest request body of the state API routes (the original had none; API Gateway allows 10 MB).
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Largest workflow definition upload (YAML is bigger than the JSON it becomes).
pub const MAX_DEFINITION_UPLOAD_BYTES: usize = 256 * 1024;
pub const MAX_DETAILS_BYTES: usize = 32 * 1024;
const DEFAULT_PAGE: u32 = 50;
const MAX_PAGE: u32 = 100;

/// Which surface a deployment serves: the HTTP API function serves the state API, the function
/// URL serves the webhook, the local stack serves both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    StateApi,
    Webhook,
    Both,
}

#[derive(Clone)]
pub struct Api {
    pub app: App,
    pub config: std::sync::Arc<Config>,
    pub surface: Surface,
}

/// Every route: (method, path template, needs the bearer key). The OpenAPI document is checked
/// against this list by a test.
pub const ROUTES: &[(&str, &str, bool)] = &[
    ("GET", "/health", false),
    ("GET", "/openapi.json", false),
    ("GET", "/v1/opscore/agents", true),
    ("GET", "/v1/opscore/agent/{agentId}", true),
    ("POST", "/v1/opscore/agent/{agentId}/state", true),
    ("GET", "/v1/opscore/agent/{agentId}/state", true),
    ("GET", "/v1/opscore/agent/{agentId}/state/history", true),
    ("POST", "/v1/opscore/agent/{agentId}/workflow", true),
    ("GET", "/v1/opscore/agent/{agentId}/sessions", true),
    ("POST", "/v1/opscore/workflows", true),
    ("GET", "/v1/opscore/workflows", true),
    ("GET", "/v1/opscore/workflows/{workflowId}", true),
    ("GET", "/v1/opscore/sessions/{sessionId}", true),
    ("POST", "/v1/opscore/sessions/{sessionId}/cancel", true),
    ("POST", "/v1/opscore/internal/agent/notify", false),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route<'a> {
    Health,
    OpenApi,
    Agents,
    Agent(&'a str),
    AgentState(&'a str),
    AgentHistory(&'a str),
    AgentWorkflow(&'a str),
    AgentSessions(&'a str),
    Workflows,
    Workflow(&'a str),
    Session(&'a str),
    SessionCancel(&'a str),
    Notify,
}

impl<'a> Route<'a> {
    fn parse(path: &'a str) -> Option<Self> {
        // One trailing slash is tolerated; empty segments elsewhere ("//") are not.
        let path = path.strip_suffix('/').filter(|p| !p.is_empty()).unwrap_or(path);
        let segs: Vec<&str> = path.strip_prefix('/')?.split('/').collect();
        Some(match segs.as_slice() {
            ["health"] => Route::Health,
            ["openapi.json"] => Route::OpenApi,
            ["v1", "opscore", "agents"] => Route::Agents,
            ["v1", "opscore", "agent", id] => Route::Agent(id),
            ["v1", "opscore", "agent", id, "state"] => Route::AgentState(id),
            ["v1", "opscore", "agent", id, "state", "history"] => Route::AgentHistory(id),
            ["v1", "opscore", "agent", id, "workflow"] => Route::AgentWorkflow(id),
            ["v1", "opscore", "agent", id, "sessions"] => Route::AgentSessions(id),
            ["v1", "opscore", "workflows"] => Route::Workflows,
            ["v1", "opscore", "workflows", id] => Route::Workflow(id),
            ["v1", "opscore", "sessions", id] => Route::Session(id),
            ["v1", "opscore", "sessions", id, "cancel"] => Route::SessionCancel(id),
            ["v1", "opscore", "internal", "agent", "notify"] => Route::Notify,
            _ => return None,
        })
    }

    fn allowed(self) -> &'static [Method] {
        match self {
            Route::AgentState(_) | Route::Workflows => &[Method::GET, Method::POST],
            Route::AgentWorkflow(_) | Route::SessionCancel(_) | Route::Notify => &[Method::POST],
            _ => &[Method::GET],
        }
    }

    fn needs_key(self) -> bool {
        !matches!(self, Route::Health | Route::OpenApi | Route::Notify)
    }

    fn served_by(self, surface: Surface) -> bool {
        match surface {
            Surface::Both => true,
            Surface::Webhook => self == Route::Notify,
            Surface::StateApi => self != Route::Notify,
        }
    }
}

impl Api {
    pub fn new(app: App, config: Config, surface: Surface) -> Self {
        Self {
            app,
            config: std::sync::Arc::new(config),
            surface,
        }
    }

    /// Handles one request; never panics on input and never answers 5xx for bad input.
    pub async fn handle(&self, req: ApiRequest) -> ApiResponse {
        let span = tracing::info_span!("request", request_id = %req.request_id, method = %req.method, path = %req.path, agent_id = tracing::field::Empty);
        async {
            let started = std::time::Instant::now();
            let resp = match self.route(&req).await {
                Ok(r) => r,
                Err(e) => {
                    if e.status().is_server_error() {
                        tracing::error!(status = e.status().as_u16(), error = %e, "request failed");
                    } else {
                        tracing::info!(status = e.status().as_u16(), code = e.code(), error = %e, "request refused");
                    }
                    e.into_response()
                }
            };
            tracing::debug!(
                status = resp.status.as_u16(),
                elapsed_us = started.elapsed().as_micros() as u64,
                "request done"
            );
            resp
        }
        .instrument(span)
        .await
    }

    /// What the request would be refused for before its body matters: an unknown route, a method
    /// the route does not take, or missing or wrong credentials. A server calls it before it reads
    /// a body, so a client without a key cannot make it read (up to a megabyte of) one.
    pub fn refusal_before_body(&self, req: &ApiRequest) -> Option<ApiResponse> {
        self.check_route(req).err().map(HttpError::into_response)
    }

    fn check_route<'r>(&self, req: &'r ApiRequest) -> Result<Route<'r>, HttpError> {
        let route = Route::parse(&req.path)
            .filter(|r| r.served_by(self.surface))
            .ok_or_else(|| HttpError::NoRoute(format!("{} {}", req.method, req.path)))?;
        if !route.allowed().contains(&req.method) {
            return Err(HttpError::MethodNotAllowed {
                method: req.method.clone(),
                allowed: route.allowed().to_vec(),
            });
        }
        // Authentication comes before any look at the body.
        if route.needs_key() {
            auth::check_bearer(req.header("authorization"), &self.config.api_keys)?;
        }
        Ok(route)
    }

    async fn route(&self, req: &ApiRequest) -> Result<ApiResponse, HttpError> {
        let route = self.check_route(req)?;
        let limit = if route == Route::Workflows {
            MAX_DEFINITION_UPLOAD_BYTES
        } else {
            MAX_BODY_BYTES
        };
        if req.body.len() > limit {
            return Err(HttpError::PayloadTooLarge {
                got: req.body.len(),
                limit,
            });
        }
        let m = &req.method;
        match route {
            Route::Health => Ok(ApiResponse::json(StatusCode::OK, &Health { status: "ok".into() })),
            Route::OpenApi => Ok(ApiResponse::json(StatusCode::OK, &crate::openapi::document())),
            Route::Notify => webhook::handle(&self.app, &self.config, req).await,
            Route::Agents => self.list_agents(req).await,
            Route::Agent(id) => self.get_agent(&agent_id(id)?).await,
            Route::AgentState(id) if m == Method::POST => self.post_state(&agent_id(id)?, req).await,
            Route::AgentState(id) => self.get_state(&agent_id(id)?).await,
            Route::AgentHistory(id) => self.history(&agent_id(id)?, req).await,
            Route::AgentWorkflow(id) => self.trigger(&agent_id(id)?, req).await,
            Route::AgentSessions(id) => self.list_sessions(&agent_id(id)?, req).await,
            Route::Workflows if m == Method::POST => self.create_workflow(req).await,
            Route::Workflows => self.list_workflows(req).await,
            Route::Workflow(id) => self.get_workflow(id, req).await,
            Route::Session(id) => self.get_session(&session_id(id)?).await,
            Route::SessionCancel(id) => self.cancel(&session_id(id)?).await,
        }
    }

    async fn post_state(&self, id: &AgentId, req: &ApiRequest) -> Result<ApiResponse, HttpError> {
        let report = parse_state_report(id, &req.body)?;
        check_report_clock(&report, self.app.now(), self.config.max_clock_skew)?;
        let outcome = self.app.report_state(&report).await?;
        let applied = matches!(outcome, opscore_core::store::ReportOutcome::Applied);
        tracing::info!(state = %report.state, applied, "state report");
        Ok(ApiResponse::json(
            StatusCode::ACCEPTED,
            &StateUpdateAccepted {
                status: "success".into(),
                message: "State update accepted".into(),
                applied,
            },
        ))
    }

    async fn get_state(&self, id: &AgentId) -> Result<ApiResponse, HttpError> {
        let state = self.app.agent_state(id).await?;
        Ok(ApiResponse::json(
            StatusCode::OK,
            &AgentStateView::new(id.as_str(), &state),
        ))
    }

    async fn get_agent(&self, id: &AgentId) -> Result<ApiResponse, HttpError> {
        let agent = self.app.agent(id).await?;
        Ok(ApiResponse::json(StatusCode::OK, &AgentView::from(&agent)))
    }

    async fn list_agents(&self, req: &ApiRequest) -> Result<ApiResponse, HttpError> {
        let page = page_request(req)?;
        let state = match req.query_param("state").map_err(HttpError::bad_request)? {
            None => None,
            Some(s) => {
                Some(StateName::parse(s).map_err(|e| HttpError::bad_request(format!("query parameter state: {e}")))?)
            }
        };
        let p = self.app.list_agents(state.as_ref(), page).await?;
        Ok(ApiResponse::json(
            StatusCode::OK,
            &Page {
                items: p.items.iter().map(AgentView::from).collect(),
                next_cursor: p.next_cursor,
            },
        ))
    }

    async fn history(&self, id: &AgentId, req: &ApiRequest) -> Result<ApiResponse, HttpError> {
        let p = self.app.history(id, page_request(req)?).await?;
        Ok(ApiResponse::json(
            StatusCode::OK,
            &Page {
                items: p.items.iter().map(HistoryItem::from).collect(),
                next_cursor: p.next_cursor,
            },
        ))
    }

    async fn create_workflow(&self, req: &ApiRequest) -> Result<ApiResponse, HttpError> {
        let format = definition_format(req.header("content-type"))?;
        let def = WorkflowDefinition::parse(&req.body, format)
            .map_err(|p| HttpError::invalid(summarise("workflow definition is invalid", &p), p))?;
        let (stored, created) = self.app.create_workflow(def).await?;
        let status = if created { StatusCode::CREATED } else { StatusCode::OK };
        Ok(ApiResponse::json(status, &WorkflowView::from(stored)))
    }

    async fn list_workflows(&self, req: &ApiRequest) -> Result<ApiResponse, HttpError> {
        let p = self.app.list_workflows(page_request(req)?).await?;
        Ok(ApiResponse::json(
            StatusCode::OK,
            &Page {
                items: p.items.iter().map(WorkflowSummary::from).collect(),
                next_cursor: p.next_cursor,
            },
        ))
    }

    async fn get_workflow(&self, id: &str, req: &ApiRequest) -> Result<ApiResponse, HttpError> {
        let id = WorkflowId::parse(id).map_err(|e| HttpError::bad_request(format!("workflow id: {e}")))?;
        let version = match req.query_param("version").map_err(HttpError::bad_request)? {
            None => None,
            Some(v) => Some(
                WorkflowVersion::parse(v)
                    .map_err(|e| HttpError::bad_request(format!("query parameter version: {e}")))?,
            ),
        };
        let w = self.app.workflow(&id, version.as_ref()).await?;
        Ok(ApiResponse::json(StatusCode::OK, &WorkflowView::from(w)))
    }

    async fn trigger(&self, id: &AgentId, req: &ApiRequest) -> Result<ApiResponse, HttpError> {
        let key = idempotency_key(req)?;
        let (source, payload) = parse_trigger(&req.body)?;
        let t = self.app.trigger(id, source, payload, key).await?;
        tracing::info!(session_id = %t.session_id, workflow_id = %t.workflow_id, created = t.created, "workflow triggered");
        let resp = ApiResponse::json(
            StatusCode::ACCEPTED,
            &TriggerResponse {
                session_id: t.session_id.to_string(),
                workflow_id: t.workflow_id.to_string(),
                message: "Workflow triggered successfully".into(),
            },
        );
        Ok(if t.created {
            resp
        } else {
            resp.with_header("idempotent-replayed", "true")
        })
    }

    async fn list_sessions(&self, id: &AgentId, req: &ApiRequest) -> Result<ApiResponse, HttpError> {
        let p = self.app.list_sessions(id, page_request(req)?).await?;
        Ok(ApiResponse::json(
            StatusCode::OK,
            &Page {
                items: p.items.iter().map(SessionSummary::from).collect(),
                next_cursor: p.next_cursor,
            },
        ))
    }

    async fn get_session(&self, id: &SessionId) -> Result<ApiResponse, HttpError> {
        let v = self.app.session(id).await?;
        Ok(ApiResponse::json(StatusCode::OK, &SessionDetail::from(&v)))
    }

    async fn cancel(&self, id: &SessionId) -> Result<ApiResponse, HttpError> {
        let v = self.app.cancel_session(id).await?;
        tracing::info!(session_id = %id, "session cancelled");
        Ok(ApiResponse::json(StatusCode::OK, &SessionDetail::from(&v)))
    }
}

fn agent_id(s: &str) -> Result<AgentId, HttpError> {
    let id = AgentId::parse(s).map_err(|e| HttpError::bad_request(format!("agent id in the path: {e}")))?;
    tracing::Span::current().record("agent_id", id.as_str());
    Ok(id)
}

/// The `Idempotency-Key` header, if sent. Present but unusable (not visible ASCII, sent twice,
/// empty, too long) is a 400: ignoring it would start a second session on a retry.
fn idempotency_key(req: &ApiRequest) -> Result<Option<IdempotencyKey>, HttpError> {
    let mut values = req.headers.get_all("idempotency-key").iter();
    let Some(raw) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(HttpError::bad_request("Idempotency-Key is given more than once"));
    }
    let k = std::str::from_utf8(raw.as_bytes())
        .ok()
        .filter(|s| s.is_ascii())
        .ok_or_else(|| HttpError::bad_request("Idempotency-Key: must be visible ASCII (1-255 characters)"))?;
    IdempotencyKey::parse(k)
        .map(Some)
        .map_err(|e| HttpError::bad_request(format!("Idempotency-Key: {e}")))
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

fn session_id(s: &str) -> Result<SessionId, HttpError> {
    SessionId::parse(s).map_err(|_| HttpError::bad_request(format!("session id in the path must be a UUID, got {s:?}")))
}

fn page_request(req: &ApiRequest) -> Result<PageRequest, HttpError> {
    let limit = match req.query_param("limit").map_err(HttpError::bad_request)? {
        None => DEFAULT_PAGE,
        Some(l) => l
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=MAX_PAGE).contains(n))
            .ok_or_else(|| {
                HttpError::bad_request(format!(
                    "query parameter limit must be a whole number from 1 to {MAX_PAGE}, got {l:?}"
                ))
            })?,
    };
    let cursor = req
        .query_param("cursor")
        .map_err(HttpError::bad_request)?
        .map(str::to_owned);
    if cursor.as_deref() == Some("") {
        return Err(HttpError::bad_request("query parameter cursor must not be empty"));
    }
    Ok(PageRequest { limit, cursor })
}

/// The body as JSON: empty or malformed → 400.
pub(crate) fn json_body(body: &[u8]) -> Result<Value, HttpError> {
    if body.is_empty() {
        return Err(HttpError::bad_request("request body is required (JSON)"));
    }
    serde_json::from_slice(body).map_err(|e| HttpError::bad_request(format!("malformed JSON: {e}")))
}

fn summarise(what: &str, problems: &[Problem]) -> String {
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

/// Parses and validates a state report. Type problems are 422 (all named at once); a timestamp
/// that is not RFC 3339 and a body `agentId` that differs from the path are 400.
pub fn parse_state_report(path_id: &AgentId, body: &[u8]) -> Result<StateReport, HttpError> {
    let v = json_body(body)?;
    let Value::Object(obj) = v else {
        return Err(HttpError::invalid(
            "request body must be a JSON object",
            vec![Problem::new("", "must be an object")],
        ));
    };
    let mut problems = Vec::new();
    let mut string_field = |name: &str| match obj.get(name) {
        Some(Value::String(s)) => Some(s.clone()),
        None | Some(Value::Null) => {
            problems.push(Problem::new(name, "is required"));
            None
        }
        Some(_) => {
            problems.push(Problem::new(name, "must be a string"));
            None
        }
    };
    let body_id = string_field("agentId");
    let ts = string_field("timestamp");
    let state = string_field("state");
    let details = match obj.get("details") {
        None | Some(Value::Null) => None,
        Some(Value::Object(m)) => Some(m.clone()),
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
    let state = state.and_then(|s| match StateName::parse(&s) {
        Ok(s) => Some(s),
        Err(e) => {
            problems.push(Problem::new("state", e.to_string()));
            None
        }
    });
    if !problems.is_empty() {
        return Err(HttpError::invalid(
            summarise("invalid state report", &problems),
            problems,
        ));
    }
    let (body_id, ts, state) = (body_id.expect("checked"), ts.expect("checked"), state.expect("checked"));
    if body_id != path_id.as_str() {
        return Err(HttpError::bad_request(format!(
            "agentId in the body ({body_id:?}) does not match the path ({path_id})"
        )));
    }
    let timestamp = time::parse_rfc3339(&ts)
        .ok_or_else(|| HttpError::bad_request(format!("timestamp must be RFC 3339 with Z or an offset, got {ts:?}")))?;
    Ok(StateReport {
        agent_id: path_id.clone(),
        state,
        details,
        timestamp,
    })
}

fn parse_trigger(body: &[u8]) -> Result<(DefinitionSource, Option<Value>), HttpError> {
    let v = json_body(body)?;
    let Value::Object(mut obj) = v else {
        return Err(HttpError::invalid(
            "request body must be a JSON object",
            vec![Problem::new("", "must be an object")],
        ));
    };
    let take = |o: &mut Map<String, Value>, k: &str| o.remove(k).filter(|v| !v.is_null());
    let id = take(&mut obj, "workflowDefinitionId");
    let inline = take(&mut obj, "workflowDefinition");
    let version = take(&mut obj, "workflowVersion");
    let payload = take(&mut obj, "initialPayload");
    let source = match (id, inline) {
        (Some(_), Some(_)) | (None, None) => {
            let p = vec![Problem::new(
                "workflowDefinitionId",
                "give exactly one of workflowDefinitionId and workflowDefinition",
            )];
            return Err(HttpError::invalid(
                "give exactly one of workflowDefinitionId and workflowDefinition",
                p,
            ));
        }
        (Some(Value::String(id)), None) => {
            let id = WorkflowId::parse(id).map_err(|e| {
                HttpError::invalid(
                    format!("workflowDefinitionId: {e}"),
                    vec![Problem::new("workflowDefinitionId", e.to_string())],
                )
            })?;
            let version = match version {
                None => None,
                Some(Value::String(v)) => Some(WorkflowVersion::parse(v).map_err(|e| {
                    HttpError::invalid(
                        format!("workflowVersion: {e}"),
                        vec![Problem::new("workflowVersion", e.to_string())],
                    )
                })?),
                Some(_) => {
                    return Err(HttpError::invalid(
                        "workflowVersion must be a string",
                        vec![Problem::new("workflowVersion", "must be a string")],
                    ));
                }
            };
            DefinitionSource::Stored { id, version }
        }
        (Some(_), None) => {
            return Err(HttpError::invalid(
                "workflowDefinitionId must be a string",
                vec![Problem::new("workflowDefinitionId", "must be a string")],
            ));
        }
        (None, Some(def)) => {
            let def = WorkflowDefinition::from_value(def).map_err(|p| {
                let p: Vec<Problem> = p
                    .into_iter()
                    .map(|p| {
                        Problem::new(
                            if p.field.is_empty() {
                                "workflowDefinition".into()
                            } else {
                                format!("workflowDefinition.{}", p.field)
                            },
                            p.message,
                        )
                    })
                    .collect();
                HttpError::invalid(summarise("workflowDefinition is invalid", &p), p)
            })?;
            DefinitionSource::Inline(Box::new(def))
        }
    };
    match &payload {
        None | Some(Value::Object(_)) => {}
        Some(_) => {
            return Err(HttpError::invalid(
                "initialPayload must be an object",
                vec![Problem::new("initialPayload", "must be an object")],
            ));
        }
    }
    Ok((source, payload))
}

fn definition_format(content_type: Option<&str>) -> Result<Format, HttpError> {
    let media = content_type.map(|c| c.split(';').next().unwrap_or("").trim().to_ascii_lowercase());
    match media.as_deref() {
        None | Some("") | Some("application/json") => Ok(Format::Json),
        Some("application/yaml" | "application/x-yaml" | "text/yaml" | "text/x-yaml") => Ok(Format::Yaml),
        Some(other) => Err(HttpError::UnsupportedMediaType(format!(
            "Content-Type {other:?} is not supported; send application/json or application/yaml"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_parse() {
        assert_eq!(Route::parse("/health"), Some(Route::Health));
        assert_eq!(Route::parse("/health/"), Some(Route::Health));
        assert_eq!(
            Route::parse("/v1/opscore/agent/a1/state"),
            Some(Route::AgentState("a1"))
        );
        assert_eq!(Route::parse("//health"), None);
        assert_eq!(Route::parse("/v1/opscore/agent//state"), Some(Route::AgentState("")));
        assert_eq!(Route::parse("health"), None);
        assert_eq!(Route::parse("/"), None);
        assert_eq!(Route::parse(""), None);
    }
}
