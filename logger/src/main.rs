//! `logger`: parses settings, then serves (until Ctrl-C or SIGTERM; SIGHUP reopens the log
//! file) or runs `tail`.
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use logger::cli::{Cli, Command};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Tail {
            room,
            follow,
            lines,
        }) => logger::tail::run(&cli.config.log_file, room.as_deref(), lines, follow).await,
        Some(Command::Serve) | None => serve(cli.config).await,
    };
    chat_core::telemetry::finish("logger", result)
}

async fn serve(config: logger::Config) -> anyhow::Result<()> {
    chat_core::telemetry::init();
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("Failed to listen on {}", config.listen))?;
    let shutdown = chat_core::shutdown::on_signal();
    let reopen = Arc::new(AtomicBool::new(false));
    tokio::spawn(logger::reopen_on_sighup(reopen.clone(), shutdown.clone()));
    logger::run(listener, config, reopen, shutdown).await
}
