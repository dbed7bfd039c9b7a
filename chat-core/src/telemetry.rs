//! Logging set-up shared by every binary: human-readable lines by default, JSON lines with
//! `LOG_FORMAT=json`, filtered by `RUST_LOG` (default `info`). Errors are logged with their
//! whole cause chain (`{:#}`), never with credentials.

use tracing_subscriber::{fmt, EnvFilter};

/// Installs the global subscriber. Safe to call twice (tests): later calls do nothing.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}
