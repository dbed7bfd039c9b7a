//! Confirmed publishing. [`Link::publish`] sends an event to the exchange, persistent, and
//! returns a [`Publication`] that owns it; [`Publication::confirmed`] waits for the
//! broker's confirm and, when the connection was lost before it came, publishes the same
//! event (same id) again once the link is back, until `PUBLISH_TIMEOUT_MS` has passed.
//! Consumers dedupe by id, so a repeat is harmless; only a confirm lets a client be told
//! that its message is safe.

use std::time::Duration;

use chat_core::broker::event_properties;
use chat_core::topology::routing_key;
use chat_core::Event;
use lapin::options::BasicPublishOptions;
use lapin::PublisherConfirm;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Link;
use crate::idempotency::Outcome;

/// Pause before publishing again after a broker failure.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// Why a publish was not confirmed; never an ack. [`PublishError::outcome`] tells the
/// client whether the broker may have it after all.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("the broker is not connected")]
    NotConnected,
    #[error("the broker is blocking publishes ({0})")]
    Blocked(String),
    #[error("the broker connection was lost before the confirm")]
    Lost,
    #[error("the broker refused the message: {0}")]
    Failed(#[from] lapin::Error),
    #[error("the broker did not confirm in time")]
    Timeout,
    #[error("the broker rejected the message")]
    Nacked,
}

impl PublishError {
    /// Whether the broker may have the event: only a publish that never left the gateway
    /// is surely not published.
    pub fn outcome(&self) -> Outcome {
        match self {
            PublishError::NotConnected | PublishError::Blocked(_) => Outcome::NotPublished,
            PublishError::Lost
            | PublishError::Failed(_)
            | PublishError::Timeout
            | PublishError::Nacked => Outcome::Unknown,
        }
    }
}

/// A publish the broker has accepted for confirmation, and the token that ends its session
/// if the broker nacks it.
struct PendingConfirm(PublisherConfirm, CancellationToken);

impl PendingConfirm {
    /// Waits for the broker's confirm until `deadline`. A nack also ends the session: on
    /// RabbitMQ 3.10 a channel whose publish to a quorum queue was refused while the queue
    /// elected a new leader (a cluster node lost) goes on nacking every later publish, so
    /// only a fresh channel, on a fresh connection, publishes again.
    async fn confirmed_by(self, deadline: Instant) -> Result<(), PublishError> {
        match tokio::time::timeout_at(deadline, self.0).await {
            Err(_) => Err(PublishError::Timeout),
            Ok(Err(err)) => Err(PublishError::Failed(err)),
            Ok(Ok(confirmation)) if confirmation.is_ack() => Ok(()),
            Ok(Ok(_)) => {
                self.1.cancel();
                Err(PublishError::Nacked)
            }
        }
    }
}

/// An event on its way to the exchange: the event, its encoding, and how its first publish
/// went. Await [`Publication::confirmed`] before telling the client it is safe.
pub struct Publication {
    link: Link,
    event: Event,
    payload: String,
    first: Result<PendingConfirm, PublishError>,
}

impl Link {
    /// Sends an event to the exchange, persistent; returns once the broker has it queued
    /// for confirmation (or the publish failed), so that one client's messages keep their
    /// order.
    pub async fn publish(&self, event: Event) -> Publication {
        let payload = event.to_json();
        let first = self.send(&event, payload.as_bytes()).await;
        Publication {
            link: self.clone(),
            event,
            payload,
            first,
        }
    }

    /// Publishes an event and waits for its confirm, retrying as
    /// [`Publication::confirmed`] does.
    pub async fn publish_confirmed(&self, event: Event) -> Result<(), PublishError> {
        self.publish(event).await.confirmed().await
    }

    /// One publish of the event on the current session.
    async fn send(&self, event: &Event, payload: &[u8]) -> Result<PendingConfirm, PublishError> {
        let session = self.current().ok_or(PublishError::NotConnected)?;
        if let Some(reason) = self.blocked.reason() {
            // It would wait unanswered until the alarm clears: refuse now instead.
            return Err(PublishError::Blocked(reason));
        }
        let confirm = session
            .publisher
            .basic_publish(
                self.topology.events_exchange().into(),
                // Ignored by the fanout exchange; the rooms exchange behind it routes by it.
                routing_key(event).into(),
                BasicPublishOptions::default(),
                payload,
                event_properties(event),
            )
            .await?;
        Ok(PendingConfirm(confirm, session.nacked.clone()))
    }
}

impl Publication {
    /// The event being published.
    pub fn event(&self) -> &Event {
        &self.event
    }

    /// Waits for the broker's confirm. If the broker connection was lost before it came, or
    /// the broker nacked it (which also replaces the connection), the same event, with the
    /// same id, is published again once the link is back, until `PUBLISH_TIMEOUT_MS` has
    /// passed. `Ok` means the broker has the event: only then may
    /// the client be told.
    pub async fn confirmed(self) -> Result<(), PublishError> {
        let started = Instant::now();
        let deadline = started + self.link.publish_timeout;
        let kind = self.event.kind;
        let outcome = self.confirm_or_retry(deadline).await;
        match &outcome {
            Ok(()) => {
                metrics::histogram!("chat_publish_confirm_seconds")
                    .record(started.elapsed().as_secs_f64());
                metrics::counter!("chat_events_published_total", "type" => kind.as_str())
                    .increment(1);
            }
            Err(_) => metrics::counter!("chat_publish_failures_total").increment(1),
        }
        outcome
    }

    async fn confirm_or_retry(self, deadline: Instant) -> Result<(), PublishError> {
        let Publication {
            link,
            event,
            payload,
            first,
        } = self;
        let mut attempt = first;
        // Whether any attempt reached the broker: then a failure leaves the outcome unknown.
        let mut sent = false;
        loop {
            let outcome = match attempt {
                Ok(pending) => {
                    sent = true;
                    pending.confirmed_by(deadline).await
                }
                Err(err) => Err(err),
            };
            let err = match outcome {
                Ok(()) => return Ok(()),
                Err(err @ PublishError::Timeout) => return Err(err),
                // A nack ended the session (see `confirmed_by`): like a lost connection, the
                // same event is published again on the next one, until the deadline.
                Err(PublishError::Nacked) if Instant::now() >= deadline => {
                    return Err(PublishError::Nacked)
                }
                // Blocked: the alarm lasts longer than a client should wait.
                Err(PublishError::Blocked(reason)) if !sent => {
                    return Err(PublishError::Blocked(reason))
                }
                Err(_) if sent && Instant::now() >= deadline => return Err(PublishError::Lost),
                Err(err) => err,
            };
            // Lost connection or channel: wait for the next session and try again. The
            // pause keeps a session that is dead but not yet replaced from spinning us.
            tokio::time::sleep(RETRY_PAUSE).await;
            let mut session = link.session.clone();
            let back = matches!(
                tokio::time::timeout_at(
                    deadline,
                    // Not the session that was nacked: it is on its way out.
                    session.wait_for(|s| s.as_ref().is_some_and(|c| !c.nacked.is_cancelled()))
                )
                .await,
                Ok(Ok(_))
            );
            if !back {
                return Err(match err {
                    PublishError::Nacked => err,
                    _ if sent => PublishError::Lost,
                    _ => err,
                });
            }
            tracing::debug!(id = %event.id, error = %err, "publishing again after a broker failure");
            attempt = link.send(&event, payload.as_bytes()).await;
        }
    }
}
