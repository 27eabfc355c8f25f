//! The crash-safe job journal: one SQLite database (WAL, `synchronous=FULL`) with every job
//! and its state. The daemon's main thread is its only writer; `darkroom status` reads it
//! while the daemon runs.
//!
//! A job is either a `split` (a file claimed from a rule's inbox) or a `merge` (a processed
//! proxy claimed from the rule's `exchange_in`, paired with its split job as `parent`).

use crate::io::clock::now;
use rusqlite::{params, Connection, OptionalExtension, Row};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The journal's file name inside the state folder.
pub const FILE_NAME: &str = "journal.sqlite";

/// What a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An original from an inbox.
    Split,
    /// A processed proxy returned by the external tool.
    Merge,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Split => "split",
            Kind::Merge => "merge",
        }
    }

    fn parse(text: &str) -> Kind {
        if text == "merge" {
            Kind::Merge
        } else {
            Kind::Split
        }
    }
}

/// Job states. A split job goes queued → running → awaiting-return → done (or expired when no
/// return came back in time); a merge job goes queued → merging → done. Any job can end
/// failed; a merge job whose content match is ambiguous is held.
///
/// A file that read as empty or truncated is `incomplete`: left in place and watched for
/// `incomplete_grace`, since a writer may still be appending to it. When it changes, the new
/// version is claimed as a new job and this one is `superseded`; when it leaves the folder
/// (removed, or renamed by a person pairing a held return) its job is `withdrawn`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum State {
    Queued,
    Running,
    AwaitingReturn,
    Merging,
    Done,
    Failed,
    Expired,
    Held,
    Incomplete,
    Superseded,
    Withdrawn,
}

impl State {
    pub const ALL: [State; 11] = [
        State::Queued,
        State::Running,
        State::AwaitingReturn,
        State::Merging,
        State::Done,
        State::Failed,
        State::Expired,
        State::Held,
        State::Incomplete,
        State::Superseded,
        State::Withdrawn,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Queued => "queued",
            State::Running => "running",
            State::AwaitingReturn => "awaiting-return",
            State::Merging => "merging",
            State::Done => "done",
            State::Failed => "failed",
            State::Expired => "expired",
            State::Held => "held",
            State::Incomplete => "incomplete",
            State::Superseded => "superseded",
            State::Withdrawn => "withdrawn",
        }
    }

    pub fn parse(text: &str) -> Option<State> {
        State::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

/// What identifies a claimed file: the same path, size, mtime and content is never queued twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileIdentity {
    pub path: PathBuf,
    pub size: u64,
    pub mtime_ns: i64,
    pub inode: u64,
    pub sha256: String,
}

/// One job row.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: i64,
    pub kind: Kind,
    pub rule: String,
    /// Where the file was claimed.
    pub claimed_path: PathBuf,
    /// Where the file is now (moved to originals/, returns/ or failed/ once handled).
    pub path: PathBuf,
    pub size: u64,
    /// The claimed file's modification time (ns since the epoch), with `size` the cheap
    /// check that the file on disk is still the version that was claimed.
    pub mtime_ns: i64,
    pub sha256: String,
    pub state: State,
    pub attempts: u32,
    pub next_attempt_at: Option<f64>,
    pub created_at: f64,
    pub updated_at: f64,
    pub error: Option<String>,
    /// Merge jobs: the split job they belong to.
    pub parent: Option<i64>,
    /// Merge jobs: 1 for the first return of a proxy, 2, 3, ... for further variations.
    pub variant: Option<u32>,
    /// Merge jobs: name, job-id or content.
    pub pairing: Option<String>,
    pub output_path: Option<PathBuf>,
    /// Split jobs: the proxy written to exchange_out.
    pub proxy_path: Option<PathBuf>,
    pub proxy_width: Option<u32>,
    pub proxy_height: Option<u32>,
    pub signature: Option<Vec<u8>>,
    /// Split jobs: when the wait for a return ends (then grace starts).
    pub expires_at: Option<f64>,
    /// Split jobs: set once the return window and grace are over (proxy removed).
    pub closed: bool,
    /// JSON: timings and other details for the metadata tree.
    pub details: Option<String>,
}

/// The journal connection.
pub struct Journal {
    connection: Connection,
}

const SCHEMA: &str = "
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

const COLUMNS: &str = "id, kind, rule, claimed_path, path, size, sha256, state, attempts, \
    next_attempt_at, created_at, updated_at, error, parent, variant, pairing, output_path, \
    proxy_path, proxy_width, proxy_height, signature, expires_at, closed, details, mtime_ns";

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
    })
}

fn text(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

impl Journal {
    /// Opens (creating if needed) the journal in `state_dir`.
    pub fn open(state_dir: &Path) -> rusqlite::Result<Journal> {
        let connection = Connection::open(state_dir.join(FILE_NAME))?;
        connection.busy_timeout(Duration::from_secs(10))?;
        connection.pragma_update(None, "journal_mode", "WAL")?;
        connection.pragma_update(None, "synchronous", "FULL")?;
        connection.pragma_update(None, "foreign_keys", "ON")?;
        connection.execute_batch(SCHEMA)?;
        Ok(Journal { connection })
    }

    /// Opens an existing journal for reading only (`darkroom status`).
    pub fn open_read_only(state_dir: &Path) -> rusqlite::Result<Journal> {
        let connection = Connection::open_with_flags(
            state_dir.join(FILE_NAME),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        connection.busy_timeout(Duration::from_secs(10))?;
        Ok(Journal { connection })
    }

    /// The job a file identity already has, if any.
    pub fn find_identity(
        &self,
        rule: &str,
        kind: Kind,
        identity: &FileIdentity,
    ) -> rusqlite::Result<Option<Job>> {
        self.connection
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
            .optional()
    }

    /// True when a job was claimed from `path` with this size and mtime: lets a rescan skip
    /// hashing files it already knows.
    pub fn knows_stat(
        &self,
        rule: &str,
        kind: Kind,
        path: &Path,
        size: u64,
        mtime_ns: i64,
    ) -> rusqlite::Result<bool> {
        self.connection
            .query_row(
                "SELECT 1 FROM jobs WHERE rule = ?1 AND kind = ?2 AND claimed_path = ?3 \
                 AND size = ?4 AND mtime_ns = ?5 LIMIT 1",
                params![rule, kind.as_str(), text(path), size as i64, mtime_ns],
                |_| Ok(()),
            )
            .optional()
            .map(|found| found.is_some())
    }

    /// Records a newly claimed file as a queued job and returns its id.
    pub fn insert(
        &self,
        rule: &str,
        kind: Kind,
        identity: &FileIdentity,
        state: State,
    ) -> rusqlite::Result<i64> {
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

    pub fn get(&self, id: i64) -> rusqlite::Result<Option<Job>> {
        self.connection
            .query_row(
                &format!("SELECT {COLUMNS} FROM jobs WHERE id = ?1"),
                [id],
                job_from_row,
            )
            .optional()
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

    /// Jobs a crash or `kill -9` interrupted: they run again from the start (their outputs
    /// are rewritten in place, atomically).
    pub fn interrupted(&self) -> rusqlite::Result<Vec<Job>> {
        self.query("state IN ('running', 'merging') ORDER BY id", &[])
    }

    /// Queued jobs whose retry time has come, oldest first.
    pub fn runnable(&self, at: f64, limit: usize) -> rusqlite::Result<Vec<Job>> {
        self.query(
            "state = 'queued' AND (next_attempt_at IS NULL OR next_attempt_at <= ?1) \
             ORDER BY id LIMIT ?2",
            &[&at, &(limit as i64)],
        )
    }

    /// The earliest retry time after `at` among queued jobs (those already due start as
    /// soon as a worker is free, which wakes the loop anyway).
    pub fn next_retry_at(&self, at: f64) -> rusqlite::Result<Option<f64>> {
        self.connection.query_row(
            "SELECT MIN(next_attempt_at) FROM jobs WHERE state = 'queued' AND next_attempt_at > ?1",
            [at],
            |row| row.get(0),
        )
    }

    /// Split jobs of `rule` that can still take a return: awaiting, expired within grace,
    /// or done but still inside their window (variations).
    pub fn pending_proxies(&self, rule: &str) -> rusqlite::Result<Vec<Job>> {
        self.query(
            "kind = 'split' AND rule = ?1 AND closed = 0 AND proxy_path IS NOT NULL \
             AND state IN ('awaiting-return', 'expired', 'done') ORDER BY id",
            &[&rule],
        )
    }

    /// Split jobs still waiting past `at` (to be marked expired).
    pub fn overdue(&self, at: f64) -> rusqlite::Result<Vec<Job>> {
        self.query(
            "kind = 'split' AND state = 'awaiting-return' AND expires_at <= ?1",
            &[&at],
        )
    }

    /// Open split jobs whose window (expiry plus `grace`) ended before `at`.
    pub fn window_over(&self, at: f64, grace: f64, rule: &str) -> rusqlite::Result<Vec<Job>> {
        self.query(
            "kind = 'split' AND rule = ?3 AND closed = 0 AND expires_at IS NOT NULL \
             AND expires_at + ?2 <= ?1 AND state IN ('expired', 'done')",
            &[&at, &grace, &rule],
        )
    }

    /// The next moment something awaits a deadline (a proxy's expiry, or the end of an
    /// incomplete file's grace).
    pub fn next_deadline(&self) -> rusqlite::Result<Option<f64>> {
        self.connection.query_row(
            "SELECT MIN(t) FROM (\
               SELECT MIN(expires_at) AS t FROM jobs WHERE kind = 'split' AND state = 'awaiting-return' \
               UNION ALL \
               SELECT MIN(next_attempt_at) AS t FROM jobs WHERE state = 'incomplete')",
            [],
            |row| row.get(0),
        )
    }

    /// Leaves a job whose file read as empty or truncated waiting in place until `until`.
    pub fn set_incomplete(&self, id: i64, until: f64, reason: &str) -> rusqlite::Result<()> {
        self.connection.execute(
            "UPDATE jobs SET state = 'incomplete', next_attempt_at = ?2, error = ?3, \
             updated_at = ?4 WHERE id = ?1",
            params![id, until, reason, now()],
        )?;
        Ok(())
    }

    /// Incomplete jobs whose grace ended at or before `at`.
    pub fn incomplete_due(&self, at: f64) -> rusqlite::Result<Vec<Job>> {
        self.query(
            "state = 'incomplete' AND next_attempt_at <= ?1 ORDER BY id",
            &[&at],
        )
    }

    /// Jobs of the same file (rule, kind, claimed path) other than `newer` that have not
    /// started and never will with this content: queued, incomplete or held. They are
    /// superseded by the newer version of the file.
    pub fn superseded_by(&self, newer: i64) -> rusqlite::Result<Vec<Job>> {
        self.query(
            "id != ?1 AND state IN ('queued', 'incomplete', 'held') AND (rule, kind, claimed_path) = \
             (SELECT rule, kind, claimed_path FROM jobs WHERE id = ?1) ORDER BY id",
            &[&newer],
        )
    }

    /// Merge jobs of a split job that have a variant number.
    pub fn variants_of(&self, parent: i64) -> rusqlite::Result<Vec<Job>> {
        self.query(
            "kind = 'merge' AND parent = ?1 AND variant IS NOT NULL ORDER BY variant",
            &[&parent],
        )
    }

    /// True when some job already writes to `path`.
    pub fn output_taken(&self, path: &Path, except_parent: i64) -> rusqlite::Result<bool> {
        self.connection
            .query_row(
                "SELECT 1 FROM jobs WHERE output_path = ?1 AND (parent IS NULL OR parent != ?2) LIMIT 1",
                params![text(path), except_parent],
                |_| Ok(()),
            )
            .optional()
            .map(|found| found.is_some())
    }

    /// Moves a job to a new state (and clears its error unless one is given).
    pub fn set_state(&self, id: i64, state: State, error: Option<&str>) -> rusqlite::Result<()> {
        self.connection.execute(
            "UPDATE jobs SET state = ?2, error = ?3, updated_at = ?4 WHERE id = ?1",
            params![id, state.as_str(), error, now()],
        )?;
        Ok(())
    }

    /// Starts an attempt: the state becomes `running`/`merging` and attempts grows by one.
    pub fn start_attempt(&self, id: i64, state: State) -> rusqlite::Result<()> {
        self.connection.execute(
            "UPDATE jobs SET state = ?2, attempts = attempts + 1, updated_at = ?3 WHERE id = ?1",
            params![id, state.as_str(), now()],
        )?;
        Ok(())
    }

    /// Puts a job back in the queue after a transient failure, to run at `at`.
    pub fn retry_at(&self, id: i64, at: f64, error: &str) -> rusqlite::Result<()> {
        self.connection.execute(
            "UPDATE jobs SET state = 'queued', next_attempt_at = ?2, error = ?3, updated_at = ?4 \
             WHERE id = ?1",
            params![id, at, error, now()],
        )?;
        Ok(())
    }

    /// Resets an interrupted job to queued (its attempt is not counted against it).
    pub fn requeue_interrupted(&self, id: i64) -> rusqlite::Result<()> {
        self.connection.execute(
            "UPDATE jobs SET state = 'queued', attempts = MAX(attempts - 1, 0), updated_at = ?2 \
             WHERE id = ?1",
            params![id, now()],
        )?;
        Ok(())
    }

    pub fn set_path(&self, id: i64, path: &Path) -> rusqlite::Result<()> {
        self.connection.execute(
            "UPDATE jobs SET path = ?2, updated_at = ?3 WHERE id = ?1",
            params![id, text(path), now()],
        )?;
        Ok(())
    }

    /// Records the proxy a split job wrote and starts its wait for a return.
    pub fn proxy_written(
        &self,
        id: i64,
        proxy_path: &Path,
        size: (u32, u32),
        signature: &[u8],
        expires_at: f64,
        details: &str,
    ) -> rusqlite::Result<()> {
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

    /// Pairs a merge job with its split job, fixing its variant number and output path.
    pub fn pair(
        &self,
        id: i64,
        parent: i64,
        variant: u32,
        pairing: &str,
        output_path: &Path,
    ) -> rusqlite::Result<()> {
        self.connection.execute(
            "UPDATE jobs SET parent = ?2, variant = ?3, pairing = ?4, output_path = ?5, \
             updated_at = ?6 WHERE id = ?1",
            params![id, parent, variant, pairing, text(output_path), now()],
        )?;
        Ok(())
    }

    /// Commits a finished merge in one transaction: the merge job done, its split job done,
    /// and where the original and the returned file now are.
    pub fn merge_done(
        &mut self,
        id: i64,
        parent: i64,
        return_now_at: &Path,
        original_now_at: &Path,
        details: &str,
    ) -> rusqlite::Result<()> {
        let t = now();
        let tx = self.connection.transaction()?;
        tx.execute(
            "UPDATE jobs SET state = 'done', path = ?2, details = ?3, error = NULL, updated_at = ?4 \
             WHERE id = ?1",
            params![id, text(return_now_at), details, t],
        )?;
        tx.execute(
            "UPDATE jobs SET state = 'done', path = ?2, error = NULL, updated_at = ?3 WHERE id = ?1",
            params![parent, text(original_now_at), t],
        )?;
        tx.commit()
    }

    /// Records the output path a job will write (decided once, reused by a re-run).
    pub fn set_output(&self, id: i64, output: &Path) -> rusqlite::Result<()> {
        self.connection.execute(
            "UPDATE jobs SET output_path = ?2, updated_at = ?3 WHERE id = ?1",
            params![id, text(output), now()],
        )?;
        Ok(())
    }

    /// A single-step job finished: done, with where its input now is.
    pub fn job_done(&self, id: i64, input_now_at: &Path, details: &str) -> rusqlite::Result<()> {
        self.connection.execute(
            "UPDATE jobs SET state = 'done', path = ?2, details = ?3, error = NULL, updated_at = ?4 \
             WHERE id = ?1",
            params![id, text(input_now_at), details, now()],
        )?;
        Ok(())
    }

    pub fn close(&self, id: i64) -> rusqlite::Result<()> {
        self.connection.execute(
            "UPDATE jobs SET closed = 1, updated_at = ?2 WHERE id = ?1",
            params![id, now()],
        )?;
        Ok(())
    }

    /// Number of jobs in each state, by kind.
    pub fn counts(&self) -> rusqlite::Result<Vec<(Kind, State, u64)>> {
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
        rows.collect()
    }

    /// Jobs in `state`, newest first, at most `limit`.
    pub fn in_state(&self, state: State, limit: usize) -> rusqlite::Result<Vec<Job>> {
        self.query(
            "state = ?1 ORDER BY updated_at DESC LIMIT ?2",
            &[&state.as_str(), &(limit as i64)],
        )
    }

    /// The most recently finished job.
    pub fn last_finished(&self) -> rusqlite::Result<Option<Job>> {
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
        let journal = Journal::open(dir.path()).unwrap();
        let id = journal
            .insert("photos", Kind::Split, &identity("/in/a.jpg"), State::Queued)
            .unwrap();
        assert!(journal
            .insert("photos", Kind::Split, &identity("/in/a.jpg"), State::Queued)
            .is_err());
        journal.start_attempt(id, State::Running).unwrap();
        drop(journal);
        let journal = Journal::open(dir.path()).unwrap();
        let found = journal
            .find_identity("photos", Kind::Split, &identity("/in/a.jpg"))
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
        let journal = Journal::open(dir.path()).unwrap();
        let id = journal
            .insert("r", Kind::Split, &identity("/in/b.jpg"), State::Queued)
            .unwrap();
        journal.retry_at(id, now() + 100.0, "disk full").unwrap();
        assert!(journal.runnable(now(), 10).unwrap().is_empty());
        assert_eq!(journal.runnable(now() + 101.0, 10).unwrap().len(), 1);
    }
}
