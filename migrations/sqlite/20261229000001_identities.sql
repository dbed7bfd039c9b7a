-- Identities and private rooms (event schema version 2).
--
-- Events now say who vouched for their speaker: `name` is a verified user's display name,
-- `guest` marks a self-chosen name. Every event archived before this migration was a guest's
-- (there were no tokens), so existing rows are marked as guests; new rows always set both.
ALTER TABLE events ADD COLUMN name TEXT;
ALTER TABLE events ADD COLUMN guest INTEGER NOT NULL DEFAULT 1;

-- The membership events (room_created, member_added, member_removed), every one exactly once
-- in archive order (seq), as the log the access-control projection is rebuilt from and
-- that gateways replay at start. No CHECK on `type`: every row passed `Event::decode`, and a
-- later membership kind must not need this table rebuilt. `applied` records whether the
-- rules (chat_core::access::decide) let the event change anything when it was archived.
CREATE TABLE membership (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    id          TEXT    NOT NULL UNIQUE,
    room        TEXT    NOT NULL,
    type        TEXT    NOT NULL,
    user        TEXT    NOT NULL,
    name        TEXT,
    guest       INTEGER NOT NULL,
    visibility  TEXT,
    member      TEXT,
    at          TEXT    NOT NULL,
    gateway     TEXT    NOT NULL,
    applied     INTEGER NOT NULL,
    archived_at TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

-- The projection itself: every created room, and the members of private ones (the owner
-- included). Rooms never created are public and have no row.
CREATE TABLE access_rooms (
    room       TEXT PRIMARY KEY,
    visibility TEXT NOT NULL CHECK (visibility IN ('public', 'private')),
    owner      TEXT NOT NULL
) WITHOUT ROWID;

CREATE TABLE access_members (
    room TEXT NOT NULL,
    user TEXT NOT NULL,
    PRIMARY KEY (room, user)
) WITHOUT ROWID;

CREATE INDEX access_members_by_user ON access_members (user, room);
