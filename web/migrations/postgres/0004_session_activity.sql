-- Sessions end after a time without requests (the idle timeout) as well as at their expiry:
-- last_seen_at is when the session last made a request (ms since the epoch), written at most
-- once a minute. Sessions from before start from their creation.
ALTER TABLE sessions ADD COLUMN last_seen_at BIGINT NOT NULL DEFAULT 0;
UPDATE sessions SET last_seen_at = created_at;
