//! The extractors of the routes: path ids, query parameters, the bearer check, the
//! `Idempotency-Key` header and bodies. Each one refuses with an [`HttpError`], so every refusal
//! gets the API's JSON error body (from [`HttpError::into_response`]).
//!
//! A body is read only by [`Body`] and [`Json`], the last argument of a handler; axum runs every
//! other extractor first, so a request without valid credentials is refused before its body is
//! read (and the bearer check, [`RequireBearer`], is a route layer that runs before any extractor).

use crate::error::HttpError;
use axum::extract::{FromRequest, FromRequestParts, MatchedPath, Request};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::future::{BoxFuture, Either};
use http::request::Parts;
use http_body_util::{BodyExt, Limited};
use opscore_api::paths::headers;
use opscore_core::ids::{AgentId, IdempotencyKey, SessionId, WorkflowId};
use opscore_core::secrets::LiveSecrets;
use opscore_core::store::PageRequest;
use std::convert::Infallible;
use std::future::Ready;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::{Layer, Service};

/// Largest request body of the state API routes and the webhook (API Gateway allows 10 MB).
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Largest workflow definition upload (YAML is bigger than the JSON it becomes).
pub const MAX_DEFINITION_UPLOAD_BYTES: usize = 256 * 1024;
/// Bodies larger than this are refused before they are read in full (the routes' own limits are
/// lower; this bounds what is read to learn by how much a body is too large).
pub const MAX_READ_BYTES: usize = 1024 * 1024;
const DEFAULT_PAGE: u32 = 50;
const MAX_PAGE: u32 = 100;

/// `Authorization: Bearer <key>` against the configured keys: the route layer of every
/// authenticated route. It runs after routing (an unknown route is a 404, a wrong method a 405)
/// and before any extractor, so the body of an unauthenticated request is never read.
///
/// The keys are checked synchronously while they are fresh; the one request per refresh interval
/// that finds them due waits for Secrets Manager first ([`LiveSecrets::current`]).
#[derive(Clone)]
pub struct RequireBearer(pub Arc<LiveSecrets>);

impl<S> Layer<S> for RequireBearer {
    type Service = RequireBearerService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RequireBearerService {
            inner,
            keys: self.0.clone(),
        }
    }
}

/// The service of [`RequireBearer`].
#[derive(Clone)]
pub struct RequireBearerService<S> {
    inner: S,
    keys: Arc<LiveSecrets>,
}

type Refusal = Ready<Result<Response, Infallible>>;
type AfterRefresh = BoxFuture<'static, Result<Response, Infallible>>;

impl<S> Service<Request> for RequireBearerService<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<Either<S::Future, Refusal>, AfterRefresh>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let Some(keys) = self.keys.fresh() else {
            // The service that was made ready goes into the future; a clone stays for the next call.
            let clone = self.inner.clone();
            let mut inner = std::mem::replace(&mut self.inner, clone);
            let live = self.keys.clone();
            return Either::Right(Box::pin(async move {
                let keys = live.current().await;
                let header = req.headers().get(headers::AUTHORIZATION).and_then(|v| v.to_str().ok());
                match crate::auth::check_bearer(header, &keys) {
                    Ok(()) => inner.call(req).await,
                    Err(e) => Ok(e.into_response()),
                }
            }));
        };
        let header = req.headers().get(headers::AUTHORIZATION).and_then(|v| v.to_str().ok());
        Either::Left(match crate::auth::check_bearer(header, &keys) {
            Ok(()) => Either::Left(self.inner.call(req)),
            Err(e) => Either::Right(std::future::ready(Ok(e.into_response()))),
        })
    }
}

/// The path parameter of a route with exactly one, as received (percent-encoded: an id is never
/// decoded, so `a%2Db` is refused rather than read as `a-b`). axum's own path extractors decode,
/// so the segment is taken from the path at the position of the parameter in the matched route.
fn the_path_param(parts: &Parts) -> Result<&str, HttpError> {
    let position = parts
        .extensions
        .get::<MatchedPath>()
        .and_then(|m| m.as_str().split('/').position(|s| s.starts_with('{')));
    position
        .and_then(|i| parts.uri.path().split('/').nth(i))
        .ok_or_else(|| {
            HttpError::App(opscore_core::AppError::Internal(
                "a path parameter outside a route with one".into(),
            ))
        })
}

/// `{agentId}` of the path, validated (400 otherwise), and recorded in the request's span.
pub struct AgentIdParam(pub AgentId);

impl<S: Send + Sync> FromRequestParts<S> for AgentIdParam {
    type Rejection = HttpError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, HttpError> {
        let raw = the_path_param(parts)?;
        let id = AgentId::parse(raw).map_err(|e| HttpError::bad_request(format!("agent id in the path: {e}")))?;
        tracing::Span::current().record("agent_id", id.as_str());
        Ok(Self(id))
    }
}

/// `{sessionId}` of the path: a UUID (400 otherwise).
pub struct SessionIdParam(pub SessionId);

impl<S: Send + Sync> FromRequestParts<S> for SessionIdParam {
    type Rejection = HttpError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, HttpError> {
        let raw = the_path_param(parts)?;
        SessionId::parse(raw)
            .map(Self)
            .map_err(|_| HttpError::bad_request(format!("session id in the path must be a UUID, got {raw:?}")))
    }
}

/// `{workflowId}` of the path (400 otherwise).
pub struct WorkflowIdParam(pub WorkflowId);

impl<S: Send + Sync> FromRequestParts<S> for WorkflowIdParam {
    type Rejection = HttpError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, HttpError> {
        let raw = the_path_param(parts)?;
        WorkflowId::parse(raw)
            .map(Self)
            .map_err(|e| HttpError::bad_request(format!("workflow id: {e}")))
    }
}

/// The query string, decoded (`application/x-www-form-urlencoded`). A parameter given twice is
/// ambiguous and refused when it is asked for.
pub struct Query(Vec<(String, String)>);

impl<S: Send + Sync> FromRequestParts<S> for Query {
    type Rejection = HttpError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, HttpError> {
        Ok(Self(parse_query(parts.uri.query().unwrap_or(""))))
    }
}

impl Query {
    /// The single value of a query parameter; a repeated parameter is refused (400).
    pub fn get(&self, name: &str) -> Result<Option<&str>, HttpError> {
        let mut it = self.0.iter().filter(|(k, _)| k == name);
        let first = it.next().map(|(_, v)| v.as_str());
        if it.next().is_some() {
            return Err(HttpError::bad_request(format!(
                "query parameter {name:?} is given more than once"
            )));
        }
        Ok(first)
    }

    /// `limit` (1-100, default 50) and `cursor` (not empty) of a list.
    pub fn page(&self) -> Result<PageRequest, HttpError> {
        let limit = match self.get("limit")? {
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
        let cursor = self.get("cursor")?.map(str::to_owned);
        if cursor.as_deref() == Some("") {
            return Err(HttpError::bad_request("query parameter cursor must not be empty"));
        }
        Ok(PageRequest { limit, cursor })
    }
}

/// `application/x-www-form-urlencoded` decoding of a query string (`+` is a space; a `%` not
/// followed by two hex digits is kept as it is).
pub fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|s| !s.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex_val(bytes[i + 1]), hex_val(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_val(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// The `Idempotency-Key` header, if sent. Present but unusable (not visible ASCII, sent twice,
/// empty, too long) is a 400: ignoring it would start a second session on a retry.
pub struct IdempotencyKeyHeader(pub Option<IdempotencyKey>);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKeyHeader {
    type Rejection = HttpError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, HttpError> {
        let mut values = parts.headers.get_all(headers::IDEMPOTENCY_KEY).iter();
        let Some(raw) = values.next() else {
            return Ok(Self(None));
        };
        if values.next().is_some() {
            return Err(HttpError::bad_request("Idempotency-Key is given more than once"));
        }
        let k = std::str::from_utf8(raw.as_bytes())
            .ok()
            .filter(|s| s.is_ascii())
            .ok_or_else(|| HttpError::bad_request("Idempotency-Key: must be visible ASCII (1-255 characters)"))?;
        IdempotencyKey::parse(k)
            .map(|k| Self(Some(k)))
            .map_err(|e| HttpError::bad_request(format!("Idempotency-Key: {e}")))
    }
}

/// The raw body, at most `LIMIT` bytes (413 otherwise, naming its size; a body of unknown size is
/// read up to [`MAX_READ_BYTES`] to learn it).
pub struct Body<const LIMIT: usize = MAX_BODY_BYTES>(pub Bytes);

impl<S: Send + Sync, const LIMIT: usize> FromRequest<S> for Body<LIMIT> {
    type Rejection = HttpError;
    async fn from_request(req: Request, _: &S) -> Result<Self, HttpError> {
        // A body of known size (Content-Length, or a Lambda event's) that is too large is refused
        // without reading it.
        if let Some(n) = axum::body::HttpBody::size_hint(req.body()).exact()
            && n > LIMIT as u64
        {
            return Err(HttpError::PayloadTooLarge {
                got: usize::try_from(n).unwrap_or(usize::MAX),
                limit: LIMIT,
            });
        }
        let body = Limited::new(req.into_body(), MAX_READ_BYTES)
            .collect()
            .await
            .map_err(|_| HttpError::PayloadTooLarge {
                got: MAX_READ_BYTES + 1,
                limit: LIMIT,
            })?
            .to_bytes();
        if body.len() > LIMIT {
            return Err(HttpError::PayloadTooLarge {
                got: body.len(),
                limit: LIMIT,
            });
        }
        Ok(Self(body))
    }
}

/// A request body type read from JSON with every problem reported at once: malformed JSON is a
/// 400, wrong types and values a 422 listing each field (serde's derive would stop at the first).
pub trait FromJson: Sized {
    fn from_json(body: &[u8]) -> Result<Self, HttpError>;
}

/// A typed JSON body ([`FromJson`]), at most [`MAX_BODY_BYTES`].
pub struct Json<T>(pub T);

impl<S: Send + Sync, T: FromJson> FromRequest<S> for Json<T> {
    type Rejection = HttpError;
    async fn from_request(req: Request, state: &S) -> Result<Self, HttpError> {
        let Body(bytes) = Body::<MAX_BODY_BYTES>::from_request(req, state).await?;
        T::from_json(&bytes).map(Self)
    }
}

/// The body as JSON: empty or malformed → 400.
pub fn json_value(body: &[u8]) -> Result<serde_json::Value, HttpError> {
    if body.is_empty() {
        return Err(HttpError::bad_request("request body is required (JSON)"));
    }
    serde_json::from_slice(body).map_err(|e| HttpError::bad_request(format!("malformed JSON: {e}")))
}

/// A body that must be a JSON object: malformed JSON is 400, any other JSON value 422.
pub fn json_object(body: &[u8]) -> Result<serde_json::Map<String, serde_json::Value>, HttpError> {
    match json_value(body)? {
        serde_json::Value::Object(obj) => Ok(obj),
        _ => Err(HttpError::invalid(
            "request body must be a JSON object",
            vec![opscore_core::workflow::Problem::new("", "must be an object")],
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_decoding() {
        assert_eq!(
            parse_query("a=1&b=x%20y&c=a+b&d"),
            vec![
                ("a".into(), "1".into()),
                ("b".into(), "x y".into()),
                ("c".into(), "a b".into()),
                ("d".into(), "".into())
            ]
        );
        assert_eq!(
            parse_query("bad=%zz&e=%"),
            vec![("bad".into(), "%zz".into()), ("e".into(), "%".into())]
        );
        assert_eq!(parse_query("cursor=abc%3D%3D"), vec![("cursor".into(), "abc==".into())]);
    }
}
