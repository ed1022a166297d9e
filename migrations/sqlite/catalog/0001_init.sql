-- The catalog (embedded mode): products, their flash sales, login credentials, secrets.
CREATE TABLE IF NOT EXISTS products (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT    NOT NULL,
    price_cents INTEGER NOT NULL CHECK (price_cents >= 0),
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS flash_sales (
    product_id     INTEGER PRIMARY KEY REFERENCES products (id),
    stock          INTEGER NOT NULL CHECK (stock >= 0),
    per_user_limit INTEGER NOT NULL CHECK (per_user_limit > 0),
    starts_at      INTEGER,
    ends_at        INTEGER,
    updated_at     INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS credentials (
    email         TEXT PRIMARY KEY,
    user_id       TEXT    NOT NULL UNIQUE,
    password_hash TEXT    NOT NULL,
    created_at    INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS secrets (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
