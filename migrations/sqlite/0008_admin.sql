-- The application behind herald: system messages, service keys, moderation.

-- A message the application published (Admin.Publish): its sender need
-- not be a participant, and no user can set it.
ALTER TABLE messages ADD COLUMN system INTEGER NOT NULL DEFAULT 0;
DROP TRIGGER messages_from_participants;
CREATE TRIGGER messages_from_participants BEFORE INSERT ON messages
    WHEN NEW.kind = 'message' AND NEW.system = 0 AND NOT EXISTS (
        SELECT 1 FROM participants
        WHERE conversation_id = NEW.conversation_id AND user_id = NEW.user_id)
BEGIN
    SELECT RAISE(ABORT, 'herald: the sender is not a participant');
END;

-- Service keys: only the SHA-256 of a key is kept (the key is shown once).
CREATE TABLE service_keys (
    name        TEXT PRIMARY KEY NOT NULL,
    hash        TEXT NOT NULL UNIQUE,
    scopes      TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER
);

-- Moderation, as a log every node reads in order (`seq`): bans, unbans,
-- token revocations and disconnections. A node folds it into what it
-- checks in memory, and applies each new row once.
CREATE TABLE moderation (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id        TEXT NOT NULL,
    action         TEXT NOT NULL,
    until_at       INTEGER,
    issued_before  INTEGER,
    reason         TEXT NOT NULL DEFAULT '',
    actor          TEXT NOT NULL,
    created_at     INTEGER NOT NULL
);
