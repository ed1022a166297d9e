-- Queue messages (or elements of one) that no consumer can process, with the reason.
CREATE TABLE IF NOT EXISTS dead_letters (
    id         BIGSERIAL PRIMARY KEY,
    queue      TEXT   NOT NULL,
    reason     TEXT   NOT NULL,
    payload    TEXT   NOT NULL,
    created_at BIGINT NOT NULL
);
