-- The archive: every event exactly once (idempotent by id), in arrival order (seq), plus a
-- per-room summary kept in the same transaction so that listing rooms costs nothing.
CREATE TABLE events (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    id          TEXT    NOT NULL UNIQUE,
    room        TEXT    NOT NULL,
    type        TEXT    NOT NULL CHECK (type IN ('message', 'join', 'leave')),
    user        TEXT    NOT NULL,
    text        TEXT,
    at          TEXT    NOT NULL,
    gateway     TEXT    NOT NULL,
    archived_at TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE INDEX events_by_room ON events (room, seq);

CREATE TABLE rooms (
    room     TEXT    PRIMARY KEY,
    events   INTEGER NOT NULL,
    first_at TEXT    NOT NULL,
    last_at  TEXT    NOT NULL,
    last_id  TEXT    NOT NULL
) WITHOUT ROWID;
