//! `gateway`: parses settings, starts logging, binds, serves until Ctrl-C or SIGTERM.
//! `gateway token …` prints a token instead (see [`gateway::token`]).
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == "token") {
        args.remove(1);
        let command = gateway::token::TokenCommand::parse_from(args);
        return match command.mint() {
            Ok(token) => {
                println!("{token}");
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("error: {err:#}");
                ExitCode::FAILURE
            }
        };
    }
    let config = gateway::Config::parse();
    chat_core::telemetry::finish("gateway", serve(config).await)
}

async fn serve(config: gateway::Config) -> anyhow::Result<()> {
    chat_core::telemetry::init();
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("Failed to listen on {}", config.listen))?;
    let shutdown = chat_core::shutdown::on_signal();
    gateway::run(listener, config, shutdown).await
}
