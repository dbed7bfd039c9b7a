//! The SQLite archive (`sqlite://<file>`). Opened in WAL mode so history reads never wait
//! for the writer, with `synchronous=FULL` because the archiver acks the broker right after a
//! commit: an acked event must survive a power cut, and batching keeps the fsync cost per
//! event small. Full-text search is an FTS5 index kept by trigger; the rooms summary too.
//! Migrations: `migrations/sqlite/`.

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use chat_core::event::{format_time, Event, EventKind, SCHEMA_VERSION};
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::Row;

use super::{ceil_millis, Database, LookupError, RoomSummary, Start};
use crate::search::Query;

/// A SQLite archive, cheap to clone (a pool handle).
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

/// The columns [`row_to_event`] reads. A macro rather than a constant so that queries are
/// `concat!`-ed into `&'static str`s, which a returned stream can borrow.
macro_rules! event_columns {
    () => {
        "id, type, room, user, text, at, gateway"
    };
}

impl SqliteStore {
    /// Opens and migrates the archive; with `create`, creates it and its directory if
    /// missing, else an archive that does not exist is an error.
    pub async fn open(url: &str, create: bool) -> anyhow::Result<Self> {
        let options = SqliteConnectOptions::from_str(url)
            .with_context(|| format!("Invalid DATABASE_URL {url:?}"))?
            .create_if_missing(create)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5));
        let path = options.get_filename().to_owned();
        if !create && !path.exists() {
            anyhow::bail!("no archive at {} (check DATABASE_URL)", path.display());
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("Failed to create {}", dir.display()))?;
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .with_context(|| format!("Failed to open the archive {}", path.display()))?;
        sqlx::migrate!("../migrations/sqlite")
            .run(&pool)
            .await
            .context("Failed to apply the archive migrations")?;
        Ok(Self { pool })
    }

    async fn seq_of(&self, room: &str, id: &str) -> Result<i64, LookupError> {
        sqlx::query_scalar("SELECT seq FROM events WHERE id = ? AND room = ?")
            .bind(id)
            .bind(room)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| LookupError::UnknownEvent(id.to_owned(), room.to_owned()))
    }
}

impl Database for SqliteStore {
    /// Stores a batch atomically; events already archived are skipped. Returns how many rows
    /// were new. The batch travels as one JSON array bound to one statement, so archiving
    /// costs one round trip to SQLite's thread per batch rather than two per event; the
    /// `rooms` summary follows by trigger (migration `rooms_trigger`). Rows keep the batch's
    /// order, so `seq` stays the arrival order.
    async fn insert(&self, events: &[Event]) -> Result<u64, sqlx::Error> {
        let batch = serde_json::to_string(events).map_err(|e| sqlx::Error::Encode(e.into()))?;
        let result = sqlx::query(
            "INSERT INTO events (id, type, room, user, text, at, gateway)
             SELECT json_extract(value, '$.id'), json_extract(value, '$.type'),
                    json_extract(value, '$.room'), json_extract(value, '$.user'),
                    json_extract(value, '$.text'), json_extract(value, '$.at'),
                    json_extract(value, '$.gateway')
             FROM json_each(?) WHERE true ORDER BY key
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(batch)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected())
    }

    /// Every room with its event count and last activity, most recently active first.
    async fn rooms(&self) -> Result<Vec<RoomSummary>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT room, events, first_at, last_at, last_id FROM rooms ORDER BY last_at DESC, room",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(RoomSummary {
                    room: row.try_get("room")?,
                    events: row.try_get("events")?,
                    first_at: row.try_get("first_at")?,
                    last_at: row.try_get("last_at")?,
                    last_id: row.try_get("last_id")?,
                })
            })
            .collect()
    }

    /// Up to `limit` events of `room` before the event `before` (or the latest ones),
    /// oldest first.
    async fn page(
        &self,
        room: &str,
        limit: u32,
        before: Option<&str>,
    ) -> Result<Vec<Event>, LookupError> {
        let bound = match before {
            Some(id) => self.seq_of(room, id).await?,
            None => i64::MAX,
        };
        let rows = sqlx::query(concat!(
            "SELECT ",
            event_columns!(),
            " FROM events WHERE room = ? AND seq < ? ORDER BY seq DESC LIMIT ?"
        ))
        .bind(room)
        .bind(bound)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        let mut events = rows
            .iter()
            .map(row_to_event)
            .collect::<Result<Vec<_>, _>>()?;
        events.reverse();
        Ok(events)
    }

    /// Up to `limit` events of `room` from `start` on, oldest first (paging forward).
    async fn page_from(
        &self,
        room: &str,
        start: &Start,
        limit: u32,
    ) -> Result<Vec<Event>, LookupError> {
        let query = match start {
            Start::After(id) => sqlx::query(concat!(
                "SELECT ",
                event_columns!(),
                " FROM events WHERE room = ? AND seq > ? ORDER BY seq LIMIT ?"
            ))
            .bind(room)
            .bind(self.seq_of(room, id).await?),
            // `at` is stored as `format_time` text, whose order is time order.
            Start::At(at) => sqlx::query(concat!(
                "SELECT ",
                event_columns!(),
                " FROM events WHERE room = ? AND at >= ? ORDER BY seq LIMIT ?"
            ))
            .bind(room)
            .bind(format_time(&ceil_millis(*at))),
        };
        let rows = query.bind(i64::from(limit)).fetch_all(&self.pool).await?;
        Ok(rows.iter().map(row_to_event).collect::<Result<_, _>>()?)
    }

    /// Up to `limit` messages matching `query`, newest first (archive order), in `room` only
    /// if given. The FTS5 index yields its matches newest first, so a search stops after
    /// `limit` hits instead of sorting every match.
    async fn search(
        &self,
        query: &Query,
        room: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Event>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT e.id, e.type, e.room, e.user, e.text, e.at, e.gateway
             FROM events_fts JOIN events AS e ON e.seq = events_fts.rowid
             WHERE events_fts MATCH ?1 AND (?2 IS NULL OR e.room = ?2)
             ORDER BY events_fts.rowid DESC LIMIT ?3",
        )
        .bind(query.to_fts())
        .bind(room)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(row_to_event).collect()
    }

    /// Every event of `room`, oldest first, decoded as SQLite yields the rows: a room of any
    /// size is never held in memory. The stream reads one consistent snapshot (one
    /// statement), however long the reader takes, while the service goes on writing.
    fn room_events<'a>(&'a self, room: &'a str) -> BoxStream<'a, Result<Event, sqlx::Error>> {
        sqlx::query(concat!(
            "SELECT ",
            event_columns!(),
            " FROM events WHERE room = ? ORDER BY seq"
        ))
        .bind(room)
        .fetch(&self.pool)
        .map(|row| row_to_event(&row?))
        .boxed()
    }

    /// Checks that the database answers, for readiness probes.
    async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }

    /// Waits for queries in flight and closes the database.
    async fn close(&self) {
        self.pool.close().await;
    }
}

fn row_to_event(row: &SqliteRow) -> Result<Event, sqlx::Error> {
    let kind: String = row.try_get("type")?;
    let at: String = row.try_get("at")?;
    Ok(Event {
        v: SCHEMA_VERSION,
        id: row.try_get("id")?,
        kind: EventKind::parse(&kind)
            .ok_or_else(|| sqlx::Error::Decode(format!("unknown event type {kind:?}").into()))?,
        room: row.try_get("room")?,
        user: row.try_get("user")?,
        text: row.try_get("text")?,
        at: chrono::DateTime::parse_from_rfc3339(&at)
            .map_err(|e| sqlx::Error::Decode(Box::new(e)))?
            .with_timezone(&chrono::Utc),
        gateway: row.try_get("gateway")?,
    })
}
