//! The Lambda wiring of the three functions, with the DynamoDB store: what `functions/*/src/main.rs`
//! put together (configuration, store, core, then the router or the runner).
//!
//! The HTTP router itself is `opscore_http::router`, served by `lambda_http::run`; this crate only
//! adds what needs AWS: the store, the stream-batch handler, the Lambda request id, and the keys
//! and secrets from Secrets Manager ([`secrets`]).

pub mod secrets;
pub use secrets::{SecretsManagerSource, credentials};

use aws_lambda_events::event::dynamodb::Event as StreamEvent;
use aws_lambda_events::event::streams::{DynamoDbBatchItemFailure, DynamoDbEventResponse};
use lambda_http::RequestExt;
use opscore_agentkit::AgentKitClient;
use opscore_core::config::{Config, names};
use opscore_core::runner::{CONCURRENT_AGENTS, Runner, by_agent};
use opscore_core::store::Store;
use opscore_core::time::SystemClock;
use serde_json::{Value, json};
use std::sync::Arc;

pub type LambdaError = lambda_runtime::Error;

/// The DynamoDB store named by the configuration (`OPSCORE_TABLE_NAME`, optional `OPSCORE_DDB_ENDPOINT`).
pub async fn dynamo_store(config: &Config) -> Result<Arc<dyn Store>, LambdaError> {
    let table = config
        .table_name
        .clone()
        .ok_or_else(|| format!("{} is not set", names::TABLE_NAME))?;
    let client = opscore_dynamo::client_for_endpoint(config.ddb_endpoint.as_deref()).await;
    Ok(Arc::new(opscore_dynamo::DynamoStore::new(client, table)))
}

/// The router with each request's `x-request-id` set to the Lambda request id (so the request's
/// log lines carry the id CloudWatch and API Gateway show).
pub fn with_lambda_request_id<S>(
    service: S,
) -> tower::util::MapRequest<S, fn(lambda_http::Request) -> lambda_http::Request> {
    fn set(mut req: lambda_http::Request) -> lambda_http::Request {
        let id = req
            .lambda_context_ref()
            .and_then(|c| http::HeaderValue::from_str(&c.request_id).ok())
            .filter(|v| !v.is_empty());
        if let Some(id) = id {
            req.headers_mut().insert("x-request-id", id);
        }
        req
    }
    tower::util::MapRequest::new(service, set as fn(_) -> _)
}

/// The runner of the configuration: dispatching to `AGENTKIT_API_URL`.
pub fn runner_from_config(config: &Config, store: Arc<dyn Store>) -> Result<Runner, LambdaError> {
    let url = config
        .agentkit_api_url
        .as_deref()
        .ok_or_else(|| format!("{} is not set", names::AGENTKIT_API_URL))?;
    let dispatcher = Arc::new(AgentKitClient::new(url)?);
    Ok(Runner::new(
        store,
        Arc::new(SystemClock),
        dispatcher,
        config.engine.clone(),
    ))
}

/// A DynamoDB stream batch (→ partial batch failures) or a scheduled event (→ a sweep).
pub async fn handle_runner_event(runner: &Runner, event: Value) -> Result<Value, LambdaError> {
    if event.get("Records").is_some() {
        let batch: StreamEvent = serde_json::from_value(event)?;
        let response = handle_stream_batch(runner, &batch).await;
        return Ok(serde_json::to_value(response)?);
    }
    let source = event.get("source").and_then(Value::as_str).unwrap_or("");
    if event.get("detail-type").is_some() || matches!(source, "aws.events" | "aws.scheduler") {
        let report = runner.sweep().await?;
        tracing::info!(?report, "sweep done");
        return Ok(json!({"examined": report.examined, "dispatched": report.dispatched,
                         "failedAttempts": report.failed_attempts, "parked": report.parked}));
    }
    Err("unrecognised event: expected a DynamoDB stream batch or a scheduled event".into())
}

/// Each agent's records are handled in stream order, different agents' records concurrently
/// ([`by_agent`]). At an agent's first failing record the rest of that agent's records are left
/// for the retry; every failing record is reported, and Lambda resumes from the one with the
/// lowest sequence number, so nothing is skipped. Records of other agents that already succeeded
/// may then be handled twice, which the runner's conditional writes make harmless.
pub async fn handle_stream_batch(runner: &Runner, batch: &StreamEvent) -> DynamoDbEventResponse {
    let mut changes = Vec::with_capacity(batch.records.len());
    let mut sources = Vec::with_capacity(batch.records.len());
    for record in &batch.records {
        match opscore_dynamo::decode_stream_record(record) {
            Ok(Some(change)) => {
                changes.push(change);
                sources.push(record);
            }
            Ok(None) => {}
            // A record we cannot read will not become readable by retrying; skip it loudly.
            Err(e) => tracing::error!(event_id = %record.event_id, error = %e, "undecodable stream record skipped"),
        }
    }
    let failed = by_agent(&changes, CONCURRENT_AGENTS, |change| runner.on_change(change)).await;
    let mut response = DynamoDbEventResponse::default();
    for (i, e) in failed {
        let record = sources[i];
        tracing::warn!(event_id = %record.event_id, error = %e, "stream record failed; it and its agent's later records will be retried");
        let mut failure = DynamoDbBatchItemFailure::default();
        failure.item_identifier = record.change.sequence_number.clone();
        response.batch_item_failures.push(failure);
    }
    response
}
