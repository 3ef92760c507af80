//! moto's server (PyPI), a real local implementation of Secrets Manager, SQS and SSM, for tests:
//! one [`MotoServer`] per test that needs one, on a free port, stopped by its PID when dropped.
//!
//! It runs from the git-ignored virtualenv `.tmp/moto`, which `bash tools/install-moto.sh`
//! creates (`.ci/run` runs it; [`MotoServer::start`] runs it too when the server is missing).
//! Set `OPSCORE_MOTO_ENDPOINT` to use a moto server that is already running instead.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The command that installs the server.
pub const INSTALL_HINT: &str = "bash tools/install-moto.sh";
const READY_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub struct MotoServer {
    /// `http://127.0.0.1:{port}`
    pub endpoint: String,
    /// The server process, when this test started it (`None` with `OPSCORE_MOTO_ENDPOINT`).
    child: Option<Child>,
    pub log: Option<PathBuf>,
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// `.tmp/moto/bin/moto_server`, installed by [`INSTALL_HINT`] first if missing (the script holds
/// a lock, so tests of several processes install it once).
pub fn moto_server_binary() -> Result<PathBuf, String> {
    let root = workspace_root();
    let bin = root.join(".tmp/moto/bin/moto_server");
    if bin.is_file() {
        return Ok(bin);
    }
    let status = Command::new("bash")
        .arg(root.join("tools/install-moto.sh"))
        .current_dir(&root)
        .stdin(Stdio::null())
        .status()
        .map_err(|e| format!("cannot run `{INSTALL_HINT}`: {e}"))?;
    if !status.success() || !bin.is_file() {
        return Err(format!(
            "moto's server is not installed and `{INSTALL_HINT}` failed ({status}); it needs python3 with venv and PyPI"
        ));
    }
    Ok(bin)
}

impl MotoServer {
    /// Starts a server on a free port of 127.0.0.1 and waits until it answers. Panics with the
    /// install command or the server's log when it cannot.
    pub async fn start() -> MotoServer {
        match Self::try_start().await {
            Ok(m) => m,
            Err(e) => panic!("moto server: {e}"),
        }
    }

    async fn try_start() -> Result<MotoServer, String> {
        if let Ok(endpoint) = std::env::var("OPSCORE_MOTO_ENDPOINT")
            && !endpoint.trim().is_empty()
        {
            let mut m = MotoServer {
                endpoint: endpoint.trim().trim_end_matches('/').to_owned(),
                child: None,
                log: None,
            };
            m.wait_ready().await?;
            return Ok(m);
        }
        let bin = moto_server_binary()?;
        let port = crate::free_port();
        let log = std::env::temp_dir().join(format!("opscore-moto-{}-{port}.log", std::process::id()));
        let log_file = std::fs::File::create(&log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
        let child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .current_dir(std::env::temp_dir())
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().map_err(|e| e.to_string())?)
            .stderr(log_file)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        // From here on, Drop stops the process whatever happens.
        let mut m = MotoServer {
            endpoint: format!("http://127.0.0.1:{port}"),
            child: Some(child),
            log: Some(log),
        };
        match m.wait_ready().await {
            Ok(()) => Ok(m),
            Err(e) => {
                m.stop();
                let tail = m
                    .log
                    .as_deref()
                    .and_then(|l| std::fs::read_to_string(l).ok())
                    .unwrap_or_default();
                Err(format!("{e}; its log:\n{tail}"))
            }
        }
    }

    /// The process id of the server this test started.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    async fn wait_ready(&mut self) -> Result<(), String> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .map_err(|e| e.to_string())?;
        // moto's own API: answers once the server serves.
        let url = format!("{}/moto-api/data.json", self.endpoint);
        let started = Instant::now();
        let mut last = String::new();
        while started.elapsed() < READY_TIMEOUT {
            match http.get(&url).send().await {
                Ok(r) if r.status().is_success() => return Ok(()),
                Ok(r) => last = format!("status {}", r.status()),
                Err(e) => last = e.to_string(),
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(format!("the server exited ({status})"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!(
            "{} did not answer within {READY_TIMEOUT:?} (last: {last})",
            self.endpoint
        ))
    }

    /// Stops the server (SIGKILL to its PID) and reaps it.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        self.stop();
    }
}
