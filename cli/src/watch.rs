//! `session watch` and `workflow run --watch`: polls the session, prints one line per task change
//! (status and attempt), shows a spinner while waiting (only at a terminal), then the result or
//! the failure cause. Exit code 0 when the session completed, 1 when it failed or was cancelled.

use crate::fail::{self, Failure};
use crate::{Ctx, show, to_json};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use opscore_api::{SessionDetail, TaskView};
use opscore_core::session::SessionStatus;
use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// How often the session is read. `OPSCORE_WATCH_INTERVAL_MS` overrides it (50–60000).
const INTERVAL: Duration = Duration::from_millis(500);

fn interval() -> Duration {
    std::env::var("OPSCORE_WATCH_INTERVAL_MS")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|ms| (50..=60_000).contains(ms))
        .map(Duration::from_millis)
        .unwrap_or(INTERVAL)
}

/// Prints above the spinner when there is one, else plainly.
struct Out {
    spinner: Option<ProgressBar>,
    started: Instant,
}

impl Out {
    fn new(enabled: bool) -> Self {
        let spinner = (enabled && std::io::stdout().is_terminal()).then(|| {
            let pb = ProgressBar::with_draw_target(None, ProgressDrawTarget::stdout());
            if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} ({elapsed})") {
                pb.set_style(style);
            }
            pb.enable_steady_tick(Duration::from_millis(100));
            pb
        });
        Self {
            spinner,
            started: Instant::now(),
        }
    }

    fn line(&self, text: &str) {
        let text = format!("{:>6.1}s  {text}", self.started.elapsed().as_secs_f64());
        match &self.spinner {
            Some(pb) => pb.suspend(|| println!("{text}")),
            None => println!("{text}"),
        }
    }

    fn waiting(&self, msg: String) {
        if let Some(pb) = &self.spinner {
            pb.set_message(msg);
        }
    }

    fn done(&self) {
        if let Some(pb) = &self.spinner {
            pb.finish_and_clear();
        }
    }
}

/// What the spinner says: the task the session is on.
fn waiting_for(d: &SessionDetail) -> String {
    let current = d
        .tasks
        .iter()
        .find(|t| !matches!(t.status.as_str(), "succeeded" | "waiting"))
        .or_else(|| d.tasks.iter().find(|t| t.status == "waiting"));
    match current {
        Some(t) if t.status == "pending" && t.attempt > 0 => {
            format!("{}: waiting to retry (attempt {} next)", t.task_id, t.attempt + 1)
        }
        Some(t) if t.status == "pending" => format!("{}: waiting for the agent to be idle", t.task_id),
        Some(t) if t.status == "dispatched" => format!("{}: sent to the agent, waiting for it to start", t.task_id),
        Some(t) if t.status == "running" => format!("{}: the agent is working on it", t.task_id),
        Some(t) => format!("{}: {}", t.task_id, t.status),
        None => format!("session {}", d.summary.status.as_str()),
    }
}

fn task_line(t: &TaskView, id_width: usize, name_width: usize) -> String {
    let mut s = format!(
        "{:<id_width$}  {:<name_width$}  {:<10}  attempt {}",
        t.task_id,
        t.name,
        t.status,
        show::attempt(t)
    );
    if matches!(t.status.as_str(), "pending" | "failed")
        && let Some(e) = &t.last_error
    {
        s.push_str(&format!("  ({e})"));
    }
    s
}

pub async fn follow(ctx: &Ctx, session_id: &str) -> Result<u8, Failure> {
    let out = Out::new(!ctx.json);
    let every = interval();
    let mut seen: HashMap<String, (String, u32)> = HashMap::new();
    let mut status: Option<SessionStatus> = None;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let last = loop {
        let d = match ctx.client.session(session_id).await {
            Ok(d) => d,
            Err(e) => {
                out.done();
                return Err(e.into());
            }
        };
        if !ctx.json {
            // The session's own change goes first, unless it ended: then after its last task.
            let session_changed = status != Some(d.summary.status);
            if session_changed && !d.summary.status.is_terminal() {
                out.line(&format!("session {}", d.summary.status.as_str()));
            }
            let id_width = d.tasks.iter().map(|t| t.task_id.chars().count()).max().unwrap_or(0);
            let name_width = d.tasks.iter().map(|t| t.name.chars().count()).max().unwrap_or(0);
            for t in &d.tasks {
                let now = (t.status.clone(), t.attempt);
                let before = seen.insert(t.task_id.clone(), now.clone());
                let changed = before.as_ref() != Some(&now);
                let not_reached = before.is_none() && t.status == "waiting";
                if changed && !not_reached {
                    out.line(&task_line(t, id_width, name_width));
                }
            }
            if session_changed && d.summary.status.is_terminal() {
                out.line(&format!("session {}", d.summary.status.as_str()));
            }
            status = Some(d.summary.status);
            out.waiting(waiting_for(&d));
        }
        if d.summary.status.is_terminal() {
            break d;
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = &mut ctrl_c => {
                out.done();
                return Err(Failure::Interrupted { session_id: session_id.to_owned() });
            }
        }
    };
    out.done();
    if ctx.json {
        println!("{}", to_json(&last));
    } else {
        println!("{}", summary(&last));
    }
    Ok(match last.summary.status {
        SessionStatus::Completed => 0,
        _ => fail::FAILED_SESSION,
    })
}

fn took(d: &SessionDetail) -> String {
    let parse = |s: &str| chrono::DateTime::parse_from_rfc3339(s).ok();
    match (
        parse(&d.summary.start_time),
        d.summary.end_time.as_deref().and_then(parse),
    ) {
        (Some(a), Some(b)) => {
            let ms = (b - a).num_milliseconds().max(0);
            format!(" in {:.1} s", ms as f64 / 1000.0)
        }
        _ => String::new(),
    }
}

/// The last line(s): the result, or why the session did not complete.
pub fn summary(d: &SessionDetail) -> String {
    let id = &d.summary.session_id;
    match d.summary.status {
        SessionStatus::Completed => {
            let result = d
                .result
                .as_ref()
                .map(|r| format!("\nresult: {}", show::compact(r, 500)))
                .unwrap_or_default();
            format!("Session {id} completed{}.{result}", took(d))
        }
        SessionStatus::Failed => match &d.error {
            Some(e) => format!("Session {id} failed{}: {}", took(d), show::failure(e)),
            None => format!("Session {id} failed{}.", took(d)),
        },
        SessionStatus::Cancelled => match &d.error {
            Some(e) => format!("Session {id} was cancelled: {}", e.message),
            None => format!("Session {id} was cancelled."),
        },
        other => format!("Session {id} is {}.", other.as_str()),
    }
}
