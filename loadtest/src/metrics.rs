//! Latency and error recording: per operation, per second (for charts and S4 steps), and overall.
//!
//! Operations whose name starts with `agent:` or `drain:` are traffic of the simulated agents and
//! of the end-of-run session check; they are recorded but kept out of the headline figures.

use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Microseconds, 1 µs .. 120 s, 3 significant digits.
pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("histogram bounds")
}

/// How a request ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The expected status.
    Ok,
    /// An unexpected HTTP status.
    Status(u16),
    Connect,
    Timeout,
    Other(String),
}

impl Outcome {
    pub fn from_reqwest(e: &reqwest::Error) -> Outcome {
        if e.is_timeout() {
            Outcome::Timeout
        } else if e.is_connect() {
            Outcome::Connect
        } else {
            Outcome::Other(
                if e.is_body() || e.is_decode() {
                    "body"
                } else {
                    "request"
                }
                .into(),
            )
        }
    }
    fn kind(&self) -> Option<String> {
        match self {
            Outcome::Ok => None,
            Outcome::Status(s) => Some(format!("http_{s}")),
            Outcome::Connect => Some("connect".into()),
            Outcome::Timeout => Some("timeout".into()),
            Outcome::Other(k) => Some(format!("other_{k}")),
        }
    }
}

pub fn is_headline(op: &str) -> bool {
    !(op.starts_with("agent:") || op.starts_with("drain:"))
}

struct OpStats {
    hist: Histogram<u64>,
    count: u64,
    errors: BTreeMap<String, u64>,
}

pub struct Second {
    pub hist: Histogram<u64>,
    pub count: u64,
    pub errors: u64,
    pub users: usize,
}

struct Inner {
    ops: BTreeMap<String, OpStats>,
    seconds: Vec<Second>,
}

pub struct Recorder {
    pub start: Instant,
    pub users: AtomicUsize,
    inner: Mutex<Inner>,
}

impl Recorder {
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            users: AtomicUsize::new(0),
            inner: Mutex::new(Inner {
                ops: BTreeMap::new(),
                seconds: Vec::new(),
            }),
        }
    }

    pub fn record(&self, op: &str, latency: Duration, outcome: Outcome) {
        let us = (latency.as_micros() as u64).clamp(1, 120_000_000);
        let kind = outcome.kind();
        let sec = self.start.elapsed().as_secs() as usize;
        let users = self.users.load(Ordering::Relaxed);
        let mut g = self.inner.lock().unwrap();
        let s = g.ops.entry(op.to_owned()).or_insert_with(|| OpStats {
            hist: new_hist(),
            count: 0,
            errors: BTreeMap::new(),
        });
        s.count += 1;
        let _ = s.hist.record(us);
        if let Some(k) = &kind {
            *s.errors.entry(k.clone()).or_default() += 1;
        }
        if is_headline(op) {
            while g.seconds.len() <= sec {
                g.seconds.push(Second {
                    hist: new_hist(),
                    count: 0,
                    errors: 0,
                    users,
                });
            }
            let b = &mut g.seconds[sec];
            b.count += 1;
            b.users = b.users.max(users);
            let _ = b.hist.record(us);
            if kind.is_some() {
                b.errors += 1;
            }
        }
    }

    /// Stats of headline requests completed in `[from, to)` seconds since start.
    pub fn window(&self, from: usize, to: usize) -> Window {
        let g = self.inner.lock().unwrap();
        let mut h = new_hist();
        let (mut count, mut errors) = (0, 0);
        for s in g.seconds.iter().skip(from).take(to.saturating_sub(from)) {
            h.add(&s.hist).unwrap();
            count += s.count;
            errors += s.errors;
        }
        let secs = to.saturating_sub(from).max(1) as f64;
        Window {
            requests: count,
            errors,
            rps: count as f64 / secs,
            latency: Lat::of(&h),
        }
    }

    /// Per-second series for charts: (second, users, rps, p50, p90, p99, max) in ms.
    pub fn series(&self) -> Vec<SeriesPoint> {
        let g = self.inner.lock().unwrap();
        g.seconds
            .iter()
            .enumerate()
            .map(|(i, s)| SeriesPoint {
                second: i as u64,
                users: s.users,
                requests: s.count,
                errors: s.errors,
                p50_ms: ms(s.hist.value_at_quantile(0.5)),
                p90_ms: ms(s.hist.value_at_quantile(0.9)),
                p99_ms: ms(s.hist.value_at_quantile(0.99)),
                max_ms: ms(s.hist.max()),
            })
            .collect()
    }

    /// Everything, per op and overall (headline ops), over `elapsed`.
    pub fn summary(&self, elapsed: Duration) -> Summary {
        let g = self.inner.lock().unwrap();
        let secs = elapsed.as_secs_f64().max(0.001);
        let mut total = new_hist();
        let mut count = 0;
        let mut errors: BTreeMap<String, u64> = BTreeMap::new();
        let mut ops = BTreeMap::new();
        for (name, s) in &g.ops {
            let err_total: u64 = s.errors.values().sum();
            ops.insert(
                name.clone(),
                OpSummary {
                    requests: s.count,
                    rps: s.count as f64 / secs,
                    latency: Lat::of(&s.hist),
                    errors: s.errors.clone(),
                    error_rate: err_total as f64 / s.count.max(1) as f64,
                },
            );
            if is_headline(name) {
                total.add(&s.hist).unwrap();
                count += s.count;
                for (k, v) in &s.errors {
                    *errors.entry(k.clone()).or_default() += v;
                }
            }
        }
        let err_total: u64 = errors.values().sum();
        Summary {
            duration_s: secs,
            requests: count,
            rps: count as f64 / secs,
            latency: Lat::of(&total),
            error_rate: err_total as f64 / count.max(1) as f64,
            errors,
            ops,
        }
    }

    /// Count of 5xx answers over all ops (headline and background).
    pub fn server_errors(&self) -> u64 {
        let g = self.inner.lock().unwrap();
        g.ops
            .values()
            .flat_map(|s| s.errors.iter())
            .filter(|(k, _)| k.starts_with("http_5"))
            .map(|(_, v)| v)
            .sum()
    }
}

pub fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

#[derive(Debug, Clone, Serialize)]
pub struct Lat {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl Lat {
    pub fn of(h: &Histogram<u64>) -> Lat {
        if h.is_empty() {
            return Lat {
                p50_ms: 0.0,
                p90_ms: 0.0,
                p99_ms: 0.0,
                max_ms: 0.0,
                mean_ms: 0.0,
            };
        }
        Lat {
            p50_ms: ms(h.value_at_quantile(0.5)),
            p90_ms: ms(h.value_at_quantile(0.9)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
            mean_ms: h.mean() / 1000.0,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Window {
    pub requests: u64,
    pub errors: u64,
    pub rps: f64,
    pub latency: Lat,
}

#[derive(Debug, Clone, Serialize)]
pub struct SeriesPoint {
    pub second: u64,
    pub users: usize,
    pub requests: u64,
    pub errors: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct OpSummary {
    pub requests: u64,
    pub rps: f64,
    pub latency: Lat,
    pub errors: BTreeMap<String, u64>,
    pub error_rate: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub duration_s: f64,
    pub requests: u64,
    pub rps: f64,
    pub latency: Lat,
    pub error_rate: f64,
    pub errors: BTreeMap<String, u64>,
    pub ops: BTreeMap<String, OpSummary>,
}
