-- An input is an ordered list of files, uploaded one after another into one spooled file: each
-- chunk says which file it belongs to (its lines are numbered within that file), and each file
-- that has begun to upload says where it starts in the spool, so that a restarted controller
-- cuts the bytes past its last stored chunk at the same file boundaries.
ALTER TABLE chunks ADD COLUMN file INTEGER NOT NULL DEFAULT 0;

CREATE TABLE input_files (
    job_id INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    -- The byte in the job's spooled input where the file's first byte is.
    start INTEGER NOT NULL,
    PRIMARY KEY (job_id, idx)
);
