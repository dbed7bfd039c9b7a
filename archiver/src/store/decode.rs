//! Reading an event back from a row, the same for every backend. A backend says how to read
//! one column of each kind from its rows ([`Columns`]: SQLite keeps times as text,
//! PostgreSQL as `timestamptz`); [`row_to_event`] says which columns make an event, so the
//! two archives cannot read the same row differently.

use chat_core::event::{Event, EventKind, ReactOp, Role, Visibility, SCHEMA_VERSION};
use chrono::{DateTime, Utc};

use super::AccessRow;

/// How a backend reads the columns of one row. `Ok(None)` is a NULL, or a column the query
/// did not select (rows of `events` and of `membership` have different columns).
pub(super) trait Columns {
    fn text(&self, column: &str) -> Result<Option<String>, sqlx::Error>;
    fn flag(&self, column: &str) -> Result<bool, sqlx::Error>;
    fn time(&self, column: &str) -> Result<Option<DateTime<Utc>>, sqlx::Error>;

    /// A column that is never NULL.
    fn required(&self, column: &str) -> Result<String, sqlx::Error> {
        self.text(column)?.ok_or_else(|| missing(column))
    }
}

/// Reads an event from a row of `events` or of `membership` (whichever columns it has),
/// with the projection's columns (`edited_at`, `reactions`) when the query joined them. A
/// message or edit whose text was removed by a deletion reads as `deleted`.
pub(super) fn row_to_event(row: &impl Columns) -> Result<Event, sqlx::Error> {
    let kind = parsed("type", &row.required("type")?, EventKind::parse)?;
    let text = row.text("text")?;
    let deleted = matches!(kind, EventKind::Message | EventKind::Edit) && text.is_none();
    Ok(Event {
        v: SCHEMA_VERSION,
        id: row.required("id")?,
        kind,
        room: row.required("room")?,
        user: row.required("user")?,
        name: row.text("name")?,
        guest: row.flag("guest")?,
        text,
        visibility: row
            .text("visibility")?
            .map(|v| visibility(&v))
            .transpose()?,
        member: row.text("member")?,
        target: row.text("target")?,
        reason: row.text("reason")?,
        key: row.text("key")?,
        op: row
            .text("op")?
            .map(|op| parsed("op", &op, ReactOp::parse))
            .transpose()?,
        role: row
            .text("role")?
            .map(|r| parsed("role", &r, Role::parse))
            .transpose()?,
        at: row.time("at")?.ok_or_else(|| missing("at"))?,
        gateway: row.required("gateway")?,
        edited_at: row.time("edited_at")?,
        deleted,
        reactions: match row.text("reactions")? {
            Some(json) if !deleted => {
                serde_json::from_str(&json).map_err(|e| sqlx::Error::Decode(Box::new(e)))?
            }
            _ => Vec::new(),
        },
    })
}

/// The access projection as [`AccessRow`]s, from its three tables' rows: rooms (`room`,
/// `visibility`, `owner`), then members and moderators (`room`, `user`).
pub(super) fn rows_to_access(
    rooms: &[impl Columns],
    members: &[impl Columns],
    moderators: &[impl Columns],
) -> Result<Vec<AccessRow>, sqlx::Error> {
    let mut rows = Vec::with_capacity(rooms.len() + members.len() + moderators.len());
    for row in rooms {
        rows.push(AccessRow::Room {
            room: row.required("room")?,
            visibility: visibility(&row.required("visibility")?)?,
            owner: row.required("owner")?,
        });
    }
    for row in members {
        rows.push(AccessRow::Member {
            room: row.required("room")?,
            user: row.required("user")?,
        });
    }
    for row in moderators {
        rows.push(AccessRow::Moderator {
            room: row.required("room")?,
            user: row.required("user")?,
        });
    }
    Ok(rows)
}

/// A stored visibility, which the schema allows only in its two spellings.
pub(super) fn visibility(raw: &str) -> Result<Visibility, sqlx::Error> {
    parsed("visibility", raw, Visibility::parse)
}

/// Turns "the query did not select this column" into a NULL, as [`Columns`] promises.
pub(super) fn unselected_is_null<T>(
    read: Result<Option<T>, sqlx::Error>,
) -> Result<Option<T>, sqlx::Error> {
    match read {
        Err(sqlx::Error::ColumnNotFound(_)) => Ok(None),
        other => other,
    }
}

fn parsed<T>(column: &str, raw: &str, parse: fn(&str) -> Option<T>) -> Result<T, sqlx::Error> {
    parse(raw).ok_or_else(|| {
        sqlx::Error::Decode(format!("unknown value {raw:?} in column {column:?}").into())
    })
}

fn missing(column: &str) -> sqlx::Error {
    sqlx::Error::Decode(format!("column {column:?} is NULL or missing").into())
}
