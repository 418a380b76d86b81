//! Storage: every SQL query of the web app, on SQLite (the default, a file in the data
//! directory) or PostgreSQL (when `DATABASE_URL` is a `postgres://` URL).
//!
//! One set of queries serves both databases through sqlx's `Any` driver: parameters are written
//! `$1`, `$2`, … (SQLite reads those as numbered parameters too), times are `BIGINT`
//! milliseconds and flags `BIGINT` 0 or 1, so no column needs a type that one of them lacks.
//! The schema lives in `web/migrations/`, one folder per database with the same numbers.
//!
//! Every query on a user's object takes the user's id and filters on it, so a handler cannot
//! reach another user's task, cluster or run even by mistake: the answer is `None`.
//!
//! Cluster API keys are sealed with the web app's secret key, which the store holds: queries
//! hand out keys in plain text and write them sealed. An SQLite file (and its `-wal` and
//! `-shm`) is readable and writable by the server's user only (mode 0600), set when the file is
//! made and again at every start.
//!
//! # Layout
//! - [`users`]: accounts and password hashes.
//! - [`sessions`]: server-side sessions with their CSRF tokens.
//! - [`clusters`]: controllers a user runs tasks on, and the embedded "local" one.
//! - [`tasks`]: plugins with a title and description.
//! - [`runs`]: a task run on a cluster: its job, progress, result or error.

pub mod clusters;
pub mod runs;
pub mod sessions;
pub mod tasks;
pub mod users;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Row};

use crate::sealing::SecretKey;

/// How many connections the pool keeps at most: page loads, run watchers and the websocket
/// relays share them, and SQLite writes one at a time anyway.
const MAX_CONNECTIONS: u32 = 8;

/// Which database a [`Store`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// An SQLite file.
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database URL names no database this app supports.
    #[error("unsupported database URL `{0}`: use sqlite://PATH or postgres://USER@HOST/DB")]
    UnsupportedUrl(String),
    /// The database could not be reached or opened.
    #[error("cannot open the database: {0}")]
    Connect(#[source] sqlx::Error),
    /// The SQLite file's mode could not be made 0600.
    #[error("cannot make the database file {path} private (mode 0600): {source}: check who owns it")]
    Permissions {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The schema could not be brought up to date.
    #[error("cannot migrate the database: {0}: was it written by a newer kiln-web?")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A row that must be unique already exists (an e-mail address, a cluster name).
    #[error("{0} already exists")]
    Duplicate(&'static str),
    /// A query failed.
    #[error("database error: {0}")]
    Query(#[from] sqlx::Error),
}

/// A pool of connections to the web app's database.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    secret_key: SecretKey,
}

impl Store {
    /// Connects to `url` (`sqlite://PATH?mode=rwc` or `postgres://…`) and applies the
    /// migrations the database lacks; API keys are sealed and opened with `secret_key`.
    pub async fn open(url: &str, secret_key: SecretKey) -> Result<Store, StoreError> {
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            return Err(StoreError::UnsupportedUrl(redact_url(url)));
        };
        sqlx::any::install_default_drivers();
        if backend == Backend::Sqlite {
            create_private_sqlite_file(url).await;
        }
        let pool =
            AnyPoolOptions::new().max_connections(MAX_CONNECTIONS).connect(url).await.map_err(StoreError::Connect)?;
        if backend == Backend::Sqlite {
            // Readers do not wait for the writer in WAL mode; the setting stays with the file.
            sqlx::query("PRAGMA journal_mode = WAL").execute(&pool).await?;
            restrict_sqlite_files(&pool).await?;
        }
        match backend {
            Backend::Sqlite => sqlx::migrate!("migrations/sqlite").run(&pool).await?,
            Backend::Postgres => sqlx::migrate!("migrations/postgres").run(&pool).await?,
        }
        Ok(Store { pool, backend, secret_key })
    }

    /// The URL of an SQLite database file at `path`, created when missing.
    pub fn sqlite_url(path: &Path) -> String {
        format!("sqlite://{}?mode=rwc", path.display())
    }

    /// Which database this store talks to.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Closes every connection; later calls fail.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Milliseconds since the Unix epoch, the unit of every time column.
pub fn now_ms() -> i64 {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
}

/// The file an `sqlite:` URL names, if it names one (not `:memory:`).
fn sqlite_path(url: &str) -> Option<PathBuf> {
    let rest = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or("");
    (!path.is_empty() && !path.starts_with(":memory:")).then(|| PathBuf::from(path))
}

/// Creates the SQLite file with mode 0600 when it does not exist yet, so it is never readable
/// by others, not even for the moment between SQLite creating it and a `chmod`.
async fn create_private_sqlite_file(url: &str) {
    let Some(path) = sqlite_path(url) else { return };
    // An existing file is fine (its mode is fixed after connecting); a missing directory and
    // the like SQLite reports better when it connects.
    let _ = tokio::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path).await;
}

/// Makes the main database file and its `-wal` and `-shm` mode 0600 (SQLite gives those the
/// main file's mode when it makes them, and a database from an older version may have 0644).
async fn restrict_sqlite_files(pool: &AnyPool) -> Result<(), StoreError> {
    let row = sqlx::query("SELECT file FROM pragma_database_list WHERE name = 'main'").fetch_optional(pool).await?;
    let Some(file) = row.map(|row| row.try_get::<String, _>("file")).transpose()? else { return Ok(()) };
    if file.is_empty() {
        return Ok(()); // an in-memory database
    }
    for suffix in ["", "-wal", "-shm"] {
        let path = PathBuf::from(format!("{file}{suffix}"));
        match tokio::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !suffix.is_empty() => {}
            Err(source) => return Err(StoreError::Permissions { path, source }),
        }
    }
    Ok(())
}

/// A database URL without its password, for messages.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let credentials = &url[scheme_end + 3..at];
            match credentials.split_once(':') {
                Some((user, _password)) => format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// Turns a unique-constraint violation into [`StoreError::Duplicate`] naming `what`.
fn unique_violation(what: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |error| match &error {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Duplicate(what),
        _ => StoreError::Query(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_left_out_of_urls_in_messages() {
        assert_eq!(redact_url("postgres://kiln:secret@db:5432/kiln"), "postgres://kiln:***@db:5432/kiln");
        assert_eq!(redact_url("postgres://postgres@127.0.0.1/test"), "postgres://postgres@127.0.0.1/test");
        assert_eq!(redact_url("mysql://localhost/x"), "mysql://localhost/x");
    }

    #[test]
    fn the_file_of_an_sqlite_url_is_found() {
        assert_eq!(sqlite_path("sqlite:///tmp/d/kiln.db?mode=rwc"), Some(PathBuf::from("/tmp/d/kiln.db")));
        assert_eq!(sqlite_path("sqlite://kiln.db"), Some(PathBuf::from("kiln.db")));
        assert_eq!(sqlite_path("sqlite::memory:"), None);
        assert_eq!(sqlite_path("postgres://x/y"), None);
    }
}
