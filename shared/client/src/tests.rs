//! URL joining, and the retry policy as it behaves on the wire: a scripted HTTP server counts the
//! tries each call makes.

use super::*;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

#[test]
fn a_path_prefix_is_kept_with_or_without_a_trailing_slash() {
    let segs = ["v1", "opscore", "agents"];
    for (base, want) in [
        ("http://h", "http://h/v1/opscore/agents"),
        ("http://h/", "http://h/v1/opscore/agents"),
        ("http://h/prefix", "http://h/prefix/v1/opscore/agents"),
        ("http://h/prefix/", "http://h/prefix/v1/opscore/agents"),
        ("https://h:8443/a/b", "https://h:8443/a/b/v1/opscore/agents"),
        (
            "https://x.execute-api.eu-west-1.amazonaws.com/prod",
            "https://x.execute-api.eu-west-1.amazonaws.com/prod/v1/opscore/agents",
        ),
    ] {
        let b = parse_base_url(base).unwrap();
        assert_eq!(join(&b, &segs, &[]).as_str(), want, "{base}");
    }
}

#[test]
fn ids_are_one_encoded_segment_and_queries_are_encoded() {
    let b = parse_base_url("http://h/p").unwrap();
    assert_eq!(
        join(&b, &["v1", "opscore", "agent", "a/b?c#d%e", "state"], &[]).as_str(),
        "http://h/p/v1/opscore/agent/a%2Fb%3Fc%23d%25e/state"
    );
    assert_eq!(
        join(
            &b,
            &["v1", "opscore", "agents"],
            &[("state", "idle"), ("cursor", "a+b=&c")]
        )
        .as_str(),
        "http://h/p/v1/opscore/agents?state=idle&cursor=a%2Bb%3D%26c"
    );
}

#[test]
fn bad_base_urls_are_refused() {
    for bad in [
        "",
        "h/prefix",
        "ftp://h",
        "mailto:x@y",
        "http://h/p?x=1",
        "http://h/p#f",
        "file:///tmp",
    ] {
        assert!(matches!(parse_base_url(bad), Err(Error::Config(_))), "{bad:?}");
    }
    assert!(Client::builder("http://h").api_key("bad\nkey").build().is_err());
}

#[test]
fn definition_bodies_follow_the_extension() {
    let j = DefinitionBody::for_path(Path::new("w.json"), b"{}".to_vec()).unwrap();
    assert_eq!(j.content_type(), "application/json");
    let y = DefinitionBody::for_path(Path::new("dir.d/w.YML"), b"a: 1".to_vec()).unwrap();
    assert_eq!(y.content_type(), "application/yaml");
    assert!(DefinitionBody::for_path(Path::new("w.yaml"), vec![]).is_some());
    assert!(DefinitionBody::for_path(Path::new("w.txt"), vec![]).is_none());
    assert!(DefinitionBody::for_path(Path::new("json"), vec![]).is_none());
}

#[test]
fn debug_never_shows_the_key() {
    let c = Client::builder("http://h").api_key("s3cret").build().unwrap();
    assert!(!format!("{c:?}").contains("s3cret"));
}

#[test]
fn timestamps_are_rfc3339_with_an_offset() {
    let t = now_rfc3339();
    assert!(t.ends_with("+00:00"), "{t}");
    assert!(chrono::DateTime::parse_from_rfc3339(&t).is_ok());
}

// ----- on the wire -----

#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    headers: HeaderMap,
    body: Vec<u8>,
}

/// Answers from `script` in order, then `(200, fallback)` forever.
struct Fake {
    script: Mutex<VecDeque<(u16, String)>>,
    fallback: String,
    seen: Mutex<Vec<Seen>>,
}

impl Fake {
    fn tries(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

async fn fake(script: &[(u16, &str)], fallback: &str) -> (String, Arc<Fake>) {
    let state = Arc::new(Fake {
        script: Mutex::new(script.iter().map(|(s, b)| (*s, b.to_string())).collect()),
        fallback: fallback.into(),
        seen: Mutex::new(Vec::new()),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let st = state.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let st = st.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                    let st = st.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body.collect().await.map(|b| b.to_bytes().to_vec()).unwrap_or_default();
                        st.seen.lock().unwrap().push(Seen {
                            method: parts.method.to_string(),
                            path: parts.uri.to_string(),
                            headers: parts.headers,
                            body,
                        });
                        let (status, body) = st
                            .script
                            .lock()
                            .unwrap()
                            .pop_front()
                            .unwrap_or((200, st.fallback.clone()));
                        let mut resp = hyper::Response::new(Full::new(Bytes::from(body)));
                        *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                        resp.headers_mut()
                            .insert("content-type", HeaderValue::from_static("application/json"));
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (format!("http://{addr}/stage"), state)
}

fn fast_client(base: &str) -> Client {
    Client::builder(base)
        .api_key("k1")
        .retry(RequestRetryPolicy {
            max_retries: 3,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(5),
        })
        .build()
        .unwrap()
}

const UNAVAILABLE: &str = r#"{"detail":"store unavailable","code":"unavailable"}"#;
const SESSION: &str = r#"{"sessionId":"6f1c1f0e-7e59-4c43-9a8a-2b0c4e8d8e11","workflowId":"w","workflowVersion":"1.0","agentId":"a","status":"cancelled","startTime":"2030-01-01T00:00:00.000000Z","result":null,"error":null,"tasks":[]}"#;
const TRIGGERED: &str = r#"{"sessionId":"6f1c1f0e-7e59-4c43-9a8a-2b0c4e8d8e11","workflowId":"w","message":"Workflow triggered successfully"}"#;
const ACCEPTED: &str = r#"{"status":"success","message":"State update accepted","applied":true}"#;

#[tokio::test]
async fn gets_retry_on_503_and_keep_the_prefix_and_key() {
    let (base, f) = fake(&[(503, UNAVAILABLE), (503, UNAVAILABLE)], r#"{"status":"ok"}"#).await;
    let c = fast_client(&base);
    let err = c.agent("a").await.unwrap_err();
    // The fallback answer (200 {"status":"ok"}) is not an AgentView: the third try succeeded at
    // the HTTP level and failed decoding, which proves two retries happened.
    assert!(matches!(err, Error::Decode { status: 200, .. }), "{err:?}");
    assert_eq!(f.tries(), 3);
    for s in f.seen() {
        assert_eq!(s.method, "GET");
        assert_eq!(s.path, "/stage/v1/opscore/agent/a");
        assert_eq!(s.headers["authorization"], "Bearer k1");
    }
}

#[tokio::test]
async fn retries_are_bounded_and_the_last_error_is_returned() {
    let (base, f) = fake(&[(503, UNAVAILABLE); 10], "{}").await;
    let err = fast_client(&base)
        .session("6f1c1f0e-7e59-4c43-9a8a-2b0c4e8d8e11")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Server { status: 503, .. }), "{err:?}");
    assert_eq!(f.tries(), 4, "1 try + 3 retries");
}

#[tokio::test]
async fn gets_retry_on_429_502_504_but_not_on_500_or_4xx() {
    for s in [429, 502, 504] {
        let (base, f) = fake(&[(s, "{}")], r#"{"status":"ok"}"#).await;
        assert_eq!(fast_client(&base).health().await.unwrap().status, "ok");
        assert_eq!(f.tries(), 2, "{s}");
    }
    for s in [500, 400, 401, 404, 409, 422] {
        let (base, f) = fake(&[(s, "{}")], r#"{"status":"ok"}"#).await;
        assert!(fast_client(&base).health().await.is_err(), "{s}");
        assert_eq!(f.tries(), 1, "{s}");
    }
}

#[tokio::test]
async fn health_and_openapi_send_no_key() {
    let (base, f) = fake(&[], r#"{"status":"ok"}"#).await;
    let c = fast_client(&base);
    c.health().await.unwrap();
    c.openapi().await.unwrap();
    let seen = f.seen();
    assert_eq!(seen[0].path, "/stage/health");
    assert_eq!(seen[1].path, "/stage/openapi.json");
    assert!(seen.iter().all(|s| !s.headers.contains_key("authorization")));
}

#[tokio::test]
async fn state_reports_retry() {
    let (base, f) = fake(&[(502, "{}"), (504, "{}")], ACCEPTED).await;
    let r = fast_client(&base).report_state("a", "idle", None).await.unwrap();
    assert!(r.applied);
    assert_eq!(f.tries(), 3);
    let bodies: Vec<Value> = f
        .seen()
        .iter()
        .map(|s| serde_json::from_slice(&s.body).unwrap())
        .collect();
    assert!(
        bodies.windows(2).all(|w| w[0] == w[1]),
        "every try sends the same report"
    );
    assert_eq!(bodies[0]["agentId"], "a");
    assert_eq!(bodies[0]["state"], "idle");
    assert!(bodies[0]["timestamp"].as_str().unwrap().ends_with("+00:00"));
}

#[tokio::test]
async fn triggers_with_a_key_retry_with_the_same_key() {
    let (base, f) = fake(&[(503, UNAVAILABLE), (503, UNAVAILABLE)], TRIGGERED).await;
    let t = fast_client(&base).trigger_stored("a", "w", None).await.unwrap();
    assert_eq!(f.tries(), 3);
    let key = t.idempotency_key.clone().expect("generated");
    assert!(uuid::Uuid::parse_str(&key).is_ok());
    for s in f.seen() {
        assert_eq!(s.path, "/stage/v1/opscore/agent/a/workflow");
        assert_eq!(s.headers["idempotency-key"], key.as_str());
        let body: Value = serde_json::from_slice(&s.body).unwrap();
        assert_eq!(body["workflowDefinitionId"], "w");
    }
    assert!(!t.replayed);
}

#[tokio::test]
async fn triggers_without_a_key_never_retry() {
    let (base, f) = fake(&[(503, UNAVAILABLE)], TRIGGERED).await;
    let req = TriggerRequest {
        workflow_definition_id: Some("w".into()),
        workflow_version: None,
        workflow_definition: None,
        initial_payload: None,
        route_by_capability: None,
    };
    let err = fast_client(&base)
        .trigger("a", &req, TriggerKey::Omit)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Server { status: 503, .. }));
    assert_eq!(f.tries(), 1);
    assert!(!f.seen()[0].headers.contains_key("idempotency-key"));
}

#[tokio::test]
async fn cancel_and_create_never_retry() {
    let (base, f) = fake(&[(503, UNAVAILABLE)], SESSION).await;
    let c = fast_client(&base);
    assert!(c.cancel_session("6f1c1f0e-7e59-4c43-9a8a-2b0c4e8d8e11").await.is_err());
    assert_eq!(f.tries(), 1);
    assert!(c.cancel_session("6f1c1f0e-7e59-4c43-9a8a-2b0c4e8d8e11").await.is_ok());

    let (base, f) = fake(&[(502, "{}")], "{}").await;
    let err = fast_client(&base)
        .create_workflow(DefinitionBody::Yaml(b"id: w".to_vec()))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Server { status: 502, .. }));
    assert_eq!(f.tries(), 1);
    let s = &f.seen()[0];
    assert_eq!(s.path, "/stage/v1/opscore/workflows");
    assert_eq!(s.headers["content-type"], "application/yaml");
    assert_eq!(s.body, b"id: w");
}

#[tokio::test]
async fn network_errors_retry_idempotent_calls_then_say_where() {
    // A port nobody listens on: every try is refused.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    let c = fast_client(&format!("http://{addr}/p"));
    let started = std::time::Instant::now();
    let err = c.workflow("w", None).await.unwrap_err();
    match &err {
        Error::Network { url, message } => {
            assert_eq!(url, &format!("http://{addr}/p/v1/opscore/workflows/w"));
            assert!(!message.is_empty());
        }
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn validation_errors_carry_the_field_list() {
    let body = r#"{"detail":"workflow definition is invalid: name: is required","code":"validation_failed","errors":[{"field":"name","message":"is required"}]}"#;
    let (base, _f) = fake(&[(422, body)], "{}").await;
    let err = fast_client(&base)
        .create_workflow(DefinitionBody::Json(b"{}".to_vec()))
        .await
        .unwrap_err();
    assert_eq!(err.field_errors().len(), 1);
    assert_eq!(err.field_errors()[0].field, "name");
}

#[tokio::test]
async fn created_follows_201_and_replayed_follows_the_header() {
    let wf = r#"{"id":"w","name":"W","version":"1.0","tasks":[{"taskId":"a","name":"A","parameters":{},"nextTaskId":null}],"createdAt":"2030-01-01T00:00:00.000000Z"}"#;
    let (base, _f) = fake(&[(201, wf)], wf).await;
    let c = fast_client(&base);
    let first = c.create_workflow(DefinitionBody::Json(b"{}".to_vec())).await.unwrap();
    assert!(first.created);
    assert_eq!(first.value.definition.id.as_str(), "w");
    let again = c.create_workflow(DefinitionBody::Json(b"{}".to_vec())).await.unwrap();
    assert!(!again.created);
}

#[tokio::test]
async fn list_queries_carry_the_filter_and_page() {
    let (base, f) = fake(&[], r#"{"items":[],"nextCursor":null}"#).await;
    let c = fast_client(&base);
    let page = PageOpts {
        limit: Some(5),
        cursor: Some("abc".into()),
    };
    c.list_agents(Some("idle"), &page).await.unwrap();
    c.state_history("a", &PageOpts::limit(7)).await.unwrap();
    c.list_sessions("a", &PageOpts::default()).await.unwrap();
    c.list_workflows(&PageOpts::default()).await.unwrap();
    c.list_sessions_across_agents(Some(opscore_core::session::SessionStatus::Failed), &PageOpts::limit(3))
        .await
        .unwrap();
    c.list_sessions_across_agents(None, &PageOpts::default()).await.unwrap();
    let paths: Vec<String> = f.seen().into_iter().map(|s| s.path).collect();
    assert_eq!(
        paths,
        [
            "/stage/v1/opscore/agents?state=idle&limit=5&cursor=abc",
            "/stage/v1/opscore/agent/a/state/history?limit=7",
            "/stage/v1/opscore/agent/a/sessions",
            "/stage/v1/opscore/workflows",
            "/stage/v1/opscore/sessions?status=failed&limit=3",
            "/stage/v1/opscore/sessions",
        ]
    );
}

#[tokio::test]
async fn a_silent_server_is_a_timeout_and_idempotent_calls_retry_it() {
    // Accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let a = accepted.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            a.lock().unwrap().push(s);
        }
    });
    let c = Client::builder(format!("http://{addr}"))
        .timeout(Duration::from_millis(150))
        .retry(RequestRetryPolicy {
            max_retries: 2,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(2),
        })
        .build()
        .unwrap();
    let err = c.agent_state("a").await.unwrap_err();
    assert!(
        matches!(err, Error::Timeout { after, .. } if after == Duration::from_millis(150)),
        "{err:?}"
    );
    assert_eq!(accepted.lock().unwrap().len(), 3, "1 try + 2 retries");
    let err = c
        .cancel_session("6f1c1f0e-7e59-4c43-9a8a-2b0c4e8d8e11")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }));
    assert_eq!(accepted.lock().unwrap().len(), 4, "a cancel is tried once");
}
