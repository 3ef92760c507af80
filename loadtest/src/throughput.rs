//! Scenario R, runner throughput: how many tasks per second go through the workflow runner.
//!
//! `--agents` agents register (signed webhook) and report idle; a workflow that chains `--chain`
//! tasks is stored; then every agent gets `--sessions-per-agent` sessions, triggered all at once
//! (at most 64 triggers in flight). Each task goes the whole way: the runner claims it, dispatches
//! it to the fake AgentKit, the simulated agent reports `active`, works `--agent-work-ms`, reports
//! `idle` naming the attempt, the runner completes it and makes the next one runnable. An agent
//! runs one task at a time, so the work is `agents` parallel chains of `sessions × chain` tasks.
//!
//! Figures: tasks/s end to end (first trigger → every session completed), tasks/s in the steady
//! middle (dispatches between the 10th and the 90th percentile of dispatch times), trigger → first
//! dispatch, and DynamoDB requests per task (on the wire, stream reader included).

use crate::fake::Sessions;
use crate::metrics::{Lat, new_hist};
use crate::{Args, Ctx, Target, drain_sessions, loadavg, start_target, store_name, wait_idle};
use futures::StreamExt;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// The definition every session runs: `chain` tasks linked by `nextTaskId`.
pub const WORKFLOW_ID: &str = "throughput_chain";

fn chain_definition(chain: usize, routed: bool) -> Value {
    let tasks: Vec<Value> = (1..=chain)
        .map(|i| {
            let mut t = json!({"taskId": format!("t{i}"), "name": format!("Step {i}"), "parameters": {"step": i},
                   "nextTaskId": if i < chain { Value::from(format!("t{}", i + 1)) } else { Value::Null }});
            if routed {
                t["agentCapability"] = json!("test_capability");
            }
            t
        })
        .collect();
    let version = if routed {
        format!("{chain}-routed")
    } else {
        format!("{chain}")
    };
    json!({"id": WORKFLOW_ID, "name": "Runner throughput chain", "version": version, "tasks": tasks,
           "routeByCapability": routed})
}

/// The scenario's sizes after defaults (full run, or the smoke preset).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ThroughputPlan {
    pub agents: usize,
    pub sessions_per_agent: usize,
    pub chain: usize,
    pub agent_work_ms: u64,
    pub drain_s: u64,
    /// Every task routed by capability (`--routed`).
    pub routed: bool,
}

impl ThroughputPlan {
    pub fn of(a: &Args) -> Self {
        let (agents, sessions, chain) = if a.smoke { (20, 1, 3) } else { (100, 2, 5) };
        Self {
            agents: a.agents.unwrap_or(agents),
            sessions_per_agent: a.sessions_per_agent.unwrap_or(sessions),
            chain: a.chain.unwrap_or(chain).max(1),
            agent_work_ms: a.agent_work_ms,
            drain_s: if a.smoke { a.drain.min(60) } else { a.drain.max(120) },
            routed: a.routed,
        }
    }

    pub fn tasks(&self) -> usize {
        self.agents * self.sessions_per_agent * self.chain
    }
}

/// Runs scenario R on a fresh target; returns (passed the checks, result JSON).
pub async fn run(a: &Args) -> Result<(bool, Value), String> {
    let p = ThroughputPlan::of(a);
    let busy = wait_idle(a.wait_idle).await;
    let load_before = loadavg();
    let rec = Arc::new(crate::metrics::Recorder::new());
    let target = start_target(a, rec.clone()).await?;
    println!(
        "R runner throughput{}: {} agents x {} sessions x {} tasks = {} tasks, agent work {} ms ({}, {})",
        if p.routed { " (routed by capability)" } else { "" },
        p.agents,
        p.sessions_per_agent,
        p.chain,
        p.tasks(),
        p.agent_work_ms,
        target.description,
        target.base
    );
    let ctx = Ctx::new(a, &target, rec.clone(), 128, i64::MAX, (0, 0))?;

    // Setup, not measured: the definition and the agents, idle.
    let def = ctx
        .http
        .post(format!("{}/v1/opscore/workflows", ctx.base))
        .bearer_auth(&ctx.key)
        .json(&chain_definition(p.chain, p.routed));
    ctx.call("setup:workflow", def, 201)
        .await
        .ok_or("storing the chain workflow failed")?;
    let run = crate::Uuid8::new();
    let agents: Vec<String> = (0..p.agents).map(|i| format!("rt-{run}-{i}")).collect();
    let ready = futures::stream::iter(agents.clone())
        .map(|id| {
            let ctx = ctx.clone();
            async move { ctx.register(&id, &id).await && ctx.post_state(&id, "idle").await }
        })
        .buffer_unordered(32)
        .filter(|ok| std::future::ready(*ok))
        .count()
        .await;
    if ready != p.agents {
        return Err(format!("only {ready} of {} agents registered and idle", p.agents));
    }
    // Let the runner see the setup's changes before the clock starts.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let ddb_before = target.proxy.as_ref().map(|p| p.counts());
    let units_before = target.proxy.as_ref().map(|p| p.units());
    let runs_before = ctx.sessions.runs.load(Ordering::Relaxed);
    let started = Instant::now();
    let triggers: Vec<String> = (0..p.sessions_per_agent).flat_map(|_| agents.iter().cloned()).collect();
    futures::stream::iter(triggers)
        .map(|agent| {
            let ctx = ctx.clone();
            async move { ctx.trigger(&agent, WORKFLOW_ID).await }
        })
        .buffer_unordered(64)
        .collect::<Vec<()>>()
        .await;
    let triggered_in = started.elapsed();
    let triggered = ctx.sessions.triggered.lock().unwrap().len();

    // Wait for every dispatch the plan implies (cheap: a counter in the fake), then for every
    // session to be recorded as ended (a few GETs at the end only).
    let expected = runs_before + (triggered * p.chain) as u64;
    let limit = Instant::now() + Duration::from_secs(p.drain_s);
    while ctx.sessions.runs.load(Ordering::Relaxed) < expected && Instant::now() < limit {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let sessions = drain_sessions(
        &ctx,
        limit.saturating_duration_since(Instant::now()),
        Duration::from_millis(20),
    )
    .await;
    let elapsed = started.elapsed();
    let ddb_after = target.proxy.as_ref().map(|p| p.counts());
    let units_after = target.proxy.as_ref().map(|p| p.units());
    let load_after = loadavg();

    let tasks_done = sessions.completed * p.chain;
    let end_to_end = tasks_done as f64 / elapsed.as_secs_f64();
    let steady = steady_rate(&ctx.sessions, started);
    let first_dispatch = trigger_to_first_dispatch(&ctx.sessions);
    let ddb = ddb_before.zip(ddb_after).map(|(b, after)| {
        let mut per_task = BTreeMap::new();
        let mut total = 0u64;
        for (op, n) in &after {
            let d = n - b.get(op).copied().unwrap_or(0);
            total += d;
            per_task.insert(op.clone(), (d as f64 / tasks_done.max(1) as f64 * 100.0).round() / 100.0);
        }
        json!({"per_task_by_operation": per_task, "total": total,
               "per_task": total as f64 / tasks_done.max(1) as f64,
               "note": "every DynamoDB and DynamoDB Streams request from the first trigger to the last session ended, counted on the wire, divided by the tasks completed: the runner's, the API's for the agents' reports and the triggers, the stream reader's, and the final session reads"})
    });
    // Capacity units per task, as the store reported them, per table and index.
    let units = units_before.zip(units_after).map(|(b, after)| {
        let mut per_task = BTreeMap::new();
        let (mut read, mut write) = (0.0, 0.0);
        for (k, v) in &after {
            let d = v - b.get(k).copied().unwrap_or(0.0);
            if k.ends_with(" read") {
                read += d;
            } else {
                write += d;
            }
            per_task.insert(k.clone(), (d / tasks_done.max(1) as f64 * 100.0).round() / 100.0);
        }
        json!({"read_per_task": read / tasks_done.max(1) as f64,
               "write_per_task": write / tasks_done.max(1) as f64,
               "per_task_by_target": per_task,
               "note": "ConsumedCapacity of every answer during the run (the adapter asks for it per table and index), divided by the tasks completed"})
    });
    // The heat check: every write the run made (setup included), from the table's stream.
    let heat = match &target.dynamo {
        Some((endpoint, table)) => match heat_of_run(endpoint, table).await {
            Err(e) => {
                println!("  heat check failed: {e}");
                Some(json!({ "error": e }))
            }
            Ok(h) => {
                let hottest = h.hottest();
                println!(
                    "  heat check (whole run, from the stream): {}",
                    h.report().replace('\n', "\n    ")
                );
                Some(json!({
                    "writes": h.total(),
                    "per_target": h.per_target(),
                    "hottest_key": hottest.as_ref().map(|x| json!({"target": x.target.0, "partition_key": x.target.1, "writes": x.writes, "share": x.share})),
                    "hottest_per_target": h.hottest_per_target().iter().map(|x| json!({"target": x.target.0, "partition_key": x.target.1, "writes": x.writes, "share_of_target": x.share})).collect::<Vec<_>>(),
                    "note": "every item change in the table's stream (TRIM_HORIZON to end), with the index writes DynamoDB's rules give for the table's indexes (opscore_dynamo::heat)"
                }))
            }
        },
        None => None,
    };
    let server_errors = rec.server_errors();
    let ok = server_errors == 0 && sessions.completed == triggered && triggered == p.agents * p.sessions_per_agent;

    let label = a.label.clone().unwrap_or_else(|| store_name(a).to_owned());
    let name = if p.routed {
        format!("r-routed-{label}")
    } else {
        format!("r-{label}")
    };
    let result = json!({
        "name": name,
        "scenario": "r",
        "store": store_name(a),
        "target": target.description,
        "plan": p,
        "machine": {
            "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "loadavg_before": load_before,
            "loadavg_after": load_after,
            "busy_processes_at_start": busy,
            "note": "the stack, its store, the fake AgentKit, the simulated agents and the load generator share this machine's cores in one process",
        },
        "tasks": {
            "planned": p.tasks(),
            "completed": tasks_done,
            "elapsed_s": elapsed.as_secs_f64(),
            "triggers_sent_in_s": triggered_in.as_secs_f64(),
            "per_second_end_to_end": end_to_end,
            "per_second_steady": steady,
        },
        "trigger_to_first_dispatch": first_dispatch,
        "sessions": sessions,
        "requests": rec.summary(elapsed),
        "dynamodb": ddb,
        "capacity_units": units,
        "heat": heat,
        "server_errors_5xx": server_errors,
        "check_passed": ok,
    });
    std::fs::create_dir_all(&a.results_dir).map_err(|e| e.to_string())?;
    let path = a.results_dir.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_string_pretty(&result).unwrap()).map_err(|e| e.to_string())?;
    println!(
        "  {tasks_done}/{} tasks in {:.2} s: {end_to_end:.0} tasks/s end to end, {} tasks/s steady; \
         sessions {} completed, {} failed, {} not ended",
        p.tasks(),
        elapsed.as_secs_f64(),
        steady.map(|s| format!("{s:.0}")).unwrap_or_else(|| "-".into()),
        sessions.completed,
        sessions.failed,
        sessions.not_ended
    );
    if let Some(l) = &first_dispatch {
        println!(
            "  trigger sent -> first dispatch: p50 {} ms, p90 {} ms, p99 {} ms, max {} ms",
            l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms
        );
    }
    if let Some(d) = result["dynamodb"].as_object() {
        println!(
            "  DynamoDB requests per task: {:.2} {}",
            d["per_task"].as_f64().unwrap_or(0.0),
            d["per_task_by_operation"]
        );
    }
    if let Some(u) = result["capacity_units"].as_object() {
        println!(
            "  capacity units per task: {:.2} read, {:.2} write {}",
            u["read_per_task"].as_f64().unwrap_or(0.0),
            u["write_per_task"].as_f64().unwrap_or(0.0),
            u["per_task_by_target"]
        );
    }
    println!("  result {}", path.display());
    stop(target).await;
    Ok((ok, result))
}

/// Dispatches per second between the 10th and the 90th percentile of dispatch times (the ramp-up
/// of the triggers and the tail of the last chains left out).
fn steady_rate(s: &Sessions, since: Instant) -> Option<f64> {
    let mut at: Vec<Instant> = s
        .run_times
        .lock()
        .unwrap()
        .iter()
        .copied()
        .filter(|t| *t >= since)
        .collect();
    if at.len() < 20 {
        return None;
    }
    at.sort();
    let (lo, hi) = (at.len() / 10, at.len() * 9 / 10);
    let span = at[hi].duration_since(at[lo]).as_secs_f64();
    (span > 0.0).then(|| (hi - lo) as f64 / span)
}

/// First `/run` of each session minus the moment its trigger was sent.
fn trigger_to_first_dispatch(s: &Sessions) -> Option<Lat> {
    let triggered = s.triggered.lock().unwrap();
    let first = s.first_run.lock().unwrap();
    let mut h = new_hist();
    for (sid, (sent, _)) in triggered.iter() {
        if let Some(at) = first.get(sid) {
            let _ = h.record((at.saturating_duration_since(*sent).as_micros() as u64).max(1));
        }
    }
    (!h.is_empty()).then(|| Lat::of(&h))
}

async fn stop(target: Target) {
    if let Some(stack) = target.stack {
        stack.stop().await;
    }
}

/// The heat of everything the run wrote, read back from the table's stream. The stream of a long
/// run is big and the debug-built embedded store reads it slowly, so this client waits up to two
/// minutes per call instead of the adapter's 8 s.
async fn heat_of_run(endpoint: &str, table: &str) -> Result<opscore_dynamo::heat::Heat, String> {
    use aws_sdk_dynamodbstreams::config::timeout::TimeoutConfig;
    let conf = opscore_dynamo::sdk_config(Some(endpoint)).await;
    let conf = aws_sdk_dynamodbstreams::config::Builder::from(&conf)
        .timeout_config(
            TimeoutConfig::builder()
                .operation_timeout(Duration::from_secs(120))
                .operation_attempt_timeout(Duration::from_secs(120))
                .build(),
        )
        .build();
    let client = aws_sdk_dynamodbstreams::Client::from_conf(conf);
    opscore_dynamo::heat::heat_of_stream(&client, table).await
}
