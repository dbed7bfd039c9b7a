//! Finding clients that vanished without a word (a laptop closed, a phone off Wi-Fi, a NAT
//! entry expired): no FIN or RST ever arrives, so without traffic of our own such a socket
//! would look connected for hours. Every `PING_INTERVAL_MS` of silence from a client the
//! gateway sends it a websocket ping; if no frame at all arrives within `PING_TIMEOUT_MS`
//! after that, the connection is closed with 4009 and its leaves are published like any
//! other disconnect.
//!
//! Cheap by construction: no timer per connection. Each connection records when it last
//! heard from its client in an atomic (one store per frame read), and one sweeper task
//! walks all connections a few times per interval.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::rooms::{ConnId, Outbound, Outbox};

/// An unmasked websocket ping with no payload.
const PING: &[u8] = &[0x89, 0x00];

/// What one connection shares with the sweeper.
pub struct Heartbeat {
    /// Milliseconds since the sweeper's epoch when the client was last heard from.
    last_seen: AtomicU64,
    /// When the unanswered ping went out, or 0.
    pinged_at: AtomicU64,
    /// Set when the connection is closed for not answering.
    timed_out: AtomicBool,
    outbox: Outbox,
    kick: CancellationToken,
    epoch: Instant,
}

impl Heartbeat {
    /// The client sent something: it is alive.
    pub fn seen(&self) {
        self.last_seen.store(millis(self.epoch), Ordering::Relaxed);
        if self.pinged_at.load(Ordering::Relaxed) != 0 {
            self.pinged_at.store(0, Ordering::Relaxed);
        }
    }

    /// Whether the connection was closed for not answering a ping (then close with 4009
    /// rather than the too-slow 4008 that shares the kick).
    pub fn timed_out(&self) -> bool {
        self.timed_out.load(Ordering::Relaxed)
    }
}

/// Every connection's heartbeat, swept by one task.
pub struct Liveness {
    connections: Mutex<HashMap<ConnId, Arc<Heartbeat>>>,
    epoch: Instant,
    interval: Duration,
    timeout: Duration,
}

/// Milliseconds since `epoch`, at least 1 (0 means "never" in `pinged_at`).
fn millis(epoch: Instant) -> u64 {
    (epoch.elapsed().as_millis() as u64).max(1)
}

/// What the sweeper decides for one connection.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Fine,
    Ping,
    Close,
}

/// The decision for a connection last heard from at `last_seen` and pinged at `pinged_at`
/// (0: no ping outstanding), at time `now`, all in milliseconds.
fn verdict(now: u64, last_seen: u64, pinged_at: u64, interval: u64, timeout: u64) -> Verdict {
    if pinged_at != 0 {
        if last_seen < pinged_at && now.saturating_sub(pinged_at) >= timeout {
            Verdict::Close
        } else {
            Verdict::Fine
        }
    } else if now.saturating_sub(last_seen) >= interval {
        Verdict::Ping
    } else {
        Verdict::Fine
    }
}

impl Liveness {
    pub fn new(interval: Duration, timeout: Duration) -> Self {
        Self {
            connections: Mutex::new(HashMap::new()),
            epoch: Instant::now(),
            interval,
            timeout,
        }
    }

    /// Starts watching a connection; call [`Liveness::remove`] when it ends.
    pub fn add(&self, conn: ConnId, outbox: Outbox, kick: CancellationToken) -> Arc<Heartbeat> {
        let heartbeat = Arc::new(Heartbeat {
            last_seen: AtomicU64::new(millis(self.epoch)),
            pinged_at: AtomicU64::new(0),
            timed_out: AtomicBool::new(false),
            outbox,
            kick,
            epoch: self.epoch,
        });
        self.lock().insert(conn, heartbeat.clone());
        heartbeat
    }

    pub fn remove(&self, conn: ConnId) {
        self.lock().remove(&conn);
    }

    /// How often the sweeper looks: a quarter of the shorter period, between 10 ms and 1 s,
    /// so a silent client is pinged and closed at most that much later than due.
    fn tick(&self) -> Duration {
        (self.interval.min(self.timeout) / 4)
            .clamp(Duration::from_millis(10), Duration::from_secs(1))
    }

    /// Pings silent clients and closes those that did not answer, until `shutdown`.
    pub async fn sweep(self: Arc<Self>, shutdown: CancellationToken) {
        let mut ticks = tokio::time::interval(self.tick());
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticks.tick() => self.sweep_once(),
            }
        }
    }

    fn sweep_once(&self) {
        let now = millis(self.epoch);
        let interval = self.interval.as_millis() as u64;
        let timeout = self.timeout.as_millis() as u64;
        let connections = self.lock();
        for heartbeat in connections.values() {
            let last_seen = heartbeat.last_seen.load(Ordering::Relaxed);
            let pinged_at = heartbeat.pinged_at.load(Ordering::Relaxed);
            match verdict(now, last_seen, pinged_at, interval, timeout) {
                Verdict::Fine => {}
                Verdict::Ping => {
                    heartbeat.pinged_at.store(now, Ordering::Relaxed);
                    let ping = Outbound::Encoded(Box::new(Bytes::from_static(PING)));
                    // A full queue means the client is not reading: the timeout will tell.
                    let _ = heartbeat.outbox.try_send(ping);
                    metrics::counter!("chat_pings_sent_total").increment(1);
                }
                Verdict::Close => {
                    if !heartbeat.timed_out.swap(true, Ordering::Relaxed) {
                        metrics::counter!("chat_clients_disconnected_total", "reason" => "ping_timeout")
                            .increment(1);
                        tracing::info!("closing a client that did not answer a ping");
                        heartbeat.kick.cancel();
                    }
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ConnId, Arc<Heartbeat>>> {
        self.connections.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox;

    const INTERVAL: u64 = 25_000;
    const TIMEOUT: u64 = 20_000;

    #[test]
    fn verdicts_over_a_connections_life() {
        // (now, last_seen, pinged_at, expected)
        let table = [
            (1_000, 1, 0, Verdict::Fine),            // just connected
            (25_000, 1, 0, Verdict::Fine),           // one millisecond short of the interval
            (25_001, 1, 0, Verdict::Ping),           // silent for a whole interval
            (30_000, 1, 25_001, Verdict::Fine),      // pinged, waiting for an answer
            (45_000, 1, 25_001, Verdict::Fine),      // one millisecond short of the timeout
            (45_001, 1, 25_001, Verdict::Close),     // no answer within the timeout
            (50_000, 30_000, 25_001, Verdict::Fine), // answered (seen after the ping)
            (40_000, 20_000, 0, Verdict::Fine),      // talking clients are never pinged
        ];
        for (now, last_seen, pinged_at, expected) in table {
            assert_eq!(
                verdict(now, last_seen, pinged_at, INTERVAL, TIMEOUT),
                expected,
                "now={now} last_seen={last_seen} pinged_at={pinged_at}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_is_pinged_then_closed_and_an_answering_one_is_not() {
        let liveness = Liveness::new(Duration::from_millis(100), Duration::from_millis(100));
        let (silent_out, mut silent_in) = outbox::channel(16);
        let (talking_out, mut talking_in) = outbox::channel(16);
        let silent_kick = CancellationToken::new();
        let talking_kick = CancellationToken::new();
        let silent = liveness.add(1, silent_out, silent_kick.clone());
        let talking = liveness.add(2, talking_out, talking_kick.clone());

        tokio::time::advance(Duration::from_millis(120)).await;
        liveness.sweep_once();
        let mut batch = std::collections::VecDeque::new();
        assert!(silent_in.recv_all(&mut batch).await);
        assert!(
            matches!(batch.pop_front(), Some(Outbound::Encoded(_))),
            "pinged"
        );
        batch.clear();
        assert!(talking_in.recv_all(&mut batch).await);
        assert!(
            matches!(batch.pop_front(), Some(Outbound::Encoded(_))),
            "pinged"
        );

        talking.seen(); // the pong
        tokio::time::advance(Duration::from_millis(120)).await;
        liveness.sweep_once();
        assert!(silent_kick.is_cancelled(), "no answer: closed");
        assert!(silent.timed_out());
        assert!(!talking_kick.is_cancelled(), "answered: kept");
        assert!(!talking.timed_out());
    }
}
