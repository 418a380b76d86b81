-- Cluster API keys are sealed at rest (AES-256-GCM under the web app's secret key). SQL cannot
-- seal them, so the web server does at start: every row with api_key_sealed = 0 is sealed and
-- marked 1. A new row is sealed when it is written.
ALTER TABLE clusters ADD COLUMN api_key_sealed BIGINT NOT NULL DEFAULT 0;
