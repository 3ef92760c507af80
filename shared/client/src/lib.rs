//! The Ops-Core client SDK: typed async calls for every route of the state API.
//!
//! ```no_run
//! # async fn demo() -> Result<(), opscore_client::Error> {
//! use opscore_client::{Client, TriggerKey};
//! let client = Client::builder("https://abc.execute-api.eu-west-1.amazonaws.com/prod")
//!     .api_key("my-key")
//!     .build()?;
//! // An agent reporting its own state:
//! client.report_state("agent-1", "idle", None).await?;
//! // Starting the stored sample workflow on it (an Idempotency-Key is generated, so the call is
//! // retried safely on a network error):
//! let t = client.trigger_stored("agent-1", "sample_workflow_id", None).await?;
//! let session = client.session(&t.response.session_id).await?;
//! println!("{:?}", session.summary.status);
//! # Ok(()) }
//! ```
//!
//! Responses are the API's own wire types ([`opscore_api`], re-exported as [`api`]). Errors are
//! typed by class ([`Error`]). GETs, state reports and triggers that carry an `Idempotency-Key`
//! are retried on network errors, 429, 502, 503 and 504 (bounded, exponential backoff with full
//! jitter); nothing else is.

pub mod error;
pub mod retry;

pub use error::{Error, FieldError};
pub use opscore_api as api;
pub use retry::{Idempotency, RequestRetryPolicy};

use bytes::Bytes;
use opscore_api::paths;
use opscore_api::{
    AgentStateView, AgentView, Health, HistoryEntryView, PageView, SessionDetail, SessionSummary, StartRoutedRequest,
    StateUpdateAccepted, StateUpdateRequest, TriggerRequest, TriggerResponse, WorkflowSummary, WorkflowView,
};
use opscore_core::session::SessionStatus;
use opscore_core::workflow::WorkflowDefinition;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue, RETRY_AFTER};
use reqwest::{Method, Url};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use std::fmt;
use std::path::Path;
use std::time::Duration;

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const USER_AGENT: &str = concat!("opscore-client/", env!("CARGO_PKG_VERSION"));

/// The header a trigger carries so that a repeat (a retry, a re-run script) starts no second session.
pub const IDEMPOTENCY_KEY_HEADER: &str = paths::headers::IDEMPOTENCY_KEY;

/// Which page of a list to fetch; pass a page's `next_cursor` back as `cursor`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageOpts {
    /// 1–100; the API's default (50) when `None`.
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

impl PageOpts {
    pub fn limit(limit: u32) -> Self {
        Self {
            limit: Some(limit),
            cursor: None,
        }
    }
}

/// A created-or-found answer: `created` is false when an identical resource already existed
/// (the API answered 200 rather than 201).
#[derive(Debug)]
pub struct Created<T> {
    pub value: T,
    pub created: bool,
}

/// What a trigger answered, with the key it was sent with.
#[derive(Debug)]
pub struct TriggerReply {
    pub response: TriggerResponse,
    /// The `Idempotency-Key` the request carried, if any (the generated one by default).
    pub idempotency_key: Option<String>,
    /// True when the API answered with a session an earlier request with the same key started.
    pub replayed: bool,
}

/// The `Idempotency-Key` of a trigger.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum TriggerKey {
    /// A fresh UUID v4 per call (the default): the call is retried safely.
    #[default]
    Generate,
    /// A key of the caller's (e.g. derived from the event that causes the trigger).
    Use(String),
    /// No key: every request starts a new session, so the call is never retried.
    Omit,
}

/// A workflow definition document, as uploaded to `POST /v1/opscore/workflows`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DefinitionBody {
    Json(Vec<u8>),
    Yaml(Vec<u8>),
}

impl DefinitionBody {
    /// Chooses the format by the file name's extension: `.json`, `.yaml` or `.yml`.
    pub fn for_path(path: &Path, bytes: Vec<u8>) -> Option<Self> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "json" => Some(Self::Json(bytes)),
            "yaml" | "yml" => Some(Self::Yaml(bytes)),
            _ => None,
        }
    }

    pub fn content_type(&self) -> &'static str {
        match self {
            Self::Json(_) => "application/json",
            Self::Yaml(_) => "application/yaml",
        }
    }

    pub fn bytes(&self) -> &[u8] {
        match self {
            Self::Json(b) | Self::Yaml(b) => b,
        }
    }

    pub fn format(&self) -> opscore_core::workflow::Format {
        match self {
            Self::Json(_) => opscore_core::workflow::Format::Json,
            Self::Yaml(_) => opscore_core::workflow::Format::Yaml,
        }
    }
}

pub struct ClientBuilder {
    base_url: String,
    api_key: Option<String>,
    timeout: Duration,
    connect_timeout: Duration,
    retry: RequestRetryPolicy,
    user_agent: String,
}

impl ClientBuilder {
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        let k = key.into();
        self.api_key = (!k.is_empty()).then_some(k);
        self
    }
    /// Total time for one try of a request (default 30 s).
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }
    pub fn connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = t;
        self
    }
    pub fn retry(mut self, p: RequestRetryPolicy) -> Self {
        self.retry = p;
        self
    }
    pub fn user_agent(mut self, ua: impl Into<String>) -> Self {
        self.user_agent = ua.into();
        self
    }

    pub fn build(self) -> Result<Client, Error> {
        let base = parse_base_url(&self.base_url)?;
        let auth = match &self.api_key {
            None => None,
            Some(k) => {
                let mut v = HeaderValue::from_str(&format!("Bearer {k}"))
                    .map_err(|_| Error::Config("the API key contains characters a header cannot carry".into()))?;
                v.set_sensitive(true);
                Some(v)
            }
        };
        let http = reqwest::Client::builder()
            .timeout(self.timeout)
            .connect_timeout(self.connect_timeout)
            .user_agent(self.user_agent)
            .build()
            .map_err(|e| Error::Config(format!("cannot build the HTTP client: {e}")))?;
        Ok(Client {
            http,
            base,
            auth,
            timeout: self.timeout,
            retry: self.retry,
        })
    }
}

/// Parses and checks a base URL: http(s), a host, no query or fragment. A path prefix (an API
/// Gateway stage, a reverse-proxy mount) is kept.
pub fn parse_base_url(s: &str) -> Result<Url, Error> {
    let url = Url::parse(s.trim()).map_err(|e| Error::Config(format!("API URL {s:?} is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() || url.host_str().is_none() {
        return Err(Error::Config(format!(
            "API URL {s:?} must be an http:// or https:// URL with a host"
        )));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(Error::Config(format!(
            "API URL {s:?} must not have a query or fragment"
        )));
    }
    Ok(url)
}

/// `base` + path segments (each percent-encoded, so an id cannot add segments) + query.
/// `http://h/prefix` and `http://h/prefix/` + `["v1", "opscore", "agents"]` both give
/// `http://h/prefix/v1/opscore/agents`.
pub fn join(base: &Url, segments: &[&str], query: &[(&str, &str)]) -> Url {
    let mut url = base.clone();
    {
        let mut path = url
            .path_segments_mut()
            .expect("checked by parse_base_url: the URL can be a base");
        path.pop_if_empty();
        path.extend(segments);
    }
    if !query.is_empty() {
        url.query_pairs_mut().extend_pairs(query);
    }
    url
}

/// The SDK's client. Cheap to clone (the connection pool is shared).
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
    auth: Option<HeaderValue>,
    timeout: Duration,
    retry: RequestRetryPolicy,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base.as_str())
            .field("api_key", &self.auth.as_ref().map(|_| "***"))
            .field("timeout", &self.timeout)
            .field("retry", &self.retry)
            .finish()
    }
}

/// One request as the client sends it (every try of it).
struct Call {
    method: Method,
    segments: Vec<String>,
    query: Vec<(&'static str, String)>,
    body: Option<(&'static str, Bytes)>,
    headers: Vec<(&'static str, String)>,
    auth: bool,
    idempotency: Idempotency,
}

impl Call {
    /// A GET of `template` (one of [`paths`]) with its parameters.
    fn get(template: &str, params: &[&str]) -> Self {
        Self {
            method: Method::GET,
            segments: paths::segments(template, params)
                .into_iter()
                .map(str::to_owned)
                .collect(),
            query: Vec::new(),
            body: None,
            headers: Vec::new(),
            auth: true,
            idempotency: Idempotency::Idempotent,
        }
    }
    fn post(template: &str, params: &[&str], idempotency: Idempotency) -> Self {
        Self {
            method: Method::POST,
            idempotency,
            ..Self::get(template, params)
        }
    }
    fn json(mut self, body: &impl serde::Serialize) -> Result<Self, Error> {
        let bytes = serde_json::to_vec(body).map_err(|e| Error::Config(format!("cannot encode the request: {e}")))?;
        self.body = Some(("application/json", Bytes::from(bytes)));
        Ok(self)
    }
    fn page(mut self, page: &PageOpts) -> Self {
        if let Some(l) = page.limit {
            self.query.push(("limit", l.to_string()));
        }
        if let Some(c) = &page.cursor {
            self.query.push(("cursor", c.clone()));
        }
        self
    }
}

/// A success answer: status, headers, body.
struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Bytes,
    url: String,
}

impl Answer {
    fn decode<T: DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_slice(&self.body).map_err(|e| Error::Decode {
            url: self.url.clone(),
            status: self.status,
            message: format!("the body is not the expected JSON ({e})"),
        })
    }
}

impl Client {
    /// A client with the defaults: no API key, 30 s timeout, 3 retries for idempotent calls.
    pub fn new(base_url: &str) -> Result<Self, Error> {
        Self::builder(base_url).build()
    }

    pub fn builder(base_url: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            base_url: base_url.into(),
            api_key: None,
            timeout: DEFAULT_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            retry: RequestRetryPolicy::default(),
            user_agent: USER_AGENT.into(),
        }
    }

    pub fn base_url(&self) -> &Url {
        &self.base
    }

    pub fn has_api_key(&self) -> bool {
        self.auth.is_some()
    }

    /// The URL of a route (the base URL's path prefix kept).
    pub fn url(&self, segments: &[&str]) -> Url {
        join(&self.base, segments, &[])
    }

    // ----- health and the API description -----

    /// `GET /health` (no key needed).
    pub async fn health(&self) -> Result<Health, Error> {
        let call = Call {
            auth: false,
            ..Call::get(paths::HEALTH, &[])
        };
        self.send(&call).await?.decode()
    }

    /// `GET /openapi.json` (no key needed): the OpenAPI 3.1 document.
    pub async fn openapi(&self) -> Result<Value, Error> {
        let call = Call {
            auth: false,
            ..Call::get(paths::OPENAPI_JSON, &[])
        };
        self.send(&call).await?.decode()
    }

    // ----- agents and their state -----

    /// `GET /v1/opscore/agents[?state=S]`.
    pub async fn list_agents(&self, state: Option<&str>, page: &PageOpts) -> Result<PageView<AgentView>, Error> {
        let mut call = Call::get(paths::AGENTS, &[]).page(page);
        if let Some(s) = state {
            call.query.insert(0, ("state", s.to_owned()));
        }
        self.send(&call).await?.decode()
    }

    /// `GET /v1/opscore/agent/{agentId}`.
    pub async fn agent(&self, agent_id: &str) -> Result<AgentView, Error> {
        self.send(&Call::get(paths::AGENT, &[agent_id])).await?.decode()
    }

    /// `GET /v1/opscore/agent/{agentId}/state`.
    pub async fn agent_state(&self, agent_id: &str) -> Result<AgentStateView, Error> {
        self.send(&Call::get(paths::AGENT_STATE, &[agent_id])).await?.decode()
    }

    /// `GET /v1/opscore/agent/{agentId}/state/history`, newest first.
    pub async fn state_history(&self, agent_id: &str, page: &PageOpts) -> Result<PageView<HistoryEntryView>, Error> {
        let call = Call::get(paths::AGENT_STATE_HISTORY, &[agent_id]).page(page);
        self.send(&call).await?.decode()
    }

    /// `POST /v1/opscore/agent/{agentId}/state` with the timestamp of now (RFC 3339, `+00:00`).
    pub async fn report_state(
        &self,
        agent_id: &str,
        state: &str,
        details: Option<Map<String, Value>>,
    ) -> Result<StateUpdateAccepted, Error> {
        let req = StateUpdateRequest {
            agent_id: agent_id.to_owned(),
            timestamp: now_rfc3339(),
            state: state.to_owned(),
            details,
        };
        self.send_state_report(&req).await
    }

    /// `POST /v1/opscore/agent/{agentId}/state` with a report of the caller's. Retried on
    /// transient errors: a repeated report (same timestamp) changes nothing.
    pub async fn send_state_report(&self, report: &StateUpdateRequest) -> Result<StateUpdateAccepted, Error> {
        let call = Call::post(paths::AGENT_STATE, &[&report.agent_id], Idempotency::Idempotent).json(report)?;
        self.send(&call).await?.decode()
    }

    // ----- workflow definitions -----

    /// `POST /v1/opscore/workflows` with a JSON or YAML document (never retried). `created` is
    /// false when an identical definition was already stored.
    pub async fn create_workflow(&self, body: DefinitionBody) -> Result<Created<WorkflowView>, Error> {
        let mut call = Call::post(paths::WORKFLOWS, &[], Idempotency::NotIdempotent);
        call.body = Some((body.content_type(), Bytes::from(body.bytes().to_vec())));
        let answer = self.send(&call).await?;
        Ok(Created {
            value: answer.decode()?,
            created: answer.status == 201,
        })
    }

    /// `POST /v1/opscore/workflows` with a typed definition (sent as JSON).
    pub async fn create_workflow_definition(&self, def: &WorkflowDefinition) -> Result<Created<WorkflowView>, Error> {
        let bytes = serde_json::to_vec(def).map_err(|e| Error::Config(format!("cannot encode the definition: {e}")))?;
        self.create_workflow(DefinitionBody::Json(bytes)).await
    }

    /// `GET /v1/opscore/workflows`.
    pub async fn list_workflows(&self, page: &PageOpts) -> Result<PageView<WorkflowSummary>, Error> {
        self.send(&Call::get(paths::WORKFLOWS, &[]).page(page)).await?.decode()
    }

    /// `GET /v1/opscore/workflows/{workflowId}[?version=V]` (the newest version by default).
    pub async fn workflow(&self, workflow_id: &str, version: Option<&str>) -> Result<WorkflowView, Error> {
        let mut call = Call::get(paths::WORKFLOW, &[workflow_id]);
        if let Some(v) = version {
            call.query.push(("version", v.to_owned()));
        }
        self.send(&call).await?.decode()
    }

    // ----- triggers and sessions -----

    /// `POST /v1/opscore/agent/{agentId}/workflow`. Retried on transient errors only when the
    /// request carries an `Idempotency-Key` (the generated one by default).
    pub async fn trigger(&self, agent_id: &str, req: &TriggerRequest, key: TriggerKey) -> Result<TriggerReply, Error> {
        self.start_session(paths::AGENT_WORKFLOW, agent_id, req, key).await
    }

    /// A POST that starts a session (`path` with its one parameter `param`): the idempotency key
    /// as `key` says, retried on transient errors only with a key, and whether the answer was a
    /// replay of an earlier one.
    async fn start_session(
        &self,
        path: &'static str,
        param: &str,
        req: &impl serde::Serialize,
        key: TriggerKey,
    ) -> Result<TriggerReply, Error> {
        let key = match key {
            TriggerKey::Generate => Some(uuid::Uuid::new_v4().to_string()),
            TriggerKey::Use(k) => Some(k),
            TriggerKey::Omit => None,
        };
        let idempotency = if key.is_some() {
            Idempotency::Idempotent
        } else {
            Idempotency::NotIdempotent
        };
        let mut call = Call::post(path, &[param], idempotency).json(req)?;
        if let Some(k) = &key {
            call.headers.push((IDEMPOTENCY_KEY_HEADER, k.clone()));
        }
        let answer = self.send(&call).await?;
        Ok(TriggerReply {
            response: answer.decode()?,
            idempotency_key: key,
            replayed: answer
                .headers
                .get(paths::headers::IDEMPOTENT_REPLAYED)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true")),
        })
    }

    /// Starts a stored workflow (its newest version) with a generated `Idempotency-Key`.
    pub async fn trigger_stored(
        &self,
        agent_id: &str,
        workflow_id: &str,
        initial_payload: Option<Value>,
    ) -> Result<TriggerReply, Error> {
        let req = TriggerRequest {
            workflow_definition_id: Some(workflow_id.to_owned()),
            workflow_version: None,
            workflow_definition: None,
            initial_payload,
            route_by_capability: None,
        };
        self.trigger(agent_id, &req, TriggerKey::Generate).await
    }

    /// Starts an inline definition with a generated `Idempotency-Key`.
    pub async fn trigger_inline(
        &self,
        agent_id: &str,
        definition: WorkflowDefinition,
        initial_payload: Option<Value>,
    ) -> Result<TriggerReply, Error> {
        let req = TriggerRequest {
            workflow_definition_id: None,
            workflow_version: None,
            workflow_definition: Some(definition),
            initial_payload,
            route_by_capability: None,
        };
        self.trigger(agent_id, &req, TriggerKey::Generate).await
    }

    /// `POST /v1/opscore/workflows/{workflowId}/sessions`: starts a session of a stored
    /// definition whose every task is routed by capability, without naming an agent. Retried on
    /// transient errors only with an `Idempotency-Key` (the generated one by default).
    pub async fn start_routed(
        &self,
        workflow_id: &str,
        req: &StartRoutedRequest,
        key: TriggerKey,
    ) -> Result<TriggerReply, Error> {
        self.start_session(paths::WORKFLOW_SESSIONS, workflow_id, req, key)
            .await
    }

    /// `GET /v1/opscore/sessions/{sessionId}`.
    pub async fn session(&self, session_id: &str) -> Result<SessionDetail, Error> {
        self.send(&Call::get(paths::SESSION, &[session_id])).await?.decode()
    }

    /// `GET /v1/opscore/agent/{agentId}/sessions`.
    pub async fn list_sessions(&self, agent_id: &str, page: &PageOpts) -> Result<PageView<SessionSummary>, Error> {
        self.send(&Call::get(paths::AGENT_SESSIONS, &[agent_id]).page(page))
            .await?
            .decode()
    }

    /// `GET /v1/opscore/sessions[?status=S]`: the latest sessions of every agent, newest first.
    pub async fn list_sessions_across_agents(
        &self,
        status: Option<SessionStatus>,
        page: &PageOpts,
    ) -> Result<PageView<SessionSummary>, Error> {
        let mut call = Call::get(paths::SESSIONS, &[]).page(page);
        if let Some(s) = status {
            call.query.insert(0, ("status", s.as_str().to_owned()));
        }
        self.send(&call).await?.decode()
    }

    /// `POST /v1/opscore/sessions/{sessionId}/cancel` (never retried). A session that already
    /// ended answers [`Error::Conflict`].
    pub async fn cancel_session(&self, session_id: &str) -> Result<SessionDetail, Error> {
        let call = Call::post(paths::SESSION_CANCEL, &[session_id], Idempotency::NotIdempotent);
        self.send(&call).await?.decode()
    }

    // ----- transport -----

    async fn send(&self, call: &Call) -> Result<Answer, Error> {
        let query: Vec<(&str, &str)> = call.query.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let segments: Vec<&str> = call.segments.iter().map(String::as_str).collect();
        let url = join(&self.base, &segments, &query);
        let mut tries = 0u32;
        loop {
            tries += 1;
            match self.send_once(&url, call).await {
                Ok(a) => return Ok(a),
                Err(e) if self.retry.should_retry(call.idempotency, &e, tries) => {
                    let retry_after = match &e {
                        Error::RateLimited { retry_after, .. } => *retry_after,
                        _ => None,
                    };
                    tokio::time::sleep(self.retry.delay(tries, fastrand::f64(), retry_after)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn send_once(&self, url: &Url, call: &Call) -> Result<Answer, Error> {
        let mut req = self
            .http
            .request(call.method.clone(), url.clone())
            .header(ACCEPT, "application/json");
        if call.auth
            && let Some(a) = &self.auth
        {
            req = req.header(AUTHORIZATION, a.clone());
        }
        for (k, v) in &call.headers {
            req = req.header(*k, v.as_str());
        }
        if let Some((ct, body)) = &call.body {
            req = req.header(CONTENT_TYPE, *ct).body(body.clone());
        }
        let shown = url.as_str();
        let resp = req
            .send()
            .await
            .map_err(|e| Error::from_reqwest(shown, self.timeout, &e))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp
            .bytes()
            .await
            .map_err(|e| Error::from_reqwest(shown, self.timeout, &e))?;
        if (200..300).contains(&status) {
            return Ok(Answer {
                status,
                headers,
                body,
                url: shown.to_owned(),
            });
        }
        let retry_after = headers.get(RETRY_AFTER).and_then(|v| v.to_str().ok());
        Err(Error::from_response(status, retry_after, &body))
    }
}

/// Now as RFC 3339 with microseconds and `+00:00`, as AgentKit's SDK sends it.
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, false)
}

#[cfg(test)]
mod tests;
