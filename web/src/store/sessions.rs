//! Server-side sessions. The browser holds a random token in a cookie; the database holds only
//! the token's SHA-256 hash, so a copy of the database does not let anyone log in. Each session
//! carries the CSRF token that its forms must send back.

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
}

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
            "INSERT INTO sessions (token_hash, user_id, csrf_token, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5) RETURNING id",
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

    /// The unexpired session whose token has this hash, if any.
    pub async fn session(&self, token_hash: &str) -> Result<Option<Session>, StoreError> {
        let row = sqlx::query(
            "SELECT s.id, s.user_id, u.email, s.csrf_token, s.expires_at FROM sessions s \
             JOIN users u ON u.id = s.user_id WHERE s.token_hash = $1 AND s.expires_at > $2",
        )
        .bind(token_hash)
        .bind(now_ms())
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(Session {
            id: row.try_get("id")?,
            user_id: row.try_get("user_id")?,
            email: row.try_get("email")?,
            csrf_token: row.try_get("csrf_token")?,
            expires_at: row.try_get("expires_at")?,
        }))
    }

    /// Ends the session whose token has this hash (logging out); answers whether one existed.
    pub async fn delete_session(&self, token_hash: &str) -> Result<bool, StoreError> {
        let done =
            sqlx::query("DELETE FROM sessions WHERE token_hash = $1").bind(token_hash).execute(&self.pool).await?;
        Ok(done.rows_affected() > 0)
    }

    /// Forgets expired sessions; answers how many.
    pub async fn delete_expired_sessions(&self) -> Result<u64, StoreError> {
        let done =
            sqlx::query("DELETE FROM sessions WHERE expires_at <= $1").bind(now_ms()).execute(&self.pool).await?;
        Ok(done.rows_affected())
    }
}
