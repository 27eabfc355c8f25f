//! Sharing the work with other hosts on one PostgreSQL journal: the heartbeat that keeps
//! this host's leases, the election of the one host that scans the folders, and the
//! takeover of jobs whose host stopped renewing its leases.

use super::*;
use crate::daemon::journal::Opening;

/// The role only one host holds at a time: scanning the watched folders (claims), the
/// deadlines of proxies and incomplete files, and the webhooks.
pub(super) const SCANNER: &str = "scanner";

/// Starts the heartbeat thread, on a connection of its own so that a busy main loop never
/// delays it: it renews this host's leases three times per lease. It stops when the
/// returned sender is dropped.
pub(super) fn spawn_heartbeat(opening: &Opening) -> anyhow::Result<Sender<()>> {
    let store = opening
        .open("heartbeat")
        .context("cannot open the journal for the heartbeat")?;
    let every = opening.lease / 3;
    let (stop, stopped) = mpsc::channel::<()>();
    std::thread::Builder::new()
        .name("darkroom-heartbeat".into())
        .spawn(move || {
            let mut failing = false;
            loop {
                match store.heartbeat() {
                    Ok(_) if failing => {
                        tracing::info!("heartbeat renewed again");
                        failing = false;
                    }
                    Ok(_) => {}
                    Err(e) if !failing => {
                        tracing::warn!(
                            error = %e,
                            "cannot renew this host's leases; past lease_timeout other hosts take its running jobs over"
                        );
                        failing = true;
                    }
                    Err(_) => {}
                }
                match stopped.recv_timeout(every) {
                    Err(RecvTimeoutError::Timeout) => {}
                    _ => return,
                }
            }
        })
        .context("cannot start the heartbeat thread")?;
    Ok(stop)
}

/// Starts the thread that wakes the main loop when any host queues work.
pub(super) fn spawn_listener(opening: &Opening, events: &Sender<Event>) -> anyhow::Result<()> {
    let crate::daemon::journal::Location::Postgres(url) = opening.location.clone() else {
        return Ok(());
    };
    let events = events.clone();
    std::thread::Builder::new()
        .name("darkroom-listener".into())
        .spawn(move || {
            crate::daemon::journal::listen_for_work(&url, || events.send(Event::Wake).is_ok())
        })
        .context("cannot start the journal listener")?;
    Ok(())
}

impl Daemon {
    /// Once a second on a shared journal: keeps or takes the scanner's role (starting or
    /// stopping this host's watch of the folders), and queues again the jobs of hosts
    /// whose leases lapsed.
    pub(super) fn share_work(&mut self) {
        if !self.config.daemon.shares_journal() {
            return;
        }
        let was_leading = self.leading.load(Ordering::SeqCst);
        let may_lead = self.config.daemon.roles.intake;
        let leading = match may_lead.then(|| self.journal.lead(SCANNER)) {
            None => false,
            Some(Ok(leading)) => leading,
            Some(Err(e)) => {
                if was_leading {
                    tracing::warn!(error = %e, "cannot renew the scanner's role; this host stops scanning until the journal answers");
                }
                false
            }
        };
        if leading != was_leading {
            self.leading.store(leading, Ordering::SeqCst);
            if leading {
                match start_intake(&self.config, &self.events) {
                    Ok(intake) => {
                        tracing::info!(
                            host = %self.config.daemon.host,
                            "elected to scan the watched folders"
                        );
                        self.intake = intake;
                    }
                    Err(e) => {
                        tracing::error!(
                            error = format!("{e:#}"),
                            "cannot watch the configured folders"
                        );
                        self.leading.store(false, Ordering::SeqCst);
                    }
                }
            } else {
                tracing::info!("another host scans the watched folders now");
                self.intake.stop();
                self.intake = Intake::idle();
            }
        }
        self.requeue_unrecorded();
        match self.journal.reclaim_lapsed() {
            Ok(jobs) => {
                for (job, host) in jobs {
                    tracing::warn!(
                        job = job.id,
                        rule = %job.rule,
                        file = %job.path.display(),
                        lapsed_host = %host,
                        "taken over: its host stopped renewing its lease; the job is queued again"
                    );
                    self.record(
                        &job,
                        job.state,
                        Some(&format!("taken over from host {host}")),
                    );
                    self.remove_temp_files_of(&host, &job.rule);
                }
            }
            Err(e) => tracing::debug!(error = %e, "cannot look for lapsed leases"),
        }
    }

    /// Jobs the journal shows running under this host's lease that no worker or tool
    /// thread of this host runs: their result could not be recorded (the database was
    /// unreachable when they finished). They are queued again, to run from the start; their
    /// outputs are rewritten under the same names. Without this their lease would be renewed
    /// for ever.
    pub(super) fn requeue_unrecorded(&mut self) {
        let Ok(jobs) = self.journal.interrupted() else {
            return;
        };
        for job in jobs {
            if self.in_flight.contains_key(&job.id)
                || self.tool_in_flight.contains_key(&job.id)
                || self.abandoned.contains(&job.id)
            {
                continue;
            }
            match self.journal.requeue_interrupted(job.id) {
                Ok(()) => {
                    tracing::warn!(
                        job = job.id,
                        file = %job.path.display(),
                        "the journal did not take this job's result (the database was unreachable); it runs again"
                    );
                    self.record(
                        &job,
                        State::Queued,
                        Some("its result was not recorded; runs again"),
                    );
                }
                Err(e) => {
                    tracing::debug!(job = job.id, error = %e, "cannot queue the job again yet")
                }
            }
        }
    }

    /// Removes what a host whose work was taken over left half-written in a rule's folders.
    fn remove_temp_files_of(&self, host: &str, rule: &str) {
        let Some(rule) = self.config.rule(rule) else {
            return;
        };
        let tag = crate::io::atomic::temp_tag_of(host);
        let mut dirs = self.trees.rule_dirs(&rule.name);
        dirs.extend(
            rule.recipe
                .output_folders()
                .iter()
                .map(|f| f.path.to_path_buf()),
        );
        for dir in dirs {
            trees::remove_stale_temp_files(&dir, Some(&tag));
        }
    }
}
