//! Wire shapes of the state API, shared by the server (opscore-http) and the client SDK.
//! Field names follow the original Ops-Core (camelCase).

pub mod paths;

use opscore_core::agent::{Agent, CurrentState, HistoryEntry};
use opscore_core::session::{FailureCause, SessionStatus};
use opscore_core::store::{SessionView, StoredWorkflow};
use opscore_core::task::Attempt;
use opscore_core::time::render;
use opscore_core::workflow::WorkflowDefinition;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Health {
    pub status: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Accepted {
    pub status: String,
    pub message: String,
}

/// `POST /v1/opscore/agent/{agentId}/state` body.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StateUpdateRequest {
    pub agent_id: String,
    /// RFC 3339 with `Z` or an offset.
    #[schema(format = DateTime)]
    pub timestamp: String,
    /// Known states (`UNKNOWN`, `initializing`, `idle`, `active`, `error`, `finished`) are matched
    /// case-insensitively; others are kept verbatim. 1–64 characters.
    pub state: String,
    #[schema(value_type = Option<Object>)]
    pub details: Option<Map<String, Value>>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StateUpdateAccepted {
    pub status: String,
    pub message: String,
    /// False when the report was older than the stored state: kept in history only.
    pub applied: bool,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentStateView {
    pub agent_id: String,
    pub state: String,
    #[schema(value_type = Option<Object>)]
    pub details: Option<Map<String, Value>>,
    #[schema(format = DateTime)]
    pub timestamp: String,
    /// Counts applied reports.
    pub version: u64,
}

impl AgentStateView {
    pub fn new(agent_id: &str, s: &CurrentState) -> Self {
        Self {
            agent_id: agent_id.to_owned(),
            state: s.state.to_string(),
            details: s.details.clone(),
            timestamp: render(s.timestamp),
            version: s.version,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentView {
    pub agent_id: String,
    pub agent_name: String,
    pub version: String,
    pub capabilities: Vec<String>,
    pub contact_endpoint: String,
    #[schema(value_type = Object)]
    pub metadata: Map<String, Value>,
    /// AgentKit's registration time, when it sent one; otherwise when Ops-Core learned of the agent.
    #[schema(format = DateTime)]
    pub registration_time: String,
    #[schema(format = DateTime)]
    pub registered_at: String,
    pub deregistered: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    pub deregistered_at: Option<String>,
    pub state: AgentStateView,
    /// The `opscore_task_id` of the task the agent is working on for Ops-Core, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inflight_task: Option<String>,
}

impl From<&Agent> for AgentView {
    fn from(a: &Agent) -> Self {
        let d = &a.details;
        Self {
            agent_id: d.agent_id.to_string(),
            agent_name: d.agent_name.clone(),
            version: d.version.clone(),
            capabilities: d.capabilities.clone(),
            contact_endpoint: d.contact_endpoint.clone(),
            metadata: d.metadata.clone(),
            registration_time: render(d.registration_time.unwrap_or(a.registered_at)),
            registered_at: render(a.registered_at),
            deregistered: a.is_deregistered(),
            deregistered_at: a.deregistered_at.map(render),
            state: AgentStateView::new(d.agent_id.as_str(), &a.current),
            inflight_task: a.inflight.as_ref().map(|i| i.dispatch.render()),
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEntryView {
    pub state: String,
    #[schema(value_type = Option<Object>)]
    pub details: Option<Map<String, Value>>,
    #[schema(format = DateTime)]
    pub timestamp: String,
    #[schema(format = DateTime)]
    pub received_at: String,
    /// Whether this report became the current state (false: it arrived out of order).
    pub applied: bool,
}

impl From<&HistoryEntry> for HistoryEntryView {
    fn from(h: &HistoryEntry) -> Self {
        Self {
            state: h.state.to_string(),
            details: h.details.clone(),
            timestamp: render(h.timestamp),
            received_at: render(h.received_at),
            applied: h.applied,
        }
    }
}

/// A page of results; pass `nextCursor` back as `cursor` for the next one.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PageView<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowSummary {
    pub id: String,
    pub name: String,
    pub version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub task_count: usize,
    #[schema(format = DateTime)]
    pub created_at: String,
}

impl From<&StoredWorkflow> for WorkflowSummary {
    fn from(w: &StoredWorkflow) -> Self {
        let d = &w.definition;
        Self {
            id: d.id.to_string(),
            name: d.name.clone(),
            version: d.version.to_string(),
            description: d.description.clone(),
            task_count: d.tasks.len(),
            created_at: render(w.created_at),
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowView {
    #[serde(flatten)]
    pub definition: WorkflowDefinition,
    #[schema(format = DateTime)]
    pub created_at: String,
}

impl From<StoredWorkflow> for WorkflowView {
    fn from(w: StoredWorkflow) -> Self {
        Self {
            created_at: render(w.created_at),
            definition: w.definition,
        }
    }
}

/// `POST /v1/opscore/agent/{agentId}/workflow` body: exactly one of the two definition fields.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TriggerRequest {
    pub workflow_definition_id: Option<String>,
    /// With `workflowDefinitionId`: a version (default: the newest).
    pub workflow_version: Option<String>,
    pub workflow_definition: Option<WorkflowDefinition>,
    /// The entry task's payload (default: its `parameters`).
    #[schema(value_type = Option<Object>)]
    pub initial_payload: Option<Value>,
    /// Route this session's tasks that name `agentCapability` to any available agent announcing
    /// it, whatever the definition's `routeByCapability` says (default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_by_capability: Option<bool>,
}

/// `POST /v1/opscore/workflows/{workflowId}/sessions` body: a session of a stored definition
/// whose every task is routed by capability, started without naming an agent.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StartRoutedRequest {
    /// A version of the definition (default: the newest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow_version: Option<String>,
    /// The entry task's payload (default: its `parameters`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub initial_payload: Option<Value>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TriggerResponse {
    pub session_id: String,
    pub workflow_id: String,
    pub message: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionSummary {
    pub session_id: String,
    pub workflow_id: String,
    pub workflow_version: String,
    pub agent_id: String,
    pub status: SessionStatus,
    #[schema(format = DateTime)]
    pub start_time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    pub end_time: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskView {
    pub task_id: String,
    pub name: String,
    /// `waiting` (its predecessor has not finished), or the task instance's status.
    pub status: String,
    /// The agent the task runs (or ran) on: the session's agent, or for a task routed by
    /// capability the agent that claimed its latest attempt (absent until one did).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// The capability the task is routed by (absent for a task that runs on the session's agent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capability: Option<String>,
    pub attempt: u32,
    pub max_retries: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    pub due_at: Option<String>,
    pub attempts: Vec<Attempt>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub result: Option<Map<String, Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    pub created_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    pub updated_at: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionDetail {
    #[serde(flatten)]
    pub summary: SessionSummary,
    #[schema(value_type = Option<Object>)]
    pub result: Option<Value>,
    pub error: Option<FailureCause>,
    /// In workflow order, including tasks not reached yet.
    pub tasks: Vec<TaskView>,
}

fn summary(s: &opscore_core::session::Session) -> SessionSummary {
    SessionSummary {
        session_id: s.session_id.to_string(),
        workflow_id: s.definition.id.to_string(),
        workflow_version: s.definition.version.to_string(),
        agent_id: s.agent_id.to_string(),
        status: s.status,
        start_time: render(s.start_time),
        end_time: s.end_time.map(render),
    }
}

impl From<&opscore_core::session::Session> for SessionSummary {
    fn from(s: &opscore_core::session::Session) -> Self {
        summary(s)
    }
}

impl From<&SessionView> for SessionDetail {
    fn from(v: &SessionView) -> Self {
        let s = &v.session;
        // Walk the chain from the entry task so tasks appear in the order they run.
        let mut tasks = Vec::new();
        let mut at = Some(s.definition.entry());
        let mut guard = 0;
        while let Some(def) = at {
            guard += 1;
            if guard > s.definition.tasks.len() {
                break;
            }
            let view = match v.tasks.iter().find(|t| t.task_id == def.task_id) {
                Some(t) => TaskView {
                    task_id: t.task_id.to_string(),
                    name: t.name.clone(),
                    status: t.status.as_str().to_owned(),
                    agent_id: (t.capability.is_none() || t.attempt > 0).then(|| t.agent_id.to_string()),
                    capability: t.capability.clone(),
                    attempt: t.attempt,
                    max_retries: t.max_retries,
                    due_at: (t.status == opscore_core::task::TaskStatus::Pending).then(|| render(t.due_at)),
                    attempts: t.attempts.clone(),
                    result: t.result.clone(),
                    last_error: t.last_error.clone(),
                    created_at: Some(render(t.created_at)),
                    updated_at: Some(render(t.updated_at)),
                },
                None => TaskView {
                    task_id: def.task_id.to_string(),
                    name: def.name.clone(),
                    status: "waiting".into(),
                    agent_id: None,
                    capability: s.definition.routed_capability(def).map(str::to_owned),
                    attempt: 0,
                    max_retries: s.definition.max_retries_for(def),
                    due_at: None,
                    attempts: Vec::new(),
                    result: None,
                    last_error: None,
                    created_at: None,
                    updated_at: None,
                },
            };
            tasks.push(view);
            at = def.next_task_id.as_ref().and_then(|n| s.definition.task(n));
        }
        Self {
            summary: summary(s),
            result: s.result.clone(),
            error: s.error.clone(),
            tasks,
        }
    }
}
