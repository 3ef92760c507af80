//! `cargo run --release --bin opscore-local`: the whole stack on 127.0.0.1. See README.md.

use opscore_local::{Options, Stack, StoreChoice, default_data_file};
use opscore_sqlite::Durability;
use std::process::ExitCode;

const HELP: &str = "opscore-local: Ops-Core's state API, webhook and workflow runner on 127.0.0.1

Options:
  --port N                  port to listen on (default 3000; 0 picks a free one)
  --data FILE               keep the data in FILE (default: opscore-local.db in OPSCORE_DATA_DIR,
                            else $XDG_DATA_HOME/opscore, else ~/.local/share/opscore)
  --sync                    sync every commit to disk (survives a power cut, not only a crash)
  --ephemeral               a throwaway store in a temporary file, deleted on exit
  --store memory            the in-memory adapter (no SQLite; everything is lost on exit)
  --dynamodb-endpoint URL   use DynamoDB Local or AWS instead of the local data file
  --table NAME              DynamoDB table name (default opscore-local, or OPSCORE_TABLE_NAME)
Environment: OPSCORE_API_KEY, OPSCORE_WEBHOOK_SECRET (comma-separated; generated when unset),
AGENTKIT_API_URL (default http://127.0.0.1:8000), OPSCORE_DATA_DIR, RUST_LOG,
OPSCORE_LOG_FORMAT=json|text. SIGINT (Ctrl-C) or SIGTERM stops it gracefully.";

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("opscore-local: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut opts = Options::from_env()?;
    opts.config.json_logs = std::env::var("OPSCORE_LOG_FORMAT").is_ok_and(|v| v == "json");
    let Some(choice) = parse_args(&mut opts)? else {
        println!("{HELP}");
        return Ok(());
    };
    opts.store = choice;
    opscore_http::init_tracing(opts.config.json_logs);
    let stack = Stack::start(opts).await?;
    let url = stack.url();
    println!("Ops-Core local stack");
    println!("  state API       {url}  (OpenAPI: {url}/openapi.json)");
    println!("  console         {url}/console");
    println!("  notify webhook  {url}/v1/opscore/internal/agent/notify");
    println!("  data            {}", stack.store_description);
    println!("  AgentKit        {}", stack.agentkit_url);
    println!("  sample workflow sample_workflow_id");
    match &stack.generated.api_key {
        Some(k) => println!("  OPSCORE_API_KEY={k}   (generated; set OPSCORE_API_KEY to choose)"),
        None => println!("  OPSCORE_API_KEY from the environment"),
    }
    match &stack.generated.webhook_secret {
        Some(s) => println!("  OPSCORE_WEBHOOK_SECRET={s}   (generated; give AgentKit the same)"),
        None => println!("  OPSCORE_WEBHOOK_SECRET from the environment"),
    }
    println!("READY {url}");
    let signal = stop_signal().await?;
    println!("stopping ({signal})");
    stack.stop().await;
    println!("stopped");
    Ok(())
}

/// The store the arguments choose (`None` for `--help`).
fn parse_args(opts: &mut Options) -> Result<Option<StoreChoice>, String> {
    let mut store = opts.store.clone();
    let mut sync = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        match a.as_str() {
            "--port" => opts.port = value("--port")?.parse().map_err(|_| "--port needs a number")?,
            "--dynamodb-endpoint" => {
                store = StoreChoice::Dynamo {
                    endpoint: value("--dynamodb-endpoint")?,
                }
            }
            "--data" => {
                store = StoreChoice::File {
                    path: value("--data")?.into(),
                    durability: Durability::Process,
                }
            }
            "--sync" => sync = true,
            "--ephemeral" => store = StoreChoice::Ephemeral,
            "--store" => {
                store = match value("--store")?.as_str() {
                    "memory" => StoreChoice::Memory,
                    "file" => StoreChoice::File {
                        path: default_data_file(&opts.config),
                        durability: Durability::Process,
                    },
                    other => return Err(format!("--store takes file or memory, not {other:?}")),
                }
            }
            "--table" => opts.table = value("--table")?,
            "-h" | "--help" => return Ok(None),
            other => return Err(format!("unknown argument {other:?}\n\n{HELP}")),
        }
    }
    if sync {
        match &mut store {
            StoreChoice::File { durability, .. } => *durability = Durability::Sync,
            _ => return Err("--sync applies to the data file only".into()),
        }
    }
    Ok(Some(store))
}

/// Waits for SIGINT or SIGTERM; says which.
async fn stop_signal() -> std::io::Result<&'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}
