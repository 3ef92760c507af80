//! The Lambda wiring of the three functions, with the DynamoDB store: what `functions/*/src/main.rs`
//! put together (configuration, store, core, then the router or the runner).
//!
//! The HTTP router itself is `opscore_http::router`, served by `lambda_http::run`; this crate only
//! adds what needs AWS: the store, the stream-batch handler, the timer queue (SQS) and its
//! handler ([`timers`]), the Lambda request and trace ids, the metrics in CloudWatch embedded
//! metric format ([`emf`]), and the keys and secrets from Secrets Manager ([`secrets`]).

pub mod emf;
pub mod secrets;
pub mod timers;
pub use secrets::{SecretsManagerSource, credentials};

use aws_lambda_events::event::dynamodb::Event as StreamEvent;
use aws_lambda_events::event::sqs::SqsEvent;
use aws_lambda_events::event::streams::{DynamoDbBatchItemFailure, DynamoDbEventResponse};
use lambda_http::RequestExt;
use opscore_agentkit::AgentKitClient;
use opscore_core::config::{Config, names};
use opscore_core::runner::{CONCURRENT_AGENTS, Runner, by_agent};
use opscore_core::store::Store;
use opscore_core::time::SystemClock;
use opscore_core::wake_up::TimerQueue;
use serde_json::{Value, json};
use std::sync::Arc;

pub type LambdaError = lambda_runtime::Error;

/// The DynamoDB store named by the configuration (`OPSCORE_TABLE_NAME`, optional
/// `OPSCORE_DDB_ENDPOINT` and `OPSCORE_ROUTING_INDEX_SHARDS`).
pub async fn dynamo_store(config: &Config) -> Result<Arc<dyn Store>, LambdaError> {
    let table = config
        .table_name
        .clone()
        .ok_or_else(|| format!("{} is not set", names::TABLE_NAME))?;
    let client = opscore_dynamo::client_for_endpoint(config.ddb_endpoint.as_deref()).await;
    Ok(Arc::new(
        opscore_dynamo::DynamoStore::new(client, table).with_routing_shards(config.routing_index_shards),
    ))
}

/// The router with each request's `x-request-id` set to the Lambda request id (so the request's
/// log lines carry the id CloudWatch and API Gateway show) and `x-amzn-trace-id` to the
/// invocation's X-Ray trace id (its log lines carry it as `trace_id`; what a client sent in that
/// header is replaced, so a log line never names a trace the caller made up).
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
        let trace = req
            .lambda_context_ref()
            .and_then(|c| c.xray_trace_id.as_deref())
            .and_then(|t| http::HeaderValue::from_str(t).ok());
        match trace {
            Some(trace) => req.headers_mut().insert("x-amzn-trace-id", trace),
            None => req.headers_mut().remove("x-amzn-trace-id"),
        };
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

/// One invocation of the runner function: [`handle_runner_event`] in a span carrying the Lambda
/// request id and the X-Ray trace id (so every log line of it names them), then the invocation's
/// metrics flushed as EMF lines.
pub async fn runner_invocation(
    runner: &Runner,
    metrics: &metrics_cloudwatch_embedded::Collector,
    event: lambda_runtime::LambdaEvent<Value>,
) -> Result<Value, LambdaError> {
    use tracing::Instrument;
    let span = tracing::info_span!(
        "invocation",
        request_id = %event.context.request_id,
        trace_id = event.context.xray_trace_id.as_deref().unwrap_or_default()
    );
    let result = handle_runner_event(runner, event.payload).instrument(span).await;
    emf::flush(metrics);
    result
}

/// The timer queue of the configuration (`OPSCORE_TIMER_QUEUE_URL`): wake-ups for task timers
/// go to that SQS queue. `None` when unset: timers then wait for the sweep.
pub async fn timer_queue_from_config(config: &Config) -> Option<Arc<dyn TimerQueue>> {
    let url = config.timer_queue_url.as_deref()?;
    let client = aws_sdk_sqs::Client::new(&opscore_dynamo::sdk_config(None).await);
    Some(Arc::new(timers::SqsTimerQueue::new(client, url)))
}

/// The runner's three event kinds: a DynamoDB stream batch (→ partial batch failures by sequence
/// number), a batch of wake-ups from the timer queue (SQS → partial batch failures by message
/// id), or a scheduled event (→ a sweep).
pub async fn handle_runner_event(runner: &Runner, event: Value) -> Result<Value, LambdaError> {
    if is_sqs_batch(&event) {
        let batch: SqsEvent = serde_json::from_value(event)?;
        let response = timers::handle_wake_up_batch(runner, &batch).await;
        return Ok(serde_json::to_value(response)?);
    }
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
    Err("unrecognised event: expected a DynamoDB stream batch, an SQS batch or a scheduled event".into())
}

/// Both batch kinds are `{"Records": [...]}`; SQS records say `"eventSource": "aws:sqs"`.
fn is_sqs_batch(event: &Value) -> bool {
    event
        .get("Records")
        .and_then(Value::as_array)
        .and_then(|records| records.first())
        .and_then(|r| r.get("eventSource"))
        .and_then(Value::as_str)
        == Some("aws:sqs")
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
