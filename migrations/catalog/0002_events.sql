-- Domain events of products, written in the same transaction as the change.
CREATE TABLE IF NOT EXISTS outbox (
    seq         BIGSERIAL PRIMARY KEY,
    event_id    TEXT   NOT NULL UNIQUE,
    topic       TEXT   NOT NULL,
    key         TEXT   NOT NULL,
    payload     TEXT   NOT NULL,
    traceparent TEXT,
    created_at  BIGINT NOT NULL,
    sent_at     BIGINT
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (seq) WHERE sent_at IS NULL;

-- What the event consumers build. Each consumer applies an event once: its id goes
-- into processed_events in the same transaction as the effect (kept for a week; a
-- redelivery comes within seconds, from the last offset commit).
CREATE TABLE IF NOT EXISTS processed_events (
    consumer     TEXT NOT NULL,
    event_id     TEXT NOT NULL,
    processed_at BIGINT NOT NULL,
    PRIMARY KEY (consumer, event_id)
);
CREATE INDEX IF NOT EXISTS processed_events_age ON processed_events (consumer, processed_at);

-- Units sold and cancelled per product per minute (analytics).
CREATE TABLE IF NOT EXISTS sales_per_minute (
    product_id BIGINT NOT NULL,
    minute     BIGINT NOT NULL,
    sold       BIGINT NOT NULL,
    cancelled  BIGINT NOT NULL,
    PRIMARY KEY (product_id, minute)
);

-- Orders and units per user and per product (reporting).
CREATE TABLE IF NOT EXISTS report_users (
    user_id   TEXT PRIMARY KEY,
    orders    BIGINT NOT NULL,
    units     BIGINT NOT NULL,
    cancelled BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS report_products (
    product_id BIGINT PRIMARY KEY,
    orders     BIGINT NOT NULL,
    units      BIGINT NOT NULL,
    cancelled  BIGINT NOT NULL
);
