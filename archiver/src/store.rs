//! The archive, on SQLite or PostgreSQL. [`Database`] names the domain operations; each
//! backend implements them in a module of its own with its own explicit SQL and its own
//! migrations folder (`migrations/sqlite/`, `migrations/postgres/`), using what that database
//! does best (FTS5 and a trigger per row there, `tsvector` with a GIN index and a trigger per
//! statement here). [`Store`] is the archive the rest of the archiver holds: the backend that
//! `DATABASE_URL`'s scheme chose. A URL of any other scheme is refused, never guessed at.
//!
//! What is the same for every backend is written once: the steps of a write and of a
//! rebuild in `write` (a backend supplies their statements by implementing `WriteTx` for
//! its transaction), and how a row reads as an event in `decode`.
//!
//! Every backend keeps the same promises: inserts are idempotent by event id, a batch is one
//! statement and one transaction, rows keep the batch's order (`seq`, the archive order),
//! and a commit is durable when `insert` returns, since the archiver acks right after.

mod decode;
pub mod postgres;
pub mod sqlite;
mod write;

use std::future::Future;

use chat_core::access::{Reader, Refusal, Snapshot};
use chat_core::event::{Event, Visibility};
use chat_core::history::TargetMessage;
use chrono::{DateTime, TimeDelta, Utc};
use futures_util::stream::BoxStream;
use serde::Serialize;

use crate::search::Query;

/// One room as `GET /api/rooms` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RoomSummary {
    /// Room name.
    pub room: String,
    /// How many events the room has.
    pub events: i64,
    /// Time of the first event.
    pub first_at: String,
    /// Time of the latest event.
    pub last_at: String,
    /// Id of the latest event.
    pub last_id: String,
}

/// A reference to an event that the query cannot use.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("event {0:?} is not in room {1:?}")]
    UnknownEvent(String, String),
    #[error("more than {0} events were missed")]
    TooOld(u32),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Where a forward read of a room starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// At this time: events whose `at` is this instant or later.
    At(DateTime<Utc>),
    /// Just after this event of the room.
    After(String),
}

/// One row of the access projection's tables, as [`Database::access_rows`] reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessRow {
    /// A created room.
    Room {
        room: String,
        visibility: Visibility,
        owner: String,
    },
    /// A member of a private room.
    Member { room: String, user: String },
    /// A moderator of a created room.
    Moderator { room: String, user: String },
}

/// What `archiver rebuild` recomputed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Rebuilt {
    /// Events in the archive (every one was read, or its index rebuilt).
    pub events: u64,
    /// Membership events folded into the access projection again.
    pub membership: u64,
    /// Messages folded again from the actions targeting them.
    pub messages: u64,
}

/// What an archive backend does; each implementation has its own SQL.
pub trait Database {
    /// Stores a batch atomically, its chat events in one statement; events already
    /// archived (or repeated in the batch) are skipped. Returns how many rows were new. Rows
    /// keep the batch's order. Membership events go to the membership log and are folded
    /// into the access projection (rules: `chat_core::access::decide`) in the same
    /// transaction; so are the messages that the batch's edits, deletions and reactions
    /// target, and its messages that earlier actions were waiting for, into the message
    /// projection (`chat_core::projection::fold`, recomputed whole for each, so a repeat or
    /// any delivery order gives the same state).
    fn insert(&self, events: &[Event]) -> impl Future<Output = Result<u64, sqlx::Error>> + Send;

    /// Message `id` of `room` as the rules of edits, deletions and reactions need it;
    /// `None` if the room has no message with that id.
    fn target(
        &self,
        room: &str,
        id: &str,
    ) -> impl Future<Output = Result<Option<TargetMessage>, sqlx::Error>> + Send;

    /// Drops every projection (access, message states, the search index where it is
    /// kept apart) and folds it again from the stored events, in one transaction.
    fn rebuild(&self) -> impl Future<Output = Result<Rebuilt, sqlx::Error>> + Send;

    /// Up to `limit` membership events archived after position `after` (0: from the
    /// start), oldest first, each with its position: the pages a gateway replays.
    fn membership_after(
        &self,
        after: i64,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<(i64, Event)>, sqlx::Error>> + Send;

    /// A created room's visibility and whether `user` is a member; `None` if never created.
    fn room_access(
        &self,
        room: &str,
        user: Option<&str>,
    ) -> impl Future<Output = Result<Option<(Visibility, bool)>, sqlx::Error>> + Send;

    /// The private rooms `user` (or, with `None`, a guest) is not a member of.
    fn hidden_rooms(
        &self,
        user: Option<&str>,
    ) -> impl Future<Output = Result<Vec<String>, sqlx::Error>> + Send;

    /// Every row of the access projection.
    fn access_rows(&self) -> impl Future<Output = Result<Vec<AccessRow>, sqlx::Error>> + Send;

    /// Every room with its event count and last activity, most recently active first.
    fn rooms(&self) -> impl Future<Output = Result<Vec<RoomSummary>, sqlx::Error>> + Send;

    /// Up to `limit` events of `room` before the event `before` (or the latest ones),
    /// oldest first.
    fn page(
        &self,
        room: &str,
        limit: u32,
        before: Option<&str>,
    ) -> impl Future<Output = Result<Vec<Event>, LookupError>> + Send;

    /// Up to `limit` events of `room` from `start` on, oldest first (paging forward).
    fn page_from(
        &self,
        room: &str,
        start: &Start,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<Event>, LookupError>> + Send;

    /// Up to `limit` messages containing every word of `query`, newest first (archive
    /// order), in `room` only if given.
    fn search(
        &self,
        query: &Query,
        room: Option<&str>,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<Event>, sqlx::Error>> + Send;

    /// Every event of `room`, oldest first, decoded as the database yields the rows (a room
    /// of any size is never held in memory), from one consistent snapshot.
    fn room_events<'a>(&'a self, room: &'a str) -> BoxStream<'a, Result<Event, sqlx::Error>>;

    /// Whether the database answers, for readiness probes.
    fn ping(&self) -> impl Future<Output = bool> + Send;

    /// Waits for queries in flight and closes the connections.
    fn close(&self) -> impl Future<Output = ()> + Send;
}

/// The backends, by the scheme of `DATABASE_URL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `sqlite://<file>` (or `sqlite:<file>`).
    Sqlite,
    /// `postgres://…` or `postgresql://…`.
    Postgres,
}

/// A `DATABASE_URL` that names no backend of this build. The URL is shown with its password
/// replaced by `***`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnsupportedUrl {
    #[error(
        "DATABASE_URL {url:?} has no scheme: use sqlite://<file> or \
         postgres://<user>@<host>/<database>"
    )]
    NoScheme { url: String },
    #[error(
        "DATABASE_URL scheme {scheme:?} (in {url:?}) is not supported: use sqlite://<file> or \
         postgres://<user>@<host>/<database> (postgresql:// works too)"
    )]
    Scheme { scheme: String, url: String },
}

impl Backend {
    /// The backend `url` names. Only exact lower-case schemes count: sqlx would take
    /// `SQLite://x`, or a bare path with a colon, as a file name.
    pub fn of(url: &str) -> Result<Self, UnsupportedUrl> {
        let scheme = url.split_once(':').map(|(scheme, _)| scheme).filter(|s| {
            s.starts_with(|c: char| c.is_ascii_alphabetic())
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        });
        match scheme {
            Some("sqlite") => Ok(Self::Sqlite),
            Some("postgres" | "postgresql") => Ok(Self::Postgres),
            Some(scheme) => Err(UnsupportedUrl::Scheme {
                scheme: scheme.to_owned(),
                url: redact(url),
            }),
            None => Err(UnsupportedUrl::NoScheme { url: redact(url) }),
        }
    }
}

/// `url` with its password (in the user info or a `password=` parameter) replaced by `***`,
/// fit for logs and error messages.
pub fn redact(url: &str) -> String {
    let url = chat_core::broker::redact(url);
    match url.split_once('?') {
        None => url,
        Some((base, query)) => {
            let params: Vec<String> = query
                .split('&')
                .map(|param| match param.split_once('=') {
                    Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
                    _ => param.to_owned(),
                })
                .collect();
            format!("{base}?{}", params.join("&"))
        }
    }
}

/// The archive, cheap to clone (a pool handle): the backend `DATABASE_URL` chose.
#[derive(Debug, Clone)]
pub enum Store {
    Sqlite(sqlite::SqliteStore),
    Postgres(postgres::PgStore),
}

/// Calls the same [`Database`] operation on whichever backend `$store` is.
macro_rules! dispatch {
    ($store:expr, $backend:ident => $call:expr) => {
        match $store {
            Store::Sqlite($backend) => $call,
            Store::Postgres($backend) => $call,
        }
    };
}

impl Store {
    /// Opens (creating it if missing) and migrates the archive `url` names.
    pub async fn open(url: &str) -> anyhow::Result<Self> {
        Self::open_with(url, true).await
    }

    /// Opens an archive that must exist already (the command-line tools: a mistyped name
    /// is an error, not a new empty archive).
    pub async fn open_existing(url: &str) -> anyhow::Result<Self> {
        Self::open_with(url, false).await
    }

    async fn open_with(url: &str, create: bool) -> anyhow::Result<Self> {
        Ok(match Backend::of(url)? {
            Backend::Sqlite => Self::Sqlite(sqlite::SqliteStore::open(url, create).await?),
            Backend::Postgres => Self::Postgres(postgres::PgStore::open(url, create).await?),
        })
    }

    /// Which backend this is.
    pub fn backend(&self) -> Backend {
        match self {
            Self::Sqlite(_) => Backend::Sqlite,
            Self::Postgres(_) => Backend::Postgres,
        }
    }

    /// See [`Database::insert`].
    pub async fn insert(&self, events: &[Event]) -> Result<u64, sqlx::Error> {
        if events.is_empty() {
            return Ok(0);
        }
        dispatch!(self, db => db.insert(events).await)
    }

    /// See [`Database::target`].
    pub async fn target(&self, room: &str, id: &str) -> Result<Option<TargetMessage>, sqlx::Error> {
        dispatch!(self, db => db.target(room, id).await)
    }

    /// See [`Database::rebuild`].
    pub async fn rebuild(&self) -> Result<Rebuilt, sqlx::Error> {
        dispatch!(self, db => db.rebuild().await)
    }

    /// See [`Database::membership_after`].
    pub async fn membership_after(
        &self,
        after: i64,
        limit: u32,
    ) -> Result<Vec<(i64, Event)>, sqlx::Error> {
        dispatch!(self, db => db.membership_after(after, limit).await)
    }

    /// Whether `reader` may read `room`, by the archive's access projection: public rooms
    /// (created or not) for everyone, private ones for their members and admins.
    pub async fn can_read(&self, room: &str, reader: Reader<'_>) -> Result<bool, sqlx::Error> {
        let (user, admin) = match reader {
            Reader::Guest => (None, false),
            Reader::User { id, admin } => (Some(id), admin),
        };
        let access = dispatch!(self, db => db.room_access(room, user).await)?;
        Ok(match access {
            None | Some((Visibility::Public, _)) => true,
            Some((Visibility::Private, member)) => member || admin,
        })
    }

    /// The rooms `reader` may not read (none for an admin).
    pub async fn hidden_rooms(
        &self,
        reader: Reader<'_>,
    ) -> Result<std::collections::HashSet<String>, sqlx::Error> {
        let user = match reader {
            Reader::User { admin: true, .. } => return Ok(Default::default()),
            Reader::User { id, .. } => Some(id),
            Reader::Guest => None,
        };
        let rooms = dispatch!(self, db => db.hidden_rooms(user).await)?;
        Ok(rooms.into_iter().collect())
    }

    /// The whole access projection, in the comparable form `chat_core::access` gives.
    pub async fn access_snapshot(&self) -> Result<Snapshot, sqlx::Error> {
        let rows = dispatch!(self, db => db.access_rows().await)?;
        let mut snapshot = Snapshot::new();
        let mut members = Vec::new();
        for row in rows {
            match row {
                AccessRow::Room {
                    room,
                    visibility,
                    owner,
                } => {
                    snapshot.insert(
                        room,
                        (visibility, owner, Default::default(), Default::default()),
                    );
                }
                AccessRow::Member { .. } | AccessRow::Moderator { .. } => members.push(row),
            }
        }
        for row in members {
            match row {
                AccessRow::Member { room, user } => {
                    if let Some((_, _, set, _)) = snapshot.get_mut(&room) {
                        set.insert(user);
                    }
                }
                AccessRow::Moderator { room, user } => {
                    if let Some((_, _, _, set)) = snapshot.get_mut(&room) {
                        set.insert(user);
                    }
                }
                AccessRow::Room { .. } => {}
            }
        }
        Ok(snapshot)
    }

    /// See [`Database::rooms`].
    pub async fn rooms(&self) -> Result<Vec<RoomSummary>, sqlx::Error> {
        dispatch!(self, db => db.rooms().await)
    }

    /// See [`Database::page`].
    pub async fn page(
        &self,
        room: &str,
        limit: u32,
        before: Option<&str>,
    ) -> Result<Vec<Event>, LookupError> {
        dispatch!(self, db => db.page(room, limit, before).await)
    }

    /// Every event of `room` after the event `since`, oldest first; fails if `since` is not
    /// an event of that room or more than `max` events came after it.
    pub async fn since(
        &self,
        room: &str,
        since: &str,
        max: u32,
    ) -> Result<Vec<Event>, LookupError> {
        let events = self
            .page_from(room, &Start::After(since.to_owned()), max.saturating_add(1))
            .await?;
        if events.len() > max as usize {
            return Err(LookupError::TooOld(max));
        }
        Ok(events)
    }

    /// See [`Database::page_from`].
    pub async fn page_from(
        &self,
        room: &str,
        start: &Start,
        limit: u32,
    ) -> Result<Vec<Event>, LookupError> {
        dispatch!(self, db => db.page_from(room, start, limit).await)
    }

    /// See [`Database::search`].
    pub async fn search(
        &self,
        query: &Query,
        room: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Event>, sqlx::Error> {
        dispatch!(self, db => db.search(query, room, limit).await)
    }

    /// See [`Database::room_events`].
    pub fn room_events<'a>(&'a self, room: &'a str) -> BoxStream<'a, Result<Event, sqlx::Error>> {
        dispatch!(self, db => db.room_events(room))
    }

    /// See [`Database::ping`].
    pub async fn ping(&self) -> bool {
        dispatch!(self, db => db.ping().await)
    }

    /// See [`Database::close`].
    pub async fn close(&self) {
        dispatch!(self, db => db.close().await)
    }
}

/// Logs and counts a membership event the rules refused: it is archived (it happened) but
/// changes nothing.
pub(crate) fn refused(event: &Event, refusal: &Refusal) {
    metrics::counter!("chat_membership_refused_total", "consumer" => "archiver").increment(1);
    tracing::warn!(id = %event.id, room = %event.room, user = %event.user, reason = %refusal,
        "a membership event breaks the rules; it changes nothing");
}

/// The first millisecond at or after `at` (stored times have millisecond precision), so
/// that "at or after" stays exact whatever precision the bound has.
pub(crate) fn ceil_millis(at: DateTime<Utc>) -> DateTime<Utc> {
    let floor = DateTime::from_timestamp_millis(at.timestamp_millis()).unwrap_or(at);
    if floor < at {
        floor + TimeDelta::milliseconds(1)
    } else {
        floor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_scheme_chooses_the_backend_and_nothing_else_is_guessed() {
        for (url, backend) in [
            ("sqlite://data/archive.db", Backend::Sqlite),
            ("sqlite:///var/lib/chat/archive.db", Backend::Sqlite),
            ("sqlite:archive.db", Backend::Sqlite),
            ("postgres://chat@db/chat", Backend::Postgres),
            (
                "postgresql://chat:pw@db:5432/chat?sslmode=require",
                Backend::Postgres,
            ),
        ] {
            assert_eq!(Backend::of(url), Ok(backend), "{url}");
        }
        for (url, scheme) in [
            ("mysql://chat@db/chat", "mysql"),
            ("postgre://chat@db/chat", "postgre"),
            ("SQLite://archive.db", "SQLite"),
            ("file:///tmp/archive.db", "file"),
            ("http://db/chat", "http"),
        ] {
            match Backend::of(url) {
                Err(UnsupportedUrl::Scheme { scheme: got, .. }) => assert_eq!(got, scheme),
                other => panic!("{url}: {other:?}"),
            }
        }
        for url in [
            "data/archive.db",
            "",
            "./postgres:/x",
            ":memory:",
            "/tmp/a:b",
        ] {
            assert!(
                matches!(Backend::of(url), Err(UnsupportedUrl::NoScheme { .. })),
                "{url}"
            );
        }
    }

    #[test]
    fn a_refused_url_is_shown_without_its_password() {
        let err = Backend::of("mysql://chat:s3cret@db/chat").unwrap_err();
        let message = err.to_string();
        assert!(message.contains("\"mysql\""), "{message}");
        assert!(message.contains("mysql://chat:***@db/chat"), "{message}");
        assert!(!message.contains("s3cret"), "{message}");
        assert_eq!(
            redact("postgres://db/chat?user=chat&password=s3cret&sslmode=require"),
            "postgres://db/chat?user=chat&password=***&sslmode=require"
        );
        assert_eq!(
            redact("sqlite://data/archive.db"),
            "sqlite://data/archive.db"
        );
    }

    #[test]
    fn a_time_bound_is_rounded_up_to_the_stored_millisecond() {
        let at = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        assert_eq!(
            ceil_millis(at("2026-11-28T15:01:59.9995Z")),
            at("2026-11-28T15:02:00Z")
        );
        assert_eq!(
            ceil_millis(at("2026-11-28T15:02:00.001Z")),
            at("2026-11-28T15:02:00.001Z")
        );
    }
}
