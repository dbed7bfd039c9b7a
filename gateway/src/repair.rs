//! Gap repair after a broker outage. A gateway's queue is exclusive: it dies with the
//! connection, so events published after the broker came back but before this gateway
//! declared its queue again never reach it. When the link comes back up (routed by room,
//! the session has bound every served room before it says so), the gateway asks
//! the archive for the recent events of every room it has members in and delivers those
//! from around the outage onwards that its clients have not seen (the room registry drops
//! the ones they have). Recovered events may arrive after newer live ones.
//!
//! The repair begins only once the access projection is current again (the membership
//! log replayed after the outage, `crate::access`): a member removed from a private room
//! while the link was down is evicted first, so the repair brings them nothing of it, and
//! the private rooms' events held back meanwhile reach the members who may read them.

use std::sync::Arc;
use std::time::Duration;

use chat_core::history::HistoryRequest;
use chrono::{DateTime, TimeDelta, Utc};
use tokio_util::sync::CancellationToken;

use crate::access::Projection;
use crate::link::Link;
use crate::rooms::Rooms;

/// When to look after the link is back: soon, and once more after the archive has surely
/// caught up with what other gateways published meanwhile.
const PASSES: [Duration; 2] = [Duration::from_millis(300), Duration::from_secs(3)];
/// Events this long before the outage was noticed are looked at too (clock skew between
/// gateways, events in flight when the connection broke).
const MARGIN: TimeDelta = TimeDelta::seconds(5);
/// Most recent events fetched per room and pass.
const WINDOW: u32 = 500;

/// Watches the link until `shutdown`; after each outage, repairs every room's gap.
pub async fn run(
    mut link: Link,
    rooms: Arc<Rooms>,
    projection: Arc<Projection>,
    shutdown: CancellationToken,
) {
    let mut lost_at: Option<DateTime<Utc>> = None;
    let mut was_up = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = link.changed() => if !changed { return },
        }
        let up = link.is_ready();
        if !up && was_up {
            lost_at = Some(Utc::now());
        }
        was_up = up;
        let Some(since) = lost_at.filter(|_| up) else {
            continue;
        };
        lost_at = None;
        // However long the replay takes (the archiver may be down too): the passes below
        // then look back far enough, from the outage on.
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = projection.until_current() => {}
        }
        for delay in PASSES {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            // A pass asks the archive about every room, each ask bounded by the history
            // timeout: shutdown must not wait for all of them.
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = repair(&link, &rooms, &projection, since - MARGIN) => {}
            }
        }
    }
}

/// One pass over every room with local members.
async fn repair(link: &Link, rooms: &Rooms, projection: &Projection, from: DateTime<Utc>) {
    let mut recovered: u64 = 0;
    for room in rooms.names() {
        let request = HistoryRequest {
            room: room.to_string(),
            limit: WINDOW,
            since: None,
        };
        match link.history(&request).await {
            Ok(reply) => {
                for event in reply.events.iter().filter(|e| e.at >= from) {
                    // A membership change the replay missed (an archive that was still
                    // catching up when it answered) takes effect before what follows it.
                    if event.kind.is_membership() && projection.apply(event).is_some() {
                        rooms.evict_unreadable(projection);
                    }
                    if rooms.deliver(event) {
                        recovered += 1;
                    }
                }
            }
            Err(err) => {
                tracing::warn!(%room, error = %err, "cannot repair the room's gap after an outage")
            }
        }
    }
    metrics::counter!("chat_events_recovered_total").increment(recovered);
    if recovered > 0 {
        tracing::info!(recovered, "delivered events missed during a broker outage");
    }
}
