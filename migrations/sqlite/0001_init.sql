-- Conversations, their participants (with each one's read mark) and messages.
-- `position` is the stream position: assigned from `stream_head` inside the
-- inserting transaction, so positions are gap-free and in commit order.

CREATE TABLE conversations (
    id          TEXT PRIMARY KEY NOT NULL,
    -- "alice\nbob" (sorted) for a conversation of exactly two users, so that
    -- pairs are found-or-created; NULL for groups.
    pair_key    TEXT UNIQUE,
    created_at  INTEGER NOT NULL
);

CREATE TABLE participants (
    conversation_id     TEXT NOT NULL REFERENCES conversations (id),
    user_id             TEXT NOT NULL,
    last_read_position  INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (conversation_id, user_id)
);
CREATE INDEX participants_by_user ON participants (user_id, conversation_id);

CREATE TABLE messages (
    position         INTEGER PRIMARY KEY NOT NULL,
    conversation_id  TEXT NOT NULL REFERENCES conversations (id),
    user_id          TEXT NOT NULL,
    content          TEXT NOT NULL,
    created_at       INTEGER NOT NULL
);
CREATE INDEX messages_by_conversation ON messages (conversation_id, position);

CREATE TABLE stream_head (
    id        INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
    position  INTEGER NOT NULL
);
INSERT INTO stream_head (id, position) VALUES (1, 0);
