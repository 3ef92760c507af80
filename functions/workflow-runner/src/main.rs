//! The workflow runner Lambda function: the table's stream (batches of changes), the timer queue
//! (SQS wake-ups for task timers) and a schedule (sweeps, the safety net) drive the runner, which
//! dispatches tasks through AgentKit.

use lambda_runtime::{LambdaEvent, service_fn};
use opscore_core::config::Config;
use opscore_http::init_tracing;
use opscore_lambda::{LambdaError, dynamo_store, emf, runner_from_config, runner_invocation, timer_queue_from_config};
use serde_json::Value;
use std::sync::Arc;

#[tokio::main]
async fn main() -> Result<(), LambdaError> {
    let config = Config::from_env()?;
    init_tracing(config.json_logs);
    let metrics = emf::install()?;
    let mut runner = runner_from_config(&config, dynamo_store(&config).await?)?;
    match timer_queue_from_config(&config).await {
        Some(queue) => runner = runner.with_timer_queue(queue),
        None => tracing::warn!("no timer queue configured: timers wait for the one-minute sweep"),
    }
    let runner = Arc::new(runner);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| {
        let runner = runner.clone();
        async move { runner_invocation(&runner, metrics, event).await }
    }))
    .await
}
