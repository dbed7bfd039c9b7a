//! Which local clients are in which room, and the fanout of one event to them. The map is
//! behind a std `RwLock` that is never held across an `.await`: fanout takes the read lock,
//! `try_send`s the shared frame to each member and returns, so a slow client can never
//! stall the consumer or other clients; a client whose queue is full is told to go (it
//! resumes with `since`).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use chat_core::dedupe::RecentIds;
use chat_core::Event;
use tokio_util::sync::CancellationToken;

use crate::connection::catch_up;
use crate::outbox;
use crate::protocol::event_frame;
use crate::ws::frame;

/// Identifies one websocket connection within this gateway.
pub type ConnId = u64;

/// What a connection's writer receives. Kept to 24 bytes (rare variants boxed, events
/// shared through one `Arc`): a client's queue (`outbox`) holds up to `CLIENT_QUEUE` of
/// these, and its buffers stay allocated between bursts.
#[derive(Debug)]
pub enum Outbound {
    /// A JSON text frame to send as is (acks, errors, hello, left).
    Frame(Box<str>),
    /// An encoded websocket frame (a pong).
    Raw(Box<Bytes>),
    /// The client is (re)joining `room`: buffer its events until the history is sent.
    Joining(Arc<str>),
    /// The history of a joining room is ready.
    Joined(Box<Joined>),
    /// The client left `room`; stop forwarding its events and send the frame, if any.
    Left(Box<(Arc<str>, Option<String>)>),
    /// A live event, encoded once for all recipients.
    Event(Arc<SharedEvent>),
    /// Close the websocket with this code and reason.
    Close(Box<(u16, &'static str)>),
}

/// The answer to a join: send `frames` (the `joined` frame, possibly preceded by an
/// `error`), then the events buffered meanwhile that the history did not contain.
#[derive(Debug)]
pub struct Joined {
    pub room: Arc<str>,
    pub frames: Vec<String>,
    pub history_ids: Vec<String>,
    /// Events received before the join that the archive may not have had yet.
    pub unarchived: Vec<Arc<SharedEvent>>,
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
}

/// A member's way in: its queue, and a token that disconnects it when the queue is full.
#[derive(Debug, Clone)]
pub struct Member {
    pub outbox: outbox::Sender<Outbound>,
    pub kick: CancellationToken,
}

/// How many recent event ids a gateway remembers, to drop repeats.
const RECENT_IDS: usize = 16_384;
/// How many of the latest events (all rooms) a gateway keeps for joins: the archive trails
/// the exchange a little, and these cover the gap.
const RECENT_EVENTS: usize = 4096;

/// The room registry of one gateway.
#[derive(Debug)]
pub struct Rooms {
    rooms: RwLock<HashMap<Arc<str>, HashMap<ConnId, Member>>>,
    next_conn: AtomicU64,
    /// What this gateway delivered lately, behind one lock taken once per event.
    recent: Mutex<Recent>,
}

/// The memory of recent deliveries.
#[derive(Debug)]
struct Recent {
    /// Ids of events delivered recently: a publish retried after a lost confirm, or an
    /// event recovered after an outage that also arrived live, reaches clients once.
    ids: RecentIds,
    /// The latest events this gateway received, oldest first, whatever their room.
    latest: VecDeque<Arc<SharedEvent>>,
}

impl Default for Rooms {
    fn default() -> Self {
        Self {
            rooms: RwLock::default(),
            next_conn: AtomicU64::default(),
            recent: Mutex::new(Recent {
                ids: RecentIds::new(RECENT_IDS),
                latest: VecDeque::with_capacity(RECENT_EVENTS),
            }),
        }
    }
}

impl Rooms {
    /// Delivers an event to its room's members unless it was delivered recently; encodes
    /// it once for all of them. Returns whether it was new.
    pub fn deliver(&self, event: &Event) -> bool {
        // Encoded before taking the lock, which then covers only the bookkeeping.
        let shared = Arc::new(SharedEvent {
            room: Arc::from(event.room.as_str()),
            id: event.id.as_str().into(),
            frame: frame::text(&event_frame(event)),
        });
        let fresh = {
            let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
            let fresh = recent.ids.first_time(&event.id);
            if fresh {
                if recent.latest.len() == RECENT_EVENTS {
                    recent.latest.pop_front();
                }
                recent.latest.push_back(shared.clone());
            }
            fresh
        };
        if fresh {
            let delivered = self.fanout(shared);
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
    /// empty if `after` is not among the latest events (then the archive, which trails the
    /// exchange by far less, had them all).
    pub fn received_after(&self, room: &str, after: &str) -> Vec<Arc<SharedEvent>> {
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        catch_up::received_after(&recent.latest, room, after)
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
        let mut rooms = self.rooms.write().unwrap_or_else(|e| e.into_inner());
        let name = match rooms.get_key_value(room) {
            Some((name, _)) => name.clone(),
            None => Arc::from(room),
        };
        rooms.entry(name.clone()).or_default().insert(conn, member);
        metrics::gauge!("chat_rooms_active").set(rooms.len() as f64);
        name
    }

    /// Removes a connection from a room; the room disappears with its last member.
    pub fn leave(&self, room: &str, conn: ConnId) {
        let mut rooms = self.rooms.write().unwrap_or_else(|e| e.into_inner());
        if let Some(members) = rooms.get_mut(room) {
            members.remove(&conn);
            if members.is_empty() {
                rooms.remove(room);
            }
            metrics::gauge!("chat_rooms_active").set(rooms.len() as f64);
        }
    }

    /// Sends one event to every member of its room; returns how many got it. Members whose
    /// queue is full are kicked: better a clean reconnect with `since` than a silent gap.
    fn fanout(&self, shared: Arc<SharedEvent>) -> usize {
        let rooms = self.rooms.read().unwrap_or_else(|e| e.into_inner());
        let Some(members) = rooms.get(&shared.room) else {
            return 0;
        };
        let mut delivered = 0;
        for member in members.values() {
            match member.outbox.try_send(Outbound::Event(shared.clone())) {
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
        delivered
    }

    /// How many rooms have local members.
    pub fn room_count(&self) -> usize {
        self.rooms.read().unwrap_or_else(|e| e.into_inner()).len()
    }
}
