-- A conversation's messages (kind 'message' only), in order, with what an
-- unread count asks of each (author, deleted): counting reads this index
-- alone. `deleted` sits after `content` in each row, so reading it there
-- walked every long message's overflow pages (16 KiB of content is four
-- pages), and a page of conversations cost milliseconds per thousand
-- unread messages.
CREATE INDEX messages_unread ON messages (conversation_id, position, user_id, deleted, kind)
    WHERE kind = 'message';
