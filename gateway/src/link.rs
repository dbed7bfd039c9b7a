//! The gateway's link to the broker. One supervised connection carries three channels: a
//! publisher channel in confirm mode, a consumer channel on the gateway's own exclusive
//! queue (every event, fanned out to local clients), and a history channel that asks the
//! archiver over direct reply-to. When the broker goes away the link reports unavailable
//! (`/healthz` says 503; a publish waits up to `PUBLISH_TIMEOUT_MS` for the link to come
//! back, then the client gets `unavailable`) and reconnects by itself, declaring its queue
//! again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use anyhow::{bail, Context};
use chat_core::broker::{event_properties, Blocked, Supervisor};
use chat_core::history::{HistoryReply, HistoryRequest};
use chat_core::topology::Topology;
use chat_core::{Event, EventKind};
use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, BasicRejectOptions,
    ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use lapin::PublisherConfirm;
use lapin::{BasicProperties, Channel, Connection};
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::idempotency::{fingerprint, Outcome, Says};
use crate::rooms::Rooms;

/// Most deliveries handed to clients before the consumer looks at its other duties.
const DELIVER_BATCH: usize = 256;
/// Longest a delivery stays unacked when no more arrive.
const ACK_DELAY: Duration = Duration::from_millis(25);

/// Pause before publishing again after a broker failure.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// RabbitMQ's pseudo-queue for direct reply-to.
const REPLY_TO: &str = "amq.rabbitmq.reply-to";

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

/// The live channels while connected.
struct Session {
    publisher: Channel,
    history: Channel,
    pending: Arc<Mutex<HashMap<String, oneshot::Sender<HistoryReply>>>>,
}

/// A cheap handle to the broker link, shared by every connection.
#[derive(Clone)]
pub struct Link {
    topology: Topology,
    session: watch::Receiver<Option<Arc<Session>>>,
    /// Set while the broker blocks the link's publishes (a memory or disk alarm).
    blocked: Arc<Blocked>,
    publish_timeout: Duration,
    history_timeout: Duration,
}

/// A publish the broker has accepted for confirmation.
pub struct PendingConfirm(PublisherConfirm);

impl PendingConfirm {
    /// Waits for the broker's confirm until `deadline`.
    async fn confirmed_by(self, deadline: Instant) -> Result<(), PublishError> {
        match tokio::time::timeout_at(deadline, self.0).await {
            Err(_) => Err(PublishError::Timeout),
            Ok(Err(err)) => Err(PublishError::Failed(err)),
            Ok(Ok(confirmation)) if confirmation.is_ack() => Ok(()),
            Ok(Ok(_)) => Err(PublishError::Nacked),
        }
    }
}

impl Link {
    /// Completes when the link goes up or down; then [`Link::is_ready`] tells which.
    pub async fn changed(&mut self) -> bool {
        self.session.changed().await.is_ok()
    }

    /// Whether the link is connected with its topology declared.
    pub fn is_ready(&self) -> bool {
        self.session.borrow().is_some()
    }

    /// The broker's reason while it blocks our publishes.
    pub fn blocked(&self) -> Option<String> {
        self.blocked.reason()
    }

    fn current(&self) -> Option<Arc<Session>> {
        self.session.borrow().clone()
    }

    /// Sends an event to the exchange, persistent; returns once the broker has it queued
    /// for confirmation, so that one client's messages keep their order. Await
    /// [`PendingConfirm::confirmed`] before telling the client it is safe.
    pub async fn publish(
        &self,
        event: &Event,
        payload: &[u8],
    ) -> Result<PendingConfirm, PublishError> {
        let session = self.current().ok_or(PublishError::NotConnected)?;
        if let Some(reason) = self.blocked.reason() {
            // It would wait unanswered until the alarm clears: refuse now instead.
            return Err(PublishError::Blocked(reason));
        }
        let confirm = session
            .publisher
            .basic_publish(
                self.topology.events_exchange().into(),
                "".into(),
                BasicPublishOptions::default(),
                payload,
                event_properties(event),
            )
            .await?;
        Ok(PendingConfirm(confirm))
    }

    /// Waits for the confirm of `first` (the result of [`Link::publish`]). If the broker
    /// connection was lost before it came, the same event, with the same id, is published
    /// again once the link is back, until `PUBLISH_TIMEOUT_MS` has passed; consumers dedupe
    /// by id. `Ok` means the broker has the event: only then may the client be told.
    pub async fn confirm(
        &self,
        first: Result<PendingConfirm, PublishError>,
        event: &Event,
        payload: &[u8],
    ) -> Result<(), PublishError> {
        let started = Instant::now();
        let outcome = self
            .confirm_or_retry(first, event, payload, started + self.publish_timeout)
            .await;
        match &outcome {
            Ok(()) => {
                metrics::histogram!("chat_publish_confirm_seconds")
                    .record(started.elapsed().as_secs_f64());
                metrics::counter!("chat_events_published_total", "type" => event.kind.as_str())
                    .increment(1);
            }
            Err(_) => metrics::counter!("chat_publish_failures_total").increment(1),
        }
        outcome
    }

    async fn confirm_or_retry(
        &self,
        first: Result<PendingConfirm, PublishError>,
        event: &Event,
        payload: &[u8],
        deadline: Instant,
    ) -> Result<(), PublishError> {
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
                Err(err @ (PublishError::Nacked | PublishError::Timeout)) => return Err(err),
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
            let mut session = self.session.clone();
            let back = matches!(
                tokio::time::timeout_at(deadline, session.wait_for(Option::is_some)).await,
                Ok(Ok(_))
            );
            if !back {
                return Err(if sent { PublishError::Lost } else { err });
            }
            tracing::debug!(id = %event.id, error = %err, "publishing again after a broker failure");
            attempt = self.publish(event, payload).await;
        }
    }

    /// Publishes an event and waits for its confirm, retrying as [`Link::confirm`] does.
    pub async fn publish_confirmed(&self, event: &Event) -> Result<(), PublishError> {
        let payload = event.to_json();
        let first = self.publish(event, payload.as_bytes()).await;
        self.confirm(first, event, payload.as_bytes()).await
    }

    /// Asks the archiver for a room's history over the broker.
    pub async fn history(&self, request: &HistoryRequest) -> Result<HistoryReply, HistoryError> {
        let session = self.current().ok_or(HistoryError::NotConnected)?;
        let correlation_id = chat_core::event::new_id();
        let (tx, rx) = oneshot::channel();
        lock(&session.pending).insert(correlation_id.clone(), tx);
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
        lock(&session.pending).remove(&correlation_id);
        outcome
    }
}

/// Starts the link's supervisor task; it runs until `shutdown` is cancelled.
pub fn start(
    config: &Config,
    topology: Topology,
    rooms: Arc<Rooms>,
    says: Arc<Says>,
    gateway_id: String,
    shutdown: CancellationToken,
) -> (Link, tokio::task::JoinHandle<()>) {
    let (state, session) = watch::channel(None);
    let blocked = Arc::new(Blocked::default());
    let link = Link {
        topology: topology.clone(),
        session,
        blocked: blocked.clone(),
        publish_timeout: config.publish_timeout(),
        history_timeout: config.history_timeout(),
    };
    let amqp_url = config.broker.amqp_url.clone();
    let prefetch = config.prefetch;
    let task = tokio::spawn(async move {
        let service = format!("gateway {gateway_id}");
        let mut supervisor =
            Supervisor::new(&amqp_url, &service, shutdown.clone()).report_blocked(blocked);
        while let Some(connection) = supervisor.connect().await {
            let outcome = run_session(
                &connection,
                &topology,
                &rooms,
                &says,
                prefetch,
                &state,
                &mut supervisor,
                &shutdown,
            )
            .await;
            // Dropping the session fails every pending history request at once.
            state.send_replace(None);
            if !supervisor.ended(connection, outcome).await {
                break;
            }
        }
    });
    (link, task)
}

#[allow(clippy::too_many_arguments)]
async fn run_session(
    connection: &Connection,
    topology: &Topology,
    rooms: &Rooms,
    says: &Says,
    prefetch: u16,
    state: &watch::Sender<Option<Arc<Session>>>,
    supervisor: &mut Supervisor,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let publisher = connection
        .create_channel()
        .await
        .context("Failed to open a channel")?;
    topology
        .declare_base(&publisher)
        .await
        .context("Failed to declare the exchanges")?;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .context("Failed to enable publisher confirms")?;

    let consumer_channel = connection
        .create_channel()
        .await
        .context("Failed to open a channel")?;
    let queue = topology
        .declare_gateway_queue(&consumer_channel)
        .await
        .context("Failed to declare the gateway queue")?;
    consumer_channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await
        .context("Failed to set the prefetch")?;
    let mut events = consumer_channel
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .context("Failed to consume the gateway queue")?;

    let history = connection
        .create_channel()
        .await
        .context("Failed to open a channel")?;
    topology
        .declare_history_queue(&history)
        .await
        .context("Failed to declare the history queue")?;
    let mut replies = history
        .basic_consume(
            REPLY_TO.into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .context("Failed to consume direct replies")?;

    let pending = Arc::new(Mutex::new(HashMap::new()));
    state.send_replace(Some(Arc::new(Session {
        publisher,
        history,
        pending: pending.clone(),
    })));
    supervisor.up();
    tracing::info!(%queue, "gateway linked to the broker");

    // Deliveries are acked together (multiple-ack) once a quarter of the prefetch window is
    // unacked, or ACK_DELAY after the first unacked one: every ack is a hand-off to the
    // AMQP client's I/O thread, and every gateway consumes every event. The queue is the
    // gateway's own and dies with its connection, so a late ack risks nothing.
    let ack_every = match prefetch {
        0 => 256,
        p => usize::from(p / 4).max(1),
    };
    let mut unacked: Option<Delivery> = None;
    let mut unacked_count = 0;
    let ack_timer = tokio::time::sleep(ACK_DELAY);
    tokio::pin!(ack_timer);
    loop {
        let due = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return Ok(()),
            delivery = events.next() => match delivery {
                Some(first) => {
                    let first_unacked = unacked.is_none();
                    let mut delivered = 0;
                    let mut next = Some(first);
                    while let Some(delivery) = next.take() {
                        if let Some(valid) = deliver(rooms, says, delivery.context("Delivery failed")?).await? {
                            unacked = Some(valid);
                            unacked_count += 1;
                        }
                        delivered += 1;
                        if delivered < DELIVER_BATCH && unacked_count < ack_every {
                            // Everything already received goes out before the next wait.
                            next = events.next().now_or_never().flatten();
                        }
                    }
                    if first_unacked && unacked.is_some() {
                        ack_timer.as_mut().reset(tokio::time::Instant::now() + ACK_DELAY);
                    }
                    unacked_count >= ack_every
                }
                None => bail!("the broker cancelled the gateway's consumer"),
            },
            _ = &mut ack_timer, if unacked.is_some() => true,
            reply = replies.next() => match reply {
                Some(reply) => {
                    answer(&pending, reply.context("Reply failed")?);
                    false
                }
                None => bail!("the broker cancelled the reply consumer"),
            },
        };
        if let Some(last) = due.then(|| unacked.take()).flatten() {
            unacked_count = 0;
            let acked = last
                .ack(BasicAckOptions { multiple: true })
                .await
                .context("Failed to ack")?;
            if !acked {
                bail!("the channel was lost before deliveries could be acked");
            }
        }
    }
}

/// Hands one delivery to the room's local members (repeats of recent events are dropped
/// there) and returns it, for the caller to ack. Garbage is rejected without requeue,
/// which dead-letters it.
async fn deliver(
    rooms: &Rooms,
    says: &Says,
    delivery: Delivery,
) -> anyhow::Result<Option<Delivery>> {
    match Event::decode(&delivery.data) {
        Ok(event) => {
            if let (EventKind::Message, Some(text)) = (event.kind, event.text.as_deref()) {
                // Every message on the exchange, so a resend on this gateway of one posted
                // through another is recognised.
                says.observe(&event.id, fingerprint(&event.room, &event.user, text));
            }
            rooms.deliver(&event);
            Ok(Some(delivery))
        }
        Err(err) => {
            metrics::counter!("chat_dead_lettered_total", "consumer" => "gateway").increment(1);
            tracing::warn!(error = %err, bytes = delivery.data.len(), "dead-lettering a delivery that is not a valid event");
            delivery
                .reject(BasicRejectOptions { requeue: false })
                .await
                .context("Failed to reject an invalid delivery")?;
            Ok(None)
        }
    }
}

/// Hands a direct reply to the request waiting for it.
fn answer(pending: &Mutex<HashMap<String, oneshot::Sender<HistoryReply>>>, reply: Delivery) {
    let Some(id) = reply
        .properties
        .correlation_id()
        .as_ref()
        .map(|s| s.to_string())
    else {
        return;
    };
    let Some(waiter) = lock(pending).remove(&id) else {
        return; // the request timed out already
    };
    match serde_json::from_slice::<HistoryReply>(&reply.data) {
        Ok(reply) => {
            let _ = waiter.send(reply);
        }
        Err(err) => tracing::warn!(error = %err, "ignoring a malformed history reply"),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
