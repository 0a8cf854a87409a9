-- The delivery service: each live session's MLS group log (ciphertext and clear MLS framing only), the members'
-- leaves as their committers reported them, and the KeyPackage directory. Every column is in
-- audits/data-inventory.toml; a session's log goes with the session, or 7 days after it ended; KeyPackages when they
-- expire or with the account.
CREATE TABLE ds_groups (
    session_id     TEXT    PRIMARY KEY REFERENCES live_sessions (id) ON DELETE CASCADE,
    creator_user   TEXT    REFERENCES accounts (user_id) ON DELETE SET NULL,
    creator_device TEXT    NOT NULL,
    created_at     INTEGER NOT NULL
) STRICT;

-- One row per log entry, gapless per session. A NULL sender_device is the service's own proposal; a NULL user with
-- a device is an erased account.
CREATE TABLE ds_entries (
    session_id    TEXT    NOT NULL REFERENCES ds_groups (session_id) ON DELETE CASCADE,
    seq           INTEGER NOT NULL,
    epoch         INTEGER NOT NULL,
    kind          TEXT    NOT NULL CHECK (kind IN ('proposal', 'commit', 'application')),
    sender_user   TEXT    REFERENCES accounts (user_id) ON DELETE SET NULL,
    sender_device TEXT,
    mls           BLOB    NOT NULL,
    join_user     TEXT    REFERENCES accounts (user_id) ON DELETE SET NULL,
    join_device   TEXT,
    join_ref      BLOB,
    remove_user   TEXT    REFERENCES accounts (user_id) ON DELETE SET NULL,
    remove_device TEXT,
    welcome       BLOB,
    received_at   INTEGER NOT NULL,
    PRIMARY KEY (session_id, seq)
) STRICT;

CREATE TABLE ds_leaves (
    session_id TEXT    NOT NULL REFERENCES ds_groups (session_id) ON DELETE CASCADE,
    user_id    TEXT    NOT NULL REFERENCES accounts (user_id) ON DELETE CASCADE,
    device_id  TEXT    NOT NULL,
    leaf       INTEGER NOT NULL,
    PRIMARY KEY (session_id, user_id, device_id)
) STRICT;

-- Unused KeyPackages (public keys and a signed credential; no private key).
CREATE TABLE ds_key_packages (
    reference   BLOB    PRIMARY KEY,
    user_id     TEXT    NOT NULL REFERENCES accounts (user_id) ON DELETE CASCADE,
    device_id   TEXT    NOT NULL,
    key_package BLOB    NOT NULL,
    last_resort INTEGER NOT NULL CHECK (last_resort IN (0, 1)),
    not_after   INTEGER NOT NULL,
    uploaded_at INTEGER NOT NULL
) STRICT;
CREATE INDEX ds_key_packages_device ON ds_key_packages (user_id, device_id);

-- References of KeyPackages handed out, so they are never accepted again while they could still be valid.
CREATE TABLE ds_used_key_packages (
    reference BLOB    PRIMARY KEY,
    not_after INTEGER NOT NULL
) STRICT;
