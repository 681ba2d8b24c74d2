-- Retry-safe publishing: a client may name its message with a key of its
-- own; the same user sending the same key again gets the original message.
ALTER TABLE messages ADD COLUMN client_message_id TEXT;
CREATE UNIQUE INDEX messages_by_client_key ON messages (user_id, client_message_id)
    WHERE client_message_id IS NOT NULL;
