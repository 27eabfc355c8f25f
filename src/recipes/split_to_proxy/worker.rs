//! split-to-proxy's work as the worker threads run it: the split, and the merge of a return.
//! Each function takes everything it needs (paths decided and recorded by the main thread
//! beforehand) so that running it twice, after a crash, writes the same outputs again rather
//! than new ones.
//!
//! A merge works in memory: the job knows its proxy's geometry, so the delta is computed and
//! applied without files in between, and the original is decoded once at full resolution.
//! The proxy the delta is taken against is the one the tool was given: the file in
//! `exchange_out` when it is still byte for byte what the split wrote, else rebuilt from the
//! original exactly as the split made it.

use super::SplitToProxy;
use crate::core::delta::{self, normalise_delta_layout};
use crate::core::geometry::ProxyGeometry;
use crate::core::signature::Signature;
use crate::daemon::pairing;
use crate::daemon::trees::{file_source, write_json_atomic, ClaimedVersion};
use crate::io::decode::{self, DecodeLimits};
use crate::io::metadata::ProxyMetadata;
use crate::io::{atomic, names};
use crate::ops::merge::{layer_for, merge_layers};
use crate::ops::split::{build_proxy, load_source, write_proxy_file};
use crate::ops::OpError;
use crate::recipes::InputPlace;
use image::DynamicImage;
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
    /// SHA-256 of the proxy file as written.
    pub sha256: String,
    pub seconds: f64,
    /// Decode, resample and encode-and-write times.
    pub stages: [(&'static str, f64); 3],
}

/// Splits `original` into its proxy in `exchange_out`, named after the job.
pub fn write_proxy(
    job_id: i64,
    original: &Path,
    options: &SplitToProxy,
    limits: &DecodeLimits,
) -> Result<ProxyWritten, OpError> {
    let started = Instant::now();
    let source = load_source(original, options.size, limits)?;
    let decoded = started.elapsed().as_secs_f64();
    let built = build_proxy(original, source, options.size)?;
    let resampled = started.elapsed().as_secs_f64();
    let proxy_stem = pairing::proxy_stem(&names::stem_of(original), job_id);
    let proxy_path = options.exchange_out.join(format!("{proxy_stem}.png"));
    let g = built.metadata.geometry;
    std::fs::create_dir_all(&options.exchange_out).map_err(|e| OpError::write(&proxy_path, e))?;
    let sha256 = write_proxy_file(
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
        sha256,
        seconds: started.elapsed().as_secs_f64(),
        stages: [
            ("decode", decoded),
            ("resample", resampled - decoded),
            (
                "encode_and_write",
                started.elapsed().as_secs_f64() - resampled,
            ),
        ],
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

/// The proxy a split wrote, as its job recorded it.
#[derive(Debug, Clone)]
pub struct WrittenProxy {
    pub path: PathBuf,
    pub sha256: String,
    pub geometry: ProxyGeometry,
}

/// Everything a merge needs, decided by the main thread.
#[derive(Debug, Clone)]
pub struct MergeWork {
    pub options: SplitToProxy,
    /// How models run (for a rule whose `upscale_method` is a model).
    pub runtime: crate::daemon::settings::RuntimeSettings,
    pub limits: DecodeLimits,
    /// Where the original is, and where it goes once the output is durable.
    pub original: InputPlace,
    /// The original's content hash when it was claimed.
    pub original_sha256: String,
    /// The proxy as the split recorded it (`None` for a split recorded without its hash).
    pub proxy: Option<WrittenProxy>,
    /// Where the returned file may be: where the journal last saw it, then where it goes.
    pub returned_candidates: Vec<PathBuf>,
    pub returned_version: ClaimedVersion,
    pub output: PathBuf,
    pub metadata_path: PathBuf,
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

/// The proxy the tool was given and its geometry: the split's file when it is unchanged,
/// else rebuilt from the original as the split made it. Says which.
fn proxy_for_merge(
    work: &MergeWork,
    original: &Path,
) -> Result<(DynamicImage, ProxyGeometry, &'static str), OpError> {
    if let Some(written) = &work.proxy {
        // `load` hashes the bytes it decodes: one read tells whether it is the split's file.
        if let Ok(loaded) = decode::load(&written.path, &work.limits) {
            let g = written.geometry;
            if loaded.sha256 == written.sha256
                && (loaded.image.width(), loaded.image.height())
                    == (g.canvas_width, g.canvas_height)
            {
                return Ok((loaded.image, g, "exchange_out"));
            }
        }
    }
    let built = build_proxy(
        original,
        load_source(original, work.options.size, &work.limits)?,
        work.options.size,
    )?;
    Ok((built.proxy, built.metadata.geometry, "rebuilt"))
}

/// Computes the delta(s) of the returned proxy, merges them into the original at full
/// resolution, writes the provenance, then files the original and the returned proxy.
pub fn merge_return(work: &MergeWork, lane: &crate::recipes::ModelLane) -> Result<Merged, OpError> {
    let original_path = work.original.find()?;
    let returned = crate::recipes::first_existing(&work.returned_candidates, "returned image")?;
    let started = Instant::now();
    let (proxy, geometry, proxy_source) = proxy_for_merge(work, &original_path)?;
    let processed =
        decode::load(&returned, &work.limits).map_err(|e| OpError::decode(&returned, e))?;
    let deltas = delta::compute(
        &proxy,
        &processed.image,
        work.options.delta_depth,
        work.options.refine,
    )
    .map_err(|e| OpError::mismatch(&returned, e))?;
    drop(processed);
    let delta_seconds = started.elapsed().as_secs_f64();

    let merge_started = Instant::now();
    let original = decode::load(&original_path, &work.limits)
        .map_err(|e| OpError::decode(&original_path, e))?;
    if original.sha256 != work.original_sha256 {
        return Err(OpError::mismatch(
            &original_path,
            "the original changed after its proxy was made (its content hash differs); its return cannot be merged into it",
        ));
    }
    let decode_seconds = merge_started.elapsed().as_secs_f64();
    let method = &work.options.upscale_method;
    let mut layers = Vec::with_capacity(2);
    for delta in std::iter::once(deltas.main).chain(deltas.refined) {
        layers.push(layer_for(
            normalise_delta_layout(&delta),
            &returned,
            &geometry,
            method,
            work.options.command_timeout,
            &work.limits,
        )?);
    }
    for dir in [
        atomic::parent_dir(&work.output),
        atomic::parent_dir(&work.metadata_path),
    ] {
        std::fs::create_dir_all(&dir).map_err(|e| OpError::write(&dir, e))?;
    }
    // New content goes to the model lane like any model run (the one GPU lane).
    let enlarge = |crop: DynamicImage, target: (u32, u32)| {
        let spec = work
            .options
            .content_model
            .as_ref()
            .expect("only called with a model");
        lane.upscale(spec, &work.runtime, (1, Some(target)), crop)
            .map(|result| result.image)
            .map_err(OpError::from)
    };
    merge_layers(
        original,
        &layers,
        &geometry,
        work.options.merge_method,
        Some(&proxy),
        work.options
            .content_model
            .is_some()
            .then_some(&enlarge as crate::core::merge::Enlarge<'_, OpError>),
        &work.output,
        &returned,
        &|_, _| {},
    )?;
    let merge_seconds = merge_started.elapsed().as_secs_f64() - decode_seconds;

    let mut provenance = work.provenance.clone();
    crate::recipes::note_source_use(&mut provenance, &original_path);
    if let Some(object) = provenance.as_object_mut() {
        object.insert(
            "output".into(),
            serde_json::json!({
                "path": work.output,
                "geometry_source": "journal",
                "proxy_source": proxy_source,
                "merge_method": work.options.merge_method.name(),
            }),
        );
        object.insert(
            "timings_seconds".into(),
            serde_json::json!({
                "delta": delta_seconds,
                "decode_original": decode_seconds,
                "merge": merge_seconds,
            }),
        );
    }
    write_json_atomic(&work.metadata_path, &provenance)
        .map_err(|e| OpError::write(&work.metadata_path, e))?;

    // The output and its provenance are durable: only now do the inputs move.
    let original_now_at = work.original.file(original_path)?;
    let returned_now_at = file_source(&returned, &work.move_returned_to, work.returned_version)
        .map_err(|e| OpError::write(&work.move_returned_to, e))?;
    Ok(Merged {
        output: work.output.clone(),
        original_now_at,
        returned_now_at,
        provenance,
    })
}
