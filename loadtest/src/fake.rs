//! What is outside Ops-Core, mirroring `tests/src/fake.rs` (the AgentKit contract): a fake
//! AgentKit answering `POST /v1/agents/{id}/run` with 202 and then forwarding the body to the
//! agent's task endpoint, and the simulated agents behind that endpoint (report `active`, work a
//! little, report `idle` naming `opscore_task_id`). It also times the first `/run` of every
//! session (trigger → first dispatch).

use crate::metrics::{Outcome, Recorder};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

pub type ReplyFuture = Pin<Box<dyn Future<Output = hyper::Response<Full<Bytes>>> + Send>>;
pub type RequestHandler = Arc<dyn Fn(hyper::Request<Incoming>) -> ReplyFuture + Send + Sync>;

/// Serves `handler` on `listener` (HTTP/1.1, keep-alive) until the task is aborted.
pub fn serve(listener: TcpListener, handler: RequestHandler) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let _ = stream.set_nodelay(true);
            let handler = handler.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let h = handler.clone();
                    async move { Ok::<_, std::convert::Infallible>(h(req).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    })
}

fn json_reply(status: u16, v: Value) -> hyper::Response<Full<Bytes>> {
    let mut r = hyper::Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
    r.headers_mut()
        .insert("content-type", http::HeaderValue::from_static("application/json"));
    r
}

/// Shared between the users (trigger times) and the fake AgentKit (first dispatch times).
#[derive(Default)]
pub struct Sessions {
    /// sessionId → (trigger sent, trigger answered)
    pub triggered: Mutex<HashMap<String, (Instant, Instant)>>,
    /// sessionId → first `/run` received
    pub first_run: Mutex<HashMap<String, Instant>>,
    pub runs: std::sync::atomic::AtomicU64,
    /// When each `/run` arrived (scenario R's steady rate).
    pub run_times: Mutex<Vec<Instant>>,
}

pub struct Fakes {
    pub addr: SocketAddr,
    pub sessions: Arc<Sessions>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Fakes {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Fakes {
    pub fn agentkit_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The agent's `contactEndpoint` as registered through the webhook.
    pub fn contact_endpoint(addr: SocketAddr, agent: &str) -> String {
        format!("http://{addr}/agents/{agent}/task")
    }

    /// Binds 127.0.0.1:`port` (0 = any). The agents report to `opscore` with `api_key`.
    pub async fn start(
        port: u16,
        opscore: String,
        api_key: String,
        work: Duration,
        rec: Arc<Recorder>,
    ) -> std::io::Result<Fakes> {
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        let addr = listener.local_addr()?;
        let sessions = Arc::new(Sessions::default());
        // AgentKit's outgoing client (forwarding tasks) and the agents' client (state reports).
        let forward = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .pool_max_idle_per_host(256)
            .build()
            .map_err(std::io::Error::other)?;
        let agents = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .pool_max_idle_per_host(256)
            .build()
            .map_err(std::io::Error::other)?;
        let s = sessions.clone();
        let handler: RequestHandler = Arc::new(move |req: hyper::Request<Incoming>| {
            let (s, forward, agents, opscore, key, rec) = (
                s.clone(),
                forward.clone(),
                agents.clone(),
                opscore.clone(),
                api_key.clone(),
                rec.clone(),
            );
            Box::pin(async move {
                let arrived = Instant::now();
                let (parts, body) = req.into_parts();
                let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                let path = parts.uri.path().to_owned();
                let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
                match (parts.method.as_str(), segs.as_slice()) {
                    // Fake AgentKit: accept, then deliver the same body to the agent.
                    ("POST", ["v1", "agents", id, "run"]) => {
                        s.runs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        s.run_times.lock().unwrap().push(arrived);
                        if let Ok(v) = serde_json::from_slice::<Value>(&body)
                            && let Some(sid) = v["opscore_session_id"].as_str()
                        {
                            s.first_run.lock().unwrap().entry(sid.to_owned()).or_insert(arrived);
                        }
                        let endpoint = Fakes::contact_endpoint(addr, id);
                        tokio::spawn(async move {
                            let _ = forward
                                .post(endpoint)
                                .header("content-type", "application/json")
                                .body(body)
                                .send()
                                .await;
                        });
                        json_reply(
                            202,
                            json!({"status": "success", "message": format!("Task accepted for agent {id}. Dispatch scheduled."),
                                   "data": {"agentId": id, "dispatch_status": "scheduled"}, "error_code": null}),
                        )
                    }
                    // Simulated agent: take the task, report active, work, report idle naming it.
                    ("POST", ["agents", id, "task"]) => {
                        let task: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                        let task_id = task["opscore_task_id"].clone();
                        let id = (*id).to_owned();
                        tokio::spawn(async move {
                            let say = async |state: &str, details: Value| {
                                report(&agents, &rec, "agent:state", &opscore, &key, &id, state, details).await
                            };
                            say("active", json!({"opscore_task_id": task_id})).await;
                            tokio::time::sleep(work).await;
                            say("idle", json!({"opscore_task_id": task_id, "result": "done"})).await;
                        });
                        json_reply(200, json!({"status": "received"}))
                    }
                    _ => json_reply(404, json!({"detail": "Not Found"})),
                }
            })
        });
        let task = serve(listener, handler);
        Ok(Fakes { addr, sessions, task })
    }
}

/// The AgentKit SDK's state report (timestamp with `+00:00`), recorded under `op`.
#[allow(clippy::too_many_arguments)]
pub async fn report(
    http: &reqwest::Client,
    rec: &Recorder,
    op: &str,
    opscore: &str,
    key: &str,
    agent: &str,
    state: &str,
    details: Value,
) -> Option<u16> {
    let ts = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.6f+00:00").to_string();
    let body = json!({"agentId": agent, "timestamp": ts, "state": state, "details": details});
    let started = Instant::now();
    let r = http
        .post(format!("{opscore}/v1/opscore/agent/{agent}/state"))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await;
    match r {
        Ok(resp) => {
            let code = resp.status().as_u16();
            let _ = resp.bytes().await;
            rec.record(
                op,
                started.elapsed(),
                if code == 202 {
                    Outcome::Ok
                } else {
                    Outcome::Status(code)
                },
            );
            Some(code)
        }
        Err(e) => {
            rec.record(op, started.elapsed(), Outcome::from_reqwest(&e));
            None
        }
    }
}
