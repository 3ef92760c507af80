//! Per-operation request counters and the capacity units DynamoDB reports consuming (for
//! benches, the load generator and the request-count and units tests).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    GetItem,
    PutItem,
    UpdateItem,
    Query,
    TransactWriteItems,
    BatchGetItem,
}

impl Op {
    fn reads(self) -> bool {
        matches!(self, Op::GetItem | Op::Query | Op::BatchGetItem)
    }
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    batch_get_item: AtomicU64,
    units: Mutex<CapacityUnits>,
    get_item: AtomicU64,
    put_item: AtomicU64,
    update_item: AtomicU64,
    query: AtomicU64,
    transact_write_items: AtomicU64,
}

impl Counters {
    pub(crate) fn hit(&self, op: Op) {
        let c = match op {
            Op::GetItem => &self.get_item,
            Op::PutItem => &self.put_item,
            Op::UpdateItem => &self.update_item,
            Op::Query => &self.query,
            Op::TransactWriteItems => &self.transact_write_items,
            Op::BatchGetItem => &self.batch_get_item,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds what one response reported (`ReturnConsumedCapacity=INDEXES`): the table's units and
    /// each index's, under their names. A store that reports only a total (`CapacityUnits`) has
    /// it counted as reads or writes by the kind of request.
    pub(crate) fn consumed(&self, op: Op, reported: &[aws_sdk_dynamodb::types::ConsumedCapacity]) {
        if reported.is_empty() {
            return;
        }
        let mut units = self.units.lock().unwrap_or_else(|e| e.into_inner());
        units.responses += 1;
        for c in reported {
            let mut add = |target: &str, cap: Option<&aws_sdk_dynamodb::types::Capacity>, total: Option<f64>| {
                let (r, w) = match cap {
                    Some(cap) if cap.read_capacity_units.is_some() || cap.write_capacity_units.is_some() => (
                        cap.read_capacity_units.unwrap_or(0.0),
                        cap.write_capacity_units.unwrap_or(0.0),
                    ),
                    Some(cap) => split(op, cap.capacity_units.unwrap_or(0.0)),
                    None => split(op, total.unwrap_or(0.0)),
                };
                if r == 0.0 && w == 0.0 {
                    return;
                }
                let e = units.by_target.entry(target.to_string()).or_default();
                e.read += r;
                e.write += w;
            };
            let per_part = c.table.is_some() || c.global_secondary_indexes.is_some();
            if per_part {
                if let Some(t) = &c.table {
                    add("table", Some(t), None);
                }
                for (name, cap) in c.global_secondary_indexes.iter().flatten() {
                    add(name, Some(cap), None);
                }
            } else {
                // Only a total: the table and its indexes together.
                add("table+indexes", None, c.capacity_units);
            }
        }
    }

    pub(crate) fn units(&self) -> CapacityUnits {
        self.units.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn snapshot(&self) -> RequestCounts {
        RequestCounts {
            get_item: self.get_item.load(Ordering::Relaxed),
            put_item: self.put_item.load(Ordering::Relaxed),
            update_item: self.update_item.load(Ordering::Relaxed),
            query: self.query.load(Ordering::Relaxed),
            transact_write_items: self.transact_write_items.load(Ordering::Relaxed),
            batch_get_item: self.batch_get_item.load(Ordering::Relaxed),
        }
    }
}

fn split(op: Op, total: f64) -> (f64, f64) {
    if op.reads() { (total, 0.0) } else { (0.0, total) }
}

/// Read and write capacity units of one target (the table or one index).
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Units {
    pub read: f64,
    pub write: f64,
}

/// Capacity units consumed since a [`crate::DynamoStore`] was created, as DynamoDB reported
/// them (`ReturnConsumedCapacity=INDEXES` on every request), per target: `table`, each index by
/// name, or `table+indexes` where a store reports only a total. Subtract two snapshots to measure
/// one operation.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct CapacityUnits {
    pub by_target: BTreeMap<String, Units>,
    /// Responses that reported any consumption.
    pub responses: u64,
}

impl CapacityUnits {
    pub fn read(&self) -> f64 {
        self.by_target.values().map(|u| u.read).sum()
    }
    pub fn write(&self) -> f64 {
        self.by_target.values().map(|u| u.write).sum()
    }
}

impl std::ops::Sub for &CapacityUnits {
    type Output = CapacityUnits;
    fn sub(self, o: &CapacityUnits) -> CapacityUnits {
        let mut by_target = self.by_target.clone();
        for (k, u) in &o.by_target {
            let e = by_target.entry(k.clone()).or_default();
            e.read -= u.read;
            e.write -= u.write;
        }
        by_target.retain(|_, u| u.read.abs() > 1e-9 || u.write.abs() > 1e-9);
        CapacityUnits {
            by_target,
            responses: self.responses - o.responses,
        }
    }
}

impl std::fmt::Display for CapacityUnits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `+ 0.0` turns a difference of -0.0 into 0.0.
        write!(f, "{:.1} RCU + {:.1} WCU", self.read() + 0.0, self.write() + 0.0)?;
        let parts: Vec<String> = self
            .by_target
            .iter()
            .map(|(k, u)| format!("{k}: {:.1}r/{:.1}w", u.read, u.write))
            .collect();
        if !parts.is_empty() {
            write!(f, " ({})", parts.join(", "))?;
        }
        Ok(())
    }
}

/// DynamoDB requests sent by one [`crate::DynamoStore`] since it was created (retries of a
/// cancelled transaction included). Subtract two snapshots to count one operation.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RequestCounts {
    pub get_item: u64,
    pub put_item: u64,
    pub update_item: u64,
    pub query: u64,
    pub transact_write_items: u64,
    pub batch_get_item: u64,
}

impl RequestCounts {
    pub fn total(&self) -> u64 {
        self.get_item + self.put_item + self.update_item + self.query + self.transact_write_items + self.batch_get_item
    }
    /// Writes only (each TransactWriteItems counts once).
    pub fn writes(&self) -> u64 {
        self.put_item + self.update_item + self.transact_write_items
    }
}

impl std::ops::Sub for RequestCounts {
    type Output = RequestCounts;
    fn sub(self, o: RequestCounts) -> RequestCounts {
        RequestCounts {
            get_item: self.get_item - o.get_item,
            put_item: self.put_item - o.put_item,
            update_item: self.update_item - o.update_item,
            query: self.query - o.query,
            transact_write_items: self.transact_write_items - o.transact_write_items,
            batch_get_item: self.batch_get_item - o.batch_get_item,
        }
    }
}

impl std::fmt::Display for RequestCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        for (name, n) in [
            ("GetItem", self.get_item),
            ("PutItem", self.put_item),
            ("UpdateItem", self.update_item),
            ("Query", self.query),
            ("TransactWriteItems", self.transact_write_items),
            ("BatchGetItem", self.batch_get_item),
        ] {
            if n > 0 {
                parts.push(format!("{n} {name}"));
            }
        }
        if parts.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&parts.join(" + "))
        }
    }
}
