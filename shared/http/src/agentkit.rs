//! The AgentKit client: `POST {AGENTKIT_API_URL}/v1/agents/{agentId}/run`, exactly as the
//! contract describes (top-level `opscore_task_id`, `opscore_session_id`, `task_name`).

use async_trait::async_trait;
use opscore_core::runner::{DispatchOutcome, DispatchRequest, Dispatcher};
use serde_json::json;
use std::time::Duration;

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
pub const TOTAL_TIMEOUT: Duration = Duration::from_secs(10);

pub struct AgentKitClient {
    base_url: String,
    http: reqwest::Client,
}

impl AgentKitClient {
    pub fn new(base_url: &str) -> Result<Self, reqwest::Error> {
        Self::with_timeouts(base_url, CONNECT_TIMEOUT, TOTAL_TIMEOUT)
    }

    pub fn with_timeouts(base_url: &str, connect: Duration, total: Duration) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(connect)
            .timeout(total)
            .build()?;
        Ok(Self {
            base_url: base_url.trim_end_matches('/').to_owned(),
            http,
        })
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

#[async_trait]
impl Dispatcher for AgentKitClient {
    async fn dispatch(&self, req: &DispatchRequest) -> DispatchOutcome {
        let url = format!("{}/v1/agents/{}/run", self.base_url, req.agent_id);
        let resp = self.http.post(&url).json(&Self::body(req)).send().await;
        let outcome = match resp {
            Ok(r) if r.status().is_success() => DispatchOutcome::Accepted,
            Ok(r) => {
                let status = r.status();
                let text: String = r.text().await.unwrap_or_default().chars().take(300).collect();
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
