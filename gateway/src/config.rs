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
    about = "Websocket chat gateway over a RabbitMQ fanout exchange",
    after_help = "To mint a token for AUTH_MODE=token: gateway token --sub alice --name Alice --ttl 1h"
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
    #[arg(long, env = "MAX_NAME", default_value_t = Limits::DEFAULT.max_name)]
    pub max_name: usize,
    /// Longest message text, in characters.
    #[arg(long, env = "MAX_TEXT", default_value_t = Limits::DEFAULT.max_text)]
    pub max_text: usize,
    /// Largest client frame, in bytes; larger ones get a `too_large` error.
    #[arg(long, env = "MAX_FRAME", default_value_t = Limits::DEFAULT.max_frame)]
    pub max_frame: usize,
    /// How many events a joining client receives as history.
    #[arg(long, env = "HISTORY_LIMIT", default_value_t = 50)]
    pub history_limit: u32,
    /// How long to wait for the archiver's history answer, in milliseconds.
    #[arg(long, env = "HISTORY_TIMEOUT_MS", default_value_t = 3000)]
    pub history_timeout_ms: u64,
    /// How long a room's history reply also answers the joins that follow, in
    /// milliseconds (0: every join asks the archive).
    #[arg(long, env = "HISTORY_REUSE_MS", default_value_t = 1000)]
    pub history_reuse_ms: u64,
    /// How long to wait for the broker to confirm a publish, in milliseconds.
    #[arg(long, env = "PUBLISH_TIMEOUT_MS", default_value_t = 5000)]
    pub publish_timeout_ms: u64,
    /// Frames queued for one client before it is disconnected as too slow.
    #[arg(long, env = "CLIENT_QUEUE", default_value_t = 1024)]
    pub client_queue: usize,
    /// Milliseconds a client's writer waits after the first frame of a burst, so that what
    /// queues up meanwhile goes out in one socket write (Centrifugo's `write_delay`). Saves
    /// CPU per delivery when a client gets several messages within the delay, and delays
    /// every message by up to this much. 0 (the default): write at once.
    #[arg(long, env = "WRITE_DELAY_MS", default_value_t = 0)]
    pub write_delay_ms: u64,
    /// With `WRITE_DELAY_MS`: most frames in one write; a longer queue goes out in several
    /// writes straight away.
    #[arg(long, env = "WRITE_MAX_MESSAGES", default_value_t = 64)]
    pub write_max_messages: usize,
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
    #[command(flatten)]
    pub auth: chat_core::auth::AuthArgs,
    /// `AUTH_MODE=token`: milliseconds a new connection has to send its token.
    #[arg(long, env = "AUTH_TIMEOUT_MS", default_value_t = 10_000)]
    pub auth_timeout_ms: u64,
    /// `AUTH_MODE=token`: milliseconds an open connection may go on after its token's `exp`
    /// (a page refreshing its token a little late is not cut off) before it is closed (4002).
    #[arg(long, env = "AUTH_GRACE_MS", default_value_t = 10_000)]
    pub auth_grace_ms: u64,
    /// Origins allowed to open the websocket, comma-separated (e.g.
    /// `https://chat.example.com`). The gateway's own origin and localhost are always allowed;
    /// `*` allows any. Requests without an `Origin` header (non-browser clients) are allowed.
    #[arg(long, env = "ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,
    /// Most unacked deliveries from the gateway's queue (AMQP prefetch).
    #[arg(long, env = "GATEWAY_PREFETCH", default_value_t = 1024)]
    pub prefetch: u16,
    /// Route to this gateway only the events of the rooms it has members in (its queue is
    /// bound to `<prefix>.rooms` per room), plus the membership events every gateway needs.
    /// `false`: its queue gets every event of the whole system, as before.
    #[arg(long, env = "ROUTE_BY_ROOM", default_value_t = true, action = clap::ArgAction::Set)]
    pub route_by_room: bool,
    /// How often a gateway tells the others its whole presence state, in milliseconds.
    #[arg(long, env = "PRESENCE_HEARTBEAT_MS", default_value_t = 10_000)]
    pub presence_heartbeat_ms: u64,
    /// A gateway not heard from for this long (it died without a word) is forgotten with
    /// all its members, in milliseconds; at least twice the heartbeat.
    #[arg(long, env = "PRESENCE_TTL_MS", default_value_t = 30_000)]
    pub presence_ttl_ms: u64,
    /// Presence changes are batched: clients get at most one `presence_diff` per room per
    /// this many milliseconds.
    #[arg(long, env = "PRESENCE_FLUSH_MS", default_value_t = 1000)]
    pub presence_flush_ms: u64,
    /// A user gone for less than this (a reconnect) is not announced as leaving, in
    /// milliseconds.
    #[arg(long, env = "PRESENCE_GRACE_MS", default_value_t = 5000)]
    pub presence_grace_ms: u64,
    /// Above this many users online in a room, clients get only counts; above this many
    /// local members, `join` and `leave` events are no longer sent to each member.
    #[arg(long, env = "PRESENCE_MAX_LIST", default_value_t = 200)]
    pub presence_max_list: usize,
    /// How long a client shows someone as typing after their last `typing` start, in
    /// milliseconds (the `ttl_ms` clients get).
    #[arg(long, env = "TYPING_TTL_MS", default_value_t = 6000)]
    pub typing_ttl_ms: u64,
    /// Least time between two `typing` frames to a room's members, in milliseconds: the
    /// first change goes out at once, later ones within this time in one frame at its end
    /// (0: every change at once).
    #[arg(long, env = "TYPING_FLUSH_MS", default_value_t = 500)]
    pub typing_flush_ms: u64,
}

/// The largest `MAX_NAME` and `MAX_TEXT` that every consumer accepts.
const CONSUMER_MAX_NAME: usize = Limits::DECODE.max_name;
const CONSUMER_MAX_TEXT: usize = Limits::DECODE.max_text;

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
        // Frames wait in the client's queue during the delay, and a full queue disconnects
        // the client as too slow: a long delay would cut off busy clients. A second is
        // already far beyond what a chat can wait.
        anyhow::ensure!(
            self.write_delay_ms <= 1000,
            "WRITE_DELAY_MS must be at most 1000"
        );
        anyhow::ensure!(
            (1..=self.client_queue).contains(&self.write_max_messages),
            "WRITE_MAX_MESSAGES must be 1 to CLIENT_QUEUE ({})",
            self.client_queue
        );
        anyhow::ensure!(
            self.ping_interval_ms >= 10 && self.ping_timeout_ms >= 10,
            "PING_INTERVAL_MS and PING_TIMEOUT_MS must be at least 10"
        );
        self.http.validate()?;
        anyhow::ensure!(
            self.presence_heartbeat_ms >= 100 && self.presence_flush_ms >= 10,
            "PRESENCE_HEARTBEAT_MS must be at least 100 and PRESENCE_FLUSH_MS at least 10"
        );
        anyhow::ensure!(
            self.presence_ttl_ms >= 2 * self.presence_heartbeat_ms
                && self.presence_ttl_ms <= u64::from(u32::MAX),
            "PRESENCE_TTL_MS must be at least twice PRESENCE_HEARTBEAT_MS (a lost heartbeat \
             must not expire a live gateway)"
        );
        anyhow::ensure!(
            self.typing_ttl_ms >= 1000 && self.typing_flush_ms <= self.typing_ttl_ms / 2,
            "TYPING_TTL_MS must be at least 1000 and TYPING_FLUSH_MS at most half of it"
        );
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

    pub(crate) fn history_reuse(&self) -> Duration {
        Duration::from_millis(self.history_reuse_ms)
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

    pub(crate) fn write_delay(&self) -> Duration {
        Duration::from_millis(self.write_delay_ms)
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

    /// The presence and typing settings.
    pub(crate) fn presence(&self) -> crate::presence::Settings {
        crate::presence::Settings {
            heartbeat: Duration::from_millis(self.presence_heartbeat_ms),
            flush: Duration::from_millis(self.presence_flush_ms),
            typing_ttl: Duration::from_millis(self.typing_ttl_ms),
            typing_flush: Duration::from_millis(self.typing_flush_ms),
            rules: crate::presence::table::Rules {
                ttl: Duration::from_millis(self.presence_ttl_ms),
                grace: Duration::from_millis(self.presence_grace_ms),
                max_list: self.presence_max_list,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn validated(args: &[&str]) -> anyhow::Result<()> {
        let mut all = vec!["gateway"];
        all.extend_from_slice(args);
        Config::try_parse_from(all)?.validate()
    }

    #[test]
    fn write_coalescing_is_off_by_default_and_out_of_range_settings_are_named() {
        let config = Config::try_parse_from(["gateway"]).unwrap();
        assert_eq!(config.write_delay(), Duration::ZERO);
        assert!(validated(&["--write-delay-ms", "5", "--write-max-messages", "16"]).is_ok());
        let err = validated(&["--write-delay-ms", "1001"]).unwrap_err();
        assert!(err.to_string().contains("WRITE_DELAY_MS"), "{err}");
        for bad in ["0", "1025"] {
            let err = validated(&["--write-max-messages", bad]).unwrap_err();
            assert!(err.to_string().contains("WRITE_MAX_MESSAGES"), "{err}");
        }
    }
}
