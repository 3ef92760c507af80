//! `opscore-backfill-keys`: step 3 of the in-place upgrade to the sharded list keys of issue 16
//! (docs/deploy.md). Rewrites `gsi1pk`/`gsi2pk` of the agents and workflow versions written
//! before it; see `opscore_dynamo::backfill` for the conditions that make it safe beside live
//! traffic and idempotent.
//!
//! After each page it prints one JSON line with that page's counts and `next`, the position to
//! pass to `--start-after` if the run is interrupted; the last line has `"done": true` and the
//! totals.

use clap::Parser;
use opscore_dynamo::backfill::{BackfillCounts, KeyBackfill, ScanPosition};
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "opscore-backfill-keys",
    about = "Rewrite the list keys (gsi1pk, gsi2pk) of agents and workflow versions written before issue 16"
)]
struct Args {
    /// The table (the stack's `TableName` output).
    #[arg(long)]
    table: String,
    /// A local endpoint (DynamoDB Local, `http://127.0.0.1:8000`); AWS (the default credential
    /// chain and region) when absent.
    #[arg(long)]
    endpoint: Option<String>,
    /// Count what would change; write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Resume after this position: the `next` object a previous run printed, as JSON
    /// (`{"pk":"…","sk":"…"}`).
    #[arg(long, value_parser = parse_position)]
    start_after: Option<ScanPosition>,
    /// Items the Scan evaluates per page.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(i32).range(1..))]
    page_size: i32,
}

fn parse_position(s: &str) -> Result<ScanPosition, String> {
    serde_json::from_str(s).map_err(|e| format!("expected {{\"pk\":\"…\",\"sk\":\"…\"}}: {e}"))
}

fn line(counts: &BackfillCounts, next: Option<&ScanPosition>, done: bool, dry_run: bool) -> String {
    serde_json::json!({ "dryRun": dry_run, "done": done, "counts": counts, "next": next }).to_string()
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    let client = opscore_dynamo::client_for_endpoint(args.endpoint.as_deref()).await;
    let mut backfill = KeyBackfill::new(client, args.table);
    backfill.dry_run = args.dry_run;
    backfill.page_size = args.page_size;
    let result = backfill
        .run(args.start_after, |page| {
            println!("{}", line(&page.counts, page.next.as_ref(), false, args.dry_run));
        })
        .await;
    match result {
        Ok(total) => {
            println!("{}", line(&total, None, true, args.dry_run));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("opscore-backfill-keys: {e}; resume with --start-after and the last `next` printed");
            ExitCode::FAILURE
        }
    }
}
