-- Identities and private rooms (event schema version 2); the same as the SQLite migration
-- of the same name.
--
-- Events now say who vouched for their speaker: `name` is a verified user's display name,
-- `guest` marks a self-chosen name. Every event archived before this migration was a guest's
-- (there were no tokens), so existing rows are marked as guests; new rows always set both.
-- (A constant default: PostgreSQL adds the column without rewriting the table.)
ALTER TABLE events ADD COLUMN name text;
ALTER TABLE events ADD COLUMN guest boolean NOT NULL DEFAULT true;

-- The membership events, every one exactly once in archive order (seq): the log the
-- access-control projection is rebuilt from and that gateways replay at start. No CHECK on
-- `type`, so a later membership kind needs no migration. `applied` records whether the
-- rules (chat_core::access::decide) let the event change anything when it was archived.
CREATE TABLE membership (
    seq         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id          text        NOT NULL UNIQUE,
    room        text        NOT NULL,
    type        text        NOT NULL,
    "user"      text        NOT NULL,
    name        text,
    guest       boolean     NOT NULL,
    visibility  text,
    member      text,
    at          timestamptz NOT NULL,
    gateway     text        NOT NULL,
    applied     boolean     NOT NULL,
    archived_at timestamptz NOT NULL DEFAULT now()
);

-- The projection: every created room, and the members of private ones (the owner included).
CREATE TABLE access_rooms (
    room       text PRIMARY KEY,
    visibility text NOT NULL CHECK (visibility IN ('public', 'private')),
    owner      text NOT NULL
);

CREATE TABLE access_members (
    room   text NOT NULL,
    "user" text NOT NULL,
    PRIMARY KEY (room, "user")
);

CREATE INDEX access_members_by_user ON access_members ("user", room);
