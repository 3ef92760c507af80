//! SDK clients for AWS or for a local endpoint (DynamoDB Local, the embedded store).

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_dynamodb::config::Credentials;

/// The region used with a local endpoint (local stores accept any).
pub const LOCAL_REGION: &str = "us-east-1";

/// An endpoint worth using: `None` for a missing or blank one. An empty endpoint URL makes the SDK
/// panic at request time, so blank values (an unset template variable) mean "the real service".
pub fn usable_endpoint(endpoint: Option<&str>) -> Option<&str> {
    endpoint.map(str::trim).filter(|e| !e.is_empty())
}

/// How long one DynamoDB call may take before the store counts as unavailable (→ 503 with
/// `Retry-After`). The SDK sets no operation timeout by default, so a store that accepts the
/// connection but never answers (a frozen host, a black-holed route) would hold a request until
/// the Lambda or the client gives up; with these, such a request fails in at most
/// [`OPERATION_TIMEOUT`] (`tests/tests/suite/faults.rs` measures it). A healthy single-item call or
/// transaction answers in milliseconds, so an attempt is cut after [`ATTEMPT_TIMEOUT`] and retried
/// by the SDK's standard retry policy (3 attempts, transactions with their idempotency token).
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
pub const ATTEMPT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);
pub const OPERATION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(8);

fn timeouts() -> aws_config::timeout::TimeoutConfig {
    aws_config::timeout::TimeoutConfig::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .operation_attempt_timeout(ATTEMPT_TIMEOUT)
        .operation_timeout(OPERATION_TIMEOUT)
        .build()
}

/// The shared SDK configuration: the default chain for AWS, or dummy credentials and
/// `us-east-1` for a local endpoint; both with `timeouts`.
pub async fn sdk_config(endpoint: Option<&str>) -> SdkConfig {
    match usable_endpoint(endpoint) {
        Some(url) => {
            aws_config::defaults(BehaviorVersion::latest())
                .timeout_config(timeouts())
                .region(Region::new(LOCAL_REGION))
                .credentials_provider(Credentials::new("local", "local", None, None, "opscore-local"))
                .endpoint_url(url)
                .load()
                .await
        }
        None => {
            let conf = aws_config::defaults(BehaviorVersion::latest())
                .timeout_config(timeouts())
                .load()
                .await;
            // A blank AWS_ENDPOINT_URL in the environment would make every request panic.
            if conf.endpoint_url().is_some_and(|e| e.trim().is_empty()) {
                let mut b = conf.into_builder();
                b.set_endpoint_url(None);
                b.build()
            } else {
                conf
            }
        }
    }
}

/// A DynamoDB client for AWS (`None`) or for a local endpoint such as `http://127.0.0.1:8000`.
pub async fn client_for_endpoint(endpoint: Option<&str>) -> aws_sdk_dynamodb::Client {
    aws_sdk_dynamodb::Client::new(&sdk_config(endpoint).await)
}

#[cfg(feature = "local")]
/// A DynamoDB Streams client for the same endpoint (local stores serve both APIs on one port).
pub async fn streams_client_for_endpoint(endpoint: Option<&str>) -> aws_sdk_dynamodbstreams::Client {
    aws_sdk_dynamodbstreams::Client::new(&sdk_config(endpoint).await)
}
