//! Driving real websocket clients: a pool of receivers and senders spread round-robin over
//! the gateway URLs and the rooms, kept connected (a dropped client reconnects), and
//! measured windows in which the senders together send at a fixed total rate, each on its
//! own schedule, while the receivers count and time every delivery.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::client::{Client, Dialect, Incoming};
use crate::marker::Marker;
use crate::procfs::{CpuUsed, Watched};
use crate::stats::{now_us, AtomicHistogram, Histogram, WindowStats};

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
}

impl Layout {
    fn clients(&self) -> usize {
        self.receivers + self.senders
    }

    /// Clients are numbered receivers first, then senders, and take the URLs in turn.
    fn url_of(&self, client: usize) -> &str {
        &self.urls[client % self.urls.len()]
    }

    fn room_of_receiver(&self, receiver: usize) -> usize {
        receiver % self.rooms
    }

    fn room_of_sender(&self, sender: usize) -> usize {
        sender % self.rooms
    }

    pub fn room_name(&self, room: usize) -> String {
        format!("{}-{room}", self.room_prefix)
    }

    /// Deliveries owed for what each sender sent: one per receiver of its room.
    fn expected(&self, stats: &WindowStats) -> u64 {
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
struct Plan {
    window: u32,
    start: Instant,
    end: Instant,
    /// Time between two messages of one sender.
    interval: Duration,
    stats: Arc<WindowStats>,
}

impl Plan {
    /// When sender `sender` (of `senders`) sends message `seq`, if still within the window.
    /// Senders are staggered evenly, so together they send at the total rate.
    fn due(&self, sender: usize, senders: usize, seq: u64) -> Option<Instant> {
        if self.window == 0 {
            return None;
        }
        let offset = self.interval.mul_f64(sender as f64 / senders as f64);
        let at = self.start + offset + self.interval.mul_f64(seq as f64);
        (at < self.end).then_some(at)
    }
}

/// Counters that outlive windows.
#[derive(Default)]
struct Shared {
    /// Time from opening the TCP connection to the end of the handshake (chat: `joined`
    /// received, so it includes the join's broker confirm and the history lookup), µs.
    handshake: AtomicHistogram,
    /// Clients connected right now.
    live: AtomicU64,
    connect_errors: AtomicU64,
    disconnects: AtomicU64,
    /// Every text frame received, to see when traffic has died down.
    frames: AtomicU64,
    /// Deliveries of a message from another window than the current one.
    stale: AtomicU64,
    /// Error codes seen, with counts (errors are rare: a mutex is fine).
    error_codes: Mutex<BTreeMap<String, u64>>,
}

impl Shared {
    fn error(&self, code: &str) {
        let mut codes = self.error_codes.lock().unwrap_or_else(|e| e.into_inner());
        *codes.entry(code.to_owned()).or_default() += 1;
    }
}

/// How the initial connections went.
#[derive(Debug, Clone)]
pub struct ConnectReport {
    pub clients: usize,
    pub connected: u64,
    /// Handshake times of the connections made.
    pub handshake: Histogram,
    pub seconds: f64,
    pub errors: u64,
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
        let idle = Plan {
            window: 0,
            start: Instant::now(),
            end: Instant::now(),
            interval: Duration::from_secs(1),
            stats: Arc::new(WindowStats::new(layout.senders)),
        };
        let (plan, _) = watch::channel(idle);
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
            errors: pool.shared.connect_errors.load(Ordering::Relaxed),
        };
        (pool, report)
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
        let stale_before = self.shared.stale.load(Ordering::Relaxed);
        let disconnects_before = self.shared.disconnects.load(Ordering::Relaxed);
        let codes_before = self.error_codes();
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
        let codes_after = self.error_codes();
        let error_codes = codes_after
            .into_iter()
            .filter_map(|(code, n)| {
                let delta = n - codes_before.get(&code).copied().unwrap_or(0);
                (delta > 0).then_some((code, delta))
            })
            .collect();
        let sent = stats.total_sent();
        Window {
            rate,
            duration,
            sent,
            offered: (rate * duration.as_secs_f64()).round() as u64,
            expected: self.layout.expected(&stats),
            received: stats.received(),
            duplicates: stats.duplicates.load(Ordering::Relaxed),
            stale: self.shared.stale.load(Ordering::Relaxed) - stale_before,
            foreign: stats.foreign.load(Ordering::Relaxed),
            acks: stats.acks.load(Ordering::Relaxed),
            errors: stats.errors.load(Ordering::Relaxed),
            disconnects: self.shared.disconnects.load(Ordering::Relaxed) - disconnects_before,
            error_codes,
            latency: stats.latency.snapshot(),
            send_lag: stats.send_lag.snapshot(),
            elapsed,
            cpu,
        }
    }

    fn error_codes(&self) -> BTreeMap<String, u64> {
        self.shared
            .error_codes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Clients that dropped since the start, and connect failures.
    pub fn totals(&self) -> (u64, u64) {
        (
            self.shared.disconnects.load(Ordering::Relaxed),
            self.shared.connect_errors.load(Ordering::Relaxed),
        )
    }

    /// Closes every client (politely, each within 2 s) and waits for them, at most `limit`.
    pub async fn close(self, limit: Duration) {
        self.shutdown.cancel();
        self.tasks.close();
        let _ = tokio::time::timeout(limit, self.tasks.wait()).await;
    }
}

/// One client's life: connect, run its role until the connection drops, reconnect, until
/// shutdown.
struct Slot {
    layout: Arc<Layout>,
    index: usize,
    plan: watch::Receiver<Plan>,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    gate: Arc<Semaphore>,
}

/// How a connection's run ended.
enum End {
    Shutdown(Client),
    Lost(String),
}

/// A sender's place in the current window, kept across reconnects.
#[derive(Default)]
struct Progress {
    window: u32,
    seq: u64,
    done: bool,
}

impl Slot {
    fn sender(&self) -> Option<usize> {
        self.index.checked_sub(self.layout.receivers)
    }

    fn room(&self) -> usize {
        match self.sender() {
            Some(s) => self.layout.room_of_sender(s),
            None => self.layout.room_of_receiver(self.index),
        }
    }

    async fn run(mut self) {
        let url = self.layout.url_of(self.index).to_owned();
        let room = self.layout.room_name(self.room());
        let name = match self.sender() {
            Some(s) => format!("s{s}"),
            None => format!("r{}", self.index),
        };
        let mut progress = Progress::default();
        loop {
            let attempt = {
                let Ok(_permit) = self.gate.acquire().await else {
                    return;
                };
                let began = Instant::now();
                tokio::select! {
                    _ = self.shutdown.cancelled() => return,
                    c = Client::connect(self.layout.dialect, &url, &room, &name, Duration::from_secs(60)) => c,
                }
                .inspect(|_| {
                    let took = began.elapsed().as_micros() as u64;
                    self.shared.handshake.record(took);
                })
            };
            match attempt {
                Ok(client) => {
                    self.shared.live.fetch_add(1, Ordering::Relaxed);
                    let end = match self.sender() {
                        Some(s) => self.send_loop(client, s, &mut progress).await,
                        None => self.receive_loop(client).await,
                    };
                    self.shared.live.fetch_sub(1, Ordering::Relaxed);
                    match end {
                        End::Shutdown(client) => return client.close().await,
                        End::Lost(why) => {
                            self.shared.disconnects.fetch_add(1, Ordering::Relaxed);
                            self.shared.error(&format!("disconnected:{why}"));
                            let plan = self.plan.borrow().stats.clone();
                            plan.errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                Err(err) => {
                    self.shared.connect_errors.fetch_add(1, Ordering::Relaxed);
                    let why = format!("{err:#}");
                    self.shared.error(&format!("connect:{}", short(&why)));
                }
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// Reads a frame; `Err` when the connection is gone.
    async fn read(client: &mut Client) -> Result<Option<Utf8Bytes>, String> {
        match client.stream.next().await {
            Some(Ok(Message::Text(text))) => Ok(Some(text)),
            Some(Ok(Message::Close(frame))) => Err(frame.map_or("close".to_owned(), |f| {
                format!("close{}", u16::from(f.code))
            })),
            Some(Ok(_)) => Ok(None),
            Some(Err(err)) => Err(short(&err.to_string())),
            None => Err("eof".to_owned()),
        }
    }

    async fn receive_loop(&mut self, mut client: Client) -> End {
        let my_room = self.room() as u32;
        let mut plan = self.plan.borrow_and_update().clone();
        // The last sequence number seen from each sender in the current window.
        let mut last_seq: Vec<Option<u64>> = vec![None; self.layout.senders];
        let mut seen_window = plan.window;
        loop {
            let frame = tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return End::Shutdown(client),
                frame = Self::read(&mut client) => frame,
            };
            let frame = match frame {
                Ok(Some(frame)) => frame,
                Ok(None) => continue,
                Err(why) => return End::Lost(why),
            };
            self.shared.frames.fetch_add(1, Ordering::Relaxed);
            if self.plan.has_changed().unwrap_or(false) {
                plan = self.plan.borrow_and_update().clone();
            }
            match client.classify(&frame) {
                Incoming::Delivery(m) => {
                    let now = now_us();
                    if m.window != plan.window {
                        self.shared.stale.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    if seen_window != plan.window {
                        last_seq.iter_mut().for_each(|s| *s = None);
                        seen_window = plan.window;
                    }
                    let sender = m.sender as usize;
                    if m.room != my_room || sender >= last_seq.len() {
                        plan.stats.foreign.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    if last_seq[sender].is_some_and(|last| m.seq <= last) {
                        plan.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    last_seq[sender] = Some(m.seq);
                    plan.stats.received.fetch_add(1, Ordering::Relaxed);
                    plan.stats.latency.record(now.saturating_sub(m.sent_us));
                }
                Incoming::Ping => {
                    if let Err(err) = client.send(crate::socketio::PONG.to_owned()).await {
                        return End::Lost(short(&err.to_string()));
                    }
                }
                Incoming::Error(code) => {
                    plan.stats.errors.fetch_add(1, Ordering::Relaxed);
                    self.shared.error(&code);
                }
                Incoming::Closing => return End::Lost("server_close".to_owned()),
                Incoming::Ack | Incoming::Other => {}
            }
        }
    }

    async fn send_loop(
        &mut self,
        mut client: Client,
        sender: usize,
        progress: &mut Progress,
    ) -> End {
        let senders = self.layout.senders;
        let room = self.room() as u32;
        let mut plan = self.plan.borrow_and_update().clone();
        loop {
            if progress.window != plan.window {
                *progress = Progress {
                    window: plan.window,
                    ..Progress::default()
                };
            }
            let due = plan.due(sender, senders, progress.seq);
            if due.is_none() && plan.window != 0 && !progress.done {
                progress.done = true;
                plan.stats.senders_done.fetch_add(1, Ordering::Relaxed);
            }
            let wait = async {
                match due {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return End::Shutdown(client),
                changed = self.plan.changed() => {
                    if changed.is_err() {
                        return End::Shutdown(client);
                    }
                    plan = self.plan.borrow_and_update().clone();
                }
                frame = Self::read(&mut client) => {
                    let frame = match frame {
                        Ok(Some(frame)) => frame,
                        Ok(None) => continue,
                        Err(why) => return End::Lost(why),
                    };
                    self.shared.frames.fetch_add(1, Ordering::Relaxed);
                    match client.classify(&frame) {
                        Incoming::Ack => {
                            plan.stats.acks.fetch_add(1, Ordering::Relaxed);
                        }
                        Incoming::Ping => {
                            if let Err(err) = client.send(crate::socketio::PONG.to_owned()).await {
                                return End::Lost(short(&err.to_string()));
                            }
                        }
                        Incoming::Error(code) => {
                            plan.stats.errors.fetch_add(1, Ordering::Relaxed);
                            self.shared.error(&code);
                        }
                        Incoming::Closing => return End::Lost("server_close".to_owned()),
                        Incoming::Delivery(_) | Incoming::Other => {}
                    }
                }
                _ = wait => {
                    let scheduled = due.expect("only waited on a due time");
                    let lag = Instant::now().saturating_duration_since(scheduled);
                    plan.stats.send_lag.record(lag.as_micros() as u64);
                    let text = Marker {
                        window: plan.window,
                        sender: sender as u32,
                        seq: progress.seq,
                        sent_us: now_us(),
                        room,
                    }
                    .encode(self.layout.payload);
                    let frame = client.say_frame(&text);
                    if let Err(err) = client.send(frame).await {
                        return End::Lost(short(&err.to_string()));
                    }
                    plan.stats.sent[sender].fetch_add(1, Ordering::Relaxed);
                    progress.seq += 1;
                }
            }
        }
    }
}

/// The first words of an error, without spaces, for error-code counts.
fn short(text: &str) -> String {
    text.split_whitespace()
        .take(4)
        .collect::<Vec<_>>()
        .join("_")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        .take(48)
        .collect()
}

#[cfg(test)]
mod tests {
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
    fn error_words_become_a_code() {
        assert_eq!(
            short("IO error: Connection reset by peer"),
            "IO_error_Connection_reset"
        );
    }
}
