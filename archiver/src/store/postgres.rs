//! The PostgreSQL archive (`postgres://…` or `postgresql://…`), which several archivers may
//! share as competing consumers of one queue. Times are `timestamptz`; full-text search is a
//! generated `tsvector` column with a GIN index, queried with `websearch_to_tsquery`; the
//! rooms summary is kept by a statement-level trigger, one upsert per room per batch. A
//! commit returns once it is on disk (PostgreSQL's default `synchronous_commit=on`), so the
//! archiver may ack right after. Migrations: `migrations/postgres/`.

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use chat_core::event::{format_time, Event, EventKind, SCHEMA_VERSION};
use chrono::{DateTime, Utc};
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use sqlx::migrate::MigrateDatabase;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{Postgres, Row};

use super::{ceil_millis, redact, Database, LookupError, RoomSummary, Start};
use crate::search::Query;

/// A PostgreSQL archive, cheap to clone (a pool handle).
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
}

/// The key of the advisory lock that writers hold while they insert a batch (an arbitrary
/// constant, "chatarch"): batches from several archivers are numbered and committed one at
/// a time, so `seq` order is also the order in which events become visible, and a reader
/// paging forward with `since` can never see a later event before an earlier one.
const WRITER_LOCK: i64 = 0x6368_6174_6172_6368;

/// The SQLSTATE of "database does not exist".
const NO_SUCH_DATABASE: &str = "3D000";

/// The columns [`row_to_event`] reads. `user` is a reserved word in PostgreSQL.
macro_rules! event_columns {
    () => {
        r#"id, type, room, "user", text, at, gateway"#
    };
}

impl PgStore {
    /// Opens and migrates the archive; with `create`, creates the database if missing, else
    /// a database that does not exist, or holds no archive, is an error.
    pub async fn open(url: &str, create: bool) -> anyhow::Result<Self> {
        let shown = redact(url);
        // A lock held elsewhere fails an insert after 5 s, like SQLite's busy timeout: the
        // batch is retried and the failure is logged instead of waiting without a word.
        // Notices (a search of punctuation only "contains no lexemes") are not worth a log
        // line each.
        let options = PgConnectOptions::from_str(url)
            .with_context(|| format!("Invalid DATABASE_URL {shown:?}"))?
            .application_name("archiver")
            .options([("lock_timeout", "5s"), ("client_min_messages", "warning")]);
        // While the server is away, a query (a readiness probe, a batch) fails after 5 s
        // rather than the pool's default 30 s.
        let connect = || {
            PgPoolOptions::new()
                .max_connections(8)
                .acquire_timeout(Duration::from_secs(5))
                .connect_with(options.clone())
        };
        let pool = match connect().await {
            Err(sqlx::Error::Database(err)) if err.code().as_deref() == Some(NO_SUCH_DATABASE) => {
                if !create {
                    anyhow::bail!("no archive at {shown} (check DATABASE_URL)");
                }
                match Postgres::create_database(url).await {
                    Ok(()) => tracing::info!(database = %shown, "created the archive database"),
                    // Another archiver starting at the same time may have created it first
                    // (42P04, or a unique violation in the catalog): then it opens.
                    Err(err) => {
                        if let Ok(pool) = connect().await {
                            return Self::migrate(pool).await;
                        }
                        return Err(err)
                            .with_context(|| format!("Failed to create the database {shown}"));
                    }
                }
                connect().await
            }
            other => other,
        }
        .with_context(|| format!("Failed to open the archive {shown}"))?;
        if !create {
            let migrated: bool =
                sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
                    .fetch_one(&pool)
                    .await
                    .with_context(|| format!("Failed to read the archive {shown}"))?;
            if !migrated {
                pool.close().await;
                anyhow::bail!("no archive at {shown} (the database exists but holds no archive; check DATABASE_URL)");
            }
        }
        Self::migrate(pool).await
    }

    async fn migrate(pool: PgPool) -> anyhow::Result<Self> {
        // sqlx takes an advisory lock while migrating: archivers starting together are safe.
        sqlx::migrate!("../migrations/postgres")
            .run(&pool)
            .await
            .context("Failed to apply the archive migrations")?;
        Ok(Self { pool })
    }

    async fn seq_of(&self, room: &str, id: &str) -> Result<i64, LookupError> {
        sqlx::query_scalar("SELECT seq FROM events WHERE id = $1 AND room = $2")
            .bind(id)
            .bind(room)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| LookupError::UnknownEvent(id.to_owned(), room.to_owned()))
    }

    async fn events(
        &self,
        query: sqlx::query::Query<'_, Postgres, sqlx::postgres::PgArguments>,
    ) -> Result<Vec<Event>, sqlx::Error> {
        let rows = query.fetch_all(&self.pool).await?;
        rows.iter().map(row_to_event).collect()
    }
}

impl Database for PgStore {
    /// The batch travels as one JSON array bound to one statement (one round trip, one
    /// transaction): `jsonb_array_elements … WITH ORDINALITY` keeps its order for `seq`, the
    /// writer lock is taken before the first row is numbered, and the rooms summary follows
    /// by trigger (migration `archive`).
    async fn insert(&self, events: &[Event]) -> Result<u64, sqlx::Error> {
        let batch = serde_json::to_string(events).map_err(|e| sqlx::Error::Encode(e.into()))?;
        let result = sqlx::query(
            r#"INSERT INTO events (id, type, room, "user", text, at, gateway)
               SELECT e.value->>'id', e.value->>'type', e.value->>'room', e.value->>'user',
                      e.value->>'text', (e.value->>'at')::timestamptz, e.value->>'gateway'
               FROM (SELECT pg_advisory_xact_lock($2)) AS writer,
                    jsonb_array_elements($1::text::jsonb) WITH ORDINALITY AS e (value, n)
               ORDER BY e.n
               ON CONFLICT (id) DO NOTHING"#,
        )
        .bind(batch)
        .bind(WRITER_LOCK)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected())
    }

    async fn rooms(&self) -> Result<Vec<RoomSummary>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT room, events, first_at, last_at, last_id FROM rooms
             ORDER BY last_at DESC, room",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(RoomSummary {
                    room: row.try_get("room")?,
                    events: row.try_get("events")?,
                    first_at: format_time(&row.try_get("first_at")?),
                    last_at: format_time(&row.try_get("last_at")?),
                    last_id: row.try_get("last_id")?,
                })
            })
            .collect()
    }

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
        let mut events = self
            .events(
                sqlx::query(concat!(
                    "SELECT ",
                    event_columns!(),
                    " FROM events WHERE room = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3"
                ))
                .bind(room)
                .bind(bound)
                .bind(i64::from(limit)),
            )
            .await?;
        events.reverse();
        Ok(events)
    }

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
                " FROM events WHERE room = $1 AND seq > $2 ORDER BY seq LIMIT $3"
            ))
            .bind(room)
            .bind(self.seq_of(room, id).await?),
            // timestamptz keeps microseconds; the bound is rounded like SQLite's so that a
            // sub-microsecond bound cannot be truncated onto an earlier event.
            Start::At(at) => sqlx::query(concat!(
                "SELECT ",
                event_columns!(),
                " FROM events WHERE room = $1 AND at >= $2 ORDER BY seq LIMIT $3"
            ))
            .bind(room)
            .bind(ceil_millis(*at)),
        };
        Ok(self.events(query.bind(i64::from(limit))).await?)
    }

    /// Each word is a quoted phrase for `websearch_to_tsquery`, so words are ANDed and
    /// nothing the user types acts as an operator (see [`Query::to_websearch`]). The GIN
    /// index finds the matches; the newest `limit` are kept.
    async fn search(
        &self,
        query: &Query,
        room: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Event>, sqlx::Error> {
        self.events(
            sqlx::query(concat!(
                "SELECT ",
                event_columns!(),
                " FROM events
                 WHERE words @@ websearch_to_tsquery('chat_search', $1)
                   AND ($2::text IS NULL OR room = $2)
                 ORDER BY seq DESC LIMIT $3"
            ))
            .bind(query.to_websearch())
            .bind(room)
            .bind(i64::from(limit)),
        )
        .await
    }

    /// Rows arrive as the server sends them (no cursor, no buffering of the whole room);
    /// one statement reads one snapshot.
    fn room_events<'a>(&'a self, room: &'a str) -> BoxStream<'a, Result<Event, sqlx::Error>> {
        sqlx::query(concat!(
            "SELECT ",
            event_columns!(),
            " FROM events WHERE room = $1 ORDER BY seq"
        ))
        .bind(room)
        .fetch(&self.pool)
        .map(|row| row_to_event(&row?))
        .boxed()
    }

    async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}

fn row_to_event(row: &PgRow) -> Result<Event, sqlx::Error> {
    let kind: String = row.try_get("type")?;
    let at: DateTime<Utc> = row.try_get("at")?;
    Ok(Event {
        v: SCHEMA_VERSION,
        id: row.try_get("id")?,
        kind: EventKind::parse(&kind)
            .ok_or_else(|| sqlx::Error::Decode(format!("unknown event type {kind:?}").into()))?,
        room: row.try_get("room")?,
        user: row.try_get("user")?,
        text: row.try_get("text")?,
        at,
        gateway: row.try_get("gateway")?,
    })
}
