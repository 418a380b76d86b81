//! Accounts: an e-mail address (unique, compared in lower case) and an argon2 password hash.

use sqlx::Row;

use super::{Store, StoreError, now_ms, unique_violation};

/// A registered user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The user's id.
    pub id: i64,
    /// The e-mail address, in lower case.
    pub email: String,
    /// The argon2 hash of the password, as a PHC string (`$argon2id$…`).
    pub password_hash: String,
    /// When the account was made (ms since the epoch).
    pub created_at: i64,
}

fn user_from_row(row: &sqlx::any::AnyRow) -> Result<User, sqlx::Error> {
    Ok(User {
        id: row.try_get("id")?,
        email: row.try_get("email")?,
        password_hash: row.try_get("password_hash")?,
        created_at: row.try_get("created_at")?,
    })
}

impl Store {
    /// Creates a user; `email` is stored in lower case. An address already taken is
    /// [`StoreError::Duplicate`].
    pub async fn create_user(&self, email: &str, password_hash: &str) -> Result<User, StoreError> {
        let row = sqlx::query(
            "INSERT INTO users (email, password_hash, created_at) VALUES ($1, $2, $3) \
             RETURNING id, email, password_hash, created_at",
        )
        .bind(email.trim().to_lowercase())
        .bind(password_hash)
        .bind(now_ms())
        .fetch_one(&self.pool)
        .await
        .map_err(unique_violation("an account with this e-mail address"))?;
        Ok(user_from_row(&row)?)
    }

    /// The user with this e-mail address (in any case), if any.
    pub async fn user_by_email(&self, email: &str) -> Result<Option<User>, StoreError> {
        let row = sqlx::query("SELECT id, email, password_hash, created_at FROM users WHERE email = $1")
            .bind(email.trim().to_lowercase())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(user_from_row).transpose()?)
    }

    /// The user with this id, if any.
    pub async fn user(&self, id: i64) -> Result<Option<User>, StoreError> {
        let row = sqlx::query("SELECT id, email, password_hash, created_at FROM users WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(user_from_row).transpose()?)
    }

    /// Replaces the user's password hash; answers whether the user exists.
    pub async fn set_password_hash(&self, user_id: i64, password_hash: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE users SET password_hash = $1 WHERE id = $2")
            .bind(password_hash)
            .bind(user_id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Deletes the user with every row of theirs: sessions, clusters, tasks and runs (in one
    /// transaction, children first, whatever the database's foreign-key setting). Files the
    /// rows name (tasks' plugins) are the caller's to remove. Answers whether the user existed.
    pub async fn delete_user(&self, user_id: i64) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        for table in ["runs", "tasks", "clusters", "sessions"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE user_id = $1")).bind(user_id).execute(&mut *tx).await?;
        }
        let done = sqlx::query("DELETE FROM users WHERE id = $1").bind(user_id).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(done.rows_affected() > 0)
    }

    /// Every user's id, oldest first (to give each the embedded cluster).
    pub async fn user_ids(&self) -> Result<Vec<i64>, StoreError> {
        let rows = sqlx::query("SELECT id FROM users ORDER BY id").fetch_all(&self.pool).await?;
        Ok(rows.iter().map(|row| row.try_get("id")).collect::<Result<_, _>>()?)
    }
}
