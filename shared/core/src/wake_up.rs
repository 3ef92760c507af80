//! Precise timers: a wake-up message per task timer, delivered by a delay queue (SQS on AWS), so a
//! retry, an expired lease or a deadline is acted on within about a second of its instant instead
//! of at the next one-minute sweep. The sweep stays as the safety net: a wake-up that is lost or
//! could not be sent only makes that timer as late as the sweep.
//!
//! This module is the port ([`TimerQueue`]) and the message ([`WakeUp`]); the runner arms a
//! wake-up when a change gives a task a new timer and handles the wake-ups that arrive
//! ([`crate::runner::Runner::on_wake_up`]). The SQS adapter lives with the Lambda wiring.

use crate::ids::{SessionId, TaskId};
use crate::task::{TaskInstance, TaskKey};
use crate::time::{self, Timestamp};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// "Look at this task's timer at `timer_at`": the body of a wake-up message.
///
/// It names the timer, not just the task, so that a wake-up for a timer the task no longer has
/// (it moved on: claimed, completed, retried with another backoff) does nothing; the change that
/// gave the task its new timer armed a wake-up of its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WakeUp {
    pub session_id: SessionId,
    pub task_id: TaskId,
    /// The attempt the timer belongs to (a retry of another attempt is another timer).
    pub attempt: u32,
    /// The instant the timer falls due, exactly as the task holds it.
    #[serde(with = "time::rfc3339")]
    pub timer_at: Timestamp,
}

impl WakeUp {
    /// The wake-up for `task`'s current timer; `None` when it has none (a terminal task).
    pub fn for_task(task: &TaskInstance) -> Option<Self> {
        Some(Self {
            session_id: task.session_id,
            task_id: task.task_id.clone(),
            attempt: task.attempt,
            timer_at: task.timer_at?,
        })
    }

    pub fn task_key(&self) -> TaskKey {
        TaskKey {
            session_id: self.session_id,
            task_id: self.task_id.clone(),
        }
    }

    /// Whether this wake-up is for the timer `task` has now (same attempt, same instant).
    pub fn is_current_for(&self, task: &TaskInstance) -> bool {
        task.attempt == self.attempt && task.timer_at == Some(self.timer_at)
    }

    /// The message body (JSON).
    pub fn to_body(&self) -> String {
        serde_json::to_string(self).expect("a wake-up serialises")
    }

    /// Reads a message body; the error says what is wrong with it.
    pub fn from_body(body: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(body)
    }
}

/// The delay to give a wake-up for `timer_at` sent at `now`: whole seconds (what SQS counts in),
/// rounded up so the message never arrives before the timer is due, and at most `max` (a longer
/// timer is re-armed when its wake-up arrives early). Zero for a timer already due.
pub fn wake_up_delay(timer_at: Timestamp, now: Timestamp, max: Duration) -> Duration {
    let nanos = (timer_at - now).num_nanoseconds().unwrap_or(i64::MAX);
    if nanos <= 0 {
        return Duration::ZERO;
    }
    let secs = (nanos as u64).div_ceil(1_000_000_000);
    Duration::from_secs(secs).min(max)
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("timer queue: {message}")]
pub struct TimerQueueError {
    pub message: String,
}

/// The port to a delay queue that hands each wake-up back to the runner after its delay.
#[async_trait]
pub trait TimerQueue: Send + Sync + 'static {
    /// The longest delay the queue can give one message (SQS: 15 minutes).
    fn max_delay(&self) -> Duration;
    /// Sends `wake_up`, to be delivered after `delay` (at most [`Self::max_delay`]).
    async fn schedule(&self, wake_up: &WakeUp, delay: Duration) -> Result<(), TimerQueueError>;
}

/// What handling one wake-up came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WakeUpOutcome {
    /// The timer was due: the task was handled as the sweep would handle it.
    Handled,
    /// The timer is not due yet (it was further ahead than the queue's longest delay, or the
    /// clocks disagree by a moment): a new wake-up was sent for the time left.
    Rearmed,
    /// The task no longer has this timer (or no longer exists): nothing to do.
    MovedOn,
    /// Not due yet, and the runner has no queue to re-arm on: the sweep handles it when due.
    LeftToSweep,
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(ms: i64) -> Timestamp {
        chrono::Utc.timestamp_millis_opt(1_800_000_000_000 + ms).unwrap()
    }

    #[test]
    fn the_delay_rounds_up_to_whole_seconds_and_is_capped() {
        let max = Duration::from_secs(900);
        assert_eq!(wake_up_delay(at(3_000), at(0), max), Duration::from_secs(3));
        assert_eq!(wake_up_delay(at(2_001), at(0), max), Duration::from_secs(3));
        assert_eq!(wake_up_delay(at(1), at(0), max), Duration::from_secs(1));
        assert_eq!(wake_up_delay(at(0), at(0), max), Duration::ZERO);
        assert_eq!(wake_up_delay(at(-5_000), at(0), max), Duration::ZERO);
        assert_eq!(wake_up_delay(at(3_600_000), at(0), max), max);
    }

    #[test]
    fn a_wake_up_reads_back_what_it_wrote_and_refuses_anything_else() {
        let w = WakeUp {
            session_id: SessionId::new(),
            task_id: TaskId::parse("t1").unwrap(),
            attempt: 2,
            timer_at: at(1_234) + chrono::Duration::nanoseconds(5),
        };
        assert_eq!(WakeUp::from_body(&w.to_body()).unwrap(), w, "nanoseconds survive");
        assert!(WakeUp::from_body("not json").is_err());
        assert!(
            WakeUp::from_body(r#"{"sessionId":"x","taskId":"t1","attempt":1,"timerAt":"2026-01-01T00:00:00Z"}"#)
                .is_err()
        );
        let mut extra: serde_json::Value = serde_json::from_str(&w.to_body()).unwrap();
        extra["more"] = 1.into();
        assert!(WakeUp::from_body(&extra.to_string()).is_err());
    }
}
