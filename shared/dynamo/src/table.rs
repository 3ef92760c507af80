//! The table: keys `pk`/`sk`, three sparse GSIs with narrow projections ([`INDEXES`]), on-demand,
//! stream with new and old images, TTL on `expiresAt`. The template (`template.yaml`) must declare
//! the same (a test compares them).

use crate::items::{GSI1, GSI2, GSI3, TIMER_PROJECTION, TTL_ATTRIBUTE, WORK_PROJECTION};
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{BuildError, DisplayErrorContext};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection, ProjectionType,
    ScalarAttributeType, StreamSpecification, StreamViewType, TableStatus, TimeToLiveSpecification,
};
use opscore_core::store::StoreError;
use std::time::Duration;

fn bad(e: BuildError) -> StoreError {
    StoreError::corrupt(format!("bad CreateTable request: {e}"))
}

fn key(name: &str, kind: KeyType) -> Result<KeySchemaElement, StoreError> {
    KeySchemaElement::builder()
        .attribute_name(name)
        .key_type(kind)
        .build()
        .map_err(bad)
}

/// One global secondary index: its name, key attributes and what it carries besides keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexDefinition {
    pub name: &'static str,
    pub partition_key: &'static str,
    pub sort_key: &'static str,
    /// `None`: `KEYS_ONLY` (the table's and the index's keys); `Some(attrs)`: `INCLUDE` them.
    /// No index projects `ALL`: an entry is rewritten whenever a projected attribute changes, so
    /// every projected attribute that changes on its own costs an index write.
    pub include: Option<&'static [&'static str]>,
}

impl IndexDefinition {
    /// Whether an entry of this index carries `attr` (keys always, others only if included).
    pub fn projects(&self, attr: &str) -> bool {
        [crate::items::PK, crate::items::SK, self.partition_key, self.sort_key].contains(&attr)
            || self.include.is_some_and(|a| a.contains(&attr))
    }
}

/// The table's indexes, exactly as [`create_table`] creates them and `template.yaml` declares them.
pub const INDEXES: [IndexDefinition; 3] = [
    IndexDefinition {
        name: GSI1,
        partition_key: "gsi1pk",
        sort_key: "gsi1sk",
        include: None,
    },
    IndexDefinition {
        name: GSI2,
        partition_key: "gsi2pk",
        sort_key: "gsi2sk",
        include: Some(WORK_PROJECTION),
    },
    IndexDefinition {
        name: GSI3,
        partition_key: "gsi3pk",
        sort_key: "gsi3sk",
        include: Some(TIMER_PROJECTION),
    },
];

fn gsi(d: &IndexDefinition) -> Result<GlobalSecondaryIndex, StoreError> {
    let projection = match d.include {
        None => Projection::builder().projection_type(ProjectionType::KeysOnly).build(),
        Some(attrs) => Projection::builder()
            .projection_type(ProjectionType::Include)
            .set_non_key_attributes(Some(attrs.iter().map(|a| a.to_string()).collect()))
            .build(),
    };
    GlobalSecondaryIndex::builder()
        .index_name(d.name)
        .key_schema(key(d.partition_key, KeyType::Hash)?)
        .key_schema(key(d.sort_key, KeyType::Range)?)
        .projection(projection)
        .build()
        .map_err(bad)
}

/// Creates the table exactly as the service uses it and waits until it is active, then enables
/// TTL (stores without TTL support are tolerated: a warning, not an error).
pub async fn create_table(client: &Client, name: &str) -> Result<(), StoreError> {
    create(client, name, false).await
}

/// `CreateTable`; with `existing_is_ours`, a table that already exists counts as created: the
/// SDK resends a `CreateTable` whose attempt timed out (a loaded machine, a JVM warming up), and
/// the resent call then finds the table its first attempt made.
async fn create(client: &Client, name: &str, existing_is_ours: bool) -> Result<(), StoreError> {
    let mut req = client
        .create_table()
        .table_name(name)
        .billing_mode(BillingMode::PayPerRequest)
        .key_schema(key("pk", KeyType::Hash)?)
        .key_schema(key("sk", KeyType::Range)?)
        .set_global_secondary_indexes(Some(INDEXES.iter().map(gsi).collect::<Result<_, _>>()?))
        .stream_specification(
            StreamSpecification::builder()
                .stream_enabled(true)
                .stream_view_type(StreamViewType::NewAndOldImages)
                .build()
                .map_err(bad)?,
        );
    for attr in ["pk", "sk", "gsi1pk", "gsi1sk", "gsi2pk", "gsi2sk", "gsi3pk", "gsi3sk"] {
        req = req.attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name(attr)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .map_err(bad)?,
        );
    }
    match req.send().await {
        Ok(_) => {}
        Err(e) if existing_is_ours && e.as_service_error().is_some_and(|se| se.is_resource_in_use_exception()) => {}
        Err(e) => {
            return Err(StoreError::unavailable(format!(
                "CreateTable {name}: {}",
                DisplayErrorContext(&e)
            )));
        }
    }
    wait_active(client, name).await?;
    enable_ttl(client, name).await;
    Ok(())
}

/// Creates the table unless a table of that name exists already (the local stack's start-up).
pub async fn ensure_table(client: &Client, name: &str) -> Result<bool, StoreError> {
    match client.describe_table().table_name(name).send().await {
        Ok(_) => Ok(false),
        Err(e)
            if e.as_service_error()
                .is_some_and(|se| se.is_resource_not_found_exception()) =>
        {
            create(client, name, true).await.map(|()| true)
        }
        Err(e) => Err(StoreError::unavailable(format!(
            "DescribeTable {name}: {}",
            DisplayErrorContext(&e)
        ))),
    }
}

async fn wait_active(client: &Client, name: &str) -> Result<(), StoreError> {
    for _ in 0..600 {
        let out = client
            .describe_table()
            .table_name(name)
            .send()
            .await
            .map_err(|e| StoreError::unavailable(format!("DescribeTable {name}: {}", DisplayErrorContext(&e))))?;
        let table = out.table();
        let active = table.and_then(|t| t.table_status()) == Some(&TableStatus::Active);
        let gsis_active = table.is_some_and(|t| {
            t.global_secondary_indexes()
                .iter()
                .all(|g| g.index_status().is_none_or(|s| s.as_str() == "ACTIVE"))
        });
        if active && gsis_active {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(StoreError::unavailable(format!("table {name} did not become active")))
}

async fn enable_ttl(client: &Client, name: &str) {
    let spec = match TimeToLiveSpecification::builder()
        .enabled(true)
        .attribute_name(TTL_ATTRIBUTE)
        .build()
    {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "TTL specification");
            return;
        }
    };
    if let Err(e) = client
        .update_time_to_live()
        .table_name(name)
        .time_to_live_specification(spec)
        .send()
        .await
    {
        tracing::warn!(table = name, error = %DisplayErrorContext(&e), "TTL not enabled; this store may not support it");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `template.yaml` declares for one index, read from its text (the template's `!Ref`
    /// tags keep a plain YAML parser out).
    fn template_indexes() -> Vec<(String, String, String, Option<Vec<String>>)> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../template.yaml");
        let text = std::fs::read_to_string(path).expect("template.yaml");
        let section = text
            .split("GlobalSecondaryIndexes:")
            .nth(1)
            .expect("GlobalSecondaryIndexes")
            .split("StreamSpecification:")
            .next()
            .unwrap();
        let attr = |block: &str, kind: &str| {
            block
                .lines()
                .find(|l| l.contains(&format!("KeyType: {kind}")))
                .and_then(|l| l.split("AttributeName:").nth(1))
                .and_then(|r| r.split(',').next())
                .map(|s| s.trim().to_string())
                .expect("key attribute")
        };
        section
            .split("- IndexName:")
            .skip(1)
            .map(|block| {
                let name = block.lines().next().unwrap().trim().to_string();
                let include = block.contains("INCLUDE").then(|| {
                    block
                        .split("NonKeyAttributes:")
                        .nth(1)
                        .and_then(|r| r.split('[').nth(1))
                        .and_then(|r| r.split(']').next())
                        .expect("NonKeyAttributes")
                        .split(',')
                        .map(|a| a.trim().to_string())
                        .collect()
                });
                if include.is_none() {
                    assert!(block.contains("KEYS_ONLY"), "{name}: neither KEYS_ONLY nor INCLUDE");
                }
                (name, attr(block, "HASH"), attr(block, "RANGE"), include)
            })
            .collect()
    }

    #[test]
    fn the_template_declares_the_indexes_the_adapter_creates() {
        let ours: Vec<_> = INDEXES
            .iter()
            .map(|d| {
                (
                    d.name.to_string(),
                    d.partition_key.to_string(),
                    d.sort_key.to_string(),
                    d.include.map(|a| a.iter().map(|s| s.to_string()).collect()),
                )
            })
            .collect();
        assert_eq!(template_indexes(), ours);
    }
}
