//! Tasks: a plugin (its original file name, kind and where its bytes are) with a title and a
//! description. A plugin's bytes are a file in the web app's plugin directory, named in the
//! row; tasks saved before plugins were files keep their bytes in the row, which only starting
//! a run reads.

use sqlx::Row;

use super::{Store, StoreError, now_ms};

/// The forms a plugin upload may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PluginKind {
    /// A single `lib.rs`, wrapped into the plugin template by the builder.
    RustFile,
    /// A `.tar.gz` (or `.tgz`) of a crate.
    TarGz,
    /// A `.zip` of a crate.
    Zip,
}

impl PluginKind {
    /// The kind a file name implies, if it is one Kiln accepts.
    pub fn from_file_name(name: &str) -> Option<PluginKind> {
        let name = name.to_ascii_lowercase();
        if name.ends_with(".rs") {
            Some(PluginKind::RustFile)
        } else if name.ends_with(".tar.gz") || name.ends_with(".tgz") {
            Some(PluginKind::TarGz)
        } else if name.ends_with(".zip") {
            Some(PluginKind::Zip)
        } else {
            None
        }
    }

    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            PluginKind::RustFile => "rs",
            PluginKind::TarGz => "tar.gz",
            PluginKind::Zip => "zip",
        }
    }

    /// The kind stored under `name`.
    pub fn parse(name: &str) -> Option<PluginKind> {
        match name {
            "rs" => Some(PluginKind::RustFile),
            "tar.gz" => Some(PluginKind::TarGz),
            "zip" => Some(PluginKind::Zip),
            _ => None,
        }
    }

    /// A file name with the right ending for the builder to recognise this kind.
    pub fn file_name(self) -> &'static str {
        match self {
            PluginKind::RustFile => "lib.rs",
            PluginKind::TarGz => "plugin.tar.gz",
            PluginKind::Zip => "plugin.zip",
        }
    }
}

/// A task without its plugin's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    /// The task's id.
    pub id: i64,
    /// Its owner.
    pub user_id: i64,
    /// Its title and description, as the user wrote them.
    pub title: String,
    pub description: String,
    /// The plugin's original file name, kind and size in bytes.
    pub plugin_name: String,
    pub plugin_kind: String,
    pub plugin_size: i64,
    /// When it was made and last changed (ms since the epoch).
    pub created_at: i64,
    pub updated_at: i64,
}

/// An uploaded plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plugin {
    /// The original file name.
    pub name: String,
    /// Its kind.
    pub kind: PluginKind,
    /// Where its bytes are.
    pub content: PluginContent,
}

/// Where a plugin's bytes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginContent {
    /// A file in the plugin directory, by its name there, and its size in bytes.
    File {
        /// The file's name in the plugin directory.
        file: String,
        /// Its size.
        size: i64,
    },
    /// In the row itself: tasks saved before plugins were files.
    Bytes(Vec<u8>),
}

impl Plugin {
    /// The plugin's size in bytes.
    pub fn size(&self) -> i64 {
        match &self.content {
            PluginContent::File { size, .. } => *size,
            PluginContent::Bytes(bytes) => i64::try_from(bytes.len()).unwrap_or(i64::MAX),
        }
    }

    /// Its file's name in the plugin directory, if it has one.
    pub fn file(&self) -> Option<&str> {
        match &self.content {
            PluginContent::File { file, .. } => Some(file),
            PluginContent::Bytes(_) => None,
        }
    }

    /// The bytes kept in the row (none for a plugin kept as a file).
    fn row_bytes(&self) -> &[u8] {
        match &self.content {
            PluginContent::File { .. } => &[],
            PluginContent::Bytes(bytes) => bytes,
        }
    }
}

const COLUMNS: &str = "id, user_id, title, description, plugin_name, plugin_kind, plugin_size, created_at, updated_at";

fn task_from_row(row: &sqlx::any::AnyRow) -> Result<Task, sqlx::Error> {
    Ok(Task {
        id: row.try_get("id")?,
        user_id: row.try_get("user_id")?,
        title: row.try_get("title")?,
        description: row.try_get("description")?,
        plugin_name: row.try_get("plugin_name")?,
        plugin_kind: row.try_get("plugin_kind")?,
        plugin_size: row.try_get("plugin_size")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

impl Store {
    /// Saves a task for `user_id`.
    pub async fn create_task(
        &self,
        user_id: i64,
        title: &str,
        description: &str,
        plugin: &Plugin,
    ) -> Result<Task, StoreError> {
        let now = now_ms();
        let row = sqlx::query(&format!(
            "INSERT INTO tasks (user_id, title, description, plugin_name, plugin_kind, plugin_size, plugin_bytes, \
             created_at, updated_at, plugin_file) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, $9) RETURNING {COLUMNS}"
        ))
        .bind(user_id)
        .bind(title.trim())
        .bind(description)
        .bind(&plugin.name)
        .bind(plugin.kind.as_str())
        .bind(plugin.size())
        .bind(plugin.row_bytes())
        .bind(now)
        .bind(plugin.file())
        .fetch_one(&self.pool)
        .await?;
        Ok(task_from_row(&row)?)
    }

    /// The user's tasks, newest first.
    pub async fn tasks(&self, user_id: i64) -> Result<Vec<Task>, StoreError> {
        let rows = sqlx::query(&format!("SELECT {COLUMNS} FROM tasks WHERE user_id = $1 ORDER BY id DESC"))
            .bind(user_id)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(task_from_row).collect::<Result<_, _>>()?)
    }

    /// The user's task with this id; `None` when it does not exist or is someone else's.
    pub async fn task(&self, user_id: i64, id: i64) -> Result<Option<Task>, StoreError> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM tasks WHERE id = $1 AND user_id = $2"))
            .bind(id)
            .bind(user_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(task_from_row).transpose()?)
    }

    /// The files in the plugin directory that the user's tasks name.
    pub async fn user_plugin_files(&self, user_id: i64) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query("SELECT plugin_file FROM tasks WHERE user_id = $1 AND plugin_file IS NOT NULL")
            .bind(user_id)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(|row| row.try_get("plugin_file")).collect::<Result<_, _>>()?)
    }

    /// The plugin of the user's task with this id.
    pub async fn task_plugin(&self, user_id: i64, id: i64) -> Result<Option<Plugin>, StoreError> {
        let row = sqlx::query(
            "SELECT plugin_name, plugin_kind, plugin_size, plugin_file FROM tasks WHERE id = $1 AND user_id = $2",
        )
        .bind(id)
        .bind(user_id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let kind: String = row.try_get("plugin_kind")?;
        let kind = PluginKind::parse(&kind)
            .ok_or_else(|| sqlx::Error::Decode(format!("unknown plugin kind `{kind}` in task {id}").into()))?;
        let content = match row.try_get::<Option<String>, _>("plugin_file")? {
            Some(file) => PluginContent::File { file, size: row.try_get("plugin_size")? },
            None => {
                let row = sqlx::query("SELECT plugin_bytes FROM tasks WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?;
                let Some(row) = row else { return Ok(None) };
                PluginContent::Bytes(row.try_get("plugin_bytes")?)
            }
        };
        Ok(Some(Plugin { name: row.try_get("plugin_name")?, kind, content }))
    }

    /// Changes the title and description of the user's task, and its plugin when one is
    /// given; answers whether it was found.
    pub async fn update_task(
        &self,
        user_id: i64,
        id: i64,
        title: &str,
        description: &str,
        plugin: Option<&Plugin>,
    ) -> Result<bool, StoreError> {
        let now = now_ms();
        let done = match plugin {
            None => {
                sqlx::query(
                    "UPDATE tasks SET title = $1, description = $2, updated_at = $3 WHERE id = $4 AND user_id = $5",
                )
                .bind(title.trim())
                .bind(description)
                .bind(now)
                .bind(id)
                .bind(user_id)
                .execute(&self.pool)
                .await?
            }
            Some(plugin) => {
                sqlx::query(
                    "UPDATE tasks SET title = $1, description = $2, plugin_name = $3, plugin_kind = $4, \
                     plugin_size = $5, plugin_bytes = $6, updated_at = $7, plugin_file = $10 \
                     WHERE id = $8 AND user_id = $9",
                )
                .bind(title.trim())
                .bind(description)
                .bind(&plugin.name)
                .bind(plugin.kind.as_str())
                .bind(plugin.size())
                .bind(plugin.row_bytes())
                .bind(now)
                .bind(id)
                .bind(user_id)
                .bind(plugin.file())
                .execute(&self.pool)
                .await?
            }
        };
        Ok(done.rows_affected() > 0)
    }

    /// Deletes the user's task and its runs; answers whether it was found.
    pub async fn delete_task(&self, user_id: i64, id: i64) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM tasks WHERE id = $1 AND user_id = $2")
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

    #[test]
    fn plugin_kinds_follow_the_file_name() {
        assert_eq!(PluginKind::from_file_name("lib.rs"), Some(PluginKind::RustFile));
        assert_eq!(PluginKind::from_file_name("Crate.TAR.GZ"), Some(PluginKind::TarGz));
        assert_eq!(PluginKind::from_file_name("c.tgz"), Some(PluginKind::TarGz));
        assert_eq!(PluginKind::from_file_name("c.zip"), Some(PluginKind::Zip));
        assert_eq!(PluginKind::from_file_name("notes.txt"), None);
        for kind in [PluginKind::RustFile, PluginKind::TarGz, PluginKind::Zip] {
            assert_eq!(PluginKind::parse(kind.as_str()), Some(kind));
            assert_eq!(PluginKind::from_file_name(kind.file_name()), Some(kind));
        }
    }
}
