-- The payment window: an order of a sale with one waits in `awaiting_payment` until
-- it is paid (`completed`, with the payment's id) or its window lapses (`expired`,
-- its units going back to the sale through `restocks`). Each order records what it
-- costs as it was accepted. SQLite cannot change a CHECK: the table is made anew.
CREATE TABLE orders_new (
    order_id        TEXT PRIMARY KEY,
    user_id         TEXT    NOT NULL,
    product_id      INTEGER NOT NULL,
    quantity        INTEGER NOT NULL CHECK (quantity > 0),
    idempotency_key TEXT    NOT NULL,
    status          TEXT    NOT NULL
        CHECK (status IN ('pending', 'awaiting_payment', 'completed', 'cancelled', 'expired')),
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    amount_cents    INTEGER,
    pay_by          INTEGER,
    payment_id      TEXT
);
INSERT INTO orders_new (order_id, user_id, product_id, quantity, idempotency_key, status, created_at, updated_at)
    SELECT order_id, user_id, product_id, quantity, idempotency_key, status, created_at, updated_at FROM orders;
DROP TABLE orders;
ALTER TABLE orders_new RENAME TO orders;
CREATE INDEX IF NOT EXISTS orders_by_user ON orders (user_id, created_at DESC);
CREATE INDEX IF NOT EXISTS orders_by_product ON orders (product_id, status);
CREATE INDEX IF NOT EXISTS orders_by_key ON orders (user_id, product_id, idempotency_key);
-- What the expiry sweep reads: only the orders still awaiting payment, by deadline.
CREATE INDEX IF NOT EXISTS orders_awaiting_payment ON orders (pay_by)
    WHERE status = 'awaiting_payment';
-- Why a restock is due: a cancellation's own request returns its units (the
-- reconciler only after a grace period), an expiry's are the reconciler's at once.
ALTER TABLE restocks ADD COLUMN reason TEXT NOT NULL DEFAULT 'cancelled';
-- A buyer is told several things of one order (confirmed, payment due, payment
-- lapsed): each delivery is recorded once per kind.
CREATE TABLE notifications_new (
    order_id     TEXT    NOT NULL,
    kind         TEXT    NOT NULL DEFAULT 'confirmed',
    user_id      TEXT    NOT NULL,
    channel      TEXT    NOT NULL,
    delivered_at INTEGER NOT NULL,
    PRIMARY KEY (order_id, kind)
);
INSERT INTO notifications_new (order_id, user_id, channel, delivered_at)
    SELECT order_id, user_id, channel, delivered_at FROM notifications;
DROP TABLE notifications;
ALTER TABLE notifications_new RENAME TO notifications;
