-- The core's own tables. schema_migrations itself is created by the
-- migration runner before any migration runs.

-- One row per running instance, refreshed by a heartbeat; operators see
-- which instances share this database, and cross-instance features (rate
-- limit sync) know how many peers there are.
CREATE TABLE IF NOT EXISTS instance (
    id          TEXT PRIMARY KEY,
    hostname    TEXT NOT NULL,
    pid         INTEGER NOT NULL,
    version     TEXT NOT NULL,
    started_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    seen_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);
