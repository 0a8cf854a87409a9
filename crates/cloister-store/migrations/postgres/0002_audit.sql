-- The tamper-evident audit log (cloister-audit) and platform roles. Every column is in audits/data-inventory.toml.
CREATE TABLE audit_entries (
    seq   BIGINT NOT NULL PRIMARY KEY,  -- 0-based leaf index in the Merkle tree
    entry BYTEA  NOT NULL               -- the exact JSON bytes hashed into the tree (metadata only)
);

CREATE TABLE audit_checkpoints (
    tree_size BIGINT NOT NULL PRIMARY KEY,  -- entries covered
    note      TEXT   NOT NULL,              -- the signed checkpoint note (origin, size, root, time)
    signature TEXT   NOT NULL               -- base64 Ed25519 signature over note
);

CREATE TABLE platform_roles (
    user_id    TEXT   NOT NULL REFERENCES accounts (user_id) ON DELETE CASCADE,
    role       TEXT   NOT NULL,             -- 'reviewer'
    granted_at BIGINT NOT NULL,
    PRIMARY KEY (user_id, role)
);
