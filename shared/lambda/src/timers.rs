//! Precise timers on AWS: the SQS adapter of the core's [`TimerQueue`] port, and the runner's
//! handler for the SQS batches the queue's event source mapping delivers.
//!
//! A wake-up is an SQS message with a per-message delay (`DelaySeconds`, whole seconds, at most
//! 900): SQS delivers it to the runner about when the task's timer falls due. The runner's
//! handling is idempotent (`Runner::on_wake_up`), so SQS's at-least-once delivery is harmless.

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};
use futures::StreamExt;
use opscore_core::runner::{CONCURRENT_AGENTS, Runner};
use opscore_core::wake_up::{TimerQueue, TimerQueueError, WakeUp};
use std::time::Duration;

/// The longest delay SQS gives one message (`DelaySeconds` ≤ 900).
pub const SQS_MAX_DELAY: Duration = Duration::from_secs(900);

/// Sends wake-ups to one SQS queue.
#[derive(Clone)]
pub struct SqsTimerQueue {
    client: aws_sdk_sqs::Client,
    queue_url: String,
    max_delay: Duration,
}

impl SqsTimerQueue {
    pub fn new(client: aws_sdk_sqs::Client, queue_url: impl Into<String>) -> Self {
        Self {
            client,
            queue_url: queue_url.into(),
            max_delay: SQS_MAX_DELAY,
        }
    }

    /// A shorter longest delay than SQS's (whole seconds, at most 900): lets a test see a timer
    /// re-armed within seconds.
    pub fn with_max_delay(mut self, max_delay: Duration) -> Self {
        self.max_delay = max_delay.min(SQS_MAX_DELAY);
        self
    }

    pub fn queue_url(&self) -> &str {
        &self.queue_url
    }
}

#[async_trait::async_trait]
impl TimerQueue for SqsTimerQueue {
    fn max_delay(&self) -> Duration {
        self.max_delay
    }

    async fn schedule(&self, wake_up: &WakeUp, delay: Duration) -> Result<(), TimerQueueError> {
        let seconds = delay.min(self.max_delay).as_secs();
        self.client
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(wake_up.to_body())
            .delay_seconds(i32::try_from(seconds).unwrap_or(900))
            .send()
            .await
            .map(drop)
            .map_err(|e| TimerQueueError {
                message: aws_sdk_sqs::error::DisplayErrorContext(e).to_string(),
            })
    }
}

/// Handles a batch of wake-ups from the timer queue, concurrently (each is independent: every
/// step is a conditional write). Returns the messages to be retried, by message id (partial batch
/// response, `ReportBatchItemFailures`): one the runner failed on (the store unreachable, a
/// re-arm not sent) comes back after the queue's visibility timeout; one whose body is not a
/// wake-up is reported too, so that after the queue's receive limit it lands in the dead-letter
/// queue where an operator sees it, instead of vanishing. Every other message is deleted by Lambda.
pub async fn handle_wake_up_batch(runner: &Runner, batch: &SqsEvent) -> SqsBatchResponse {
    let failed: Vec<String> = futures::stream::iter(&batch.records)
        .map(|message| async move {
            match handle_one(runner, message).await {
                Ok(()) => None,
                Err(()) => Some(message.message_id.clone().unwrap_or_default()),
            }
        })
        .buffer_unordered(CONCURRENT_AGENTS)
        .filter_map(std::future::ready)
        .collect()
        .await;
    let mut response = SqsBatchResponse::default();
    for id in failed {
        let mut failure = BatchItemFailure::default();
        failure.item_identifier = id;
        response.batch_item_failures.push(failure);
    }
    // In batch order, for readable logs and stable tests.
    let order = |id: &str| batch.records.iter().position(|m| m.message_id.as_deref() == Some(id));
    response.batch_item_failures.sort_by_key(|f| order(&f.item_identifier));
    response
}

async fn handle_one(runner: &Runner, message: &SqsMessage) -> Result<(), ()> {
    let id = message.message_id.as_deref().unwrap_or("");
    let wake_up = match WakeUp::from_body(message.body.as_deref().unwrap_or("")) {
        Ok(w) => w,
        Err(e) => {
            tracing::error!(message_id = %id, error = %e, "not a wake-up; left for the dead-letter queue");
            return Err(());
        }
    };
    match runner.on_wake_up(&wake_up).await {
        Ok(outcome) => {
            tracing::debug!(message_id = %id, session_id = %wake_up.session_id, task_id = %wake_up.task_id, ?outcome, "wake-up");
            Ok(())
        }
        Err(e) => {
            tracing::warn!(message_id = %id, session_id = %wake_up.session_id, task_id = %wake_up.task_id, error = %e, "wake-up failed; SQS redelivers it");
            Err(())
        }
    }
}
