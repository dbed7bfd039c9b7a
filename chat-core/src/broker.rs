//! Connecting to RabbitMQ the same way in every service: the shared command-line settings,
//! a connection named after the service (visible in the management UI), retry with capped
//! exponential backoff, and URLs with the password masked before they reach a log line.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lapin::{BasicProperties, Connection, ConnectionProperties};
use tokio_util::sync::CancellationToken;

use crate::event::Event;
use crate::topology::{InvalidPrefix, Topology};

/// Broker settings every service takes, as flags and environment variables.
#[derive(Debug, Clone, clap::Args)]
pub struct BrokerArgs {
    /// AMQP URL of the RabbitMQ broker (credentials may be embedded; they are never logged).
    #[arg(long, env = "AMQP_URL", default_value = "amqp://127.0.0.1:5672/%2f")]
    pub amqp_url: String,
    /// Prefix of every broker name (exchange, queues), so that systems can share a broker.
    #[arg(long, env = "CHAT_PREFIX", default_value = "chat")]
    pub prefix: String,
}

impl BrokerArgs {
    /// The topology named by the prefix, or a clear error for a bad prefix.
    pub fn topology(&self) -> Result<Topology, InvalidPrefix> {
        Topology::new(&self.prefix)
    }
}

/// How long one node may take to accept a connection before the next one is tried.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The nodes of `AMQP_URL`: one URL, or several separated by commas (the nodes of a
/// cluster), each a full `amqp://user:pass@host:port/vhost` URL.
pub fn nodes(urls: &str) -> Vec<&str> {
    urls.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect()
}

/// Opens one connection, named `<service>` for the broker's management UI, to the first
/// node of `urls` (a comma-separated list) that accepts within [`CONNECT_TIMEOUT`]. The
/// nodes are tried from a random one on, so services spread over a cluster and a dead
/// node is skipped on the next attempt.
pub async fn connect(urls: &str, service: &str) -> lapin::Result<Connection> {
    let nodes = nodes(urls);
    let start = random_below(nodes.len().max(1));
    let mut last_error = None;
    for i in 0..nodes.len() {
        let url = nodes[(start + i) % nodes.len()];
        let properties = ConnectionProperties::default().with_connection_name(service.into());
        match tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect(url, properties)).await {
            Ok(Ok(connection)) => {
                if nodes.len() > 1 {
                    tracing::info!(node = %redact(url), %service, "connected to a cluster node");
                }
                return Ok(connection);
            }
            Ok(Err(err)) => {
                if nodes.len() > 1 {
                    tracing::debug!(node = %redact(url), error = %err, "node refused; trying the next");
                }
                last_error = Some(err);
            }
            Err(_) => {
                tracing::debug!(node = %redact(url), "node did not answer in time; trying the next");
                last_error = Some(lapin::Error::from(lapin::ErrorKind::IOError(Arc::new(
                    std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()),
                    ),
                ))));
            }
        }
    }
    Err(last_error.unwrap_or_else(|| {
        lapin::Error::from(lapin::ErrorKind::IOError(Arc::new(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "AMQP_URL names no broker",
        ))))
    }))
}

/// A number below `n`, from the clock's nanoseconds: enough to spread services over nodes.
fn random_below(n: usize) -> usize {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    nanos as usize % n.max(1)
}

/// Connects, retrying with capped exponential backoff until it succeeds or `shutdown` is
/// cancelled (then `None`). Each failure is logged once with the password masked.
pub async fn connect_with_retry(
    url: &str,
    service: &str,
    backoff: &mut Backoff,
    shutdown: &CancellationToken,
) -> Option<Connection> {
    loop {
        let attempt = tokio::select! {
            _ = shutdown.cancelled() => return None,
            attempt = connect(url, service) => attempt,
        };
        match attempt {
            Ok(connection) => {
                tracing::info!(broker = %redact(url), "connected to the broker");
                return Some(connection);
            }
            Err(err) => {
                let delay = backoff.next_delay();
                tracing::warn!(
                    broker = %redact(url),
                    error = %err,
                    retry_in_ms = delay.as_millis() as u64,
                    "cannot connect to the broker"
                );
                if !backoff.sleep(delay, shutdown).await {
                    return None;
                }
            }
        }
    }
}

/// Keeps a broker session alive across outages: [`Supervisor::run`] connects, runs the
/// service's [`Session`] on the connection, and after it ends calls its
/// [`Session::down`] hook, closes the connection, and connects again after backoff. So every
/// session starts on a fresh connection and declares its topology again, and a failed
/// session is logged with its cause and retried. A session returns `Ok` only when shutdown
/// was requested.
#[derive(Debug)]
pub struct Supervisor {
    url: String,
    service: String,
    shutdown: CancellationToken,
    backoff: Backoff,
    /// Where to report the broker blocking this connection's publishes, if anywhere.
    blocked: Option<Arc<Blocked>>,
    /// Follows the current connection's blocked/unblocked notices.
    tracker: Option<Tracker>,
    /// Whether the current session has called [`Supervisor::up`].
    set_up: Arc<AtomicBool>,
}

/// What a service does on each broker connection that a [`Supervisor`] opens for it.
///
/// A trait rather than an async closure: the gateway spawns its supervisor, and a spawned
/// future must be `Send`, which today's compiler cannot prove for an async closure that
/// borrows its arguments (`&Connection`, `&mut Supervisor`) across an await
/// ("implementation of `Send` is not general enough"). Here the bound is stated once, on
/// the method, and each `async fn` implementing it is checked where it is written.
pub trait Session: Send {
    /// Declares what the session needs on `connection`, calls [`Supervisor::up`] once it
    /// is ready, and runs until shutdown (`Ok`) or a broker failure (`Err`, logged by the
    /// supervisor before it reconnects).
    fn run<'a>(
        &'a mut self,
        connection: &'a Connection,
        supervisor: &'a mut Supervisor,
    ) -> impl std::future::Future<Output = anyhow::Result<()>> + Send + 'a;

    /// Called when a session has ended, before its connection is closed: the service
    /// stops saying it is ready and drops what belonged to the session.
    fn down(&mut self) {}
}

/// Whether the broker is blocking a connection's publishes: RabbitMQ does so while a
/// memory or disk alarm is raised (`connection.blocked`), and says why. Publishes then
/// wait without an answer until `connection.unblocked`, so a service that knows can refuse
/// new work at once and tell its load balancer (`/readyz` 503) instead of timing out.
#[derive(Debug, Default)]
pub struct Blocked(std::sync::Mutex<Option<String>>);

impl Blocked {
    /// The broker's reason while blocked, `None` otherwise.
    pub fn reason(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn is_blocked(&self) -> bool {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).is_some()
    }

    fn set(&self, reason: Option<String>, service: &str) {
        let gauge = if reason.is_some() { 1.0 } else { 0.0 };
        metrics::gauge!("chat_broker_blocked", "service" => service.to_owned()).set(gauge);
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = reason;
    }
}

/// How often an idle connection that reports blocking sends its probe.
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// Where the probe goes: the default exchange with a queue name nobody declares, so the
/// broker drops it.
const PROBE_ROUTING_KEY: &str = "chat.blocked-probe.unroutable";

/// Follows `connection`'s blocked/unblocked notices into `blocked` until aborted.
///
/// RabbitMQ blocks a connection (and says so) only when it publishes during an alarm; an
/// idle one stays "blocking" and unaware. So this also publishes an empty, unroutable probe
/// every second while not blocked: the alarm is then known within about a second, before
/// any client's message runs into it.
async fn track_blocked(connection: &Connection, blocked: Arc<Blocked>, service: String) -> Tracker {
    use futures_util::StreamExt;
    let mut events = connection.events_listener();
    let probe = connection.create_channel().await.ok();
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    let task = tokio::spawn(async move {
        let mut ticks = tokio::time::interval(PROBE_EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stopped.cancelled() => {
                    close_channels(probe.as_slice()).await;
                    return;
                }
                event = events.next() => match event {
                    Some(lapin::Event::ConnectionBlocked(reason)) => {
                        tracing::warn!(%service, %reason, "the broker is blocking publishes (resource alarm)");
                        blocked.set(Some(reason), &service);
                    }
                    Some(lapin::Event::ConnectionUnblocked) => {
                        tracing::info!(%service, "the broker accepts publishes again");
                        blocked.set(None, &service);
                    }
                    Some(_) => {}
                    None => return,
                },
                _ = ticks.tick(), if probe.is_some() => {
                    if let (Some(probe), false) = (&probe, blocked.is_blocked()) {
                        let _ = probe
                            .basic_publish(
                                "".into(),
                                PROBE_ROUTING_KEY.into(),
                                lapin::options::BasicPublishOptions::default(),
                                b"",
                                BasicProperties::default(),
                            )
                            .await;
                    }
                }
            }
        }
    });
    Tracker { task, stop }
}

/// The task following one connection's blocked/unblocked notices, and how to stop it.
#[derive(Debug)]
struct Tracker {
    task: tokio::task::JoinHandle<()>,
    stop: CancellationToken,
}

impl Tracker {
    /// Stops the task, which closes its probe channel first (see [`close_channels`]).
    async fn stop(self) {
        self.stop.cancel();
        if tokio::time::timeout(Duration::from_secs(1), self.task)
            .await
            .is_err()
        {
            tracing::debug!("the blocked-tracker did not stop in time");
        }
    }
}

impl Supervisor {
    /// A supervisor for `service` (the connection name shown by the broker).
    pub fn new(url: &str, service: &str, shutdown: CancellationToken) -> Self {
        Self {
            url: url.to_owned(),
            service: service.to_owned(),
            shutdown,
            backoff: Backoff::default(),
            blocked: None,
            tracker: None,
            set_up: Arc::default(),
        }
    }

    /// Reports the broker blocking this service's connections into `blocked` (and the
    /// `chat_broker_blocked` gauge), probing once a second so an alarm is known at once.
    /// Only for connections that publish anyway: a blocked connection is not read by the
    /// broker, so a pure consumer that probed would stop acking and stall its queue.
    pub fn report_blocked(mut self, blocked: Arc<Blocked>) -> Self {
        self.blocked = Some(blocked);
        self
    }

    /// The next connection, after backoff if the last one failed; `None` on shutdown.
    pub async fn connect(&mut self) -> Option<Connection> {
        let connection =
            connect_with_retry(&self.url, &self.service, &mut self.backoff, &self.shutdown).await;
        if let Some(connection) = &connection {
            metrics::counter!("chat_broker_connects_total", "service" => self.service.clone())
                .increment(1);
            if let Some(blocked) = &self.blocked {
                self.tracker =
                    Some(track_blocked(connection, blocked.clone(), self.service.clone()).await);
            }
        }
        connection
    }

    /// Runs `session` on one connection after another until shutdown: the connect / run
    /// / ended loop of every service that holds a broker session.
    ///
    /// A session that fails because a queue exists with other arguments
    /// ([`QueueConflict`](crate::topology::QueueConflict): a classic queue from an older
    /// version) is not retried, since only an operator can fix it: the supervisor logs it,
    /// cancels `shutdown` so that the whole service stops, and returns the error.
    pub async fn run(mut self, session: &mut impl Session) -> anyhow::Result<()> {
        while let Some(connection) = self.connect().await {
            self.set_up.store(false, Ordering::Relaxed);
            let (set_up, shutdown) = (self.set_up.clone(), self.shutdown.clone());
            let outcome = tokio::select! {
                outcome = session.run(&connection, &mut self) => outcome,
                stalled = stalled_set_up(&set_up, &shutdown) => stalled,
            };
            session.down();
            if let Err(err) = &outcome {
                if err
                    .downcast_ref::<crate::topology::QueueConflict>()
                    .is_some()
                {
                    tracing::error!(service = %self.service, error = format!("{err:#}"), "refusing to run");
                    close(connection).await;
                    self.shutdown.cancel();
                    return outcome;
                }
            }
            if !self.ended(connection, outcome).await {
                break;
            }
        }
        Ok(())
    }

    /// Tells the supervisor the session is fully up, so the next outage starts its backoff
    /// from the shortest delay again.
    pub fn up(&mut self) {
        self.set_up.store(true, Ordering::Relaxed);
        self.backoff.reset();
        metrics::gauge!("chat_broker_connected", "service" => self.service.clone()).set(1.0);
    }

    /// Closes the connection after a session; returns whether to start another one.
    pub async fn ended(&mut self, connection: Connection, outcome: anyhow::Result<()>) -> bool {
        metrics::gauge!("chat_broker_connected", "service" => self.service.clone()).set(0.0);
        if let Some(tracker) = self.tracker.take() {
            tracker.stop().await;
        }
        if let Some(blocked) = &self.blocked {
            // A new connection starts unblocked; the broker blocks it again if need be.
            blocked.set(None, &self.service);
        }
        close(connection).await;
        match outcome {
            Ok(()) => false,
            Err(err) => {
                let delay = self.backoff.next_delay();
                tracing::warn!(
                    service = %self.service,
                    error = format!("{err:#}"),
                    retry_in_ms = delay.as_millis() as u64,
                    "broker session ended; reconnecting"
                );
                self.backoff.sleep(delay, &self.shutdown).await
            }
        }
    }
}

/// How long a session may take to declare what it needs and start consuming. The broker
/// answers each declaration in milliseconds; what it never answers is a declaration of a
/// quorum queue that has no leader (after a node crash, say): lapin then waits for ever,
/// silently. Generous, because a gateway's set-up grows with what it serves (it binds every
/// served room before it is up, one round trip each, on a broker that may be loaded).
pub const SET_UP_TIMEOUT: Duration = Duration::from_secs(120);

/// Completes only while a session is still setting up (before [`Supervisor::up`]): with
/// `Ok` on shutdown, so a declaration the broker never answers cannot keep the service from
/// stopping, or with an error after [`SET_UP_TIMEOUT`], so the operator reads why the
/// service is stuck and the supervisor tries a fresh connection. A session that is up
/// handles shutdown and failures itself; this then never completes.
async fn stalled_set_up(set_up: &AtomicBool, shutdown: &CancellationToken) -> anyhow::Result<()> {
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep(SET_UP_TIMEOUT) => {}
    }
    if set_up.load(Ordering::Relaxed) {
        std::future::pending::<()>().await;
    }
    if shutdown.is_cancelled() {
        Ok(())
    } else {
        anyhow::bail!(
            "the broker did not answer the session's declarations within {} s (a quorum queue without a leader does this: see RELIABILITY.md)",
            SET_UP_TIMEOUT.as_secs()
        )
    }
}

/// How long closing a connection may take. A connection the broker has just closed or
/// lost can leave lapin waiting for a `close-ok` that never comes; without a bound the
/// supervisor would never reconnect, and the service never stop (seen when a cluster node
/// was stopped under a gateway).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Closes `connection`, giving up after [`CLOSE_TIMEOUT`] (dropping it then drops the socket).
async fn close(connection: Connection) {
    if tokio::time::timeout(CLOSE_TIMEOUT, connection.close(200, "closing".into()))
        .await
        .is_err()
    {
        tracing::debug!("the broker connection did not close in time; dropping it");
    }
}

/// Capped exponential backoff with jitter, so that many services restarting together do
/// not reconnect in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    min: Duration,
    max: Duration,
}

impl Default for Backoff {
    /// 100 ms doubling to 1 s: after an outage the broker is found again within 1.25 s
    /// (the wait for the reconnect was most of the time messages took to flow again after a
    /// broker restart: scripts/flow-back.sh), and a broker that stays down costs one
    /// refused connection attempt a second per service, which is nothing.
    fn default() -> Self {
        Self::new(Duration::from_millis(100), Duration::from_secs(1))
    }
}

impl Backoff {
    /// Starts at `min`, doubles per failure up to `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            next: min,
            min,
            max,
        }
    }

    /// Back to the shortest delay, after a success.
    pub fn reset(&mut self) {
        self.next = self.min;
    }

    /// The delay to wait now (with up to 25% jitter), and doubles the next one.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        base + base.mul_f64(f64::from(nanos % 1000) / 4000.0)
    }

    /// Sleeps for `delay` unless shutdown comes first; returns false on shutdown.
    pub async fn sleep(&self, delay: Duration, shutdown: &CancellationToken) -> bool {
        tokio::select! {
            _ = shutdown.cancelled() => false,
            _ = tokio::time::sleep(delay) => true,
        }
    }
}

/// The AMQP properties of a published event: persistent, JSON, id, type and timestamp, so
/// that subscribers in any language can route and deduplicate without parsing the body.
pub fn event_properties(event: &Event) -> BasicProperties {
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_message_id(event.id.as_str().into())
        .with_type(event.kind.as_str().into())
        .with_timestamp(u64::try_from(event.at.timestamp()).unwrap_or_default())
        .with_app_id(event.gateway.as_str().into())
}

/// The URL (or comma-separated URLs) with any password replaced by `***`, for logs and
/// error messages.
pub fn redact(urls: &str) -> String {
    urls.split(',')
        .map(redact_one)
        .collect::<Vec<_>>()
        .join(",")
}

fn redact_one(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}://{}:***@{}", &url[..scheme_end], user, &rest[at + 1..])
        }
        None => url.to_owned(),
    }
}

/// Opens a channel on `connection`, failing with the error every service reports.
pub async fn open_channel(connection: &Connection) -> anyhow::Result<lapin::Channel> {
    use anyhow::Context;
    connection
        .create_channel()
        .await
        .context("Failed to open a channel")
}

/// How a consumer's deliveries are acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acks {
    /// The consumer acks (or rejects) each delivery: what is not acked is redelivered.
    Manual,
    /// The broker forgets a delivery once sent (`no-ack`): for what may be lost, such as
    /// direct replies and presence.
    Auto,
}

/// Starts consuming `queue` on `channel` under consumer tag `tag` (empty: the broker picks
/// one), failing with an error that names the queue.
pub async fn consume(
    channel: &lapin::Channel,
    queue: &str,
    tag: &str,
    acks: Acks,
) -> anyhow::Result<lapin::Consumer> {
    use anyhow::Context;
    let options = lapin::options::BasicConsumeOptions {
        no_ack: acks == Acks::Auto,
        ..lapin::options::BasicConsumeOptions::default()
    };
    channel
        .basic_consume(
            queue.into(),
            tag.into(),
            options,
            lapin::types::FieldTable::default(),
        )
        .await
        .with_context(|| format!("Failed to consume from {queue}"))
}

/// Acks `last` and every delivery before it on its channel with one multiple-ack. An error
/// if the channel was lost first: lapin skips acks on a lost and recovered channel without
/// a word, so the broker will deliver those again (consumers absorb repeats by event id).
pub async fn ack_through(last: lapin::message::Delivery) -> anyhow::Result<()> {
    use anyhow::Context;
    let acked = last
        .ack(lapin::options::BasicAckOptions { multiple: true })
        .await
        .context("Failed to ack")?;
    if !acked {
        anyhow::bail!("the channel was lost before the deliveries could be acked");
    }
    Ok(())
}

/// Closes `channels` and waits for the broker's answer, before the connection is closed at
/// shutdown. Dropping them instead makes each close itself in the background, racing the
/// connection's close, and lapin logs "invalid channel state: Closing" for a clean stop.
pub async fn close_channels(channels: &[lapin::Channel]) {
    for channel in channels {
        if channel.status().connected() {
            // Bounded like the connection's close (see `CLOSE_TIMEOUT`).
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, channel.close(200, "shutting down".into()))
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_session_stuck_setting_up_lets_the_service_stop_at_once() {
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            stop.cancel();
        });
        let started = tokio::time::Instant::now();
        let outcome = stalled_set_up(&AtomicBool::new(false), &shutdown).await;
        assert!(outcome.is_ok());
        assert_eq!(started.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_session_stuck_setting_up_is_reported_and_retried_after_the_timeout() {
        let started = tokio::time::Instant::now();
        let err = stalled_set_up(&AtomicBool::new(false), &CancellationToken::new())
            .await
            .unwrap_err();
        assert_eq!(started.elapsed(), SET_UP_TIMEOUT);
        assert!(
            err.to_string().contains("quorum queue without a leader"),
            "{err}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_session_that_is_up_handles_shutdown_itself() {
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        let set_up = AtomicBool::new(true);
        let stalled = stalled_set_up(&set_up, &shutdown);
        let waited = tokio::time::timeout(SET_UP_TIMEOUT * 2, stalled).await;
        assert!(waited.is_err(), "never completes once the session is up");
    }

    #[test]
    fn passwords_never_reach_the_logs() {
        assert_eq!(
            redact("amqp://chat:s3cret@rabbit:5672/%2f"),
            "amqp://chat:***@rabbit:5672/%2f"
        );
        assert_eq!(
            redact("amqp://127.0.0.1:5672/%2f"),
            "amqp://127.0.0.1:5672/%2f"
        );
        assert_eq!(redact("amqps://u:p@h"), "amqps://u:***@h");
        assert_eq!(
            redact("amqp://u:p1@a:1/%2f,amqp://u:p2@b:2/%2f"),
            "amqp://u:***@a:1/%2f,amqp://u:***@b:2/%2f"
        );
    }

    #[test]
    fn amqp_url_may_list_the_nodes_of_a_cluster() {
        assert_eq!(nodes("amqp://a/%2f"), ["amqp://a/%2f"]);
        assert_eq!(
            nodes("amqp://a/%2f, amqp://b/%2f,,amqp://c/%2f"),
            ["amqp://a/%2f", "amqp://b/%2f", "amqp://c/%2f"]
        );
        assert!(nodes(" , ").is_empty());
        assert!(random_below(3) < 3);
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(400));
        let delays: Vec<_> = (0..4).map(|_| b.next_delay().as_millis()).collect();
        assert!((100..=125).contains(&delays[0]));
        assert!((200..=250).contains(&delays[1]));
        assert!((400..=500).contains(&delays[2]));
        assert!((400..=500).contains(&delays[3]));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(125));
    }
}
