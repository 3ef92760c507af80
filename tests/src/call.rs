//! Calling the router in process, as the transports do: [`call`] with a plain request (what the
//! local stack's server hands it), [`call_lambda`] with a Lambda event's request and the response
//! converted back by lambda_http (what `lambda_http::run` does).

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt;
use opscore_http::HttpRouter as Router;
use tower::ServiceExt;

/// A response, read in full.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// `method path_and_query` with `headers` and `body`, through `router`.
pub async fn call(
    router: &Router,
    method: Method,
    path_and_query: &str,
    headers: HeaderMap,
    body: impl Into<Bytes>,
) -> Reply {
    let mut req = Request::builder()
        .method(method)
        .uri(path_and_query)
        .body(axum::body::Body::from(body.into()))
        .expect("a valid request");
    *req.headers_mut() = headers;
    let resp = router.clone().oneshot(req).await.expect("infallible");
    let (parts, body) = resp.into_parts();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.expect("a body").to_bytes(),
    }
}

/// A Lambda event's request through `router` (with the Lambda request id, as on Lambda), and the
/// response as lambda_http converts it for API Gateway.
pub async fn call_lambda(router: &Router, req: lambda_http::Request) -> http::Response<lambda_http::Body> {
    let resp = opscore_lambda::with_lambda_request_id(router.clone())
        .oneshot(req)
        .await
        .expect("infallible");
    lambda_http::IntoResponse::into_response(resp).await
}

/// The body of a Lambda response as text.
pub fn lambda_text(resp: &http::Response<lambda_http::Body>) -> String {
    match resp.body() {
        lambda_http::Body::Text(t) => t.clone(),
        lambda_http::Body::Binary(b) => String::from_utf8_lossy(b).into_owned(),
        _ => String::new(),
    }
}

/// A Lambda response as a [`Reply`].
pub fn lambda_reply(resp: http::Response<lambda_http::Body>) -> Reply {
    let body = Bytes::from(lambda_text(&resp));
    let (parts, _) = resp.into_parts();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}
