//! Driving real websocket clients: a pool of receivers and senders spread round-robin over
//! the gateway URLs and the rooms, kept connected (a dropped client reconnects), and
//! measured windows in which the senders together send at a fixed total rate, each on its
//! own schedule, while the receivers count and time every delivery. Who goes where and
//! when is `layout`; one client's life is `slot`; the pool's counters are `counters`;
//! typists and churners that keep presence and typing busy are `ambient`.

mod ambient;
mod counters;
mod layout;
mod slot;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::procfs::{CpuUsed, Watched};
use crate::stats::{Histogram, WindowStats};
pub use ambient::Ambient;
pub use counters::Counters;
use counters::Shared;
use layout::Plan;
pub use layout::{Layout, Spread};
use slot::Slot;

/// How the initial connections went.
#[derive(Debug, Clone)]
pub struct ConnectReport {
    pub clients: usize,
    pub connected: u64,
    /// Handshake times of the connections made.
    pub handshake: Histogram,
    pub seconds: f64,
    pub errors: u64,
    /// Why connections or joins failed (`connect:join_refused_history_unavailable`, …).
    pub error_codes: BTreeMap<String, u64>,
}

/// The outcome of one measured window.
#[derive(Debug, Clone)]
pub struct Window {
    pub rate: f64,
    pub duration: Duration,
    pub sent: u64,
    pub offered: u64,
    pub expected: u64,
    pub received: u64,
    pub duplicates: u64,
    pub stale: u64,
    pub foreign: u64,
    pub acks: u64,
    pub errors: u64,
    pub disconnects: u64,
    pub error_codes: BTreeMap<String, u64>,
    pub latency: Histogram,
    pub send_lag: Histogram,
    /// From the start of sending to the last delivery waited for.
    pub elapsed: Duration,
    pub cpu: CpuUsed,
    /// For each gateway (URL order), the messages sent in the rooms it serves.
    pub own_traffic: Vec<u64>,
    /// Presence and typing frames the clients received, `typing` frames the typists sent
    /// and churners' leaves, from the start of sending to the end of the window.
    pub ambient_frames: u64,
    pub typing_sent: u64,
    /// Messages the typists and churners received: deliveries too, not timed.
    pub ambient_deliveries: u64,
    pub rejoins: u64,
}

impl Window {
    pub fn lost(&self) -> u64 {
        self.expected.saturating_sub(self.received)
    }
}

/// The connected clients of one scenario.
pub struct Pool {
    layout: Arc<Layout>,
    plan: watch::Sender<Plan>,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    windows: AtomicU64,
}

impl Pool {
    /// Connects every client, `concurrency` handshakes at a time, and waits until all are
    /// connected or `timeout` has passed.
    pub async fn connect(
        layout: Layout,
        concurrency: usize,
        timeout: Duration,
    ) -> (Self, ConnectReport) {
        let layout = Arc::new(layout);
        let (plan, _) = watch::channel(Plan::idle(layout.senders));
        let pool = Self {
            layout: layout.clone(),
            plan,
            shared: Arc::new(Shared::default()),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            windows: AtomicU64::new(0),
        };
        let gate = Arc::new(Semaphore::new(concurrency.max(1)));
        let started = Instant::now();
        for index in 0..layout.clients() {
            let slot = Slot {
                layout: layout.clone(),
                index,
                plan: pool.plan.subscribe(),
                shared: pool.shared.clone(),
                shutdown: pool.shutdown.clone(),
                gate: gate.clone(),
            };
            pool.tasks.spawn(slot.run());
        }
        let connected = pool.wait_connected(timeout).await;
        let report = ConnectReport {
            clients: layout.clients(),
            connected,
            handshake: pool.shared.handshake.snapshot(),
            seconds: started.elapsed().as_secs_f64(),
            errors: pool.shared.snapshot().connect_errors,
            error_codes: pool.shared.snapshot().error_codes,
        };
        (pool, report)
    }

    /// Starts the typists and churners of `ambient` in the pool's rooms (they connect in
    /// the background and run until the pool closes).
    pub fn start_ambient(&self, ambient: &Ambient) -> anyhow::Result<()> {
        ambient::spawn(
            ambient,
            &self.layout,
            &self.shared,
            &self.shutdown,
            &self.tasks,
        )
    }

    /// Waits until every client is connected (reconnects included), up to `timeout`;
    /// returns how many are.
    pub async fn wait_connected(&self, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        let total = self.layout.clients() as u64;
        loop {
            let live = self.shared.live.load(Ordering::Relaxed);
            if live >= total || Instant::now() >= deadline {
                return live;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until no frame has arrived for 300 ms (at most `limit`), so a window does not
    /// start while the last one's backlog or the joins are still being delivered.
    pub async fn quiesce(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        let mut last = self.shared.frames.load(Ordering::Relaxed);
        let mut quiet_since = Instant::now();
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let now = self.shared.frames.load(Ordering::Relaxed);
            if now != last {
                last = now;
                quiet_since = Instant::now();
            } else if quiet_since.elapsed() >= Duration::from_millis(300) {
                return;
            }
        }
    }

    /// One measured window: once the clients are quiet and the watched processes idle, the
    /// senders send `rate` messages per second in all for `duration`; then deliveries are
    /// awaited up to `drain`. The CPU of `watched` is read just before the first send and
    /// after the last delivery (or the drain limit).
    pub async fn measure(
        &self,
        rate: f64,
        duration: Duration,
        drain: Duration,
        watched: &Watched,
    ) -> Window {
        self.quiesce(Duration::from_secs(15)).await;
        watched.wait_idle(0.15, Duration::from_secs(30)).await;
        let senders = self.layout.senders.max(1);
        let window = self.windows.fetch_add(1, Ordering::Relaxed) as u32 + 1;
        let stats = Arc::new(WindowStats::new(self.layout.senders));
        let before = self.shared.snapshot();
        let cpu_before = watched.cpu();
        let start = Instant::now() + Duration::from_millis(100);
        let end = start + duration;
        let interval = Duration::from_secs_f64(senders as f64 / rate.max(0.001));
        self.plan.send_replace(Plan {
            window,
            start,
            end,
            interval,
            stats: stats.clone(),
        });
        tokio::time::sleep_until(end).await;
        let deadline = end + drain;
        loop {
            let done = stats.senders_done.load(Ordering::Relaxed) >= self.layout.senders as u64;
            if done && stats.received() >= self.layout.expected(&stats) {
                break;
            }
            if Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let elapsed = start.elapsed();
        let cpu = cpu_before.until(&watched.cpu());
        let counted = &self.shared.snapshot() - &before;
        let sent = stats.total_sent();
        Window {
            rate,
            duration,
            sent,
            offered: (rate * duration.as_secs_f64()).round() as u64,
            expected: self.layout.expected(&stats),
            received: stats.received(),
            duplicates: stats.duplicates.load(Ordering::Relaxed),
            stale: counted.stale,
            foreign: stats.foreign.load(Ordering::Relaxed),
            acks: stats.acks.load(Ordering::Relaxed),
            errors: stats.errors.load(Ordering::Relaxed),
            disconnects: counted.disconnects,
            error_codes: counted.error_codes,
            latency: stats.latency.snapshot(),
            send_lag: stats.send_lag.snapshot(),
            elapsed,
            cpu,
            own_traffic: self.layout.own_traffic(&stats),
            ambient_frames: counted.ambient_frames,
            typing_sent: counted.typing_sent,
            ambient_deliveries: counted.ambient_deliveries,
            rejoins: counted.rejoins,
        }
    }

    /// The layout the pool was connected with.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The pool's counters since it started (dropped clients, connect failures, …).
    pub fn totals(&self) -> Counters {
        self.shared.snapshot()
    }

    /// Closes every client (politely, each within 2 s) and waits for them, at most `limit`.
    pub async fn close(self, limit: Duration) {
        self.shutdown.cancel();
        self.tasks.close();
        let _ = tokio::time::timeout(limit, self.tasks.wait()).await;
    }
}
