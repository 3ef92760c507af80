//! In-process handler latency on one core (a current-thread runtime) with the in-memory store:
//! the ceiling of the HTTP layer before any network or DynamoDB cost. Prints p50/p99/max and
//! requests per second for POST state, GET state, and the webhook (verify + register), each
//! request through the whole router (its layers, routing, extractors) with `oneshot`.
//!
//! `cargo bench -p opscore-http --bench handlers` (add `-- N` for N requests per case).

use axum::body::Body;
use http::{HeaderMap, HeaderValue, Method, Request};
use http_body_util::BodyExt;
use opscore_core::app::{App, Settings};
use opscore_core::config::{Config, Secret};
use opscore_core::memory::InMemoryStore;
use opscore_core::time::SystemClock;
use opscore_http::auth::sign;
use opscore_http::{HttpRouter, Surface, router};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tower::ServiceExt;

/// A request as a transport hands it over, with its request id (on Lambda, the invocation's; the
/// hand-built request model of before made one outside the timed call too).
fn request(method: Method, path: &str, mut headers: HeaderMap, body: impl Into<Body>) -> Request<Body> {
    let id = uuid::Uuid::new_v4().to_string();
    headers.insert("x-request-id", HeaderValue::from_str(&id).unwrap());
    let mut req = Request::builder().method(method).uri(path).body(body.into()).unwrap();
    *req.headers_mut() = headers;
    req
}

fn headers(pairs: &[(&'static str, String)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.insert(*k, HeaderValue::from_str(v).unwrap());
    }
    h
}

fn report(name: &str, mut latencies: Vec<Duration>, wall: Duration) {
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    println!(
        "{name:<28} n={:<7} p50={:>7.1}µs p99={:>7.1}µs max={:>8.1}µs  {:>8.0} req/s",
        latencies.len(),
        pct(0.50).as_secs_f64() * 1e6,
        pct(0.99).as_secs_f64() * 1e6,
        latencies.last().unwrap().as_secs_f64() * 1e6,
        latencies.len() as f64 / wall.as_secs_f64()
    );
}

async fn run<F: FnMut(usize) -> Request<Body>>(
    api: &HttpRouter,
    n: usize,
    mut make: F,
    expect: u16,
) -> (Vec<Duration>, Duration) {
    let mut lat = Vec::with_capacity(n);
    let wall = Instant::now();
    for i in 0..n {
        let req = make(i);
        let t = Instant::now();
        let (parts, body) = api.clone().oneshot(req).await.unwrap().into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        lat.push(t.elapsed());
        assert_eq!(parts.status.as_u16(), expect, "{}", String::from_utf8_lossy(&body));
    }
    (lat, wall.elapsed())
}

fn main() {
    let n: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(50_000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let app = App::new(Arc::new(InMemoryStore::new()), Arc::new(SystemClock), Settings::default());
        let config = Config { api_keys: vec![Secret::new("bench-key")], webhook_secrets: vec![Secret::new("bench-secret")], ..Config::default() };
        let api = router(app, config, Surface::Both);
        let auth = ("authorization", "Bearer bench-key".to_string());

        // Webhook: a fresh agent per delivery (verify HMAC, parse, replay record, register).
        let (lat, wall) = run(&api, n, |i| {
            let body = format!(r#"{{"event_type":"REGISTER","agent_details":{{"agentId":"agent-{i}","agentName":"a{i}","version":"1.0","capabilities":["plan"],"contactEndpoint":"http://127.0.0.1:9400/task","metadata":{{}}}}}}"#);
            let ts = chrono::Utc::now().timestamp().to_string();
            let sig = sign("bench-secret", &ts, body.as_bytes());
            request(Method::POST, "/v1/opscore/internal/agent/notify", headers(&[("x-agentkit-timestamp", ts), ("x-agentkit-signature", sig)]), body)
        }, 200)
        .await;
        report("webhook verify+register", lat, wall);

        let base = chrono::Utc::now();
        let (lat, wall) = run(&api, n, |i| {
            let agent = format!("agent-{}", i % 1000);
            let ts = (base + chrono::Duration::microseconds(i as i64)).to_rfc3339();
            let body = format!(r#"{{"agentId":"{agent}","timestamp":"{ts}","state":"idle","details":{{"opscore_task_id":"x"}}}}"#);
            request(Method::POST, &format!("/v1/opscore/agent/{agent}/state"), headers(std::slice::from_ref(&auth)), body)
        }, 202)
        .await;
        report("POST state", lat, wall);

        let (lat, wall) = run(&api, n, |i| {
            request(Method::GET, &format!("/v1/opscore/agent/agent-{}/state", i % 1000), headers(std::slice::from_ref(&auth)), "")
        }, 200)
        .await;
        report("GET state", lat, wall);
    });
}
