//! Time: one clock port so tests can pin "now" (the webhook freshness window, backoff, leases).

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

pub type Timestamp = DateTime<Utc>;

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Timestamp;
}

#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Utc::now()
    }
}

/// A clock that only moves when told to. Shared by clones.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    pub fn at(t: Timestamp) -> Self {
        Self(Arc::new(AtomicI64::new(to_nanos(t))))
    }
    pub fn set(&self, t: Timestamp) {
        self.0.store(to_nanos(t), Ordering::SeqCst);
    }
    pub fn advance(&self, d: chrono::Duration) {
        self.0
            .fetch_add(d.num_nanoseconds().unwrap_or(i64::MAX), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        from_nanos(self.0.load(Ordering::SeqCst))
    }
}

/// `t` plus `d`: deadlines, leases, backoff, expiry times. A `d` too long for chrono counts as
/// chrono's longest duration.
pub fn after(t: Timestamp, d: std::time::Duration) -> Timestamp {
    t + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// The ordering key of a state report: nanoseconds since the epoch as an `i128`, exact for every
/// instant chrono can represent (years -262143 to 262142: at most 22 digits, so it also fits a
/// DynamoDB number, which holds 38). Strictly increasing with the timestamp, except that a leap
/// second (`23:59:60.x`, which chrono keeps as nanoseconds above 10^9) orders as the last
/// nanosecond of the second before it.
pub fn order_key(t: Timestamp) -> i128 {
    let nanos = t.timestamp_subsec_nanos().min(999_999_999);
    i128::from(t.timestamp()) * 1_000_000_000 + i128::from(nanos)
}

/// Every [`order_key`] lies strictly between `-ORDER_KEY_BOUND` and `ORDER_KEY_BOUND` (10^22), so
/// `ORDER_KEY_BOUND + key` and `ORDER_KEY_BOUND - key` are positive and at most 23 digits long.
pub const ORDER_KEY_BOUND: i128 = 10_000_000_000_000_000_000_000;

/// Nanoseconds since the epoch for the server's own clock (timers, test clocks). Saturates
/// outside 1677-2262: never use it to order timestamps a client sent (see [`order_key`]).
pub fn to_nanos(t: Timestamp) -> i64 {
    t.timestamp_nanos_opt().unwrap_or(i64::MAX)
}

pub fn from_nanos(n: i64) -> Timestamp {
    Utc.timestamp_nanos(n)
}

/// Milliseconds since the epoch, for timers and index keys.
pub fn to_millis(t: Timestamp) -> i64 {
    t.timestamp_millis()
}

/// RFC 3339 in UTC with microseconds: what the API returns.
/// Nanoseconds only when the instant has them (a client may send them): rendering never loses
/// precision, so a stored item read back orders exactly as it was written.
pub fn render(t: Timestamp) -> String {
    let format = if t.timestamp_subsec_nanos().is_multiple_of(1_000) {
        SecondsFormat::Micros
    } else {
        SecondsFormat::Nanos
    };
    t.to_rfc3339_opts(format, true)
}

/// Parses RFC 3339 with `Z` or an offset (`+00:00`), as AgentKit's SDK and other clients send.
pub fn parse_rfc3339(s: &str) -> Option<Timestamp> {
    DateTime::parse_from_rfc3339(s).ok().map(|t| t.with_timezone(&Utc))
}

/// Serde helper: timestamps as RFC 3339 strings.
pub mod rfc3339 {
    use super::*;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&render(*t))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
        let s = String::deserialize(d)?;
        parse_rfc3339(&s).ok_or_else(|| serde::de::Error::custom(format!("not an RFC 3339 timestamp: {s:?}")))
    }

    pub mod option {
        use super::*;
        pub fn serialize<S: Serializer>(t: &Option<Timestamp>, s: S) -> Result<S::Ok, S::Error> {
            match t {
                Some(t) => s.serialize_str(&render(*t)),
                None => s.serialize_none(),
            }
        }
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Timestamp>, D::Error> {
            match Option::<String>::deserialize(d)? {
                None => Ok(None),
                Some(s) => parse_rfc3339(&s)
                    .map(Some)
                    .ok_or_else(|| serde::de::Error::custom(format!("not an RFC 3339 timestamp: {s:?}"))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_shapes_clients_send() {
        let a = parse_rfc3339("2026-11-23T22:16:20.182002+00:00").unwrap();
        let b = parse_rfc3339("2026-11-23T22:16:20.182002Z").unwrap();
        assert_eq!(a, b);
        assert!(parse_rfc3339("2026-11-23 22:16:20").is_none());
        assert!(parse_rfc3339("yesterday").is_none());
        assert_eq!(from_nanos(to_nanos(a)), a);
        assert_eq!(render(a), "2026-11-23T22:16:20.182002Z");
    }

    #[test]
    fn order_key_is_exact_at_the_ends_of_the_range() {
        let zero = parse_rfc3339("0001-01-01T00:00:00Z").unwrap();
        let epoch = parse_rfc3339("1970-01-01T00:00:00Z").unwrap();
        assert!(order_key(Timestamp::MIN_UTC) < order_key(zero));
        assert!(order_key(zero) < order_key(epoch));
        assert_eq!(order_key(epoch), 0);
        assert!(order_key(Timestamp::MAX_UTC) < ORDER_KEY_BOUND, "fits 22 digits");
        assert!(order_key(Timestamp::MIN_UTC) > -ORDER_KEY_BOUND);
        let a = parse_rfc3339("2026-11-23T22:16:20.182002Z").unwrap();
        assert_eq!(
            order_key(a),
            i128::from(to_nanos(a)),
            "the same nanoseconds where an i64 holds them"
        );
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::at(parse_rfc3339("2026-01-01T00:00:00Z").unwrap());
        let t0 = c.now();
        c.advance(chrono::Duration::seconds(5));
        assert_eq!(c.now() - t0, chrono::Duration::seconds(5));
    }
}
