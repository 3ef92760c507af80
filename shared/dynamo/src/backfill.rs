//! The in-place upgrade's backfill (docs/deploy.md, "Upgrading a table from before issue 16",
//! step 3): agents and workflow versions written before issue 16 carry the old list keys
//! (`gsi1pk = AGENTS` / `WORKFLOWS`, `gsi2pk = STATE#{state}`), which the sharded list queries
//! never look at. [`KeyBackfill`] pages through the table with a `Scan` filtered to those two item
//! kinds and rewrites each item whose keys differ from what [`keys`] gives today.
//!
//! Every write is a conditional `UpdateItem` of the two key attributes only:
//! - `attribute_exists(pk)`, so an item deleted meanwhile is not resurrected as a key-only stub;
//! - for an agent, also `state = :scanned`, because `gsi2pk` depends on the state: a report that
//!   changed the state after the scan has set `gsi2pk` itself (every report does), and writing
//!   the scanned state's key would file the agent under the wrong state. On that condition
//!   failing the item is read again (consistently) and the update retried with its new state.
//!
//! An item whose keys are already right is not written, so a second run changes nothing and an
//! interrupted run can simply be started again (or resumed from the position it printed).

use crate::items::{self, keys};
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{DisplayErrorContext, SdkError};
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::AttributeValue;
use opscore_core::agent::StateName;
use opscore_core::ids::{AgentId, WorkflowId};
use opscore_core::store::StoreError;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

type RawItem = HashMap<String, AttributeValue>;

/// How often an agent's update is retried when its state keeps changing between read and write.
const RACE_RETRIES: u32 = 5;

/// Where a scan stopped: the last evaluated key (`pk`, `sk`), printed after each page as JSON so
/// an interrupted run can resume with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanPosition {
    pub pk: String,
    pub sk: String,
}

impl ScanPosition {
    fn from_key(key: &RawItem) -> Option<Self> {
        Some(Self {
            pk: string(key, items::PK)?,
            sk: string(key, items::SK)?,
        })
    }
    fn to_key(&self) -> RawItem {
        HashMap::from([
            (items::PK.to_string(), AttributeValue::S(self.pk.clone())),
            (items::SK.to_string(), AttributeValue::S(self.sk.clone())),
        ])
    }
}

/// What one page (or a whole run, summed) found and did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct BackfillCounts {
    /// Agent and workflow-version items the scan returned.
    pub examined: u64,
    /// Items whose keys were already right (not written).
    pub current: u64,
    /// Items rewritten (with `dry_run`: that would be rewritten).
    pub updated: u64,
    /// Items deleted between the scan and the update (nothing to do).
    pub gone: u64,
    /// Agent updates retried because a report changed the state between scan and update.
    pub retried: u64,
}

impl std::ops::AddAssign for BackfillCounts {
    fn add_assign(&mut self, o: Self) {
        self.examined += o.examined;
        self.current += o.current;
        self.updated += o.updated;
        self.gone += o.gone;
        self.retried += o.retried;
    }
}

/// One page's outcome and where to continue (`None`: the scan is complete).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackfillPage {
    pub counts: BackfillCounts,
    pub next: Option<ScanPosition>,
}

/// The backfill of one table.
#[derive(Debug, Clone)]
pub struct KeyBackfill {
    pub client: Client,
    pub table: String,
    /// Count what would change, write nothing.
    pub dry_run: bool,
    /// Items the `Scan` evaluates per page (before the filter; a page also ends at 1 MB).
    pub page_size: i32,
}

/// The key attributes an item should carry, computed from its id (and state).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    gsi1pk: String,
    /// Agents only.
    gsi2pk: Option<String>,
    /// The state `gsi2pk` was computed from (agents only): the update's condition.
    state: Option<String>,
}

enum Outcome {
    Current,
    Updated,
    Gone,
}

fn string(item: &RawItem, name: &str) -> Option<String> {
    match item.get(name) {
        Some(AttributeValue::S(s)) => Some(s.clone()),
        _ => None,
    }
}

fn unavailable<E, R>(what: &str, e: SdkError<E, R>) -> StoreError
where
    E: std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    StoreError::unavailable(format!("{what}: {}", DisplayErrorContext(e)))
}

/// What `item` (an agent or a workflow version) should carry; `None` for other items.
fn target_of(item: &RawItem) -> Result<Option<Target>, StoreError> {
    let (Some(pk), Some(sk)) = (string(item, items::PK), string(item, items::SK)) else {
        return Ok(None);
    };
    let bad = |what: &str| StoreError::corrupt(format!("item {pk} / {sk}: {what}"));
    match items::kind_of(&pk, &sk) {
        items::Kind::Agent => {
            let id = string(item, "agentId").ok_or_else(|| bad("no agentId"))?;
            let id = AgentId::parse(id).map_err(|e| bad(&format!("agentId: {e}")))?;
            let state = string(item, "state").ok_or_else(|| bad("no state"))?;
            let state_name = StateName::parse(&state).map_err(|e| bad(&format!("state: {e}")))?;
            Ok(Some(Target {
                gsi1pk: keys::agents_pk(keys::agent_shard(&id)),
                gsi2pk: Some(keys::state_gsi2pk(&id, &state_name)),
                state: Some(state),
            }))
        }
        items::Kind::Workflow if sk.starts_with("V#") => {
            let id = string(item, "workflowId").ok_or_else(|| bad("no workflowId"))?;
            let id = WorkflowId::parse(id).map_err(|e| bad(&format!("workflowId: {e}")))?;
            Ok(Some(Target {
                gsi1pk: keys::workflows_pk(keys::workflow_shard(&id)),
                gsi2pk: None,
                state: None,
            }))
        }
        _ => Ok(None),
    }
}

fn is_current(item: &RawItem, target: &Target) -> bool {
    string(item, "gsi1pk").as_deref() == Some(target.gsi1pk.as_str())
        && target
            .gsi2pk
            .as_deref()
            .is_none_or(|want| string(item, "gsi2pk").as_deref() == Some(want))
}

impl KeyBackfill {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
            dry_run: false,
            page_size: 500,
        }
    }

    /// Scans one page from `start` and fixes the agents and workflow versions on it.
    pub async fn page(&self, start: Option<&ScanPosition>) -> Result<BackfillPage, StoreError> {
        let out = self
            .client
            .scan()
            .table_name(&self.table)
            .limit(self.page_size)
            .filter_expression(
                "(sk = :agent AND begins_with(pk, :agents)) OR (begins_with(pk, :wfs) AND begins_with(sk, :version))",
            )
            .expression_attribute_values(":agent", AttributeValue::S(keys::AGENT_SK.into()))
            .expression_attribute_values(":agents", AttributeValue::S("AGENT#".into()))
            .expression_attribute_values(":wfs", AttributeValue::S("WF#".into()))
            .expression_attribute_values(":version", AttributeValue::S("V#".into()))
            .projection_expression("pk, sk, agentId, workflowId, #state, gsi1pk, gsi2pk")
            .expression_attribute_names("#state", "state")
            .set_exclusive_start_key(start.map(ScanPosition::to_key))
            .send()
            .await
            .map_err(|e| unavailable("Scan", e))?;
        let mut counts = BackfillCounts::default();
        for item in out.items.unwrap_or_default() {
            let Some(target) = target_of(&item)? else { continue };
            counts.examined += 1;
            match self.fix(item, target, &mut counts).await? {
                Outcome::Current => counts.current += 1,
                Outcome::Updated => counts.updated += 1,
                Outcome::Gone => counts.gone += 1,
            }
        }
        let next = match out.last_evaluated_key {
            Some(k) if !k.is_empty() => Some(
                ScanPosition::from_key(&k)
                    .ok_or_else(|| StoreError::corrupt(format!("Scan returned a last key without pk/sk: {k:?}")))?,
            ),
            _ => None,
        };
        Ok(BackfillPage { counts, next })
    }

    /// Pages from `start` to the end of the table, calling `on_page` after each page (the binary
    /// prints the position there), and returns the summed counts.
    pub async fn run(
        &self,
        start: Option<ScanPosition>,
        mut on_page: impl FnMut(&BackfillPage),
    ) -> Result<BackfillCounts, StoreError> {
        let mut total = BackfillCounts::default();
        let mut position = start;
        loop {
            let page = self.page(position.as_ref()).await?;
            total += page.counts;
            on_page(&page);
            match page.next {
                Some(next) => position = Some(next),
                None => return Ok(total),
            }
        }
    }

    async fn fix(
        &self,
        mut item: RawItem,
        mut target: Target,
        counts: &mut BackfillCounts,
    ) -> Result<Outcome, StoreError> {
        let mut attempt = 0;
        loop {
            if is_current(&item, &target) {
                return Ok(Outcome::Current);
            }
            if self.dry_run {
                return Ok(Outcome::Updated);
            }
            let pk = string(&item, items::PK).unwrap_or_default();
            let sk = string(&item, items::SK).unwrap_or_default();
            let mut update = self
                .client
                .update_item()
                .table_name(&self.table)
                .key(items::PK, AttributeValue::S(pk.clone()))
                .key(items::SK, AttributeValue::S(sk.clone()))
                .expression_attribute_values(":gsi1pk", AttributeValue::S(target.gsi1pk.clone()));
            update = match (&target.gsi2pk, &target.state) {
                (Some(gsi2pk), Some(state)) => update
                    .update_expression("SET gsi1pk = :gsi1pk, gsi2pk = :gsi2pk")
                    .condition_expression("attribute_exists(pk) AND #state = :state")
                    .expression_attribute_names("#state", "state")
                    .expression_attribute_values(":gsi2pk", AttributeValue::S(gsi2pk.clone()))
                    .expression_attribute_values(":state", AttributeValue::S(state.clone())),
                _ => update
                    .update_expression("SET gsi1pk = :gsi1pk")
                    .condition_expression("attribute_exists(pk)"),
            };
            match update.send().await {
                Ok(_) => return Ok(Outcome::Updated),
                Err(e)
                    if matches!(
                        e.as_service_error(),
                        Some(UpdateItemError::ConditionalCheckFailedException(_))
                    ) =>
                {
                    // Deleted, or (an agent) its state changed since it was read: read it again.
                    let fresh = self
                        .client
                        .get_item()
                        .table_name(&self.table)
                        .key(items::PK, AttributeValue::S(pk))
                        .key(items::SK, AttributeValue::S(sk))
                        .consistent_read(true)
                        .send()
                        .await
                        .map_err(|e| unavailable("GetItem", e))?;
                    let Some(fresh) = fresh.item else {
                        return Ok(Outcome::Gone);
                    };
                    let Some(fresh_target) = target_of(&fresh)? else {
                        return Ok(Outcome::Gone);
                    };
                    attempt += 1;
                    counts.retried += 1;
                    if attempt > RACE_RETRIES {
                        return Err(StoreError::unavailable(format!(
                            "item {} / {} kept changing; run the backfill again",
                            string(&fresh, items::PK).unwrap_or_default(),
                            string(&fresh, items::SK).unwrap_or_default()
                        )));
                    }
                    item = fresh;
                    target = fresh_target;
                }
                Err(e) => return Err(unavailable("UpdateItem", e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(pairs: &[(&str, &str)]) -> RawItem {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), AttributeValue::S(v.to_string())))
            .collect()
    }

    #[test]
    fn targets_come_from_ids_and_state() {
        let id = AgentId::parse("agent-7").unwrap();
        let old = item(&[
            ("pk", "AGENT#agent-7"),
            ("sk", "A"),
            ("agentId", "agent-7"),
            ("state", "idle"),
            ("gsi1pk", "AGENTS"),
            ("gsi2pk", "STATE#idle"),
        ]);
        let t = target_of(&old).unwrap().unwrap();
        assert_eq!(t.gsi1pk, keys::agents_pk(keys::agent_shard(&id)));
        assert_eq!(
            t.gsi2pk.as_deref(),
            Some(keys::state_gsi2pk(&id, &StateName::parse("idle").unwrap()).as_str())
        );
        assert!(!is_current(&old, &t));
        let mut new = old.clone();
        new.insert("gsi1pk".into(), AttributeValue::S(t.gsi1pk.clone()));
        assert!(!is_current(&new, &t), "gsi2pk is still the old one");
        new.insert("gsi2pk".into(), AttributeValue::S(t.gsi2pk.clone().unwrap()));
        assert!(is_current(&new, &t));

        let wf = item(&[
            ("pk", "WF#wf-1"),
            ("sk", "V#3"),
            ("workflowId", "wf-1"),
            ("gsi1pk", "WORKFLOWS"),
        ]);
        let t = target_of(&wf).unwrap().unwrap();
        assert_eq!(t.gsi2pk, None);
        assert_eq!(
            t.gsi1pk,
            keys::workflows_pk(keys::workflow_shard(&WorkflowId::parse("wf-1").unwrap()))
        );
        // History, sessions and tasks are not the backfill's business.
        assert_eq!(target_of(&item(&[("pk", "AGENT#a"), ("sk", "H#1")])).unwrap(), None);
        assert_eq!(target_of(&item(&[("pk", "S#x"), ("sk", "S")])).unwrap(), None);
        // An agent item without its id is reported, not skipped silently.
        assert!(target_of(&item(&[("pk", "AGENT#a"), ("sk", "A"), ("state", "idle")])).is_err());
    }

    #[test]
    fn positions_round_trip_as_json() {
        let p = ScanPosition {
            pk: "AGENT#a".into(),
            sk: "A".into(),
        };
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<ScanPosition>(&json).unwrap(), p);
        assert_eq!(ScanPosition::from_key(&p.to_key()), Some(p));
    }

    /// The two conditions, on a real store: a report that changed the state after the scan makes
    /// the update read the item again and file the agent under its new state; an item deleted
    /// after the scan is left deleted.
    #[cfg(feature = "local")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_state_changed_after_the_scan_is_read_again_and_a_deleted_item_stays_deleted() {
        use opscore_core::agent::{AgentDetails, StateReport};
        use opscore_core::store::Store;
        let server = crate::EmbeddedDynamo::start().await.unwrap();
        let client = server.client().await;
        crate::ensure_table(&client, "opscore").await.unwrap();
        let store = crate::DynamoStore::new(client.clone(), "opscore");
        let id = AgentId::parse("a1").unwrap();
        let now = chrono::Utc::now();
        let details = AgentDetails {
            agent_id: id.clone(),
            agent_name: "n".into(),
            version: "1".into(),
            capabilities: vec![],
            contact_endpoint: "http://127.0.0.1:9/task".into(),
            metadata: serde_json::Map::new(),
            registration_time: None,
        };
        store.register_agent(details, now).await.unwrap();
        let busy = StateName::parse("busy").unwrap();
        let report = StateReport {
            agent_id: id.clone(),
            state: busy.clone(),
            details: None,
            timestamp: now,
        };
        store
            .report_state(&report, now, std::time::Duration::from_secs(3600))
            .await
            .unwrap();
        let key = |pk: &str| {
            client
                .get_item()
                .table_name("opscore")
                .key(items::PK, AttributeValue::S(pk.into()))
                .key(items::SK, AttributeValue::S(keys::AGENT_SK.into()))
                .consistent_read(true)
        };
        // An agent written before issue 16 whose `busy` report came from today's code: the report
        // set `gsi2pk`, `gsi1pk` is still the old list key.
        client
            .update_item()
            .table_name("opscore")
            .key(items::PK, AttributeValue::S("AGENT#a1".into()))
            .key(items::SK, AttributeValue::S(keys::AGENT_SK.into()))
            .update_expression("SET gsi1pk = :old")
            .expression_attribute_values(":old", AttributeValue::S("AGENTS".into()))
            .send()
            .await
            .unwrap();
        // What a scan taken before the `busy` report saw: state idle, the old keys.
        let mut stale = key("AGENT#a1").send().await.unwrap().item.unwrap();
        stale.insert("state".into(), AttributeValue::S("idle".into()));
        stale.insert("gsi1pk".into(), AttributeValue::S("AGENTS".into()));
        stale.insert("gsi2pk".into(), AttributeValue::S("STATE#idle".into()));
        let target = target_of(&stale).unwrap().unwrap();
        let backfill = KeyBackfill::new(client.clone(), "opscore");
        let mut counts = BackfillCounts::default();
        let outcome = backfill.fix(stale, target, &mut counts).await.unwrap();
        assert!(matches!(outcome, Outcome::Updated));
        assert_eq!(counts.retried, 1, "the condition on the scanned state failed once");
        let item = key("AGENT#a1").send().await.unwrap().item.unwrap();
        assert_eq!(string(&item, "gsi2pk"), Some(keys::state_gsi2pk(&id, &busy)));
        assert_eq!(string(&item, "gsi1pk"), Some(keys::agents_pk(keys::agent_shard(&id))));

        // Deleted after the scan: nothing is written back.
        let mut gone = item.clone();
        gone.insert("gsi1pk".into(), AttributeValue::S("AGENTS".into()));
        let target = target_of(&gone).unwrap().unwrap();
        client
            .delete_item()
            .table_name("opscore")
            .key(items::PK, AttributeValue::S("AGENT#a1".into()))
            .key(items::SK, AttributeValue::S(keys::AGENT_SK.into()))
            .send()
            .await
            .unwrap();
        let outcome = backfill.fix(gone, target, &mut counts).await.unwrap();
        assert!(matches!(outcome, Outcome::Gone));
        assert_eq!(key("AGENT#a1").send().await.unwrap().item, None);
        server.stop().await;
    }
}
