-- Full-text search of message text. An external-content FTS5 table: the index refers to
-- `events` rows by `seq` and reads their text from there, so no text is stored twice. Only
-- messages have text, so only they are indexed. `room` and `user` are UNINDEXED: user words
-- must never match a room or user name, and a room is filtered exactly on `events.room`
-- (the tokenizer would split `my-room` into two words). `remove_diacritics 2` lets `cafe`
-- find `café`.
CREATE VIRTUAL TABLE events_fts USING fts5(
    text,
    room UNINDEXED,
    user UNINDEXED,
    content = 'events',
    content_rowid = 'seq',
    tokenize = 'unicode61 remove_diacritics 2'
);

-- Archived events are never updated or deleted, so an insert trigger keeps the index whole.
-- (Should that ever change, the index needs matching 'delete' triggers.)
CREATE TRIGGER events_fts_insert AFTER INSERT ON events
WHEN new.text IS NOT NULL
BEGIN
    INSERT INTO events_fts (rowid, text, room, user)
    VALUES (new.seq, new.text, new.room, new.user);
END;

-- Index what was archived before this migration.
INSERT INTO events_fts (rowid, text, room, user)
SELECT seq, text, room, user FROM events WHERE text IS NOT NULL;
