//! History over the broker: a request to `<prefix>.history` with RabbitMQ's direct
//! reply-to, and the replies matched back to their waiting requests by correlation id.

use std::collections::HashMap;
use std::sync::Mutex;

use chat_core::history::{HistoryReply, HistoryRequest};
use lapin::message::Delivery;
use lapin::options::BasicPublishOptions;
use lapin::BasicProperties;
use tokio::sync::oneshot;

use super::Link;

/// RabbitMQ's pseudo-queue for direct reply-to.
pub(super) const REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// Why history could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("the broker is not connected")]
    NotConnected,
    #[error("cannot send the history request: {0}")]
    Failed(#[from] lapin::Error),
    #[error("the archive did not answer in time")]
    Timeout,
    #[error("the archive failed: {0}")]
    Archive(String),
}

/// The requests of one session waiting for their reply, by correlation id. Dropped with
/// the session, which fails every one of them at once.
#[derive(Debug, Default)]
pub(super) struct Waiting(Mutex<HashMap<String, oneshot::Sender<HistoryReply>>>);

impl Waiting {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<HistoryReply>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hands a direct reply to the request waiting for it.
    pub(super) fn answer(&self, reply: Delivery) {
        let Some(id) = reply
            .properties
            .correlation_id()
            .as_ref()
            .map(|s| s.to_string())
        else {
            return;
        };
        let Some(waiter) = self.lock().remove(&id) else {
            return; // the request timed out already
        };
        match serde_json::from_slice::<HistoryReply>(&reply.data) {
            Ok(reply) => {
                let _ = waiter.send(reply);
            }
            Err(err) => tracing::warn!(error = %err, "ignoring a malformed history reply"),
        }
    }
}

impl Link {
    /// Asks the archiver for a room's history over the broker.
    pub async fn history(&self, request: &HistoryRequest) -> Result<HistoryReply, HistoryError> {
        let session = self.current().ok_or(HistoryError::NotConnected)?;
        let correlation_id = chat_core::event::new_id();
        let (tx, rx) = oneshot::channel();
        session.waiting.lock().insert(correlation_id.clone(), tx);
        let body = serde_json::to_vec(request).expect("history requests serialise");
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_reply_to(REPLY_TO.into())
            .with_correlation_id(correlation_id.as_str().into())
            .with_expiration(self.history_timeout.as_millis().to_string().into());
        let sent = session
            .history
            .basic_publish(
                "".into(),
                self.topology.history_queue().into(),
                BasicPublishOptions::default(),
                &body,
                properties,
            )
            .await;
        let outcome = match sent {
            Err(err) => Err(HistoryError::Failed(err)),
            Ok(_) => match tokio::time::timeout(self.history_timeout, rx).await {
                Ok(Ok(reply)) => match reply.error {
                    Some(error) => Err(HistoryError::Archive(error)),
                    None => Ok(reply),
                },
                Ok(Err(_)) => Err(HistoryError::NotConnected),
                Err(_) => Err(HistoryError::Timeout),
            },
        };
        session.waiting.lock().remove(&correlation_id);
        outcome
    }
}
