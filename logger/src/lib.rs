//! The logger: a side subscriber that turns the event stream into a tailable chat log.
//! It binds its own durable queue (`<prefix>.logger`) to the events exchange, so events
//! published while it is down wait for it; it appends one line per event to `LOG_FILE`
//! (and echoes it to stdout) and acks a batch only once the lines are flushed and synced.
#![forbid(unsafe_code)]

mod sink;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use chat_core::broker::{redact, BrokerArgs};
use chat_core::subscriber::{self, Readiness, SubscriberConfig};
use tokio_util::sync::CancellationToken;

pub use sink::LogFile;

/// Logger settings; every one is a flag and an environment variable.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "logger",
    version,
    about = "Writes every chat event to a tailable log file"
)]
pub struct Config {
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// The chat log file; its directory is created if missing.
    #[arg(long, env = "LOG_FILE", default_value = "data/chat.log")]
    pub log_file: PathBuf,
    /// Also print each line to stdout.
    #[arg(long, env = "LOGGER_STDOUT", default_value_t = true, action = clap::ArgAction::Set)]
    pub stdout: bool,
    /// Most unacked deliveries in flight (AMQP prefetch).
    #[arg(long, env = "LOGGER_PREFETCH", default_value_t = 512)]
    pub prefetch: u16,
    /// Most events written and synced in one batch.
    #[arg(long, env = "LOGGER_BATCH", default_value_t = 256)]
    pub batch_max: usize,
}

/// Runs the logger until `shutdown` is cancelled; the batch in hand is written and acked
/// before it returns.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let topology = config.broker.topology()?;
    let sink = LogFile::open(&config.log_file, config.stdout)
        .await
        .with_context(|| format!("Failed to open the chat log {}", config.log_file.display()))?;
    tracing::info!(
        log_file = %config.log_file.display(),
        broker = %redact(&config.broker.amqp_url),
        prefix = topology.prefix(),
        prefetch = config.prefetch,
        batch_max = config.batch_max,
        "logger starting"
    );
    let subscriber = SubscriberConfig {
        amqp_url: config.broker.amqp_url.clone(),
        topology,
        name: "logger".to_owned(),
        prefetch: config.prefetch,
        batch_max: config.batch_max.max(1),
    };
    subscriber::run(subscriber, sink, Arc::new(Readiness::default()), shutdown).await;
    Ok(())
}
