//! The queries on what a job's plugin printed.

use sqlx::Row;

use super::{Store, StoreError, get_u64, int, query_error};
use crate::rpc::JobId;
use crate::rpc::logs::{JOB_OUTPUT_BYTES, PluginOutput, trim};

/// The row number of the aggregate's output.
const AGGREGATE: i64 = -1;

impl Store {
    /// Keeps what the plugin printed for some of a job's chunks (or its aggregate), in one
    /// transaction, trimmed to what the job's bound leaves; a chunk's earlier output (from a
    /// copy that lost) is replaced.
    pub async fn save_plugin_output(&self, job: JobId, outputs: &[&PluginOutput]) -> Result<(), StoreError> {
        let what = "storing what a plugin printed";
        let mut tx = self.pool.begin().await.map_err(query_error(what))?;
        // Writing first takes the database's write lock (waiting for it as long as the busy
        // timeout allows): a read first would make the transaction fail at once when another
        // call's output was stored meanwhile.
        sqlx::query("UPDATE jobs SET id = id WHERE id = ?")
            .bind(int(job))
            .execute(&mut *tx)
            .await
            .map_err(query_error(what))?;
        let row = sqlx::query(
            "SELECT COALESCE(SUM(LENGTH(CAST(stdout AS BLOB)) + LENGTH(CAST(stderr AS BLOB))), 0) AS kept \
             FROM plugin_output WHERE job_id = ?",
        )
        .bind(int(job))
        .fetch_one(&mut *tx)
        .await
        .map_err(query_error(what))?;
        let mut room = JOB_OUTPUT_BYTES.saturating_sub(get_u64(&row, "kept")?);
        for output in outputs {
            let mut output = (*output).clone();
            room -= trim(&mut output, room);
            sqlx::query(
                "INSERT OR REPLACE INTO plugin_output (job_id, chunk, file, first_line, last_line, stdout, stderr, cut) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(int(job))
            .bind(output.chunk.map_or(AGGREGATE, int))
            .bind(&output.file)
            .bind(int(output.first_line))
            .bind(int(output.last_line))
            .bind(&output.stdout)
            .bind(&output.stderr)
            .bind(int(output.cut))
            .execute(&mut *tx)
            .await
            .map_err(query_error(what))?;
        }
        tx.commit().await.map_err(query_error(what))?;
        Ok(())
    }

    /// What a job's plugin printed, in chunk order, the aggregate last.
    pub async fn plugin_output(&self, job: JobId) -> Result<Vec<PluginOutput>, StoreError> {
        let what = "reading what a plugin printed";
        let rows = sqlx::query(
            "SELECT chunk, file, first_line, last_line, stdout, stderr, cut FROM plugin_output WHERE job_id = ? \
             ORDER BY chunk = -1, chunk",
        )
        .bind(int(job))
        .fetch_all(&self.pool)
        .await
        .map_err(query_error(what))?;
        rows.iter()
            .map(|row| {
                let chunk: i64 = row.try_get("chunk").map_err(query_error(what))?;
                Ok(PluginOutput {
                    chunk: u64::try_from(chunk).ok(),
                    file: row.try_get("file").map_err(query_error(what))?,
                    first_line: get_u64(row, "first_line")?,
                    last_line: get_u64(row, "last_line")?,
                    stdout: row.try_get("stdout").map_err(query_error(what))?,
                    stderr: row.try_get("stderr").map_err(query_error(what))?,
                    cut: get_u64(row, "cut")?,
                })
            })
            .collect()
    }
}
