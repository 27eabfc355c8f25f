//! Starting jobs: queued jobs go to their rule's recipe while workers are free; model
//! scales are measured by the lane for the recipes that name outputs after them.

use super::*;

impl Daemon {
    /// Starts queued jobs while workers are free.
    pub(super) fn dispatch(&mut self) {
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
            match self.start(&rule, &job) {
                Ok(true) => started += 1,
                Ok(false) => {}
                Err(e) => {
                    tracing::error!(job = job.id, error = format!("{e:#}"), "cannot start job")
                }
            }
        }
    }

    /// Starts one job through its rule's recipe: the one place the service hands a job to a
    /// recipe. `false` when the recipe lets it wait.
    fn start(&mut self, rule: &Rule, job: &Job) -> anyhow::Result<bool> {
        let Start::Run { state, work } = rule.recipe.start(rule, job, self)? else {
            return Ok(false);
        };
        self.journal.start_attempt(job.id, state)?;
        self.record(job, state, None);
        self.in_flight.insert(job.id, Instant::now());
        self.send_work(job.id, work)
            .map_err(|_| anyhow::anyhow!("the workers are gone"))?;
        Ok(true)
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
