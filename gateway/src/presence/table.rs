//! The presence state of one gateway, as pure data: what every gateway (this one
//! included) last said of its rooms, each gateway's state expiring when it falls silent,
//! and per room what the local clients were last told, from which the batched
//! `presence_diff` messages are computed. Time is passed in, so every rule (boot
//! replacement, expiry, the leave grace that stops a quick reconnect from flickering, the
//! switch to counts in big rooms) is tested here with no clock and no broker.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use super::wire::{Body, Member};

/// A user's presence in a room, summed over gateways.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Online {
    pub name: String,
    pub connections: u32,
}

/// Members of one room through one gateway, by user.
type RoomMembers = HashMap<String, Online>;

/// What one gateway said, under one boot.
#[derive(Debug)]
struct Peer {
    boot: String,
    last_heard: Instant,
    rooms: HashMap<String, RoomMembers>,
}

/// What a room's local clients were told last.
#[derive(Debug, Default)]
struct Told {
    /// The member list they have (list mode), by user.
    members: BTreeMap<String, Online>,
    /// Set when they were given a count instead of a list.
    count: Option<usize>,
    /// Users gone from the room but not announced as leaves yet, since when.
    absent_since: HashMap<String, Instant>,
}

/// What to send a room's local clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A whole new view: the member list, or only the count in a big room.
    Full(View),
    /// Upserted members and users who left.
    Diff {
        joins: Vec<(String, Online)>,
        leaves: Vec<String>,
    },
}

/// A room's presence as a joining client gets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum View {
    Members(Vec<(String, Online)>),
    Count(usize),
}

/// The settings of the presence rules.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    /// A gateway not heard from for this long is forgotten with all its members.
    pub ttl: Duration,
    /// A user gone for less than this (a reconnect) is not announced as leaving.
    pub grace: Duration,
    /// Above this many users in a room, clients get counts instead of lists.
    pub max_list: usize,
}

/// Every gateway's presence and what local clients were told.
#[derive(Debug)]
pub struct Table {
    rules: Rules,
    /// This gateway's id; its own state is kept like a peer's, but never expires.
    own: String,
    peers: HashMap<String, Peer>,
    told: HashMap<String, Told>,
    /// Rooms whose aggregate may have changed since the last [`Table::changes`].
    dirty: HashSet<String>,
}

/// What applying a peer's message did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// A gateway (or a boot of it) not known before: it should hear our full state.
    NewPeer,
    Known,
}

impl Table {
    pub fn new(own: &str, boot: &str, rules: Rules, now: Instant) -> Self {
        let mut peers = HashMap::new();
        peers.insert(
            own.to_owned(),
            Peer {
                boot: boot.to_owned(),
                last_heard: now,
                rooms: HashMap::new(),
            },
        );
        Self {
            rules,
            own: own.to_owned(),
            peers,
            told: HashMap::new(),
            dirty: HashSet::new(),
        }
    }

    /// Applies a message from a gateway (ours included). A new boot replaces everything
    /// the gateway said before; `State` replaces all its rooms, `Rooms` the rooms named.
    pub fn apply(&mut self, gateway: &str, boot: &str, body: Body, now: Instant) -> Applied {
        let mut applied = Applied::Known;
        let peer = self.peers.entry(gateway.to_owned()).or_insert_with(|| {
            applied = Applied::NewPeer;
            Peer {
                boot: boot.to_owned(),
                last_heard: now,
                rooms: HashMap::new(),
            }
        });
        if peer.boot != boot {
            // Restarted: what the old process said is void at once.
            applied = Applied::NewPeer;
            self.dirty.extend(peer.rooms.keys().cloned());
            peer.rooms.clear();
            peer.boot = boot.to_owned();
        }
        peer.last_heard = now;
        let (rooms, replace_all) = match body {
            Body::State { rooms } => (rooms, true),
            Body::Rooms { rooms } => (rooms, false),
            Body::Typing { .. } => return applied,
        };
        if replace_all {
            self.dirty.extend(peer.rooms.keys().cloned());
            peer.rooms.clear();
        }
        for (room, members) in rooms {
            self.dirty.insert(room.clone());
            if members.is_empty() {
                peer.rooms.remove(&room);
            } else {
                peer.rooms.insert(room, to_room(members));
            }
        }
        applied
    }

    /// Forgets the gateways not heard from within the TTL (never this one).
    pub fn expire(&mut self, now: Instant) -> Vec<String> {
        let ttl = self.rules.ttl;
        let own = &self.own;
        let mut gone = Vec::new();
        self.peers.retain(|id, peer| {
            let alive = id == own || now.duration_since(peer.last_heard) < ttl;
            if !alive {
                gone.push(id.clone());
                self.dirty.extend(peer.rooms.keys().cloned());
            }
            alive
        });
        gone
    }

    /// The users of a room summed over gateways.
    fn aggregate(&self, room: &str) -> BTreeMap<String, Online> {
        let mut all: BTreeMap<String, Online> = BTreeMap::new();
        for peer in self.peers.values() {
            for (user, online) in peer.rooms.get(room).into_iter().flatten() {
                all.entry(user.clone())
                    .and_modify(|o| o.connections += online.connections)
                    .or_insert_with(|| online.clone());
            }
        }
        all
    }

    /// What a client joining `room` gets: what the room's other local clients were told
    /// last, so the diffs that follow apply to it exactly (they are idempotent: a join
    /// upserts, a leave removes). A room nobody here watched yet starts from now.
    pub fn view(&mut self, room: &str) -> View {
        if !self.told.contains_key(room) {
            let members = self.aggregate(room);
            let count = (members.len() > self.rules.max_list).then_some(members.len());
            self.told.insert(
                room.to_owned(),
                Told {
                    members,
                    count,
                    absent_since: HashMap::new(),
                },
            );
        }
        let told = &self.told[room];
        match told.count {
            Some(n) => View::Count(n),
            None => View::Members(
                told.members
                    .iter()
                    .map(|(u, o)| (u.clone(), o.clone()))
                    .collect(),
            ),
        }
    }

    /// The changes to send, room by room, for the rooms with local clients
    /// (`watched`); forgets what it told rooms no longer watched.
    pub fn changes(&mut self, watched: &HashSet<String>, now: Instant) -> Vec<(String, Change)> {
        self.told.retain(|room, _| watched.contains(room));
        // Rooms with a pending leave are looked at again until its grace ends.
        let pending: Vec<String> = self
            .told
            .iter()
            .filter(|(_, t)| !t.absent_since.is_empty())
            .map(|(r, _)| r.clone())
            .collect();
        let rooms: Vec<String> = std::mem::take(&mut self.dirty)
            .into_iter()
            .chain(pending)
            .filter(|room| self.told.contains_key(room))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let mut out = Vec::new();
        for room in rooms {
            let current = self.aggregate(&room);
            let told = self.told.get_mut(&room).expect("filtered on told rooms");
            if let Some(change) = diff(told, current, now, &self.rules) {
                out.push((room, change));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Users in a room according to every gateway (this one's state as last applied).
    #[cfg(test)]
    fn users(&self, room: &str) -> Vec<String> {
        self.aggregate(room).into_keys().collect()
    }
}

fn to_room(members: Vec<Member>) -> RoomMembers {
    let mut room = RoomMembers::with_capacity(members.len());
    for m in members {
        room.entry(m.user)
            .and_modify(|o| o.connections = o.connections.saturating_add(m.connections))
            .or_insert(Online {
                name: m.name,
                connections: m.connections,
            });
    }
    room
}

/// What changed between what a room's clients were told and `current`; updates `told`.
fn diff(
    told: &mut Told,
    current: BTreeMap<String, Online>,
    now: Instant,
    rules: &Rules,
) -> Option<Change> {
    if current.len() > rules.max_list {
        // Big room: counts only, no grace (a count is not a person flickering).
        let n = current.len();
        let changed = told.count != Some(n);
        told.count = Some(n);
        told.members = current;
        told.absent_since.clear();
        return changed.then_some(Change::Full(View::Count(n)));
    }
    if told.count.is_some() {
        // Back under the limit: a whole list replaces the count.
        told.count = None;
        told.absent_since.clear();
        told.members = current.clone();
        return Some(Change::Full(View::Members(current.into_iter().collect())));
    }
    let mut joins = Vec::new();
    for (user, online) in &current {
        told.absent_since.remove(user);
        if told.members.get(user) != Some(online) {
            told.members.insert(user.clone(), online.clone());
            joins.push((user.clone(), online.clone()));
        }
    }
    let mut leaves = Vec::new();
    let gone: Vec<String> = told
        .members
        .keys()
        .filter(|u| !current.contains_key(*u))
        .cloned()
        .collect();
    for user in gone {
        let since = *told.absent_since.entry(user.clone()).or_insert(now);
        if now.duration_since(since) >= rules.grace {
            told.absent_since.remove(&user);
            told.members.remove(&user);
            leaves.push(user);
        }
    }
    (!joins.is_empty() || !leaves.is_empty()).then_some(Change::Diff { joins, leaves })
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: Rules = Rules {
        ttl: Duration::from_secs(30),
        grace: Duration::from_secs(5),
        max_list: 3,
    };

    fn members(list: &[(&str, u32)]) -> Vec<Member> {
        list.iter()
            .map(|(u, c)| Member {
                user: (*u).into(),
                name: u.to_uppercase(),
                connections: *c,
            })
            .collect()
    }

    fn rooms(room: &str, list: &[(&str, u32)]) -> BTreeMap<String, Vec<Member>> {
        BTreeMap::from([(room.to_owned(), members(list))])
    }

    fn state(room: &str, list: &[(&str, u32)]) -> Body {
        Body::State {
            rooms: rooms(room, list),
        }
    }

    fn online(connections: u32, user: &str) -> (String, Online) {
        (
            user.to_owned(),
            Online {
                name: user.to_uppercase(),
                connections,
            },
        )
    }

    fn watched(rooms: &[&str]) -> HashSet<String> {
        rooms.iter().map(|r| (*r).to_owned()).collect()
    }

    #[test]
    fn members_are_summed_over_gateways_and_a_join_is_told_once() {
        let t0 = Instant::now();
        let mut table = Table::new("gw-1", "b1", RULES, t0);
        assert_eq!(table.view("lobby"), View::Members(vec![]));
        table.apply("gw-1", "b1", state("lobby", &[("alice", 1)]), t0);
        assert_eq!(
            table.apply("gw-2", "x", state("lobby", &[("alice", 2), ("bob", 1)]), t0),
            Applied::NewPeer
        );
        let changes = table.changes(&watched(&["lobby"]), t0);
        assert_eq!(
            changes,
            vec![(
                "lobby".to_owned(),
                Change::Diff {
                    joins: vec![online(3, "alice"), online(1, "bob")],
                    leaves: vec![]
                }
            )]
        );
        assert_eq!(table.changes(&watched(&["lobby"]), t0), vec![], "told once");
        assert_eq!(
            table.view("lobby"),
            View::Members(vec![online(3, "alice"), online(1, "bob")])
        );
    }

    #[test]
    fn a_reconnect_within_the_grace_does_not_flicker_but_a_leave_is_told_after_it() {
        let t0 = Instant::now();
        let mut table = Table::new("gw-1", "b1", RULES, t0);
        table.view("lobby");
        table.apply(
            "gw-1",
            "b1",
            state("lobby", &[("alice", 1), ("bob", 1)]),
            t0,
        );
        table.changes(&watched(&["lobby"]), t0);
        // alice drops and is back 2 s later: nothing is said.
        table.apply("gw-1", "b1", state("lobby", &[("bob", 1)]), t0);
        assert_eq!(table.changes(&watched(&["lobby"]), t0), vec![]);
        let t2 = t0 + Duration::from_secs(2);
        table.apply(
            "gw-1",
            "b1",
            state("lobby", &[("alice", 1), ("bob", 1)]),
            t2,
        );
        assert_eq!(table.changes(&watched(&["lobby"]), t2), vec![]);
        // bob goes for good: told once the grace has passed.
        table.apply("gw-1", "b1", state("lobby", &[("alice", 1)]), t2);
        assert_eq!(table.changes(&watched(&["lobby"]), t2), vec![]);
        let t6 = t2 + Duration::from_secs(4);
        assert_eq!(table.changes(&watched(&["lobby"]), t6), vec![]);
        let t8 = t2 + Duration::from_secs(6);
        assert_eq!(
            table.changes(&watched(&["lobby"]), t8),
            vec![(
                "lobby".to_owned(),
                Change::Diff {
                    joins: vec![],
                    leaves: vec!["bob".to_owned()]
                }
            )]
        );
    }

    #[test]
    fn a_restarted_gateway_replaces_its_old_state_at_once() {
        let t0 = Instant::now();
        let mut table = Table::new("gw-1", "b1", RULES, t0);
        table.apply(
            "gw-2",
            "old",
            state("lobby", &[("alice", 1), ("bob", 1)]),
            t0,
        );
        assert_eq!(table.users("lobby"), ["alice", "bob"]);
        let applied = table.apply(
            "gw-2",
            "new",
            Body::Rooms {
                rooms: rooms("lobby", &[("carol", 1)]),
            },
            t0,
        );
        assert_eq!(applied, Applied::NewPeer);
        assert_eq!(table.users("lobby"), ["carol"]);
    }

    #[test]
    fn a_silent_gateway_expires_after_the_ttl_but_this_one_never_does() {
        let t0 = Instant::now();
        let mut table = Table::new("gw-1", "b1", RULES, t0);
        table.apply("gw-1", "b1", state("lobby", &[("alice", 1)]), t0);
        table.apply("gw-2", "x", state("lobby", &[("bob", 1)]), t0);
        assert_eq!(
            table.expire(t0 + Duration::from_secs(29)),
            Vec::<String>::new()
        );
        assert_eq!(table.expire(t0 + Duration::from_secs(30)), vec!["gw-2"]);
        assert_eq!(table.users("lobby"), ["alice"]);
    }

    #[test]
    fn a_room_update_replaces_only_the_rooms_it_names() {
        let t0 = Instant::now();
        let mut table = Table::new("gw-1", "b1", RULES, t0);
        let mut both = rooms("a", &[("alice", 1)]);
        both.extend(rooms("b", &[("bob", 1)]));
        table.apply("gw-2", "x", Body::State { rooms: both }, t0);
        table.apply(
            "gw-2",
            "x",
            Body::Rooms {
                rooms: rooms("a", &[]),
            },
            t0,
        );
        assert_eq!(table.users("a"), Vec::<String>::new());
        assert_eq!(table.users("b"), ["bob"]);
    }

    #[test]
    fn a_big_room_gets_counts_and_a_list_again_when_it_shrinks() {
        let t0 = Instant::now();
        let mut table = Table::new("gw-1", "b1", RULES, t0);
        table.view("lobby");
        let four = [("a", 1), ("b", 1), ("c", 1), ("d", 1)];
        table.apply("gw-2", "x", state("lobby", &four), t0);
        assert_eq!(
            table.changes(&watched(&["lobby"]), t0),
            vec![("lobby".to_owned(), Change::Full(View::Count(4)))]
        );
        assert_eq!(table.view("lobby"), View::Count(4));
        table.apply("gw-2", "x", state("lobby", &four), t0);
        assert_eq!(
            table.changes(&watched(&["lobby"]), t0),
            vec![],
            "same count"
        );
        table.apply("gw-2", "x", state("lobby", &[("a", 1)]), t0);
        assert_eq!(
            table.changes(&watched(&["lobby"]), t0),
            vec![(
                "lobby".to_owned(),
                Change::Full(View::Members(vec![online(1, "a")]))
            )]
        );
    }

    #[test]
    fn rooms_without_local_clients_are_not_told_anything() {
        let t0 = Instant::now();
        let mut table = Table::new("gw-1", "b1", RULES, t0);
        table.view("lobby");
        table.apply("gw-2", "x", state("lobby", &[("alice", 1)]), t0);
        assert_eq!(table.changes(&watched(&[]), t0), vec![]);
        table.apply("gw-2", "x", state("lobby", &[("bob", 1)]), t0);
        assert_eq!(table.changes(&watched(&["lobby"]), t0), vec![]);
    }
}
