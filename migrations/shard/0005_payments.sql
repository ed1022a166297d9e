-- The payment window: an order of a sale with one waits in `awaiting_payment` until
-- it is paid (`completed`, with the payment's id) or its window lapses (`expired`,
-- its units going back to the sale through `restocks`). Each order records what it
-- costs as it was accepted.
ALTER TABLE orders DROP CONSTRAINT IF EXISTS orders_status_check;
ALTER TABLE orders ADD CONSTRAINT orders_status_check
    CHECK (status IN ('pending', 'awaiting_payment', 'completed', 'cancelled', 'expired'));
ALTER TABLE orders ADD COLUMN IF NOT EXISTS amount_cents BIGINT;
ALTER TABLE orders ADD COLUMN IF NOT EXISTS pay_by BIGINT;
ALTER TABLE orders ADD COLUMN IF NOT EXISTS payment_id TEXT;
-- What the expiry sweep reads: only the orders still awaiting payment, by deadline.
CREATE INDEX IF NOT EXISTS orders_awaiting_payment ON orders (pay_by)
    WHERE status = 'awaiting_payment';
-- Why a restock is due: a cancellation's own request returns its units (the
-- reconciler only after a grace period), an expiry's are the reconciler's at once.
ALTER TABLE restocks ADD COLUMN IF NOT EXISTS reason TEXT NOT NULL DEFAULT 'cancelled';
-- A buyer is told several things of one order (confirmed, payment due, payment
-- lapsed): each delivery is recorded once per kind.
ALTER TABLE notifications ADD COLUMN IF NOT EXISTS kind TEXT NOT NULL DEFAULT 'confirmed';
ALTER TABLE notifications DROP CONSTRAINT IF EXISTS notifications_pkey;
ALTER TABLE notifications ADD PRIMARY KEY (order_id, kind);
