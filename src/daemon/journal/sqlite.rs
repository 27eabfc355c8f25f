//! The SQLite journal: the one place that holds SQL. Its schema is versioned: each
//! migration runs once, in order, recorded in the database's `user_version`.

use super::*;
use rusqlite::{params, Connection, OptionalExtension, Row};
use std::time::Duration;

/// The journal in one SQLite database (WAL, `synchronous=FULL`).
pub struct SqliteStore {
    connection: Connection,
}

/// The schema's migrations, in order: migration `n` brings `user_version` from `n - 1` to
/// `n`. A new table or column is a new entry at the end; entries are never edited.
const MIGRATIONS: &[(&str, &str)] = &[
    ("jobs: identities, states, attempts, proxies", SCHEMA_1),
    ("jobs: tool attempts", SCHEMA_2),
    (
        "events of every job's state changes, failure classes, webhook deliveries",
        SCHEMA_3,
    ),
];

const SCHEMA_1: &str = "
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

const SCHEMA_2: &str = "
ALTER TABLE jobs ADD COLUMN tool_attempt INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN tool_server TEXT;
";

/// Every change of a job's state or attempt count lands in `events` in the same transaction
/// as the change itself, by trigger: nothing that writes a job can forget it, and a crash
/// can never leave a change without its event (the webhooks' outbox depends on that).
const SCHEMA_3: &str = "
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

const COLUMNS: &str = "id, kind, rule, claimed_path, path, size, sha256, state, attempts, \
    next_attempt_at, created_at, updated_at, error, parent, variant, pairing, output_path, \
    proxy_path, proxy_width, proxy_height, signature, expires_at, closed, details, mtime_ns, \
    tool_attempt, tool_server, failure";

/// Brings the journal's schema to the newest version this darkroom knows, each migration in
/// its own transaction. A journal written by a newer darkroom is refused, not downgraded.
/// Returns whether any migration ran.
fn migrate(connection: &mut Connection) -> rusqlite::Result<bool> {
    let version: usize = connection.pragma_query_value(None, "user_version", |row| row.get(0))?;
    if version > MIGRATIONS.len() {
        return Err(rusqlite::Error::ToSqlConversionFailure(
            format!(
                "the journal has schema version {version}, newer than this darkroom's {}: \
                 run the newer darkroom, or start with a fresh state_dir",
                MIGRATIONS.len()
            )
            .into(),
        ));
    }
    for (index, (what, sql)) in MIGRATIONS.iter().enumerate().skip(version) {
        let transaction = connection.transaction()?;
        transaction.execute_batch(sql)?;
        transaction.pragma_update(None, "user_version", index + 1)?;
        transaction.commit()?;
        tracing::debug!(version = index + 1, what, "journal schema migrated");
    }
    Ok(version < MIGRATIONS.len())
}

fn job_from_row(row: &Row<'_>) -> rusqlite::Result<Job> {
    let state: String = row.get(7)?;
    let kind: String = row.get(1)?;
    Ok(Job {
        id: row.get(0)?,
        kind: Kind::parse(&kind),
        rule: row.get(2)?,
        claimed_path: PathBuf::from(row.get::<_, String>(3)?),
        path: PathBuf::from(row.get::<_, String>(4)?),
        size: row.get::<_, i64>(5)? as u64,
        sha256: row.get(6)?,
        state: State::parse(&state).unwrap_or(State::Failed),
        attempts: row.get(8)?,
        next_attempt_at: row.get(9)?,
        created_at: row.get(10)?,
        updated_at: row.get(11)?,
        error: row.get(12)?,
        parent: row.get(13)?,
        variant: row.get(14)?,
        pairing: row.get(15)?,
        output_path: row.get::<_, Option<String>>(16)?.map(PathBuf::from),
        proxy_path: row.get::<_, Option<String>>(17)?.map(PathBuf::from),
        proxy_width: row.get(18)?,
        proxy_height: row.get(19)?,
        signature: row.get(20)?,
        expires_at: row.get(21)?,
        closed: row.get::<_, i64>(22)? != 0,
        details: row.get(23)?,
        mtime_ns: row.get(24)?,
        tool_attempt: row.get(25)?,
        tool_server: row.get(26)?,
        failure: row.get(27)?,
    })
}

const EVENT_COLUMNS: &str =
    "e.id, e.job, j.rule, j.kind, e.at, e.state, e.attempts, e.error, e.failure";

fn event_from_row(row: &Row<'_>) -> rusqlite::Result<JobEvent> {
    Ok(JobEvent {
        id: row.get(0)?,
        job: row.get(1)?,
        rule: row.get(2)?,
        kind: Kind::parse(&row.get::<_, String>(3)?),
        at: row.get(4)?,
        state: State::parse(&row.get::<_, String>(5)?).unwrap_or(State::Failed),
        attempts: row.get(6)?,
        error: row.get(7)?,
        failure: row.get(8)?,
    })
}

fn delivery_from_row(row: &Row<'_>) -> rusqlite::Result<Delivery> {
    Ok(Delivery {
        target: row.get(0)?,
        last_event: row.get(1)?,
        failures: row.get(2)?,
        next_try_at: row.get(3)?,
        last_error: row.get(4)?,
    })
}

fn text(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// A job that ended without a result and whose file left the folder it was claimed from
/// (set aside into `failed/`, or withdrawn): the same file appearing there again is that
/// job's retry, not a file already handled.
const CAME_BACK: &str = "(state IN ('failed', 'cancelled') AND path != claimed_path) \
    OR state = 'withdrawn'";

impl SqliteStore {
    /// Opens (creating if needed) the journal in `state_dir`.
    pub fn open(state_dir: &Path) -> rusqlite::Result<SqliteStore> {
        let mut connection = Connection::open(state_dir.join(FILE_NAME))?;
        connection.busy_timeout(Duration::from_secs(10))?;
        connection.pragma_update(None, "journal_mode", "WAL")?;
        connection.pragma_update(None, "synchronous", "FULL")?;
        connection.pragma_update(None, "foreign_keys", "ON")?;
        if migrate(&mut connection)? {
            // The migrations' pages leave the write-ahead log large; fold them into the
            // database now, so the log starts small (a file-size limit on the daemon then
            // bites its outputs, not its journal).
            connection.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        }
        Ok(SqliteStore { connection })
    }

    /// Opens an existing journal for reading only (`darkroom status`).
    pub fn open_read_only(state_dir: &Path) -> rusqlite::Result<SqliteStore> {
        let connection = Connection::open_with_flags(
            state_dir.join(FILE_NAME),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        connection.busy_timeout(Duration::from_secs(10))?;
        Ok(SqliteStore { connection })
    }

    fn query(
        &self,
        sql_where: &str,
        values: &[&dyn rusqlite::ToSql],
    ) -> rusqlite::Result<Vec<Job>> {
        let mut statement = self
            .connection
            .prepare_cached(&format!("SELECT {COLUMNS} FROM jobs WHERE {sql_where}"))?;
        let rows = statement.query_map(values, job_from_row)?;
        rows.collect()
    }
}

impl Store for SqliteStore {
    fn find_identity(
        &self,
        rule: &str,
        kind: Kind,
        identity: &FileIdentity,
    ) -> StoreResult<Option<Job>> {
        Ok(self.connection
            .query_row(
                &format!(
                    "SELECT {COLUMNS} FROM jobs WHERE rule = ?1 AND kind = ?2 AND claimed_path = ?3 \
                     AND size = ?4 AND mtime_ns = ?5 AND sha256 = ?6"
                ),
                params![
                    rule,
                    kind.as_str(),
                    text(&identity.path),
                    identity.size as i64,
                    identity.mtime_ns,
                    identity.sha256
                ],
                job_from_row,
            )
            .optional()?)
    }

    fn knows_stat(
        &self,
        rule: &str,
        kind: Kind,
        path: &Path,
        size: u64,
        mtime_ns: i64,
    ) -> StoreResult<bool> {
        Ok(self
            .connection
            .query_row(
                &format!(
                    "SELECT 1 FROM jobs WHERE rule = ?1 AND kind = ?2 AND claimed_path = ?3 \
                     AND size = ?4 AND mtime_ns = ?5 AND NOT ({CAME_BACK}) LIMIT 1"
                ),
                params![rule, kind.as_str(), text(path), size as i64, mtime_ns],
                |_| Ok(()),
            )
            .optional()
            .map(|found| found.is_some())?)
    }

    fn insert(
        &self,
        rule: &str,
        kind: Kind,
        identity: &FileIdentity,
        state: State,
    ) -> StoreResult<i64> {
        let t = now();
        self.connection.execute(
            "INSERT INTO jobs (kind, rule, claimed_path, path, size, mtime_ns, inode, sha256, \
             state, created_at, updated_at) VALUES (?1, ?2, ?3, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9)",
            params![
                kind.as_str(),
                rule,
                text(&identity.path),
                identity.size as i64,
                identity.mtime_ns,
                identity.inode as i64,
                identity.sha256,
                state.as_str(),
                t
            ],
        )?;
        Ok(self.connection.last_insert_rowid())
    }

    fn get(&self, id: i64) -> StoreResult<Option<Job>> {
        Ok(self
            .connection
            .query_row(
                &format!("SELECT {COLUMNS} FROM jobs WHERE id = ?1"),
                [id],
                job_from_row,
            )
            .optional()?)
    }

    fn interrupted(&self) -> StoreResult<Vec<Job>> {
        Ok(self.query(
            "state IN ('running', 'merging', 'at-tool') ORDER BY id",
            &[],
        )?)
    }

    fn runnable(&self, at: f64, limit: usize) -> StoreResult<Vec<Job>> {
        Ok(self.query(
            "state IN ('queued', 'waiting-for-tool') \
             AND (next_attempt_at IS NULL OR next_attempt_at <= ?1) \
             ORDER BY id LIMIT ?2",
            &[&at, &(limit as i64)],
        )?)
    }

    fn next_retry_at(&self, at: f64) -> StoreResult<Option<f64>> {
        Ok(self.connection.query_row(
            "SELECT MIN(next_attempt_at) FROM jobs WHERE state IN ('queued', 'waiting-for-tool') \
             AND next_attempt_at > ?1",
            [at],
            |row| row.get(0),
        )?)
    }

    fn pending_proxies(&self, rule: &str) -> StoreResult<Vec<Job>> {
        Ok(self.query(
            "kind = 'split' AND rule = ?1 AND closed = 0 AND proxy_path IS NOT NULL \
             AND state IN ('awaiting-return', 'expired', 'done') ORDER BY id",
            &[&rule],
        )?)
    }

    fn overdue(&self, at: f64) -> StoreResult<Vec<Job>> {
        Ok(self.query(
            "kind = 'split' AND state = 'awaiting-return' AND expires_at <= ?1",
            &[&at],
        )?)
    }

    fn window_over(&self, at: f64, grace: f64, rule: &str) -> StoreResult<Vec<Job>> {
        Ok(self.query(
            "kind = 'split' AND rule = ?3 AND closed = 0 AND expires_at IS NOT NULL \
             AND expires_at + ?2 <= ?1 AND state IN ('expired', 'done')",
            &[&at, &grace, &rule],
        )?)
    }

    fn next_deadline(&self) -> StoreResult<Option<f64>> {
        Ok(self.connection.query_row(
            "SELECT MIN(t) FROM (\
               SELECT MIN(expires_at) AS t FROM jobs WHERE kind = 'split' AND state = 'awaiting-return' \
               UNION ALL \
               SELECT MIN(next_attempt_at) AS t FROM jobs WHERE state = 'incomplete')",
            [],
            |row| row.get(0),
        )?)
    }

    fn set_incomplete(&self, id: i64, until: f64, reason: &str) -> StoreResult<()> {
        self.connection.execute(
            "UPDATE jobs SET state = 'incomplete', next_attempt_at = ?2, error = ?3, \
             updated_at = ?4 WHERE id = ?1",
            params![id, until, reason, now()],
        )?;
        Ok(())
    }

    fn incomplete_due(&self, at: f64) -> StoreResult<Vec<Job>> {
        Ok(self.query(
            "state = 'incomplete' AND next_attempt_at <= ?1 ORDER BY id",
            &[&at],
        )?)
    }

    fn superseded_by(&self, newer: i64) -> StoreResult<Vec<Job>> {
        Ok(self.query(
            "id != ?1 AND state IN ('queued', 'incomplete', 'held') AND (rule, kind, claimed_path) = \
             (SELECT rule, kind, claimed_path FROM jobs WHERE id = ?1) ORDER BY id",
            &[&newer],
        )?)
    }

    fn variants_of(&self, parent: i64) -> StoreResult<Vec<Job>> {
        Ok(self.query(
            "kind = 'merge' AND parent = ?1 AND variant IS NOT NULL ORDER BY variant",
            &[&parent],
        )?)
    }

    fn output_taken(&self, path: &Path, except_parent: i64) -> StoreResult<bool> {
        Ok(self.connection
            .query_row(
                "SELECT 1 FROM jobs WHERE output_path = ?1 AND (parent IS NULL OR parent != ?2) LIMIT 1",
                params![text(path), except_parent],
                |_| Ok(()),
            )
            .optional()
            .map(|found| found.is_some())?)
    }

    fn set_state(&self, id: i64, state: State, error: Option<&str>) -> StoreResult<()> {
        self.connection.execute(
            "UPDATE jobs SET state = ?2, error = ?3, updated_at = ?4 WHERE id = ?1",
            params![id, state.as_str(), error, now()],
        )?;
        Ok(())
    }

    fn start_attempt(&self, id: i64, state: State) -> StoreResult<()> {
        self.connection.execute(
            "UPDATE jobs SET state = ?2, attempts = attempts + 1, updated_at = ?3 WHERE id = ?1",
            params![id, state.as_str(), now()],
        )?;
        Ok(())
    }

    fn retry_at(&self, id: i64, at: f64, error: &str) -> StoreResult<()> {
        self.connection.execute(
            "UPDATE jobs SET state = 'queued', next_attempt_at = ?2, error = ?3, updated_at = ?4 \
             WHERE id = ?1",
            params![id, at, error, now()],
        )?;
        Ok(())
    }

    fn requeue_interrupted(&self, id: i64) -> StoreResult<()> {
        self.connection.execute(
            "UPDATE jobs SET state = CASE state WHEN 'at-tool' THEN 'waiting-for-tool' \
             ELSE 'queued' END, attempts = MAX(attempts - 1, 0), updated_at = ?2 WHERE id = ?1",
            params![id, now()],
        )?;
        Ok(())
    }

    fn set_path(&self, id: i64, path: &Path) -> StoreResult<()> {
        self.connection.execute(
            "UPDATE jobs SET path = ?2, updated_at = ?3 WHERE id = ?1",
            params![id, text(path), now()],
        )?;
        Ok(())
    }

    fn proxy_written(
        &self,
        id: i64,
        proxy_path: &Path,
        size: (u32, u32),
        signature: &[u8],
        expires_at: f64,
        details: &str,
    ) -> StoreResult<()> {
        self.connection.execute(
            "UPDATE jobs SET state = 'awaiting-return', proxy_path = ?2, proxy_width = ?3, \
             proxy_height = ?4, signature = ?5, expires_at = ?6, details = ?7, error = NULL, \
             updated_at = ?8 WHERE id = ?1",
            params![
                id,
                text(proxy_path),
                size.0,
                size.1,
                signature,
                expires_at,
                details,
                now()
            ],
        )?;
        Ok(())
    }

    fn pair(
        &self,
        id: i64,
        parent: i64,
        variant: u32,
        pairing: &str,
        output_path: &Path,
    ) -> StoreResult<()> {
        self.connection.execute(
            "UPDATE jobs SET parent = ?2, variant = ?3, pairing = ?4, output_path = ?5, \
             updated_at = ?6 WHERE id = ?1",
            params![id, parent, variant, pairing, text(output_path), now()],
        )?;
        Ok(())
    }

    fn merge_done(
        &self,
        id: i64,
        parent: i64,
        return_now_at: &Path,
        original_now_at: &Path,
        details: &str,
    ) -> StoreResult<()> {
        let t = now();
        let tx = self.connection.unchecked_transaction()?;
        tx.execute(
            "UPDATE jobs SET state = 'done', path = ?2, details = ?3, error = NULL, updated_at = ?4 \
             WHERE id = ?1",
            params![id, text(return_now_at), details, t],
        )?;
        tx.execute(
            "UPDATE jobs SET state = 'done', path = ?2, error = NULL, updated_at = ?3 WHERE id = ?1",
            params![parent, text(original_now_at), t],
        )?;
        Ok(tx.commit()?)
    }

    fn set_tool_attempt(&self, id: i64, attempt: u32, server: &str) -> StoreResult<()> {
        self.connection.execute(
            "UPDATE jobs SET tool_attempt = ?2, tool_server = ?3, updated_at = ?4 WHERE id = ?1",
            params![id, attempt, server, now()],
        )?;
        Ok(())
    }

    fn wait_for_tool(&self, id: i64, at: f64, reason: &str) -> StoreResult<()> {
        self.connection.execute(
            "UPDATE jobs SET state = 'waiting-for-tool', next_attempt_at = ?2, error = ?3, \
             attempts = MAX(attempts - 1, 0), updated_at = ?4 WHERE id = ?1",
            params![id, at, reason, now()],
        )?;
        Ok(())
    }

    fn tool_returned(
        &self,
        rule: &str,
        parent: i64,
        returns: &[ToolReturn],
        expires_at: f64,
        details: &str,
    ) -> StoreResult<Vec<i64>> {
        let t = now();
        let tx = self.connection.unchecked_transaction()?;
        let mut ids = Vec::with_capacity(returns.len());
        for r in returns {
            tx.execute(
                "INSERT INTO jobs (kind, rule, claimed_path, path, size, mtime_ns, inode, sha256, \
                 state, created_at, updated_at, parent, variant, pairing, output_path) \
                 VALUES ('merge', ?1, ?2, ?2, ?3, ?4, ?5, ?6, 'queued', ?7, ?7, ?8, ?9, 'tool', ?10)",
                params![
                    rule,
                    text(&r.identity.path),
                    r.identity.size as i64,
                    r.identity.mtime_ns,
                    r.identity.inode as i64,
                    r.identity.sha256,
                    t,
                    parent,
                    r.variant,
                    text(&r.output_path)
                ],
            )?;
            ids.push(tx.last_insert_rowid());
        }
        tx.execute(
            "UPDATE jobs SET state = 'awaiting-return', expires_at = ?2, error = NULL, \
             next_attempt_at = NULL, details = ?4, updated_at = ?3 WHERE id = ?1",
            params![parent, expires_at, t, details],
        )?;
        tx.commit()?;
        Ok(ids)
    }

    fn set_output(&self, id: i64, output: &Path) -> StoreResult<()> {
        self.connection.execute(
            "UPDATE jobs SET output_path = ?2, updated_at = ?3 WHERE id = ?1",
            params![id, text(output), now()],
        )?;
        Ok(())
    }

    fn job_done(&self, id: i64, input_now_at: &Path, details: &str) -> StoreResult<()> {
        self.connection.execute(
            "UPDATE jobs SET state = 'done', path = ?2, details = ?3, error = NULL, updated_at = ?4 \
             WHERE id = ?1",
            params![id, text(input_now_at), details, now()],
        )?;
        Ok(())
    }

    fn close(&self, id: i64) -> StoreResult<()> {
        self.connection.execute(
            "UPDATE jobs SET closed = 1, updated_at = ?2 WHERE id = ?1",
            params![id, now()],
        )?;
        Ok(())
    }

    fn counts(&self) -> StoreResult<Vec<(Kind, State, u64)>> {
        let mut statement = self
            .connection
            .prepare("SELECT kind, state, COUNT(*) FROM jobs GROUP BY kind, state ORDER BY kind")?;
        let rows = statement.query_map([], |row| {
            Ok((
                Kind::parse(&row.get::<_, String>(0)?),
                State::parse(&row.get::<_, String>(1)?).unwrap_or(State::Failed),
                row.get::<_, i64>(2)? as u64,
            ))
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    fn in_state(&self, state: State, limit: usize) -> StoreResult<Vec<Job>> {
        Ok(self.query(
            "state = ?1 ORDER BY updated_at DESC LIMIT ?2",
            &[&state.as_str(), &(limit as i64)],
        )?)
    }

    fn set_failed(
        &self,
        id: i64,
        state: State,
        class: FailureClass,
        reason: &str,
        input_now_at: &Path,
    ) -> StoreResult<()> {
        self.connection.execute(
            "UPDATE jobs SET state = ?2, failure = ?3, error = ?4, path = ?5, updated_at = ?6 \
             WHERE id = ?1",
            params![id, state.as_str(), class, reason, text(input_now_at), now()],
        )?;
        Ok(())
    }

    fn requeue(&self, id: i64, path: &Path) -> StoreResult<()> {
        self.connection.execute(
            "UPDATE jobs SET state = 'queued', attempts = 0, next_attempt_at = NULL, \
             failure = NULL, path = ?2, updated_at = ?3 WHERE id = ?1",
            params![id, text(path), now()],
        )?;
        Ok(())
    }

    fn jobs_page(&self, query: &JobQuery) -> StoreResult<Vec<Job>> {
        Ok(self.query(
            "(?1 IS NULL OR rule = ?1) AND (?2 IS NULL OR state = ?2) \
             AND (?3 IS NULL OR kind = ?3) AND (?4 IS NULL OR id < ?4) \
             AND (?6 IS NULL OR claimed_path = ?6) \
             AND (?7 IS NULL OR substr(claimed_path, -length(?7) - 1) = '/' || ?7) \
             ORDER BY id DESC LIMIT ?5",
            &[
                &query.rule,
                &query.state.map(State::as_str),
                &query.kind.map(Kind::as_str),
                &query.before,
                &(query.limit as i64),
                &query.claimed_path.as_deref().map(text),
                &query.file_name,
            ],
        )?)
    }

    fn counts_by_rule(&self) -> StoreResult<Vec<(String, Kind, State, u64)>> {
        let mut statement = self.connection.prepare_cached(
            "SELECT rule, kind, state, COUNT(*) FROM jobs GROUP BY rule, kind, state",
        )?;
        let rows = statement.query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                Kind::parse(&row.get::<_, String>(1)?),
                State::parse(&row.get::<_, String>(2)?).unwrap_or(State::Failed),
                row.get::<_, i64>(3)? as u64,
            ))
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    fn oldest_in_state(&self, state: State) -> StoreResult<Option<f64>> {
        Ok(self.connection.query_row(
            "SELECT MIN(updated_at) FROM jobs WHERE state = ?1",
            [state.as_str()],
            |row| row.get(0),
        )?)
    }

    fn events_of(&self, job: i64) -> StoreResult<Vec<JobEvent>> {
        let mut statement = self.connection.prepare_cached(&format!(
            "SELECT {EVENT_COLUMNS} FROM events e JOIN jobs j ON j.id = e.job \
             WHERE e.job = ?1 ORDER BY e.id"
        ))?;
        let rows = statement.query_map([job], event_from_row)?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    fn events_after(&self, after: i64, limit: usize) -> StoreResult<Vec<JobEvent>> {
        let mut statement = self.connection.prepare_cached(&format!(
            "SELECT {EVENT_COLUMNS} FROM events e JOIN jobs j ON j.id = e.job \
             WHERE e.id > ?1 ORDER BY e.id LIMIT ?2"
        ))?;
        let rows = statement.query_map(params![after, limit as i64], event_from_row)?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    fn last_event_id(&self) -> StoreResult<i64> {
        Ok(self
            .connection
            .query_row("SELECT COALESCE(MAX(id), 0) FROM events", [], |row| {
                row.get(0)
            })?)
    }

    fn delivery(&self, target: &str) -> StoreResult<Option<Delivery>> {
        Ok(self
            .connection
            .query_row(
                "SELECT target, last_event, failures, next_try_at, last_error FROM deliveries \
                 WHERE target = ?1",
                [target],
                delivery_from_row,
            )
            .optional()?)
    }

    fn set_delivery(&self, delivery: &Delivery) -> StoreResult<()> {
        self.connection.execute(
            "INSERT INTO deliveries (target, last_event, failures, next_try_at, last_error) \
             VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT(target) DO UPDATE SET \
             last_event = excluded.last_event, failures = excluded.failures, \
             next_try_at = excluded.next_try_at, last_error = excluded.last_error",
            params![
                delivery.target,
                delivery.last_event,
                delivery.failures,
                delivery.next_try_at,
                delivery.last_error
            ],
        )?;
        Ok(())
    }

    fn deliveries(&self) -> StoreResult<Vec<Delivery>> {
        let mut statement = self.connection.prepare_cached(
            "SELECT target, last_event, failures, next_try_at, last_error FROM deliveries \
             ORDER BY target",
        )?;
        let rows = statement.query_map([], delivery_from_row)?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    fn last_finished(&self) -> StoreResult<Option<Job>> {
        Ok(self
            .query(
                "state IN ('done', 'failed', 'awaiting-return') ORDER BY updated_at DESC LIMIT 1",
                &[],
            )?
            .pop())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(name: &str) -> FileIdentity {
        FileIdentity {
            path: PathBuf::from(name),
            size: 10,
            mtime_ns: 5,
            inode: 7,
            sha256: "ab".repeat(32),
        }
    }

    #[test]
    fn an_identity_is_queued_once_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let journal = SqliteStore::open(dir.path()).unwrap();
        let id = journal
            .insert("photos", Kind::Input, &identity("/in/a.jpg"), State::Queued)
            .unwrap();
        assert!(journal
            .insert("photos", Kind::Input, &identity("/in/a.jpg"), State::Queued)
            .is_err());
        journal.start_attempt(id, State::Running).unwrap();
        drop(journal);
        let journal = SqliteStore::open(dir.path()).unwrap();
        let found = journal
            .find_identity("photos", Kind::Input, &identity("/in/a.jpg"))
            .unwrap()
            .unwrap();
        assert_eq!(
            (found.id, found.state, found.attempts),
            (id, State::Running, 1)
        );
        assert_eq!(journal.interrupted().unwrap().len(), 1);
        journal.requeue_interrupted(id).unwrap();
        let job = journal.get(id).unwrap().unwrap();
        assert_eq!((job.state, job.attempts), (State::Queued, 0));
    }

    #[test]
    fn retries_wait_for_their_time() {
        let dir = tempfile::tempdir().unwrap();
        let journal = SqliteStore::open(dir.path()).unwrap();
        let id = journal
            .insert("r", Kind::Input, &identity("/in/b.jpg"), State::Queued)
            .unwrap();
        journal.retry_at(id, now() + 100.0, "disk full").unwrap();
        assert!(journal.runnable(now(), 10).unwrap().is_empty());
        assert_eq!(journal.runnable(now() + 101.0, 10).unwrap().len(), 1);
    }

    #[test]
    fn every_state_change_lands_in_the_event_log_and_a_file_set_aside_can_come_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        let file = identity("/inbox/photos/a.png");
        let id = store
            .insert("photos", Kind::Input, &file, State::Queued)
            .unwrap();
        store.start_attempt(id, State::Running).unwrap();
        // Not a state change: no event.
        store.set_output(id, Path::new("/out/a.png")).unwrap();
        let aside = Path::new("/failed/a.png");
        store
            .set_failed(id, State::Failed, "bad-input", "not an image", aside)
            .unwrap();
        let events = store.events_of(id).unwrap();
        let states: Vec<State> = events.iter().map(|e| e.state).collect();
        assert_eq!(states, [State::Queued, State::Running, State::Failed]);
        assert_eq!(events[2].failure.as_deref(), Some("bad-input"));
        assert_eq!(events[2].error.as_deref(), Some("not an image"));
        assert_eq!(store.last_event_id().unwrap(), events[2].id);
        assert_eq!(store.events_after(events[0].id, 10).unwrap().len(), 2);
        // Set aside, the file is no longer "known" where it was claimed: its return is a retry.
        assert!(!store
            .knows_stat("photos", Kind::Input, &file.path, file.size, file.mtime_ns)
            .unwrap());
        store.requeue(id, &file.path).unwrap();
        let job = store.get(id).unwrap().unwrap();
        assert_eq!(
            (job.state, job.attempts, job.failure),
            (State::Queued, 0, None)
        );
        assert!(store
            .knows_stat("photos", Kind::Input, &file.path, file.size, file.mtime_ns)
            .unwrap());
        let page = store
            .jobs_page(&JobQuery {
                file_name: Some("a.png".into()),
                limit: 10,
                ..JobQuery::default()
            })
            .unwrap();
        assert_eq!(page.len(), 1);
        let delivery = Delivery {
            target: "http://x/hook".into(),
            last_event: 3,
            failures: 2,
            next_try_at: Some(1.0),
            last_error: Some("refused".into()),
        };
        store.set_delivery(&delivery).unwrap();
        assert_eq!(store.delivery("http://x/hook").unwrap(), Some(delivery));
    }

    #[test]
    fn the_schema_is_versioned_and_a_newer_journal_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(SqliteStore::open(dir.path()).unwrap());
        let connection = Connection::open(dir.path().join(FILE_NAME)).unwrap();
        let version: usize = connection
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .unwrap();
        assert_eq!(version, MIGRATIONS.len());
        // Opening again runs nothing twice.
        drop(SqliteStore::open(dir.path()).unwrap());
        connection
            .pragma_update(None, "user_version", MIGRATIONS.len() + 1)
            .unwrap();
        drop(connection);
        let error = SqliteStore::open(dir.path()).err().unwrap().to_string();
        assert!(error.contains("newer than this darkroom"), "{error}");
    }
}
