//! The integration tests of `opscore-tests` as one test binary: one link of the whole dependency
//! graph (the AWS SDK included) instead of one per file. Each module is what was a file of its
//! own; `cargo test -p opscore-tests faults::` still runs one of them. The Lambda-emulator test
//! (`lambda_rie`) stays a binary of its own: `.ci/run` runs it alone, after `sam build`. The engine
//! scenarios are the core's own (`shared/core/tests/engine.rs`), built without the AWS SDK.

mod agentkit_vectors;
mod bad_input;
#[cfg(feature = "browser")]
mod console_browser;
mod e2e_local;
mod faults;
mod fixtures;
mod fuzz_regressions;
mod proptests;
mod secrets_manager;
mod store_contract;
mod stream_batch;
mod timers_sqs;
