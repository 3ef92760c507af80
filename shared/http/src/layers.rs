//! The tower-http layers around every route: a request id (`x-request-id`: the caller's, the
//! Lambda request id, or a new UUID), a tracing span per request carrying it, the id echoed on
//! the response, and `x-content-type-options: nosniff` on every response.

use axum::Router;
use axum::extract::Request;
use axum::response::Response;
use http::HeaderValue;
use http::header::{HeaderName, X_CONTENT_TYPE_OPTIONS};
use opscore_api::paths::headers;
use std::time::Duration;
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::TraceLayer;
use tracing::Span;

pub(crate) fn with_layers(router: Router) -> Router {
    let request_id = HeaderName::from_static(headers::REQUEST_ID);
    router.layer(
        ServiceBuilder::new()
            .layer(SetRequestIdLayer::new(request_id.clone(), MakeRequestUuid))
            .layer(
                TraceLayer::new_for_http()
                    .make_span_with(span)
                    .on_request(())
                    .on_response(done)
                    // Errors are logged where they become responses (HttpError::into_response).
                    .on_failure(()),
            )
            .layer(PropagateRequestIdLayer::new(request_id))
            .layer(SetResponseHeaderLayer::if_not_present(
                X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            )),
    )
}

fn span(req: &Request) -> Span {
    let id = req
        .headers()
        .get(headers::REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    tracing::info_span!("request", request_id = %id, method = %req.method(), path = %req.uri().path(), agent_id = tracing::field::Empty)
}

fn done(resp: &Response, latency: Duration, _: &Span) {
    tracing::debug!(
        status = resp.status().as_u16(),
        elapsed_us = latency.as_micros() as u64,
        "request done"
    );
}
