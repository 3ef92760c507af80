//! Lambda wiring: builds clients once in `main`, lends them to the handlers, and converts
//! Lambda events to and from the core's types.

use crate::agentkit::AgentKitClient;
use crate::api::{Api, Surface};
use crate::request::{ApiRequest, ApiResponse, parse_query};
use aws_lambda_events::event::dynamodb::Event as StreamEvent;
use aws_lambda_events::event::streams::{DynamoDbBatchItemFailure, DynamoDbEventResponse};
use lambda_http::{Body, RequestExt};
use opscore_core::app::{App, Settings};
use opscore_core::config::{Config, names};
use opscore_core::runner::{CONCURRENT_AGENTS, Runner, by_agent};
use opscore_core::store::Store;
use opscore_core::time::SystemClock;
use serde_json::{Value, json};
use std::sync::Arc;

pub type Error = lambda_runtime::Error;

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

/// The DynamoDB store named by the configuration (`OPSCORE_TABLE_NAME`, optional `OPSCORE_DDB_ENDPOINT`).
pub async fn dynamo_store(config: &Config) -> Result<Arc<dyn Store>, Error> {
    let table = config
        .table_name
        .clone()
        .ok_or_else(|| format!("{} is not set", names::TABLE_NAME))?;
    let client = opscore_dynamo::client_for_endpoint(config.ddb_endpoint.as_deref()).await;
    Ok(Arc::new(opscore_dynamo::DynamoStore::new(client, table)))
}

fn settings(config: &Config) -> Settings {
    Settings {
        history_retention: config.history_retention,
        ..Settings::default()
    }
}

pub fn from_lambda(req: lambda_http::Request) -> ApiRequest {
    let request_id = req
        .lambda_context_ref()
        .map(|c| c.request_id.clone())
        .unwrap_or_default();
    let (parts, body) = req.into_parts();
    let body = match body {
        Body::Empty => bytes::Bytes::new(),
        Body::Text(s) => bytes::Bytes::from(s),
        Body::Binary(b) => bytes::Bytes::from(b),
        _ => bytes::Bytes::new(),
    };
    ApiRequest {
        method: parts.method,
        path: parts.uri.path().to_owned(),
        query: parse_query(parts.uri.query().unwrap_or("")),
        headers: parts.headers,
        body,
        request_id: if request_id.is_empty() {
            uuid::Uuid::new_v4().to_string()
        } else {
            request_id
        },
    }
}

pub fn to_lambda(resp: ApiResponse) -> lambda_http::Response<Body> {
    let mut r = lambda_http::Response::new(Body::Text(String::from_utf8_lossy(&resp.body).into_owned()));
    *r.status_mut() = resp.status;
    *r.headers_mut() = resp.headers;
    r
}

/// `main` of the state API and notify webhook functions.
pub async fn run_http(surface: Surface) -> Result<(), Error> {
    let config = Config::from_env()?;
    init_tracing(config.json_logs);
    let store = dynamo_store(&config).await?;
    let app = App::new(store, Arc::new(SystemClock), settings(&config));
    let api = Arc::new(Api::new(app, config, surface));
    lambda_http::run(lambda_http::service_fn(move |req: lambda_http::Request| {
        let api = api.clone();
        async move { Ok::<_, std::convert::Infallible>(to_lambda(api.handle(from_lambda(req)).await)) }
    }))
    .await
}

/// `main` of the workflow runner function.
pub async fn run_runner() -> Result<(), Error> {
    let config = Config::from_env()?;
    init_tracing(config.json_logs);
    let runner = Arc::new(runner_from_config(&config, dynamo_store(&config).await?)?);
    lambda_runtime::run(lambda_runtime::service_fn(
        move |event: lambda_runtime::LambdaEvent<Value>| {
            let runner = runner.clone();
            async move { handle_runner_event(&runner, event.payload).await }
        },
    ))
    .await
}

pub fn runner_from_config(config: &Config, store: Arc<dyn Store>) -> Result<Runner, Error> {
    let url = config
        .agentkit_api_url
        .as_deref()
        .ok_or_else(|| format!("{} is not set", names::AGENTKIT_API_URL))?;
    let dispatcher = Arc::new(AgentKitClient::new(url)?);
    Ok(Runner::new(
        store,
        Arc::new(SystemClock),
        dispatcher,
        settings(config),
        config.lease,
    ))
}

/// A DynamoDB stream batch (→ partial batch failures) or a scheduled event (→ a sweep).
pub async fn handle_runner_event(runner: &Runner, event: Value) -> Result<Value, Error> {
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
