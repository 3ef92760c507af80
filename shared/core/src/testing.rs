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

/// A store that counts the calls made to it, by method name, and passes every call on: what the
/// engine scenarios check request counts with (one store call is one DynamoDB request, except
/// `commit` of a single write, which the DynamoDB adapter also sends as one).
pub struct CountingStore {
    inner: Arc<dyn crate::store::Store>,
    calls: Mutex<std::collections::BTreeMap<&'static str, usize>>,
    /// Holds the next commit until notified ([`Self::hold_next_commit`]).
    hold: Mutex<Option<Arc<tokio::sync::Notify>>>,
}

impl CountingStore {
    pub fn new(inner: Arc<dyn crate::store::Store>) -> Self {
        Self {
            inner,
            calls: Mutex::default(),
            hold: Mutex::default(),
        }
    }

    /// The next commit waits, before it reaches the store, until the returned gate is notified:
    /// a test makes something happen between a caller's decision and its write.
    pub fn hold_next_commit(&self) -> Arc<tokio::sync::Notify> {
        let gate = Arc::new(tokio::sync::Notify::new());
        *self.hold.lock().unwrap() = Some(gate.clone());
        gate
    }
    fn count(&self, name: &'static str) {
        *self.calls.lock().unwrap().entry(name).or_default() += 1;
    }
    /// The calls so far, by method name, emptying the count.
    pub fn take(&self) -> std::collections::BTreeMap<&'static str, usize> {
        std::mem::take(&mut *self.calls.lock().unwrap())
    }
}

#[async_trait::async_trait]
impl crate::store::Store for CountingStore {
    async fn register_agent(
        &self,
        details: crate::agent::AgentDetails,
        now: crate::time::Timestamp,
    ) -> Result<crate::store::RegisterOutcome, crate::store::StoreError> {
        self.count("register_agent");
        self.inner.register_agent(details, now).await
    }
    async fn deregister_agent(
        &self,
        id: &crate::ids::AgentId,
        now: crate::time::Timestamp,
    ) -> Result<crate::agent::Agent, crate::store::AgentWriteError> {
        self.count("deregister_agent");
        self.inner.deregister_agent(id, now).await
    }
    async fn report_state(
        &self,
        report: &crate::agent::StateReport,
        received_at: crate::time::Timestamp,
        history_ttl: Duration,
    ) -> Result<crate::store::ReportOutcome, crate::store::AgentWriteError> {
        self.count("report_state");
        self.inner.report_state(report, received_at, history_ttl).await
    }
    async fn get_agent(
        &self,
        id: &crate::ids::AgentId,
    ) -> Result<Option<crate::agent::Agent>, crate::store::StoreError> {
        self.count("get_agent");
        self.inner.get_agent(id).await
    }
    async fn list_agents(
        &self,
        state: Option<&crate::agent::StateName>,
        page: crate::store::PageRequest,
    ) -> Result<crate::store::Page<crate::agent::Agent>, crate::store::StoreError> {
        self.count("list_agents");
        self.inner.list_agents(state, page).await
    }
    async fn state_history(
        &self,
        id: &crate::ids::AgentId,
        page: crate::store::PageRequest,
    ) -> Result<crate::store::Page<crate::agent::HistoryEntry>, crate::store::StoreError> {
        self.count("state_history");
        self.inner.state_history(id, page).await
    }
    async fn put_workflow(
        &self,
        def: &crate::workflow::WorkflowDefinition,
        now: crate::time::Timestamp,
    ) -> Result<crate::store::PutWorkflowOutcome, crate::store::StoreError> {
        self.count("put_workflow");
        self.inner.put_workflow(def, now).await
    }
    async fn get_workflow(
        &self,
        id: &crate::ids::WorkflowId,
        version: Option<&crate::ids::WorkflowVersion>,
    ) -> Result<Option<crate::store::StoredWorkflow>, crate::store::StoreError> {
        self.count("get_workflow");
        self.inner.get_workflow(id, version).await
    }
    async fn list_workflows(
        &self,
        page: crate::store::PageRequest,
    ) -> Result<crate::store::Page<crate::store::StoredWorkflow>, crate::store::StoreError> {
        self.count("list_workflows");
        self.inner.list_workflows(page).await
    }
    async fn commit(&self, writes: Vec<crate::store::Write>) -> Result<(), crate::store::CommitError> {
        self.count("commit");
        let held = self.hold.lock().unwrap().take();
        if let Some(gate) = held {
            gate.notified().await;
        }
        self.inner.commit(writes).await
    }
    async fn get_session(
        &self,
        id: &crate::ids::SessionId,
    ) -> Result<Option<crate::store::SessionView>, crate::store::StoreError> {
        self.count("get_session");
        self.inner.get_session(id).await
    }
    async fn list_sessions(
        &self,
        agent: &crate::ids::AgentId,
        page: crate::store::PageRequest,
    ) -> Result<crate::store::Page<crate::session::Session>, crate::store::StoreError> {
        self.count("list_sessions");
        self.inner.list_sessions(agent, page).await
    }
    async fn list_sessions_across_agents(
        &self,
        status: Option<crate::session::SessionStatus>,
        page: crate::store::PageRequest,
    ) -> Result<crate::store::Page<crate::session::Session>, crate::store::StoreError> {
        self.count("list_sessions_across_agents");
        self.inner.list_sessions_across_agents(status, page).await
    }
    async fn get_task(
        &self,
        key: &crate::task::TaskKey,
    ) -> Result<Option<crate::task::TaskInstance>, crate::store::StoreError> {
        self.count("get_task");
        self.inner.get_task(key).await
    }
    async fn runnable_tasks(
        &self,
        agent: &crate::ids::AgentId,
        now: crate::time::Timestamp,
        limit: u32,
    ) -> Result<Vec<crate::task::TaskKey>, crate::store::StoreError> {
        self.count("runnable_tasks");
        self.inner.runnable_tasks(agent, now, limit).await
    }
    async fn due_timers(
        &self,
        now: crate::time::Timestamp,
        limit: u32,
    ) -> Result<Vec<crate::task::TaskKey>, crate::store::StoreError> {
        self.count("due_timers");
        self.inner.due_timers(now, limit).await
    }
    async fn idle_agents(
        &self,
        capability: &str,
        limit: u32,
    ) -> Result<Vec<crate::ids::AgentId>, crate::store::StoreError> {
        self.count("idle_agents");
        self.inner.idle_agents(capability, limit).await
    }
    async fn routed_tasks(
        &self,
        capability: &str,
        now: crate::time::Timestamp,
        limit: u32,
    ) -> Result<Vec<crate::store::RoutedTask>, crate::store::StoreError> {
        self.count("routed_tasks");
        self.inner.routed_tasks(capability, now, limit).await
    }
    async fn sync_idle_agent(
        &self,
        old: Option<&crate::agent::Agent>,
        new: &crate::agent::Agent,
    ) -> Result<(), crate::store::StoreError> {
        self.count("sync_idle_agent");
        self.inner.sync_idle_agent(old, new).await
    }
}

/// An engine test's whole world: the in-memory store and its change channel, a manual clock, an
/// App and a Runner, a scripted AgentKit, and one registered agent whose reports always move
/// forward in time. `pump` plays the stream consumer: every change goes to the runner.
pub struct EngineWorld {
    pub clock: crate::time::ManualClock,
    pub app: crate::app::App,
    pub runner: crate::runner::Runner,
    pub store: Arc<dyn crate::store::Store>,
    /// The same store, counting the calls the App and the Runner make.
    pub calls: Arc<CountingStore>,
    pub agentkit: Arc<ScriptedAgentKit>,
    pub changes: tokio::sync::mpsc::UnboundedReceiver<crate::store::Change>,
    pub agent: crate::ids::AgentId,
    reports: i64,
}

impl EngineWorld {
    /// A world with the default App and Runner.
    pub async fn new() -> Self {
        Self::with(|app, runner| (app, runner)).await
    }

    /// A world whose App and Runner `configure` may change first (metrics, a timer queue).
    pub async fn with(
        configure: impl FnOnce(crate::app::App, crate::runner::Runner) -> (crate::app::App, crate::runner::Runner),
    ) -> Self {
        let (store, changes) = crate::memory::InMemoryStore::with_changes();
        let calls = Arc::new(CountingStore::new(Arc::new(store)));
        let store: Arc<dyn crate::store::Store> = calls.clone();
        let clock = crate::time::ManualClock::at(chrono::Utc::now());
        let agentkit = Arc::new(ScriptedAgentKit::default());
        let (app, runner) = engine(store.clone(), &clock, agentkit.clone());
        let (app, runner) = configure(app, runner);
        let agent = crate::ids::AgentId::parse(uuid::Uuid::new_v4().to_string()).expect("a uuid is an agent id");
        app.register_agent(agent_details(&agent, "sim"))
            .await
            .expect("the test agent registers");
        let mut w = Self {
            clock,
            app,
            runner,
            store,
            calls,
            agentkit,
            changes,
            agent,
            reports: 0,
        };
        w.pump().await.expect("the registration's change is handled");
        w
    }

    /// Feeds every pending change to the runner until nothing is left (a stream consumer).
    pub async fn pump(&mut self) -> Result<(), crate::runner::RunnerError> {
        while let Ok(c) = self.changes.try_recv() {
            self.runner.on_change(&c).await?;
        }
        Ok(())
    }

    /// The agent reports a state with a timestamp that always moves forward, then the runner
    /// handles what it changed.
    pub async fn report(&mut self, state: &str, details: Option<serde_json::Value>) {
        let report = self.next_report(state, details);
        self.app.report_state(&report).await.expect("the report is applied");
        self.pump().await.expect("the runner handles the report");
    }

    /// The agent's next report, a microsecond after the last one (not yet applied).
    pub fn next_report(&mut self, state: &str, details: Option<serde_json::Value>) -> crate::agent::StateReport {
        self.reports += 1;
        crate::agent::StateReport {
            agent_id: self.agent.clone(),
            state: crate::agent::StateName::parse(state).expect("a valid state name"),
            details: details.map(|d| d.as_object().expect("details are an object").clone()),
            timestamp: crate::time::Clock::now(&self.clock) + chrono::Duration::microseconds(self.reports),
        }
    }

    /// Triggers `def` inline on the agent; the runner handles what it changed.
    pub async fn trigger(&mut self, def: crate::workflow::WorkflowDefinition) -> crate::ids::SessionId {
        let t = self
            .app
            .trigger(
                &self.agent,
                crate::app::DefinitionSource::Inline(Box::new(def)),
                None,
                None,
            )
            .await
            .expect("the trigger is accepted");
        self.pump().await.expect("the runner handles the trigger");
        t.session_id
    }

    /// Registers another agent announcing `capabilities` and has it report `idle`; the runner
    /// handles both changes.
    pub async fn add_idle_agent(&mut self, capabilities: &[&str]) -> crate::ids::AgentId {
        let id = crate::ids::AgentId::parse(uuid::Uuid::new_v4().to_string()).expect("a uuid is an agent id");
        let mut details = agent_details(&id, "pool");
        details.capabilities = capabilities.iter().map(|c| c.to_string()).collect();
        self.app.register_agent(details).await.expect("the agent registers");
        self.pump().await.expect("the registration's change is handled");
        self.report_as(&id, "idle", None).await;
        id
    }

    /// `agent` reports a state (timestamps always move forward), then the runner handles it.
    pub async fn report_as(&mut self, agent: &crate::ids::AgentId, state: &str, details: Option<serde_json::Value>) {
        let mut report = self.next_report(state, details);
        report.agent_id = agent.clone();
        self.app.report_state(&report).await.expect("the report is applied");
        self.pump().await.expect("the runner handles the report");
    }

    /// The reference agent's work on `dispatch`, by the agent it went to: `active`, then `idle`
    /// naming the attempt.
    pub async fn work(&mut self, dispatch: &crate::runner::DispatchRequest) {
        let id = serde_json::json!({"opscore_task_id": dispatch.dispatch_id});
        self.report_as(&dispatch.agent_id, "active", Some(id.clone())).await;
        self.report_as(&dispatch.agent_id, "idle", Some(id)).await;
    }

    /// Every dispatch AgentKit was asked for, oldest first.
    pub fn dispatches(&self) -> Vec<crate::runner::DispatchRequest> {
        self.agentkit.seen.lock().unwrap().clone()
    }

    pub fn last_dispatch_id(&self) -> String {
        self.dispatches().last().expect("a dispatch").dispatch_id.clone()
    }

    /// The reference agent's work on the last dispatch: `active`, then `idle` naming the task.
    pub async fn work_last_task(&mut self) {
        let id = self.last_dispatch_id();
        self.report("active", Some(serde_json::json!({"opscore_task_id": id})))
            .await;
        self.report(
            "idle",
            Some(serde_json::json!({"opscore_task_id": id, "output": "done"})),
        )
        .await;
    }

    /// Moves the clock `secs` on, sweeps, and handles what the sweep changed.
    pub async fn advance(&mut self, secs: f64) {
        self.clock
            .advance(chrono::Duration::milliseconds((secs * 1000.0) as i64));
        self.runner.sweep().await.expect("the sweep runs");
        self.pump().await.expect("the runner handles the sweep's changes");
    }

    pub async fn status(&self, s: crate::ids::SessionId) -> crate::session::SessionStatus {
        self.app.session(&s).await.expect("the session exists").session.status
    }
}
