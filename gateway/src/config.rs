//! Gateway settings; every one is a flag and an environment variable with a default that
//! works on one machine.

use std::net::SocketAddr;
use std::time::Duration;

use chat_core::broker::BrokerArgs;
use chat_core::normalize::Limits;

/// Settings of one gateway process.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "gateway",
    version,
    about = "Websocket chat gateway over a RabbitMQ fanout exchange"
)]
pub struct Config {
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// Address to serve the page, the websocket and the health probe on.
    #[arg(long, env = "GATEWAY_LISTEN", default_value = "127.0.0.1:3000")]
    pub listen: SocketAddr,
    /// This gateway's id, stamped on every event it accepts; default `<hostname>-<port>`.
    #[arg(long, env = "GATEWAY_ID")]
    pub gateway_id: Option<String>,
    /// Longest user name, in characters.
    #[arg(long, env = "MAX_NAME", default_value_t = 32)]
    pub max_name: usize,
    /// Longest message text, in characters.
    #[arg(long, env = "MAX_TEXT", default_value_t = 4000)]
    pub max_text: usize,
    /// Largest client frame, in bytes; larger ones get a `too_large` error.
    #[arg(long, env = "MAX_FRAME", default_value_t = 16 * 1024)]
    pub max_frame: usize,
    /// How many events a joining client receives as history.
    #[arg(long, env = "HISTORY_LIMIT", default_value_t = 50)]
    pub history_limit: u32,
    /// How long to wait for the archiver's history answer, in milliseconds.
    #[arg(long, env = "HISTORY_TIMEOUT_MS", default_value_t = 3000)]
    pub history_timeout_ms: u64,
    /// How long to wait for the broker to confirm a publish, in milliseconds.
    #[arg(long, env = "PUBLISH_TIMEOUT_MS", default_value_t = 5000)]
    pub publish_timeout_ms: u64,
    /// Frames queued for one client before it is disconnected as too slow.
    #[arg(long, env = "CLIENT_QUEUE", default_value_t = 1024)]
    pub client_queue: usize,
    /// Frames per second one client may send (a token bucket refilled at this rate).
    #[arg(long, env = "RATE_LIMIT", default_value_t = 20)]
    pub rate_limit: u32,
    /// Burst of frames a client may send at once; as many refusals in a row disconnect it.
    #[arg(long, env = "RATE_BURST", default_value_t = 40)]
    pub rate_burst: u32,
    /// Most websocket connections this gateway holds; more get HTTP 503.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 20_000)]
    pub max_connections: usize,
    /// Origins allowed to open the websocket, comma-separated (e.g.
    /// `https://chat.example.com`). The gateway's own origin and localhost are always allowed;
    /// `*` allows any. Requests without an `Origin` header (non-browser clients) are allowed.
    #[arg(long, env = "ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,
    /// Most unacked deliveries from the gateway's queue (AMQP prefetch).
    #[arg(long, env = "GATEWAY_PREFETCH", default_value_t = 1024)]
    pub prefetch: u16,
}

/// The largest `MAX_NAME` and `MAX_TEXT` that every consumer accepts (see
/// `Event::validate`): a gateway configured above them would ack messages that every
/// consumer then dead-letters.
const CONSUMER_MAX_NAME: usize = 128;
const CONSUMER_MAX_TEXT: usize = 64 * 1024;

impl Config {
    /// Refuses settings that would break promises, with a message naming the setting.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            (1..=CONSUMER_MAX_NAME).contains(&self.max_name),
            "MAX_NAME must be 1 to {CONSUMER_MAX_NAME}"
        );
        anyhow::ensure!(
            (1..=CONSUMER_MAX_TEXT).contains(&self.max_text),
            "MAX_TEXT must be 1 to {CONSUMER_MAX_TEXT}"
        );
        anyhow::ensure!(
            self.max_frame >= 256,
            "MAX_FRAME must be at least 256 bytes"
        );
        anyhow::ensure!(self.client_queue >= 16, "CLIENT_QUEUE must be at least 16");
        anyhow::ensure!(
            self.history_limit <= chat_core::history::MAX_HISTORY,
            "HISTORY_LIMIT must be at most {}",
            chat_core::history::MAX_HISTORY
        );
        Ok(())
    }

    /// The validation limits for client input.
    pub fn limits(&self) -> Limits {
        Limits {
            max_name: self.max_name,
            max_text: self.max_text,
            max_frame: self.max_frame,
        }
    }

    /// The gateway id: the configured one, or `<hostname>-<port>` made safe for event ids.
    pub fn gateway_id(&self, port: u16) -> String {
        let raw = match &self.gateway_id {
            Some(id) => id.clone(),
            None => {
                let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .ok()
                    .or_else(|| std::env::var("HOSTNAME").ok())
                    .unwrap_or_else(|| "gateway".to_owned());
                format!("{}-{port}", host.trim())
            }
        };
        let id: String = raw
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
            .take(64)
            .collect();
        if id.is_empty() {
            format!("gateway-{port}")
        } else {
            id
        }
    }

    pub(crate) fn history_timeout(&self) -> Duration {
        Duration::from_millis(self.history_timeout_ms)
    }

    pub(crate) fn publish_timeout(&self) -> Duration {
        Duration::from_millis(self.publish_timeout_ms)
    }
}
