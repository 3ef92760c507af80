//! A counting pass-through in front of a DynamoDB endpoint (embedded store or DynamoDB Local): it
//! counts requests per `X-Amz-Target` (DynamoDB and DynamoDB Streams operations) and forwards
//! them unchanged. `opscore_local::Stack` keeps its `DynamoStore` behind `Arc<dyn Store>`, so its
//! own `request_counts()` cannot be reached from here; counting on the wire gives the same numbers
//! (plus the stream reader's calls, which the store's counters do not see). It also adds up the
//! capacity units each answer reports (`ConsumedCapacity`: the adapter asks for them per table
//! and index on every request).

use crate::fake::{RequestHandler, serve};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;

pub struct CountingProxy {
    pub endpoint: String,
    counts: Arc<Mutex<BTreeMap<String, u64>>>,
    units: Arc<Mutex<BTreeMap<String, f64>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl CountingProxy {
    pub async fn start(upstream: String) -> std::io::Result<CountingProxy> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let counts: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(512)
            .build()
            .map_err(std::io::Error::other)?;
        let units: Arc<Mutex<BTreeMap<String, f64>>> = Arc::default();
        let c = counts.clone();
        let u = units.clone();
        let handler: RequestHandler = Arc::new(move |req: hyper::Request<Incoming>| {
            let (c, u, client, upstream) = (c.clone(), u.clone(), client.clone(), upstream.clone());
            Box::pin(async move {
                let (parts, body) = req.into_parts();
                let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                let target = parts
                    .headers
                    .get("x-amz-target")
                    .and_then(|v| v.to_str().ok())
                    .map(|t| t.rsplit('.').next().unwrap_or(t).to_owned())
                    .unwrap_or_else(|| "(none)".into());
                *c.lock().unwrap().entry(target.clone()).or_default() += 1;
                let url = format!(
                    "{upstream}{}",
                    parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/")
                );
                let mut rb = client.request(parts.method.clone(), url).body(body);
                for (name, value) in &parts.headers {
                    if !matches!(name.as_str(), "connection" | "content-length" | "transfer-encoding") {
                        rb = rb.header(name, value);
                    }
                }
                match rb.send().await {
                    Ok(resp) => {
                        let status = resp.status();
                        let headers = resp.headers().clone();
                        let bytes = resp.bytes().await.unwrap_or_default();
                        add_units(&u, &target, &bytes);
                        let mut r = hyper::Response::new(Full::new(bytes));
                        *r.status_mut() = status;
                        for (name, value) in &headers {
                            if !matches!(name.as_str(), "connection" | "content-length" | "transfer-encoding") {
                                r.headers_mut().append(name, value.clone());
                            }
                        }
                        r
                    }
                    Err(e) => {
                        let mut r = hyper::Response::new(Full::new(Bytes::from(format!("proxy: {e}"))));
                        *r.status_mut() = http::StatusCode::BAD_GATEWAY;
                        r
                    }
                }
            })
        });
        let task = serve(listener, handler);
        Ok(CountingProxy {
            endpoint,
            counts,
            units,
            task,
        })
    }

    pub fn counts(&self) -> BTreeMap<String, u64> {
        self.counts.lock().unwrap().clone()
    }

    /// Capacity units reported so far, keyed `"{table|index} read"` / `"{table|index} write"`.
    pub fn units(&self) -> BTreeMap<String, f64> {
        self.units.lock().unwrap().clone()
    }
}

/// Adds the `ConsumedCapacity` of one answer (an object, or a list of them for transactions and
/// batches) to `units`: per table and index where reported, else the total under `table`.
fn add_units(units: &Mutex<BTreeMap<String, f64>>, op: &str, body: &[u8]) {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return;
    };
    let list = match v.get("ConsumedCapacity") {
        Some(serde_json::Value::Array(a)) => a.clone(),
        Some(o @ serde_json::Value::Object(_)) => vec![o.clone()],
        _ => return,
    };
    let reads = matches!(op, "GetItem" | "Query" | "BatchGetItem" | "Scan");
    let mut u = units.lock().unwrap();
    let mut add = |target: &str, cap: &serde_json::Value| {
        let num = |k: &str| cap.get(k).and_then(|x| x.as_f64());
        let (r, w) = match (num("ReadCapacityUnits"), num("WriteCapacityUnits")) {
            (None, None) => {
                let total = num("CapacityUnits").unwrap_or(0.0);
                if reads { (total, 0.0) } else { (0.0, total) }
            }
            (r, w) => (r.unwrap_or(0.0), w.unwrap_or(0.0)),
        };
        *u.entry(format!("{target} read")).or_default() += r;
        *u.entry(format!("{target} write")).or_default() += w;
    };
    for c in &list {
        let parts = c.get("Table").is_some() || c.get("GlobalSecondaryIndexes").is_some();
        if !parts {
            add("table", c);
            continue;
        }
        if let Some(t) = c.get("Table") {
            add("table", t);
        }
        if let Some(serde_json::Value::Object(m)) = c.get("GlobalSecondaryIndexes") {
            for (name, cap) in m {
                add(name, cap);
            }
        }
    }
}
