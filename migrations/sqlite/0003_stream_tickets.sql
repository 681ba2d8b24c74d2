-- Stream tickets are single-use across every node sharing the database:
-- a ticket's id is recorded when it opens a stream, and kept until the
-- ticket expires.
CREATE TABLE redeemed_tickets (
    id          TEXT PRIMARY KEY NOT NULL,
    expires_at  INTEGER NOT NULL
);
