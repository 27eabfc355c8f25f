//! Finishing jobs: handing what workers bring back to its recipe, failures and retries, the
//! jobs that wait in place, deadlines and the systemd status line.

use super::*;

impl Daemon {
    /// Records a finished worker result.
    pub(super) fn finish(&mut self, job_id: i64, outcome: Outcome) {
        self.cancels.remove(&job_id);
        if self.abandoned.remove(&job_id) {
            tracing::warn!(
                job = job_id,
                "a job set aside after job_timeout came back; its result is dropped"
            );
            drop(outcome);
            return;
        }
        self.tool_in_flight.remove(&job_id);
        let started = self.in_flight.remove(&job_id);
        let Ok(Some(job)) = self.journal.get(job_id) else {
            tracing::error!(job = job_id, "finished job missing from the journal");
            return;
        };
        let seconds = started.map(|s| s.elapsed().as_secs_f64()).unwrap_or(0.0);
        let result = match outcome {
            Ok(done) => {
                let result = done.finish(&job, seconds, self);
                self.note_job_ran(&job, seconds);
                result
            }
            Err(e) => {
                self.fail(&job, &e);
                Ok(())
            }
        };
        match result {
            Ok(()) => {}
            Err(e) if super::starts::is_fenced(&e) => tracing::warn!(
                job = job_id,
                "finished after this host's lease lapsed and another host took the job over: this result is not recorded"
            ),
            Err(e) => tracing::error!(
                job = job_id,
                error = format!("{e:#}"),
                "cannot record a finished job"
            ),
        }
    }

    /// Feeds the metrics a finished job's time and its stages' (the `timings_seconds` its
    /// recipe recorded in the journal's details).
    fn note_job_ran(&self, job: &Job, seconds: f64) {
        let Some(rule) = self.config.rule(&job.rule) else {
            return;
        };
        let details = self
            .journal
            .get(job.id)
            .ok()
            .flatten()
            .and_then(|j| j.details);
        let stages: Vec<(String, f64)> = details
            .and_then(|d| serde_json::from_str::<serde_json::Value>(&d).ok())
            .and_then(|d| {
                d.get("timings_seconds")
                    .and_then(|t| t.as_object())
                    .cloned()
            })
            .map(|timings| {
                timings
                    .iter()
                    .filter_map(|(stage, s)| Some((stage.clone(), s.as_f64()?)))
                    .collect()
            })
            .unwrap_or_default();
        self.metrics
            .job_ran(rule.recipe.name(), job.kind, seconds, &stages);
    }

    /// A job failed. Transient failures retry with backoff until attempts run out;
    /// permanent ones (and spent retries) quarantine the input with an error sidecar.
    /// `job` is the journal's current row (its attempts include one just started).
    pub(super) fn fail(&mut self, job: &Job, error: &OpError) {
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
        let class = match error {
            OpError::Rejected { .. } => "rejected",
            OpError::TimedOut { .. } => "timeout",
            _ if permanent => "bad-input",
            _ => "gave-up",
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
            self.tell_recipe_set_aside(job, &reason);
        }
        if let Err(e) = self
            .journal
            .set_failed(job.id, State::Failed, class, &reason, &moved_to)
        {
            tracing::error!(error = %e, "cannot record the failure");
        }
        self.metrics.failed(&job.rule, class);
        self.record(job, State::Failed, Some(&reason));
        self.last_job = format!("{} failed", names::stem_of(&job.claimed_path));
    }

    /// A job's recipe hears of an input set aside for a reason of its own (not the
    /// recipe's verdict).
    pub(super) fn tell_recipe_set_aside(&mut self, job: &Job, reason: &str) {
        let config = Arc::clone(&self.config);
        if let Some(rule) = config.rule(&job.rule) {
            rule.recipe.set_aside(rule, job, reason, self);
        }
    }

    /// A file that reads as empty or truncated stays in place for `incomplete_grace`: a
    /// writer that appends in rounds closes it after each one. If it changes, its new version
    /// is claimed as a new job (this one is then superseded); if not, it is set aside then.
    pub(super) fn wait_for_incomplete(&mut self, job: &Job, reason: &str) {
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
    pub(super) fn supersede_changed(&mut self, job: &Job, reason: &str) {
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
    pub(super) fn check_incomplete(&mut self, now: f64) {
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

    /// Ends a job whose file left its watched folder before it was processed.
    pub(super) fn withdraw(&mut self, job: &Job, why: &str) {
        tracing::info!(job = job.id, file = %job.path.display(), "withdrawn: {why}");
        if let Err(e) = self.journal.set_state(job.id, State::Withdrawn, Some(why)) {
            tracing::error!(error = %e, "cannot record the withdrawal");
        }
        self.record(job, State::Withdrawn, Some(why));
    }

    pub(super) fn next_deadline(&self) -> Option<Duration> {
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

    /// Marks proxies with no return in time as expired; settles incomplete files; then each
    /// rule's recipe keeps its own deadlines.
    pub(super) fn check_deadlines(&mut self) {
        let now = clock::now();
        self.check_incomplete(now);
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
                self.metrics.failed(&job.rule, "expired");
                self.record(&job, State::Expired, None);
            }
        }
        let config = Arc::clone(&self.config);
        for rule in &config.rules {
            rule.recipe.housekeeping(rule, now, self);
        }
    }

    pub(super) fn update_status(&mut self, force: bool) {
        let counts = self.journal.counts().unwrap_or_default();
        let count = |state: State| -> u64 {
            counts
                .iter()
                .filter(|(_, s, _)| *s == state)
                .map(|(_, _, n)| n)
                .sum()
        };
        let status = format!(
            "{} queued, {} running, {} at tool, {} waiting for tool, {} awaiting return, {} held, {} failed, {} done; last: {}",
            count(State::Queued),
            self.in_flight.len(),
            self.tool_in_flight.len(),
            count(State::WaitingForTool),
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
