//! The DynamoDB adapter of Ops-Core's storage port: one table, conditional writes and
//! transactions, stream decoding, and an embedded DynamoDB-compatible store for local use.
//!
//! The table design (keys, indexes, item shapes, the call behind every write intent) is
//! documented in `docs/table-design.md`.

pub mod backfill;
mod client;
mod counters;
mod cursor;
#[cfg(feature = "local")]
pub mod embedded;
pub mod heat;
pub mod items;
mod store;
pub mod stream;
pub mod table;
#[cfg(feature = "local")]
pub mod tail;

#[cfg(feature = "local")]
pub use client::streams_client_for_endpoint;
pub use client::{LOCAL_REGION, client_for_endpoint, sdk_config, usable_endpoint};
pub use counters::{CapacityUnits, RequestCounts, Units};
#[cfg(feature = "local")]
pub use embedded::EmbeddedDynamo;
pub use store::DynamoStore;
pub use stream::decode_stream_record;
pub use table::{INDEXES, IndexDefinition, create_table, ensure_table};
#[cfg(feature = "local")]
pub use tail::{StreamTail, decode_streams_api_record, lambda_event};
