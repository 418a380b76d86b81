//! Server-side sessions. The browser holds a random token in a cookie; the database holds only
//! the token's SHA-256 hash, so a copy of the database does not let anyone log in. Each session
//! carries the CSRF token that its forms must send back. A session ends at its expiry, after a
//! time without requests (the idle timeout), when its user logs out (of it or of every
//! session), changes the password (every other session) or deletes the account.

use sqlx::Row;

use super::{Store, StoreError, now_ms};

/// A live session and its user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The session's id.
    pub id: i64,
    /// The user it belongs to.
    pub user_id: i64,
    /// That user's e-mail address, for the page header.
    pub email: String,
    /// The token every state-changing form of this session must carry.
    pub csrf_token: String,
    /// When it stops working (ms since the epoch).
    pub expires_at: i64,
    /// When it last made a request (ms since the epoch), to the minute.
    pub last_seen_at: i64,
}

/// How stale a session's `last_seen_at` may be before a request writes it again: a write per
/// request would cost more than the idle timeout's precision is worth.
const TOUCH_INTERVAL_MS: i64 = 60_000;

impl Store {
    /// Stores a session for `user_id` under the hash of its cookie token.
    pub async fn create_session(
        &self,
        user_id: i64,
        token_hash: &str,
        csrf_token: &str,
        expires_at: i64,
    ) -> Result<i64, StoreError> {
        let row = sqlx::query(
            "INSERT INTO sessions (token_hash, user_id, csrf_token, created_at, expires_at, last_seen_at) \
             VALUES ($1, $2, $3, $4, $5, $4) RETURNING id",
        )
        .bind(token_hash)
        .bind(user_id)
        .bind(csrf_token)
        .bind(now_ms())
        .bind(expires_at)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get("id")?)
    }

    /// The session whose token has this hash, if it has not expired and made a request within
    /// the last `idle_ms`; the request counts as its activity.
    pub async fn session(&self, token_hash: &str, idle_ms: i64) -> Result<Option<Session>, StoreError> {
        let now = now_ms();
        let row = sqlx::query(
            "SELECT s.id, s.user_id, u.email, s.csrf_token, s.expires_at, s.last_seen_at FROM sessions s \
             JOIN users u ON u.id = s.user_id WHERE s.token_hash = $1 AND s.expires_at > $2 AND s.last_seen_at > $3",
        )
        .bind(token_hash)
        .bind(now)
        .bind(now.saturating_sub(idle_ms))
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let mut session = Session {
            id: row.try_get("id")?,
            user_id: row.try_get("user_id")?,
            email: row.try_get("email")?,
            csrf_token: row.try_get("csrf_token")?,
            expires_at: row.try_get("expires_at")?,
            last_seen_at: row.try_get("last_seen_at")?,
        };
        if now - session.last_seen_at >= TOUCH_INTERVAL_MS {
            sqlx::query("UPDATE sessions SET last_seen_at = $1 WHERE id = $2")
                .bind(now)
                .bind(session.id)
                .execute(&self.pool)
                .await?;
            session.last_seen_at = now;
        }
        Ok(Some(session))
    }

    /// Ends every session of the user but the one with the id `keep` (all when `None`);
    /// answers how many ended.
    pub async fn delete_user_sessions(&self, user_id: i64, keep: Option<i64>) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM sessions WHERE user_id = $1 AND id <> $2")
            .bind(user_id)
            .bind(keep.unwrap_or(0))
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    /// Ends the session whose token has this hash (logging out); answers whether one existed.
    pub async fn delete_session(&self, token_hash: &str) -> Result<bool, StoreError> {
        let done =
            sqlx::query("DELETE FROM sessions WHERE token_hash = $1").bind(token_hash).execute(&self.pool).await?;
        Ok(done.rows_affected() > 0)
    }

    /// Forgets sessions expired or idle for `idle_ms`; answers how many.
    pub async fn delete_expired_sessions(&self, idle_ms: i64) -> Result<u64, StoreError> {
        let now = now_ms();
        let done = sqlx::query("DELETE FROM sessions WHERE expires_at <= $1 OR last_seen_at <= $2")
            .bind(now)
            .bind(now.saturating_sub(idle_ms))
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}
