//! The Secrets Manager adapter of the core's [`SecretSource`] port, and the credentials of a
//! function built from its configuration: from Secrets Manager when a secret id is set (AWS), else
//! the values of the environment (`sam local`, the local stack).

use async_trait::async_trait;
use aws_sdk_secretsmanager::error::DisplayErrorContext;
use opscore_core::config::{Config, SecretSetting};
use opscore_core::secrets::{LiveSecrets, SecretSource, SecretSourceError};
use opscore_core::time::Clock;
use opscore_http::Credentials;
use opscore_http::router::{API_KEYS, WEBHOOK_SECRETS};
use std::sync::Arc;

/// One Secrets Manager secret, read with `GetSecretValue` (its `AWSCURRENT` version). The text is
/// a list by the rule of the environment variables (`opscore_core::config::parse_secret_list`).
pub struct SecretsManagerSource {
    client: aws_sdk_secretsmanager::Client,
    secret_id: String,
}

impl SecretsManagerSource {
    pub fn new(client: aws_sdk_secretsmanager::Client, secret_id: impl Into<String>) -> Self {
        Self {
            client,
            secret_id: secret_id.into(),
        }
    }

    /// A client for AWS, or for `endpoint` (moto's server) with local credentials; the timeouts
    /// of the DynamoDB client (a refresh waits at most `opscore_dynamo::client::OPERATION_TIMEOUT`).
    pub async fn client_for_endpoint(endpoint: Option<&str>) -> aws_sdk_secretsmanager::Client {
        aws_sdk_secretsmanager::Client::new(&opscore_dynamo::sdk_config(endpoint).await)
    }
}

#[async_trait]
impl SecretSource for SecretsManagerSource {
    fn describe(&self) -> String {
        format!("Secrets Manager secret {}", self.secret_id)
    }

    async fn fetch(&self) -> Result<String, SecretSourceError> {
        let out = self
            .client
            .get_secret_value()
            .secret_id(&self.secret_id)
            .send()
            .await
            .map_err(|e| SecretSourceError(DisplayErrorContext(e).to_string()))?;
        out.secret_string.ok_or_else(|| {
            SecretSourceError("the secret holds binary data; expected text (a comma-separated list)".into())
        })
    }
}

/// The keys and secrets of this function: each list from its Secrets Manager secret (read now,
/// at cold start, then every `OPSCORE_SECRET_REFRESH_SECONDS`) or from the environment. A secret
/// that cannot be read now is logged and retried later; until then the function refuses what
/// needs it (503 `not_configured`), it does not fail to start. `clock` times the refreshes (the
/// functions pass `SystemClock`).
pub async fn credentials(config: &Config, clock: Arc<dyn Clock>) -> Credentials {
    let mut client = None;
    let mut live = async |what: &'static str, setting: SecretSetting| -> Arc<LiveSecrets> {
        let live = match setting {
            SecretSetting::Values(values) => LiveSecrets::fixed(what, values),
            SecretSetting::SecretId(id) => {
                let client = match &client {
                    Some(c) => c,
                    None => client
                        .insert(SecretsManagerSource::client_for_endpoint(config.secrets_endpoint.as_deref()).await),
                };
                let source = Arc::new(SecretsManagerSource::new(client.clone(), id));
                let live = LiveSecrets::refreshed(what, source, clock.clone(), config.secret_refresh);
                // A failure is logged by load; the first requests retry after RETRY_AFTER_FAILURE.
                let _ = live.load().await;
                live
            }
        };
        Arc::new(live)
    };
    let api_keys = live(API_KEYS, config.api_keys_setting()).await;
    let webhook_secrets = live(WEBHOOK_SECRETS, config.webhook_secrets_setting()).await;
    Credentials {
        api_keys,
        webhook_secrets,
    }
}
