//! Every SQL query of the controller: plugins, jobs, chunks and partials in SQLite (the
//! queries on chunks and partials are in `store/chunks.rs`).
//!
//! The schema is `engine/migrations/`. Chunks and partials exist only while a job runs; when a
//! job ends its figures, failure and result are written to its row and its chunks are deleted.
//! Each write that must be atomic for a restart (cutting the input, merging a group) is one
//! transaction, so a controller killed at any point resumes from a consistent store.

use std::path::Path;
use std::time::Duration;

use sqlx::Row;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};

mod chunks;
mod objects;
mod output;

use super::ControllerError;
use crate::rpc::build::BuildProgress;
use crate::rpc::{
    JobFailure, JobId, JobSpec, JobState, JobStatus, JobSummary, RpcError, UnknownJobState, WorkerProgress,
};

/// Connections in the pool: SQLite serialises writers anyway; a few let reads (status, list,
/// partials for aggregation) proceed beside a write.
const MAX_CONNECTIONS: u32 = 4;

/// How long a query waits for the database lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a query failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    /// SQLite refused or failed the query.
    #[error("the controller database failed while {what}: {source}")]
    Query { what: &'static str, source: sqlx::Error },
    /// A stored value could not be read back.
    #[error("the controller database holds a corrupt {what}: {message}")]
    Corrupt { what: &'static str, message: String },
}

impl StoreError {
    /// Whether the query failed because the disk is full (`SQLITE_FULL`, or `ENOSPC` on a
    /// file of the database).
    pub(crate) fn is_full(&self) -> bool {
        match self {
            StoreError::Query { source: sqlx::Error::Database(e), .. } => {
                // The primary result code is the low byte of an extended one.
                e.code().and_then(|code| code.parse::<i32>().ok()).is_some_and(|code| code & 0xff == 13)
            }
            StoreError::Query { source: sqlx::Error::Io(e), .. } => super::disk::is_full(e),
            _ => false,
        }
    }

    /// What a client is told when this query failed while `doing`: a full disk said as such
    /// (naming `data_dir`), anything else as an internal error.
    pub(crate) fn refusal(&self, data_dir: &Path, doing: &str) -> RpcError {
        match self.is_full() {
            true => super::disk::no_space(data_dir, doing),
            false => RpcError::Internal(self.to_string()),
        }
    }
}

fn query_error(what: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Query { what, source }
}

/// A chunk's place in the input, as the input is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ChunkMeta {
    /// The chunk's file, by its position in the input.
    pub file: u32,
    /// Where the chunk lies in the spooled input.
    pub offset: u64,
    pub len: u64,
    /// Its first line within its file, and how many it holds.
    pub first_line: u64,
    pub n_lines: u64,
}

/// A chunk's partial to store.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NewPartial<'a> {
    /// The chunk's index.
    pub index: u64,
    /// Attempts that ended, counting the one that produced the partial.
    pub attempts: u32,
    /// The chunk's lines (those of a chunk read by reference are known only now).
    pub n_lines: u64,
    /// The encoded partial.
    pub partial: &'a [u8],
}

/// A stored chunk of an unfinished job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ChunkRow {
    pub meta: ChunkMeta,
    pub done: bool,
    pub attempts: u32,
}

/// A stored job.
#[derive(Debug, Clone)]
pub(crate) struct JobRow {
    pub id: JobId,
    pub spec: JobSpec,
    pub figures: Figures,
    pub combine_group: u64,
    pub combines: Option<bool>,
}

impl JobRow {
    /// The status a watcher of this job sees.
    pub fn status(&self) -> JobStatus {
        self.figures.clone().status(self.id, &self.spec)
    }
}

/// Where a job stands and what it has done: everything its status says beside its spec. The
/// job in memory, its stored row and the record written when it ends all carry these, and
/// [`Figures::status`] is the one place a status is assembled from them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Figures {
    /// Bumped at every change watchers see.
    pub seq: u64,
    pub state: JobState,
    pub n_chunks: u64,
    pub bytes_total: u64,
    pub chunks_done: u64,
    pub lines_done: u64,
    pub bytes_done: u64,
    pub retries: u64,
    pub lost_workers: u64,
    pub speculative: u64,
    pub speculative_won: u64,
    pub workers: Vec<WorkerProgress>,
    pub created_ms: u64,
    pub started_ms: Option<u64>,
    pub finished_ms: Option<u64>,
    pub failure: Option<JobFailure>,
    /// The plugin's build (stored when the job ends).
    pub build: Option<BuildProgress>,
}

impl Figures {
    /// The figures of a job in `state`, created at `created_ms`, that has done nothing yet.
    pub fn new(state: JobState, created_ms: u64, seq: u64) -> Figures {
        Figures {
            seq,
            state,
            n_chunks: 0,
            bytes_total: 0,
            chunks_done: 0,
            lines_done: 0,
            bytes_done: 0,
            retries: 0,
            lost_workers: 0,
            speculative: 0,
            speculative_won: 0,
            workers: Vec::new(),
            created_ms,
            started_ms: None,
            finished_ms: None,
            failure: None,
            build: None,
        }
    }

    /// The status of job `id`, of spec `spec`, with these figures.
    pub fn status(self, id: JobId, spec: &JobSpec) -> JobStatus {
        JobStatus {
            id,
            owner: spec.owner.clone(),
            seq: self.seq,
            state: self.state,
            plugin_hash: spec.plugin_hash.clone(),
            params: spec.params.clone(),
            input_name: spec.input_name.clone(),
            processes: spec.processes,
            n_chunks: self.n_chunks,
            chunks_done: self.chunks_done,
            lines_done: self.lines_done,
            bytes_done: self.bytes_done,
            bytes_total: self.bytes_total,
            retries: self.retries,
            lost_workers: self.lost_workers,
            speculative: self.speculative,
            speculative_won: self.speculative_won,
            workers: self.workers,
            created_ms: self.created_ms,
            started_ms: self.started_ms,
            finished_ms: self.finished_ms,
            failure: self.failure,
            build: self.build,
        }
    }
}

/// What is written when a job ends: its last figures (`finished_ms` set) and its output.
#[derive(Debug, Clone)]
pub(crate) struct FinalRecord {
    pub job: JobId,
    pub figures: Figures,
    pub result: Option<String>,
}

/// A job state read from the database.
fn parse_state(name: &str) -> Result<JobState, StoreError> {
    name.parse().map_err(|e: UnknownJobState| StoreError::Corrupt { what: "job state", message: e.to_string() })
}

fn to_json<T: serde::Serialize>(what: &'static str, value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt { what, message: e.to_string() })
}

fn from_json<T: serde::de::DeserializeOwned>(what: &'static str, text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt { what, message: e.to_string() })
}

/// SQLite stores integers as i64; every count and id here fits.
fn int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn uint(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

fn get_u64(row: &SqliteRow, column: &'static str) -> Result<u64, StoreError> {
    row.try_get::<i64, _>(column).map(uint).map_err(query_error(column))
}

fn get_opt_u64(row: &SqliteRow, column: &'static str) -> Result<Option<u64>, StoreError> {
    row.try_get::<Option<i64>, _>(column).map(|v| v.map(uint)).map_err(query_error(column))
}

const JOB_COLUMNS: &str = "id, owner, spec, state, n_chunks, bytes_total, combine_group, combines, chunks_done, lines_done, \
     bytes_done, retries, lost_workers, speculative, speculative_won, workers, seq, created_ms, started_ms, \
     finished_ms, failure, build";

fn job_row(row: &SqliteRow) -> Result<JobRow, StoreError> {
    let spec: String = row.try_get("spec").map_err(query_error("reading a job"))?;
    let state: String = row.try_get("state").map_err(query_error("reading a job"))?;
    let workers: Option<String> = row.try_get("workers").map_err(query_error("reading a job"))?;
    let failure: Option<String> = row.try_get("failure").map_err(query_error("reading a job"))?;
    let build: Option<String> = row.try_get("build").map_err(query_error("reading a job"))?;
    let combines: Option<i64> = row.try_get("combines").map_err(query_error("reading a job"))?;
    let owner: String = row.try_get("owner").map_err(query_error("reading a job"))?;
    // The column is the record: specs stored before owners existed carry none.
    let spec = JobSpec { owner, ..from_json("job spec", &spec)? };
    Ok(JobRow {
        id: get_u64(row, "id")?,
        spec,
        figures: Figures {
            seq: get_u64(row, "seq")?,
            state: parse_state(&state)?,
            n_chunks: get_u64(row, "n_chunks")?,
            bytes_total: get_u64(row, "bytes_total")?,
            chunks_done: get_u64(row, "chunks_done")?,
            lines_done: get_u64(row, "lines_done")?,
            bytes_done: get_u64(row, "bytes_done")?,
            retries: get_u64(row, "retries")?,
            lost_workers: get_u64(row, "lost_workers")?,
            speculative: get_u64(row, "speculative")?,
            speculative_won: get_u64(row, "speculative_won")?,
            workers: workers.map(|w| from_json("job's worker figures", &w)).transpose()?.unwrap_or_default(),
            created_ms: get_u64(row, "created_ms")?,
            started_ms: get_opt_u64(row, "started_ms")?,
            finished_ms: get_opt_u64(row, "finished_ms")?,
            failure: failure.map(|f| from_json("job failure", &f)).transpose()?,
            build: build.map(|b| from_json("job build", &b)).transpose()?,
        },
        combine_group: get_u64(row, "combine_group")?.max(1),
        combines: combines.map(|c| c != 0),
    })
}

/// The controller's database.
#[derive(Clone)]
pub(crate) struct Store {
    pool: SqlitePool,
}

impl Store {
    /// Opens (creating it if needed) and migrates the database at `path`.
    pub async fn open(path: &Path) -> Result<Store, ControllerError> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .connect_with(options)
            .await
            .map_err(|source| ControllerError::Database { path: path.to_owned(), source })?;
        sqlx::migrate!("./migrations")
            .run(&pool)
            .await
            .map_err(|source| ControllerError::Migrate { path: path.to_owned(), source })?;
        Ok(Store { pool })
    }

    /// Waits for queries in progress and closes every connection.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Records a stored plugin archive.
    pub async fn add_plugin(&self, hash: &str, size: u64, now_ms: u64) -> Result<(), StoreError> {
        sqlx::query("INSERT OR IGNORE INTO plugins (hash, size, created_ms) VALUES (?, ?, ?)")
            .bind(hash)
            .bind(int(size))
            .bind(int(now_ms))
            .execute(&self.pool)
            .await
            .map_err(query_error("recording a plugin"))?;
        Ok(())
    }

    /// Whether a plugin with this hash was uploaded.
    pub async fn has_plugin(&self, hash: &str) -> Result<bool, StoreError> {
        let row = sqlx::query("SELECT 1 FROM plugins WHERE hash = ?")
            .bind(hash)
            .fetch_optional(&self.pool)
            .await
            .map_err(query_error("looking up a plugin"))?;
        Ok(row.is_some())
    }

    /// Stores a new job, waiting for its input; answers its id.
    pub async fn insert_job(&self, spec: &JobSpec, created_ms: u64) -> Result<JobId, StoreError> {
        // Not `RETURNING id` with `fetch_one`: SQLite hands the row out before the statement
        // commits, and `fetch_one` stops there, so a commit that failed (a full disk) went
        // unnoticed and the id of a job that was never stored was given out, then again to
        // the next job. `execute` runs the statement to its end.
        let done = sqlx::query("INSERT INTO jobs (owner, spec, state, created_ms) VALUES (?, ?, ?, ?)")
            .bind(&spec.owner)
            .bind(to_json("job spec", spec)?)
            .bind(JobState::Uploading.as_str())
            .bind(int(created_ms))
            .execute(&self.pool)
            .await
            .map_err(query_error("creating a job"))?;
        u64::try_from(done.last_insert_rowid())
            .map_err(|_| StoreError::Corrupt { what: "job id", message: done.last_insert_rowid().to_string() })
    }

    /// Records when a job started running; a queued job becomes running, and a job whose
    /// input still uploads stays uploading.
    pub async fn mark_running(&self, job: JobId, started_ms: u64) -> Result<(), StoreError> {
        let (queued, running, uploading) =
            (JobState::Queued.as_str(), JobState::Running.as_str(), JobState::Uploading.as_str());
        sqlx::query(
            "UPDATE jobs SET state = CASE state WHEN ? THEN ? ELSE state END, started_ms = ? \
             WHERE id = ? AND state IN (?, ?)",
        )
        .bind(queued)
        .bind(running)
        .bind(int(started_ms))
        .bind(int(job))
        .bind(queued)
        .bind(uploading)
        .execute(&self.pool)
        .await
        .map_err(query_error("marking a job running"))?;
        Ok(())
    }

    /// Records whether the job's plugin combines.
    pub async fn set_combines(&self, job: JobId, combines: bool) -> Result<(), StoreError> {
        sqlx::query("UPDATE jobs SET combines = ? WHERE id = ?")
            .bind(i64::from(combines))
            .bind(int(job))
            .execute(&self.pool)
            .await
            .map_err(query_error("recording whether a plugin combines"))?;
        Ok(())
    }

    /// Records a running job's figures of lost workers and speculative copies. They only
    /// grow, so a write that arrives late never lowers them.
    pub async fn save_figures(
        &self,
        job: JobId,
        lost_workers: u64,
        speculative: u64,
        speculative_won: u64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE jobs SET lost_workers = MAX(lost_workers, ?), speculative = MAX(speculative, ?), \
             speculative_won = MAX(speculative_won, ?) WHERE id = ?",
        )
        .bind(int(lost_workers))
        .bind(int(speculative))
        .bind(int(speculative_won))
        .bind(int(job))
        .execute(&self.pool)
        .await
        .map_err(query_error("recording lost workers and speculative copies"))?;
        Ok(())
    }

    /// Writes a job's end: state, figures, failure or result; deletes its chunks.
    pub async fn save_final(&self, record: &FinalRecord) -> Result<(), StoreError> {
        let what = "recording the end of a job";
        let figures = &record.figures;
        let failure = figures.failure.as_ref().map(|f| to_json("job failure", f)).transpose()?;
        let workers = to_json("job's worker figures", &figures.workers)?;
        let build = figures.build.as_ref().map(|b| to_json("job build", b)).transpose()?;
        let mut tx = self.pool.begin().await.map_err(query_error(what))?;
        sqlx::query(
            "UPDATE jobs SET state = ?, finished_ms = ?, failure = ?, result = ?, chunks_done = ?, lines_done = ?, \
             bytes_done = ?, retries = ?, lost_workers = ?, speculative = ?, speculative_won = ?, workers = ?, \
             seq = ?, build = ? WHERE id = ?",
        )
        .bind(figures.state.as_str())
        .bind(figures.finished_ms.map(int))
        .bind(failure)
        .bind(record.result.as_deref())
        .bind(int(figures.chunks_done))
        .bind(int(figures.lines_done))
        .bind(int(figures.bytes_done))
        .bind(int(figures.retries))
        .bind(int(figures.lost_workers))
        .bind(int(figures.speculative))
        .bind(int(figures.speculative_won))
        .bind(workers)
        .bind(int(figures.seq))
        .bind(build)
        .bind(int(record.job))
        .execute(&mut *tx)
        .await
        .map_err(query_error(what))?;
        for table in [
            "DELETE FROM chunks WHERE job_id = ?",
            "DELETE FROM combined WHERE job_id = ?",
            "DELETE FROM input_files WHERE job_id = ?",
            "DELETE FROM input_objects WHERE job_id = ?",
        ] {
            sqlx::query(table).bind(int(record.job)).execute(&mut *tx).await.map_err(query_error(what))?;
        }
        tx.commit().await.map_err(query_error(what))
    }

    /// A job, if it exists.
    pub async fn job(&self, job: JobId) -> Result<Option<JobRow>, StoreError> {
        let row = sqlx::query(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?"))
            .bind(int(job))
            .fetch_optional(&self.pool)
            .await
            .map_err(query_error("reading a job"))?;
        row.as_ref().map(job_row).transpose()
    }

    /// The jobs that had not ended when the controller stopped, oldest first.
    pub async fn unfinished_jobs(&self) -> Result<Vec<JobRow>, StoreError> {
        let unfinished = JobState::ALL.iter().filter(|state| !state.is_final());
        let names: Vec<String> = unfinished.map(|state| format!("'{}'", state.as_str())).collect();
        let rows =
            sqlx::query(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE state IN ({}) ORDER BY id", names.join(", ")))
                .fetch_all(&self.pool)
                .await
                .map_err(query_error("reading unfinished jobs"))?;
        rows.iter().map(job_row).collect()
    }

    /// The state and output of a job, if it exists.
    pub async fn result(&self, job: JobId) -> Result<Option<(JobState, Option<String>)>, StoreError> {
        let row = sqlx::query("SELECT state, result FROM jobs WHERE id = ?")
            .bind(int(job))
            .fetch_optional(&self.pool)
            .await
            .map_err(query_error("reading a result"))?;
        let Some(row) = row else { return Ok(None) };
        let state: String = row.try_get("state").map_err(query_error("reading a result"))?;
        let result: Option<String> = row.try_get("result").map_err(query_error("reading a result"))?;
        Ok(Some((parse_state(&state)?, result)))
    }

    /// The newest `limit` jobs, newest first, with their stored figures.
    pub async fn list_jobs(&self, limit: u64) -> Result<Vec<JobSummary>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, owner, spec, state, n_chunks, chunks_done, created_ms, finished_ms FROM jobs \
             ORDER BY id DESC LIMIT ?",
        )
        .bind(int(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(query_error("listing jobs"))?;
        rows.iter()
            .map(|row| {
                let spec: String = row.try_get("spec").map_err(query_error("listing jobs"))?;
                let state: String = row.try_get("state").map_err(query_error("listing jobs"))?;
                Ok(JobSummary {
                    id: get_u64(row, "id")?,
                    owner: row.try_get("owner").map_err(query_error("listing jobs"))?,
                    state: parse_state(&state)?,
                    input_name: from_json::<JobSpec>("job spec", &spec)?.input_name,
                    n_chunks: get_u64(row, "n_chunks")?,
                    chunks_done: get_u64(row, "chunks_done")?,
                    created_ms: get_u64(row, "created_ms")?,
                    finished_ms: get_opt_u64(row, "finished_ms")?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(in crate::controller) fn spec() -> JobSpec {
        JobSpec {
            owner: "web:3".into(),
            plugin_hash: "abc".into(),
            params: String::new(),
            processes: 2,
            input_name: "in.txt".into(),
            input_files: Vec::new(),
            input_urls: Vec::new(),
            max_attempts: 4,
            chunk_size: 10,
            memory_limit: 0,
            chunk_timeout_ms: 0,
            speculative: true,
        }
    }

    pub(in crate::controller) fn meta(index: u64) -> ChunkMeta {
        ChunkMeta { file: 0, offset: index * 10, len: 10, first_line: index + 1, n_lines: 1 }
    }

    #[tokio::test]
    async fn a_finished_job_keeps_its_figures_and_result_and_drops_its_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("c.db")).await.unwrap();
        let job = store.insert_job(&spec(), 7).await.unwrap();
        assert!(store.finish_input(job, 0, &[meta(0)], 10, 16).await.unwrap());
        store.mark_running(job, 8).await.unwrap();
        store.save_partials(job, &[NewPartial { index: 0, attempts: 1, n_lines: 1, partial: b"p" }]).await.unwrap();
        let figures = Figures {
            seq: 12,
            state: JobState::Succeeded,
            n_chunks: 1,
            bytes_total: 10,
            chunks_done: 1,
            lines_done: 1,
            bytes_done: 10,
            retries: 0,
            lost_workers: 1,
            speculative: 2,
            speculative_won: 1,
            workers: Vec::new(),
            created_ms: 7,
            started_ms: Some(8),
            finished_ms: Some(9),
            failure: None,
            build: None,
        };
        let record = FinalRecord { job, figures, result: Some("{\"n\":1}".into()) };
        store.save_figures(job, 1, 1, 0).await.unwrap();
        assert_eq!(store.unfinished_jobs().await.unwrap()[0].figures.speculative, 1, "figures survive a restart");
        store.save_final(&record).await.unwrap();
        store.save_figures(job, 0, 1, 0).await.unwrap();
        let row = store.job(job).await.unwrap().unwrap();
        let stored = &row.figures;
        assert_eq!(
            (stored.state, stored.started_ms, stored.finished_ms, stored.seq),
            (JobState::Succeeded, Some(8), Some(9), 12)
        );
        assert_eq!(
            (stored.lost_workers, stored.speculative, stored.speculative_won),
            (1, 2, 1),
            "a late write lowers nothing"
        );
        assert_eq!(store.result(job).await.unwrap(), Some((JobState::Succeeded, Some("{\"n\":1}".into()))));
        assert!(store.chunks(job).await.unwrap().is_empty());
        assert!(store.unfinished_jobs().await.unwrap().is_empty());
        let listed = &store.list_jobs(10).await.unwrap()[0];
        assert_eq!((listed.input_name.as_str(), listed.owner.as_str()), ("in.txt", "web:3"));
        assert_eq!(row.spec.owner, "web:3");
    }
}
