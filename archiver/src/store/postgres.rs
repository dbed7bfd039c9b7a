//! The PostgreSQL archive (`postgres://…` or `postgresql://…`), which several archivers may
//! share as competing consumers of one queue. Times are `timestamptz`; full-text search is a
//! generated `tsvector` column with a GIN index, queried with `websearch_to_tsquery`; the
//! rooms summary is kept by a statement-level trigger, one upsert per room per batch. A
//! commit returns once it is on disk (PostgreSQL's default `synchronous_commit=on`), so the
//! archiver may ack right after. Migrations: `migrations/postgres/`.

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use chat_core::event::{format_time, Event, Role, Visibility};
use chat_core::history::TargetMessage;
use chat_core::projection::MessageState;
use chrono::{DateTime, Utc};
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use sqlx::migrate::MigrateDatabase;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{Postgres, Row};

use super::decode::{row_to_event, rows_to_access, unselected_is_null, visibility, Columns};
use super::write::{self, WriteTx};
use super::{ceil_millis, redact, AccessRow, Database, LookupError, Rebuilt, RoomSummary, Start};
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

/// The columns [`row_to_event`] reads: an event as stored. `user` is a reserved word in
/// PostgreSQL.
macro_rules! event_columns {
    () => {
        r#"id, type, room, "user", name, guest, text, at, gateway, target, reason, key, op"#
    };
}

/// Events as history shows them: a message acted on takes its current text, edit time and
/// reactions from the projection (`message_state`). Conditions name `e.` columns.
macro_rules! projected {
    () => {
        r#"SELECT e.id, e.type, e.room, e."user", e.name, e.guest,
                  CASE WHEN s.id IS NULL THEN e.text ELSE s.text END AS text,
                  e.at, e.gateway, e.target, e.reason, e.key, e.op,
                  s.edited_at AS edited_at, s.reactions AS reactions
           FROM events AS e LEFT JOIN message_state AS s ON s.id = e.id"#
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
    /// The chat events travel as one JSON array bound to one statement (one round trip,
    /// one transaction): `jsonb_array_elements … WITH ORDINALITY` keeps its order for `seq`,
    /// the writer lock is taken before the first row is numbered, and the rooms summary
    /// follows by trigger (migration `archive`). Membership events (rare) follow one by one
    /// in the same transaction, under the same lock, each folded into the access projection
    /// by the shared rules.
    async fn insert(&self, events: &[Event]) -> Result<u64, sqlx::Error> {
        if write::chat_only(events) {
            let chat: Vec<&Event> = events.iter().collect();
            return insert_chat(&self.pool, &chat).await;
        }
        let mut tx = self.pool.begin().await?;
        let inserted = write::insert(&mut tx, events).await?;
        tx.commit().await?;
        Ok(inserted)
    }

    async fn target(&self, room: &str, id: &str) -> Result<Option<TargetMessage>, sqlx::Error> {
        let row = sqlx::query(
            r#"SELECT "user", guest, text IS NULL AS deleted FROM events
               WHERE id = $1 AND room = $2 AND type = 'message'"#,
        )
        .bind(id)
        .bind(room)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            Ok(TargetMessage {
                user: row.try_get("user")?,
                guest: row.try_get("guest")?,
                deleted: row.try_get("deleted")?,
            })
        })
        .transpose()
    }

    /// Drops the projections and folds them again from the logs, in one transaction under
    /// the writer lock: the access projection from the membership log in archive order,
    /// the message projection from every message acted on. (The search index is a
    /// generated column of `events`: it follows the stored text by itself.)
    async fn rebuild(&self) -> Result<Rebuilt, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let rebuilt = write::rebuild(&mut tx).await?;
        tx.commit().await?;
        Ok(rebuilt)
    }

    async fn membership_after(
        &self,
        after: i64,
        limit: u32,
    ) -> Result<Vec<(i64, Event)>, sqlx::Error> {
        let rows = sqlx::query(
            r#"SELECT seq, id, type, room, "user", name, guest, visibility, member, role, at,
                      gateway
               FROM membership WHERE seq > $1 ORDER BY seq LIMIT $2"#,
        )
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| Ok((row.try_get("seq")?, row_to_event(row)?)))
            .collect()
    }

    async fn room_access(
        &self,
        room: &str,
        user: Option<&str>,
    ) -> Result<Option<(Visibility, bool)>, sqlx::Error> {
        let row = sqlx::query(
            r#"SELECT visibility,
                      EXISTS (SELECT 1 FROM access_members WHERE room = $1 AND "user" = $2)
                        AS member
               FROM access_rooms WHERE room = $1"#,
        )
        .bind(room)
        .bind(user)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            Ok((
                visibility(&row.try_get::<String, _>("visibility")?)?,
                row.try_get("member")?,
            ))
        })
        .transpose()
    }

    async fn hidden_rooms(&self, user: Option<&str>) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar(
            r#"SELECT room FROM access_rooms WHERE visibility = 'private'
               AND NOT EXISTS (SELECT 1 FROM access_members m
                               WHERE m.room = access_rooms.room AND m."user" = $1)"#,
        )
        .bind(user)
        .fetch_all(&self.pool)
        .await
    }

    async fn access_rows(&self) -> Result<Vec<AccessRow>, sqlx::Error> {
        let rooms = sqlx::query("SELECT room, visibility, owner FROM access_rooms")
            .fetch_all(&self.pool)
            .await?;
        let members = sqlx::query(r#"SELECT room, "user" FROM access_members"#)
            .fetch_all(&self.pool)
            .await?;
        let moderators =
            sqlx::query(r#"SELECT room, "user" FROM access_roles WHERE role = 'moderator'"#)
                .fetch_all(&self.pool)
                .await?;
        rows_to_access(&rooms, &members, &moderators)
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
                    projected!(),
                    " WHERE e.room = $1 AND e.seq < $2 ORDER BY e.seq DESC LIMIT $3"
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
                projected!(),
                " WHERE e.room = $1 AND e.seq > $2 ORDER BY e.seq LIMIT $3"
            ))
            .bind(room)
            .bind(self.seq_of(room, id).await?),
            // timestamptz keeps microseconds; the bound is rounded like SQLite's so that a
            // sub-microsecond bound cannot be truncated onto an earlier event.
            Start::At(at) => sqlx::query(concat!(
                projected!(),
                " WHERE e.room = $1 AND e.at >= $2 ORDER BY e.seq LIMIT $3"
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
                projected!(),
                " WHERE e.words @@ websearch_to_tsquery('chat_search', $1)
                   AND e.type = 'message'
                   AND ($2::text IS NULL OR e.room = $2)
                 ORDER BY e.seq DESC LIMIT $3"
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

/// Stores chat events (not membership ones) with one statement, under the writer lock.
async fn insert_chat<'c>(
    executor: impl sqlx::Executor<'c, Database = Postgres>,
    events: &[&Event],
) -> Result<u64, sqlx::Error> {
    let batch = serde_json::to_string(events).map_err(|e| sqlx::Error::Encode(e.into()))?;
    let result = sqlx::query(
        r#"INSERT INTO events (id, type, room, "user", name, guest, text, at, gateway, target,
                               reason, key, op)
           SELECT e.value->>'id', e.value->>'type', e.value->>'room', e.value->>'user',
                  e.value->>'name', coalesce((e.value->>'guest')::boolean, false),
                  e.value->>'text', (e.value->>'at')::timestamptz, e.value->>'gateway',
                  e.value->>'target', e.value->>'reason', e.value->>'key', e.value->>'op'
           FROM (SELECT pg_advisory_xact_lock($2)) AS writer,
                jsonb_array_elements($1::text::jsonb) WITH ORDINALITY AS e (value, n)
           ORDER BY e.n
           ON CONFLICT (id) DO NOTHING"#,
    )
    .bind(batch)
    .bind(WRITER_LOCK)
    .execute(executor)
    .await?;
    Ok(result.rows_affected())
}

/// The write path's statements ([`write`]), in PostgreSQL's dialect: every writer takes
/// [`WRITER_LOCK`] first; lists of ids travel as arrays.
impl WriteTx for sqlx::Transaction<'_, Postgres> {
    async fn lock_writers(&mut self) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(WRITER_LOCK)
            .execute(&mut **self)
            .await?;
        Ok(())
    }

    async fn insert_chat(&mut self, events: &[&Event]) -> Result<u64, sqlx::Error> {
        insert_chat(&mut **self, events).await
    }

    async fn insert_membership(&mut self, event: &Event) -> Result<u64, sqlx::Error> {
        Ok(sqlx::query(
            r#"INSERT INTO membership (id, room, type, "user", name, guest, visibility, member,
                                       role, at, gateway, applied)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, false)
               ON CONFLICT (id) DO NOTHING"#,
        )
        .bind(&event.id)
        .bind(&event.room)
        .bind(event.kind.as_str())
        .bind(&event.user)
        .bind(&event.name)
        .bind(event.guest)
        .bind(event.visibility.map(Visibility::as_str))
        .bind(&event.member)
        .bind(event.role.map(Role::as_str))
        .bind(event.at)
        .bind(&event.gateway)
        .execute(&mut **self)
        .await?
        .rows_affected())
    }

    async fn room_info(
        &mut self,
        room: &str,
        author: &str,
    ) -> Result<Option<(Visibility, String, bool)>, sqlx::Error> {
        let row: Option<(String, String, bool)> = sqlx::query_as(
            r#"SELECT visibility, owner,
                      EXISTS (SELECT 1 FROM access_roles
                              WHERE room = $1 AND "user" = $2 AND role = 'moderator')
               FROM access_rooms WHERE room = $1"#,
        )
        .bind(room)
        .bind(author)
        .fetch_optional(&mut **self)
        .await?;
        row.map(|(v, owner, moderates)| Ok((visibility(&v)?, owner, moderates)))
            .transpose()
    }

    async fn create_room(
        &mut self,
        room: &str,
        visibility: Visibility,
        owner: &str,
    ) -> Result<(), sqlx::Error> {
        sqlx::query("INSERT INTO access_rooms (room, visibility, owner) VALUES ($1, $2, $3)")
            .bind(room)
            .bind(visibility.as_str())
            .bind(owner)
            .execute(&mut **self)
            .await?;
        Ok(())
    }

    async fn add_member(&mut self, room: &str, user: &str) -> Result<(), sqlx::Error> {
        sqlx::query(
            r#"INSERT INTO access_members (room, "user") VALUES ($1, $2) ON CONFLICT DO NOTHING"#,
        )
        .bind(room)
        .bind(user)
        .execute(&mut **self)
        .await?;
        Ok(())
    }

    async fn remove_member(&mut self, room: &str, user: &str) -> Result<(), sqlx::Error> {
        sqlx::query(r#"DELETE FROM access_members WHERE room = $1 AND "user" = $2"#)
            .bind(room)
            .bind(user)
            .execute(&mut **self)
            .await?;
        Ok(())
    }

    async fn grant(&mut self, room: &str, user: &str, role: Role) -> Result<(), sqlx::Error> {
        sqlx::query(
            r#"INSERT INTO access_roles (room, "user", role) VALUES ($1, $2, $3)
               ON CONFLICT DO NOTHING"#,
        )
        .bind(room)
        .bind(user)
        .bind(role.as_str())
        .execute(&mut **self)
        .await?;
        Ok(())
    }

    async fn revoke(&mut self, room: &str, user: &str, role: Role) -> Result<(), sqlx::Error> {
        sqlx::query(r#"DELETE FROM access_roles WHERE room = $1 AND "user" = $2 AND role = $3"#)
            .bind(room)
            .bind(user)
            .bind(role.as_str())
            .execute(&mut **self)
            .await?;
        Ok(())
    }

    async fn mark_applied(&mut self, id: &str) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE membership SET applied = true WHERE id = $1")
            .bind(id)
            .execute(&mut **self)
            .await?;
        Ok(())
    }

    async fn awaited(&mut self, messages: &[&str]) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar("SELECT DISTINCT target FROM events WHERE target = ANY($1)")
            .bind(messages)
            .fetch_all(&mut **self)
            .await
    }

    async fn messages(&mut self, ids: &[String]) -> Result<Vec<Event>, sqlx::Error> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            event_columns!(),
            " FROM events WHERE type = 'message' AND id = ANY($1)"
        ))
        .bind(ids)
        .fetch_all(&mut **self)
        .await?;
        rows.iter().map(row_to_event).collect()
    }

    async fn actions_on(&mut self, ids: &[String]) -> Result<Vec<Event>, sqlx::Error> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            event_columns!(),
            " FROM events WHERE target = ANY($1) AND type IN ('edit', 'delete', 'react')"
        ))
        .bind(ids)
        .fetch_all(&mut **self)
        .await?;
        rows.iter().map(row_to_event).collect()
    }

    async fn privileged(&mut self, room: &str, action: &Event) -> Result<bool, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT coalesce((SELECT owner FROM access_rooms WHERE room = $1) = $2, false)
                 OR coalesce((SELECT type = 'role_granted' FROM membership
                              WHERE room = $1 AND member = $2 AND applied
                                AND role = 'moderator'
                                AND type IN ('role_granted', 'role_revoked')
                                AND (at, id) < ($3, $4)
                              ORDER BY at DESC, id DESC LIMIT 1), false)",
        )
        .bind(room)
        .bind(&action.user)
        .bind(action.at)
        .bind(&action.id)
        .fetch_one(&mut **self)
        .await
    }

    /// The search column is generated from the stored text, so a deletion's `NULL` takes
    /// the message out of the index by itself.
    async fn write_state(
        &mut self,
        message: &Event,
        state: &MessageState,
    ) -> Result<(), sqlx::Error> {
        let reactions =
            serde_json::to_string(&state.reactions).map_err(|e| sqlx::Error::Encode(e.into()))?;
        sqlx::query(
            "INSERT INTO message_state (id, room, text, edits, edited_at, deleted, reactions)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (id) DO UPDATE SET text = excluded.text, edits = excluded.edits,
                 edited_at = excluded.edited_at, deleted = excluded.deleted,
                 reactions = excluded.reactions",
        )
        .bind(&message.id)
        .bind(&message.room)
        .bind(&state.text)
        .bind(i32::try_from(state.edits).unwrap_or(i32::MAX))
        .bind(state.edited_at)
        .bind(state.deleted)
        .bind(reactions)
        .execute(&mut **self)
        .await?;
        if state.deleted {
            sqlx::query(
                // Two index lookups (by id, by target), as in the SQLite store.
                "UPDATE events SET text = NULL
                 WHERE seq IN (SELECT seq FROM events WHERE id = $1
                               UNION ALL
                               SELECT seq FROM events WHERE target = $1 AND type = 'edit')
                   AND room = $2 AND text IS NOT NULL",
            )
            .bind(&message.id)
            .bind(&message.room)
            .execute(&mut **self)
            .await?;
        }
        Ok(())
    }

    /// The search index is a generated column of `events`: it follows the stored text by
    /// itself and needs no rebuilding.
    async fn reset_projections(&mut self) -> Result<(), sqlx::Error> {
        for statement in [
            "DELETE FROM message_state",
            "DELETE FROM access_rooms",
            "DELETE FROM access_members",
            "DELETE FROM access_roles",
            "UPDATE membership SET applied = false",
        ] {
            sqlx::query(statement).execute(&mut **self).await?;
        }
        Ok(())
    }

    async fn membership_log(&mut self) -> Result<Vec<Event>, sqlx::Error> {
        let rows = sqlx::query(
            r#"SELECT id, type, room, "user", name, guest, visibility, member, role, at, gateway
               FROM membership ORDER BY seq"#,
        )
        .fetch_all(&mut **self)
        .await?;
        rows.iter().map(row_to_event).collect()
    }

    async fn acted_on(&mut self) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT DISTINCT target FROM events WHERE target IS NOT NULL ORDER BY target",
        )
        .fetch_all(&mut **self)
        .await
    }

    async fn count_events(&mut self) -> Result<u64, sqlx::Error> {
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
            .fetch_one(&mut **self)
            .await?;
        Ok(count as u64)
    }
}

/// Times are `timestamptz`.
impl Columns for PgRow {
    fn text(&self, column: &str) -> Result<Option<String>, sqlx::Error> {
        unselected_is_null(self.try_get(column))
    }

    fn flag(&self, column: &str) -> Result<bool, sqlx::Error> {
        self.try_get(column)
    }

    fn time(&self, column: &str) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
        unselected_is_null(self.try_get(column))
    }
}
