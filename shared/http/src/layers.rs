//! The edge of the router, one service around the routes (what five tower-http layers and two
//! `map_request`/`map_response` did before, in one future): a request id (`x-request-id`: the
//! caller's, the Lambda request id, or a new UUID), a tracing span per request carrying it, one
//! trailing slash trimmed and HEAD refused ([`crate::router`]'s `before_routing`), axum's 405 as
//! our JSON 405 (`after_routing`), the id echoed on the response, and
//! `x-content-type-options: nosniff` on every response.

use crate::router::{after_routing, before_routing};
use axum::Router;
use axum::extract::Request;
use axum::response::Response;
use axum::routing::future::RouteFuture;
use bytes::Bytes;
use http::HeaderValue;
use http::header::{HeaderName, X_CONTENT_TYPE_OPTIONS};
use opscore_api::paths::headers;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};
use tower::Service;
use tracing::Span;

const REQUEST_ID: HeaderName = HeaderName::from_static(headers::REQUEST_ID);

/// `routes` behind the edge.
pub(crate) fn with_edge(routes: Router) -> HttpRouter {
    HttpRouter { routes }
}

/// The router of a surface ([`crate::router()`]): axum's routes behind the edge, a tower
/// [`Service`] for requests with any body (`lambda_http::run`, hyper-util's
/// `TowerToHyperService`, `tower::ServiceExt::oneshot`). Cheap to clone (one `Arc`).
///
/// Not an `axum::Router` itself: an outer router whose only route is the edge would route every
/// request twice (and box it once more).
#[derive(Clone)]
pub struct HttpRouter {
    routes: Router,
}

impl<B> Service<http::Request<B>> for HttpRouter
where
    B: axum::body::HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = RouterFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> RouterFuture {
        let mut req = req.map(axum::body::Body::new);
        let id = match req.headers().get(REQUEST_ID) {
            Some(id) => id.clone(),
            None => {
                let id = new_request_id();
                req.headers_mut().insert(REQUEST_ID, id.clone());
                id
            }
        };
        let span = span(&req, &id);
        // The latency is logged at debug level only: no clock read per request otherwise.
        let start = tracing::enabled!(tracing::Level::DEBUG).then(Instant::now);
        let inner = {
            let _entered = span.enter();
            self.routes.call(before_routing(req))
        };
        RouterFuture {
            inner,
            span,
            start,
            id: Some(id),
        }
    }
}

/// The response future of [`HttpRouter`].
pub struct RouterFuture {
    inner: RouteFuture<Infallible>,
    span: Span,
    start: Option<Instant>,
    id: Option<HeaderValue>,
}

impl Future for RouterFuture {
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let _entered = this.span.enter();
        let resp = match ready!(Pin::new(&mut this.inner).poll(cx)) {
            Ok(resp) => resp,
            Err(never) => match never {},
        };
        let mut resp = after_routing(resp);
        let h = resp.headers_mut();
        if !h.contains_key(X_CONTENT_TYPE_OPTIONS) {
            h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
        }
        if !h.contains_key(REQUEST_ID)
            && let Some(id) = this.id.take()
        {
            h.insert(REQUEST_ID, id);
        }
        if let Some(start) = this.start {
            done(&resp, start.elapsed());
        }
        Poll::Ready(Ok(resp))
    }
}

/// A version-4 UUID without a random-number call per request: the process's random UUID with a
/// counter in its last 62 bits (unique within the process, unpredictable across processes).
fn new_request_id() -> HeaderValue {
    static SEED: LazyLock<u128> = LazyLock::new(|| uuid::Uuid::new_v4().as_u128());
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed) as u128;
    let uuid = uuid::Builder::from_random_bytes((*SEED ^ n).to_be_bytes()).into_uuid();
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    HeaderValue::from_str(uuid.hyphenated().encode_lower(&mut buf)).expect("a UUID is a valid header value")
}

/// The span every log line of a request carries. `trace_id`: the X-Ray trace id, which the Lambda
/// glue puts in `x-amzn-trace-id` from the invocation's context (absent locally unless a caller
/// sends one), so a log line leads to its trace.
fn span(req: &Request, id: &HeaderValue) -> Span {
    let id = id.to_str().unwrap_or("");
    let span = tracing::info_span!("request", request_id = %id, method = %req.method(), path = %req.uri().path(),
        agent_id = tracing::field::Empty, trace_id = tracing::field::Empty);
    if let Some(trace) = req.headers().get(headers::TRACE_ID).and_then(|v| v.to_str().ok()) {
        span.record("trace_id", trace);
    }
    span
}

fn done(resp: &Response, latency: Duration) {
    tracing::debug!(
        status = resp.status().as_u16(),
        elapsed_us = latency.as_micros() as u64,
        "request done"
    );
}
