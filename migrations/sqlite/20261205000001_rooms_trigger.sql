-- The per-room summary is kept by the database itself, one trigger run per archived event,
-- so that a whole batch is archived by a single INSERT statement (the archiver's SQLite
-- connection runs on its own thread, and every statement is a round trip to it). Skipped
-- duplicates (ON CONFLICT DO NOTHING) do not fire the trigger, so counts stay exact.
CREATE TRIGGER events_rooms_insert AFTER INSERT ON events
BEGIN
    INSERT INTO rooms (room, events, first_at, last_at, last_id)
    VALUES (new.room, 1, new.at, new.at, new.id)
    ON CONFLICT (room) DO UPDATE SET events = events + 1,
        last_at = excluded.last_at, last_id = excluded.last_id;
END;
