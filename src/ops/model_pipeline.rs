//! The one model pipeline: decode, corrections before the model, an optional denoising
//! model at the input's size, the model (on the whole image, or for an enhance on a proxy
//! whose change is merged back), corrections after it, then encoding with the input's
//! metadata and a durable write. `darkroom upscale`, `darkroom enhance` and the daemon's
//! upscale and enhance recipes all run through [`run`]; they differ only in how a model is
//! run (a model loaded in-process, or the daemon's model lane), which they pass in.
//!
//! Errors are classified once, by `OpError`: an undecodable or over-limit input is
//! permanent; a missing runtime, a model that does not load or an inference failure
//! (`OpError::Model`) is transient.

use super::{write_image, OpError};
use crate::core::corrections::{after_model, PreFilters, Smoothing};
use crate::core::delta::{self, DeltaDepth};
use crate::core::filters::Unsharp;
use crate::core::geometry::{ProxyGeometry, Target};
use crate::core::merge::{merge_image, DeltaLayer};
use crate::core::proxy::make_proxy;
use crate::core::resample::resize_lanczos3;
use crate::io::decode::{self, DecodeLimits};
use crate::io::encode::OutputFormat;
use crate::ops::merge::MergeMethod;
use image::{DynamicImage, GenericImage};
use std::path::Path;
use std::time::Instant;

/// Where an enhance runs its model.
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

/// What happens around the model.
#[derive(Debug, Clone, Default)]
pub struct ModelSteps {
    /// Corrections before the model (white balance, exposure, deblock, denoise).
    pub pre: PreFilters,
    /// Median or bilateral smoothing after the model, before any sharpening.
    pub smooth: Option<Smoothing>,
    /// Unsharp mask after the model.
    pub sharpen: Option<Unsharp>,
    /// `None`: the model's output is the result (upscale). `Some`: the result keeps the
    /// input's size (enhance), the model running where `Via` says.
    pub enhance: Option<Via>,
}

/// Runs a model on an image (tiled, one or more passes: the caller's business).
pub type RunModel<'a> = dyn FnMut(&DynamicImage) -> Result<DynamicImage, OpError> + 'a;

/// What the pipeline did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PipelineOutput {
    pub input_width: u32,
    pub input_height: u32,
    pub width: u32,
    pub height: u32,
    pub decode_seconds: f64,
    pub model_seconds: f64,
    pub encode_seconds: f64,
}

/// Runs `model` over the file `input` with `steps` around it and writes `output` (its
/// extension picks the format) atomically, with the input's ICC profile, EXIF and XMP.
/// `denoise`, when given, runs first at the input's size (an output it enlarges is brought
/// back to that size).
pub fn run(
    input: &Path,
    output: &Path,
    limits: &DecodeLimits,
    steps: &ModelSteps,
    denoise: Option<&mut RunModel<'_>>,
    model: &mut RunModel<'_>,
) -> Result<PipelineOutput, OpError> {
    let format = OutputFormat::from_path(output).map_err(|e| OpError::Usage(e.to_string()))?;
    let started = Instant::now();
    let mut loaded = decode::load(input, limits).map_err(|e| OpError::decode(input, e))?;
    let decode_seconds = started.elapsed().as_secs_f64();
    let (input_width, input_height) = (loaded.image.width(), loaded.image.height());

    let model_started = Instant::now();
    let mut image = steps.pre.apply(std::mem::take(&mut loaded.image));
    if let Some(denoise) = denoise {
        image = back_to(denoise(&image)?, input_width, input_height)?;
    }
    let image = match &steps.enhance {
        None => model(&image)?,
        Some(via) => enhance_image(image, via, model)?,
    };
    let model_seconds = model_started.elapsed().as_secs_f64();

    let encode_started = Instant::now();
    let image = after_model(image, steps.smooth, steps.sharpen);
    if let Some(parent) = output.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| OpError::write(parent, e))?;
    }
    write_image(output, &image, format, &loaded)?;
    Ok(PipelineOutput {
        input_width,
        input_height,
        width: image.width(),
        height: image.height(),
        decode_seconds,
        model_seconds,
        encode_seconds: encode_started.elapsed().as_secs_f64(),
    })
}

/// Resizes a model's output back to `width x height` when the model enlarged it.
fn back_to(image: DynamicImage, width: u32, height: u32) -> Result<DynamicImage, OpError> {
    if (image.width(), image.height()) == (width, height) {
        return Ok(image);
    }
    resize_lanczos3(&image, width, height).map_err(|e| OpError::Internal(e.to_string()))
}

/// Enhances a decoded image; `run` runs the model on an image (tiled). Pure apart from
/// `run`. A model that enlarges is brought back to the input's size.
pub fn enhance_image(
    image: DynamicImage,
    via: &Via,
    run: &mut RunModel<'_>,
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
