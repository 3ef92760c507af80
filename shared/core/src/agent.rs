//! Agents: registration details, lifecycle, reported state and its history.

use crate::ids::{AgentId, DispatchId};
use crate::time::{self, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::fmt;

/// The details AgentKit sends in a REGISTER webhook (camelCase on the wire, as AgentKit sends them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentDetails {
    #[schema(value_type = String)]
    pub agent_id: AgentId,
    pub agent_name: String,
    pub version: String,
    pub capabilities: Vec<String>,
    pub contact_endpoint: String,
    /// Always an object once stored: AgentKit's `null` and `{}` mean the same thing.
    #[schema(value_type = Object)]
    pub metadata: Map<String, Value>,
    /// AgentKit's own registration time, when it sends one (`registration_time` or `registrationTime`).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "time::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub registration_time: Option<Timestamp>,
}

impl AgentDetails {
    /// What decides whether a redelivered REGISTER changes anything. AgentKit's
    /// `registration_time` is excluded: a restart of AgentKit re-sends the same agent with a new one.
    pub fn same_registration(&self, other: &AgentDetails) -> bool {
        self.agent_id == other.agent_id
            && self.agent_name == other.agent_name
            && self.version == other.version
            && self.capabilities == other.capabilities
            && self.contact_endpoint == other.contact_endpoint
            && self.metadata == other.metadata
    }

    /// A short stable fingerprint of [`Self::same_registration`]'s fields, stored beside them so
    /// an item shows which registration it holds (FNV-1a over canonical JSON: stable across Rust
    /// versions). No condition reads it: a re-registration's details update is last-writer-wins.
    pub fn digest(&self) -> String {
        let canonical = serde_json::json!([
            self.agent_id.as_str(),
            self.agent_name,
            self.version,
            self.capabilities,
            self.contact_endpoint,
            Value::Object(self.metadata.clone()),
        ]);
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in canonical.to_string().bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        format!("{h:016x}")
    }
}

/// The states Ops-Core understands. Anything else an agent reports is kept verbatim as a
/// [`StateName`] and treated as "busy, not failed": it never counts as idle, never completes
/// and never fails a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KnownState {
    /// Registered, never reported (stored upper-case, as the original did).
    Unknown,
    Initializing,
    Idle,
    Active,
    Error,
    Finished,
}

impl KnownState {
    pub const ALL: [KnownState; 6] = [
        KnownState::Unknown,
        KnownState::Initializing,
        KnownState::Idle,
        KnownState::Active,
        KnownState::Error,
        KnownState::Finished,
    ];
    pub fn canonical(self) -> &'static str {
        match self {
            KnownState::Unknown => "UNKNOWN",
            KnownState::Initializing => "initializing",
            KnownState::Idle => "idle",
            KnownState::Active => "active",
            KnownState::Error => "error",
            KnownState::Finished => "finished",
        }
    }
    /// Case-insensitive: `IDLE`, `Idle` and `idle` are all idle.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.canonical().eq_ignore_ascii_case(s))
    }
}

/// A reported state: a known state in canonical spelling, or a custom one verbatim.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct StateName(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateNameError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {max} characters (got {got})")]
    TooLong { max: usize, got: usize },
    #[error("must not contain control characters or surrounding white space")]
    BadChars,
}

impl StateName {
    pub const MAX_LEN: usize = 64;

    pub fn parse(s: &str) -> Result<Self, StateNameError> {
        if s.is_empty() {
            return Err(StateNameError::Empty);
        }
        let n = s.chars().count();
        if n > Self::MAX_LEN {
            return Err(StateNameError::TooLong {
                max: Self::MAX_LEN,
                got: n,
            });
        }
        if s.chars().any(char::is_control) || s.trim() != s {
            return Err(StateNameError::BadChars);
        }
        Ok(match KnownState::parse(s) {
            Some(k) => Self(k.canonical().to_owned()),
            None => Self(s.to_owned()),
        })
    }
    pub fn known(k: KnownState) -> Self {
        Self(k.canonical().to_owned())
    }
    pub fn as_known(&self) -> Option<KnownState> {
        KnownState::parse(&self.0)
    }
    pub fn is(&self, k: KnownState) -> bool {
        self.as_known() == Some(k)
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for StateName {
    type Error = StateNameError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}
impl From<StateName> for String {
    fn from(s: StateName) -> String {
        s.0
    }
}
impl fmt::Display for StateName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The agent's current state. `timestamp` is the reporter's clock; `version` counts applied reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CurrentState {
    pub state: StateName,
    pub details: Option<Map<String, Value>>,
    #[serde(with = "time::rfc3339")]
    pub timestamp: Timestamp,
    /// `None` for the state set by registration: it has no reporter clock, so the first real
    /// report always wins, however far behind the agent's clock is. Otherwise
    /// [`time::order_key`] of `timestamp`: nanoseconds as an `i128`, exact over chrono's whole
    /// range (an `i64` saturated outside 1677-2262, and one such report froze the agent).
    pub ordering_nanos: Option<i128>,
    pub version: u64,
}

impl CurrentState {
    pub fn registered(now: Timestamp) -> Self {
        let mut details = Map::new();
        details.insert("reason".into(), Value::String("Initial registration".into()));
        Self {
            state: StateName::known(KnownState::Unknown),
            details: Some(details),
            timestamp: now,
            ordering_nanos: None,
            version: 0,
        }
    }

    /// Whether a report with this timestamp replaces this state (strictly newer only).
    pub fn is_superseded_by(&self, report_ts: Timestamp) -> bool {
        match self.ordering_nanos {
            None => true,
            Some(n) => time::order_key(report_ts) > n,
        }
    }

    /// `details.opscore_task_id`, when the agent names the task it reports about.
    pub fn reported_task_id(&self) -> Option<&str> {
        self.details.as_ref()?.get("opscore_task_id")?.as_str()
    }
}

/// The task an agent is busy with, as far as Ops-Core is concerned (at most one per agent).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Inflight {
    pub dispatch: DispatchId,
    #[serde(with = "time::rfc3339")]
    pub since: Timestamp,
    /// The capability the attempt was routed by (issue 18), `None` for a task of the agent's own
    /// session. Kept on the agent so that a store keeping the idle-agents index apart from the
    /// agent (DynamoDB) can tell, from the agent's images alone, that the claim already took
    /// the agent's entry for this capability out of the index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routed_by: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Agent {
    pub details: AgentDetails,
    #[serde(with = "time::rfc3339")]
    pub registered_at: Timestamp,
    #[serde(with = "time::rfc3339")]
    pub updated_at: Timestamp,
    #[serde(with = "time::rfc3339::option")]
    pub deregistered_at: Option<Timestamp>,
    pub current: CurrentState,
    pub inflight: Option<Inflight>,
}

impl Agent {
    pub fn new(details: AgentDetails, now: Timestamp) -> Self {
        Self {
            details,
            registered_at: now,
            updated_at: now,
            deregistered_at: None,
            current: CurrentState::registered(now),
            inflight: None,
        }
    }
    pub fn id(&self) -> &AgentId {
        &self.details.agent_id
    }
    pub fn is_deregistered(&self) -> bool {
        self.deregistered_at.is_some()
    }
    /// Whether the runner may hand this agent a task now.
    pub fn is_available(&self) -> bool {
        !self.is_deregistered() && self.inflight.is_none() && self.current.state.is(KnownState::Idle)
    }

    /// Whether the runner may give this agent, which holds `from`, its next task `to` in the
    /// same write ([`Write::HandOverAgent`](crate::store::Write::HandOverAgent)): as available
    /// as a free agent, except that it still holds the attempt it has just reported finished;
    /// and, for a task routed by a capability, announcing it (as a routed claim requires).
    pub fn can_hand_over(&self, from: &DispatchId, to: &Inflight) -> bool {
        !self.is_deregistered()
            && self.inflight.as_ref().is_some_and(|i| &i.dispatch == from)
            && self.current.state.is(KnownState::Idle)
            && to
                .routed_by
                .as_deref()
                .is_none_or(|c| crate::store::indexed_capabilities(self).contains(&c))
    }

    /// What a registration of `details` does to the agent `existing` (if any). The rule every
    /// store follows (the DynamoDB adapter as the condition and update expressions of its
    /// `register_agent`, docs/table-design.md): a new agent starts in `UNKNOWN`; the same details
    /// on an agent that is not deregistered change nothing (AgentKit redelivers); anything else
    /// replaces the details and lifts a deregistration, keeping state, history and in-flight task.
    pub fn registration(existing: Option<&Agent>, details: AgentDetails, now: Timestamp) -> Registration {
        match existing {
            None => Registration::Create(Agent::new(details, now)),
            Some(old) if old.details.same_registration(&details) && !old.is_deregistered() => Registration::Unchanged,
            Some(old) => {
                let mut agent = old.clone();
                agent.details = details;
                agent.deregistered_at = None;
                agent.updated_at = now;
                Registration::Update(agent)
            }
        }
    }

    /// The agent deregistered at `now`, or `None` when it already is (deregistering is
    /// idempotent: the first deregistration's time stays).
    pub fn deregistered(&self, now: Timestamp) -> Option<Agent> {
        if self.is_deregistered() {
            return None;
        }
        let mut agent = self.clone();
        agent.deregistered_at = Some(now);
        agent.updated_at = now;
        Some(agent)
    }

    /// The agent after `report` became its current state (every store applies a report this way,
    /// once `current.is_superseded_by` said it is newer).
    pub fn with_report(&self, report: &StateReport, received_at: Timestamp) -> Agent {
        let mut agent = self.clone();
        agent.current = CurrentState {
            state: report.state.clone(),
            details: report.details.clone(),
            timestamp: report.timestamp,
            ordering_nanos: Some(time::order_key(report.timestamp)),
            version: self.current.version + 1,
        };
        agent.updated_at = received_at;
        agent
    }
}

/// The outcome of [`Agent::registration`]: the item to create, nothing, or the item to replace.
#[derive(Debug, Clone, PartialEq)]
pub enum Registration {
    Create(Agent),
    Unchanged,
    Update(Agent),
}

/// A validated state report (the body of `POST /v1/opscore/agent/{id}/state`).
#[derive(Debug, Clone, PartialEq)]
pub struct StateReport {
    pub agent_id: AgentId,
    pub state: StateName,
    pub details: Option<Map<String, Value>>,
    pub timestamp: Timestamp,
}

/// One report as kept in history (stale ones too: `applied` says whether it became current).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub agent_id: AgentId,
    pub state: StateName,
    pub details: Option<Map<String, Value>>,
    #[serde(with = "time::rfc3339")]
    pub timestamp: Timestamp,
    #[serde(with = "time::rfc3339")]
    pub received_at: Timestamp,
    pub applied: bool,
}

impl HistoryEntry {
    pub fn of(report: &StateReport, received_at: Timestamp, applied: bool) -> Self {
        Self {
            agent_id: report.agent_id.clone(),
            state: report.state.clone(),
            details: report.details.clone(),
            timestamp: report.timestamp,
            received_at,
            applied,
        }
    }
}

/// Registration details for the core's unit tests.
#[cfg(test)]
pub(crate) fn test_details(id: &str) -> AgentDetails {
    AgentDetails {
        agent_id: AgentId::parse(id).unwrap(),
        agent_name: "n".into(),
        version: "1".into(),
        capabilities: vec![],
        contact_endpoint: "http://127.0.0.1:9/task".into(),
        metadata: Map::new(),
        registration_time: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_states_parse_case_insensitively_custom_ones_verbatim() {
        assert_eq!(StateName::parse("IDLE").unwrap().as_str(), "idle");
        assert_eq!(StateName::parse("Idle").unwrap(), StateName::known(KnownState::Idle));
        assert_eq!(StateName::parse("unknown").unwrap().as_str(), "UNKNOWN");
        let busy = StateName::parse("BUSY").unwrap();
        assert_eq!(busy.as_str(), "BUSY");
        assert_eq!(busy.as_known(), None);
        assert!(!busy.is(KnownState::Idle));
        assert_eq!(StateName::parse(""), Err(StateNameError::Empty));
        assert!(matches!(
            StateName::parse(&"x".repeat(65)),
            Err(StateNameError::TooLong { .. })
        ));
        assert_eq!(StateName::parse(" idle"), Err(StateNameError::BadChars));
        assert_eq!(StateName::parse("id\u{0}le"), Err(StateNameError::BadChars));
        assert!(StateName::parse(&"é".repeat(64)).is_ok());
    }

    #[test]
    fn registration_state_is_superseded_by_any_report() {
        let now = time::parse_rfc3339("2026-11-23T22:00:00Z").unwrap();
        let s = CurrentState::registered(now);
        assert!(s.is_superseded_by(now - chrono::Duration::days(365)));
        let applied = CurrentState {
            ordering_nanos: Some(time::order_key(now)),
            ..s
        };
        assert!(!applied.is_superseded_by(now));
        assert!(applied.is_superseded_by(now + chrono::Duration::nanoseconds(1)));
    }

    fn report_at(ts: Timestamp) -> StateReport {
        StateReport {
            agent_id: AgentId::parse("a1").unwrap(),
            state: StateName::known(KnownState::Idle),
            details: None,
            timestamp: ts,
        }
    }

    /// Any instant chrono can represent: whole seconds from its minimum to its maximum, any nanosecond.
    fn any_timestamp() -> impl proptest::strategy::Strategy<Value = Timestamp> {
        use proptest::prelude::*;
        let (min, max) = (Timestamp::MIN_UTC.timestamp(), Timestamp::MAX_UTC.timestamp());
        prop_oneof![
            // The whole range.
            (min..=max, 0u32..1_000_000_000),
            // Around the edges of what nanoseconds in an i64 hold (1677 and 2262) and of the epoch.
            (-9_223_372_100i64..=-9_223_372_000, 0u32..1_000_000_000),
            (9_223_372_000i64..=9_223_372_100, 0u32..1_000_000_000),
            (-5i64..=5, 0u32..1_000_000_000),
            // The far ends themselves.
            (prop_oneof![Just(min), Just(max)], 0u32..1_000_000_000),
        ]
        .prop_filter_map("representable", |(s, n)| chrono::DateTime::from_timestamp(s, n))
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4096))]
        /// Issue 13, defect 1: a report supersedes the current state exactly when its timestamp
        /// is later, over the whole range chrono can represent (not only 1677-2262).
        #[test]
        fn ordering_matches_timestamp_order_over_the_whole_range(a in any_timestamp(), b in any_timestamp()) {
            let now = time::parse_rfc3339("2026-11-23T22:00:00Z").unwrap();
            let agent = Agent::new(
                test_details("a1"),
                now,
            );
            let at_a = agent.with_report(&report_at(a), now);
            proptest::prop_assert_eq!(at_a.current.is_superseded_by(b), b > a, "current {}, report {}", a, b);
            let at_b = agent.with_report(&report_at(b), now);
            proptest::prop_assert_eq!(at_b.current.is_superseded_by(a), a > b, "current {}, report {}", b, a);
        }
    }

    #[test]
    fn the_far_ends_order_correctly() {
        let now = time::parse_rfc3339("2026-11-23T22:00:00Z").unwrap();
        let zero = time::parse_rfc3339("0001-01-01T00:00:00Z").unwrap();
        let s = CurrentState::registered(now);
        let at = |t: Timestamp| CurrentState {
            state: StateName::known(KnownState::Idle),
            ..Agent::new(
                AgentDetails {
                    agent_id: AgentId::parse("a1").unwrap(),
                    agent_name: "n".into(),
                    version: "1".into(),
                    capabilities: vec![],
                    contact_endpoint: "http://127.0.0.1/task".into(),
                    metadata: Map::new(),
                    registration_time: None,
                },
                now,
            )
            .with_report(&report_at(t), now)
            .current
        };
        assert!(s.is_superseded_by(zero));
        assert!(
            at(zero).is_superseded_by(now),
            "Go's zero time must not freeze the agent"
        );
        assert!(!at(now).is_superseded_by(zero));
        assert!(at(Timestamp::MIN_UTC).is_superseded_by(zero));
        assert!(!at(Timestamp::MAX_UTC).is_superseded_by(now));
    }

    #[test]
    fn digest_ignores_registration_time_only() {
        let d = AgentDetails {
            agent_id: AgentId::parse("a1").unwrap(),
            agent_name: "n".into(),
            version: "1".into(),
            capabilities: vec!["x".into()],
            contact_endpoint: "http://127.0.0.1/task".into(),
            metadata: Map::new(),
            registration_time: None,
        };
        let mut e = d.clone();
        e.registration_time = Some(chrono::Utc::now());
        assert_eq!(d.digest(), e.digest());
        assert!(d.same_registration(&e));
        e.version = "2".into();
        assert_ne!(d.digest(), e.digest());
        assert!(!d.same_registration(&e));
    }

    #[test]
    fn registration_creates_keeps_or_replaces_and_lifts_a_deregistration() {
        let t0 = time::parse_rfc3339("2026-11-23T22:00:00Z").unwrap();
        let t1 = t0 + chrono::Duration::seconds(60);
        let details = test_details("a1");
        let Registration::Create(agent) = Agent::registration(None, details.clone(), t0) else {
            panic!("a new agent is created");
        };
        assert_eq!(agent.current.state.as_str(), "UNKNOWN");
        let mut redelivered = details.clone();
        redelivered.registration_time = Some(t1);
        assert_eq!(
            Agent::registration(Some(&agent), redelivered, t1),
            Registration::Unchanged
        );
        let reported = agent.with_report(
            &StateReport {
                agent_id: details.agent_id.clone(),
                state: StateName::known(KnownState::Idle),
                details: None,
                timestamp: t0,
            },
            t0,
        );
        let mut changed = details.clone();
        changed.version = "2".into();
        let Registration::Update(updated) = Agent::registration(Some(&reported), changed, t1) else {
            panic!("changed details replace the old ones");
        };
        assert_eq!(updated.details.version, "2");
        assert_eq!(updated.current, reported.current, "state survives a re-registration");
        assert_eq!((updated.registered_at, updated.updated_at), (t0, t1));
        let gone = reported.deregistered(t1).expect("deregistered once");
        assert_eq!(gone.deregistered(t1 + chrono::Duration::seconds(1)), None, "idempotent");
        let Registration::Update(back) = Agent::registration(Some(&gone), details, t1) else {
            panic!("the same details on a deregistered agent register it again");
        };
        assert!(!back.is_deregistered());
    }
}
