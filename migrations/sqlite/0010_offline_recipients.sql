-- Who of a message's conversation had no open stream on any node when it
-- was sent (a JSON array of user ids): the firehose and webhooks carry it,
-- so the application can push to exactly those.
ALTER TABLE messages ADD COLUMN offline TEXT;
