-- A task's plugin is kept as a file in the web app's data directory (`plugins/`), named by
-- plugin_file, so that an upload is never held in memory several times over on its way into
-- the database. Tasks saved before keep their bytes in plugin_bytes (plugin_file NULL); new
-- ones have an empty plugin_bytes.
ALTER TABLE tasks ADD COLUMN plugin_file TEXT;
