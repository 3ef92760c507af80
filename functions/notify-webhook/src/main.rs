//! The notify-webhook Lambda function (function URL): the router's webhook route (AgentKit's
//! signed deliveries), on the DynamoDB store.

use opscore_core::app::App;
use opscore_core::config::Config;
use opscore_core::time::SystemClock;
use opscore_http::{Surface, init_tracing, router};
use opscore_lambda::{LambdaError, dynamo_store, emf, with_lambda_request_id};
use std::sync::Arc;

#[tokio::main]
async fn main() -> Result<(), LambdaError> {
    let config = Config::from_env()?;
    init_tracing(config.json_logs);
    let metrics = emf::install()?;
    let store = dynamo_store(&config).await?;
    let app = App::new(store, Arc::new(SystemClock), config.engine.clone());
    let router = router(app, config, Surface::Webhook);
    lambda_http::run(emf::flush_after_each(with_lambda_request_id(router), metrics)).await
}
