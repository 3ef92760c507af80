//! The item shapes of the single table, as typed structs written and read with `serde_dynamo`.
//!
//! Rules every struct follows:
//! - attributes that are not applicable are ABSENT, never `NULL` (`skip_serializing_if` on every
//!   `Option`), so sparse indexes stay sparse and conditions like `attribute_not_exists` work;
//! - free-form JSON (agent metadata, state details, payloads, results, workflow definitions) is
//!   stored as a JSON string: a DynamoDB number cannot tell `1.0` from `1`, holds at most 38 digits,
//!   and maps nest at most 32 levels, so native maps would not give back what was stored.

use opscore_core::agent::{Agent, AgentDetails, CurrentState, HistoryEntry, Inflight, StateName};
use opscore_core::ids::{AgentId, DispatchId, IdempotencyKey, SessionId, TaskId, WorkflowId, WorkflowVersion};
use opscore_core::session::{FailureCause, Session, SessionStatus};
use opscore_core::store::{StoreError, StoredWorkflow};
use opscore_core::task::{Attempt, TaskInstance, TaskStatus};
use opscore_core::time::{self, Timestamp};
use opscore_core::workflow::WorkflowDefinition;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub const PK: &str = "pk";
pub const SK: &str = "sk";
/// The lists index (keys `gsi1pk`/`gsi1sk`, `KEYS_ONLY`): agents by id, an agent's sessions,
/// workflow versions. Its queries return keys; the items are then read from the table.
pub const GSI1: &str = "lists";
/// The work index (keys `gsi2pk`/`gsi2sk`, `INCLUDE` [`WORK_PROJECTION`]): agents by state, an
/// agent's runnable tasks and sessions by status.
pub const GSI2: &str = "work";
/// The timer index (keys `gsi3pk`/`gsi3sk`, `INCLUDE` [`TIMER_PROJECTION`]).
pub const GSI3: &str = "timers";
/// What the work index carries besides keys: what `runnable_tasks` returns and checks. None of
/// them changes while a task is pending without its index key changing too, and agent items have
/// none of them, so no agent write and no in-place task write rewrites an entry of this index.
pub const WORK_PROJECTION: &[&str] = &["sessionId", "taskId", "dueAt"];
/// What the timer index carries besides keys: what `due_timers` returns and checks. `timerAt` is
/// part of the index sort key, so carrying it costs no index write of its own.
pub const TIMER_PROJECTION: &[&str] = &["sessionId", "taskId", "timerAt"];
pub const TTL_ATTRIBUTE: &str = "expiresAt";
/// Timer index shards: `TIMER#0` .. `TIMER#15`. A task's timer moves on each of its steps (a
/// delete and a put in the index), so the timer index takes about a fifth of all writes; 16
/// shards keep one key near 1 % of them (8 took 2.3 % in the heat check). A sweep queries all 16.
pub const TIMER_SHARDS: u8 = 16;
/// Shards of the agent lists (`AGENTS#{n}` and `STATE#{n}#{state}`). A state change moves an
/// agent's entry between two `STATE#…` keys (two index writes); with 32 shards one key of a
/// state takes 1/32 of that state's index writes, about 1.6 % of the index and well under 2 % of
/// all writes with 1,000 agents (the heat check, `tests`); listing all agents costs 32 parallel
/// queries, which only the API's list endpoints pay.
pub const AGENT_SHARDS: u8 = 32;
/// Shards of the work index's session lists (`SESSIONS#{n}#{status}`). A session's entry moves
/// on each status change (started → running → ended: five index writes a session); 8 shards keep
/// one key near 1.3 % of the work index's writes with 1,000 agents (the heat check). Listing the
/// latest sessions of every status costs 8 × 5 = 40 parallel queries, one status 8: only the
/// API's sessions list (the console) pays them.
pub const SESSION_SHARDS: u8 = 8;
/// Shards of the workflow list (`WORKFLOWS#{n}`): written once per definition, listed rarely.
pub const WORKFLOW_SHARDS: u8 = 8;
/// The most shards a capability's two routing lists may have (`ROUTED#{n}#{capability}`, n from
/// the session id as for timers; `IDLE#{n}#{capability}`, n = shard of the agent id). How many
/// a deployment uses is its setting `OPSCORE_ROUTING_INDEX_SHARDS` (template parameter
/// `RoutingIndexShards`), **1** by default: every routed task joins and leaves its capability's
/// runnable list once per attempt and its agent's entry leaves and joins the idle list once,
/// and one `work` partition key takes 1,000 writes/s, so one shard carries about 500 routed
/// tasks/s per capability, a third of the table's own ceiling (docs/scale.md); and each lookup
/// (`routed_tasks`, `idle_agents`) queries every shard, so one shard is what keeps a routed
/// task within two requests of a named one (docs/table-design.md). 16 shards keep one key near
/// 1.5 % of the work index's writes with every one of 1,000 agents on one capability (the heat
/// check; 8 gave 2.96 %: agent ids hash less evenly than random session ids). Raising it on a
/// live table is safe (shard 0 stays shard 0; readers query the new count); lowering it strands
/// the entries of the shards dropped (docs/table-design.md says how to drain them first).
pub const MAX_ROUTING_SHARDS: u8 = 16;

/// A stable shard of an id: the first four bytes of its SHA-256, mod `shards`. Stable across
/// builds, platforms and versions (unlike `std`'s hasher), and uniform for ids that share
/// prefixes (`agent-1`, `agent-2`, …).
pub fn shard_of(id: &str, shards: u8) -> u8 {
    use sha2::Digest as _;
    let d = sha2::Sha256::digest(id.as_bytes());
    (u32::from_be_bytes([d[0], d[1], d[2], d[3]]) % u32::from(shards.max(1))) as u8
}

/// Key formats. Ids cannot contain `#` (see `opscore_core::ids`), so every key splits unambiguously.
pub mod keys {
    use super::*;

    pub const AGENT_SK: &str = "A";
    pub const SESSION_SK: &str = "S";
    pub const IDEM_SK: &str = "I";
    pub const HISTORY_PREFIX: &str = "H#";
    pub const TASK_PREFIX: &str = "T#";
    /// The list of all agents, one partition per shard: `AGENTS#{n}`.
    pub const AGENTS: &str = "AGENTS";
    /// The list of all workflow versions, one partition per shard: `WORKFLOWS#{n}`.
    pub const WORKFLOWS: &str = "WORKFLOWS";
    pub const STATE: &str = "STATE";

    pub fn agent_shard(id: &AgentId) -> u8 {
        shard_of(id.as_str(), AGENT_SHARDS)
    }
    /// `AGENTS#{n}`: the agents list partition of shard `n`.
    pub fn agents_pk(shard: u8) -> String {
        format!("{AGENTS}#{shard}")
    }
    pub fn workflow_shard(id: &WorkflowId) -> u8 {
        shard_of(id.as_str(), WORKFLOW_SHARDS)
    }
    /// `WORKFLOWS#{n}`: the workflows list partition of shard `n`.
    pub fn workflows_pk(shard: u8) -> String {
        format!("{WORKFLOWS}#{shard}")
    }
    /// `STATE#{n}#{state}`: the state last, since a custom state name may hold `#`.
    pub fn state_pk(shard: u8, state: &StateName) -> String {
        format!("{STATE}#{shard}#{state}")
    }

    pub fn agent_pk(id: &AgentId) -> String {
        format!("AGENT#{id}")
    }
    /// Newest report first when queried backwards; ties by arrival, then a random suffix.
    /// Both instants as `ORDER_KEY_BOUND + order_key` in 23 digits, which sorts every instant
    /// chrono can represent (the former 20-digit nanoseconds clamped everything before 1970 to
    /// one value and saturated after 2262).
    pub fn history_sk(report_ts: Timestamp, received_at: Timestamp) -> String {
        format!(
            "H#{:023}#{:023}#{}",
            time::ORDER_KEY_BOUND + time::order_key(report_ts),
            time::ORDER_KEY_BOUND + time::order_key(received_at),
            uuid::Uuid::new_v4().simple()
        )
    }
    /// The work index partition of an agent in `state`: its shard of that state's list.
    pub fn state_gsi2pk(agent: &AgentId, state: &StateName) -> String {
        state_pk(agent_shard(agent), state)
    }
    pub fn workflow_pk(id: &WorkflowId) -> String {
        format!("WF#{id}")
    }
    pub fn workflow_sk(v: &WorkflowVersion) -> String {
        format!("V#{v}")
    }
    pub fn workflow_gsi1sk(id: &WorkflowId, v: &WorkflowVersion) -> String {
        format!("{id}#{v}")
    }
    pub fn session_pk(id: &SessionId) -> String {
        format!("S#{id}")
    }
    pub fn task_sk(id: &TaskId) -> String {
        format!("T#{id}")
    }
    /// The sessions lists of the work index, one per status: `SESSIONS` (the name cursors of
    /// the unfiltered list carry), `SESSIONS#{status}` for one status.
    pub const SESSIONS: &str = "SESSIONS";
    pub fn session_shard(id: &SessionId) -> u8 {
        shard_of(&id.to_string(), SESSION_SHARDS)
    }
    /// `SESSIONS#{n}#{status}`: the work index partition of shard `n` of the sessions in `status`.
    pub fn sessions_pk(shard: u8, status: SessionStatus) -> String {
        format!("{SESSIONS}#{shard}#{}", status.as_str())
    }
    pub fn sessions_of_agent(agent: &AgentId) -> String {
        format!("AGENT#{agent}#SESSIONS")
    }
    pub fn session_gsi1sk(start: Timestamp, id: &SessionId) -> String {
        format!("{:020}#{id}", time::to_nanos(start).max(0))
    }
    pub fn runnable_pk(agent: &AgentId) -> String {
        format!("RUNNABLE#{agent}")
    }
    /// `ROUTED#{n}#{capability}`: the capability last, since it may hold `#`.
    pub fn routed_pk(shard: u8, capability: &str) -> String {
        format!("ROUTED#{shard}#{capability}")
    }
    /// The routed list shard of a session's tasks, of `shards`: the first byte of the (random)
    /// session UUID.
    pub fn routed_shard(session: &SessionId, shards: u8) -> u8 {
        let s = session.to_string();
        u8::from_str_radix(&s[..2], 16).unwrap_or(0) % shards.max(1)
    }
    /// `IDLE#{n}#{capability}`: a capability's idle agents, shard `n` (of the agent id).
    pub fn idle_pk(shard: u8, capability: &str) -> String {
        format!("IDLE#{shard}#{capability}")
    }
    pub fn idle_shard(agent: &AgentId, shards: u8) -> u8 {
        shard_of(agent.as_str(), shards.max(1))
    }
    /// The sort key of an idle-agents entry in the agent's partition: `IDLE#{capability}`.
    pub fn idle_sk(capability: &str) -> String {
        format!("{IDLE_PREFIX}{capability}")
    }
    pub const IDLE_PREFIX: &str = "IDLE#";
    /// `{sinceNanos:020}#{agentId}`: the one available longest first (nanoseconds: agents
    /// freed within one millisecond still keep their order).
    pub fn idle_gsi2sk(since: Timestamp, agent: &AgentId) -> String {
        format!("{:020}#{agent}", time::to_nanos(since).max(0))
    }
    pub fn millis_key(t: Timestamp) -> String {
        format!("{:020}", time::to_millis(t).max(0))
    }
    /// An exclusive upper bound for index sort keys `{millis:020}#…` that are due by `now`.
    pub fn due_bound(now: Timestamp) -> String {
        format!("{:020}", time::to_millis(now).max(0).saturating_add(1))
    }
    pub fn task_index_sk(t: Timestamp, session: &SessionId, task: &TaskId) -> String {
        format!("{}#{session}#{task}", millis_key(t))
    }
    /// A stable shard of the timer index: the first byte of the session UUID (random, v4), mod
    /// [`TIMER_SHARDS`].
    pub fn timer_shard(session: &SessionId) -> u8 {
        let s = session.to_string();
        u8::from_str_radix(&s[..2], 16).unwrap_or(0) % TIMER_SHARDS
    }
    pub fn timer_pk(shard: u8) -> String {
        format!("TIMER#{shard}")
    }
    pub fn idem_pk(agent: &AgentId, key: &IdempotencyKey) -> String {
        format!("IDEM#{agent}#{key}")
    }
    pub const DELIVERY_SK: &str = "D";
    pub fn delivery_pk(id: &str) -> String {
        format!("DELIVERY#{id}")
    }
}

/// Timestamps in items: the core's one RFC 3339 format (microseconds, nanoseconds when the
/// instant has them), lossless, so what is read back equals what was written.
use opscore_core::time::rfc3339 as ts;

/// Serde helper: any serialisable value as a JSON string attribute.
pub mod json_string {
    use serde::de::{DeserializeOwned, Error as _};
    use serde::ser::Error as _;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<T: Serialize, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&serde_json::to_string(v).map_err(S::Error::custom)?)
    }
    pub fn deserialize<'de, T: DeserializeOwned, D: Deserializer<'de>>(d: D) -> Result<T, D::Error> {
        let s = String::deserialize(d)?;
        serde_json::from_str(&s).map_err(D::Error::custom)
    }

    /// For `Option` fields; pair with `default` and `skip_serializing_if = "Option::is_none"`.
    pub mod option {
        use super::*;
        pub fn serialize<T: Serialize, S: Serializer>(v: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
            match v {
                Some(v) => super::serialize(v, s),
                None => s.serialize_none(),
            }
        }
        pub fn deserialize<'de, T: DeserializeOwned, D: Deserializer<'de>>(d: D) -> Result<Option<T>, D::Error> {
            match Option::<String>::deserialize(d)? {
                None => Ok(None),
                Some(s) => serde_json::from_str(&s).map(Some).map_err(D::Error::custom),
            }
        }
    }
}

/// `AGENT#{id}` / `A`: registration details, lifecycle, current state and in-flight marker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentItem {
    pub pk: String,
    pub sk: String,
    pub agent_id: AgentId,
    pub agent_name: String,
    pub version: String,
    pub capabilities: Vec<String>,
    pub contact_endpoint: String,
    #[serde(with = "json_string")]
    pub metadata: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "ts::option")]
    pub registration_time: Option<Timestamp>,
    pub details_digest: String,
    #[serde(with = "ts")]
    pub registered_at: Timestamp,
    #[serde(with = "ts")]
    pub updated_at: Timestamp,
    pub deregistered: bool,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "ts::option")]
    pub deregistered_at: Option<Timestamp>,
    pub state: StateName,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "json_string::option")]
    pub state_details: Option<Map<String, Value>>,
    #[serde(with = "ts")]
    pub state_timestamp: Timestamp,
    /// `time::order_key` of the report timestamp (nanoseconds, an `i128`: up to 22 digits);
    /// absent for the registration state. A DynamoDB number, written and read by
    /// [`AgentItem::to_item`] / [`AgentItem::from_item`] because `serde_dynamo` has no `i128`.
    #[serde(skip)]
    pub state_order: Option<i128>,
    pub state_version: u64,
    /// `DispatchId::render()` of the task out with the agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inflight: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "ts::option")]
    pub inflight_since: Option<Timestamp>,
    /// `Inflight::routed_by`: the capability a routed attempt was claimed by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inflight_routed_by: Option<String>,
    pub gsi1pk: String,
    pub gsi1sk: String,
    pub gsi2pk: String,
    pub gsi2sk: String,
}

/// The attribute holding [`AgentItem::state_order`].
pub const STATE_ORDER: &str = "stateOrder";

/// What versions before issue 13 stored for any report outside 1677-2262 (an `i64` saturated):
/// it froze the agent. Read back as "no ordering" (the next report wins), and the report
/// condition treats it the same way.
pub const LEGACY_SATURATED_ORDER: i128 = i64::MAX as i128;

impl AgentItem {
    /// The item as DynamoDB attributes, `stateOrder` included.
    pub fn to_item(&self) -> Result<serde_dynamo::Item, StoreError> {
        let item: serde_dynamo::Item =
            serde_dynamo::to_item(self).map_err(|e| StoreError::corrupt(format!("cannot encode agent: {e}")))?;
        let mut map: std::collections::HashMap<String, serde_dynamo::AttributeValue> = item.into();
        if let Some(o) = self.state_order {
            map.insert(STATE_ORDER.into(), serde_dynamo::AttributeValue::N(o.to_string()));
        }
        Ok(map.into())
    }

    /// The item from DynamoDB attributes, `stateOrder` included.
    pub fn from_item(item: serde_dynamo::Item, what: &str) -> Result<Self, StoreError> {
        let mut map: std::collections::HashMap<String, serde_dynamo::AttributeValue> = item.into();
        let order = match map.remove(STATE_ORDER) {
            None => None,
            Some(serde_dynamo::AttributeValue::N(n)) => Some(
                n.parse::<i128>()
                    .map_err(|e| StoreError::corrupt(format!("{what}: stateOrder {n:?}: {e}")))?,
            ),
            Some(other) => {
                return Err(StoreError::corrupt(format!(
                    "{what}: stateOrder is not a number: {other:?}"
                )));
            }
        };
        let mut a: AgentItem = decode(map.into(), what)?;
        a.state_order = order.filter(|o| *o != LEGACY_SATURATED_ORDER);
        Ok(a)
    }

    pub fn from_agent(a: &Agent) -> Self {
        let d = &a.details;
        Self {
            pk: keys::agent_pk(&d.agent_id),
            sk: keys::AGENT_SK.into(),
            agent_id: d.agent_id.clone(),
            agent_name: d.agent_name.clone(),
            version: d.version.clone(),
            capabilities: d.capabilities.clone(),
            contact_endpoint: d.contact_endpoint.clone(),
            metadata: d.metadata.clone(),
            registration_time: d.registration_time,
            details_digest: d.digest(),
            registered_at: a.registered_at,
            updated_at: a.updated_at,
            deregistered: a.deregistered_at.is_some(),
            deregistered_at: a.deregistered_at,
            state: a.current.state.clone(),
            state_details: a.current.details.clone(),
            state_timestamp: a.current.timestamp,
            state_order: a.current.ordering_nanos,
            state_version: a.current.version,
            inflight: a.inflight.as_ref().map(|i| i.dispatch.render()),
            inflight_since: a.inflight.as_ref().map(|i| i.since),
            inflight_routed_by: a.inflight.as_ref().and_then(|i| i.routed_by.clone()),
            gsi1pk: keys::agents_pk(keys::agent_shard(&d.agent_id)),
            gsi1sk: d.agent_id.to_string(),
            gsi2pk: keys::state_gsi2pk(&d.agent_id, &a.current.state),
            gsi2sk: d.agent_id.to_string(),
        }
    }

    pub fn into_agent(self) -> Result<Agent, StoreError> {
        let inflight = match (self.inflight, self.inflight_since) {
            (None, _) => None,
            (Some(d), Some(since)) => Some(Inflight {
                dispatch: DispatchId::parse(&d)
                    .ok_or_else(|| StoreError::corrupt(format!("agent {}: bad inflight {d:?}", self.agent_id)))?,
                since,
                routed_by: self.inflight_routed_by,
            }),
            (Some(_), None) => {
                return Err(StoreError::corrupt(format!(
                    "agent {}: inflight without inflightSince",
                    self.agent_id
                )));
            }
        };
        let deregistered_at = match (self.deregistered, self.deregistered_at) {
            (false, _) => None,
            (true, Some(t)) => Some(t),
            (true, None) => Some(self.updated_at),
        };
        Ok(Agent {
            details: AgentDetails {
                agent_id: self.agent_id,
                agent_name: self.agent_name,
                version: self.version,
                capabilities: self.capabilities,
                contact_endpoint: self.contact_endpoint,
                metadata: self.metadata,
                registration_time: self.registration_time,
            },
            registered_at: self.registered_at,
            updated_at: self.updated_at,
            deregistered_at,
            current: CurrentState {
                state: self.state,
                details: self.state_details,
                timestamp: self.state_timestamp,
                ordering_nanos: self.state_order,
                version: self.state_version,
            },
            inflight,
        })
    }
}

/// `AGENT#{id}` / `H#{report:023}#{received:023}#{uuid}` (see [`keys::history_sk`]): one state report, expiring.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryItem {
    pub pk: String,
    pub sk: String,
    pub agent_id: AgentId,
    pub state: StateName,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "json_string::option")]
    pub details: Option<Map<String, Value>>,
    #[serde(with = "ts")]
    pub timestamp: Timestamp,
    #[serde(with = "ts")]
    pub received_at: Timestamp,
    pub applied: bool,
    /// TTL: epoch seconds.
    pub expires_at: i64,
}

impl HistoryItem {
    pub fn new(e: &HistoryEntry, ttl: std::time::Duration) -> Self {
        Self {
            pk: keys::agent_pk(&e.agent_id),
            sk: keys::history_sk(e.timestamp, e.received_at),
            agent_id: e.agent_id.clone(),
            state: e.state.clone(),
            details: e.details.clone(),
            timestamp: e.timestamp,
            received_at: e.received_at,
            applied: e.applied,
            expires_at: expiry(e.received_at, ttl),
        }
    }
    pub fn into_entry(self) -> HistoryEntry {
        HistoryEntry {
            agent_id: self.agent_id,
            state: self.state,
            details: self.details,
            timestamp: self.timestamp,
            received_at: self.received_at,
            applied: self.applied,
        }
    }
}

pub fn expiry(from: Timestamp, ttl: std::time::Duration) -> i64 {
    from.timestamp()
        .saturating_add(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX))
}

/// `WF#{id}` / `V#{version}`: an immutable workflow definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowItem {
    pub pk: String,
    pub sk: String,
    pub workflow_id: WorkflowId,
    pub version: WorkflowVersion,
    #[serde(with = "json_string")]
    pub definition: WorkflowDefinition,
    #[serde(with = "ts")]
    pub created_at: Timestamp,
    pub gsi1pk: String,
    pub gsi1sk: String,
}

impl WorkflowItem {
    pub fn new(def: &WorkflowDefinition, now: Timestamp) -> Self {
        Self {
            pk: keys::workflow_pk(&def.id),
            sk: keys::workflow_sk(&def.version),
            workflow_id: def.id.clone(),
            version: def.version.clone(),
            definition: def.clone(),
            created_at: now,
            gsi1pk: keys::workflows_pk(keys::workflow_shard(&def.id)),
            gsi1sk: keys::workflow_gsi1sk(&def.id, &def.version),
        }
    }
    pub fn into_stored(self) -> StoredWorkflow {
        StoredWorkflow {
            definition: self.definition,
            created_at: self.created_at,
        }
    }
}

/// `S#{sessionId}` / `S`: a workflow session (with its definition snapshot).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionItem {
    pub pk: String,
    pub sk: String,
    pub session_id: SessionId,
    pub agent_id: AgentId,
    #[serde(with = "json_string")]
    pub definition: WorkflowDefinition,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "json_string::option")]
    pub initial_payload: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<IdempotencyKey>,
    pub status: SessionStatus,
    #[serde(with = "ts")]
    pub start_time: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "ts::option")]
    pub end_time: Option<Timestamp>,
    #[serde(with = "ts")]
    pub updated_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "json_string::option")]
    pub result: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<FailureCause>,
    pub rev: u64,
    pub gsi1pk: String,
    pub gsi1sk: String,
    /// The sessions list of the work index (`SESSIONS#{n}#{status}`, sort key as `gsi1sk`).
    /// Absent on sessions written before the list existed: they are not listed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gsi2pk: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gsi2sk: Option<String>,
}

impl SessionItem {
    pub fn new(s: &Session) -> Self {
        Self {
            pk: keys::session_pk(&s.session_id),
            sk: keys::SESSION_SK.into(),
            session_id: s.session_id,
            agent_id: s.agent_id.clone(),
            definition: s.definition.clone(),
            initial_payload: s.initial_payload.clone(),
            idempotency_key: s.idempotency_key.clone(),
            status: s.status,
            start_time: s.start_time,
            end_time: s.end_time,
            updated_at: s.updated_at,
            result: s.result.clone(),
            error: s.error.clone(),
            rev: s.rev,
            gsi1pk: keys::sessions_of_agent(&s.agent_id),
            gsi1sk: keys::session_gsi1sk(s.start_time, &s.session_id),
            gsi2pk: Some(keys::sessions_pk(keys::session_shard(&s.session_id), s.status)),
            gsi2sk: Some(keys::session_gsi1sk(s.start_time, &s.session_id)),
        }
    }
    pub fn into_session(self) -> Session {
        Session {
            session_id: self.session_id,
            agent_id: self.agent_id,
            definition: self.definition,
            initial_payload: self.initial_payload,
            idempotency_key: self.idempotency_key,
            status: self.status,
            start_time: self.start_time,
            end_time: self.end_time,
            updated_at: self.updated_at,
            result: self.result,
            error: self.error,
            rev: self.rev,
        }
    }
}

/// `S#{sessionId}` / `T#{taskId}`: a task instance. `gsi2*` only while pending, `gsi3*` only while
/// a timer is set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskItem {
    pub pk: String,
    pub sk: String,
    pub session_id: SessionId,
    pub task_id: TaskId,
    pub agent_id: AgentId,
    pub name: String,
    #[serde(with = "json_string")]
    pub payload: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_task_id: Option<TaskId>,
    pub status: TaskStatus,
    pub attempt: u32,
    pub max_retries: u32,
    #[serde(with = "ts")]
    pub created_at: Timestamp,
    #[serde(with = "ts")]
    pub updated_at: Timestamp,
    #[serde(with = "ts")]
    pub due_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "ts::option")]
    pub dispatch_deadline: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "ts::option")]
    pub lease_expires_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "ts::option")]
    pub run_deadline: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "ts::option")]
    pub timer_at: Option<Timestamp>,
    pub attempts: Vec<Attempt>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "json_string::option")]
    pub result: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    pub rev: u64,
    /// Routed by this capability (absent for a task that runs on its agent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capability: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gsi2pk: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gsi2sk: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gsi3pk: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gsi3sk: Option<String>,
}

impl TaskItem {
    /// `routing_shards`: the deployment's routing shard count (a routed task's list key).
    pub fn new(t: &TaskInstance, routing_shards: u8) -> Self {
        let pending = t.status == TaskStatus::Pending;
        Self {
            pk: keys::session_pk(&t.session_id),
            sk: keys::task_sk(&t.task_id),
            session_id: t.session_id,
            task_id: t.task_id.clone(),
            agent_id: t.agent_id.clone(),
            name: t.name.clone(),
            payload: t.payload.clone(),
            next_task_id: t.next_task_id.clone(),
            status: t.status,
            attempt: t.attempt,
            max_retries: t.max_retries,
            created_at: t.created_at,
            updated_at: t.updated_at,
            due_at: t.due_at,
            dispatch_deadline: t.dispatch_deadline,
            lease_expires_at: t.lease_expires_at,
            run_deadline: t.run_deadline,
            timer_at: t.timer_at,
            attempts: t.attempts.clone(),
            result: t.result.clone(),
            last_error: t.last_error.clone(),
            rev: t.rev,
            capability: t.capability.clone(),
            // Pending: in its agent's runnable list, or, routed, in its capability's.
            gsi2pk: pending.then(|| match &t.capability {
                Some(c) => keys::routed_pk(keys::routed_shard(&t.session_id, routing_shards), c),
                None => keys::runnable_pk(&t.agent_id),
            }),
            gsi2sk: pending.then(|| keys::task_index_sk(t.due_at, &t.session_id, &t.task_id)),
            gsi3pk: t.timer_at.map(|_| keys::timer_pk(keys::timer_shard(&t.session_id))),
            gsi3sk: t.timer_at.map(|at| keys::task_index_sk(at, &t.session_id, &t.task_id)),
        }
    }
    pub fn into_task(self) -> TaskInstance {
        TaskInstance {
            session_id: self.session_id,
            task_id: self.task_id,
            agent_id: self.agent_id,
            capability: self.capability,
            name: self.name,
            payload: self.payload,
            next_task_id: self.next_task_id,
            status: self.status,
            attempt: self.attempt,
            max_retries: self.max_retries,
            created_at: self.created_at,
            updated_at: self.updated_at,
            due_at: self.due_at,
            dispatch_deadline: self.dispatch_deadline,
            lease_expires_at: self.lease_expires_at,
            run_deadline: self.run_deadline,
            timer_at: self.timer_at,
            attempts: self.attempts,
            result: self.result,
            last_error: self.last_error,
            rev: self.rev,
        }
    }
}

/// `IDEM#{agentId}#{key}` / `I`: an `Idempotency-Key` and the session it started, expiring.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IdempotencyItem {
    pub pk: String,
    pub sk: String,
    pub agent_id: AgentId,
    pub key: IdempotencyKey,
    pub session_id: SessionId,
    /// The fingerprint of the trigger the key came with; absent on keys written before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    pub expires_at: i64,
}

/// `DELIVERY#{id}` / `D`: a signed webhook delivery already handled, expiring.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryItem {
    pub pk: String,
    pub sk: String,
    pub delivery_id: String,
    pub expires_at: i64,
}

/// `AGENT#{agentId}` / `IDLE#{capability}`: the agent is available and announces `capability`
/// (the idle-agents index, on the work index: `IDLE#{n}#{capability}` / `{sinceNanos}#{agentId}`).
/// Written by `sync_idle_agent`, conditioned on the agent item being as the runner saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IdleAgentItem {
    pub pk: String,
    pub sk: String,
    pub agent_id: AgentId,
    pub capability: String,
    #[serde(with = "ts")]
    pub available_since: Timestamp,
    pub gsi2pk: String,
    pub gsi2sk: String,
}

impl IdleAgentItem {
    pub fn new(agent: &AgentId, capability: &str, since: Timestamp, routing_shards: u8) -> Self {
        Self {
            pk: keys::agent_pk(agent),
            sk: keys::idle_sk(capability),
            agent_id: agent.clone(),
            capability: capability.to_owned(),
            available_since: since,
            gsi2pk: keys::idle_pk(keys::idle_shard(agent, routing_shards), capability),
            gsi2sk: keys::idle_gsi2sk(since, agent),
        }
    }
}

/// What kind of item a key names (from `pk`/`sk` alone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Agent,
    History,
    IdleAgent,
    Workflow,
    Session,
    Task,
    Idempotency,
    Delivery,
    Unknown,
}

pub fn kind_of(pk: &str, sk: &str) -> Kind {
    if pk.starts_with("AGENT#") {
        if sk == keys::AGENT_SK {
            Kind::Agent
        } else if sk.starts_with(keys::HISTORY_PREFIX) {
            Kind::History
        } else if sk.starts_with(keys::IDLE_PREFIX) {
            Kind::IdleAgent
        } else {
            Kind::Unknown
        }
    } else if pk.starts_with("S#") {
        if sk == keys::SESSION_SK {
            Kind::Session
        } else if sk.starts_with(keys::TASK_PREFIX) {
            Kind::Task
        } else {
            Kind::Unknown
        }
    } else if pk.starts_with("WF#") {
        Kind::Workflow
    } else if pk.starts_with("IDEM#") {
        Kind::Idempotency
    } else if pk.starts_with("DELIVERY#") {
        Kind::Delivery
    } else {
        Kind::Unknown
    }
}

/// Decodes a raw item of any supported attribute-value type into a typed item.
pub fn decode<T: serde::de::DeserializeOwned>(item: serde_dynamo::Item, what: &str) -> Result<T, StoreError> {
    serde_dynamo::from_item(item).map_err(|e| StoreError::corrupt(format!("{what}: {e}")))
}

/// The string value of a key attribute of a raw item.
pub fn key_string(item: &serde_dynamo::Item, name: &str) -> Option<String> {
    match item.get(name) {
        Some(serde_dynamo::AttributeValue::S(s)) => Some(s.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_dynamo::AttributeValue as Av;
    use serde_json::json;

    fn nulls(item: &serde_dynamo::Item) -> Vec<String> {
        fn walk(path: &str, v: &Av, out: &mut Vec<String>) {
            match v {
                Av::Null(_) => out.push(path.to_owned()),
                Av::M(m) => m.iter().for_each(|(k, v)| walk(&format!("{path}.{k}"), v, out)),
                Av::L(l) => l
                    .iter()
                    .enumerate()
                    .for_each(|(i, v)| walk(&format!("{path}[{i}]"), v, out)),
                _ => {}
            }
        }
        let mut out = Vec::new();
        item.iter().for_each(|(k, v)| walk(k, v, &mut out));
        out
    }

    fn details() -> AgentDetails {
        AgentDetails {
            agent_id: AgentId::parse("a1").unwrap(),
            agent_name: "n".into(),
            version: "1".into(),
            capabilities: vec![],
            contact_endpoint: "http://127.0.0.1/task".into(),
            metadata: json!({"f": 1.0, "big": 1e300, "n": null, "deep": [[[[{"x": -0.5}]]]]})
                .as_object()
                .unwrap()
                .clone(),
            registration_time: None,
        }
    }

    #[test]
    fn agent_items_round_trip_exactly_and_hold_no_null() {
        let now = time::parse_rfc3339("2026-11-23T22:16:20.123456789Z").unwrap();
        let mut agent = Agent::new(details(), now);
        let item: serde_dynamo::Item = AgentItem::from_agent(&agent).to_item().unwrap();
        assert_eq!(nulls(&item), Vec::<String>::new());
        for absent in [
            "stateOrder",
            "inflight",
            "inflightSince",
            "inflightRoutedBy",
            "deregisteredAt",
            "registrationTime",
        ] {
            assert!(!item.contains_key(absent), "{absent}");
        }
        let back = AgentItem::from_item(item, "agent").unwrap().into_agent().unwrap();
        assert_eq!(back, agent);
        agent.current.ordering_nanos = Some(time::order_key(now));
        agent.inflight = Some(Inflight {
            dispatch: DispatchId::parse(&format!("{}:t1:2", SessionId::new())).unwrap(),
            since: now,
            routed_by: Some("summarise".into()),
        });
        agent.deregistered_at = Some(now);
        let item: serde_dynamo::Item = AgentItem::from_agent(&agent).to_item().unwrap();
        assert_eq!(item.get("deregistered"), Some(&Av::Bool(true)));
        let back = AgentItem::from_item(item, "agent").unwrap().into_agent().unwrap();
        assert_eq!(back, agent);
        // Year 1 (Go's zero time): 20 digits, negative; exact both ways.
        agent.current.ordering_nanos = Some(time::order_key(time::parse_rfc3339("0001-01-01T00:00:00Z").unwrap()));
        let item = AgentItem::from_agent(&agent).to_item().unwrap();
        assert_eq!(item.get("stateOrder"), Some(&Av::N("-62135596800000000000".into())));
        assert_eq!(
            AgentItem::from_item(item, "agent").unwrap().into_agent().unwrap(),
            agent
        );
        // The saturated value older versions wrote reads as "no ordering": the next report wins.
        agent.current.ordering_nanos = Some(i128::from(i64::MAX));
        let item = AgentItem::from_agent(&agent).to_item().unwrap();
        let back = AgentItem::from_item(item, "agent").unwrap().into_agent().unwrap();
        assert_eq!(back.current.ordering_nanos, None);
    }

    /// A failed session's cause keeps its code as the string it always was (`S`), so items written
    /// before the code was an enum read back, and so do the ones written now.
    #[test]
    fn a_failure_code_is_stored_as_its_string() {
        use opscore_core::session::FailureCode;
        let def =
            WorkflowDefinition::from_value(json!({"id": "w", "name": "n", "tasks": [{"taskId": "a", "name": "A"}]}))
                .unwrap();
        let now = time::parse_rfc3339("2026-11-23T22:16:20Z").unwrap();
        let mut s = Session::start(AgentId::parse("a1").unwrap(), def, None, None, now)
            .transition(SessionStatus::Failed, now)
            .unwrap();
        s.error = Some(FailureCause {
            code: FailureCode::TaskTimeout,
            message: "m".into(),
            task_id: Some(TaskId::parse("a").unwrap()),
            attempts: Some(2),
            last_error: None,
        });
        let item: serde_dynamo::Item = serde_dynamo::to_item(SessionItem::new(&s)).unwrap();
        let Some(Av::M(cause)) = item.get("error") else {
            panic!("error is a map: {item:?}");
        };
        assert_eq!(cause.get("code"), Some(&Av::S("task_timeout".into())));
        let back: SessionItem = serde_dynamo::from_item(item).unwrap();
        assert_eq!(back.into_session(), s);
    }

    #[test]
    fn keys_sort_as_the_queries_need() {
        let early = time::parse_rfc3339("1969-12-31T23:59:59Z").unwrap();
        let late = time::parse_rfc3339("2026-01-01T00:00:00Z").unwrap();
        assert!(keys::history_sk(early, late) < keys::history_sk(late, late));
        let zero = time::parse_rfc3339("0001-01-01T00:00:00Z").unwrap();
        let far = time::parse_rfc3339("9999-12-31T23:59:59.999999999Z").unwrap();
        assert!(keys::history_sk(Timestamp::MIN_UTC, late) < keys::history_sk(zero, late));
        assert!(keys::history_sk(zero, late) < keys::history_sk(early, late));
        assert!(keys::history_sk(late, late) < keys::history_sk(far, late));
        assert!(keys::history_sk(far, late) < keys::history_sk(Timestamp::MAX_UTC, late));
        assert!(keys::history_sk(late, early) < keys::history_sk(late, late));
        assert!(keys::millis_key(early) < keys::millis_key(late));
        assert_eq!(keys::due_bound(late), format!("{:020}", time::to_millis(late) + 1));
        let s = SessionId::new();
        let key = keys::task_index_sk(late, &s, &TaskId::parse("zzz").unwrap());
        assert!(key < keys::due_bound(late) && key > keys::millis_key(late));
        for _ in 0..100 {
            let s = SessionId::new();
            assert!(keys::timer_shard(&s) < TIMER_SHARDS);
            assert_eq!(keys::timer_shard(&s), keys::timer_shard(&s));
        }
    }

    #[test]
    fn kinds_come_from_keys() {
        assert_eq!(kind_of("AGENT#a", "A"), Kind::Agent);
        assert_eq!(kind_of("AGENT#a", "H#1"), Kind::History);
        assert_eq!(kind_of("AGENT#a", "IDLE#summarise"), Kind::IdleAgent);
        assert_eq!(kind_of("S#x", "S"), Kind::Session);
        assert_eq!(kind_of("S#x", "T#t"), Kind::Task);
        assert_eq!(kind_of("WF#w", "V#1"), Kind::Workflow);
        assert_eq!(kind_of("IDEM#a#k", "I"), Kind::Idempotency);
        assert_eq!(kind_of("DELIVERY#x", "D"), Kind::Delivery);
        assert_eq!(kind_of("OTHER", "x"), Kind::Unknown);
    }
}
