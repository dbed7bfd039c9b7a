//! History over the broker: a request to `<prefix>.history` with RabbitMQ's direct
//! reply-to, and the replies matched back to their waiting requests by correlation id.
//! Identical history requests in flight at once are sent once and share the reply
//! ([`SingleFlight`]); a join's reply is made a [`Page`] once, for all who share it and for
//! the joins that follow ([`super::reuse`]). The same path carries the membership replay
//! and the look-up of an edit's, deletion's or reaction's target message.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chat_core::history::{
    HistoryReply, HistoryRequest, MembershipReply, MembershipRequest, TargetMessage, TargetReply,
    TargetRequest, MEMBERSHIP_TYPE, TARGET_TYPE,
};
use lapin::message::Delivery;
use lapin::options::BasicPublishOptions;
use lapin::BasicProperties;
use tokio::sync::oneshot;

use super::page::Page;
use super::single_flight::{Role, SingleFlight};
use super::Link;

/// History requests in flight, each asked of the archive once however many callers wait
/// for it: the gap repair's and a room creation's, which need the events themselves.
pub(super) type HistoryCalls =
    SingleFlight<HistoryRequest, Result<Arc<HistoryReply>, HistoryError>>;

/// Joins' history requests in flight, each asked once however many joins wait for it.
pub(super) type PageCalls = SingleFlight<HistoryRequest, Result<Arc<Page>, HistoryError>>;

/// RabbitMQ's pseudo-queue for direct reply-to.
pub(super) const REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// Why history could not be fetched. Cloned to every request that shared the failed one.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HistoryError {
    #[error("the broker is not connected")]
    NotConnected,
    #[error("cannot send the history request: {0}")]
    Failed(Arc<lapin::Error>),
    #[error("the archive did not answer in time")]
    Timeout,
    #[error("the archive failed: {0}")]
    Archive(String),
    #[error("the archive knows the room as private and this gateway's access state has not caught up yet")]
    AccessBehind,
}

/// The requests of one session waiting for their reply, by correlation id. Dropped with
/// the session, which fails every one of them at once.
#[derive(Debug, Default)]
pub(super) struct Waiting(Mutex<HashMap<String, oneshot::Sender<Vec<u8>>>>);

impl Waiting {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<Vec<u8>>>> {
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
        let _ = waiter.send(reply.data);
    }
}

impl Link {
    /// Asks the archiver for a room's history over the broker; a request identical to one
    /// in flight waits for that one's reply instead of being sent again.
    pub async fn history(
        &self,
        request: &HistoryRequest,
    ) -> Result<Arc<HistoryReply>, HistoryError> {
        let (reply, role) = self
            .history_calls
            .run(request.clone(), || async {
                self.ask_history(request).await.map(Arc::new)
            })
            .await;
        count(role);
        reply
    }

    /// A join's history: asked of the archiver as [`Link::history`] does, shared with the
    /// joins asking at the same time, encoded once, and kept for the joins that follow
    /// ([`Link::recent_history`]).
    pub async fn page(&self, request: &HistoryRequest) -> Result<Arc<Page>, HistoryError> {
        let (page, role) = self
            .page_calls
            .run(request.clone(), || async {
                let recent = self.current().map(|session| session.recent.clone());
                let ticket = recent.as_ref().map(|recent| recent.ticket());
                let page = Arc::new(Page::new(self.ask_history(request).await?));
                if let (Some(recent), Some(ticket)) = (recent, ticket) {
                    recent.keep(ticket, request, &page);
                }
                Ok(page)
            })
            .await;
        count(role);
        page
    }

    /// A join's history that this session received less than a second ago, while the
    /// room stayed bound (see [`super::reuse`]); the caller must still check that the
    /// events after it are known.
    pub fn recent_history(&self, request: &HistoryRequest) -> Option<Arc<Page>> {
        self.current()?.recent.get(request)
    }

    /// One history request sent to the archiver, its answer or its error.
    async fn ask_history(&self, request: &HistoryRequest) -> Result<HistoryReply, HistoryError> {
        let body = serde_json::to_vec(request).expect("history requests serialise");
        let reply: HistoryReply = self.ask(&body, None).await?;
        match reply.error {
            Some(error) => Err(HistoryError::Archive(error)),
            None => Ok(reply),
        }
    }

    /// Asks the archiver for one page of the membership replay over the broker.
    pub async fn membership(
        &self,
        request: &MembershipRequest,
    ) -> Result<MembershipReply, HistoryError> {
        let body = serde_json::to_vec(request).expect("membership requests serialise");
        let reply: MembershipReply = self.ask(&body, Some(MEMBERSHIP_TYPE)).await?;
        match reply.error {
            Some(error) => Err(HistoryError::Archive(error)),
            None => Ok(reply),
        }
    }

    /// Asks the archiver about the message an edit, deletion or reaction targets: `None`
    /// when the room has no message with that id. An error means the archive could not
    /// answer; the caller must not guess.
    pub async fn target(
        &self,
        request: &TargetRequest,
    ) -> Result<Option<TargetMessage>, HistoryError> {
        let body = serde_json::to_vec(request).expect("target requests serialise");
        let reply: TargetReply = self.ask(&body, Some(TARGET_TYPE)).await?;
        match reply.error {
            Some(error) => Err(HistoryError::Archive(error)),
            None => Ok(reply.message),
        }
    }

    /// Sends a request to the history queue and waits for its direct reply.
    async fn ask<T: serde::de::DeserializeOwned>(
        &self,
        body: &[u8],
        kind: Option<&str>,
    ) -> Result<T, HistoryError> {
        let session = self.current().ok_or(HistoryError::NotConnected)?;
        let correlation_id = chat_core::event::new_id();
        let (tx, rx) = oneshot::channel();
        session.waiting.lock().insert(correlation_id.clone(), tx);
        let mut properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_reply_to(REPLY_TO.into())
            .with_correlation_id(correlation_id.as_str().into())
            .with_expiration(self.history_timeout.as_millis().to_string().into());
        if let Some(kind) = kind {
            properties = properties.with_type(kind.into());
        }
        let sent = session
            .history
            .basic_publish(
                "".into(),
                self.topology.history_queue().into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await;
        let outcome = match sent {
            Err(err) => Err(HistoryError::Failed(Arc::new(err))),
            Ok(_) => match tokio::time::timeout(self.history_timeout, rx).await {
                Ok(Ok(reply)) => serde_json::from_slice(&reply)
                    .map_err(|e| HistoryError::Archive(format!("a malformed reply: {e}"))),
                Ok(Err(_)) => Err(HistoryError::NotConnected),
                Err(_) => Err(HistoryError::Timeout),
            },
        };
        session.waiting.lock().remove(&correlation_id);
        outcome
    }
}

/// Counts a history request as sent (`asked`) or answered by one in flight (`shared`).
fn count(role: Role) {
    let role = match role {
        Role::Made => "asked",
        Role::Shared => "shared",
    };
    metrics::counter!("chat_history_asks_total", "role" => role).increment(1);
}
