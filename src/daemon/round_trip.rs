//! The `split-to-proxy` recipe and its merge-when-processed-appears step, as the worker
//! threads run them. Each function takes everything it needs (paths decided and recorded by
//! the main thread beforehand) so that running it twice, after a crash, writes the same
//! outputs again rather than new ones.

use crate::core::signature::Signature;
use crate::daemon::config::SplitToProxy;
use crate::daemon::pairing;
use crate::daemon::trees::{file_source, write_json_atomic, ClaimedVersion};
use crate::io::atomic;
use crate::io::decode::DecodeLimits;
use crate::io::metadata::ProxyMetadata;
use crate::io::names;
use crate::ops::delta::{split_with_processed, DeltaOptions};
use crate::ops::merge::{merge, MergeOptions};
use crate::ops::split::{build_proxy, load_source, write_proxy_file};
use crate::ops::OpError;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// PNG text keyword carrying the job id in every proxy.
pub const JOB_KEYWORD: &str = "darkroom:job";

/// A proxy written to `exchange_out`.
#[derive(Debug, Clone)]
pub struct ProxyWritten {
    pub proxy_path: PathBuf,
    pub width: u32,
    pub height: u32,
    pub signature: Signature,
    pub metadata: ProxyMetadata,
    pub seconds: f64,
}

/// Splits `original` into its proxy in `exchange_out`, named after the job.
pub fn write_proxy(
    job_id: i64,
    original: &Path,
    options: &SplitToProxy,
    limits: &DecodeLimits,
) -> Result<ProxyWritten, OpError> {
    let started = Instant::now();
    let built = build_proxy(
        original,
        load_source(original, options.size, limits)?,
        options.size,
    )?;
    let proxy_stem = pairing::proxy_stem(&names::stem_of(original), job_id);
    let proxy_path = options.exchange_out.join(format!("{proxy_stem}.png"));
    let g = built.metadata.geometry;
    std::fs::create_dir_all(&options.exchange_out).map_err(|e| OpError::write(&proxy_path, e))?;
    write_proxy_file(
        &built,
        &proxy_path,
        &[(JOB_KEYWORD.to_string(), job_id.to_string())],
    )?;
    Ok(ProxyWritten {
        proxy_path,
        width: g.canvas_width,
        height: g.canvas_height,
        signature: Signature::of(&built.proxy),
        metadata: built.metadata,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The job id a returned PNG carries in its `darkroom:job` text chunk, when the tool kept it.
pub fn job_id_in_png(bytes: &[u8]) -> Option<i64> {
    let reader = png::Decoder::new(std::io::Cursor::new(bytes))
        .read_info()
        .ok()?;
    let info = reader.info();
    info.utf8_text
        .iter()
        .find(|c| c.keyword == JOB_KEYWORD)
        .and_then(|c| c.get_text().ok())
        .or_else(|| {
            info.uncompressed_latin1_text
                .iter()
                .find(|c| c.keyword == JOB_KEYWORD)
                .map(|c| c.text.clone())
        })
        .and_then(|t| t.trim().parse().ok())
}

/// Everything a merge needs, decided by the main thread.
#[derive(Debug, Clone)]
pub struct MergeWork {
    pub options: SplitToProxy,
    pub limits: DecodeLimits,
    /// Where the original may be: where the journal last saw it, then where a move puts it.
    pub original_candidates: Vec<PathBuf>,
    /// The version of the original its split job claimed.
    pub original_version: ClaimedVersion,
    /// Where the returned file may be, likewise.
    pub returned_candidates: Vec<PathBuf>,
    pub returned_version: ClaimedVersion,
    pub output: PathBuf,
    pub metadata_path: PathBuf,
    /// Private scratch folder for the deltas.
    pub work_dir: PathBuf,
    /// Where the original goes once the output is durable (`None`: it stays).
    pub move_original_to: Option<PathBuf>,
    pub move_returned_to: PathBuf,
    /// Provenance gathered so far (source, proxy, pairing); timings are added here.
    pub provenance: serde_json::Value,
}

/// What a merge did.
#[derive(Debug, Clone)]
pub struct Merged {
    pub output: PathBuf,
    pub original_now_at: PathBuf,
    pub returned_now_at: PathBuf,
    pub provenance: serde_json::Value,
}

pub fn first_existing(candidates: &[PathBuf], what: &str) -> Result<PathBuf, OpError> {
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| {
            OpError::Usage(format!(
                "the {what} is gone (looked at {})",
                candidates
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
}

/// Files an original whose outputs are durable: moves it to `destination` (durably), or
/// leaves it where it is when the rule keeps originals or when it is no longer the version
/// that was claimed. Returns where it now is.
pub fn file_original(
    original: PathBuf,
    destination: Option<&Path>,
    claimed: ClaimedVersion,
) -> Result<PathBuf, OpError> {
    match destination {
        Some(target) => {
            file_source(&original, target, claimed).map_err(|e| OpError::write(target, e))
        }
        None => Ok(original),
    }
}

/// Computes the delta(s) of the returned proxy, merges them into the original at full
/// resolution, writes the provenance, then files the original and the returned proxy.
pub fn merge_return(work: &MergeWork) -> Result<Merged, OpError> {
    let original = first_existing(&work.original_candidates, "original")?;
    let returned = first_existing(&work.returned_candidates, "returned image")?;
    std::fs::create_dir_all(&work.work_dir).map_err(|e| OpError::write(&work.work_dir, e))?;
    let started = Instant::now();
    let delta_path = work.work_dir.join("delta.png");
    let deltas = split_with_processed(
        &original,
        &returned,
        work.options.size,
        &DeltaOptions {
            refine: work.options.refine,
            delta_path: Some(delta_path.clone()),
            depth: work.options.delta_depth,
            proxy_path: None,
        },
        &work.limits,
    )?;
    let delta_seconds = started.elapsed().as_secs_f64();
    let merge_started = Instant::now();
    for dir in [
        atomic::parent_dir(&work.output),
        atomic::parent_dir(&work.metadata_path),
    ] {
        std::fs::create_dir_all(&dir).map_err(|e| OpError::write(&dir, e))?;
    }
    let merged = merge(
        &original,
        &deltas.delta_path,
        &MergeOptions {
            refined_delta: deltas.refined_path.clone(),
            upscale_method: work.options.upscale_method.clone(),
            refined_upscale_method: None,
            output: Some(work.output.clone()),
            command_timeout: work.options.command_timeout,
            force: false,
            method: work.options.merge_method,
            proxy: Some(deltas.proxy),
        },
        &work.limits,
        &|_, _| {},
    )?;
    let merge_seconds = merge_started.elapsed().as_secs_f64();

    let mut provenance = work.provenance.clone();
    if let Some(object) = provenance.as_object_mut() {
        object.insert(
            "output".into(),
            serde_json::json!({
                "path": merged.output_path,
                "geometry_source": merged.geometry_source,
                "merge_method": work.options.merge_method.name(),
            }),
        );
        object.insert(
            "timings_seconds".into(),
            serde_json::json!({ "delta": delta_seconds, "merge": merge_seconds }),
        );
    }
    write_json_atomic(&work.metadata_path, &provenance)
        .map_err(|e| OpError::write(&work.metadata_path, e))?;

    // The output and its provenance are durable: only now do the inputs move.
    let original_now_at = file_original(
        original,
        work.move_original_to.as_deref(),
        work.original_version,
    )?;
    let returned_now_at = file_source(&returned, &work.move_returned_to, work.returned_version)
        .map_err(|e| OpError::write(&work.move_returned_to, e))?;
    let _ = std::fs::remove_dir_all(&work.work_dir);
    Ok(Merged {
        output: merged.output_path,
        original_now_at,
        returned_now_at,
        provenance,
    })
}
