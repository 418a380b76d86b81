//! Runs: a task started on a cluster with an input. A run keeps its controller job id, its
//! state and progress counters as last seen, its timings and, once it ended, its result's file
//! (see `runs::results`) or its error. A task keeps all its runs; deleting the task or the
//! cluster deletes them.

use sqlx::Row;

use super::{Store, StoreError, now_ms};

/// Where a run is in its life. Beyond the job's own states, `Submitting` covers the time the
/// web server spends handing the plugin and input to the controller, before a job id exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RunState {
    /// The web server is uploading the plugin and input to the controller.
    Submitting,
    /// The controller's job is receiving its input.
    Uploading,
    /// Waiting for a worker or for other jobs.
    Queued,
    /// Chunks are running.
    Running,
    /// The partials are being folded into the result.
    Aggregating,
    /// Done: the result is stored.
    Succeeded,
    /// Failed: the error is stored.
    Failed,
    /// Cancelled by the user.
    Cancelled,
}

impl RunState {
    /// Every state, in the order of a run's life.
    pub const ALL: [RunState; 8] = [
        RunState::Submitting,
        RunState::Uploading,
        RunState::Queued,
        RunState::Running,
        RunState::Aggregating,
        RunState::Succeeded,
        RunState::Failed,
        RunState::Cancelled,
    ];

    /// The name stored in the database and shown in pages.
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Submitting => "submitting",
            RunState::Uploading => "uploading",
            RunState::Queued => "queued",
            RunState::Running => "running",
            RunState::Aggregating => "aggregating",
            RunState::Succeeded => "succeeded",
            RunState::Failed => "failed",
            RunState::Cancelled => "cancelled",
        }
    }

    /// The state stored under `name`.
    pub fn parse(name: &str) -> Option<RunState> {
        RunState::ALL.into_iter().find(|state| state.as_str() == name)
    }

    /// Whether the run has ended and will not change again.
    pub fn is_final(self) -> bool {
        matches!(self, RunState::Succeeded | RunState::Failed | RunState::Cancelled)
    }
}

/// What starting a run records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRun {
    /// The task and the cluster.
    pub task_id: i64,
    pub cluster_id: i64,
    /// The input file's name and size in bytes.
    pub input_name: String,
    pub input_bytes: i64,
    /// Chunks in flight per worker.
    pub processes: i64,
    /// Parameters for the plugin's `new`.
    pub params: String,
}

/// Progress figures, as the controller last reported them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunProgress {
    /// Chunks in the input and chunks done.
    pub n_chunks: i64,
    pub chunks_done: i64,
    /// Lines and bytes done.
    pub lines_done: i64,
    pub bytes_done: i64,
    /// Chunk attempts that failed and were retried.
    pub retries: i64,
}

/// A run, with its task's title and its cluster's name, without its result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    /// The run's id.
    pub id: i64,
    /// Its owner, task and cluster.
    pub user_id: i64,
    pub task_id: i64,
    pub task_title: String,
    pub cluster_id: i64,
    pub cluster_name: String,
    /// The input's name and size in bytes.
    pub input_name: String,
    pub input_bytes: i64,
    /// Chunks in flight per worker, and the plugin's parameters.
    pub processes: i64,
    pub params: String,
    /// The controller's job, once submitted.
    pub job_id: Option<i64>,
    /// Where the run is.
    pub state: RunState,
    /// Progress as last seen.
    pub progress: RunProgress,
    /// When it was started by the user, began running, and ended (ms since the epoch).
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    /// Why it failed: the kind (`build`, `plugin`, `input`, `internal`) and the message.
    pub error_kind: Option<String>,
    pub error: Option<String>,
    /// The hash of the plugin's source the run used, once the controller took it.
    pub plugin_hash: Option<String>,
    /// The kept input's file name in the inputs directory, and until when it is kept.
    pub input_file: Option<String>,
    pub input_kept_until: Option<i64>,
}

impl Run {
    /// The kept input's file, while it is kept.
    pub fn kept_input(&self) -> Option<&str> {
        let until = self.input_kept_until?;
        self.input_file.as_deref().filter(|_| until > now_ms())
    }
}

impl Run {
    /// How long it ran, in milliseconds, once it ended.
    pub fn duration_ms(&self) -> Option<i64> {
        let start = self.started_at.unwrap_or(self.created_at);
        self.finished_at.map(|end| (end - start).max(0))
    }

    /// Bytes per second over the whole run, once it ended.
    pub fn throughput_bps(&self) -> Option<f64> {
        let ms = self.duration_ms()?;
        (self.state == RunState::Succeeded && ms > 0).then(|| self.input_bytes as f64 * 1000.0 / ms as f64)
    }
}

const SELECT: &str = "SELECT r.id, r.user_id, r.task_id, t.title AS task_title, r.cluster_id, c.name AS cluster_name, \
     r.input_name, r.input_bytes, r.processes, r.params, r.job_id, r.state, r.n_chunks, r.chunks_done, r.lines_done, \
     r.bytes_done, r.retries, r.created_at, r.started_at, r.finished_at, r.error_kind, r.error, r.plugin_hash, r.input_file, r.input_kept_until \
     FROM runs r JOIN tasks t ON t.id = r.task_id JOIN clusters c ON c.id = r.cluster_id";

fn run_from_row(row: &sqlx::any::AnyRow) -> Result<Run, sqlx::Error> {
    let state: String = row.try_get("state")?;
    let state =
        RunState::parse(&state).ok_or_else(|| sqlx::Error::Decode(format!("unknown run state `{state}`").into()))?;
    Ok(Run {
        id: row.try_get("id")?,
        user_id: row.try_get("user_id")?,
        task_id: row.try_get("task_id")?,
        task_title: row.try_get("task_title")?,
        cluster_id: row.try_get("cluster_id")?,
        cluster_name: row.try_get("cluster_name")?,
        input_name: row.try_get("input_name")?,
        input_bytes: row.try_get("input_bytes")?,
        processes: row.try_get("processes")?,
        params: row.try_get("params")?,
        job_id: row.try_get("job_id")?,
        state,
        progress: RunProgress {
            n_chunks: row.try_get("n_chunks")?,
            chunks_done: row.try_get("chunks_done")?,
            lines_done: row.try_get("lines_done")?,
            bytes_done: row.try_get("bytes_done")?,
            retries: row.try_get("retries")?,
        },
        created_at: row.try_get("created_at")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
        error_kind: row.try_get("error_kind")?,
        error: row.try_get("error")?,
        plugin_hash: row.try_get("plugin_hash")?,
        input_file: row.try_get("input_file")?,
        input_kept_until: row.try_get("input_kept_until")?,
    })
}

fn runs_from_rows(rows: &[sqlx::any::AnyRow]) -> Result<Vec<Run>, StoreError> {
    Ok(rows.iter().map(run_from_row).collect::<Result<_, _>>()?)
}

impl Store {
    /// Records a run of the user's task on the user's cluster, in state `Submitting`. `None`
    /// when the task or the cluster is not the user's.
    pub async fn create_run(&self, user_id: i64, run: &NewRun) -> Result<Option<Run>, StoreError> {
        // The INSERT … SELECT finds no row unless both the task and the cluster are the user's.
        let row = sqlx::query(
            "INSERT INTO runs (user_id, task_id, cluster_id, input_name, input_bytes, processes, params, state, \
             created_at) SELECT $1, t.id, c.id, $2, $3, $4, $5, $6, $7 FROM tasks t, clusters c \
             WHERE t.id = $8 AND t.user_id = $1 AND c.id = $9 AND c.user_id = $1 RETURNING id",
        )
        .bind(user_id)
        .bind(&run.input_name)
        .bind(run.input_bytes)
        .bind(run.processes)
        .bind(&run.params)
        .bind(RunState::Submitting.as_str())
        .bind(now_ms())
        .bind(run.task_id)
        .bind(run.cluster_id)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(row) => self.run(user_id, row.try_get("id")?).await,
            None => Ok(None),
        }
    }

    /// The user's run with this id; `None` when it does not exist or is someone else's.
    pub async fn run(&self, user_id: i64, id: i64) -> Result<Option<Run>, StoreError> {
        let row = sqlx::query(&format!("{SELECT} WHERE r.id = $1 AND r.user_id = $2"))
            .bind(id)
            .bind(user_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(run_from_row).transpose()?)
    }

    /// The run with this id, whoever's it is: for the server's own run watchers only.
    pub async fn run_by_id(&self, id: i64) -> Result<Option<Run>, StoreError> {
        let row = sqlx::query(&format!("{SELECT} WHERE r.id = $1")).bind(id).fetch_optional(&self.pool).await?;
        Ok(row.as_ref().map(run_from_row).transpose()?)
    }

    /// The runs of the user's task, newest first, at most `limit`.
    pub async fn task_runs(&self, user_id: i64, task_id: i64, limit: i64) -> Result<Vec<Run>, StoreError> {
        let rows =
            sqlx::query(&format!("{SELECT} WHERE r.task_id = $1 AND r.user_id = $2 ORDER BY r.id DESC LIMIT $3"))
                .bind(task_id)
                .bind(user_id)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?;
        runs_from_rows(&rows)
    }

    /// The user's runs, newest first, at most `limit`; only those in `state` when given.
    pub async fn user_runs(&self, user_id: i64, state: Option<RunState>, limit: i64) -> Result<Vec<Run>, StoreError> {
        let rows = sqlx::query(&format!(
            "{SELECT} WHERE r.user_id = $1 AND ($2 = '' OR r.state = $2) ORDER BY r.id DESC LIMIT $3"
        ))
        .bind(user_id)
        .bind(state.map_or("", RunState::as_str))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        runs_from_rows(&rows)
    }

    /// The last run of each of the user's tasks that has one, by task id.
    pub async fn last_run_states(&self, user_id: i64) -> Result<Vec<(i64, RunState)>, StoreError> {
        let rows = sqlx::query(
            "SELECT r.task_id, r.state FROM runs r WHERE r.user_id = $1 AND r.id = \
             (SELECT MAX(l.id) FROM runs l WHERE l.task_id = r.task_id AND l.user_id = $1)",
        )
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let state: String = row.try_get("state")?;
                let state = RunState::parse(&state)
                    .ok_or_else(|| sqlx::Error::Decode(format!("unknown run state `{state}`").into()))?;
                Ok((row.try_get("task_id")?, state))
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// The runs on the user's cluster, newest first, at most `limit`.
    pub async fn cluster_runs(&self, user_id: i64, cluster_id: i64, limit: i64) -> Result<Vec<Run>, StoreError> {
        let rows =
            sqlx::query(&format!("{SELECT} WHERE r.cluster_id = $1 AND r.user_id = $2 ORDER BY r.id DESC LIMIT $3"))
                .bind(cluster_id)
                .bind(user_id)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?;
        runs_from_rows(&rows)
    }

    /// Every run, of any user, that has not ended: the ones to watch again after a restart.
    pub async fn unfinished_runs(&self) -> Result<Vec<Run>, StoreError> {
        let rows = sqlx::query(&format!("{SELECT} WHERE r.state NOT IN ($1, $2, $3) ORDER BY r.id"))
            .bind(RunState::Succeeded.as_str())
            .bind(RunState::Failed.as_str())
            .bind(RunState::Cancelled.as_str())
            .fetch_all(&self.pool)
            .await?;
        runs_from_rows(&rows)
    }

    /// Records the controller's job of a run and its state. Answers whether the run exists and
    /// has not ended (it may have been cancelled while it was being submitted).
    pub async fn set_run_job(&self, id: i64, job_id: i64, state: RunState) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE runs SET job_id = $1, state = $2 WHERE id = $3 AND state NOT IN ($4, $5, $6)")
            .bind(job_id)
            .bind(state.as_str())
            .bind(id)
            .bind(RunState::Succeeded.as_str())
            .bind(RunState::Failed.as_str())
            .bind(RunState::Cancelled.as_str())
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Records a run's state and progress while it goes on; `started_at` is kept once set.
    /// A run that already ended is left alone. Answers whether the run exists.
    pub async fn update_run_progress(
        &self,
        id: i64,
        state: RunState,
        progress: &RunProgress,
        started_at: Option<i64>,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE runs SET state = $1, n_chunks = $2, chunks_done = $3, lines_done = $4, bytes_done = $5, \
             retries = $6, started_at = COALESCE(started_at, $7) WHERE id = $8 AND state NOT IN ($9, $10, $11)",
        )
        .bind(state.as_str())
        .bind(progress.n_chunks)
        .bind(progress.chunks_done)
        .bind(progress.lines_done)
        .bind(progress.bytes_done)
        .bind(progress.retries)
        .bind(started_at)
        .bind(id)
        .bind(RunState::Succeeded.as_str())
        .bind(RunState::Failed.as_str())
        .bind(RunState::Cancelled.as_str())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Records how a run ended: its final state, its result's file or the error, and when.
    /// A run that already ended keeps its first ending. Answers whether this one was recorded.
    pub async fn finish_run(&self, id: i64, ending: &RunEnding) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE runs SET state = $1, result_file = $2, error_kind = $3, error = $4, finished_at = $5, \
             started_at = COALESCE(started_at, $6), n_chunks = COALESCE($11, n_chunks), \
             chunks_done = COALESCE($12, chunks_done), lines_done = COALESCE($13, lines_done), \
             bytes_done = COALESCE($14, bytes_done), retries = COALESCE($15, retries), \
             plugin_output = COALESCE($16, plugin_output), result_bytes = $17 \
             WHERE id = $7 AND state NOT IN ($8, $9, $10)",
        )
        .bind(ending.state.as_str())
        .bind(ending.result.as_ref().map(|result| result.file.as_str()))
        .bind(ending.error_kind.as_deref())
        .bind(ending.error.as_deref())
        .bind(ending.finished_at)
        .bind(ending.started_at)
        .bind(id)
        .bind(RunState::Succeeded.as_str())
        .bind(RunState::Failed.as_str())
        .bind(RunState::Cancelled.as_str())
        .bind(ending.progress.map(|p| p.n_chunks))
        .bind(ending.progress.map(|p| p.chunks_done))
        .bind(ending.progress.map(|p| p.lines_done))
        .bind(ending.progress.map(|p| p.bytes_done))
        .bind(ending.progress.map(|p| p.retries))
        .bind(ending.plugin_output.as_deref())
        .bind(ending.result.as_ref().map(|result| result.bytes))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Records the hash of the plugin a run's job uses and the run's figures (JSON, see
    /// `runs::progress::Figures`); a run that already ended keeps those of its ending.
    pub async fn save_run_figures(
        &self,
        id: i64,
        plugin_hash: &str,
        figures: &str,
        ended: bool,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE runs SET plugin_hash = $1, figures = $2 WHERE id = $3 AND ($4 = 1 OR finished_at IS NULL)",
        )
        .bind(plugin_hash)
        .bind(figures)
        .bind(id)
        .bind(i64::from(ended))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Records that run `id`'s input is kept as `file` until `until`.
    pub async fn keep_run_input(&self, id: i64, file: &str, until: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE runs SET input_file = $1, input_kept_until = $2 WHERE id = $3")
            .bind(file)
            .bind(until)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Forgets the kept inputs whose time has passed by `now`; answers their files, to remove.
    pub async fn expire_run_inputs(&self, now: i64) -> Result<Vec<String>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let rows = sqlx::query("SELECT input_file FROM runs WHERE input_file IS NOT NULL AND input_kept_until <= $1")
            .bind(now)
            .fetch_all(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE runs SET input_file = NULL, input_kept_until = NULL \
             WHERE input_file IS NOT NULL AND input_kept_until <= $1",
        )
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(rows.iter().map(|row| row.try_get("input_file")).collect::<Result<_, _>>()?)
    }

    /// Every kept input file any run names.
    pub async fn run_input_files(&self) -> Result<Vec<String>, StoreError> {
        let rows =
            sqlx::query("SELECT input_file FROM runs WHERE input_file IS NOT NULL").fetch_all(&self.pool).await?;
        Ok(rows.iter().map(|row| row.try_get("input_file")).collect::<Result<_, _>>()?)
    }

    /// The kept input files of the user's runs.
    pub async fn user_run_input_files(&self, user_id: i64) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query("SELECT input_file FROM runs WHERE user_id = $1 AND input_file IS NOT NULL")
            .bind(user_id)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(|row| row.try_get("input_file")).collect::<Result<_, _>>()?)
    }

    /// The figures JSON of the user's run: `None` when the run is not the user's.
    pub async fn run_figures(&self, user_id: i64, id: i64) -> Result<Option<Option<String>>, StoreError> {
        self.run_text(user_id, id, "figures").await
    }

    /// What the user's run's plugin printed: `None` when the run is not the user's,
    /// `Some(None)` when it printed nothing (or has not ended).
    pub async fn run_plugin_output(&self, user_id: i64, id: i64) -> Result<Option<Option<String>>, StoreError> {
        self.run_text(user_id, id, "plugin_output").await
    }

    /// A text column of the user's run (one of this file's names, never input): `None` when
    /// the run is not the user's.
    async fn run_text(
        &self,
        user_id: i64,
        id: i64,
        column: &'static str,
    ) -> Result<Option<Option<String>>, StoreError> {
        let sql = format!("SELECT {column} FROM runs WHERE id = $1 AND user_id = $2");
        let row = sqlx::query(&sql).bind(id).bind(user_id).fetch_optional(&self.pool).await?;
        Ok(row.map(|row| row.try_get(column)).transpose()?)
    }

    /// Where the user's run's result is: `None` when the run is not the user's, `Some(None)`
    /// when it has no result.
    pub async fn run_result(&self, user_id: i64, id: i64) -> Result<Option<Option<StoredResult>>, StoreError> {
        let row = sqlx::query("SELECT result_file, result_bytes, result FROM runs WHERE id = $1 AND user_id = $2")
            .bind(id)
            .bind(user_id)
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let file: Option<String> = row.try_get("result_file")?;
        let bytes: Option<i64> = row.try_get("result_bytes")?;
        let in_row: Option<String> = row.try_get("result")?;
        Ok(Some(match (file, in_row) {
            (Some(file), _) => Some(StoredResult::File(ResultFile { file, bytes: bytes.unwrap_or(0) })),
            (None, Some(text)) => Some(StoredResult::Row(text)),
            (None, None) => None,
        }))
    }

    /// The result files of runs: every run's, or those of a user, of a user's task or of a
    /// user's cluster (to remove with them).
    pub async fn run_result_files(&self, of: RunsOf) -> Result<Vec<String>, StoreError> {
        let (user, task, cluster) = match of {
            RunsOf::All => (0, 0, 0),
            RunsOf::User(user) => (user, 0, 0),
            RunsOf::Task { user_id, task_id } => (user_id, task_id, 0),
            RunsOf::Cluster { user_id, cluster_id } => (user_id, 0, cluster_id),
        };
        let rows = sqlx::query(
            "SELECT result_file FROM runs WHERE result_file IS NOT NULL AND ($1 = 0 OR user_id = $1) \
             AND ($2 = 0 OR task_id = $2) AND ($3 = 0 OR cluster_id = $3)",
        )
        .bind(user)
        .bind(task)
        .bind(cluster)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(|row| row.try_get("result_file")).collect::<Result<_, _>>()?)
    }
}

/// Whose runs [`Store::run_result_files`] lists (ids from 1; 0 is none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunsOf {
    /// Every run.
    All,
    /// The user's.
    User(i64),
    /// Those of the user's task.
    Task { user_id: i64, task_id: i64 },
    /// Those on the user's cluster.
    Cluster { user_id: i64, cluster_id: i64 },
}

/// A run's result in the results directory (`runs::results`): its file's name there and its
/// length in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultFile {
    pub file: String,
    pub bytes: i64,
}

/// Where a succeeded run's result is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredResult {
    /// In a file (every run since results went to files).
    File(ResultFile),
    /// In the row, as runs that ended before keep it (migration 0007).
    Row(String),
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunEnding {
    /// `Succeeded`, `Failed` or `Cancelled`.
    pub state: RunState,
    /// The output JSON's file, when it succeeded.
    pub result: Option<ResultFile>,
    /// The failure's kind and message, when it failed.
    pub error_kind: Option<String>,
    pub error: Option<String>,
    /// When it began running, if known, and when it ended (ms since the epoch).
    pub started_at: Option<i64>,
    pub finished_at: i64,
    /// The final progress figures, when known.
    pub progress: Option<RunProgress>,
    /// What the plugin printed, as `kiln logs` prints it, when it printed anything.
    pub plugin_output: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_through_their_names() {
        for state in RunState::ALL {
            assert_eq!(RunState::parse(state.as_str()), Some(state));
        }
        assert_eq!(RunState::parse("bogus"), None);
        assert!(RunState::Cancelled.is_final() && !RunState::Aggregating.is_final());
    }
}
