-- A job's plugin build as its status reported it when the job ended (JSON of
-- `rpc::build::BuildProgress`: crates, start and end), so that the build's duration stays
-- apart from the run's in the job's history.
ALTER TABLE jobs ADD COLUMN build TEXT;
