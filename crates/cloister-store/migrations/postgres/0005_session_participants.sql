-- Who was admitted to a live session (the join decision the delivery service acts on). Every column is in
-- audits/data-inventory.toml; rows go with the session, the account, or 30 days after the session ended.
CREATE TABLE session_participants (
    session_id TEXT    NOT NULL REFERENCES live_sessions (id) ON DELETE CASCADE,
    user_id    TEXT    NOT NULL REFERENCES accounts (user_id) ON DELETE CASCADE,
    staff      BOOLEAN NOT NULL,  -- teachers and TAs do not count against the capacity
    joined_at  BIGINT  NOT NULL,
    PRIMARY KEY (session_id, user_id)
);
