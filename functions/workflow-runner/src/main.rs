//! The workflow runner Lambda function: the table's stream (batches of changes) and a schedule
//! (sweeps) drive the runner, which dispatches tasks through AgentKit.

use lambda_runtime::{LambdaEvent, service_fn};
use opscore_core::config::Config;
use opscore_http::init_tracing;
use opscore_lambda::{LambdaError, dynamo_store, emf, runner_from_config, runner_invocation};
use serde_json::Value;
use std::sync::Arc;

#[tokio::main]
async fn main() -> Result<(), LambdaError> {
    let config = Config::from_env()?;
    init_tracing(config.json_logs);
    let metrics = emf::install()?;
    let runner = Arc::new(runner_from_config(&config, dynamo_store(&config).await?)?);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| {
        let runner = runner.clone();
        async move { runner_invocation(&runner, metrics, event).await }
    }))
    .await
}
