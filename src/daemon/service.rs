//! `darkroom serve`: the main loop. One thread owns the journal, the watcher and every
//! decision; worker threads only run the pixel work handed to them and report back.
//!
//! The order of every step is what makes a crash harmless: an output is durable before the
//! journal says so, and an input moves only after its outputs are durable. A job the
//! journal still shows as running when the daemon starts is run again, and writes the same
//! output path again, atomically.

use crate::core::signature::Signature;
use crate::daemon::config::{self, Config, OriginalsPolicy, Recipe, Rule, SplitToProxy, Upscale};
use crate::daemon::intake::{Claim, FileStat, Intake, Role, WatchRoot};
use crate::daemon::journal::{FileIdentity, Job, Journal, Kind, State};
use crate::daemon::model_lane::ModelLane;
use crate::daemon::normalise_job::{self, NormaliseWork, Normalised};
use crate::daemon::pairing::{self, Pairing, PendingProxy};
use crate::daemon::round_trip::{self, MergeWork, Merged, ProxyWritten};
use crate::daemon::systemd;
use crate::daemon::trees::{self, ClaimedVersion, ErrorSidecar, ProcessingLog, SourceNow, Trees};
use crate::daemon::upscale_job::{self, UpscaleWork, Upscaled};
use crate::io::decode;
use crate::io::{clock, names};
use crate::ops::OpError;
use anyhow::Context;
use serde_json::json;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// What wakes the main loop.
enum Event {
    Fs(notify::Result<notify::Event>),
    Signal(i32),
    Finished {
        job_id: i64,
        outcome: Box<Outcome>,
    },
    /// The hashing thread read a claimed file through: its content hash, or why not.
    Hashed {
        claim: Claim,
        sha256: Hashed,
    },
    /// The model lane loaded a model and measured its scale (or could not).
    ModelScale {
        model: PathBuf,
        scale: Result<u32, String>,
    },
}

/// What the hashing thread found for a claimed file.
enum Hashed {
    Sha256(String),
    /// The file changed while it was read: the intake waits for it to settle again.
    Changed,
    Unreadable(std::io::Error),
}

/// Hashes claimed files on a thread of its own, so that the main loop (which also pings the
/// systemd watchdog) never waits on reading a large file. Files are hashed one at a time,
/// in claim order.
fn spawn_hasher(events: &Sender<Event>) -> Sender<Claim> {
    let (requests, claims) = mpsc::channel::<Claim>();
    let events = events.clone();
    std::thread::Builder::new()
        .name("hasher".into())
        .spawn(move || {
            for claim in claims {
                let sha256 = match crate::io::hash::sha256_file(&claim.path) {
                    Err(e) => Hashed::Unreadable(e),
                    Ok(sha256) => {
                        let now = std::fs::metadata(&claim.path).map(|m| FileStat::of(&m));
                        match now {
                            Ok(stat) if stat == claim.stat => Hashed::Sha256(sha256),
                            Ok(_) => Hashed::Changed,
                            Err(e) => Hashed::Unreadable(e),
                        }
                    }
                };
                if events.send(Event::Hashed { claim, sha256 }).is_err() {
                    return;
                }
            }
        })
        .expect("spawn the hashing thread");
    requests
}

/// The journal's kind for a file found in a folder of `role`: an inbox gives originals, the
/// exchange returns.
fn kind_of(role: Role) -> Kind {
    match role {
        Role::Inbox => Kind::Split,
        Role::ExchangeIn => Kind::Merge,
    }
}

/// What the daemon knows of a model's scale (it names upscale outputs `{stem}_x{scale}_...`).
#[derive(Debug, Clone, PartialEq)]
enum ScaleKnown {
    /// The lane is loading the model; its jobs wait.
    Probing,
    Known(u32),
    /// The model cannot be loaded: its jobs run and fail with the reason.
    Unavailable,
}

/// Work handed to a worker thread.
enum Work {
    Split {
        job_id: i64,
        original: PathBuf,
        options: Box<SplitToProxy>,
        limits: decode::DecodeLimits,
    },
    Merge {
        job_id: i64,
        work: Box<MergeWork>,
    },
    Upscale {
        job_id: i64,
        work: Box<UpscaleWork>,
    },
    Normalise {
        job_id: i64,
        work: Box<NormaliseWork>,
    },
}

impl Work {
    fn job_id(&self) -> i64 {
        match self {
            Work::Split { job_id, .. }
            | Work::Merge { job_id, .. }
            | Work::Upscale { job_id, .. }
            | Work::Normalise { job_id, .. } => *job_id,
        }
    }
}

enum Outcome {
    Split(Result<Box<ProxyWritten>, OpError>),
    Merge(Result<Merged, OpError>),
    Upscale(Result<Upscaled, OpError>),
    Normalise(Result<Box<Normalised>, OpError>),
}

/// How many candidate proxies a held return's message names (the rest are counted).
const HELD_CANDIDATES_NAMED: usize = 5;

/// Job ids for a log line: `3, 7, 12` (at most ten, then a count).
fn job_list(ids: impl Iterator<Item = i64>) -> String {
    let ids: Vec<i64> = ids.collect();
    let mut text = ids
        .iter()
        .take(10)
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    if ids.len() > 10 {
        text.push_str(&format!(" and {} more", ids.len() - 10));
    }
    text
}

struct Daemon {
    config: Arc<Config>,
    trees: Trees,
    journal: Journal,
    log: ProcessingLog,
    intake: Intake,
    events: Sender<Event>,
    work: Sender<Dispatched>,
    work_queue: WorkQueue,
    lane: ModelLane,
    workers_spawned: usize,
    in_flight: HashMap<i64, Instant>,
    /// Cancel flags of running jobs.
    cancels: HashMap<i64, Arc<AtomicBool>>,
    /// Jobs set aside after their time limit whose workers have not come back yet.
    abandoned: std::collections::HashSet<i64>,
    last_job: String,
    last_status: String,
    /// When the STATUS line and the deadlines were last looked at (at most once a second).
    last_housekeeping: Instant,
    /// Jobs of rules no longer in the config, warned about once.
    orphans_warned: std::collections::HashSet<i64>,
    /// Subfolders of watched folders that a filed file may have left empty.
    emptied_folders: std::collections::HashSet<PathBuf>,
    /// Model scales measured by the lane, by model path (cleared on reload).
    model_scales: HashMap<PathBuf, ScaleKnown>,
    /// Claimed files go to the hashing thread; their paths while they are there.
    hasher: Sender<Claim>,
    hashing: std::collections::HashSet<PathBuf>,
}

/// Creates every folder the config names.
fn create_folders(config: &Config, trees: &Trees) -> anyhow::Result<()> {
    let mut dirs = config.writable_dirs();
    for rule in &config.rules {
        dirs.extend(trees.rule_dirs(&rule.name));
    }
    dirs.push(config.daemon.state_dir.join("work"));
    for dir in dirs {
        trees::ensure_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    Ok(())
}

fn watch_roots(config: &Config) -> Vec<WatchRoot> {
    let image_patterns: Vec<glob::Pattern> = crate::daemon::config::DEFAULT_PATTERNS
        .iter()
        .filter_map(|p| glob::Pattern::new(p).ok())
        .collect();
    let mut roots = Vec::new();
    for rule in &config.rules {
        roots.push(WatchRoot {
            rule: rule.name.clone(),
            role: Role::Inbox,
            dir: rule.watch.clone(),
            patterns: rule.patterns.clone(),
        });
        match &rule.recipe {
            Recipe::SplitToProxy(options) => roots.push(WatchRoot {
                rule: rule.name.clone(),
                role: Role::ExchangeIn,
                dir: options.exchange_in.clone(),
                patterns: image_patterns.clone(),
            }),
            Recipe::Upscale(_) | Recipe::Normalise(_) => {}
        }
    }
    roots
}

fn start_intake(config: &Config, events: &Sender<Event>) -> anyhow::Result<Intake> {
    let sender = events.clone();
    Intake::start(
        watch_roots(config),
        config.daemon.stability_window,
        move |event| {
            let _ = sender.send(Event::Fs(event));
        },
    )
    .context("cannot watch the configured folders")
}

/// A job handed to a worker, with the flag that cancels its late outputs.
struct Dispatched {
    work: Work,
    cancel: Arc<AtomicBool>,
}

/// The workers' shared queue.
type WorkQueue = Arc<Mutex<Receiver<Dispatched>>>;

fn spawn_workers(
    count: usize,
    events: &Sender<Event>,
    lane: &ModelLane,
) -> (Sender<Dispatched>, WorkQueue) {
    let (sender, receiver) = mpsc::channel::<Dispatched>();
    let receiver = Arc::new(Mutex::new(receiver));
    for index in 0..count {
        spawn_worker(index, &receiver, events, lane);
    }
    (sender, receiver)
}

fn spawn_worker(index: usize, receiver: &WorkQueue, events: &Sender<Event>, lane: &ModelLane) {
    let receiver = Arc::clone(receiver);
    let events = events.clone();
    let lane = lane.clone();
    std::thread::Builder::new()
        .name(format!("darkroom-worker-{index}"))
        .spawn(move || loop {
            let next = receiver.lock().map(|r| r.recv());
            let Ok(Ok(dispatched)) = next else {
                return;
            };
            crate::io::atomic::set_job_cancel_flag(Some(dispatched.cancel));
            let (job_id, outcome) = run_work(dispatched.work, &lane);
            crate::io::atomic::set_job_cancel_flag(None);
            if events
                .send(Event::Finished {
                    job_id,
                    outcome: Box::new(outcome),
                })
                .is_err()
            {
                return;
            }
        })
        .expect("spawning a worker thread");
}

fn run_work(work: Work, lane: &ModelLane) -> (i64, Outcome) {
    let panic_message = |p: Box<dyn std::any::Any + Send>| {
        let text = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown panic".into());
        OpError::Internal(format!("the job panicked: {text}"))
    };
    match work {
        Work::Split {
            job_id,
            original,
            options,
            limits,
        } => {
            let result = std::panic::catch_unwind(|| {
                round_trip::write_proxy(job_id, &original, &options, &limits).map(Box::new)
            })
            .unwrap_or_else(|p| Err(panic_message(p)));
            (job_id, Outcome::Split(result))
        }
        Work::Merge { job_id, work } => {
            let result = std::panic::catch_unwind(|| round_trip::merge_return(&work))
                .unwrap_or_else(|p| Err(panic_message(p)));
            (job_id, Outcome::Merge(result))
        }
        Work::Upscale { job_id, work } => {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                upscale_job::run(&work, lane)
            }))
            .unwrap_or_else(|p| Err(panic_message(p)));
            (job_id, Outcome::Upscale(result))
        }
        Work::Normalise { job_id, work } => {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                normalise_job::run(&work, lane).map(Box::new)
            }))
            .unwrap_or_else(|p| Err(panic_message(p)));
            (job_id, Outcome::Normalise(result))
        }
    }
}

fn spawn_signal_thread(events: &Sender<Event>) -> anyhow::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGHUP, SIGTERM, SIGINT])
        .context("cannot install signal handlers")?;
    let events = events.clone();
    std::thread::Builder::new()
        .name("darkroom-signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if events.send(Event::Signal(signal)).is_err() {
                    return;
                }
            }
        })
        .context("cannot start the signal thread")?;
    Ok(())
}

/// Runs the daemon until SIGTERM or SIGINT. Logging must already be set up.
pub fn serve(config: Config) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let trees = Trees::new(&config.daemon.root);
    create_folders(&config, &trees)?;
    let journal = Journal::open(&config.daemon.state_dir).with_context(|| {
        format!(
            "cannot open the journal in {}",
            config.daemon.state_dir.display()
        )
    })?;
    let log = ProcessingLog::open(&trees.processing_log())
        .with_context(|| format!("cannot open {}", trees.processing_log().display()))?;
    let (events, inbox) = mpsc::channel::<Event>();
    spawn_signal_thread(&events)?;
    let lane = ModelLane::start();
    let (work, work_queue) = spawn_workers(config.daemon.workers, &events, &lane);
    let workers_spawned = config.daemon.workers;
    let intake = start_intake(&config, &events)?;
    let hasher = spawn_hasher(&events);
    let mut daemon = Daemon {
        config,
        trees,
        journal,
        log,
        intake,
        events,
        work,
        work_queue,
        lane,
        workers_spawned,
        in_flight: HashMap::new(),
        cancels: HashMap::new(),
        abandoned: Default::default(),
        last_job: "none yet".into(),
        last_status: String::new(),
        last_housekeeping: Instant::now(),
        orphans_warned: Default::default(),
        emptied_folders: Default::default(),
        model_scales: HashMap::new(),
        hasher,
        hashing: Default::default(),
    };
    daemon.recover()?;
    daemon.claim_ready();
    daemon.dispatch();
    tracing::info!(
        config = %daemon.config.path.display(),
        rules = daemon.config.rules.len(),
        root = %daemon.config.daemon.root.display(),
        version = VERSION,
        "darkroom is running"
    );
    systemd::ready();
    daemon.update_status(true);
    daemon.run(inbox)
}

impl Daemon {
    /// Requeues interrupted jobs and removes temp files a crash left behind.
    fn recover(&mut self) -> anyhow::Result<()> {
        for job in self.journal.interrupted()? {
            tracing::warn!(
                job = job.id,
                file = %job.path.display(),
                state = job.state.as_str(),
                "resuming a job an earlier run left unfinished"
            );
            self.journal.requeue_interrupted(job.id)?;
            self.record(
                &job,
                State::Queued,
                Some("resumed after an interrupted run"),
            );
        }
        let mut removed = 0;
        let mut dirs = Vec::new();
        for rule in &self.config.rules {
            dirs.extend(self.trees.rule_dirs(&rule.name));
            if let Recipe::SplitToProxy(options) = &rule.recipe {
                dirs.push(options.exchange_out.clone());
            }
        }
        for dir in dirs {
            removed += trees::remove_stale_temp_files(&dir);
        }
        let work_root = self.config.daemon.state_dir.join("work");
        if let Ok(entries) = std::fs::read_dir(&work_root) {
            for entry in entries.flatten() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        if removed > 0 {
            tracing::info!(removed, "removed temp files left by an interrupted run");
        }
        Ok(())
    }

    fn run(mut self, inbox: Receiver<Event>) -> anyhow::Result<()> {
        let watchdog = systemd::watchdog_interval();
        let mut last_ping = Instant::now();
        loop {
            let mut timeout = Duration::from_secs(30);
            if let Some(poll) = self.intake.next_poll() {
                timeout = timeout.min(poll);
            }
            if let Some(interval) = watchdog {
                timeout = timeout.min((interval / 2).saturating_sub(last_ping.elapsed()));
            }
            if let Some(wait) = self.next_deadline() {
                timeout = timeout.min(wait);
            }
            let first = match inbox.recv_timeout(timeout) {
                Ok(event) => Some(event),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => anyhow::bail!("event channel closed"),
            };
            let mut stop = false;
            for event in first
                .into_iter()
                .chain(std::iter::from_fn(|| inbox.try_recv().ok()))
            {
                match event {
                    Event::Fs(event) => self.intake.on_event(event),
                    Event::Finished { job_id, outcome } => self.finish(job_id, *outcome),
                    Event::Hashed { claim, sha256 } => self.hashed(claim, sha256),
                    Event::ModelScale { model, scale } => self.learn_scale(model, scale),
                    Event::Signal(signal) if signal == signal_hook::consts::SIGHUP => self.reload(),
                    Event::Signal(signal) => {
                        tracing::info!(signal, "stopping: no new work is taken");
                        stop = true;
                    }
                }
            }
            if stop {
                return self.drain(&inbox);
            }
            self.claim_ready();
            self.check_job_timeouts();
            let housekeeping = self.last_housekeeping.elapsed() >= Duration::from_secs(1);
            if housekeeping {
                self.check_deadlines();
            }
            self.dispatch();
            if let Some(interval) = watchdog {
                if last_ping.elapsed() >= interval / 2 {
                    systemd::watchdog();
                    last_ping = Instant::now();
                }
            }
            if housekeeping {
                self.update_status(false);
                self.last_housekeeping = Instant::now();
            }
        }
    }

    /// SIGTERM/SIGINT: stop intake, wait for running jobs up to the shutdown timeout. Jobs
    /// still running then stay `running` in the journal and are resumed on the next start.
    fn drain(mut self, inbox: &Receiver<Event>) -> anyhow::Result<()> {
        systemd::stopping();
        self.intake.stop();
        let deadline = Instant::now() + self.config.daemon.shutdown_timeout;
        while !self.in_flight.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::warn!(
                    jobs = %job_list(self.in_flight.keys().copied()),
                    "shutdown timeout: leaving running jobs to be resumed at the next start"
                );
                break;
            }
            match inbox.recv_timeout(left) {
                Ok(Event::Finished { job_id, outcome }) => self.finish(job_id, *outcome),
                Ok(_) => {}
                Err(_) => break,
            }
        }
        tracing::info!("darkroom stopped");
        Ok(())
    }

    /// SIGHUP: reload and validate the config; a bad one is rejected and the old one kept.
    fn reload(&mut self) {
        systemd::reloading();
        tracing::info!(config = %self.config.path.display(), "reloading the configuration");
        match Config::load(&self.config.path) {
            Err(errors) => {
                for error in &errors.errors {
                    tracing::error!(%error, "config reload rejected");
                }
                tracing::error!(
                    problems = errors.errors.len(),
                    "the new configuration is invalid; still running the previous one"
                );
            }
            Ok(config) => {
                let result = create_folders(&config, &self.trees)
                    .and_then(|()| start_intake(&config, &self.events));
                match result {
                    Ok(intake) => {
                        self.intake.stop();
                        self.intake = intake;
                        if config.daemon.root != self.config.daemon.root
                            || config.daemon.state_dir != self.config.daemon.state_dir
                        {
                            tracing::warn!(
                                "root and state_dir changes take effect at the next restart"
                            );
                        }
                        self.config = Arc::new(config);
                        self.model_scales.clear();
                        tracing::info!(rules = self.config.rules.len(), "configuration reloaded");
                    }
                    Err(e) => tracing::error!(
                        error = format!("{e:#}"),
                        "cannot apply the new configuration; still running the previous one"
                    ),
                }
            }
        }
        systemd::ready();
        self.update_status(true);
    }

    /// After a job's file left its folder (filed, set aside, withdrawn), a subfolder of a
    /// watched folder that it leaves empty is removed once it has stayed empty a while (so
    /// a copy still filling it is not disturbed). The watched folder itself always stays.
    fn note_left_folder(&mut self, file: &Path) {
        let Some(dir) = file.parent() else {
            return;
        };
        let inside_a_root = self
            .intake
            .roots()
            .iter()
            .any(|r| dir.starts_with(&r.dir) && dir != r.dir);
        if inside_a_root {
            self.emptied_folders.insert(dir.to_path_buf());
        }
    }

    /// Removes noted subfolders that are empty and unchanged for twice the stability window,
    /// then their parents likewise, up to (never including) the watched folder.
    fn remove_emptied_folders(&mut self) {
        let settle = self.config.daemon.stability_window * 2;
        let roots: Vec<PathBuf> = self.intake.roots().iter().map(|r| r.dir.clone()).collect();
        let mut keep = std::collections::HashSet::new();
        for dir in std::mem::take(&mut self.emptied_folders) {
            let mut dir = dir;
            loop {
                if roots.contains(&dir) || !roots.iter().any(|r| dir.starts_with(r)) {
                    break;
                }
                let Ok(metadata) = std::fs::metadata(&dir) else {
                    break;
                };
                let empty = std::fs::read_dir(&dir).is_ok_and(|mut e| e.next().is_none());
                if !empty {
                    break;
                }
                let quiet = metadata
                    .modified()
                    .ok()
                    .and_then(|m| m.elapsed().ok())
                    .is_some_and(|age| age >= settle);
                if !quiet {
                    keep.insert(dir);
                    break;
                }
                if std::fs::remove_dir(&dir).is_err() {
                    break;
                }
                tracing::info!(folder = %dir.display(), "removed an emptied subfolder of a watched folder");
                match dir.parent() {
                    Some(parent) => dir = parent.to_path_buf(),
                    None => break,
                }
            }
        }
        self.emptied_folders = keep;
    }

    fn record(&mut self, job: &Job, to: State, detail: Option<&str>) {
        if matches!(
            to,
            State::Done | State::Failed | State::Withdrawn | State::Superseded
        ) {
            self.note_left_folder(&job.claimed_path);
        }
        self.log.record(json!({
            "job": job.id,
            "kind": job.kind.as_str(),
            "rule": job.rule,
            "file": job.path,
            "from": job.state.as_str(),
            "to": to.as_str(),
            "detail": detail,
        }));
    }

    /// Sends files the intake finds ready to the hashing thread; [`Daemon::hashed`] records
    /// each as a queued job.
    fn claim_ready(&mut self) {
        for claim in self.intake.poll() {
            if self.hashing.contains(&claim.path) {
                // Its earlier version is still being read: looked at again shortly.
                self.intake.retry_claim(claim, Duration::from_millis(250));
                continue;
            }
            let root = &self.intake.roots()[claim.root];
            let known = self.journal.knows_stat(
                &root.rule,
                kind_of(root.role),
                &claim.path,
                claim.stat.size,
                claim.stat.mtime_ns,
            );
            match known {
                Ok(true) => {}
                Ok(false) => {
                    self.hashing.insert(claim.path.clone());
                    if let Err(mpsc::SendError(claim)) = self.hasher.send(claim) {
                        self.hashing.remove(&claim.path);
                        tracing::error!(file = %claim.path.display(), "the hashing thread is gone");
                    }
                }
                Err(e) => self.claim_failed(claim, &anyhow::Error::from(e)),
            }
        }
    }

    /// Unreadable now (permissions, a flaky mount): looked at again later, with the jobs'
    /// backoff, capped at a minute; nothing is forgotten.
    fn claim_failed(&mut self, claim: Claim, error: &anyhow::Error) {
        let delay = self
            .config
            .daemon
            .retry_backoff
            .saturating_mul(1 << claim.failures.min(8))
            .min(Duration::from_secs(60));
        tracing::warn!(
            file = %claim.path.display(),
            error = format!("{error:#}"),
            failures = claim.failures + 1,
            retry_in_seconds = format!("{:.1}", delay.as_secs_f64()),
            "cannot claim file; it will be retried"
        );
        self.intake.retry_claim(claim, delay);
    }

    /// A claimed file came back from the hashing thread.
    fn hashed(&mut self, claim: Claim, sha256: Hashed) {
        self.hashing.remove(&claim.path);
        let still_watched = self
            .intake
            .roots()
            .get(claim.root)
            .is_some_and(|root| claim.path.starts_with(&root.dir));
        if !still_watched {
            // The config was reloaded meanwhile: the file is looked at under the new rules.
            self.intake.recheck(&claim.path);
            return;
        }
        match sha256 {
            Hashed::Sha256(sha256) => {
                if let Err(e) = self.claim(&claim, sha256) {
                    self.claim_failed(claim, &e);
                }
            }
            Hashed::Changed => self.intake.recheck(&claim.path),
            Hashed::Unreadable(e) => self.claim_failed(claim, &anyhow::Error::from(e)),
        }
    }

    fn claim(&mut self, claim: &Claim, sha256: String) -> anyhow::Result<()> {
        let root = &self.intake.roots()[claim.root];
        let kind = kind_of(root.role);
        let rule = root.rule.clone();
        if self.journal.knows_stat(
            &rule,
            kind,
            &claim.path,
            claim.stat.size,
            claim.stat.mtime_ns,
        )? {
            return Ok(());
        }
        let identity = FileIdentity {
            path: claim.path.clone(),
            size: claim.stat.size,
            mtime_ns: claim.stat.mtime_ns,
            inode: claim.stat.inode,
            sha256,
        };
        if self
            .journal
            .find_identity(&rule, kind, &identity)?
            .is_some()
        {
            return Ok(());
        }
        let id = self.journal.insert(&rule, kind, &identity, State::Queued)?;
        // The journal's kind says where the file came from (an inbox or the exchange);
        // the recipe says what will be done with it.
        let recipe = self.config.rule(&rule).map_or("", |r| r.recipe.name());
        tracing::info!(
            job = id,
            rule = %rule,
            recipe,
            kind = kind.as_str(),
            file = %claim.path.display(),
            bytes = claim.stat.size,
            "claimed"
        );
        if let Some(job) = self.journal.get(id)? {
            self.log.record(json!({
                "job": id, "kind": kind.as_str(), "rule": rule, "recipe": recipe,
                "file": job.path, "from": null, "to": "queued", "sha256": job.sha256,
                "bytes": job.size,
            }));
        }
        for older in self.journal.superseded_by(id)? {
            let why = format!("the file changed after it was claimed; its new version is job {id}");
            tracing::info!(job = older.id, file = %older.path.display(), newer_job = id, "superseded: {why}");
            self.journal
                .set_state(older.id, State::Superseded, Some(&why))?;
            self.record(&older, State::Superseded, Some(&why));
        }
        Ok(())
    }

    /// Hands a job to the workers with a fresh cancel flag.
    fn send_work(&mut self, work: Work) -> Result<(), mpsc::SendError<Dispatched>> {
        let cancel = Arc::new(AtomicBool::new(false));
        self.cancels.insert(work.job_id(), Arc::clone(&cancel));
        self.work.send(Dispatched { work, cancel })
    }

    /// Jobs running longer than `job_timeout` are set aside: their input is quarantined with
    /// the reason, their late outputs are refused (the cancel flag), and a fresh worker takes
    /// the place of the one still busy with them.
    fn check_job_timeouts(&mut self) {
        let limit = self.config.daemon.job_timeout;
        let overdue: Vec<i64> = self
            .in_flight
            .iter()
            .filter(|(_, started)| started.elapsed() > limit)
            .map(|(id, _)| *id)
            .collect();
        for id in overdue {
            self.in_flight.remove(&id);
            if let Some(flag) = self.cancels.remove(&id) {
                flag.store(true, Ordering::SeqCst);
            }
            self.abandoned.insert(id);
            spawn_worker(
                self.workers_spawned,
                &self.work_queue,
                &self.events,
                &self.lane,
            );
            self.workers_spawned += 1;
            let limit_text = crate::daemon::config::format_duration(limit);
            tracing::error!(
                job = id,
                job_timeout = %limit_text,
                "job ran past job_timeout; set aside, and a fresh worker takes its place"
            );
            if let Ok(Some(job)) = self.journal.get(id) {
                let error = OpError::TimedOut {
                    path: job.path.display().to_string(),
                    limit: limit_text,
                };
                self.fail(&job, &error);
            }
        }
    }

    /// Starts queued jobs while workers are free.
    fn dispatch(&mut self) {
        let free = self
            .config
            .daemon
            .workers
            .saturating_sub(self.in_flight.len());
        if free == 0 {
            return;
        }
        let jobs = match self.journal.runnable(clock::now(), free + 64) {
            Ok(jobs) => jobs,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the journal");
                return;
            }
        };
        let mut started = 0;
        for job in jobs {
            if started == free {
                break;
            }
            let Some(rule) = self.config.rule(&job.rule).cloned() else {
                if self.orphans_warned.insert(job.id) {
                    tracing::warn!(job = job.id, rule = %job.rule, "job waits: its rule is no longer in the config");
                }
                continue;
            };
            let result = match job.kind {
                Kind::Split => self.start_split(&job, &rule),
                Kind::Merge => self.start_merge(&job, &rule),
            };
            match result {
                Ok(true) => started += 1,
                Ok(false) => {}
                Err(e) => {
                    tracing::error!(job = job.id, error = format!("{e:#}"), "cannot start job")
                }
            }
        }
    }

    fn start_split(&mut self, job: &Job, rule: &Rule) -> anyhow::Result<bool> {
        let options = match &rule.recipe {
            Recipe::SplitToProxy(options) => options,
            Recipe::Upscale(recipe) => return self.start_upscale(job, rule, recipe),
            Recipe::Normalise(recipe) => return self.start_normalise(job, rule, recipe),
        };
        self.journal.start_attempt(job.id, State::Running)?;
        self.record(job, State::Running, None);
        self.in_flight.insert(job.id, Instant::now());
        self.send_work(Work::Split {
            job_id: job.id,
            original: job.path.clone(),
            options: Box::new(options.clone()),
            limits: self.config.daemon.limits,
        })
        .context("the workers are gone")?;
        Ok(true)
    }

    /// Where a handled input goes in `dir`: where it is if it is already there, else its
    /// claimed name (tagged with the job id when another file has that name).
    fn destination(dir: &Path, job: &Job) -> PathBuf {
        if job.path.starts_with(dir) {
            return job.path.clone();
        }
        let name = job
            .claimed_path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        names::free_name(dir, &name, &pairing::job_token(job.id))
    }

    /// Where `rule`'s policy moves the original of `job` once its outputs are durable.
    fn original_destination(&self, rule: &Rule, job: &Job) -> Option<PathBuf> {
        (rule.originals == OriginalsPolicy::Move)
            .then(|| Self::destination(&self.trees.originals(&rule.name), job))
    }

    /// The scale of `spec`'s model: from the config, from an earlier probe, or `Probing`
    /// while the lane loads it (a probe is started if none runs).
    fn model_scale(&mut self, spec: &config::ModelSpec) -> ScaleKnown {
        if let Some(scale) = spec.scale {
            return ScaleKnown::Known(scale);
        }
        if let Some(known) = self.model_scales.get(&spec.path) {
            return known.clone();
        }
        self.model_scales
            .insert(spec.path.clone(), ScaleKnown::Probing);
        let events = self.events.clone();
        let model = spec.path.clone();
        self.lane.probe(
            spec,
            &self.config.runtime,
            Box::new(move |scale| {
                let _ = events.send(Event::ModelScale {
                    model,
                    scale: scale.map_err(|e| e.to_string()),
                });
            }),
        );
        ScaleKnown::Probing
    }

    fn learn_scale(&mut self, model: PathBuf, scale: Result<u32, String>) {
        let known = match scale {
            Ok(scale) => ScaleKnown::Known(scale),
            Err(error) => {
                tracing::error!(model = %model.display(), %error, "the model cannot be loaded; its jobs will fail with this reason");
                ScaleKnown::Unavailable
            }
        };
        self.model_scales.insert(model, known);
    }

    /// The name part an upscale's output carries: `x4_` (the scale, to the power of the
    /// passes), `3840x2160_` for a target size, `enhanced_` for an enhance; `None` while the
    /// model's scale is being measured.
    fn output_tag(&mut self, recipe: &Upscale) -> Option<String> {
        if recipe.enhance.is_some() {
            return Some("enhanced_".into());
        }
        if recipe.target.is_some() {
            return Some(crate::ops::upscale::output_tag(1, 1, recipe.target));
        }
        match self.model_scale(&recipe.model) {
            ScaleKnown::Probing => None,
            ScaleKnown::Known(scale) => {
                Some(crate::ops::upscale::output_tag(scale, recipe.passes, None))
            }
            ScaleKnown::Unavailable => Some(String::new()),
        }
    }

    /// Starts an upscale job: its output name is fixed (and recorded) before it runs. Until
    /// the model's scale is known (the first job of a model, on its first load), it waits.
    fn start_upscale(&mut self, job: &Job, rule: &Rule, recipe: &Upscale) -> anyhow::Result<bool> {
        let output = match &job.output_path {
            Some(path) => path.clone(),
            None => {
                let Some(tag) = self.output_tag(recipe) else {
                    return Ok(false);
                };
                let images = self.trees.images(&rule.name);
                let stem = names::stem_of(&job.claimed_path);
                let ext = &recipe.output_format;
                let model = &recipe.model.name;
                let mut path = images.join(format!("{stem}_{tag}{model}.{ext}"));
                if self.journal.output_taken(&path, -1)? {
                    path = images.join(format!(
                        "{stem}_{}_{tag}{model}.{ext}",
                        pairing::job_token(job.id),
                    ));
                }
                self.journal.set_output(job.id, &path)?;
                path
            }
        };
        let move_original_to = self.original_destination(rule, job);
        let mut original_candidates = vec![job.path.clone()];
        original_candidates.extend(move_original_to.clone());
        let provenance = json!({
            "darkroom_version": VERSION,
            "rule": rule.name,
            "recipe": rule.recipe.name(),
            "source": {
                "path": job.claimed_path,
                "sha256": job.sha256,
                "bytes": job.size,
                "claimed_at": clock::rfc3339(job.created_at),
            },
            "jobs": { "upscale": job.id },
        });
        let work = UpscaleWork {
            recipe: recipe.clone(),
            runtime: self.config.runtime.clone(),
            limits: self.config.daemon.limits,
            original_candidates,
            original_version: ClaimedVersion::of(job),
            metadata_path: self
                .trees
                .metadata(&rule.name)
                .join(format!("{}.json", names::stem_of(&output))),
            output,
            move_original_to,
            provenance,
        };
        self.journal.start_attempt(job.id, State::Running)?;
        self.record(job, State::Running, None);
        self.in_flight.insert(job.id, Instant::now());
        self.send_work(Work::Upscale {
            job_id: job.id,
            work: Box::new(work),
        })
        .context("the workers are gone")?;
        Ok(true)
    }

    /// Starts a normalise job; its name in the set is chosen when it is admitted.
    fn start_normalise(
        &mut self,
        job: &Job,
        rule: &Rule,
        recipe: &config::Normalise,
    ) -> anyhow::Result<bool> {
        let move_original_to = self.original_destination(rule, job);
        let mut original_candidates = vec![job.path.clone()];
        original_candidates.extend(move_original_to.clone());
        let work = NormaliseWork {
            job_id: job.id,
            recipe: recipe.clone(),
            runtime: self.config.runtime.clone(),
            limits: self.config.daemon.limits,
            original_candidates,
            original_version: ClaimedVersion::of(job),
            images_dir: self.trees.images(&rule.name),
            metadata_dir: self.trees.metadata(&rule.name),
            move_original_to,
        };
        self.journal.start_attempt(job.id, State::Running)?;
        self.record(job, State::Running, None);
        self.in_flight.insert(job.id, Instant::now());
        self.send_work(Work::Normalise {
            job_id: job.id,
            work: Box::new(work),
        })
        .context("the workers are gone")?;
        Ok(true)
    }

    /// Pairs a returned image with its proxy (if not yet paired) and starts its merge.
    fn start_merge(&mut self, job: &Job, rule: &Rule) -> anyhow::Result<bool> {
        let Recipe::SplitToProxy(options) = &rule.recipe else {
            anyhow::bail!("rule {} takes no returns", rule.name);
        };
        let (parent_id, variant, output) = match (job.parent, job.variant, &job.output_path) {
            (Some(p), Some(v), Some(o)) => (p, v, o.clone()),
            _ => match self.pair(job, options)? {
                Some(paired) => paired,
                None => return Ok(false),
            },
        };
        let Some(parent) = self.journal.get(parent_id)? else {
            anyhow::bail!("split job {parent_id} is missing from the journal");
        };
        let job = self.journal.get(job.id)?.unwrap_or_else(|| job.clone());
        let output_stem = names::stem_of(&output);
        let move_original_to = self.original_destination(rule, &parent);
        let mut original_candidates = vec![parent.path.clone()];
        original_candidates.extend(move_original_to.clone());
        let move_returned_to = Self::destination(&self.trees.returns(&rule.name), &job);
        let returned_candidates = vec![job.path.clone(), move_returned_to.clone()];
        let proxy_details: serde_json::Value = parent
            .details
            .as_deref()
            .and_then(|d| serde_json::from_str(d).ok())
            .unwrap_or(serde_json::Value::Null);
        let provenance = json!({
            "darkroom_version": VERSION,
            "rule": rule.name,
            "recipe": rule.recipe.name(),
            "options": {
                "size": options.size.to_string(),
                "refine": options.refine,
                "delta_depth": match options.delta_depth { crate::core::delta::DeltaDepth::Eight => 8, crate::core::delta::DeltaDepth::Sixteen => 16 },
                "upscale_method": match &options.upscale_method { crate::io::external::UpscaleMethod::Basic => "basic".to_string(), crate::io::external::UpscaleMethod::Command(c) => format!("cmd({})", c.words.join(" ")) },
                "originals": match rule.originals { OriginalsPolicy::Move => "move", OriginalsPolicy::Keep => "keep" },
            },
            "source": {
                "path": parent.claimed_path,
                "sha256": parent.sha256,
                "bytes": parent.size,
                "claimed_at": clock::rfc3339(parent.created_at),
            },
            "proxy": proxy_details,
            "return": {
                "path": job.claimed_path,
                "sha256": job.sha256,
                "pairing": job.pairing,
                "variant": variant,
                "claimed_at": clock::rfc3339(job.created_at),
                "wait_seconds": job.created_at - parent.updated_at.min(job.created_at),
            },
            "jobs": { "split": parent.id, "merge": job.id },
        });
        let work = MergeWork {
            options: options.clone(),
            limits: self.config.daemon.limits,
            original_candidates,
            original_version: ClaimedVersion::of(&parent),
            returned_candidates,
            returned_version: ClaimedVersion::of(&job),
            output,
            metadata_path: self
                .trees
                .metadata(&rule.name)
                .join(format!("{output_stem}.json")),
            work_dir: self
                .config
                .daemon
                .state_dir
                .join("work")
                .join(format!("merge-{}", job.id)),
            move_original_to,
            move_returned_to,
            provenance,
        };
        self.journal.start_attempt(job.id, State::Merging)?;
        self.record(&job, State::Merging, None);
        self.in_flight.insert(job.id, Instant::now());
        self.send_work(Work::Merge {
            job_id: job.id,
            work: Box::new(work),
        })
        .context("the workers are gone")?;
        Ok(true)
    }

    /// Pairs a returned image; records the pairing, variant and output path. `None` when it
    /// was held or failed instead.
    fn pair(
        &mut self,
        job: &Job,
        options: &SplitToProxy,
    ) -> anyhow::Result<Option<(i64, u32, PathBuf)>> {
        let pending: Vec<PendingProxy> = self
            .journal
            .pending_proxies(&job.rule)?
            .into_iter()
            .map(|p| PendingProxy {
                job_id: p.id,
                stem: p
                    .proxy_path
                    .as_deref()
                    .map(names::stem_of)
                    .unwrap_or_default(),
                width: p.proxy_width.unwrap_or(0),
                height: p.proxy_height.unwrap_or(0),
                signature: p.signature.as_deref().and_then(Signature::from_bytes),
            })
            .collect();
        let stem = names::stem_of(&job.path);
        let known = |id: i64| pending.iter().any(|p| p.job_id == id);
        let mut pairing = pairing::by_name(&stem, &pending).map(Pairing::Name);
        if pairing.is_none() {
            pairing = pairing::job_id_in_name(&stem)
                .filter(|id| known(*id))
                .map(Pairing::JobId);
        }
        if pairing.is_none() {
            let bytes =
                match decode::read_bounded(&job.path, self.config.daemon.limits.max_file_bytes) {
                    Ok(bytes) => bytes,
                    Err(e) => {
                        self.fail(job, &OpError::decode(&job.path, e));
                        return Ok(None);
                    }
                };
            pairing = round_trip::job_id_in_png(&bytes)
                .filter(|id| known(*id))
                .map(Pairing::JobId);
            if pairing.is_none() {
                let loaded = match decode::decode_bytes(&bytes, &self.config.daemon.limits) {
                    Ok(loaded) => loaded,
                    Err(e) => {
                        self.fail(job, &OpError::decode(&job.path, e));
                        return Ok(None);
                    }
                };
                let size = (loaded.image.width(), loaded.image.height());
                pairing = Some(pairing::by_content(
                    &Signature::of(&loaded.image),
                    size,
                    &pending,
                    options.match_threshold,
                    options.match_margin,
                ));
            }
        }
        let pairing = pairing.unwrap_or(Pairing::NoMatch(None));
        let Some(parent_id) = pairing.job_id() else {
            match &pairing {
                Pairing::Ambiguous(candidates) => {
                    let mut list = candidates
                        .iter()
                        .take(HELD_CANDIDATES_NAMED)
                        .map(|(id, c)| format!("job {id} ({c:.3})"))
                        .collect::<Vec<_>>()
                        .join(", ");
                    if candidates.len() > HELD_CANDIDATES_NAMED {
                        list.push_str(&format!(
                            " and {} more; {} in all",
                            candidates.len() - HELD_CANDIDATES_NAMED,
                            candidates.len()
                        ));
                    }
                    let message = format!(
                        "held: its content matches several pending proxies about equally ({list}); \
                         rename it after one of the proxies (e.g. keep the proxy's name as a prefix) to pair it"
                    );
                    tracing::warn!(job = job.id, file = %job.path.display(), "{message}");
                    self.journal
                        .set_state(job.id, State::Held, Some(&message))?;
                    self.record(job, State::Held, Some(&message));
                }
                Pairing::NoMatch(best) => {
                    let why = match best {
                        Some((id, c)) => format!(
                            "no pending proxy matches it: its name carries no proxy name or job id, \
                             and the closest content match (job {id}, correlation {c:.3}) is below {:.2}",
                            options.match_threshold
                        ),
                        None => "no pending proxy matches it: its name carries no proxy name or job id, \
                                 and no pending proxy has its size"
                            .to_string(),
                    };
                    self.fail(job, &OpError::Usage(why));
                }
                _ => {}
            }
            return Ok(None);
        };
        let parent = self
            .journal
            .get(parent_id)?
            .context("paired split job vanished")?;
        let variant = self
            .journal
            .variants_of(parent_id)?
            .iter()
            .filter_map(|j| j.variant)
            .max()
            .unwrap_or(0)
            + 1;
        let base = names::stem_of(&parent.claimed_path);
        let images = self.trees.images(&job.rule);
        let name = if variant == 1 {
            format!("{base}.png")
        } else {
            format!("{base}_v{variant}.png")
        };
        let mut output = images.join(&name);
        if self.journal.output_taken(&output, parent_id)? || (variant == 1 && output.exists()) {
            output = images.join(format!(
                "{}_{}.png",
                names::stem_of(&output),
                pairing::job_token(parent_id)
            ));
        }
        self.journal
            .pair(job.id, parent_id, variant, pairing.method(), &output)?;
        tracing::info!(
            job = job.id,
            split_job = parent_id,
            file = %job.path.display(),
            pairing = pairing.method(),
            variant,
            "paired returned image with its proxy"
        );
        Ok(Some((parent_id, variant, output)))
    }

    /// Records a finished worker result.
    fn finish(&mut self, job_id: i64, outcome: Outcome) {
        self.cancels.remove(&job_id);
        if self.abandoned.remove(&job_id) {
            tracing::warn!(
                job = job_id,
                "a job set aside after job_timeout came back; its result is dropped"
            );
            drop(outcome);
            return;
        }
        let started = self.in_flight.remove(&job_id);
        let Ok(Some(job)) = self.journal.get(job_id) else {
            tracing::error!(job = job_id, "finished job missing from the journal");
            return;
        };
        let seconds = started.map(|s| s.elapsed().as_secs_f64()).unwrap_or(0.0);
        let result = match outcome {
            Outcome::Split(Ok(written)) => self.split_done(&job, *written),
            Outcome::Merge(Ok(merged)) => self.merge_done(&job, merged, seconds),
            Outcome::Upscale(Ok(upscaled)) => self.upscale_done(&job, upscaled, seconds),
            Outcome::Normalise(Ok(normalised)) => self.normalise_done(&job, *normalised, seconds),
            Outcome::Split(Err(e))
            | Outcome::Merge(Err(e))
            | Outcome::Upscale(Err(e))
            | Outcome::Normalise(Err(e)) => {
                self.fail(&job, &e);
                Ok(())
            }
        };
        if let Err(e) = result {
            tracing::error!(
                job = job_id,
                error = format!("{e:#}"),
                "cannot record a finished job"
            );
        }
    }

    fn split_done(&mut self, job: &Job, written: ProxyWritten) -> anyhow::Result<()> {
        let Some(Recipe::SplitToProxy(options)) = self.config.rule(&job.rule).map(|r| &r.recipe)
        else {
            anyhow::bail!("rule {} is gone", job.rule);
        };
        let expires_at = clock::now() + options.return_timeout.as_secs_f64();
        let details = json!({
            "path": written.proxy_path,
            "geometry": written.metadata.geometry,
            "target": written.metadata.target.to_string(),
            "filter": written.metadata.filter,
            "seconds": written.seconds,
        });
        self.journal.proxy_written(
            job.id,
            &written.proxy_path,
            (written.width, written.height),
            &written.signature.to_bytes(),
            expires_at,
            &details.to_string(),
        )?;
        self.record(job, State::AwaitingReturn, None);
        tracing::info!(
            job = job.id,
            file = %job.path.display(),
            proxy = %written.proxy_path.display(),
            size = %format!("{}x{}", written.width, written.height),
            seconds = format!("{:.3}", written.seconds),
            "proxy written; waiting for the processed image"
        );
        self.last_job = format!("{} proxied", names::stem_of(&job.path));
        Ok(())
    }

    fn upscale_done(&mut self, job: &Job, upscaled: Upscaled, seconds: f64) -> anyhow::Result<()> {
        self.journal.job_done(
            job.id,
            &upscaled.original_now_at,
            &upscaled.provenance.to_string(),
        )?;
        self.record(
            job,
            State::Done,
            Some(&upscaled.output.display().to_string()),
        );
        // The enhance recipe runs through the same job; its log says what it did.
        let done = if upscaled.provenance.get("enhance").is_some() {
            "enhanced"
        } else {
            "upscaled"
        };
        tracing::info!(
            job = job.id,
            file = %job.claimed_path.display(),
            output = %upscaled.output.display(),
            model = %upscaled.provenance["model"]["name"].as_str().unwrap_or("?"),
            seconds = format!("{seconds:.3}"),
            "{done}"
        );
        self.last_job = format!("{} {done}", names::stem_of(&job.claimed_path));
        Ok(())
    }

    fn normalise_done(&mut self, job: &Job, done: Normalised, seconds: f64) -> anyhow::Result<()> {
        let record = serde_json::to_value(&done.record)?;
        self.journal
            .job_done(job.id, &done.original_now_at, &record.to_string())?;
        self.record(job, State::Done, Some(&done.output.display().to_string()));
        tracing::info!(
            job = job.id,
            file = %job.claimed_path.display(),
            output = %done.output.display(),
            bucket = done.record.bucket.as_deref().unwrap_or("-"),
            sharpness = done.record.scores.as_ref().map_or(0.0, |s| s.sharpness),
            seconds = format!("{seconds:.3}"),
            "normalised into the set"
        );
        self.last_job = format!("{} normalised", names::stem_of(&job.claimed_path));
        Ok(())
    }

    fn merge_done(&mut self, job: &Job, merged: Merged, seconds: f64) -> anyhow::Result<()> {
        let parent = job.parent.context("merge job without its split job")?;
        self.journal.merge_done(
            job.id,
            parent,
            &merged.returned_now_at,
            &merged.original_now_at,
            &merged.provenance.to_string(),
        )?;
        self.record(job, State::Done, Some(&merged.output.display().to_string()));
        if let Ok(Some(split)) = self.journal.get(parent) {
            self.note_left_folder(&split.claimed_path);
        }
        tracing::info!(
            job = job.id,
            split_job = parent,
            output = %merged.output.display(),
            original = %merged.original_now_at.display(),
            pairing = job.pairing.as_deref().unwrap_or("?"),
            seconds = format!("{seconds:.3}"),
            "merged into the full-resolution original"
        );
        self.last_job = format!("{} merged", names::stem_of(&merged.output));
        Ok(())
    }

    /// A job failed. Transient failures retry with backoff until attempts run out;
    /// permanent ones (and spent retries) quarantine the input with an error sidecar.
    /// `job` is the journal's current row (its attempts include one just started).
    fn fail(&mut self, job: &Job, error: &OpError) {
        let attempts = job.attempts;
        let reason = error.to_string();
        let in_place = job.path == job.claimed_path;
        if in_place {
            match ClaimedVersion::of(job).compare(&job.path) {
                SourceNow::Changed => {
                    // A writer is still at it: never move a file that is changing.
                    self.supersede_changed(job, &reason);
                    return;
                }
                SourceNow::AsClaimed if error.may_be_incomplete() => {
                    self.wait_for_incomplete(job, &reason);
                    return;
                }
                SourceNow::AsClaimed | SourceNow::Gone => {}
            }
        }
        let permanent = error.is_permanent();
        if !permanent && attempts < self.config.daemon.max_attempts {
            let backoff = self.config.daemon.retry_backoff.as_secs_f64()
                * 2f64.powi(attempts.saturating_sub(1).min(16) as i32);
            let at = clock::now() + backoff;
            tracing::warn!(
                job = job.id,
                file = %job.path.display(),
                attempts,
                retry_in_seconds = format!("{backoff:.1}"),
                error = %reason,
                "job failed; it will be retried"
            );
            if let Err(e) = self.journal.retry_at(job.id, at, &reason) {
                tracing::error!(error = %e, "cannot record the retry");
            }
            self.record(job, State::Queued, Some(&reason));
            return;
        }
        let (kind, details) = match error {
            OpError::Rejected { details, .. } => ("rejected", Some(details.as_ref())),
            _ if permanent => ("permanent", None),
            _ => ("gave-up", None),
        };
        let sidecar = ErrorSidecar {
            file: &job.claimed_path.to_string_lossy(),
            rule: &job.rule,
            job: job.id,
            reason: &reason,
            kind,
            attempts,
            when: clock::rfc3339(clock::now()),
            darkroom_version: VERSION,
            details,
        };
        let moved_to = match trees::quarantine(&self.trees, &job.path, &sidecar) {
            Ok(path) => path,
            Err(e) => {
                tracing::error!(job = job.id, error = %e, "cannot move the failed file aside");
                job.path.clone()
            }
        };
        tracing::error!(
            job = job.id,
            file = %job.claimed_path.display(),
            moved_to = %moved_to.display(),
            error = %reason,
            "job failed ({kind}); the file was moved aside with an error sidecar"
        );
        if kind != "rejected" {
            self.log_set_aside_in_set(job, &reason);
        }
        let _ = self.journal.set_path(job.id, &moved_to);
        if let Err(e) = self.journal.set_state(job.id, State::Failed, Some(&reason)) {
            tracing::error!(error = %e, "cannot record the failure");
        }
        self.record(job, State::Failed, Some(&reason));
        self.last_job = format!("{} failed", names::stem_of(&job.claimed_path));
    }

    /// A normalise rule's set lists every input it was given: one set aside for a reason of
    /// its own (not a quality verdict, which the set logged already) is entered too.
    fn log_set_aside_in_set(&self, job: &Job, reason: &str) {
        let Some(rule) = self.config.rule(&job.rule) else {
            return;
        };
        if !matches!(rule.recipe, Recipe::Normalise(_)) || job.kind != Kind::Split {
            return;
        }
        if let Err(e) = normalise_job::log_set_aside(
            job.id,
            &job.claimed_path,
            reason,
            &self.trees.images(&rule.name),
            &self.trees.metadata(&rule.name),
        ) {
            tracing::warn!(job = job.id, error = %e, "cannot enter the set-aside input in the set's log");
        }
    }

    /// A file that reads as empty or truncated stays in place for `incomplete_grace`: a
    /// writer that appends in rounds closes it after each one. If it changes, its new version
    /// is claimed as a new job (this one is then superseded); if not, it is set aside then.
    fn wait_for_incomplete(&mut self, job: &Job, reason: &str) {
        let grace = self.config.daemon.incomplete_grace;
        let grace_text = config::format_duration(grace);
        tracing::warn!(
            job = job.id,
            file = %job.path.display(),
            error = %reason,
            incomplete_grace = %grace_text,
            "the file reads as incomplete; it stays in place in case a writer is still adding to it, and is set aside if it is unchanged after incomplete_grace"
        );
        let until = clock::now() + grace.as_secs_f64();
        if let Err(e) = self.journal.set_incomplete(job.id, until, reason) {
            tracing::error!(error = %e, "cannot record the wait");
        }
        self.record(job, State::Incomplete, Some(reason));
    }

    /// The file of `job` is another version now than the one it claimed: the job ends, and
    /// the intake claims the new version as a new job.
    fn supersede_changed(&mut self, job: &Job, reason: &str) {
        let why = format!("the file changed after it was claimed ({reason}); its new version is claimed as a new job");
        tracing::info!(job = job.id, file = %job.path.display(), "superseded: {why}");
        if let Err(e) = self
            .journal
            .set_state(job.id, State::Superseded, Some(&why))
        {
            tracing::error!(error = %e, "cannot record the change");
        }
        self.record(job, State::Superseded, Some(&why));
        self.intake.recheck(&job.path);
    }

    /// Incomplete files whose grace is over: set aside if unchanged, superseded if changed,
    /// withdrawn if gone.
    fn check_incomplete(&mut self, now: f64) {
        let Ok(due) = self.journal.incomplete_due(now) else {
            return;
        };
        for job in due {
            let reason = job.error.clone().unwrap_or_default();
            match ClaimedVersion::of(&job).compare(&job.path) {
                SourceNow::Changed => self.supersede_changed(&job, &reason),
                SourceNow::Gone => self.withdraw(
                    &job,
                    "the incomplete file left the watched folder (removed or renamed)",
                ),
                SourceNow::AsClaimed => {
                    let grace = config::format_duration(self.config.daemon.incomplete_grace);
                    let error = OpError::Usage(format!(
                        "{reason} (unchanged through incomplete_grace, {grace}, so no writer is adding to it)"
                    ));
                    let mut job = job.clone();
                    job.attempts = job.attempts.max(1);
                    self.fail(&job, &error);
                }
            }
        }
    }

    /// Held returns whose file is gone (renamed after its proxy, or removed) are withdrawn;
    /// those held past their rule's return window are set aside with the reason.
    fn check_held(&mut self, now: f64) {
        let Ok(held) = self.journal.in_state(State::Held, 10_000) else {
            return;
        };
        for job in held {
            if !job.path.exists() {
                self.withdraw(
                    &job,
                    "the held return left exchange_in (renamed after its proxy, or removed)",
                );
                continue;
            }
            let Some(Recipe::SplitToProxy(options)) =
                self.config.rule(&job.rule).map(|r| &r.recipe)
            else {
                continue;
            };
            let window = options.return_timeout + options.return_grace;
            if now - job.updated_at >= window.as_secs_f64() {
                let error = OpError::Usage(format!(
                    "held for {} (return_timeout plus return_grace) without being paired: its content matches several proxies about equally and it was not renamed after one of them",
                    config::format_duration(window)
                ));
                let mut job = job.clone();
                job.attempts = self.config.daemon.max_attempts;
                self.fail(&job, &error);
            }
        }
    }

    /// Ends a job whose file left its watched folder before it was processed.
    fn withdraw(&mut self, job: &Job, why: &str) {
        tracing::info!(job = job.id, file = %job.path.display(), "withdrawn: {why}");
        if let Err(e) = self.journal.set_state(job.id, State::Withdrawn, Some(why)) {
            tracing::error!(error = %e, "cannot record the withdrawal");
        }
        self.record(job, State::Withdrawn, Some(why));
    }

    fn next_deadline(&self) -> Option<Duration> {
        let now = clock::now();
        let expiry = self.journal.next_deadline().ok().flatten();
        let retry = self.journal.next_retry_at(now).ok().flatten();
        // Job time limits are checked on every pass, so they wake the loop on time.
        let job_timeout = self
            .in_flight
            .values()
            .map(|started| {
                self.config
                    .daemon
                    .job_timeout
                    .saturating_sub(started.elapsed())
                    + Duration::from_millis(10)
            })
            .min();
        let earliest = [expiry, retry].into_iter().flatten().reduce(f64::min);
        // Other deadlines are acted on by the housekeeping pass, at most once a second.
        let housekeeping = earliest.map(|earliest| {
            let wait = Duration::from_secs_f64(((earliest - now).max(0.0) + 0.01).min(3600.0));
            let housekeeping_in =
                Duration::from_secs(1).saturating_sub(self.last_housekeeping.elapsed());
            wait.max(housekeeping_in)
        });
        // Emptied subfolders wait for housekeeping too.
        let folders = (!self.emptied_folders.is_empty()).then_some(Duration::from_secs(1));
        [housekeeping, job_timeout, folders]
            .into_iter()
            .flatten()
            .min()
    }

    /// Marks proxies with no return in time as expired; closes windows past their grace;
    /// settles incomplete files and held returns.
    fn check_deadlines(&mut self) {
        let now = clock::now();
        self.check_incomplete(now);
        self.check_held(now);
        self.remove_emptied_folders();
        if let Ok(overdue) = self.journal.overdue(now) {
            for job in overdue {
                tracing::warn!(
                    job = job.id,
                    file = %job.path.display(),
                    proxy = %job.proxy_path.as_deref().map_or_else(String::new, |p| p.display().to_string()),
                    "expired: no processed image came back within return_timeout; a late one is still merged during return_grace"
                );
                let _ = self.journal.set_state(
                    job.id,
                    State::Expired,
                    Some("no return within return_timeout"),
                );
                self.record(&job, State::Expired, None);
            }
        }
        let rules: Vec<Rule> = self.config.rules.clone();
        for rule in rules {
            let Recipe::SplitToProxy(options) = &rule.recipe else {
                continue;
            };
            let grace = options.return_grace.as_secs_f64();
            let Ok(jobs) = self.journal.window_over(now, grace, &rule.name) else {
                continue;
            };
            for job in jobs {
                if let Some(proxy) = &job.proxy_path {
                    let _ = std::fs::remove_file(proxy);
                }
                let _ = self.journal.close(job.id);
                if job.state == State::Expired && rule.originals == OriginalsPolicy::Move {
                    let error = OpError::Usage(format!(
                        "no processed image came back within return_timeout ({}s) plus return_grace ({}s)",
                        options.return_timeout.as_secs(),
                        options.return_grace.as_secs()
                    ));
                    let mut job = job.clone();
                    job.attempts = self.config.daemon.max_attempts;
                    self.fail(&job, &error);
                }
            }
        }
    }

    fn update_status(&mut self, force: bool) {
        let counts = self.journal.counts().unwrap_or_default();
        let count = |state: State| -> u64 {
            counts
                .iter()
                .filter(|(_, s, _)| *s == state)
                .map(|(_, _, n)| n)
                .sum()
        };
        let status = format!(
            "{} queued, {} running, {} awaiting return, {} held, {} failed, {} done; last: {}",
            count(State::Queued),
            self.in_flight.len(),
            count(State::AwaitingReturn),
            count(State::Held),
            count(State::Failed),
            count(State::Done),
            self.last_job
        );
        if force || status != self.last_status {
            systemd::status(&status);
            self.last_status = status;
        }
    }
}
