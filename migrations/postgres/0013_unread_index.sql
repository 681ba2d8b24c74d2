-- A conversation's messages (kind 'message' only), in order, with what an
-- unread count asks of each (author, deleted): counting is an index-only
-- scan, whatever the messages' size.
CREATE INDEX messages_unread ON messages (conversation_id, position, user_id, deleted, kind)
    WHERE kind = 'message';
