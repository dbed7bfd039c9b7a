//! The archiver's command line: `archiver` (or `archiver serve`) runs the service;
//! `archiver history <room>` prints a room's archived history in the chat log's format.

use chat_core::history::MAX_HISTORY;
use chat_core::{logline, normalize};

use crate::store::Store;
use crate::Config;

/// `archiver [serve] [options]` or `archiver history <room> [--limit N] [--before ID]`.
#[derive(Debug, clap::Parser)]
#[command(
    name = "archiver",
    version,
    about = "Archives every chat event in SQLite and serves history"
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
    /// Print a room's history, oldest first, in the chat log's line format.
    History {
        /// The room.
        room: String,
        /// How many of the latest events to print.
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_HISTORY)))]
        limit: u32,
        /// Print the events before this event id (paging back).
        #[arg(long)]
        before: Option<String>,
    },
}

/// Prints a room's history to stdout.
pub async fn print_history(
    database_url: &str,
    room: &str,
    limit: u32,
    before: Option<&str>,
) -> anyhow::Result<()> {
    normalize::room(room)?;
    let store = Store::open_existing(database_url).await?;
    let events = store.page(room, limit, before).await?;
    for event in &events {
        println!("{}", logline::format(event));
    }
    store.close().await;
    Ok(())
}
