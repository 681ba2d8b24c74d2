-- Messages that change: edits, deletions, reactions and replies. A change
-- is an event at a position of its own in `messages` (kind 'edit',
-- 'delete' or 'reaction', `target` the message it concerns); the message's
-- own row holds its current state, the only copy of its content, so a
-- deletion that empties it erases the content (secure_delete, set on every
-- connection, overwrites the freed bytes in the file too).
ALTER TABLE messages ADD COLUMN edited_at INTEGER;
ALTER TABLE messages ADD COLUMN deleted INTEGER NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN reply_to INTEGER;
ALTER TABLE messages ADD COLUMN target INTEGER;

-- One row per user and emoji on a message.
CREATE TABLE reactions (
    message_position  INTEGER NOT NULL,
    emoji             TEXT NOT NULL,
    user_id           TEXT NOT NULL,
    created_at        INTEGER NOT NULL,
    PRIMARY KEY (message_position, emoji, user_id)
);

-- The position of a message's last edit or deletion: a replay to someone
-- whose membership ended before it withholds what changed, and an edit
-- superseded by a later change replays without content.
ALTER TABLE messages ADD COLUMN changed_at INTEGER;
