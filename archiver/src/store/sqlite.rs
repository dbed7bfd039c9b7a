//! The SQLite archive (`sqlite://<file>`). Opened in WAL mode so history reads never wait
//! for the writer, with `synchronous=FULL` because the archiver acks the broker right after a
//! commit: an acked event must survive a power cut, and batching keeps the fsync cost per
//! event small. Full-text search is an FTS5 index kept by trigger; the rooms summary too.
//! Migrations: `migrations/sqlite/`.

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use chat_core::event::{format_time, Event, Role, Visibility};
use chat_core::history::TargetMessage;
use chat_core::projection::MessageState;
use chrono::{DateTime, Utc};
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::Row;

use super::decode::{row_to_event, rows_to_access, unselected_is_null, visibility, Columns};
use super::write::{self, WriteTx};
use super::{ceil_millis, AccessRow, Database, LookupError, Rebuilt, RoomSummary, Start};
use crate::search::Query;

/// A SQLite archive, cheap to clone (a pool handle).
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

/// The columns [`row_to_event`] reads: an event as stored. A macro rather than a constant so
/// that queries are `concat!`-ed into `&'static str`s, which a returned stream can borrow.
macro_rules! event_columns {
    () => {
        "id, type, room, user, name, guest, text, at, gateway, target, reason, key, op"
    };
}

/// Events as history shows them: a message acted on takes its current text, edit time and
/// reactions from the projection (`message_state`). Conditions name `e.` columns.
macro_rules! projected {
    () => {
        "SELECT e.id, e.type, e.room, e.user, e.name, e.guest,
                CASE WHEN s.id IS NULL THEN e.text ELSE s.text END AS text,
                e.at, e.gateway, e.target, e.reason, e.key, e.op,
                s.edited_at AS edited_at, s.reactions AS reactions
         FROM events AS e LEFT JOIN message_state AS s ON s.id = e.id"
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
    /// were new. The chat events travel as one JSON array bound to one statement, so
    /// archiving costs one round trip to SQLite's thread per batch rather than two per event;
    /// the `rooms` summary follows by trigger (migration `rooms_trigger`). Rows keep the
    /// batch's order, so `seq` stays the arrival order. Membership events (rare) go to the
    /// `membership` table one by one in the same transaction, each folded into the access
    /// projection by the shared rules.
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
            "SELECT user, guest, text IS NULL AS deleted FROM events
             WHERE id = ? AND room = ? AND type = 'message'",
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

    /// Drops the projections and folds them again from the logs, in one transaction: the
    /// access projection from the membership log in archive order, the search index from
    /// the messages' stored text, the message projection from every message acted on.
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
            "SELECT seq, id, type, room, user, name, guest, visibility, member, role, at, gateway
             FROM membership WHERE seq > ? ORDER BY seq LIMIT ?",
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
            "SELECT visibility,
                    EXISTS (SELECT 1 FROM access_members WHERE room = ?1 AND user = ?2) AS member
             FROM access_rooms WHERE room = ?1",
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
            "SELECT room FROM access_rooms WHERE visibility = 'private'
             AND room NOT IN (SELECT room FROM access_members WHERE user = ?)",
        )
        .bind(user)
        .fetch_all(&self.pool)
        .await
    }

    async fn access_rows(&self) -> Result<Vec<AccessRow>, sqlx::Error> {
        let rooms = sqlx::query("SELECT room, visibility, owner FROM access_rooms")
            .fetch_all(&self.pool)
            .await?;
        let members = sqlx::query("SELECT room, user FROM access_members")
            .fetch_all(&self.pool)
            .await?;
        let moderators =
            sqlx::query("SELECT room, user FROM access_roles WHERE role = 'moderator'")
                .fetch_all(&self.pool)
                .await?;
        rows_to_access(&rooms, &members, &moderators)
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
            projected!(),
            " WHERE e.room = ? AND e.seq < ? ORDER BY e.seq DESC LIMIT ?"
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
                projected!(),
                " WHERE e.room = ? AND e.seq > ? ORDER BY e.seq LIMIT ?"
            ))
            .bind(room)
            .bind(self.seq_of(room, id).await?),
            // `at` is stored as `format_time` text, whose order is time order.
            Start::At(at) => sqlx::query(concat!(
                projected!(),
                " WHERE e.room = ? AND e.at >= ? ORDER BY e.seq LIMIT ?"
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
            "SELECT e.id, e.type, e.room, e.user, e.name, e.guest,
                    CASE WHEN s.id IS NULL THEN e.text ELSE s.text END AS text,
                    e.at, e.gateway, e.target, e.reason, e.key, e.op,
                    s.edited_at AS edited_at, s.reactions AS reactions
             FROM events_fts JOIN events AS e ON e.seq = events_fts.rowid
             LEFT JOIN message_state AS s ON s.id = e.id
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

/// Stores chat events (not membership ones: messages, joins, leaves and the actions on
/// messages) with one statement.
async fn insert_chat<'c>(
    executor: impl sqlx::Executor<'c, Database = sqlx::Sqlite>,
    events: &[&Event],
) -> Result<u64, sqlx::Error> {
    let batch = serde_json::to_string(events).map_err(|e| sqlx::Error::Encode(e.into()))?;
    let result = sqlx::query(
        "INSERT INTO events (id, type, room, user, name, guest, text, at, gateway, target,
                             reason, key, op)
         SELECT json_extract(value, '$.id'), json_extract(value, '$.type'),
                json_extract(value, '$.room'), json_extract(value, '$.user'),
                json_extract(value, '$.name'), coalesce(json_extract(value, '$.guest'), 0),
                json_extract(value, '$.text'), json_extract(value, '$.at'),
                json_extract(value, '$.gateway'), json_extract(value, '$.target'),
                json_extract(value, '$.reason'), json_extract(value, '$.key'),
                json_extract(value, '$.op')
         FROM json_each(?) WHERE true ORDER BY key
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(batch)
    .execute(executor)
    .await?;
    Ok(result.rows_affected())
}

/// The write path's statements ([`write`]), in SQLite's dialect. SQLite has one writer at
/// a time, so there is no lock to take; lists of ids travel as one JSON array.
impl WriteTx for sqlx::Transaction<'_, sqlx::Sqlite> {
    async fn lock_writers(&mut self) -> Result<(), sqlx::Error> {
        Ok(())
    }

    async fn insert_chat(&mut self, events: &[&Event]) -> Result<u64, sqlx::Error> {
        insert_chat(&mut **self, events).await
    }

    async fn insert_membership(&mut self, event: &Event) -> Result<u64, sqlx::Error> {
        Ok(sqlx::query(
            "INSERT INTO membership (id, room, type, user, name, guest, visibility, member, role,
                                     at, gateway, applied)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0) ON CONFLICT (id) DO NOTHING",
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
        .bind(format_time(&event.at))
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
            "SELECT visibility, owner,
                    EXISTS (SELECT 1 FROM access_roles
                            WHERE room = ?1 AND user = ?2 AND role = 'moderator')
             FROM access_rooms WHERE room = ?1",
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
        sqlx::query("INSERT INTO access_rooms (room, visibility, owner) VALUES (?, ?, ?)")
            .bind(room)
            .bind(visibility.as_str())
            .bind(owner)
            .execute(&mut **self)
            .await?;
        Ok(())
    }

    async fn add_member(&mut self, room: &str, user: &str) -> Result<(), sqlx::Error> {
        sqlx::query("INSERT INTO access_members (room, user) VALUES (?, ?) ON CONFLICT DO NOTHING")
            .bind(room)
            .bind(user)
            .execute(&mut **self)
            .await?;
        Ok(())
    }

    async fn remove_member(&mut self, room: &str, user: &str) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM access_members WHERE room = ? AND user = ?")
            .bind(room)
            .bind(user)
            .execute(&mut **self)
            .await?;
        Ok(())
    }

    async fn grant(&mut self, room: &str, user: &str, role: Role) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO access_roles (room, user, role) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
        )
        .bind(room)
        .bind(user)
        .bind(role.as_str())
        .execute(&mut **self)
        .await?;
        Ok(())
    }

    async fn revoke(&mut self, room: &str, user: &str, role: Role) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM access_roles WHERE room = ? AND user = ? AND role = ?")
            .bind(room)
            .bind(user)
            .bind(role.as_str())
            .execute(&mut **self)
            .await?;
        Ok(())
    }

    async fn mark_applied(&mut self, id: &str) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE membership SET applied = 1 WHERE id = ?")
            .bind(id)
            .execute(&mut **self)
            .await?;
        Ok(())
    }

    async fn awaited(&mut self, messages: &[&str]) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT DISTINCT target FROM events
             WHERE target IN (SELECT value FROM json_each(?))",
        )
        .bind(as_json(messages)?)
        .fetch_all(&mut **self)
        .await
    }

    async fn messages(&mut self, ids: &[String]) -> Result<Vec<Event>, sqlx::Error> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            event_columns!(),
            " FROM events WHERE type = 'message' AND id IN (SELECT value FROM json_each(?))"
        ))
        .bind(as_json(ids)?)
        .fetch_all(&mut **self)
        .await?;
        rows.iter().map(row_to_event).collect()
    }

    async fn actions_on(&mut self, ids: &[String]) -> Result<Vec<Event>, sqlx::Error> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            event_columns!(),
            " FROM events WHERE target IN (SELECT value FROM json_each(?))
              AND type IN ('edit', 'delete', 'react')"
        ))
        .bind(as_json(ids)?)
        .fetch_all(&mut **self)
        .await?;
        rows.iter().map(row_to_event).collect()
    }

    async fn privileged(&mut self, room: &str, action: &Event) -> Result<bool, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT coalesce((SELECT owner FROM access_rooms WHERE room = ?1) = ?2, 0)
                 OR coalesce((SELECT type = 'role_granted' FROM membership
                              WHERE room = ?1 AND member = ?2 AND applied = 1
                                AND role = 'moderator'
                                AND type IN ('role_granted', 'role_revoked')
                                AND (at < ?3 OR (at = ?3 AND id < ?4))
                              ORDER BY at DESC, id DESC LIMIT 1), 0)",
        )
        .bind(room)
        .bind(&action.user)
        .bind(format_time(&action.at))
        .bind(&action.id)
        .fetch_one(&mut **self)
        .await
    }

    /// The FTS trigger takes a deleted message's text out of the index.
    async fn write_state(
        &mut self,
        message: &Event,
        state: &MessageState,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO message_state (id, room, text, edits, edited_at, deleted, reactions)
             VALUES (?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT (id) DO UPDATE SET text = excluded.text, edits = excluded.edits,
                 edited_at = excluded.edited_at, deleted = excluded.deleted,
                 reactions = excluded.reactions",
        )
        .bind(&message.id)
        .bind(&message.room)
        .bind(&state.text)
        .bind(i64::from(state.edits))
        .bind(state.edited_at.as_ref().map(format_time))
        .bind(state.deleted)
        .bind(as_json(&state.reactions)?)
        .execute(&mut **self)
        .await?;
        if state.deleted {
            sqlx::query(
                // Two index lookups (by id, by target): an `id = ? OR target = ?` here
                // made SQLite walk every event of the room instead, per deleted message.
                "UPDATE events SET text = NULL
                 WHERE seq IN (SELECT seq FROM events WHERE id = ?1
                               UNION ALL
                               SELECT seq FROM events WHERE target = ?1 AND type = 'edit')
                   AND room = ?2 AND text IS NOT NULL",
            )
            .bind(&message.id)
            .bind(&message.room)
            .execute(&mut **self)
            .await?;
        }
        Ok(())
    }

    /// The FTS5 index holds copies of the text, so it is emptied and filled again from the
    /// messages' stored text.
    async fn reset_projections(&mut self) -> Result<(), sqlx::Error> {
        for statement in [
            "DELETE FROM message_state",
            "DELETE FROM access_rooms",
            "DELETE FROM access_members",
            "DELETE FROM access_roles",
            "UPDATE membership SET applied = 0",
            "INSERT INTO events_fts (events_fts) VALUES ('delete-all')",
            "INSERT INTO events_fts (rowid, text, room, user)
             SELECT seq, text, room, user FROM events
             WHERE type = 'message' AND text IS NOT NULL",
        ] {
            sqlx::query(statement).execute(&mut **self).await?;
        }
        Ok(())
    }

    async fn membership_log(&mut self) -> Result<Vec<Event>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT id, type, room, user, name, guest, visibility, member, role, at, gateway
             FROM membership ORDER BY seq",
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

/// Times are RFC 3339 text with milliseconds (`format_time`), whose order is time order.
impl Columns for SqliteRow {
    fn text(&self, column: &str) -> Result<Option<String>, sqlx::Error> {
        unselected_is_null(self.try_get(column))
    }

    fn flag(&self, column: &str) -> Result<bool, sqlx::Error> {
        self.try_get(column)
    }

    fn time(&self, column: &str) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
        self.text(column)?
            .map(|raw| {
                Ok(DateTime::parse_from_rfc3339(&raw)
                    .map_err(|e| sqlx::Error::Decode(Box::new(e)))?
                    .with_timezone(&Utc))
            })
            .transpose()
    }
}

/// A value bound as JSON text, as `json_each` reads it.
fn as_json(value: &(impl serde::Serialize + ?Sized)) -> Result<String, sqlx::Error> {
    serde_json::to_string(value).map_err(|e| sqlx::Error::Encode(e.into()))
}
