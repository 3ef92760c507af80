//! `opscore`: the Ops-Core command line. See docs/cli.md.

mod fail;
mod show;
mod watch;

use clap::{Args, Parser, Subcommand};
use fail::Failure;
use opscore_api::{PageView, StartRoutedRequest, TriggerRequest};
use opscore_client::{Client, DefinitionBody, Error, PageOpts, TriggerKey};
use opscore_core::session::{ROUTED_POOL, SessionStatus};
use opscore_core::workflow::WorkflowDefinition;
use serde::Serialize;
use serde_json::{Map, Value};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

const AFTER_HELP: &str = "\
Exit codes: 0 ok, 1 the watched session failed or was cancelled, 2 usage, 3 authentication,
4 not found, 5 conflict or validation, 6 server or network.";

const GLOBAL: &str = "Global options";

/// The most items a list command fetches (it follows `nextCursor` until then).
const LIST_MAX: usize = 10_000;

#[derive(Debug, Parser)]
#[command(
    name = "opscore",
    version,
    about = "Operate Ops-Core: agents and their state, workflow definitions, workflow sessions.",
    after_help = AFTER_HELP,
    propagate_version = true
)]
struct Cli {
    /// Base URL of the state API, with its stage path if it has one.
    #[arg(
        long,
        help_heading = GLOBAL,
        env = "OPSCORE_API_URL",
        default_value = "http://127.0.0.1:3000",
        global = true,
        value_name = "URL"
    )]
    api_url: String,
    /// Bearer key of the state API (prefer the environment variable: a flag is visible in `ps`).
    #[arg(long, env = "OPSCORE_API_KEY", hide_env_values = true, global = true, value_name = "KEY", help_heading = GLOBAL)]
    api_key: Option<String>,
    /// Print the API's JSON instead of tables (errors go to stderr as {"detail","code","errors"}).
    #[arg(long, global = true, help_heading = GLOBAL)]
    json: bool,
    /// Seconds to wait for each answer of the API.
    #[arg(long, env = "OPSCORE_TIMEOUT", default_value = "30", global = true, value_name = "SECONDS", value_parser = seconds, help_heading = GLOBAL)]
    timeout: Duration,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check that the API answers (needs no key).
    Health,
    /// Agents: list, inspect, read and report state.
    #[command(subcommand)]
    Agent(AgentCmd),
    /// Workflow definitions: create, list, inspect, run on an agent.
    #[command(subcommand)]
    Workflow(WorkflowCmd),
    /// Workflow sessions: inspect, list, cancel, watch.
    #[command(subcommand)]
    Session(SessionCmd),
}

#[derive(Debug, Subcommand)]
enum AgentCmd {
    /// List registered agents.
    List {
        /// Only agents in this state (idle, active, error, finished, initializing, UNKNOWN, or a custom one).
        #[arg(long, value_name = "STATE")]
        state: Option<String>,
    },
    /// Show one agent: registration, current state, in-flight task.
    Get { agent_id: String },
    /// Show an agent's current state.
    State { agent_id: String },
    /// Show an agent's state reports, newest first.
    History {
        agent_id: String,
        /// How many reports to show.
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        limit: u32,
    },
    /// Report a state for an agent, timestamped now.
    Report {
        agent_id: String,
        state: String,
        /// Details as a JSON object, e.g. '{"opscore_task_id":"..."}'.
        #[arg(long, value_name = "JSON")]
        details: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum WorkflowCmd {
    /// Store a workflow definition from a .json, .yaml or .yml file.
    Create { file: PathBuf },
    /// List stored workflow definitions.
    List,
    /// Show a workflow definition (its newest version).
    Get { workflow_id: String },
    /// Start a workflow on an agent: a stored one (--id) or one from a file (--file).
    Run {
        agent_id: String,
        #[command(flatten)]
        source: RunSource,
        /// The entry task's payload, a JSON object (default: its parameters).
        #[arg(long, value_name = "JSON")]
        payload: Option<String>,
        /// Follow the session until it ends.
        #[arg(long)]
        watch: bool,
        /// Route this session's tasks that name agentCapability to any idle agent announcing it.
        #[arg(long)]
        route: bool,
    },
    /// Start a stored workflow without naming an agent: every task must be routed by capability
    /// (routeByCapability and agentCapability on each task); each goes to an idle agent that
    /// announces its capability.
    Start {
        workflow_id: String,
        /// A version of the definition (default: the newest).
        #[arg(long = "workflow-version", value_name = "VERSION")]
        workflow_version: Option<String>,
        /// The entry task's payload, a JSON object (default: its parameters).
        #[arg(long, value_name = "JSON")]
        payload: Option<String>,
        /// Follow the session until it ends.
        #[arg(long)]
        watch: bool,
    },
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
struct RunSource {
    /// A stored workflow definition's id.
    #[arg(long = "id", value_name = "WORKFLOW_ID")]
    id: Option<String>,
    /// A workflow definition file (.json, .yaml or .yml), sent inline.
    #[arg(long, value_name = "FILE")]
    file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum SessionCmd {
    /// Show a session and its tasks.
    Get { session_id: String },
    /// List an agent's sessions, or without AGENT the latest sessions of every agent.
    List {
        /// Leave out for the latest sessions of every agent, newest first.
        agent_id: Option<String>,
        /// Only sessions in this status (started, running, completed, failed, cancelled); only
        /// without AGENT.
        #[arg(long)]
        status: Option<String>,
        /// How many sessions to show (without AGENT).
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        limit: u32,
    },
    /// Cancel a session that has not ended.
    Cancel { session_id: String },
    /// Follow a session until it ends: one line per task change, then the result or failure.
    Watch { session_id: String },
}

fn seconds(s: &str) -> Result<Duration, String> {
    s.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v > 0.0 && *v <= 86_400.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("expected a number of seconds between 0 and 86400, got {s:?}"))
}

pub struct Ctx {
    pub client: Client,
    pub json: bool,
}

impl Ctx {
    /// Prints a value: its JSON with --json, else the human rendering.
    fn emit<T: Serialize>(&self, value: &T, human: impl FnOnce(&T) -> String) {
        if self.json {
            println!("{}", to_json(value));
        } else {
            let text = human(value);
            if !text.is_empty() {
                println!("{}", text.trim_end());
            }
        }
    }
}

pub fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|e| format!("{{\"detail\":\"cannot encode: {e}\"}}"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = cli.json;
    let api_url = cli.api_url.clone();
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start: {e}");
            return ExitCode::from(fail::SERVER);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            f.report(json, &api_url);
            ExitCode::from(f.exit_code())
        }
    }
}

async fn run(cli: Cli) -> Result<u8, Failure> {
    let key = cli.api_key.filter(|k| !k.trim().is_empty());
    let shown_url = cli.api_url.trim().trim_end_matches('/').to_owned();
    let needs_key = !matches!(cli.command, Command::Health);
    if needs_key && key.is_none() {
        return Err(Failure::NoKey);
    }
    let mut builder = Client::builder(cli.api_url.trim()).timeout(cli.timeout);
    if let Some(k) = &key {
        builder = builder.api_key(k.trim());
    }
    let ctx = Ctx {
        client: builder.build()?,
        json: cli.json,
    };
    match cli.command {
        Command::Health => {
            let h = ctx.client.health().await?;
            ctx.emit(&h, |h| format!("Ops-Core at {shown_url}: {}", h.status));
            Ok(0)
        }
        Command::Agent(c) => agent(&ctx, c).await,
        Command::Workflow(c) => workflow(&ctx, c).await,
        Command::Session(c) => session(&ctx, c).await,
    }
}

async fn agent(ctx: &Ctx, cmd: AgentCmd) -> Result<u8, Failure> {
    let c = &ctx.client;
    match cmd {
        AgentCmd::List { state } => {
            let st = state.as_deref();
            let page = collect(LIST_MAX, |p| async move { c.list_agents(st, &p).await }).await?;
            ctx.emit(&page, |p| show::agents(p, state.as_deref()));
        }
        AgentCmd::Get { agent_id } => ctx.emit(&c.agent(&agent_id).await?, show::agent),
        AgentCmd::State { agent_id } => ctx.emit(&c.agent_state(&agent_id).await?, show::state),
        AgentCmd::History { agent_id, limit } => {
            let id = agent_id.as_str();
            let page = collect(limit as usize, |p| async move { c.state_history(id, &p).await }).await?;
            ctx.emit(&page, |p| show::history(p, &agent_id));
        }
        AgentCmd::Report {
            agent_id,
            state,
            details,
        } => {
            let details = details.map(|d| json_object("--details", &d)).transpose()?;
            let r = c.report_state(&agent_id, &state, details).await?;
            ctx.emit(&r, |r| show::reported(r, &agent_id, &state));
        }
    }
    Ok(0)
}

async fn workflow(ctx: &Ctx, cmd: WorkflowCmd) -> Result<u8, Failure> {
    let c = &ctx.client;
    match cmd {
        WorkflowCmd::Create { file } => {
            let body = definition_file(&file)?;
            let created = c.create_workflow(body).await?;
            ctx.emit(&created.value, |w| show::created(w, created.created));
        }
        WorkflowCmd::List => {
            let page = collect(LIST_MAX, |p| async move { c.list_workflows(&p).await }).await?;
            ctx.emit(&page, show::workflows);
        }
        WorkflowCmd::Get { workflow_id } => ctx.emit(&c.workflow(&workflow_id, None).await?, show::workflow),
        WorkflowCmd::Start {
            workflow_id,
            workflow_version,
            payload,
            watch,
        } => {
            let initial_payload = payload
                .map(|p| json_object("--payload", &p).map(Value::Object))
                .transpose()?;
            let req = StartRoutedRequest {
                workflow_version,
                initial_payload,
            };
            let started = c.start_routed(&workflow_id, &req, TriggerKey::Generate).await?;
            let t = &started.response;
            if !watch {
                ctx.emit(t, |t| show::triggered(t, ROUTED_POOL, started.replayed));
                return Ok(0);
            }
            if !ctx.json {
                println!(
                    "Started workflow {} without an agent (routed by capability): session {}",
                    t.workflow_id, t.session_id
                );
            }
            return watch::follow(ctx, &t.session_id).await;
        }
        WorkflowCmd::Run {
            agent_id,
            source,
            payload,
            watch,
            route,
        } => {
            let initial_payload = payload
                .map(|p| json_object("--payload", &p).map(Value::Object))
                .transpose()?;
            let mut req = TriggerRequest {
                workflow_definition_id: None,
                workflow_version: None,
                workflow_definition: None,
                initial_payload,
                route_by_capability: route.then_some(true),
            };
            match (source.id, source.file) {
                (Some(id), _) => req.workflow_definition_id = Some(id),
                (None, Some(file)) => {
                    let body = definition_file(&file)?;
                    let def =
                        WorkflowDefinition::parse(body.bytes(), body.format()).map_err(|errors| Failure::Invalid {
                            detail: format!("{} is not a valid workflow definition", file.display()),
                            errors,
                        })?;
                    req.workflow_definition = Some(def);
                }
                (None, None) => unreachable!("clap requires --id or --file"),
            };
            let triggered = c.trigger(&agent_id, &req, TriggerKey::Generate).await?;
            let t = &triggered.response;
            if !watch {
                ctx.emit(t, |t| show::triggered(t, &agent_id, triggered.replayed));
                return Ok(0);
            }
            if !ctx.json {
                println!(
                    "Started workflow {} on agent {agent_id}: session {}",
                    t.workflow_id, t.session_id
                );
            }
            return watch::follow(ctx, &t.session_id).await;
        }
    }
    Ok(0)
}

async fn session(ctx: &Ctx, cmd: SessionCmd) -> Result<u8, Failure> {
    let c = &ctx.client;
    match cmd {
        SessionCmd::Get { session_id } => ctx.emit(&c.session(&session_id).await?, show::session),
        SessionCmd::List {
            agent_id: Some(agent_id),
            status,
            ..
        } => {
            if status.is_some() {
                return Err(Failure::Usage(
                    "--status filters the latest sessions of every agent: leave out AGENT".into(),
                ));
            }
            let id = agent_id.as_str();
            let page = collect(LIST_MAX, |p| async move { c.list_sessions(id, &p).await }).await?;
            ctx.emit(&page, |p| show::sessions(p, &agent_id));
        }
        SessionCmd::List {
            agent_id: None,
            status,
            limit,
        } => {
            let status = status
                .as_deref()
                .map(SessionStatus::parse)
                .transpose()
                .map_err(|e| Failure::Usage(format!("--status {e}")))?;
            let page = collect(limit as usize, |p| async move {
                c.list_sessions_across_agents(status, &p).await
            })
            .await?;
            ctx.emit(&page, show::latest_sessions);
        }
        SessionCmd::Cancel { session_id } => {
            let d = c.cancel_session(&session_id).await?;
            ctx.emit(&d, |d| {
                format!("Cancelled session {}.\n\n{}", d.summary.session_id, show::session(d))
            });
        }
        SessionCmd::Watch { session_id } => return watch::follow(ctx, &session_id).await,
    }
    Ok(0)
}

/// Fetches pages until `max` items or the last page. The result is one page in the API's shape:
/// `nextCursor` is set when there is more than was fetched.
async fn collect<T, F, Fut>(max: usize, mut fetch: F) -> Result<PageView<T>, Error>
where
    F: FnMut(PageOpts) -> Fut,
    Fut: Future<Output = Result<PageView<T>, Error>>,
{
    let mut items = Vec::new();
    let mut cursor = None;
    loop {
        let want = (max - items.len()).clamp(1, 100) as u32;
        let page = fetch(PageOpts {
            limit: Some(want),
            cursor: cursor.take(),
        })
        .await?;
        let empty = page.items.is_empty();
        items.extend(page.items);
        match page.next_cursor {
            Some(c) if items.len() < max && !empty => cursor = Some(c),
            next_cursor => return Ok(PageView { items, next_cursor }),
        }
    }
}

fn json_object(flag: &str, text: &str) -> Result<Map<String, Value>, Failure> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(Failure::Usage(format!(
            "{flag} must be a JSON object, e.g. '{{\"key\": \"value\"}}'"
        ))),
        Err(e) => Err(Failure::Usage(format!("{flag} is not valid JSON: {e}"))),
    }
}

fn definition_file(path: &Path) -> Result<DefinitionBody, Failure> {
    let ext_ok = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "json" | "yaml" | "yml"));
    if !ext_ok {
        return Err(Failure::Usage(format!(
            "{}: a workflow definition file must end in .json, .yaml or .yml",
            path.display()
        )));
    }
    let bytes = std::fs::read(path).map_err(|e| Failure::Usage(format!("cannot read {}: {e}", path.display())))?;
    Ok(DefinitionBody::for_path(path, bytes).expect("extension checked"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_tree_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_needs_exactly_one_source() {
        assert!(Cli::try_parse_from(["opscore", "workflow", "run", "a"]).is_err());
        assert!(Cli::try_parse_from(["opscore", "workflow", "run", "a", "--id", "w", "--file", "f.json"]).is_err());
        assert!(Cli::try_parse_from(["opscore", "workflow", "run", "a", "--id", "w", "--watch"]).is_ok());
        assert!(Cli::try_parse_from(["opscore", "workflow", "run", "a", "--file", "w.yaml"]).is_ok());
    }

    #[test]
    fn global_flags_go_anywhere() {
        let c = Cli::try_parse_from(["opscore", "agent", "list", "--json", "--api-url", "http://h/p"]).unwrap();
        assert!(c.json);
        assert_eq!(c.api_url, "http://h/p");
        assert!(Cli::try_parse_from(["opscore", "--timeout", "0", "health"]).is_err());
    }

    #[test]
    fn details_must_be_an_object() {
        assert!(json_object("--details", r#"{"a":1}"#).is_ok());
        assert!(matches!(json_object("--details", "[1]"), Err(Failure::Usage(_))));
        assert!(matches!(json_object("--details", "{"), Err(Failure::Usage(_))));
    }
}
