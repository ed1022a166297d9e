-- One order shard (embedded mode): the users whose id hashes here and their orders.
CREATE TABLE IF NOT EXISTS users (
    user_id    TEXT PRIMARY KEY,
    email      TEXT    NOT NULL,
    created_at INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS orders (
    order_id        TEXT PRIMARY KEY,
    user_id         TEXT    NOT NULL,
    product_id      INTEGER NOT NULL,
    quantity        INTEGER NOT NULL CHECK (quantity > 0),
    idempotency_key TEXT    NOT NULL,
    status          TEXT    NOT NULL CHECK (status IN ('pending', 'completed', 'cancelled')),
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);

CREATE UNIQUE INDEX IF NOT EXISTS orders_one_per_key
    ON orders (user_id, product_id, idempotency_key) WHERE status <> 'cancelled';
CREATE INDEX IF NOT EXISTS orders_by_user ON orders (user_id, created_at DESC);
CREATE INDEX IF NOT EXISTS orders_by_product ON orders (product_id, status);

CREATE TABLE IF NOT EXISTS notifications (
    order_id     TEXT PRIMARY KEY,
    user_id      TEXT    NOT NULL,
    channel      TEXT    NOT NULL,
    delivered_at INTEGER NOT NULL
);
