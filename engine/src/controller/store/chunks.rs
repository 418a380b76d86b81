//! The queries on a running job's chunks and partials.

use serde_bytes::ByteBuf;
use sqlx::Row;

use super::{ChunkMeta, ChunkRow, Store, StoreError, get_u64, int, query_error};
use crate::rpc::JobId;

impl Store {
    /// Stores chunks `first..` of a job whose input is still uploading; answers false (and
    /// stores nothing) when the job is no longer uploading.
    pub async fn add_chunks(&self, job: JobId, first: u64, chunks: &[ChunkMeta]) -> Result<bool, StoreError> {
        let what = "storing a job's chunks";
        let mut tx = self.pool.begin().await.map_err(query_error(what))?;
        let updated = sqlx::query("UPDATE jobs SET n_chunks = ? WHERE id = ? AND state = 'uploading'")
            .bind(int(first + chunks.len() as u64))
            .bind(int(job))
            .execute(&mut *tx)
            .await
            .map_err(query_error(what))?;
        if updated.rows_affected() == 0 {
            return Ok(false);
        }
        insert_chunk_rows(&mut tx, job, first, chunks).await.map_err(query_error(what))?;
        tx.commit().await.map_err(query_error(what))?;
        Ok(true)
    }

    /// Ends a job's input: stores its last chunks (`first..`) and its size, and queues it (or
    /// marks it running, when its first chunks already started), in one transaction; answers
    /// false (changing nothing) when the job is no longer uploading.
    pub async fn finish_input(
        &self,
        job: JobId,
        first: u64,
        chunks: &[ChunkMeta],
        bytes_total: u64,
        combine_group: u64,
    ) -> Result<bool, StoreError> {
        let what = "storing the end of a job's input";
        let mut tx = self.pool.begin().await.map_err(query_error(what))?;
        let updated = sqlx::query(
            "UPDATE jobs SET state = CASE WHEN started_ms IS NULL THEN 'queued' ELSE 'running' END, \
             n_chunks = ?, bytes_total = ?, combine_group = ? WHERE id = ? AND state = 'uploading'",
        )
        .bind(int(first + chunks.len() as u64))
        .bind(int(bytes_total))
        .bind(int(combine_group))
        .bind(int(job))
        .execute(&mut *tx)
        .await
        .map_err(query_error(what))?;
        if updated.rows_affected() == 0 {
            return Ok(false);
        }
        insert_chunk_rows(&mut tx, job, first, chunks).await.map_err(query_error(what))?;
        tx.commit().await.map_err(query_error(what))?;
        Ok(true)
    }

    /// Stores a chunk's partial; answers false when the chunk already had one (a duplicate).
    pub async fn save_partial(
        &self,
        job: JobId,
        index: u64,
        attempts: u32,
        partial: &[u8],
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE chunks SET done = 1, partial = ?, attempts = ? WHERE job_id = ? AND idx = ? AND done = 0",
        )
        .bind(partial)
        .bind(i64::from(attempts))
        .bind(int(job))
        .bind(int(index))
        .execute(&self.pool)
        .await
        .map_err(query_error("storing a partial"))?;
        Ok(done.rows_affected() == 1)
    }

    /// Records a failed attempt at a chunk and the job's retry count.
    pub async fn save_attempts(&self, job: JobId, index: u64, attempts: u32, retries: u64) -> Result<(), StoreError> {
        let what = "recording a failed attempt";
        let mut tx = self.pool.begin().await.map_err(query_error(what))?;
        sqlx::query("UPDATE chunks SET attempts = ? WHERE job_id = ? AND idx = ?")
            .bind(i64::from(attempts))
            .bind(int(job))
            .bind(int(index))
            .execute(&mut *tx)
            .await
            .map_err(query_error(what))?;
        sqlx::query("UPDATE jobs SET retries = ? WHERE id = ?")
            .bind(int(retries))
            .bind(int(job))
            .execute(&mut *tx)
            .await
            .map_err(query_error(what))?;
        tx.commit().await.map_err(query_error(what))
    }

    /// The partials of the chunks `first..first + count`, in order; an error unless every one
    /// is stored.
    pub async fn chunk_partials(&self, job: JobId, first: u64, count: u64) -> Result<Vec<ByteBuf>, StoreError> {
        let rows = sqlx::query(
            "SELECT partial FROM chunks WHERE job_id = ? AND idx >= ? AND idx < ? AND partial IS NOT NULL ORDER BY idx",
        )
        .bind(int(job))
        .bind(int(first))
        .bind(int(first + count))
        .fetch_all(&self.pool)
        .await
        .map_err(query_error("reading partials"))?;
        if rows.len() as u64 != count {
            return Err(StoreError::Corrupt {
                what: "set of partials",
                message: format!("job {job} has {} of the {count} partials from chunk {first}", rows.len()),
            });
        }
        rows.iter()
            .map(|row| row.try_get::<Vec<u8>, _>("partial").map(ByteBuf::from).map_err(query_error("reading partials")))
            .collect()
    }

    /// Stores the merged partial of group `group` (chunks `group * size..`) and drops its
    /// members' partials, in one transaction.
    pub async fn save_combined(&self, job: JobId, group: u64, size: u64, partial: &[u8]) -> Result<(), StoreError> {
        let what = "storing a combined partial";
        let mut tx = self.pool.begin().await.map_err(query_error(what))?;
        // A job that ended meanwhile has no chunks left, and gets no combined partial either.
        sqlx::query(
            "INSERT OR REPLACE INTO combined (job_id, grp, partial) \
             SELECT ?, ?, ? WHERE EXISTS (SELECT 1 FROM chunks WHERE job_id = ?)",
        )
        .bind(int(job))
        .bind(int(group))
        .bind(partial)
        .bind(int(job))
        .execute(&mut *tx)
        .await
        .map_err(query_error(what))?;
        sqlx::query("UPDATE chunks SET partial = NULL WHERE job_id = ? AND idx >= ? AND idx < ?")
            .bind(int(job))
            .bind(int(group * size))
            .bind(int((group + 1) * size))
            .execute(&mut *tx)
            .await
            .map_err(query_error(what))?;
        tx.commit().await.map_err(query_error(what))
    }

    /// The groups of a job whose partials were merged.
    pub async fn combined_groups(&self, job: JobId) -> Result<Vec<u64>, StoreError> {
        let rows = sqlx::query("SELECT grp FROM combined WHERE job_id = ? ORDER BY grp")
            .bind(int(job))
            .fetch_all(&self.pool)
            .await
            .map_err(query_error("reading combined groups"))?;
        rows.iter().map(|row| get_u64(row, "grp")).collect()
    }

    /// Every partial of a job in input order: a merged group's partial in place of its
    /// members'. An error unless every chunk is covered.
    pub async fn ordered_partials(
        &self,
        job: JobId,
        n_chunks: u64,
        group_size: u64,
    ) -> Result<Vec<ByteBuf>, StoreError> {
        let what = "reading partials for aggregation";
        // Each row is keyed by the first chunk it covers, so the two kinds merge in order.
        let rows = sqlx::query(
            "SELECT idx AS first, 1 AS covers, partial FROM chunks WHERE job_id = ? AND partial IS NOT NULL \
             UNION ALL \
             SELECT grp * ? AS first, ? AS covers, partial FROM combined WHERE job_id = ? \
             ORDER BY first",
        )
        .bind(int(job))
        .bind(int(group_size))
        .bind(int(group_size))
        .bind(int(job))
        .fetch_all(&self.pool)
        .await
        .map_err(query_error(what))?;
        let mut next = 0;
        let mut partials = Vec::with_capacity(rows.len());
        for row in &rows {
            let (first, covers) = (get_u64(row, "first")?, get_u64(row, "covers")?);
            if first != next {
                return Err(StoreError::Corrupt {
                    what: "set of partials",
                    message: format!("job {job} has no partial for chunk {next}"),
                });
            }
            next = first + covers;
            partials.push(ByteBuf::from(row.try_get::<Vec<u8>, _>("partial").map_err(query_error(what))?));
        }
        if next != n_chunks {
            return Err(StoreError::Corrupt {
                what: "set of partials",
                message: format!("job {job} has partials for {next} of {n_chunks} chunks"),
            });
        }
        Ok(partials)
    }

    /// The chunks of a job, in order.
    pub async fn chunks(&self, job: JobId) -> Result<Vec<ChunkRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT byte_offset, byte_len, first_line, n_lines, done, attempts FROM chunks WHERE job_id = ? ORDER BY idx",
        )
        .bind(int(job))
        .fetch_all(&self.pool)
        .await
        .map_err(query_error("reading a job's chunks"))?;
        rows.iter()
            .map(|row| {
                Ok(ChunkRow {
                    meta: ChunkMeta {
                        offset: get_u64(row, "byte_offset")?,
                        len: get_u64(row, "byte_len")?,
                        first_line: get_u64(row, "first_line")?,
                        n_lines: get_u64(row, "n_lines")?,
                    },
                    done: get_u64(row, "done")? != 0,
                    attempts: u32::try_from(get_u64(row, "attempts")?).unwrap_or(u32::MAX),
                })
            })
            .collect()
    }
}

/// Rows bound per statement: six values a row, within SQLite's limit of 32,766 variables.
const ROWS_PER_INSERT: usize = 4096;

/// Inserts the rows of chunks `first..`, many rows a statement: an input of tiny chunks has
/// hundreds of thousands.
async fn insert_chunk_rows(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    job: JobId,
    first: u64,
    chunks: &[ChunkMeta],
) -> Result<(), sqlx::Error> {
    for (batch, rows) in chunks.chunks(ROWS_PER_INSERT).enumerate() {
        let start = first + (batch * ROWS_PER_INSERT) as u64;
        let mut insert = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
            "INSERT INTO chunks (job_id, idx, byte_offset, byte_len, first_line, n_lines) ",
        );
        insert.push_values(rows.iter().enumerate(), |mut row, (i, chunk)| {
            row.push_bind(int(job))
                .push_bind(int(start + i as u64))
                .push_bind(int(chunk.offset))
                .push_bind(int(chunk.len))
                .push_bind(int(chunk.first_line))
                .push_bind(int(chunk.n_lines));
        });
        insert.build().execute(&mut **tx).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::store::tests::{meta, spec};
    use crate::rpc::JobState;

    #[tokio::test]
    async fn partials_come_back_in_input_order_with_groups_merged() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("c.db")).await.unwrap();
        let job = store.insert_job(&spec(), 1).await.unwrap();
        let chunks: Vec<ChunkMeta> = (0..5).map(meta).collect();
        assert!(store.add_chunks(job, 0, &chunks[..2]).await.unwrap());
        assert!(store.finish_input(job, 2, &chunks[2..], 50, 2).await.unwrap());
        assert!(!store.finish_input(job, 5, &[], 50, 2).await.unwrap(), "a queued job is not finished again");
        assert!(!store.add_chunks(job, 5, &chunks[..1]).await.unwrap(), "nor given more chunks");
        assert_eq!(store.job(job).await.unwrap().unwrap().state, JobState::Queued);
        for index in 0..5 {
            assert!(store.save_partial(job, index, 1, &[index as u8]).await.unwrap());
        }
        assert!(!store.save_partial(job, 3, 2, b"late").await.unwrap(), "a duplicate is dropped");
        let group = store.chunk_partials(job, 2, 2).await.unwrap();
        assert_eq!(group, vec![ByteBuf::from(vec![2]), ByteBuf::from(vec![3])]);
        store.save_combined(job, 1, 2, b"g1").await.unwrap();
        assert_eq!(store.combined_groups(job).await.unwrap(), vec![1]);
        let ordered = store.ordered_partials(job, 5, 2).await.unwrap();
        let ordered: Vec<Vec<u8>> = ordered.into_iter().map(ByteBuf::into_vec).collect();
        assert_eq!(ordered, vec![vec![0], vec![1], b"g1".to_vec(), vec![4]]);
        let rows = store.chunks(job).await.unwrap();
        assert!(rows.iter().all(|row| row.done && row.attempts == 1));
        assert!(store.ordered_partials(job, 6, 2).await.is_err(), "a missing chunk is an error");
    }
}
