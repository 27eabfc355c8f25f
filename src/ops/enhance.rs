//! `enhance`: an image-to-image ONNX model applied at the image's own size, either patch-wise
//! at full resolution (`via full`, with the upscale recipe's seam-free tiling) or on a proxy
//! whose change comes back through the delta merge (`via proxy`, the guided merge by
//! default) for models trained at low resolution or too slow for the full image.
//!
//! A model that also enlarges (any super-resolution network) is brought back to the input's
//! size with Lanczos3, so an x2 restoration model works as an enhancer at the same size.

use super::upscale::{recommended_context, run_pipeline, upscale_image, UpscaleOptions};
use super::{sibling_path, OpError};
use crate::io::decode::DecodeLimits;
use crate::io::onnx::Model;
use std::path::{Path, PathBuf};
use std::time::Instant;

pub use super::model_pipeline::{enhance_image, Via};

/// Where `enhance` writes without an explicit output: `{stem}_enhanced_{model}.png` beside
/// the input.
pub fn default_output(input: &Path, model: &Model) -> PathBuf {
    sibling_path(input, None, &format!("_enhanced_{}.png", model.name))
}

/// What an enhance wrote.
#[derive(Debug, Clone)]
pub struct EnhanceOutput {
    pub output_path: PathBuf,
    pub model: String,
    pub scale: u32,
    pub provider: String,
    pub width: u32,
    pub height: u32,
    pub seconds: f64,
}

/// Enhances the file `input` with `model` and writes the result atomically (default
/// `{stem}_enhanced_{model}.png` beside it).
pub fn enhance(
    input: &Path,
    model: &mut Model,
    via: &Via,
    options: &UpscaleOptions,
    limits: &DecodeLimits,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<EnhanceOutput, OpError> {
    let started = Instant::now();
    let output_path = options
        .output
        .clone()
        .unwrap_or_else(|| default_output(input, model));
    let context = options
        .context
        .unwrap_or_else(|| recommended_context(&model.name));
    let tile = model
        .tile_side(options.tile, options.memory_budget, context)
        .map_err(OpError::from)?;
    let result = run_pipeline(
        input,
        &output_path,
        limits,
        options,
        Some(*via),
        &mut |image| upscale_image(image, model, tile, context, progress).map_err(OpError::from),
    )?;
    let seconds = started.elapsed().as_secs_f64();
    tracing::info!(
        input = %input.display(),
        output = %output_path.display(),
        model = %model.name,
        via = via.name(),
        seconds = format!("{seconds:.3}"),
        "enhanced"
    );
    Ok(EnhanceOutput {
        output_path,
        model: model.name.clone(),
        scale: model.scale,
        provider: model.provider.clone(),
        width: result.width,
        height: result.height,
        seconds,
    })
}
