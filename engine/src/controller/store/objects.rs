//! The queries on the objects of inputs read by reference.

use sqlx::{QueryBuilder, Row, Sqlite};

use super::{Store, StoreError, get_u64, int, query_error};
use crate::input::decode::Compression;
use crate::input::reference::InputObject;
use crate::rpc::JobId;

impl Store {
    /// Stores the objects of a job's input read by reference, in order.
    pub async fn add_objects(&self, job: JobId, objects: &[InputObject]) -> Result<(), StoreError> {
        let what = "storing the objects of a job's input";
        let mut tx = self.pool.begin().await.map_err(query_error(what))?;
        for (n, rows) in objects.chunks(256).enumerate() {
            let mut query = QueryBuilder::<Sqlite>::new(
                "INSERT INTO input_objects (job_id, idx, url, size, version, compression) ",
            );
            query.push_values(rows.iter().enumerate(), |mut row, (offset, object)| {
                row.push_bind(int(job))
                    .push_bind(int((n * 256 + offset) as u64))
                    .push_bind(object.url.clone())
                    .push_bind(int(object.size))
                    .push_bind(object.version.clone())
                    .push_bind(object.compression.as_str());
            });
            query.build().execute(&mut *tx).await.map_err(query_error(what))?;
        }
        tx.commit().await.map_err(query_error(what))?;
        Ok(())
    }

    /// The objects of a job's input read by reference, in order (none for an uploaded input).
    pub async fn objects(&self, job: JobId) -> Result<Vec<InputObject>, StoreError> {
        let what = "reading the objects of a job's input";
        let rows =
            sqlx::query("SELECT url, size, version, compression FROM input_objects WHERE job_id = ? ORDER BY idx")
                .bind(int(job))
                .fetch_all(&self.pool)
                .await
                .map_err(query_error(what))?;
        rows.iter()
            .map(|row| {
                let compression = match row.try_get::<String, _>("compression").map_err(query_error(what))?.as_str() {
                    "gzip" => Compression::Gzip,
                    "zstd" => Compression::Zstd,
                    _ => Compression::Plain,
                };
                Ok(InputObject {
                    url: row.try_get("url").map_err(query_error(what))?,
                    size: get_u64(row, "size")?,
                    version: row.try_get("version").map_err(query_error(what))?,
                    compression,
                })
            })
            .collect()
    }
}
