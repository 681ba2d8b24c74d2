-- The application behind herald: system messages, service keys, moderation.

-- A message the application published (Admin.Publish): its sender need
-- not be a participant, and no user can set it.
ALTER TABLE messages ADD COLUMN system INTEGER NOT NULL DEFAULT 0;
CREATE OR REPLACE FUNCTION herald_check_sender() RETURNS trigger AS $$
BEGIN
    IF NEW.kind = 'message' AND NEW.system = 0 THEN
        IF NOT EXISTS (
            SELECT 1 FROM participants
            WHERE conversation_id = NEW.conversation_id AND user_id = NEW.user_id) THEN
            RAISE EXCEPTION 'herald: the sender is not a participant';
        END IF;
        UPDATE participants SET took_part = 1
        WHERE conversation_id = NEW.conversation_id AND user_id = NEW.user_id AND took_part = 0;
    END IF;
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

-- Service keys: only the SHA-256 of a key is kept (the key is shown once).
CREATE TABLE service_keys (
    name        TEXT PRIMARY KEY NOT NULL,
    hash        TEXT NOT NULL UNIQUE,
    scopes      TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    revoked_at  BIGINT
);

-- Moderation, as a log every node reads in order (`seq`): bans, unbans,
-- token revocations and disconnections. A node folds it into what it
-- checks in memory, and applies each new row once. Writers lock the table
-- (moderation is rare), so rows commit in `seq` order and a reader that
-- has seen `seq` n has seen every row before it.
CREATE TABLE moderation (
    seq            BIGSERIAL PRIMARY KEY,
    user_id        TEXT NOT NULL,
    action         TEXT NOT NULL,
    until_at       BIGINT,
    issued_before  BIGINT,
    reason         TEXT NOT NULL DEFAULT '',
    actor          TEXT NOT NULL,
    created_at     BIGINT NOT NULL
);
