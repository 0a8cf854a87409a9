-- The delivery service: each live session's MLS group log (ciphertext and clear MLS framing only), the members'
-- leaves as their committers reported them, and the KeyPackage directory. Every column is in
-- audits/data-inventory.toml; a session's log goes with the session, or 7 days after it ended; KeyPackages when they
-- expire or with the account.
CREATE TABLE ds_groups (
    session_id     TEXT    PRIMARY KEY REFERENCES live_sessions (id) ON DELETE CASCADE,
    creator_user   TEXT    REFERENCES accounts (user_id) ON DELETE SET NULL,
    creator_device TEXT    NOT NULL,
    created_at     BIGINT NOT NULL
);

-- One row per log entry, gapless per session. A NULL sender_device is the service's own proposal; a NULL user with
-- a device is an erased account.
CREATE TABLE ds_entries (
    session_id    TEXT    NOT NULL REFERENCES ds_groups (session_id) ON DELETE CASCADE,
    seq           BIGINT NOT NULL,
    epoch         BIGINT NOT NULL,
    kind          TEXT    NOT NULL CHECK (kind IN ('proposal', 'commit', 'application')),
    sender_user   TEXT    REFERENCES accounts (user_id) ON DELETE SET NULL,
    sender_device TEXT,
    mls           BYTEA    NOT NULL,
    join_user     TEXT    REFERENCES accounts (user_id) ON DELETE SET NULL,
    join_device   TEXT,
    join_ref      BYTEA,
    remove_user   TEXT    REFERENCES accounts (user_id) ON DELETE SET NULL,
    remove_device TEXT,
    welcome       BYTEA,
    received_at   BIGINT NOT NULL,
    PRIMARY KEY (session_id, seq)
);

CREATE TABLE ds_leaves (
    session_id TEXT    NOT NULL REFERENCES ds_groups (session_id) ON DELETE CASCADE,
    user_id    TEXT    NOT NULL REFERENCES accounts (user_id) ON DELETE CASCADE,
    device_id  TEXT    NOT NULL,
    leaf       BIGINT NOT NULL,
    PRIMARY KEY (session_id, user_id, device_id)
);

-- Unused KeyPackages (public keys and a signed credential; no private key).
CREATE TABLE ds_key_packages (
    reference   BYTEA    PRIMARY KEY,
    user_id     TEXT    NOT NULL REFERENCES accounts (user_id) ON DELETE CASCADE,
    device_id   TEXT    NOT NULL,
    key_package BYTEA    NOT NULL,
    last_resort BOOLEAN NOT NULL,
    not_after   BIGINT NOT NULL,
    uploaded_at BIGINT NOT NULL
);
CREATE INDEX ds_key_packages_device ON ds_key_packages (user_id, device_id);

-- References of KeyPackages handed out, so they are never accepted again while they could still be valid.
CREATE TABLE ds_used_key_packages (
    reference BYTEA    PRIMARY KEY,
    not_after BIGINT NOT NULL
);
