//! The workflow runner Lambda function: the table's stream and a schedule drive it.

use opscore_http::lambda::{Error, run_runner};

#[tokio::main]
async fn main() -> Result<(), Error> {
    run_runner().await
}
