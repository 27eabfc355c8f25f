//! What the model recipes (upscale and enhance) share: the rule keys of a model and the
//! corrections around it, and the job itself. A worker decodes the input, corrects it, hands
//! it (or, for `enhance via proxy`, its proxy) to the model lane, brings an enhance back to
//! the input's size (merging a proxy's change), encodes, writes the output and its
//! provenance durably, then files the original.

use super::{InputPlace, Recipe, Rule, Service, Start};
use crate::daemon::journal::{Job, State};
use crate::daemon::model_lane::{LaneResult, ModelLane, ScaleKnown};
use crate::daemon::pairing;
use crate::daemon::settings::*;
use crate::daemon::trees::write_json_atomic;
use crate::io::atomic;
use crate::io::decode::DecodeLimits;
use crate::io::names;
use crate::ops::model_pipeline::{self, ModelSteps, Via};
use crate::ops::OpError;
use image::DynamicImage;
use serde::Deserialize;
use std::path::PathBuf;
use std::sync::Arc;

/// A model rule: `upscale` (enhance is `None`) or `enhance`.
#[derive(Debug, Clone)]
pub struct ModelJob {
    pub model: ModelSpec,
    /// Output file extension: png (default), tiff, webp or jpg.
    pub output_format: String,
    /// Model passes (default 1); ignored when `target` is set.
    pub passes: u32,
    /// Exact output size: enough passes, then Lanczos3.
    pub target: Option<(u32, u32)>,
    /// Unsharp mask after the model.
    pub sharpen: Option<crate::core::filters::Unsharp>,
    /// Set for the `enhance` recipe: the output keeps the input's size, and the model runs
    /// on the full image or on a proxy merged back.
    pub enhance: Option<Via>,
    /// Corrections before the model (run on the worker).
    pub pre: crate::core::corrections::PreFilters,
    /// A model run before the main one at the input's size (an ONNX denoiser; a model
    /// that enlarges is brought back to the input's size), after `pre`.
    pub denoise_model: Option<ModelSpec>,
    /// Smoothing after the model, before `sharpen` (run on the worker).
    pub smooth: Option<crate::core::corrections::Smoothing>,
}

impl ModelJob {
    /// A model job from a rule's shared keys.
    pub(super) fn from_rule(
        shared: ModelRule,
        passes: u32,
        target: Option<(u32, u32)>,
        enhance: Option<Via>,
    ) -> Arc<dyn Recipe> {
        Arc::new(ModelJob {
            model: shared.model,
            output_format: shared.output_format,
            passes,
            target,
            sharpen: shared.sharpen,
            enhance,
            pre: shared.pre,
            denoise_model: shared.denoise_model,
            smooth: shared.smooth,
        })
    }

    /// The name part the output carries: `x4_` (the scale, to the power of the passes),
    /// `3840x2160_` for a target size, `enhanced_` for an enhance; `None` while the model's
    /// scale is being measured.
    fn output_tag(&self, service: &mut dyn Service) -> Option<String> {
        if self.enhance.is_some() {
            return Some("enhanced_".into());
        }
        if self.target.is_some() {
            return Some(crate::ops::upscale::output_tag(1, 1, self.target));
        }
        match service.model_scale(&self.model) {
            ScaleKnown::Probing => None,
            ScaleKnown::Known(scale) => {
                Some(crate::ops::upscale::output_tag(scale, self.passes, None))
            }
            ScaleKnown::Unavailable => Some(String::new()),
        }
    }
}

impl Recipe for ModelJob {
    fn runs_models(&self) -> bool {
        true
    }

    fn name(&self) -> &'static str {
        if self.enhance.is_some() {
            "enhance"
        } else {
            "upscale"
        }
    }

    /// The output's name is fixed (and recorded) before the job runs. Until the model's
    /// scale is known (the first job of a model, on its first load), the job waits.
    fn start(&self, rule: &Rule, job: &Job, service: &mut dyn Service) -> anyhow::Result<Start> {
        let output = match &job.output_path {
            Some(path) => path.clone(),
            None => {
                let Some(tag) = self.output_tag(service) else {
                    return Ok(Start::Wait);
                };
                let images = service.trees().images(&rule.name);
                let stem = names::stem_of(&job.claimed_path);
                let (ext, model) = (&self.output_format, &self.model.name);
                let mut path = images.join(format!("{stem}_{tag}{model}.{ext}"));
                if service.journal().output_taken(&path, -1)? {
                    path = images.join(format!(
                        "{stem}_{}_{tag}{model}.{ext}",
                        pairing::job_token(job.id),
                    ));
                }
                service.journal().set_output(job.id, &path)?;
                path
            }
        };
        let work = ModelWork {
            recipe: self.clone(),
            runtime: service.runtime().clone(),
            limits: service.limits(),
            input: InputPlace::of(rule, job, service.trees()),
            metadata_path: service
                .trees()
                .metadata(&rule.name)
                .join(format!("{}.json", names::stem_of(&output))),
            output,
            provenance: {
                let mut provenance = super::provenance(rule, job);
                provenance["jobs"] = serde_json::json!({ "upscale": job.id });
                provenance
            },
        };
        Ok(Start::Run {
            state: State::Running,
            work: Box::new(move |lane: &ModelLane| {
                run(&work, lane).map(|done| Box::new(done) as Box<dyn super::Finish>)
            }),
        })
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// Everything a model job needs, decided by the main thread.
struct ModelWork {
    recipe: ModelJob,
    runtime: RuntimeSettings,
    limits: DecodeLimits,
    input: InputPlace,
    output: PathBuf,
    metadata_path: PathBuf,
    provenance: serde_json::Value,
}

/// What a model job did.
struct Upscaled {
    output: PathBuf,
    original_now_at: PathBuf,
    provenance: serde_json::Value,
}

impl super::Finish for Upscaled {
    fn finish(
        self: Box<Self>,
        job: &Job,
        seconds: f64,
        service: &mut dyn Service,
    ) -> anyhow::Result<()> {
        service
            .journal()
            .job_done(job.id, &self.original_now_at, &self.provenance.to_string())?;
        service.record(job, State::Done, Some(&self.output.display().to_string()));
        let done = if self.provenance.get("enhance").is_some() {
            "enhanced"
        } else {
            "upscaled"
        };
        tracing::info!(
            job = job.id,
            file = %job.claimed_path.display(),
            output = %self.output.display(),
            model = %self.provenance["model"]["name"].as_str().unwrap_or("?"),
            seconds = format!("{seconds:.3}"),
            "{done}"
        );
        service.last_done(format!("{} {done}", names::stem_of(&job.claimed_path)));
        Ok(())
    }
}

/// Runs the job through the model pipeline, its models on the lane; corrections, the
/// enhance merge and encoding stay on this worker, leaving the lane to the next job.
fn run(work: &ModelWork, lane: &ModelLane) -> Result<Upscaled, OpError> {
    let original = work.input.find()?;
    std::fs::create_dir_all(atomic::parent_dir(&work.metadata_path))
        .map_err(|e| OpError::write(&work.metadata_path, e))?;
    let steps = ModelSteps {
        pre: work.recipe.pre,
        smooth: work.recipe.smooth,
        sharpen: work.recipe.sharpen,
        enhance: work.recipe.enhance,
    };
    let mut denoise = |image: &DynamicImage| {
        let denoiser = work
            .recipe
            .denoise_model
            .as_ref()
            .expect("offered with a model");
        lane.upscale(denoiser, &work.runtime, (1, None), image.clone())
            .map(|out| out.image)
            .map_err(OpError::from)
    };
    // The lane's account of the main model's (last) run, for the provenance.
    let mut ran: Option<LaneResult> = None;
    let done = model_pipeline::run(
        &original,
        &work.output,
        &work.limits,
        &steps,
        work.recipe
            .denoise_model
            .is_some()
            .then_some(&mut denoise as &mut model_pipeline::RunModel<'_>),
        &mut |image| {
            let mut out = lane
                .upscale(
                    &work.recipe.model,
                    &work.runtime,
                    (work.recipe.passes, work.recipe.target),
                    image.clone(),
                )
                .map_err(OpError::from)?;
            let image = std::mem::replace(&mut out.image, DynamicImage::new_luma8(0, 0));
            ran = Some(out);
            Ok(image)
        },
    )?;
    let result = ran.ok_or_else(|| OpError::Internal("the model did not run".into()))?;
    let (width, height) = (done.input_width, done.input_height);

    let mut provenance = work.provenance.clone();
    super::note_source_use(&mut provenance, &original);
    if let Some(object) = provenance.as_object_mut() {
        object.insert(
            "model".into(),
            serde_json::json!({
                "name": work.recipe.model.name,
                "path": work.recipe.model.path,
                "sha256": result.model_sha256,
                "scale": result.scale,
                "provider": result.provider,
            }),
        );
        object.insert(
            "tiling".into(),
            serde_json::json!({
                "tile": result.tile,
                "tile_setting": work.recipe.model.tile.to_string(),
                "batch": result.batch,
                "batch_setting": match work.recipe.model.batch {
                    crate::io::onnx::AUTO_BATCH => serde_json::json!("auto"),
                    n => serde_json::json!(n),
                },
                "context": work.recipe.model.context,
                "tiles": result.tiles,
                "passes": work.recipe.passes,
                "target": work.recipe.target.map(|(w, h)| format!("{w}x{h}")),
                "sharpen": work.recipe.sharpen.map(|u| serde_json::json!({
                    "amount": u.amount, "radius": u.radius, "threshold": u.threshold,
                })),
            }),
        );
        object.insert(
            "corrections".into(),
            serde_json::json!({
                "pre": work.recipe.pre.describe(),
                "denoise_model": work.recipe.denoise_model.as_ref().map(|m| &m.name),
                "smooth": work.recipe.smooth.map(|s| format!("{s:?}")),
            }),
        );
        if let Some(via) = &work.recipe.enhance {
            object.insert("enhance".into(), via.describe());
        }
        object.insert(
            "output".into(),
            serde_json::json!({
                "path": work.output,
                "width": done.width,
                "height": done.height,
                "input_width": width,
                "input_height": height,
            }),
        );
        object.insert(
            "timings_seconds".into(),
            serde_json::json!({
                "decode": done.decode_seconds,
                "model": done.model_seconds,
                "model_lane": result.seconds,
                "encode_and_write": done.encode_seconds,
            }),
        );
    }
    write_json_atomic(&work.metadata_path, &provenance)
        .map_err(|e| OpError::write(&work.metadata_path, e))?;
    // The output and its provenance are durable: only now does the original move.
    let original_now_at = work.input.file(original)?;
    Ok(Upscaled {
        output: work.output.clone(),
        original_now_at,
        provenance,
    })
}

/// The keys every model rule (upscale, enhance) shares: the model, the output, and the
/// corrections around the model.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawModelRule {
    pub(super) model: Option<String>,
    pub(super) domain: Option<String>,
    pub(super) output_format: Option<String>,
    pub(super) sharpen: Option<String>,
    pub(super) white_balance: Option<String>,
    pub(super) exposure: Option<String>,
    pub(super) deblock: Option<bool>,
    pub(super) denoise: Option<String>,
    pub(super) denoise_model: Option<String>,
    pub(super) smooth: Option<String>,
}

/// A model rule's shared keys, resolved.
pub(super) struct ModelRule {
    pub(super) model: ModelSpec,
    pub(super) output_format: String,
    pub(super) sharpen: Option<crate::core::filters::Unsharp>,
    pub(super) pre: crate::core::corrections::PreFilters,
    pub(super) denoise_model: Option<ModelSpec>,
    pub(super) smooth: Option<crate::core::corrections::Smoothing>,
}

impl ModelRule {
    /// Takes the shared keys out of a rule's `table` (leaving the recipe's own) and resolves
    /// them; `None` when the model cannot be resolved (the problem is recorded).
    pub(super) fn take(
        table: &mut toml::value::Table,
        models: &std::collections::BTreeMap<String, ModelSpec>,
        label: &str,
        line: usize,
        problems: &mut Problems,
    ) -> Option<ModelRule> {
        let mut shared = toml::value::Table::new();
        for key in fields_of::<RawModelRule>() {
            if let Some(value) = table.remove(*key) {
                shared.insert(key.to_string(), value);
            }
        }
        let raw: RawModelRule = read_known_keys(shared, label, line, problems);
        let white_balance = match raw.white_balance.as_deref() {
            None | Some("off") | Some("none") => false,
            Some("gray-world") | Some("grey-world") => true,
            Some(other) => {
                problems.push(
                    format!("{label}.white_balance"),
                    Some(line),
                    format!("'{other}': use \"gray-world\" or \"off\""),
                );
                false
            }
        };
        let exposure = parse_key(raw.exposure.as_deref(), label, "exposure", line, problems);
        let denoise = parse_key(raw.denoise.as_deref(), label, "denoise", line, problems);
        let smooth = parse_key(raw.smooth.as_deref(), label, "smooth", line, problems);
        let sharpen = parse_key(raw.sharpen.as_deref(), label, "sharpen", line, problems);
        let output_format = check_output_format(raw.output_format, label, line, problems);
        let denoise_model = raw.denoise_model.as_ref().and_then(|name| {
            model_named(
                name,
                models,
                &format!("{label}.denoise_model"),
                line,
                problems,
            )
        });
        let model =
            resolve_upscale_model((&raw.model, &raw.domain), models, label, line, problems)?;
        Some(ModelRule {
            model,
            denoise_model,
            output_format,
            sharpen,
            pre: crate::core::corrections::PreFilters {
                white_balance,
                exposure,
                deblock: raw.deblock.unwrap_or(false),
                denoise,
            },
            smooth,
        })
    }
}

/// The model of an upscale or enhance rule: by `model` name, or the first model serving
/// `domain`.
fn resolve_upscale_model(
    (model, domain): (&Option<String>, &Option<String>),
    models: &std::collections::BTreeMap<String, ModelSpec>,
    label: &str,
    line: usize,
    problems: &mut Problems,
) -> Option<ModelSpec> {
    let names = || models.keys().cloned().collect::<Vec<_>>().join(", ");
    match (model, domain) {
        (Some(name), None) => model_named(name, models, &format!("{label}.model"), line, problems),
        (None, Some(domain)) => match models.values().find(|m| m.domains.contains(domain)) {
            Some(spec) => Some(spec.clone()),
            None => {
                problems.push(
                    format!("{label}.domain"),
                    Some(line),
                    format!(
                        "no model lists domain '{domain}' in its domains; models: {}",
                        names()
                    ),
                );
                None
            }
        },
        _ => {
            problems.push(
                label.to_string(),
                Some(line),
                "an upscale or enhance rule names exactly one of `model` (a [models.<name>] table) or `domain`",
            );
            None
        }
    }
}
