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

use super::*;
use crate::store::{RoutedTask, indexed_capabilities};

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
                return Ok(Claim::AgentBusy);
            }
            // The one available longest first. Behind it, in random order: runners dispatching
            // several tasks at once all read the same list, and walking it in the same order
            // after losing its head would make every one of them lose again on each next agent.
            fastrand::shuffle(&mut agents[1..]);
            let mut all_taken = true;
            for agent in &agents {
                match self.claim_routed(&l, agent).await? {
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

    /// One claim of the routed task `l` by `agent`: the agent's marker, the task and the session
    /// in one transaction.
    async fn claim_routed(&self, l: &Loaded, agent: &AgentId) -> Result<RoutedClaim, RunnerError> {
        let now = self.clock.now();
        let Ok(claimed) = l.task.claim_by(agent, now, after(now, self.lease)) else {
            return Ok(RoutedClaim::TaskMoved);
        };
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
        let capability = l.task.capability.clone().expect("a routed task");
        let writes = vec![
            Write::ClaimAgentFor {
                agent_id: agent.clone(),
                inflight: Inflight {
                    dispatch,
                    since: now,
                    routed_by: Some(capability.clone()),
                },
                capability,
            },
            Write::TransitionTask {
                from: TaskStatus::Pending,
                next: claimed.clone(),
            },
            session_write,
        ];
        match self.commit(&l.session, writes).await {
            Ok(()) => Ok(RoutedClaim::Won(Box::new(Loaded {
                session: session_after,
                task: Arc::new(claimed),
                recent: true,
            }))),
            Err(CommitError::Conflict {
                write: WriteKind::ClaimAgentFor,
                ..
            }) => Ok(RoutedClaim::AgentTaken),
            Err(CommitError::Conflict { .. }) => Ok(RoutedClaim::TaskMoved),
            Err(CommitError::Store(e)) => Err(e.into()),
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
        let mut routed: Vec<RoutedTask> = lists.into_iter().flatten().collect();
        routed.sort_by(|a, b| {
            a.due_at
                .cmp(&b.due_at)
                .then_with(|| a.key.session_id.cmp(&b.key.session_id))
        });
        routed.dedup_by(|a, b| a.key == b.key);
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
