//! `archiver`: parses settings, starts logging, then serves or runs a command.
use anyhow::Context;
use archiver::cli::{Cli, Command};
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Read(command)) => archiver::cli::run(command, &cli.config.database_url).await,
        Some(Command::Serve) | None => serve(cli.config).await,
    };
    if let Err(err) = &result {
        eprintln!("archiver: {err:#}");
        std::process::exit(1);
    }
    Ok(())
}

async fn serve(config: archiver::Config) -> anyhow::Result<()> {
    chat_core::telemetry::init();
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("Failed to listen on {}", config.listen))?;
    let shutdown = chat_core::shutdown::on_signal();
    archiver::run(listener, config, shutdown).await
}
