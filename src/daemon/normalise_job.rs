//! The `normalise` recipe as a worker thread runs it: stage the image (decode, fit, score;
//! a too-small source goes through the rule's upscale model on the model lane), then, holding
//! the set's lock, admit it (near-duplicate check, naming, durable writes), log the verdict
//! and rebuild the set's reports; only then is the original (and a caption `.txt` dropped
//! with it) filed. A rejected image comes back as [`OpError::Rejected`], which the service
//! sets aside in `failed/<rule>/` with the reasons and scores in its error sidecar.

use crate::daemon::config::{Normalise, RuntimeSettings};
use crate::daemon::model_lane::ModelLane;
use crate::daemon::round_trip::{file_original, first_existing};
use crate::daemon::trees::ClaimedVersion;
use crate::io::decode::DecodeLimits;
use crate::ops::normalise::{self, DatasetIndex, Record};
use crate::ops::{dataset_report, OpError};
use image::DynamicImage;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// Everything a normalise job needs, decided by the main thread.
#[derive(Debug, Clone)]
pub struct NormaliseWork {
    pub job_id: i64,
    pub recipe: Normalise,
    pub runtime: RuntimeSettings,
    pub limits: DecodeLimits,
    pub original_candidates: Vec<PathBuf>,
    /// The version of the original this job claimed.
    pub original_version: ClaimedVersion,
    pub images_dir: PathBuf,
    pub metadata_dir: PathBuf,
    pub move_original_to: Option<PathBuf>,
}

/// What a normalise job did.
#[derive(Debug, Clone)]
pub struct Normalised {
    pub record: Record,
    pub output: PathBuf,
    pub original_now_at: PathBuf,
}

/// The sets the daemon writes, one index each, loaded from the sidecars on first use.
fn sets() -> &'static Mutex<HashMap<PathBuf, DatasetIndex>> {
    static SETS: OnceLock<Mutex<HashMap<PathBuf, DatasetIndex>>> = OnceLock::new();
    SETS.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The id a job's entries carry in the set (a re-run after a crash finds its own entry).
pub fn record_id(job_id: i64) -> String {
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
pub fn log_set_aside(
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

pub fn run(work: &NormaliseWork, lane: &ModelLane) -> Result<Normalised, OpError> {
    let original = first_existing(&work.original_candidates, "original")?;
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
    if let (Some(target), Some(_)) = (&work.move_original_to, &record.caption) {
        let caption = original.with_extension("txt");
        if caption.is_file() {
            let to = Path::new(target).with_extension("txt");
            if let Err(e) = crate::daemon::trees::move_into_place(&caption, &to) {
                tracing::warn!(file = %caption.display(), error = %e, "cannot file the caption beside the original");
            }
        }
    }
    let original_now_at = file_original(
        original,
        work.move_original_to.as_deref(),
        work.original_version,
    )?;
    Ok(Normalised {
        record,
        output: admitted.image,
        original_now_at,
    })
}
