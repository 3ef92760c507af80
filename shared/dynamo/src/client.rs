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

/// The shared SDK configuration: the default chain for AWS, or dummy credentials and
/// `us-east-1` for a local endpoint.
pub async fn sdk_config(endpoint: Option<&str>) -> SdkConfig {
    match usable_endpoint(endpoint) {
        Some(url) => {
            aws_config::defaults(BehaviorVersion::latest())
                .region(Region::new(LOCAL_REGION))
                .credentials_provider(Credentials::new("local", "local", None, None, "opscore-local"))
                .endpoint_url(url)
                .load()
                .await
        }
        None => {
            let conf = aws_config::load_defaults(BehaviorVersion::latest()).await;
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

/// A DynamoDB Streams client for the same endpoint (local stores serve both APIs on one port).
pub async fn streams_client_for_endpoint(endpoint: Option<&str>) -> aws_sdk_dynamodbstreams::Client {
    aws_sdk_dynamodbstreams::Client::new(&sdk_config(endpoint).await)
}
