-- What a job went through: workers lost while running its chunks, speculative copies of slow
-- chunks started, and those of them that finished first.
ALTER TABLE jobs ADD COLUMN lost_workers INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN speculative INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN speculative_won INTEGER NOT NULL DEFAULT 0;
