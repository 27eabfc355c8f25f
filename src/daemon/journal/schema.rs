//! The journal's schema, one list of migrations for both databases: migration `n` brings
//! the schema from version `n - 1` to `n`, on SQLite (`user_version`) and on PostgreSQL
//! (the `schema_version` table) alike. A new table or column is a new entry at the end;
//! entries are never edited.

/// One step of the schema, in each database's words.
pub struct Migration {
    pub what: &'static str,
    pub sqlite: &'static str,
    pub postgres: &'static str,
}

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        what: "jobs: identities, states, attempts, proxies",
        sqlite: SQLITE_1,
        postgres: POSTGRES_1,
    },
    Migration {
        what: "jobs: tool attempts",
        sqlite: "
ALTER TABLE jobs ADD COLUMN tool_attempt INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN tool_server TEXT;
",
        postgres: "
ALTER TABLE jobs ADD COLUMN tool_attempt BIGINT NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN tool_server TEXT;
",
    },
    Migration {
        what: "events of every job's state changes, failure classes, webhook deliveries",
        sqlite: SQLITE_3,
        postgres: POSTGRES_3,
    },
    Migration {
        what: "leases on running jobs, the hosts that share the journal, elected roles",
        sqlite: SQLITE_4,
        postgres: POSTGRES_4,
    },
];

/// The schema version this darkroom writes.
pub fn newest() -> usize {
    MIGRATIONS.len()
}

/// The refusal of a journal written by a newer darkroom.
pub fn too_new(version: usize) -> String {
    format!(
        "the journal has schema version {version}, newer than this darkroom's {}: \
         run the newer darkroom, or start with a fresh journal",
        newest()
    )
}

const SQLITE_1: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    rule TEXT NOT NULL,
    claimed_path TEXT NOT NULL,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    inode INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    error TEXT,
    parent INTEGER REFERENCES jobs(id),
    variant INTEGER,
    pairing TEXT,
    output_path TEXT,
    proxy_path TEXT,
    proxy_width INTEGER,
    proxy_height INTEGER,
    signature BLOB,
    expires_at REAL,
    closed INTEGER NOT NULL DEFAULT 0,
    details TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_identity
    ON jobs(rule, kind, claimed_path, size, mtime_ns, sha256);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
CREATE INDEX IF NOT EXISTS jobs_parent ON jobs(parent);
CREATE INDEX IF NOT EXISTS jobs_open ON jobs(closed, kind, rule);
CREATE INDEX IF NOT EXISTS jobs_output ON jobs(output_path);
";

const POSTGRES_1: &str = "
CREATE TABLE jobs (
    id BIGSERIAL PRIMARY KEY,
    kind TEXT NOT NULL,
    rule TEXT NOT NULL,
    claimed_path TEXT NOT NULL,
    path TEXT NOT NULL,
    size BIGINT NOT NULL,
    mtime_ns BIGINT NOT NULL,
    inode BIGINT NOT NULL,
    sha256 TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    next_attempt_at DOUBLE PRECISION,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    error TEXT,
    parent BIGINT REFERENCES jobs(id),
    variant BIGINT,
    pairing TEXT,
    output_path TEXT,
    proxy_path TEXT,
    proxy_width BIGINT,
    proxy_height BIGINT,
    signature BYTEA,
    expires_at DOUBLE PRECISION,
    closed BIGINT NOT NULL DEFAULT 0,
    details TEXT
);
CREATE UNIQUE INDEX jobs_identity ON jobs(rule, kind, claimed_path, size, mtime_ns, sha256);
CREATE INDEX jobs_state ON jobs(state);
CREATE INDEX jobs_parent ON jobs(parent);
CREATE INDEX jobs_open ON jobs(closed, kind, rule);
CREATE INDEX jobs_output ON jobs(output_path);
";

/// Every change of a job's state or attempt count lands in `events` in the same transaction
/// as the change itself, by trigger: nothing that writes a job can forget it, and a crash
/// can never leave a change without its event (the webhooks' outbox depends on that).
const SQLITE_3: &str = "
ALTER TABLE jobs ADD COLUMN failure TEXT;
CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job INTEGER NOT NULL REFERENCES jobs(id),
    at REAL NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    error TEXT,
    failure TEXT
);
CREATE INDEX events_job ON events(job, id);
CREATE TRIGGER job_inserted AFTER INSERT ON jobs BEGIN
    INSERT INTO events (job, at, state, attempts, error, failure)
    VALUES (NEW.id, NEW.updated_at, NEW.state, NEW.attempts, NEW.error, NEW.failure);
END;
CREATE TRIGGER job_changed AFTER UPDATE OF state, attempts ON jobs
WHEN NEW.state IS NOT OLD.state OR NEW.attempts IS NOT OLD.attempts BEGIN
    INSERT INTO events (job, at, state, attempts, error, failure)
    VALUES (NEW.id, NEW.updated_at, NEW.state, NEW.attempts, NEW.error, NEW.failure);
END;
CREATE TABLE deliveries (
    target TEXT PRIMARY KEY,
    last_event INTEGER NOT NULL,
    failures INTEGER NOT NULL DEFAULT 0,
    next_try_at REAL,
    last_error TEXT
);
";

/// As [`SQLITE_3`]. Event ids come from a sequence, which hands them out in the order
/// transactions ask, not the order they commit; the trigger's transaction-long lock makes
/// the two orders one, so a reader that has seen event `n` never later finds an event
/// below `n` (the webhooks' position in the log depends on that).
const POSTGRES_3: &str = "
ALTER TABLE jobs ADD COLUMN failure TEXT;
CREATE TABLE events (
    id BIGSERIAL PRIMARY KEY,
    job BIGINT NOT NULL REFERENCES jobs(id),
    at DOUBLE PRECISION NOT NULL,
    state TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    error TEXT,
    failure TEXT
);
CREATE INDEX events_job ON events(job, id);
CREATE FUNCTION darkroom_job_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' OR NEW.state IS DISTINCT FROM OLD.state
        OR NEW.attempts IS DISTINCT FROM OLD.attempts THEN
        PERFORM pg_advisory_xact_lock(7316);
        INSERT INTO events (job, at, state, attempts, error, failure)
        VALUES (NEW.id, NEW.updated_at, NEW.state, NEW.attempts, NEW.error, NEW.failure);
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER job_inserted AFTER INSERT ON jobs
    FOR EACH ROW EXECUTE FUNCTION darkroom_job_event();
CREATE TRIGGER job_changed AFTER UPDATE OF state, attempts ON jobs
    FOR EACH ROW EXECUTE FUNCTION darkroom_job_event();
CREATE TABLE deliveries (
    target TEXT PRIMARY KEY,
    last_event BIGINT NOT NULL,
    failures BIGINT NOT NULL DEFAULT 0,
    next_try_at DOUBLE PRECISION,
    last_error TEXT
);
";

/// A running job is leased by the host that runs it until `lease_until` (the database's
/// clock); `hosts` is every daemon that shares the journal, `leaders` the host elected for
/// a role only one may hold at a time (scanning the folders, the deadlines, the webhooks).
const SQLITE_4: &str = "
ALTER TABLE jobs ADD COLUMN leased_by TEXT;
ALTER TABLE jobs ADD COLUMN lease_until REAL;
CREATE INDEX jobs_leased_by ON jobs(leased_by);
CREATE TABLE hosts (
    name TEXT PRIMARY KEY,
    pid INTEGER NOT NULL,
    roles TEXT NOT NULL,
    version TEXT NOT NULL,
    started_at REAL NOT NULL,
    heartbeat_at REAL NOT NULL,
    stopped_at REAL
);
CREATE TABLE leaders (
    role TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    until REAL NOT NULL
);
";

const POSTGRES_4: &str = "
ALTER TABLE jobs ADD COLUMN leased_by TEXT;
ALTER TABLE jobs ADD COLUMN lease_until DOUBLE PRECISION;
CREATE INDEX jobs_leased_by ON jobs(leased_by);
CREATE INDEX jobs_runnable ON jobs(id) WHERE state IN ('queued', 'waiting-for-tool');
CREATE TABLE hosts (
    name TEXT PRIMARY KEY,
    pid BIGINT NOT NULL,
    roles TEXT NOT NULL,
    version TEXT NOT NULL,
    started_at DOUBLE PRECISION NOT NULL,
    heartbeat_at DOUBLE PRECISION NOT NULL,
    stopped_at DOUBLE PRECISION
);
CREATE TABLE leaders (
    role TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    until DOUBLE PRECISION NOT NULL
);
CREATE FUNCTION darkroom_work_queued() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.state IN ('queued', 'waiting-for-tool') THEN
        PERFORM pg_notify('darkroom_work', '');
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER work_queued AFTER INSERT OR UPDATE OF state ON jobs
    FOR EACH ROW EXECUTE FUNCTION darkroom_work_queued();
";
