//! AgentKit's registration webhook as a use case: a verified delivery takes effect at most once.
//!
//! AgentKit retries a delivery it did not see answered, so the same signed bytes can arrive
//! twice. The HTTP layer verifies the signature and parses the event; this module decides
//! whether the delivery is new and applies it.

use crate::agent::AgentDetails;
use crate::app::App;
use crate::error::AppError;
use crate::ids::AgentId;
use crate::store::{CommitError, RegisterOutcome, Write};
use crate::time::after;
use std::time::Duration;

/// What an AgentKit webhook delivery asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentKitEvent {
    Register(AgentDetails),
    Deregister(AgentId),
}

/// What applying a delivery did.
#[derive(Debug, Clone, PartialEq)]
pub enum DeliveryOutcome {
    /// Boxed: an agent is large, the other outcomes are empty.
    Registered(Box<RegisterOutcome>),
    Deregistered,
    /// The same delivery was applied before: nothing changed.
    Duplicate,
}

impl App {
    /// Applies `event` unless the delivery `delivery_id` (for AgentKit: its signature, the same
    /// for the same bytes) was applied within `remember_for`. Pick `remember_for` longer than
    /// the window in which the delivery's timestamp is accepted, so a replay is refused either
    /// as a duplicate or as stale.
    ///
    /// The delivery record and the event's effect are two writes: if the effect fails, the
    /// record is removed again so that AgentKit's redelivery is applied instead of dropped.
    pub async fn apply_delivery(
        &self,
        delivery_id: &str,
        event: AgentKitEvent,
        remember_for: Duration,
    ) -> Result<DeliveryOutcome, AppError> {
        let record = Write::CreateDeliveryRecord {
            id: delivery_id.to_owned(),
            expires_at: after(self.now(), remember_for),
        };
        match self.commit(None, vec![record]).await {
            Ok(()) => {}
            Err(CommitError::Conflict { .. }) => return Ok(DeliveryOutcome::Duplicate),
            Err(CommitError::Store(e)) => return Err(e.into()),
        }
        let result = match event {
            AgentKitEvent::Register(details) => self
                .register_agent(details)
                .await
                .map(|o| DeliveryOutcome::Registered(Box::new(o))),
            AgentKitEvent::Deregister(id) => self.deregister_agent(&id).await.map(|_| DeliveryOutcome::Deregistered),
        };
        if result.is_err() {
            // Best effort: if this fails too, a redelivery is dropped until the record expires.
            let forget = Write::ExpireDeliveryRecord {
                id: delivery_id.to_owned(),
            };
            if let Err(e) = self.store.commit(vec![forget]).await {
                tracing::warn!(error = %e, "could not forget the delivery record of a failed webhook");
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::test_details;
    use crate::memory::InMemoryStore;
    use crate::time::ManualClock;
    use std::sync::Arc;

    /// The in-memory store expires records by the system clock: start the app's clock there.
    fn app() -> App {
        App::new(
            Arc::new(InMemoryStore::new()),
            Arc::new(ManualClock::at(chrono::Utc::now())),
            Default::default(),
        )
    }

    #[tokio::test]
    async fn a_delivery_applies_once() {
        let app = app();
        let id = AgentId::parse("a1").unwrap();
        let window = Duration::from_secs(600);
        let register = AgentKitEvent::Register(test_details(id.as_str()));
        let first = app.apply_delivery("sig-1", register.clone(), window).await.unwrap();
        let DeliveryOutcome::Registered(outcome) = first else {
            panic!("a new delivery is applied: {first:?}");
        };
        assert!(matches!(*outcome, RegisterOutcome::Created(_)));
        let deregister = AgentKitEvent::Deregister(id.clone());
        assert_eq!(
            app.apply_delivery("sig-2", deregister.clone(), window).await.unwrap(),
            DeliveryOutcome::Deregistered
        );
        // The first delivery again: no second registration undoes the deregistration.
        assert_eq!(
            app.apply_delivery("sig-1", register.clone(), window).await.unwrap(),
            DeliveryOutcome::Duplicate
        );
        assert!(app.store.get_agent(&id).await.unwrap().unwrap().is_deregistered());
    }

    #[tokio::test]
    async fn a_delivery_that_fails_is_applied_when_redelivered() {
        let app = app();
        let id = AgentId::parse("a2").unwrap();
        let window = Duration::from_secs(600);
        let deregister = AgentKitEvent::Deregister(id.clone());
        let refused = app.apply_delivery("sig-d", deregister.clone(), window).await;
        assert!(matches!(refused, Err(AppError::NotFound(_))), "{refused:?}");
        app.register_agent(test_details(id.as_str())).await.unwrap();
        assert_eq!(
            app.apply_delivery("sig-d", deregister, window).await.unwrap(),
            DeliveryOutcome::Deregistered,
            "the failed delivery left no record behind"
        );
    }
}
