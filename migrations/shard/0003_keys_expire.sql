-- An idempotency key is remembered for its lifetime (inventory.idempotency_ttl_secs);
-- an order claimed after that under a reused key is a new order and must be stored,
-- never dropped as a duplicate. Duplicates of one order are caught by its id.
DROP INDEX IF EXISTS orders_one_per_key;
CREATE INDEX IF NOT EXISTS orders_by_key ON orders (user_id, product_id, idempotency_key);
