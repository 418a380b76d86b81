-- What the run's plugin printed (stdout and stderr per chunk, as `kiln logs` prints it),
-- fetched from the controller when the run ended; NULL when it printed nothing.
ALTER TABLE runs ADD COLUMN plugin_output TEXT;
