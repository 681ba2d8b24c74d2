-- Webhooks: where events go out, and how far each has been delivered.
-- `delivered_to` is the last position delivered (a 2xx answered); `batch_until`
-- is the last position of the batch in flight, so a retry sends the same
-- batch under the same webhook-id; one node delivers a webhook at a time,
-- the one whose lease (`lease_owner` until `lease_until`) holds.
CREATE TABLE webhooks (
    id             TEXT PRIMARY KEY NOT NULL,
    url            TEXT NOT NULL,
    secret         TEXT NOT NULL,
    kinds          TEXT NOT NULL,
    delivered_to   INTEGER NOT NULL,
    batch_until    INTEGER,
    failures       INTEGER NOT NULL DEFAULT 0,
    next_attempt   INTEGER NOT NULL DEFAULT 0,
    last_error     TEXT NOT NULL DEFAULT '',
    deliveries     INTEGER NOT NULL DEFAULT 0,
    disabled       INTEGER NOT NULL DEFAULT 0,
    lease_owner    TEXT,
    lease_until    INTEGER NOT NULL DEFAULT 0,
    created_at     INTEGER NOT NULL
);
