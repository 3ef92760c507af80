//! The workflow engine in process, for tests: a scripted AgentKit (the runner's `Dispatcher`
//! port), a test agent's registration, and an App and a Runner on one store and one manual
//! clock. Behind the `testing` feature (on for this crate's own tests and for `opscore-tests`), so
//! the engine scenarios (`shared/core/tests/engine.rs`) build without the AWS SDK.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// AgentKit as the runner's `Dispatcher` port sees it, in process: records every dispatch and
/// answers from a script (then 202 for ever). For engine tests that need no HTTP.
#[derive(Default)]
pub struct ScriptedAgentKit {
    pub script: Mutex<VecDeque<crate::runner::DispatchOutcome>>,
    pub seen: Mutex<Vec<crate::runner::DispatchRequest>>,
}

#[async_trait::async_trait]
impl crate::runner::Dispatcher for ScriptedAgentKit {
    async fn dispatch(&self, req: &crate::runner::DispatchRequest) -> crate::runner::DispatchOutcome {
        self.seen.lock().unwrap().push(req.clone());
        self.script
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(crate::runner::DispatchOutcome::Accepted)
    }
}

/// Registration details of a test agent (what a REGISTER webhook would carry). The contact
/// endpoint is a closed port: the runner talks to AgentKit, never to the agent.
pub fn agent_details(id: &crate::ids::AgentId, name: &str) -> crate::agent::AgentDetails {
    crate::agent::AgentDetails {
        agent_id: id.clone(),
        agent_name: name.into(),
        version: "1".into(),
        capabilities: vec![],
        contact_endpoint: "http://127.0.0.1:9/task".into(),
        metadata: Default::default(),
        registration_time: None,
    }
}

/// The claim lease of in-process engines in tests.
pub const TEST_LEASE: Duration = Duration::from_secs(30);

/// The workflow engine in process: an App and a Runner sharing `store` and `clock` (default
/// settings, [`TEST_LEASE`]), the runner dispatching through `dispatcher`.
pub fn engine(
    store: Arc<dyn crate::store::Store>,
    clock: &crate::time::ManualClock,
    dispatcher: Arc<dyn crate::runner::Dispatcher>,
) -> (crate::app::App, crate::runner::Runner) {
    use crate::app::{App, Settings};
    let app = App::new(store.clone(), Arc::new(clock.clone()), Settings::default());
    let runner = crate::runner::Runner::new(
        store,
        Arc::new(clock.clone()),
        dispatcher,
        Settings {
            lease: TEST_LEASE,
            ..Settings::default()
        },
    );
    (app, runner)
}

/// A timer queue in process: records every wake-up with its delay and delivers nothing by itself
/// (a test hands the wake-ups to the runner when its manual clock says they are due).
pub struct RecordedTimerQueue {
    pub max_delay: Duration,
    pub sent: Mutex<Vec<(crate::wake_up::WakeUp, Duration)>>,
}

impl RecordedTimerQueue {
    /// A queue with SQS's longest delay (15 minutes).
    pub fn new() -> Self {
        Self::with_max_delay(Duration::from_secs(900))
    }
    pub fn with_max_delay(max_delay: Duration) -> Self {
        Self {
            max_delay,
            sent: Mutex::default(),
        }
    }
    /// The wake-ups sent so far, emptying the record.
    pub fn take(&self) -> Vec<(crate::wake_up::WakeUp, Duration)> {
        std::mem::take(&mut *self.sent.lock().unwrap())
    }
}

impl Default for RecordedTimerQueue {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait::async_trait]
impl crate::wake_up::TimerQueue for RecordedTimerQueue {
    fn max_delay(&self) -> Duration {
        self.max_delay
    }
    async fn schedule(
        &self,
        wake_up: &crate::wake_up::WakeUp,
        delay: Duration,
    ) -> Result<(), crate::wake_up::TimerQueueError> {
        self.sent.lock().unwrap().push((wake_up.clone(), delay));
        Ok(())
    }
}
