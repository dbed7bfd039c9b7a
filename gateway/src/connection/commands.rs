//! The command handlers of one connection: what `auth`, `join`, `say`, `edit`, `delete`,
//! `react`, `leave`, `ping`, `create_room`, `add_member`, `remove_member`, `grant_role` and
//! `revoke_role` do, and the frames that answer them. They run in the connection's reader task, so one client's
//! requests are handled in order; what must wait for the broker (a publish's confirm, a
//! join's history) goes on in tracked tasks and reaches the client through its outbox.

use std::collections::HashMap;
use std::sync::Arc;

use chat_core::access::Reader;
use chat_core::auth::{Identity, Refused};
use chat_core::event::format_time;
use chat_core::event::Role;
use chat_core::history::{HistoryRequest, TargetRequest};
use chat_core::projection::{self, Refusal};
use chat_core::{Event, EventKind, Visibility};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::history;
use crate::close::Close;
use crate::idempotency::{self, Claim, Outcome};
use crate::link::PublishError;
use crate::protocol::{Command, ErrorCode, Rejection, ServerMessage};
use crate::rooms::{ConnId, Left, Member, Outbound, Outbox};
use crate::State;

/// Least time between two relayed `typing` starts of one connection in one room.
const TYPING_INTERVAL: std::time::Duration = std::time::Duration::from_millis(1000);

/// Who a connection speaks as.
#[derive(Debug, Clone)]
pub(super) enum Speaker {
    /// Token mode, before a valid token: nothing but `auth` is accepted.
    Anonymous,
    /// Open mode: a self-chosen name per room, marked as a guest in every event.
    Guest,
    /// A verified token's identity.
    Verified(Identity),
}

/// The server side of one client connection: its joined rooms, its pending confirms, and
/// the handlers of the commands it sends.
pub(super) struct Session {
    pub(super) conn: ConnId,
    state: Arc<State>,
    pub(super) outbox: Outbox,
    pub(super) kick: CancellationToken,
    /// Who the connection speaks as.
    pub(super) speaker: Speaker,
    /// Joined rooms and the user (a guest's name, or the verified id) used in each.
    joined: HashMap<Arc<str>, String>,
    /// When a `typing` start was last relayed, by room: starts closer together than
    /// [`TYPING_INTERVAL`] are not relayed again.
    typing_relayed: HashMap<Arc<str>, std::time::Instant>,
    /// Publishes waiting for their broker confirm; finished before the socket closes.
    confirms: TaskTracker,
}

impl Session {
    pub(super) fn new(
        conn: ConnId,
        state: Arc<State>,
        outbox: Outbox,
        kick: CancellationToken,
    ) -> Self {
        let speaker = if state.verifier.is_some() {
            Speaker::Anonymous
        } else {
            Speaker::Guest
        };
        Self {
            conn,
            state,
            outbox,
            kick,
            speaker,
            joined: HashMap::new(),
            typing_relayed: HashMap::new(),
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
            Command::Typing { room, typing } => self.typing(&room, typing).await,
            Command::Ping { r#ref } => {
                self.send(ServerMessage::Pong {
                    r#ref: r#ref.as_deref(),
                })
                .await
            }
            Command::Auth { .. } => {
                // Tokens are handled by the reader loop, which may have to close.
                self.reject(Rejection::new(
                    None,
                    ErrorCode::InvalidField,
                    "this gateway runs with AUTH_MODE=open: names are chosen, no token is needed",
                ))
                .await
            }
            Command::CreateRoom {
                room,
                visibility,
                r#ref,
            } => self.create_room(room, visibility, r#ref).await,
            Command::Membership {
                room,
                user,
                added,
                r#ref,
            } => {
                let kind = if added {
                    EventKind::MemberAdded
                } else {
                    EventKind::MemberRemoved
                };
                self.change_access(kind, room, user, None, r#ref).await
            }
            Command::Role {
                room,
                user,
                role,
                granted,
                r#ref,
            } => {
                let kind = if granted {
                    EventKind::RoleGranted
                } else {
                    EventKind::RoleRevoked
                };
                self.change_access(kind, room, user, Some(role), r#ref)
                    .await
            }
            Command::Edit {
                room,
                target,
                text,
                r#ref,
            } => {
                self.act(EventKind::Edit, &room, target, r#ref, |e| {
                    e.text = Some(text)
                })
                .await
            }
            Command::Delete {
                room,
                target,
                reason,
                r#ref,
            } => {
                self.act(EventKind::Delete, &room, target, r#ref, |e| {
                    e.reason = reason
                })
                .await
            }
            Command::React {
                room,
                target,
                key,
                op,
                r#ref,
            } => {
                self.act(EventKind::React, &room, target, r#ref, |e| {
                    e.key = Some(key);
                    e.op = Some(op);
                })
                .await
            }
        }
    }

    /// Checks a token (the first, or a fresh one before the current expires) and answers
    /// `authenticated`; the close to send if it is refused. A fresh token must name the
    /// same user: a connection never changes who it speaks as.
    pub(super) async fn authenticate(&mut self, token: &str) -> Result<(), Close> {
        let Some(verifier) = &self.state.verifier else {
            // Boxed: inline, the whole of `handle` (about 4.5 KB) would sit in this
            // future, and so in every idle connection's task, which awaits this one inline.
            Box::pin(self.handle(Command::Auth {
                token: String::new(),
            }))
            .await;
            return Ok(());
        };
        let identity = verifier.verify(token).map_err(|r| refused_close(&r))?;
        if let Speaker::Verified(current) = &self.speaker {
            if current.user != identity.user {
                Refused::Claims(String::new()).count();
                return Err(Close::OTHER_USER);
            }
        }
        self.send(ServerMessage::Authenticated {
            user: &identity.user,
            name: &identity.name,
            expires_at: &format_time(&identity.expires_at),
        })
        .await;
        self.speaker = Speaker::Verified(identity);
        Ok(())
    }

    /// The speaker as the access rules see it.
    fn reader(&self) -> Reader<'_> {
        match &self.speaker {
            Speaker::Verified(identity) => Reader::User {
                id: &identity.user,
                admin: identity.admin,
            },
            Speaker::Anonymous | Speaker::Guest => Reader::Guest,
        }
    }

    /// A new event by this connection's speaker: `user` is the verified id (never what the
    /// client wrote), or the guest's chosen name marked as a guest.
    fn event(&self, kind: EventKind, room: &str, user: &str, text: Option<String>) -> Event {
        let event = Event::new(kind, room, user, text, &self.state.gateway_id);
        match &self.speaker {
            Speaker::Verified(identity) => {
                let mut event = event.verified(&identity.name);
                event.user = identity.user.clone();
                event
            }
            Speaker::Anonymous | Speaker::Guest => event,
        }
    }

    /// In token mode, waits (up to the history timeout) for the projection to be current:
    /// for the first replay of the membership log, without which a private room cannot be
    /// told from a public one, and after a lost broker link for the replay that follows,
    /// without which a member removed meanwhile cannot be told from a member.
    async fn access_ready(&self) -> bool {
        self.state.verifier.is_none()
            || self.state.projection.is_current()
            || self
                .state
                .projection
                .wait_current(self.state.config.history_timeout())
                .await
    }

    /// Relays a typing start or stop to the room (best effort, never stored). A start
    /// repeated within [`TYPING_INTERVAL`] is dropped: clients resend while typing, and
    /// the others' indicators live `TYPING_TTL_MS` anyway.
    async fn typing(&mut self, room: &str, typing: bool) {
        let Some((room, user)) = self.joined.get_key_value(room) else {
            return self
                .reject(Rejection::new(
                    None,
                    ErrorCode::NotJoined,
                    format!("join {room:?} before typing there"),
                ))
                .await;
        };
        if !self.state.projection.can_read(room, self.reader()) {
            return; // removed from the private room; its eviction is on the way
        }
        let now = std::time::Instant::now();
        if typing {
            if let Some(last) = self.typing_relayed.get(room) {
                if now.duration_since(*last) < TYPING_INTERVAL {
                    metrics::counter!("chat_typing_dropped_total").increment(1);
                    return;
                }
            }
            self.typing_relayed.insert(room.clone(), now);
        } else {
            self.typing_relayed.remove(room);
        }
        let name = match &self.speaker {
            Speaker::Verified(identity) => identity.name.as_str(),
            Speaker::Anonymous | Speaker::Guest => user.as_str(),
        };
        self.state
            .presence
            .typing(&self.state.rooms, room, user, name, typing);
    }

    async fn join(
        &mut self,
        room: String,
        name: Option<String>,
        since: Option<String>,
        r#ref: Option<String>,
    ) {
        let (user, id, admin, shown) = match &self.speaker {
            Speaker::Verified(identity) => (
                identity.user.clone(),
                Some(Arc::<str>::from(identity.user.as_str())),
                identity.admin,
                Arc::<str>::from(identity.name.as_str()),
            ),
            Speaker::Anonymous | Speaker::Guest => match name {
                Some(name) => {
                    let shown = Arc::<str>::from(name.as_str());
                    (name, None, false, shown)
                }
                None => {
                    return self
                        .reject(Rejection::new(
                            r#ref,
                            ErrorCode::MissingField,
                            "missing field \"name\"",
                        ))
                        .await
                }
            },
        };
        if !self.access_ready().await {
            return self.reject(unavailable(r#ref)).await;
        }
        if !self.state.projection.can_read(&room, self.reader()) {
            return self.reject(forbidden_room(r#ref, &room)).await;
        }
        // The writer must know to buffer before the first live event can reach it.
        let room: Arc<str> = Arc::from(room);
        let _ = self.outbox.send(Outbound::Joining(room.clone())).await;
        let projection = self.state.projection.clone();
        let joined = self.state.rooms.join_if(
            &room,
            self.conn,
            Member {
                outbox: self.outbox.clone(),
                kick: self.kick.clone(),
                user: id,
                name: shown,
                admin,
            },
            |member| projection.can_read(&room, member.reader()),
        );
        let Some(room) = joined else {
            // Removed between the check and the registration.
            let _ = self
                .outbox
                .send(Outbound::Left(Box::new(Left {
                    room: room.clone(),
                    message: None,
                    removed: false,
                })))
                .await;
            return self.reject(forbidden_room(r#ref, &room)).await;
        };
        // The room's events must reach this gateway before the history is asked (and before
        // the join event is published, which then comes back through the queue).
        let mark = match self.state.link.serve_room(&room, &self.state.rooms).await {
            Ok(mark) => mark,
            // A second join of a room it is in: the next session binds it, as every served
            // room; the history answers the join as it can.
            Err(err) if self.joined.contains_key(&room) => {
                tracing::warn!(error = %err, %room, "cannot route a room to this gateway");
                None
            }
            Err(err) => {
                tracing::warn!(error = %err, %room, "cannot route a room to this gateway");
                self.state.rooms.leave(&room, self.conn);
                let _ = self
                    .outbox
                    .send(Outbound::Left(Box::new(Left {
                        room,
                        message: None,
                        removed: false,
                    })))
                    .await;
                return self.reject(unavailable(r#ref)).await;
            }
        };
        let first_time = self.joined.insert(room.clone(), user.clone()).is_none();
        if first_time {
            let event = self.event(EventKind::Join, &room, &user, None);
            if let Err(err) = self.state.link.publish_confirmed(event).await {
                tracing::warn!(error = %err, "cannot announce a join");
                self.joined.remove(&room);
                self.state.rooms.leave(&room, self.conn);
                let _ = self
                    .outbox
                    .send(Outbound::Left(Box::new(Left {
                        room,
                        message: None,
                        removed: false,
                    })))
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
        // A first join into a routed room must get a history that reaches past the room's
        // binding; a second join of a room this connection already has live needs nothing
        // more than the history (the writer sends no buffered events for it).
        self.state.background.spawn(history::load(
            self.state.clone(),
            self.outbox.clone(),
            room,
            request,
            r#ref,
            mark.filter(|_| first_time),
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
        if !self.state.projection.can_read(room, self.reader()) {
            // Removed from the private room since joining it.
            return self.reject(forbidden_room(r#ref, room)).await;
        }
        if self.state.projection.holds_back(room) {
            // The link came back and the membership log is being replayed: the speaker may
            // have been removed meanwhile. Nothing is published; the client may resend.
            return self.reject(replaying(r#ref)).await;
        }
        let mut event = self.event(EventKind::Message, room, name, Some(text));
        let name = event.user.clone();
        let says = &self.state.says;
        if let Some(id) = id {
            // A client-made id: a resend of it must not post the message twice.
            event.id = id;
            let text = event.text.as_deref().unwrap_or_default();
            let fingerprint = idempotency::fingerprint(room, &name, text);
            match says.claim(&event.id, fingerprint) {
                Claim::New => {}
                Claim::Confirmed => {
                    metrics::counter!("chat_resends_total", "outcome" => "acked_again")
                        .increment(1);
                    return self
                        .send(ServerMessage::Ack {
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
                        let frame = outcome_message(
                            settled.unwrap_or(Outcome::Unknown),
                            r#ref.as_deref(),
                            &event.id,
                            None,
                        );
                        let _ = outbox.send(Outbound::Message(frame.into())).await;
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
            let frame = outcome_message(outcome, r#ref.as_deref(), &id, error.as_ref());
            let _ = outbox.send(Outbound::Message(frame.into())).await;
        });
    }

    /// `edit`, `delete` and `react`: checks the target message against the archive with
    /// the rules every consumer applies (`chat_core::projection::check`), then publishes
    /// the event and answers `ack` after the broker's confirm. When the archive cannot
    /// answer, nothing is published and the client gets `unavailable`: the gateway never
    /// guesses who wrote a message or whether it still exists.
    async fn act(
        &self,
        kind: EventKind,
        room: &str,
        target: String,
        r#ref: Option<String>,
        fill: impl FnOnce(&mut Event),
    ) {
        let Some(user) = self.joined.get(room) else {
            return self
                .reject(Rejection::new(
                    r#ref,
                    ErrorCode::NotJoined,
                    format!("join {room:?} before acting on its messages"),
                ))
                .await;
        };
        if !self.state.projection.can_read(room, self.reader()) {
            return self.reject(forbidden_room(r#ref, room)).await;
        }
        if self.state.projection.holds_back(room) {
            // As for `say`: during the membership replay the actor may have been removed.
            return self.reject(replaying(r#ref)).await;
        }
        let mut event = self.event(kind, room, user, None);
        event.target = Some(target);
        fill(&mut event);
        let request = TargetRequest {
            room: room.to_owned(),
            id: event.target.clone().unwrap_or_default(),
        };
        let message = match self.state.link.target(&request).await {
            Ok(Some(message)) => message,
            Ok(None) => return self.reject(unknown_target(r#ref, room, &request.id)).await,
            Err(err) => {
                tracing::warn!(error = %err, target = %request.id, "cannot check a target");
                metrics::counter!("chat_actions_refused_total", "reason" => "unavailable")
                    .increment(1);
                return self
                    .reject(Rejection::new(
                        r#ref,
                        ErrorCode::Unavailable,
                        format!(
                            "the archive could not check the message ({err}), so nothing was \
                             changed: try again shortly"
                        ),
                    ))
                    .await;
            }
        };
        let privileged = match &self.speaker {
            Speaker::Verified(identity) => {
                self.state.projection.is_privileged(room, &identity.user)
            }
            Speaker::Anonymous | Speaker::Guest => false,
        };
        let checked = projection::Target {
            room,
            user: &message.user,
            guest: message.guest,
            deleted: message.deleted,
        };
        if let Err(refusal) = projection::check(&checked, &event, privileged) {
            let code = match refusal {
                Refusal::Deleted => ErrorCode::Deleted,
                Refusal::OtherRoom | Refusal::NotAnAction(_) => {
                    return self.reject(unknown_target(r#ref, room, &request.id)).await
                }
                Refusal::NotAuthor | Refusal::NotAllowedToDelete => ErrorCode::Forbidden,
            };
            metrics::counter!("chat_actions_refused_total", "reason" => code.as_str()).increment(1);
            return self
                .reject(Rejection::new(r#ref, code, refusal.to_string()))
                .await;
        }
        if privileged
            && !self.state.projection.is_current()
            && projection::check(&checked, &event, false).is_err()
        {
            // Only a moderator's right allows this, and a stale projection may still hold a
            // right revoked while the link was down: wait for the replay.
            return self.reject(replaying(r#ref)).await;
        }
        // Published from the reader like a `say`, so one client's actions keep their order.
        let publication = self.state.link.publish(event).await;
        let outbox = self.outbox.clone();
        self.confirms.spawn(async move {
            let id = publication.event().id.clone();
            let (outcome, error) = match publication.confirmed().await {
                Ok(()) => (Outcome::Confirmed, None),
                Err(err) => {
                    tracing::warn!(error = %err, %id, "publish not confirmed");
                    (err.outcome(), Some(err))
                }
            };
            let frame = outcome_message(outcome, r#ref.as_deref(), &id, error.as_ref());
            let _ = outbox.send(Outbound::Message(frame.into())).await;
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
        let frame = ServerMessage::Left {
            room: &room,
            r#ref: r#ref.as_deref(),
        }
        .encode();
        let _ = self
            .outbox
            .send(Outbound::Left(Box::new(Left {
                room: room.clone(),
                message: Some(frame),
                removed: false,
            })))
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

    /// `create_room`: a verified user creates a room that exists nowhere yet (no member
    /// here, no history in the archive, never created) and owns it.
    async fn create_room(&mut self, room: String, visibility: Visibility, r#ref: Option<String>) {
        if !matches!(self.speaker, Speaker::Verified(_)) {
            return self
                .reject(forbidden(r#ref, "only verified users may create rooms"))
                .await;
        }
        if !self.access_ready().await {
            return self.reject(unavailable(r#ref)).await;
        }
        let mut event = self.event(EventKind::RoomCreated, &room, "", None);
        event.visibility = Some(visibility);
        if let Err(refusal) = self.state.projection.check(&event) {
            return self.reject(forbidden(r#ref, &refusal.to_string())).await;
        }
        // A room people already talk in exists, though it was never created: it cannot be
        // taken over (and made private under its members).
        let in_use = self.state.rooms.names().iter().any(|r| **r == *room);
        let request = HistoryRequest {
            room: room.clone(),
            limit: 1,
            since: None,
        };
        let in_use = in_use
            || match self.state.link.history(&request).await {
                Ok(reply) => !reply.events.is_empty(),
                Err(err) => {
                    tracing::warn!(error = %err, "cannot tell whether a room is in use");
                    return self.reject(unavailable(r#ref)).await;
                }
            };
        if in_use {
            let message = format!("room {room:?} exists already");
            return self.reject(forbidden(r#ref, &message)).await;
        }
        self.publish_membership(event, r#ref).await;
    }

    /// `add_member` / `remove_member` (by the owner or a moderator of a private room) and
    /// `grant_role` / `revoke_role` (by the owner of a created room): the shared rules
    /// (`chat_core::access::decide`) say whether the speaker may, before anything is
    /// published.
    async fn change_access(
        &mut self,
        kind: EventKind,
        room: String,
        user: String,
        role: Option<Role>,
        r#ref: Option<String>,
    ) {
        if !matches!(self.speaker, Speaker::Verified(_)) {
            let message = "only verified users may change membership or roles";
            return self.reject(forbidden(r#ref, message)).await;
        }
        if !self.access_ready().await {
            return self.reject(unavailable(r#ref)).await;
        }
        let mut event = self.event(kind, &room, "", None);
        event.member = Some(user);
        event.role = role;
        if let Err(refusal) = self.state.projection.check(&event) {
            return self.reject(forbidden(r#ref, &refusal.to_string())).await;
        }
        self.publish_membership(event, r#ref).await;
    }

    /// Publishes a membership event, folds it in here at once (so the speaker's next
    /// request sees it, before it comes back through the queue) and answers `ack`.
    async fn publish_membership(&mut self, event: Event, r#ref: Option<String>) {
        let id = event.id.clone();
        match self.state.link.publish_confirmed(event.clone()).await {
            Ok(()) => {
                if self.state.projection.apply(&event).is_some() {
                    self.state.rooms.evict_unreadable(&self.state.projection);
                }
                self.send(ServerMessage::Ack {
                    r#ref: r#ref.as_deref(),
                    id: &id,
                })
                .await;
            }
            Err(err) => {
                tracing::warn!(error = %err, %id, "membership event not confirmed");
                let message = outcome_message(err.outcome(), r#ref.as_deref(), &id, Some(&err));
                let _ = self.outbox.send(Outbound::Message(message.into())).await;
            }
        }
    }

    /// Publishes a `leave` event in the background; it is best effort, as the client is gone.
    fn announce_leave(&self, room: &str, name: &str) {
        let event = self.event(EventKind::Leave, room, name, None);
        let link = self.state.link.clone();
        let room = room.to_owned();
        self.state.background.spawn(async move {
            if let Err(err) = link.publish_confirmed(event).await {
                tracing::warn!(error = %err, %room, "cannot announce a leave");
            }
        });
    }

    pub(super) async fn send(&self, frame: ServerMessage<'_>) {
        let _ = self
            .outbox
            .send(Outbound::Message(frame.encode().into()))
            .await;
    }

    pub(super) async fn reject(&self, rejection: Rejection) {
        let _ = self
            .outbox
            .send(Outbound::Message(
                error_message(
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
fn outcome_message(
    outcome: Outcome,
    r#ref: Option<&str>,
    id: &str,
    error: Option<&PublishError>,
) -> String {
    match outcome {
        Outcome::Confirmed => ServerMessage::Ack { r#ref, id }.encode(),
        Outcome::NotPublished => error_message(
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
        Outcome::Unknown => error_message(
            r#ref,
            ErrorCode::Unconfirmed,
            "the broker did not confirm the message, so it may or may not be posted: send it \
             again with the same id (it will not be posted twice)",
        ),
    }
}

/// The close for a refused token.
fn refused_close(refused: &Refused) -> Close {
    match refused {
        Refused::Expired => Close::TOKEN_EXPIRED,
        Refused::Missing => Close::AUTH_REQUIRED,
        Refused::Malformed(_) => Close::TOKEN_MALFORMED,
        Refused::Algorithm => Close::TOKEN_ALGORITHM,
        Refused::Signature => Close::TOKEN_SIGNATURE,
        Refused::Audience => Close::TOKEN_AUDIENCE,
        Refused::Issuer => Close::TOKEN_ISSUER,
        Refused::Claims(_) => Close::TOKEN_CLAIMS,
    }
}

fn forbidden(r#ref: Option<String>, message: &str) -> Rejection {
    Rejection::new(r#ref, ErrorCode::Forbidden, message)
}

/// The refusal of a private room to a non-member. It says no more than the client knew:
/// not who the members are, not whether anyone is there.
fn forbidden_room(r#ref: Option<String>, room: &str) -> Rejection {
    forbidden(r#ref, &not_a_member(room))
}

fn not_a_member(room: &str) -> String {
    format!("room {room:?} is private and you are not a member")
}

/// The `forbidden` error answering a join of `room`, encoded.
pub(super) fn forbidden_message(r#ref: Option<&str>, room: &str) -> String {
    error_message(r#ref, ErrorCode::Forbidden, &not_a_member(room))
}

/// The refusal of an action on a message the room does not have. The same answer for an id
/// of another room: it says nothing of what other rooms hold.
fn unknown_target(r#ref: Option<String>, room: &str, target: &str) -> Rejection {
    Rejection::new(
        r#ref,
        ErrorCode::UnknownTarget,
        format!("room {room:?} has no message {target:?}"),
    )
}

fn unavailable(r#ref: Option<String>) -> Rejection {
    Rejection::new(
        r#ref,
        ErrorCode::Unavailable,
        "the broker is unavailable; try again shortly",
    )
}

fn replaying(r#ref: Option<String>) -> Rejection {
    Rejection::new(
        r#ref,
        ErrorCode::Unavailable,
        "the gateway is catching up on membership changes after a broker outage; nothing was \
         changed: try again shortly",
    )
}

pub(super) fn error_message(r#ref: Option<&str>, code: ErrorCode, message: &str) -> String {
    ServerMessage::Error {
        r#ref,
        code,
        message,
    }
    .encode()
}
