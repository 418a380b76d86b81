-- What a run shows once it ended: the plugin's hash (the source the run used, as the
-- controller hashed it) and its figures as JSON: the per-worker table and the samples of its
-- progress over time ({"workers": [...], "samples": [[ms since start, bytes done], ...]}).
ALTER TABLE runs ADD COLUMN plugin_hash TEXT;
ALTER TABLE runs ADD COLUMN figures TEXT;
-- A run's input is kept in the data directory (`inputs/`, named by input_file) until
-- input_kept_until (ms since the epoch), so that the run can be started again with it.
ALTER TABLE runs ADD COLUMN input_file TEXT;
ALTER TABLE runs ADD COLUMN input_kept_until BIGINT;
