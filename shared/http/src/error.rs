//! The HTTP layer's error, and the one place where errors become status codes and JSON bodies.

use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use opscore_core::AppError;
use opscore_core::workflow::Problem;
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HttpError {
    #[error(transparent)]
    App(#[from] AppError),
    #[error("{0}")]
    Unauthorized(String),
    /// The function has no key or secret configured: it refuses everything (fail closed).
    #[error("{0}")]
    NotConfigured(String),
    #[error("request body is {got} bytes; at most {limit} are accepted")]
    PayloadTooLarge { got: usize, limit: usize },
    #[error("method {method} is not allowed here; allowed: {}", allowed.iter().map(Method::as_str).collect::<Vec<_>>().join(", "))]
    MethodNotAllowed { method: Method, allowed: Vec<Method> },
    #[error("no route for {0}")]
    NoRoute(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    // The three below are refusals of the HTTP layer itself, before any route sees the request:
    // only the local stack's server answers them (on AWS, API Gateway and the function URL refuse
    // such requests in front of the function).
    /// The request line or a header is not HTTP/1.1 syntax (or an invalid Content-Length /
    /// Transfer-Encoding).
    #[error("the request line or headers could not be parsed as HTTP/1.1")]
    MalformedRequest,
    #[error("URI longer than {limit} bytes")]
    UriTooLong { limit: usize },
    #[error("request headers larger than {bytes} bytes (request line included) or more than {fields} header fields")]
    HeadersTooLarge { bytes: usize, fields: usize },
}

impl HttpError {
    pub fn bad_request(msg: impl Into<String>) -> Self {
        Self::App(AppError::BadRequest(msg.into()))
    }
    pub fn invalid(msg: impl Into<String>, problems: Vec<Problem>) -> Self {
        Self::App(AppError::invalid(msg, problems))
    }

    pub fn status(&self) -> StatusCode {
        match self {
            HttpError::App(e) => match e {
                AppError::BadRequest(_) => StatusCode::BAD_REQUEST,
                AppError::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
                AppError::NotFound(_) => StatusCode::NOT_FOUND,
                AppError::Conflict(_) => StatusCode::CONFLICT,
                AppError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
                AppError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            },
            HttpError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            HttpError::NotConfigured(_) => StatusCode::SERVICE_UNAVAILABLE,
            HttpError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            HttpError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            HttpError::NoRoute(_) => StatusCode::NOT_FOUND,
            HttpError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            HttpError::MalformedRequest => StatusCode::BAD_REQUEST,
            HttpError::UriTooLong { .. } => StatusCode::URI_TOO_LONG,
            HttpError::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        }
    }

    /// A stable machine-readable code beside the human `detail`.
    pub fn code(&self) -> &'static str {
        match self {
            HttpError::App(e) => match e {
                AppError::BadRequest(_) => "bad_request",
                AppError::Invalid { .. } => "validation_failed",
                AppError::NotFound(_) => "not_found",
                AppError::Conflict(_) => "conflict",
                AppError::Unavailable(_) => "unavailable",
                AppError::Internal(_) => "internal",
            },
            HttpError::Unauthorized(_) => "unauthorized",
            HttpError::NotConfigured(_) => "not_configured",
            HttpError::PayloadTooLarge { .. } => "payload_too_large",
            HttpError::MethodNotAllowed { .. } => "method_not_allowed",
            HttpError::NoRoute(_) => "no_route",
            HttpError::UnsupportedMediaType(_) => "unsupported_media_type",
            HttpError::MalformedRequest => "malformed_request",
            HttpError::UriTooLong { .. } => "uri_too_long",
            HttpError::HeadersTooLarge { .. } => "headers_too_large",
        }
    }

    /// The status, headers and JSON body of this error: the one place an error becomes HTTP.
    /// [`IntoResponse::into_response`] wraps it (and logs the refusal); the local stack's
    /// protocol-error wrapper writes it on the socket itself.
    pub fn to_parts(&self) -> (StatusCode, HeaderMap, Bytes) {
        let status = self.status();
        let errors = match self {
            HttpError::App(AppError::Invalid { problems, .. }) => problems.clone(),
            _ => Vec::new(),
        };
        let body = ErrorBody {
            detail: self.to_string(),
            code: self.code(),
            errors,
        };
        let body =
            serde_json::to_vec(&body).unwrap_or_else(|_| br#"{"detail":"response serialisation failed"}"#.to_vec());
        let mut headers = HeaderMap::new();
        headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        match self {
            HttpError::Unauthorized(_) => {
                headers.insert(http::header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            HttpError::App(AppError::Unavailable(_)) | HttpError::NotConfigured(_) => {
                headers.insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            HttpError::MethodNotAllowed { allowed, .. } => {
                let allow = allowed.iter().map(Method::as_str).collect::<Vec<_>>().join(", ");
                if let Ok(v) = HeaderValue::from_str(&allow) {
                    headers.insert(http::header::ALLOW, v);
                }
            }
            _ => {}
        }
        (status, headers, body.into())
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(status = status.as_u16(), error = %self, "request failed");
        } else {
            tracing::info!(status = status.as_u16(), code = self.code(), error = %self, "request refused");
        }
        let (status, headers, body) = self.to_parts();
        let mut resp = Response::new(axum::body::Body::from(body));
        *resp.status_mut() = status;
        *resp.headers_mut() = headers;
        resp
    }
}

/// Every error body: `{"detail": "...", "code": "...", "errors": [{"field","message"}]}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub detail: String,
    pub code: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<Problem>,
}
