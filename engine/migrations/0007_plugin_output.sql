-- What a job's plugin printed (`rpc::logs::PluginOutput`): one row per chunk that printed
-- anything, kept with its partial, and one for the aggregate (chunk -1). Within the job's
-- bound (`rpc::logs::JOB_OUTPUT_BYTES`); `cut` counts the bytes left out.
CREATE TABLE plugin_output (
    job_id INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    chunk INTEGER NOT NULL,
    file TEXT NOT NULL,
    first_line INTEGER NOT NULL,
    last_line INTEGER NOT NULL,
    stdout TEXT NOT NULL,
    stderr TEXT NOT NULL,
    cut INTEGER NOT NULL,
    PRIMARY KEY (job_id, chunk)
);
