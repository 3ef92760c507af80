//! moto's server for tests: a real local implementation of SQS (and Secrets Manager, SSM), from
//! PyPI, started per test on a free port of 127.0.0.1 and stopped by its pid when dropped.
//!
//! `bash tools/install-moto.sh` installs it into the git-ignored virtualenv `.tmp/moto`; the
//! harness runs that script itself when `moto_server` is missing (it needs `python3` and PyPI).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The command that installs moto's server.
pub const INSTALL_HINT: &str = "bash tools/install-moto.sh";
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// The account moto serves queues under (queue ARNs and URLs carry it).
pub const MOTO_ACCOUNT: &str = "123456789012";

/// A running moto server. Dropping it stops the process.
#[derive(Debug)]
pub struct MotoServer {
    /// `http://127.0.0.1:{port}`
    pub endpoint: String,
    pub log: PathBuf,
    child: Child,
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// `.tmp/moto/bin/moto_server`, installed first when missing.
fn moto_server_bin() -> Result<PathBuf, String> {
    let root = workspace_root();
    let bin = root.join(".tmp/moto/bin/moto_server");
    if !bin.is_file() {
        let status = Command::new("bash")
            .arg(root.join("tools/install-moto.sh"))
            .current_dir(&root)
            .status()
            .map_err(|e| format!("cannot run {INSTALL_HINT}: {e}"))?;
        if !status.success() || !bin.is_file() {
            return Err(format!(
                "moto is not installed and `{INSTALL_HINT}` failed ({status}); run it in the workspace root"
            ));
        }
    }
    Ok(bin)
}

impl MotoServer {
    /// Starts a moto server on a free port and waits until it answers. Panics with the install
    /// command or the server's log when it cannot.
    pub async fn start() -> MotoServer {
        match Self::try_start().await {
            Ok(m) => m,
            Err(e) => panic!("moto server: {e}"),
        }
    }

    async fn try_start() -> Result<MotoServer, String> {
        let bin = tokio::task::spawn_blocking(moto_server_bin)
            .await
            .map_err(|e| e.to_string())??;
        let port = crate::free_port();
        let log = std::env::temp_dir().join(format!("opscore-moto-{}-{port}.log", std::process::id()));
        let log_file = std::fs::File::create(&log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
        let child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().map_err(|e| e.to_string())?)
            .stderr(log_file)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let mut server = MotoServer {
            endpoint: format!("http://127.0.0.1:{port}"),
            log,
            child,
        };
        server.wait_ready().await?;
        Ok(server)
    }

    async fn wait_ready(&mut self) -> Result<(), String> {
        let http = reqwest::Client::new();
        let started = Instant::now();
        let mut last = String::new();
        while started.elapsed() < READY_TIMEOUT {
            // moto's own API answers once the server is up.
            match http.get(format!("{}/moto-api/data.json", self.endpoint)).send().await {
                Ok(r) if r.status().is_success() => return Ok(()),
                Ok(r) => last = format!("status {}", r.status()),
                Err(e) => last = e.to_string(),
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                last = format!("exited with {status}");
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        Err(format!(
            "no answer from {} within {READY_TIMEOUT:?} ({last}); log:\n{log}",
            self.endpoint
        ))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// An SQS client for this server (bound to the calling test's runtime).
    pub async fn sqs_client(&self) -> aws_sdk_sqs::Client {
        aws_sdk_sqs::Client::new(&opscore_dynamo::sdk_config(Some(&self.endpoint)).await)
    }

    /// Creates a standard queue named `name`; returns its URL.
    pub async fn create_queue(&self, name: &str) -> String {
        let client = self.sqs_client().await;
        let out = client
            .create_queue()
            .queue_name(name)
            .send()
            .await
            .unwrap_or_else(|e| panic!("create queue {name}: {}", aws_sdk_sqs::error::DisplayErrorContext(e)));
        out.queue_url().expect("a queue URL").to_owned()
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        // Our own child, by its pid.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Received SQS messages as the event Lambda's SQS event source mapping hands the function.
pub fn lambda_sqs_event(messages: &[aws_sdk_sqs::types::Message], queue_name: &str) -> serde_json::Value {
    let records: Vec<serde_json::Value> = messages
        .iter()
        .map(|m| {
            let attributes: serde_json::Map<String, serde_json::Value> = m
                .attributes()
                .map(|a| {
                    a.iter()
                        .map(|(k, v)| (k.as_str().to_owned(), serde_json::Value::String(v.clone())))
                        .collect()
                })
                .unwrap_or_default();
            serde_json::json!({
                "messageId": m.message_id(),
                "receiptHandle": m.receipt_handle(),
                "body": m.body(),
                "attributes": attributes,
                "messageAttributes": {},
                "md5OfBody": m.md5_of_body(),
                "eventSource": "aws:sqs",
                "eventSourceARN": format!("arn:aws:sqs:{}:{MOTO_ACCOUNT}:{queue_name}", opscore_dynamo::LOCAL_REGION),
                "awsRegion": opscore_dynamo::LOCAL_REGION,
            })
        })
        .collect();
    serde_json::json!({ "Records": records })
}
