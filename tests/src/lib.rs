//! Test support for Ops-Core: the DynamoDB Local harness ([`ddb_local`]), moto's server ([`moto`]: SQS,
//! Secrets Manager), the stores under test
//! ([`stores`]), fakes for end-to-end tests ([`fake`]), and the storage contract suite ([`contract`], [`dynamo_cases`]) that every adapter
//! of the storage port must pass. `tests/store_contract.rs` runs it against each store.

pub mod call;
pub mod contract;
pub mod ddb_local;
pub mod dynamo_cases;
pub mod fake;
pub mod moto;
pub mod stores;

use std::future::Future;
use std::time::{Duration, Instant};

/// A port on 127.0.0.1 that was free a moment ago (the OS picks it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free local port")
}

/// How long one contract case may take before it counts as hung.
pub const CASE_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs one case with a timeout, naming it in the failure.
pub async fn run_case(name: &str, case: impl Future<Output = ()>) {
    let started = Instant::now();
    if tokio::time::timeout(CASE_TIMEOUT, case).await.is_err() {
        panic!("{name} did not finish within {CASE_TIMEOUT:?}");
    }
    let took = started.elapsed();
    if took > Duration::from_secs(5) {
        eprintln!("slow case {name}: {took:?}");
    }
}
