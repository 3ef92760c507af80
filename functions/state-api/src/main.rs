//! The state-api Lambda function. Everything but the wiring lives in opscore-http.

use opscore_http::Surface;
use opscore_http::lambda::{Error, run_http};

#[tokio::main]
async fn main() -> Result<(), Error> {
    run_http(Surface::StateApi).await
}
