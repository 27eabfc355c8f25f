//! Claiming: files the intake finds ready are hashed on a thread of their own, then
//! recorded in the journal as queued jobs.

use super::*;
use crate::daemon::intake::FileStat;

/// What the hashing thread found for a claimed file.
pub(super) enum Hashed {
    Sha256(String),
    /// The file changed while it was read: the intake waits for it to settle again.
    Changed,
    Unreadable(std::io::Error),
}

/// Hashes claimed files on a thread of its own, so that the main loop (which also pings the
/// systemd watchdog) never waits on reading a large file. Files are hashed one at a time,
/// in claim order.
pub(super) fn spawn_hasher(events: &Sender<Event>) -> Sender<Claim> {
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

impl Daemon {
    /// Sends files the intake finds ready to the hashing thread; [`Daemon::hashed`] records
    /// each as a queued job.
    pub(super) fn claim_ready(&mut self) {
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
    pub(super) fn claim_failed(&mut self, claim: Claim, error: &anyhow::Error) {
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
    pub(super) fn hashed(&mut self, claim: Claim, sha256: Hashed) {
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

    pub(super) fn claim(&mut self, claim: &Claim, sha256: String) -> anyhow::Result<()> {
        let root = &self.intake.roots()[claim.root];
        let kind = kind_of(root.role);
        let rule = root.rule.clone();
        // `claim_ready` skipped files whose stat the journal knows before they were hashed,
        // and a path is hashed once at a time: only the content can tell this one apart now.
        let identity = FileIdentity {
            path: claim.path.clone(),
            size: claim.stat.size,
            mtime_ns: claim.stat.mtime_ns,
            inode: claim.stat.inode,
            sha256,
        };
        if let Some(known) = self.journal.find_identity(&rule, kind, &identity)? {
            let set_aside = matches!(known.state, State::Failed | State::Cancelled)
                && known.path != known.claimed_path;
            if set_aside || known.state == State::Withdrawn {
                self.claim_again(&known, &claim.path)?;
            }
            return Ok(());
        }
        let id = self.journal.insert(&rule, kind, &identity, State::Queued)?;
        self.metrics
            .claimed(clock::now() - claim.stat.mtime_ns as f64 / 1e9);
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
        if claim.unaccepted {
            self.set_aside_unaccepted(id, &rule)?;
        }
        Ok(())
    }

    /// A file whose job ended without a result (set aside, cancelled or withdrawn) is back
    /// where it was claimed: put there by a person or by a retry over HTTP. Its job runs
    /// again from the start, and the error sidecar left beside its old place goes.
    pub(super) fn claim_again(&mut self, job: &Job, path: &Path) -> anyhow::Result<()> {
        let left_at = job.path.clone();
        self.journal.requeue(job.id, path)?;
        if left_at != job.claimed_path && !left_at.exists() {
            let mut sidecar = left_at.clone().into_os_string();
            sidecar.push(".error.json");
            let _ = std::fs::remove_file(&sidecar);
        }
        tracing::info!(
            job = job.id,
            rule = %job.rule,
            file = %path.display(),
            was = job.state.as_str(),
            "claimed again: the file is back in its folder, so its job runs again"
        );
        self.record(job, State::Queued, Some("claimed again"));
        Ok(())
    }

    /// A file in an inbox that none of its rule's patterns takes: set aside in
    /// `failed/<rule>/` with a sidecar that says what the rule does take.
    fn set_aside_unaccepted(&mut self, id: i64, rule: &str) -> anyhow::Result<()> {
        let Some(job) = self.journal.get(id)? else {
            return Ok(());
        };
        let patterns = self
            .config
            .rule(rule)
            .map(|r| {
                r.patterns
                    .iter()
                    .map(|p| p.as_str().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        let error = OpError::Mismatch {
            path: job.claimed_path.display().to_string(),
            reason: format!(
                "not taken: no pattern of rule '{rule}' matches this name; the rule takes {patterns} \
                 (rename the file to one of those, or add a pattern to the rule)"
            ),
        };
        self.fail(&job, &error);
        Ok(())
    }
}
