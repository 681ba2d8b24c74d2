-- Conversations that change: membership changes and read receipts are
-- events at stream positions, in the same table and sequence as messages.
-- `kind` says which; `content` holds a message's text, or the event's own
-- encoding (see `store`).
ALTER TABLE messages ADD COLUMN kind TEXT NOT NULL DEFAULT 'message';
-- The conversation index carries the kind, so "messages only" is decided
-- in the index: the column itself sits after `content` in each row, and
-- reading it there would walk a long message's overflow pages.
DROP INDEX messages_by_conversation;
CREATE INDEX messages_by_conversation ON messages (conversation_id, position, kind);

-- Who may remove others from a group; NULL for pairs and older groups.
ALTER TABLE conversations ADD COLUMN creator_id TEXT;

-- The position from which the current member sees the conversation.
ALTER TABLE participants ADD COLUMN joined_at BIGINT NOT NULL DEFAULT 0;

-- Every interval of membership, by position: a user sees the events at
-- positions joined_at ..= left_at (open while left_at is NULL). A user who
-- leaves and comes back has two rows. `participants` stays the current
-- membership.
CREATE TABLE memberships (
    conversation_id  TEXT NOT NULL REFERENCES conversations (id),
    user_id          TEXT NOT NULL,
    joined_at        BIGINT NOT NULL,
    left_at          BIGINT,
    PRIMARY KEY (conversation_id, user_id, joined_at)
);
CREATE INDEX memberships_by_user ON memberships (user_id, conversation_id);
INSERT INTO memberships (conversation_id, user_id, joined_at)
    SELECT conversation_id, user_id, 0 FROM participants;

-- A message from someone who is not a participant when it commits is
-- refused inside its own transaction, whichever node cached what: this is
-- what makes a removal exact for sending. The writer holds the stream_head
-- lock by then, so the check sees every membership change committed before
-- its position.
CREATE FUNCTION herald_check_sender() RETURNS trigger AS $$
BEGIN
    IF NEW.kind = 'message' AND NOT EXISTS (
        SELECT 1 FROM participants
        WHERE conversation_id = NEW.conversation_id AND user_id = NEW.user_id) THEN
        RAISE EXCEPTION 'herald: the sender is not a participant';
    END IF;
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER messages_from_participants BEFORE INSERT ON messages
    FOR EACH ROW EXECUTE FUNCTION herald_check_sender();
