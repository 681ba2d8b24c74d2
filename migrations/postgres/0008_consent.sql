-- Consent. A user's presence is shared only through conversations they took
-- part in (created, sent or read in): being added by someone else shares
-- nothing. `took_part` says so per membership.
ALTER TABLE participants ADD COLUMN took_part INTEGER NOT NULL DEFAULT 0;
-- Who already took part: each reads its own rows once (the senders in one
-- pass over messages), never a scan per participant.
UPDATE participants SET took_part = 1 WHERE last_read_position > joined_at;
UPDATE participants SET took_part = 1
    WHERE user_id = (SELECT creator_id FROM conversations c WHERE c.id = participants.conversation_id);
UPDATE participants SET took_part = 1
    WHERE (conversation_id, user_id) IN
        (SELECT DISTINCT conversation_id, user_id FROM messages WHERE kind = 'message');

-- Sending is taking part: set by the insert's own check, whichever node
-- sends (it has just found the sender's row).
CREATE OR REPLACE FUNCTION herald_check_sender() RETURNS trigger AS $$
BEGIN
    IF NEW.kind = 'message' THEN
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

-- Blocks: `blocker` no longer hears from, or is added by, `blocked`.
CREATE TABLE blocks (
    blocker     TEXT NOT NULL,
    blocked     TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (blocker, blocked)
);
CREATE INDEX blocks_by_blocked ON blocks (blocked, blocker);
