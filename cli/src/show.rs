//! Human renderings: borderless tables, short UTC times, compact JSON for details.

use comfy_table::{ContentArrangement, Table, presets};
use opscore_api::{
    AgentStateView, AgentView, HistoryEntryView, PageView, SessionDetail, SessionSummary, StateUpdateAccepted,
    TaskView, TriggerResponse, WorkflowSummary, WorkflowView,
};
use serde_json::{Map, Value};

/// A borderless table with a header row (or none when `header` is empty).
pub fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut t = Table::new();
    t.load_style(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled);
    if !header.is_empty() {
        t.set_header(header.to_vec());
    }
    for r in rows {
        t.add_row(r);
    }
    for c in t.column_iter_mut() {
        c.set_padding((0, 2));
    }
    t.trim_fmt()
}

/// Label/value lines.
fn fields(rows: Vec<(&str, String)>) -> String {
    table(&[], rows.into_iter().map(|(k, v)| vec![k.to_owned(), v]).collect())
}

/// `2030-01-01T00:00:00.123456Z` → `2030-01-01T00:00:00Z` (seconds are enough at a terminal).
pub fn time(s: &str) -> String {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&chrono::Utc).format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|_| s.to_owned())
}

fn opt_time(s: Option<&str>) -> String {
    s.map(time).unwrap_or_else(|| "-".into())
}

/// Compact JSON, cut at `max` characters.
pub fn compact(v: &Value, max: usize) -> String {
    let s = v.to_string();
    if s.chars().count() <= max {
        s
    } else {
        let cut: String = s.chars().take(max.saturating_sub(1)).collect();
        format!("{cut}…")
    }
}

fn details(d: Option<&Map<String, Value>>, max: usize) -> String {
    match d {
        Some(m) if !m.is_empty() => compact(&Value::Object(m.clone()), max),
        _ => "-".into(),
    }
}

fn more<T>(p: &PageView<T>, what: &str) -> String {
    if p.next_cursor.is_some() {
        format!("\n(showing the first {} {what}; there are more)", p.items.len())
    } else {
        String::new()
    }
}

pub fn agents(p: &PageView<AgentView>, state: Option<&str>) -> String {
    if p.items.is_empty() {
        return match state {
            Some(s) => format!("No agents in state {s}."),
            None => "No agents registered.".into(),
        };
    }
    let rows = p
        .items
        .iter()
        .map(|a| {
            vec![
                a.agent_id.clone(),
                a.agent_name.clone(),
                if a.deregistered {
                    format!("{} (deregistered)", a.state.state)
                } else {
                    a.state.state.clone()
                },
                time(&a.state.timestamp),
                a.inflight_task.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    table(&["AGENT", "NAME", "STATE", "SINCE", "IN-FLIGHT TASK"], rows) + &more(p, "agents")
}

pub fn agent(a: &AgentView) -> String {
    let mut rows = vec![
        ("Agent", a.agent_id.clone()),
        ("Name", a.agent_name.clone()),
        (
            "Version",
            if a.version.is_empty() {
                "-".into()
            } else {
                a.version.clone()
            },
        ),
        (
            "State",
            format!(
                "{} since {} (report #{})",
                a.state.state,
                time(&a.state.timestamp),
                a.state.version
            ),
        ),
        ("State details", details(a.state.details.as_ref(), 100)),
        ("In-flight task", a.inflight_task.clone().unwrap_or_else(|| "-".into())),
        (
            "Capabilities",
            if a.capabilities.is_empty() {
                "-".into()
            } else {
                a.capabilities.join(", ")
            },
        ),
        ("Contact", a.contact_endpoint.clone()),
        ("Metadata", details(Some(&a.metadata), 100)),
        ("Registered", time(&a.registered_at)),
    ];
    if a.deregistered {
        rows.push(("Deregistered", opt_time(a.deregistered_at.as_deref())));
    }
    fields(rows)
}

pub fn state(s: &AgentStateView) -> String {
    fields(vec![
        ("Agent", s.agent_id.clone()),
        ("State", s.state.clone()),
        ("Since", time(&s.timestamp)),
        ("Details", details(s.details.as_ref(), 100)),
        ("Reports applied", s.version.to_string()),
    ])
}

pub fn history(p: &PageView<HistoryEntryView>, agent_id: &str) -> String {
    if p.items.is_empty() {
        return format!("No state reports for agent {agent_id}.");
    }
    let rows = p
        .items
        .iter()
        .map(|h| {
            vec![
                time(&h.timestamp),
                h.state.clone(),
                if h.applied {
                    "yes".into()
                } else {
                    "no (out of order)".into()
                },
                details(h.details.as_ref(), 60),
            ]
        })
        .collect();
    table(&["TIMESTAMP", "STATE", "APPLIED", "DETAILS"], rows) + &more(p, "reports")
}

pub fn reported(r: &StateUpdateAccepted, agent_id: &str, state: &str) -> String {
    if r.applied {
        format!("Agent {agent_id} is now {state}.")
    } else {
        format!("Recorded {state} for agent {agent_id} in its history only: a newer report is already applied.")
    }
}

pub fn workflows(p: &PageView<WorkflowSummary>) -> String {
    if p.items.is_empty() {
        return "No workflow definitions.".into();
    }
    let rows = p
        .items
        .iter()
        .map(|w| {
            vec![
                w.id.clone(),
                w.version.clone(),
                w.name.clone(),
                w.task_count.to_string(),
                time(&w.created_at),
            ]
        })
        .collect();
    table(&["WORKFLOW", "VERSION", "NAME", "TASKS", "CREATED"], rows) + &more(p, "workflows")
}

pub fn workflow(w: &WorkflowView) -> String {
    let d = &w.definition;
    let mut head = vec![
        ("Workflow", d.id.to_string()),
        ("Version", d.version.to_string()),
        ("Name", d.name.clone()),
    ];
    if let Some(desc) = &d.description {
        head.push(("Description", desc.clone()));
    }
    head.push(("Created", time(&w.created_at)));
    let entry = d.entry_task_id.as_ref().map(|t| t.to_string());
    let rows = d
        .tasks
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let is_entry = entry.as_deref().map_or(i == 0, |e| e == t.task_id.as_str());
            vec![
                format!("{}{}", t.task_id, if is_entry { " (entry)" } else { "" }),
                t.name.clone(),
                t.agent_capability.clone().unwrap_or_else(|| "-".into()),
                t.next_task_id
                    .as_ref()
                    .map(|n| n.to_string())
                    .unwrap_or_else(|| "-".into()),
                details(Some(&t.parameters), 50),
            ]
        })
        .collect();
    format!(
        "{}\n\n{}",
        fields(head),
        table(&["TASK", "NAME", "CAPABILITY", "NEXT", "PARAMETERS"], rows)
    )
}

pub fn created(w: &WorkflowView, created: bool) -> String {
    let d = &w.definition;
    let n = d.tasks.len();
    let tasks = if n == 1 {
        "1 task".to_owned()
    } else {
        format!("{n} tasks")
    };
    if created {
        format!("Created workflow {} version {} ({tasks}).", d.id, d.version)
    } else {
        format!(
            "Workflow {} version {} was already stored with the same content ({tasks}); nothing changed.",
            d.id, d.version
        )
    }
}

pub fn triggered(t: &TriggerResponse, agent_id: &str, replayed: bool) -> String {
    let again = if replayed {
        " (an earlier request with the same key had started it)"
    } else {
        ""
    };
    format!(
        "Started workflow {} on agent {agent_id}: session {}{again}\nFollow it with: opscore session watch {}",
        t.workflow_id, t.session_id, t.session_id
    )
}

pub fn sessions(p: &PageView<SessionSummary>, agent_id: &str) -> String {
    if p.items.is_empty() {
        return format!("No sessions for agent {agent_id}.");
    }
    session_table(p, false)
}

/// The latest sessions of every agent (`session list` without an agent).
pub fn latest_sessions(p: &PageView<SessionSummary>) -> String {
    if p.items.is_empty() {
        return "No sessions.".into();
    }
    session_table(p, true)
}

/// A page of sessions as a table, with an AGENT column when they are of several agents.
fn session_table(p: &PageView<SessionSummary>, with_agent: bool) -> String {
    let rows = p
        .items
        .iter()
        .map(|s| {
            let mut row = vec![s.session_id.clone()];
            if with_agent {
                row.push(s.agent_id.clone());
            }
            row.extend([
                s.workflow_id.clone(),
                s.workflow_version.clone(),
                s.status.as_str().to_owned(),
                time(&s.start_time),
                opt_time(s.end_time.as_deref()),
            ]);
            row
        })
        .collect();
    let head: &[&str] = if with_agent {
        &["SESSION", "AGENT", "WORKFLOW", "VERSION", "STATUS", "STARTED", "ENDED"]
    } else {
        &["SESSION", "WORKFLOW", "VERSION", "STATUS", "STARTED", "ENDED"]
    };
    table(head, rows) + &more(p, "sessions")
}

pub fn attempt(t: &TaskView) -> String {
    if t.attempt == 0 {
        "-".into()
    } else {
        format!("{}/{}", t.attempt, t.max_retries + 1)
    }
}

pub fn session(d: &SessionDetail) -> String {
    let s = &d.summary;
    let mut head = vec![
        ("Session", s.session_id.clone()),
        ("Workflow", format!("{} version {}", s.workflow_id, s.workflow_version)),
        ("Agent", s.agent_id.clone()),
        ("Status", s.status.as_str().to_owned()),
        ("Started", time(&s.start_time)),
        ("Ended", opt_time(s.end_time.as_deref())),
    ];
    if let Some(r) = &d.result {
        head.push(("Result", compact(r, 200)));
    }
    if let Some(e) = &d.error {
        head.push(("Failure", failure(e)));
    }
    let rows = d
        .tasks
        .iter()
        .map(|t| {
            vec![
                t.task_id.clone(),
                t.name.clone(),
                t.status.clone(),
                attempt(t),
                t.last_error.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    format!(
        "{}\n\n{}",
        fields(head),
        table(&["TASK", "NAME", "STATUS", "ATTEMPT", "LAST ERROR"], rows)
    )
}

/// "retries_exhausted: ... (task step_1, 4 attempts; last error: ...)".
pub fn failure(e: &opscore_core::session::FailureCause) -> String {
    let mut extra = Vec::new();
    if let Some(t) = &e.task_id {
        extra.push(format!("task {t}"));
    }
    if let Some(n) = e.attempts {
        extra.push(if n == 1 {
            "1 attempt".into()
        } else {
            format!("{n} attempts")
        });
    }
    let mut s = format!("{}: {}", e.code, e.message);
    if !extra.is_empty() {
        s.push_str(&format!(" ({})", extra.join(", ")));
    }
    if let Some(l) = &e.last_error {
        s.push_str(&format!("; last error: {l}"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_have_no_borders_and_no_trailing_space() {
        let t = table(
            &["A", "LONGER"],
            vec![vec!["x".into(), "y".into()], vec!["wide-cell".into(), "z".into()]],
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("A "), "{t}");
        assert!(lines.iter().all(|l| !l.ends_with(' ')), "{t:?}");
        assert!(!t.contains('|') && !t.contains('+') && !t.contains('─'));
        let col = lines[0].find("LONGER").unwrap();
        assert_eq!(lines[2].find('z').unwrap(), col, "columns line up:\n{t}");
    }

    #[test]
    fn times_and_json_are_short() {
        assert_eq!(time("2030-01-02T03:04:05.123456Z"), "2030-01-02T03:04:05Z");
        assert_eq!(time("2030-01-02T05:04:05+02:00"), "2030-01-02T03:04:05Z");
        assert_eq!(time("not a time"), "not a time");
        assert_eq!(compact(&json!({"a": 1}), 50), r#"{"a":1}"#);
        assert_eq!(compact(&json!({"a": "xxxxxxxxxx"}), 8).chars().count(), 8);
    }
}
