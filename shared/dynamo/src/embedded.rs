//! An embedded DynamoDB-compatible store (dynoxide, SQLite underneath) served over HTTP on
//! 127.0.0.1, for the local stack and fast tests. The unmodified SDK talks to it, so the adapter
//! runs exactly as against DynamoDB.

use std::path::Path;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How often expired items (TTL) are deleted: dynoxide has no sweeper of its own.
pub const TTL_SWEEP_INTERVAL: Duration = Duration::from_secs(5);

/// A running embedded store. Stops serving when dropped (requests under way finish first).
pub struct EmbeddedDynamo {
    /// `http://127.0.0.1:{port}`: pass to [`crate::client_for_endpoint`].
    pub endpoint: String,
    db: dynoxide::Database,
    shutdown: Option<oneshot::Sender<()>>,
    server: JoinHandle<()>,
    sweeper: JoinHandle<()>,
}

impl std::fmt::Debug for EmbeddedDynamo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedDynamo")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl EmbeddedDynamo {
    /// An in-memory store (gone when dropped). Must be called inside a Tokio runtime.
    pub async fn start() -> std::io::Result<Self> {
        let db = dynoxide::Database::memory().map_err(std::io::Error::other)?;
        Self::serve(db).await
    }

    /// A store kept in a SQLite file (created if missing), for a local stack that survives restarts.
    pub async fn start_with_file(path: &Path) -> std::io::Result<Self> {
        let path = path
            .to_str()
            .ok_or_else(|| std::io::Error::other(format!("not a UTF-8 path: {}", path.display())))?;
        let db = dynoxide::Database::new(path).map_err(std::io::Error::other)?;
        Self::serve(db).await
    }

    async fn serve(db: dynoxide::Database) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let (tx, rx) = oneshot::channel::<()>();
        let server_db = db.clone();
        let server = tokio::spawn(async move {
            let shutdown = async move {
                let _ = rx.await;
            };
            if let Err(e) = dynoxide::server::serve_with_shutdown(listener, server_db, shutdown).await {
                tracing::error!(error = %e, "embedded DynamoDB server stopped");
            }
        });
        let sweep_db = db.clone();
        let sweeper = tokio::spawn(async move {
            let mut tick = tokio::time::interval(TTL_SWEEP_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let db = sweep_db.clone();
                match tokio::task::spawn_blocking(move || db.sweep_ttl()).await {
                    Ok(Ok(n)) if n > 0 => tracing::debug!(deleted = n, "TTL sweep"),
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::warn!(error = %e, "TTL sweep failed"),
                    Err(_) => return,
                }
            }
        });
        Ok(Self {
            endpoint,
            db,
            shutdown: Some(tx),
            server,
            sweeper,
        })
    }

    /// The database itself (e.g. to sweep TTL now in a test).
    pub fn database(&self) -> &dynoxide::Database {
        &self.db
    }

    /// A DynamoDB client for this store.
    pub async fn client(&self) -> aws_sdk_dynamodb::Client {
        crate::client_for_endpoint(Some(&self.endpoint)).await
    }

    /// A DynamoDB Streams client for this store.
    pub async fn streams_client(&self) -> aws_sdk_dynamodbstreams::Client {
        crate::streams_client_for_endpoint(Some(&self.endpoint)).await
    }

    /// Stops serving and waits until the server has finished.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.sweeper.abort();
        let _ = (&mut self.server).await;
    }
}

impl Drop for EmbeddedDynamo {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.sweeper.abort();
    }
}
