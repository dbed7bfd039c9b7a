//! `chat-bench`: drives real websocket clients (or the broker alone) against systems
//! running on this machine and reports what they delivered and what it cost. See
//! BENCHMARKS.md and scripts/bench.sh for the standard scenarios.

mod access;
mod amqp;
mod archive;
mod baseline;
mod capacity;
mod chat_client;
mod cli;
mod client;
mod floor;
mod load;
mod marker;
mod output;
mod procfs;
mod report;
mod routing;
mod run;
mod socketio;
mod stats;
mod targets;

use clap::Parser;

use crate::cli::{Cli, Command};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    stats::now_us(); // starts the clock that send times are measured on
    let cli = Cli::parse();
    let (record, out) = match cli.command {
        Command::Load(args) => {
            let out = args.out.clone();
            (run::load(args).await?, out)
        }
        Command::Capacity(args) => {
            let out = args.out.clone();
            (run::capacity(args).await?, out)
        }
        Command::Idle(args) => {
            let out = args.out.clone();
            (run::idle(args).await?, out)
        }
        Command::Baseline(args) => {
            let out = args.out.clone();
            (run::baseline(args).await?, out)
        }
        Command::Archive(args) => {
            let out = args.out.clone();
            (run::archive(args).await?, out)
        }
        Command::Access(args) => {
            let out = args.out.clone();
            (run::access(args).await?, out)
        }
        Command::Floor(args) => {
            if let Some(far) = args.listen.iter().find(|a| !a.ip().is_loopback()) {
                anyhow::bail!("{far}: the floor only listens on this machine (loopback)");
            }
            floor::serve(&args.listen, args.mode, args.write_delay).await?;
            return Ok(());
        }
        Command::Cleanup(args) => {
            println!("{}", run::cleanup(args).await?.line());
            return Ok(());
        }
        Command::Report(args) => {
            print!("{}", report::render(&args.dir)?);
            return Ok(());
        }
    };
    record.emit(out.json, out.json_out.as_deref())
}
