//! Per-operation request counters (for benches and the request-count test).

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    GetItem,
    PutItem,
    UpdateItem,
    Query,
    TransactWriteItems,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
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
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> RequestCounts {
        RequestCounts {
            get_item: self.get_item.load(Ordering::Relaxed),
            put_item: self.put_item.load(Ordering::Relaxed),
            update_item: self.update_item.load(Ordering::Relaxed),
            query: self.query.load(Ordering::Relaxed),
            transact_write_items: self.transact_write_items.load(Ordering::Relaxed),
        }
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
}

impl RequestCounts {
    pub fn total(&self) -> u64 {
        self.get_item + self.put_item + self.update_item + self.query + self.transact_write_items
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
