//! What every archiver test needs: the backend as a parameter ([`on_both_backends!`] runs a
//! test once on each), a fresh archive per test (a temporary SQLite file, or a PostgreSQL
//! database of a random name that is dropped afterwards, even when the test fails), an
//! archiver started in-process against the real broker with a unique prefix, events to
//! publish, and the `archiver` binary to run commands against the archive it leaves.

use std::net::SocketAddr;
use std::process::Output;
use std::time::Duration;

pub use archiver::store::Backend;
use chat_core::testkit::{amqp_url, eventually, http_get, unique_prefix, Broker};
use chat_core::{Event, EventKind};
use clap::Parser;
use serde_json::Value;
use sqlx::Connection;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub const WAIT: Duration = Duration::from_secs(10);

/// Defines each test twice, as `<name>::on_sqlite` and `<name>::on_postgres`; the body gets
/// the backend as the named argument. No test is skipped when PostgreSQL is absent: it
/// fails, naming what to start (`scripts/test.sh` starts it).
macro_rules! on_both_backends {
    ($($(#[doc = $doc:expr])* async fn $name:ident($backend:ident) $body:block)*) => {$(
        $(#[doc = $doc])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[tokio::test]
            async fn on_sqlite() {
                test(crate::helpers::Backend::Sqlite).await
            }

            #[tokio::test]
            async fn on_postgres() {
                test(crate::helpers::Backend::Postgres).await
            }

            async fn test($backend: crate::helpers::Backend) $body
        }
    )*};
}

/// The PostgreSQL server of the tests, without a database: `TEST_POSTGRES_URL`, by default
/// the machine's own with trust authentication.
pub fn postgres_server() -> String {
    std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
}

/// A fresh, empty archive of one test. A PostgreSQL database is dropped (its connections
/// ended) when this is dropped, which also happens when the test panics.
pub struct TestDatabase {
    pub url: String,
    /// The SQLite file's directory.
    _dir: Option<tempfile::TempDir>,
    /// The PostgreSQL database's name.
    postgres: Option<String>,
}

impl TestDatabase {
    /// A new archive location: a file in a new temporary directory, or a new database.
    pub async fn new(backend: Backend, name: &str) -> Self {
        let db = Self::unused(backend, name);
        if let Some(database) = &db.postgres {
            let mut admin = admin().await;
            sqlx::query(&format!(r#"CREATE DATABASE "{database}""#))
                .execute(&mut admin)
                .await
                .unwrap();
            admin.close().await.unwrap();
        }
        db
    }

    /// A location where no archive exists (and nothing is created here).
    pub fn unused(backend: Backend, name: &str) -> Self {
        let unique = unique_prefix(name).replace('-', "_");
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let url = format!("sqlite://{}", dir.path().join("archive.db").display());
                Self {
                    url,
                    _dir: Some(dir),
                    postgres: None,
                }
            }
            Backend::Postgres => {
                let database = format!("archiver_{unique}");
                Self {
                    url: format!("{}/{database}", postgres_server()),
                    _dir: None,
                    postgres: Some(database),
                }
            }
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let Some(database) = self.postgres.take() else {
            return;
        };
        // Drop may run inside the test's runtime (or while it unwinds): a thread of its own
        // with a runtime of its own does the async work.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let mut admin =
                    sqlx::PgConnection::connect(&format!("{}/postgres", postgres_server())).await?;
                sqlx::query(&format!(
                    r#"DROP DATABASE IF EXISTS "{database}" WITH (FORCE)"#
                ))
                .execute(&mut admin)
                .await?;
                admin.close().await
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) && !std::thread::panicking() {
            panic!("the test database was not dropped: {dropped:?}");
        }
    }
}

/// A connection to the PostgreSQL server's maintenance database; fails the test, saying
/// what to do, when no server answers.
pub async fn admin() -> sqlx::PgConnection {
    let url = format!("{}/postgres", postgres_server());
    match sqlx::PgConnection::connect(&url).await {
        Ok(connection) => connection,
        Err(err) => panic!(
            "PostgreSQL does not answer at {url} ({err}): start it (scripts/test.sh does, \
             with ensure_postgres from scripts/lib.sh) or set TEST_POSTGRES_URL"
        ),
    }
}

pub struct Running {
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    pub database_url: String,
}

/// Starts an archiver on `prefix` with the archive `database_url` and waits until it is
/// healthy.
pub async fn start(prefix: &str, database_url: &str) -> Running {
    start_with(prefix, database_url, &[]).await
}

/// [`start`] with more command-line settings (e.g. `--auth-mode token`).
pub async fn start_with(prefix: &str, database_url: &str, extra: &[&str]) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let database_url = database_url.to_owned();
    let url = amqp_url();
    let mut args = vec![
        "archiver",
        "--prefix",
        prefix,
        "--amqp-url",
        &url,
        "--database-url",
        &database_url,
    ];
    args.extend_from_slice(extra);
    let cli = archiver::cli::Cli::try_parse_from(args).unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(archiver::run(listener, cli.config, shutdown.clone()));
    eventually(WAIT, "a healthy archiver", || async move {
        (http_get(addr, "/healthz").await.0 == 200).then_some(())
    })
    .await;
    Running {
        addr,
        shutdown,
        task,
        database_url,
    }
}

impl Running {
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let (status, body) = http_get(self.addr, path).await;
        (status, serde_json::from_str(&body).unwrap_or(Value::Null))
    }

    pub async fn wait_for_count(&self, room: &str, count: i64) {
        eventually(WAIT, "the archived count", || async move {
            let (_, rooms) = self.get("/api/rooms").await;
            rooms["rooms"]
                .as_array()?
                .iter()
                .any(|r| r["room"] == room && r["events"] == count)
                .then_some(())
        })
        .await;
    }
}

/// An archiver that has archived `events` (published in order), with its broker.
pub struct Archived {
    pub archiver: Running,
    pub broker: Broker,
    /// The archive; deleted on drop.
    pub db: TestDatabase,
}

impl Archived {
    pub async fn new(backend: Backend, name: &str, events: &[Event]) -> Self {
        let prefix = unique_prefix(name);
        let broker = Broker::connect(&prefix).await;
        let db = TestDatabase::new(backend, name).await;
        let archiver = start(&prefix, &db.url).await;
        for event in events {
            broker.publish_event(event).await;
        }
        let mut rooms: Vec<&str> = events.iter().map(|e| e.room.as_str()).collect();
        rooms.sort_unstable();
        rooms.dedup();
        for room in rooms {
            let count = events.iter().filter(|e| e.room == room).count();
            archiver.wait_for_count(room, count as i64).await;
        }
        Self {
            archiver,
            broker,
            db,
        }
    }

    /// Stops the archiver and cleans the broker up, keeping the database for commands.
    pub async fn stop(self) -> Archive {
        let database_url = self.archiver.database_url.clone();
        self.archiver.stop().await;
        self.broker.cleanup().await;
        Archive {
            database_url,
            _db: self.db,
        }
    }
}

/// An archive left by a stopped archiver.
pub struct Archive {
    pub database_url: String,
    _db: TestDatabase,
}

impl Archive {
    /// Runs `archiver <args> --database-url <this archive>`.
    pub fn command(&self, args: &[&str]) -> Output {
        archiver_command(args, &self.database_url)
    }

    /// Runs a command that must succeed; returns its stdout.
    pub fn stdout(&self, args: &[&str]) -> String {
        let output = self.command(args);
        assert!(
            output.status.success(),
            "archiver {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }
}

pub fn archiver_command(args: &[&str], database_url: &str) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_archiver"))
        .args(args)
        .args(["--database-url", database_url])
        .output()
        .unwrap()
}

pub fn message(room: &str, text: &str) -> Event {
    Event::new(
        EventKind::Message,
        room,
        "alice",
        Some(text.to_owned()),
        "gw-test",
    )
}

/// A message stamped `at` (RFC 3339).
pub fn message_at(room: &str, text: &str, at: &str) -> Event {
    let mut event = message(room, text);
    event.at = at.parse().unwrap();
    event
}

/// Appends a line of counts to the reliability report that `scripts/test.sh` prints.
pub fn report(line: &str) {
    use std::io::Write;
    eprintln!("{line}");
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("reliability-report.txt");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    writeln!(file, "{line}").unwrap();
}

/// Percent-encodes every byte but ASCII letters and digits, for query strings.
pub fn encode(raw: &str) -> String {
    raw.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The ids of an `events` array.
pub fn ids(events: &Value) -> Vec<String> {
    events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect()
}
