//! Ops-Core's HTTP surface and runtime wiring, shared by the three Lambda functions and the local
//! stack: the state API and notify webhook handlers, the AgentKit client, and the adapters from
//! Lambda events to the core.

pub mod agentkit;
pub mod api;
pub mod auth;
pub mod error;
pub mod lambda;
pub mod openapi;
pub mod request;
pub mod webhook;

pub use api::{Api, Surface};
pub use request::{ApiRequest, ApiResponse};
