//! The table: keys `pk`/`sk`, three GSIs (projection ALL), on-demand, stream with new and old
//! images, TTL on `expiresAt`. The template (`template.yaml`) must declare the same.

use crate::items::{GSI1, GSI2, GSI3, TTL_ATTRIBUTE};
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

fn gsi(name: &str, pk: &str, sk: &str) -> Result<GlobalSecondaryIndex, StoreError> {
    GlobalSecondaryIndex::builder()
        .index_name(name)
        .key_schema(key(pk, KeyType::Hash)?)
        .key_schema(key(sk, KeyType::Range)?)
        .projection(Projection::builder().projection_type(ProjectionType::All).build())
        .build()
        .map_err(bad)
}

/// Creates the table exactly as the service uses it and waits until it is active, then enables
/// TTL (stores without TTL support are tolerated: a warning, not an error).
pub async fn create_table(client: &Client, name: &str) -> Result<(), StoreError> {
    let mut req = client
        .create_table()
        .table_name(name)
        .billing_mode(BillingMode::PayPerRequest)
        .key_schema(key("pk", KeyType::Hash)?)
        .key_schema(key("sk", KeyType::Range)?)
        .global_secondary_indexes(gsi(GSI1, "gsi1pk", "gsi1sk")?)
        .global_secondary_indexes(gsi(GSI2, "gsi2pk", "gsi2sk")?)
        .global_secondary_indexes(gsi(GSI3, "gsi3pk", "gsi3sk")?)
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
    req.send()
        .await
        .map_err(|e| StoreError::unavailable(format!("CreateTable {name}: {}", DisplayErrorContext(&e))))?;
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
            create_table(client, name).await.map(|()| true)
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
