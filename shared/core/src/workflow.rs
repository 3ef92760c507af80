//! Workflow definitions: tasks linked by `nextTaskId`, validated as a whole.

use crate::ids::{TaskId, WorkflowId, WorkflowVersion};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// Limits that keep a definition (and the session that snapshots it) well inside one item.
pub const MAX_TASKS: usize = 100;
pub const MAX_DEFINITION_BYTES: usize = 128 * 1024;

/// One problem with a definition; validation returns all of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Problem {
    /// JSON-pointer-like location, e.g. `tasks[1].nextTaskId`.
    pub field: String,
    pub message: String,
}

impl Problem {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Retry policy: full-jitter exponential backoff, `min(cap, base * 2^(attempt-1))`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryPolicy {
    /// Retries after the first attempt (so `maxRetries + 1` attempts in all).
    #[serde(default = "RetryPolicy::default_max_retries")]
    pub max_retries: u32,
    #[serde(default = "RetryPolicy::default_base")]
    pub base_delay_seconds: f64,
    #[serde(default = "RetryPolicy::default_cap")]
    pub max_delay_seconds: f64,
}

impl RetryPolicy {
    fn default_max_retries() -> u32 {
        3
    }
    fn default_base() -> f64 {
        2.0
    }
    fn default_cap() -> f64 {
        300.0
    }

    /// The delay before retry number `retry` (1-based), given a uniform sample `u` in [0, 1).
    /// Full jitter: spreads retries of many tasks that failed together (AWS architecture blog).
    pub fn backoff(&self, retry: u32, u: f64) -> Duration {
        let exp = self.base_delay_seconds * 2f64.powi(retry.saturating_sub(1).min(30) as i32);
        let ceiling = exp.min(self.max_delay_seconds);
        Duration::from_secs_f64((ceiling * u.clamp(0.0, 1.0)).max(0.0))
    }

    /// The deterministic ceiling of [`Self::backoff`] (what a test can assert on).
    pub fn backoff_ceiling(&self, retry: u32) -> Duration {
        self.backoff(retry, 1.0)
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 3,
            base_delay_seconds: 2.0,
            max_delay_seconds: 300.0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskDefinition {
    #[schema(value_type = String, pattern = "^[A-Za-z0-9._-]{1,128}$")]
    pub task_id: TaskId,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_capability: Option<String>,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub parameters: Map<String, Value>,
    #[serde(default)]
    #[schema(value_type = Option<String>, pattern = "^[A-Za-z0-9._-]{1,128}$")]
    pub next_task_id: Option<TaskId>,
    /// How long a dispatched task may run before its attempt fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<f64>,
    /// Overrides the definition's `retryPolicy.maxRetries` for this task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowDefinition {
    #[schema(value_type = String, pattern = "^[A-Za-z0-9._-]{1,128}$")]
    pub id: WorkflowId,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default = "default_version")]
    #[schema(value_type = String, pattern = "^[A-Za-z0-9._-]{1,64}$")]
    pub version: WorkflowVersion,
    pub tasks: Vec<TaskDefinition>,
    /// The first task; defaults to the first in `tasks` (as the original did).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, pattern = "^[A-Za-z0-9._-]{1,128}$")]
    pub entry_task_id: Option<TaskId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_policy: Option<RetryPolicy>,
    /// How long a runnable task may wait for its agent to be idle (default 600 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dispatch_timeout_seconds: Option<f64>,
    /// Default run timeout for tasks that set none (default 3600 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_timeout_seconds: Option<f64>,
    /// Opt-in routing by capability: a task naming `agentCapability` runs on any registered,
    /// idle agent announcing that capability instead of on the session's agent. Off by default,
    /// so definitions written before it (the original's sample names capabilities too) mean what
    /// they meant. A trigger may switch it on for one session.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub route_by_capability: bool,
}

fn default_version() -> WorkflowVersion {
    WorkflowVersion::parse("1.0").expect("valid literal")
}

pub const DEFAULT_DISPATCH_TIMEOUT: f64 = 600.0;
/// The longest capability a routed task may name (bytes): it is part of index keys, which
/// DynamoDB limits to 2,048 bytes for a partition key.
pub const MAX_CAPABILITY_BYTES: usize = 256;
pub const DEFAULT_TASK_TIMEOUT: f64 = 3600.0;
const MAX_TIMEOUT_SECONDS: f64 = 7.0 * 24.0 * 3600.0;

impl WorkflowDefinition {
    /// Parses JSON or YAML and validates the result; every problem is reported at once.
    pub fn parse(body: &[u8], format: Format) -> Result<Self, Vec<Problem>> {
        if body.len() > MAX_DEFINITION_BYTES {
            return Err(vec![Problem::new(
                "",
                format!(
                    "definition is {} bytes; at most {MAX_DEFINITION_BYTES} are accepted",
                    body.len()
                ),
            )]);
        }
        let value: Value = match format {
            Format::Json => {
                serde_json::from_slice(body).map_err(|e| vec![Problem::new("", format!("invalid JSON: {e}"))])?
            }
            Format::Yaml => {
                serde_norway::from_slice(body).map_err(|e| vec![Problem::new("", format!("invalid YAML: {e}"))])?
            }
        };
        Self::from_value(value)
    }

    /// Checks shape and field types first (all fields), then the task graph.
    pub fn from_value(value: Value) -> Result<Self, Vec<Problem>> {
        let Value::Object(obj) = &value else {
            return Err(vec![Problem::new("", "a workflow definition must be a JSON object")]);
        };
        let mut problems = shape_problems(obj);
        if !problems.is_empty() {
            return Err(problems);
        }
        let def: WorkflowDefinition = match serde_json::from_value(value) {
            Ok(d) => d,
            Err(e) => return Err(vec![Problem::new("", e.to_string())]),
        };
        problems.extend(def.validate());
        if problems.is_empty() { Ok(def) } else { Err(problems) }
    }

    /// Graph and value rules: unique task ids, every `nextTaskId` resolves, an entry task,
    /// no cycle, every task reachable from the entry, sane limits.
    pub fn validate(&self) -> Vec<Problem> {
        let mut p = Vec::new();
        if self.name.trim().is_empty() {
            p.push(Problem::new("name", "must not be empty"));
        }
        if self.tasks.is_empty() {
            p.push(Problem::new("tasks", "at least one task is required"));
        }
        if self.tasks.len() > MAX_TASKS {
            p.push(Problem::new(
                "tasks",
                format!("at most {MAX_TASKS} tasks are allowed (got {})", self.tasks.len()),
            ));
        }
        let mut index: HashMap<&TaskId, usize> = HashMap::new();
        for (i, t) in self.tasks.iter().enumerate() {
            if let Some(first) = index.insert(&t.task_id, i) {
                index.insert(&t.task_id, first);
                p.push(Problem::new(
                    format!("tasks[{i}].taskId"),
                    format!("duplicate taskId {:?} (also tasks[{first}])", t.task_id.as_str()),
                ));
            }
            if t.name.trim().is_empty() {
                p.push(Problem::new(format!("tasks[{i}].name"), "must not be empty"));
            }
            if let Some(s) = t.timeout_seconds {
                check_seconds(&mut p, &format!("tasks[{i}].timeoutSeconds"), s);
            }
            if t.max_retries.is_some_and(|m| m > 20) {
                p.push(Problem::new(format!("tasks[{i}].maxRetries"), "must be at most 20"));
            }
        }
        for (i, t) in self.tasks.iter().enumerate() {
            if let Some(n) = &t.next_task_id {
                if !index.contains_key(n) {
                    p.push(Problem::new(
                        format!("tasks[{i}].nextTaskId"),
                        format!("{:?} is not a taskId of this workflow", n.as_str()),
                    ));
                } else if n == &t.task_id {
                    p.push(Problem::new(
                        format!("tasks[{i}].nextTaskId"),
                        "a task cannot be its own next task",
                    ));
                }
            }
        }
        if let Some(e) = &self.entry_task_id
            && !index.contains_key(e)
        {
            p.push(Problem::new(
                "entryTaskId",
                format!("{:?} is not a taskId of this workflow", e.as_str()),
            ));
        }
        if let Some(r) = &self.retry_policy {
            if r.max_retries > 20 {
                p.push(Problem::new("retryPolicy.maxRetries", "must be at most 20"));
            }
            check_seconds(&mut p, "retryPolicy.baseDelaySeconds", r.base_delay_seconds);
            check_seconds(&mut p, "retryPolicy.maxDelaySeconds", r.max_delay_seconds);
            if r.max_delay_seconds < r.base_delay_seconds {
                p.push(Problem::new(
                    "retryPolicy.maxDelaySeconds",
                    "must not be below baseDelaySeconds",
                ));
            }
        }
        if let Some(s) = self.dispatch_timeout_seconds {
            check_seconds(&mut p, "dispatchTimeoutSeconds", s);
        }
        if self.route_by_capability {
            p.extend(self.routing_problems());
        }
        if let Some(s) = self.task_timeout_seconds {
            check_seconds(&mut p, "taskTimeoutSeconds", s);
        }
        // Graph walk only makes sense once every reference resolves.
        if p.is_empty() && !self.tasks.is_empty() {
            p.extend(self.graph_problems(&index));
        }
        p
    }

    fn graph_problems(&self, index: &HashMap<&TaskId, usize>) -> Vec<Problem> {
        let mut p = Vec::new();
        // Each task has at most one successor, so a walk from the entry is a path; it either ends,
        // or revisits a task (a cycle). Tasks off that path would never run.
        let entry = self.entry().task_id.clone();
        let mut seen = HashSet::new();
        let mut at = Some(&entry);
        while let Some(id) = at {
            if !seen.insert(id) {
                p.push(Problem::new(
                    format!("tasks[{}].nextTaskId", index[id]),
                    format!("cycle: the chain from the entry task returns to {:?}", id.as_str()),
                ));
                break;
            }
            at = self.tasks[index[id]].next_task_id.as_ref();
        }
        for (i, t) in self.tasks.iter().enumerate() {
            if !seen.contains(&t.task_id) {
                p.push(Problem::new(
                    format!("tasks[{i}]"),
                    format!(
                        "task {:?} is not reachable from the entry task {:?} by nextTaskId",
                        t.task_id.as_str(),
                        entry.as_str()
                    ),
                ));
            }
        }
        p
    }

    /// With routing on, every capability a task names becomes an index key: it must be usable as
    /// one. (With routing off, `agentCapability` stays the free text it always was.)
    fn routing_problems(&self) -> Vec<Problem> {
        let mut p = Vec::new();
        for (i, t) in self.tasks.iter().enumerate() {
            if let Some(c) = &t.agent_capability
                && let Err(why) = check_capability(c)
            {
                p.push(Problem::new(format!("tasks[{i}].agentCapability"), why));
            }
        }
        p
    }

    /// The capability `task` is routed by in a session of this definition: its
    /// `agentCapability` when routing is on, else `None` (it runs on the session's agent).
    pub fn routed_capability<'t>(&self, task: &'t TaskDefinition) -> Option<&'t str> {
        self.route_by_capability
            .then_some(task.agent_capability.as_deref())
            .flatten()
    }

    /// Whether every task of this definition is routed: then a session needs no agent of its own.
    pub fn routes_every_task(&self) -> bool {
        self.tasks.iter().all(|t| self.routed_capability(t).is_some())
    }

    pub fn entry(&self) -> &TaskDefinition {
        match &self.entry_task_id {
            Some(e) => self.task(e).expect("validated: entry exists"),
            None => &self.tasks[0],
        }
    }

    pub fn task(&self, id: &TaskId) -> Option<&TaskDefinition> {
        self.tasks.iter().find(|t| &t.task_id == id)
    }

    pub fn retry_policy(&self) -> RetryPolicy {
        self.retry_policy.unwrap_or_default()
    }

    pub fn max_retries_for(&self, task: &TaskDefinition) -> u32 {
        task.max_retries.unwrap_or(self.retry_policy().max_retries)
    }

    pub fn dispatch_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.dispatch_timeout_seconds.unwrap_or(DEFAULT_DISPATCH_TIMEOUT))
    }

    pub fn task_timeout(&self, task: &TaskDefinition) -> Duration {
        Duration::from_secs_f64(
            task.timeout_seconds
                .or(self.task_timeout_seconds)
                .unwrap_or(DEFAULT_TASK_TIMEOUT),
        )
    }

    /// Two definitions are "the same" when their JSON forms are equal (used for the immutability rule).
    pub fn same_content(&self, other: &WorkflowDefinition) -> bool {
        serde_json::to_value(self).ok() == serde_json::to_value(other).ok()
    }
}

fn check_seconds(p: &mut Vec<Problem>, field: &str, s: f64) {
    if !(s.is_finite() && s > 0.0 && s <= MAX_TIMEOUT_SECONDS) {
        p.push(Problem::new(
            field,
            format!("must be a number of seconds above 0 and at most {MAX_TIMEOUT_SECONDS}"),
        ));
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Yaml,
}

/// Field-by-field type checks, so a definition with several wrong fields gets one answer naming
/// all of them (serde stops at the first).
fn shape_problems(obj: &Map<String, Value>) -> Vec<Problem> {
    use crate::ids::IdError;
    let mut p = Vec::new();
    let id_rule = |p: &mut Vec<Problem>,
                   field: &str,
                   v: Option<&Value>,
                   required: bool,
                   parse: fn(&str) -> Result<(), IdError>| match v {
        None | Some(Value::Null) if !required => {}
        None | Some(Value::Null) => p.push(Problem::new(field, "is required")),
        Some(Value::String(s)) => {
            if let Err(e) = parse(s) {
                p.push(Problem::new(field, e.to_string()));
            }
        }
        Some(_) => p.push(Problem::new(field, "must be a string")),
    };
    let parse_wf: fn(&str) -> Result<(), IdError> = |s| WorkflowId::parse(s).map(drop);
    let parse_task: fn(&str) -> Result<(), IdError> = |s| TaskId::parse(s).map(drop);
    let parse_ver: fn(&str) -> Result<(), IdError> = |s| WorkflowVersion::parse(s).map(drop);
    id_rule(&mut p, "id", obj.get("id"), true, parse_wf);
    id_rule(&mut p, "version", obj.get("version"), false, parse_ver);
    id_rule(&mut p, "entryTaskId", obj.get("entryTaskId"), false, parse_task);
    string_rule(&mut p, "name", obj.get("name"), true);
    string_rule(&mut p, "description", obj.get("description"), false);
    for f in ["dispatchTimeoutSeconds", "taskTimeoutSeconds"] {
        number_rule(&mut p, f, obj.get(f));
    }
    match obj.get("routeByCapability") {
        None | Some(Value::Bool(_)) => {}
        Some(_) => p.push(Problem::new("routeByCapability", "must be a boolean")),
    }
    match obj.get("retryPolicy") {
        None | Some(Value::Null) => {}
        Some(v @ Value::Object(_)) => {
            if let Err(e) = serde_json::from_value::<RetryPolicy>(v.clone()) {
                p.push(Problem::new("retryPolicy", e.to_string()));
            }
        }
        Some(_) => p.push(Problem::new("retryPolicy", "must be an object")),
    }
    match obj.get("tasks") {
        None | Some(Value::Null) => p.push(Problem::new("tasks", "is required")),
        Some(Value::Array(tasks)) => {
            for (i, t) in tasks.iter().enumerate() {
                let Value::Object(t) = t else {
                    p.push(Problem::new(format!("tasks[{i}]"), "must be an object"));
                    continue;
                };
                id_rule(&mut p, &format!("tasks[{i}].taskId"), t.get("taskId"), true, parse_task);
                id_rule(
                    &mut p,
                    &format!("tasks[{i}].nextTaskId"),
                    t.get("nextTaskId"),
                    false,
                    parse_task,
                );
                string_rule(&mut p, &format!("tasks[{i}].name"), t.get("name"), true);
                string_rule(
                    &mut p,
                    &format!("tasks[{i}].agentCapability"),
                    t.get("agentCapability"),
                    false,
                );
                number_rule(&mut p, &format!("tasks[{i}].timeoutSeconds"), t.get("timeoutSeconds"));
                match t.get("parameters") {
                    None | Some(Value::Null) | Some(Value::Object(_)) => {}
                    Some(_) => p.push(Problem::new(format!("tasks[{i}].parameters"), "must be an object")),
                }
                match t.get("maxRetries") {
                    None | Some(Value::Null) => {}
                    Some(Value::Number(n)) if n.as_u64().is_some_and(|n| n <= u64::from(u32::MAX)) => {}
                    Some(_) => p.push(Problem::new(
                        format!("tasks[{i}].maxRetries"),
                        "must be a non-negative integer",
                    )),
                }
            }
        }
        Some(_) => p.push(Problem::new("tasks", "must be an array")),
    }
    p
}

/// Whether `c` can be routed by: 1 to [`MAX_CAPABILITY_BYTES`] bytes, no control characters.
/// An agent capability that fails this is never indexed (no routed task could name it).
pub fn check_capability(c: &str) -> Result<(), String> {
    if c.is_empty() {
        return Err("must not be empty when routing by capability".into());
    }
    if c.len() > MAX_CAPABILITY_BYTES {
        return Err(format!(
            "is {} bytes; a routed capability is at most {MAX_CAPABILITY_BYTES}",
            c.len()
        ));
    }
    if c.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(())
}

fn string_rule(p: &mut Vec<Problem>, field: &str, v: Option<&Value>, required: bool) {
    match v {
        None | Some(Value::Null) if required => p.push(Problem::new(field, "is required")),
        None | Some(Value::Null) | Some(Value::String(_)) => {}
        Some(_) => p.push(Problem::new(field, "must be a string")),
    }
}

fn number_rule(p: &mut Vec<Problem>, field: &str, v: Option<&Value>) {
    match v {
        None | Some(Value::Null) | Some(Value::Number(_)) => {}
        Some(_) => p.push(Problem::new(field, "must be a number")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    pub(crate) fn sample() -> Value {
        json!({"id":"sample_workflow_id","name":"Sample Load Test Workflow","description":"d","version":"1.0",
          "tasks":[
            {"taskId":"step_1","name":"First Step","agentCapability":"test_capability",
             "parameters":{"message":"This is the first step."},"nextTaskId":"step_2"},
            {"taskId":"step_2","name":"Second Step","agentCapability":"another_capability",
             "parameters":{"value":123},"nextTaskId":null}]})
    }

    #[test]
    fn sample_is_valid_and_entry_is_first() {
        let d = WorkflowDefinition::from_value(sample()).unwrap();
        assert_eq!(d.entry().task_id.as_str(), "step_1");
        assert_eq!(d.retry_policy(), RetryPolicy::default());
    }

    #[test]
    fn yaml_and_json_agree() {
        let yaml = "id: sample_workflow_id\nname: Sample Load Test Workflow\ndescription: d\nversion: '1.0'\ntasks:\n  - taskId: step_1\n    name: First Step\n    agentCapability: test_capability\n    parameters: {message: This is the first step.}\n    nextTaskId: step_2\n  - taskId: step_2\n    name: Second Step\n    agentCapability: another_capability\n    parameters: {value: 123}\n    nextTaskId: null\n";
        let a = WorkflowDefinition::parse(yaml.as_bytes(), Format::Yaml).unwrap();
        let b = WorkflowDefinition::from_value(sample()).unwrap();
        assert!(a.same_content(&b));
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let v = json!({"id":"w","name":"n","tasks":[
            {"taskId":"a","name":"A","nextTaskId":"missing"},
            {"taskId":"a","name":"","nextTaskId":"a"},
            {"taskId":"b","name":"B","timeoutSeconds":-1}]});
        let p = WorkflowDefinition::from_value(v).unwrap_err();
        let fields: Vec<_> = p.iter().map(|p| p.field.as_str()).collect();
        assert!(fields.contains(&"tasks[1].taskId"), "{p:?}");
        assert!(fields.contains(&"tasks[0].nextTaskId"), "{p:?}");
        assert!(fields.contains(&"tasks[1].name"), "{p:?}");
        assert!(fields.contains(&"tasks[2].timeoutSeconds"), "{p:?}");
    }

    #[test]
    fn type_errors_are_all_named() {
        let v = json!({"id":5,"name":["x"],"tasks":[{"taskId":1,"name":"A","parameters":"p"}, 7]});
        let p = WorkflowDefinition::from_value(v).unwrap_err();
        let fields: Vec<_> = p.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            ["id", "name", "tasks[0].taskId", "tasks[0].parameters", "tasks[1]"]
        );
    }

    #[test]
    fn cycles_unreachable_and_empty_are_refused() {
        let cyc = json!({"id":"w","name":"n","tasks":[
            {"taskId":"a","name":"A","nextTaskId":"b"},{"taskId":"b","name":"B","nextTaskId":"a"}]});
        let p = WorkflowDefinition::from_value(cyc).unwrap_err();
        assert!(p.iter().any(|p| p.message.contains("cycle")), "{p:?}");
        let two_chains = json!({"id":"w","name":"n","tasks":[{"taskId":"a","name":"A"},{"taskId":"b","name":"B"}]});
        let p = WorkflowDefinition::from_value(two_chains).unwrap_err();
        assert!(p.iter().any(|p| p.message.contains("not reachable")), "{p:?}");
        let empty = json!({"id":"w","name":"n","tasks":[]});
        assert!(WorkflowDefinition::from_value(empty).is_err());
        let entry = json!({"id":"w","name":"n","entryTaskId":"b","tasks":[{"taskId":"a","name":"A"},{"taskId":"b","name":"B","nextTaskId":"a"}]});
        assert_eq!(
            WorkflowDefinition::from_value(entry).unwrap().entry().task_id.as_str(),
            "b"
        );
    }

    /// Routing is opt-in: the original's sample names capabilities and still routes nothing;
    /// with `routeByCapability`, each named capability must be usable as an index key.
    #[test]
    fn routing_by_capability_is_opt_in_and_checks_the_capabilities() {
        let plain = WorkflowDefinition::from_value(sample()).unwrap();
        assert!(!plain.route_by_capability);
        assert!(plain.tasks.iter().all(|t| plain.routed_capability(t).is_none()));
        assert!(!plain.routes_every_task());
        assert!(
            !serde_json::to_value(&plain)
                .unwrap()
                .as_object()
                .unwrap()
                .contains_key("routeByCapability"),
            "a definition without routing serialises as before"
        );
        let mut v = sample();
        v["routeByCapability"] = json!(true);
        let routed = WorkflowDefinition::from_value(v.clone()).unwrap();
        assert_eq!(routed.routed_capability(&routed.tasks[0]), Some("test_capability"));
        assert!(routed.routes_every_task());
        v["tasks"][1]["agentCapability"] = json!(null);
        let mixed = WorkflowDefinition::from_value(v.clone()).unwrap();
        assert_eq!(mixed.routed_capability(&mixed.tasks[1]), None);
        assert!(
            !mixed.routes_every_task(),
            "a task without a capability runs on the session's agent"
        );
        v["tasks"][0]["agentCapability"] = json!("x".repeat(MAX_CAPABILITY_BYTES + 1));
        v["tasks"][1]["agentCapability"] = json!("");
        let p = WorkflowDefinition::from_value(v.clone()).unwrap_err();
        let fields: Vec<_> = p.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            ["tasks[0].agentCapability", "tasks[1].agentCapability"],
            "{p:?}"
        );
        v["routeByCapability"] = json!("yes");
        let p = WorkflowDefinition::from_value(v).unwrap_err();
        assert!(p.iter().any(|p| p.field == "routeByCapability"), "{p:?}");
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let r = RetryPolicy {
            max_retries: 5,
            base_delay_seconds: 2.0,
            max_delay_seconds: 5.0,
        };
        assert_eq!(r.backoff_ceiling(1), Duration::from_secs(2));
        assert_eq!(r.backoff_ceiling(2), Duration::from_secs(4));
        assert_eq!(r.backoff_ceiling(3), Duration::from_secs(5));
        assert_eq!(r.backoff(3, 0.5), Duration::from_secs_f64(2.5));
        assert_eq!(r.backoff(100, 1.0), Duration::from_secs(5));
    }
}
