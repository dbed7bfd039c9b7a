//! Logging set-up shared by every binary: human-readable lines by default, JSON lines with
//! `LOG_FORMAT=json`, filtered by `RUST_LOG` (default `info`). Errors are logged with their
//! whole cause chain (`{:#}`), never with credentials. Colours only on a terminal (and
//! never with `NO_COLOR` set), so log files and `docker logs` hold plain text.

use tracing_subscriber::{fmt, EnvFilter};

/// Whether [`init`] ran: a service's errors then go to its log, a command's to stderr.
static LOGGING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Installs the global subscriber. Safe to call twice (tests): later calls do nothing.
pub fn init() {
    LOGGING.store(true, std::sync::atomic::Ordering::Relaxed);
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    use std::io::IsTerminal;
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour);
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}

/// How every binary ends, so they all end alike: success exits 0; an error is reported
/// once, with its cause chain, and exits 1. A service (logging set up) logs it as an error
/// event, so it lands where its other logs go, in JSON too; a command (`archiver history`,
/// `logger tail`, a refused setting before logging starts) prints `name: error` on stderr.
pub fn finish(name: &str, result: anyhow::Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            if LOGGING.load(std::sync::atomic::Ordering::Relaxed) {
                tracing::error!(error = %format_args!("{err:#}"), "{name} failed");
            } else {
                eprintln!("{name}: {err:#}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}
