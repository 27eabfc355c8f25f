//! `darkroom serve`: the main loop. One thread owns the journal, the watcher and every
//! decision; worker threads only run the pixel work handed to them and report back.
//!
//! The order of every step is what makes a crash harmless: an output is durable before the
//! journal says so, and an input moves only after its outputs are durable. A job the
//! journal still shows as running when the daemon starts is run again, and writes the same
//! output path again, atomically.

use crate::daemon::config::{self, Config, Rule};
use crate::daemon::http;
use crate::daemon::intake::{Claim, Intake, Role, WatchRoot};
use crate::daemon::journal::{FileIdentity, Job, Kind, State, Store};
use crate::daemon::metrics::Metrics;
use crate::daemon::model_lane::{ModelLane, ScaleKnown};
use crate::daemon::systemd;
use crate::daemon::trees::{self, ClaimedVersion, ErrorSidecar, ProcessingLog, SourceNow, Trees};
use crate::io::{clock, names};
use crate::ops::OpError;
use crate::recipes::{Finish, Start, Work};
use anyhow::Context;
use claims::{spawn_hasher, Hashed};
use serde_json::json;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod claims;
mod cluster;
mod outcomes;
mod starts;
mod steering;

use crate::recipes::VERSION;

/// What wakes the main loop.
enum Event {
    Fs(notify::Result<notify::Event>),
    Signal(i32),
    Finished {
        job_id: i64,
        outcome: Outcome,
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
    /// A request of the HTTP API that changes a job.
    Http(crate::daemon::http::Command),
    /// Another host queued work on the shared journal.
    Wake,
}

/// The journal's kind for a file found in a folder of `role`: an inbox gives originals, the
/// exchange returns.
fn kind_of(role: Role) -> Kind {
    match role {
        Role::Inbox => Kind::Input,
        Role::Return => Kind::Return,
    }
}

/// What a worker brings back: the recipe's result to finish, or why the job failed.
type Outcome = Result<Box<dyn Finish>, OpError>;

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
    /// The journal, through the operations the daemon needs of any backend.
    journal: Box<dyn Store>,
    log: ProcessingLog,
    intake: Intake,
    events: Sender<Event>,
    work: Sender<Dispatched>,
    work_queue: WorkQueue,
    lane: ModelLane,
    workers_spawned: usize,
    in_flight: HashMap<i64, Instant>,
    /// Jobs with their tool (on threads of their own), by id, with their rule.
    tool_in_flight: HashMap<i64, String>,
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
    metrics: Arc<Metrics>,
    /// The config as the HTTP listener and the webhooks see it (replaced on reload).
    shared_config: Arc<std::sync::RwLock<Arc<Config>>>,
    /// What the HTTP listener knows; `None` when `[http] listen = ""`.
    http: Option<Arc<http::Context>>,
    /// Kept for its lifetime: dropping it stops the listener.
    _listener: Option<http::Listener>,
    /// Dropping it stops the webhook deliverer.
    _notify_stop: Sender<()>,
    /// This host is the one that scans the folders, watches the deadlines and sends the
    /// webhooks (always, on a journal only this host uses).
    leading: Arc<AtomicBool>,
    /// Dropping it stops the heartbeat (hosts that share the journal).
    _heartbeat_stop: Option<Sender<()>>,
}

/// Creates every folder the config names.
fn create_folders(config: &Config, trees: &Trees) -> anyhow::Result<()> {
    let mut dirs = config.writable_dirs();
    for rule in &config.rules {
        dirs.extend(trees.rule_dirs(&rule.name));
    }
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
            sidecars: rule.recipe.sidecar_patterns(),
        });
        if let Some(returns) = rule.recipe.return_folder() {
            roots.push(WatchRoot {
                rule: rule.name.clone(),
                role: Role::Return,
                dir: returns.path.to_path_buf(),
                patterns: image_patterns.clone(),
                sidecars: Vec::new(),
            });
        }
    }
    roots
}

fn start_intake(config: &Config, events: &Sender<Event>) -> anyhow::Result<Intake> {
    let sender = events.clone();
    Intake::start(
        watch_roots(config),
        config.daemon.stability_window,
        config.daemon.watch_mode,
        config.daemon.poll_interval,
        move |event| {
            let _ = sender.send(Event::Fs(event));
        },
    )
    .context("cannot watch the configured folders")
}

/// A job handed to a worker, with the flag that cancels its late outputs.
struct Dispatched {
    job_id: i64,
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
            let outcome = run_work(dispatched.work, &lane);
            crate::io::atomic::set_job_cancel_flag(None);
            if events
                .send(Event::Finished {
                    job_id: dispatched.job_id,
                    outcome,
                })
                .is_err()
            {
                return;
            }
        })
        .expect("spawning a worker thread");
}

/// Runs a job's work; a panic becomes the job's failure, never the worker's end.
fn run_work(work: Work, lane: &ModelLane) -> Outcome {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(lane))).unwrap_or_else(|p| {
        let text = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown panic".into());
        Err(OpError::Internal(format!("the job panicked: {text}")))
    })
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
    let opening = config.daemon.journal_opening();
    let journal_name = opening.location.describe(&config.daemon.state_dir);
    let journal: Box<dyn Store> = Box::new(
        opening
            .open("daemon")
            .with_context(|| format!("cannot open the journal {journal_name}"))?,
    );
    journal
        .register_host(&config.daemon.roles.to_string())
        .with_context(|| format!("cannot join the journal {journal_name}"))?;
    let shared = config.daemon.shares_journal();
    let heartbeat_stop = if shared {
        crate::io::atomic::set_temp_host(&config.daemon.host);
        Some(cluster::spawn_heartbeat(&opening)?)
    } else {
        None
    };
    let leading = Arc::new(AtomicBool::new(
        config.daemon.roles.intake && journal.lead(cluster::SCANNER)?,
    ));
    let log = ProcessingLog::open(&trees.processing_log())
        .with_context(|| format!("cannot open {}", trees.processing_log().display()))?;
    let (events, inbox) = mpsc::channel::<Event>();
    if shared {
        cluster::spawn_listener(&opening, &events)?;
    }
    spawn_signal_thread(&events)?;
    let lane = ModelLane::start(&config.runtime.devices);
    let (work, work_queue) = spawn_workers(config.daemon.workers, &events, &lane);
    let workers_spawned = config.daemon.workers;
    let intake = if leading.load(Ordering::SeqCst) {
        start_intake(&config, &events)?
    } else {
        Intake::idle()
    };
    let hasher = spawn_hasher(&events);
    let metrics = Arc::new(Metrics::new());
    let shared_config = Arc::new(std::sync::RwLock::new(Arc::clone(&config)));
    let (http, listener) = match config.http.listen {
        None => (None, None),
        Some(address) => {
            let sender = Mutex::new(events.clone());
            let context = Arc::new(http::Context {
                config: Arc::clone(&shared_config),
                metrics: Arc::clone(&metrics),
                lane: lane.clone(),
                trees: trees.clone(),
                watching: AtomicBool::new(true),
                commands: Box::new(move |command| {
                    sender
                        .lock()
                        .is_ok_and(|s| s.send(Event::Http(command)).is_ok())
                }),
            });
            let listener = http::start(address, config.http.token.clone(), Arc::clone(&context))?;
            tracing::info!(
                address = %listener.address,
                "the dashboard and API answer at http://{}/",
                listener.address
            );
            (Some(context), Some(listener))
        }
    };
    let (notify_stop, notify_stopped) = mpsc::channel();
    crate::daemon::notify::start(
        Arc::clone(&shared_config),
        Arc::clone(&metrics),
        Arc::clone(&leading),
        notify_stopped,
    )
    .context("cannot start the webhook deliverer")?;
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
        tool_in_flight: HashMap::new(),
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
        metrics,
        shared_config,
        http,
        _listener: listener,
        _notify_stop: notify_stop,
        leading,
        _heartbeat_stop: heartbeat_stop,
    };
    daemon.recover()?;
    daemon.claim_ready();
    daemon.dispatch();
    tracing::info!(
        config = %daemon.config.path.display(),
        rules = daemon.config.rules.len(),
        root = %daemon.config.daemon.root.display(),
        journal = %journal_name,
        host = %daemon.config.daemon.host,
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
            dirs.extend(
                rule.recipe
                    .output_folders()
                    .iter()
                    .map(|f| f.path.to_path_buf()),
            );
        }
        // On folders other hosts share, only this host's own leftovers are removed.
        let own = self
            .config
            .daemon
            .shares_journal()
            .then(|| crate::io::atomic::temp_tag_of(&self.config.daemon.host));
        for dir in dirs {
            removed += trees::remove_stale_temp_files(&dir, own.as_deref());
        }
        // darkroom keeps nothing in `state/work`; what is there is scratch an interrupted
        // older version left.
        let _ = std::fs::remove_dir_all(self.config.daemon.state_dir.join("work"));
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
            if self.config.daemon.shares_journal() {
                // The leases, the scanner's role and other hosts' lapsed work are looked
                // at once a second.
                timeout = timeout.min(Duration::from_secs(1));
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
                    Event::Finished { job_id, outcome } => self.finish(job_id, outcome),
                    Event::Hashed { claim, sha256 } => self.hashed(claim, sha256),
                    Event::ModelScale { model, scale } => self.learn_scale(model, scale),
                    Event::Http(command) => self.steer(command),
                    Event::Wake => {}
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
                self.share_work();
                if self.leading.load(Ordering::SeqCst) {
                    self.check_deadlines();
                }
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
        if let Some(http) = &self.http {
            http.watching.store(false, Ordering::SeqCst);
        }
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
                Ok(Event::Finished { job_id, outcome }) => self.finish(job_id, outcome),
                Ok(_) => {}
                Err(_) => break,
            }
        }
        if let Err(e) = self.journal.host_stopped() {
            tracing::warn!(error = %e, "cannot record this host's stop in the journal");
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
                for warning in &config.warnings {
                    tracing::warn!("{warning}");
                }
                let leading = self.leading.load(Ordering::SeqCst);
                let result = create_folders(&config, &self.trees).and_then(|()| {
                    if leading {
                        start_intake(&config, &self.events)
                    } else {
                        Ok(Intake::idle())
                    }
                });
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
                        if config.http != self.config.http {
                            tracing::warn!("[http] changes take effect at the next restart");
                        }
                        if config.runtime.devices != self.config.runtime.devices {
                            tracing::warn!(
                                "[runtime] devices changes take effect at the next restart"
                            );
                        }
                        if config.daemon.journal != self.config.daemon.journal
                            || config.daemon.host != self.config.daemon.host
                        {
                            tracing::warn!(
                                "journal and host changes take effect at the next restart"
                            );
                        }
                        self.config = Arc::new(config);
                        if let Ok(mut shared) = self.shared_config.write() {
                            *shared = Arc::clone(&self.config);
                        }
                        if let Some(http) = &self.http {
                            http.watching.store(true, Ordering::SeqCst);
                        }
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

    /// Hands a job to the workers with a fresh cancel flag.
    fn send_work(&mut self, job_id: i64, work: Work) -> Result<(), mpsc::SendError<Dispatched>> {
        let cancel = Arc::new(AtomicBool::new(false));
        self.cancels.insert(job_id, Arc::clone(&cancel));
        self.work.send(Dispatched {
            job_id,
            work,
            cancel,
        })
    }

    /// Sets aside a job running on a worker of this host: its late output is refused (the
    /// cancel flag), and a fresh worker takes the place of the one still busy with it. False
    /// when no worker here runs it.
    pub(super) fn abandon_running(&mut self, id: i64) -> bool {
        if self.in_flight.remove(&id).is_none() {
            return false;
        }
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
        true
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
            self.abandon_running(id);
            let limit_text = config::format_duration(limit);
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
}

/// What recipes get of the daemon on its main thread.
impl crate::recipes::Service for Daemon {
    fn journal(&self) -> &dyn Store {
        self.journal.as_ref()
    }

    fn trees(&self) -> &Trees {
        &self.trees
    }

    fn limits(&self) -> crate::io::decode::DecodeLimits {
        self.config.daemon.limits
    }

    fn runtime(&self) -> &config::RuntimeSettings {
        &self.config.runtime
    }

    fn max_attempts(&self) -> u32 {
        self.config.daemon.max_attempts
    }

    fn record(&mut self, job: &Job, to: State, detail: Option<&str>) {
        Daemon::record(self, job, to, detail);
    }

    fn fail(&mut self, job: &Job, error: &OpError) {
        Daemon::fail(self, job, error);
    }

    fn withdraw(&mut self, job: &Job, why: &str) {
        Daemon::withdraw(self, job, why);
    }

    fn last_done(&mut self, text: String) {
        self.last_job = text;
    }

    fn note_left_folder(&mut self, file: &Path) {
        Daemon::note_left_folder(self, file);
    }

    fn model_scale(&mut self, spec: &config::ModelSpec) -> ScaleKnown {
        Daemon::model_scale(self, spec)
    }

    fn tool_jobs(&self, rule: &str) -> usize {
        self.tool_in_flight.values().filter(|r| *r == rule).count()
    }
}
