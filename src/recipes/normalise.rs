//! The `normalise` recipe: LoRA and diffusion training sets. A worker stages the image
//! (decode, fit, score; a too-small source goes through the rule's upscale model on the
//! model lane), then, holding the set's lock, admits it (near-duplicate check, naming,
//! durable writes), logs the verdict and rebuilds the set's reports; only then is the
//! original (and a caption `.txt` dropped with it) filed. A rejected image comes back as
//! [`OpError::Rejected`], which the service sets aside in `failed/<rule>/` with the reasons
//! and scores in its error sidecar. The pixel work is `ops::normalise`'s, shared with
//! `darkroom normalise`.

use super::{InputPlace, Recipe, RecipeTable, Registration, Rule, Service, Start};
use crate::daemon::journal::{Job, State};
use crate::daemon::model_lane::ModelLane;
use crate::daemon::settings::*;
use crate::io::decode::DecodeLimits;
use crate::io::names;
use crate::ops::normalise::{self, DatasetIndex, NormaliseSettings, Record};
use crate::ops::{dataset_report, OpError};
use image::DynamicImage;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

pub const REGISTRATION: Registration = Registration {
    name: "normalise",
    aliases: &["normalize"],
    keys: || [fields_of::<NormaliseSettings>(), &["upscale_model"]].concat(),
    resolve,
};

/// Options of `normalise`: the preset and its checks (see `ops::normalise`), and the model
/// that enlarges sources too small for the preset.
#[derive(Debug, Clone)]
pub struct Normalise {
    pub options: normalise::NormaliseOptions,
    /// Enlarges sources too small for the preset (else they are rejected).
    pub upscale_model: Option<ModelSpec>,
}

fn resolve(rule: RecipeTable<'_>, problems: &mut Problems) -> Option<Arc<dyn Recipe>> {
    let RecipeTable {
        mut table,
        label,
        line,
        context,
        ..
    } = rule;
    let key = format!("{label}.upscale_model");
    let upscale_model = match table.remove("upscale_model") {
        None => None,
        Some(toml::Value::String(name)) => model_named(&name, context.models, &key, line, problems),
        Some(other) => {
            problems.push(
                key,
                Some(line),
                format!("{other:?}: the name of a [models.<name>] table"),
            );
            None
        }
    };
    let settings: NormaliseSettings = read_known_keys(table, label, line, problems);
    match settings.resolve() {
        Ok(options) => Some(Arc::new(Normalise {
            options,
            upscale_model,
        })),
        Err(found) => {
            for (key, message) in found {
                problems.push(format!("{label}.{key}"), Some(line), message);
            }
            None
        }
    }
}

impl Recipe for Normalise {
    fn runs_models(&self) -> bool {
        self.upscale_model.is_some()
    }

    fn name(&self) -> &'static str {
        "normalise"
    }

    /// Captions dropped beside the images are the set's, not strays.
    fn sidecar_patterns(&self) -> Vec<glob::Pattern> {
        vec![glob::Pattern::new("*.txt").expect("valid pattern")]
    }

    /// The job's name in the set is chosen when it is admitted, on the worker.
    fn start(&self, rule: &Rule, job: &Job, service: &mut dyn Service) -> anyhow::Result<Start> {
        let work = NormaliseWork {
            job_id: job.id,
            recipe: self.clone(),
            runtime: service.runtime().clone(),
            limits: service.limits(),
            input: InputPlace::of(rule, job, service.trees()),
            images_dir: service.trees().images(&rule.name),
            metadata_dir: service.trees().metadata(&rule.name),
        };
        Ok(Start::Run {
            state: State::Running,
            work: Box::new(move |lane: &ModelLane| {
                run(&work, lane).map(|done| Box::new(done) as Box<dyn super::Finish>)
            }),
        })
    }

    /// The set lists every input it was given: one set aside for a reason of its own (not
    /// a quality verdict, which the set logged already) is entered too.
    fn set_aside(&self, rule: &Rule, job: &Job, reason: &str, service: &mut dyn Service) {
        if !super::is_input(job) {
            return;
        }
        if let Err(e) = log_set_aside(
            job.id,
            &job.claimed_path,
            reason,
            &service.trees().images(&rule.name),
            &service.trees().metadata(&rule.name),
        ) {
            tracing::warn!(job = job.id, error = %e, "cannot enter the set-aside input in the set's log");
        }
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// Everything a normalise job needs, decided by the main thread.
struct NormaliseWork {
    job_id: i64,
    recipe: Normalise,
    runtime: RuntimeSettings,
    limits: DecodeLimits,
    input: InputPlace,
    images_dir: PathBuf,
    metadata_dir: PathBuf,
}

/// What a normalise job did.
struct Normalised {
    record: Record,
    output: PathBuf,
    original_now_at: PathBuf,
}

impl super::Finish for Normalised {
    fn finish(
        self: Box<Self>,
        job: &Job,
        seconds: f64,
        service: &mut dyn Service,
    ) -> anyhow::Result<()> {
        let record = serde_json::to_value(&self.record)?;
        service
            .journal()
            .job_done(job.id, &self.original_now_at, &record.to_string())?;
        service.record(job, State::Done, Some(&self.output.display().to_string()));
        tracing::info!(
            job = job.id,
            file = %job.claimed_path.display(),
            output = %self.output.display(),
            bucket = self.record.bucket.as_deref().unwrap_or("-"),
            sharpness = self.record.scores.as_ref().map_or(0.0, |s| s.sharpness),
            seconds = format!("{seconds:.3}"),
            "normalised into the set"
        );
        service.last_done(format!("{} normalised", names::stem_of(&job.claimed_path)));
        Ok(())
    }
}

/// The sets the daemon writes, one index each, loaded from the sidecars on first use.
fn sets() -> &'static Mutex<HashMap<PathBuf, DatasetIndex>> {
    static SETS: OnceLock<Mutex<HashMap<PathBuf, DatasetIndex>>> = OnceLock::new();
    SETS.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The id a job's entries carry in the set (a re-run after a crash finds its own entry).
fn record_id(job_id: i64) -> String {
    format!("job-{job_id}")
}

/// Runs `step` on the set's index while holding the sets' lock, then logs the record it
/// returns and rebuilds the set's reports.
fn with_set<T>(
    images_dir: &Path,
    metadata_dir: &Path,
    step: impl FnOnce(&mut DatasetIndex) -> Result<(Record, T), OpError>,
) -> Result<(Record, T), OpError> {
    let mut sets = sets()
        .lock()
        .map_err(|_| OpError::Internal("the set index lock is poisoned".into()))?;
    if !sets.contains_key(images_dir) {
        let index = DatasetIndex::load(images_dir).map_err(|e| OpError::write(images_dir, e))?;
        sets.insert(images_dir.to_path_buf(), index);
    }
    let index = sets.get_mut(images_dir).expect("inserted above");
    let (record, value) = step(index)?;
    normalise::log_record(metadata_dir, &record).map_err(|e| OpError::write(metadata_dir, e))?;
    if let Err(e) = dataset_report::write_reports(images_dir, metadata_dir) {
        tracing::warn!(error = %e, "cannot rebuild the set's reports; they catch up after the next image");
    }
    Ok((record, value))
}

/// Enters an input the service set aside without a verdict of the set (undecodable,
/// unreadable, given up) into the set's processing log and reports, as a one-shot run does.
fn log_set_aside(
    job_id: i64,
    source: &Path,
    reason: &str,
    images_dir: &Path,
    metadata_dir: &Path,
) -> Result<(), OpError> {
    with_set(images_dir, metadata_dir, |_| {
        Ok((Record::unreadable(record_id(job_id), source, &reason), ()))
    })
    .map(|_| ())
}

fn run(work: &NormaliseWork, lane: &ModelLane) -> Result<Normalised, OpError> {
    let original = work.input.find()?;
    let options = &work.recipe.options;
    for dir in [&work.images_dir, &work.metadata_dir] {
        std::fs::create_dir_all(dir).map_err(|e| OpError::write(dir, e))?;
    }
    let upscale = |image: DynamicImage, factor: f64| -> Result<(DynamicImage, String), OpError> {
        let spec = work
            .recipe
            .upscale_model
            .as_ref()
            .expect("only offered with a model");
        let target = normalise::enlarged_size(&image, factor);
        let out = lane
            .enlarge(spec, &work.runtime, target, image)
            .map_err(OpError::from)?;
        Ok((
            out.image,
            format!("{} x{} on {}", spec.name, out.scale, out.provider),
        ))
    };
    let upscaler: Option<&normalise::Upscaler<'_>> = work
        .recipe
        .upscale_model
        .as_ref()
        .map(|_| &upscale as &normalise::Upscaler<'_>);
    let id = record_id(work.job_id);
    let staged = normalise::stage(
        &original,
        &id,
        options,
        &work.limits,
        &work.images_dir,
        upscaler,
    )?;

    let (record, admitted) = with_set(&work.images_dir, &work.metadata_dir, |index| {
        index.admit(staged, options, &work.metadata_dir)
    })?;
    let Some(admitted) = admitted else {
        return Err(OpError::Rejected {
            path: original.display().to_string(),
            reason: record.reasons.join("; "),
            details: Box::new(serde_json::json!({
                "scores": record.scores,
                "duplicate_of": record.duplicate_of,
                "operations": record.operations,
            })),
        });
    };
    // The image, its caption and sidecar are durable: now the caption dropped with the
    // source follows it, and the original is filed.
    if let (Some(target), Some(_)) = (&work.input.move_to, &record.caption) {
        let caption = original.with_extension("txt");
        if caption.is_file() {
            let to = Path::new(target).with_extension("txt");
            if let Err(e) = crate::daemon::trees::move_into_place(&caption, &to) {
                tracing::warn!(file = %caption.display(), error = %e, "cannot file the caption beside the original");
            }
        }
    }
    let original_now_at = work.input.file(original)?;
    Ok(Normalised {
        record,
        output: admitted.image,
        original_now_at,
    })
}
