//! Presence and typing: ephemeral, never archived. Each gateway tells the others, on the
//! transient fanout exchange `<prefix>.presence` (its own broker connection, transient
//! messages, nothing durable bound), who is connected to which room through it: its full
//! state at start, as a heartbeat every `PRESENCE_HEARTBEAT_MS` and when a gateway it did
//! not know appears, and the rooms that changed at most once per `PRESENCE_FLUSH_MS`. A
//! message under a new boot id replaces what a restarted gateway said before at once; a
//! gateway not heard from for `PRESENCE_TTL_MS` is forgotten (the `table` module).
//!
//! Local clients get `presence` after `joined`, then `presence_diff` at most once per flush
//! (a leave only after `PRESENCE_GRACE_MS`, so a quick reconnect does not flicker), or only
//! counts above `PRESENCE_MAX_LIST` users. Typing is relayed on the same exchange and
//! delivered as the room's current typers with a time to live, at most one `typing` frame
//! per room per `TYPING_FLUSH_MS`: the first change goes out at once, later ones within the
//! interval are folded into one frame at its end, so a room where many type costs its
//! members a few frames a second, not one per keystroke burst of each typer.

pub(crate) mod table;
pub mod wire;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use chat_core::broker::{Session, Supervisor};
use chat_core::normalize::Limits;
use chat_core::topology::Topology;
use futures_util::StreamExt;
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Channel, Connection};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::rooms::Rooms;
use crate::ws::frame;
use table::{Change, Online, Rules, Table, View};
use wire::{Announcement, Body};

/// Typing notices waiting to be relayed; more are dropped (typing is best effort).
const TYPING_QUEUE: usize = 1024;
/// Most presence messages waiting in a gateway's queue; older ones are dropped.
const QUEUE_MAX_LENGTH: u32 = 10_000;
/// Longest wait for one presence publish.
const PUBLISH_WAIT: Duration = Duration::from_secs(1);

/// The presence settings.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub heartbeat: Duration,
    pub flush: Duration,
    pub typing_ttl: Duration,
    /// Least time between two `typing` frames to one room's members.
    pub typing_flush: Duration,
    pub rules: Rules,
}

/// A typing notice from a local client, to relay.
#[derive(Debug)]
struct TypingNotice {
    room: String,
    user: String,
    name: String,
    typing: bool,
}

/// Who is typing in one room (user id to display name and end of their time to live).
type Typers = HashMap<String, (String, Instant)>;

/// One room's typers and when its members were last told.
#[derive(Debug, Default)]
struct RoomTyping {
    typers: Typers,
    /// When the room's local members last got a `typing` frame.
    told_at: Option<Instant>,
    /// The typers changed (or renewed) since then: a frame is owed.
    pending: bool,
}

impl RoomTyping {
    /// Whether a frame owed may go out at `now`.
    fn due(&self, now: Instant, spacing: Duration) -> bool {
        self.pending && self.told_at.is_none_or(|at| now >= at + spacing)
    }
}

/// The presence state shared by the connections and the presence task.
#[derive(Debug)]
pub struct Presence {
    gateway: String,
    boot: String,
    settings: Settings,
    table: Mutex<Table>,
    typers: Mutex<HashMap<String, RoomTyping>>,
    typing_tx: mpsc::Sender<TypingNotice>,
    typing_rx: Mutex<Option<mpsc::Receiver<TypingNotice>>>,
}

/// `presence`, `presence_diff` and `typing` as clients get them.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ClientMessage<'a> {
    Presence {
        room: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        members: Option<Vec<MemberView<'a>>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        count: Option<usize>,
    },
    PresenceDiff {
        room: &'a str,
        joins: Vec<MemberView<'a>>,
        leaves: &'a [String],
    },
    Typing {
        room: &'a str,
        users: Vec<&'a str>,
        names: Vec<&'a str>,
        ttl_ms: u64,
    },
}

#[derive(Serialize)]
struct MemberView<'a> {
    user: &'a str,
    name: &'a str,
    connections: u32,
}

fn members(list: &[(String, Online)]) -> Vec<MemberView<'_>> {
    list.iter()
        .map(|(user, online)| MemberView {
            user,
            name: &online.name,
            connections: online.connections,
        })
        .collect()
}

fn view_message(room: &str, view: &View) -> String {
    let message = match view {
        View::Members(list) => ClientMessage::Presence {
            room,
            members: Some(members(list)),
            count: None,
        },
        View::Count(n) => ClientMessage::Presence {
            room,
            members: None,
            count: Some(*n),
        },
    };
    serde_json::to_string(&message).expect("presence serialises")
}

fn change_message(room: &str, change: &Change) -> String {
    match change {
        Change::Full(view) => view_message(room, view),
        Change::Diff { joins, leaves } => serde_json::to_string(&ClientMessage::PresenceDiff {
            room,
            joins: members(joins),
            leaves,
        })
        .expect("presence diffs serialise"),
    }
}

impl Presence {
    pub fn new(gateway: &str, settings: Settings) -> Self {
        let boot = chat_core::event::new_id();
        let (typing_tx, typing_rx) = mpsc::channel(TYPING_QUEUE);
        Self {
            table: Mutex::new(Table::new(
                gateway,
                &boot,
                settings.rules,
                std::time::Instant::now(),
            )),
            gateway: gateway.to_owned(),
            boot,
            settings,
            typers: Mutex::default(),
            typing_tx,
            typing_rx: Mutex::new(Some(typing_rx)),
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The `presence` message a client joining `room` gets right after `joined`.
    pub fn joined_message(&self, room: &str) -> String {
        let view = self.table().view(room);
        view_message(room, &view)
    }

    /// A local client started or stopped typing: relayed to the other gateways, and to
    /// this gateway's members of the room now.
    pub fn typing(&self, rooms: &Rooms, room: &str, user: &str, name: &str, typing: bool) {
        let notice = TypingNotice {
            room: room.to_owned(),
            user: user.to_owned(),
            name: name.to_owned(),
            typing,
        };
        if self.typing_tx.try_send(notice).is_err() {
            metrics::counter!("chat_presence_dropped_total", "reason" => "typing_queue_full")
                .increment(1);
        }
        self.apply_typing(rooms, room, user, name, typing, Instant::now());
    }

    /// Records a typing notice, and sends the room's typers to its local members now if
    /// the room was not told within `typing_flush` (else [`Presence::flush_typing`] does,
    /// when that time is up).
    fn apply_typing(
        &self,
        rooms: &Rooms,
        room: &str,
        user: &str,
        name: &str,
        typing: bool,
        now: Instant,
    ) {
        let mut all = self.typers.lock().unwrap_or_else(|e| e.into_inner());
        let changed = if typing {
            // A repeated start is sent on too: it renews the clients' time to live.
            let entry = all.entry(room.to_owned()).or_default();
            entry.typers.insert(
                user.to_owned(),
                (name.to_owned(), now + self.settings.typing_ttl),
            );
            true
        } else {
            all.get_mut(room)
                .is_some_and(|entry| entry.typers.remove(user).is_some())
        };
        if !changed {
            return;
        }
        let entry = all.get_mut(room).expect("a changed room has an entry");
        entry.pending = true;
        if !entry.due(now, self.settings.typing_flush) {
            return;
        }
        entry.pending = false;
        entry.told_at = Some(now);
        let frame = self.typing_frame(room, &entry.typers);
        drop(all);
        rooms.send_to_room(room, frame);
    }

    fn typing_frame(&self, room: &str, typers: &Typers) -> Bytes {
        let mut list: Vec<(&str, &str)> = typers
            .iter()
            .map(|(user, (name, _))| (user.as_str(), name.as_str()))
            .collect();
        list.sort_unstable();
        let message = ClientMessage::Typing {
            room,
            users: list.iter().map(|(u, _)| *u).collect(),
            names: list.iter().map(|(_, n)| *n).collect(),
            ttl_ms: self.settings.typing_ttl.as_millis() as u64,
        };
        frame::text(&serde_json::to_string(&message).expect("typing serialises"))
    }

    /// Drops typers whose time to live ended, sends each room whose frame is owed and due
    /// its typers, and forgets rooms with nobody typing that were told long enough ago.
    fn flush_typing(&self, rooms: &Rooms, now: Instant) {
        let spacing = self.settings.typing_flush;
        let mut frames = Vec::new();
        {
            let mut all = self.typers.lock().unwrap_or_else(|e| e.into_inner());
            all.retain(|room, entry| {
                let before = entry.typers.len();
                entry.typers.retain(|_, (_, until)| *until > now);
                if entry.typers.len() != before {
                    entry.pending = true;
                }
                if entry.due(now, spacing) {
                    entry.pending = false;
                    entry.told_at = Some(now);
                    frames.push((room.clone(), self.typing_frame(room, &entry.typers)));
                }
                // An empty room is kept while its last frame is recent, so that a start
                // right after a stop still waits for the spacing.
                !entry.typers.is_empty()
                    || entry.pending
                    || entry.told_at.is_some_and(|at| now < at + spacing)
            });
        }
        for (room, frame) in frames {
            rooms.send_to_room(&room, frame);
        }
    }

    fn announcement(&self, body: Body) -> Announcement {
        Announcement {
            v: wire::VERSION,
            gateway: self.gateway.clone(),
            boot: self.boot.clone(),
            body,
        }
    }
}

/// Runs presence until `shutdown` is cancelled, reconnecting to the broker as needed.
pub async fn run(
    amqp_url: String,
    topology: Topology,
    presence: Arc<Presence>,
    rooms: Arc<Rooms>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let typing = presence
        .typing_rx
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
        .expect("presence runs once");
    let supervisor = Supervisor::new(
        &amqp_url,
        &format!("gateway {} presence", presence.gateway),
        shutdown.clone(),
    );
    supervisor
        .run(&mut PresenceSession {
            topology,
            presence,
            rooms,
            typing,
            shutdown,
        })
        .await
}

struct PresenceSession {
    topology: Topology,
    presence: Arc<Presence>,
    rooms: Arc<Rooms>,
    typing: mpsc::Receiver<TypingNotice>,
    shutdown: CancellationToken,
}

impl Session for PresenceSession {
    async fn run(
        &mut self,
        connection: &Connection,
        supervisor: &mut Supervisor,
    ) -> anyhow::Result<()> {
        let channel = chat_core::broker::open_channel(connection).await?;
        let settings = self.presence.settings;
        let ttl_ms = u32::try_from(settings.rules.ttl.as_millis()).unwrap_or(u32::MAX);
        let queue = self
            .topology
            .declare_presence_queue(&channel, ttl_ms, QUEUE_MAX_LENGTH)
            .await
            .context("Failed to declare the presence queue")?;
        let mut deliveries =
            chat_core::broker::consume(&channel, &queue, "", chat_core::broker::Acks::Auto).await?;
        supervisor.up();
        let exchange = self.topology.presence_exchange();
        let presence = &self.presence;
        let rooms = &self.rooms;
        // What we last told the others, room by room.
        let mut told: BTreeMap<String, Vec<wire::Member>> = BTreeMap::new();
        let mut seen_version = None;
        let mut send_full = true;
        let mut next_heartbeat = Instant::now();
        let mut tick = tokio::time::interval(settings.flush);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Typing frames held back by the spacing go out within a tenth of it.
        let mut typing_tick = tokio::time::interval(typing_tick(settings.typing_flush));
        typing_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => {
                    // Stopping (its clients are gone by now): say so, so the others drop
                    // this gateway's members at once instead of after the TTL, whether or
                    // not a flush ran since the last client left.
                    let goodbye = presence.announcement(Body::State { rooms: BTreeMap::new() });
                    let _ = publish(&channel, &exchange, &goodbye).await;
                    drop(deliveries);
                    chat_core::broker::close_channels(&[channel]).await;
                    return Ok(());
                }
                delivery = deliveries.next() => {
                    let Some(delivery) = delivery else {
                        bail!("the broker cancelled the presence consumer");
                    };
                    let delivery = delivery.context("Delivery failed")?;
                    if receive(presence, rooms, &delivery.data) {
                        send_full = true;
                    }
                }
                notice = self.typing.recv() => {
                    let Some(notice) = notice else { return Ok(()) };
                    let message = presence.announcement(Body::Typing {
                        room: notice.room,
                        user: notice.user,
                        name: notice.name,
                        typing: notice.typing,
                    });
                    publish(&channel, &exchange, &message).await?;
                }
                _ = tick.tick() => {
                    let now = Instant::now();
                    let version = rooms.version();
                    let local = if seen_version != Some(version) || send_full || now >= next_heartbeat {
                        seen_version = Some(version);
                        Some(rooms.presence())
                    } else {
                        None
                    };
                    if let Some(local) = local {
                        let body = if send_full || now >= next_heartbeat {
                            send_full = false;
                            next_heartbeat = now + settings.heartbeat;
                            told = local.clone();
                            Some(Body::State { rooms: local })
                        } else {
                            let mut changed = BTreeMap::new();
                            for (room, members) in &local {
                                if told.get(room) != Some(members) {
                                    changed.insert(room.clone(), members.clone());
                                }
                            }
                            for room in told.keys() {
                                if !local.contains_key(room) {
                                    changed.insert(room.clone(), Vec::new());
                                }
                            }
                            told = local;
                            (!changed.is_empty()).then_some(Body::Rooms { rooms: changed })
                        };
                        if let Some(body) = body {
                            let message = presence.announcement(body);
                            publish(&channel, &exchange, &message).await?;
                            let Announcement { gateway, boot, body, .. } = message;
                            presence.table().apply(&gateway, &boot, body, now.into_std());
                        }
                    }
                    flush(presence, rooms, now);
                }
                _ = typing_tick.tick() => presence.flush_typing(rooms, Instant::now()),
            }
        }
    }
}

/// Applies one message from the exchange; true when its sender is a gateway (or a boot)
/// not known before, which should hear this gateway's full state.
fn receive(presence: &Presence, rooms: &Rooms, data: &[u8]) -> bool {
    let message = match Announcement::decode(data, &Limits::DECODE) {
        Ok(message) => message,
        Err(err) => {
            metrics::counter!("chat_presence_dropped_total", "reason" => err.reason()).increment(1);
            tracing::warn!(error = %err, bytes = data.len(), "dropping a bad presence message");
            return false;
        }
    };
    if message.gateway == presence.gateway && message.boot == presence.boot {
        return false; // our own, applied when sent
    }
    if message.gateway == presence.gateway {
        // Another process with our id: its state would be mixed with ours.
        metrics::counter!("chat_presence_dropped_total", "reason" => "same_gateway_id")
            .increment(1);
        tracing::warn!(gateway = %message.gateway, "another gateway uses this gateway's id; ignoring its presence");
        return false;
    }
    let now = Instant::now();
    if let Body::Typing {
        room,
        user,
        name,
        typing,
    } = &message.body
    {
        presence.apply_typing(rooms, room, user, name, *typing, now);
    }
    let applied = presence.table().apply(
        &message.gateway,
        &message.boot,
        message.body,
        now.into_std(),
    );
    applied == table::Applied::NewPeer
}

/// How often held-back typing frames and expiries are looked at: a tenth of the spacing,
/// between 20 ms and 250 ms.
fn typing_tick(spacing: Duration) -> Duration {
    (spacing / 10).clamp(Duration::from_millis(20), Duration::from_millis(250))
}

/// Expires silent gateways, and sends each watched room what changed.
fn flush(presence: &Presence, rooms: &Rooms, now: Instant) {
    let watched: HashSet<String> = rooms.names().iter().map(|r| r.to_string()).collect();
    let changes = {
        let mut table = presence.table();
        for gone in table.expire(now.into_std()) {
            tracing::info!(gateway = %gone, "a gateway fell silent; its presence expired");
            metrics::counter!("chat_presence_expired_total").increment(1);
        }
        table.changes(&watched, now.into_std())
    };
    for (room, change) in changes {
        rooms.send_to_room(&room, frame::text(&change_message(&room, &change)));
    }
}

/// Publishes a presence message, giving up after [`PUBLISH_WAIT`]: while a memory or disk
/// alarm blocks the connection a publish waits for the alarm to end, and presence must
/// neither hold up the loop (consuming, flushing, shutdown) nor queue stale states. A
/// message given up is healed by the next heartbeat.
async fn publish(channel: &Channel, exchange: &str, message: &Announcement) -> anyhow::Result<()> {
    let sent = tokio::time::timeout(PUBLISH_WAIT, publish_now(channel, exchange, message)).await;
    match sent {
        Ok(result) => result,
        Err(_) => {
            metrics::counter!("chat_presence_dropped_total", "reason" => "blocked").increment(1);
            tracing::debug!("a presence message could not be published in time (broker alarm?)");
            Ok(())
        }
    }
}

async fn publish_now(
    channel: &Channel,
    exchange: &str,
    message: &Announcement,
) -> anyhow::Result<()> {
    channel
        .basic_publish(
            exchange.into(),
            "".into(),
            BasicPublishOptions::default(),
            &message.encode(),
            // Transient (delivery mode 1): presence is never written to disk.
            BasicProperties::default()
                .with_content_type("application/json".into())
                .with_delivery_mode(1),
        )
        .await
        .context("Failed to publish presence")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;
    use crate::rooms::{Member, Outbound};

    const SPACING: Duration = Duration::from_millis(500);

    fn presence() -> Presence {
        Presence::new(
            "gw-test",
            Settings {
                heartbeat: Duration::from_secs(10),
                flush: Duration::from_secs(1),
                typing_ttl: Duration::from_secs(6),
                typing_flush: SPACING,
                rules: Rules {
                    ttl: Duration::from_secs(30),
                    grace: Duration::from_secs(5),
                    max_list: 200,
                },
            },
        )
    }

    /// A room with one local member; returns what it has been sent so far, as the
    /// `users` of each `typing` frame.
    fn room_with_a_member() -> (Rooms, impl FnMut() -> Vec<Vec<String>>) {
        let rooms = Rooms::new(200);
        let (outbox, mut queue) = crate::outbox::channel(64);
        let member = Member {
            outbox,
            kick: CancellationToken::new(),
            user: None,
            name: Arc::from("watcher"),
            admin: false,
        };
        rooms.join("lobby", rooms.next_conn_id(), member);
        let sent = move || {
            let mut batch = VecDeque::new();
            queue.take_queued(&mut batch);
            batch
                .into_iter()
                .filter_map(|item| match item {
                    Outbound::Event(shared) => {
                        let v: serde_json::Value =
                            serde_json::from_slice(server_payload(&shared.frame)).ok()?;
                        (v["type"] == "typing").then(|| {
                            v["users"]
                                .as_array()
                                .into_iter()
                                .flatten()
                                .filter_map(|u| u.as_str().map(str::to_owned))
                                .collect()
                        })
                    }
                    _ => None,
                })
                .collect()
        };
        (rooms, sent)
    }

    /// The payload of an unmasked server frame (RFC 6455 §5.2).
    fn server_payload(frame: &[u8]) -> &[u8] {
        let header = match frame[1] & 0x7F {
            126 => 4,
            127 => 10,
            _ => 2,
        };
        &frame[header..]
    }

    #[test]
    fn typing_changes_within_the_spacing_reach_a_room_as_one_frame_at_its_end() {
        let p = presence();
        let (rooms, mut sent) = room_with_a_member();
        let t0 = Instant::now();
        // The first start goes out at once.
        p.apply_typing(&rooms, "lobby", "alice", "Alice", true, t0);
        assert_eq!(sent(), [vec!["alice".to_owned()]]);
        // Three more changes within the spacing: held back, then one frame with the result.
        let ms = Duration::from_millis;
        p.apply_typing(&rooms, "lobby", "bob", "Bob", true, t0 + ms(100));
        p.apply_typing(&rooms, "lobby", "carol", "Carol", true, t0 + ms(200));
        p.apply_typing(&rooms, "lobby", "alice", "Alice", false, t0 + ms(300));
        p.flush_typing(&rooms, t0 + ms(400));
        assert!(sent().is_empty(), "nothing before the spacing is up");
        p.flush_typing(&rooms, t0 + ms(500));
        assert_eq!(sent(), [vec!["bob".to_owned(), "carol".to_owned()]]);
        // Nothing owed: nothing sent.
        p.flush_typing(&rooms, t0 + ms(1200));
        assert!(sent().is_empty());
        // A change after a quiet spell goes out at once again.
        p.apply_typing(&rooms, "lobby", "bob", "Bob", false, t0 + ms(1300));
        assert_eq!(sent(), [vec!["carol".to_owned()]]);
        // A stop of someone not typing changes nothing and owes nothing.
        p.apply_typing(&rooms, "lobby", "dave", "Dave", false, t0 + ms(1400));
        p.flush_typing(&rooms, t0 + ms(2000));
        assert!(sent().is_empty());
    }

    #[test]
    fn a_typer_whose_time_ran_out_is_dropped_and_the_room_told() {
        let p = presence();
        let (rooms, mut sent) = room_with_a_member();
        let t0 = Instant::now();
        p.apply_typing(&rooms, "lobby", "alice", "Alice", true, t0);
        assert_eq!(sent().len(), 1);
        p.flush_typing(&rooms, t0 + Duration::from_millis(5_900));
        assert!(sent().is_empty());
        p.flush_typing(&rooms, t0 + Duration::from_millis(6_000));
        assert_eq!(sent(), [Vec::<String>::new()]);
        // Told and empty: the room is forgotten once the spacing is over.
        p.flush_typing(&rooms, t0 + Duration::from_millis(6_600));
        assert!(p.typers.lock().unwrap().is_empty());
    }
}
