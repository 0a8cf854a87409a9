-- Pseudonymous accounts. Every column is listed in audits/data-inventory.toml.
CREATE TABLE accounts (
    user_id       TEXT   NOT NULL PRIMARY KEY,   -- 128 random bits, hex
    email_key_id  TEXT   NOT NULL,               -- which pepper key made email_hmac
    email_hmac    BYTEA  NOT NULL UNIQUE,        -- HMAC-SHA256(pepper, normalized email)
    password_hash TEXT   NOT NULL,               -- argon2id PHC string
    recovery_hash BYTEA  NOT NULL,               -- SHA-256 of the recovery code
    created_at    BIGINT NOT NULL,               -- unix seconds
    updated_at    BIGINT NOT NULL                -- unix seconds, last credential change
);

CREATE TABLE sessions (
    token_hash BYTEA  NOT NULL PRIMARY KEY,      -- SHA-256 of the bearer token
    user_id    TEXT   NOT NULL REFERENCES accounts (user_id) ON DELETE CASCADE,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX sessions_user_id ON sessions (user_id);
CREATE INDEX sessions_expires_at ON sessions (expires_at);

CREATE TABLE erasures (
    user_id   TEXT   NOT NULL PRIMARY KEY,       -- the erased pseudonymous id, nothing else
    erased_at BIGINT NOT NULL
);
