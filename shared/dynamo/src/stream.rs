//! The table stream: decoding the records Lambda delivers into [`Change`]s. (Reading the stream
//! through the Streams API, for the local stack, lives in `tail`, behind the `local` feature.)

use crate::items::{self, AgentItem, Kind, SessionItem, TaskItem};
use opscore_core::store::{Change, StoreError};
use serde_dynamo::Item;
use std::sync::Arc;

pub(crate) fn non_empty(i: &Item) -> Option<&Item> {
    (!i.is_empty()).then_some(i)
}

fn kind_of_record(keys: Option<&Item>, new: Option<&Item>, old: Option<&Item>) -> Kind {
    for img in [keys, new, old].into_iter().flatten() {
        if let (Some(pk), Some(sk)) = (items::key_string(img, items::PK), items::key_string(img, items::SK)) {
            return items::kind_of(&pk, &sk);
        }
    }
    Kind::Unknown
}

fn image<T, U>(
    img: Option<&Item>,
    what: &str,
    f: impl Fn(T) -> Result<U, StoreError>,
) -> Result<Option<Arc<U>>, StoreError>
where
    T: serde::de::DeserializeOwned,
{
    match img {
        None => Ok(None),
        Some(i) => Ok(Some(Arc::new(f(items::decode(i.clone(), what)?)?))),
    }
}

fn agent_image(img: Option<&Item>) -> Result<Option<Arc<opscore_core::agent::Agent>>, StoreError> {
    match img {
        None => Ok(None),
        Some(i) => Ok(Some(Arc::new(AgentItem::from_item(i.clone(), "agent")?.into_agent()?))),
    }
}

/// Decodes the images of one record. Agents, sessions and tasks become a [`Change`]; every
/// other item (history, idle-agents entries, workflow definitions, idempotency keys, delivery records) is `None`.
pub fn decode_images(
    keys: Option<&Item>,
    new: Option<&Item>,
    old: Option<&Item>,
) -> Result<Option<Change>, StoreError> {
    Ok(match kind_of_record(keys, new, old) {
        Kind::Agent => Some(Change::Agent {
            old: agent_image(old)?,
            new: agent_image(new)?,
        }),
        Kind::Session => Some(Change::Session {
            old: image(old, "session", |s: SessionItem| Ok(s.into_session()))?,
            new: image(new, "session", |s: SessionItem| Ok(s.into_session()))?,
        }),
        Kind::Task => Some(Change::Task {
            old: image(old, "task", |t: TaskItem| Ok(t.into_task()))?,
            new: image(new, "task", |t: TaskItem| Ok(t.into_task()))?,
        }),
        Kind::History | Kind::IdleAgent | Kind::Workflow | Kind::Idempotency | Kind::Delivery | Kind::Unknown => None,
    })
}

/// A record of a DynamoDB stream event delivered to Lambda.
pub fn decode_stream_record(r: &aws_lambda_events::event::dynamodb::EventRecord) -> Result<Option<Change>, StoreError> {
    let c = &r.change;
    decode_images(non_empty(&c.keys), non_empty(&c.new_image), non_empty(&c.old_image))
}
