//! The engine's figures (docs/operations.md): what the use cases and the runner count, derived in
//! one place ([`Metrics::commit`]) from the writes they commit, so a rule ("a task retried is a
//! task that went back to pending from an attempt") lives here and nowhere else.
//!
//! Recorded through the [`metrics`] facade, so the core names no sink: on Lambda the recorder is
//! the CloudWatch embedded-metric-format collector (opscore-lambda), in the local stack a
//! Prometheus recorder served at `GET /metrics` (opscore-local), in tests a debugging recorder.
//!
//! Dimensions have bounded cardinality: a workflow id (what an operator defines, a handful), a
//! failure code or a refusal reason (closed sets), a write kind. Never an agent or a session id:
//! each distinct dimension value is a CloudWatch metric of its own.

use crate::ids::WorkflowId;
use crate::session::SessionStatus;
use crate::store::{CommitError, Store, Write};
use crate::task::TaskStatus;
use crate::time::Timestamp;
use metrics::{Key, Label, Level, Metadata, Recorder, Unit};
use std::sync::Arc;

/// Metric and dimension names, shared by the sinks, the template's alarms and dashboard, and the docs.
pub mod names {
    /// Task attempts claimed and sent to AgentKit. Dimension: workflow.
    pub const TASKS_DISPATCHED: &str = "tasks_dispatched";
    /// Tasks that ended succeeded. Dimension: workflow.
    pub const TASKS_SUCCEEDED: &str = "tasks_succeeded";
    /// Failed attempts that were scheduled for another attempt. Dimension: workflow.
    pub const TASKS_RETRIED: &str = "tasks_retried";
    /// Tasks that ended failed. Dimensions: workflow, reason (the session's failure code).
    pub const TASKS_FAILED: &str = "tasks_failed";
    /// From a session's trigger to its first task's first dispatch, in milliseconds. Dimension: workflow.
    pub const TRIGGER_TO_DISPATCH_MS: &str = "trigger_to_dispatch_ms";
    /// From the claim of a task's successful attempt to its completion, in milliseconds. Dimension: workflow.
    pub const TASK_RUN_TIME_MS: &str = "task_run_time_ms";
    /// Sessions that ended completed. Dimension: workflow.
    pub const SESSIONS_COMPLETED: &str = "sessions_completed";
    /// Sessions that ended failed. Dimensions: workflow, reason (the failure code).
    pub const SESSIONS_FAILED: &str = "sessions_failed";
    /// Sessions cancelled by request. Dimension: workflow.
    pub const SESSIONS_CANCELLED: &str = "sessions_cancelled";
    /// Webhook deliveries answered with an error. Dimension: reason (the error body's `code`).
    pub const WEBHOOK_DELIVERIES_REFUSED: &str = "webhook_deliveries_refused";
    /// Transactions refused because a condition no longer held. Dimension: write (the write whose
    /// condition failed, e.g. `ClaimAgent`: the agent was taken).
    pub const WRITE_CONFLICTS: &str = "write_conflicts";

    pub const WORKFLOW: &str = "workflow_id";
    pub const REASON: &str = "reason";
    pub const WRITE: &str = "write";

    /// Every metric with its unit and description.
    pub const ALL: [(&str, super::Unit, &str); 11] = [
        (
            TASKS_DISPATCHED,
            super::Unit::Count,
            "task attempts claimed and sent to AgentKit",
        ),
        (TASKS_SUCCEEDED, super::Unit::Count, "tasks that ended succeeded"),
        (
            TASKS_RETRIED,
            super::Unit::Count,
            "failed attempts scheduled for a retry",
        ),
        (
            TASKS_FAILED,
            super::Unit::Count,
            "tasks that ended failed, by failure code",
        ),
        (
            TRIGGER_TO_DISPATCH_MS,
            super::Unit::Milliseconds,
            "from a trigger to its first dispatch",
        ),
        (
            TASK_RUN_TIME_MS,
            super::Unit::Milliseconds,
            "from claim to completion of a successful attempt",
        ),
        (SESSIONS_COMPLETED, super::Unit::Count, "sessions that ended completed"),
        (
            SESSIONS_FAILED,
            super::Unit::Count,
            "sessions that ended failed, by failure code",
        ),
        (SESSIONS_CANCELLED, super::Unit::Count, "sessions cancelled by request"),
        (
            WEBHOOK_DELIVERIES_REFUSED,
            super::Unit::Count,
            "webhook deliveries refused, by reason",
        ),
        (
            WRITE_CONFLICTS,
            super::Unit::Count,
            "transactions refused by a failed condition, by write",
        ),
    ];
}

/// Where the figures go: the process's global recorder (the default; none installed = nowhere),
/// or a recorder of its own (the local stack's Prometheus recorder, a test's).
#[derive(Clone, Default)]
pub struct Metrics {
    recorder: Option<Arc<dyn Recorder + Send + Sync>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.recorder.is_some() {
            "Metrics(own recorder)"
        } else {
            "Metrics(global recorder)"
        })
    }
}

const METADATA: Metadata<'static> = Metadata::new("opscore", Level::INFO, Some(module_path!()));

impl Metrics {
    /// Records into the global recorder of the `metrics` facade (whatever the process installed).
    pub fn global() -> Self {
        Self::default()
    }

    /// Records into `recorder`, and tells it every metric's unit and description.
    pub fn to(recorder: Arc<dyn Recorder + Send + Sync>) -> Self {
        describe(recorder.as_ref());
        Self {
            recorder: Some(recorder),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&dyn Recorder) -> T) -> T {
        match &self.recorder {
            Some(r) => f(r.as_ref()),
            None => metrics::with_recorder(f),
        }
    }

    fn count(&self, name: &'static str, labels: Vec<Label>) {
        self.record(Figure::Count(name, labels));
    }

    fn record(&self, figure: Figure) {
        self.with(|r| match figure {
            Figure::Count(name, labels) => r
                .register_counter(&Key::from_parts(name, labels), &METADATA)
                .increment(1),
            Figure::Millis(name, labels, ms) => r
                .register_histogram(&Key::from_parts(name, labels), &METADATA)
                .record(ms),
        });
    }

    /// Commits `writes` (the writes of one session of workflow `workflow`, or of none) and records
    /// what they did once committed, or the conflict that refused them. Every commit of the use
    /// cases and the runner goes through here.
    pub async fn commit(
        &self,
        store: &dyn Store,
        workflow: Option<&WorkflowId>,
        writes: Vec<Write>,
    ) -> Result<(), CommitError> {
        // Read before the writes move into the store; recorded only if they commit.
        let figures = workflow.map(|w| observe(w, &writes)).unwrap_or_default();
        let result = store.commit(writes).await;
        match &result {
            Ok(()) => figures.into_iter().for_each(|f| self.record(f)),
            // The variant's name: a closed set (WriteKind), as docs/table-design.md names the writes.
            Err(CommitError::Conflict { write, .. }) => self.count(
                names::WRITE_CONFLICTS,
                vec![Label::new(names::WRITE, format!("{write:?}"))],
            ),
            Err(CommitError::Store(_)) => {}
        }
        result
    }

    /// A webhook delivery was refused; `reason_code` is the error body's machine-readable code.
    pub fn webhook_refused(&self, reason_code: &'static str) {
        self.count(names::WEBHOOK_DELIVERIES_REFUSED, vec![reason(Some(reason_code))]);
    }
}

/// One figure a committed transaction adds.
enum Figure {
    Count(&'static str, Vec<Label>),
    Millis(&'static str, Vec<Label>, f64),
}

fn millis(from: Timestamp, to: Timestamp) -> f64 {
    (to - from).num_milliseconds().max(0) as f64
}

/// What a transaction does, from its writes (the rules, in one place): a claim is a task
/// dispatched, and so is a task created claimed (a hand-over); an attempt back to pending is a
/// retry; a task ending succeeded (with its run time) or failed; a session's first claim
/// (started → running) gives its trigger → dispatch latency; a session ending completed, failed
/// or cancelled. `workflow`: the workflow of the writes' session.
fn observe(workflow: &WorkflowId, writes: &[Write]) -> Vec<Figure> {
    use Figure::{Count, Millis};
    let wf = || Label::new(names::WORKFLOW, workflow.as_str().to_owned());
    // A task fails in the transaction that fails its session: the session's code is the reason.
    let session_failure = writes.iter().find_map(|w| match w {
        Write::TransitionSession { next, .. } if next.status == SessionStatus::Failed => {
            next.error.as_ref().map(|e| e.code.as_str())
        }
        _ => None,
    });
    let mut figures = Vec::new();
    for w in writes {
        match w {
            Write::TransitionTask { from, next } => match next.status {
                TaskStatus::Dispatched if *from == TaskStatus::Pending => {
                    figures.push(Count(names::TASKS_DISPATCHED, vec![wf()]))
                }
                TaskStatus::Pending if from.holds_agent() => figures.push(Count(names::TASKS_RETRIED, vec![wf()])),
                TaskStatus::Succeeded => {
                    figures.push(Count(names::TASKS_SUCCEEDED, vec![wf()]));
                    if let Some(a) = next.attempts.last() {
                        let run_time = millis(a.claimed_at, next.updated_at);
                        figures.push(Millis(names::TASK_RUN_TIME_MS, vec![wf()], run_time));
                    }
                }
                TaskStatus::Failed => figures.push(Count(names::TASKS_FAILED, vec![wf(), reason(session_failure)])),
                _ => {}
            },
            // A task created already claimed: the agent was handed it as it finished the last.
            Write::CreateTask(t) if t.status == TaskStatus::Dispatched => {
                figures.push(Count(names::TASKS_DISPATCHED, vec![wf()]))
            }
            Write::TransitionSession { from, next } => match next.status {
                SessionStatus::Running if *from == SessionStatus::Started => {
                    let latency = millis(next.start_time, next.updated_at);
                    figures.push(Millis(names::TRIGGER_TO_DISPATCH_MS, vec![wf()], latency))
                }
                SessionStatus::Completed => figures.push(Count(names::SESSIONS_COMPLETED, vec![wf()])),
                SessionStatus::Failed => {
                    let code = next.error.as_ref().map(|e| e.code.as_str());
                    figures.push(Count(names::SESSIONS_FAILED, vec![wf(), reason(code)]))
                }
                SessionStatus::Cancelled => figures.push(Count(names::SESSIONS_CANCELLED, vec![wf()])),
                _ => {}
            },
            _ => {}
        }
    }
    figures
}

fn reason(code: Option<&'static str>) -> Label {
    Label::new(names::REASON, code.unwrap_or("unknown"))
}

/// Tells `recorder` every metric's unit and description (CloudWatch reads the unit; Prometheus
/// prints the description as `# HELP`).
pub fn describe(recorder: &dyn Recorder) {
    for (name, unit, help) in names::ALL {
        match unit {
            Unit::Milliseconds => recorder.describe_histogram(name.into(), Some(unit), help.into()),
            _ => recorder.describe_counter(name.into(), Some(unit), help.into()),
        }
    }
}
