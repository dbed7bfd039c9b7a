-- The archive on PostgreSQL: the same events as the SQLite archive (migrations/sqlite/),
-- with what PostgreSQL does natively. Every event exactly once (idempotent by id), in
-- archive order (seq); times as timestamptz; full-text search from a generated tsvector
-- column with a GIN index; the per-room summary kept by one statement-level trigger per
-- batch. Several archivers may share this database (see `rooms_summarize`).

-- Full-text search: words as written, case-folded, accents removed, no stemming and no stop
-- words, as SQLite's `unicode61 remove_diacritics 2` does. `unaccent` is a trusted
-- extension (PostgreSQL 13+): the database owner may create it. A configuration of our own
-- is immutable, so it can feed a generated column (the `unaccent()` function cannot).
CREATE EXTENSION IF NOT EXISTS unaccent;
CREATE TEXT SEARCH CONFIGURATION chat_search (COPY = simple);
ALTER TEXT SEARCH CONFIGURATION chat_search
    ALTER MAPPING FOR asciiword, asciihword, hword_asciipart, word, hword, hword_part,
                      numword, numhword, hword_numpart
    WITH unaccent, simple;

CREATE TABLE events (
    seq         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id          text        NOT NULL UNIQUE,
    room        text        NOT NULL,
    type        text        NOT NULL CHECK (type IN ('message', 'join', 'leave')),
    "user"      text        NOT NULL,
    text        text,
    at          timestamptz NOT NULL,
    gateway     text        NOT NULL,
    archived_at timestamptz NOT NULL DEFAULT now(),
    -- Only messages have text; user and room names are never searched as text.
    words       tsvector    GENERATED ALWAYS AS (to_tsvector('chat_search', coalesce(text, ''))) STORED
);

CREATE INDEX events_by_room ON events (room, seq);
CREATE INDEX events_words ON events USING gin (words);

-- first_seq/last_seq say which archived event the times and last_id come from, so that two
-- archivers committing batches of the same room in either order leave the same summary.
CREATE TABLE rooms (
    room      text        PRIMARY KEY,
    events    bigint      NOT NULL,
    first_at  timestamptz NOT NULL,
    first_seq bigint      NOT NULL,
    last_at   timestamptz NOT NULL,
    last_id   text        NOT NULL,
    last_seq  bigint      NOT NULL
);

-- One upsert per room per batch, from the rows the INSERT really added (its transition
-- table: repeats skipped by ON CONFLICT DO NOTHING are not in it, so counts stay exact).
-- Rooms are upserted in name order so that concurrent batches lock them in the same order
-- and cannot deadlock.
CREATE FUNCTION rooms_summarize() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO rooms (room, events, first_at, first_seq, last_at, last_id, last_seq)
    SELECT room, count(*),
           (array_agg(at ORDER BY seq))[1], min(seq),
           (array_agg(at ORDER BY seq DESC))[1], (array_agg(id ORDER BY seq DESC))[1], max(seq)
    FROM new_events
    GROUP BY room
    ORDER BY room
    ON CONFLICT (room) DO UPDATE SET
        events    = rooms.events + excluded.events,
        first_at  = CASE WHEN excluded.first_seq < rooms.first_seq
                         THEN excluded.first_at ELSE rooms.first_at END,
        first_seq = least(rooms.first_seq, excluded.first_seq),
        last_at   = CASE WHEN excluded.last_seq > rooms.last_seq
                         THEN excluded.last_at ELSE rooms.last_at END,
        last_id   = CASE WHEN excluded.last_seq > rooms.last_seq
                         THEN excluded.last_id ELSE rooms.last_id END,
        last_seq  = greatest(rooms.last_seq, excluded.last_seq);
    RETURN NULL;
END;
$$;

CREATE TRIGGER events_rooms_insert AFTER INSERT ON events
REFERENCING NEW TABLE AS new_events
FOR EACH STATEMENT EXECUTE FUNCTION rooms_summarize();
