-- Users a session's staff removed from its group: they may not rejoin while the group lives (a restart keeps the
-- ban). A row goes with its group (session_log retention) or with the account.
CREATE TABLE ds_removed (
    session_id TEXT   NOT NULL REFERENCES ds_groups (session_id) ON DELETE CASCADE,
    user_id    TEXT   NOT NULL REFERENCES accounts (user_id) ON DELETE CASCADE,
    removed_at BIGINT NOT NULL,
    PRIMARY KEY (session_id, user_id)
);
