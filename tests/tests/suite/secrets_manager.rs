//! The functions' keys and secrets from Secrets Manager, against moto's server (a real
//! implementation, started per test on a free port; `opscore_tests::moto`): read at cold start,
//! re-read once per refresh interval, so a rotation ("new,old", then "new") takes effect without a
//! restart; unreadable at cold start = every request refused with 503 `not_configured` until the
//! secret can be read.
//!
//! The refresh is timed by a manual clock (no sleeping, no timing in the assertions); the last test
//! runs on the system clock with a one-second interval, as a function would.
//! Needs moto's server: `--features opscore-tests/moto` (`bash .ci/run` turns it on).

use aws_sdk_secretsmanager::Client;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use opscore_api::paths::{self, headers};
use opscore_core::app::{App, Settings};
use opscore_core::config::Config;
use opscore_core::memory::InMemoryStore;
use opscore_core::time::{Clock, ManualClock, SystemClock, parse_rfc3339};
use opscore_http::{HttpRouter, Surface, router_with_credentials};
use opscore_lambda::{SecretsManagerSource, credentials};
use opscore_tests::call::{Reply, call};
use opscore_tests::moto::MotoServer;
use std::sync::Arc;
use std::time::Duration;

const REFRESH: Duration = Duration::from_secs(300);

struct Setup {
    _moto: MotoServer,
    sm: Client,
    clock: ManualClock,
    endpoint: String,
}

async fn setup() -> Setup {
    let moto = MotoServer::start().await;
    let endpoint = moto.endpoint.clone();
    Setup {
        sm: SecretsManagerSource::client_for_endpoint(Some(&endpoint)).await,
        _moto: moto,
        clock: ManualClock::at(parse_rfc3339("2026-11-26T05:00:00Z").unwrap()),
        endpoint,
    }
}

impl Setup {
    async fn create(&self, name: &str, text: &str) {
        self.sm
            .create_secret()
            .name(name)
            .secret_string(text)
            .send()
            .await
            .expect("CreateSecret");
    }

    async fn put(&self, name: &str, text: &str) {
        self.sm
            .put_secret_value()
            .secret_id(name)
            .secret_string(text)
            .send()
            .await
            .expect("PutSecretValue");
    }

    fn advance(&self, d: Duration) {
        self.clock.advance(chrono::Duration::from_std(d).unwrap());
    }

    /// A function started as on AWS: the configuration names the secret (and moto's endpoint); the
    /// credentials are read now, as at cold start.
    async fn function(&self, surface: Surface, vars: &[(&str, &str)], clock: Arc<dyn Clock>) -> HttpRouter {
        let mut vars: Vec<(String, String)> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        vars.push(("OPSCORE_SECRETS_ENDPOINT".into(), self.endpoint.clone()));
        let config = Config::from_lookup(|k| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())).unwrap();
        let credentials = credentials(&config, clock.clone()).await;
        let store = Arc::new(InMemoryStore::new().with_clock(clock.clone()));
        let app = App::new(store, clock, Settings::default());
        router_with_credentials(app, config, surface, credentials)
    }
}

async fn list_agents(router: &HttpRouter, key: &str) -> Reply {
    let mut h = HeaderMap::new();
    h.insert(
        headers::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {key}")).unwrap(),
    );
    call(router, Method::GET, paths::AGENTS, h, "").await
}

async fn status(router: &HttpRouter, key: &str) -> StatusCode {
    list_agents(router, key).await.status
}

#[tokio::test]
#[cfg_attr(not(feature = "moto"), ignore = "needs moto's server: --features opscore-tests/moto")]
async fn a_rotated_api_key_is_picked_up_without_restart() {
    let s = setup().await;
    let old = "old-key-0123456789abcdef";
    let new = "new-key-fedcba9876543210";
    s.create("opscore/test/api-keys", old).await;
    let api = s
        .function(
            Surface::StateApi,
            &[("OPSCORE_API_KEY_SECRET_ID", "opscore/test/api-keys")],
            Arc::new(s.clock.clone()),
        )
        .await;
    assert_eq!(status(&api, old).await, StatusCode::OK);
    assert_eq!(status(&api, new).await, StatusCode::UNAUTHORIZED);

    // Rotation, step 1: the new key first, the old one kept while clients move.
    s.put("opscore/test/api-keys", &format!("{new},{old}")).await;
    s.advance(REFRESH - Duration::from_secs(1));
    assert_eq!(
        status(&api, new).await,
        StatusCode::UNAUTHORIZED,
        "read once per interval, not per request"
    );
    s.advance(Duration::from_secs(1));
    assert_eq!(status(&api, new).await, StatusCode::OK, "re-read after the interval");
    assert_eq!(
        status(&api, old).await,
        StatusCode::OK,
        "the old key is accepted during the switch"
    );

    // Step 2: the old key dropped.
    s.put("opscore/test/api-keys", new).await;
    s.advance(REFRESH);
    assert_eq!(status(&api, old).await, StatusCode::UNAUTHORIZED);
    assert_eq!(status(&api, new).await, StatusCode::OK);

    // Secrets Manager unreachable for a refresh (the secret deleted): the last good keys stay.
    s.sm.delete_secret()
        .secret_id("opscore/test/api-keys")
        .force_delete_without_recovery(true)
        .send()
        .await
        .expect("DeleteSecret");
    s.advance(REFRESH);
    assert_eq!(status(&api, new).await, StatusCode::OK);
    assert_eq!(status(&api, old).await, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
#[cfg_attr(not(feature = "moto"), ignore = "needs moto's server: --features opscore-tests/moto")]
async fn an_unreadable_secret_refuses_every_request_until_it_can_be_read() {
    let s = setup().await;
    let key = "the-key-0123456789abcdef";
    let api = s
        .function(
            Surface::StateApi,
            &[("OPSCORE_API_KEY_SECRET_ID", "opscore/test/not-yet")],
            Arc::new(s.clock.clone()),
        )
        .await;
    let refused = list_agents(&api, key).await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE, "{}", refused.text());
    let body: serde_json::Value = serde_json::from_slice(&refused.body).unwrap();
    assert_eq!(body["code"], "not_configured");
    assert_eq!(refused.headers.get(headers::RETRY_AFTER).unwrap(), "1");
    assert_eq!(
        list_agents(&api, "").await.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "no key configured: nothing is accepted, not even no key"
    );
    let health = call(&api, Method::GET, paths::HEALTH, HeaderMap::new(), "").await;
    assert_eq!(health.status, StatusCode::OK, "the public routes still answer");

    s.create("opscore/test/not-yet", key).await;
    assert_eq!(
        status(&api, key).await,
        StatusCode::SERVICE_UNAVAILABLE,
        "a failed read is retried after RETRY_AFTER_FAILURE, not per request"
    );
    s.advance(opscore_core::secrets::RETRY_AFTER_FAILURE);
    assert_eq!(status(&api, key).await, StatusCode::OK);
}

fn signed(secret: &str, now: chrono::DateTime<chrono::Utc>, body: &str) -> HeaderMap {
    let ts = now.timestamp().to_string();
    let mut h = HeaderMap::new();
    h.insert(headers::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(headers::AGENTKIT_TIMESTAMP, HeaderValue::from_str(&ts).unwrap());
    h.insert(
        headers::AGENTKIT_SIGNATURE,
        HeaderValue::from_str(&opscore_http::auth::sign(secret, &ts, body.as_bytes())).unwrap(),
    );
    h
}

#[tokio::test]
#[cfg_attr(not(feature = "moto"), ignore = "needs moto's server: --features opscore-tests/moto")]
async fn a_rotated_webhook_secret_is_picked_up_without_restart() {
    let s = setup().await;
    let (old, new) = ("whsec-old-0123456789abcdef", "whsec-new-fedcba9876543210");
    s.create("opscore/test/webhook", old).await;
    let hook = s
        .function(
            Surface::Webhook,
            &[("OPSCORE_WEBHOOK_SECRET_ID", "opscore/test/webhook")],
            Arc::new(s.clock.clone()),
        )
        .await;
    let mut n = 0;
    let mut deliver = async |secret: &str| {
        // A distinct body each time: an identical delivery would be a replay.
        n += 1;
        let body = format!(
            r#"{{"event_type":"REGISTER","agent_details":{{"agentId":"agent-{n}","agentName":"n","version":"1","contactEndpoint":"http://h/task"}}}}"#
        );
        call(
            &hook,
            Method::POST,
            paths::NOTIFY,
            signed(secret, s.clock.now(), &body),
            body,
        )
        .await
        .status
    };
    assert_eq!(deliver(old).await, StatusCode::OK);
    assert_eq!(deliver(new).await, StatusCode::UNAUTHORIZED);
    s.put("opscore/test/webhook", &format!("{new},{old}")).await;
    s.advance(REFRESH);
    assert_eq!(deliver(new).await, StatusCode::OK);
    assert_eq!(
        deliver(old).await,
        StatusCode::OK,
        "AgentKit may still sign with the old one"
    );
    s.put("opscore/test/webhook", new).await;
    s.advance(REFRESH);
    assert_eq!(deliver(old).await, StatusCode::UNAUTHORIZED);
    assert_eq!(deliver(new).await, StatusCode::OK);
}

/// As a function runs: the system clock, a one-second refresh (`OPSCORE_SECRET_REFRESH_SECONDS`).
/// The new key is polled for (at most 20 s) rather than timed.
#[tokio::test]
#[cfg_attr(not(feature = "moto"), ignore = "needs moto's server: --features opscore-tests/moto")]
async fn on_the_system_clock_a_rotation_arrives_after_the_refresh_interval() {
    let s = setup().await;
    let (old, new) = ("old-key-0123456789abcdef", "new-key-fedcba9876543210");
    s.create("opscore/test/live", old).await;
    let api = s
        .function(
            Surface::StateApi,
            &[
                ("OPSCORE_API_KEY_SECRET_ID", "opscore/test/live"),
                ("OPSCORE_SECRET_REFRESH_SECONDS", "1"),
            ],
            Arc::new(SystemClock),
        )
        .await;
    assert_eq!(status(&api, old).await, StatusCode::OK);
    s.put("opscore/test/live", new).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while status(&api, new).await != StatusCode::OK {
        assert!(std::time::Instant::now() < deadline, "the new key was never accepted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status(&api, old).await, StatusCode::UNAUTHORIZED);
}
