//! The gateway: a stateless websocket server. It publishes every client's events to the
//! broker's fanout exchange (acking a client only after the broker confirmed), consumes all
//! events from its own exclusive queue and pushes each to its local clients in that room.
//! Gateways know only the broker: any number run side by side, and users on different
//! gateways talk to each other through the exchange.
#![forbid(unsafe_code)]

mod access;
pub mod addresses;
pub mod close;
pub mod config;
mod connection;
pub mod idempotency;
mod link;
mod liveness;
pub mod origin;
pub mod outbox;
pub mod presence;
pub mod protocol;
mod ratelimit;
mod repair;
pub mod rooms;
mod routes;
mod server;
pub mod token;
mod upgrade;
pub mod ws;

use std::sync::Arc;

use chat_core::broker::redact;
use chat_core::normalize::Limits;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::Config;

/// What every connection shares.
pub(crate) struct State {
    config: Config,
    limits: Limits,
    origins: origin::OriginPolicy,
    gateway_id: String,
    rooms: Arc<rooms::Rooms>,
    link: link::Link,
    /// Cancelled when the gateway shuts down: connections close with 1012.
    shutdown: CancellationToken,
    /// Every websocket connection, so shutdown can wait for them.
    connections: TaskTracker,
    /// Background work on the link that must finish before it closes: leave notices and
    /// the history loads of joins.
    background: TaskTracker,
    /// Most websockets at once: `MAX_CONNECTIONS`, or what the open-file limit holds.
    max_connections: usize,
    /// Open websockets per client address, for `MAX_CONNECTIONS_PER_IP`.
    per_address: Arc<addresses::PerAddress>,
    /// Pings silent clients and closes those that vanished.
    liveness: Arc<liveness::Liveness>,
    /// Recent message ids and their outcomes, so a resend is never posted twice.
    says: Arc<idempotency::Says>,
    /// Checks tokens (`AUTH_MODE=token`); `None` in open mode.
    verifier: Option<Arc<chat_core::auth::Verifier>>,
    /// Who may read which private room.
    projection: Arc<access::Projection>,
    /// Who is online and typing, across gateways.
    presence: Arc<presence::Presence>,
}

/// Serves on `listener` until `shutdown` is cancelled. Then it stops accepting, closes
/// every client with 1012 after its in-flight publishes are confirmed, and closes the broker
/// link last.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    config.validate()?;
    let max_connections = config.max_connections(chat_core::fdlimit::raise())?;
    // Installed before anything is recorded: counts made before the first scrape count.
    chat_core::metrics::handle();
    let topology = config.broker.topology()?;
    let address = listener.local_addr()?;
    let gateway_id = config.gateway_id(address.port());
    tracing::info!(
        gateway = %gateway_id,
        listen = %address,
        broker = %redact(&config.broker.amqp_url),
        prefix = topology.prefix(),
        max_frame = config.max_frame,
        max_text = config.max_text,
        client_queue = config.client_queue,
        max_connections,
        ping_interval_ms = config.ping_interval_ms,
        ping_timeout_ms = config.ping_timeout_ms,
        "gateway starting"
    );
    let verifier = config.auth.verifier(config.max_name)?.map(Arc::new);
    let rooms = Arc::new(rooms::Rooms::new(config.presence_max_list));
    let presence = Arc::new(presence::Presence::new(&gateway_id, config.presence()));
    let says = Arc::new(idempotency::Says::default());
    let projection = Arc::new(access::Projection::default());
    let link_shutdown = CancellationToken::new();
    let presence_task = tokio::spawn(presence::run(
        config.broker.amqp_url.clone(),
        topology.clone(),
        presence.clone(),
        rooms.clone(),
        link_shutdown.clone(),
    ));
    let (link, link_task) = link::start(
        &config,
        topology,
        link::Targets {
            rooms: rooms.clone(),
            says: says.clone(),
            projection: projection.clone(),
        },
        gateway_id.clone(),
        link_shutdown.clone(),
        shutdown.clone(),
    );
    let repair = tokio::spawn(repair::run(
        link.clone(),
        rooms.clone(),
        projection.clone(),
        link_shutdown.clone(),
    ));
    let replay = tokio::spawn(access::run(
        link.clone(),
        projection.clone(),
        rooms.clone(),
        link_shutdown.clone(),
    ));
    let liveness = Arc::new(liveness::Liveness::new(
        config.ping_interval(),
        config.ping_timeout(),
    ));
    let sweeper = tokio::spawn(liveness.clone().sweep(link_shutdown.clone()));
    let state = Arc::new(State {
        limits: config.limits(),
        origins: origin::OriginPolicy::new(&config.allowed_origins),
        config,
        gateway_id,
        rooms,
        link,
        shutdown: shutdown.clone(),
        connections: TaskTracker::new(),
        background: TaskTracker::new(),
        max_connections,
        per_address: Arc::default(),
        liveness,
        says,
        verifier,
        projection,
        presence,
    });
    server::serve(listener, state.clone(), shutdown.clone()).await;
    state.connections.close();
    state.connections.wait().await;
    state.background.close();
    state.background.wait().await;
    link_shutdown.cancel();
    let linked = link_task.await;
    let _ = repair.await;
    let _ = replay.await;
    let _ = sweeper.await;
    let _ = presence_task.await;
    tracing::info!("gateway stopped");
    // An error only when the broker refused a declaration for good (a queue to migrate).
    linked.map_err(|err| anyhow::anyhow!("the broker link task panicked: {err}"))?
}
