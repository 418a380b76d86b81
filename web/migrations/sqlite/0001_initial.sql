-- Users, their sessions, clusters, tasks and runs (SQLite).

CREATE TABLE users (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    email TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE sessions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    token_hash TEXT NOT NULL UNIQUE,
    user_id BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    csrf_token TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX sessions_user ON sessions (user_id);

CREATE TABLE clusters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    controller_address TEXT NOT NULL,
    api_key TEXT NOT NULL,
    embedded BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (user_id, name)
);

CREATE TABLE tasks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    title TEXT NOT NULL,
    description TEXT NOT NULL,
    plugin_name TEXT NOT NULL,
    plugin_kind TEXT NOT NULL,
    plugin_size BIGINT NOT NULL,
    plugin_bytes BLOB NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX tasks_user ON tasks (user_id);

CREATE TABLE runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    task_id BIGINT NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    cluster_id BIGINT NOT NULL REFERENCES clusters (id) ON DELETE CASCADE,
    input_name TEXT NOT NULL,
    input_bytes BIGINT NOT NULL,
    processes BIGINT NOT NULL,
    params TEXT NOT NULL,
    job_id BIGINT,
    state TEXT NOT NULL,
    n_chunks BIGINT NOT NULL DEFAULT 0,
    chunks_done BIGINT NOT NULL DEFAULT 0,
    lines_done BIGINT NOT NULL DEFAULT 0,
    bytes_done BIGINT NOT NULL DEFAULT 0,
    retries BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    started_at BIGINT,
    finished_at BIGINT,
    result TEXT,
    error_kind TEXT,
    error TEXT
);
CREATE INDEX runs_task ON runs (task_id);
CREATE INDEX runs_cluster ON runs (cluster_id);
CREATE INDEX runs_state ON runs (state);
