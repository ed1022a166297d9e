-- The fleet registry: one row per running pod, heartbeated; a clean stop deletes it.
CREATE TABLE IF NOT EXISTS pods (
    id           TEXT    PRIMARY KEY,
    role         TEXT    NOT NULL,
    version      TEXT    NOT NULL,
    admin_url    TEXT    NOT NULL,
    started_at   INTEGER NOT NULL,
    heartbeat_at INTEGER NOT NULL
);
