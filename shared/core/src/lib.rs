//! Ops-Core's core: the domain, the storage port, an in-memory store, and the use cases.
//! No AWS types live here; the DynamoDB adapter and the Lambda entrypoints depend on this crate.

pub mod agent;
pub mod app;
pub mod config;
pub mod delivery;
pub mod error;
pub mod ids;
pub mod images;
pub mod memory;
pub mod metrics;
pub mod runner;
pub mod secrets;
pub mod session;
pub mod store;
pub mod task;
#[cfg(feature = "testing")]
pub mod testing;
pub mod time;
pub mod wake_up;
pub mod workflow;

pub use app::{App, DefinitionSource, Settings, Triggered};
pub use error::AppError;
pub use runner::{Claim, DispatchOutcome, DispatchRequest, Dispatcher, Runner, RunnerError, Step};
pub use store::{Change, Store};
