-- Domain events of this shard's orders and users, written in the same transaction as
-- the change they describe; the shard's relay publishes them and marks them sent.
CREATE TABLE IF NOT EXISTS outbox (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id    TEXT   NOT NULL UNIQUE,
    topic       TEXT   NOT NULL,
    key         TEXT   NOT NULL,
    payload     TEXT   NOT NULL,
    traceparent TEXT,
    created_at  INTEGER NOT NULL,
    sent_at     INTEGER
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (seq) WHERE sent_at IS NULL;

ALTER TABLE users ADD COLUMN display_name TEXT;
