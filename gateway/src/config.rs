//! Gateway settings; every one is a flag and an environment variable with a default that
//! works on one machine.

use std::net::SocketAddr;
use std::time::Duration;

use chat_core::broker::BrokerArgs;
use chat_core::http::HttpArgs;
use chat_core::normalize::Limits;

use crate::addresses::IpBlock;

/// `MAX_CONNECTIONS` when it is not set and the open-file limit allows it.
pub const DEFAULT_MAX_CONNECTIONS: usize = 20_000;

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
    /// Most websocket connections this gateway holds; more get HTTP 503. Default: 20 000,
    /// or fewer when the open-file limit cannot hold that many; a value above what the
    /// limit can hold is refused at start.
    #[arg(long, env = "MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Most websockets from one client address; more get HTTP 503. 0 (the default): no cap.
    /// Behind a proxy, set `TRUSTED_PROXIES` too, or every client counts as the proxy.
    #[arg(long, env = "MAX_CONNECTIONS_PER_IP", default_value_t = 0)]
    pub max_connections_per_ip: usize,
    /// Proxies whose `X-Forwarded-For` tells the client's address, comma-separated
    /// addresses or CIDR blocks (e.g. `172.16.0.0/12,127.0.0.1`). Others' headers are ignored.
    #[arg(long, env = "TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<IpBlock>,
    /// Milliseconds of silence from a client after which the gateway pings it.
    #[arg(long, env = "PING_INTERVAL_MS", default_value_t = 25_000)]
    pub ping_interval_ms: u64,
    /// Milliseconds after a ping within which the client must send something (any frame),
    /// or it is closed (4009) and its leaves published.
    #[arg(long, env = "PING_TIMEOUT_MS", default_value_t = 20_000)]
    pub ping_timeout_ms: u64,
    #[command(flatten)]
    pub http: HttpArgs,
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
            self.ping_interval_ms >= 10 && self.ping_timeout_ms >= 10,
            "PING_INTERVAL_MS and PING_TIMEOUT_MS must be at least 10"
        );
        self.http.validate()?;
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

    /// The websocket cap for an open-file limit: the configured one if it fits (else an
    /// error naming both), or the default lowered to what fits.
    pub fn max_connections(&self, files: chat_core::fdlimit::FileLimit) -> anyhow::Result<usize> {
        let fits = files.connections(self.http.max_handshakes);
        match self.max_connections {
            Some(max) => {
                anyhow::ensure!(
                    max as u64 <= fits,
                    "MAX_CONNECTIONS={max} cannot be held: the open-file limit is {} (hard {}), \
                     which leaves room for {fits} websockets beside MAX_HANDSHAKES={} and {} \
                     other descriptors; raise the limit (ulimit -n, LimitNOFILE=, docker \
                     --ulimit nofile=) or lower MAX_CONNECTIONS",
                    files.soft,
                    files.hard,
                    self.http.max_handshakes,
                    chat_core::fdlimit::RESERVED
                );
                Ok(max)
            }
            None => {
                let max = DEFAULT_MAX_CONNECTIONS.min(fits.try_into().unwrap_or(usize::MAX));
                anyhow::ensure!(
                    max > 0,
                    "the open-file limit {} leaves no room for websockets; raise it",
                    files.soft
                );
                if max < DEFAULT_MAX_CONNECTIONS {
                    tracing::warn!(
                        max_connections = max,
                        open_files = files.soft,
                        "MAX_CONNECTIONS lowered to what the open-file limit can hold"
                    );
                }
                Ok(max)
            }
        }
    }

    pub(crate) fn ping_interval(&self) -> Duration {
        Duration::from_millis(self.ping_interval_ms)
    }

    pub(crate) fn ping_timeout(&self) -> Duration {
        Duration::from_millis(self.ping_timeout_ms)
    }

    pub(crate) fn publish_timeout(&self) -> Duration {
        Duration::from_millis(self.publish_timeout_ms)
    }
}
