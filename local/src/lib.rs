//! The whole Ops-Core stack in one process: the state API and webhook routes on 127.0.0.1, and
//! the workflow runner driven by the table's stream (woken by every write) and a timer sweep, over
//! an embedded DynamoDB-compatible store, DynamoDB Local, or AWS.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use opscore_core::app::{App, Settings};
use opscore_core::config::{Config, Secret};
use opscore_core::memory::InMemoryStore;
use opscore_core::runner::{CONCURRENT_AGENTS, Runner, by_agent};
use opscore_core::store::{Change, Store};
use opscore_core::time::SystemClock;
use opscore_core::workflow::{Format, WorkflowDefinition};
use opscore_dynamo::embedded::EmbeddedDynamo;
use opscore_http::agentkit::AgentKitClient;
use opscore_http::error::HttpError;
use opscore_http::{Api, ApiRequest, ApiResponse, Surface};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

/// The sample workflow of the original Ops-Core (`sample_workflow_id`), seeded at start.
pub const SAMPLE_WORKFLOW: &str = include_str!("../sample-workflow.json");

/// AgentKit's own default address, used when `AGENTKIT_API_URL` is not set.
pub const DEFAULT_AGENTKIT_URL: &str = "http://127.0.0.1:8000";

/// Bodies larger than this are refused before they are read in full (the routes' own limits are lower).
const MAX_READ_BYTES: usize = 1024 * 1024;

/// Where the stack keeps its state. Every choice passes the same storage contract suite.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreChoice {
    /// dynoxide, an embedded DynamoDB-compatible store, through the real DynamoDB adapter; in
    /// memory, or in a file so state survives restarts.
    Embedded { file: Option<std::path::PathBuf> },
    /// DynamoDB Local or AWS, through the real DynamoDB adapter.
    Dynamo { endpoint: String },
    /// The in-memory adapter: no DynamoDB at all; the fastest, for load tests of the service itself.
    Memory,
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
                None => StoreChoice::Embedded { file: None },
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
    tasks: Vec<JoinHandle<()>>,
    _embedded: Option<EmbeddedDynamo>,
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

        let (store, mut feed, embedded, store_description) = open_store(&opts).await?;
        let settings = Settings {
            history_retention: opts.config.history_retention,
            ..Settings::default()
        };
        let app = App::new(store.clone(), Arc::new(SystemClock), settings.clone());

        let sample = WorkflowDefinition::parse(SAMPLE_WORKFLOW.as_bytes(), Format::Json)
            .map_err(|p| format!("sample workflow: {p:?}"))?;
        app.create_workflow(sample)
            .await
            .map_err(|e| format!("seeding the sample workflow: {e}"))?;

        let dispatcher = Arc::new(AgentKitClient::new(&agentkit_url)?);
        let runner = Arc::new(Runner::new(
            store.clone(),
            Arc::new(SystemClock),
            dispatcher,
            settings,
            opts.config.lease,
        ));
        let api_key = opts.config.api_keys[0].clone();
        let webhook_secret = opts.config.webhook_secrets[0].clone();
        let api = Arc::new(Api::new(app, opts.config, Surface::Both));

        let listener = TcpListener::bind(("127.0.0.1", opts.port)).await?;
        let addr = listener.local_addr()?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let wake = Arc::new(Notify::new());

        let tasks = vec![
            tokio::spawn(serve(listener, api, wake.clone(), shutdown_rx.clone())),
            tokio::spawn({
                let runner = runner.clone();
                let mut stop = shutdown_rx.clone();
                async move {
                    while let Some(changes) = feed.next(&wake, &mut stop).await {
                        // Agents concurrently, each agent's changes in order. On stop, the rest
                        // of the batch is dropped: each task's recheck timer brings it back.
                        let stopping = stop.clone();
                        by_agent(&changes, CONCURRENT_AGENTS, |change| {
                            let (runner, stopping) = (&runner, &stopping);
                            async move {
                                if !*stopping.borrow() {
                                    deliver(runner, change).await;
                                }
                                Ok::<(), std::convert::Infallible>(())
                            }
                        })
                        .await;
                    }
                }
            }),
            tokio::spawn({
                let mut stop = shutdown_rx.clone();
                let every = opts.sweep_every;
                async move {
                    loop {
                        tokio::select! {
                            _ = tokio::time::sleep(every) => {}
                            _ = stop.changed() => return,
                        }
                        if let Err(e) = runner.sweep().await {
                            tracing::warn!(error = %e, "sweep failed");
                        }
                    }
                }
            }),
        ];
        Ok(Stack {
            addr,
            api_key,
            webhook_secret,
            agentkit_url,
            store_description,
            generated,
            store,
            shutdown,
            tasks,
            _embedded: embedded,
        })
    }

    /// Stops accepting requests, stops the runner loops, and waits for them.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

type Opened = (Arc<dyn Store>, Feed, Option<EmbeddedDynamo>, String);

async fn open_store(opts: &Options) -> Result<Opened, Box<dyn std::error::Error + Send + Sync>> {
    let (embedded, endpoint, description) = match &opts.store {
        StoreChoice::Memory => {
            let (store, rx) = InMemoryStore::with_changes();
            return Ok((
                Arc::new(store),
                Feed::Channel(rx),
                None,
                "in-memory store (no DynamoDB; state is lost on exit)".into(),
            ));
        }
        StoreChoice::Dynamo { endpoint } => (
            None,
            endpoint.clone(),
            format!("DynamoDB at {endpoint}, table {}", opts.table),
        ),
        StoreChoice::Embedded { file } => {
            let db = match file {
                Some(path) => EmbeddedDynamo::start_with_file(path).await?,
                None => EmbeddedDynamo::start().await?,
            };
            let where_ = file
                .as_ref()
                .map(|p| format!("file {}", p.display()))
                .unwrap_or_else(|| "in memory".into());
            let e = db.endpoint.clone();
            (
                Some(db),
                e,
                format!(
                    "embedded DynamoDB-compatible store (dynoxide, {where_}), table {}",
                    opts.table
                ),
            )
        }
    };
    let client = opscore_dynamo::client_for_endpoint(Some(&endpoint)).await;
    opscore_dynamo::table::ensure_table(&client, &opts.table).await?;
    let store = Arc::new(opscore_dynamo::DynamoStore::new(client, opts.table.clone()));
    let tail = opscore_dynamo::StreamTail::start(
        opscore_dynamo::streams_client_for_endpoint(Some(&endpoint)).await,
        &opts.table,
    )
    .await?;
    Ok((store, Feed::Stream(tail), embedded, description))
}

/// The change feed the runner consumes: the table's stream, or the in-memory store's channel.
enum Feed {
    Stream(opscore_dynamo::StreamTail),
    Channel(UnboundedReceiver<Change>),
}

impl Feed {
    /// The next batch of changes, in order; `None` once the stack stops. The stream is read when
    /// a write this process served wakes it (and drained until empty), with a slow fallback poll
    /// for writes made by other processes on a shared DynamoDB.
    async fn next(&mut self, wake: &Notify, stop: &mut watch::Receiver<bool>) -> Option<Vec<Change>> {
        match self {
            Feed::Channel(rx) => tokio::select! {
                first = rx.recv() => {
                    let mut batch = vec![first?];
                    while let Ok(c) = rx.try_recv() {
                        batch.push(c);
                    }
                    Some(batch)
                }
                _ = stop.changed() => None,
            },
            Feed::Stream(tail) => loop {
                match tail.poll().await {
                    Ok(changes) if !changes.is_empty() => return Some(changes),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "stream poll failed"),
                }
                tokio::select! {
                    _ = wake.notified() => {}
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = stop.changed() => return None,
                }
            },
        }
    }
}

/// Like Lambda's stream event source: a failing record is retried (a few times here) before the
/// consumer moves on, so one bad record cannot stall the stack.
async fn deliver(runner: &Runner, change: &opscore_core::store::Change) {
    for attempt in 1..=3 {
        match runner.on_change(change).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(attempt, error = %e, "change handling failed");
                tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
            }
        }
    }
}

async fn serve(listener: TcpListener, api: Arc<Api>, wake: Arc<Notify>, mut stop: watch::Receiver<bool>) {
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let api = api.clone();
        let wake = wake.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                let api = api.clone();
                let wake = wake.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(&api, &wake, req).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn handle(api: &Api, wake: &Notify, req: hyper::Request<Incoming>) -> hyper::Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_READ_BYTES).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return to_hyper(
                HttpError::PayloadTooLarge {
                    got: MAX_READ_BYTES + 1,
                    limit: MAX_READ_BYTES,
                }
                .into_response(),
            );
        }
    };
    let path_and_query = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let writes = parts.method == http::Method::POST;
    let resp = api
        .handle(ApiRequest::new(parts.method, path_and_query, parts.headers, body))
        .await;
    if writes {
        wake.notify_one();
    }
    to_hyper(resp)
}

fn to_hyper(resp: ApiResponse) -> hyper::Response<Full<Bytes>> {
    let mut r = hyper::Response::new(Full::new(resp.body));
    *r.status_mut() = resp.status;
    *r.headers_mut() = resp.headers;
    r
}
