-- The reporting consumer counts orders that expired unpaid (OrderExpired).
ALTER TABLE report_users ADD COLUMN IF NOT EXISTS expired BIGINT NOT NULL DEFAULT 0;
ALTER TABLE report_products ADD COLUMN IF NOT EXISTS expired BIGINT NOT NULL DEFAULT 0;
