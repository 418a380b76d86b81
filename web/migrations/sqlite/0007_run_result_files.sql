-- A run's result is a file in <data_dir>/results/ named here, with its length, no longer the
-- `result` column (kept for runs that ended before): results may be larger than memory.
ALTER TABLE runs ADD COLUMN result_file TEXT;
ALTER TABLE runs ADD COLUMN result_bytes BIGINT;
