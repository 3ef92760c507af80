//! Precise timers through a delay queue, in process: the runner arms a wake-up for every new task
//! timer it sees in a change, and a wake-up handles exactly the timer it names — a due one as the
//! sweep would, an early one is re-armed, one for a task that moved on does nothing. Time is a
//! manual clock; the queue records what was sent (tests/tests/suite/timers_sqs.rs does the same
//! against a real SQS).

use opscore_core::app::DefinitionSource;
use opscore_core::runner::DispatchOutcome;
use opscore_core::task::{TaskInstance, TaskStatus};
use opscore_core::testing::{EngineWorld, RecordedTimerQueue};
use opscore_core::time::Clock;
use opscore_core::wake_up::{WakeUp, WakeUpOutcome};
use opscore_core::workflow::WorkflowDefinition;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// The engine's world with a recorded timer queue, its agent idle.
struct World {
    engine: EngineWorld,
    queue: Arc<RecordedTimerQueue>,
}

impl std::ops::Deref for World {
    type Target = EngineWorld;
    fn deref(&self) -> &EngineWorld {
        &self.engine
    }
}

impl std::ops::DerefMut for World {
    fn deref_mut(&mut self) -> &mut EngineWorld {
        &mut self.engine
    }
}

impl World {
    async fn new(queue: RecordedTimerQueue) -> Self {
        let queue = Arc::new(queue);
        let armed = queue.clone();
        let mut engine = EngineWorld::with(|app, runner| (app, runner.with_timer_queue(armed))).await;
        engine.report("idle", None).await;
        Self { engine, queue }
    }

    /// Feeds every pending change to the runner (a stream consumer).
    async fn pump(&mut self) {
        self.engine.pump().await.unwrap();
    }

    /// Triggers a one-task workflow whose first dispatch fails (AgentKit 503): the runner
    /// schedules a retry. Returns the pending task.
    async fn retrying_task(&mut self) -> TaskInstance {
        self.agentkit.script.lock().unwrap().push_back(DispatchOutcome::Failed {
            retryable: true,
            reason: "AgentKit answered 503".into(),
        });
        let def = WorkflowDefinition::from_value(json!({"id":"w","name":"W","version":"1",
            "retryPolicy":{"maxRetries":3,"baseDelaySeconds":8,"maxDelaySeconds":8},
            "tasks":[{"taskId":"only","name":"Only","parameters":{},"nextTaskId":null}]}))
        .unwrap();
        let session = self
            .app
            .trigger(&self.agent, DefinitionSource::Inline(Box::new(def)), None, None)
            .await
            .unwrap()
            .session_id;
        self.pump().await;
        let view = self.store.get_session(&session).await.unwrap().unwrap();
        let task = view.tasks.into_iter().next().unwrap();
        assert_eq!((task.status, task.attempt), (TaskStatus::Pending, 1), "{task:?}");
        task
    }

    /// Triggers a one-task workflow whose runner "dies" right after its claim: the task stays
    /// dispatched under a lease.
    async fn claimed_by_a_dead_runner(&mut self) -> (opscore_core::ids::SessionId, TaskInstance) {
        self.runner.inject_fault(opscore_core::runner::Step::AfterClaim);
        let def = WorkflowDefinition::from_value(json!({"id":"w","name":"W","version":"1",
            "tasks":[{"taskId":"only","name":"Only","parameters":{},"nextTaskId":null}]}))
        .unwrap();
        let session = self
            .app
            .trigger(&self.agent, DefinitionSource::Inline(Box::new(def)), None, None)
            .await
            .unwrap()
            .session_id;
        while let Ok(c) = self.changes.try_recv() {
            // The change whose handling "died" fails; the others go through.
            let _ = self.runner.on_change(&c).await;
        }
        let task = self.store.get_session(&session).await.unwrap().unwrap().tasks.remove(0);
        assert_eq!(task.status, TaskStatus::Dispatched);
        (session, task)
    }

    fn advance_to(&self, t: chrono::DateTime<chrono::Utc>) {
        self.clock.set(t);
    }
}

#[tokio::test]
async fn a_retry_is_armed_for_its_due_time_and_redispatched_by_its_wake_up_once() {
    let mut w = World::new(RecordedTimerQueue::new()).await;
    let task = w.retrying_task().await;
    let retry = WakeUp::for_task(&task).unwrap();
    assert_eq!(retry.timer_at, task.due_at, "a pending retry's timer is its due time");
    let sent = w.queue.take();
    let (armed, delay) = sent.last().expect("wake-ups were sent").clone();
    assert_eq!(armed, retry, "the retry's change armed a wake-up for it: {sent:?}");
    let left = (task.due_at - w.clock.now()).to_std().unwrap_or_default();
    assert!(
        delay >= left && delay < left + Duration::from_secs(1),
        "{delay:?} for {left:?}"
    );
    assert_eq!(w.agentkit.seen.lock().unwrap().len(), 1);

    // Delivered when due: the task is dispatched again (attempt 2).
    w.advance_to(retry.timer_at);
    assert_eq!(w.runner.on_wake_up(&retry).await.unwrap(), WakeUpOutcome::Handled);
    assert_eq!(w.agentkit.seen.lock().unwrap().len(), 2);
    w.pump().await;

    // Delivered again (SQS is at-least-once): the task moved on, nothing happens.
    assert_eq!(w.runner.on_wake_up(&retry).await.unwrap(), WakeUpOutcome::MovedOn);
    assert_eq!(w.agentkit.seen.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn a_timer_beyond_the_longest_delay_is_rearmed_until_due() {
    // A claim's lease (30 s in tests) on a queue whose longest delay is 10 s.
    let mut w = World::new(RecordedTimerQueue::with_max_delay(Duration::from_secs(10))).await;
    let (session, task) = w.claimed_by_a_dead_runner().await;
    let start = w.clock.now();
    assert_eq!(task.lease_expires_at, Some(start + chrono::Duration::seconds(30)));
    let lease = WakeUp::for_task(&task).unwrap();
    let sent = w.queue.take();
    assert!(
        sent.contains(&(lease.clone(), Duration::from_secs(10))),
        "capped: {sent:?}"
    );
    let mut hops = 0;
    loop {
        w.advance_to(start + chrono::Duration::seconds(10 * (hops + 1)));
        match w.runner.on_wake_up(&lease).await.unwrap() {
            WakeUpOutcome::Rearmed => {
                assert_eq!(w.queue.take(), vec![(lease.clone(), Duration::from_secs(10))]);
                hops += 1;
            }
            WakeUpOutcome::Handled => break,
            other => panic!("{other:?}"),
        }
        assert!(hops < 10);
    }
    assert_eq!(hops, 2, "early at 10 s and 20 s, handled at 30 s");
    let after = w.store.get_session(&session).await.unwrap().unwrap().tasks.remove(0);
    assert_eq!(
        after.status,
        TaskStatus::Pending,
        "the attempt failed and a retry is scheduled"
    );
}

#[tokio::test]
async fn a_wake_up_for_a_timer_the_task_no_longer_has_does_nothing() {
    let mut w = World::new(RecordedTimerQueue::new()).await;
    let task = w.retrying_task().await;
    let mut stale = WakeUp::for_task(&task).unwrap();
    stale.timer_at -= chrono::Duration::seconds(1);
    w.advance_to(task.due_at);
    assert_eq!(w.runner.on_wake_up(&stale).await.unwrap(), WakeUpOutcome::MovedOn);
    let mut other_attempt = WakeUp::for_task(&task).unwrap();
    other_attempt.attempt = 7;
    assert_eq!(
        w.runner.on_wake_up(&other_attempt).await.unwrap(),
        WakeUpOutcome::MovedOn
    );
    let mut unknown = WakeUp::for_task(&task).unwrap();
    unknown.session_id = opscore_core::ids::SessionId::new();
    assert_eq!(w.runner.on_wake_up(&unknown).await.unwrap(), WakeUpOutcome::MovedOn);
    assert_eq!(
        w.agentkit.seen.lock().unwrap().len(),
        1,
        "no dispatch from a stale wake-up"
    );
}

#[tokio::test]
async fn an_expired_lease_is_acted_on_by_its_wake_up() {
    let mut w = World::new(RecordedTimerQueue::new()).await;
    let (session, task) = w.claimed_by_a_dead_runner().await;
    let lease = WakeUp::for_task(&task).unwrap();
    assert_eq!(Some(lease.timer_at), task.lease_expires_at);
    assert!(
        w.queue.take().iter().any(|(s, _)| *s == lease),
        "the claim armed its lease"
    );
    w.advance_to(lease.timer_at);
    assert_eq!(w.runner.on_wake_up(&lease).await.unwrap(), WakeUpOutcome::Handled);
    let after = w.store.get_session(&session).await.unwrap().unwrap().tasks.remove(0);
    assert_eq!(
        after.status,
        TaskStatus::Pending,
        "the attempt failed and a retry is scheduled"
    );
    assert_eq!(after.attempt, 1);
}
