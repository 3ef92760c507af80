//! Routing by capability (issue 18): a routed task (its definition names `agentCapability` and
//! its session routes by capability) is claimed by any available agent announcing the
//! capability instead of by the session's agent.
//!
//! Both directions meet in one claim transaction, the same as a named task's: the agent's
//! in-flight marker (`ClaimAgent`: idle, registered, holding nothing), the task `pending →
//! dispatched` (status and revision) and the session. So the rules of named tasks hold as they
//! are: one task per agent, one agent per attempt, completion only by the holder's reports.
//!
//! - **A task becomes runnable** ([`Runner::dispatch_routed`], through `try_dispatch`): the
//!   capability's idle agents, the one available longest first, are tried in turn until one
//!   claim wins. None available: the task waits in its capability's runnable list.
//! - **An agent becomes available** ([`Runner::dispatch_next_for_agent`]): its own runnable tasks
//!   and its capabilities' are merged, oldest due first, and tried in turn until one claim wins
//!   or the agent is taken.
//! - **An agent finishes a task while routed tasks wait** ([`Runner::routed_hand_over_for`],
//!   through `complete`): it takes the oldest of them in the completion's own transaction
//!   (`HandOverAgent` with the capability), without ever becoming available. Under load this is
//!   how most routed tasks start: no idle-agents entry is written and deleted, no claim
//!   transaction, and no new task finds the agent listed and loses a claim on it to the agent's
//!   own look. It is only tried when this runner has seen routed tasks wait for one of the
//!   agent's capabilities ([`RoutingHints`]), so a task on an idle pool costs what it did; if the
//!   hand-over loses (the task was claimed meanwhile), the completion is retried with a plain
//!   release and the agent looks as above.

use super::*;
use crate::store::{RoutedTask, indexed_capabilities};
use std::collections::HashMap;

/// How many candidates one look at an index takes (agents for a task, tasks for an agent).
const CANDIDATES: u32 = 10;

/// What one routed claim came to.
enum RoutedClaim {
    /// The claim committed: send the attempt.
    Won(Box<Loaded>),
    /// The agent is not available any more (taken by another claim, no longer idle, gone).
    AgentTaken,
    /// The task or its session changed since it was read: read it again.
    TaskMoved,
}

/// A candidate for an agent that became available: one of its own tasks, or a routed one.
enum Candidate {
    Own(TaskKey),
    Routed(TaskKey),
}

/// What this runner has seen of routed work, to decide when an agent finishing a task should look
/// for a waiting routed task before it is released. Hints only: a wrong one costs a look or a
/// missed hand-over, never a task (the release path lists the agent, then looks).
#[derive(Default)]
pub(super) struct RoutingHints {
    inner: Mutex<HintState>,
}

#[derive(Default)]
struct HintState {
    /// Capabilities whose routed tasks were last seen waiting for an agent.
    waiting: HashSet<String>,
    /// Routed tasks picked for a hand-over that has not committed yet: a second agent finishing
    /// at the same time picks another rather than lose its completion's transaction.
    picked: HashSet<TaskKey>,
    /// Idle agents a routed task of this runner is claiming, and whether another task skipped
    /// them meanwhile. Tasks that become runnable together (a burst of triggers) all read the
    /// same idle agents; without this, each would try each agent and all but one claim of every
    /// agent would be a lost transaction.
    claiming: HashMap<AgentId, bool>,
}

impl RoutingHints {
    fn state(&self) -> std::sync::MutexGuard<'_, HintState> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A look at `capability`'s runnable tasks found some (`true`) or none.
    fn seen(&self, capability: &str, waiting: bool) {
        let mut s = self.state();
        if waiting {
            if !s.waiting.contains(capability) {
                s.waiting.insert(capability.to_owned());
            }
        } else {
            s.waiting.remove(capability);
        }
    }

    fn any_waiting(&self, capabilities: &[&str]) -> bool {
        let s = self.state();
        capabilities.iter().any(|c| s.waiting.contains(*c))
    }

    /// Reserves `agent` for one routed claim by this runner, unless another task of this runner
    /// is claiming it (which is then told, by [`Self::release`], that it was skipped).
    fn reserve(&self, agent: &AgentId) -> bool {
        let mut s = self.state();
        match s.claiming.get_mut(agent) {
            Some(skipped) => {
                *skipped = true;
                false
            }
            None => {
                s.claiming.insert(agent.clone(), false);
                true
            }
        }
    }

    /// Ends the reservation of `agent`; `true` if a task skipped it meanwhile.
    fn release(&self, agent: &AgentId) -> bool {
        self.state().claiming.remove(agent).unwrap_or(false)
    }

    /// Picks `key` unless another hand-over already has it.
    fn pick(&self, key: &TaskKey) -> bool {
        self.state().picked.insert(key.clone())
    }

    pub(super) fn unpick(&self, key: &TaskKey) {
        self.state().picked.remove(key);
    }
}

/// A waiting routed task an agent finishing its task is to be handed, in the completion's
/// transaction: the writes that claim it (besides the agent's), what the agent will hold, and
/// the task as claimed, to send once the transaction commits.
pub(super) struct RoutedHandOver {
    pub(super) key: TaskKey,
    pub(super) writes: Vec<Write>,
    pub(super) inflight: Inflight,
    pub(super) claimed: Loaded,
}

impl Runner {
    /// `try_dispatch` of a routed task, `loaded` just read: claims it for the capability's idle
    /// agent that has been available longest, then sends it.
    pub(super) async fn dispatch_routed(&self, key: &TaskKey, loaded: Loaded) -> Result<Claim, RunnerError> {
        let mut known = Some(loaded);
        for _ in 0..LOST_WRITE_RETRIES {
            let l = match known.take() {
                Some(l) => l,
                None => match self.load(key, Source::Store).await? {
                    Some(l) => l,
                    None => return Ok(Claim::NotRunnable),
                },
            };
            let Some(capability) = self.claimable_capability(&l) else {
                // Not runnable: decided on the store's state only (images.rs).
                if l.recent {
                    continue;
                }
                return Ok(Claim::NotRunnable);
            };
            let mut agents = self.store.idle_agents(&capability, CANDIDATES).await?;
            if agents.is_empty() {
                // Waits in the capability's runnable list for an agent to become available.
                self.routing.seen(&capability, true);
                return Ok(Claim::AgentBusy);
            }
            // The one available longest first. Behind it, in random order: runners dispatching
            // several tasks at once all read the same list, and walking it in the same order
            // after losing its head would make every one of them lose again on each next agent.
            fastrand::shuffle(&mut agents[1..]);
            let mut all_taken = true;
            for agent in &agents {
                // Another task of this runner is claiming it: that one wins it or finds it
                // taken, and if neither, gives it a look for waiting tasks (this one included).
                if !self.routing.reserve(agent) {
                    continue;
                }
                let outcome = self.claim_routed(&l, agent).await;
                let skipped = self.routing.release(agent);
                if skipped && !matches!(outcome, Ok(RoutedClaim::Won(_) | RoutedClaim::AgentTaken)) {
                    self.look_for_routed(agent).await?;
                }
                match outcome? {
                    RoutedClaim::Won(claimed) => {
                        self.send(*claimed).await?;
                        return Ok(Claim::Dispatched);
                    }
                    RoutedClaim::AgentTaken => continue,
                    RoutedClaim::TaskMoved => {
                        all_taken = false;
                        break;
                    }
                }
            }
            if all_taken && (agents.len() as u32) < CANDIDATES {
                // Every available agent was taken under our hands: the task waits for the next.
                self.routing.seen(&capability, true);
                return Ok(Claim::AgentBusy);
            }
        }
        Ok(Claim::AgentBusy)
    }

    /// The capability a loaded routed task may be claimed by now: pending, due, session open.
    fn claimable_capability(&self, l: &Loaded) -> Option<String> {
        let now = self.clock.now();
        if l.task.due_at > now || l.session.status.is_terminal() {
            return None;
        }
        l.task.runnable_capability().map(str::to_owned)
    }

    /// The writes that claim the routed task `l` for `agent` now, besides the agent's own (the
    /// task `pending → dispatched`, its session started → running or checked open), what the
    /// agent is to hold, and the task as claimed. `None`: `l` cannot be claimed as it is.
    fn routed_claim(&self, l: &Loaded, agent: &AgentId) -> Option<(Vec<Write>, Inflight, Loaded)> {
        let now = self.clock.now();
        let claimed = l.task.claim_by(agent, now, after(now, self.lease)).ok()?;
        let capability = l.task.capability.clone()?;
        let dispatch = claimed.current_dispatch().expect("dispatched holds the agent");
        let (session_write, session_after) = if l.session.status == SessionStatus::Started {
            let running = l
                .session
                .transition(SessionStatus::Running, now)
                .expect("started → running");
            let write = Write::TransitionSession {
                from: l.session.status,
                next: running.clone(),
            };
            (write, Arc::new(running))
        } else {
            (Write::CheckSessionOpen(l.session.session_id), l.session.clone())
        };
        let inflight = Inflight {
            dispatch,
            since: now,
            routed_by: Some(capability),
        };
        let writes = vec![
            Write::TransitionTask {
                from: TaskStatus::Pending,
                next: claimed.clone(),
            },
            session_write,
        ];
        let after = Loaded {
            session: session_after,
            task: Arc::new(claimed),
            recent: true,
        };
        Some((writes, inflight, after))
    }

    /// One claim of the routed task `l` by `agent`: the agent's marker, the task and the session
    /// in one transaction.
    async fn claim_routed(&self, l: &Loaded, agent: &AgentId) -> Result<RoutedClaim, RunnerError> {
        let Some((task_writes, inflight, claimed)) = self.routed_claim(l, agent) else {
            return Ok(RoutedClaim::TaskMoved);
        };
        let capability = inflight.routed_by.clone().expect("a routed claim");
        let mut writes = vec![Write::ClaimAgentFor {
            agent_id: agent.clone(),
            inflight,
            capability,
        }];
        writes.extend(task_writes);
        match self.commit(&l.session, writes).await {
            Ok(()) => Ok(RoutedClaim::Won(Box::new(claimed))),
            Err(CommitError::Conflict {
                write: WriteKind::ClaimAgentFor,
                ..
            }) => Ok(RoutedClaim::AgentTaken),
            Err(CommitError::Conflict { .. }) => Ok(RoutedClaim::TaskMoved),
            Err(CommitError::Store(e)) => Err(e.into()),
        }
    }

    /// The waiting routed task `agent`, about to finish its attempt in `finishing`'s session,
    /// should be handed in the completion's transaction: the oldest due one among its
    /// capabilities', when this runner has seen such tasks wait and the agent has none of its
    /// own waiting (those are merged with routed ones on the release path). Picked for this
    /// hand-over until [`RoutingHints::unpick`].
    pub(super) async fn routed_hand_over_for(
        &self,
        agent: &Agent,
        finishing: &SessionId,
    ) -> Result<Option<RoutedHandOver>, RunnerError> {
        let capabilities = indexed_capabilities(agent);
        if !self.routing.any_waiting(&capabilities) {
            return Ok(None);
        }
        let now = self.clock.now();
        let (own, lists) = futures::future::try_join(
            self.store.runnable_tasks(agent.id(), now, 1),
            futures::future::try_join_all(capabilities.iter().map(|c| self.store.routed_tasks(c, now, CANDIDATES))),
        )
        .await?;
        let routed = self.oldest_routed(&capabilities, lists);
        if !own.is_empty() {
            return Ok(None);
        }
        for r in routed.iter().filter(|r| &r.key.session_id != finishing) {
            if !self.routing.pick(&r.key) {
                continue;
            }
            // The index lags its tasks (a DynamoDB index is eventually consistent), so its oldest
            // entries are often tasks just claimed, which the stream has shown this runner. Not
            // taking one on a recent image alone is safe here, unlike on the release path: the
            // agent that takes none is released and looks on the store's state.
            let found = self
                .load(&r.key, Source::Recent)
                .await?
                .filter(|l| self.claimable_capability(l).is_some());
            if let Some(l) = found
                && let Some((writes, inflight, claimed)) = self.routed_claim(&l, agent.id())
            {
                return Ok(Some(RoutedHandOver {
                    key: r.key.clone(),
                    writes,
                    inflight,
                    claimed,
                }));
            }
            // Claimed or ended since the list was read: the next one.
            self.routing.unpick(&r.key);
        }
        Ok(None)
    }

    /// `agent`, listed idle, was skipped by tasks of this runner while one of its tasks claimed
    /// it, and that claim neither won it nor found it taken: it looks for waiting tasks now, as
    /// it did on becoming available, so that none of them waits beside an idle agent.
    async fn look_for_routed(&self, agent: &AgentId) -> Result<(), RunnerError> {
        match self.store.get_agent(agent).await? {
            Some(a) if a.is_available() => Box::pin(self.dispatch_next_for_agent(&a)).await,
            _ => Ok(()),
        }
    }

    /// `agent` became available: it takes the oldest due task among its own and its
    /// capabilities'. An agent announcing no capability costs what it did before routing.
    pub async fn dispatch_next_for_agent(&self, agent: &Agent) -> Result<(), RunnerError> {
        let capabilities = indexed_capabilities(agent);
        if capabilities.is_empty() {
            return self.dispatch_next_for(agent.id()).await;
        }
        let now = self.clock.now();
        let own = self.store.runnable_tasks(agent.id(), now, CANDIDATES).await?;
        let lists =
            futures::future::try_join_all(capabilities.iter().map(|c| self.store.routed_tasks(c, now, CANDIDATES)))
                .await?;
        let routed = self.oldest_routed(&capabilities, lists);
        let mut candidates = self.oldest_first(own, routed).await?;
        let mut i = 0;
        while i < candidates.len() {
            let lost = match &candidates[i] {
                Candidate::Own(key) => match self.try_dispatch(key).await? {
                    Claim::Dispatched | Claim::AgentBusy => return Ok(()),
                    Claim::NotRunnable => true,
                },
                Candidate::Routed(key) => match self.claim_candidate(key, agent.id()).await? {
                    Some(RoutedClaim::Won(claimed)) => return self.send(*claimed).await,
                    Some(RoutedClaim::AgentTaken) => return Ok(()),
                    Some(RoutedClaim::TaskMoved) | None => true,
                },
            };
            if lost && i == 0 {
                // The oldest went to another agent: agents freed together all read the same
                // list, so the rest is tried in random order rather than all after the same one.
                fastrand::shuffle(&mut candidates[1..]);
            }
            i += 1;
        }
        Ok(())
    }

    /// One claim of the routed task `key` by `agent`, from the runner's recent image of it if it
    /// has one (the stream brought it every change of the task, so it is usually current: no
    /// read), else or if that image turns out stale, from the store. `None`: the task is not
    /// claimable (gone, claimed, not due, its session ended), as the store says.
    async fn claim_candidate(&self, key: &TaskKey, agent: &AgentId) -> Result<Option<RoutedClaim>, RunnerError> {
        for source in [Source::Recent, Source::Store] {
            let Some(l) = self.load(key, source).await? else {
                return Ok(None);
            };
            if self.claimable_capability(&l).is_none() {
                if l.recent {
                    continue;
                }
                return Ok(None);
            }
            match self.claim_routed(&l, agent).await? {
                RoutedClaim::TaskMoved if l.recent => continue,
                outcome => return Ok(Some(outcome)),
            }
        }
        Ok(None)
    }

    /// The runnable tasks of `capabilities` (`lists`, one per capability, as the store gave
    /// them) in one list, oldest due first, each once. Notes which capabilities have tasks
    /// waiting.
    fn oldest_routed(&self, capabilities: &[&str], lists: Vec<Vec<RoutedTask>>) -> Vec<RoutedTask> {
        for (c, list) in capabilities.iter().zip(&lists) {
            self.routing.seen(c, !list.is_empty());
        }
        let mut routed: Vec<RoutedTask> = lists.into_iter().flatten().collect();
        routed.sort_by(|a, b| {
            a.due_at
                .cmp(&b.due_at)
                .then_with(|| a.key.session_id.cmp(&b.key.session_id))
        });
        routed.dedup_by(|a, b| a.key == b.key);
        routed
    }

    /// Merges an agent's own runnable tasks (oldest first, keys only) with routed ones (oldest
    /// first, with their due time) into one list, oldest first. An own task's due time is read
    /// only when a routed task competes with it.
    async fn oldest_first(&self, own: Vec<TaskKey>, routed: Vec<RoutedTask>) -> Result<Vec<Candidate>, RunnerError> {
        let mut merged = Vec::with_capacity(own.len() + routed.len());
        let mut routed = routed.into_iter().peekable();
        for key in own {
            if routed.peek().is_some() {
                let due = self.store.get_task(&key).await?.map(|t| t.due_at);
                while let Some(r) = routed.next_if(|r| due.is_none_or(|d| r.due_at < d)) {
                    merged.push(Candidate::Routed(r.key));
                }
            }
            merged.push(Candidate::Own(key));
        }
        merged.extend(routed.map(|r| Candidate::Routed(r.key)));
        Ok(merged)
    }
}
