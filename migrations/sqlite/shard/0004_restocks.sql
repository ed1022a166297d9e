-- Units of a cancelled order still to be given back to its sale: written in the
-- cancellation's transaction, removed once the inventory partition has them back, so
-- a restock cut off by a failure is finished by the reconciler.
CREATE TABLE IF NOT EXISTS restocks (
    order_id   TEXT   PRIMARY KEY,
    user_id    TEXT   NOT NULL,
    product_id INTEGER NOT NULL,
    quantity   INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
