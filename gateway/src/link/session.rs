//! One broker session of the link: open and declare its channels, bind the rooms served
//! (when routing by room, [`Routes`]), publish them to the [`Link`](super::Link) handles,
//! then consume until shutdown or a broker failure: events from the gateway's queue go to
//! the local clients (acked lazily, [`LazyAck`]), direct replies go to the history requests
//! waiting for them, and rooms whose last local member left are unbound.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use chat_core::broker::{self, Acks, Supervisor};
use chat_core::topology::Topology;
use chat_core::{Event, EventKind};
use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{BasicQosOptions, BasicRejectOptions, ConfirmSelectOptions};
use lapin::Connection;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::acks::{LazyAck, Next};
use super::budget::WriteBudget;
use super::history::{Waiting, REPLY_TO};
use super::reuse::Recent;
use super::routes::Routes;
use super::Channels;
use crate::access::Projection;
use crate::idempotency::{fingerprint, Says};
use crate::rooms::{Handoff, Rooms};

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
    /// Folds every membership event consumed.
    pub(super) projection: Arc<Projection>,
    /// Unacked deliveries from the gateway's queue (`GATEWAY_PREFETCH`).
    pub(super) prefetch: u16,
    /// Whether the queue gets only the served rooms' events (`ROUTE_BY_ROOM`).
    pub(super) route_by_room: bool,
    /// How long a history reply answers further joins (`HISTORY_REUSE_MS`).
    pub(super) history_reuse: Duration,
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
        projection,
        prefetch,
        route_by_room,
        history_reuse,
        channels,
        shutdown,
    } = link;
    let prefetch = *prefetch;
    let publisher = chat_core::broker::open_channel(connection).await?;
    topology
        .declare_base(&publisher)
        .await
        .context("Failed to declare the exchanges")?;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .context("Failed to enable publisher confirms")?;

    let consumer_channel = chat_core::broker::open_channel(connection).await?;
    let queue = topology
        .declare_gateway_queue(&consumer_channel, *route_by_room)
        .await
        .context("Failed to declare the gateway queue")?;
    // A new session keeps no reply of the last one: events may have been missed between.
    let recent = Arc::new(Recent::new(*history_reuse));
    let routes = if *route_by_room {
        let channel = chat_core::broker::open_channel(connection).await?;
        let routes = Arc::new(Routes::new(
            topology.clone(),
            channel,
            queue.clone(),
            recent.clone(),
        ));
        // Every room with members here is bound before the session says it is up: gap
        // repair then asks the archive only once each room's live flow is back, and joins
        // find their room bound. The binds go out at once, one answer after the other.
        let served = rooms.names();
        futures_util::future::try_join_all(served.iter().map(|room| routes.serve(room, rooms)))
            .await
            .context("Failed to bind the served rooms")?;
        Some(routes)
    } else {
        None
    };
    consumer_channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await
        .context("Failed to set the prefetch")?;
    let mut events = broker::consume(&consumer_channel, &queue, "", Acks::Manual).await?;

    let history = chat_core::broker::open_channel(connection).await?;
    topology
        .declare_history_queue(&history)
        .await
        .context("Failed to declare the history queue")?;
    let mut replies = broker::consume(&history, REPLY_TO, "", Acks::Auto).await?;

    let waiting = Arc::new(Waiting::default());
    // Kept to close them at shutdown: a channel that is only dropped closes itself in the
    // background, racing the connection's close (lapin then logs a spurious error).
    let mut all = vec![publisher.clone(), history.clone(), consumer_channel.clone()];
    all.extend(routes.as_ref().map(|r| r.channel().clone()));
    let nacked = CancellationToken::new();
    // Before the first delivery of this session, and before the replay that the link's
    // coming up starts (`crate::access::run`): what was published while no queue of ours
    // existed is unknown, membership changes included, until that replay is done.
    projection.session_started();
    channels.send_replace(Some(Arc::new(Channels {
        publisher,
        history,
        waiting: waiting.clone(),
        nacked: nacked.clone(),
        routes: routes.clone(),
        recent,
    })));
    supervisor.up();
    let routed = routes.as_ref().map(|r| r.len());
    tracing::info!(%queue, ?routed, "gateway linked to the broker");
    let routes_failed = routes
        .as_ref()
        .map_or_else(CancellationToken::new, |r| r.failed.clone());

    // The unbinds of rooms whose last member left, each running beside the loop: a clean
    // shutdown lets those in flight finish before it closes their channel.
    let releases = TaskTracker::new();
    let mut acks = LazyAck::new(prefetch, ACK_DELAY);
    let mut budget = WriteBudget::new(Instant::now());
    let ack_timer = tokio::time::sleep(ACK_DELAY);
    tokio::pin!(ack_timer);
    loop {
        let due = tokio::select! {
            biased;
            _ = shutdown.cancelled() => {
                channels.send_replace(None);
                drop(events);
                drop(replies);
                releases.close();
                releases.wait().await;
                chat_core::broker::close_channels(&all).await;
                return Ok(());
            }
            _ = nacked.cancelled() => bail!("the broker nacked a publish; opening a fresh connection"),
            _ = routes_failed.cancelled() => bail!("the broker refused to bind or unbind a room; opening a fresh connection"),
            // History replies before events: in a join storm the events (a join per
            // joiner, each fanned out to the room) never stop coming, and a reply polled
            // only when none is ready would wait past HISTORY_TIMEOUT_MS while joins pile
            // up behind it. Replies are few and cheap to hand over.
            reply = replies.next() => match reply {
                Some(reply) => {
                    waiting.answer(reply.context("Reply failed")?);
                    false
                }
                None => bail!("the broker cancelled the reply consumer"),
            },
            // Rare and cheap: each unbind runs beside the loop, under its room's lock. Not
            // when shutting down: the queue goes with the connection anyway.
            emptied = rooms.emptied(), if routes.is_some() => {
                if let Some(routes) = routes.as_ref().filter(|_| !shutdown.is_cancelled()) {
                    for room in emptied {
                        let (routes, rooms) = (routes.clone(), rooms.clone());
                        releases.spawn(async move { routes.release(&room, &rooms).await });
                    }
                }
                false
            }
            delivery = events.next() => match delivery {
                Some(first) => {
                    let mut delivered = 0;
                    let mut next = Some(first);
                    while let Some(delivery) = next.take() {
                        delivered += 1;
                        if delivered < DELIVER_BATCH && !acks.is_full() {
                            // Everything already received goes out before the next wait.
                            next = events.next().now_or_never().flatten();
                        }
                        // Alone and within budget, an event is written to idle clients'
                        // sockets by the fanout; else queued for their writers (`budget`).
                        let started = Instant::now();
                        let handoff = budget.handoff(started, next.is_some());
                        let valid = deliver(rooms, says, projection, delivery.context("Delivery failed")?, handoff).await?;
                        if handoff == Handoff::Direct {
                            budget.spent(started.elapsed());
                        }
                        if let Some(valid) = valid {
                            if let Next::AckBy(deadline) = acks.record(valid, Instant::now()) {
                                ack_timer.as_mut().reset(deadline);
                            }
                        }
                    }
                    // What routing by room saves is seen here: the deliveries this gateway
                    // had to take from the broker, counted once per batch.
                    metrics::counter!("chat_events_consumed_total").increment(delivered as u64);
                    acks.is_full()
                }
                None => bail!("the broker cancelled the gateway's consumer"),
            },
            _ = &mut ack_timer, if acks.deadline().is_some() => true,
        };
        if let Some(last) = due.then(|| acks.take()).flatten() {
            broker::ack_through(last).await?;
        }
    }
}

/// Hands one delivery to the room's local members (repeats of recent events are dropped
/// there) and returns it, for the caller to ack. Garbage is rejected without requeue,
/// which dead-letters it.
async fn deliver(
    rooms: &Rooms,
    says: &Says,
    projection: &Projection,
    delivery: Delivery,
    handoff: Handoff,
) -> anyhow::Result<Option<Delivery>> {
    match Event::decode(&delivery.data) {
        Ok(event) => {
            if let (EventKind::Message, Some(text)) = (event.kind, event.text.as_deref()) {
                // Every message on the exchange, so a resend on this gateway of one posted
                // through another is recognised.
                says.observe(&event.id, fingerprint(&event.room, &event.user, text));
            }
            if event.kind.is_membership() && projection.apply(&event).is_some() {
                // Before the event itself goes out: a removed member does not get it, and
                // gets the `removed` message instead.
                rooms.evict_unreadable(projection);
            }
            if projection.holds_back(&event.room) {
                // A private room while the membership log is replayed after a new session:
                // not delivered (nor remembered as delivered), the gap repair that follows
                // the replay brings it to those who may read it.
                metrics::counter!("chat_events_held_back_total").increment(1);
            } else {
                rooms.deliver_by(&event, handoff);
            }
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
