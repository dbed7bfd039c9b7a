//! Logging set-up shared by every binary: human-readable lines by default, JSON lines with
//! `LOG_FORMAT=json`, filtered by `RUST_LOG` (default `info`). Errors are logged with their
//! whole cause chain (`{:#}`), never with credentials. Colours only on a terminal (and
//! never with `NO_COLOR` set), so log files and `docker logs` hold plain text.

use tracing_subscriber::{fmt, EnvFilter};

/// Installs the global subscriber. Safe to call twice (tests): later calls do nothing.
pub fn init() {
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
