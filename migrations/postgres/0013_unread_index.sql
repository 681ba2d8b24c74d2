-- A conversation's live messages (kind 'message', not deleted), in order,
-- with what an unread count asks of each (author): counting is an
-- index-only scan, whatever the messages' size. A deleted message leaves
-- the index, so deletions never take places in the count's window.
CREATE INDEX messages_unread ON messages (conversation_id, position, user_id, deleted, kind)
    WHERE kind = 'message' AND deleted = 0;
