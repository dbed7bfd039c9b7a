//! `logger`: parses settings, starts logging, runs until Ctrl-C or SIGTERM.
use clap::Parser;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    chat_core::telemetry::init();
    let config = logger::Config::parse();
    let shutdown = CancellationToken::new();
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            chat_core::shutdown::signal().await;
            shutdown.cancel();
        }
    });
    logger::run(config, shutdown).await.inspect_err(|err| {
        tracing::error!(error = format!("{err:#}"), "logger failed");
    })
}
