//! [`DynamoStore`]: the storage port on one DynamoDB table. See `docs/table-design.md`.
//!
//! Every state change is one conditional write or one `TransactWriteItems`; nothing reads and then
//! writes unconditionally. Where a caller needs what stood in the way, the failed write returns it
//! (`ReturnValuesOnConditionCheckFailure=ALL_OLD`); a `GetItem` happens only on that error path and
//! only if the store did not return the item.

use crate::counters::{CapacityUnits, Counters, Op, RequestCounts};
use crate::cursor::{self, CursorShape, ShardedPosition};
use crate::items::{
    self, AgentItem, DeliveryItem, HistoryItem, IdempotencyItem, IdleAgentItem, SessionItem, TaskItem, WorkflowItem,
    keys,
};
use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{
    AttributeValue, CancellationReason, ConditionCheck, KeysAndAttributes, Put, ReturnConsumedCapacity, ReturnValue,
    ReturnValuesOnConditionCheckFailure, TransactWriteItem, Update,
};
use opscore_core::agent::{Agent, AgentDetails, HistoryEntry, KnownState, Registration, StateName, StateReport};
use opscore_core::ids::{AgentId, SessionId, WorkflowId, WorkflowVersion};
use opscore_core::session::{Session, SessionStatus};
use opscore_core::store::*;
use opscore_core::task::{TaskInstance, TaskKey};
use opscore_core::time::{self, Timestamp};
use opscore_core::workflow::WorkflowDefinition;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

type RawItem = HashMap<String, AttributeValue>;

/// An entry of the work index for a pending task: what `runnable_tasks` needs, all projected.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct RunnableEntry {
    session_id: SessionId,
    task_id: opscore_core::ids::TaskId,
    #[serde(with = "opscore_core::time::rfc3339")]
    due_at: Timestamp,
}

/// An entry of the idle-agents list (the work index, which projects none of its attributes):
/// its index sort key orders it, its table key (`AGENT#{agentId}`) names the agent.
#[derive(serde::Deserialize)]
struct IdleEntry {
    pk: String,
    gsi2sk: String,
}

/// An entry of the timer index: what `due_timers` needs, all projected.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct TimerEntry {
    session_id: SessionId,
    task_id: opscore_core::ids::TaskId,
    #[serde(with = "opscore_core::time::rfc3339")]
    timer_at: Timestamp,
}

/// An index entry that names a task and the instant it is due at: what `due_in_shards` reads.
trait DueEntry: serde::de::DeserializeOwned {
    /// What the entry is, for a decoding error.
    const WHAT: &'static str;
    fn due(self) -> (Timestamp, TaskKey);
}

impl DueEntry for RunnableEntry {
    const WHAT: &'static str = "runnable entry";
    fn due(self) -> (Timestamp, TaskKey) {
        let key = TaskKey {
            session_id: self.session_id,
            task_id: self.task_id,
        };
        (self.due_at, key)
    }
}

impl DueEntry for TimerEntry {
    const WHAT: &'static str = "timer entry";
    fn due(self) -> (Timestamp, TaskKey) {
        let key = TaskKey {
            session_id: self.session_id,
            task_id: self.task_id,
        };
        (self.timer_at, key)
    }
}

/// How often the adapter resends one write that DynamoDB cancelled because another transaction
/// held the same item (`TransactionConflict`, `TransactionInProgressException`): the same write,
/// unchanged. Not to be confused with the core's `LOST_WRITE_RETRIES`, which re-reads and decides
/// again after a condition failed.
const TRANSACTION_CANCEL_RETRIES: u32 = 12;

/// The DynamoDB adapter of [`Store`]. Cheap to clone (the client and counters are shared).
#[derive(Clone)]
pub struct DynamoStore {
    client: Client,
    table: String,
    counters: Arc<Counters>,
    /// Shards of each capability's routing lists (`items::MAX_ROUTING_SHARDS`).
    routing_shards: u8,
}

impl std::fmt::Debug for DynamoStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DynamoStore")
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

/// A condition (or update) expression with its placeholders.
#[derive(Debug, Clone, Default)]
struct Expr {
    names: Vec<(&'static str, &'static str)>,
    values: Vec<(&'static str, AttributeValue)>,
}

impl Expr {
    fn name(mut self, placeholder: &'static str, attr: &'static str) -> Self {
        self.names.push((placeholder, attr));
        self
    }
    fn value(mut self, placeholder: &'static str, v: AttributeValue) -> Self {
        self.values.push((placeholder, v));
        self
    }
    fn names_map(&self) -> Option<HashMap<String, String>> {
        (!self.names.is_empty()).then(|| self.names.iter().map(|(p, a)| (p.to_string(), a.to_string())).collect())
    }
    fn values_map(&self) -> Option<HashMap<String, AttributeValue>> {
        (!self.values.is_empty()).then(|| self.values.iter().map(|(p, v)| (p.to_string(), v.clone())).collect())
    }
}

/// One write, before it becomes a single-item call or a member of a transaction.
#[derive(Debug, Clone)]
enum Prepared {
    Put {
        item: RawItem,
        condition: String,
        expr: Expr,
    },
    Update {
        key: RawItem,
        update: String,
        condition: String,
        expr: Expr,
    },
    Check {
        key: RawItem,
        condition: String,
        expr: Expr,
    },
    /// A delete inside a transaction whose condition another member carries (the idle-agents
    /// entries, moved under a check of the agent item).
    Delete { key: RawItem },
}

/// Why a single conditional write did not happen.
enum WriteFailed {
    /// The condition did not hold; the item as it was, when the store returned it.
    Condition(Option<RawItem>),
    /// A concurrent transaction held the item: retried by `write_one`.
    Busy(StoreError),
    Store(StoreError),
}

impl From<StoreError> for WriteFailed {
    fn from(e: StoreError) -> Self {
        WriteFailed::Store(e)
    }
}

enum TxOutcome {
    Done,
    /// The condition of member `index` failed (the first such member); its item as it was.
    Cancelled {
        index: usize,
        old: Option<RawItem>,
    },
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}
fn n(v: impl std::fmt::Display) -> AttributeValue {
    AttributeValue::N(v.to_string())
}
fn b(v: bool) -> AttributeValue {
    AttributeValue::Bool(v)
}

fn key(pk: String, sk: impl Into<String>) -> RawItem {
    HashMap::from([(items::PK.to_string(), s(pk)), (items::SK.to_string(), s(sk))])
}

fn encode<T: Serialize>(v: &T) -> Result<RawItem, StoreError> {
    serde_dynamo::to_item(v).map_err(|e| StoreError::corrupt(format!("cannot encode item: {e}")))
}

fn encode_value<T: Serialize>(v: &T) -> Result<AttributeValue, StoreError> {
    serde_dynamo::to_attribute_value(v).map_err(|e| StoreError::corrupt(format!("cannot encode value: {e}")))
}

fn json_string<T: Serialize>(v: &T) -> Result<AttributeValue, StoreError> {
    serde_json::to_string(v)
        .map(AttributeValue::S)
        .map_err(|e| StoreError::corrupt(format!("cannot encode value: {e}")))
}

fn decode_agent(raw: RawItem) -> Result<Agent, StoreError> {
    AgentItem::from_item(serde_dynamo::Item::from(raw), "agent")?.into_agent()
}

pub(crate) fn decode<T: DeserializeOwned>(raw: RawItem, what: &str) -> Result<T, StoreError> {
    items::decode(serde_dynamo::Item::from(raw), what)
}

fn unavailable<E>(op: &str, e: SdkError<E>) -> StoreError
where
    E: std::error::Error + Send + Sync + 'static,
{
    StoreError::unavailable_because(format!("DynamoDB {op}: {}", DisplayErrorContext(&e)), e)
}

fn is_transaction_conflict(code: Option<&str>) -> bool {
    matches!(
        code,
        Some("TransactionConflictException" | "TransactionInProgressException" | "TransactionConflict")
    )
}

/// Full-jitter backoff before retrying a write that a concurrent transaction cancelled.
async fn conflict_backoff(attempt: u32) {
    let ceiling_ms = (4u64 << attempt.min(6)).min(250);
    tokio::time::sleep(Duration::from_millis(fastrand::u64(1..=ceiling_ms))).await;
}

/// The agent takes `to` as its in-flight attempt if it exists, is not deregistered, is idle and
/// `holding` holds (what it must hold now, and anything more, with `expr`'s names and values):
/// the one update of a claim, a claim by capability and a hand-over.
fn take_attempt(agent_id: &AgentId, to: &opscore_core::agent::Inflight, holding: &str, expr: Expr) -> Prepared {
    let (update, expr) = match &to.routed_by {
        Some(c) => (
            "SET #inflight = :to, #inflightSince = :since, #routedBy = :routedBy",
            expr.value(":routedBy", s(c.clone())),
        ),
        None => ("SET #inflight = :to, #inflightSince = :since REMOVE #routedBy", expr),
    };
    Prepared::Update {
        key: agent_key(agent_id),
        update: update.into(),
        condition: format!("attribute_exists(pk) AND #deregistered = :false AND #state = :idle AND {holding}"),
        expr: expr
            .name("#inflight", "inflight")
            .name("#inflightSince", "inflightSince")
            .name("#routedBy", "inflightRoutedBy")
            .name("#deregistered", "deregistered")
            .name("#state", "state")
            .value(":to", s(to.dispatch.render()))
            .value(":since", s(time::render(to.since)))
            .value(":false", b(false))
            .value(":idle", s(StateName::known(KnownState::Idle).as_str())),
    }
}

/// The capability whose idle-agents entry the change `old → new` took out itself: a routed claim
/// of an agent that held nothing (`ClaimAgentFor`, which deletes the entry in its transaction).
fn claimed_by_routing<'a>(old: Option<&Agent>, new: &'a Agent) -> Option<&'a str> {
    let held_nothing = old.is_some_and(|o| o.inflight.is_none());
    let routed = new.inflight.as_ref()?.routed_by.as_deref()?;
    held_nothing.then_some(routed)
}

fn agent_key(id: &AgentId) -> RawItem {
    key(keys::agent_pk(id), keys::AGENT_SK)
}

impl DynamoStore {
    pub fn new(client: Client, table_name: impl Into<String>) -> Self {
        Self {
            client,
            table: table_name.into(),
            counters: Arc::default(),
            routing_shards: 1,
        }
    }

    /// The deployment's routing shard count (`OPSCORE_ROUTING_INDEX_SHARDS`, 1 by default; see
    /// `items::MAX_ROUTING_SHARDS` for the trade-off), kept within 1..=16 (the configuration
    /// refuses anything else). Every function of a deployment must use the same count.
    pub fn with_routing_shards(mut self, shards: u8) -> Self {
        self.routing_shards = shards.clamp(1, items::MAX_ROUTING_SHARDS);
        self
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn table_name(&self) -> &str {
        &self.table
    }

    /// Requests sent so far, per operation.
    pub fn request_counts(&self) -> RequestCounts {
        self.counters.snapshot()
    }

    /// Capacity units consumed so far, as the store reported them, per table and index.
    pub fn consumed_capacity(&self) -> CapacityUnits {
        self.counters.units()
    }

    // ----- single-item primitives -----

    async fn get_raw(&self, key: RawItem) -> Result<Option<RawItem>, StoreError> {
        self.counters.hit(Op::GetItem);
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key))
            .consistent_read(true)
            .return_consumed_capacity(ReturnConsumedCapacity::Indexes)
            .send()
            .await
            .map_err(|e| unavailable("GetItem", e))?;
        self.counters.consumed(Op::GetItem, out.consumed_capacity.as_slice());
        Ok(out.item.filter(|i| !i.is_empty()))
    }

    /// One conditional write as a single-item call, retried while a concurrent transaction holds
    /// the item. `ReturnValuesOnConditionCheckFailure=ALL_OLD` always: a failed condition costs the
    /// same either way, and the caller may need the item.
    async fn write_one(&self, p: Prepared) -> Result<(), WriteFailed> {
        let mut attempt = 0;
        loop {
            let res = match p.clone() {
                Prepared::Put { item, condition, expr } => {
                    self.counters.hit(Op::PutItem);
                    self.client
                        .put_item()
                        .table_name(&self.table)
                        .set_item(Some(item))
                        .condition_expression(condition)
                        .set_expression_attribute_names(expr.names_map())
                        .set_expression_attribute_values(expr.values_map())
                        .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
                        .return_consumed_capacity(ReturnConsumedCapacity::Indexes)
                        .send()
                        .await
                        .map(|out| self.counters.consumed(Op::PutItem, out.consumed_capacity.as_slice()))
                        .map_err(|e| match e.as_service_error() {
                            Some(PutItemError::ConditionalCheckFailedException(c)) => {
                                WriteFailed::Condition(c.item().cloned())
                            }
                            Some(se) if is_transaction_conflict(se.code()) => {
                                WriteFailed::Busy(unavailable("PutItem", e))
                            }
                            _ => WriteFailed::Store(unavailable("PutItem", e)),
                        })
                }
                Prepared::Update {
                    key,
                    update,
                    condition,
                    expr,
                } => {
                    self.counters.hit(Op::UpdateItem);
                    self.client
                        .update_item()
                        .table_name(&self.table)
                        .set_key(Some(key))
                        .update_expression(update)
                        .condition_expression(condition)
                        .set_expression_attribute_names(expr.names_map())
                        .set_expression_attribute_values(expr.values_map())
                        .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
                        .return_consumed_capacity(ReturnConsumedCapacity::Indexes)
                        .send()
                        .await
                        .map(|out| self.counters.consumed(Op::UpdateItem, out.consumed_capacity.as_slice()))
                        .map_err(|e| match e.as_service_error() {
                            Some(UpdateItemError::ConditionalCheckFailedException(c)) => {
                                WriteFailed::Condition(c.item().cloned())
                            }
                            Some(se) if is_transaction_conflict(se.code()) => {
                                WriteFailed::Busy(unavailable("UpdateItem", e))
                            }
                            _ => WriteFailed::Store(unavailable("UpdateItem", e)),
                        })
                }
                // There is no single-item condition check: a lone check is a transaction of one.
                Prepared::Check { .. } | Prepared::Delete { .. } => {
                    return match self.transact(vec![p]).await? {
                        TxOutcome::Done => Ok(()),
                        TxOutcome::Cancelled { old, .. } => Err(WriteFailed::Condition(old)),
                    };
                }
            };
            match res {
                Err(WriteFailed::Busy(_)) if attempt < TRANSACTION_CANCEL_RETRIES => {
                    conflict_backoff(attempt).await;
                    attempt += 1;
                }
                Err(WriteFailed::Busy(e)) => return Err(WriteFailed::Store(e)),
                other => return other,
            }
        }
    }

    fn transact_item(&self, p: Prepared) -> Result<TransactWriteItem, StoreError> {
        let build_err = |e: aws_sdk_dynamodb::error::BuildError| StoreError::corrupt(format!("bad request: {e}"));
        let all_old = ReturnValuesOnConditionCheckFailure::AllOld;
        Ok(match p {
            Prepared::Put { item, condition, expr } => TransactWriteItem::builder()
                .put(
                    Put::builder()
                        .table_name(&self.table)
                        .set_item(Some(item))
                        // Empty: a member whose condition another member of the transaction carries.
                        .set_condition_expression(Some(condition).filter(|c| !c.is_empty()))
                        .set_expression_attribute_names(expr.names_map())
                        .set_expression_attribute_values(expr.values_map())
                        .return_values_on_condition_check_failure(all_old)
                        .build()
                        .map_err(build_err)?,
                )
                .build(),
            Prepared::Update {
                key,
                update,
                condition,
                expr,
            } => TransactWriteItem::builder()
                .update(
                    Update::builder()
                        .table_name(&self.table)
                        .set_key(Some(key))
                        .update_expression(update)
                        .condition_expression(condition)
                        .set_expression_attribute_names(expr.names_map())
                        .set_expression_attribute_values(expr.values_map())
                        .return_values_on_condition_check_failure(all_old)
                        .build()
                        .map_err(build_err)?,
                )
                .build(),
            Prepared::Delete { key } => TransactWriteItem::builder()
                .delete(
                    aws_sdk_dynamodb::types::Delete::builder()
                        .table_name(&self.table)
                        .set_key(Some(key))
                        .build()
                        .map_err(build_err)?,
                )
                .build(),
            Prepared::Check { key, condition, expr } => TransactWriteItem::builder()
                .condition_check(
                    ConditionCheck::builder()
                        .table_name(&self.table)
                        .set_key(Some(key))
                        .condition_expression(condition)
                        .set_expression_attribute_names(expr.names_map())
                        .set_expression_attribute_values(expr.values_map())
                        .return_values_on_condition_check_failure(all_old)
                        .build()
                        .map_err(build_err)?,
                )
                .build(),
        })
    }

    /// One `TransactWriteItems`, retried while it is cancelled only by concurrent transactions.
    async fn transact(&self, ps: Vec<Prepared>) -> Result<TxOutcome, StoreError> {
        let items = ps
            .into_iter()
            .map(|p| self.transact_item(p))
            .collect::<Result<Vec<_>, _>>()?;
        let mut attempt = 0;
        loop {
            self.counters.hit(Op::TransactWriteItems);
            let err = match self
                .client
                .transact_write_items()
                .set_transact_items(Some(items.clone()))
                .return_consumed_capacity(ReturnConsumedCapacity::Indexes)
                .send()
                .await
            {
                Ok(out) => {
                    self.counters.consumed(
                        Op::TransactWriteItems,
                        out.consumed_capacity.as_deref().unwrap_or_default(),
                    );
                    return Ok(TxOutcome::Done);
                }
                Err(e) => e,
            };
            let retry = match err.as_service_error() {
                Some(TransactWriteItemsError::TransactionCanceledException(c)) => {
                    let reasons: &[CancellationReason] = c.cancellation_reasons();
                    if let Some(index) = reasons.iter().position(|r| r.code() == Some("ConditionalCheckFailed")) {
                        let old = reasons[index].item().cloned().filter(|i| !i.is_empty());
                        return Ok(TxOutcome::Cancelled { index, old });
                    }
                    reasons.iter().any(|r| is_transaction_conflict(r.code()))
                }
                Some(se) => is_transaction_conflict(se.code()),
                None => false,
            };
            if !retry || attempt >= TRANSACTION_CANCEL_RETRIES {
                return Err(unavailable("TransactWriteItems", err));
            }
            conflict_backoff(attempt).await;
            attempt += 1;
        }
    }

    // ----- queries -----

    /// One page of a query: asks for one item more than the page so that the last page has no
    /// cursor, and follows DynamoDB's own pagination (1 MB) until the page is full.
    #[allow(clippy::too_many_arguments)]
    async fn query_page(
        &self,
        index: Option<&str>,
        key_condition: &str,
        expr: Expr,
        forward: bool,
        shape: CursorShape,
        page: &PageRequest,
    ) -> Result<(Vec<RawItem>, Option<String>), StoreError> {
        let limit = page.limit.max(1) as usize;
        let mut start = match &page.cursor {
            Some(c) => Some(cursor::decode(c, &shape)?),
            None => None,
        };
        let mut out: Vec<RawItem> = Vec::new();
        loop {
            let want = (limit + 1 - out.len()).min(1000) as i32;
            self.counters.hit(Op::Query);
            let resp = self
                .client
                .query()
                .table_name(&self.table)
                .set_index_name(index.map(str::to_owned))
                .key_condition_expression(key_condition)
                .set_expression_attribute_names(expr.names_map())
                .set_expression_attribute_values(expr.values_map())
                .scan_index_forward(forward)
                .consistent_read(index.is_none())
                .limit(want)
                .set_exclusive_start_key(start.take())
                .return_consumed_capacity(ReturnConsumedCapacity::Indexes)
                .send()
                .await
                .map_err(|e| unavailable("Query", e))?;
            self.counters.consumed(Op::Query, resp.consumed_capacity.as_slice());
            out.extend(resp.items.unwrap_or_default());
            if out.len() > limit {
                out.truncate(limit);
                let next = cursor::encode(&out[limit - 1], &shape)?;
                return Ok((out, Some(next)));
            }
            match resp.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => return Ok((out, None)),
            }
        }
    }

    /// The entries `E` of an index's `shards` shards (partition key `pk(shard)`) whose sort key is
    /// below the due bound of `now` (`key_condition` names the attributes): every shard queried
    /// at once for at most `limit`, those due by `now` merged oldest first, the first `limit`.
    /// An agent's runnable tasks (one shard), the routed tasks and the timers are read this way.
    /// An entry may lag its task (the index is eventually consistent): the claim's condition on
    /// the task's status and revision decides.
    async fn due_in_shards<E: DueEntry>(
        &self,
        (index, key_condition): (&str, &str),
        shards: u8,
        pk: impl Fn(u8) -> String,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<(Timestamp, TaskKey)>, StoreError> {
        let bound = keys::due_bound(now);
        let queries = (0..shards).map(|shard| {
            let expr = Expr::default()
                .value(":pk", s(pk(shard)))
                .value(":bound", s(bound.clone()));
            self.query_all(Some(index), key_condition, expr, true, Some(limit as usize))
        });
        let mut due = Vec::new();
        for raw in futures::future::try_join_all(queries).await?.into_iter().flatten() {
            let (at, key) = decode::<E>(raw, E::WHAT)?.due();
            if at <= now {
                due.push((at, key.session_id, key.task_id));
            }
        }
        due.sort();
        Ok(due
            .into_iter()
            .take(limit as usize)
            .map(|(at, session_id, task_id)| (at, TaskKey { session_id, task_id }))
            .collect())
    }

    /// Every item of a query (for small partitions: one session, one workflow's versions).
    async fn query_all(
        &self,
        index: Option<&str>,
        key_condition: &str,
        expr: Expr,
        forward: bool,
        limit: Option<usize>,
    ) -> Result<Vec<RawItem>, StoreError> {
        let mut out = Vec::new();
        let mut start = None;
        loop {
            self.counters.hit(Op::Query);
            let resp = self
                .client
                .query()
                .table_name(&self.table)
                .set_index_name(index.map(str::to_owned))
                .key_condition_expression(key_condition)
                .set_expression_attribute_names(expr.names_map())
                .set_expression_attribute_values(expr.values_map())
                .scan_index_forward(forward)
                .consistent_read(index.is_none())
                .set_limit(limit.map(|l| (l.saturating_sub(out.len())).clamp(1, 1000) as i32))
                .set_exclusive_start_key(start.take())
                .return_consumed_capacity(ReturnConsumedCapacity::Indexes)
                .send()
                .await
                .map_err(|e| unavailable("Query", e))?;
            self.counters.consumed(Op::Query, resp.consumed_capacity.as_slice());
            out.extend(resp.items.unwrap_or_default());
            if limit.is_some_and(|l| out.len() >= l) {
                return Ok(out);
            }
            match resp.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => return Ok(out),
            }
        }
    }

    /// One page of a list spread over shards (one index partition per entry of `partitions`,
    /// sort keys unique across them): every shard not yet exhausted is queried in parallel for
    /// one entry more than the page after the cursor's position, the answers are merged by sort
    /// key and the first `limit` taken. The cursor names the last sort key taken and the shards
    /// that are exhausted (see [`ShardedPosition`]), so no entry is skipped or repeated across
    /// pages whatever shard it lives in. Returns the index entries (keys and what the index
    /// projects), in order.
    ///
    ///
    /// `forward`: ascending sort keys (and the cursor's position is "after"); otherwise
    /// descending (the position is "before"). `entries_move`: an entry may move to another of
    /// the partitions between two pages, keeping its sort key (a session changing status), so
    /// no partition counts as exhausted: every one is asked again, and a moved entry is listed
    /// exactly once (before the position it was listed already, after it it will be).
    #[allow(clippy::too_many_arguments)]
    async fn sharded_page(
        &self,
        index: &'static str,
        (pk_attr, sk_attr): (&'static str, &'static str),
        list: &str,
        partitions: &[String],
        forward: bool,
        entries_move: bool,
        page: &PageRequest,
    ) -> Result<(Vec<RawItem>, Option<String>), StoreError> {
        let limit = page.limit.max(1) as usize;
        let shards = partitions.len() as u8;
        let (after, done) = match &page.cursor {
            Some(c) => {
                let p = cursor::decode_sharded(c, list, shards)?;
                (Some(p.after), p.done)
            }
            None => (None, 0),
        };
        let want = limit + 1;
        let queries = partitions.iter().enumerate().map(|(n, pk)| {
            let mut expr = Expr::default().name("#pk", pk_attr).value(":pk", s(pk));
            let condition = match &after {
                Some(a) => {
                    expr = expr.name("#sk", sk_attr).value(":after", s(a));
                    if forward {
                        "#pk = :pk AND #sk > :after"
                    } else {
                        "#pk = :pk AND #sk < :after"
                    }
                }
                None => "#pk = :pk",
            };
            async move {
                if done & (1u64 << n) != 0 {
                    return Ok(Vec::new());
                }
                self.query_all(Some(index), condition, expr, forward, Some(want)).await
            }
        });
        let answers = futures::future::try_join_all(queries).await?;
        let mut merged: Vec<(String, usize, RawItem)> = Vec::new();
        for (n, raws) in answers.iter().enumerate() {
            for raw in raws {
                let sk = items::key_string(&serde_dynamo::Item::from(raw.clone()), sk_attr)
                    .ok_or_else(|| StoreError::corrupt(format!("{index} entry without {sk_attr}")))?;
                merged.push((sk, n, raw.clone()));
            }
        }
        if forward {
            merged.sort_by(|a, b| a.0.cmp(&b.0));
        } else {
            merged.sort_by(|a, b| b.0.cmp(&a.0));
        }
        let more = merged.len() > limit;
        merged.truncate(limit);
        let next = match merged.last() {
            Some((last, _, _)) if more => {
                // A shard is exhausted once it answered fewer than asked and all of it was taken.
                let mut now_done = done;
                for (n, raws) in answers.iter().enumerate() {
                    let taken = merged.iter().filter(|(_, m, _)| *m == n).count();
                    if !entries_move && raws.len() < want && taken == raws.len() {
                        now_done |= 1u64 << n;
                    }
                }
                Some(cursor::encode_sharded(&ShardedPosition {
                    list: list.to_string(),
                    after: last.clone(),
                    done: now_done,
                })?)
            }
            _ => None,
        };
        Ok((merged.into_iter().map(|(_, _, raw)| raw).collect(), next))
    }

    /// The table items behind index entries (`BatchGetItem`, strongly consistent, 100 keys a
    /// request, unprocessed keys sent again after a backoff), in the entries' order; entries
    /// whose item is gone are left out.
    async fn items_of(&self, entries: &[RawItem]) -> Result<Vec<RawItem>, StoreError> {
        let table_key = |raw: &RawItem| -> Result<(String, String), StoreError> {
            match (raw.get(items::PK), raw.get(items::SK)) {
                (Some(AttributeValue::S(pk)), Some(AttributeValue::S(sk))) => Ok((pk.clone(), sk.clone())),
                _ => Err(StoreError::corrupt("index entry without table keys")),
            }
        };
        let wanted = entries.iter().map(table_key).collect::<Result<Vec<_>, _>>()?;
        let mut found: HashMap<(String, String), RawItem> = HashMap::new();
        for chunk in wanted.chunks(100) {
            let keys: Vec<RawItem> = chunk.iter().map(|(pk, sk)| key(pk.clone(), sk.clone())).collect();
            let mut request = Some(
                KeysAndAttributes::builder()
                    .set_keys(Some(keys))
                    .consistent_read(true)
                    .build()
                    .map_err(|e| StoreError::corrupt(format!("bad request: {e}")))?,
            );
            let mut attempt = 0;
            while let Some(req) = request.take() {
                self.counters.hit(Op::BatchGetItem);
                let out = self
                    .client
                    .batch_get_item()
                    .request_items(&self.table, req)
                    .return_consumed_capacity(ReturnConsumedCapacity::Indexes)
                    .send()
                    .await
                    .map_err(|e| unavailable("BatchGetItem", e))?;
                self.counters
                    .consumed(Op::BatchGetItem, out.consumed_capacity.as_deref().unwrap_or_default());
                for raw in out
                    .responses
                    .unwrap_or_default()
                    .remove(&self.table)
                    .unwrap_or_default()
                {
                    found.insert(table_key(&raw)?, raw);
                }
                request = out
                    .unprocessed_keys
                    .unwrap_or_default()
                    .remove(&self.table)
                    .filter(|k| !k.keys().is_empty());
                if request.is_some() {
                    if attempt >= TRANSACTION_CANCEL_RETRIES {
                        return Err(StoreError::unavailable("BatchGetItem kept leaving keys unprocessed"));
                    }
                    conflict_backoff(attempt).await;
                    attempt += 1;
                }
            }
        }
        Ok(wanted.into_iter().filter_map(|k| found.remove(&k)).collect())
    }

    // ----- write intents -----

    fn prepare(&self, w: &Write) -> Result<Prepared, StoreError> {
        let not_exists = || "attribute_not_exists(pk)".to_string();
        let transition = |from: &'static str, next_rev: u64| {
            Expr::default()
                .name("#status", "status")
                .name("#rev", "rev")
                .value(":from", s(from))
                .value(":prev", n(i128::from(next_rev) - 1))
        };
        Ok(match w {
            Write::CreateSession(x) => Prepared::Put {
                item: encode(&SessionItem::new(x))?,
                condition: not_exists(),
                expr: Expr::default(),
            },
            Write::TransitionSession { from, next } => Prepared::Put {
                item: encode(&SessionItem::new(next))?,
                condition: "#status = :from AND #rev = :prev".into(),
                expr: transition(from.as_str(), next.rev),
            },
            Write::CheckSessionOpen(id) => Prepared::Check {
                key: key(keys::session_pk(id), keys::SESSION_SK),
                condition: "#status IN (:started, :running)".into(),
                expr: Expr::default()
                    .name("#status", "status")
                    .value(":started", s(SessionStatus::Started.as_str()))
                    .value(":running", s(SessionStatus::Running.as_str())),
            },
            Write::CreateTask(t) => Prepared::Put {
                item: encode(&TaskItem::new(t, self.routing_shards))?,
                condition: not_exists(),
                expr: Expr::default(),
            },
            Write::TransitionTask { from, next } => Prepared::Put {
                item: encode(&TaskItem::new(next, self.routing_shards))?,
                condition: "#status = :from AND #rev = :prev".into(),
                expr: transition(from.as_str(), next.rev),
            },
            Write::CreateIdempotencyKey {
                agent_id,
                key: k,
                session_id,
                fingerprint,
                ttl,
            } => {
                let now = chrono::Utc::now();
                Prepared::Put {
                    item: encode(&IdempotencyItem {
                        pk: keys::idem_pk(agent_id, k),
                        sk: keys::IDEM_SK.into(),
                        agent_id: agent_id.clone(),
                        key: k.clone(),
                        session_id: *session_id,
                        fingerprint: Some(fingerprint.clone()),
                        expires_at: items::expiry(now, *ttl),
                    })?,
                    // An expired key that TTL has not deleted yet no longer counts.
                    condition: "attribute_not_exists(pk) OR #expiresAt < :now".into(),
                    expr: Expr::default()
                        .name("#expiresAt", items::TTL_ATTRIBUTE)
                        .value(":now", n(now.timestamp())),
                }
            }
            Write::CreateDeliveryRecord { id, expires_at } => Prepared::Put {
                item: encode(&DeliveryItem {
                    pk: keys::delivery_pk(id),
                    sk: keys::DELIVERY_SK.into(),
                    delivery_id: id.clone(),
                    expires_at: expires_at.timestamp(),
                })?,
                condition: "attribute_not_exists(pk) OR #expiresAt < :now".into(),
                expr: Expr::default()
                    .name("#expiresAt", items::TTL_ATTRIBUTE)
                    .value(":now", n(chrono::Utc::now().timestamp())),
            },
            // An expired record counts as absent (the condition above); TTL deletes the item.
            Write::ExpireDeliveryRecord { id } => Prepared::Update {
                key: key(keys::delivery_pk(id), keys::DELIVERY_SK),
                update: "SET #expiresAt = :past".into(),
                condition: "attribute_exists(pk)".into(),
                expr: Expr::default()
                    .name("#expiresAt", items::TTL_ATTRIBUTE)
                    .value(":past", n(chrono::Utc::now().timestamp() - 1)),
            },
            Write::ClaimAgent { agent_id, inflight } => {
                take_attempt(agent_id, inflight, "attribute_not_exists(#inflight)", Expr::default())
            }
            Write::ClaimAgentFor {
                agent_id,
                inflight,
                capability,
            } => take_attempt(
                agent_id,
                inflight,
                "attribute_not_exists(#inflight) AND contains(#capabilities, :capability)",
                Expr::default()
                    .name("#capabilities", "capabilities")
                    .value(":capability", s(capability.clone())),
            ),
            Write::ReleaseAgent { agent_id, dispatch } => Prepared::Update {
                key: agent_key(agent_id),
                update: "REMOVE #inflight, #inflightSince, #routedBy".into(),
                condition: "#inflight = :dispatch".into(),
                expr: Expr::default()
                    .name("#inflight", "inflight")
                    .name("#inflightSince", "inflightSince")
                    .name("#routedBy", "inflightRoutedBy")
                    .value(":dispatch", s(dispatch.render())),
            },
            // ClaimAgent's condition, with the attempt that ends in place of "holds nothing";
            // handed a routed task, ClaimAgentFor's (the agent announces the capability).
            Write::HandOverAgent { agent_id, from, to } => {
                let expr = Expr::default().value(":from", s(from.render()));
                match &to.routed_by {
                    None => take_attempt(agent_id, to, "#inflight = :from", expr),
                    Some(capability) => take_attempt(
                        agent_id,
                        to,
                        "#inflight = :from AND contains(#capabilities, :capability)",
                        expr.name("#capabilities", "capabilities")
                            .value(":capability", s(capability.clone())),
                    ),
                }
            }
        })
    }

    /// The session id held by an idempotency key, read only when a conflict did not return it.
    async fn existing_idempotency(&self, w: &Write, old: Option<RawItem>) -> Result<Option<Existing>, StoreError> {
        let Write::CreateIdempotencyKey { agent_id, key: k, .. } = w else {
            return Ok(None);
        };
        let raw = match old {
            Some(raw) => Some(raw),
            None => self.get_raw(key(keys::idem_pk(agent_id, k), keys::IDEM_SK)).await?,
        };
        match raw {
            Some(raw) => {
                let item: IdempotencyItem = decode(raw, "idempotency key")?;
                Ok(Some(Existing::IdempotencyKey {
                    session_id: item.session_id,
                    fingerprint: item.fingerprint,
                }))
            }
            None => Ok(None),
        }
    }

    // ----- agents -----

    /// One transaction: a check that the agent item is still as `seen` (the attributes that
    /// decide availability: state version, in-flight marker, deregistration, details), the
    /// entries of `moved.leave` deleted and those of `moved.join` put, stamped now. A move that
    /// only leaves has no check (below).
    async fn move_idle_entries(&self, seen: &Agent, moved: &IdleIndexMove) -> Result<TxOutcome, StoreError> {
        if moved.join.is_empty() {
            // Only leaving: no check. The runner handles an agent's changes in order, and only
            // its handling of a later change puts entries back, so a delete here can never take
            // out an entry the agent should have; checking the agent would only make the delete
            // fail whenever the agent had reported again since `seen` (every task: it reports
            // `active` right after its claim), costing a read, a query and a second transaction.
            let deletes = moved
                .leave
                .iter()
                .map(|c| Prepared::Delete {
                    key: key(keys::agent_pk(seen.id()), keys::idle_sk(c)),
                })
                .collect();
            return self.transact(deletes).await;
        }
        let mut condition = "#stateVersion = :v AND #deregistered = :dereg AND #digest = :digest".to_owned();
        let mut expr = Expr::default()
            .name("#stateVersion", "stateVersion")
            .name("#deregistered", "deregistered")
            .name("#digest", "detailsDigest")
            .name("#inflight", "inflight")
            .value(":v", n(seen.current.version))
            .value(":dereg", b(seen.is_deregistered()))
            .value(":digest", s(seen.details.digest()));
        match &seen.inflight {
            Some(i) => {
                condition.push_str(" AND #inflight = :inflight");
                expr = expr.value(":inflight", s(i.dispatch.render()));
            }
            None => condition.push_str(" AND attribute_not_exists(#inflight)"),
        }
        let mut ps = vec![Prepared::Check {
            key: agent_key(seen.id()),
            condition,
            expr,
        }];
        for c in &moved.leave {
            ps.push(Prepared::Delete {
                key: key(keys::agent_pk(seen.id()), keys::idle_sk(c)),
            });
        }
        let now = chrono::Utc::now();
        for c in &moved.join {
            ps.push(Prepared::Put {
                item: encode(&IdleAgentItem::new(seen.id(), c, now, self.routing_shards))?,
                // The check above is the condition; a leftover entry is simply replaced.
                condition: String::new(),
                expr: Expr::default(),
            });
        }
        self.transact(ps).await
    }

    /// The capabilities an agent has idle-agents entries for (its partition, consistent).
    async fn idle_entries_of(&self, agent: &AgentId) -> Result<Vec<String>, StoreError> {
        let expr = Expr::default()
            .value(":pk", s(keys::agent_pk(agent)))
            .value(":prefix", s(keys::IDLE_PREFIX));
        let raws = self
            .query_all(None, "pk = :pk AND begins_with(sk, :prefix)", expr, true, None)
            .await?;
        raws.into_iter()
            .map(|raw| decode::<IdleAgentItem>(raw, "idle-agents entry").map(|e| e.capability))
            .collect()
    }

    async fn get_agent_item(&self, id: &AgentId) -> Result<Option<Agent>, StoreError> {
        match self.get_raw(agent_key(id)).await? {
            Some(raw) => Ok(Some(decode_agent(raw)?)),
            None => Ok(None),
        }
    }

    /// Replaces the registration details of an existing agent (and reactivates it): last writer
    /// wins. The only condition is that the agent exists, so concurrent re-registrations with
    /// different details all land (AgentKit never retries a webhook) instead of failing each
    /// other's "still as I read it" condition. State, history and the in-flight marker are
    /// other attributes and are not touched. `Ok(None)` when a concurrent transaction held the
    /// item (the caller backs off and retries).
    async fn update_registration(&self, details: &AgentDetails, now: Timestamp) -> Result<Option<Agent>, StoreError> {
        let mut set = vec![
            "#agentName = :agentName",
            "#version = :version",
            "#capabilities = :capabilities",
            "#contactEndpoint = :contactEndpoint",
            "#metadata = :metadata",
            "#detailsDigest = :digest",
            "#deregistered = :false",
            "#updatedAt = :now",
        ];
        let mut remove = vec!["#deregisteredAt"];
        let mut expr = Expr::default()
            .name("#agentName", "agentName")
            .name("#version", "version")
            .name("#capabilities", "capabilities")
            .name("#contactEndpoint", "contactEndpoint")
            .name("#metadata", "metadata")
            .name("#detailsDigest", "detailsDigest")
            .name("#deregistered", "deregistered")
            .name("#deregisteredAt", "deregisteredAt")
            .name("#updatedAt", "updatedAt")
            .name("#registrationTime", "registrationTime")
            .value(":agentName", s(&details.agent_name))
            .value(":version", s(&details.version))
            .value(":capabilities", encode_value(&details.capabilities)?)
            .value(":contactEndpoint", s(&details.contact_endpoint))
            .value(":metadata", json_string(&details.metadata)?)
            .value(":digest", s(details.digest()))
            .value(":false", b(false))
            .value(":now", s(time::render(now)));
        match details.registration_time {
            Some(t) => {
                set.push("#registrationTime = :registrationTime");
                expr = expr.value(":registrationTime", s(time::render(t)));
            }
            None => remove.push("#registrationTime"),
        }
        let update = format!("SET {} REMOVE {}", set.join(", "), remove.join(", "));
        self.counters.hit(Op::UpdateItem);
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(agent_key(&details.agent_id)))
            .update_expression(update)
            .condition_expression("attribute_exists(pk)")
            .set_expression_attribute_names(expr.names_map())
            .set_expression_attribute_values(expr.values_map())
            .return_values(ReturnValue::AllNew)
            .return_consumed_capacity(ReturnConsumedCapacity::Indexes)
            .send()
            .await;
        match res {
            Ok(out) => {
                self.counters.consumed(Op::UpdateItem, out.consumed_capacity.as_slice());
                let raw = out
                    .attributes
                    .ok_or_else(|| StoreError::corrupt("UpdateItem returned no attributes"))?;
                Ok(Some(decode_agent(raw)?))
            }
            Err(e) => match e.as_service_error() {
                Some(UpdateItemError::ConditionalCheckFailedException(_)) => Ok(None),
                Some(se) if is_transaction_conflict(se.code()) => Ok(None),
                _ => Err(unavailable("UpdateItem", e)),
            },
        }
    }
}

#[async_trait]
impl Store for DynamoStore {
    async fn register_agent(&self, details: AgentDetails, now: Timestamp) -> Result<RegisterOutcome, StoreError> {
        let mut attempt = 0;
        loop {
            let agent = Agent::new(details.clone(), now);
            let put = Prepared::Put {
                item: AgentItem::from_agent(&agent).to_item()?.into(),
                condition: "attribute_not_exists(pk)".into(),
                expr: Expr::default(),
            };
            let old_raw = match self.write_one(put).await {
                Ok(()) => return Ok(RegisterOutcome::Created(agent)),
                Err(WriteFailed::Store(e) | WriteFailed::Busy(e)) => return Err(e),
                Err(WriteFailed::Condition(Some(old))) => Some(old),
                Err(WriteFailed::Condition(None)) => self.get_raw(agent_key(&details.agent_id)).await?,
            };
            if let Some(old_raw) = old_raw {
                let old_agent = decode_agent(old_raw)?;
                // The core's rule decides; `update_registration` is its `Update` as an update
                // expression (details replaced, deregistration lifted; state and history kept).
                if Agent::registration(Some(&old_agent), details.clone(), now) == Registration::Unchanged {
                    return Ok(RegisterOutcome::Unchanged(old_agent));
                }
                if let Some(updated) = self.update_registration(&details, now).await? {
                    return Ok(RegisterOutcome::Updated(updated));
                }
            }
            // Only a concurrent transaction on the item (or an item that vanished) gets here.
            if attempt >= TRANSACTION_CANCEL_RETRIES {
                return Err(StoreError::unavailable(format!(
                    "agent {} stayed locked by concurrent transactions",
                    details.agent_id
                )));
            }
            conflict_backoff(attempt).await;
            attempt += 1;
        }
    }

    async fn deregister_agent(&self, id: &AgentId, now: Timestamp) -> Result<Agent, AgentWriteError> {
        let mut attempt = 0;
        loop {
            self.counters.hit(Op::UpdateItem);
            let res = self
                .client
                .update_item()
                .table_name(&self.table)
                .set_key(Some(agent_key(id)))
                .update_expression("SET #deregistered = :true, #deregisteredAt = :now, #updatedAt = :now")
                .condition_expression("attribute_exists(pk) AND #deregistered = :false")
                .expression_attribute_names("#deregistered", "deregistered")
                .expression_attribute_names("#deregisteredAt", "deregisteredAt")
                .expression_attribute_names("#updatedAt", "updatedAt")
                .expression_attribute_values(":true", b(true))
                .expression_attribute_values(":false", b(false))
                .expression_attribute_values(":now", s(time::render(now)))
                .return_values(ReturnValue::AllNew)
                .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
                .return_consumed_capacity(ReturnConsumedCapacity::Indexes)
                .send()
                .await;
            let e = match res {
                Ok(out) => {
                    self.counters.consumed(Op::UpdateItem, out.consumed_capacity.as_slice());
                    let raw = out
                        .attributes
                        .ok_or_else(|| StoreError::corrupt("UpdateItem returned no attributes"))?;
                    return Ok(decode_agent(raw)?);
                }
                Err(e) => e,
            };
            let old = match e.as_service_error() {
                Some(UpdateItemError::ConditionalCheckFailedException(c)) => {
                    c.item().cloned().filter(|i| !i.is_empty())
                }
                Some(se) if is_transaction_conflict(se.code()) && attempt < TRANSACTION_CANCEL_RETRIES => {
                    conflict_backoff(attempt).await;
                    attempt += 1;
                    continue;
                }
                _ => return Err(unavailable("UpdateItem", e).into()),
            };
            let old = match old {
                Some(raw) => Some(decode_agent(raw)?),
                None => self.get_agent_item(id).await?,
            };
            match old {
                None => return Err(AgentWriteError::NotFound),
                // Already deregistered: idempotent, returned as it is.
                Some(a) if a.is_deregistered() => return Ok(a),
                // Re-registered between the write and the read: try again.
                Some(_) if attempt < TRANSACTION_CANCEL_RETRIES => attempt += 1,
                Some(_) => return Err(StoreError::unavailable("agent kept changing concurrently").into()),
            }
        }
    }

    async fn report_state(
        &self,
        report: &StateReport,
        received_at: Timestamp,
        history_ttl: Duration,
    ) -> Result<ReportOutcome, AgentWriteError> {
        let order = time::order_key(report.timestamp);
        let entry = |applied| HistoryEntry::of(report, received_at, applied);
        let mut set = vec![
            "#state = :state",
            "#stateTimestamp = :ts",
            "#stateOrder = :order",
            "#updatedAt = :received",
            "#gsi2pk = :gsi2pk",
        ];
        let mut expr = Expr::default()
            .name("#state", "state")
            .name("#stateTimestamp", "stateTimestamp")
            .name("#stateOrder", "stateOrder")
            .name("#stateVersion", "stateVersion")
            .name("#stateDetails", "stateDetails")
            .name("#updatedAt", "updatedAt")
            .name("#gsi2pk", "gsi2pk")
            .name("#deregistered", "deregistered")
            .value(":state", s(report.state.as_str()))
            .value(":ts", s(time::render(report.timestamp)))
            .value(":order", n(order))
            .value(":received", s(time::render(received_at)))
            .value(":gsi2pk", s(keys::state_gsi2pk(&report.agent_id, &report.state)))
            .value(":one", n(1))
            .value(":false", b(false))
            .value(":saturated", n(items::LEGACY_SATURATED_ORDER));
        let update = match &report.details {
            Some(d) => {
                set.push("#stateDetails = :details");
                expr = expr.value(":details", json_string(d)?);
                format!("SET {} ADD #stateVersion :one", set.join(", "))
            }
            None => format!("SET {} REMOVE #stateDetails ADD #stateVersion :one", set.join(", ")),
        };
        let apply = Prepared::Update {
            key: agent_key(&report.agent_id),
            update,
            // `:saturated`: what older versions stored for any report outside 1677-2262; it
            // counts as no ordering, as `AgentItem::from_item` reads it.
            condition: "attribute_exists(pk) AND #deregistered = :false \
                        AND (attribute_not_exists(#stateOrder) OR #stateOrder < :order \
                             OR #stateOrder = :saturated)"
                .into(),
            expr,
        };
        let history = Prepared::Put {
            item: encode(&HistoryItem::new(&entry(true), history_ttl))?,
            condition: "attribute_not_exists(pk)".into(),
            expr: Expr::default(),
        };
        match self.transact(vec![apply, history]).await? {
            TxOutcome::Done => Ok(ReportOutcome::Applied),
            TxOutcome::Cancelled { index: 0, old } => {
                let old = match old {
                    Some(raw) => Some(decode_agent(raw)?),
                    None => self.get_agent_item(&report.agent_id).await?,
                };
                let Some(old) = old else {
                    return Err(AgentWriteError::NotFound);
                };
                if old.is_deregistered() {
                    return Err(AgentWriteError::Deregistered);
                }
                // Stale: kept in history only.
                let history = Prepared::Put {
                    item: encode(&HistoryItem::new(&entry(false), history_ttl))?,
                    condition: "attribute_not_exists(pk)".into(),
                    expr: Expr::default(),
                };
                match self.write_one(history).await {
                    Ok(()) => Ok(ReportOutcome::Stale { current: old.current }),
                    Err(WriteFailed::Store(e) | WriteFailed::Busy(e)) => Err(e.into()),
                    Err(WriteFailed::Condition(_)) => {
                        Err(StoreError::unavailable("history key collision; retry").into())
                    }
                }
            }
            TxOutcome::Cancelled { .. } => Err(StoreError::unavailable("history key collision; retry").into()),
        }
    }

    async fn get_agent(&self, id: &AgentId) -> Result<Option<Agent>, StoreError> {
        self.get_agent_item(id).await
    }

    async fn list_agents(&self, state: Option<&StateName>, page: PageRequest) -> Result<Page<Agent>, StoreError> {
        let shards = 0..items::AGENT_SHARDS;
        let (index, key_attrs, list, partitions): (_, _, String, Vec<String>) = match state {
            None => (
                items::GSI1,
                ("gsi1pk", "gsi1sk"),
                keys::AGENTS.into(),
                shards.map(keys::agents_pk).collect(),
            ),
            Some(st) => (
                items::GSI2,
                ("gsi2pk", "gsi2sk"),
                format!("{}#{st}", keys::STATE),
                shards.map(|n| keys::state_pk(n, st)).collect(),
            ),
        };
        let (entries, next_cursor) = self
            .sharded_page(index, key_attrs, &list, &partitions, true, false, &page)
            .await?;
        let mut items = Vec::with_capacity(entries.len());
        for raw in self.items_of(&entries).await? {
            let agent = decode_agent(raw)?;
            // The index is eventually consistent; the item just read is the truth.
            if state.is_none_or(|st| agent.current.state == *st) {
                items.push(agent);
            }
        }
        Ok(Page { items, next_cursor })
    }

    async fn state_history(&self, id: &AgentId, page: PageRequest) -> Result<Page<HistoryEntry>, StoreError> {
        let pk = keys::agent_pk(id);
        let shape = CursorShape {
            keys: &["pk", "sk"],
            partition_attr: "pk",
            partition_value: pk.clone(),
            sort_prefix: Some(("sk", keys::HISTORY_PREFIX)),
        };
        let expr = Expr::default()
            .value(":pk", s(pk))
            .value(":prefix", s(keys::HISTORY_PREFIX));
        let (raws, next_cursor) = self
            .query_page(None, "pk = :pk AND begins_with(sk, :prefix)", expr, false, shape, &page)
            .await?;
        let items = raws
            .into_iter()
            .map(|r| decode::<HistoryItem>(r, "history entry").map(HistoryItem::into_entry))
            .collect::<Result<_, _>>()?;
        Ok(Page { items, next_cursor })
    }

    async fn put_workflow(&self, def: &WorkflowDefinition, now: Timestamp) -> Result<PutWorkflowOutcome, StoreError> {
        let item = WorkflowItem::new(def, now);
        let put = Prepared::Put {
            item: encode(&item)?,
            condition: "attribute_not_exists(pk)".into(),
            expr: Expr::default(),
        };
        let old = match self.write_one(put).await {
            Ok(()) => return Ok(PutWorkflowOutcome::Created(item.into_stored())),
            Err(WriteFailed::Store(e) | WriteFailed::Busy(e)) => return Err(e),
            Err(WriteFailed::Condition(Some(old))) => old,
            Err(WriteFailed::Condition(None)) => self
                .get_raw(key(keys::workflow_pk(&def.id), keys::workflow_sk(&def.version)))
                .await?
                .ok_or_else(|| StoreError::unavailable("workflow write conflicted with a delete; retry"))?,
        };
        let existing = decode::<WorkflowItem>(old, "workflow")?.into_stored();
        Ok(if existing.definition.same_content(def) {
            PutWorkflowOutcome::Identical(existing)
        } else {
            PutWorkflowOutcome::Conflict(existing)
        })
    }

    async fn get_workflow(
        &self,
        id: &WorkflowId,
        version: Option<&WorkflowVersion>,
    ) -> Result<Option<StoredWorkflow>, StoreError> {
        if let Some(v) = version {
            return match self.get_raw(key(keys::workflow_pk(id), keys::workflow_sk(v))).await? {
                Some(raw) => Ok(Some(decode::<WorkflowItem>(raw, "workflow")?.into_stored())),
                None => Ok(None),
            };
        }
        let expr = Expr::default().value(":pk", s(keys::workflow_pk(id)));
        let raws = self.query_all(None, "pk = :pk", expr, true, None).await?;
        let all = raws
            .into_iter()
            .map(|r| decode::<WorkflowItem>(r, "workflow").map(WorkflowItem::into_stored))
            .collect::<Result<Vec<_>, _>>()?;
        // Versions come back in key order; like the in-memory store, the last of equal maxima wins.
        Ok(all.into_iter().max_by_key(|w| w.created_at))
    }

    async fn list_workflows(&self, page: PageRequest) -> Result<Page<StoredWorkflow>, StoreError> {
        let partitions: Vec<String> = (0..items::WORKFLOW_SHARDS).map(keys::workflows_pk).collect();
        let (entries, next_cursor) = self
            .sharded_page(
                items::GSI1,
                ("gsi1pk", "gsi1sk"),
                keys::WORKFLOWS,
                &partitions,
                true,
                false,
                &page,
            )
            .await?;
        let items = self
            .items_of(&entries)
            .await?
            .into_iter()
            .map(|r| decode::<WorkflowItem>(r, "workflow").map(WorkflowItem::into_stored))
            .collect::<Result<_, _>>()?;
        Ok(Page { items, next_cursor })
    }

    async fn commit(&self, writes: Vec<Write>) -> Result<(), CommitError> {
        if writes.is_empty() {
            return Ok(());
        }
        let mut prepared = writes.iter().map(|w| self.prepare(w)).collect::<Result<Vec<_>, _>>()?;
        // A routed claim takes the agent's idle-agents entry for its capability out in the same
        // transaction (the agent's change then needs no `sync_idle_agent` request of its own).
        // Last, unconditional: a cancellation's index still names one of `writes`.
        for w in &writes {
            if let Write::ClaimAgentFor {
                agent_id, capability, ..
            } = w
            {
                prepared.push(Prepared::Delete {
                    key: key(keys::agent_pk(agent_id), keys::idle_sk(capability)),
                });
            }
        }
        let (index, old) = if prepared.len() == 1 {
            match self.write_one(prepared.remove(0)).await {
                Ok(()) => return Ok(()),
                Err(WriteFailed::Store(e) | WriteFailed::Busy(e)) => return Err(e.into()),
                Err(WriteFailed::Condition(old)) => (0, old),
            }
        } else {
            match self.transact(prepared).await? {
                TxOutcome::Done => return Ok(()),
                TxOutcome::Cancelled { index, old } => (index, old),
            }
        };
        let existing = self.existing_idempotency(&writes[index], old).await?;
        let write = writes[index].kind();
        Err(CommitError::Conflict { index, write, existing })
    }

    async fn get_session(&self, id: &SessionId) -> Result<Option<SessionView>, StoreError> {
        let expr = Expr::default().value(":pk", s(keys::session_pk(id)));
        let raws = self.query_all(None, "pk = :pk", expr, true, None).await?;
        let mut session = None;
        let mut tasks = Vec::new();
        for raw in raws {
            let sk = match raw.get(items::SK) {
                Some(AttributeValue::S(sk)) => sk.clone(),
                _ => return Err(StoreError::corrupt(format!("item of session {id} without sk"))),
            };
            if sk == keys::SESSION_SK {
                session = Some(decode::<SessionItem>(raw, "session")?.into_session());
            } else if sk.starts_with(keys::TASK_PREFIX) {
                tasks.push(decode::<TaskItem>(raw, "task")?.into_task());
            }
        }
        Ok(session.map(|session| SessionView { session, tasks }))
    }

    async fn list_sessions(&self, agent: &AgentId, page: PageRequest) -> Result<Page<Session>, StoreError> {
        let pk = keys::sessions_of_agent(agent);
        let shape = CursorShape {
            keys: &["pk", "sk", "gsi1pk", "gsi1sk"],
            partition_attr: "gsi1pk",
            partition_value: pk.clone(),
            sort_prefix: None,
        };
        let expr = Expr::default().value(":pk", s(pk));
        let (entries, next_cursor) = self
            .query_page(Some(items::GSI1), "gsi1pk = :pk", expr, false, shape, &page)
            .await?;
        let items = self
            .items_of(&entries)
            .await?
            .into_iter()
            .map(|r| decode::<SessionItem>(r, "session").map(SessionItem::into_session))
            .collect::<Result<_, _>>()?;
        Ok(Page { items, next_cursor })
    }

    async fn list_sessions_across_agents(
        &self,
        status: Option<SessionStatus>,
        page: PageRequest,
    ) -> Result<Page<Session>, StoreError> {
        let statuses: &[SessionStatus] = match &status {
            Some(st) => std::slice::from_ref(st),
            None => &SessionStatus::ALL,
        };
        let partitions: Vec<String> = statuses
            .iter()
            .flat_map(|st| (0..items::SESSION_SHARDS).map(move |n| keys::sessions_pk(n, *st)))
            .collect();
        let list = match status {
            None => keys::SESSIONS.to_owned(),
            Some(st) => format!("{}#{}", keys::SESSIONS, st.as_str()),
        };
        // Sort keys `{start nanos}#{session id}` are unique across shards and statuses; a session
        // that changes status between two pages keeps its sort key, so it is neither repeated
        // nor skipped (no partition counts as exhausted: `entries_move`).
        let (entries, next_cursor) = self
            .sharded_page(
                items::GSI2,
                ("gsi2pk", "gsi2sk"),
                &list,
                &partitions,
                false,
                true,
                &page,
            )
            .await?;
        let mut items = Vec::with_capacity(entries.len());
        for raw in self.items_of(&entries).await? {
            let session = decode::<SessionItem>(raw, "session")?.into_session();
            // The index is eventually consistent; the item just read is the truth.
            if status.is_none_or(|st| session.status == st) {
                items.push(session);
            }
        }
        Ok(Page { items, next_cursor })
    }

    async fn get_task(&self, k: &TaskKey) -> Result<Option<TaskInstance>, StoreError> {
        match self
            .get_raw(key(keys::session_pk(&k.session_id), keys::task_sk(&k.task_id)))
            .await?
        {
            Some(raw) => Ok(Some(decode::<TaskItem>(raw, "task")?.into_task())),
            None => Ok(None),
        }
    }

    async fn runnable_tasks(&self, agent: &AgentId, now: Timestamp, limit: u32) -> Result<Vec<TaskKey>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let due = self
            .due_in_shards::<RunnableEntry>(
                (items::GSI2, "gsi2pk = :pk AND gsi2sk < :bound"),
                1,
                |_| keys::runnable_pk(agent),
                now,
                limit,
            )
            .await?;
        Ok(due.into_iter().map(|(_, key)| key).collect())
    }

    async fn idle_agents(&self, capability: &str, limit: u32) -> Result<Vec<AgentId>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let shards = (0..self.routing_shards).map(|shard| {
            let expr = Expr::default().value(":pk", s(keys::idle_pk(shard, capability)));
            async move {
                self.query_all(Some(items::GSI2), "gsi2pk = :pk", expr, true, Some(limit as usize))
                    .await
            }
        });
        let mut idle = Vec::new();
        for raws in futures::future::try_join_all(shards).await? {
            for raw in raws {
                let e = decode::<IdleEntry>(raw, "idle-agents entry")?;
                let agent =
                    e.pk.strip_prefix("AGENT#")
                        .and_then(|id| AgentId::parse(id).ok())
                        .ok_or_else(|| StoreError::corrupt(format!("idle-agents entry under {:?}", e.pk)))?;
                idle.push((e.gsi2sk, agent));
            }
        }
        // `{sinceNanos}#{agentId}`: the one available longest first, across shards.
        idle.sort();
        Ok(idle.into_iter().take(limit as usize).map(|(_, a)| a).collect())
    }

    async fn routed_tasks(&self, capability: &str, now: Timestamp, limit: u32) -> Result<Vec<RoutedTask>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let due = self
            .due_in_shards::<RunnableEntry>(
                (items::GSI2, "gsi2pk = :pk AND gsi2sk < :bound"),
                self.routing_shards,
                |shard| keys::routed_pk(shard, capability),
                now,
                limit,
            )
            .await?;
        Ok(due
            .into_iter()
            .map(|(due_at, key)| RoutedTask { key, due_at })
            .collect())
    }

    async fn sync_idle_agent(&self, old: Option<&Agent>, new: &Agent) -> Result<(), StoreError> {
        let mut moved = IdleIndexMove::of(old, Some(new));
        // A routed claim took its capability's entry out itself (`commit`).
        if let Some(c) = claimed_by_routing(old, new) {
            moved.leave.retain(|l| l != c);
        }
        if moved.is_empty() {
            return Ok(());
        }
        let mut seen = new.clone();
        for _ in 0..TRANSACTION_CANCEL_RETRIES {
            match self.move_idle_entries(&seen, &moved).await? {
                TxOutcome::Done => return Ok(()),
                TxOutcome::Cancelled { .. } => {
                    // The agent moved on since `seen`: bring the entries in line with the agent
                    // as it is now, from the entries as they are now.
                    let Some(current) = self.get_agent_item(seen.id()).await? else {
                        return Ok(());
                    };
                    let existing = self.idle_entries_of(current.id()).await?;
                    let wanted = IdleIndexMove::of(None, Some(&current)).join;
                    moved = IdleIndexMove {
                        leave: existing.iter().filter(|c| !wanted.contains(c)).cloned().collect(),
                        join: wanted.into_iter().filter(|c| !existing.contains(c)).collect(),
                    };
                    if moved.is_empty() {
                        return Ok(());
                    }
                    seen = current;
                }
            }
        }
        Err(StoreError::unavailable(
            "the idle-agents entries kept conflicting with the agent's writes",
        ))
    }

    async fn due_timers(&self, now: Timestamp, limit: u32) -> Result<Vec<TaskKey>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let due = self
            .due_in_shards::<TimerEntry>(
                (items::GSI3, "gsi3pk = :pk AND gsi3sk < :bound"),
                items::TIMER_SHARDS,
                keys::timer_pk,
                now,
                limit,
            )
            .await?;
        Ok(due.into_iter().map(|(_, key)| key).collect())
    }
}
