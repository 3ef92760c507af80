//! Settings, and the one place that reads the environment.

use crate::app::Settings;
use std::fmt;
use std::time::Duration;

/// A secret value that never prints.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Names shared by template.yaml, the local stack and the tests.
pub mod names {
    /// The state API's bearer keys themselves (local stack, `sam local`); on AWS
    /// [`API_KEY_SECRET_ID`] instead.
    pub const API_KEY: &str = "OPSCORE_API_KEY";
    /// The webhook's HMAC secrets themselves (local stack, `sam local`); on AWS
    /// [`WEBHOOK_SECRET_ID`] instead.
    pub const WEBHOOK_SECRET: &str = "OPSCORE_WEBHOOK_SECRET";
    /// Name or ARN of the Secrets Manager secret holding the state API's keys.
    pub const API_KEY_SECRET_ID: &str = "OPSCORE_API_KEY_SECRET_ID";
    /// Name or ARN of the Secrets Manager secret holding the webhook's HMAC secrets.
    pub const WEBHOOK_SECRET_ID: &str = "OPSCORE_WEBHOOK_SECRET_ID";
    /// How often a secret from Secrets Manager is read again (seconds; default 300).
    pub const SECRET_REFRESH: &str = "OPSCORE_SECRET_REFRESH_SECONDS";
    /// An explicit Secrets Manager endpoint (moto's server in tests); empty means "the AWS default".
    pub const SECRETS_ENDPOINT: &str = "OPSCORE_SECRETS_ENDPOINT";
    pub const AGENTKIT_API_URL: &str = "AGENTKIT_API_URL";
    pub const TABLE_NAME: &str = "OPSCORE_TABLE_NAME";
    /// An explicit DynamoDB endpoint (DynamoDB Local); empty means "the AWS default".
    pub const DDB_ENDPOINT: &str = "OPSCORE_DDB_ENDPOINT";
    /// Shards of each capability's routing lists on DynamoDB (1..=16, default 1; the same for
    /// every function of a deployment: docs/table-design.md, "Routing shards").
    pub const ROUTING_INDEX_SHARDS: &str = "OPSCORE_ROUTING_INDEX_SHARDS";
    pub const WEBHOOK_TOLERANCE: &str = "OPSCORE_WEBHOOK_TOLERANCE_SECONDS";
    pub const HISTORY_RETENTION_DAYS: &str = "OPSCORE_HISTORY_RETENTION_DAYS";
    pub const LEASE_SECONDS: &str = "OPSCORE_LEASE_SECONDS";
    pub const LOG_FORMAT: &str = "OPSCORE_LOG_FORMAT";
    /// The local stack's data directory; else `$XDG_DATA_HOME/opscore`, else `~/.local/share/opscore`.
    pub const DATA_DIR: &str = "OPSCORE_DATA_DIR";
    /// How far ahead of the server clock a state report's timestamp may be (seconds).
    pub const MAX_CLOCK_SKEW: &str = "OPSCORE_MAX_CLOCK_SKEW_SECONDS";
    /// The SQS queue (URL) the workflow runner sends task-timer wake-ups to and consumes; unset:
    /// timers wait for the sweep (the local stack has timers of its own).
    pub const TIMER_QUEUE_URL: &str = "OPSCORE_TIMER_QUEUE_URL";
}

/// The one rule for a list of keys or secrets, in an environment variable or in a Secrets Manager
/// secret alike: comma-separated, blanks around entries ignored, any entry accepted. A rotation
/// puts the new value first and keeps the old one until every client has moved ("new,old"), then
/// drops it ("new").
pub fn parse_secret_list(text: &str) -> Vec<Secret> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(Secret::new)
        .collect()
}

/// Where one list of keys or secrets comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSetting {
    /// The values themselves (environment; empty: nothing configured, everything refused).
    Values(Vec<Secret>),
    /// A Secrets Manager secret (name or ARN), read at cold start and every `secret_refresh`.
    SecretId(String),
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{name}: {message}")]
pub struct ConfigError {
    pub name: &'static str,
    pub message: String,
}

#[derive(Debug, Clone)]
pub struct Config {
    /// Bearer keys of the state API (comma-separated in the environment, for rotation). Empty:
    /// every authenticated route refuses (fail closed).
    pub api_keys: Vec<Secret>,
    /// HMAC secrets of the notify webhook (comma-separated). Empty: the webhook refuses.
    pub webhook_secrets: Vec<Secret>,
    /// A Secrets Manager secret holding the API keys instead of `api_keys` (AWS).
    pub api_key_secret_id: Option<String>,
    /// A Secrets Manager secret holding the webhook secrets instead of `webhook_secrets` (AWS).
    pub webhook_secret_id: Option<String>,
    /// How often a secret read from Secrets Manager is read again (a rotation takes this long).
    pub secret_refresh: Duration,
    pub secrets_endpoint: Option<String>,
    pub agentkit_api_url: Option<String>,
    pub table_name: Option<String>,
    pub ddb_endpoint: Option<String>,
    /// Shards of each capability's routing lists on DynamoDB (1..=16).
    pub routing_index_shards: u8,
    /// Where the runner sends wake-ups for task timers (an SQS queue URL); `None`: the sweep only.
    pub timer_queue_url: Option<String>,
    pub webhook_tolerance: Duration,
    /// What the use cases and the runner read (history retention, lease, …).
    pub engine: Settings,
    /// A state report whose timestamp is further ahead of the server clock than this is refused
    /// (422): it would hold the agent's state until real time caught up with it.
    pub max_clock_skew: Duration,
    pub json_logs: bool,
    /// Where the local stack keeps its data file (`None`: no directory could be worked out).
    pub data_dir: Option<std::path::PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            api_keys: Vec::new(),
            webhook_secrets: Vec::new(),
            api_key_secret_id: None,
            webhook_secret_id: None,
            secret_refresh: Duration::from_secs(300),
            secrets_endpoint: None,
            agentkit_api_url: None,
            table_name: None,
            ddb_endpoint: None,
            routing_index_shards: 1,
            timer_queue_url: None,
            webhook_tolerance: Duration::from_secs(300),
            engine: Settings::default(),
            max_clock_skew: Duration::from_secs(300),
            json_logs: true,
            data_dir: None,
        }
    }
}

impl Config {
    /// Where the state API's keys come from.
    pub fn api_keys_setting(&self) -> SecretSetting {
        match &self.api_key_secret_id {
            Some(id) => SecretSetting::SecretId(id.clone()),
            None => SecretSetting::Values(self.api_keys.clone()),
        }
    }

    /// Where the webhook's HMAC secrets come from.
    pub fn webhook_secrets_setting(&self) -> SecretSetting {
        match &self.webhook_secret_id {
            Some(id) => SecretSetting::SecretId(id.clone()),
            None => SecretSetting::Values(self.webhook_secrets.clone()),
        }
    }

    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads settings through `get`, so tests need not touch the process environment.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let non_empty = |k: &str| get(k).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        let list = |k: &str| -> Vec<Secret> { non_empty(k).map(|v| parse_secret_list(&v)).unwrap_or_default() };
        // The values or a secret that holds them, never both: which one would win is not obvious.
        let one_source = |values: &'static str, id: &'static str| -> Result<Option<String>, ConfigError> {
            match (non_empty(values), non_empty(id)) {
                (Some(_), Some(_)) => Err(ConfigError {
                    name: id,
                    message: format!("set either {values} (the values) or {id} (a Secrets Manager secret), not both"),
                }),
                (_, id) => Ok(id),
            }
        };
        let seconds = |k: &'static str, default: Duration| -> Result<Duration, ConfigError> {
            match non_empty(k) {
                None => Ok(default),
                Some(v) => v
                    .parse::<f64>()
                    .ok()
                    .filter(|s| s.is_finite() && *s > 0.0)
                    .map(Duration::from_secs_f64)
                    .ok_or(ConfigError {
                        name: k,
                        message: format!("expected a positive number, got {v:?}"),
                    }),
            }
        };
        let d = Self::default();
        let retention_days = match non_empty(names::HISTORY_RETENTION_DAYS) {
            None => d.engine.history_retention,
            Some(v) => v
                .parse::<u64>()
                .ok()
                .filter(|n| (1..=3650).contains(n))
                .map(|n| Duration::from_secs(n * 86_400))
                .ok_or(ConfigError {
                    name: names::HISTORY_RETENTION_DAYS,
                    message: format!("expected whole days 1..=3650, got {v:?}"),
                })?,
        };
        let agentkit_api_url = non_empty(names::AGENTKIT_API_URL).map(|u| u.trim_end_matches('/').to_owned());
        if let Some(u) = &agentkit_api_url
            && !(u.starts_with("http://") || u.starts_with("https://"))
        {
            return Err(ConfigError {
                name: names::AGENTKIT_API_URL,
                message: format!("expected an http(s) URL, got {u:?}"),
            });
        }
        let routing_index_shards = match non_empty(names::ROUTING_INDEX_SHARDS) {
            None => d.routing_index_shards,
            Some(v) => v
                .parse::<u8>()
                .ok()
                .filter(|n| (1..=16).contains(n))
                .ok_or(ConfigError {
                    name: names::ROUTING_INDEX_SHARDS,
                    message: format!("expected a shard count 1..=16, got {v:?}"),
                })?,
        };
        let timer_queue_url = non_empty(names::TIMER_QUEUE_URL);
        if let Some(u) = &timer_queue_url
            && !(u.starts_with("http://") || u.starts_with("https://"))
        {
            return Err(ConfigError {
                name: names::TIMER_QUEUE_URL,
                message: format!("expected an SQS queue URL (https://sqs.…), got {u:?}"),
            });
        }
        Ok(Self {
            api_keys: list(names::API_KEY),
            webhook_secrets: list(names::WEBHOOK_SECRET),
            api_key_secret_id: one_source(names::API_KEY, names::API_KEY_SECRET_ID)?,
            webhook_secret_id: one_source(names::WEBHOOK_SECRET, names::WEBHOOK_SECRET_ID)?,
            secret_refresh: seconds(names::SECRET_REFRESH, d.secret_refresh)?,
            secrets_endpoint: non_empty(names::SECRETS_ENDPOINT),
            agentkit_api_url,
            table_name: non_empty(names::TABLE_NAME),
            ddb_endpoint: non_empty(names::DDB_ENDPOINT),
            routing_index_shards,
            timer_queue_url,
            webhook_tolerance: seconds(names::WEBHOOK_TOLERANCE, d.webhook_tolerance)?,
            engine: Settings {
                history_retention: retention_days,
                lease: seconds(names::LEASE_SECONDS, d.engine.lease)?,
                ..d.engine.clone()
            },
            max_clock_skew: seconds(names::MAX_CLOCK_SKEW, d.max_clock_skew)?,
            json_logs: non_empty(names::LOG_FORMAT).is_none_or(|v| v != "text"),
            data_dir: non_empty(names::DATA_DIR)
                .map(std::path::PathBuf::from)
                .or_else(|| non_empty("XDG_DATA_HOME").map(|d| std::path::Path::new(&d).join("opscore")))
                .or_else(|| non_empty("HOME").map(|h| std::path::Path::new(&h).join(".local/share/opscore"))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let m: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::from_lookup(|k| m.get(k).cloned())
    }

    #[test]
    fn routing_index_shards_default_to_one_and_refuse_outside_1_to_16() {
        assert_eq!(cfg(&[]).unwrap().routing_index_shards, 1);
        assert_eq!(
            cfg(&[(names::ROUTING_INDEX_SHARDS, " 16 ")])
                .unwrap()
                .routing_index_shards,
            16
        );
        for bad in ["0", "17", "-1", "four", "1.5"] {
            let e = cfg(&[(names::ROUTING_INDEX_SHARDS, bad)]).unwrap_err();
            assert_eq!(e.name, names::ROUTING_INDEX_SHARDS, "{bad}");
        }
    }

    #[test]
    fn unset_means_no_keys_and_lists_split_on_commas() {
        let c = cfg(&[]).unwrap();
        assert!(c.api_keys.is_empty() && c.webhook_secrets.is_empty());
        let c = cfg(&[
            (names::API_KEY, " k1, k2 ,,"),
            (names::WEBHOOK_SECRET, "s1"),
            (names::DDB_ENDPOINT, ""),
        ])
        .unwrap();
        assert_eq!(c.api_keys, vec![Secret::new("k1"), Secret::new("k2")]);
        assert_eq!(c.webhook_secrets.len(), 1);
        assert_eq!(
            c.ddb_endpoint, None,
            "an empty endpoint must mean 'unset' (the SDK panics on an empty one)"
        );
        assert_eq!(format!("{:?}", c.api_keys[0]), "Secret(***)");
    }

    #[test]
    fn bad_values_are_refused_by_name() {
        assert_eq!(
            cfg(&[(names::WEBHOOK_TOLERANCE, "abc")]).unwrap_err().name,
            names::WEBHOOK_TOLERANCE
        );
        assert_eq!(
            cfg(&[(names::AGENTKIT_API_URL, "ftp://x")]).unwrap_err().name,
            names::AGENTKIT_API_URL
        );
        assert_eq!(
            cfg(&[(names::MAX_CLOCK_SKEW, "-1")]).unwrap_err().name,
            names::MAX_CLOCK_SKEW
        );
        assert_eq!(cfg(&[]).unwrap().max_clock_skew, Duration::from_secs(300));
        assert_eq!(
            cfg(&[(names::TIMER_QUEUE_URL, "ops-core-timers")]).unwrap_err().name,
            names::TIMER_QUEUE_URL
        );
        assert_eq!(cfg(&[(names::TIMER_QUEUE_URL, " ")]).unwrap().timer_queue_url, None);
        assert_eq!(
            cfg(&[(names::MAX_CLOCK_SKEW, "60")]).unwrap().max_clock_skew,
            Duration::from_secs(60)
        );
        assert_eq!(
            cfg(&[(names::HISTORY_RETENTION_DAYS, "0")]).unwrap_err().name,
            names::HISTORY_RETENTION_DAYS
        );
        assert_eq!(
            cfg(&[(names::AGENTKIT_API_URL, "http://x/")])
                .unwrap()
                .agentkit_api_url
                .as_deref(),
            Some("http://x")
        );
    }

    #[test]
    fn a_secret_comes_from_the_environment_or_from_secrets_manager_not_both() {
        let c = cfg(&[
            (names::API_KEY_SECRET_ID, "opscore/api-keys"),
            (names::WEBHOOK_SECRET, "s1,s0"),
        ])
        .unwrap();
        assert_eq!(c.api_keys_setting(), SecretSetting::SecretId("opscore/api-keys".into()));
        assert_eq!(
            c.webhook_secrets_setting(),
            SecretSetting::Values(vec![Secret::new("s1"), Secret::new("s0")])
        );
        assert_eq!(c.secret_refresh, Duration::from_secs(300));
        let c = cfg(&[(names::API_KEY_SECRET_ID, " "), (names::SECRET_REFRESH, "5")]).unwrap();
        assert_eq!(
            c.api_keys_setting(),
            SecretSetting::Values(vec![]),
            "blank = unset (sam local)"
        );
        assert_eq!(c.secret_refresh, Duration::from_secs(5));
        assert_eq!(
            cfg(&[(names::WEBHOOK_SECRET, "s"), (names::WEBHOOK_SECRET_ID, "x")])
                .unwrap_err()
                .name,
            names::WEBHOOK_SECRET_ID
        );
        assert_eq!(
            cfg(&[(names::SECRET_REFRESH, "0")]).unwrap_err().name,
            names::SECRET_REFRESH
        );
        assert_eq!(
            parse_secret_list(" new , old ,,"),
            vec![Secret::new("new"), Secret::new("old")]
        );
    }

    #[test]
    fn the_engine_section_is_read_here_too() {
        let c = cfg(&[(names::LEASE_SECONDS, "12"), (names::HISTORY_RETENTION_DAYS, "2")]).unwrap();
        assert_eq!(c.engine.lease, Duration::from_secs(12));
        assert_eq!(c.engine.history_retention, Duration::from_secs(2 * 86_400));
        assert_eq!(
            c.engine.idempotency_ttl,
            Settings::default().idempotency_ttl,
            "the rest keeps its defaults"
        );
        assert_eq!(cfg(&[]).unwrap().engine, Settings::default());
    }
}
