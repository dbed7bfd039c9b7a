//! The archiver's command line: `archiver` (or `archiver serve`) runs the service; the other
//! commands read an existing archive directly (the broker and the service are not
//! needed, and they are safe while the service runs): `history`, `rooms`, `search` and
//! `export`; `rebuild` recomputes the projections from the stored events.
//!
//! The read commands follow the HTTP API's access rules (`crate::caller`): in open mode
//! they act for a guest (public rooms only), in `AUTH_MODE=token` for the user of the
//! token given with `--token` or `ARCHIVER_TOKEN`, verified with the same settings as the
//! API's Bearer tokens (an `admin` token reads every room). This keeps a shared tool from
//! showing a private room to whoever may run it; it is no barrier against whoever can read
//! the database itself, which holds every room in clear (docs/operations.md).

use std::io;
use std::path::{Path, PathBuf};

use anyhow::Context;
use chat_core::history::MAX_HISTORY;
use chat_core::{logline, normalize, Event};
use tokio::io::{AsyncWriteExt, BufWriter};

use crate::caller::Caller;
use crate::export::{self, Format};
use crate::search::{self, Query};
use crate::store::{LookupError, RoomSummary, Start, Store};
use crate::Config;

/// `archiver [serve] [options]`, or one of the commands that read the archive.
#[derive(Debug, clap::Parser)]
#[command(
    name = "archiver",
    version,
    about = "Archives every chat event in SQLite or PostgreSQL and serves history"
)]
pub struct Cli {
    #[command(flatten)]
    pub config: Config,
    /// The read commands only, in AUTH_MODE=token: the token (a JWT, as for the HTTP API)
    /// of the user to read as; private rooms are shown to their members and to `admin`
    /// tokens only. Mint one with `gateway token --sub ops --admin --ttl 15m`.
    #[arg(long, env = "ARCHIVER_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// What to do; without a command, serve.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Run the archiver service (the default).
    Serve,
    /// Rebuild the system's queues with this version's arguments (classic queues from an
    /// older version become quorum queues) without losing an event, while the gateways run:
    /// `<prefix>.dead`, `<prefix>.logger`, `<prefix>.archiver` and any side subscriber
    /// named with --subscriber. Stop the logger, the archiver and those subscribers first.
    /// Safe to run again; a queue already up to date is left alone.
    MigrateQueues {
        /// A side subscriber whose queue `<prefix>.<name>` is migrated too (repeatable).
        #[arg(long = "subscriber", value_name = "NAME")]
        subscribers: Vec<String>,
    },
    /// Refill the archive from the event log stream `<prefix>.log`, from the oldest event it
    /// holds, an RFC 3339 time, or an offset, up to the moment the command started: what a
    /// lost archive, or one restored from an older backup, lacks within the stream's
    /// retention. Inserts only events the archive does not have. Stop the archiver first.
    RestoreFromLog {
        /// Where to start: `first`, an RFC 3339 time, or an offset.
        #[arg(long = "from", value_name = "first|TIME|OFFSET")]
        from: chat_core::log_stream::StartAt,
    },
    /// Drop every projection (who may read and moderate which room, each message's current
    /// text, edits, deletion and reactions, the SQLite search index) and fold it again from
    /// the stored events, in one transaction: readers see the old projections until it
    /// commits. Safe while the service runs (its batches wait); prints what it recomputed
    /// and how long it took.
    Rebuild,
    #[command(flatten)]
    Read(ReadCommand),
}

/// `archiver rebuild`: see [`Command::Rebuild`].
pub async fn rebuild(database_url: &str) -> anyhow::Result<()> {
    let store = Store::open_existing(database_url).await?;
    let started = std::time::Instant::now();
    let rebuilt = store.rebuild().await;
    store.close().await;
    let rebuilt = rebuilt.context("Failed to rebuild the projections")?;
    println!(
        "rebuilt from {} events: {} membership events folded, {} messages folded, in {:.2} s",
        rebuilt.events,
        rebuilt.membership,
        rebuilt.messages,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The commands that read the archive.
#[derive(Debug, clap::Subcommand)]
pub enum ReadCommand {
    /// Print a room's history, oldest first, in the chat log's line format.
    History {
        /// The room.
        room: String,
        /// How many events to print: the latest ones, or the first ones from --since on.
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_HISTORY)))]
        limit: u32,
        /// Print the events before this event id (paging back).
        #[arg(long, conflicts_with = "since")]
        before: Option<String>,
        /// Print the events from an RFC 3339 time on (at or after it), or after an event id
        /// (paging forward).
        #[arg(long, value_parser = parse_start)]
        since: Option<Start>,
        /// Print one event JSON per line instead.
        #[arg(long)]
        json: bool,
    },
    /// List every room with its event count and last activity, most recently active first.
    Rooms {
        /// Print one room JSON per line instead.
        #[arg(long)]
        json: bool,
    },
    /// Print the messages containing every word, newest first.
    Search {
        /// The words.
        #[arg(required = true)]
        words: Vec<String>,
        /// Search this room only.
        #[arg(long)]
        room: Option<String>,
        /// Most messages to print.
        #[arg(long, default_value_t = search::DEFAULT_RESULTS, value_parser = clap::value_parser!(u32).range(1..=i64::from(search::MAX_RESULTS)))]
        limit: u32,
        /// Print one event JSON per line instead.
        #[arg(long)]
        json: bool,
    },
    /// Write a room's whole history, oldest first, as JSON lines or CSV.
    Export {
        /// The room.
        room: String,
        /// The output format.
        #[arg(long, value_enum)]
        format: Format,
        /// Write to this file (complete or not at all) instead of stdout.
        #[arg(long)]
        output: Option<PathBuf>,
    },
}

/// `archiver migrate-queues`: migrates each queue in turn (see `chat_core::migrate`) and
/// prints what it did, one line per queue.
pub async fn migrate_queues(
    broker: &chat_core::broker::BrokerArgs,
    subscribers: &[String],
) -> anyhow::Result<()> {
    use chat_core::migrate::{migrate, Outcome, Target};
    let topology = broker.topology()?;
    let mut targets = vec![
        Target::Dead,
        Target::Subscriber("logger".to_owned()),
        Target::Subscriber("archiver".to_owned()),
    ];
    for name in subscribers {
        let queue = topology.subscriber_queue(name);
        chat_core::topology::Topology::new(&queue)
            .with_context(|| format!("invalid subscriber name {name:?}"))?;
        targets.push(Target::Subscriber(name.clone()));
    }
    let connection = chat_core::broker::connect(&broker.amqp_url, "archiver migrate-queues")
        .await
        .with_context(|| {
            format!(
                "Failed to connect to {}",
                chat_core::broker::redact(&broker.amqp_url)
            )
        })?;
    for target in &targets {
        let queue = match target {
            Target::Dead => topology.dead_queue(),
            Target::Subscriber(name) => topology.subscriber_queue(name),
        };
        let outcome = migrate(&connection, &topology, target)
            .await
            .with_context(|| {
                format!("Failed to migrate {queue} (run the command again to finish)")
            })?;
        let said = match outcome {
            Outcome::Missing => "does not exist; nothing to do".to_owned(),
            Outcome::UpToDate => "already up to date".to_owned(),
            Outcome::Migrated { moved } => {
                format!("declared again as a quorum queue; {moved} message(s) carried over")
            }
        };
        println!("{queue}: {said}");
    }
    let _ = connection.close(200, "migrated".into()).await;
    Ok(())
}

/// Runs a command against the archive of `config`, which must exist (a mistyped path is an
/// error, not a new empty archive), as the caller `token` names (see the module's
/// comment): a refused token, or a private room the caller may not read, is an error and
/// prints nothing of the room.
pub async fn run(command: ReadCommand, config: &Config, token: Option<&str>) -> anyhow::Result<()> {
    let caller = caller(config, token)?;
    let database_url = config.database_url.as_str();
    let result = match command {
        ReadCommand::History {
            room,
            limit,
            before,
            since,
            json,
        } => history(database_url, &caller, &room, limit, before, since, json).await,
        ReadCommand::Rooms { json } => rooms(database_url, &caller, json).await,
        ReadCommand::Search {
            words,
            room,
            limit,
            json,
        } => {
            let words = words.join(" ");
            search(database_url, &caller, &words, room.as_deref(), limit, json).await
        }
        ReadCommand::Export {
            room,
            format,
            output,
        } => export(database_url, &caller, &room, format, output.as_deref()).await,
    };
    // A reader that stops early (`| head`) is not a failure.
    match result {
        Err(err) if is_broken_pipe(&err) => Ok(()),
        other => other,
    }
}

/// The caller the read commands act for.
fn caller(config: &Config, token: Option<&str>) -> anyhow::Result<Caller> {
    let verifier = config
        .auth
        .verifier(chat_core::normalize::Limits::DECODE.max_name)?;
    Caller::identify(verifier.as_ref(), token).map_err(|refused| match refused {
        chat_core::auth::Refused::Missing => anyhow::anyhow!(
            "AUTH_MODE=token: the read commands need the token of the user to read as \
             (--token or ARCHIVER_TOKEN; an operator can mint an admin one with \
             `gateway token --sub <you> --admin --ttl 15m`)"
        ),
        other => anyhow::anyhow!("the token is refused: {other}"),
    })
}

/// Fails unless `caller` may read `room`; says nothing of whether the room exists.
async fn check_readable(store: &Store, caller: &Caller, room: &str) -> anyhow::Result<()> {
    let readable = store
        .can_read(room, caller.reader())
        .await
        .context("Failed to read the archive's access rules")?;
    anyhow::ensure!(
        readable,
        "forbidden: room {room:?} is private and {} not a member",
        match &caller.user {
            Some(user) => format!("{user:?} is"),
            None => "a guest (open mode) is".to_owned(),
        }
    );
    Ok(())
}

async fn history(
    database_url: &str,
    caller: &Caller,
    room: &str,
    limit: u32,
    before: Option<String>,
    since: Option<Start>,
    json: bool,
) -> anyhow::Result<()> {
    normalize::room(room)?;
    let ranged = since.is_some() || before.is_some();
    let store = Store::open_existing(database_url).await?;
    let events = async {
        check_readable(&store, caller, room).await?;
        Ok::<_, anyhow::Error>(match &since {
            Some(start) => store.page_from(room, start, limit).await,
            None => store.page(room, limit, before.as_deref()).await,
        })
    }
    .await;
    store.close().await;
    let events = events?;
    let events = match (events, since) {
        (Err(LookupError::UnknownEvent(..)), Some(Start::After(id))) => anyhow::bail!(
            "--since {id:?} is neither an RFC 3339 time (such as 2026-11-28T15:03:15Z) nor \
             an event of room {room:?}"
        ),
        (events, _) => events?,
    };
    if events.is_empty() && !json {
        // Say so on stderr, so that a script reading stdout still sees an empty history.
        eprintln!(
            "no events in room {room:?}{}",
            if ranged {
                " in that range"
            } else {
                " (the archive has no such room yet)"
            }
        );
    }
    print_events(&events, json).await
}

async fn rooms(database_url: &str, caller: &Caller, json: bool) -> anyhow::Result<()> {
    let store = Store::open_existing(database_url).await?;
    let hidden = store.hidden_rooms(caller.reader()).await;
    let rooms = store.rooms().await;
    store.close().await;
    let hidden = hidden.context("Failed to read the archive's access rules")?;
    let mut rooms = rooms.context("Failed to read the rooms")?;
    rooms.retain(|r| !hidden.contains(&r.room));
    let lines = if json {
        rooms
            .iter()
            .map(|room| serde_json::to_string(room).context("Failed to encode a room"))
            .collect::<anyhow::Result<_>>()?
    } else {
        room_table(&rooms)
    };
    print_lines(&lines).await
}

/// Rooms in columns under a header: names left-aligned, counts right-aligned (room names
/// are ASCII, so bytes are columns).
fn room_table(rooms: &[RoomSummary]) -> Vec<String> {
    let counts: Vec<String> = rooms.iter().map(|r| r.events.to_string()).collect();
    let room_width = rooms.iter().map(|r| r.room.len()).fold(4, usize::max);
    let count_width = counts.iter().map(String::len).fold(6, usize::max);
    let header = format!(
        "{:<room_width$}  {:>count_width$}  LAST ACTIVITY",
        "ROOM", "EVENTS"
    );
    std::iter::once(header)
        .chain(rooms.iter().zip(&counts).map(|(room, count)| {
            format!(
                "{:<room_width$}  {count:>count_width$}  {}",
                room.room, room.last_at
            )
        }))
        .collect()
}

async fn search(
    database_url: &str,
    caller: &Caller,
    words: &str,
    room: Option<&str>,
    limit: u32,
    json: bool,
) -> anyhow::Result<()> {
    let query = Query::parse(words)?;
    if let Some(room) = room {
        normalize::room(room)?;
    }
    let store = Store::open_existing(database_url).await?;
    let events = async {
        if let Some(room) = room {
            check_readable(&store, caller, room).await?;
        }
        let hidden = store
            .hidden_rooms(caller.reader())
            .await
            .context("Failed to read the archive's access rules")?;
        let mut events = store
            .search(&query, room, limit)
            .await
            .context("Failed to search the archive")?;
        // As the API does: matches in rooms the caller may not read are dropped (fewer
        // than `limit` may remain).
        events.retain(|e| !hidden.contains(&e.room));
        Ok::<_, anyhow::Error>(events)
    }
    .await;
    store.close().await;
    print_events(&events?, json).await
}

/// Exports to stdout, or to `output` through a `.part` file renamed once complete, so that
/// a failed export never leaves a file that looks whole.
async fn export(
    database_url: &str,
    caller: &Caller,
    room: &str,
    format: Format,
    output: Option<&Path>,
) -> anyhow::Result<()> {
    normalize::room(room)?;
    let store = Store::open_existing(database_url).await?;
    if let Err(err) = check_readable(&store, caller, room).await {
        store.close().await;
        return Err(err);
    }
    let result = match output {
        None => {
            let mut out = BufWriter::new(tokio::io::stdout());
            export::export(&store, room, format, &mut out).await
        }
        Some(path) => export_to_file(&store, room, format, path).await,
    };
    store.close().await;
    result.map(|_| ())
}

async fn export_to_file(
    store: &Store,
    room: &str,
    format: Format,
    path: &Path,
) -> anyhow::Result<u64> {
    let mut part = path.as_os_str().to_owned();
    part.push(".part");
    let part = PathBuf::from(part);
    let file = tokio::fs::File::create(&part)
        .await
        .with_context(|| format!("Failed to create {}", part.display()))?;
    let mut out = BufWriter::new(file);
    let written = async {
        let count = export::export(store, room, format, &mut out).await?;
        out.get_ref()
            .sync_all()
            .await
            .with_context(|| format!("Failed to write {}", part.display()))?;
        tokio::fs::rename(&part, path).await.with_context(|| {
            format!("Failed to rename {} to {}", part.display(), path.display())
        })?;
        Ok(count)
    }
    .await;
    if written.is_err() {
        let _ = tokio::fs::remove_file(&part).await;
    }
    written
}

/// Events as log lines, or as one JSON each.
async fn print_events(events: &[Event], json: bool) -> anyhow::Result<()> {
    let lines: Vec<String> = events
        .iter()
        .map(|event| {
            if json {
                event.to_json()
            } else {
                logline::format(event)
            }
        })
        .collect();
    print_lines(&lines).await
}

async fn print_lines(lines: &[String]) -> anyhow::Result<()> {
    let mut out = BufWriter::new(tokio::io::stdout());
    for line in lines {
        out.write_all(line.as_bytes())
            .await
            .context("Failed to write to stdout")?;
        out.write_all(b"\n")
            .await
            .context("Failed to write to stdout")?;
    }
    out.flush().await.context("Failed to write to stdout")
}

/// `--since`: an RFC 3339 time, else an event id.
fn parse_start(raw: &str) -> Result<Start, String> {
    if raw.is_empty() {
        return Err("expected an RFC 3339 time or an event id".to_owned());
    }
    Ok(match chrono::DateTime::parse_from_rfc3339(raw) {
        Ok(at) => Start::At(at.to_utc()),
        Err(_) => Start::After(raw.to_owned()),
    })
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain()
        .filter_map(|cause| cause.downcast_ref::<io::Error>())
        .any(|io| io.kind() == io::ErrorKind::BrokenPipe)
}
