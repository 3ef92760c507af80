//! [`StreamTail`], a follower of the table's stream through the DynamoDB Streams API: the local
//! stack's stand-in for Lambda's event source mapping. Not linked into the Lambda functions.

use crate::stream::decode_images;
use aws_sdk_dynamodbstreams::Client as StreamsClient;
use aws_sdk_dynamodbstreams::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_dynamodbstreams::types::{Record, ShardIteratorType};
use opscore_core::store::{Change, StoreError};
use serde_dynamo::Item;
use std::collections::HashSet;
use std::time::{Duration, Instant};

/// A record read with the DynamoDB Streams API.
pub fn decode_streams_api_record(r: &aws_sdk_dynamodbstreams::types::Record) -> Result<Option<Change>, StoreError> {
    let Some(c) = r.dynamodb() else {
        return Ok(None);
    };
    let conv = |m: Option<&std::collections::HashMap<String, aws_sdk_dynamodbstreams::types::AttributeValue>>| {
        m.filter(|m| !m.is_empty()).map(|m| Item::from(m.clone()))
    };
    let (keys, new, old) = (conv(c.keys()), conv(c.new_image()), conv(c.old_image()));
    decode_images(keys.as_ref(), new.as_ref(), old.as_ref())
}

struct ShardCursor {
    id: String,
    iterator: Option<String>,
    last_sequence: Option<String>,
}

/// Follows the table's stream through the Streams API (the local stack's stand-in for the Lambda
/// event source mapping). Shards open at start are read from `LATEST`; shards that appear later
/// (a split, a rotation) from `TRIM_HORIZON`. A parent shard is always drained before its
/// children, which are discovered only after it.
///
/// [`poll`](Self::poll) costs one `GetRecords` per open shard when nothing changed; the shard list
/// is re-read when a shard closes and otherwise every [`Self::DISCOVERY_INTERVAL`].
pub struct StreamTail {
    client: StreamsClient,
    stream_arn: String,
    shards: Vec<ShardCursor>,
    known: HashSet<String>,
    last_discovery: Instant,
    discovery_interval: Duration,
}

impl std::fmt::Debug for StreamTail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamTail")
            .field("stream_arn", &self.stream_arn)
            .field("open_shards", &self.shards.len())
            .finish_non_exhaustive()
    }
}

fn streams_err<E: std::error::Error + Send + Sync + 'static>(
    op: &str,
    e: aws_sdk_dynamodbstreams::error::SdkError<E>,
) -> StoreError {
    StoreError::unavailable(format!("DynamoDB Streams {op}: {}", DisplayErrorContext(&e)))
}

impl StreamTail {
    pub const DISCOVERY_INTERVAL: Duration = Duration::from_secs(10);

    /// Finds the table's (latest) stream and positions every open shard at its end.
    pub async fn start(client: StreamsClient, table_name: &str) -> Result<Self, StoreError> {
        let out = client
            .list_streams()
            .table_name(table_name)
            .send()
            .await
            .map_err(|e| streams_err("ListStreams", e))?;
        let stream_arn = out
            .streams()
            .iter()
            .filter(|s| s.table_name() == Some(table_name))
            .max_by_key(|s| s.stream_label().unwrap_or_default().to_owned())
            .and_then(|s| s.stream_arn())
            .ok_or_else(|| StoreError::unavailable(format!("table {table_name} has no stream")))?
            .to_owned();
        let mut tail = Self {
            client,
            stream_arn,
            shards: Vec::new(),
            known: HashSet::new(),
            last_discovery: Instant::now(),
            discovery_interval: Self::DISCOVERY_INTERVAL,
        };
        for (id, leaf) in tail.describe().await? {
            tail.known.insert(id.clone());
            if leaf {
                let iterator = tail.iterator(&id, ShardIteratorType::Latest, None).await?;
                tail.shards.push(ShardCursor {
                    id,
                    iterator: Some(iterator),
                    last_sequence: None,
                });
            }
        }
        Ok(tail)
    }

    pub fn with_discovery_interval(mut self, every: Duration) -> Self {
        self.discovery_interval = every;
        self
    }

    pub fn stream_arn(&self) -> &str {
        &self.stream_arn
    }

    /// Every shard of the stream, in the order listed, with whether it is a leaf (no shard names it
    /// as parent). Leaves are the shards being written; an `EndingSequenceNumber` does not say so
    /// reliably (the embedded store sets one on its open shard).
    async fn describe(&self) -> Result<Vec<(String, bool)>, StoreError> {
        let mut shards: Vec<(String, Option<String>)> = Vec::new();
        let mut start: Option<String> = None;
        loop {
            let resp = self
                .client
                .describe_stream()
                .stream_arn(&self.stream_arn)
                .set_exclusive_start_shard_id(start.take())
                .send()
                .await
                .map_err(|e| streams_err("DescribeStream", e))?;
            let Some(desc) = resp.stream_description() else {
                break;
            };
            for shard in desc.shards() {
                if let Some(id) = shard.shard_id() {
                    shards.push((id.to_owned(), shard.parent_shard_id().map(str::to_owned)));
                }
            }
            match desc.last_evaluated_shard_id() {
                Some(id) if !id.is_empty() => start = Some(id.to_owned()),
                _ => break,
            }
        }
        let parents: HashSet<&str> = shards.iter().filter_map(|(_, p)| p.as_deref()).collect();
        Ok(shards
            .iter()
            .map(|(id, _)| (id.clone(), !parents.contains(id.as_str())))
            .collect())
    }

    async fn iterator(&self, shard: &str, kind: ShardIteratorType, after: Option<&str>) -> Result<String, StoreError> {
        let out = self
            .client
            .get_shard_iterator()
            .stream_arn(&self.stream_arn)
            .shard_id(shard)
            .shard_iterator_type(kind)
            .set_sequence_number(after.map(str::to_owned))
            .send()
            .await
            .map_err(|e| streams_err("GetShardIterator", e))?;
        out.shard_iterator()
            .map(str::to_owned)
            .ok_or_else(|| StoreError::unavailable(format!("no iterator for shard {shard}")))
    }

    /// Adds shards not seen before, read from their start.
    async fn discover(&mut self) -> Result<(), StoreError> {
        self.last_discovery = Instant::now();
        for (id, _leaf) in self.describe().await? {
            if self.known.insert(id.clone()) {
                let iterator = self.iterator(&id, ShardIteratorType::TrimHorizon, None).await?;
                self.shards.push(ShardCursor {
                    id,
                    iterator: Some(iterator),
                    last_sequence: None,
                });
            }
        }
        Ok(())
    }

    /// Reads one shard until it has nothing more (or closes). Records are appended to `out`.
    async fn drain(&mut self, index: usize, out: &mut Vec<Record>) -> Result<(), StoreError> {
        let mut refreshed = false;
        loop {
            let Some(iterator) = self.shards[index].iterator.clone() else {
                return Ok(());
            };
            let resp = match self.client.get_records().shard_iterator(iterator).send().await {
                Ok(r) => r,
                Err(e) => {
                    let code = e.as_service_error().and_then(|se| se.code()).map(str::to_owned);
                    let (kind, after) = match code.as_deref() {
                        Some("ExpiredIteratorException") => match self.shards[index].last_sequence.clone() {
                            Some(seq) => (ShardIteratorType::AfterSequenceNumber, Some(seq)),
                            None => (ShardIteratorType::Latest, None),
                        },
                        Some("TrimmedDataAccessException") => (ShardIteratorType::TrimHorizon, None),
                        _ => return Err(streams_err("GetRecords", e)),
                    };
                    if refreshed {
                        return Err(streams_err("GetRecords", e));
                    }
                    refreshed = true;
                    let id = self.shards[index].id.clone();
                    let it = self.iterator(&id, kind, after.as_deref()).await?;
                    self.shards[index].iterator = Some(it);
                    continue;
                }
            };
            let shard = &mut self.shards[index];
            for record in resp.records() {
                if let Some(seq) = record.dynamodb().and_then(|d| d.sequence_number()) {
                    shard.last_sequence = Some(seq.to_owned());
                }
                out.push(record.clone());
            }
            shard.iterator = resp.next_shard_iterator().map(str::to_owned);
            if resp.records().is_empty() {
                return Ok(());
            }
        }
    }

    /// The changes written since the last poll, in stream order.
    pub async fn poll(&mut self) -> Result<Vec<Change>, StoreError> {
        let records = self.poll_records().await?;
        let mut out = Vec::with_capacity(records.len());
        for record in &records {
            match decode_streams_api_record(record) {
                Ok(Some(change)) => out.push(change),
                Ok(None) => {}
                Err(e) => tracing::error!(error = %e, "undecodable stream record skipped"),
            }
        }
        Ok(out)
    }

    /// The raw stream records written since the last poll, in stream order.
    pub async fn poll_records(&mut self) -> Result<Vec<Record>, StoreError> {
        let mut out = Vec::new();
        if self.shards.is_empty() || self.last_discovery.elapsed() >= self.discovery_interval {
            self.discover().await?;
        }
        let mut rounds = 0;
        loop {
            let mut closed = false;
            for i in 0..self.shards.len() {
                if let Err(e) = self.drain(i, &mut out).await {
                    if out.is_empty() {
                        return Err(e);
                    }
                    // Keep what was read; the failing shard is retried by the next poll.
                    tracing::warn!(error = %e, "stream shard read failed");
                    return Ok(out);
                }
                closed |= self.shards[i].iterator.is_none();
            }
            self.shards.retain(|s| s.iterator.is_some());
            rounds += 1;
            if !closed || rounds > 4 {
                return Ok(out);
            }
            // A shard closed: its children hold what follows.
            self.discover().await?;
        }
    }
}

/// The DynamoDB stream event Lambda would deliver for these Streams API records (the JSON the
/// runner function receives): used to feed real records to the runner under the runtime emulator
/// and to make `sam local invoke` fixtures.
pub fn lambda_event(records: &[Record], event_source_arn: &str) -> serde_json::Value {
    let image = |m: Option<&std::collections::HashMap<String, aws_sdk_dynamodbstreams::types::AttributeValue>>| {
        serde_json::to_value(m.map(|m| Item::from(m.clone())).unwrap_or_default()).unwrap_or_default()
    };
    let records: Vec<serde_json::Value> = records
        .iter()
        .map(|r| {
            let d = r.dynamodb();
            let mut change = serde_json::json!({
                "ApproximateCreationDateTime": d.and_then(|d| d.approximate_creation_date_time()).map(|t| t.secs()).unwrap_or_default(),
                "Keys": image(d.and_then(|d| d.keys())),
                "SequenceNumber": d.and_then(|d| d.sequence_number()),
                "SizeBytes": d.and_then(|d| d.size_bytes()).unwrap_or_default(),
                "StreamViewType": "NEW_AND_OLD_IMAGES",
            });
            if let Some(new) = d.and_then(|d| d.new_image()) {
                change["NewImage"] = image(Some(new));
            }
            if let Some(old) = d.and_then(|d| d.old_image()) {
                change["OldImage"] = image(Some(old));
            }
            serde_json::json!({
                "eventID": r.event_id(),
                "eventName": r.event_name().map(|n| n.as_str()),
                "eventVersion": r.event_version().unwrap_or("1.1"),
                "eventSource": "aws:dynamodb",
                "awsRegion": r.aws_region().unwrap_or("us-east-1"),
                "dynamodb": change,
                "eventSourceARN": event_source_arn,
            })
        })
        .collect();
    serde_json::json!({ "Records": records })
}
