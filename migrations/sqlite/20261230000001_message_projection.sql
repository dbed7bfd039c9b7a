-- Edits, deletions and reactions (issue 10): the events table takes the new kinds and their
-- fields, and the message projection lives beside it.
--
-- SQLite cannot change a CHECK constraint in place, so `events` is rebuilt: same rows, same
-- `seq` (the FTS index refers to rows by it, so it stays valid), same AUTOINCREMENT counter
-- (RENAME carries the sqlite_sequence row), with the new kinds allowed and four new
-- columns. Its triggers go with the old table and are made again below.
CREATE TABLE events_v3 (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    id          TEXT    NOT NULL UNIQUE,
    room        TEXT    NOT NULL,
    type        TEXT    NOT NULL
                CHECK (type IN ('message', 'join', 'leave', 'edit', 'delete', 'react')),
    user        TEXT    NOT NULL,
    text        TEXT,
    at          TEXT    NOT NULL,
    gateway     TEXT    NOT NULL,
    archived_at TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    name        TEXT,
    guest       INTEGER NOT NULL DEFAULT 1,
    -- The message an edit, delete or react acts on, and their own fields.
    target      TEXT,
    reason      TEXT,
    key         TEXT,
    op          TEXT
);

INSERT INTO events_v3 (seq, id, room, type, user, text, at, gateway, archived_at, name, guest)
SELECT seq, id, room, type, user, text, at, gateway, archived_at, name, guest FROM events;

DROP TABLE events;
ALTER TABLE events_v3 RENAME TO events;

CREATE INDEX events_by_room ON events (room, seq);
-- The actions on one message, found when it is folded.
CREATE INDEX events_by_target ON events (target) WHERE target IS NOT NULL;

CREATE TRIGGER events_rooms_insert AFTER INSERT ON events
BEGIN
    INSERT INTO rooms (room, events, first_at, last_at, last_id)
    VALUES (new.room, 1, new.at, new.at, new.id)
    ON CONFLICT (room) DO UPDATE SET events = events + 1,
        last_at = excluded.last_at, last_id = excluded.last_id;
END;

-- Search finds messages by the text they were said with (an edit's text is not indexed:
-- history shows the current text of what search finds).
CREATE TRIGGER events_fts_insert AFTER INSERT ON events
WHEN new.text IS NOT NULL AND new.type = 'message'
BEGIN
    INSERT INTO events_fts (rowid, text, room, user)
    VALUES (new.seq, new.text, new.room, new.user);
END;

-- A deletion removes the text from the stored event: it leaves the index in the same
-- statement (an external-content FTS5 index must be told the old values).
CREATE TRIGGER events_fts_text_removed AFTER UPDATE OF text ON events
WHEN old.text IS NOT NULL AND old.type = 'message'
BEGIN
    INSERT INTO events_fts (events_fts, rowid, text, room, user)
    VALUES ('delete', old.seq, old.text, old.room, old.user);
    INSERT INTO events_fts (rowid, text, room, user)
    SELECT new.seq, new.text, new.room, new.user WHERE new.text IS NOT NULL;
END;

-- The message projection: one row per message that edits, deletions or reactions acted on
-- (a message without any reads as stored). `text` is the current text, NULL once deleted;
-- `reactions` is the JSON array history shows ([{"key","count","users"}]). Derived from
-- `events` alone (chat_core::projection::fold): `archiver rebuild` drops and recomputes it.
CREATE TABLE message_state (
    id        TEXT    PRIMARY KEY,
    room      TEXT    NOT NULL,
    text      TEXT,
    edits     INTEGER NOT NULL,
    edited_at TEXT,
    deleted   INTEGER NOT NULL,
    reactions TEXT    NOT NULL
) WITHOUT ROWID;

-- Roles: who moderates which created room, folded from role_granted / role_revoked in the
-- membership log (which takes their `role`).
ALTER TABLE membership ADD COLUMN role TEXT;

CREATE TABLE access_roles (
    room TEXT NOT NULL,
    user TEXT NOT NULL,
    role TEXT NOT NULL,
    PRIMARY KEY (room, user, role)
) WITHOUT ROWID;
