//! Starting jobs: dispatching queued jobs by their rule's recipe, and pairing returns.

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

    pub(super) fn start_split(&mut self, job: &Job, rule: &Rule) -> anyhow::Result<bool> {
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
    pub(super) fn destination(dir: &Path, job: &Job) -> PathBuf {
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
    pub(super) fn original_destination(&self, rule: &Rule, job: &Job) -> Option<PathBuf> {
        (rule.originals == OriginalsPolicy::Move)
            .then(|| Self::destination(&self.trees.originals(&rule.name), job))
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

    /// The name part an upscale's output carries: `x4_` (the scale, to the power of the
    /// passes), `3840x2160_` for a target size, `enhanced_` for an enhance; `None` while the
    /// model's scale is being measured.
    pub(super) fn output_tag(&mut self, recipe: &Upscale) -> Option<String> {
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
    pub(super) fn start_upscale(
        &mut self,
        job: &Job,
        rule: &Rule,
        recipe: &Upscale,
    ) -> anyhow::Result<bool> {
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
            "source": source_block(job),
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
    pub(super) fn start_normalise(
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
    pub(super) fn start_merge(&mut self, job: &Job, rule: &Rule) -> anyhow::Result<bool> {
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
            "source": source_block(&parent),
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
    pub(super) fn pair(
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
}
