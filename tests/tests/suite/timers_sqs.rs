//! Precise timers through SQS, on real components: moto's server (a real SQS, per-message
//! delays included) started here, the runner's SQS adapter sending the wake-ups, and the workflow
//! runner's Lambda handler (`handle_runner_event`, what the function's `main` calls) fed the
//! messages received from the queue in the event format of Lambda's SQS event source mapping —
//! moto implements the queue, not the trigger, so the test plays the event source mapping:
//! receive, invoke, delete what the response does not report as failed.
//!
//! The Lambda SQS fixtures in `events/` are replayed here too (they need no server).

use aws_sdk_sqs::types::MessageSystemAttributeName;
use opscore_core::agent::{StateName, StateReport};
use opscore_core::app::{App, DefinitionSource, Settings};
use opscore_core::ids::AgentId;
use opscore_core::memory::InMemoryStore;
use opscore_core::runner::Runner;
use opscore_core::store::{Change, Store, Write};
use opscore_core::task::{TaskInstance, TaskStatus};
use opscore_core::time::{Clock, SystemClock, after};
use opscore_core::workflow::WorkflowDefinition;
use opscore_dynamo::StreamTail;
use opscore_lambda::handle_runner_event;
use opscore_lambda::timers::SqsTimerQueue;
use opscore_tests::fake::{ScriptedAgentKit, agent_details};
use opscore_tests::moto::{MotoServer, lambda_sqs_event};
use opscore_tests::stores;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn one_step() -> DefinitionSource {
    DefinitionSource::Inline(Box::new(
        WorkflowDefinition::from_value(json!({"id":"timers","name":"Timers","version":"1",
            "tasks":[{"taskId":"only","name":"Only","parameters":{},"nextTaskId":null}]}))
        .unwrap(),
    ))
}

/// A queue on `moto` and the event source mapping's side of it.
struct TimerQueueUnderTest {
    client: aws_sdk_sqs::Client,
    url: String,
    name: String,
}

impl TimerQueueUnderTest {
    async fn new(moto: &MotoServer) -> Self {
        let name = format!("timers-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let url = moto.create_queue(&name).await;
        Self {
            client: moto.sqs_client().await,
            url,
            name,
        }
    }

    fn adapter(&self) -> SqsTimerQueue {
        SqsTimerQueue::new(self.client.clone(), &self.url)
    }

    /// One poll of the event source mapping: receive what is visible (waiting up to 1 s), hand it
    /// to the runner's handler as a Lambda SQS event, delete the messages the response does not
    /// report as failed. Returns the event and the response (`None` when nothing arrived).
    async fn poll_into(&self, runner: &Runner) -> Option<(Value, Value)> {
        let out = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .send()
            .await
            .unwrap();
        let messages = out.messages();
        if messages.is_empty() {
            return None;
        }
        let event = lambda_sqs_event(messages, &self.name);
        let response = handle_runner_event(runner, event.clone()).await.unwrap();
        let failed: Vec<&str> = response["batchItemFailures"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["itemIdentifier"].as_str().unwrap())
            .collect();
        for m in messages {
            if !failed.contains(&m.message_id().unwrap()) {
                self.client
                    .delete_message()
                    .queue_url(&self.url)
                    .receipt_handle(m.receipt_handle().unwrap())
                    .send()
                    .await
                    .unwrap();
            }
        }
        Some((event, response))
    }
}

fn bodies(event: &Value) -> Vec<Value> {
    event["Records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| serde_json::from_str(r["body"].as_str().unwrap()).unwrap_or(Value::Null))
        .collect()
}

/// The writes the runner makes when an attempt fails and is retried after `backoff` (what
/// `Runner::fail_writes` commits, with the backoff fixed instead of drawn at random).
fn retry_writes(task: &TaskInstance, now: chrono::DateTime<chrono::Utc>, backoff: Duration) -> Vec<Write> {
    let due_at = after(now, backoff);
    let next = task
        .retry_later(
            now,
            "AgentKit answered 503",
            due_at,
            after(due_at, Duration::from_secs(600)),
        )
        .unwrap();
    vec![
        Write::ReleaseAgent {
            agent_id: task.agent_id.clone(),
            dispatch: task.current_dispatch().unwrap(),
        },
        Write::TransitionTask {
            from: task.status,
            next,
        },
    ]
}

async fn idle_agent(app: &App, name: &str) -> AgentId {
    let agent = AgentId::parse(format!("{name}-{}", uuid::Uuid::new_v4())).unwrap();
    app.register_agent(agent_details(&agent, name)).await.unwrap();
    app.report_state(&StateReport {
        agent_id: agent.clone(),
        state: StateName::parse("idle").unwrap(),
        details: None,
        timestamp: chrono::Utc::now(),
    })
    .await
    .unwrap();
    agent
}

/// What Lambda's DynamoDB event source mapping does: the stream's new records, as one batch, into
/// the runner's handler.
async fn stream_into(runner: &Runner, tail: &mut StreamTail) {
    let records = tail.poll_records().await.unwrap();
    let event = opscore_dynamo::lambda_event(&records, tail.stream_arn());
    let response = handle_runner_event(runner, event).await.unwrap();
    assert_eq!(response, json!({"batchItemFailures": []}));
}

/// The "done when": a retry scheduled 3 s ahead is redispatched 3–5 s later through the
/// SQS path. DynamoDB Local's stream carries the retry's change to the runner's stream handler,
/// which arms the wake-up on the queue (`DelaySeconds` 3); the queue delivers it; the runner's SQS
/// handler redispatches the task. (A behaviour bound with a second of slack, not a benchmark.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(all(feature = "dynamodb-local", feature = "moto")),
    ignore = "needs moto's server and DynamoDB Local: --features opscore-tests/dynamodb-local,opscore-tests/moto"
)]
async fn a_retry_scheduled_3_s_ahead_is_redispatched_3_to_5_s_later_through_sqs() {
    let moto = MotoServer::start().await;
    let queue = TimerQueueUnderTest::new(&moto).await;
    let fx = stores::dynamodb_local().await;
    let dynamo = fx.dynamo();
    let mut tail = StreamTail::start(dynamo.streams_client().await, &dynamo.table)
        .await
        .unwrap();
    let store: Arc<dyn Store> = fx.store.clone();
    let agentkit = Arc::new(ScriptedAgentKit::default());
    let app = App::new(store.clone(), Arc::new(SystemClock), Settings::default());
    let runner = Runner::new(
        store.clone(),
        Arc::new(SystemClock),
        agentkit.clone(),
        Settings::default(),
    )
    .with_timer_queue(Arc::new(queue.adapter()));

    // The first attempt is dispatched from the stream.
    let agent = idle_agent(&app, "timers").await;
    let session = app.trigger(&agent, one_step(), None, None).await.unwrap().session_id;
    for _ in 0..3 {
        stream_into(&runner, &mut tail).await;
    }
    assert_eq!(agentkit.seen.lock().unwrap().len(), 1);
    let task = store.get_session(&session).await.unwrap().unwrap().tasks.remove(0);
    assert_eq!((task.status, task.attempt), (TaskStatus::Dispatched, 1), "{task:?}");

    // The attempt fails and is retried 3 s later; the change goes through the stream handler.
    let scheduled = Instant::now();
    let now = SystemClock.now();
    store
        .commit(retry_writes(&task, now, Duration::from_secs(3)))
        .await
        .unwrap();
    stream_into(&runner, &mut tail).await;
    let retry = store.get_task(&task.key()).await.unwrap().unwrap();
    assert_eq!(retry.status, TaskStatus::Pending);
    assert_eq!(
        agentkit.seen.lock().unwrap().len(),
        1,
        "not redispatched before it is due"
    );

    // The event source mapping's part, until the task is dispatched again.
    let mut delivered = Vec::new();
    while agentkit.seen.lock().unwrap().len() < 2 {
        assert!(
            scheduled.elapsed() < Duration::from_secs(15),
            "no redispatch within 15 s"
        );
        if let Some((event, response)) = queue.poll_into(&runner).await {
            assert_eq!(response, json!({"batchItemFailures": []}), "{event}");
            delivered.push(event);
        }
    }
    let took = scheduled.elapsed();
    println!("retry scheduled 3 s ahead: redispatched through SQS after {took:.2?}");
    assert!(
        (Duration::from_secs(3)..=Duration::from_secs(5)).contains(&took),
        "redispatched after {took:?}, expected 3–5 s"
    );
    let seen = agentkit.seen.lock().unwrap().clone();
    assert_eq!(seen[1].dispatch_id, format!("{session}:only:2"), "the second attempt");
    let woke = delivered.iter().flat_map(bodies).collect::<Vec<_>>();
    assert!(
        woke.iter()
            .any(|b| b["timerAt"] == opscore_core::time::render(retry.due_at) && b["attempt"] == 1),
        "the wake-up named the retry's due time: {woke:?}"
    );

    // SQS delivers at least once: the same wake-ups again change nothing.
    for event in &delivered {
        let response = handle_runner_event(&runner, event.clone()).await.unwrap();
        assert_eq!(response, json!({"batchItemFailures": []}));
    }
    assert_eq!(agentkit.seen.lock().unwrap().len(), 2, "no second redispatch");
    drop(moto);
}

/// A timer further ahead than the queue's longest delay: its wake-up arrives early and is sent
/// again for the time left until the timer is due (here the longest delay is 1 s, for a timer
/// 3 s ahead). On the in-memory store: the queue is what is under test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(feature = "moto"), ignore = "needs moto's server: --features opscore-tests/moto")]
async fn an_early_wake_up_is_rearmed_on_the_queue_until_the_timer_is_due() {
    let moto = MotoServer::start().await;
    let queue = TimerQueueUnderTest::new(&moto).await;
    let (store, mut changes) = InMemoryStore::with_changes();
    let store: Arc<dyn Store> = Arc::new(store);
    let agentkit = Arc::new(ScriptedAgentKit::default());
    let app = App::new(store.clone(), Arc::new(SystemClock), Settings::default());
    let runner = Runner::new(
        store.clone(),
        Arc::new(SystemClock),
        agentkit.clone(),
        Settings::default(),
    )
    .with_timer_queue(Arc::new(queue.adapter().with_max_delay(Duration::from_secs(1))));
    let agent = idle_agent(&app, "rearm").await;
    let session = app.trigger(&agent, one_step(), None, None).await.unwrap().session_id;
    let pump = async |changes: &mut tokio::sync::mpsc::UnboundedReceiver<Change>| {
        while let Ok(c) = changes.try_recv() {
            runner.on_change(&c).await.unwrap();
        }
    };
    pump(&mut changes).await;
    let task = store.get_session(&session).await.unwrap().unwrap().tasks.remove(0);
    let now = SystemClock.now();
    store
        .commit(retry_writes(&task, now, Duration::from_secs(3)))
        .await
        .unwrap();
    let due_at = store.get_task(&task.key()).await.unwrap().unwrap().due_at;
    // The stream's part: the retry's change arms its wake-up.
    pump(&mut changes).await;

    let mut early = 0;
    while agentkit.seen.lock().unwrap().len() < 2 {
        assert!(
            SystemClock.now() < due_at + chrono::Duration::seconds(10),
            "no redispatch"
        );
        if let Some((event, _)) = queue.poll_into(&runner).await {
            for body in bodies(&event) {
                let timer_at = opscore_core::time::parse_rfc3339(body["timerAt"].as_str().unwrap()).unwrap();
                if timer_at == due_at && SystemClock.now() < due_at {
                    early += 1;
                }
            }
        }
    }
    assert!(SystemClock.now() >= due_at, "never dispatched before its due time");
    assert!(
        early >= 1,
        "the 1 s wake-ups of a 3 s timer arrived early and were re-armed"
    );
    drop(moto);
}

/// A batch with one message that is not a wake-up: that one message is reported (partial batch
/// response), the others are handled and deleted; what is left on the queue is that one message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(feature = "moto"), ignore = "needs moto's server: --features opscore-tests/moto")]
async fn a_message_that_is_not_a_wake_up_is_the_only_one_reported_failed() {
    let moto = MotoServer::start().await;
    let queue = TimerQueueUnderTest::new(&moto).await;
    let store: Arc<dyn Store> = Arc::new(InMemoryStore::new());
    let runner = Runner::new(
        store,
        Arc::new(SystemClock),
        Arc::new(ScriptedAgentKit::default()),
        Settings::default(),
    )
    .with_timer_queue(Arc::new(queue.adapter()));
    let gone = json!({"sessionId": uuid::Uuid::new_v4().to_string(), "taskId": "only", "attempt": 1,
                      "timerAt": opscore_core::time::render(SystemClock.now())});
    for body in [gone.to_string(), "{\"not\":\"a wake-up\"}".to_owned(), gone.to_string()] {
        queue
            .client
            .send_message()
            .queue_url(&queue.url)
            .message_body(body)
            .send()
            .await
            .unwrap();
    }
    let mut seen = 0;
    let mut failed = Vec::new();
    let started = Instant::now();
    while seen < 3 && started.elapsed() < Duration::from_secs(10) {
        if let Some((event, response)) = queue.poll_into(&runner).await {
            let records = event["Records"].as_array().unwrap();
            seen += records.len();
            for f in response["batchItemFailures"].as_array().unwrap() {
                let id = f["itemIdentifier"].as_str().unwrap();
                let record = records.iter().find(|r| r["messageId"] == id).unwrap();
                failed.push(record["body"].as_str().unwrap().to_owned());
            }
        }
    }
    assert_eq!(seen, 3);
    assert_eq!(failed, vec!["{\"not\":\"a wake-up\"}"]);
    drop(moto);
}

fn events_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../events")
}

/// The SQS fixtures `sam local invoke` runs (events/sam-invocations.txt), through the same handler
/// in process: wake-ups for unknown tasks are done, a body that is not a wake-up is the one failure.
#[tokio::test]
async fn the_sqs_fixtures_answer_the_batch_item_failures_they_are_listed_with() {
    let store: Arc<dyn Store> = Arc::new(InMemoryStore::new());
    let runner = Runner::new(
        store,
        Arc::new(SystemClock),
        Arc::new(ScriptedAgentKit::default()),
        Settings::default(),
    );
    let listed = std::fs::read_to_string(events_dir().join("sam-invocations.txt")).unwrap();
    let mut checked = 0;
    for line in listed.lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        let [function, fixture, expected] = parts[..] else {
            continue;
        };
        let Some(ids) = expected.strip_prefix("failures=") else {
            continue;
        };
        assert_eq!(function, "WorkflowRunnerFunction");
        let event: Value = serde_json::from_str(&std::fs::read_to_string(events_dir().join(fixture)).unwrap()).unwrap();
        let response = handle_runner_event(&runner, event).await.unwrap();
        let got: Vec<&str> = response["batchItemFailures"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["itemIdentifier"].as_str().unwrap())
            .collect();
        let want: Vec<&str> = ids.split(',').filter(|s| !s.is_empty()).collect();
        assert_eq!(got, want, "{fixture}");
        checked += 1;
    }
    assert!(checked >= 2, "the SQS fixtures are listed in sam-invocations.txt");
}
