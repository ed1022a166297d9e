-- What a sale's orders are accepted on: the unit price and the payment window in
-- seconds (0: none).
ALTER TABLE sales ADD COLUMN price INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sales ADD COLUMN window_secs INTEGER NOT NULL DEFAULT 0;
