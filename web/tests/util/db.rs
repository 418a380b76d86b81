//! Fresh databases for tests: an SQLite file in a temporary directory, or a new PostgreSQL
//! database on the local server (`postgres://postgres@127.0.0.1:5432/test`, or
//! `KILN_TEST_POSTGRES_URL`), created as `kiln_test_<random>` and dropped when the guard is
//! dropped, also when the test fails.

#![allow(dead_code)] // Each test binary uses its own subset.

use kiln_web::store::{Backend, Store};

/// The server's maintenance database, through which test databases are created and dropped.
pub fn postgres_admin_url() -> String {
    std::env::var("KILN_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A database that exists until this is dropped.
pub struct TestDb {
    /// The URL to open it with.
    pub url: String,
    /// Which database it is.
    pub backend: Backend,
    guard: Guard,
}

enum Guard {
    Sqlite(#[allow(dead_code)] tempfile::TempDir),
    Postgres { name: String },
}

impl TestDb {
    /// A new SQLite database file.
    pub fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = Store::sqlite_url(&dir.path().join("kiln.db"));
        TestDb { url, backend: Backend::Sqlite, guard: Guard::Sqlite(dir) }
    }

    /// A new, empty PostgreSQL database.
    pub async fn postgres() -> TestDb {
        use sqlx::Connection;
        let admin = postgres_admin_url();
        let name = format!("kiln_test_{:016x}", rand::random::<u64>());
        let mut connection = sqlx::PgConnection::connect(&admin).await.unwrap_or_else(|e| {
            panic!("cannot reach PostgreSQL at {admin}: {e}: start it, or set KILN_TEST_POSTGRES_URL")
        });
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut connection).await.expect("create database");
        let _ = connection.close().await;
        let base = admin.rsplit_once('/').map_or(admin.as_str(), |(base, _)| base);
        TestDb { url: format!("{base}/{name}"), backend: Backend::Postgres, guard: Guard::Postgres { name } }
    }

    /// Both kinds, SQLite first.
    pub async fn both() -> [TestDb; 2] {
        [TestDb::sqlite(), TestDb::postgres().await]
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Guard::Postgres { name } = &self.guard else { return };
        let name = name.clone();
        // Drop may run inside the test's runtime, which must not block: use a thread of its own.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            runtime.block_on(async move {
                use sqlx::Connection;
                let mut connection = sqlx::PgConnection::connect(&postgres_admin_url()).await?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut connection).await?;
                connection.close().await
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop a test database: {dropped:?}");
        }
    }
}
