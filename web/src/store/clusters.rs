//! Clusters: a controller's address and API key, saved by a user to run tasks on. The API key
//! is kept for the server's own calls and never shown back whole (see [`Cluster::api_key_hint`]).
//!
//! The embedded cluster is one row per user, named [`LOCAL_CLUSTER`], with `embedded = 1` and
//! an empty address and key: the web server fills those in from the controller it started, so
//! the rows stay right when the controller's port changes between starts.

use sqlx::Row;

use super::{Store, StoreError, now_ms, unique_violation};

/// The name of every user's embedded cluster.
pub const LOCAL_CLUSTER: &str = "local";

/// A cluster as its owner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    /// The cluster's id.
    pub id: i64,
    /// Its owner.
    pub user_id: i64,
    /// The name the user gave it.
    pub name: String,
    /// The controller's address, `host:port` (empty for the embedded cluster).
    pub controller_address: String,
    /// The controller's API key (empty for the embedded cluster); never render it.
    pub api_key: String,
    /// Whether this is the web server's own embedded cluster.
    pub embedded: bool,
    /// When it was made and last changed (ms since the epoch).
    pub created_at: i64,
    pub updated_at: i64,
}

impl Cluster {
    /// The API key as pages show it: its last four characters.
    pub fn api_key_hint(&self) -> String {
        let n = self.api_key.chars().count();
        let tail: String = self.api_key.chars().skip(n.saturating_sub(4)).collect();
        if n > 8 { format!("…{tail}") } else { "…".to_owned() }
    }
}

/// What a user types in a cluster's form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterFields {
    /// The name.
    pub name: String,
    /// The controller's address.
    pub controller_address: String,
    /// The API key; `None` when editing keeps the stored one.
    pub api_key: Option<String>,
}

const COLUMNS: &str = "id, user_id, name, controller_address, api_key, embedded, created_at, updated_at";

fn cluster_from_row(row: &sqlx::any::AnyRow) -> Result<Cluster, sqlx::Error> {
    Ok(Cluster {
        id: row.try_get("id")?,
        user_id: row.try_get("user_id")?,
        name: row.try_get("name")?,
        controller_address: row.try_get("controller_address")?,
        api_key: row.try_get("api_key")?,
        embedded: row.try_get::<i64, _>("embedded")? != 0,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

impl Store {
    /// Saves a cluster for `user_id`. A name the user already has is [`StoreError::Duplicate`].
    pub async fn create_cluster(&self, user_id: i64, fields: &ClusterFields) -> Result<Cluster, StoreError> {
        let now = now_ms();
        let row = sqlx::query(&format!(
            "INSERT INTO clusters (user_id, name, controller_address, api_key, embedded, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, 0, $5, $5) RETURNING {COLUMNS}"
        ))
        .bind(user_id)
        .bind(fields.name.trim())
        .bind(fields.controller_address.trim())
        .bind(fields.api_key.as_deref().unwrap_or("").trim())
        .bind(now)
        .fetch_one(&self.pool)
        .await
        .map_err(unique_violation("a cluster with this name"))?;
        Ok(cluster_from_row(&row)?)
    }

    /// Gives `user_id` the embedded cluster unless they have it; answers its id.
    pub async fn ensure_local_cluster(&self, user_id: i64) -> Result<i64, StoreError> {
        let existing = sqlx::query("SELECT id FROM clusters WHERE user_id = $1 AND embedded = 1")
            .bind(user_id)
            .fetch_optional(&self.pool)
            .await?;
        if let Some(row) = existing {
            return Ok(row.try_get("id")?);
        }
        let now = now_ms();
        let row = sqlx::query(
            "INSERT INTO clusters (user_id, name, controller_address, api_key, embedded, created_at, updated_at) \
             VALUES ($1, $2, '', '', 1, $3, $3) RETURNING id",
        )
        .bind(user_id)
        .bind(LOCAL_CLUSTER)
        .bind(now)
        .fetch_one(&self.pool)
        .await
        .map_err(unique_violation("a cluster named \"local\""))?;
        Ok(row.try_get("id")?)
    }

    /// The user's clusters, the embedded one first, then by name.
    pub async fn clusters(&self, user_id: i64) -> Result<Vec<Cluster>, StoreError> {
        let rows =
            sqlx::query(&format!("SELECT {COLUMNS} FROM clusters WHERE user_id = $1 ORDER BY embedded DESC, name, id"))
                .bind(user_id)
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.iter().map(cluster_from_row).collect::<Result<_, _>>()?)
    }

    /// The user's cluster with this id; `None` when it does not exist or is someone else's.
    pub async fn cluster(&self, user_id: i64, id: i64) -> Result<Option<Cluster>, StoreError> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM clusters WHERE id = $1 AND user_id = $2"))
            .bind(id)
            .bind(user_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(cluster_from_row).transpose()?)
    }

    /// Changes the user's cluster (never the embedded one); answers whether it was found.
    pub async fn update_cluster(&self, user_id: i64, id: i64, fields: &ClusterFields) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE clusters SET name = $1, controller_address = $2, api_key = COALESCE($3, api_key), \
             updated_at = $4 WHERE id = $5 AND user_id = $6 AND embedded = 0",
        )
        .bind(fields.name.trim())
        .bind(fields.controller_address.trim())
        .bind(fields.api_key.as_deref().map(str::trim))
        .bind(now_ms())
        .bind(id)
        .bind(user_id)
        .execute(&self.pool)
        .await
        .map_err(unique_violation("a cluster with this name"))?;
        Ok(done.rows_affected() > 0)
    }

    /// Deletes the user's cluster (never the embedded one) and its runs; answers whether it
    /// was found.
    pub async fn delete_cluster(&self, user_id: i64, id: i64) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM clusters WHERE id = $1 AND user_id = $2 AND embedded = 0")
            .bind(id)
            .bind(user_id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_key(api_key: &str) -> Cluster {
        Cluster {
            id: 1,
            user_id: 1,
            name: "c".into(),
            controller_address: "h:1".into(),
            api_key: api_key.into(),
            embedded: false,
            created_at: 0,
            updated_at: 0,
        }
    }

    #[test]
    fn only_the_last_four_characters_of_a_long_key_are_shown() {
        assert_eq!(with_key("0123456789abcdef").api_key_hint(), "…cdef");
        assert_eq!(with_key("short").api_key_hint(), "…");
        assert_eq!(with_key("").api_key_hint(), "…");
    }
}
