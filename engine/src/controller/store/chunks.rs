//! The queries on a running job's chunks and partials.
//!
//! Partials and failed attempts come back from workers in batches; each batch is written in
//! one transaction with multi-row statements, since every statement costs a round trip to
//! sqlx's SQLite thread and every transaction a commit.

use serde_bytes::ByteBuf;
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection};

use super::{ChunkMeta, ChunkRow, NewPartial, Store, StoreError, get_u64, int, query_error};
use crate::rpc::{JobId, JobState};

/// The most rows one multi-row statement writes: 256 rows of a few values stay far below
/// SQLite's limit of 32766 bound values, and the batches of chunks a worker answers fit in one.
const ROWS_PER_STATEMENT: usize = 256;

impl Store {
    /// Stores chunks `first..` of a job whose input is still uploading; answers false (and
    /// stores nothing) when the job is no longer uploading.
    pub async fn add_chunks(&self, job: JobId, first: u64, chunks: &[ChunkMeta]) -> Result<bool, StoreError> {
        let what = "storing a job's chunks";
        let mut tx = self.pool.begin().await.map_err(query_error(what))?;
        let updated = sqlx::query("UPDATE jobs SET n_chunks = ? WHERE id = ? AND state = ?")
            .bind(int(first + chunks.len() as u64))
            .bind(int(job))
            .bind(JobState::Uploading.as_str())
            .execute(&mut *tx)
            .await
            .map_err(query_error(what))?;
        if updated.rows_affected() == 0 {
            return Ok(false);
        }
        insert_chunk_rows(&mut tx, job, first, chunks).await?;
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
            "UPDATE jobs SET state = CASE WHEN started_ms IS NULL THEN ? ELSE ? END, \
             n_chunks = ?, bytes_total = ?, combine_group = ? WHERE id = ? AND state = ?",
        )
        .bind(JobState::Queued.as_str())
        .bind(JobState::Running.as_str())
        .bind(int(first + chunks.len() as u64))
        .bind(int(bytes_total))
        .bind(int(combine_group))
        .bind(int(job))
        .bind(JobState::Uploading.as_str())
        .execute(&mut *tx)
        .await
        .map_err(query_error(what))?;
        if updated.rows_affected() == 0 {
            return Ok(false);
        }
        insert_chunk_rows(&mut tx, job, first, chunks).await?;
        tx.commit().await.map_err(query_error(what))?;
        Ok(true)
    }

    /// Stores the partials of chunks of a job in one transaction, with a statement per
    /// [`ROWS_PER_STATEMENT`] of them; a chunk that has a partial keeps it (the first stored
    /// wins). Answers how many were stored.
    pub async fn save_partials(&self, job: JobId, partials: &[NewPartial<'_>]) -> Result<u64, StoreError> {
        let what = "storing partials";
        let mut tx = self.pool.begin().await.map_err(query_error(what))?;
        let mut stored = 0;
        for rows in partials.chunks(ROWS_PER_STATEMENT) {
            let mut query = QueryBuilder::<Sqlite>::new("WITH answered (idx, attempts, n_lines, partial) AS (");
            query.push_values(rows, |mut row, new| {
                row.push_bind(int(new.index))
                    .push_bind(i64::from(new.attempts))
                    .push_bind(int(new.n_lines))
                    .push_bind(new.partial);
            });
            query.push(
                ") UPDATE chunks SET done = 1, partial = answered.partial, attempts = answered.attempts, \
                 n_lines = answered.n_lines \
                 FROM answered WHERE chunks.idx = answered.idx AND chunks.done = 0 AND chunks.job_id = ",
            );
            query.push_bind(int(job));
            stored += query.build().execute(&mut *tx).await.map_err(query_error(what))?.rows_affected();
        }
        tx.commit().await.map_err(query_error(what))?;
        Ok(stored)
    }

    /// Records failed attempts at chunks of a job, `(index, attempts)`, and the job's retry
    /// count, in one transaction.
    pub async fn save_attempts(&self, job: JobId, attempts: &[(u64, u32)], retries: u64) -> Result<(), StoreError> {
        let what = "recording failed attempts";
        let mut tx = self.pool.begin().await.map_err(query_error(what))?;
        for rows in attempts.chunks(ROWS_PER_STATEMENT) {
            let mut query = QueryBuilder::<Sqlite>::new("WITH failed (idx, attempts) AS (");
            query.push_values(rows, |mut row, (index, attempts)| {
                row.push_bind(int(*index)).push_bind(i64::from(*attempts));
            });
            query.push(
                ") UPDATE chunks SET attempts = failed.attempts FROM failed \
                 WHERE chunks.idx = failed.idx AND chunks.job_id = ",
            );
            query.push_bind(int(job));
            query.build().execute(&mut *tx).await.map_err(query_error(what))?;
        }
        sqlx::query("UPDATE jobs SET retries = ? WHERE id = ?")
            .bind(int(retries))
            .bind(int(job))
            .execute(&mut *tx)
            .await
            .map_err(query_error(what))?;
        tx.commit().await.map_err(query_error(what))
    }

    /// How many bytes the stored partials of the chunks `first..first + count` hold together
    /// (SQLite reads a blob's length from its record header, not the blob).
    pub async fn partial_bytes(&self, job: JobId, first: u64, count: u64) -> Result<u64, StoreError> {
        let row = sqlx::query(
            "SELECT COALESCE(SUM(length(partial)), 0) AS bytes FROM chunks \
             WHERE job_id = ? AND idx >= ? AND idx < ? AND partial IS NOT NULL",
        )
        .bind(int(job))
        .bind(int(first))
        .bind(int(first + count))
        .fetch_one(&self.pool)
        .await
        .map_err(query_error("measuring partials"))?;
        get_u64(&row, "bytes")
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

    /// The partials of a job in input order from the one covering chunk `from` on, a merged
    /// group's partial in place of its members', as `(first chunk, chunks covered, partial)`:
    /// as many as fit in `budget` bytes, and at least one (none after the last). Reading a
    /// job's partials page by page keeps them out of memory all at once: the page is chosen
    /// from the partials' lengths first, and only its partials are read, since a stream of rows
    /// would read dozens of them ahead whatever their size.
    pub async fn partials_page(
        &self,
        job: JobId,
        group_size: u64,
        from: u64,
        budget: usize,
    ) -> Result<Vec<(u64, u64, ByteBuf)>, StoreError> {
        use futures::TryStreamExt;
        let what = "reading partials for aggregation";
        // Each row is keyed by the first chunk it covers, so the two kinds merge in order.
        let partials = |column: &str, last: &str| {
            format!(
                "SELECT first, covers, {column} FROM ( \
                 SELECT idx AS first, 1 AS covers, partial FROM chunks WHERE job_id = ?1 AND partial IS NOT NULL \
                 UNION ALL \
                 SELECT grp * ?2 AS first, ?2 AS covers, partial FROM combined WHERE job_id = ?1 \
                 ) WHERE first >= ?3{last} ORDER BY first"
            )
        };
        let sizes = partials("length(partial) AS len", "");
        let mut rows = sqlx::query(&sizes).bind(int(job)).bind(int(group_size)).bind(int(from)).fetch(&self.pool);
        let (mut last, mut bytes) = (None, 0u64);
        while let Some(row) = rows.try_next().await.map_err(query_error(what))? {
            last = Some(get_u64(&row, "first")?);
            bytes += get_u64(&row, "len")?;
            if bytes >= budget as u64 {
                break;
            }
        }
        drop(rows);
        let Some(last) = last else { return Ok(Vec::new()) };
        let page = partials("partial", " AND first <= ?4");
        let rows = sqlx::query(&page)
            .bind(int(job))
            .bind(int(group_size))
            .bind(int(from))
            .bind(int(last))
            .fetch_all(&self.pool)
            .await
            .map_err(query_error(what))?;
        rows.into_iter()
            .map(|row| {
                let (first, covers) = (get_u64(&row, "first")?, get_u64(&row, "covers")?);
                let partial = row.try_get::<Vec<u8>, _>("partial").map_err(query_error(what))?;
                Ok((first, covers, ByteBuf::from(partial)))
            })
            .collect()
    }

    /// The chunks of a job, in order.
    pub async fn chunks(&self, job: JobId) -> Result<Vec<ChunkRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT file, byte_offset, byte_len, first_line, n_lines, done, attempts FROM chunks WHERE job_id = ? \
             ORDER BY idx",
        )
        .bind(int(job))
        .fetch_all(&self.pool)
        .await
        .map_err(query_error("reading a job's chunks"))?;
        rows.iter()
            .map(|row| {
                Ok(ChunkRow {
                    meta: ChunkMeta {
                        file: u32::try_from(get_u64(row, "file")?).unwrap_or(u32::MAX),
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

    /// Records that the job's uploaded file number `file` starts at byte `start` of its
    /// spooled input (again: the first record stays).
    pub async fn start_file(&self, job: JobId, file: u32, start: u64) -> Result<(), StoreError> {
        sqlx::query("INSERT OR IGNORE INTO input_files (job_id, idx, start) VALUES (?, ?, ?)")
            .bind(int(job))
            .bind(i64::from(file))
            .bind(int(start))
            .execute(&self.pool)
            .await
            .map_err(query_error("recording where an input file starts"))?;
        Ok(())
    }

    /// Where each of the job's uploaded files that began starts in its spooled input:
    /// `(file, start)`, in file order.
    pub async fn file_starts(&self, job: JobId) -> Result<Vec<(u32, u64)>, StoreError> {
        let rows = sqlx::query("SELECT idx, start FROM input_files WHERE job_id = ? ORDER BY idx")
            .bind(int(job))
            .fetch_all(&self.pool)
            .await
            .map_err(query_error("reading where a job's input files start"))?;
        rows.iter()
            .map(|row| Ok((u32::try_from(get_u64(row, "idx")?).unwrap_or(u32::MAX), get_u64(row, "start")?)))
            .collect()
    }
}

/// Inserts the rows of a job's chunks `first_index..` (in `chunks` order) within the caller's
/// transaction, with a statement per [`ROWS_PER_STATEMENT`] chunks: 100,000 tiny chunks are
/// 400 statements rather than 100,000 round trips to the SQLite thread.
pub(super) async fn insert_chunk_rows(
    tx: &mut SqliteConnection,
    job: JobId,
    first_index: u64,
    chunks: &[ChunkMeta],
) -> Result<(), StoreError> {
    let what = "storing a job's chunks";
    for (n, rows) in chunks.chunks(ROWS_PER_STATEMENT).enumerate() {
        let first = first_index + (n * ROWS_PER_STATEMENT) as u64;
        let mut query = QueryBuilder::<Sqlite>::new(
            "INSERT INTO chunks (job_id, idx, file, byte_offset, byte_len, first_line, n_lines) ",
        );
        query.push_values(rows.iter().enumerate(), |mut row, (offset, chunk)| {
            row.push_bind(int(job))
                .push_bind(int(first + offset as u64))
                .push_bind(i64::from(chunk.file))
                .push_bind(int(chunk.offset))
                .push_bind(int(chunk.len))
                .push_bind(int(chunk.first_line))
                .push_bind(int(chunk.n_lines));
        });
        query.build().execute(&mut *tx).await.map_err(query_error(what))?;
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
        assert_eq!(store.job(job).await.unwrap().unwrap().figures.state, JobState::Queued);
        let bytes: Vec<[u8; 1]> = (0..5).map(|index| [index as u8]).collect();
        let partials: Vec<NewPartial<'_>> = (0..5)
            .map(|index| NewPartial { index, attempts: 1, n_lines: 1, partial: &bytes[index as usize] })
            .collect();
        assert_eq!(store.save_partials(job, &partials[..2]).await.unwrap(), 2);
        assert_eq!(store.save_partials(job, &partials[2..]).await.unwrap(), 3);
        let late = NewPartial { index: 3, attempts: 2, n_lines: 1, partial: b"late" };
        assert_eq!(store.save_partials(job, &[late, late]).await.unwrap(), 0, "a duplicate is dropped");
        let group = store.chunk_partials(job, 2, 2).await.unwrap();
        assert_eq!(group, vec![ByteBuf::from(vec![2]), ByteBuf::from(vec![3])]);
        store.save_combined(job, 1, 2, b"g1").await.unwrap();
        assert_eq!(store.combined_groups(job).await.unwrap(), vec![1]);
        let store = &store;
        let page = |from, budget| async move {
            let page = store.partials_page(job, 2, from, budget).await.unwrap();
            page.into_iter().map(|(first, covers, partial)| (first, covers, partial.into_vec())).collect::<Vec<_>>()
        };
        let ordered = vec![(0, 1, vec![0]), (1, 1, vec![1]), (2, 2, b"g1".to_vec()), (4, 1, vec![4])];
        assert_eq!(page(0, 1 << 20).await, ordered, "a merged group's partial in place of its members'");
        assert_eq!(page(0, 2).await, ordered[..2], "pages end once their budget is spent");
        assert_eq!(page(2, 1).await, ordered[2..3], "at least one partial per page");
        assert_eq!(page(4, 1 << 20).await, ordered[3..]);
        assert_eq!(page(5, 1 << 20).await, vec![], "none after the last");
        let rows = store.chunks(job).await.unwrap();
        assert!(rows.iter().all(|row| row.done && row.attempts == 1));
    }

    /// This process's resident set, now and at its peak, in bytes (from `/proc/self/status`).
    fn resident() -> (u64, u64) {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let kib = |key: &str| -> u64 {
            let line = status.lines().find(|line| line.starts_with(key)).unwrap();
            line[key.len()..].trim().trim_end_matches(" kB").parse::<u64>().unwrap() << 10
        };
        (kib("VmRSS:"), kib("VmHWM:"))
    }

    #[tokio::test]
    async fn a_page_of_big_partials_holds_only_its_own_in_memory() {
        const N: u64 = 40;
        const SIZE: usize = 4 << 20;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("c.db")).await.unwrap();
        let job = store.insert_job(&spec(), 1).await.unwrap();
        let chunks: Vec<ChunkMeta> = (0..N).map(meta).collect();
        assert!(store.finish_input(job, 0, &chunks, 50, 16).await.unwrap());
        for index in 0..N {
            let partial = vec![index as u8; SIZE];
            let new = NewPartial { index, attempts: 1, n_lines: 1, partial: &partial };
            assert_eq!(store.save_partials(job, &[new]).await.unwrap(), 1);
        }
        // Resets the peak (VmHWM) to the current resident set (Linux 4.0 and later).
        std::fs::write("/proc/self/clear_refs", "5").unwrap();
        let before = resident().0;
        let mut from = 0;
        while from < N {
            let page = store.partials_page(job, 16, from, 2 * SIZE).await.unwrap();
            assert_eq!(page.len(), 2, "a page of 2 partials from chunk {from}");
            for (first, covers, partial) in page {
                assert_eq!((first, covers, partial.len()), (from, 1, SIZE));
                assert!(partial.iter().all(|byte| *byte == first as u8), "the partial of chunk {first}");
                from += 1;
            }
        }
        let grown = resident().1.saturating_sub(before);
        // All of them would be 160 MiB; a page is 8 MiB, read and copied once or twice.
        assert!(grown < 64 << 20, "reading {N} partials of {SIZE} bytes page by page grew memory by {grown} bytes");
    }

    #[tokio::test]
    async fn partials_and_failed_attempts_of_many_chunks_are_written_in_one_go() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("c.db")).await.unwrap();
        let job = store.insert_job(&spec(), 1).await.unwrap();
        let n_chunks = ROWS_PER_STATEMENT as u64 * 2 + 10;
        let chunks: Vec<ChunkMeta> = (0..n_chunks).map(meta).collect();
        assert!(store.finish_input(job, 0, &chunks, n_chunks * 10, 4).await.unwrap());
        let failed: Vec<(u64, u32)> = (0..n_chunks).filter(|i| i.is_multiple_of(3)).map(|i| (i, 1)).collect();
        store.save_attempts(job, &failed, failed.len() as u64).await.unwrap();
        let bytes: Vec<Vec<u8>> = (0..n_chunks).map(|index| index.to_le_bytes().to_vec()).collect();
        let partials: Vec<NewPartial<'_>> = (0..n_chunks)
            .filter(|index| !index.is_multiple_of(7))
            .map(|index| NewPartial {
                index,
                attempts: 1 + u32::from(index.is_multiple_of(3)),
                n_lines: 1,
                partial: &bytes[index as usize],
            })
            .collect();
        assert_eq!(store.save_partials(job, &partials).await.unwrap(), partials.len() as u64);
        let rows = store.chunks(job).await.unwrap();
        assert_eq!(rows.len() as u64, n_chunks);
        for (index, row) in rows.iter().enumerate() {
            let index = index as u64;
            assert_eq!(row.meta, meta(index), "chunk {index}");
            assert_eq!(row.done, !index.is_multiple_of(7), "chunk {index}");
            let attempts = match (index.is_multiple_of(7), index.is_multiple_of(3)) {
                (false, true) => 2,
                (false, false) | (true, true) => 1,
                (true, false) => 0,
            };
            assert_eq!(row.attempts, attempts, "chunk {index}");
        }
        let stored = store.chunk_partials(job, 1, 6).await.unwrap();
        assert_eq!(stored, (1..7).map(|index: u64| ByteBuf::from(index.to_le_bytes().to_vec())).collect::<Vec<_>>());
        let status = store.unfinished_jobs().await.unwrap();
        assert_eq!(status[0].figures.retries, failed.len() as u64);
    }

    #[tokio::test]
    async fn chunk_rows_are_inserted_in_order_from_any_first_index() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("c.db")).await.unwrap();
        let job = store.insert_job(&spec(), 1).await.unwrap();
        let first: Vec<ChunkMeta> = (0..3).map(meta).collect();
        assert!(store.add_chunks(job, 0, &first).await.unwrap());
        let more: Vec<ChunkMeta> = (3..3 + ROWS_PER_STATEMENT as u64 + 2).map(meta).collect();
        let mut tx = store.pool.begin().await.unwrap();
        insert_chunk_rows(&mut tx, job, 3, &more).await.unwrap();
        tx.commit().await.unwrap();
        let rows = store.chunks(job).await.unwrap();
        let metas: Vec<ChunkMeta> = rows.iter().map(|row| row.meta).collect();
        assert_eq!(metas, first.into_iter().chain(more).collect::<Vec<_>>());
        assert!(rows.iter().all(|row| !row.done && row.attempts == 0));
    }
}
