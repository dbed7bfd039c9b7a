//! `gateway`: parses settings, starts logging, binds, serves until Ctrl-C or SIGTERM.
use anyhow::Context;
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    chat_core::telemetry::init();
    let config = gateway::Config::parse();
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("Failed to listen on {}", config.listen))?;
    let shutdown = chat_core::shutdown::on_signal();
    gateway::run(listener, config, shutdown)
        .await
        .inspect_err(|err| {
            tracing::error!(error = format!("{err:#}"), "gateway failed");
        })
}
