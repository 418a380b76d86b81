//! Clusters: a controller's address and API key, saved by a user to run tasks on. The API key
//! is kept for the server's own calls and never shown back whole (see [`Cluster::api_key_hint`]).
//!
//! The key is sealed at rest (see [`crate::sealing`]), bound to the row's id and owner: a row is
//! inserted with an empty key, then given its sealed key in the same transaction. Rows written
//! before keys were sealed (`api_key_sealed = 0`) are sealed by [`Store::seal_plain_api_keys`]
//! when the server starts.
//!
//! The embedded cluster is one row per user, named [`LOCAL_CLUSTER`], with `embedded = 1` and
//! an empty address and key: the web server fills those in from the controller it started, so
//! the rows stay right when the controller's port changes between starts.

use sqlx::Row;

use super::{Store, StoreError, now_ms, unique_violation};
use crate::sealing::SealContext;

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
    /// The controller's API key (empty for the embedded cluster), or why it cannot be
    /// unsealed; never render it.
    pub api_key: Result<String, UnreadableKey>,
    /// Whether this is the web server's own embedded cluster.
    pub embedded: bool,
    /// When it was made and last changed (ms since the epoch).
    pub created_at: i64,
    pub updated_at: i64,
}

impl Cluster {
    /// The API key as pages show it: its last four characters.
    pub fn api_key_hint(&self) -> String {
        let Ok(api_key) = &self.api_key else { return "unreadable: enter it again".to_owned() };
        let n = api_key.chars().count();
        let tail: String = api_key.chars().skip(n.saturating_sub(4)).collect();
        if n > 8 { format!("…{tail}") } else { "…".to_owned() }
    }
}

/// A sealed API key that does not open with the web app's secret key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "cannot decrypt the API key of cluster \"{name}\" (id {cluster_id}): the web app's secret key changed \
     or the row was altered: enter the key again on the cluster's edit page, or restart the server with the \
     secret key that sealed it (KILN_WEB_SECRET_KEY or secret.key in its data directory)"
)]
pub struct UnreadableKey {
    /// The cluster's id.
    pub cluster_id: i64,
    /// Its name.
    pub name: String,
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

const COLUMNS: &str =
    "id, user_id, name, controller_address, api_key, api_key_sealed, embedded, created_at, updated_at";

impl Store {
    fn cluster_from_row(&self, row: &sqlx::any::AnyRow) -> Result<Cluster, sqlx::Error> {
        let (id, user_id, name): (i64, i64, String) =
            (row.try_get("id")?, row.try_get("user_id")?, row.try_get("name")?);
        let stored: String = row.try_get("api_key")?;
        let api_key = if stored.is_empty() || row.try_get::<i64, _>("api_key_sealed")? == 0 {
            // Empty (the embedded cluster), or written before keys were sealed and not yet
            // sealed by this server's start.
            Ok(stored)
        } else {
            self.secret_key
                .open(&stored, &SealContext { cluster_id: id, user_id })
                .ok_or_else(|| UnreadableKey { cluster_id: id, name: name.clone() })
        };
        Ok(Cluster {
            id,
            user_id,
            name,
            controller_address: row.try_get("controller_address")?,
            api_key,
            embedded: row.try_get::<i64, _>("embedded")? != 0,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
        })
    }
}

impl Store {
    /// Saves a cluster for `user_id`. A name the user already has is [`StoreError::Duplicate`].
    pub async fn create_cluster(&self, user_id: i64, fields: &ClusterFields) -> Result<Cluster, StoreError> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        // The sealed key is bound to the row's id, known only once the row exists.
        let row = sqlx::query(
            "INSERT INTO clusters (user_id, name, controller_address, api_key, api_key_sealed, embedded, created_at, \
             updated_at) VALUES ($1, $2, $3, '', 1, 0, $4, $4) RETURNING id",
        )
        .bind(user_id)
        .bind(fields.name.trim())
        .bind(fields.controller_address.trim())
        .bind(now)
        .fetch_one(&mut *tx)
        .await
        .map_err(unique_violation("a cluster with this name"))?;
        let id: i64 = row.try_get("id")?;
        let api_key = fields.api_key.as_deref().unwrap_or("").trim();
        let row = sqlx::query(&format!("UPDATE clusters SET api_key = $1 WHERE id = $2 RETURNING {COLUMNS}"))
            .bind(self.seal_api_key(api_key, id, user_id))
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(self.cluster_from_row(&row)?)
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
            "INSERT INTO clusters (user_id, name, controller_address, api_key, api_key_sealed, embedded, created_at, \
             updated_at) VALUES ($1, $2, '', '', 1, 1, $3, $3) RETURNING id",
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
        Ok(rows.iter().map(|row| self.cluster_from_row(row)).collect::<Result<_, _>>()?)
    }

    /// The user's cluster with this id; `None` when it does not exist or is someone else's.
    pub async fn cluster(&self, user_id: i64, id: i64) -> Result<Option<Cluster>, StoreError> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM clusters WHERE id = $1 AND user_id = $2"))
            .bind(id)
            .bind(user_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(|row| self.cluster_from_row(row)).transpose()?)
    }

    /// Changes the user's cluster (never the embedded one); answers whether it was found.
    pub async fn update_cluster(&self, user_id: i64, id: i64, fields: &ClusterFields) -> Result<bool, StoreError> {
        let query = match fields.api_key.as_deref() {
            Some(api_key) => sqlx::query(
                "UPDATE clusters SET name = $1, controller_address = $2, updated_at = $3, api_key = $6, \
                 api_key_sealed = 1 WHERE id = $4 AND user_id = $5 AND embedded = 0",
            )
            .bind(fields.name.trim())
            .bind(fields.controller_address.trim())
            .bind(now_ms())
            .bind(id)
            .bind(user_id)
            .bind(self.seal_api_key(api_key.trim(), id, user_id)),
            None => sqlx::query(
                "UPDATE clusters SET name = $1, controller_address = $2, updated_at = $3 \
                 WHERE id = $4 AND user_id = $5 AND embedded = 0",
            )
            .bind(fields.name.trim())
            .bind(fields.controller_address.trim())
            .bind(now_ms())
            .bind(id)
            .bind(user_id),
        };
        let done = query.execute(&self.pool).await.map_err(unique_violation("a cluster with this name"))?;
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

impl Store {
    /// Seals every API key still stored in plain text (rows written before keys were sealed);
    /// answers how many. Running it again changes nothing.
    pub async fn seal_plain_api_keys(&self) -> Result<u64, StoreError> {
        let rows = sqlx::query("SELECT id, user_id, api_key FROM clusters WHERE api_key_sealed = 0")
            .fetch_all(&self.pool)
            .await?;
        let mut sealed = 0;
        for row in rows {
            let (id, user_id, api_key): (i64, i64, String) =
                (row.try_get("id")?, row.try_get("user_id")?, row.try_get("api_key")?);
            let done = sqlx::query(
                "UPDATE clusters SET api_key = $1, api_key_sealed = 1 WHERE id = $2 AND api_key_sealed = 0",
            )
            .bind(self.seal_api_key(&api_key, id, user_id))
            .bind(id)
            .execute(&self.pool)
            .await?;
            sealed += done.rows_affected();
        }
        Ok(sealed)
    }

    /// How many clusters hold a sealed, non-empty API key.
    pub async fn sealed_api_key_count(&self) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM clusters WHERE api_key_sealed = 1 AND api_key <> ''")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("n")?)
    }

    /// The clusters whose sealed API key does not open with this store's secret key.
    pub async fn unreadable_api_keys(&self) -> Result<Vec<UnreadableKey>, StoreError> {
        let rows = sqlx::query(&format!("SELECT {COLUMNS} FROM clusters WHERE api_key_sealed = 1 AND api_key <> ''"))
            .fetch_all(&self.pool)
            .await?;
        let mut unreadable = Vec::new();
        for row in &rows {
            if let Err(e) = self.cluster_from_row(row)?.api_key {
                unreadable.push(e);
            }
        }
        Ok(unreadable)
    }

    /// `api_key` sealed for the cluster `id` of `user_id`; empty stays empty.
    fn seal_api_key(&self, api_key: &str, id: i64, user_id: i64) -> String {
        if api_key.is_empty() {
            return String::new();
        }
        self.secret_key.seal(api_key, &SealContext { cluster_id: id, user_id })
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
            api_key: Ok(api_key.into()),
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
        let unreadable = Cluster { api_key: Err(UnreadableKey { cluster_id: 1, name: "c".into() }), ..with_key("") };
        assert_eq!(unreadable.api_key_hint(), "unreadable: enter it again");
    }
}
