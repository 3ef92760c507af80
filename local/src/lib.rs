//! The whole Ops-Core stack in one process: the state API and webhook routes on 127.0.0.1, and
//! the workflow runner driven by the store's change feed and a timer sweep. The store is SQLite in
//! a file by default (durable across restarts and crashes), a throwaway one, the in-memory
//! adapter, or DynamoDB (DynamoDB Local or AWS) through the real adapter and its stream.

pub mod feed;
mod protocol_errors;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use metrics_exporter_prometheus::PrometheusHandle;
use opscore_agentkit::AgentKitClient;
use opscore_core::app::App;
use opscore_core::config::{Config, Secret};
use opscore_core::memory::InMemoryStore;
use opscore_core::metrics::Metrics;
use opscore_core::runner::Runner;
use opscore_core::store::Store;
use opscore_core::time::SystemClock;
use opscore_core::workflow::{Format, WorkflowDefinition};
use opscore_http::{HttpRouter, Surface};
use opscore_sqlite::{Durability, SqliteStore};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

/// The sample workflow of the original Ops-Core (`sample_workflow_id`), seeded at start.
pub const SAMPLE_WORKFLOW: &str = include_str!("../sample-workflow.json");

/// AgentKit's own default address, used when `AGENTKIT_API_URL` is not set.
pub const DEFAULT_AGENTKIT_URL: &str = "http://127.0.0.1:8000";

/// Where the stack keeps its state. Every choice passes the same storage contract suite.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreChoice {
    /// The default: SQLite in `path` (WAL), durable across restarts and crashes, locked to this
    /// process.
    File {
        path: std::path::PathBuf,
        durability: Durability,
    },
    /// SQLite in a temporary file, deleted on exit: a throwaway store.
    Ephemeral,
    /// DynamoDB Local or AWS, through the real DynamoDB adapter and the table's stream.
    Dynamo { endpoint: String },
    /// The in-memory adapter (no SQLite, no DynamoDB): state is lost on exit.
    Memory,
}

/// The data file when none is named: `opscore-local.db` in the configured data directory
/// (`OPSCORE_DATA_DIR`, else `$XDG_DATA_HOME/opscore`, else `~/.local/share/opscore`), else in `./.opscore`.
pub fn default_data_file(config: &Config) -> std::path::PathBuf {
    config
        .data_dir
        .clone()
        .unwrap_or_else(|| ".opscore".into())
        .join("opscore-local.db")
}

#[derive(Debug, Clone)]
pub struct Options {
    pub port: u16,
    pub store: StoreChoice,
    pub table: String,
    pub sweep_every: Duration,
    pub config: Config,
}

impl Options {
    /// Defaults, overridden by the environment (the same names as the Lambda functions).
    pub fn from_env() -> Result<Self, opscore_core::config::ConfigError> {
        let config = Config::from_env()?;
        Ok(Self {
            port: 3000,
            store: match &config.ddb_endpoint {
                Some(endpoint) => StoreChoice::Dynamo {
                    endpoint: endpoint.clone(),
                },
                None => StoreChoice::File {
                    path: default_data_file(&config),
                    durability: Durability::Process,
                },
            },
            table: config.table_name.clone().unwrap_or_else(|| "opscore-local".into()),
            sweep_every: Duration::from_secs(1),
            config,
        })
    }
}

/// What `start` generated because the environment did not say.
#[derive(Debug, Clone, Default)]
pub struct Generated {
    pub api_key: Option<String>,
    pub webhook_secret: Option<String>,
}

pub struct Stack {
    pub addr: SocketAddr,
    pub api_key: Secret,
    pub webhook_secret: Secret,
    pub agentkit_url: String,
    pub store_description: String,
    pub generated: Generated,
    pub store: Arc<dyn Store>,
    shutdown: watch::Sender<bool>,
    server: JoinHandle<()>,
    tasks: Vec<JoinHandle<()>>,
}

impl Stack {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn start(mut opts: Options) -> Result<Stack, Box<dyn std::error::Error + Send + Sync>> {
        let mut generated = Generated::default();
        if opts.config.api_keys.is_empty() {
            let k = format!("local-{}", uuid::Uuid::new_v4().simple());
            generated.api_key = Some(k.clone());
            opts.config.api_keys = vec![Secret::new(k)];
        }
        if opts.config.webhook_secrets.is_empty() {
            let s = format!("whsec-{}", uuid::Uuid::new_v4().simple());
            generated.webhook_secret = Some(s.clone());
            opts.config.webhook_secrets = vec![Secret::new(s)];
        }
        let agentkit_url = opts
            .config
            .agentkit_api_url
            .clone()
            .unwrap_or_else(|| DEFAULT_AGENTKIT_URL.to_owned());

        let wake = Arc::new(Notify::new());
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (store, source, sqlite, store_description) = open_store(&opts, &wake, &shutdown_rx).await?;
        let (metrics, prometheus) = prometheus_metrics()?;
        let app =
            App::new(store.clone(), Arc::new(SystemClock), opts.config.engine.clone()).with_metrics(metrics.clone());

        let sample = WorkflowDefinition::parse(SAMPLE_WORKFLOW.as_bytes(), Format::Json)
            .map_err(|p| format!("sample workflow: {p:?}"))?;
        app.create_workflow(sample)
            .await
            .map_err(|e| format!("seeding the sample workflow: {e}"))?;

        let dispatcher = Arc::new(AgentKitClient::new(&agentkit_url)?);
        let runner = Arc::new(
            Runner::new(
                store.clone(),
                Arc::new(SystemClock),
                dispatcher,
                opts.config.engine.clone(),
            )
            .with_metrics(metrics),
        );
        let api_key = opts.config.api_keys[0].clone();
        let webhook_secret = opts.config.webhook_secrets[0].clone();
        let router = opscore_http::router(app, opts.config, Surface::Both);

        let listener = TcpListener::bind(("127.0.0.1", opts.port)).await?;
        let addr = listener.local_addr()?;

        let server = tokio::spawn(serve(listener, router, prometheus, wake, shutdown_rx.clone()));
        let mut tasks = vec![tokio::spawn(feed::consume(source, runner.clone(), shutdown_rx.clone()))];
        tasks.push(tokio::spawn({
            let mut stop = shutdown_rx.clone();
            let every = opts.sweep_every;
            async move {
                let mut last_expiry = tokio::time::Instant::now();
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(every) => {}
                        _ = stop.changed() => return,
                    }
                    // Timers of different sessions concurrently: a hung dispatch holds up only its own.
                    if let Err(e) = runner.sweep().await {
                        tracing::warn!(error = %e, "sweep failed");
                    }
                    if let Some(db) = &sqlite
                        && last_expiry.elapsed() >= EXPIRY_SWEEP_EVERY
                    {
                        last_expiry = tokio::time::Instant::now();
                        match db.sweep_expired().await {
                            Ok(swept) => tracing::debug!(?swept, "expired items deleted"),
                            Err(e) => tracing::warn!(error = %e, "expiry sweep failed"),
                        }
                    }
                }
            }
        }));
        Ok(Stack {
            addr,
            api_key,
            webhook_secret,
            agentkit_url,
            store_description,
            generated,
            store,
            shutdown,
            server,
            tasks,
        })
    }

    /// Stops gracefully: stops accepting connections, finishes the requests under way, lets the
    /// runner finish the changes it is handling, and closes the store (a durable store keeps the
    /// rest of its feed for the next start).
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        let _ = self.server.await;
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// How often expired history, idempotency keys and delivery records are deleted from SQLite.
const EXPIRY_SWEEP_EVERY: Duration = Duration::from_secs(60);
/// How long a stop waits for requests under way.
const REQUEST_GRACE: Duration = Duration::from_secs(10);

type Opened = (Arc<dyn Store>, feed::Source, Option<Arc<SqliteStore>>, String);

async fn open_store(
    opts: &Options,
    wake: &Arc<Notify>,
    stop: &watch::Receiver<bool>,
) -> Result<Opened, Box<dyn std::error::Error + Send + Sync>> {
    let (sqlite, description) = match &opts.store {
        StoreChoice::Memory => {
            let (store, rx) = InMemoryStore::with_changes();
            return Ok((
                Arc::new(store),
                feed::Source::Channel { rx, next_position: 0 },
                None,
                "in-memory (the in-memory adapter; everything is lost on exit)".into(),
            ));
        }
        StoreChoice::File { path, durability } => {
            let path = path.clone();
            let durability = *durability;
            let db = tokio::task::spawn_blocking(move || SqliteStore::open(&path, durability)).await??;
            let description = format!(
                "{} (SQLite; kept across restarts{})",
                db.path().display(),
                if durability == Durability::Sync {
                    ", every commit synced"
                } else {
                    ""
                }
            );
            (db, description)
        }
        StoreChoice::Ephemeral => (
            tokio::task::spawn_blocking(SqliteStore::temporary).await??,
            "throwaway (SQLite in a temporary file, deleted on exit)".into(),
        ),
        StoreChoice::Dynamo { endpoint } => {
            let client = opscore_dynamo::client_for_endpoint(Some(endpoint)).await;
            opscore_dynamo::table::ensure_table(&client, &opts.table).await?;
            let store = Arc::new(
                opscore_dynamo::DynamoStore::new(client, opts.table.clone())
                    .with_routing_shards(opts.config.routing_index_shards),
            );
            let tail = opscore_dynamo::StreamTail::start(
                opscore_dynamo::streams_client_for_endpoint(Some(endpoint)).await,
                &opts.table,
            )
            .await?;
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            tokio::spawn(feed::pump_stream(tail, wake.clone(), tx, stop.clone()));
            return Ok((
                store,
                feed::Source::Channel { rx, next_position: 0 },
                None,
                format!("DynamoDB at {endpoint}, table {}", opts.table),
            ));
        }
    };
    let db = Arc::new(sqlite);
    Ok((db.clone(), feed::Source::Sqlite(db.clone()), Some(db), description))
}

/// Serves `router` on connections until `stop`, then stops accepting and lets the requests under way finish
/// (within [`REQUEST_GRACE`]).
///
/// Hardened against clients that hold resources: a request's headers must arrive within
/// [`HEADER_TIMEOUT`] (which also closes a keep-alive connection idle that long), at most
/// [`MAX_CONNECTIONS`] are open at once (the next ones wait in the kernel's backlog), and when
/// accepting fails (out of file descriptors) the loop backs off and logs at most once a second.
///
/// A request hyper cannot parse, or over [`MAX_URI_BYTES`], [`MAX_HEAD_BYTES`] or
/// [`MAX_HEADER_FIELDS`], is answered with the API's JSON error (400, 414, 431) instead of hyper's
/// empty one: see [`protocol_errors`].
async fn serve(
    listener: TcpListener,
    router: HttpRouter,
    prometheus: PrometheusHandle,
    wake: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
) {
    // A write (every POST) wakes the runner's feed reader at once.
    let router = WakeOnWrite {
        router,
        wake,
        prometheus,
    };
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut last_accept_warning: Option<tokio::time::Instant> = None;
    loop {
        let slot = tokio::select! {
            s = slots.clone().acquire_owned() => s.expect("never closed"),
            _ = stop.changed() => break,
        };
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    if last_accept_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                        tracing::warn!(error = %e, "accept failed; backing off");
                        last_accept_warning = Some(tokio::time::Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let service = TowerToHyperService::new(router.clone());
        let io = TokioIo::new(protocol_errors::JsonProtocolErrors::new(stream));
        let conn = builder.serve_connection(io, service).into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(REQUEST_GRACE, graceful.shutdown()).await.is_err() {
        tracing::warn!("requests still under way after the grace period; stopping anyway");
    }
}

/// The router, waking the runner's feed reader when a POST (a write) has been answered, and
/// `GET /metrics` (the local stack's own route, not the API's: not in the OpenAPI document).
#[derive(Clone)]
struct WakeOnWrite {
    router: HttpRouter,
    wake: Arc<Notify>,
    prometheus: PrometheusHandle,
}

impl tower::Service<http::Request<hyper::body::Incoming>> for WakeOnWrite {
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<hyper::body::Incoming>) -> Self::Future {
        if req.method() == http::Method::GET && req.uri().path() == METRICS_PATH {
            let response = metrics_response(&self.prometheus);
            return Box::pin(std::future::ready(Ok(response)));
        }
        let writes = req.method() == http::Method::POST;
        let answer = self.router.call(req);
        let wake = self.wake.clone();
        Box::pin(async move {
            let resp = answer.await;
            if writes {
                wake.notify_one();
            }
            resp
        })
    }
}

/// Where the local stack serves its figures as Prometheus text.
pub const METRICS_PATH: &str = "/metrics";

/// Upper bounds (ms) of the latency histograms' buckets: from a fast local dispatch to a run of
/// several minutes.
const LATENCY_BUCKETS_MS: [f64; 14] = [
    5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1_000.0, 2_500.0, 5_000.0, 10_000.0, 30_000.0, 60_000.0, 300_000.0,
];

/// The stack's own Prometheus recorder (not the process's global one: two stacks in one test
/// process count apart) and the handle that renders it.
fn prometheus_metrics() -> Result<(Metrics, PrometheusHandle), Box<dyn std::error::Error + Send + Sync>> {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(&LATENCY_BUCKETS_MS)?
        .build_recorder();
    let handle = recorder.handle();
    Ok((Metrics::to(Arc::new(recorder)), handle))
}

/// `GET /metrics`: the figures in the Prometheus text format. No API key: it carries no agent or
/// session id, no key and no payload, only counts by workflow id, failure code and write kind, and
/// the stack listens on 127.0.0.1 only (docs/operations.md).
fn metrics_response(prometheus: &PrometheusHandle) -> axum::response::Response {
    let mut response = axum::response::Response::new(axum::body::Body::from(prometheus.render()));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// A request's headers must arrive within this; an idle keep-alive connection is closed after it.
const HEADER_TIMEOUT: Duration = Duration::from_secs(15);
/// Connections served at once, at most.
const MAX_CONNECTIONS: usize = 4_096;
/// A request's line and headers together, at most (hyper's read buffer; over it: 431). Explicit
/// rather than hyper's default (408 KiB) so the limit is ours and documented; a URI over
/// [`MAX_URI_BYTES`] still fits, so it gets its own 414.
const MAX_HEAD_BYTES: usize = 128 * 1024;
/// Header fields in a request, at most (over it: 431). hyper's default, not set explicitly: setting
/// it moves hyper's header array from the stack to the heap for every request (hyper documents
/// ~5 % slower). `more_than_100_header_fields_get_a_json_431` pins the value.
const MAX_HEADER_FIELDS: usize = 100;
/// The URI in a request line, at most (over it: 414): hyper's fixed `MAX_URI_LEN`, not configurable.
/// `a_uri_of_100_kb_gets_a_json_414` checks hyper answers 414 past it.
const MAX_URI_BYTES: usize = u16::MAX as usize - 1;
