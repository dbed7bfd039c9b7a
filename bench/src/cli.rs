//! The command line: one subcommand per kind of measurement, each with the scenario's
//! flags, the processes whose cost is reported, and where the result goes.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::client::Dialect;
use crate::procfs::Proc;

#[derive(Debug, Parser)]
#[command(
    name = "chat-bench",
    about = "Load and cost benchmarks of the chat system and its Socket.IO peer (loopback only)"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// One measured window at a fixed total send rate.
    Load(LoadArgs),
    /// Steps the rate up by --factor until a step fails twice (loss, or p99 above --p99-ms);
    /// steps down instead if the start rate fails.
    Capacity(CapacityArgs),
    /// Resident memory per idle connection and the time to connect them.
    Idle(IdleArgs),
    /// The broker alone, through lapin: the ceiling this machine's RabbitMQ sets.
    Baseline(BaselineArgs),
    /// Archiver ingest: events/s committed to SQLite and the archive's lag at a rate.
    Archive(ArchiveArgs),
    /// A token-mode gateway's start until its access projection is rebuilt from the
    /// archive's membership log (published first: --events).
    Access(AccessArgs),
    /// Serves the floor: the least work that delivers the fanout scenario's frames (a
    /// minimal websocket server, no broker), to measure the gateway against. Runs until
    /// stopped; point `load` at it with `--dialect chat`.
    Floor(FloorArgs),
    /// Deletes the exchanges and queues the chat services declared under a prefix.
    Cleanup(CleanupArgs),
    /// Prints the Markdown tables of a directory of JSON results (see scripts/bench.sh).
    Report(ReportArgs),
}

/// The system under test: its protocol and its gateways.
#[derive(Debug, Clone, Args)]
pub struct TargetArgs {
    /// Protocol of the system under test.
    #[arg(long, value_enum, default_value = "chat")]
    pub dialect: Dialect,
    /// Websocket URL of a gateway; repeat for several (clients take them in turn). Without a
    /// path, the dialect's path is added (/ws, or /socket.io/?EIO=4&transport=websocket).
    #[arg(long = "url", required = true)]
    pub urls: Vec<String>,
    /// Chat dialect, gateways in AUTH_MODE=token: the AUTH_SECRET they verify with. Each
    /// client then signs in with a token of its own (HS256, its name as `sub`) before it
    /// joins. Not read from the environment, so an exported AUTH_SECRET never turns a run
    /// against open-mode gateways into a token run.
    #[arg(long)]
    pub auth_secret: Option<String>,
}

/// The broker, for the subcommands that talk to it directly.
#[derive(Debug, Clone, Args)]
pub struct AmqpArgs {
    #[arg(long, env = "AMQP_URL", default_value = "amqp://127.0.0.1:5672/%2f")]
    pub amqp_url: String,
}

/// Who connects where and what they send.
#[derive(Debug, Clone, Args)]
pub struct ScenarioArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Clients that only listen.
    #[arg(long, default_value_t = 10)]
    pub receivers: usize,
    /// Clients that send (they receive too, uncounted).
    #[arg(long, default_value_t = 1)]
    pub senders: usize,
    /// Total send rate of all senders, messages per second (the start rate of `capacity`).
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Length of a measured window (of each step of `capacity`).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Bytes of message text.
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// Rooms; receivers and senders take them in turn. Socket.IO has no rooms: its clients
    /// get every message and drop those of other rooms (counted as `foreign`).
    #[arg(long, default_value_t = 1)]
    pub rooms: usize,
    /// How long to wait for late deliveries after the window; later ones count as lost.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub drain: Duration,
    /// Handshakes in flight at once while connecting.
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
    /// Give up waiting for all clients to connect after this long.
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// Prefix of room names; random by default, so history of earlier runs stays out.
    #[arg(long)]
    pub room_prefix: Option<String>,
    /// How clients are spread over the gateways: in turn, or each room on one gateway.
    #[arg(long, value_enum, default_value = "round-robin")]
    pub spread: crate::load::Spread,
    /// Also read each gateway's `chat_events_consumed_total` (its `/metrics`, same port as
    /// the websocket) before and after the window, and report it against the messages sent
    /// in the rooms that gateway serves. Give `--pids` as gw0=…,gw1=… in URL order to get
    /// each gateway's CPU beside it.
    #[arg(long)]
    pub consumed: bool,
    #[command(flatten)]
    pub ambient: AmbientArgs,
}

/// Presence and typing going on in the rooms while the messages are measured (chat only).
#[derive(Debug, Clone, Args)]
pub struct AmbientArgs {
    /// Extra clients that keep typing (start, start again after --typing-every, stop half
    /// an interval later, as the page does), over the rooms and gateways in turn.
    #[arg(long, default_value_t = 0)]
    pub typists: usize,
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub typing_every: Duration,
    /// Extra clients that stay --churn-every, leave, stay away as long and join again.
    #[arg(long, default_value_t = 0)]
    pub churners: usize,
    #[arg(long, default_value = "8s", value_parser = parse_duration)]
    pub churn_every: Duration,
    /// Churners come and go in rooms of their own instead of the measured ones: to tell
    /// what a join costs the room's members from what it costs the system.
    #[arg(long)]
    pub churn_elsewhere: bool,
}

/// The processes whose CPU and memory are reported.
#[derive(Debug, Clone, Args)]
pub struct CostArgs {
    /// Processes of the system under test, as label=pid or pid, comma-separated
    /// (e.g. gw1=123,gw2=124,logger=125,archiver=126).
    #[arg(long, value_delimiter = ',')]
    pub pids: Vec<Proc>,
    /// The broker's pid (beam.smp); reported apart, since both systems share it. For a
    /// cluster, every node's pid, comma-separated: their CPU is summed.
    #[arg(long, value_delimiter = ',')]
    pub broker_pid: Vec<u32>,
}

/// Where the result goes.
#[derive(Debug, Clone, Args)]
pub struct OutArgs {
    /// A name for this run in the output (e.g. fanout).
    #[arg(long, default_value = "load")]
    pub label: String,
    /// Also print the result as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Write the JSON result to this file.
    #[arg(long)]
    pub json_out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct LoadArgs {
    #[command(flatten)]
    pub scenario: ScenarioArgs,
    #[command(flatten)]
    pub cost: CostArgs,
    #[command(flatten)]
    pub out: OutArgs,
}

/// The ladder of a capacity search.
#[derive(Debug, Clone, Args)]
pub struct LadderArgs {
    /// Growth of the rate per step.
    #[arg(long, default_value_t = 1.25)]
    pub factor: f64,
    /// Most rates to try.
    #[arg(long, default_value_t = 12)]
    pub max_steps: usize,
    /// Never try above this rate.
    #[arg(long, default_value_t = 1_000_000.0)]
    pub max_rate: f64,
    /// If the start rate fails, step down by --factor, but not below this.
    #[arg(long, default_value_t = 10.0)]
    pub min_rate: f64,
    /// A step passes with no loss and p99 latency (and p99 send lag) at most this.
    #[arg(long, default_value_t = 50.0)]
    pub p99_ms: f64,
}

#[derive(Debug, Args)]
pub struct CapacityArgs {
    #[command(flatten)]
    pub scenario: ScenarioArgs,
    #[command(flatten)]
    pub ladder: LadderArgs,
    #[command(flatten)]
    pub cost: CostArgs,
    #[command(flatten)]
    pub out: OutArgs,
}

#[derive(Debug, Args)]
pub struct IdleArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Idle clients to connect (chat: each joins a room; Socket.IO: `40`).
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// Rooms the chat clients join, in turn. One room for all would make every join an
    /// event for every other member: N²/2 deliveries before anything is idle.
    #[arg(long, default_value_t = 100)]
    pub rooms: usize,
    /// Quiet time after connecting, before memory is read.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub settle: Duration,
    /// Handshakes in flight at once while connecting.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
    #[arg(long, default_value = "300s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    #[command(flatten)]
    pub cost: CostArgs,
    #[command(flatten)]
    pub out: OutArgs,
}

#[derive(Debug, Args)]
pub struct BaselineArgs {
    #[command(flatten)]
    pub amqp: AmqpArgs,
    /// Total publish rate, messages per second (the start rate with --capacity).
    #[arg(long, default_value_t = 2000.0)]
    pub rate: f64,
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Bytes of message text inside the event body.
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// Exclusive queues bound like gateways' (each on its own connection).
    #[arg(long, default_value_t = 2)]
    pub gateways: usize,
    /// Publishing connections, like gateways; the rate is split between them.
    #[arg(long, default_value_t = 2)]
    pub publishers: usize,
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub drain: Duration,
    /// Search the capacity instead of one window.
    #[arg(long)]
    pub capacity: bool,
    #[command(flatten)]
    pub ladder: LadderArgs,
    #[command(flatten)]
    pub cost: CostArgs,
    #[command(flatten)]
    pub out: OutArgs,
}

#[derive(Debug, Args)]
pub struct ArchiveArgs {
    /// The archiver's HTTP API.
    #[arg(long, default_value = "http://127.0.0.1:3100")]
    pub archiver: String,
    #[command(flatten)]
    pub amqp: AmqpArgs,
    /// CHAT_PREFIX of the running system: events go to `<prefix>.events`.
    #[arg(long, env = "CHAT_PREFIX", default_value = "chat")]
    pub prefix: String,
    /// Events published per second.
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// Give up waiting for the archive to catch up after this long past the last send.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub catch_up_limit: Duration,
    #[command(flatten)]
    pub cost: CostArgs,
    #[command(flatten)]
    pub out: OutArgs,
}

#[derive(Debug, Args)]
pub struct AccessArgs {
    /// The archiver's HTTP address: its /metrics tells when every event is stored (start
    /// a fresh archiver: the count is since its start).
    #[arg(long, default_value = "http://127.0.0.1:3100")]
    pub archiver: String,
    #[command(flatten)]
    pub amqp: AmqpArgs,
    /// CHAT_PREFIX of the running system (an archiver, no gateway).
    #[arg(long, env = "CHAT_PREFIX", default_value = "chat")]
    pub prefix: String,
    /// Membership events to publish first; 0 when the archive has them already (then the
    /// archiver's count is not waited for).
    #[arg(long, default_value_t = 100_000)]
    pub events: u64,
    /// Members per private room: its `room_created` and `room_size - 1` `member_added`.
    #[arg(long, default_value_t = 100)]
    pub room_size: u64,
    /// The gateway binary, started in AUTH_MODE=token against the system for each run.
    #[arg(long)]
    pub gateway: PathBuf,
    /// The AUTH_SECRET the gateway is started with (at least 32 bytes).
    #[arg(long, default_value = "chat-bench-access-secret-0123456789abcdef")]
    pub auth_secret: String,
    /// Where the gateway listens (loopback): its /metrics shows the replay.
    #[arg(long, default_value = "127.0.0.1:4390")]
    pub listen: std::net::SocketAddr,
    /// Gateway starts to time.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// The archiver's pid, to report its CPU during each rebuild.
    #[arg(long)]
    pub archiver_pid: Option<u32>,
    #[command(flatten)]
    pub out: OutArgs,
}

#[derive(Debug, Args)]
pub struct FloorArgs {
    /// Address to listen on (loopback only); repeat for several, like several gateways.
    #[arg(long = "listen", required = true)]
    pub listen: Vec<std::net::SocketAddr>,
    /// One write per delivery, or one write per burst of queued frames.
    #[arg(long, value_enum, default_value = "delivery")]
    pub mode: crate::floor::Mode,
    /// With `--mode burst`: how long a connection's writer waits after the first frame of
    /// a burst before writing everything queued (0: write as soon as woken).
    #[arg(long, default_value = "0ms", value_parser = parse_duration)]
    pub write_delay: Duration,
}

#[derive(Debug, Args)]
pub struct CleanupArgs {
    #[command(flatten)]
    pub amqp: AmqpArgs,
    /// The prefix whose exchanges and queues are deleted (never `chat`, the default one).
    #[arg(long)]
    pub prefix: String,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Directory of `<system>-<scenario>.json` results.
    #[arg(long)]
    pub dir: PathBuf,
}

/// `10s`, `500ms`, `2m`, `1.5s`, or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (number, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 10s or 500ms"))?;
    let seconds = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("{s:?}: use ms, s or m")),
    };
    if !(0.0..=86_400.0).contains(&seconds) {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("3h").is_err());
    }

    #[test]
    fn the_command_line_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "chat-bench",
            "load",
            "--url",
            "ws://127.0.0.1:3001/ws",
            "--url",
            "ws://127.0.0.1:3002/ws",
            "--receivers",
            "500",
            "--senders",
            "4",
            "--pids",
            "gw1=1,gw2=2",
        ])
        .unwrap();
        let Command::Load(args) = cli.command else {
            panic!("not load")
        };
        assert_eq!(args.scenario.target.urls.len(), 2);
        assert_eq!(args.cost.pids.len(), 2);
        assert_eq!(args.scenario.duration, Duration::from_secs(10));
    }
}
