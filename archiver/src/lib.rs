//! The archiver: a side subscriber that stores every event in SQLite or PostgreSQL (chosen by
//! `DATABASE_URL`'s scheme, see [`store`]), the chat's queryable memory. It binds its own durable queue (`<prefix>.archiver`), commits batches before
//! acking them, answers gateways' history requests over the broker (`<prefix>.history`) and
//! serves the history and a full-text search of it over HTTP.
#![forbid(unsafe_code)]

pub mod api;
pub mod caller;
pub mod cli;
pub mod export;
pub mod restore;
pub mod rpc;
pub mod search;
pub mod store;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use chat_core::broker::{redact, BrokerArgs};
use chat_core::subscriber::{self, EventSink, Readiness, SubscriberConfig};
use chat_core::Event;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use store::Store;

/// Settings of the archiver service; every one is a flag and an environment variable.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    #[command(flatten)]
    pub broker: BrokerArgs,
    #[command(flatten)]
    pub http: chat_core::http::HttpArgs,
    #[command(flatten)]
    pub auth: chat_core::auth::AuthArgs,
    /// The archive: `sqlite://<file>` or `postgres://<user>@<host>/<database>` (also
    /// `postgresql://`); any other scheme is refused. `serve` creates it (the SQLite file
    /// with its directory, or the PostgreSQL database) if missing and migrates it; the other
    /// commands need it to exist.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://data/archive.db",
        global = true
    )]
    pub database_url: String,
    /// Address of the HTTP API.
    #[arg(long, env = "ARCHIVER_LISTEN", default_value = "127.0.0.1:3100")]
    pub listen: SocketAddr,
    /// Most unacked deliveries in flight (AMQP prefetch).
    #[arg(long, env = "ARCHIVER_PREFETCH", default_value_t = 512)]
    pub prefetch: u16,
    /// Most events committed in one transaction.
    #[arg(long, env = "ARCHIVER_BATCH", default_value_t = 256)]
    pub batch_max: usize,
    /// How long a batch waits for more events after its first, in milliseconds: one fsync
    /// then covers many events under load.
    #[arg(long, env = "ARCHIVER_BATCH_LINGER_MS", default_value_t = 5)]
    pub batch_linger_ms: u64,
    /// The retention of the event log stream `<prefix>.log`, which the archiver declares
    /// (docs/topology.md).
    #[command(flatten)]
    pub log_stream: chat_core::log_stream::LogRetention,
}

/// Serves until `shutdown` is cancelled: the batch in hand is committed and acked, the HTTP
/// server stops accepting, and the database is closed before this returns.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let topology = config.broker.topology()?;
    config.http.validate()?;
    config.log_stream.validate()?;
    let auth = config
        .auth
        .verifier(chat_core::normalize::Limits::DECODE.max_name)?
        .map(Arc::new);
    chat_core::fdlimit::raise();
    // Installed before anything is recorded: counts made before the first scrape count.
    chat_core::metrics::handle();
    let store = Store::open(&config.database_url).await?;
    tracing::info!(
        database = %store::redact(&config.database_url),
        http = %listener.local_addr()?,
        broker = %redact(&config.broker.amqp_url),
        prefix = topology.prefix(),
        prefetch = config.prefetch,
        batch_max = config.batch_max,
        "archiver starting"
    );
    let health = api::Health {
        subscriber: Arc::new(Readiness::default()),
        history: Arc::new(Readiness::default()),
    };
    let archive = tokio::spawn(subscriber::run(
        SubscriberConfig {
            amqp_url: config.broker.amqp_url.clone(),
            topology: topology.clone(),
            name: "archiver".to_owned(),
            prefetch: config.prefetch,
            batch_max: config.batch_max.max(1),
            batch_linger: std::time::Duration::from_millis(config.batch_linger_ms),
            log_stream: Some(config.log_stream.clone()),
        },
        ArchiveSink(store.clone()),
        health.subscriber.clone(),
        shutdown.clone(),
    ));
    let history = tokio::spawn(rpc::run(
        config.broker.amqp_url.clone(),
        topology,
        store.clone(),
        health.history.clone(),
        shutdown.clone(),
    ));
    let routes = api::routes(store.clone(), health, auth);
    chat_core::http::serve_warp(listener, &config.http, routes, shutdown.clone()).await;
    let archived = archive.await.context("The archive task panicked")?;
    let answered = history.await.context("The history task panicked")?;
    store.close().await;
    tracing::info!("archiver stopped");
    archived.and(answered)
}

/// The archive as the subscriber's sink: a batch is one transaction.
struct ArchiveSink(Store);

impl EventSink for ArchiveSink {
    async fn write(&mut self, events: &[Event]) -> anyhow::Result<()> {
        let inserted = self.0.insert(events).await?;
        metrics::counter!("chat_events_archived_total").increment(inserted);
        if let Some(newest) = events.iter().map(|e| e.at).max() {
            let lag = (chrono::Utc::now() - newest).num_milliseconds().max(0) as f64 / 1000.0;
            metrics::gauge!("chat_archive_lag_seconds").set(lag);
        }
        tracing::debug!(batch = events.len(), inserted, "archived a batch");
        Ok(())
    }
}
