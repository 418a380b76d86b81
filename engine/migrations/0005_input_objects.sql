-- Inputs read by reference: the objects a job's URLs named when the job was created, in input
-- order, with the size and version each had then (a worker that finds another version fails
-- the job) and how it is stored. A chunk's `file` is its object's `idx`, and its byte_offset
-- and byte_len are its planned range within that object.
CREATE TABLE input_objects (
    job_id INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    url TEXT NOT NULL,
    size INTEGER NOT NULL,
    version TEXT NOT NULL,
    -- plain, gzip or zstd.
    compression TEXT NOT NULL,
    PRIMARY KEY (job_id, idx)
);
