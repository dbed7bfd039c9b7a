//! One websocket client: a reader that turns frames into commands and a writer that owns
//! the socket's sending half. The writer alone decides what the client sees and in which
//! order, so a join can be made gap-free: events of a joining room are buffered from the
//! moment the client is registered, the history is sent, then the buffered events that the
//! history did not already contain.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use chat_core::history::HistoryRequest;
use chat_core::{Event, EventKind};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::idempotency::{self, Claim, Outcome};
use crate::link::PublishError;
use crate::liveness::Heartbeat;
use crate::outbox;
use crate::protocol::{self, Command, LimitsView, Rejection, ServerFrame};
use crate::ratelimit::{RateLimiter, Verdict};
use crate::rooms::{ConnId, Joined, Member, Outbound, SharedEvent};
use crate::ws::{self, frame, Incoming, ReadError};
use crate::State;

/// Close code when the gateway shuts down: clients reconnect elsewhere.
const CLOSE_RESTART: u16 = 1012;
/// Close code for a client that kept flooding after `rate_limited` errors.
const CLOSE_POLICY: u16 = 1008;
/// Close code for a client whose queue overflowed; it may reconnect and resume.
const CLOSE_SLOW: u16 = 4008;
const REASON_SLOW: &str = "too slow: reconnect and resume with since";
/// Close code for a client that answered no ping within `PING_TIMEOUT_MS`.
const CLOSE_PING_TIMEOUT: u16 = 4009;
const REASON_PING_TIMEOUT: &str = "ping timeout: reconnect and resume with since";
/// How long the final close frame may take to be queued before the socket is just dropped.
const CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(1);
/// How long a kicked client's socket may take to accept the 4008 close frame.
const KICK_GRACE: std::time::Duration = std::time::Duration::from_millis(250);
/// Most live events buffered for a room while its history is fetched.
const MAX_JOIN_BUFFER: usize = 10_000;

/// Serves one websocket until the client leaves, the gateway shuts down, or the client is
/// too slow to keep up.
pub async fn serve(mut reader: ws::Reader, writer: ws::Writer, state: Arc<State>) {
    let (outbox, inbox) = outbox::channel(state.config.client_queue.max(16));
    let kick = CancellationToken::new();
    let conn = state.rooms.next_conn_id();
    let heartbeat = state.liveness.add(conn, outbox.clone(), kick.clone());
    let writer = tokio::spawn(write_loop(writer, inbox, kick.clone(), heartbeat.clone()));
    let mut client = Client {
        conn,
        state: state.clone(),
        outbox,
        kick: kick.clone(),
        joined: HashMap::new(),
        confirms: TaskTracker::new(),
    };
    client
        .send(ServerFrame::Hello {
            gateway: &state.gateway_id,
            limits: LimitsView {
                max_text: state.config.max_text,
                max_name: state.config.max_name,
                max_frame: state.config.max_frame,
            },
        })
        .await;

    let _connected = ConnectedGauge::new();
    let mut limiter = RateLimiter::new(state.config.rate_limit, state.config.rate_burst);
    let (code, reason) = loop {
        let incoming = tokio::select! {
            _ = state.shutdown.cancelled() => break (CLOSE_RESTART, "service restart"),
            _ = kick.cancelled() => break kick_close(&heartbeat),
            incoming = reader.next() => incoming,
        };
        // Any frame at all, pongs included, proves the client is there.
        heartbeat.seen();
        let text = match incoming {
            Ok(Some(Incoming::Text(text))) => Some(text),
            Ok(Some(Incoming::Binary(_))) => None,
            Ok(Some(Incoming::Ping(payload))) => {
                let _ = client
                    .outbox
                    .send(Outbound::Raw(Box::new(frame::pong(&payload))))
                    .await;
                continue;
            }
            Ok(Some(Incoming::Pong)) => continue,
            Ok(Some(Incoming::Close(_)) | None) => break (1000, ""),
            Err(ReadError::Frame(err)) => {
                tracing::debug!(error = %err, "closing a websocket that broke the protocol");
                break (err.close_code(), err.close_reason());
            }
            Err(ReadError::Io(err)) => {
                tracing::debug!(error = %err, "websocket read failed");
                break (1000, "");
            }
        };
        match limiter.check() {
            Verdict::Allow => {}
            Verdict::Limited => {
                metrics::counter!("chat_rate_limited_total").increment(1);
                client
                    .reject(Rejection::new(
                        None,
                        "rate_limited",
                        format!(
                            "too many messages: at most {} per second",
                            state.config.rate_limit
                        ),
                    ))
                    .await;
                continue;
            }
            Verdict::Flooding => {
                tracing::warn!(conn = client.conn, "disconnecting a flooding client");
                metrics::counter!("chat_clients_disconnected_total", "reason" => "flood")
                    .increment(1);
                break (CLOSE_POLICY, "flooding: too many messages");
            }
        }
        if let Some(text) = text {
            match protocol::parse(&text, &state.limits) {
                // Boxed: the state of a join or say is then allocated only while it runs,
                // instead of enlarging every idle connection's task by its size.
                Ok(command) => Box::pin(client.handle(command)).await,
                Err(rejection) => client.reject(rejection).await,
            }
        } else {
            client
                .reject(Rejection::new(
                    None,
                    "unsupported_frame",
                    "send JSON text frames, not binary",
                ))
                .await;
        }
    };

    state.liveness.remove(conn);
    drop(heartbeat);
    // Boxed: the closing steps are allocated only when they run, instead of enlarging
    // every idle connection's task by their size.
    Box::pin(finish(client, reader, writer, code, reason)).await;
}

/// The close code and reason for a kicked connection: it did not answer a ping, or it
/// could not keep up.
fn kick_close(heartbeat: &Heartbeat) -> (u16, &'static str) {
    if heartbeat.timed_out() {
        (CLOSE_PING_TIMEOUT, REASON_PING_TIMEOUT)
    } else {
        (CLOSE_SLOW, REASON_SLOW)
    }
}

/// Ends a connection: leaves its rooms, queues the close frame behind everything already
/// queued, waits for the writer and, when the gateway closed, for the client's close.
async fn finish(
    mut client: Client,
    mut reader: ws::Reader,
    writer: tokio::task::JoinHandle<()>,
    code: u16,
    reason: &'static str,
) {
    let kick = client.kick.clone();
    client.disconnect().await;
    // The close frame goes through the queue, after everything already in it; a client
    // whose queue is stuck is simply cut off.
    let close = Outbound::Close(Box::new((code, reason)));
    if client
        .outbox
        .send_timeout(close, CLOSE_GRACE)
        .await
        .is_err()
    {
        kick.cancel();
    }
    drop(client);
    let _ = writer.await;
    if code != 1000 && !kick.is_cancelled() {
        // We closed: finish the closing handshake by reading (and dropping) what the client
        // still sends until its close arrives. Closing a socket with unread input resets
        // the connection, and the client would lose our close frame and its code.
        let drain = async {
            while let Ok(Some(incoming)) = reader.next().await {
                if matches!(incoming, Incoming::Close(_)) {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(CLOSE_GRACE, drain).await;
    }
}

/// Counts the connection in `chat_clients_connected` for as long as it lives.
struct ConnectedGauge;

impl ConnectedGauge {
    fn new() -> Self {
        metrics::gauge!("chat_clients_connected").increment(1.0);
        Self
    }
}

impl Drop for ConnectedGauge {
    fn drop(&mut self) {
        metrics::gauge!("chat_clients_connected").decrement(1.0);
    }
}

/// The reader's state of one connection.
struct Client {
    conn: ConnId,
    state: Arc<State>,
    outbox: outbox::Sender<Outbound>,
    kick: CancellationToken,
    /// Joined rooms and the name used in each.
    joined: HashMap<Arc<str>, String>,
    /// Publishes waiting for their broker confirm; finished before the socket closes.
    confirms: TaskTracker,
}

impl Client {
    async fn handle(&mut self, command: Command) {
        match command {
            Command::Join {
                room,
                name,
                since,
                r#ref,
            } => self.join(room, name, since, r#ref).await,
            Command::Say {
                room,
                text,
                id,
                r#ref,
            } => self.say(&room, text, id, r#ref).await,
            Command::Leave { room, r#ref } => self.leave(&room, r#ref).await,
            Command::Ping { r#ref } => {
                self.send(ServerFrame::Pong {
                    r#ref: r#ref.as_deref(),
                })
                .await
            }
        }
    }

    async fn join(
        &mut self,
        room: String,
        name: String,
        since: Option<String>,
        r#ref: Option<String>,
    ) {
        // The writer must know to buffer before the first live event can reach it.
        let room: Arc<str> = Arc::from(room);
        let _ = self.outbox.send(Outbound::Joining(room.clone())).await;
        let room = self.state.rooms.join(
            &room,
            self.conn,
            Member {
                outbox: self.outbox.clone(),
                kick: self.kick.clone(),
            },
        );
        let first_time = self.joined.insert(room.clone(), name.clone()).is_none();
        if first_time {
            let event = Event::new(EventKind::Join, &room, &name, None, &self.state.gateway_id);
            if let Err(err) = self.state.link.publish_confirmed(&event).await {
                tracing::warn!(error = %err, "cannot announce a join");
                self.joined.remove(&room);
                self.state.rooms.leave(&room, self.conn);
                let _ = self
                    .outbox
                    .send(Outbound::Left(Box::new((room, None))))
                    .await;
                self.reject(unavailable(r#ref)).await;
                return;
            }
        }
        let request = HistoryRequest {
            room: room.to_string(),
            limit: self.state.config.history_limit,
            since,
        };
        let link = self.state.link.clone();
        let outbox = self.outbox.clone();
        let state = self.state.clone();
        tokio::spawn(async move {
            let mut frames = Vec::with_capacity(2);
            let reply = link.history(&request).await;
            let history = match reply {
                Ok(reply) => {
                    if let Some(reason) = &reply.since_error {
                        frames.push(error_frame_text(r#ref.as_deref(), "bad_since", &format!(
                            "cannot resume after {:?} ({reason}); here is the latest history instead",
                            request.since.as_deref().unwrap_or_default()
                        )));
                    }
                    reply.events
                }
                Err(err) => {
                    tracing::warn!(error = %err, room = %request.room, "history unavailable");
                    frames.push(error_frame_text(
                        r#ref.as_deref(),
                        "history_unavailable",
                        &format!("the history could not be loaded: {err}"),
                    ));
                    Vec::new()
                }
            };
            let joined = ServerFrame::Joined {
                room: &request.room,
                r#ref: r#ref.as_deref(),
                history: &history,
            };
            // The error explaining an empty or fallback history comes first, then `joined`.
            frames.push(joined.encode());
            // Events this gateway received just before the client was registered may not be
            // archived yet: those after the history's last event (or after `since`) follow it.
            let anchor = history
                .last()
                .map(|e| e.id.as_str())
                .or(request.since.as_deref());
            let unarchived =
                anchor.map_or_else(Vec::new, |id| state.rooms.received_after(&room, id));
            let history_ids = history.into_iter().map(|e| e.id).collect();
            let _ = outbox
                .send(Outbound::Joined(Box::new(Joined {
                    room,
                    frames,
                    history_ids,
                    unarchived,
                })))
                .await;
        });
    }

    async fn say(&mut self, room: &str, text: String, id: Option<String>, r#ref: Option<String>) {
        let Some(name) = self.joined.get(room) else {
            return self
                .reject(Rejection::new(
                    r#ref,
                    "not_joined",
                    format!("join {room:?} before saying something there"),
                ))
                .await;
        };
        let mut event = Event::new(
            EventKind::Message,
            room,
            name,
            Some(text),
            &self.state.gateway_id,
        );
        let says = &self.state.says;
        if let Some(id) = id {
            // A client-made id: a resend of it must not post the message twice.
            event.id = id;
            let text = event.text.as_deref().unwrap_or_default();
            let fingerprint = idempotency::fingerprint(room, name, text);
            match says.claim(&event.id, fingerprint) {
                Claim::New => {}
                Claim::Confirmed => {
                    metrics::counter!("chat_resends_total", "outcome" => "acked_again")
                        .increment(1);
                    return self
                        .send(ServerFrame::Ack {
                            r#ref: r#ref.as_deref(),
                            id: &event.id,
                        })
                        .await;
                }
                Claim::Conflict => {
                    metrics::counter!("chat_resends_total", "outcome" => "conflict").increment(1);
                    return self
                        .reject(Rejection::new(
                            r#ref,
                            "conflict",
                            "this id belongs to another message; make a new id for a new message",
                        ))
                        .await;
                }
                Claim::InFlight(mut outcome) => {
                    // The first copy is being published here: answer as it is answered.
                    metrics::counter!("chat_resends_total", "outcome" => "joined_in_flight")
                        .increment(1);
                    let outbox = self.outbox.clone();
                    self.confirms.spawn(async move {
                        let settled = outcome
                            .wait_for(Option::is_some)
                            .await
                            .ok()
                            .and_then(|o| *o);
                        let frame = outcome_frame(
                            settled.unwrap_or(Outcome::Unknown),
                            r#ref.as_deref(),
                            &event.id,
                            None,
                        );
                        let _ = outbox.send(Outbound::Frame(frame.into())).await;
                    });
                    return;
                }
            }
        }
        let payload = event.to_json();
        // Publishing here, in the reader, keeps one client's messages in order; the confirm
        // is awaited beside it so the client can have many messages in flight.
        let first = self.state.link.publish(&event, payload.as_bytes()).await;
        let link = self.state.link.clone();
        let outbox = self.outbox.clone();
        let state = self.state.clone();
        self.confirms.spawn(async move {
            let (outcome, error) = match link.confirm(first, &event, payload.as_bytes()).await {
                Ok(()) => (Outcome::Confirmed, None),
                Err(err) => {
                    tracing::warn!(error = %err, id = %event.id, "publish not confirmed");
                    (err.outcome(), Some(err))
                }
            };
            state.says.settle(&event.id, outcome);
            let frame = outcome_frame(outcome, r#ref.as_deref(), &event.id, error.as_ref());
            let _ = outbox.send(Outbound::Frame(frame.into())).await;
        });
    }

    async fn leave(&mut self, room: &str, r#ref: Option<String>) {
        let Some((room, name)) = self.joined.remove_entry(room) else {
            return self
                .reject(Rejection::new(
                    r#ref,
                    "not_joined",
                    format!("not in room {room:?}"),
                ))
                .await;
        };
        self.state.rooms.leave(&room, self.conn);
        let frame = ServerFrame::Left {
            room: &room,
            r#ref: r#ref.as_deref(),
        }
        .encode();
        let _ = self
            .outbox
            .send(Outbound::Left(Box::new((room.clone(), Some(frame)))))
            .await;
        self.announce_leave(&room, &name);
    }

    /// Leaves every room when the socket ends and lets in-flight publishes finish, so that
    /// their acks still reach the client before it is closed.
    async fn disconnect(&mut self) {
        for (room, name) in std::mem::take(&mut self.joined) {
            self.state.rooms.leave(&room, self.conn);
            self.announce_leave(&room, &name);
        }
        self.confirms.close();
        self.confirms.wait().await;
    }

    /// Publishes a `leave` event in the background; it is best effort, as the client is gone.
    fn announce_leave(&self, room: &str, name: &str) {
        let event = Event::new(EventKind::Leave, room, name, None, &self.state.gateway_id);
        let link = self.state.link.clone();
        self.state.background.spawn(async move {
            if let Err(err) = link.publish_confirmed(&event).await {
                tracing::warn!(error = %err, room = %event.room, "cannot announce a leave");
            }
        });
    }

    async fn send(&self, frame: ServerFrame<'_>) {
        let _ = self
            .outbox
            .send(Outbound::Frame(frame.encode().into()))
            .await;
    }

    async fn reject(&self, rejection: Rejection) {
        let _ = self
            .outbox
            .send(Outbound::Frame(
                error_frame_text(
                    rejection.r#ref.as_deref(),
                    rejection.code,
                    &rejection.message,
                )
                .into(),
            ))
            .await;
    }
}

/// The answer to a `say` whose publish ended with `outcome`.
fn outcome_frame(
    outcome: Outcome,
    r#ref: Option<&str>,
    id: &str,
    error: Option<&PublishError>,
) -> String {
    match outcome {
        Outcome::Confirmed => ServerFrame::Ack { r#ref, id }.encode(),
        Outcome::NotPublished => error_frame_text(
            r#ref,
            "unavailable",
            &match error {
                Some(PublishError::Blocked(reason)) => format!(
                    "the broker is refusing messages for now ({reason}); it was not posted: \
                     send it again with the same id shortly"
                ),
                _ => "the broker is unavailable; it was not posted: send it again with the same id"
                    .to_owned(),
            },
        ),
        Outcome::Unknown => error_frame_text(
            r#ref,
            "unconfirmed",
            "the broker did not confirm the message, so it may or may not be posted: send it \
             again with the same id (it will not be posted twice)",
        ),
    }
}

fn unavailable(r#ref: Option<String>) -> Rejection {
    Rejection::new(
        r#ref,
        "unavailable",
        "the broker is unavailable; try again shortly",
    )
}

fn error_frame_text(r#ref: Option<&str>, code: &str, message: &str) -> String {
    ServerFrame::Error {
        r#ref,
        code,
        message,
    }
    .encode()
}

/// What the writer knows of a room.
enum RoomView {
    /// Joining: live events wait here until the history has been sent.
    Buffering(Vec<Arc<SharedEvent>>),
    /// Joined: live events go straight out.
    Live,
}

/// Owns the sending half: applies [`Outbound`] items in order until a close is requested,
/// the queue closes, or `kick` fires (a full queue, or the reader going away); a failed send
/// kicks the reader in turn. Whatever queued up while a write was in progress goes out in
/// the next write, so a burst costs one system call. A write blocked on a client that does
/// not read is abandoned on kick, so a stuck client cannot hold its task forever.
async fn write_loop(
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
            rooms.insert(room, RoomView::Buffering(Vec::new()));
        }
        Outbound::Event(event) => match rooms.get_mut(&event.room) {
            Some(RoomView::Live) => writer.push(event.frame.clone()),
            Some(RoomView::Buffering(buffer)) if buffer.len() < MAX_JOIN_BUFFER => {
                buffer.push(event);
            }
            Some(RoomView::Buffering(_)) => kick.cancel(),
            None => {}
        },
        Outbound::Joined(joined) => {
            let Joined {
                room,
                frames,
                history_ids,
                unarchived,
            } = *joined;
            let buffer = match rooms.get_mut(&room) {
                Some(view @ RoomView::Buffering(_)) => {
                    match std::mem::replace(view, RoomView::Live) {
                        RoomView::Buffering(buffer) => buffer,
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
            let mut seen: HashSet<Box<str>> = history_ids
                .into_iter()
                .map(String::into_boxed_str)
                .collect();
            for event in unarchived.into_iter().chain(buffer) {
                if seen.insert(event.id.clone()) {
                    writer.push(event.frame.clone());
                }
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
