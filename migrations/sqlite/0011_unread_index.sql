-- A conversation's live messages (kind 'message', not deleted), in order,
-- with what an unread count asks of each (author): counting reads this
-- index alone. `deleted` sits after `content` in each row, so reading it
-- there walked every long message's overflow pages (16 KiB of content is
-- four pages), and a page of conversations cost milliseconds per thousand
-- unread messages. A deleted message leaves the index, so deletions never
-- take places in the count's window (see `store::conversations`).
CREATE INDEX messages_unread ON messages (conversation_id, position, user_id, deleted, kind)
    WHERE kind = 'message' AND deleted = 0;
