//! Keys and secrets that may change while the process runs: the state API's bearer keys and the
//! webhook's HMAC secrets, read from a [`SecretSource`] (Secrets Manager on AWS, through the
//! adapter in opscore-lambda) at cold start and again once [`LiveSecrets`] finds them older than
//! the refresh interval, so a rotation takes effect without a redeploy.
//!
//! The refresh happens on the request path, at most once per interval: a request that finds the
//! values due waits for one read (the others queue behind it and reuse its result); every other
//! request only takes a read lock. On Lambda this is the only timing that works: a background
//! task would run only while an invocation is in progress, and could be frozen halfway through a
//! call to Secrets Manager.
//!
//! The text of a secret follows the rule of the environment variables,
//! [`parse_secret_list`]: a comma-separated list, any entry accepted (old and new during a
//! rotation).

use crate::config::{Secret, parse_secret_list};
use crate::time::{Clock, Timestamp, after};
use async_trait::async_trait;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// How soon a failed read is tried again (or the refresh interval, if shorter): often enough that
/// a function whose secret could not be read at cold start serves again soon after it can be,
/// rarely enough that an outage costs one call every this often, not one per request.
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(30);

/// Where the text of one secret comes from (the port; adapters live outside the core).
#[async_trait]
pub trait SecretSource: Send + Sync + 'static {
    /// What the logs call this source (the secret's name or ARN, never its value).
    fn describe(&self) -> String;
    /// The secret's current text.
    async fn fetch(&self) -> Result<String, SecretSourceError>;
}

/// A secret that could not be read (missing, no permission, unreachable service, not text).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SecretSourceError(pub String);

/// One list of keys or secrets, either fixed (the environment, the local stack, tests) or read
/// from a [`SecretSource`] and refreshed every `refresh_every`.
pub struct LiveSecrets {
    what: &'static str,
    inner: Inner,
}

enum Inner {
    Fixed(Arc<[Secret]>),
    Refreshed(Box<Refreshed>),
}

struct Refreshed {
    source: Arc<dyn SecretSource>,
    clock: Arc<dyn Clock>,
    every: Duration,
    snapshot: RwLock<Snapshot>,
    /// Held by the one request that reads the source; the others wait, then reuse its result.
    reading: tokio::sync::Mutex<()>,
}

#[derive(Clone)]
struct Snapshot {
    values: Arc<[Secret]>,
    /// When the source is read again; `None` until the first attempt.
    due: Option<Timestamp>,
    /// Whether a read ever succeeded (a failed refresh keeps the values of the last good one).
    loaded: bool,
}

impl std::fmt::Debug for LiveSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.inner {
            Inner::Fixed(v) => write!(f, "LiveSecrets({}: {} fixed)", self.what, v.len()),
            Inner::Refreshed(r) => write!(f, "LiveSecrets({}: from {})", self.what, r.source.describe()),
        }
    }
}

impl LiveSecrets {
    /// Values that never change. `what` names them in logs ("API keys", "webhook secrets").
    pub fn fixed(what: &'static str, values: Vec<Secret>) -> Self {
        Self {
            what,
            inner: Inner::Fixed(values.into()),
        }
    }

    /// Values read from `source` on first use (or [`LiveSecrets::load`]) and again once they
    /// are `refresh_every` old.
    pub fn refreshed(
        what: &'static str,
        source: Arc<dyn SecretSource>,
        clock: Arc<dyn Clock>,
        refresh_every: Duration,
    ) -> Self {
        Self {
            what,
            inner: Inner::Refreshed(Box::new(Refreshed {
                source,
                clock,
                every: refresh_every,
                snapshot: RwLock::new(Snapshot {
                    values: Arc::from(Vec::new()),
                    due: None,
                    loaded: false,
                }),
                reading: tokio::sync::Mutex::new(()),
            })),
        }
    }

    /// The values if no read is due (no waiting, no I/O): what every request but one per refresh
    /// interval gets.
    pub fn fresh(&self) -> Option<Arc<[Secret]>> {
        match &self.inner {
            Inner::Fixed(v) => Some(v.clone()),
            Inner::Refreshed(r) => {
                let s = r.read_snapshot();
                s.due.is_some_and(|due| r.clock.now() < due).then_some(s.values)
            }
        }
    }

    /// The current values, reading the source first if a read is due. Empty when nothing is
    /// configured or the secret was never readable: the callers refuse everything then.
    pub async fn current(&self) -> Arc<[Secret]> {
        if let Some(v) = self.fresh() {
            return v;
        }
        let Inner::Refreshed(r) = &self.inner else {
            unreachable!("fixed values are always fresh")
        };
        let _reading = r.reading.lock().await;
        // Another request may have read the source while this one waited.
        if let Some(v) = self.fresh() {
            return v;
        }
        // A failure is logged there; the snapshot then holds the last good values, or none.
        let _ = self.read_now(r).await;
        r.read_snapshot().values
    }

    /// Reads the source now (cold start), whatever the interval says. `Err` if the read failed
    /// (the values stay those of the last good read, or none); the error is logged either way.
    pub async fn load(&self) -> Result<usize, SecretSourceError> {
        match &self.inner {
            Inner::Fixed(v) => Ok(v.len()),
            Inner::Refreshed(r) => {
                let _reading = r.reading.lock().await;
                self.read_now(r).await
            }
        }
    }

    async fn read_now(&self, r: &Refreshed) -> Result<usize, SecretSourceError> {
        let result = r.source.fetch().await;
        let now = r.clock.now();
        let mut s = r.read_snapshot();
        let outcome = match result {
            Ok(text) => {
                let values = parse_secret_list(&text);
                if values.is_empty() {
                    tracing::error!(what = self.what, source = %r.source.describe(),
                        "the secret holds no value: refusing every request until it does (fail closed)");
                } else {
                    tracing::info!(what = self.what, source = %r.source.describe(), count = values.len(),
                        refresh_seconds = r.every.as_secs(), "secret read");
                }
                let n = values.len();
                s = Snapshot {
                    values: values.into(),
                    due: Some(after(now, r.every)),
                    loaded: true,
                };
                Ok(n)
            }
            Err(e) => {
                if s.loaded {
                    tracing::error!(what = self.what, source = %r.source.describe(), error = %e,
                        kept = s.values.len(), "the secret could not be re-read: keeping the values of the last read");
                } else {
                    tracing::error!(what = self.what, source = %r.source.describe(), error = %e,
                        "the secret could not be read: refusing every request until it can be (fail closed)");
                }
                s.due = Some(after(now, r.every.min(RETRY_AFTER_FAILURE)));
                Err(e)
            }
        };
        *r.snapshot.write().unwrap_or_else(|p| p.into_inner()) = s;
        outcome
    }
}

impl Refreshed {
    fn read_snapshot(&self) -> Snapshot {
        // A panic elsewhere cannot leave a half-written snapshot (it is replaced whole).
        self.snapshot.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::ManualClock;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A source whose text the test sets, counting reads (an in-process stand-in for the port only;
    /// the Secrets Manager adapter is tested against moto's server in opscore-tests).
    struct Scripted {
        text: Mutex<Result<String, SecretSourceError>>,
        reads: AtomicUsize,
    }

    #[async_trait]
    impl SecretSource for Scripted {
        fn describe(&self) -> String {
            "scripted".into()
        }
        async fn fetch(&self) -> Result<String, SecretSourceError> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            self.text.lock().unwrap().clone()
        }
    }

    fn names(v: &[Secret]) -> Vec<&str> {
        v.iter().map(Secret::expose).collect()
    }

    #[tokio::test]
    async fn reads_once_per_interval_keeps_the_last_good_values_and_fails_closed() {
        let clock = ManualClock::at(crate::time::parse_rfc3339("2026-01-01T00:00:00Z").unwrap());
        let source = Arc::new(Scripted {
            text: Mutex::new(Err(SecretSourceError("no such secret".into()))),
            reads: AtomicUsize::new(0),
        });
        let live = LiveSecrets::refreshed(
            "API keys",
            source.clone(),
            Arc::new(clock.clone()),
            Duration::from_secs(300),
        );
        assert!(live.fresh().is_none(), "nothing read yet: a read is due");
        assert!(live.load().await.is_err());
        assert!(
            live.current().await.is_empty(),
            "unreadable at cold start: nothing accepted"
        );
        assert_eq!(
            source.reads.load(Ordering::SeqCst),
            1,
            "a failed read is not retried per request"
        );

        *source.text.lock().unwrap() = Ok("k1".into());
        clock.advance(chrono::Duration::seconds(29));
        assert!(live.current().await.is_empty());
        clock.advance(chrono::Duration::seconds(1));
        assert_eq!(
            names(&live.current().await),
            ["k1"],
            "retried after RETRY_AFTER_FAILURE"
        );
        for _ in 0..10 {
            live.current().await;
        }
        assert_eq!(
            source.reads.load(Ordering::SeqCst),
            2,
            "one read per interval, not per request"
        );

        *source.text.lock().unwrap() = Ok("k2, k1".into());
        clock.advance(chrono::Duration::seconds(299));
        assert_eq!(names(&live.current().await), ["k1"]);
        clock.advance(chrono::Duration::seconds(1));
        assert_eq!(
            names(&live.current().await),
            ["k2", "k1"],
            "the list rule of the environment"
        );

        *source.text.lock().unwrap() = Err(SecretSourceError("throttled".into()));
        clock.advance(chrono::Duration::seconds(300));
        assert_eq!(
            names(&live.current().await),
            ["k2", "k1"],
            "a failed refresh keeps the last good values"
        );

        *source.text.lock().unwrap() = Ok(" , ".into());
        clock.advance(chrono::Duration::seconds(30));
        assert!(live.current().await.is_empty(), "an empty secret refuses everything");
    }

    #[tokio::test]
    async fn fixed_values_are_always_fresh() {
        let live = LiveSecrets::fixed("webhook secrets", vec![Secret::new("s")]);
        assert_eq!(names(&live.fresh().unwrap()), ["s"]);
        assert_eq!(live.load().await, Ok(1));
        assert_eq!(format!("{live:?}"), "LiveSecrets(webhook secrets: 1 fixed)");
    }
}
