//! Fakes of what is outside Ops-Core, following docs/agentkit-contract.md:
//! AgentKit (agent registration → signed webhook; `/run` → 202, then the same body to the agent's
//! `contactEndpoint`) and a reference agent (reports `idle`, retrying on 404; takes tasks,
//! reports `active`, then `idle` with `opscore_task_id`).

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;

pub type Handler =
    Arc<dyn Fn(http::Method, String, Bytes) -> futures::future::BoxFuture<'static, (u16, Value)> + Send + Sync>;

/// A minimal HTTP server on 127.0.0.1:0 answering JSON; stops when dropped.
pub struct JsonServer {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl JsonServer {
    pub async fn start(handler: Handler) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let handler = handler.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                        let handler = handler.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                            let (status, v) = handler(parts.method, parts.uri.path().to_owned(), body).await;
                            let mut resp = hyper::Response::new(Full::new(Bytes::from(v.to_string())));
                            *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
                            resp.headers_mut()
                                .insert("content-type", "application/json".parse().unwrap());
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self { addr, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for JsonServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Python's `json.dumps(..., separators=(',', ':'))`: compact, non-ASCII escaped as `\uXXXX`.
pub fn python_compact_json(v: &Value) -> String {
    let s = v.to_string();
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut buf = [0u16; 2];
            for unit in c.encode_utf16(&mut buf) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

pub fn hmac_hex(secret: &str, timestamp: &str, body: &[u8]) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// What the fake AgentKit answers to `/run`, in order; then 202 for ever.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RunAnswer {
    Accept,
    Status(u16),
    /// Accept, but do not forward the task to the agent (it is lost on the way).
    AcceptAndDrop,
    /// Answer after this long (for dispatch timeouts).
    Slow(Duration),
}

#[derive(Default)]
struct AgentKitState {
    agents: HashMap<String, Value>,
    script: VecDeque<RunAnswer>,
    runs: Vec<Value>,
}

pub struct FakeAgentKit {
    pub server: JsonServer,
    state: Arc<Mutex<AgentKitState>>,
}

impl FakeAgentKit {
    /// `webhook_url` and `secret` are AgentKit's `OPSCORE_WEBHOOK_URL` / `OPSCORE_WEBHOOK_SECRET`.
    pub async fn start(webhook_url: String, secret: String) -> Self {
        let state = Arc::new(Mutex::new(AgentKitState::default()));
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .build()
            .unwrap();
        let st = state.clone();
        let handler: Handler = Arc::new(move |method, path, body| {
            let st = st.clone();
            let http = http.clone();
            let webhook_url = webhook_url.clone();
            let secret = secret.clone();
            Box::pin(async move {
                let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
                match (method.as_str(), segs.as_slice()) {
                    ("POST", ["v1", "agents", "register"]) => {
                        let Ok(mut reg) = serde_json::from_slice::<Value>(&body) else {
                            return (422, json!({"detail": "bad body"}));
                        };
                        let id = uuid::Uuid::new_v4().to_string();
                        reg["agentId"] = json!(id);
                        st.lock().unwrap().agents.insert(id.clone(), reg.clone());
                        // AgentKit sends the webhook once, 10 s timeout, no retry; non-2xx only logged.
                        let details = json!({"agentId": id, "agentName": reg["agentName"], "version": reg["version"],
                            "capabilities": reg["capabilities"], "contactEndpoint": reg["contactEndpoint"],
                            "metadata": reg.get("metadata").cloned().unwrap_or(Value::Null)});
                        let raw = python_compact_json(&json!({"event_type": "REGISTER", "agent_details": details}));
                        let ts = chrono::Utc::now().timestamp().to_string();
                        let sig = hmac_hex(&secret, &ts, raw.as_bytes());
                        let _ = http
                            .post(&webhook_url)
                            .header("content-type", "application/json")
                            .header("X-AgentKit-Timestamp", &ts)
                            .header("X-AgentKit-Signature", sig)
                            .body(raw)
                            .timeout(Duration::from_secs(10))
                            .send()
                            .await;
                        (
                            201,
                            json!({"status": "success", "message": "Agent registered successfully.", "data": {"agentId": id}}),
                        )
                    }
                    ("POST", ["v1", "agents", id, "run"]) => {
                        let (endpoint, answer) = {
                            let mut s = st.lock().unwrap();
                            let Some(agent) = s.agents.get(*id).cloned() else {
                                return (404, json!({"detail": format!("Agent with ID '{id}' not found.")}));
                            };
                            let answer = s.script.pop_front().unwrap_or(RunAnswer::Accept);
                            if let Ok(v) = serde_json::from_slice::<Value>(&body) {
                                s.runs.push(v);
                            }
                            (agent["contactEndpoint"].as_str().unwrap_or_default().to_owned(), answer)
                        };
                        match answer {
                            RunAnswer::Status(code) => return (code, json!({"detail": "scripted failure"})),
                            RunAnswer::Slow(d) => tokio::time::sleep(d).await,
                            _ => {}
                        }
                        if answer != RunAnswer::AcceptAndDrop {
                            // AgentKit keeps only the top-level fields that reach the agent.
                            let http = http.clone();
                            tokio::spawn(async move {
                                let _ = http
                                    .post(&endpoint)
                                    .header("content-type", "application/json")
                                    .body(body)
                                    .send()
                                    .await;
                            });
                        }
                        (
                            202,
                            json!({"status": "success", "message": format!("Task accepted for agent {id}. Dispatch scheduled."),
                                     "data": {"agentId": id, "dispatch_status": "scheduled"}, "error_code": null}),
                        )
                    }
                    _ => (404, json!({"detail": "Not Found"})),
                }
            })
        });
        Self {
            server: JsonServer::start(handler).await,
            state,
        }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    /// Makes AgentKit know an agent registered some other way (e.g. by a captured webhook).
    pub fn know(&self, agent_id: &str, contact_endpoint: &str) {
        let reg = json!({"agentId": agent_id, "contactEndpoint": contact_endpoint});
        self.state.lock().unwrap().agents.insert(agent_id.to_owned(), reg);
    }

    pub fn script(&self, answers: impl IntoIterator<Item = RunAnswer>) {
        self.state.lock().unwrap().script.extend(answers);
    }

    /// Every `/run` body received, in order.
    pub fn runs(&self) -> Vec<Value> {
        self.state.lock().unwrap().runs.clone()
    }
}

/// How the simulated agent handles a task.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Behaviour {
    /// `active`, work for this long, `idle` with `opscore_task_id`.
    Complete(Duration),
    /// `active`, then `error` naming the task, then `idle` (ready again).
    Fail,
}

pub struct SimulatedAgent {
    pub id: String,
    pub server: JsonServer,
    pub tasks: Arc<Mutex<Vec<Value>>>,
}

impl SimulatedAgent {
    /// Starts the agent's task endpoint, registers with AgentKit, and reports `idle` to Ops-Core
    /// like the reference agent: retrying on 404 (1 s, then every 3 s; 5 tries) because the
    /// report may arrive before the webhook is processed.
    pub async fn start(
        agentkit: &str,
        opscore: &str,
        api_key: &str,
        name: &str,
        behaviour: Arc<Mutex<Behaviour>>,
    ) -> Self {
        Self::start_with(agentkit, opscore, api_key, name, behaviour, &["test_capability"]).await
    }

    /// [`Self::start`] with the capabilities it announces when it registers.
    pub async fn start_with(
        agentkit: &str,
        opscore: &str,
        api_key: &str,
        name: &str,
        behaviour: Arc<Mutex<Behaviour>>,
        capabilities: &[&str],
    ) -> Self {
        let tasks = Arc::new(Mutex::new(Vec::new()));
        let id_cell: Arc<Mutex<String>> = Arc::default();
        let http = reqwest::Client::new();
        let (t, idc, opscore_url, key) = (tasks.clone(), id_cell.clone(), opscore.to_owned(), api_key.to_owned());
        let handler: Handler = Arc::new(move |_method, _path, body| {
            let (t, idc, opscore_url, key, http, behaviour) = (
                t.clone(),
                idc.clone(),
                opscore_url.clone(),
                key.clone(),
                http.clone(),
                behaviour.clone(),
            );
            Box::pin(async move {
                let task: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                t.lock().unwrap().push(task.clone());
                let id = idc.lock().unwrap().clone();
                let task_id = task["opscore_task_id"].clone();
                let b = *behaviour.lock().unwrap();
                tokio::spawn(async move {
                    report(
                        &http,
                        &opscore_url,
                        &key,
                        &id,
                        "active",
                        json!({"opscore_task_id": task_id}),
                    )
                    .await;
                    match b {
                        Behaviour::Complete(d) => {
                            tokio::time::sleep(d).await;
                            report(
                                &http,
                                &opscore_url,
                                &key,
                                &id,
                                "idle",
                                json!({"opscore_task_id": task_id, "result": "done"}),
                            )
                            .await;
                        }
                        Behaviour::Fail => {
                            report(
                                &http,
                                &opscore_url,
                                &key,
                                &id,
                                "error",
                                json!({"opscore_task_id": task_id, "error": "simulated failure"}),
                            )
                            .await;
                            // Like the reference agent, it is ready for work again after a failure.
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            report(&http, &opscore_url, &key, &id, "idle", json!({})).await;
                        }
                    }
                });
                (200, json!({"status": "received"}))
            })
        });
        let server = JsonServer::start(handler).await;
        let http = reqwest::Client::new();
        let reg: Value = http
            .post(format!("{agentkit}/v1/agents/register"))
            .json(&json!({"agentName": name, "version": "1.0", "capabilities": capabilities,
                          "contactEndpoint": format!("{}/task", server.url()), "metadata": {"description": "simulated ✓"}}))
            .send()
            .await
            .expect("AgentKit answers")
            .json()
            .await
            .expect("JSON");
        let id = reg["data"]["agentId"].as_str().expect("an agent id").to_owned();
        *id_cell.lock().unwrap() = id.clone();
        for (attempt, wait) in [1u64, 3, 3, 3, 3].into_iter().enumerate() {
            if report(&http, opscore, api_key, &id, "idle", json!({})).await != 404 || attempt == 4 {
                break;
            }
            tokio::time::sleep(Duration::from_secs(wait)).await;
        }
        Self { id, server, tasks }
    }
}

/// The AgentKit SDK's `report_state_to_opscore`: timestamp with `+00:00`, `details` `{}` when none.
pub async fn report(http: &reqwest::Client, opscore: &str, key: &str, agent: &str, state: &str, details: Value) -> u16 {
    let ts = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.6f+00:00").to_string();
    http.post(format!("{opscore}/v1/opscore/agent/{agent}/state"))
        .bearer_auth(key)
        .json(&json!({"agentId": agent, "timestamp": ts, "state": state, "details": details}))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

// The in-process engine pieces live in the core (its engine scenarios use them without this
// crate's AWS dependencies); re-exported for the tests here.
pub use opscore_core::testing::{ScriptedAgentKit, TEST_LEASE, agent_details, engine};
