//! `archiver`: parses settings, starts logging, then serves or runs a command.
use std::process::ExitCode;

use anyhow::Context;
use archiver::cli::{Cli, Command};
use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Read(command)) => {
            archiver::cli::run(command, &cli.config, cli.token.as_deref()).await
        }
        Some(Command::MigrateQueues { subscribers }) => {
            archiver::cli::migrate_queues(&cli.config.broker, &subscribers).await
        }
        Some(Command::RestoreFromLog { from }) => restore(cli.config, from).await,
        Some(Command::Rebuild) => archiver::cli::rebuild(&cli.config.database_url).await,
        Some(Command::Serve) | None => serve(cli.config).await,
    };
    chat_core::telemetry::finish("archiver", result)
}

async fn serve(config: archiver::Config) -> anyhow::Result<()> {
    chat_core::telemetry::init();
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("Failed to listen on {}", config.listen))?;
    let shutdown = chat_core::shutdown::on_signal();
    archiver::run(listener, config, shutdown).await
}

async fn restore(
    config: archiver::Config,
    from: chat_core::log_stream::StartAt,
) -> anyhow::Result<()> {
    let stream = config.broker.topology()?.log_stream();
    let restored = archiver::restore::restore(
        &config.broker,
        &config.database_url,
        from,
        chat_core::shutdown::on_signal(),
    )
    .await?;
    println!("{}", restored.line(&stream));
    Ok(())
}
