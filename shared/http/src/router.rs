//! The one axum [`Router`](axum::Router) of the state API (API Gateway HTTP API) and the notify webhook
//! (function URL): the same router runs on Lambda (`lambda_http::run`) and in the local stack.
//!
//! A route is one handler, documented by its `#[utoipa::path]`, and one `.routes(routes!(…))`
//! line in `state_api()`, `public()` or `webhook()` below: the OpenAPI document is collected from those
//! lines ([`document`]), so a route cannot exist without its documentation. Handlers take typed
//! extractors ([`crate::extract`]) and turn them into use-case calls on [`App`]; every error
//! becomes a response only in [`HttpError::into_response`].

use crate::error::HttpError;
use crate::extract::{
    AgentIdParam, Body, IdempotencyKeyHeader, Json, MAX_DEFINITION_UPLOAD_BYTES, Query, RequireBearer, SessionIdParam,
    WorkflowIdParam,
};
use crate::layers::HttpRouter;
use crate::openapi;
use crate::trigger::{StartRouted, Trigger};
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use opscore_api::paths::{self, headers};
use opscore_api::*;
use opscore_core::agent::StateName;
use opscore_core::app::{App, DefinitionSource};
use opscore_core::config::Config;
use opscore_core::ids::WorkflowVersion;
use opscore_core::secrets::LiveSecrets;
use opscore_core::session::SessionStatus;
use opscore_core::workflow::{Format, WorkflowDefinition};
use serde::Serialize;
use std::sync::{Arc, LazyLock};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Which surface a deployment serves: the HTTP API function serves the state API, the function
/// URL serves the webhook, the local stack serves both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    StateApi,
    Webhook,
    Both,
}

/// The state every handler shares: the use cases, the configuration and the credentials (behind
/// one `Arc`, so the clones axum makes per request are one reference count each).
#[derive(Clone)]
pub struct Api {
    pub app: App,
    pub config: Arc<Config>,
    pub credentials: Credentials,
}

/// What the router authenticates with: the state API's bearer keys and the webhook's HMAC
/// secrets, fixed (environment, local stack) or read from Secrets Manager and refreshed (AWS;
/// opscore-lambda builds those).
#[derive(Clone, Debug)]
pub struct Credentials {
    pub api_keys: Arc<LiveSecrets>,
    pub webhook_secrets: Arc<LiveSecrets>,
}

impl Credentials {
    /// The values of the configuration itself (`OPSCORE_API_KEY`, `OPSCORE_WEBHOOK_SECRET`).
    pub fn fixed(config: &Config) -> Self {
        Self {
            api_keys: Arc::new(LiveSecrets::fixed(API_KEYS, config.api_keys.clone())),
            webhook_secrets: Arc::new(LiveSecrets::fixed(WEBHOOK_SECRETS, config.webhook_secrets.clone())),
        }
    }
}

/// What the logs call the two lists.
pub const API_KEYS: &str = "API keys";
pub const WEBHOOK_SECRETS: &str = "webhook secrets";

/// The router of `surface` behind its edge (request ids, tracing spans, security headers, JSON
/// 404 and 405), with the keys and secrets of `config` itself. Cheap to clone; serve it with
/// `lambda_http::run`, hyper-util's `TowerToHyperService`, or call it with
/// `tower::ServiceExt::oneshot`.
pub fn router(app: App, config: Config, surface: Surface) -> HttpRouter {
    let credentials = Credentials::fixed(&config);
    router_with_credentials(app, config, surface, credentials)
}

/// [`router`] with keys and secrets from elsewhere (Secrets Manager on AWS).
pub fn router_with_credentials(app: App, config: Config, surface: Surface, credentials: Credentials) -> HttpRouter {
    let api = Api {
        app,
        config: Arc::new(config),
        credentials,
    };
    let authenticated = state_api().route_layer(RequireBearer(api.credentials.api_keys.clone()));
    let routes = match surface {
        Surface::StateApi => public().merge(authenticated),
        Surface::Webhook => webhook(),
        Surface::Both => public().merge(authenticated).merge(webhook()),
    };
    let (routes, _) = routes.split_for_parts();
    let routes = routes
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(Arc::new(api));
    // Around the routing, in one service: request id, span, what must see the request before a
    // route is chosen (one trailing slash, HEAD), axum's own refusal (405) in our JSON, headers.
    crate::layers::with_edge(routes)
}

/// The public routes.
fn public() -> OpenApiRouter<Arc<Api>> {
    OpenApiRouter::with_openapi(openapi::base())
        .routes(routes!(health))
        .routes(routes!(openapi_json))
        .routes(routes!(crate::console::console))
        .routes(routes!(crate::console::console_asset))
}

/// The state API's routes; each needs the bearer key (a route layer added by [`router`]).
fn state_api() -> OpenApiRouter<Arc<Api>> {
    OpenApiRouter::new()
        .routes(routes!(list_agents))
        .routes(routes!(get_agent))
        .routes(routes!(get_state, post_state))
        .routes(routes!(history))
        .routes(routes!(trigger))
        .routes(routes!(list_sessions))
        .routes(routes!(list_workflows, create_workflow))
        .routes(routes!(get_workflow))
        .routes(routes!(list_sessions_across_agents))
        .routes(routes!(start_routed))
        .routes(routes!(get_session))
        .routes(routes!(cancel_session))
}

/// AgentKit's webhook (authenticated by its HMAC signature, not the bearer key).
fn webhook() -> OpenApiRouter<Arc<Api>> {
    OpenApiRouter::new().routes(routes!(crate::webhook::notify))
}

/// The OpenAPI document of every route, collected from the routers.
pub fn document() -> utoipa::openapi::OpenApi {
    public().merge(state_api()).merge(webhook()).into_openapi()
}

static DOCUMENT: LazyLock<Bytes> =
    LazyLock::new(|| serde_json::to_vec(&document()).expect("the document serialises").into());

/// Marks a HEAD request while it is routed (see [`before_routing`]).
#[derive(Clone)]
struct Head;

/// The method a request was refused for, carried from [`method_not_allowed`] to [`after_routing`].
#[derive(Clone)]
struct RefusedMethod(Method);

/// One trailing slash is tolerated (`/health/`), and a HEAD request is routed under a method no
/// route takes, so it gets a 405 as before (axum would answer HEAD with GET's handler).
pub(crate) fn before_routing(mut req: Request) -> Request {
    let path = req.uri().path();
    if path.len() > 1 && path.ends_with('/') {
        let trimmed = &path[..path.len() - 1];
        let pq = match req.uri().query() {
            Some(q) => format!("{trimmed}?{q}"),
            None => trimmed.to_owned(),
        };
        let mut parts = req.uri().clone().into_parts();
        if let Ok(pq) = pq.parse() {
            parts.path_and_query = Some(pq);
            if let Ok(uri) = http::Uri::from_parts(parts) {
                *req.uri_mut() = uri;
            }
        }
    }
    if req.method() == Method::HEAD {
        req.extensions_mut().insert(Head);
        *req.method_mut() = Method::from_bytes(b"X-HEAD").expect("a valid method token");
    }
    req
}

/// axum's 405 (from [`method_not_allowed`], `Allow` added by axum) becomes our JSON 405.
pub(crate) fn after_routing(resp: Response) -> Response {
    let Some(RefusedMethod(method)) = resp.extensions().get::<RefusedMethod>().cloned() else {
        return resp;
    };
    let allowed = resp
        .headers()
        .get(http::header::ALLOW)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(',')
        .filter_map(|m| Method::from_bytes(m.trim().as_bytes()).ok())
        .filter(|m| m != Method::HEAD)
        .collect();
    HttpError::MethodNotAllowed { method, allowed }.into_response()
}

fn original_method(req: &Request) -> Method {
    if req.extensions().get::<Head>().is_some() {
        Method::HEAD
    } else {
        req.method().clone()
    }
}

/// A bare 405 naming the method: axum adds `Allow`, and [`after_routing`] makes it our JSON 405.
async fn method_not_allowed(req: Request) -> Response {
    let mut resp = StatusCode::METHOD_NOT_ALLOWED.into_response();
    resp.extensions_mut().insert(RefusedMethod(original_method(&req)));
    resp
}

async fn no_route(req: Request) -> HttpError {
    HttpError::NoRoute(format!("{} {}", original_method(&req), req.uri().path()))
}

/// A JSON response (`content-type: application/json`).
pub fn json<T: Serialize>(status: StatusCode, body: &T) -> Response {
    let body = serde_json::to_vec(body).unwrap_or_else(|_| br#"{"detail":"response serialisation failed"}"#.to_vec());
    let mut resp = Response::new(axum::body::Body::from(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

#[utoipa::path(get, path = paths::HEALTH, responses((status = 200, body = Health)))]
async fn health() -> Response {
    json(StatusCode::OK, &Health { status: "ok".into() })
}

#[utoipa::path(get, path = paths::OPENAPI_JSON, responses((status = 200, description = "This document")))]
async fn openapi_json() -> Response {
    let mut headers = HeaderMap::new();
    headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    (StatusCode::OK, headers, DOCUMENT.clone()).into_response()
}

#[utoipa::path(get, path = paths::AGENTS, security(("bearer" = [])),
    params(("state" = Option<String>, Query, description = "Only agents currently in this state", min_length = 1, max_length = 64),
           ("limit" = Option<u32>, Query, minimum = 1, maximum = 100), ("cursor" = Option<String>, Query, min_length = 1)),
    responses((status = 200, body = PageView<AgentView>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn list_agents(State(api): State<Arc<Api>>, q: Query) -> Result<Response, HttpError> {
    let page = q.page()?;
    let state = match q.get("state")? {
        None => None,
        Some(s) => {
            Some(StateName::parse(s).map_err(|e| HttpError::bad_request(format!("query parameter state: {e}")))?)
        }
    };
    let p = api.app.list_agents(state.as_ref(), page).await?;
    Ok(json(
        StatusCode::OK,
        &PageView {
            items: p.items.iter().map(AgentView::from).collect(),
            next_cursor: p.next_cursor,
        },
    ))
}

#[utoipa::path(get, path = paths::AGENT, security(("bearer" = [])),
    params(("agentId" = String, Path, pattern = "^[A-Za-z0-9._-]{1,128}$")),
    responses((status = 200, body = AgentView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_agent(State(api): State<Arc<Api>>, AgentIdParam(id): AgentIdParam) -> Result<Response, HttpError> {
    let agent = api.app.agent(&id).await?;
    Ok(json(StatusCode::OK, &AgentView::from(&agent)))
}

#[utoipa::path(post, path = paths::AGENT_STATE, security(("bearer" = [])),
    params(("agentId" = String, Path, pattern = "^[A-Za-z0-9._-]{1,128}$")), request_body = StateUpdateRequest,
    responses((status = 202, body = StateUpdateAccepted), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 404, description = "Unknown agent (the reference agent retries)", body = ErrorBody),
              (status = 409, description = "The agent is deregistered", body = ErrorBody),
              (status = 413, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn post_state(
    State(api): State<Arc<Api>>,
    AgentIdParam(id): AgentIdParam,
    Json(body): Json<StateUpdateRequest>,
) -> Result<Response, HttpError> {
    let report = crate::state::into_report(&id, body)?;
    crate::state::check_report_clock(&report, api.app.now(), api.config.max_clock_skew)?;
    let outcome = api.app.report_state(&report).await?;
    let applied = matches!(outcome, opscore_core::store::ReportOutcome::Applied);
    tracing::info!(state = %report.state, applied, "state report");
    Ok(json(
        StatusCode::ACCEPTED,
        &StateUpdateAccepted {
            status: "success".into(),
            message: "State update accepted".into(),
            applied,
        },
    ))
}

#[utoipa::path(get, path = paths::AGENT_STATE, security(("bearer" = [])),
    params(("agentId" = String, Path, pattern = "^[A-Za-z0-9._-]{1,128}$")),
    responses((status = 200, body = AgentStateView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_state(State(api): State<Arc<Api>>, AgentIdParam(id): AgentIdParam) -> Result<Response, HttpError> {
    let state = api.app.agent_state(&id).await?;
    Ok(json(StatusCode::OK, &AgentStateView::new(id.as_str(), &state)))
}

#[utoipa::path(get, path = paths::AGENT_STATE_HISTORY, security(("bearer" = [])),
    params(("agentId" = String, Path, pattern = "^[A-Za-z0-9._-]{1,128}$"), ("limit" = Option<u32>, Query, minimum = 1, maximum = 100), ("cursor" = Option<String>, Query, min_length = 1)),
    responses((status = 200, description = "Newest report first", body = PageView<HistoryEntryView>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn history(State(api): State<Arc<Api>>, AgentIdParam(id): AgentIdParam, q: Query) -> Result<Response, HttpError> {
    let p = api.app.history(&id, q.page()?).await?;
    Ok(json(
        StatusCode::OK,
        &PageView {
            items: p.items.iter().map(HistoryEntryView::from).collect(),
            next_cursor: p.next_cursor,
        },
    ))
}

#[utoipa::path(post, path = paths::AGENT_WORKFLOW, security(("bearer" = [])),
    params(("agentId" = String, Path, pattern = "^[A-Za-z0-9._-]{1,128}$"), ("Idempotency-Key" = Option<String>, Header, description = "A retried request with the same key returns the same session", pattern = "^[!-~]{1,255}$")),
    request_body = TriggerRequest,
    responses((status = 202, body = TriggerResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 404, description = "Unknown agent or definition", body = ErrorBody), (status = 409, description = "The agent is deregistered", body = ErrorBody),
              (status = 413, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn trigger(
    State(api): State<Arc<Api>>,
    AgentIdParam(id): AgentIdParam,
    IdempotencyKeyHeader(key): IdempotencyKeyHeader,
    Json(Trigger {
        source,
        payload,
        route_by_capability,
    }): Json<Trigger>,
) -> Result<Response, HttpError> {
    let t = api
        .app
        .trigger_with(&id, source, payload, key, route_by_capability)
        .await?;
    tracing::info!(session_id = %t.session_id, workflow_id = %t.workflow_id, created = t.created, "workflow triggered");
    let mut resp = json(
        StatusCode::ACCEPTED,
        &TriggerResponse {
            session_id: t.session_id.to_string(),
            workflow_id: t.workflow_id.to_string(),
            message: "Workflow triggered successfully".into(),
        },
    );
    if !t.created {
        resp.headers_mut()
            .insert(headers::IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    }
    Ok(resp)
}

#[utoipa::path(get, path = paths::AGENT_SESSIONS, security(("bearer" = [])),
    params(("agentId" = String, Path, pattern = "^[A-Za-z0-9._-]{1,128}$"), ("limit" = Option<u32>, Query, minimum = 1, maximum = 100), ("cursor" = Option<String>, Query, min_length = 1)),
    responses((status = 200, description = "Newest first", body = PageView<SessionSummary>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn list_sessions(
    State(api): State<Arc<Api>>,
    AgentIdParam(id): AgentIdParam,
    q: Query,
) -> Result<Response, HttpError> {
    let p = api.app.list_sessions(&id, q.page()?).await?;
    Ok(json(
        StatusCode::OK,
        &PageView {
            items: p.items.iter().map(SessionSummary::from).collect(),
            next_cursor: p.next_cursor,
        },
    ))
}

#[utoipa::path(get, path = paths::SESSIONS, security(("bearer" = [])),
    params(("status" = Option<SessionStatus>, Query, description = "Only sessions currently in this status"),
           ("limit" = Option<u32>, Query, minimum = 1, maximum = 100), ("cursor" = Option<String>, Query, min_length = 1)),
    responses((status = 200, description = "The sessions of every agent, newest start first", body = PageView<SessionSummary>),
              (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn list_sessions_across_agents(State(api): State<Arc<Api>>, q: Query) -> Result<Response, HttpError> {
    let page = q.page()?;
    let status = q
        .get("status")?
        .map(SessionStatus::parse)
        .transpose()
        .map_err(|e| HttpError::bad_request(format!("query parameter status {e}")))?;
    let p = api.app.list_sessions_across_agents(status, page).await?;
    Ok(json(
        StatusCode::OK,
        &PageView {
            items: p.items.iter().map(SessionSummary::from).collect(),
            next_cursor: p.next_cursor,
        },
    ))
}

#[utoipa::path(post, path = paths::WORKFLOWS, security(("bearer" = [])),
    request_body(content(
        (WorkflowDefinition = "application/json"),
        (WorkflowDefinition = "application/yaml"))),
    responses((status = 201, body = WorkflowView), (status = 200, description = "Identical definition already stored", body = WorkflowView),
              (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 409, description = "Same id and version, other content", body = ErrorBody), (status = 413, body = ErrorBody),
              (status = 415, body = ErrorBody), (status = 422, description = "Every validation problem, listed", body = ErrorBody)))]
async fn create_workflow(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Body(body): Body<MAX_DEFINITION_UPLOAD_BYTES>,
) -> Result<Response, HttpError> {
    let format = definition_format(headers.get(headers::CONTENT_TYPE).and_then(|v| v.to_str().ok()))?;
    let def = WorkflowDefinition::parse(&body, format)
        .map_err(|p| HttpError::invalid(crate::state::summarise("workflow definition is invalid", &p), p))?;
    let (stored, created) = api.app.create_workflow(def).await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok(json(status, &WorkflowView::from(stored)))
}

#[utoipa::path(get, path = paths::WORKFLOWS, security(("bearer" = [])),
    params(("limit" = Option<u32>, Query, minimum = 1, maximum = 100), ("cursor" = Option<String>, Query, min_length = 1)),
    responses((status = 200, body = PageView<WorkflowSummary>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn list_workflows(State(api): State<Arc<Api>>, q: Query) -> Result<Response, HttpError> {
    let p = api.app.list_workflows(q.page()?).await?;
    Ok(json(
        StatusCode::OK,
        &PageView {
            items: p.items.iter().map(WorkflowSummary::from).collect(),
            next_cursor: p.next_cursor,
        },
    ))
}

/// Starts a session of a stored definition without naming an agent: every task of the
/// definition must be routed by capability (`routeByCapability` and `agentCapability` on each
/// task, else 422); each goes to an available agent announcing its capability. The session is
/// listed under the reserved agent id `opscore.routed`.
#[utoipa::path(post, path = paths::WORKFLOW_SESSIONS, security(("bearer" = [])),
    params(("workflowId" = String, Path, pattern = "^[A-Za-z0-9._-]{1,128}$"), ("Idempotency-Key" = Option<String>, Header, description = "A retried request with the same key returns the same session", pattern = "^[!-~]{1,255}$")),
    request_body = StartRoutedRequest,
    responses((status = 202, body = TriggerResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 404, description = "Unknown definition", body = ErrorBody), (status = 413, body = ErrorBody),
              (status = 422, description = "A task of the definition is not routed by capability", body = ErrorBody)))]
async fn start_routed(
    State(api): State<Arc<Api>>,
    WorkflowIdParam(id): WorkflowIdParam,
    IdempotencyKeyHeader(key): IdempotencyKeyHeader,
    Json(StartRouted { version, payload }): Json<StartRouted>,
) -> Result<Response, HttpError> {
    let t = api
        .app
        .start_routed(DefinitionSource::Stored { id, version }, payload, key)
        .await?;
    tracing::info!(session_id = %t.session_id, workflow_id = %t.workflow_id, created = t.created, "routed session started");
    let mut resp = json(
        StatusCode::ACCEPTED,
        &TriggerResponse {
            session_id: t.session_id.to_string(),
            workflow_id: t.workflow_id.to_string(),
            message: "Session started; its tasks are routed by capability".into(),
        },
    );
    if !t.created {
        resp.headers_mut()
            .insert(headers::IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    }
    Ok(resp)
}

#[utoipa::path(get, path = paths::WORKFLOW, security(("bearer" = [])),
    params(("workflowId" = String, Path, pattern = "^[A-Za-z0-9._-]{1,128}$"), ("version" = Option<String>, Query, description = "Default: the newest", pattern = "^[A-Za-z0-9._-]{1,64}$")),
    responses((status = 200, body = WorkflowView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_workflow(
    State(api): State<Arc<Api>>,
    WorkflowIdParam(id): WorkflowIdParam,
    q: Query,
) -> Result<Response, HttpError> {
    let version = match q.get("version")? {
        None => None,
        Some(v) => Some(
            WorkflowVersion::parse(v).map_err(|e| HttpError::bad_request(format!("query parameter version: {e}")))?,
        ),
    };
    let w = api.app.workflow(&id, version.as_ref()).await?;
    Ok(json(StatusCode::OK, &WorkflowView::from(w)))
}

#[utoipa::path(get, path = paths::SESSION, security(("bearer" = [])),
    params(("sessionId" = String, Path, description = "A UUID", pattern = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")),
    responses((status = 200, body = SessionDetail), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_session(State(api): State<Arc<Api>>, SessionIdParam(id): SessionIdParam) -> Result<Response, HttpError> {
    let v = api.app.session(&id).await?;
    Ok(json(StatusCode::OK, &SessionDetail::from(&v)))
}

#[utoipa::path(post, path = paths::SESSION_CANCEL, security(("bearer" = [])),
    params(("sessionId" = String, Path, description = "A UUID", pattern = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")),
    responses((status = 200, body = SessionDetail), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, description = "The session has already ended", body = ErrorBody)))]
async fn cancel_session(
    State(api): State<Arc<Api>>,
    SessionIdParam(id): SessionIdParam,
) -> Result<Response, HttpError> {
    let v = api.app.cancel_session(&id).await?;
    tracing::info!(session_id = %id, "session cancelled");
    Ok(json(StatusCode::OK, &SessionDetail::from(&v)))
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

use crate::error::ErrorBody;

/// The router of `surface` on a fresh in-memory store, with the API key `k` and the webhook
/// secret `s`: what the HTTP layer's unit tests call.
#[cfg(test)]
pub(crate) fn test_router(surface: Surface) -> HttpRouter {
    use opscore_core::config::Secret;
    let app = App::new(
        Arc::new(opscore_core::memory::InMemoryStore::new()),
        Arc::new(opscore_core::time::SystemClock),
        Default::default(),
    );
    let config = Config {
        api_keys: vec![Secret::new("k")],
        webhook_secrets: vec![Secret::new("s")],
        ..Config::default()
    };
    router(app, config, surface)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    async fn status(router: &HttpRouter, method: Method, path: &str) -> (StatusCode, String) {
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .header(headers::AUTHORIZATION, "Bearer k")
            .body(axum::body::Body::empty())
            .unwrap();
        let resp = router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let allow = resp
            .headers()
            .get(http::header::ALLOW)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        (status, allow)
    }

    /// What the hand-written route parser did, the router does: one trailing slash is tolerated,
    /// an empty id segment reaches the id check (400), other empty segments are no route.
    #[tokio::test]
    async fn paths_route_as_before() {
        let r = test_router(Surface::Both);
        assert_eq!(status(&r, Method::GET, "/health").await.0, StatusCode::OK);
        assert_eq!(status(&r, Method::GET, "/health/").await.0, StatusCode::OK);
        assert_eq!(status(&r, Method::GET, "/health/?x=1").await.0, StatusCode::OK);
        assert_eq!(status(&r, Method::GET, "//health").await.0, StatusCode::NOT_FOUND);
        assert_eq!(status(&r, Method::GET, "/").await.0, StatusCode::NOT_FOUND);
        assert_eq!(
            status(&r, Method::GET, "/v1/opscore/agent//state").await.0,
            StatusCode::BAD_REQUEST
        );
        // Routed (an unknown agent), not "no route".
        let (code, _) = status(&r, Method::GET, "/v1/opscore/agent/a1/state/").await;
        assert_eq!(code, StatusCode::NOT_FOUND);
        assert_eq!(
            status(&r, Method::GET, "/v1/opscore/agent/a%2Db").await.0,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            status(&r, Method::HEAD, "/health").await,
            (StatusCode::METHOD_NOT_ALLOWED, "GET".into())
        );
        assert_eq!(
            status(&r, Method::DELETE, "/v1/opscore/workflows").await,
            (StatusCode::METHOD_NOT_ALLOWED, "GET, POST".into())
        );
    }
}
