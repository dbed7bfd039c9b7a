//! The logger: a side subscriber that turns the event stream into a tailable chat log.
//! It binds its own durable queue (`<prefix>.logger`) to the events exchange, so events
//! published while it is down wait for it; it appends one line per event to `LOG_FILE`
//! (and echoes it to stdout) and acks a batch only once the lines are flushed and synced.
//! SIGHUP makes it reopen the file, for logrotate; `logger tail` reads it back.
#![forbid(unsafe_code)]

pub mod cli;
mod sink;
pub mod tail;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use chat_core::broker::{redact, BrokerArgs};
use chat_core::probes;
use chat_core::subscriber::{self, Readiness, SubscriberConfig};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use warp::Filter;

pub use sink::LogFile;

/// Logger settings; every one is a flag and an environment variable.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    #[command(flatten)]
    pub broker: BrokerArgs,
    #[command(flatten)]
    pub http: chat_core::http::HttpArgs,
    /// The chat log file. The logger creates it (and its directory) if missing; `tail`
    /// needs it to exist.
    #[arg(long, env = "LOG_FILE", default_value = "data/chat.log", global = true)]
    pub log_file: PathBuf,
    /// Also print each line to stdout.
    #[arg(long, env = "LOGGER_STDOUT", default_value_t = true, action = clap::ArgAction::Set)]
    pub stdout: bool,
    /// Address of the probes and metrics (`/livez`, `/readyz`, `/healthz`, `/metrics`).
    #[arg(long, env = "LOGGER_LISTEN", default_value = "127.0.0.1:3200")]
    pub listen: SocketAddr,
    /// Most unacked deliveries in flight (AMQP prefetch).
    #[arg(long, env = "LOGGER_PREFETCH", default_value_t = 512)]
    pub prefetch: u16,
    /// Most events written and synced in one batch.
    #[arg(long, env = "LOGGER_BATCH", default_value_t = 256)]
    pub batch_max: usize,
    /// How long a batch waits for more events after its first, in milliseconds: one fsync
    /// then covers many events under load.
    #[arg(long, env = "LOGGER_BATCH_LINGER_MS", default_value_t = 5)]
    pub batch_linger_ms: u64,
}

/// Runs the logger until `shutdown` is cancelled; the batch in hand is written and acked
/// before it returns. Setting `reopen` makes it reopen the log file before its next write
/// (the binary sets it on SIGHUP).
pub async fn run(
    listener: TcpListener,
    config: Config,
    reopen: Arc<AtomicBool>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let topology = config.broker.topology()?;
    config.http.validate()?;
    chat_core::fdlimit::raise();
    // Installed before anything is recorded: counts made before the first scrape count.
    chat_core::metrics::handle();
    let sink = LogFile::open(&config.log_file, config.stdout, reopen)
        .await
        .with_context(|| format!("Failed to open the chat log {}", config.log_file.display()))?;
    tracing::info!(
        log_file = %config.log_file.display(),
        http = %listener.local_addr()?,
        broker = %redact(&config.broker.amqp_url),
        prefix = topology.prefix(),
        prefetch = config.prefetch,
        batch_max = config.batch_max,
        "logger starting"
    );
    let readiness = Arc::new(Readiness::default());
    let subscriber = tokio::spawn(subscriber::run(
        SubscriberConfig {
            amqp_url: config.broker.amqp_url.clone(),
            topology,
            name: "logger".to_owned(),
            prefetch: config.prefetch,
            batch_max: config.batch_max.max(1),
            batch_linger: std::time::Duration::from_millis(config.batch_linger_ms),
            log_stream: None,
        },
        sink,
        readiness.clone(),
        shutdown.clone(),
    ));
    let ready: probes::Readiness = Arc::new(move || {
        // No `blocked` here: the logger only consumes, and the broker blocks publishers.
        let broker = readiness.is_ready();
        Box::pin(async move { (broker, serde_json::json!({ "broker": broker })) })
    });
    let routes = probes::routes(ready).recover(probes::unanswered);
    chat_core::http::serve_warp(listener, &config.http, routes, shutdown.clone()).await;
    let outcome = subscriber.await.context("The subscriber task panicked")?;
    tracing::info!("logger stopped");
    outcome
}

/// Sets `reopen` on every SIGHUP until `shutdown`.
pub async fn reopen_on_sighup(reopen: Arc<AtomicBool>, shutdown: CancellationToken) {
    let Ok(mut hangups) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
    else {
        return;
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            signal = hangups.recv() => {
                if signal.is_none() {
                    return;
                }
                tracing::info!("SIGHUP: reopening the chat log");
                reopen.store(true, Ordering::Relaxed);
            }
        }
    }
}
