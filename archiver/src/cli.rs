//! The archiver's command line: `archiver` (or `archiver serve`) runs the service; the other
//! commands read an existing archive directly (the broker and the service are not
//! needed, and they are safe while the service runs): `history`, `rooms`, `search` and
//! `export`.

use std::io;
use std::path::{Path, PathBuf};

use anyhow::Context;
use chat_core::history::MAX_HISTORY;
use chat_core::{logline, normalize, Event};
use tokio::io::{AsyncWriteExt, BufWriter};

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
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// What to do; without a command, serve.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Run the archiver service (the default).
    Serve,
    #[command(flatten)]
    Read(ReadCommand),
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

/// Runs a command against the archive at `database_url`, which must exist: a mistyped path
/// is an error, not a new empty archive.
pub async fn run(command: ReadCommand, database_url: &str) -> anyhow::Result<()> {
    let result = match command {
        ReadCommand::History {
            room,
            limit,
            before,
            since,
            json,
        } => history(database_url, &room, limit, before, since, json).await,
        ReadCommand::Rooms { json } => rooms(database_url, json).await,
        ReadCommand::Search {
            words,
            room,
            limit,
            json,
        } => search(database_url, &words.join(" "), room.as_deref(), limit, json).await,
        ReadCommand::Export {
            room,
            format,
            output,
        } => export(database_url, &room, format, output.as_deref()).await,
    };
    // A reader that stops early (`| head`) is not a failure.
    match result {
        Err(err) if is_broken_pipe(&err) => Ok(()),
        other => other,
    }
}

async fn history(
    database_url: &str,
    room: &str,
    limit: u32,
    before: Option<String>,
    since: Option<Start>,
    json: bool,
) -> anyhow::Result<()> {
    normalize::room(room)?;
    let ranged = since.is_some() || before.is_some();
    let store = Store::open_existing(database_url).await?;
    let events = match &since {
        Some(start) => store.page_from(room, start, limit).await,
        None => store.page(room, limit, before.as_deref()).await,
    };
    store.close().await;
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

async fn rooms(database_url: &str, json: bool) -> anyhow::Result<()> {
    let store = Store::open_existing(database_url).await?;
    let rooms = store.rooms().await;
    store.close().await;
    let rooms = rooms.context("Failed to read the rooms")?;
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
    let events = store.search(&query, room, limit).await;
    store.close().await;
    print_events(&events.context("Failed to search the archive")?, json).await
}

/// Exports to stdout, or to `output` through a `.part` file renamed once complete, so that
/// a failed export never leaves a file that looks whole.
async fn export(
    database_url: &str,
    room: &str,
    format: Format,
    output: Option<&Path>,
) -> anyhow::Result<()> {
    normalize::room(room)?;
    let store = Store::open_existing(database_url).await?;
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
