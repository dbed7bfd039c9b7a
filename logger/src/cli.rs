//! The logger's command line: `logger` (or `logger serve`) runs the service; `logger tail`
//! prints the chat log formatted, optionally following it across rotations.

use crate::Config;

/// `logger [serve] [options]` or `logger tail [--room R] [--follow] [--lines N]`.
#[derive(Debug, clap::Parser)]
#[command(
    name = "logger",
    version,
    about = "Writes every chat event to a tailable log file"
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
    /// Run the logger service (the default).
    Serve,
    /// Print the chat log (LOG_FILE), formatted, with colours on a terminal.
    Tail {
        /// Only this room's lines.
        #[arg(long)]
        room: Option<String>,
        /// Keep printing new lines as they are written, across log rotations.
        #[arg(long, short)]
        follow: bool,
        /// Start with the last N lines (all lines if omitted).
        #[arg(long, short = 'n')]
        lines: Option<usize>,
    },
}
