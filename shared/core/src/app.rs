//! The use cases behind the HTTP routes: agent lifecycle, definitions, triggers, sessions.

use crate::agent::{Agent, AgentDetails, CurrentState, HistoryEntry, StateName, StateReport};
use crate::error::AppError;
use crate::ids::{AgentId, IdempotencyKey, SessionId, WorkflowId, WorkflowVersion};
use crate::metrics::Metrics;
use crate::session::{FailureCause, FailureCode, Session, SessionStatus};
use crate::store::*;
use crate::task::TaskInstance;
use crate::time::{Clock, Timestamp};
use crate::workflow::WorkflowDefinition;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

/// How many times a use case (or a runner step) re-reads and decides again after one of its
/// conditional writes failed because something changed the item in between. The DynamoDB adapter
/// has its own, lower-level retry of writes a concurrent transaction cancelled.
pub(crate) const LOST_WRITE_RETRIES: usize = 8;

/// The engine's settings: the section of [`crate::config::Config`] (`config.engine`) that the use
/// cases and the runner read. Read from the environment only by `Config::from_env`; tests build
/// it directly.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// How long a state report stays in history (`OPSCORE_HISTORY_RETENTION_DAYS`).
    pub history_retention: Duration,
    pub idempotency_ttl: Duration,
    /// A fresh task is looked at again by the sweep after this long if no change event got it
    /// dispatched (a safety net for a lost stream record).
    pub recheck_after: Duration,
    /// How long a runner holds a claimed task before AgentKit must have accepted it; past it the
    /// sweep ends the attempt (`OPSCORE_LEASE_SECONDS`).
    pub lease: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            history_retention: Duration::from_secs(30 * 86_400),
            idempotency_ttl: Duration::from_secs(86_400),
            recheck_after: Duration::from_secs(30),
            lease: Duration::from_secs(30),
        }
    }
}

#[derive(Clone)]
pub struct App {
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    pub settings: Settings,
    /// Where the use cases' figures go (the global recorder unless [`App::with_metrics`]).
    pub metrics: Metrics,
}

/// Where a trigger's definition comes from.
#[derive(Debug, Clone)]
pub enum DefinitionSource {
    Stored {
        id: WorkflowId,
        version: Option<WorkflowVersion>,
    },
    Inline(Box<WorkflowDefinition>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Triggered {
    pub session_id: SessionId,
    pub workflow_id: WorkflowId,
    /// False when an `Idempotency-Key` matched an earlier trigger.
    pub created: bool,
}

/// What an `Idempotency-Key` is bound to: SHA-256 (hex) of the trigger as the API read it (the
/// agent, the definition named or given inline, the initial payload), as canonical JSON (object
/// keys sorted), so the same request in other spelling or key order has the same fingerprint.
pub fn trigger_fingerprint(agent_id: &AgentId, source: &DefinitionSource, payload: Option<&Value>) -> String {
    use sha2::{Digest, Sha256};
    let source = match source {
        DefinitionSource::Stored { id, version } => serde_json::json!({
            "workflowDefinitionId": id.as_str(),
            "version": version.as_ref().map(WorkflowVersion::as_str),
        }),
        DefinitionSource::Inline(d) => serde_json::json!({
            "workflowDefinition": serde_json::to_value(d.as_ref()).unwrap_or(Value::Null),
        }),
    };
    let request = serde_json::json!([agent_id.as_str(), source, payload]);
    let mut canonical = String::new();
    write_canonical(&request, &mut canonical);
    hex::encode(Sha256::digest(canonical.as_bytes()))
}

/// JSON with object keys sorted at every level (whatever order a map keeps them in).
fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(&m[k], out);
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(x, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

impl App {
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>, settings: Settings) -> Self {
        Self {
            store,
            clock,
            settings,
            metrics: Metrics::global(),
        }
    }

    /// The same use cases, recording their figures into `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Commits `writes` of a session of `workflow` (or of none) through [`Metrics::commit`].
    pub(crate) async fn commit(&self, workflow: Option<&WorkflowId>, writes: Vec<Write>) -> Result<(), CommitError> {
        self.metrics.commit(self.store.as_ref(), workflow, writes).await
    }

    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    // ----- agents -----

    pub async fn register_agent(&self, details: AgentDetails) -> Result<RegisterOutcome, AppError> {
        if details.agent_id.as_str() == crate::session::ROUTED_POOL {
            let why = format!(
                "agent id {:?} is reserved: sessions started without an agent are listed under it",
                crate::session::ROUTED_POOL
            );
            return Err(AppError::invalid(
                why.clone(),
                vec![crate::workflow::Problem::new("agentId", why)],
            ));
        }
        Ok(self.store.register_agent(details, self.now()).await?)
    }

    pub async fn deregister_agent(&self, id: &AgentId) -> Result<Agent, AppError> {
        self.store
            .deregister_agent(id, self.now())
            .await
            .map_err(|e| AppError::agent_write(e, id))
    }

    pub async fn report_state(&self, report: &StateReport) -> Result<ReportOutcome, AppError> {
        self.store
            .report_state(report, self.now(), self.settings.history_retention)
            .await
            .map_err(|e| AppError::agent_write(e, &report.agent_id))
    }

    pub async fn agent(&self, id: &AgentId) -> Result<Agent, AppError> {
        self.store
            .get_agent(id)
            .await?
            .ok_or_else(|| AppError::agent_not_found(id))
    }

    pub async fn agent_state(&self, id: &AgentId) -> Result<CurrentState, AppError> {
        Ok(self.agent(id).await?.current)
    }

    pub async fn list_agents(&self, state: Option<&StateName>, page: PageRequest) -> Result<Page<Agent>, AppError> {
        Ok(self.store.list_agents(state, page).await?)
    }

    pub async fn history(&self, id: &AgentId, page: PageRequest) -> Result<Page<HistoryEntry>, AppError> {
        // An unknown agent is a 404, not an empty page.
        self.agent(id).await?;
        Ok(self.store.state_history(id, page).await?)
    }

    // ----- workflow definitions -----

    pub async fn create_workflow(&self, def: WorkflowDefinition) -> Result<(StoredWorkflow, bool), AppError> {
        match self.store.put_workflow(&def, self.now()).await? {
            PutWorkflowOutcome::Created(w) => Ok((w, true)),
            PutWorkflowOutcome::Identical(w) => Ok((w, false)),
            PutWorkflowOutcome::Conflict(_) => Err(AppError::Conflict(format!(
                "workflow {} version {} exists with different content; definitions are immutable, give the change a new version",
                def.id, def.version
            ))),
        }
    }

    pub async fn workflow(
        &self,
        id: &WorkflowId,
        version: Option<&WorkflowVersion>,
    ) -> Result<StoredWorkflow, AppError> {
        self.store
            .get_workflow(id, version)
            .await?
            .ok_or_else(|| AppError::workflow_not_found(id, version))
    }

    pub async fn list_workflows(&self, page: PageRequest) -> Result<Page<StoredWorkflow>, AppError> {
        Ok(self.store.list_workflows(page).await?)
    }

    // ----- triggers and sessions -----

    /// Starts a session on `agent_id` (registered, not deregistered): the session, its entry
    /// task and the idempotency key in one transaction.
    pub async fn trigger(
        &self,
        agent_id: &AgentId,
        source: DefinitionSource,
        initial_payload: Option<Value>,
        idempotency_key: Option<IdempotencyKey>,
    ) -> Result<Triggered, AppError> {
        self.trigger_with(agent_id, source, initial_payload, idempotency_key, false)
            .await
    }

    /// [`Self::trigger`], with routing by capability switched on for this session
    /// (`route_by_capability`) whatever the definition says (issue 18): the session's snapshot of
    /// the definition routes its tasks that name `agentCapability`.
    pub async fn trigger_with(
        &self,
        agent_id: &AgentId,
        source: DefinitionSource,
        initial_payload: Option<Value>,
        idempotency_key: Option<IdempotencyKey>,
        route_by_capability: bool,
    ) -> Result<Triggered, AppError> {
        let agent = self.agent(agent_id).await?;
        if agent.is_deregistered() {
            return Err(AppError::agent_deregistered(agent_id));
        }
        let mut fingerprint = trigger_fingerprint(agent_id, &source, initial_payload.as_ref());
        if route_by_capability {
            // Another request than the same trigger without the switch.
            fingerprint.push_str("+routed");
        }
        let mut definition = self.definition_of(source).await?;
        if route_by_capability && !definition.route_by_capability {
            definition.route_by_capability = true;
            let problems = definition.validate();
            if !problems.is_empty() {
                return Err(AppError::invalid(
                    "the definition cannot be routed by capability",
                    problems,
                ));
            }
        }
        self.start_session(agent_id, definition, initial_payload, idempotency_key, fingerprint)
            .await
    }

    /// Starts a session of a definition every task of which is routed by capability, without
    /// naming an agent (issue 18): its tasks go to available agents announcing their
    /// capabilities; it is listed under the reserved id [`crate::session::ROUTED_POOL`].
    pub async fn start_routed(
        &self,
        source: DefinitionSource,
        initial_payload: Option<Value>,
        idempotency_key: Option<IdempotencyKey>,
    ) -> Result<Triggered, AppError> {
        let pool = AgentId::parse(crate::session::ROUTED_POOL).expect("a valid agent id");
        let fingerprint = trigger_fingerprint(&pool, &source, initial_payload.as_ref());
        let definition = self.definition_of(source).await?;
        if !definition.routes_every_task() {
            let p: Vec<_> = definition
                .tasks
                .iter()
                .enumerate()
                .filter(|(_, t)| definition.routed_capability(t).is_none())
                .map(|(i, _)| {
                    crate::workflow::Problem::new(
                        format!("tasks[{i}].agentCapability"),
                        "a session without an agent needs every task routed: set routeByCapability and name agentCapability",
                    )
                })
                .collect();
            let p = if definition.route_by_capability {
                p
            } else {
                vec![crate::workflow::Problem::new(
                    "routeByCapability",
                    "a session without an agent needs a definition routed by capability",
                )]
            };
            return Err(AppError::invalid(
                "a session without an agent needs every task routed by capability",
                p,
            ));
        }
        self.start_session(&pool, definition, initial_payload, idempotency_key, fingerprint)
            .await
    }

    async fn definition_of(&self, source: DefinitionSource) -> Result<WorkflowDefinition, AppError> {
        Ok(match source {
            DefinitionSource::Inline(d) => *d,
            DefinitionSource::Stored { id, version } => self.workflow(&id, version.as_ref()).await?.definition,
        })
    }

    /// The session, its entry task and the idempotency key (bound to `fingerprint`) in one
    /// transaction.
    async fn start_session(
        &self,
        agent_id: &AgentId,
        definition: WorkflowDefinition,
        initial_payload: Option<Value>,
        idempotency_key: Option<IdempotencyKey>,
        fingerprint: String,
    ) -> Result<Triggered, AppError> {
        let now = self.now();
        let workflow_id = definition.id.clone();
        let entry = definition.entry().clone();
        let payload = match &initial_payload {
            Some(p) => p.clone(),
            None => Value::Object(entry.parameters.clone()),
        };
        let session = Session::start(
            agent_id.clone(),
            definition,
            initial_payload,
            idempotency_key.clone(),
            now,
        );
        let task = TaskInstance::new(&session, &entry, payload, now, self.settings.recheck_after);
        let session_id = session.session_id;
        let mut writes = Vec::new();
        if let Some(key) = &idempotency_key {
            writes.push(Write::CreateIdempotencyKey {
                agent_id: agent_id.clone(),
                key: key.clone(),
                session_id,
                fingerprint: fingerprint.clone(),
                ttl: self.settings.idempotency_ttl,
            });
        }
        writes.push(Write::CreateSession(session));
        writes.push(Write::CreateTask(task));
        match self.commit(Some(&workflow_id), writes).await {
            Ok(()) => Ok(Triggered {
                session_id,
                workflow_id,
                created: true,
            }),
            Err(CommitError::Conflict {
                existing:
                    Some(Existing::IdempotencyKey {
                        session_id: existing,
                        fingerprint: stored,
                    }),
                ..
            }) => {
                // A key is bound to the request it first came with (a key stored before
                // fingerprints were kept has none and is taken as the same request).
                if stored.as_ref().is_some_and(|f| *f != fingerprint) {
                    let key = idempotency_key.as_ref().map(IdempotencyKey::as_str).unwrap_or_default();
                    return Err(AppError::invalid(
                        format!(
                            "Idempotency-Key {key:?} was already used with a different request (session {existing}); \
                             a key is bound to the request it first came with: send that request again, or use a new key"
                        ),
                        vec![crate::workflow::Problem::new(
                            "Idempotency-Key",
                            "already used with a different request body",
                        )],
                    ));
                }
                let view = self.session(&existing).await?;
                Ok(Triggered {
                    session_id: existing,
                    workflow_id: view.session.definition.id,
                    created: false,
                })
            }
            Err(e) => Err(e.into()),
        }
    }

    pub async fn session(&self, id: &SessionId) -> Result<SessionView, AppError> {
        self.store
            .get_session(id)
            .await?
            .ok_or_else(|| AppError::session_not_found(id))
    }

    pub async fn list_sessions(&self, agent: &AgentId, page: PageRequest) -> Result<Page<Session>, AppError> {
        // The pool of sessions started without an agent is no agent, and always exists.
        if agent.as_str() != crate::session::ROUTED_POOL {
            self.agent(agent).await?;
        }
        Ok(self.store.list_sessions(agent, page).await?)
    }

    /// The latest sessions of every agent, newest first; with `status`, only those in it.
    pub async fn list_sessions_across_agents(
        &self,
        status: Option<SessionStatus>,
        page: PageRequest,
    ) -> Result<Page<Session>, AppError> {
        Ok(self.store.list_sessions_across_agents(status, page).await?)
    }

    /// Cancels a session that has not ended: the session, its open task and the agent's
    /// in-flight marker change together. An ended session answers 409 with its status.
    pub async fn cancel_session(&self, id: &SessionId) -> Result<SessionView, AppError> {
        for _ in 0..LOST_WRITE_RETRIES {
            let view = self.session(id).await?;
            if view.session.status.is_terminal() {
                return Err(AppError::Conflict(format!(
                    "Session {id} has already ended: {}",
                    view.session.status.as_str()
                )));
            }
            let now = self.now();
            let mut next = view
                .session
                .transition(SessionStatus::Cancelled, now)
                .map_err(|e| AppError::Conflict(e.to_string()))?;
            next.error = Some(FailureCause {
                code: FailureCode::Cancelled,
                message: "Session cancelled by request".into(),
                task_id: None,
                attempts: None,
                last_error: None,
            });
            let mut writes = vec![Write::TransitionSession {
                from: view.session.status,
                next,
            }];
            for t in view.tasks.iter().filter(|t| !t.status.is_terminal()) {
                if let Some(dispatch) = t.current_dispatch() {
                    writes.push(Write::ReleaseAgent {
                        agent_id: t.agent_id.clone(),
                        dispatch,
                    });
                }
                // Open tasks only (filtered above), so the task table allows it.
                let next = t
                    .cancel(now, "session cancelled")
                    .map_err(|e| AppError::Conflict(e.to_string()))?;
                writes.push(Write::TransitionTask { from: t.status, next });
            }
            match self.commit(Some(&view.session.definition.id), writes).await {
                Ok(()) => return self.session(id).await,
                Err(CommitError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(AppError::Unavailable(
            "the session kept changing while it was being cancelled; retry".into(),
        ))
    }
}
