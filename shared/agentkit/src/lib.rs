//! The AgentKit client: `POST {AGENTKIT_API_URL}/v1/agents/{agentId}/run`, exactly as the
//! contract describes (top-level `opscore_task_id`, `opscore_session_id`, `task_name`).
//!
//! Hardened (issue 13): the URL is built from percent-encoded path segments, never by string
//! concatenation; redirects are never followed (a 3xx is a failed attempt of its own kind); at
//! most [`MAX_ANSWER_BYTES`] of an answer are read, the rest is dropped with the connection.

use async_trait::async_trait;
use opscore_core::runner::{DispatchOutcome, DispatchRequest, Dispatcher};
use reqwest::Url;
use serde_json::json;
use std::time::Duration;

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
pub const TOTAL_TIMEOUT: Duration = Duration::from_secs(10);
/// How much of an answer's body is read (for the failure message); the rest is never read.
pub const MAX_ANSWER_BYTES: usize = 4096;
/// How much of that goes into a failure reason.
const MAX_REASON_CHARS: usize = 300;

pub struct AgentKitClient {
    base_url: Url,
    http: reqwest::Client,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentKitClientError {
    #[error("AgentKit URL {0:?} must be an http:// or https:// URL with a host")]
    BadUrl(String),
    #[error(transparent)]
    Http(#[from] reqwest::Error),
}

impl AgentKitClient {
    pub fn new(base_url: &str) -> Result<Self, AgentKitClientError> {
        Self::with_timeouts(base_url, CONNECT_TIMEOUT, TOTAL_TIMEOUT)
    }

    pub fn with_timeouts(base_url: &str, connect: Duration, total: Duration) -> Result<Self, AgentKitClientError> {
        let http = reqwest::Client::builder()
            .connect_timeout(connect)
            .timeout(total)
            // A redirect would turn the task into a GET elsewhere (302) or re-post it to another
            // host (307): never followed, reported as its own outcome.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let base_url = Url::parse(base_url.trim()).map_err(|_| AgentKitClientError::BadUrl(base_url.to_owned()))?;
        if !matches!(base_url.scheme(), "http" | "https")
            || base_url.cannot_be_a_base()
            || base_url.host_str().is_none()
        {
            return Err(AgentKitClientError::BadUrl(base_url.to_string()));
        }
        Ok(Self { base_url, http })
    }

    /// `{base}/v1/agents/{agent}/run`, the agent id one percent-encoded path segment (a `/`,
    /// `%`, `?` or `#` in it cannot add segments, a query or a fragment). `.` and `..` (which
    /// `AgentId` refuses anyway) cannot be a segment that names an agent: `None`.
    pub fn run_url(base: &Url, agent: &str) -> Option<Url> {
        if agent.is_empty() || agent == "." || agent == ".." {
            return None;
        }
        let mut url = base.clone();
        url.set_query(None);
        url.set_fragment(None);
        url.path_segments_mut()
            .ok()?
            .pop_if_empty()
            .extend(["v1", "agents", agent, "run"]);
        Some(url)
    }

    pub fn body(req: &DispatchRequest) -> serde_json::Value {
        json!({
            "senderId": "opscore",
            "messageType": "workflow_task",
            "payload": req.payload,
            "task_name": req.task_name,
            "opscore_session_id": req.session_id.to_string(),
            "opscore_task_id": req.dispatch_id,
        })
    }
}

/// At most `MAX_ANSWER_BYTES` of the body, chunk by chunk; then the response (and with it the
/// connection) is dropped unread.
async fn bounded_text(mut r: reqwest::Response) -> String {
    let mut buf: Vec<u8> = Vec::new();
    while buf.len() < MAX_ANSWER_BYTES {
        match r.chunk().await {
            Ok(Some(chunk)) => {
                let room = MAX_ANSWER_BYTES - buf.len();
                buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            Ok(None) | Err(_) => break,
        }
    }
    drop(r);
    String::from_utf8_lossy(&buf).chars().take(MAX_REASON_CHARS).collect()
}

#[async_trait]
impl Dispatcher for AgentKitClient {
    async fn dispatch(&self, req: &DispatchRequest) -> DispatchOutcome {
        let Some(url) = Self::run_url(&self.base_url, req.agent_id.as_str()) else {
            return DispatchOutcome::Failed {
                retryable: false,
                reason: format!("agent id {:?} cannot be a URL path segment", req.agent_id.as_str()),
            };
        };
        let resp = self.http.post(url).json(&Self::body(req)).send().await;
        let outcome = match resp {
            Ok(r) if r.status().is_success() => DispatchOutcome::Accepted,
            Ok(r) if r.status().is_redirection() => {
                let status = r.status().as_u16();
                let location: String = r
                    .headers()
                    .get(reqwest::header::LOCATION)
                    .map(|v| {
                        String::from_utf8_lossy(v.as_bytes())
                            .chars()
                            .take(MAX_REASON_CHARS)
                            .collect()
                    })
                    .unwrap_or_default();
                drop(r);
                DispatchOutcome::Redirected { status, location }
            }
            Ok(r) => {
                let status = r.status();
                let text = bounded_text(r).await;
                let reason = format!("AgentKit answered {status}: {text}");
                // 404: AgentKit does not know the agent (it may re-register); 408/429/5xx: transient.
                let retryable = status.as_u16() == 404
                    || status.as_u16() == 408
                    || status.as_u16() == 429
                    || status.is_server_error();
                DispatchOutcome::Failed { retryable, reason }
            }
            Err(e) if e.is_timeout() => DispatchOutcome::Failed {
                retryable: true,
                reason: format!("AgentKit did not answer within {} s", TOTAL_TIMEOUT.as_secs()),
            },
            Err(e) if e.is_connect() => DispatchOutcome::Failed {
                retryable: true,
                reason: format!("cannot connect to AgentKit: {e}"),
            },
            Err(e) => DispatchOutcome::Failed {
                retryable: true,
                reason: format!("request to AgentKit failed: {e}"),
            },
        };
        tracing::info!(agent_id = %req.agent_id, opscore_task_id = %req.dispatch_id, ?outcome, "dispatch");
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opscore_core::ids::{AgentId, SessionId};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    fn request(agent: &str) -> DispatchRequest {
        DispatchRequest {
            agent_id: AgentId::parse(agent).unwrap(),
            session_id: SessionId::new(),
            dispatch_id: "s:t:1".into(),
            task_name: "t".into(),
            payload: json!({"x": 1}),
        }
    }

    /// Reads one request's head (and a body of `Content-Length` bytes); returns the request line.
    async fn read_request(sock: &mut TcpStream) -> String {
        let mut buf = Vec::new();
        let mut byte = [0u8; 1024];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = sock.read(&mut byte).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&byte[..n]);
        }
        let head = String::from_utf8_lossy(&buf).into_owned();
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        let body_start = head.find("\r\n\r\n").map(|i| i + 4).unwrap_or(buf.len());
        let mut have = buf.len() - body_start;
        while have < len {
            let n = sock.read(&mut byte).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            have += n;
        }
        head.lines().next().unwrap_or_default().to_owned()
    }

    /// A server answering every request with `answer`, counting the requests it saw.
    async fn server(answer: String) -> (String, Arc<AtomicUsize>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let seen = Arc::new(AtomicUsize::new(0));
        let counter = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = l.accept().await {
                let answer = answer.clone();
                let counter = counter.clone();
                tokio::spawn(async move {
                    read_request(&mut sock).await;
                    counter.fetch_add(1, Ordering::SeqCst);
                    let _ = sock.write_all(answer.as_bytes()).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        (url, seen)
    }

    /// Issue 13, defect 3: a 302 or 307 from AgentKit is a failed attempt of its own kind; the
    /// redirect is not followed (neither as a GET nor by re-posting the task elsewhere).
    #[tokio::test]
    async fn dispatch_does_not_follow_redirects() {
        let ok = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok".to_string();
        let (elsewhere, elsewhere_seen) = server(ok).await;
        for status in [
            "302 Found",
            "307 Temporary Redirect",
            "308 Permanent Redirect",
            "301 Moved Permanently",
        ] {
            let answer = format!(
                "HTTP/1.1 {status}\r\nlocation: {elsewhere}/v1/agents/a1/run\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
            let (url, seen) = server(answer).await;
            let client = AgentKitClient::new(&url).unwrap();
            let outcome = client.dispatch(&request("a1")).await;
            assert_eq!(seen.load(Ordering::SeqCst), 1, "{status}");
            assert_eq!(
                elsewhere_seen.load(Ordering::SeqCst),
                0,
                "{status}: the redirect was followed"
            );
            // (Matched through Debug so this test compiled, and failed, before the variant existed.)
            let shown = format!("{outcome:?}");
            assert!(
                shown.starts_with("Redirected"),
                "{status}: expected Redirected, got {shown}"
            );
            assert!(shown.contains(&status[..3]), "{status}: {shown}");
            assert!(shown.contains("/v1/agents/a1/run"), "{status}: {shown}");
        }
    }

    /// Issue 13, defect 2: the dispatch URL is built from percent-encoded path segments.
    #[test]
    fn run_url_is_built_from_encoded_segments() {
        let base = Url::parse("http://agentkit.internal:8000/prefix/").unwrap();
        let url = |base: &Url, agent: &str| AgentKitClient::run_url(base, agent).map(|u| u.to_string());
        assert_eq!(
            url(&base, "af8e59ab-6b62").as_deref(),
            Some("http://agentkit.internal:8000/prefix/v1/agents/af8e59ab-6b62/run")
        );
        let bare = Url::parse("http://h:1").unwrap();
        assert_eq!(url(&bare, "a.b_c").as_deref(), Some("http://h:1/v1/agents/a.b_c/run"));
        // Whatever reaches it, one segment stays one segment.
        assert_eq!(
            url(&bare, "a/../b?x#y %").as_deref(),
            Some("http://h:1/v1/agents/a%2F..%2Fb%3Fx%23y%20%25/run")
        );
        for dots in ["", ".", ".."] {
            assert_eq!(url(&bare, dots), None, "{dots:?}");
        }
        assert!(AgentKitClient::new("ftp://x").is_err());
        assert!(AgentKitClient::new("not a url").is_err());
    }

    /// Issue 13, defect 4: at most a small prefix of AgentKit's answer is read; the rest is
    /// dropped (the connection is closed) and the reason stays short.
    #[tokio::test]
    async fn dispatch_reads_a_bounded_prefix_of_the_answer() {
        const TOTAL: usize = 32 << 20;
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let sent = Arc::new(AtomicUsize::new(0));
        let counter = sent.clone();
        let server = tokio::spawn(async move {
            let (mut sock, _) = l.accept().await.unwrap();
            read_request(&mut sock).await;
            let head = format!("HTTP/1.1 500 Internal Server Error\r\ncontent-length: {TOTAL}\r\n\r\n");
            sock.write_all(head.as_bytes()).await.unwrap();
            let chunk = vec![b'x'; 64 << 10];
            while counter.load(Ordering::SeqCst) < TOTAL {
                match sock.write_all(&chunk).await {
                    Ok(()) => counter.fetch_add(chunk.len(), Ordering::SeqCst),
                    Err(_) => break,
                };
            }
        });
        let client = AgentKitClient::new(&url).unwrap();
        let outcome = client.dispatch(&request("a1")).await;
        let DispatchOutcome::Failed { retryable, reason } = outcome else {
            panic!("expected a failure, got {outcome:?}");
        };
        assert!(retryable);
        assert!(reason.len() <= 1024, "reason of {} bytes", reason.len());
        assert!(reason.contains("500"), "{reason}");
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("the server saw the connection close")
            .unwrap();
        let sent = sent.load(Ordering::SeqCst);
        assert!(
            sent < TOTAL / 4,
            "the client kept reading: {sent} of {TOTAL} bytes were accepted"
        );
    }
}
