//! The fuzz targets' checks on stable Rust, over every seed (`fuzz/seeds/`) and every input a
//! fuzzer ever crashed on (`fuzz/regressions/<target>/`), so a crash found once stays fixed
//! without nightly flags or libFuzzer. `tools/fuzz.sh` runs the fuzzers themselves.

use opscore_core::app::{App, Settings};
use opscore_core::config::{Config, Secret};
use opscore_core::ids::AgentId;
use opscore_core::memory::InMemoryStore;
use opscore_core::time::ManualClock;
use opscore_core::workflow::{Format, WorkflowDefinition};
use opscore_http::{Surface, router};
use opscore_tests::call::{call_lambda, lambda_reply};
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut out = Vec::new();
    for dir in ["seeds", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        for e in entries.flatten() {
            out.push((e.path(), std::fs::read(e.path()).unwrap()));
        }
    }
    out.sort();
    out
}

async fn stack() -> opscore_http::HttpRouter {
    let clock = ManualClock::at(chrono::DateTime::from_timestamp(1_795_474_230, 0).unwrap());
    let app = App::new(Arc::new(InMemoryStore::new()), Arc::new(clock), Settings::default());
    let agent = AgentId::parse("af8e59ab-6b62-47d1-b0af-fcb520de8640").unwrap();
    app.register_agent(opscore_tests::fake::agent_details(&agent, "fuzz"))
        .await
        .unwrap();
    let def = WorkflowDefinition::parse(include_bytes!("../../../local/sample-workflow.json"), Format::Json).unwrap();
    app.create_workflow(def).await.unwrap();
    let config = Config {
        api_keys: vec![Secret::new("fixture-api-key")],
        webhook_secrets: vec![Secret::new("opscore-test-secret-2026")],
        ..Config::default()
    };
    router(app, config, Surface::Both)
}

/// Found by the `lambda_request` target: lambda_http 1.3.2 panics converting an API Gateway v2
/// event whose `Host` header is not a valid URL host (`build_request_uri` unwraps
/// `Url::parse`). API Gateway and function URLs never deliver such a host, so this is the
/// library's and unreachable in production; the same request with a sane host is answered
/// without a 5xx. When this test starts failing, lambda_http fixed it: drop the guard in
/// `fuzz/fuzz_targets/lambda_request.rs`.
#[tokio::test]
async fn lambda_http_panics_on_an_invalid_host_and_we_do_not() {
    let raw = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions/lambda_request/host-with-space.json"),
    )
    .unwrap();
    let text = String::from_utf8(raw).unwrap();
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let parsed = std::panic::catch_unwind(|| lambda_http::request::from_str(&text));
    std::panic::set_hook(hook);
    assert!(parsed.is_err(), "lambda_http no longer panics on an invalid Host");
    let fixed = text.replace("execute-api .us-east-1", "execute-api.us-east-1");
    let req = lambda_http::request::from_str(&fixed).expect("the repaired event parses");
    let resp = lambda_reply(call_lambda(&stack().await, req).await);
    assert!(resp.status.is_client_error(), "{}", resp.status);
}

#[tokio::test]
async fn lambda_request_inputs_never_5xx() {
    let mut n = 0;
    let mut all = inputs("lambda_request");
    // The Lambda fixtures are this target's seeds.
    for e in std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("../events"))
        .unwrap()
        .flatten()
    {
        if e.path().extension().is_some_and(|x| x == "json") {
            all.push((e.path(), std::fs::read(e.path()).unwrap()));
        }
    }
    for (path, data) in all {
        let Ok(text) = std::str::from_utf8(&data) else { continue };
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let parsed = std::panic::catch_unwind(|| lambda_http::request::from_str(text));
        std::panic::set_hook(hook);
        let Ok(Ok(req)) = parsed else { continue };
        let resp = lambda_reply(call_lambda(&stack().await, req).await);
        assert!(!resp.status.is_server_error(), "{}: {}", path.display(), resp.status);
        serde_json::from_slice::<serde_json::Value>(&resp.body).expect("JSON body");
        n += 1;
    }
    assert!(n >= 20, "only {n} lambda_request inputs replayed");
}

#[test]
fn stream_record_inputs_decode_or_are_refused() {
    use aws_lambda_events::event::dynamodb::{Event, EventRecord};
    let mut n = 0;
    for (_, data) in inputs("stream_record") {
        if let Ok(batch) = serde_json::from_slice::<Event>(&data) {
            for r in &batch.records {
                let _ = opscore_dynamo::decode_stream_record(r);
                n += 1;
            }
        } else if let Ok(r) = serde_json::from_slice::<EventRecord>(&data) {
            // The seeds are real item images: they decode.
            opscore_dynamo::decode_stream_record(&r).expect("a seed record decodes");
            n += 1;
        }
    }
    assert!(n >= 6, "stream seeds missing ({n})");
}

#[test]
fn workflow_definition_inputs_round_trip() {
    for (path, data) in inputs("workflow_definition") {
        let Some((&mode, body)) = data.split_first() else {
            continue;
        };
        let format = if mode % 2 == 0 { Format::Json } else { Format::Yaml };
        if let Ok(def) = WorkflowDefinition::parse(body, format) {
            let json = serde_json::to_vec(&def).unwrap();
            let again =
                WorkflowDefinition::parse(&json, Format::Json).unwrap_or_else(|p| panic!("{}: {p:?}", path.display()));
            assert!(def.same_content(&again), "{}", path.display());
        }
    }
}
