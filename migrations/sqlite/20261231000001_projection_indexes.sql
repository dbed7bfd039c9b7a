-- What folding a deletion by a moderator asks: the latest applied role event of one user
-- in one room before a moment. Without this index every such question read the whole
-- membership log (`archiver rebuild` asks it once per deletion by someone else).
CREATE INDEX membership_roles ON membership (room, member, at, id)
    WHERE type IN ('role_granted', 'role_revoked');
