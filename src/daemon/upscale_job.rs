//! The `upscale` and `enhance` recipes as a worker thread runs them: decode, hand the image
//! (or, for `enhance via proxy`, its proxy) to the model lane, bring an enhance back to the
//! input's size (merging a proxy's change), encode, write the output and its provenance
//! durably, then file the original.

use crate::core::corrections::after_model;
use crate::daemon::config::{RuntimeSettings, Upscale};
use crate::daemon::model_lane::ModelLane;
use crate::daemon::round_trip::{file_original, first_existing};
use crate::daemon::trees::write_json_atomic;
use crate::daemon::trees::ClaimedVersion;
use crate::io::atomic;
use crate::io::decode::{self, DecodeLimits};
use crate::io::encode::OutputFormat;
use crate::ops::enhance::{enhance_image, Via};
use crate::ops::{write_image, OpError};
use image::DynamicImage;
use std::path::PathBuf;
use std::time::Instant;

/// Everything an upscale job needs, decided by the main thread.
#[derive(Debug, Clone)]
pub struct UpscaleWork {
    pub recipe: Upscale,
    pub runtime: RuntimeSettings,
    pub limits: DecodeLimits,
    pub original_candidates: Vec<PathBuf>,
    /// The version of the original this job claimed.
    pub original_version: ClaimedVersion,
    pub output: PathBuf,
    pub metadata_path: PathBuf,
    pub move_original_to: Option<PathBuf>,
    pub provenance: serde_json::Value,
}

/// What an upscale job did.
#[derive(Debug, Clone)]
pub struct Upscaled {
    pub output: PathBuf,
    pub original_now_at: PathBuf,
    pub provenance: serde_json::Value,
}

pub fn run(work: &UpscaleWork, lane: &ModelLane) -> Result<Upscaled, OpError> {
    let original = first_existing(&work.original_candidates, "original")?;
    let started = Instant::now();
    let mut loaded =
        decode::load(&original, &work.limits).map_err(|e| OpError::decode(&original, e))?;
    let decode_seconds = started.elapsed().as_secs_f64();
    let (width, height) = (loaded.image.width(), loaded.image.height());
    // Corrections run here on the worker, leaving the model lane to the model.
    let input = work.recipe.pre.apply(std::mem::take(&mut loaded.image));
    // An ONNX denoiser runs on the lane too, at the input's size, before the main model.
    let input = match &work.recipe.denoise_model {
        None => input,
        Some(denoiser) => enhance_image(input, &Via::Full, &mut |image| {
            lane.upscale(denoiser, &work.runtime, (1, None), image.clone())
                .map(|out| out.image)
                .map_err(OpError::from)
        })?,
    };
    let run_model = |image: DynamicImage| {
        lane.upscale(
            &work.recipe.model,
            &work.runtime,
            (work.recipe.passes, work.recipe.target),
            image,
        )
        .map_err(OpError::from)
    };
    let mut result = match &work.recipe.enhance {
        None => run_model(input)?,
        Some(via) => {
            // The merge of `via proxy` runs here on the worker; only the model is on the lane.
            let mut lane_result = None;
            let image = enhance_image(input, via, &mut |image| {
                let mut out = run_model(image.clone())?;
                let image = std::mem::replace(&mut out.image, DynamicImage::new_luma8(0, 0));
                lane_result = Some(out);
                Ok(image)
            })?;
            let mut out = lane_result.expect("the model ran");
            out.image = image;
            out
        }
    };
    let encode_started = Instant::now();
    // Post filters run here, on the worker, leaving the model lane free for the next job.
    let image = std::mem::replace(&mut result.image, DynamicImage::new_luma8(0, 0));
    result.image = after_model(image, work.recipe.smooth, work.recipe.sharpen);
    let format =
        OutputFormat::from_path(&work.output).map_err(|e| OpError::Usage(e.to_string()))?;
    for dir in [
        atomic::parent_dir(&work.output),
        atomic::parent_dir(&work.metadata_path),
    ] {
        std::fs::create_dir_all(&dir).map_err(|e| OpError::write(&dir, e))?;
    }
    write_image(&work.output, &result.image, format, &loaded)?;
    let encode_seconds = encode_started.elapsed().as_secs_f64();

    let mut provenance = work.provenance.clone();
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
                "batch": work.recipe.model.batch,
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
                "width": result.image.width(),
                "height": result.image.height(),
                "input_width": width,
                "input_height": height,
            }),
        );
        object.insert(
            "timings_seconds".into(),
            serde_json::json!({
                "decode": decode_seconds,
                "model": result.seconds,
                "encode_and_write": encode_seconds,
            }),
        );
    }
    write_json_atomic(&work.metadata_path, &provenance)
        .map_err(|e| OpError::write(&work.metadata_path, e))?;
    // The output and its provenance are durable: only now does the original move.
    let original_now_at = file_original(
        original,
        work.move_original_to.as_deref(),
        work.original_version,
    )?;
    Ok(Upscaled {
        output: work.output.clone(),
        original_now_at,
        provenance,
    })
}
