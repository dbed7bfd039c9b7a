//! One broker session of the link: open and declare its three channels, publish them to
//! the [`Link`](super::Link) handles, then consume until shutdown or a broker failure:
//! events from the gateway's queue go to the local clients (acked lazily, [`LazyAck`]),
//! direct replies go to the history requests waiting for them.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use chat_core::broker::{self, Supervisor};
use chat_core::topology::Topology;
use chat_core::{Event, EventKind};
use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, BasicRejectOptions, ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use lapin::Connection;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::acks::{LazyAck, Next};
use super::history::{Waiting, REPLY_TO};
use super::Channels;
use crate::idempotency::{fingerprint, Says};
use crate::rooms::Rooms;

/// Most deliveries handed to clients before the consumer looks at its other duties.
const DELIVER_BATCH: usize = 256;
/// Longest a delivery stays unacked when no more arrive.
const ACK_DELAY: Duration = Duration::from_millis(25);

/// What the link does on each broker connection.
pub(super) struct LinkSession {
    pub(super) topology: Topology,
    /// Where consumed events go.
    pub(super) rooms: Arc<Rooms>,
    /// Told of every message consumed, so resends are recognised.
    pub(super) says: Arc<Says>,
    /// Unacked deliveries from the gateway's queue (`GATEWAY_PREFETCH`).
    pub(super) prefetch: u16,
    /// Where the [`Link`](super::Link) handles find the current session's channels.
    pub(super) channels: watch::Sender<Option<Arc<Channels>>>,
    pub(super) shutdown: CancellationToken,
}

impl broker::Session for LinkSession {
    async fn run(
        &mut self,
        connection: &Connection,
        supervisor: &mut Supervisor,
    ) -> anyhow::Result<()> {
        run(connection, self, supervisor).await
    }

    fn down(&mut self) {
        // Dropping the channels fails every pending history request at once.
        self.channels.send_replace(None);
    }
}

/// Runs one session on `connection`; `Ok` only on shutdown.
async fn run(
    connection: &Connection,
    link: &LinkSession,
    supervisor: &mut Supervisor,
) -> anyhow::Result<()> {
    let LinkSession {
        topology,
        rooms,
        says,
        prefetch,
        channels,
        shutdown,
    } = link;
    let prefetch = *prefetch;
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

    let waiting = Arc::new(Waiting::default());
    channels.send_replace(Some(Arc::new(Channels {
        publisher,
        history,
        waiting: waiting.clone(),
    })));
    supervisor.up();
    tracing::info!(%queue, "gateway linked to the broker");

    let mut acks = LazyAck::new(prefetch, ACK_DELAY);
    let ack_timer = tokio::time::sleep(ACK_DELAY);
    tokio::pin!(ack_timer);
    loop {
        let due = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return Ok(()),
            delivery = events.next() => match delivery {
                Some(first) => {
                    let mut delivered = 0;
                    let mut next = Some(first);
                    while let Some(delivery) = next.take() {
                        if let Some(valid) = deliver(rooms, says, delivery.context("Delivery failed")?).await? {
                            if let Next::AckBy(deadline) = acks.record(valid, Instant::now()) {
                                ack_timer.as_mut().reset(deadline);
                            }
                        }
                        delivered += 1;
                        if delivered < DELIVER_BATCH && !acks.is_full() {
                            // Everything already received goes out before the next wait.
                            next = events.next().now_or_never().flatten();
                        }
                    }
                    acks.is_full()
                }
                None => bail!("the broker cancelled the gateway's consumer"),
            },
            _ = &mut ack_timer, if acks.deadline().is_some() => true,
            reply = replies.next() => match reply {
                Some(reply) => {
                    waiting.answer(reply.context("Reply failed")?);
                    false
                }
                None => bail!("the broker cancelled the reply consumer"),
            },
        };
        if let Some(last) = due.then(|| acks.take()).flatten() {
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
