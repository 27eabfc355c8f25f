//! The crash-safe job journal: every job, its state and the log of its state changes. One
//! host keeps it in an SQLite database in its state folder (WAL, `synchronous=FULL`);
//! several hosts share one in PostgreSQL (`[daemon] journal = "postgresql://..."`), where a
//! running job is leased by its host. On each host the daemon's main thread is the only
//! writer of jobs (the webhook deliverer writes only its own position in the event log, the
//! heartbeat only leases); `darkroom status` and the HTTP listener read it while the daemon
//! runs.
//!
//! A job is either an input (a file claimed from a rule's inbox, `split` in the journal) or
//! a return (a processed proxy claimed from the rule's return folder, `merge` in the journal,
//! paired with its input's job as `parent`). What a job does is its rule's recipe's business.

pub(crate) use crate::io::clock::now;
use std::path::{Path, PathBuf};

/// The journal's file name inside the state folder.
pub const FILE_NAME: &str = "journal.sqlite";

/// What a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A file from a rule's inbox.
    Input,
    /// A file from a rule's return folder (a processed proxy coming back).
    Return,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Input => "split",
            Kind::Return => "merge",
        }
    }

    fn parse(text: &str) -> Kind {
        if text == "merge" {
            Kind::Return
        } else {
            Kind::Input
        }
    }
}

/// Job states. A split job goes queued → running → awaiting-return → done (or expired when no
/// return came back in time); a merge job goes queued → merging → done. Any job can end
/// failed; a merge job whose content match is ambiguous is held.
///
/// A file that read as empty or truncated is `incomplete`: left in place and watched for
/// `incomplete_grace`, since a writer may still be appending to it.
///
/// A split job of a rule with a `tool` goes from running (the split) to waiting-for-tool, then
/// at-tool while darkroom drives the tool, back to waiting-for-tool while the tool is
/// unreachable, and to awaiting-return once the tool's outputs are queued as its returns. When it changes, the new
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
    /// Waits for its tool (to be sent, or for the tool to answer again); runnable once due.
    WaitingForTool,
    /// With its tool: a prompt submitted to ComfyUI, or a command running.
    AtTool,
    /// Cancelled over HTTP before it finished; its input is set aside like a failure's.
    Cancelled,
}

impl State {
    pub const ALL: [State; 14] = [
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
        State::WaitingForTool,
        State::AtTool,
        State::Cancelled,
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
            State::WaitingForTool => "waiting-for-tool",
            State::AtTool => "at-tool",
            State::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<State> {
        State::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// A job in this state is over and will not run again by itself.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            State::Done
                | State::Failed
                | State::Expired
                | State::Superseded
                | State::Withdrawn
                | State::Cancelled
        )
    }
}

/// Why a job failed, as a class the metrics, webhooks and API report: `bad-input` (the
/// file itself), `rejected` (a training set's quality control), `gave-up` (transient
/// failures, attempts spent), `timeout` (past `job_timeout`) or `cancelled`.
pub type FailureClass = &'static str;

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
    /// Jobs of a rule with a tool: the tool attempt last started (0 before the first); the
    /// ComfyUI prompt id is derived from it and the job id.
    pub tool_attempt: u32,
    /// The tool server that attempt went to.
    pub tool_server: Option<String>,
    /// Failed or cancelled jobs: the [`FailureClass`].
    pub failure: Option<String>,
    /// The host whose lease the job is under (running there, or about to start there).
    pub leased_by: Option<String>,
    /// When that lease lapses unless its host renews it (the database's clock).
    pub lease_until: Option<f64>,
}

/// A daemon that shares the journal, as its heartbeat row says.
#[derive(Debug, Clone, PartialEq)]
pub struct Host {
    pub name: String,
    pub pid: i64,
    /// Its roles, comma-separated.
    pub roles: String,
    pub version: String,
    pub started_at: f64,
    /// Seconds since its last heartbeat (the database's clock).
    pub heartbeat_age: f64,
    /// When it stopped cleanly; `None` while it runs (or since it was killed).
    pub stopped_at: Option<f64>,
    /// Jobs running under its lease.
    pub running: Vec<i64>,
    /// Roles it is elected for (`scanner`).
    pub leads: Vec<String>,
}

/// One state change of a job, as the journal recorded it (in the same transaction as the
/// change itself): the event log of `GET /jobs/{id}`, the feed of `GET /events` and the
/// webhooks' outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct JobEvent {
    /// Increases with every change; never reused.
    pub id: i64,
    pub job: i64,
    pub rule: String,
    pub kind: Kind,
    pub at: f64,
    pub state: State,
    pub attempts: u32,
    pub error: Option<String>,
    pub failure: Option<String>,
}

/// Which runnable jobs [`Store::runnable`] looks at.
#[derive(Debug, Clone, Copy, Default)]
pub struct Runnable<'a> {
    /// Only jobs of these rules (the rules this host's roles take); `None`: every rule.
    pub rules: Option<&'a [String]>,
    /// Only jobs waiting for their tool (they need no worker).
    pub tool_waits_only: bool,
}

/// Which jobs a page of `jobs_page` holds: newest first, ids below `before`.
#[derive(Debug, Clone, Default)]
pub struct JobQuery {
    pub rule: Option<String>,
    pub state: Option<State>,
    pub kind: Option<Kind>,
    /// Only the job claimed at this path.
    pub claimed_path: Option<PathBuf>,
    /// Only jobs of files with this name.
    pub file_name: Option<String>,
    pub before: Option<i64>,
    pub limit: usize,
}

/// How far a webhook target has been told: the last event it took, and its failing streak.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Delivery {
    pub target: String,
    pub last_event: i64,
    /// Failed tries of the event after `last_event` in a row.
    pub failures: u32,
    pub next_try_at: Option<f64>,
    pub last_error: Option<String>,
}

/// A file a tool returned for a job, durable in the returns tree, to be queued as a merge
/// job already paired with it.
#[derive(Debug, Clone)]
pub struct ToolReturn {
    pub identity: FileIdentity,
    pub variant: u32,
    pub output_path: PathBuf,
}

mod postgres;
mod schema;
mod sql;
mod sqlite;
mod store;

pub use postgres::{listen_for_work, redacted};
pub use store::SqlStore;

/// A journal operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database's own words.
    #[error("journal: {0}")]
    Database(String),
    /// This host's lease on the job lapsed and the job is no longer its attempt to finish
    /// (another host took it over, or it was cancelled): the write was refused.
    #[error("journal: job {job} is no longer this host's to finish: its lease lapsed and the job was taken over")]
    Fenced { job: i64 },
}

impl StoreError {
    pub fn is_fenced(&self) -> bool {
        matches!(self, StoreError::Fenced { .. })
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Where the journal lives: `[daemon] journal`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Location {
    /// `journal.sqlite` in the state folder (one host).
    #[default]
    Sqlite,
    /// A PostgreSQL database that several hosts share.
    Postgres(String),
}

impl Location {
    /// `sqlite`, or a `postgresql://` (`postgres://`) URL.
    pub fn parse(text: &str) -> Result<Location, String> {
        if text == "sqlite" {
            return Ok(Location::Sqlite);
        }
        if text.starts_with("postgresql://") || text.starts_with("postgres://") {
            return text
                .parse::<::postgres::Config>()
                .map(|_| Location::Postgres(text.to_string()))
                .map_err(|e| format!("'{}' is not a PostgreSQL URL: {e}", redacted(text)));
        }
        Err(format!(
            "'{}' is neither \"sqlite\" nor a PostgreSQL URL (postgresql://user@host/database)",
            redacted(text)
        ))
    }

    /// For messages: the SQLite file, or the URL without its password.
    pub fn describe(&self, state_dir: &Path) -> String {
        match self {
            Location::Sqlite => state_dir.join(FILE_NAME).display().to_string(),
            Location::Postgres(url) => redacted(url),
        }
    }
}

/// What opening a journal needs: where it is, and who this host is in it.
#[derive(Debug, Clone)]
pub struct Opening {
    pub location: Location,
    pub state_dir: PathBuf,
    /// This host's name in leases.
    pub host: String,
    /// How long a lease lasts without a heartbeat.
    pub lease: std::time::Duration,
}

impl Opening {
    /// The daemon's own writable journal (its schema brought up to date); `purpose` names
    /// the connection on the database server.
    pub fn open(&self, purpose: &str) -> StoreResult<SqlStore> {
        let db: Box<dyn sql::Database> = match &self.location {
            Location::Sqlite => Box::new(sqlite::SqliteDb::open(&self.state_dir)?),
            Location::Postgres(url) => Box::new(postgres::PostgresDb::open(url, purpose)?),
        };
        Ok(SqlStore::new(db, &self.host, self.lease))
    }

    /// A connection for reading while the daemon runs (`darkroom status`, the HTTP API).
    pub fn open_reader(&self, purpose: &str) -> StoreResult<SqlStore> {
        let db: Box<dyn sql::Database> = match &self.location {
            Location::Sqlite => Box::new(sqlite::SqliteDb::open_read_only(&self.state_dir)?),
            Location::Postgres(url) => Box::new(postgres::PostgresDb::connect(url, purpose)?),
        };
        Ok(SqlStore::new(db, &self.host, self.lease))
    }
}

/// The operations the daemon needs from its journal, whatever keeps it: claim by identity,
/// state transitions with attempt numbers, leases, pending proxies, deadlines, retries,
/// counts. [`SqlStore`] implements them once over SQLite and PostgreSQL; no SQL lives
/// outside `journal`.
pub trait Store: Send {
    /// The job a file identity already has, if any.
    fn find_identity(
        &self,
        rule: &str,
        kind: Kind,
        identity: &FileIdentity,
    ) -> StoreResult<Option<Job>>;

    /// True when a job was claimed from `path` with this size and mtime: lets a rescan skip
    /// hashing files it already knows.
    fn knows_stat(
        &self,
        rule: &str,
        kind: Kind,
        path: &Path,
        size: u64,
        mtime_ns: i64,
    ) -> StoreResult<bool>;

    /// Records a newly claimed file as a queued job and returns its id.
    fn insert(
        &self,
        rule: &str,
        kind: Kind,
        identity: &FileIdentity,
        state: State,
    ) -> StoreResult<i64>;

    fn get(&self, id: i64) -> StoreResult<Option<Job>>;

    /// Jobs a crash or `kill -9` interrupted: they run again from the start (their outputs
    /// are rewritten in place, atomically).
    fn interrupted(&self) -> StoreResult<Vec<Job>>;

    /// Queued jobs whose retry time has come, oldest first, as `filter` narrows them. On a
    /// shared journal they are reserved for this host (skipping those another host holds)
    /// until started or released.
    fn runnable(&self, at: f64, limit: usize, filter: &Runnable<'_>) -> StoreResult<Vec<Job>>;

    /// Gives back the reservations of jobs [`Store::runnable`] handed out that did not
    /// start.
    fn release_unstarted(&self) -> StoreResult<()>;

    /// Running jobs whose host's lease lapsed (the host died, stalled or lost the
    /// database): queued again, for any host to take. Each with the host that held it.
    fn reclaim_lapsed(&self) -> StoreResult<Vec<(Job, String)>>;

    /// The earliest retry time after `at` among queued jobs (those already due start as
    /// soon as a worker is free, which wakes the loop anyway).
    fn next_retry_at(&self, at: f64) -> StoreResult<Option<f64>>;

    /// Split jobs of `rule` that can still take a return: awaiting, expired within grace,
    /// or done but still inside their window (variations).
    fn pending_proxies(&self, rule: &str) -> StoreResult<Vec<Job>>;

    /// Split jobs still waiting past `at` (to be marked expired).
    fn overdue(&self, at: f64) -> StoreResult<Vec<Job>>;

    /// Open split jobs whose window (expiry plus `grace`) ended before `at`.
    fn window_over(&self, at: f64, grace: f64, rule: &str) -> StoreResult<Vec<Job>>;

    /// The next moment something awaits a deadline (a proxy's expiry, or the end of an
    /// incomplete file's grace).
    fn next_deadline(&self) -> StoreResult<Option<f64>>;

    /// Leaves a job whose file read as empty or truncated waiting in place until `until`.
    fn set_incomplete(&self, id: i64, until: f64, reason: &str) -> StoreResult<()>;

    /// Incomplete jobs whose grace ended at or before `at`.
    fn incomplete_due(&self, at: f64) -> StoreResult<Vec<Job>>;

    /// Jobs of the same file (rule, kind, claimed path) other than `newer` that have not
    /// started and never will with this content: queued, incomplete or held. They are
    /// superseded by the newer version of the file.
    fn superseded_by(&self, newer: i64) -> StoreResult<Vec<Job>>;

    /// Merge jobs of a split job that have a variant number.
    fn variants_of(&self, parent: i64) -> StoreResult<Vec<Job>>;

    /// True when some job already writes to `path`.
    fn output_taken(&self, path: &Path, except_parent: i64) -> StoreResult<bool>;

    /// Moves a job to a new state (and clears its error unless one is given).
    fn set_state(&self, id: i64, state: State, error: Option<&str>) -> StoreResult<()>;

    /// Starts an attempt: the state becomes `running`/`merging` and attempts grows by one,
    /// under this host's lease. Every later write about the job is fenced by that attempt
    /// ([`StoreError::Fenced`] once another host took it over).
    fn start_attempt(&self, id: i64, state: State) -> StoreResult<()>;

    /// Puts a job back in the queue after a transient failure, to run at `at`.
    fn retry_at(&self, id: i64, at: f64, error: &str) -> StoreResult<()>;

    /// Resets an interrupted job to queued (its attempt is not counted against it).
    fn requeue_interrupted(&self, id: i64) -> StoreResult<()>;

    fn set_path(&self, id: i64, path: &Path) -> StoreResult<()>;

    /// Records the proxy a split job wrote and starts its wait for a return.
    fn proxy_written(
        &self,
        id: i64,
        proxy_path: &Path,
        size: (u32, u32),
        signature: &[u8],
        expires_at: f64,
        details: &str,
    ) -> StoreResult<()>;

    /// Pairs a merge job with its split job, fixing its variant number and output path.
    fn pair(
        &self,
        id: i64,
        parent: i64,
        variant: u32,
        pairing: &str,
        output_path: &Path,
    ) -> StoreResult<()>;

    /// Commits a finished merge in one transaction: the merge job done, its split job done,
    /// and where the original and the returned file now are.
    fn merge_done(
        &self,
        id: i64,
        parent: i64,
        return_now_at: &Path,
        original_now_at: &Path,
        details: &str,
    ) -> StoreResult<()>;

    /// Records the tool attempt a job is about to make and the server it goes to, before
    /// anything is sent: a restart looks that attempt up before making another.
    fn set_tool_attempt(&self, id: i64, attempt: u32, server: &str) -> StoreResult<()>;

    /// The job's tool is unreachable (or not yet free): it waits until `at`, the attempt it
    /// started is not counted against it.
    fn wait_for_tool(&self, id: i64, at: f64, reason: &str) -> StoreResult<()>;

    /// Commits what a tool returned for split job `parent` in one transaction: each file a
    /// merge job already paired with it (queued), and the split job awaiting its returns
    /// until `expires_at` (further returns by hand are still taken until then), its details
    /// replaced by `details`.
    fn tool_returned(
        &self,
        rule: &str,
        parent: i64,
        returns: &[ToolReturn],
        expires_at: f64,
        details: &str,
    ) -> StoreResult<Vec<i64>>;

    /// Records the output path a job will write (decided once, reused by a re-run).
    fn set_output(&self, id: i64, output: &Path) -> StoreResult<()>;

    /// A single-step job finished: done, with where its input now is.
    fn job_done(&self, id: i64, input_now_at: &Path, details: &str) -> StoreResult<()>;

    fn close(&self, id: i64) -> StoreResult<()>;

    /// Number of jobs in each state, by kind.
    fn counts(&self) -> StoreResult<Vec<(Kind, State, u64)>>;

    /// Jobs in `state`, newest first, at most `limit`.
    fn in_state(&self, state: State, limit: usize) -> StoreResult<Vec<Job>>;

    /// The most recently finished job.
    fn last_finished(&self) -> StoreResult<Option<Job>>;

    /// Ends a job without a result: `state` is failed or cancelled, `class` a
    /// [`FailureClass`], `input_now_at` where its input was set aside.
    fn set_failed(
        &self,
        id: i64,
        state: State,
        class: FailureClass,
        reason: &str,
        input_now_at: &Path,
    ) -> StoreResult<()>;

    /// Queues an ended job again from the start (a retry): its input is back at `path`,
    /// attempts start over, and its error and tool attempt stay for the record.
    fn requeue(&self, id: i64, path: &Path) -> StoreResult<()>;

    /// A page of jobs, newest first.
    fn jobs_page(&self, query: &JobQuery) -> StoreResult<Vec<Job>>;

    /// Number of jobs by rule, kind and state.
    fn counts_by_rule(&self) -> StoreResult<Vec<(String, Kind, State, u64)>>;

    /// When the longest-waiting job in `state` entered it.
    fn oldest_in_state(&self, state: State) -> StoreResult<Option<f64>>;

    /// The state changes of one job, oldest first.
    fn events_of(&self, job: i64) -> StoreResult<Vec<JobEvent>>;

    /// State changes after event `after`, oldest first, at most `limit`.
    fn events_after(&self, after: i64, limit: usize) -> StoreResult<Vec<JobEvent>>;

    /// The newest event's id (0 before any).
    fn last_event_id(&self) -> StoreResult<i64>;

    /// A webhook target's delivery state, if it has one.
    fn delivery(&self, target: &str) -> StoreResult<Option<Delivery>>;

    /// Records a webhook target's delivery state.
    fn set_delivery(&self, delivery: &Delivery) -> StoreResult<()>;

    /// Every webhook target's delivery state.
    fn deliveries(&self) -> StoreResult<Vec<Delivery>>;

    /// Records this host in the journal's host list as running; refuses when a live daemon
    /// on this machine already runs under the same host name.
    fn register_host(&self, roles: &str) -> StoreResult<()>;

    /// Says this host is alive and renews the leases of the jobs it runs; returns how many.
    fn heartbeat(&self) -> StoreResult<u64>;

    /// Marks this host stopped and gives up what it was elected for.
    fn host_stopped(&self) -> StoreResult<()>;

    /// Takes or keeps `role` for this host for one lease; false while another host holds
    /// it. On a journal only one host uses, always true.
    fn lead(&self, role: &str) -> StoreResult<bool>;

    /// Every host that has used the journal.
    fn hosts(&self) -> StoreResult<Vec<Host>>;
}

/// What [`copy_sqlite_to_postgres`] copied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Copied {
    pub jobs: u64,
    pub events: u64,
    pub deliveries: u64,
    /// Jobs that were running when the single host stopped: queued again, to run anew.
    pub requeued: u64,
}

/// `darkroom journal migrate`: copies the SQLite journal in `state_dir` into the
/// PostgreSQL database at `url`, in one transaction, keeping job and event ids. The
/// database must hold no jobs yet. Jobs that were running are queued again (no host holds
/// them there). Stop the daemon first.
pub fn copy_sqlite_to_postgres(state_dir: &Path, url: &str) -> StoreResult<Copied> {
    store::copy_sqlite_to_postgres(
        &sqlite::SqliteDb::open(state_dir)?,
        &postgres::PostgresDb::open(url, "migrate")?,
    )
}
