//! The X-Ray trace id of a Lambda invocation is on every log line of its request (issue 15), and a
//! trace id a caller sent is not: the context's replaces it.

use lambda_http::RequestExt;
use opscore_core::app::App;
use opscore_core::config::{Config, Secret};
use opscore_core::memory::InMemoryStore;
use opscore_core::time::SystemClock;
use opscore_http::{Surface, router};
use serde_json::Value;
use std::io::Write;
use std::sync::{Arc, Mutex};
use tower::ServiceExt;

/// Log output kept in memory.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn every_log_line_of_a_request_carries_the_invocations_trace_id() {
    let captured = Captured::default();
    let writer = captured.clone();
    // The JSON format of opscore_http::init_tracing, into memory, for this thread.
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_span_list(false)
        .without_time()
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let app = App::new(
        Arc::new(InMemoryStore::new()),
        Arc::new(SystemClock),
        Default::default(),
    );
    let config = Config {
        webhook_secrets: vec![Secret::new("s")],
        ..Config::default()
    };
    let service = opscore_lambda::with_lambda_request_id(router(app, config, Surface::Webhook));
    let trace = "Root=1-67891233-abcdef012345678912345678;Parent=53995c3f42cd8ad8;Sampled=1";
    let mut context = lambda_runtime::Context::default();
    context.request_id = "lambda-request-1".into();
    context.xray_trace_id = Some(trace.into());
    let request = http::Request::builder()
        .method("POST")
        .uri("/v1/opscore/internal/agent/notify")
        .header("x-amzn-trace-id", "Root=1-made-up-by-the-caller")
        .body(lambda_http::Body::from("{}"))
        .unwrap()
        .with_lambda_context(context);
    let response = service.oneshot(request).await.unwrap();
    assert_eq!(response.status(), 401);

    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(!lines.is_empty(), "the refusal is logged");
    for line in &lines {
        assert_eq!(line["span"]["trace_id"], trace, "{line}");
        assert_eq!(line["span"]["request_id"], "lambda-request-1", "{line}");
    }
    assert!(!text.contains("made-up"), "{text}");
}
