//! Routing by room (`ROUTE_BY_ROOM`, on by default): a gateway's queue gets only the events
//! of the rooms it has local members in, so its cost follows its own clients instead of
//! the whole system's traffic. The queue is bound to the direct exchange `<prefix>.rooms`
//! (fed by the fanout `<prefix>.events`) with each served room's name as the key, and with
//! the empty key for the membership events every gateway needs (docs/topology.md).
//!
//! [`Routes`] is one session's table of bound rooms. A join binds its room and waits for
//! the broker's `bind-ok` before the join event is published and the history asked, so no
//! event can fall between the history and the live stream; each binding remembers where
//! the gateway's memory of recent events stood ([`Rooms::mark`]), for the join to check
//! that the archive has caught up with it (`connection::catch_up::reaches`). When a room's
//! last local member leaves, its binding is removed. A room's bind and unbind are
//! serialised by the room's own lock, and an unbind checks under it that the room is still
//! empty, so a join racing a leave always ends bound. A session that comes up binds every
//! served room before it says it is up, so gap repair (`repair.rs`) asks the archive only
//! once the live flow is back for every room.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chat_core::topology::Topology;
use lapin::Channel;
use tokio_util::sync::CancellationToken;

use super::reuse::Recent;
use crate::rooms::Rooms;

/// A room's binding on this session: the mark it was bound at, or `None` while unbound.
type Binding = Arc<tokio::sync::Mutex<Option<u64>>>;

/// The rooms bound for one session's queue.
pub(super) struct Routes {
    topology: Topology,
    /// A channel of its own: binds are broker transactions, and they must not hold up the
    /// deliveries on the consumer's channel.
    channel: Channel,
    /// The session's queue.
    queue: String,
    /// Every room bound, being bound or being unbound.
    rooms: Mutex<HashMap<Arc<str>, Binding>>,
    /// The session's kept history replies: an unbind makes its room's unusable.
    recent: Arc<Recent>,
    /// Cancelled when the broker refused a bind or unbind (the channel is then closed): the
    /// session ends, and the next one binds every served room afresh.
    pub(super) failed: CancellationToken,
}

impl Routes {
    pub(super) fn new(
        topology: Topology,
        channel: Channel,
        queue: String,
        recent: Arc<Recent>,
    ) -> Self {
        Self {
            topology,
            channel,
            queue,
            rooms: Mutex::default(),
            recent,
            failed: CancellationToken::new(),
        }
    }

    /// The channel, to close it with the session's others.
    pub(super) fn channel(&self) -> &Channel {
        &self.channel
    }

    fn binding(&self, room: &Arc<str>) -> Binding {
        self.lock().entry(room.clone()).or_default().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Binding>> {
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Binds the queue for `room` unless it is bound already, and returns the room's mark
    /// once the broker has confirmed the binding: every event of the room published from
    /// then on reaches this gateway.
    pub(super) async fn serve(&self, room: &Arc<str>, rooms: &Rooms) -> lapin::Result<u64> {
        let binding = self.binding(room);
        let mut bound = binding.lock().await;
        if let Some(mark) = *bound {
            return Ok(mark);
        }
        match self
            .topology
            .bind_room(&self.channel, &self.queue, room)
            .await
        {
            Ok(()) => {
                // Taken after the bind-ok: an event counted before it was not this binding's.
                let mark = rooms.mark();
                *bound = Some(mark);
                metrics::counter!("chat_route_changes_total", "change" => "bind").increment(1);
                Ok(mark)
            }
            Err(err) => {
                self.failed.cancel();
                Err(err)
            }
        }
    }

    /// The room's mark if it is bound now (not while its bind or unbind is under way).
    pub(super) fn bound(&self, room: &str) -> Option<u64> {
        let binding = self.lock().get(room)?.clone();
        let bound = *binding.try_lock().ok()?;
        bound
    }

    /// Removes the binding of `room` if it has no local member any more.
    pub(super) async fn release(&self, room: &Arc<str>, rooms: &Rooms) {
        let binding = self.binding(room);
        {
            let mut bound = binding.lock().await;
            // Checked under the room's lock: a join registers its member before it binds,
            // so either it is seen here, or its bind comes after this unbind.
            if bound.is_some() && !rooms.is_served(room) {
                match self
                    .topology
                    .unbind_room(&self.channel, &self.queue, room)
                    .await
                {
                    Ok(()) => {
                        *bound = None;
                        self.recent.forget(room);
                        metrics::counter!("chat_route_changes_total", "change" => "unbind")
                            .increment(1);
                    }
                    Err(err) => {
                        tracing::warn!(%room, error = %err, "cannot unbind a room");
                        self.failed.cancel();
                    }
                }
            }
        }
        let mut table = self.lock();
        if let Some(entry) = table.get(room) {
            // Only the table and this call hold it, and it is unbound: forget the room.
            let idle = Arc::strong_count(entry) == 2
                && entry.try_lock().is_ok_and(|bound| bound.is_none());
            if idle {
                table.remove(room);
            }
        }
    }

    /// How many rooms are bound or being bound.
    pub(super) fn len(&self) -> usize {
        self.lock().len()
    }
}
