-- The catalog: products, their flash sales, login credentials and shared secrets.
CREATE TABLE IF NOT EXISTS products (
    id          BIGSERIAL PRIMARY KEY,
    name        TEXT   NOT NULL,
    price_cents BIGINT NOT NULL CHECK (price_cents >= 0),
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);

CREATE TABLE IF NOT EXISTS flash_sales (
    product_id     BIGINT PRIMARY KEY REFERENCES products (id),
    stock          BIGINT NOT NULL CHECK (stock >= 0),
    per_user_limit BIGINT NOT NULL CHECK (per_user_limit > 0),
    starts_at      BIGINT,
    ends_at        BIGINT,
    updated_at     BIGINT NOT NULL
);

-- Users live on their shard; this is only the e-mail directory used to log in.
CREATE TABLE IF NOT EXISTS credentials (
    email         TEXT PRIMARY KEY,
    user_id       TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    created_at    BIGINT NOT NULL
);

CREATE TABLE IF NOT EXISTS secrets (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
