//! Starting jobs: queued jobs go to their rule's recipe while workers are free; model
//! scales are measured by the lane for the recipes that name outputs after them.

use super::*;

/// Where a started job runs.
pub(super) enum Lane {
    Worker,
    Tool,
}

/// The journal refused a write because the job is no longer this host's attempt.
pub(super) fn is_fenced(error: &anyhow::Error) -> bool {
    error
        .downcast_ref::<crate::daemon::journal::StoreError>()
        .is_some_and(|e| e.is_fenced())
}

impl Daemon {
    /// Starts queued jobs while workers are free.
    pub(super) fn dispatch(&mut self) {
        let free = self
            .config
            .daemon
            .workers
            .saturating_sub(self.in_flight.len());
        // Jobs waiting for their tool start whether or not a worker is free: they run on
        // threads of their own.
        let rules = self.rules_this_host_runs();
        // On a shared journal every job looked at is reserved (a write) and the unstarted
        // ones released again: look at few beyond those that can start. With no worker
        // free, only jobs waiting for their tool can start.
        let shared = self.config.daemon.shares_journal();
        let filter = crate::daemon::journal::Runnable {
            rules: rules.as_deref(),
            tool_waits_only: shared && free == 0,
        };
        let limit = if shared { free + 8 } else { free + 64 };
        let jobs = match self.journal.runnable(clock::now(), limit, &filter) {
            Ok(jobs) => jobs,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the journal");
                return;
            }
        };
        let mut started = 0;
        for job in jobs {
            if started >= free && job.state != State::WaitingForTool {
                continue;
            }
            if self.in_flight.contains_key(&job.id) || self.tool_in_flight.contains_key(&job.id) {
                // Queued again while this host still runs it (its lease lapsed meanwhile):
                // the run under way ends first; its late result is fenced off.
                continue;
            }
            let Some(rule) = self.config.rule(&job.rule).cloned() else {
                if self.orphans_warned.insert(job.id) {
                    tracing::warn!(job = job.id, rule = %job.rule, "job waits: its rule is no longer in the config");
                }
                continue;
            };
            match self.start(&rule, &job) {
                Ok(Some(Lane::Worker)) => started += 1,
                Ok(_) => {}
                Err(e) if is_fenced(&e) => {
                    tracing::debug!(job = job.id, "another host took the job first");
                }
                Err(e) => {
                    tracing::error!(job = job.id, error = format!("{e:#}"), "cannot start job")
                }
            }
        }
        if let Err(e) = self.journal.release_unstarted() {
            tracing::debug!(error = %e, "cannot release the jobs this host did not start");
        }
    }

    /// The rules whose jobs this host's roles let it run (`None`: all of them).
    fn rules_this_host_runs(&self) -> Option<Vec<String>> {
        let roles = &self.config.daemon.roles;
        if roles.cpu && roles.model {
            return None;
        }
        Some(
            self.config
                .rules
                .iter()
                .filter(|rule| {
                    if rule.recipe.runs_models() {
                        roles.model
                    } else {
                        roles.cpu
                    }
                })
                .map(|rule| rule.name.clone())
                .collect(),
        )
    }

    /// Starts one job through its rule's recipe: the one place the service hands a job to a
    /// recipe. `None` when the recipe lets it wait, else where it runs.
    fn start(&mut self, rule: &Rule, job: &Job) -> anyhow::Result<Option<Lane>> {
        match rule.recipe.start(rule, job, self)? {
            Start::Wait => Ok(None),
            Start::Run { state, work } => {
                if job.attempts == 0 {
                    self.metrics.started(clock::now() - job.created_at);
                }
                self.journal.start_attempt(job.id, state)?;
                self.record(job, state, None);
                self.in_flight.insert(job.id, Instant::now());
                self.send_work(job.id, work)
                    .map_err(|_| anyhow::anyhow!("the workers are gone"))?;
                Ok(Some(Lane::Worker))
            }
            Start::Tool { work } => {
                self.journal.start_attempt(job.id, State::AtTool)?;
                self.record(job, State::AtTool, None);
                self.tool_in_flight.insert(job.id, job.rule.clone());
                let events = self.events.clone();
                let lane = self.lane.clone();
                let job_id = job.id;
                std::thread::Builder::new()
                    .name(format!("darkroom-tool-{job_id}"))
                    .spawn(move || {
                        let outcome = run_work(work, &lane);
                        let _ = events.send(Event::Finished { job_id, outcome });
                    })
                    .context("cannot start a tool thread")?;
                Ok(Some(Lane::Tool))
            }
        }
    }

    /// The scale of `spec`'s model: from the config, from an earlier probe, or `Probing`
    /// while the lane loads it (a probe is started if none runs).
    pub(super) fn model_scale(&mut self, spec: &config::ModelSpec) -> ScaleKnown {
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

    pub(super) fn learn_scale(&mut self, model: PathBuf, scale: Result<u32, String>) {
        let known = match scale {
            Ok(scale) => ScaleKnown::Known(scale),
            Err(error) => {
                tracing::error!(model = %model.display(), %error, "the model cannot be loaded; its jobs will fail with this reason");
                ScaleKnown::Unavailable
            }
        };
        self.model_scales.insert(model, known);
    }
}
