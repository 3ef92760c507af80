//! The newest images of sessions and tasks the runner has seen: those its own commits wrote and
//! those the change feed carried. The runner starts from them instead of reading the session's
//! partition again (on DynamoDB one `Query` per step of a task, about half the requests of a
//! task's lifecycle before this existed).
//!
//! An image here may be stale: another runner, a cancel through the API or a report may have
//! moved the item on since. That is safe because of two rules the runner keeps:
//! - an image from here only ever leads to a **conditional write** (the condition names the
//!   status and revision the image had, so a stale image makes the write conflict, and the
//!   runner forgets the session and reads it again);
//! - a decision to **do nothing** is never taken on an image from here: the runner reads the
//!   store and decides again ([`Source::Store`]).
//!
//! Bounded: the least recently used sessions are dropped first, so an instance that sees many
//! sessions holds at most `capacity` of them.

use crate::ids::SessionId;
use crate::session::Session;
use crate::store::Write;
use crate::task::{TaskInstance, TaskKey};
use hashlink::LruCache;
use std::sync::{Arc, Mutex};

/// Where the runner may take the images it acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// From [`RecentImages`] if it has them, else from the store.
    Recent,
    /// From the store.
    Store,
}

/// How many sessions a runner keeps images of, by default (a session's images are a few KB: its
/// definition and its tasks).
pub const DEFAULT_CAPACITY: usize = 4096;

pub struct RecentImages {
    sessions: Mutex<LruCache<SessionId, Entry>>,
}

#[derive(Default)]
struct Entry {
    session: Option<Arc<Session>>,
    tasks: Vec<Arc<TaskInstance>>,
}

/// The images of the session and task items that `writes` put in the store, taken before they
/// are committed (the store takes the writes).
pub fn images_of(writes: &[Write]) -> Vec<Image> {
    writes
        .iter()
        .filter_map(|w| match w {
            Write::CreateSession(s) | Write::TransitionSession { next: s, .. } => {
                Some(Image::Session(Arc::new(s.clone())))
            }
            Write::CreateTask(t) | Write::TransitionTask { next: t, .. } => Some(Image::Task(Arc::new(t.clone()))),
            _ => None,
        })
        .collect()
}

/// One item's image.
#[derive(Debug, Clone)]
pub enum Image {
    Session(Arc<Session>),
    Task(Arc<TaskInstance>),
}

impl RecentImages {
    pub fn new(capacity: usize) -> Self {
        Self {
            sessions: Mutex::new(LruCache::new(capacity.max(1))),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut LruCache<SessionId, Entry>) -> R) -> R {
        f(&mut self.sessions.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Keeps `image` unless a newer one (a higher revision) of the same item is already kept.
    pub fn remember(&self, image: Image) {
        self.with(|c| match image {
            Image::Session(s) => {
                let entry = entry(c, s.session_id);
                if entry.session.as_ref().is_none_or(|kept| kept.rev <= s.rev) {
                    entry.session = Some(s);
                }
            }
            Image::Task(t) => {
                let entry = entry(c, t.session_id);
                match entry.tasks.iter_mut().find(|kept| kept.task_id == t.task_id) {
                    Some(kept) if kept.rev <= t.rev => *kept = t,
                    Some(_) => {}
                    None => entry.tasks.push(t),
                }
            }
        })
    }

    /// Drops what is kept of a session (a write based on it conflicted, or it is gone).
    pub fn forget(&self, id: &SessionId) {
        self.with(|c| c.remove(id));
    }

    /// The kept images of the task `key` and its session, if both are kept.
    pub fn get(&self, key: &TaskKey) -> Option<(Arc<Session>, Arc<TaskInstance>)> {
        self.with(|c| {
            let entry = c.get(&key.session_id)?;
            let task = entry.tasks.iter().find(|t| t.task_id == key.task_id)?;
            Some((entry.session.clone()?, task.clone()))
        })
    }
}

fn entry(c: &mut LruCache<SessionId, Entry>, id: SessionId) -> &mut Entry {
    if !c.contains_key(&id) {
        c.insert(id, Entry::default());
    }
    c.get_mut(&id).expect("inserted above")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::AgentId;
    use crate::workflow::WorkflowDefinition;
    use std::time::Duration;

    fn sample_session() -> Session {
        let def = WorkflowDefinition::from_value(serde_json::json!({
            "id": "w", "name": "n", "tasks": [{"taskId": "a", "name": "A"}]}))
        .unwrap();
        Session::start(AgentId::parse("agent").unwrap(), def, None, None, chrono::Utc::now())
    }

    fn sample_task(s: &Session) -> TaskInstance {
        let entry = s.definition.entry().clone();
        TaskInstance::new(
            s,
            &entry,
            serde_json::Value::Null,
            s.start_time,
            Duration::from_secs(30),
        )
    }

    #[test]
    fn keeps_the_newest_revision_of_each_item() {
        let images = RecentImages::new(8);
        let s = sample_session();
        let t0 = sample_task(&s);
        let key = t0.key();
        assert!(images.get(&key).is_none());
        images.remember(Image::Task(Arc::new(t0.clone())));
        assert!(images.get(&key).is_none(), "no session image yet");
        images.remember(Image::Session(Arc::new(s.clone())));
        let mut t1 = t0.clone();
        t1.rev = 1;
        images.remember(Image::Task(Arc::new(t1.clone())));
        // An older image arriving late (a feed behind the runner's own commits) is ignored.
        images.remember(Image::Task(Arc::new(t0)));
        assert_eq!(images.get(&key).map(|(_, t)| t.rev), Some(1));
        images.forget(&s.session_id);
        assert!(images.get(&key).is_none());
    }

    #[test]
    fn drops_the_least_recently_used_session_beyond_capacity() {
        let images = RecentImages::new(2);
        let sessions: Vec<_> = (0..3).map(|_| sample_session()).collect();
        for s in &sessions {
            images.remember(Image::Session(Arc::new(s.clone())));
            images.remember(Image::Task(Arc::new(sample_task(s))));
        }
        let kept: Vec<bool> = sessions
            .iter()
            .map(|s| images.get(&sample_task(s).key()).is_some())
            .collect();
        assert_eq!(kept, [false, true, true]);
    }
}
