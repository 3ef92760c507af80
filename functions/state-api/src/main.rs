//! The state-api Lambda function (API Gateway HTTP API): the state API's routes of the router,
//! on the DynamoDB store.

use opscore_core::app::App;
use opscore_core::config::Config;
use opscore_core::time::SystemClock;
use opscore_http::{Surface, init_tracing, router_with_credentials};
use opscore_lambda::{LambdaError, credentials, dynamo_store, emf, with_lambda_request_id};
use std::sync::Arc;

#[tokio::main]
async fn main() -> Result<(), LambdaError> {
    let config = Config::from_env()?;
    init_tracing(config.json_logs);
    let metrics = emf::install()?;
    let store = dynamo_store(&config).await?;
    let app = App::new(store, Arc::new(SystemClock), config.engine.clone());
    // Keys from Secrets Manager (OPSCORE_*_SECRET_ID) on AWS, from the environment under sam local.
    let credentials = credentials(&config, Arc::new(SystemClock)).await;
    let router = router_with_credentials(app, config, Surface::StateApi, credentials);
    lambda_http::run(emf::flush_after_each(with_lambda_request_id(router), metrics)).await
}
