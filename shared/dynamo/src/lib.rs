//! The DynamoDB adapter of Ops-Core's storage port: one table, conditional writes and
//! transactions, stream decoding, and an embedded DynamoDB-compatible store for local use.
//!
//! The table design (keys, indexes, item shapes, the call behind every write intent) is
//! documented in `docs/table-design.md`.

mod client;
mod counters;
mod cursor;
pub mod embedded;
pub mod items;
mod store;
pub mod stream;
pub mod table;

pub use client::{LOCAL_REGION, client_for_endpoint, sdk_config, streams_client_for_endpoint, usable_endpoint};
pub use counters::RequestCounts;
pub use embedded::EmbeddedDynamo;
pub use store::DynamoStore;
pub use stream::{StreamTail, decode_stream_record, decode_streams_api_record};
pub use table::{create_table, ensure_table};
