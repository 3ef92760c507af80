//! Pagination cursors: the key of the last item of a page, as JSON, base64url without padding.
//! A cursor is checked against the query it is given to, so a cursor of another list (or another
//! agent's list) is refused as [`StoreError::InvalidCursor`] instead of reaching DynamoDB.

use aws_sdk_dynamodb::types::AttributeValue;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use opscore_core::store::StoreError;
use std::collections::{BTreeMap, HashMap};

/// The key attributes of one query's items and the partition the cursor must belong to.
#[derive(Debug, Clone)]
pub(crate) struct CursorShape {
    pub keys: &'static [&'static str],
    pub partition_attr: &'static str,
    pub partition_value: String,
    /// The sort key attribute and a prefix its value must start with.
    pub sort_prefix: Option<(&'static str, &'static str)>,
}

const MAX_CURSOR_LEN: usize = 2048;

pub(crate) fn encode(item: &HashMap<String, AttributeValue>, shape: &CursorShape) -> Result<String, StoreError> {
    let mut key = BTreeMap::new();
    for k in shape.keys {
        match item.get(*k) {
            Some(AttributeValue::S(s)) => {
                key.insert(*k, s.as_str());
            }
            _ => return Err(StoreError::corrupt(format!("item without key attribute {k}"))),
        }
    }
    let json = serde_json::to_vec(&key).map_err(|e| StoreError::corrupt_because(e.to_string(), e))?;
    Ok(URL_SAFE_NO_PAD.encode(json))
}

pub(crate) fn decode(cursor: &str, shape: &CursorShape) -> Result<HashMap<String, AttributeValue>, StoreError> {
    if cursor.is_empty() || cursor.len() > MAX_CURSOR_LEN {
        return Err(StoreError::InvalidCursor);
    }
    let bytes = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| StoreError::InvalidCursor)?;
    let key: BTreeMap<String, String> = serde_json::from_slice(&bytes).map_err(|_| StoreError::InvalidCursor)?;
    if key.len() != shape.keys.len() || !shape.keys.iter().all(|k| key.contains_key(*k)) {
        return Err(StoreError::InvalidCursor);
    }
    if key.get(shape.partition_attr) != Some(&shape.partition_value) {
        return Err(StoreError::InvalidCursor);
    }
    if let Some((attr, prefix)) = shape.sort_prefix
        && !key.get(attr).is_some_and(|v| v.starts_with(prefix))
    {
        return Err(StoreError::InvalidCursor);
    }
    if key.values().any(|v| v.is_empty()) {
        return Err(StoreError::InvalidCursor);
    }
    Ok(key.into_iter().map(|(k, v)| (k, AttributeValue::S(v))).collect())
}

/// Where a list merged from N shards stands: every entry whose sort key is at most `after` has
/// been returned from every shard, and shards in `done` have nothing left (they are not queried
/// again). Sort keys of such lists are unique across shards (an agent id, `{workflowId}#{version}`),
/// so one position per shard is implied by `after`; `done` spares the exhausted shards' queries.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ShardedPosition {
    /// The list this cursor belongs to (`AGENTS`, `STATE#idle`, `WORKFLOWS`).
    #[serde(rename = "l")]
    pub list: String,
    #[serde(rename = "a")]
    pub after: String,
    /// Bit `n` set: shard `n` is exhausted.
    #[serde(rename = "d")]
    pub done: u64,
}

pub(crate) fn encode_sharded(p: &ShardedPosition) -> Result<String, StoreError> {
    let json = serde_json::to_vec(p).map_err(|e| StoreError::corrupt_because(e.to_string(), e))?;
    Ok(URL_SAFE_NO_PAD.encode(json))
}

/// The position of a cursor of the sharded list `list` over `shards` shards; anything else
/// (another list's cursor, a forged one) is [`StoreError::InvalidCursor`].
pub(crate) fn decode_sharded(cursor: &str, list: &str, shards: u8) -> Result<ShardedPosition, StoreError> {
    if cursor.is_empty() || cursor.len() > MAX_CURSOR_LEN {
        return Err(StoreError::InvalidCursor);
    }
    let bytes = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| StoreError::InvalidCursor)?;
    let p: ShardedPosition = serde_json::from_slice(&bytes).map_err(|_| StoreError::InvalidCursor)?;
    let all = if shards >= 64 { u64::MAX } else { (1u64 << shards) - 1 };
    if p.list != list || p.after.is_empty() || p.done & !all != 0 {
        return Err(StoreError::InvalidCursor);
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape() -> CursorShape {
        CursorShape {
            keys: &["pk", "sk"],
            partition_attr: "pk",
            partition_value: "AGENT#a".into(),
            sort_prefix: Some(("sk", "H#")),
        }
    }

    #[test]
    fn round_trips_and_refuses_foreign_cursors() {
        let item: HashMap<String, AttributeValue> = [
            ("pk".to_string(), AttributeValue::S("AGENT#a".into())),
            ("sk".to_string(), AttributeValue::S("H#1".into())),
            ("other".to_string(), AttributeValue::N("1".into())),
        ]
        .into();
        let c = encode(&item, &shape()).unwrap();
        let back = decode(&c, &shape()).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back["sk"], AttributeValue::S("H#1".into()));
        let other = CursorShape {
            partition_value: "AGENT#b".into(),
            ..shape()
        };
        assert_eq!(decode(&c, &other), Err(StoreError::InvalidCursor));
        for bad in ["", "!!!", "bm90IGpzb24", &"A".repeat(5000)] {
            assert_eq!(decode(bad, &shape()), Err(StoreError::InvalidCursor), "{bad}");
        }
        let no_prefix: HashMap<String, AttributeValue> = [
            ("pk".to_string(), AttributeValue::S("AGENT#a".into())),
            ("sk".to_string(), AttributeValue::S("A".into())),
        ]
        .into();
        let c = encode(&no_prefix, &shape()).unwrap();
        assert_eq!(decode(&c, &shape()), Err(StoreError::InvalidCursor));
    }

    #[test]
    fn sharded_positions_round_trip_and_belong_to_one_list() {
        let p = ShardedPosition {
            list: "STATE#idle".into(),
            after: "a7".into(),
            done: 0b101,
        };
        let c = encode_sharded(&p).unwrap();
        assert_eq!(decode_sharded(&c, "STATE#idle", 32), Ok(p.clone()));
        assert_eq!(decode_sharded(&c, "AGENTS", 32), Err(StoreError::InvalidCursor));
        assert_eq!(decode_sharded(&c, "STATE#idle", 2), Err(StoreError::InvalidCursor));
        let empty = encode_sharded(&ShardedPosition {
            after: String::new(),
            ..p
        })
        .unwrap();
        assert_eq!(decode_sharded(&empty, "STATE#idle", 32), Err(StoreError::InvalidCursor));
        // A key cursor of an unsharded list is not a position.
        let item: HashMap<String, AttributeValue> = [
            ("pk".to_string(), AttributeValue::S("AGENT#a".into())),
            ("sk".to_string(), AttributeValue::S("H#1".into())),
        ]
        .into();
        let key_cursor = encode(&item, &shape()).unwrap();
        assert_eq!(
            decode_sharded(&key_cursor, "AGENTS", 32),
            Err(StoreError::InvalidCursor)
        );
    }
}
