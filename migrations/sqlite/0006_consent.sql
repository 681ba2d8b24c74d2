-- Consent. A user's presence is shared only through conversations they took
-- part in (created, sent or read in): being added by someone else shares
-- nothing. `took_part` says so per membership.
ALTER TABLE participants ADD COLUMN took_part INTEGER NOT NULL DEFAULT 0;
UPDATE participants SET took_part = 1
    WHERE last_read_position > joined_at
       OR user_id = (SELECT creator_id FROM conversations c WHERE c.id = participants.conversation_id)
       OR EXISTS (SELECT 1 FROM messages m WHERE m.conversation_id = participants.conversation_id
                  AND m.user_id = participants.user_id AND m.kind = 'message');

-- Sending is taking part: set by the insert itself, whichever node sends.
CREATE TRIGGER messages_take_part AFTER INSERT ON messages
    WHEN NEW.kind = 'message'
BEGIN
    UPDATE participants SET took_part = 1
    WHERE conversation_id = NEW.conversation_id AND user_id = NEW.user_id AND took_part = 0;
END;

-- Blocks: `blocker` no longer hears from, or is added by, `blocked`.
CREATE TABLE blocks (
    blocker     TEXT NOT NULL,
    blocked     TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (blocker, blocked)
);
CREATE INDEX blocks_by_blocked ON blocks (blocked, blocker);
