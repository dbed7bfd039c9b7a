//! The writer of one connection: it owns the socket's sending half and alone decides what
//! the client sees and in which order. That is what makes a join gap-free: events of a
//! joining room are buffered from the moment the client is registered, the history is
//! sent, then the events the history did not already contain ([`super::catch_up`]).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::catch_up::{self, JoinBuffer};
use super::{kick_close, CLOSE_GRACE, KICK_GRACE};
use crate::close::Close;
use crate::liveness::Heartbeat;
use crate::outbox;
use crate::rooms::{Joined, Left, Outbound};
use crate::ws::{self, frame};

/// What the writer knows of a room.
enum RoomView {
    /// Joining: live events wait here until the history has been sent.
    Buffering(JoinBuffer),
    /// Joined: live events go straight out.
    Live,
}

/// Write coalescing (`WRITE_DELAY_MS`, `WRITE_MAX_MESSAGES`), as Centrifugo's `write_delay`
/// and maximum messages per frame: after the first frame of a burst the writer waits
/// `delay`, so that what queues up meanwhile goes out with it, at most `max_frames` frames
/// per write. A zero delay (the default) writes as soon as something is queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Coalescing {
    /// How long the first frame of a burst waits for others.
    pub delay: Duration,
    /// Most frames in one write when coalescing; more go out in further writes at once.
    pub max_frames: usize,
}

/// Owns the sending half: applies [`Outbound`] items in order until a close is requested,
/// the queue closes, or `kick` fires (a full queue, or the reader going away); a failed send
/// kicks the reader in turn. Whatever queued up while a write was in progress goes out in
/// the next write, so a burst costs one system call; with [`Coalescing`], the writer also
/// waits its delay before taking the queue. A write blocked on a client that does not read
/// is abandoned on kick, so a stuck client cannot hold its task forever. While it waits on
/// an empty queue (no write delay, no join buffering), live events are written by the
/// fanout directly; the queue revokes that the moment anything else is queued or the wait
/// ends, so the order is the queue's order.
pub(super) async fn write_loop(
    mut writer: ws::Writer,
    mut inbox: outbox::Receiver<Outbound, ws::Direct>,
    kick: CancellationToken,
    heartbeat: Arc<Heartbeat>,
    coalescing: Coalescing,
) {
    let mut rooms: HashMap<Arc<str>, RoomView> = HashMap::new();
    // Rooms the client was removed from since it last asked to join them.
    let mut removed: HashSet<Arc<str>> = HashSet::new();
    let mut close = None;
    let mut batch = VecDeque::new();
    // Frames per write: unbounded unless coalescing.
    let max_frames = if coalescing.delay.is_zero() {
        usize::MAX
    } else {
        coalescing.max_frames.max(1)
    };
    let kicked = 'burst: loop {
        // Waiting with nothing in hand, every room live and no write delay: the fanout may
        // write live events to the socket itself meanwhile (`rooms::Outbox`), which saves
        // waking this task for each. Buffering a join, the events must come through here.
        let bypass = (coalescing.delay.is_zero()
            && rooms.values().all(|view| matches!(view, RoomView::Live)))
        .then(|| writer.direct());
        let received = tokio::select! {
            biased;
            _ = kick.cancelled() => break true,
            received = inbox.recv_all_or_bypass(&mut batch, bypass) => received,
        };
        if !received {
            break false;
        }
        if !coalescing.delay.is_zero() {
            // Coalescing: what queues up during the delay goes out with this burst.
            tokio::select! {
                biased;
                _ = kick.cancelled() => break true,
                _ = tokio::time::sleep(coalescing.delay) => {}
            }
            inbox.take_queued(&mut batch);
        }
        // Everything queued meanwhile goes out in one write (or, coalescing, in writes of
        // at most `max_frames` frames).
        while let Some(out) = batch.pop_front() {
            if let Outbound::Close(requested) = out {
                close = Some(*requested);
                break;
            }
            apply(&mut writer, &mut rooms, &mut removed, &kick, out);
            if writer.pending_frames() >= max_frames && !write(&mut writer, &kick).await {
                break 'burst true;
            }
        }
        batch.clear();
        if batch.capacity() > 64 {
            // A burst grew it: an idle client keeps only a small buffer.
            batch = VecDeque::new();
        }
        if !write(&mut writer, &kick).await {
            break true;
        }
        if close.is_some() {
            break false;
        }
    };
    let (close, grace) = if kicked {
        // Too slow, silent past its ping, or its close could not be queued: say so if the
        // socket still takes a frame, but do not wait for a client that does not read.
        (kick_close(&heartbeat), KICK_GRACE)
    } else {
        (close.unwrap_or(Close::NORMAL), CLOSE_GRACE)
    };
    writer.push(frame::close(close.code, close.reason));
    let _ = tokio::time::timeout(grace, writer.flush()).await;
}

/// Writes what the writer holds, unless kicked first; false (and kicked) if the connection
/// is over.
async fn write(writer: &mut ws::Writer, kick: &CancellationToken) -> bool {
    let written = tokio::select! {
        _ = kick.cancelled() => return false,
        written = writer.flush() => written,
    };
    if written.is_err() {
        kick.cancel();
        return false;
    }
    true
}

/// Applies one queued item: queues its frame for the socket (the caller flushes), keeps it
/// for after a join's history, or updates the room view.
fn apply(
    writer: &mut ws::Writer,
    rooms: &mut HashMap<Arc<str>, RoomView>,
    removed: &mut HashSet<Arc<str>>,
    kick: &CancellationToken,
    out: Outbound,
) {
    match out {
        Outbound::Message(text) => writer.push(frame::text(&text)),
        Outbound::Encoded(bytes) => writer.push(*bytes),
        Outbound::Joining(room) => {
            removed.remove(&room);
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
                messages,
                history_ids,
                unarchived,
                refused,
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
                // Removed from the private room while its history was loading (a room
                // this gateway took for public until its creation arrived, say): the join
                // is answered, refused, after the `removed` message.
                None if removed.contains(&room) => {
                    writer.push(frame::text(&refused));
                    return;
                }
                // The client left while its history was loading.
                None => return,
            };
            for text in &messages {
                writer.push(frame::text(text));
            }
            // After the history: the events received before the join but not archived yet,
            // then those buffered since, each once.
            for event in catch_up::after_history(&history_ids, unarchived, buffered) {
                writer.push(event.frame.clone());
            }
        }
        Outbound::Left(left) => {
            let Left {
                room,
                message,
                removed: evicted,
            } = *left;
            rooms.remove(&room);
            if evicted {
                removed.insert(room.clone());
            } else {
                removed.remove(&room);
            }
            if let Some(text) = message {
                writer.push(frame::text(&text));
            }
        }
        Outbound::Close(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::liveness::Liveness;
    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpStream};

    /// Reads server frames (unmasked, short) until the close frame; returns the texts and
    /// the close code.
    async fn read_until_close(client: &mut TcpStream) -> (Vec<String>, u16) {
        let mut texts = Vec::new();
        loop {
            let mut header = [0u8; 2];
            client.read_exact(&mut header).await.unwrap();
            let len = match header[1] & 0x7F {
                126 => {
                    let mut ext = [0u8; 2];
                    client.read_exact(&mut ext).await.unwrap();
                    usize::from(u16::from_be_bytes(ext))
                }
                n => usize::from(n),
            };
            let mut payload = vec![0u8; len];
            client.read_exact(&mut payload).await.unwrap();
            match header[0] & 0x0F {
                0x1 => texts.push(String::from_utf8(payload).unwrap()),
                0x8 => return (texts, u16::from_be_bytes([payload[0], payload[1]])),
                other => panic!("unexpected opcode {other}"),
            }
        }
    }

    struct Harness {
        client: TcpStream,
        outbox: crate::rooms::Outbox,
        kick: CancellationToken,
        writer: tokio::task::JoinHandle<()>,
    }

    async fn start(coalescing: Coalescing) -> Harness {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (_read, write) = server.into_split();
        let (outbox, inbox) = outbox::channel(64);
        let kick = CancellationToken::new();
        let liveness = Liveness::new(Duration::from_secs(60), Duration::from_secs(60));
        let heartbeat = liveness.add(1, outbox.clone(), kick.clone());
        let writer = tokio::spawn(write_loop(
            ws::Writer::new(write),
            inbox,
            kick.clone(),
            heartbeat,
            coalescing,
        ));
        Harness {
            client,
            outbox,
            kick,
            writer,
        }
    }

    fn message(text: &str) -> Outbound {
        Outbound::Message(text.into())
    }

    #[tokio::test]
    async fn coalesced_or_not_every_message_arrives_once_and_in_order_before_the_close() {
        let expected: Vec<String> = (0..10).map(|i| format!("m{i}")).collect();
        for (delay, max_frames) in [(0, 64), (20, 64), (20, 3), (20, 1)] {
            let coalescing = Coalescing {
                delay: Duration::from_millis(delay),
                max_frames,
            };
            let mut h = start(coalescing).await;
            // Some before the writer takes the queue, some while it waits or writes.
            for text in &expected[..4] {
                h.outbox.try_send(message(text)).unwrap();
            }
            tokio::task::yield_now().await;
            for text in &expected[4..] {
                h.outbox.send(message(text)).await.unwrap();
            }
            h.outbox
                .send(Outbound::Close(Box::new(Close::NORMAL)))
                .await
                .unwrap();
            let (texts, code) = read_until_close(&mut h.client).await;
            assert_eq!(texts, expected, "{coalescing:?}");
            assert_eq!(code, 1000);
            h.writer.await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_join_whose_member_is_removed_while_its_history_loads_is_refused_not_left_unanswered()
    {
        let mut h = start(Coalescing {
            delay: Duration::ZERO,
            max_frames: 64,
        })
        .await;
        let room: Arc<str> = Arc::from("board");
        let joined = |n: usize| {
            Outbound::Joined(Box::new(Joined {
                room: room.clone(),
                messages: vec![format!("joined {n}")],
                history_ids: Arc::from([]),
                unarchived: Vec::new(),
                refused: format!("forbidden {n}"),
            }))
        };
        let left = |removed: bool| {
            Outbound::Left(Box::new(Left {
                room: room.clone(),
                message: Some(if removed { "removed" } else { "left" }.into()),
                removed,
            }))
        };
        for out in [
            // Removed while the first join's history loads: refused.
            Outbound::Joining(room.clone()),
            left(true),
            joined(1),
            // Joined again, then a leave of its own while loading: nothing more to say.
            Outbound::Joining(room.clone()),
            left(false),
            joined(2),
            // A join that completes.
            Outbound::Joining(room.clone()),
            joined(3),
            Outbound::Close(Box::new(Close::NORMAL)),
        ] {
            h.outbox.send(out).await.unwrap();
        }
        let (texts, _) = read_until_close(&mut h.client).await;
        assert_eq!(texts, ["removed", "forbidden 1", "left", "joined 3"]);
        h.writer.await.unwrap();
    }

    #[tokio::test]
    async fn a_kick_during_the_write_delay_ends_the_writer_with_too_slow() {
        let mut h = start(Coalescing {
            delay: Duration::from_secs(3600),
            max_frames: 64,
        })
        .await;
        h.outbox.try_send(message("waits")).unwrap();
        tokio::task::yield_now().await;
        h.kick.cancel();
        let (_, code) = read_until_close(&mut h.client).await;
        assert_eq!(code, Close::TOO_SLOW.code);
        h.writer.await.unwrap();
    }

    /// The fanout writes live events to the socket itself while the writer waits with
    /// nothing queued; messages queued in between (acks, say) must still come out in the
    /// order they were handed over, and a join's history before the room's live events.
    #[tokio::test]
    async fn events_written_by_the_fanout_and_frames_queued_between_them_arrive_in_order() {
        use crate::rooms::{Handoff, Member, Rooms};
        use chat_core::{Event, EventKind};

        let mut h = start(Coalescing {
            delay: Duration::ZERO,
            max_frames: 64,
        })
        .await;
        let rooms = Rooms::default();
        let room: Arc<str> = Arc::from("lobby");
        h.outbox
            .send(Outbound::Joining(room.clone()))
            .await
            .unwrap();
        rooms.join(
            &room,
            1,
            Member {
                outbox: h.outbox.clone(),
                kick: h.kick.clone(),
                user: None,
                name: "ann".into(),
                admin: false,
            },
        );
        let say = |text: String| Event::new(EventKind::Message, "lobby", "bob", Some(text), "gw-1");
        // Buffered while the history loads: after the `joined`, not before.
        rooms.deliver_by(&say("early".into()), Handoff::Direct);
        h.outbox
            .send(Outbound::Joined(Box::new(Joined {
                room: room.clone(),
                messages: vec!["joined".into()],
                history_ids: Arc::from([]),
                unarchived: Vec::new(),
                refused: String::new(),
            })))
            .await
            .unwrap();
        let mut expected = vec!["joined".to_string(), "early".to_string()];
        for i in 0..30 {
            if i % 2 == 0 {
                // Time for the writer to go back to waiting, so the fanout finds its socket.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            rooms.deliver_by(&say(format!("e{i}")), Handoff::Direct);
            expected.push(format!("e{i}"));
            if i % 3 == 0 {
                h.outbox.send(message(&format!("m{i}"))).await.unwrap();
                expected.push(format!("m{i}"));
            }
        }
        h.outbox
            .send(Outbound::Close(Box::new(Close::NORMAL)))
            .await
            .unwrap();
        let (texts, code) = read_until_close(&mut h.client).await;
        let seen: Vec<String> = texts
            .iter()
            .map(
                |text| match serde_json::from_str::<serde_json::Value>(text) {
                    Ok(json) => json["event"]["text"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    Err(_) => text.clone(),
                },
            )
            .collect();
        assert_eq!(seen, expected);
        assert_eq!(code, 1000);
        h.writer.await.unwrap();
    }
}
