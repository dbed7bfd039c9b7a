//! The writer of one connection: it owns the socket's sending half and alone decides what
//! the client sees and in which order. That is what makes a join gap-free: events of a
//! joining room are buffered from the moment the client is registered, the history is
//! sent, then the events the history did not already contain ([`super::catch_up`]).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::catch_up::{self, JoinBuffer};
use super::{kick_close, CLOSE_GRACE, KICK_GRACE};
use crate::liveness::Heartbeat;
use crate::outbox;
use crate::rooms::{Joined, Outbound};
use crate::ws::{self, frame};

/// What the writer knows of a room.
enum RoomView {
    /// Joining: live events wait here until the history has been sent.
    Buffering(JoinBuffer),
    /// Joined: live events go straight out.
    Live,
}

/// Owns the sending half: applies [`Outbound`] items in order until a close is requested,
/// the queue closes, or `kick` fires (a full queue, or the reader going away); a failed send
/// kicks the reader in turn. Whatever queued up while a write was in progress goes out in
/// the next write, so a burst costs one system call. A write blocked on a client that does
/// not read is abandoned on kick, so a stuck client cannot hold its task forever.
pub(super) async fn write_loop(
    mut writer: ws::Writer,
    mut inbox: outbox::Receiver<Outbound>,
    kick: CancellationToken,
    heartbeat: Arc<Heartbeat>,
) {
    let mut rooms: HashMap<Arc<str>, RoomView> = HashMap::new();
    let mut close = None;
    let mut batch = VecDeque::new();
    let kicked = loop {
        let received = tokio::select! {
            biased;
            _ = kick.cancelled() => break true,
            received = inbox.recv_all(&mut batch) => received,
        };
        if !received {
            break false;
        }
        // Everything queued meanwhile goes out in one write.
        while let Some(out) = batch.pop_front() {
            if let Outbound::Close(code_reason) = out {
                close = Some(*code_reason);
                break;
            }
            apply(&mut writer, &mut rooms, &kick, out);
        }
        batch.clear();
        if batch.capacity() > 64 {
            // A burst grew it: an idle client keeps only a small buffer.
            batch = VecDeque::new();
        }
        let written = tokio::select! {
            _ = kick.cancelled() => break true,
            written = writer.flush() => written,
        };
        if written.is_err() {
            kick.cancel();
            break true;
        }
        if close.is_some() {
            break false;
        }
    };
    let (code, reason, grace) = if kicked {
        // Too slow, silent past its ping, or its close could not be queued: say so if the
        // socket still takes a frame, but do not wait for a client that does not read.
        let (code, reason) = kick_close(&heartbeat);
        (code, reason, KICK_GRACE)
    } else {
        let (code, reason) = close.unwrap_or((1000, ""));
        (code, reason, CLOSE_GRACE)
    };
    writer.push(frame::close(code, reason));
    let _ = tokio::time::timeout(grace, writer.flush()).await;
}

/// Applies one queued item: queues its frame for the socket (the caller flushes), keeps it
/// for after a join's history, or updates the room view.
fn apply(
    writer: &mut ws::Writer,
    rooms: &mut HashMap<Arc<str>, RoomView>,
    kick: &CancellationToken,
    out: Outbound,
) {
    match out {
        Outbound::Frame(text) => writer.push(frame::text(&text)),
        Outbound::Raw(bytes) => writer.push(*bytes),
        Outbound::Joining(room) => {
            rooms.insert(room, RoomView::Buffering(JoinBuffer::new()));
        }
        Outbound::Event(event) => match rooms.get_mut(&event.room) {
            Some(RoomView::Live) => writer.push(event.frame.clone()),
            Some(RoomView::Buffering(buffer)) => {
                let kept = buffer.push(event);
                if !kept {
                    // Too far behind to be caught up without a gap: it resumes with since.
                    kick.cancel();
                }
            }
            None => {}
        },
        Outbound::Joined(joined) => {
            let Joined {
                room,
                frames,
                history_ids,
                unarchived,
            } = *joined;
            let buffered = match rooms.get_mut(&room) {
                Some(view @ RoomView::Buffering(_)) => {
                    match std::mem::replace(view, RoomView::Live) {
                        RoomView::Buffering(buffer) => buffer.into_events(),
                        RoomView::Live => Vec::new(),
                    }
                }
                // A second join of the same room answered after the first: the room is
                // live already, so only the (possibly overlapping) history is sent.
                Some(RoomView::Live) => Vec::new(),
                // The client left while its history was loading.
                None => return,
            };
            for text in &frames {
                writer.push(frame::text(text));
            }
            // After the history: the events received before the join but not archived yet,
            // then those buffered since, each once.
            for event in catch_up::after_history(history_ids, unarchived, buffered) {
                writer.push(event.frame.clone());
            }
        }
        Outbound::Left(left) => {
            let (room, frame) = *left;
            rooms.remove(&room);
            if let Some(text) = frame {
                writer.push(frame::text(&text));
            }
        }
        Outbound::Close(_) => {}
    }
}
