//! `enhance`: an image-to-image ONNX model applied at the image's own size, either patch-wise
//! at full resolution (`via full`, with the upscale recipe's seam-free tiling) or on a proxy
//! whose change comes back through the delta merge (`via proxy`, the guided merge by
//! default) for models trained at low resolution or too slow for the full image.
//!
//! A model that also enlarges (any super-resolution network) is brought back to the input's
//! size with Lanczos3, so an x2 restoration model works as an enhancer at the same size.

use super::upscale::{recommended_context, upscale_image, UpscaleOptions};
use super::{sibling_path, write_image, OpError};
use crate::core::corrections::after_model;
use crate::core::delta::{self, DeltaDepth};
use crate::core::geometry::{ProxyGeometry, Target};
use crate::core::merge::{merge_image, DeltaLayer};
use crate::core::proxy::make_proxy;
use crate::core::resample::resize_lanczos3;
use crate::io::decode::{self, DecodeLimits};
use crate::io::encode::OutputFormat;
use crate::io::onnx::Model;
use crate::ops::merge::MergeMethod;
use image::{DynamicImage, GenericImage};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Where the model runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Via {
    /// On the whole image, tile by tile.
    Full,
    /// On a proxy of `size`; the change is merged back with `method`.
    Proxy { size: Target, method: MergeMethod },
}

impl Via {
    pub fn name(&self) -> &'static str {
        match self {
            Via::Full => "full",
            Via::Proxy { .. } => "proxy",
        }
    }

    /// Provenance: where the model ran and how its change came back.
    pub fn describe(&self) -> serde_json::Value {
        match self {
            Via::Full => serde_json::json!({ "via": "full" }),
            Via::Proxy { size, method } => serde_json::json!({
                "via": "proxy",
                "size": size.to_string(),
                "merge_method": method.name(),
            }),
        }
    }
}

/// Resizes a model's output back to `width x height` when the model enlarged it.
fn back_to(image: DynamicImage, width: u32, height: u32) -> Result<DynamicImage, OpError> {
    if (image.width(), image.height()) == (width, height) {
        return Ok(image);
    }
    resize_lanczos3(&image, width, height).map_err(|e| OpError::Internal(e.to_string()))
}

/// Where `enhance` writes without an explicit output: `{stem}_enhanced_{model}.png` beside
/// the input.
pub fn default_output(input: &Path, model: &Model) -> PathBuf {
    sibling_path(input, None, &format!("_enhanced_{}.png", model.name))
}

/// Enhances a decoded image; `run` runs the model on an image (tiled). Pure apart from `run`.
pub fn enhance_image(
    image: DynamicImage,
    via: &Via,
    run: &mut dyn FnMut(&DynamicImage) -> Result<DynamicImage, OpError>,
) -> Result<DynamicImage, OpError> {
    let (width, height) = (image.width(), image.height());
    match via {
        Via::Full => {
            let out = run(&image)?;
            back_to(out, width, height)
        }
        Via::Proxy { size, method } => {
            let g = ProxyGeometry::plan(width, height, *size);
            let proxy = make_proxy(&image, &g).map_err(|e| OpError::Internal(e.to_string()))?;
            let area = g.area();
            // The model sees only the picture, never the padding.
            let inside = proxy.crop_imm(area.x, area.y, area.width, area.height);
            let returned = back_to(run(&inside)?, area.width, area.height)?;
            let mut processed = proxy.clone();
            processed
                .copy_from(&returned, area.x, area.y)
                .map_err(|e| OpError::Internal(e.to_string()))?;
            // A 16-bit delta never saturates, so the model's change survives whole.
            let deltas = delta::compute(&proxy, &processed, DeltaDepth::Sixteen, false)
                .map_err(|e| OpError::Internal(e.to_string()))?;
            let layers = [DeltaLayer {
                image: deltas.main,
                area,
            }];
            let guided = match method {
                MergeMethod::Guided(params) => Some(params),
                MergeMethod::Additive => None,
            };
            merge_image(image, &proxy, &layers, guided)
                .map_err(|e| OpError::Internal(e.to_string()))
        }
    }
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
    let mut loaded = decode::load(input, limits).map_err(|e| OpError::decode(input, e))?;
    let output_path = options
        .output
        .clone()
        .unwrap_or_else(|| default_output(input, model));
    let format =
        OutputFormat::from_path(&output_path).map_err(|e| OpError::Usage(e.to_string()))?;
    let context = options
        .context
        .unwrap_or_else(|| recommended_context(&model.name));
    let tile = model
        .tile_side(options.tile, options.memory_budget, context)
        .map_err(OpError::from)?;
    let image = super::upscale::apply_denoise_model(
        options.pre.apply(std::mem::take(&mut loaded.image)),
        options,
    )?;
    let result = enhance_image(image, via, &mut |image| {
        upscale_image(image, model, tile, context, progress).map_err(OpError::from)
    })?;
    let result = after_model(result, options.smooth, options.sharpen);
    write_image(&output_path, &result, format, &loaded)?;
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
        width: result.width(),
        height: result.height(),
        seconds,
    })
}
