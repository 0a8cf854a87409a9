-- A teacher's single-use invitations to a course. Every column is in audits/data-inventory.toml.
CREATE TABLE invitations (
    code_hash   BYTEA  NOT NULL PRIMARY KEY,   -- SHA-256 of the code; the code is shown once and never stored
    course_id   TEXT   NOT NULL REFERENCES courses (id) ON DELETE CASCADE,
    invited_by  TEXT   REFERENCES accounts (user_id) ON DELETE SET NULL,
    expires_at  BIGINT NOT NULL,
    redeemed_by TEXT   REFERENCES accounts (user_id) ON DELETE SET NULL,
    redeemed_at BIGINT
);
CREATE INDEX invitations_course ON invitations (course_id);
