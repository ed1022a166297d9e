-- A sale's payment window in seconds (1 to 86,400); NULL: no payment step.
ALTER TABLE flash_sales ADD COLUMN payment_window_secs INTEGER
    CHECK (payment_window_secs BETWEEN 1 AND 86400);
