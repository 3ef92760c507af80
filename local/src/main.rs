//! `cargo run --release --bin opscore-local`: the whole stack on 127.0.0.1. See README.md.

use opscore_local::{Options, Stack, StoreChoice};

const HELP: &str = "opscore-local: Ops-Core's state API, webhook and workflow runner on 127.0.0.1

Options:
  --port N                  port to listen on (default 3000; 0 picks a free one)
  --dynamodb-endpoint URL   use DynamoDB Local or AWS instead of the embedded store
  --data FILE               keep the embedded store in FILE (default: in memory)
  --store embedded|memory   embedded DynamoDB-compatible store (default), or the in-memory
                            store (no DynamoDB; the fastest, for load tests)
  --table NAME              table name (default opscore-local, or OPSCORE_TABLE_NAME)
Environment: OPSCORE_API_KEY, OPSCORE_WEBHOOK_SECRET (comma-separated; generated when unset),
AGENTKIT_API_URL (default http://127.0.0.1:8000), RUST_LOG, OPSCORE_LOG_FORMAT=json|text.";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut opts = Options::from_env()?;
    opts.config.json_logs = std::env::var("OPSCORE_LOG_FORMAT").is_ok_and(|v| v == "json");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        match a.as_str() {
            "--port" => opts.port = value("--port")?.parse().map_err(|_| "--port needs a number")?,
            "--dynamodb-endpoint" => {
                opts.store = StoreChoice::Dynamo {
                    endpoint: value("--dynamodb-endpoint")?,
                }
            }
            "--data" => {
                opts.store = StoreChoice::Embedded {
                    file: Some(value("--data")?.into()),
                }
            }
            "--store" => {
                opts.store = match value("--store")?.as_str() {
                    "embedded" => StoreChoice::Embedded { file: None },
                    "memory" => StoreChoice::Memory,
                    other => return Err(format!("--store takes embedded or memory, not {other:?}").into()),
                }
            }
            "--table" => opts.table = value("--table")?,
            "-h" | "--help" => {
                println!("{HELP}");
                return Ok(());
            }
            other => return Err(format!("unknown argument {other:?}\n\n{HELP}").into()),
        }
    }
    opscore_http::lambda::init_tracing(opts.config.json_logs);
    let stack = Stack::start(opts).await?;
    let url = stack.url();
    println!("Ops-Core local stack");
    println!("  state API       {url}  (OpenAPI: {url}/openapi.json)");
    println!("  notify webhook  {url}/v1/opscore/internal/agent/notify");
    println!("  store           {}", stack.store_description);
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
    tokio::signal::ctrl_c().await?;
    println!("stopping");
    stack.stop().await;
    Ok(())
}
