//! Where writes land: the partition key of the table and of each index that one item change
//! writes to, by DynamoDB's rules for global secondary indexes, and a tally of them (the heat
//! check of `docs/load-tests.md`).
//!
//! A table write of an item is one write on its own partition. Each index then costs, from the
//! item's old and new images (the stream's `NEW_AND_OLD_IMAGES`, or the adapter's item builders):
//! - no entry before or after (a key attribute absent): nothing;
//! - an entry appears: one write (put) on the new index partition;
//! - an entry disappears: one write (delete) on the old index partition;
//! - the index key changes: two writes, a delete on the old partition and a put on the new;
//! - the key is the same and a projected attribute changed: one write (the entry is rewritten);
//! - the key is the same and no projected attribute changed: nothing.
//!
//! (Amazon DynamoDB Developer Guide, "Global secondary indexes", section "Provisioned throughput
//! considerations": the same cases in prose.) So an index whose projection leaves out what
//! changes often, keyed by something that changes rarely, costs almost no writes.

use crate::table::{INDEXES, IndexDefinition};
use serde_dynamo::{AttributeValue, Item};
use std::collections::BTreeMap;

/// What a write lands on: `table` or an index name, and the partition key value there.
pub type Target = (String, String);

/// The table target of the table itself.
pub const TABLE: &str = "table";

fn string(item: &Item, attr: &str) -> Option<String> {
    match item.get(attr) {
        Some(AttributeValue::S(s)) => Some(s.clone()),
        Some(AttributeValue::N(n)) => Some(n.clone()),
        _ => None,
    }
}

/// The key `(partition, sort)` of an item's entry in `index`, if it has one (sparse index).
fn entry_key(index: &IndexDefinition, item: Option<&Item>) -> Option<(String, String)> {
    let item = item?;
    Some((string(item, index.partition_key)?, string(item, index.sort_key)?))
}

fn projected_changed(index: &IndexDefinition, old: &Item, new: &Item) -> bool {
    let names = old.iter().chain(new.iter()).map(|(k, _)| k.as_str());
    names.filter(|a| index.projects(a)).any(|a| old.get(a) != new.get(a))
}

/// Every write one item change makes, `old` → `new` (`None`: absent), on the table and on each
/// of `indexes`; nothing if the item did not change.
pub fn writes_of(indexes: &[IndexDefinition], old: Option<&Item>, new: Option<&Item>) -> Vec<Target> {
    let mut out = Vec::new();
    if old == new {
        return out;
    }
    if let Some(pk) = new.or(old).and_then(|i| string(i, crate::items::PK)) {
        out.push((TABLE.to_string(), pk));
    }
    for index in indexes {
        let name = index.name.to_string();
        match (entry_key(index, old), entry_key(index, new)) {
            (None, None) => {}
            (None, Some((pk, _))) | (Some((pk, _)), None) => out.push((name, pk)),
            (Some(before), Some(after)) if before != after => {
                out.push((name.clone(), before.0));
                out.push((name, after.0));
            }
            (Some((pk, _)), Some(_)) => {
                if let (Some(o), Some(n)) = (old, new)
                    && projected_changed(index, o, n)
                {
                    out.push((name, pk));
                }
            }
        }
    }
    out
}

/// A tally of writes by target.
#[derive(Debug, Default, Clone)]
pub struct Heat {
    pub writes: BTreeMap<Target, u64>,
}

/// The hottest partition key of a tally (or of one target within it) and its share.
#[derive(Debug, Clone, PartialEq)]
pub struct Hottest {
    pub target: Target,
    pub writes: u64,
    /// Of all writes counted (in the tally, or in that table or index).
    pub share: f64,
}

impl Heat {
    /// Counts the writes of one item change on the table's [`INDEXES`].
    pub fn record(&mut self, old: Option<&Item>, new: Option<&Item>) {
        for t in writes_of(&INDEXES, old, new) {
            *self.writes.entry(t).or_default() += 1;
        }
    }

    pub fn total(&self) -> u64 {
        self.writes.values().sum()
    }

    /// Writes per table or index.
    pub fn per_target(&self) -> BTreeMap<String, u64> {
        let mut m = BTreeMap::new();
        for ((t, _), n) in &self.writes {
            *m.entry(t.clone()).or_default() += n;
        }
        m
    }

    /// The partition key with the most writes, and its share of all writes.
    pub fn hottest(&self) -> Option<Hottest> {
        let total = self.total();
        self.writes.iter().max_by_key(|(_, n)| **n).map(|(t, n)| Hottest {
            target: t.clone(),
            writes: *n,
            share: *n as f64 / total as f64,
        })
    }

    /// For each table or index, its hottest partition key and that key's share of the writes
    /// to that table or index.
    pub fn hottest_per_target(&self) -> Vec<Hottest> {
        let totals = self.per_target();
        let mut best: BTreeMap<String, (String, u64)> = BTreeMap::new();
        for ((t, pk), n) in &self.writes {
            let e = best.entry(t.clone()).or_insert_with(|| (pk.clone(), 0));
            if *n > e.1 {
                *e = (pk.clone(), *n);
            }
        }
        best.into_iter()
            .map(|(t, (pk, n))| Hottest {
                share: n as f64 / totals[&t] as f64,
                target: (t, pk),
                writes: n,
            })
            .collect()
    }

    /// A short report: totals per target and the hottest keys.
    pub fn report(&self) -> String {
        let mut out = format!("{} writes:", self.total());
        for (t, n) in self.per_target() {
            out.push_str(&format!(" {t} {n};"));
        }
        if let Some(h) = self.hottest() {
            out.push_str(&format!(
                "\nhottest key overall: {} {} — {} writes, {:.2} % of all",
                h.target.0,
                h.target.1,
                h.writes,
                h.share * 100.0
            ));
        }
        for h in self.hottest_per_target() {
            out.push_str(&format!(
                "\nhottest key of {}: {} — {} writes, {:.2} % of that {}",
                h.target.0,
                h.target.1,
                h.writes,
                h.share * 100.0,
                if h.target.0 == TABLE { "table" } else { "index" }
            ));
        }
        out
    }
}

/// The heat of everything a table's stream still holds: every shard read from its start
/// (`TRIM_HORIZON`) to its current end, each record's old and new image counted by
/// [`Heat::record`]. What a load test wrote, as the table itself recorded it (a write that changed
/// nothing leaves no record and costs no index write).
#[cfg(feature = "local")]
pub async fn heat_of_stream(client: &aws_sdk_dynamodbstreams::Client, table: &str) -> Result<Heat, String> {
    use aws_sdk_dynamodbstreams::error::DisplayErrorContext;
    use aws_sdk_dynamodbstreams::types::ShardIteratorType;
    let err = |op: &str, e: &dyn std::fmt::Display| format!("DynamoDB Streams {op}: {e}");
    let streams = client
        .list_streams()
        .table_name(table)
        .send()
        .await
        .map_err(|e| err("ListStreams", &DisplayErrorContext(&e)))?;
    let arn = streams
        .streams()
        .iter()
        .filter(|s| s.table_name() == Some(table))
        .max_by_key(|s| s.stream_label().unwrap_or_default().to_owned())
        .and_then(|s| s.stream_arn())
        .ok_or_else(|| format!("table {table} has no stream"))?
        .to_owned();
    let mut shards = Vec::new();
    let mut start: Option<String> = None;
    loop {
        let out = client
            .describe_stream()
            .stream_arn(&arn)
            .set_exclusive_start_shard_id(start.take())
            .send()
            .await
            .map_err(|e| err("DescribeStream", &DisplayErrorContext(&e)))?;
        let Some(desc) = out.stream_description() else { break };
        shards.extend(desc.shards().iter().filter_map(|s| s.shard_id().map(str::to_owned)));
        match desc.last_evaluated_shard_id() {
            Some(id) if !id.is_empty() => start = Some(id.to_owned()),
            _ => break,
        }
    }
    let mut heat = Heat::default();
    for shard in shards {
        let mut iterator = client
            .get_shard_iterator()
            .stream_arn(&arn)
            .shard_id(&shard)
            .shard_iterator_type(ShardIteratorType::TrimHorizon)
            .send()
            .await
            .map_err(|e| err("GetShardIterator", &DisplayErrorContext(&e)))?
            .shard_iterator
            .take();
        while let Some(it) = iterator.take() {
            let out = client
                .get_records()
                .shard_iterator(it)
                .limit(1000)
                .send()
                .await
                .map_err(|e| err("GetRecords", &DisplayErrorContext(&e)))?;
            if out.records().is_empty() {
                break;
            }
            for r in out.records() {
                let Some(sr) = r.dynamodb() else { continue };
                let old = sr.old_image().map(|i| Item::from(i.clone()));
                let new = sr.new_image().map(|i| Item::from(i.clone()));
                heat.record(old.as_ref(), new.as_ref());
            }
            iterator = out.next_shard_iterator;
        }
    }
    Ok(heat)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::items::{AgentItem, HistoryItem, IdleAgentItem, SessionItem, TaskItem};
    use opscore_core::agent::{Agent, AgentDetails, HistoryEntry, Inflight, StateName, StateReport};
    use opscore_core::ids::{AgentId, DispatchId, TaskId};
    use opscore_core::session::Session;
    use opscore_core::task::{TaskInstance, TaskStatus};
    use opscore_core::time::{self, Timestamp};
    use opscore_core::workflow::WorkflowDefinition;
    use serde_json::json;
    use std::time::Duration;

    fn at(ms: i64) -> Timestamp {
        time::from_nanos((1_790_000_000_000 + ms) * 1_000_000)
    }

    fn agent_item(a: &Agent) -> Item {
        AgentItem::from_agent(a).to_item().unwrap()
    }

    fn item<T: serde::Serialize>(v: &T) -> Item {
        serde_dynamo::to_item(v).unwrap()
    }

    /// 1,000 agents, each registering, running a two-task workflow (claim, dispatch, run,
    /// complete, with the timers each step sets) and reporting `idle`/`busy` around each task,
    /// then idling with heartbeats: every item change the adapter writes, from its own item
    /// builders, counted on the table and on the indexes. No partition key may take more than
    /// 2 % of the writes, and the agent lists' keys take none of the heartbeats.
    /// The routing lists at their most shards (`RoutingIndexShards` = 16): the setting a
    /// deployment routing most of its tasks by one capability beyond ~500 tasks/s would take. At
    /// the default (1) every routed task's writes land on one key per capability by design
    /// (`items::MAX_ROUTING_SHARDS`).
    const ROUTING_SHARDS: u8 = crate::items::MAX_ROUTING_SHARDS;

    /// An agent change as the adapter writes it: the agent item, and (routing, issue 18) the
    /// idle-agents entries that `sync_idle_agent` moves for it.
    fn record_agent(heat: &mut Heat, old: Option<&Agent>, new: &Agent, at: Timestamp) {
        heat.record(old.map(agent_item).as_ref(), Some(&agent_item(new)));
        let moved = opscore_core::store::IdleIndexMove::of(old, Some(new));
        for c in &moved.leave {
            let gone = IdleAgentItem::new(new.id(), c, at, ROUTING_SHARDS);
            heat.record(Some(&item(&gone)), None);
        }
        for c in &moved.join {
            heat.record(None, Some(&item(&IdleAgentItem::new(new.id(), c, at, ROUTING_SHARDS))));
        }
    }

    #[test]
    fn no_key_takes_more_than_two_percent_of_the_writes_of_1000_agents() {
        let heat = scenario(false);
        check(&heat);
        // Heartbeats (same state) write no index entry: the agent lists saw only registrations
        // (lists) and state changes (work: idle ↔ busy, 2 writes each, plus the first entry).
        let per = heat.per_target();
        assert_eq!(per[crate::items::GSI1], 1000 + 1000, "{}", heat.report());
    }

    /// The same with routing (issue 18) on 16 routing shards: every agent announces the same two capabilities and
    /// every task is routed by one of them, the worst case for the capability keys
    /// (`ROUTED#{n}#work`, `IDLE#{n}#work`, `IDLE#{n}#review`), which take every task's and
    /// every availability change's index writes.
    #[test]
    fn no_key_takes_more_than_two_percent_of_the_writes_with_routing() {
        let heat = scenario(true);
        check(&heat);
        let routed = heat.writes.keys().filter(|(_, pk)| pk.starts_with("ROUTED#")).count();
        let idle = heat.writes.keys().filter(|(_, pk)| pk.starts_with("IDLE#")).count();
        assert_eq!(
            (routed, idle),
            (usize::from(ROUTING_SHARDS), 2 * usize::from(ROUTING_SHARDS)),
            "{}",
            heat.report()
        );
    }

    fn check(heat: &Heat) {
        println!("{}", heat.report());
        let hottest = heat.hottest().unwrap();
        assert!(hottest.share <= 0.02, "{}", heat.report());
        // The reports' index: no key above 2 % of that index's writes either. (The lists index
        // is written once per agent and session, the timer index is spread over 16 shards: their
        // keys are under 2 % of all writes, which is what bounds throughput.)
        let work = heat
            .hottest_per_target()
            .into_iter()
            .find(|h| h.target.0 == crate::items::GSI2)
            .unwrap();
        assert!(work.share <= 0.02, "{}", heat.report());
        assert!(
            !heat
                .writes
                .keys()
                .any(|(_, pk)| pk == "AGENTS" || pk.starts_with("STATE#") && pk.matches('#').count() < 2)
        );
    }

    /// 1,000 agents, each registering, running a two-task workflow (routed by capability if
    /// `routed`), reporting around each task and sending five heartbeats.
    fn scenario(routed: bool) -> Heat {
        let mut heat = Heat::default();
        let clock = std::cell::Cell::new(0);
        let tick = || {
            clock.set(clock.get() + 1);
            at(clock.get())
        };
        let def = WorkflowDefinition::from_value(json!({
            "id": "wf", "name": "two", "version": "1.0", "routeByCapability": routed,
            "tasks": [{"taskId": "a", "name": "A", "nextTaskId": "b", "agentCapability": "work"},
                      {"taskId": "b", "name": "B", "agentCapability": "work"}]
        }))
        .unwrap();
        for n in 0..1000 {
            let id = AgentId::parse(format!("agent-{n:04}")).unwrap();
            let details = AgentDetails {
                agent_id: id.clone(),
                agent_name: "n".into(),
                version: "1".into(),
                capabilities: if routed {
                    vec!["work".into(), "review".into()]
                } else {
                    vec![]
                },
                contact_endpoint: "http://127.0.0.1/task".into(),
                metadata: Default::default(),
                registration_time: None,
            };
            let mut agent = Agent::new(details, tick());
            record_agent(&mut heat, None, &agent, tick());
            let report = |agent: &mut Agent, state: &str, heat: &mut Heat| {
                let r = StateReport {
                    agent_id: id.clone(),
                    state: StateName::parse(state).unwrap(),
                    details: Some(json!({"load": n}).as_object().unwrap().clone()),
                    timestamp: tick(),
                };
                let next = agent.with_report(&r, r.timestamp);
                record_agent(heat, Some(agent), &next, r.timestamp);
                *agent = next;
                let h = HistoryItem::new(&HistoryEntry::of(&r, r.timestamp, true), Duration::from_secs(86_400));
                heat.record(None, Some(&item(&h)));
            };
            report(&mut agent, "idle", &mut heat);
            let session = Session::start(id.clone(), def.clone(), None, None, tick());
            let mut s_old = item(&SessionItem::new(&session));
            heat.record(None, Some(&s_old));
            let mut running = false;
            for (task, next) in [("a", Some("b")), ("b", None)] {
                let mut t = TaskInstance {
                    session_id: session.session_id,
                    task_id: TaskId::parse(task).unwrap(),
                    agent_id: id.clone(),
                    capability: routed.then(|| "work".to_owned()),
                    name: task.into(),
                    payload: json!({}),
                    next_task_id: next.map(|x| TaskId::parse(x).unwrap()),
                    status: TaskStatus::Pending,
                    attempt: 0,
                    max_retries: 2,
                    created_at: tick(),
                    updated_at: tick(),
                    due_at: tick(),
                    dispatch_deadline: None,
                    lease_expires_at: None,
                    run_deadline: None,
                    timer_at: Some(tick()),
                    attempts: vec![],
                    result: None,
                    last_error: None,
                    rev: 0,
                };
                let mut old = item(&TaskItem::new(&t, ROUTING_SHARDS));
                heat.record(None, Some(&old));
                // claim: agent marked in flight, task dispatched with a lease timer, session
                // started → running once.
                let since = tick();
                let mut claimed = agent.clone();
                claimed.inflight = Some(Inflight {
                    dispatch: DispatchId::parse(&format!("{}:{task}:1", session.session_id)).unwrap(),
                    since,
                    routed_by: None,
                });
                record_agent(&mut heat, Some(&agent), &claimed, since);
                agent = claimed;
                let mut step = |t: &mut TaskInstance, status, timer: Option<Timestamp>, heat: &mut Heat| {
                    t.status = status;
                    t.rev += 1;
                    t.updated_at = tick();
                    t.timer_at = timer;
                    let new = item(&TaskItem::new(t, ROUTING_SHARDS));
                    heat.record(Some(&old), Some(&new));
                    old = new;
                };
                let lease = tick();
                step(&mut t, TaskStatus::Dispatched, Some(lease), &mut heat);
                if !running {
                    let s = session
                        .clone()
                        .transition(opscore_core::session::SessionStatus::Running, tick())
                        .unwrap();
                    let s_new = item(&SessionItem::new(&s));
                    heat.record(Some(&s_old), Some(&s_new));
                    s_old = s_new;
                    running = true;
                }
                report(&mut agent, "busy", &mut heat);
                let deadline = tick();
                step(&mut t, TaskStatus::Running, Some(deadline), &mut heat);
                step(&mut t, TaskStatus::Succeeded, None, &mut heat);
                let mut released = agent.clone();
                released.inflight = None;
                record_agent(&mut heat, Some(&agent), &released, tick());
                agent = released;
                report(&mut agent, "idle", &mut heat);
            }
            let done = session
                .clone()
                .transition(opscore_core::session::SessionStatus::Running, tick())
                .unwrap()
                .transition(opscore_core::session::SessionStatus::Completed, tick())
                .unwrap();
            heat.record(Some(&s_old), Some(&item(&SessionItem::new(&done))));
            for _ in 0..5 {
                report(&mut agent, "idle", &mut heat);
            }
        }
        heat
    }

    #[test]
    fn index_writes_follow_dynamodb_rules() {
        let idx = &INDEXES;
        let a = |state: &str, details: &str| -> Item {
            item(&serde_json::json!({
                "pk": "AGENT#a", "sk": "A", "gsi1pk": "AGENTS#3", "gsi1sk": "a",
                "gsi2pk": format!("STATE#3#{state}"), "gsi2sk": "a", "stateDetails": details
            }))
        };
        // Same state, new details: the table only (details are projected nowhere).
        assert_eq!(
            writes_of(idx, Some(&a("idle", "x")), Some(&a("idle", "y"))),
            vec![(TABLE.to_string(), "AGENT#a".to_string())]
        );
        // A state change: a delete and a put on the work index.
        assert_eq!(
            writes_of(idx, Some(&a("idle", "x")), Some(&a("busy", "x"))),
            vec![
                (TABLE.to_string(), "AGENT#a".to_string()),
                ("work".to_string(), "STATE#3#idle".to_string()),
                ("work".to_string(), "STATE#3#busy".to_string()),
            ]
        );
        // A new item: the table and each index it has keys in.
        assert_eq!(writes_of(idx, None, Some(&a("idle", "x"))).len(), 3);
        // Nothing changed: nothing written.
        assert!(writes_of(idx, Some(&a("idle", "x")), Some(&a("idle", "x"))).is_empty());
        // A projected attribute changing under the same key rewrites the entry.
        let t = |due: &str| -> Item {
            item(
                &serde_json::json!({"pk": "S#s", "sk": "T#t", "gsi2pk": "RUNNABLE#a", "gsi2sk": "1#s#t", "dueAt": due}),
            )
        };
        assert_eq!(
            writes_of(idx, Some(&t("1")), Some(&t("2"))),
            vec![
                (TABLE.to_string(), "S#s".to_string()),
                ("work".to_string(), "RUNNABLE#a".to_string())
            ]
        );
    }
}
