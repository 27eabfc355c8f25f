//! Commands from the HTTP listener, carried out on the main thread like every other
//! decision: retrying a failed or cancelled job, cancelling one that has not finished.

use super::*;
use crate::daemon::http::{Command, Refusal};

impl Daemon {
    pub(super) fn steer(&mut self, command: Command) {
        match command {
            Command::Retry { job, reply } => {
                let _ = reply.send(self.retry(job));
            }
            Command::Cancel { job, reply } => {
                let _ = reply.send(self.cancel(job));
            }
        }
    }

    fn job_or_refusal(&self, id: i64) -> Result<Job, Refusal> {
        match self.journal.get(id) {
            Ok(Some(job)) => Ok(job),
            Ok(None) => Err(Refusal::NotFound(format!("no job {id}"))),
            Err(e) => Err(Refusal::Internal(e.to_string())),
        }
    }

    fn reread(&self, id: i64) -> Result<Job, Refusal> {
        self.job_or_refusal(id)
    }

    /// A failed or cancelled job runs again: its input goes back where it was claimed (as
    /// if a person moved it back, which the intake would take the same way) and the job is
    /// queued with its attempts reset.
    fn retry(&mut self, id: i64) -> Result<Job, Refusal> {
        let job = self.job_or_refusal(id)?;
        if !matches!(job.state, State::Failed | State::Cancelled) {
            return Err(Refusal::Conflict(format!(
                "job {id} is {}: only failed or cancelled jobs can be retried",
                job.state.as_str()
            )));
        }
        if self.config.rule(&job.rule).is_none() {
            return Err(Refusal::Conflict(format!(
                "job {id}'s rule '{}' is no longer in the config",
                job.rule
            )));
        }
        if job.path != job.claimed_path {
            if !job.path.exists() {
                return Err(Refusal::Conflict(format!(
                    "job {id}'s input is no longer at {}; drop the file into the inbox again",
                    job.path.display()
                )));
            }
            if job.claimed_path.symlink_metadata().is_ok() {
                return Err(Refusal::Conflict(format!(
                    "another file is at {} now: move it away, then retry",
                    job.claimed_path.display()
                )));
            }
            let dir = crate::io::atomic::parent_dir(&job.claimed_path);
            trees::ensure_dir(&dir).map_err(|e| Refusal::Internal(e.to_string()))?;
            trees::move_durably(&job.path, &job.claimed_path).map_err(|e| {
                Refusal::Internal(format!(
                    "cannot move {} back to {}: {e}",
                    job.path.display(),
                    job.claimed_path.display()
                ))
            })?;
        }
        self.claim_again(&job, &job.claimed_path.clone())
            .map_err(|e| Refusal::Internal(format!("{e:#}")))?;
        self.dispatch();
        self.reread(id)
    }

    /// Stops a job that has not finished. Waiting jobs are set aside at once; a running one
    /// as past `job_timeout` is (its late output refused, a fresh worker in its place).
    fn cancel(&mut self, id: i64) -> Result<Job, Refusal> {
        let job = self.job_or_refusal(id)?;
        let reason = "cancelled over HTTP";
        match job.state {
            State::Queued
            | State::Incomplete
            | State::Held
            | State::WaitingForTool
            | State::Running
            | State::Merging => {}
            State::AtTool => {
                return Err(Refusal::Conflict(format!(
                    "job {id} is with its tool now; it can be cancelled when it comes back \
                     (or after the tool's timeout)"
                )))
            }
            State::AwaitingReturn => {
                return Err(Refusal::Conflict(format!(
                    "job {id}'s proxy awaits its return; it expires by itself after the rule's \
                     return_timeout"
                )))
            }
            done => {
                return Err(Refusal::Conflict(format!(
                    "job {id} is {} already",
                    done.as_str()
                )))
            }
        }
        let elsewhere = job
            .leased_by
            .as_deref()
            .filter(|host| *host != self.config.daemon.host);
        if let (State::Running | State::Merging, Some(host)) = (job.state, elsewhere) {
            // Its input is in that host's hands: moving it aside from here would pull it
            // from under the running work.
            return Err(Refusal::Conflict(format!(
                "job {id} is running on host {host}; cancel it through that host's API, or \
                 wait for it to end"
            )));
        }
        self.abandon_running(id);
        let sidecar = ErrorSidecar {
            file: &job.claimed_path.to_string_lossy(),
            rule: &job.rule,
            job: job.id,
            reason,
            kind: "cancelled",
            attempts: job.attempts,
            when: clock::rfc3339(clock::now()),
            darkroom_version: VERSION,
            details: None,
        };
        let moved_to = match trees::quarantine(&self.trees, &job.path, &sidecar) {
            Ok(path) => path,
            Err(e) => {
                tracing::error!(job = id, error = %e, "cannot move the cancelled job's file aside");
                job.path.clone()
            }
        };
        self.journal
            .set_failed(id, State::Cancelled, "cancelled", reason, &moved_to)
            .map_err(|e| Refusal::Internal(e.to_string()))?;
        tracing::info!(
            job = id,
            file = %job.claimed_path.display(),
            moved_to = %moved_to.display(),
            "cancelled over HTTP; the file was moved aside (retry runs it again)"
        );
        self.tell_recipe_set_aside(&job, reason);
        self.metrics.failed(&job.rule, "cancelled");
        self.record(&job, State::Cancelled, Some(reason));
        self.reread(id)
    }
}
