//! `gateway`: parses settings, starts logging, binds, serves until Ctrl-C or SIGTERM.
//! `gateway token …` prints a token instead (see [`gateway::token`]).
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

fn main() -> ExitCode {
    cap_malloc_arenas();
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(start()),
        Err(err) => {
            eprintln!("error: cannot start the tokio runtime: {err}");
            ExitCode::FAILURE
        }
    }
}

/// glibc gives threads that allocate at once arenas of their own, up to eight per core, and
/// memory freed into one arena is not reused by another: with tokio's workers, lapin's I/O
/// thread and the blocking pool sharing every connection's buffers, up to about 1 KiB per
/// idle connection stays stranded after a join storm. Two arenas gave back 0.3 to 0.5 KiB of
/// it at no measured CPU cost (BENCHMARKS.md, "Connect and join"); `MALLOC_ARENA_MAX` in the
/// environment overrides it. Done before the runtime starts any thread.
fn cap_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        const ARENAS: libc::c_int = 2;
        // SAFETY: mallopt only sets an allocator parameter; no other thread exists yet.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, ARENAS);
        }
    }
}

async fn start() -> ExitCode {
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
