//! `upscale`: super-resolution of a whole image with an ONNX model, tile by tile.
//!
//! Colour goes through the model as float RGB (16-bit input is not truncated); alpha goes
//! through the model too, as a grey image, after the colour of fully transparent pixels has
//! been bled in from their visible neighbours, so no dark halo grows at transparent edges.
//! Grey input stays grey, 16-bit stays 16-bit, the ICC profile is kept, the orientation is
//! applied (the output is upright).

use super::model_pipeline::{self, ModelSteps};
use super::{sibling_path, OpError};
use crate::core::tiling::{bleed_into_transparent, Planar};
use crate::io::decode::DecodeLimits;
use crate::io::onnx::{self, Model, ModelError};
use image::{DynamicImage, ImageBuffer, Luma, LumaA, Rgb, Rgba};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Options of an upscale. Every field documents its default.
#[derive(Debug, Clone, Default)]
pub struct UpscaleOptions {
    /// Output path; its extension picks the format. Default `{stem}_x{scale}_{model}.png`.
    pub output: Option<PathBuf>,
    /// Tile size in input pixels (0 runs the whole image at once), or `auto`: the largest
    /// that fits `memory_budget`. Default 256.
    pub tile: crate::core::tiling::TileSize,
    /// Memory one model run may use, for `tile = auto`. Default: see
    /// [`onnx::default_memory_budget`].
    pub memory_budget: Option<u64>,
    /// Context pixels on each side of a tile. Default: the model's recommended context.
    pub context: Option<u32>,
    /// Path of libonnxruntime. Default: found by [`onnx::locate`].
    pub runtime: Option<PathBuf>,
    /// Intra-op threads. Default: the number of cores.
    pub threads: usize,
    /// Model passes (x2 twice = x4). Default 1; ignored when `target` is set.
    pub passes: u32,
    /// Exact output size: enough passes to reach it, then Lanczos3 to it. Default none.
    pub target: Option<(u32, u32)>,
    /// Unsharp mask after the model. Default none.
    pub sharpen: Option<crate::core::filters::Unsharp>,
    /// Corrections before the model (white balance, exposure, deblock, denoise). Default none.
    pub pre: crate::core::corrections::PreFilters,
    /// A model run at the input's size after `pre` and before the main model (an ONNX
    /// denoiser; one that enlarges is brought back to the input's size). Default none.
    pub denoise_model: Option<PathBuf>,
    /// Median or bilateral smoothing after the model, before any sharpening. Default none.
    pub smooth: Option<crate::core::corrections::Smoothing>,
    /// Execution provider. Default auto (CUDA when available, else CPU).
    pub provider: onnx::Provider,
    /// Tiles per model run. Default (0, `onnx::AUTO_BATCH`): 4 on CUDA, 1 on the CPU.
    pub batch: usize,
    /// cuDNN's convolution algorithm choice on CUDA. Default heuristic.
    pub conv_search: onnx::ConvSearch,
    /// The value range of the model's tensors. Default 0..1.
    pub range: onnx::ValueRange,
}

/// Passes of a `scale`x model needed for `width x height` to reach `target` on both sides
/// (at most 4).
pub fn passes_for(width: u32, height: u32, scale: u32, target: (u32, u32)) -> u32 {
    let mut passes = 1;
    let (mut w, mut h) = (
        u64::from(width) * u64::from(scale),
        u64::from(height) * u64::from(scale),
    );
    while passes < 4 && scale > 1 && (w < u64::from(target.0) || h < u64::from(target.1)) {
        passes += 1;
        w *= u64::from(scale);
        h *= u64::from(scale);
    }
    passes
}

/// Parses `WxH` for `target`.
pub fn parse_target(text: &str) -> Result<(u32, u32), String> {
    let (w, h) = text
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("'{text}': write the target as WxH, e.g. 3840x2160"))?;
    match (w.trim().parse::<u32>(), h.trim().parse::<u32>()) {
        (Ok(w), Ok(h)) if w > 0 && h > 0 => Ok((w, h)),
        _ => Err(format!("'{text}': write the target as WxH, e.g. 3840x2160")),
    }
}

/// Runs the model `passes` times (or as many as `target` needs), then resizes to `target`
/// exactly with Lanczos3.
pub fn upscale_passes(
    image: &DynamicImage,
    model: &mut Model,
    tile: u32,
    context: u32,
    passes: u32,
    target: Option<(u32, u32)>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<DynamicImage, ModelError> {
    let passes = match target {
        Some(t) => passes_for(image.width(), image.height(), model.scale, t),
        None => passes.max(1),
    };
    let mut current = upscale_image(image, model, tile, context, progress)?;
    for _ in 1..passes {
        current = upscale_image(&current, model, tile, context, progress)?;
    }
    if let Some((w, h)) = target {
        if (current.width(), current.height()) != (w, h) {
            current = current.resize_exact(w, h, image::imageops::FilterType::Lanczos3);
        }
    }
    Ok(current)
}

/// As many passes of `model` as make `image` at least `target` on both sides (at most
/// four), with no resize after: for a caller whose own resize makes the final size.
pub fn upscale_to_cover(
    image: &DynamicImage,
    model: &mut Model,
    tile: u32,
    context: u32,
    target: (u32, u32),
) -> Result<DynamicImage, ModelError> {
    let passes = passes_for(image.width(), image.height(), model.scale, target);
    upscale_passes(image, model, tile, context, passes, None, &mut |_, _| {})
}

/// What an upscale did.
#[derive(Debug, Clone)]
pub struct UpscaleOutput {
    pub output_path: PathBuf,
    pub model: String,
    pub model_sha256: String,
    pub scale: u32,
    pub provider: String,
    pub width: u32,
    pub height: u32,
    pub tiles: usize,
    pub tile: u32,
    pub context: u32,
    pub seconds: f64,
}

/// The context (pixels each side) a model needs for tiles that match an untiled run within
/// 1/255, as measured for the shipped models (`../shared/models/MODELS.md`); 32 otherwise.
pub fn recommended_context(model_name: &str) -> u32 {
    let name = model_name.to_ascii_lowercase();
    if name.contains("waifu2x") {
        8
    } else if name.contains("animevideo") {
        32
    } else if name.contains("x4plus") || name.contains("esrgan") {
        64
    } else {
        32
    }
}

/// A model path, or a name looked up as `<name>.onnx` in `models_dir`.
pub fn resolve_model(name_or_path: &str, models_dir: &Path) -> Result<PathBuf, OpError> {
    let direct = PathBuf::from(name_or_path);
    if direct.is_file() {
        return Ok(direct);
    }
    let named = models_dir.join(format!("{name_or_path}.onnx"));
    if named.is_file() {
        return Ok(named);
    }
    let known: Vec<String> = std::fs::read_dir(models_dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    name.strip_suffix(".onnx").map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default();
    Err(OpError::Usage(format!(
        "no model '{name_or_path}': not a file, and not in {} (models there: {})",
        models_dir.display(),
        if known.is_empty() {
            "none".into()
        } else {
            known.join(", ")
        }
    )))
}

/// Loads a model with the runtime found on this machine.
pub fn load_model(path: &Path, options: &UpscaleOptions) -> Result<Model, OpError> {
    let runtime = onnx::runtime(options.runtime.as_deref()).map_err(OpError::from)?;
    let load = onnx::LoadOptions {
        threads: onnx::LoadOptions::threads_or_cores(options.threads),
        provider: options.provider,
        range: options.range,
        batch: options.batch,
        expected_scale: None,
        conv_search: options.conv_search,
        device: None,
    };
    Model::load(path, runtime, load).map_err(OpError::from)
}

/// Runs `options.denoise_model` over `image` at its own size: loaded here, tiled at its
/// recommended context. (The pipeline brings an enlarged output back to the input's size.)
pub fn run_denoise_model(
    image: &DynamicImage,
    options: &UpscaleOptions,
) -> Result<DynamicImage, OpError> {
    let Some(path) = &options.denoise_model else {
        return Ok(image.clone());
    };
    let mut denoiser = load_model(path, options)?;
    let context = recommended_context(&denoiser.name);
    let tile = denoiser
        .tile_side(options.tile, options.memory_budget, context)
        .map_err(OpError::from)?;
    upscale_image(image, &mut denoiser, tile, context, &mut |_, _| {}).map_err(OpError::from)
}

/// Runs `model` over the file `input` through the model pipeline, with `options`'
/// corrections and denoising model around it; `enhance` as for [`ModelSteps`]. The CLI's
/// upscale and enhance both run here.
pub(super) fn run_pipeline(
    input: &Path,
    output: &Path,
    limits: &DecodeLimits,
    options: &UpscaleOptions,
    enhance: Option<model_pipeline::Via>,
    model: &mut model_pipeline::RunModel<'_>,
) -> Result<model_pipeline::PipelineOutput, OpError> {
    let steps = ModelSteps {
        pre: options.pre,
        smooth: options.smooth,
        sharpen: options.sharpen,
        enhance,
    };
    let mut denoise = |image: &DynamicImage| run_denoise_model(image, options);
    model_pipeline::run(
        input,
        output,
        limits,
        &steps,
        options
            .denoise_model
            .is_some()
            .then_some(&mut denoise as &mut model_pipeline::RunModel<'_>),
        model,
    )
}

/// Upscales a decoded image with a loaded model. Pure apart from the model run.
pub fn upscale_image(
    image: &DynamicImage,
    model: &mut Model,
    tile: u32,
    context: u32,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<DynamicImage, ModelError> {
    let (width, height) = (image.width(), image.height());
    let has_alpha = image.color().has_alpha();
    let grey = image.color().channel_count() <= 2;
    let sixteen = image.color().bytes_per_pixel() / image.color().channel_count() >= 2;
    // Progress counts colour tiles, then alpha tiles.
    let passes = if has_alpha { 2 } else { 1 };
    let (planar, alpha) = match image {
        // The common case in one parallel pass, not through RGBA floats.
        DynamicImage::ImageRgb8(rgb8) => {
            (Planar::from_rgb8(rgb8.as_raw(), width, height), Vec::new())
        }
        _ => {
            let rgba = image.to_rgba32f();
            let mut rgb: Vec<f32> = rgba
                .pixels()
                .flat_map(|p| [p.0[0], p.0[1], p.0[2]])
                .collect();
            let alpha: Vec<f32> = rgba.pixels().map(|p| p.0[3]).collect();
            if has_alpha {
                bleed_into_transparent(&mut rgb, &alpha, width, height, 64);
            }
            (Planar::from_interleaved(&rgb, 3, width, height), alpha)
        }
    };
    let mut colour = model.upscale(&planar, tile, context, &mut |done, total| {
        progress(done, total * passes)
    })?;
    let alpha_up = if has_alpha {
        let grey3: Vec<f32> = alpha.iter().flat_map(|&a| [a, a, a]).collect();
        let mut up = model.upscale(
            &Planar::from_interleaved(&grey3, 3, width, height),
            tile,
            context,
            &mut |done, total| progress(total + done, total * 2),
        )?;
        up.clamp_unit();
        let plane = (up.width * up.height) as usize;
        Some(
            (0..plane)
                .map(|i| (up.data[i] + up.data[plane + i] + up.data[2 * plane + i]) / 3.0)
                .collect::<Vec<f32>>(),
        )
    } else {
        None
    };
    let (ow, oh) = (colour.width, colour.height);
    if !grey && !has_alpha && !sixteen {
        // The common case, straight from the planar output, rows in parallel; the cast to
        // u8 saturates, so it is the clamp too (one pass over the output, not two).
        use rayon::prelude::*;
        let plane = (ow * oh) as usize;
        let mut raw = vec![0u8; plane * 3];
        raw.par_chunks_mut(ow as usize * 3)
            .enumerate()
            .for_each(|(y, row)| {
                for x in 0..ow as usize {
                    let i = y * ow as usize + x;
                    for c in 0..3 {
                        row[x * 3 + c] = (colour.data[c * plane + i] * 255.0).round() as u8;
                    }
                }
            });
        let buffer = ImageBuffer::from_raw(ow, oh, raw).expect("sized above");
        return Ok(DynamicImage::ImageRgb8(buffer));
    }
    colour.clamp_unit();
    let samples = colour.to_interleaved();
    let pixel = |i: usize| [samples[i * 3], samples[i * 3 + 1], samples[i * 3 + 2]];
    let luma = |p: [f32; 3]| (p[0] + p[1] + p[2]) / 3.0;
    let q8 = |v: f32| (v.clamp(0.0, 1.0) * 255.0).round() as u8;
    let q16 = |v: f32| (v.clamp(0.0, 1.0) * 65535.0).round() as u16;
    let index = |x: u32, y: u32| (y * ow + x) as usize;
    let a = |i: usize| alpha_up.as_ref().map_or(1.0, |a| a[i]);
    Ok(match (grey, has_alpha, sixteen) {
        (true, false, false) => DynamicImage::ImageLuma8(ImageBuffer::from_fn(ow, oh, |x, y| {
            Luma([q8(luma(pixel(index(x, y))))])
        })),
        (true, false, true) => DynamicImage::ImageLuma16(ImageBuffer::from_fn(ow, oh, |x, y| {
            Luma([q16(luma(pixel(index(x, y))))])
        })),
        (true, true, false) => DynamicImage::ImageLumaA8(ImageBuffer::from_fn(ow, oh, |x, y| {
            let i = index(x, y);
            LumaA([q8(luma(pixel(i))), q8(a(i))])
        })),
        (true, true, true) => DynamicImage::ImageLumaA16(ImageBuffer::from_fn(ow, oh, |x, y| {
            let i = index(x, y);
            LumaA([q16(luma(pixel(i))), q16(a(i))])
        })),
        (false, false, false) => DynamicImage::ImageRgb8(ImageBuffer::from_fn(ow, oh, |x, y| {
            Rgb(pixel(index(x, y)).map(q8))
        })),
        (false, false, true) => DynamicImage::ImageRgb16(ImageBuffer::from_fn(ow, oh, |x, y| {
            Rgb(pixel(index(x, y)).map(q16))
        })),
        (false, true, false) => DynamicImage::ImageRgba8(ImageBuffer::from_fn(ow, oh, |x, y| {
            let i = index(x, y);
            let [r, g, b] = pixel(i).map(q8);
            Rgba([r, g, b, q8(a(i))])
        })),
        (false, true, true) => DynamicImage::ImageRgba16(ImageBuffer::from_fn(ow, oh, |x, y| {
            let i = index(x, y);
            let [r, g, b] = pixel(i).map(q16);
            Rgba([r, g, b, q16(a(i))])
        })),
    })
}

/// The part of an upscale's output name before the model's name: `x4_` (the model's scale
/// to the power of the passes) or `1100x1100_` for a target size.
pub fn output_tag(scale: u32, passes: u32, target: Option<(u32, u32)>) -> String {
    match target {
        Some((w, h)) => format!("{w}x{h}_"),
        None => format!("x{}_", u64::from(scale).pow(passes.max(1))),
    }
}

/// Where `upscale` writes without an explicit output: `{stem}_{tag}{model}.png` beside the
/// input, named as the daemon names its outputs.
pub fn default_output(input: &Path, model: &Model, options: &UpscaleOptions) -> PathBuf {
    let tag = output_tag(model.scale, options.passes, options.target);
    sibling_path(input, None, &format!("_{tag}{}.png", model.name))
}

/// Upscales the file `input` with `model` and writes the result atomically.
pub fn upscale(
    input: &Path,
    model: &mut Model,
    options: &UpscaleOptions,
    limits: &DecodeLimits,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<UpscaleOutput, OpError> {
    let started = Instant::now();
    let output_path = options
        .output
        .clone()
        .unwrap_or_else(|| default_output(input, model, options));
    let context = options
        .context
        .unwrap_or_else(|| recommended_context(&model.name));
    let tile = model
        .tile_side(options.tile, options.memory_budget, context)
        .map_err(OpError::from)?;
    let result = run_pipeline(input, &output_path, limits, options, None, &mut |image| {
        upscale_passes(
            image,
            model,
            tile,
            context,
            options.passes,
            options.target,
            progress,
        )
        .map_err(OpError::from)
    })?;
    let tiles =
        crate::core::tiling::plan(result.input_width, result.input_height, tile, context).len();
    let seconds = started.elapsed().as_secs_f64();
    tracing::info!(
        input = %input.display(),
        output = %output_path.display(),
        model = %model.name,
        scale = model.scale,
        tiles,
        seconds = format!("{seconds:.3}"),
        "upscaled"
    );
    Ok(UpscaleOutput {
        output_path,
        model: model.name.clone(),
        model_sha256: model.sha256.clone(),
        scale: model.scale,
        provider: model.provider.clone(),
        width: result.width,
        height: result.height,
        tiles,
        tile,
        context,
        seconds,
    })
}
