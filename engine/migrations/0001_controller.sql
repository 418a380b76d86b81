-- The controller's store: plugin archives by hash, jobs, and the chunks of unfinished jobs.
-- Inputs live in <data_dir>/inputs/<job>.txt and archives in <data_dir>/plugins/<hash>.tar.gz;
-- this database holds metadata, partials and results.

CREATE TABLE plugins (
    hash TEXT PRIMARY KEY NOT NULL,
    size INTEGER NOT NULL,
    created_ms INTEGER NOT NULL
);

CREATE TABLE jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    -- The JobSpec as JSON, with defaults filled in.
    spec TEXT NOT NULL,
    -- uploading, queued, running, aggregating, succeeded, failed, cancelled.
    state TEXT NOT NULL,
    n_chunks INTEGER NOT NULL DEFAULT 0,
    bytes_total INTEGER NOT NULL DEFAULT 0,
    -- How many consecutive chunks make one combine group (fixed when the input is cut).
    combine_group INTEGER NOT NULL DEFAULT 16,
    -- Whether the plugin combines: NULL until a worker has said so, then 0 or 1.
    combines INTEGER,
    -- Progress figures; kept up to date for finished jobs, derived from chunks while running.
    chunks_done INTEGER NOT NULL DEFAULT 0,
    lines_done INTEGER NOT NULL DEFAULT 0,
    bytes_done INTEGER NOT NULL DEFAULT 0,
    retries INTEGER NOT NULL DEFAULT 0,
    -- The final per-worker figures (JSON list of WorkerProgress) and status sequence number.
    workers TEXT,
    seq INTEGER NOT NULL DEFAULT 0,
    created_ms INTEGER NOT NULL,
    started_ms INTEGER,
    finished_ms INTEGER,
    -- The JobFailure as JSON, for failed jobs.
    failure TEXT,
    -- The output JSON, for succeeded jobs.
    result TEXT
);

-- The chunks of jobs that have not finished; deleted when a job ends.
CREATE TABLE chunks (
    job_id INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    byte_offset INTEGER NOT NULL,
    byte_len INTEGER NOT NULL,
    first_line INTEGER NOT NULL,
    n_lines INTEGER NOT NULL,
    -- 1 once the chunk's partial is stored (here, or merged into its group's row in `combined`).
    done INTEGER NOT NULL DEFAULT 0,
    -- Attempts that ended (failed, or the one that succeeded); lost workers do not count.
    attempts INTEGER NOT NULL DEFAULT 0,
    -- The encoded partial; NULL until done, and again once merged into its group.
    partial BLOB,
    PRIMARY KEY (job_id, idx)
);

-- Partials of complete groups of consecutive chunks, merged by the plugin's `combine`.
CREATE TABLE combined (
    job_id INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    grp INTEGER NOT NULL,
    partial BLOB NOT NULL,
    PRIMARY KEY (job_id, grp)
);
