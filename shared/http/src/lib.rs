//! Ops-Core's HTTP surface, shared by the Lambda functions and the local stack: one axum
//! [`Router`](axum::Router) for the state API and the notify webhook ([`router()`]), its typed
//! extractors, bearer and HMAC authentication, errors → HTTP in one place
//! ([`HttpError`](error::HttpError)), and the OpenAPI document collected from the routes.
//!
//! It does not know where the data lives: the store comes in through the core's [`App`]
//! (opscore-lambda wires DynamoDB on Lambda, the local stack its own store).
//!
//! [`App`]: opscore_core::app::App

pub mod auth;
pub mod console;
pub mod error;
pub mod extract;
mod layers;
pub mod openapi;
pub mod router;
pub mod state;
pub mod trigger;
pub mod webhook;

pub use layers::{HttpRouter, RouterFuture};
pub use router::{Api, Credentials, Surface, document, router, router_with_credentials};

/// JSON logs by default (CloudWatch), plain text when `OPSCORE_LOG_FORMAT=text`; level from
/// `RUST_LOG` (default info). Keys and secrets are never logged (they are [`Secret`]s).
///
/// [`Secret`]: opscore_core::config::Secret
pub fn init_tracing(json_logs: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_target(false);
    let _ = if json_logs {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .without_time()
            .try_init()
    } else {
        builder.try_init()
    };
}
