//! Which local clients are in which room, and the fanout of one event to them. The map is
//! behind a std `RwLock` that is never held across an `.await`: fanout takes the read lock,
//! `try_send`s the shared frame to each member and returns, so a slow client can never
//! stall the consumer or other clients; a client whose queue is full is told to go (it
//! resumes with `since`).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use chat_core::access::Reader;
use chat_core::dedupe::RecentIds;
use chat_core::{Event, EventKind};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::access::Projection;
use crate::close::Close;
use crate::connection::catch_up;
use crate::outbox;
use crate::protocol::event_message;
use crate::ws::{frame, Direct, Written};

/// A client's queue. While its writer waits with nothing queued it leaves the socket as the
/// queue's bypass, and the fanout may write live events straight to it (see `outbox`).
pub type Outbox = outbox::Sender<Outbound, Direct>;

/// How the fanout hands an event's frame to members whose writers wait with nothing queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handoff {
    /// Write it to their sockets from the fanout: no task wake-up per member. For an event
    /// that arrived alone, when the consumer has nothing else to do, in a room of at most
    /// `DIRECT_MEMBERS` local members.
    Direct,
    /// Queue it for their writers. With more events already waiting, the writers then send
    /// several frames per write and the sends spread over the runtime's threads, where
    /// writing each socket from the fanout would cost a system call per frame on one thread
    /// (a fanout capacity of 305 instead of 931 messages/s in `scripts/bench.sh`).
    Queue,
}

/// Identifies one websocket connection within this gateway.
pub type ConnId = u64;

/// What a connection's writer receives. Kept to 24 bytes (rare variants boxed, events
/// shared through one `Arc`): a client's queue (`outbox`) holds up to `CLIENT_QUEUE` of
/// these, and its buffers stay allocated between bursts.
#[derive(Debug)]
pub enum Outbound {
    /// A JSON message to send as a text frame as is (acks, errors, hello, left).
    Message(Box<str>),
    /// A websocket frame already encoded (a pong).
    Encoded(Box<Bytes>),
    /// The client is (re)joining `room`: buffer its events until the history is sent.
    Joining(Arc<str>),
    /// The history of a joining room is ready.
    Joined(Box<Joined>),
    /// The client left a room; stop forwarding its events.
    Left(Box<Left>),
    /// A live event, encoded once for all recipients.
    Event(Arc<SharedEvent>),
    /// Close the websocket with this code and reason.
    Close(Box<Close>),
}

/// A room the client left, and the message that says so (none when the connection ends).
#[derive(Debug)]
pub struct Left {
    pub room: Arc<str>,
    pub message: Option<String>,
    /// Removed from the private room (not a leave of its own): a join of it whose history
    /// was still loading is answered `forbidden`.
    pub removed: bool,
}

/// The answer to a join: send `messages` (the `joined` message, possibly preceded by an
/// `error`), then the events buffered meanwhile that the history did not contain.
#[derive(Debug)]
pub struct Joined {
    pub room: Arc<str>,
    pub messages: Vec<String>,
    /// The history's event ids, shared by every join the reply answered.
    pub history_ids: Arc<[Box<str>]>,
    /// Events received before the join that the archive may not have had yet.
    pub unarchived: Vec<Arc<SharedEvent>>,
    /// The `forbidden` error that answers the join instead if its member was removed from
    /// the room while the history loaded (see `Outbound::Left`).
    pub refused: String,
}

/// One event as every recipient gets it.
#[derive(Debug)]
pub struct SharedEvent {
    /// The room it belongs to.
    pub room: Arc<str>,
    /// Its id, to drop it from a join's buffer when the history has it already.
    pub id: Box<str>,
    /// The encoded websocket frame of the `event` message; cloning it shares the bytes.
    pub frame: Bytes,
    /// Whether it edits, deletes or reacts to an earlier message: a history kept from
    /// before it no longer shows that message as a fresh one would (`link::reuse`).
    pub acts: bool,
}

/// A member's way in: its queue, a token that disconnects it when the queue is full, and
/// who it is, so a membership change can find it.
#[derive(Debug, Clone)]
pub struct Member {
    pub outbox: Outbox,
    pub kick: CancellationToken,
    /// The verified user id; `None` for a guest.
    pub user: Option<Arc<str>>,
    /// The name shown for it: a verified user's display name, a guest's chosen name.
    pub name: Arc<str>,
    /// Whether the token has the `admin` claim.
    pub admin: bool,
}

impl Member {
    /// Who it is in presence and typing: the verified id, or the guest's name.
    pub fn presence_id(&self) -> &Arc<str> {
        self.user.as_ref().unwrap_or(&self.name)
    }

    /// The member as the access rules see it.
    pub fn reader(&self) -> Reader<'_> {
        match &self.user {
            None => Reader::Guest,
            Some(id) => Reader::User {
                id,
                admin: self.admin,
            },
        }
    }
}

/// How many recent event ids a gateway remembers, to drop repeats.
const RECENT_IDS: usize = 16_384;
/// How many of the latest events (all rooms) a gateway keeps for joins: the archive trails
/// the exchange a little, and these cover the gap.
const RECENT_EVENTS: usize = 4096;
/// Rooms with more local members than this get their events queued, never written by the
/// fanout: at a few microseconds per `send`, writing them all would hold the consumer (and
/// the room map's read lock, which joins and leaves wait for) for milliseconds per event.
const DIRECT_MEMBERS: usize = 512;

/// The room registry of one gateway.
#[derive(Debug)]
pub struct Rooms {
    rooms: RwLock<HashMap<Arc<str>, HashMap<ConnId, Member>>>,
    next_conn: AtomicU64,
    /// What this gateway delivered lately, behind one lock taken once per event.
    recent: Mutex<Recent>,
    /// Bumped at every change of membership, so presence knows when to look again.
    version: AtomicU64,
    /// Above this many local members, `join` and `leave` events are not sent to each
    /// member: presence tells them, batched (`PRESENCE_MAX_LIST`).
    quiet_above: usize,
    /// Numbers the frames sent outside the event stream (presence, typing), which the
    /// join buffer tells apart by id.
    next_frame: AtomicU64,
    /// Rooms whose last local member left, for the link to stop routing them here.
    emptied: Mutex<Vec<Arc<str>>>,
    /// Woken when a room is added to `emptied`.
    emptied_signal: Notify,
}

/// The memory of recent deliveries.
#[derive(Debug)]
struct Recent {
    /// Ids of events delivered recently: a publish retried after a lost confirm, or an
    /// event recovered after an outage that also arrived live, reaches clients once.
    ids: RecentIds,
    /// The latest events this gateway received, oldest first, whatever their room.
    latest: VecDeque<Arc<SharedEvent>>,
    /// How many events were ever added to `latest`: the position of the next one. A room's
    /// binding remembers this number ([`Rooms::mark`]), so a join can tell whether the
    /// archive has caught up with what was published before the room was routed here.
    received: u64,
}

impl Default for Rooms {
    fn default() -> Self {
        Self::new(usize::MAX)
    }
}

impl Rooms {
    /// A registry that stops sending `join` and `leave` events to each member of a room
    /// with more than `quiet_above` local members.
    pub fn new(quiet_above: usize) -> Self {
        Self {
            rooms: RwLock::default(),
            next_conn: AtomicU64::default(),
            recent: Mutex::new(Recent {
                ids: RecentIds::new(RECENT_IDS),
                latest: VecDeque::with_capacity(RECENT_EVENTS),
                received: 0,
            }),
            version: AtomicU64::default(),
            quiet_above,
            next_frame: AtomicU64::default(),
            emptied: Mutex::default(),
            emptied_signal: Notify::new(),
        }
    }

    /// A number that changes whenever a member joins or leaves a room here.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    fn changed(&self) {
        self.version.fetch_add(1, Ordering::AcqRel);
    }

    /// Who is here, room by room: each user (verified id or guest name) with its display
    /// name and number of connections, sorted by user.
    pub fn presence(&self) -> BTreeMap<String, Vec<crate::presence::wire::Member>> {
        let rooms = self.rooms.read().unwrap_or_else(|e| e.into_inner());
        rooms
            .iter()
            .map(|(room, members)| {
                let mut users: BTreeMap<&str, (&str, u32)> = BTreeMap::new();
                for member in members.values() {
                    users
                        .entry(member.presence_id())
                        .or_insert((&member.name, 0))
                        .1 += 1;
                }
                let list = users
                    .into_iter()
                    .map(
                        |(user, (name, connections))| crate::presence::wire::Member {
                            user: user.to_owned(),
                            name: name.to_owned(),
                            connections,
                        },
                    )
                    .collect();
                (room.to_string(), list)
            })
            .collect()
    }

    /// Sends a frame that is not an event (presence, typing) to every local member of
    /// `room`, in order with its events: a member still loading the room's history gets
    /// it after the history. Returns how many got it.
    pub fn send_to_room(&self, room: &str, frame: Bytes) -> usize {
        let n = self.next_frame.fetch_add(1, Ordering::Relaxed);
        self.fanout(
            Arc::new(SharedEvent {
                room: Arc::from(room),
                // Not an event id (those are UUIDs): never in a history, never a repeat.
                id: format!("~{n}").into(),
                frame,
                acts: false,
            }),
            Handoff::Queue,
        )
    }

    /// Delivers an event to its room's members unless it was delivered recently; encodes
    /// it once for all of them, and queues it for their writers. Returns whether it was new.
    pub fn deliver(&self, event: &Event) -> bool {
        self.deliver_by(event, Handoff::Queue)
    }

    /// [`Rooms::deliver`], handing the frame over as `handoff` says.
    pub fn deliver_by(&self, event: &Event, handoff: Handoff) -> bool {
        // Encoded before taking the lock, which then covers only the bookkeeping.
        let shared = Arc::new(SharedEvent {
            room: Arc::from(event.room.as_str()),
            id: event.id.as_str().into(),
            frame: frame::text(&event_message(event)),
            acts: event.kind.is_action(),
        });
        let fresh = {
            let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
            let fresh = recent.ids.first_time(&event.id);
            if fresh {
                if recent.latest.len() == RECENT_EVENTS {
                    recent.latest.pop_front();
                }
                recent.latest.push_back(shared.clone());
                recent.received += 1;
            }
            fresh
        };
        let quiet = matches!(event.kind, EventKind::Join | EventKind::Leave)
            && self.local_members(&event.room) > self.quiet_above;
        if fresh && !quiet {
            let delivered = self.fanout(shared, handoff);
            metrics::counter!("chat_events_delivered_total").increment(delivered as u64);
            let age = (chrono::Utc::now() - event.at)
                .num_microseconds()
                .unwrap_or(0)
                .max(0);
            metrics::histogram!("chat_delivery_latency_seconds").record(age as f64 / 1e6);
        }
        fresh
    }

    /// The events of `room` this gateway received after the event `after`, oldest first;
    /// `None` if `after` is not among the latest events (for a fresh history: the archive,
    /// which trails the exchange by far less, had them all).
    pub fn received_after(&self, room: &str, after: &str) -> Option<Vec<Arc<SharedEvent>>> {
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        catch_up::received_after(&recent.latest, room, after)
    }

    /// The position the next event received will take in the memory of recent events.
    /// Taken when a room is bound: every event of the room received from then on is at or
    /// after it.
    pub fn mark(&self) -> u64 {
        self.recent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .received
    }

    /// Whether a history whose last event is `anchor` (or, empty, that followed `anchor`)
    /// reaches an event this gateway received at or after `mark`: then the archive had
    /// everything published before the room was bound here (see `connection::catch_up`).
    pub fn reaches(&self, anchor: Option<&str>, mark: u64) -> bool {
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        let oldest = recent.received - recent.latest.len() as u64;
        catch_up::reaches(oldest, &recent.latest, anchor, mark)
    }

    /// Whether `room` has local members.
    pub fn is_served(&self, room: &str) -> bool {
        self.local_members(room) > 0
    }

    /// Waits until a room has lost its last local member, then returns the rooms that have
    /// since [`Rooms::leave`] or an eviction (some may have members again by now).
    pub async fn emptied(&self) -> Vec<Arc<str>> {
        loop {
            let notified = self.emptied_signal.notified();
            let rooms =
                std::mem::take(&mut *self.emptied.lock().unwrap_or_else(|e| e.into_inner()));
            if !rooms.is_empty() {
                return rooms;
            }
            notified.await;
        }
    }

    fn now_empty(&self, room: Arc<str>) {
        self.emptied
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(room);
        self.emptied_signal.notify_one();
    }

    fn local_members(&self, room: &str) -> usize {
        let rooms = self.rooms.read().unwrap_or_else(|e| e.into_inner());
        rooms.get(room).map_or(0, HashMap::len)
    }

    /// The rooms that have local members now.
    pub fn names(&self) -> Vec<Arc<str>> {
        let rooms = self.rooms.read().unwrap_or_else(|e| e.into_inner());
        rooms.keys().cloned().collect()
    }

    /// A fresh connection id.
    pub fn next_conn_id(&self) -> ConnId {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// Adds a connection to a room; returns the room's shared name.
    pub fn join(&self, room: &str, conn: ConnId, member: Member) -> Arc<str> {
        self.join_if(room, conn, member, |_| true)
            .unwrap_or_else(|| Arc::from(room))
    }

    /// Adds a connection to a room if `allowed` says the member may read it, checked under
    /// the registry's lock: a membership removal ([`Rooms::evict_unreadable`], which takes
    /// the same lock after the projection changed) cannot slip between the check and the
    /// registration. `None` if not allowed.
    pub fn join_if(
        &self,
        room: &str,
        conn: ConnId,
        member: Member,
        allowed: impl FnOnce(&Member) -> bool,
    ) -> Option<Arc<str>> {
        let mut rooms = self.rooms.write().unwrap_or_else(|e| e.into_inner());
        if !allowed(&member) {
            return None;
        }
        let name = match rooms.get_key_value(room) {
            Some((name, _)) => name.clone(),
            None => Arc::from(room),
        };
        rooms.entry(name.clone()).or_default().insert(conn, member);
        metrics::gauge!("chat_rooms_active").set(rooms.len() as f64);
        self.changed();
        Some(name)
    }

    /// Removes every local member of a private room who may no longer read it (a
    /// `member_removed`, or a room that became private under them) and tells each with a
    /// `removed` message; from then on none of the room's events reach them. Returns how
    /// many were removed.
    pub fn evict_unreadable(&self, projection: &Projection) -> usize {
        let mut rooms = self.rooms.write().unwrap_or_else(|e| e.into_inner());
        let mut evicted = 0;
        let mut emptied = Vec::new();
        rooms.retain(|room, members| {
            if !projection.is_private(room) {
                return true;
            }
            members.retain(|_, member| {
                if projection.can_read(room, member.reader()) {
                    return true;
                }
                evicted += 1;
                let message = crate::protocol::ServerMessage::Removed {
                    room,
                    message: "you are no longer a member of this private room",
                }
                .encode();
                let left = Outbound::Left(Box::new(Left {
                    room: room.clone(),
                    message: Some(message),
                    removed: true,
                }));
                if member.outbox.try_send(left).is_err() {
                    // Full or gone: a reconnect will be refused the room anyway.
                    member.kick.cancel();
                }
                false
            });
            if members.is_empty() {
                emptied.push(room.clone());
            }
            !members.is_empty()
        });
        metrics::gauge!("chat_rooms_active").set(rooms.len() as f64);
        if evicted > 0 {
            metrics::counter!("chat_members_evicted_total").increment(evicted as u64);
            self.changed();
        }
        drop(rooms);
        for room in emptied {
            self.now_empty(room);
        }
        evicted
    }

    /// Removes a connection from a room; the room disappears with its last member.
    pub fn leave(&self, room: &str, conn: ConnId) {
        let mut rooms = self.rooms.write().unwrap_or_else(|e| e.into_inner());
        let mut emptied = None;
        if let Some(members) = rooms.get_mut(room) {
            members.remove(&conn);
            if members.is_empty() {
                emptied = rooms.remove_entry(room).map(|(name, _)| name);
            }
            metrics::gauge!("chat_rooms_active").set(rooms.len() as f64);
            self.changed();
        }
        drop(rooms);
        if let Some(room) = emptied {
            self.now_empty(room);
        }
    }

    /// Sends one event to every member of its room; returns how many got it. Members whose
    /// queue is full are kicked: better a clean reconnect with `since` than a silent gap.
    fn fanout(&self, shared: Arc<SharedEvent>, handoff: Handoff) -> usize {
        let rooms = self.rooms.read().unwrap_or_else(|e| e.into_inner());
        let Some(members) = rooms.get(&shared.room) else {
            return 0;
        };
        let handoff = if members.len() > DIRECT_MEMBERS {
            Handoff::Queue
        } else {
            handoff
        };
        let mut delivered = 0;
        let mut direct = 0;
        for member in members.values() {
            let item = Outbound::Event(shared.clone());
            let sent = match handoff {
                Handoff::Direct => member.outbox.try_send_via(item, |socket, item| {
                    let rest = write_direct(socket, item, &member.kick);
                    direct += u64::from(rest.is_none());
                    rest
                }),
                Handoff::Queue => member.outbox.try_send(item),
            };
            match sent {
                Ok(()) => delivered += 1,
                Err(outbox::TrySendError::Full(_)) => {
                    if !member.kick.is_cancelled() {
                        metrics::counter!("chat_clients_disconnected_total", "reason" => "slow")
                            .increment(1);
                    }
                    member.kick.cancel();
                }
                Err(outbox::TrySendError::Closed(_)) => {}
            }
        }
        metrics::counter!("chat_events_written_direct_total").increment(direct);
        delivered
    }

    /// How many rooms have local members.
    pub fn room_count(&self) -> usize {
        self.rooms.read().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// Writes a live event to a waiting writer's socket; returns what is left for the writer to
/// send (all of it if the socket is full). A broken connection is kicked, as the writer
/// would.
fn write_direct(socket: &Direct, item: Outbound, kick: &CancellationToken) -> Option<Outbound> {
    let Outbound::Event(event) = &item else {
        return Some(item);
    };
    match socket.write(&event.frame) {
        Written::All => None,
        Written::Nothing => Some(item),
        Written::Rest(rest) => Some(Outbound::Encoded(Box::new(rest))),
        Written::Failed => {
            kick.cancel();
            None
        }
    }
}
