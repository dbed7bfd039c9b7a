-- Edits, deletions and reactions (issue 10); the same as the SQLite migration of the same
-- name: the new kinds and their fields in `events`, and the message projection beside it.
ALTER TABLE events DROP CONSTRAINT events_type_check;
ALTER TABLE events ADD CONSTRAINT events_type_check
    CHECK (type IN ('message', 'join', 'leave', 'edit', 'delete', 'react'));
-- The message an edit, delete or react acts on, and their own fields. (Nullable columns
-- without a default: added without rewriting the table.)
ALTER TABLE events ADD COLUMN target text;
ALTER TABLE events ADD COLUMN reason text;
ALTER TABLE events ADD COLUMN key text;
ALTER TABLE events ADD COLUMN op text;
CREATE INDEX events_by_target ON events (target) WHERE target IS NOT NULL;

-- The message projection: one row per message that edits, deletions or reactions acted on.
-- `text` is the current text, NULL once deleted; `reactions` the JSON array history shows.
-- A deletion also sets `events.text` to NULL, which updates the generated `words` column,
-- so the message leaves the search index in the same statement.
CREATE TABLE message_state (
    id        text        PRIMARY KEY,
    room      text        NOT NULL,
    text      text,
    edits     integer     NOT NULL,
    edited_at timestamptz,
    deleted   boolean     NOT NULL,
    reactions text        NOT NULL
);

-- Roles: who moderates which created room, folded from role_granted / role_revoked.
ALTER TABLE membership ADD COLUMN role text;

CREATE TABLE access_roles (
    room   text NOT NULL,
    "user" text NOT NULL,
    role   text NOT NULL,
    PRIMARY KEY (room, "user", role)
);
