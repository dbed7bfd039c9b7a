//! Who connects where, in which room, and when each sender sends: the layout of a pool of
//! clients and the schedule (plan) of one measured window, both pure.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::client::Dialect;
use crate::stats::WindowStats;

/// How clients are spread over the gateways.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Spread {
    /// Client `i` connects to URL `i mod gateways`: a room's members on several gateways.
    #[default]
    RoundRobin,
    /// Every member of room `r` connects to URL `r mod gateways`: each gateway serves its own
    /// share of the rooms, as a load balancer with room affinity would arrange.
    ByRoom,
}

/// Who connects where, in which room.
#[derive(Debug, Clone)]
pub struct Layout {
    pub dialect: Dialect,
    /// Websocket URLs, with the dialect's path.
    pub urls: Vec<String>,
    pub receivers: usize,
    pub senders: usize,
    pub rooms: usize,
    /// Bytes of message text.
    pub payload: usize,
    /// Prefix of room names, unique per run so that history of earlier runs stays out.
    pub room_prefix: String,
    /// Chat dialect in token mode: the secret each client's token is signed with.
    pub auth_secret: Option<String>,
    /// Which gateway each client connects to.
    pub spread: Spread,
}

impl Layout {
    pub(super) fn clients(&self) -> usize {
        self.receivers + self.senders
    }

    /// Clients are numbered receivers first, then senders, and take the URLs in turn (or
    /// their room's URL, [`Spread::ByRoom`]).
    pub(super) fn url_of(&self, client: usize) -> &str {
        &self.urls[self.gateway_of(client)]
    }

    /// The index of the URL client `client` connects to.
    fn gateway_of(&self, client: usize) -> usize {
        match self.spread {
            Spread::RoundRobin => client % self.urls.len(),
            Spread::ByRoom => self.room_of_client(client) % self.urls.len(),
        }
    }

    fn room_of_client(&self, client: usize) -> usize {
        if client < self.receivers {
            self.room_of_receiver(client)
        } else {
            self.room_of_sender(client - self.receivers)
        }
    }

    /// For each gateway (in URL order), whether each room has a client on it.
    pub fn served(&self) -> Vec<Vec<bool>> {
        let mut served = vec![vec![false; self.rooms]; self.urls.len()];
        for client in 0..self.clients() {
            served[self.gateway_of(client)][self.room_of_client(client)] = true;
        }
        served
    }

    /// For each gateway (in URL order), the messages sent in the rooms it serves: what a
    /// gateway routed by room has to consume of the window's messages.
    pub(super) fn own_traffic(&self, stats: &WindowStats) -> Vec<u64> {
        self.served()
            .iter()
            .map(|rooms| {
                (0..self.senders)
                    .filter(|s| rooms[self.room_of_sender(*s)])
                    .map(|s| stats.sent_by(s))
                    .sum()
            })
            .collect()
    }

    pub(super) fn room_of_receiver(&self, receiver: usize) -> usize {
        receiver % self.rooms
    }

    pub(super) fn room_of_sender(&self, sender: usize) -> usize {
        sender % self.rooms
    }

    pub fn room_name(&self, room: usize) -> String {
        format!("{}-{room}", self.room_prefix)
    }

    /// Deliveries owed for what each sender sent: one per receiver of its room.
    pub(super) fn expected(&self, stats: &WindowStats) -> u64 {
        let mut per_room = vec![0u64; self.rooms];
        for receiver in 0..self.receivers {
            per_room[self.room_of_receiver(receiver)] += 1;
        }
        (0..self.senders)
            .map(|s| stats.sent_by(s) * per_room[self.room_of_sender(s)])
            .sum()
    }
}

/// What the senders do now. Window 0 is idle.
#[derive(Clone)]
pub(super) struct Plan {
    pub window: u32,
    pub start: Instant,
    pub end: Instant,
    /// Time between two messages of one sender.
    pub interval: Duration,
    pub stats: Arc<WindowStats>,
}

impl Plan {
    /// No window yet: nobody sends.
    pub fn idle(senders: usize) -> Self {
        Self {
            window: 0,
            start: Instant::now(),
            end: Instant::now(),
            interval: Duration::from_secs(1),
            stats: Arc::new(WindowStats::new(senders)),
        }
    }

    /// When sender `sender` (of `senders`) sends message `seq`, if still within the window.
    /// Senders are staggered evenly, so together they send at the total rate.
    pub fn due(&self, sender: usize, senders: usize, seq: u64) -> Option<Instant> {
        if self.window == 0 {
            return None;
        }
        let offset = self.interval.mul_f64(sender as f64 / senders as f64);
        let at = self.start + offset + self.interval.mul_f64(seq as f64);
        (at < self.end).then_some(at)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;

    fn layout(receivers: usize, senders: usize, rooms: usize) -> Layout {
        Layout {
            dialect: Dialect::Chat,
            urls: vec!["ws://127.0.0.1:1/ws".into(), "ws://127.0.0.1:2/ws".into()],
            receivers,
            senders,
            rooms,
            payload: 100,
            room_prefix: "t".into(),
            auth_secret: None,
            spread: Spread::RoundRobin,
        }
    }

    #[test]
    fn deliveries_owed_follow_the_rooms() {
        // 10 receivers in 3 rooms: 4, 3, 3. Senders 0 and 3 in room 0, 1 in room 1, 2 in 2.
        let l = layout(10, 4, 3);
        let stats = WindowStats::new(4);
        for (sender, n) in [(0, 10), (1, 5), (2, 1), (3, 2)] {
            stats.sent[sender].store(n, Ordering::Relaxed);
        }
        assert_eq!(l.expected(&stats), 10 * 4 + 5 * 3 + 3 + 2 * 4);
        assert_eq!(l.url_of(0), "ws://127.0.0.1:1/ws");
        assert_eq!(l.url_of(11), "ws://127.0.0.1:2/ws");
    }

    #[test]
    fn by_room_every_member_of_a_room_is_on_the_rooms_gateway() {
        // 6 receivers and 3 senders in 3 rooms over 2 gateways.
        let mut l = layout(6, 3, 3);
        l.spread = Spread::ByRoom;
        for client in 0..l.clients() {
            // Rooms 0 and 2 on the first gateway, room 1 on the second.
            let expected = usize::from(l.room_of_client(client) == 1);
            assert_eq!(l.gateway_of(client), expected, "client {client}");
        }
        assert_eq!(
            l.served(),
            [vec![true, false, true], vec![false, true, false]]
        );
        let stats = WindowStats::new(3);
        for (sender, n) in [(0, 10), (1, 5), (2, 1)] {
            stats.sent[sender].store(n, Ordering::Relaxed);
        }
        assert_eq!(l.own_traffic(&stats), [11, 5]);
        // Round robin: every room has members on both gateways.
        l.spread = Spread::RoundRobin;
        assert_eq!(l.own_traffic(&stats), [16, 16]);
    }

    #[test]
    fn senders_together_keep_the_total_rate() {
        let start = Instant::now();
        let plan = Plan {
            window: 1,
            start,
            end: start + Duration::from_secs(1),
            interval: Duration::from_millis(40), // 4 senders at 100 msg/s in all
            stats: Arc::new(WindowStats::new(4)),
        };
        let plan = &plan;
        let mut sends: Vec<Instant> = (0..4)
            .flat_map(|s| (0..).map_while(move |q| plan.due(s, 4, q)))
            .collect();
        assert_eq!(sends.len(), 100);
        sends.sort();
        let gaps: Vec<_> = sends.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps
            .iter()
            .all(|g| g.abs_diff(Duration::from_millis(10)) < Duration::from_micros(10)));
    }

    #[test]
    fn the_idle_plan_sends_nothing() {
        assert_eq!(Plan::idle(4).due(0, 4, 0), None);
    }
}
