-- wsgate's own tables. Tokens are stored only as SHA-256 digests (hex).
CREATE TABLE IF NOT EXISTS wsgate_tokens (
    digest      TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL,
    created_at  BIGINT NOT NULL,           -- unix milliseconds
    expires_at  BIGINT,                    -- unix milliseconds, NULL = never
    revoked_at  BIGINT                     -- unix milliseconds, NULL = live
);
CREATE INDEX IF NOT EXISTS wsgate_tokens_user_id ON wsgate_tokens (user_id);

-- Revocations of tokens wsgate does not own (query and django stores),
-- consulted by every store.
CREATE TABLE IF NOT EXISTS wsgate_revocations (
    digest      TEXT PRIMARY KEY,
    revoked_at  BIGINT NOT NULL
);
