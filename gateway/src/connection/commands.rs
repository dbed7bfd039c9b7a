//! The command handlers of one connection: what `join`, `say`, `leave` and `ping` do, and
//! the frames that answer them. They run in the connection's reader task, so one client's
//! requests are handled in order; what must wait for the broker (a publish's confirm, a
//! join's history) goes on in tracked tasks and reaches the client through its outbox.

use std::collections::HashMap;
use std::sync::Arc;

use chat_core::history::HistoryRequest;
use chat_core::{Event, EventKind};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::history;
use crate::idempotency::{self, Claim, Outcome};
use crate::link::PublishError;
use crate::outbox;
use crate::protocol::{Command, ErrorCode, Rejection, ServerFrame};
use crate::rooms::{ConnId, Member, Outbound};
use crate::State;

/// The reader's state of one connection.
pub(super) struct Client {
    pub(super) conn: ConnId,
    state: Arc<State>,
    pub(super) outbox: outbox::Sender<Outbound>,
    pub(super) kick: CancellationToken,
    /// Joined rooms and the name used in each.
    joined: HashMap<Arc<str>, String>,
    /// Publishes waiting for their broker confirm; finished before the socket closes.
    confirms: TaskTracker,
}

impl Client {
    pub(super) fn new(
        conn: ConnId,
        state: Arc<State>,
        outbox: outbox::Sender<Outbound>,
        kick: CancellationToken,
    ) -> Self {
        Self {
            conn,
            state,
            outbox,
            kick,
            joined: HashMap::new(),
            confirms: TaskTracker::new(),
        }
    }

    pub(super) async fn handle(&mut self, command: Command) {
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
            if let Err(err) = self.state.link.publish_confirmed(event).await {
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
        // Tracked like the other background work, so shutdown waits for it before the
        // broker link closes.
        self.state.background.spawn(history::load(
            self.state.clone(),
            self.outbox.clone(),
            room,
            request,
            r#ref,
        ));
    }

    async fn say(&mut self, room: &str, text: String, id: Option<String>, r#ref: Option<String>) {
        let Some(name) = self.joined.get(room) else {
            return self
                .reject(Rejection::new(
                    r#ref,
                    ErrorCode::NotJoined,
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
                            ErrorCode::Conflict,
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
        // Publishing here, in the reader, keeps one client's messages in order; the confirm
        // is awaited beside it so the client can have many messages in flight.
        let publication = self.state.link.publish(event).await;
        let outbox = self.outbox.clone();
        let state = self.state.clone();
        self.confirms.spawn(async move {
            let id = publication.event().id.clone();
            let (outcome, error) = match publication.confirmed().await {
                Ok(()) => (Outcome::Confirmed, None),
                Err(err) => {
                    tracing::warn!(error = %err, %id, "publish not confirmed");
                    (err.outcome(), Some(err))
                }
            };
            state.says.settle(&id, outcome);
            let frame = outcome_frame(outcome, r#ref.as_deref(), &id, error.as_ref());
            let _ = outbox.send(Outbound::Frame(frame.into())).await;
        });
    }

    async fn leave(&mut self, room: &str, r#ref: Option<String>) {
        let Some((room, name)) = self.joined.remove_entry(room) else {
            return self
                .reject(Rejection::new(
                    r#ref,
                    ErrorCode::NotJoined,
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
    pub(super) async fn disconnect(&mut self) {
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
        let room = room.to_owned();
        self.state.background.spawn(async move {
            if let Err(err) = link.publish_confirmed(event).await {
                tracing::warn!(error = %err, %room, "cannot announce a leave");
            }
        });
    }

    pub(super) async fn send(&self, frame: ServerFrame<'_>) {
        let _ = self
            .outbox
            .send(Outbound::Frame(frame.encode().into()))
            .await;
    }

    pub(super) async fn reject(&self, rejection: Rejection) {
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
            ErrorCode::Unavailable,
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
            ErrorCode::Unconfirmed,
            "the broker did not confirm the message, so it may or may not be posted: send it \
             again with the same id (it will not be posted twice)",
        ),
    }
}

fn unavailable(r#ref: Option<String>) -> Rejection {
    Rejection::new(
        r#ref,
        ErrorCode::Unavailable,
        "the broker is unavailable; try again shortly",
    )
}

pub(super) fn error_frame_text(r#ref: Option<&str>, code: ErrorCode, message: &str) -> String {
    ServerFrame::Error {
        r#ref,
        code,
        message,
    }
    .encode()
}
