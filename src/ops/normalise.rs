//! `normalise`: dataset preparation for LoRA / diffusion training.
//!
//! Per image: decode (bounded; a JPEG is DCT-reduced when the output is much smaller), EXIF
//! orientation, too-small check (rejected, or upscaled through a model when one is named),
//! crop and resize by the fit mode, 16-bit to 8-bit with rounding, ICC to sRGB, alpha
//! flattened or kept, optional adjustments, padding, quality scores, verdict. Accepted images
//! are written with a caption and a JSON sidecar; every verdict goes to the set's processing
//! log, from which the reports are built ([`super::dataset_report`]).
//!
//! The work is split in two so that a parallel batch stays deterministic: [`stage`] (any
//! order, any thread) does the pixel work and leaves the encoded image in a hidden temp file;
//! [`DatasetIndex::admit`] (in order, one at a time) checks near-duplicates against the set,
//! names the image, and renames it into place.

use super::OpError;
use crate::core::corrections::{Bilateral, PreFilters};
use crate::core::dataset::{self, FitMode, FitPlan, Resolution};
use crate::core::filters::Unsharp;
use crate::core::{adjust, colour, quality};
use crate::io::atomic;
use crate::io::decode::{self, DecodeLimits};
use crate::io::encode::OutputFormat;
use crate::io::png_encode;
use fast_image_resize::{FilterType, ResizeAlg, ResizeOptions, Resizer};
use image::{DynamicImage, RgbaImage};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The resampling filters (fast_image_resize).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResizeFilter {
    Lanczos3,
    CatmullRom,
    Mitchell,
    Bilinear,
    Box,
    Nearest,
}

impl std::str::FromStr for ResizeFilter {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        Ok(match text {
            "lanczos3" | "lanczos" => ResizeFilter::Lanczos3,
            "bicubic" | "catmull-rom" | "catmullrom" => ResizeFilter::CatmullRom,
            "mitchell" => ResizeFilter::Mitchell,
            "bilinear" => ResizeFilter::Bilinear,
            "box" | "area" => ResizeFilter::Box,
            "nearest" => ResizeFilter::Nearest,
            other => {
                return Err(format!(
                    "'{other}': use lanczos3, bicubic (catmull-rom), mitchell, bilinear, box (area) or nearest"
                ))
            }
        })
    }
}

impl ResizeFilter {
    pub fn name(self) -> &'static str {
        match self {
            ResizeFilter::Lanczos3 => "lanczos3",
            ResizeFilter::CatmullRom => "catmull-rom",
            ResizeFilter::Mitchell => "mitchell",
            ResizeFilter::Bilinear => "bilinear",
            ResizeFilter::Box => "box",
            ResizeFilter::Nearest => "nearest",
        }
    }

    fn algorithm(self) -> ResizeAlg {
        match self {
            ResizeFilter::Lanczos3 => ResizeAlg::Convolution(FilterType::Lanczos3),
            ResizeFilter::CatmullRom => ResizeAlg::Convolution(FilterType::CatmullRom),
            ResizeFilter::Mitchell => ResizeAlg::Convolution(FilterType::Mitchell),
            ResizeFilter::Bilinear => ResizeAlg::Convolution(FilterType::Bilinear),
            ResizeFilter::Box => ResizeAlg::Convolution(FilterType::Box),
            ResizeFilter::Nearest => ResizeAlg::Nearest,
        }
    }
}

/// White balance choices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhiteBalance {
    GrayWorld,
    WhitePatch,
}

/// Optional adjustments, applied in this order. All off by default.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Adjustments {
    pub white_balance: Option<WhiteBalance>,
    /// Luminance percentiles mapped to 0 and 255, e.g. (0.005, 0.995).
    pub contrast_stretch: Option<(f64, f64)>,
    /// CLAHE clip limit (2.0 is a common choice).
    pub clahe: Option<f32>,
    /// Saturation factor (1 = unchanged).
    pub saturation: Option<f32>,
    /// Vibrance amount (0 = unchanged).
    pub vibrance: Option<f32>,
    pub denoise: Option<Bilateral>,
    pub sharpen: Option<Unsharp>,
}

/// What happens to alpha.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlphaPolicy {
    /// Composite onto this colour (trainers expect RGB).
    Flatten([u8; 3]),
    /// Keep RGBA (PNG, WebP and TIFF outputs only).
    Keep,
}

/// How accepted images are named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Naming {
    /// `0001`, `0002`, ...
    Sequential,
    /// A template over `{stem}`, `{preset}`, `{bucket}`, `{n}` and `{date}`.
    Descriptive(String),
    /// `2026-11-21_0001`: the processing date and a number counted per date.
    Date,
}

impl Naming {
    pub fn parse(kind: &str, template: Option<&str>) -> Result<Naming, String> {
        match kind {
            "sequential" => Ok(Naming::Sequential),
            "date" => Ok(Naming::Date),
            "descriptive" => {
                let template = template.unwrap_or(DEFAULT_NAME_TEMPLATE).to_string();
                if !template.contains("{stem}") && !template.contains("{n}") {
                    return Err(format!(
                        "name template '{template}' needs {{stem}} or {{n}} to tell images apart"
                    ));
                }
                Ok(Naming::Descriptive(template))
            }
            other => Err(format!("'{other}': use sequential, descriptive or date")),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Naming::Sequential => "sequential".into(),
            Naming::Date => "date".into(),
            Naming::Descriptive(t) => format!("descriptive ({t})"),
        }
    }
}

pub const DEFAULT_NAME_TEMPLATE: &str = "{stem}_{preset}_{bucket}";

/// Accept/reject thresholds. `None` disables a check.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Thresholds {
    /// Minimum variance of the Laplacian on the output. Default 20.
    pub min_sharpness: Option<f64>,
    /// Maximum noise sigma of the source, in 8-bit levels. Default 8.
    pub max_noise: Option<f64>,
    /// Maximum JPEG blockiness of the source. Default 0.5.
    pub max_blockiness: Option<f64>,
    /// Maximum share of pixels clipped at 0 or 255 (together). Default 0.2.
    pub max_clipped: Option<f64>,
    /// Near-duplicate when the perceptual hashes differ in at most this many of 64 bits.
    /// Default 8.
    pub duplicate_distance: Option<u32>,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            min_sharpness: Some(20.0),
            max_noise: Some(8.0),
            max_blockiness: Some(0.5),
            max_clipped: Some(0.2),
            duplicate_distance: Some(8),
        }
    }
}

/// Every option of the recipe. [`NormaliseOptions::new`] gives the documented defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct NormaliseOptions {
    pub resolution: Resolution,
    pub mode: FitMode,
    pub filter: ResizeFilter,
    /// Resample in linear light (slower; keeps the brightness of fine detail). Default off.
    pub linear_light: bool,
    pub alpha: AlphaPolicy,
    /// Letterbox colour of `pad`. Default black.
    pub pad_colour: [u8; 3],
    pub adjust: Adjustments,
    pub format: OutputFormat,
    /// JPEG quality. Default 95.
    pub quality: u8,
    pub naming: Naming,
    /// Caption when no same-stem `.txt` came with the source, over `{stem}`, `{preset}`,
    /// `{bucket}`, `{width}`, `{height}`. Default none (no caption file).
    pub caption_template: Option<String>,
    pub thresholds: Thresholds,
    /// How a "too small" rejection tells the user to name an upscale model: the rule's key
    /// (the default, for the daemon) or the command-line flag.
    pub upscale_model_hint: &'static str,
}

/// The "too small" hint for a daemon rule.
pub const UPSCALE_MODEL_HINT_RULE: &str = "name an upscale model in the rule (upscale_model)";
/// The "too small" hint on the command line.
pub const UPSCALE_MODEL_HINT_FLAG: &str = "pass an upscale model (--upscale-model NAME)";

impl NormaliseOptions {
    pub fn new(resolution: Resolution, mode: FitMode) -> NormaliseOptions {
        NormaliseOptions {
            resolution,
            mode,
            filter: ResizeFilter::Lanczos3,
            linear_light: false,
            alpha: AlphaPolicy::Flatten([255, 255, 255]),
            pad_colour: [0, 0, 0],
            adjust: Adjustments::default(),
            format: OutputFormat::Png,
            quality: 95,
            naming: Naming::Sequential,
            caption_template: None,
            thresholds: Thresholds::default(),
            upscale_model_hint: UPSCALE_MODEL_HINT_RULE,
        }
    }

    /// The options as recorded in sidecars and reports.
    pub fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "preset": self.resolution.name,
            "size": format!("{}x{}", self.resolution.width, self.resolution.height),
            "mode": self.mode.name(),
            "filter": self.filter.name(),
            "linear_light": self.linear_light,
            "alpha": match self.alpha {
                AlphaPolicy::Keep => "keep".to_string(),
                AlphaPolicy::Flatten(c) => format!("flatten onto {}", hex_colour(c)),
            },
            "format": self.format.extension(),
            "naming": self.naming.describe(),
            "thresholds": self.thresholds,
        })
    }
}

/// `#rrggbb`.
pub fn hex_colour(c: [u8; 3]) -> String {
    format!("#{:02x}{:02x}{:02x}", c[0], c[1], c[2])
}

/// `#rrggbb`, `rrggbb`, `white`, `black` or `gray`.
pub fn parse_colour(text: &str) -> Result<[u8; 3], String> {
    match text {
        "white" => return Ok([255; 3]),
        "black" => return Ok([0; 3]),
        "gray" | "grey" => return Ok([128; 3]),
        _ => {}
    }
    let hex = text.trim_start_matches('#');
    let byte = |i: usize| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok();
    match (hex.len(), byte(0), byte(2), byte(4)) {
        (6, Some(r), Some(g), Some(b)) => Ok([r, g, b]),
        _ => Err(format!(
            "'{text}': write a colour as #rrggbb, white, black or gray"
        )),
    }
}

/// The quality scores of one image.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    /// Variance of the Laplacian on the output (before padding).
    pub sharpness: f64,
    /// Immerkær noise sigma of the decoded source (edges left out), 8-bit levels.
    pub noise_sigma: f64,
    /// JPEG blockiness of the decoded source (null when too small to measure).
    pub blockiness: Option<f64>,
    pub clipped_dark: f64,
    pub clipped_bright: f64,
    /// 64-bit DCT perceptual hash of the output, hex.
    pub phash: String,
}

/// What a source was.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SourceInfo {
    pub path: String,
    pub sha256: String,
    pub bytes: u64,
    pub format: String,
    /// Upright size.
    pub width: u32,
    pub height: u32,
    pub exif_orientation: u8,
}

/// One image's entry in the processing log: what was done, the scores, the verdict.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Identifies the entry: the daemon's job id, or the input path in a one-shot run.
    pub id: String,
    pub source: SourceInfo,
    /// `accepted` or `rejected`.
    pub verdict: String,
    pub reasons: Vec<String>,
    pub scores: Option<Scores>,
    pub operations: Vec<serde_json::Value>,
    pub bucket: Option<String>,
    /// File name of the accepted image in the images folder.
    pub output: Option<String>,
    pub output_sha256: Option<String>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub caption: Option<String>,
    pub duplicate_of: Option<String>,
    /// Thumbnail, relative to the metadata folder.
    pub thumbnail: Option<String>,
    pub number: Option<u64>,
    pub date: Option<String>,
    pub when: String,
}

impl Record {
    /// The entry of an input that could not be staged at all (undecodable, unreadable).
    pub fn unreadable(id: String, path: &Path, error: &dyn std::fmt::Display) -> Record {
        Record {
            id,
            source: SourceInfo {
                path: path.display().to_string(),
                ..SourceInfo::default()
            },
            verdict: "rejected".into(),
            reasons: vec![format!("unreadable: {error}")],
            when: crate::io::clock::rfc3339(crate::io::clock::now()),
            ..Record::default()
        }
    }
}

/// Upscales a too-small image by at least `factor` (a model run); returns the image and a
/// description for the record.
pub type Upscaler<'a> = dyn Fn(DynamicImage, f64) -> Result<(DynamicImage, String), OpError> + 'a;

/// An [`Upscaler`] that parallel staging can share.
pub type SharedUpscaler<'a> =
    dyn Fn(DynamicImage, f64) -> Result<(DynamicImage, String), OpError> + Sync + 'a;

/// An image whose pixel work is done, waiting for admission to the set.
pub struct Staged {
    pub record: Record,
    /// The encoded image in a hidden temp file in the images folder (accepted so far).
    pub temp: Option<tempfile::TempPath>,
    pub thumbnail: Option<Vec<u8>>,
    phash: Option<u64>,
    stem: String,
    caption_source: Option<PathBuf>,
}

/// The source-score patches: up to 256 of 64x64 pixels.
const SOURCE_PATCHES: decode::PatchRequest = decode::PatchRequest {
    size: 64,
    max_patches: 256,
};

/// Source stem, for names and captions.
/// Fits a source into the set: decode, plan, resample, colour, adjust, score. Writes the
/// encoded image to a temp file in `images_dir` when it passes the per-image checks.
/// Errors are for files that could not be read at all (the caller sets them aside).
pub fn stage(
    source: &Path,
    id: &str,
    options: &NormaliseOptions,
    limits: &DecodeLimits,
    images_dir: &Path,
    upscaler: Option<&Upscaler<'_>>,
) -> Result<Staged, OpError> {
    let mut operations = Vec::new();
    let planned_scale =
        |w: u32, h: u32| dataset::plan(options.mode, &options.resolution, w, h, None).scale;
    let needed = |w: u32, h: u32| {
        let s = planned_scale(w, h).min(1.0);
        (
            ((f64::from(w) * s).ceil() as u32).max(1),
            ((f64::from(h) * s).ceil() as u32).max(1),
        )
    };
    let mut loaded = decode::load_for_scoring(source, limits, &needed, SOURCE_PATCHES)
        .map_err(|e| OpError::decode(source, e))?;
    let full_size_patches = loaded.full_size_patches.take();
    let (full_w, full_h) = (loaded.full_width, loaded.full_height);
    let mut image = loaded.loaded.image;
    let icc = loaded.loaded.icc_profile;
    let info = SourceInfo {
        path: source.display().to_string(),
        sha256: loaded.loaded.sha256.clone(),
        bytes: loaded.loaded.file_bytes,
        format: format!("{:?}", loaded.loaded.format).to_lowercase(),
        width: full_w,
        height: full_h,
        exif_orientation: loaded.loaded.exif_orientation,
    };
    for note in crate::io::gif::source_notes(source) {
        operations.push(serde_json::json!({"op": "first-frame", "note": note}));
    }
    if info.exif_orientation != 1 {
        operations
            .push(serde_json::json!({"op": "orient", "exif_orientation": info.exif_orientation}));
    }
    if image.width() != full_w {
        operations.push(serde_json::json!({
            "op": "dct-reduced-decode",
            "decoded": format!("{}x{}", image.width(), image.height()),
        }));
    }
    // Noise and blockiness are properties of the source: measured on it at full size (at a
    // smaller scale noise is averaged away and texture passes for noise, and the block grid
    // is gone), on up to 256 patches of 64x64 spread over it (1 MP: a 12-MP photo is not
    // read three times). A DCT-reduced JPEG gives those patches decoded at full size.
    let (patches, block) = match full_size_patches {
        Some(patches) => (patches, 8),
        None => (
            quality::sample_patches(&image, SOURCE_PATCHES.size, SOURCE_PATCHES.max_patches),
            // On the decoded image's block grid (8 unless a decoder reduced it anyway).
            (8.0 * f64::from(image.width()) / f64::from(full_w)).round() as usize,
        ),
    };
    let blockiness = if block >= 4 {
        quality::blockiness_of(&patches, block)
    } else {
        None
    };
    let source_noise = quality::noise_sigma_of(&patches);
    drop(patches);
    let mut record = Record {
        id: id.to_string(),
        source: info,
        when: crate::io::clock::rfc3339(crate::io::clock::now()),
        ..Record::default()
    };
    let reject = |mut record: Record, reason: String, ops: Vec<serde_json::Value>| {
        record.verdict = "rejected".into();
        record.reasons.push(reason);
        record.operations = ops;
        Staged {
            record,
            temp: None,
            thumbnail: None,
            phash: None,
            stem: crate::io::names::stem_of(source),
            caption_source: None,
        }
    };

    // Too small: never blown up with a plain filter.
    let scale = planned_scale(full_w, full_h);
    if scale > 1.0 + 1e-9 {
        match upscaler {
            None => {
                let reason = format!(
                    "too small: {full_w}x{full_h} would need {scale:.2}x enlarging for {} in {} mode; \
                     {} or use a smaller preset",
                    options.resolution,
                    options.mode.name(),
                    options.upscale_model_hint
                );
                return Ok(reject(record, reason, operations));
            }
            Some(upscale) => {
                let (up, description) = upscale(image, scale)?;
                operations.push(serde_json::json!({
                    "op": "upscale", "model": description, "needed": scale,
                    "to": format!("{}x{}", up.width(), up.height()),
                }));
                image = up;
            }
        }
    }
    let (work_w, work_h) = (image.width(), image.height());
    let detail = (options.mode == FitMode::Thirds).then(|| detail_of(&image));
    let plan = dataset::plan(
        options.mode,
        &options.resolution,
        work_w,
        work_h,
        detail.as_ref(),
    );
    if plan.scale > 1.0 + 1e-6 {
        // An upscaler that came back short.
        let reason = format!(
            "too small after upscaling: {work_w}x{work_h} would still need {:.2}x",
            plan.scale
        );
        return Ok(reject(record, reason, operations));
    }
    record.bucket = plan.bucket.map(|(w, h)| format!("{w}x{h}"));
    operations.push(serde_json::json!({
        "op": "crop",
        "mode": options.mode.name(),
        "left": round2(plan.crop.left * f64::from(full_w) / f64::from(work_w)),
        "top": round2(plan.crop.top * f64::from(full_h) / f64::from(work_h)),
        "width": round2(plan.crop.width * f64::from(full_w) / f64::from(work_w)),
        "height": round2(plan.crop.height * f64::from(full_h) / f64::from(work_h)),
        "bucket": record.bucket,
    }));
    let resized = resize(image, &plan, options).map_err(OpError::Internal)?;
    operations.push(serde_json::json!({
        "op": "resize", "filter": options.filter.name(), "linear_light": options.linear_light,
        "to": format!("{}x{}", plan.resize_to.0, plan.resize_to.1),
    }));
    let (converted, colour_result) = colour::to_srgb(resized, icc.as_deref());
    operations.push(serde_json::json!({"op": "colour", "result": colour_result.describe()}));
    let sixteen = converted.color().bytes_per_pixel() / converted.color().channel_count() == 2;
    let converted = if sixteen {
        operations.push(
            serde_json::json!({"op": "bit-depth", "from": 16, "to": 8, "rounding": "nearest"}),
        );
        crate::core::proxy::to_8bit(converted)
    } else {
        converted
    };
    let had_alpha = converted.color().has_alpha();
    // An opaque RGB result with no adjustments and no letterbox goes to the encoder as it is:
    // the RGBA working copy (and the copy back to RGB) would change nothing.
    let untouched = matches!(converted, DynamicImage::ImageRgb8(_))
        && options.adjust == Adjustments::default()
        && plan.canvas == plan.resize_to;
    // Scores on the output (before any letterbox, which would dilute them); clipping counts
    // only pixels that were opaque, not a background flattened in.
    let (luma, opaque, working) = if untouched {
        (
            quality::Luma::of(&converted),
            None,
            Working::Untouched(converted),
        )
    } else {
        let mut pixels: RgbaImage = converted.to_rgba8();
        drop(converted);
        let opaque: Option<Vec<bool>> =
            had_alpha.then(|| pixels.pixels().map(|p| p[3] == 255).collect());
        if let (true, AlphaPolicy::Flatten(bg)) = (had_alpha, options.alpha) {
            flatten(&mut pixels, bg);
            operations
                .push(serde_json::json!({"op": "flatten-alpha", "background": hex_colour(bg)}));
        }
        adjust_pixels(&mut pixels, &options.adjust, &mut operations);
        (
            quality::Luma::of_rgba8(&pixels),
            opaque,
            Working::Rgba(pixels),
        )
    };
    let (clipped_dark, clipped_bright) = match &opaque {
        Some(mask) => quality::clipping_where(&luma, mask),
        None => quality::clipping(&luma),
    };
    let phash = quality::phash(&luma);
    let scores = Scores {
        sharpness: round2(quality::sharpness(&luma)),
        noise_sigma: round2(source_noise),
        blockiness: blockiness.map(|b| (b * 1000.0).round() / 1000.0),
        clipped_dark: (clipped_dark * 1e4).round() / 1e4,
        clipped_bright: (clipped_bright * 1e4).round() / 1e4,
        phash: format!("{phash:016x}"),
    };
    drop(luma);
    let reasons = verdict(&scores, &options.thresholds);

    let keep_alpha = had_alpha && options.alpha == AlphaPolicy::Keep;
    let final_image = match working {
        Working::Untouched(image) => image,
        Working::Rgba(pixels) => {
            let output = if plan.canvas != plan.resize_to {
                letterbox(&pixels, &plan, options.pad_colour, &mut operations)
            } else {
                pixels
            };
            if keep_alpha {
                DynamicImage::ImageRgba8(output)
            } else {
                DynamicImage::ImageRgb8(DynamicImage::ImageRgba8(output).to_rgb8())
            }
        }
    };
    record.scores = Some(scores);
    record.operations = operations;
    record.width = Some(final_image.width());
    record.height = Some(final_image.height());
    let thumbnail = thumbnail(&final_image);
    let caption_source = caption_beside(source);
    if !reasons.is_empty() {
        record.verdict = "rejected".into();
        record.reasons = reasons;
        return Ok(Staged {
            record,
            temp: None,
            thumbnail,
            phash: Some(phash),
            stem: crate::io::names::stem_of(source),
            caption_source,
        });
    }
    let bytes = encode(&final_image, options)?;
    record.output_sha256 = Some(crate::io::hash::sha256_hex(&bytes));
    let temp = write_temp(images_dir, &bytes).map_err(|e| OpError::write(images_dir, e))?;
    record.verdict = "accepted".into();
    Ok(Staged {
        record,
        temp: Some(temp),
        thumbnail,
        phash: Some(phash),
        stem: crate::io::names::stem_of(source),
        caption_source,
    })
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// Reasons the scores fail the thresholds (empty: accepted).
pub fn verdict(scores: &Scores, t: &Thresholds) -> Vec<String> {
    let mut reasons = Vec::new();
    if let Some(min) = t.min_sharpness {
        if scores.sharpness < min {
            reasons.push(format!(
                "blurry: sharpness {:.1} < {min} (variance of the Laplacian)",
                scores.sharpness
            ));
        }
    }
    if let Some(max) = t.max_noise {
        if scores.noise_sigma > max {
            reasons.push(format!(
                "noisy: noise sigma {:.2} > {max} levels (Immerkær)",
                scores.noise_sigma
            ));
        }
    }
    if let (Some(max), Some(b)) = (t.max_blockiness, scores.blockiness) {
        if b > max {
            reasons.push(format!("JPEG blocking: blockiness {b:.3} > {max}"));
        }
    }
    if let Some(max) = t.max_clipped {
        let clipped = scores.clipped_dark + scores.clipped_bright;
        if clipped > max {
            reasons.push(format!(
                "exposure clipping: {:.1}% of pixels at 0 or 255 > {:.1}%",
                clipped * 100.0,
                max * 100.0
            ));
        }
    }
    reasons
}

/// Gradient-energy profile of a copy at most 256 px on its long side.
fn detail_of(image: &DynamicImage) -> dataset::DetailProfile {
    let long = image.width().max(image.height());
    let factor = (256.0 / f64::from(long)).min(1.0);
    let w = ((f64::from(image.width()) * factor).round() as u32).max(1);
    let h = ((f64::from(image.height()) * factor).round() as u32).max(1);
    // Box-resampled in the image's own layout: no full-size copy first.
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Box));
    let small = crate::core::resample::blank_like(image, w, h)
        .ok()
        .and_then(|mut dst| {
            Resizer::new()
                .resize(image, &mut dst, &options)
                .ok()
                .map(|_| dst)
        });
    quality::detail_profile(&quality::Luma::of(small.as_ref().unwrap_or(image)))
}

/// Crops and resamples by the plan, in gamma space or (optionally) linear light.
fn resize(
    image: DynamicImage,
    plan: &FitPlan,
    options: &NormaliseOptions,
) -> Result<DynamicImage, String> {
    let (tw, th) = plan.resize_to;
    let crop = plan.crop;
    let alg = options.filter.algorithm();
    let resize_options = |alpha: bool| {
        ResizeOptions::new()
            .resize_alg(alg)
            .crop(crop.left, crop.top, crop.width, crop.height)
            .use_alpha(alpha)
    };
    if options.linear_light {
        let alpha = image.color().has_alpha();
        let mut linear = image.to_rgba32f();
        drop(image);
        for p in linear.pixels_mut() {
            for c in 0..3 {
                p[c] = srgb_to_linear(p[c]);
            }
        }
        let src = DynamicImage::ImageRgba32F(linear);
        let mut dst = DynamicImage::ImageRgba32F(image::Rgba32FImage::new(tw, th));
        Resizer::new()
            .resize(&src, &mut dst, &resize_options(alpha))
            .map_err(|e| e.to_string())?;
        let mut out = dst.into_rgba32f();
        for p in out.pixels_mut() {
            for c in 0..3 {
                p[c] = linear_to_srgb(p[c]);
            }
        }
        let out = DynamicImage::ImageRgba32F(out);
        return Ok(if alpha {
            DynamicImage::ImageRgba16(out.to_rgba16())
        } else {
            DynamicImage::ImageRgb16(out.to_rgb16())
        });
    }
    // Grey and grey+alpha go through as RGB(A): the set is RGB.
    let image = match image {
        DynamicImage::ImageLuma8(_) => DynamicImage::ImageRgb8(image.to_rgb8()),
        DynamicImage::ImageLumaA8(_) => DynamicImage::ImageRgba8(image.to_rgba8()),
        DynamicImage::ImageLuma16(_) => DynamicImage::ImageRgb16(image.to_rgb16()),
        DynamicImage::ImageLumaA16(_) => DynamicImage::ImageRgba16(image.to_rgba16()),
        DynamicImage::ImageRgb32F(_) | DynamicImage::ImageRgba32F(_) => {
            DynamicImage::ImageRgba16(image.to_rgba16())
        }
        other => other,
    };
    let alpha = image.color().has_alpha();
    let mut dst = crate::core::resample::blank_like(&image, tw, th).map_err(|e| e.to_string())?;
    Resizer::new()
        .resize(&image, &mut dst, &resize_options(alpha))
        .map_err(|e| e.to_string())?;
    Ok(dst)
}

fn srgb_to_linear(v: f32) -> f32 {
    if v <= 0.04045 {
        v / 12.92
    } else {
        ((v + 0.055) / 1.055).powf(2.4)
    }
}

fn linear_to_srgb(v: f32) -> f32 {
    let v = v.clamp(0.0, 1.0);
    if v <= 0.003_130_8 {
        v * 12.92
    } else {
        1.055 * v.powf(1.0 / 2.4) - 0.055
    }
}

/// The output being built: the converted image as it is, or an RGBA working copy for
/// alpha, adjustments or a letterbox.
enum Working {
    Untouched(DynamicImage),
    Rgba(RgbaImage),
}

/// `pixels` centred on the plan's canvas in `colour` (the `pad` mode), recorded in
/// `operations`.
fn letterbox(
    pixels: &RgbaImage,
    plan: &FitPlan,
    colour: [u8; 3],
    operations: &mut Vec<serde_json::Value>,
) -> RgbaImage {
    let [r, g, b] = colour;
    let mut canvas =
        RgbaImage::from_pixel(plan.canvas.0, plan.canvas.1, image::Rgba([r, g, b, 255]));
    image::imageops::replace(
        &mut canvas,
        pixels,
        i64::from(plan.offset.0),
        i64::from(plan.offset.1),
    );
    operations.push(serde_json::json!({
        "op": "pad", "colour": hex_colour(colour),
        "canvas": format!("{}x{}", plan.canvas.0, plan.canvas.1),
        "offset": [plan.offset.0, plan.offset.1],
    }));
    canvas
}

/// Composites onto `bg` (in sRGB values, as browsers do) and makes the image opaque.
fn flatten(pixels: &mut RgbaImage, bg: [u8; 3]) {
    for p in pixels.pixels_mut() {
        let a = u32::from(p[3]);
        for c in 0..3 {
            p[c] = ((u32::from(p[c]) * a + u32::from(bg[c]) * (255 - a) + 127) / 255) as u8;
        }
        p[3] = 255;
    }
}

fn adjust_pixels(
    pixels: &mut RgbaImage,
    adjust: &Adjustments,
    operations: &mut Vec<serde_json::Value>,
) {
    let through_prefilters = |pixels: &mut RgbaImage, filters: PreFilters| {
        let image = DynamicImage::ImageRgba8(std::mem::take(pixels));
        *pixels = filters.apply(image).into_rgba8();
    };
    match adjust.white_balance {
        Some(WhiteBalance::GrayWorld) => {
            through_prefilters(
                pixels,
                PreFilters {
                    white_balance: true,
                    ..PreFilters::default()
                },
            );
            operations.push(serde_json::json!({"op": "white-balance", "method": "gray-world"}));
        }
        Some(WhiteBalance::WhitePatch) => {
            adjust::white_patch(pixels);
            operations.push(serde_json::json!({"op": "white-balance", "method": "white-patch"}));
        }
        None => {}
    }
    if let Some((low, high)) = adjust.contrast_stretch {
        adjust::contrast_stretch(pixels, low, high);
        operations.push(serde_json::json!({"op": "contrast-stretch", "low": low, "high": high}));
    }
    if let Some(clip) = adjust.clahe {
        adjust::clahe(pixels, clip);
        operations.push(serde_json::json!({"op": "clahe", "clip_limit": clip, "tiles": "8x8"}));
    }
    if adjust.saturation.is_some() || adjust.vibrance.is_some() {
        let (s, v) = (
            adjust.saturation.unwrap_or(1.0),
            adjust.vibrance.unwrap_or(0.0),
        );
        adjust::saturation_vibrance(pixels, s, v);
        operations.push(serde_json::json!({"op": "saturation", "factor": s, "vibrance": v}));
    }
    if let Some(settings) = adjust.denoise {
        through_prefilters(
            pixels,
            PreFilters {
                denoise: Some(settings),
                ..PreFilters::default()
            },
        );
        operations.push(serde_json::json!({
            "op": "denoise", "method": "bilateral",
            "sigma_spatial": settings.sigma_spatial, "sigma_range": settings.sigma_range,
        }));
    }
    if let Some(settings) = adjust.sharpen {
        let image = DynamicImage::ImageRgba8(std::mem::take(pixels));
        *pixels = crate::core::filters::unsharp_mask(&image, settings).into_rgba8();
        operations.push(serde_json::json!({
            "op": "unsharp-mask", "amount": settings.amount, "radius": settings.radius,
            "threshold": settings.threshold,
        }));
    }
}

/// A JPEG thumbnail at most 192 px on its long side, for the contact sheet.
fn thumbnail(image: &DynamicImage) -> Option<Vec<u8>> {
    let long = image.width().max(image.height());
    let factor = (192.0 / f64::from(long)).min(1.0);
    let w = ((f64::from(image.width()) * factor).round() as u32).max(1);
    let h = ((f64::from(image.height()) * factor).round() as u32).max(1);
    let copy;
    let rgb = if let DynamicImage::ImageRgb8(_) = image {
        image
    } else {
        copy = DynamicImage::ImageRgb8(image.to_rgb8());
        &copy
    };
    // An area average (box filter), as thumbnailers shrink: at the 5-7x of an SDXL output,
    // Lanczos3 weighs 30 to 40 source pixels per output pixel along each axis, the box 5
    // to 7, and a 192-px contact-sheet image shows no difference.
    let mut small = DynamicImage::new_rgb8(w, h);
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Box));
    Resizer::new().resize(rgb, &mut small, &options).ok()?;
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 80)
        .encode_image(&small)
        .ok()?;
    Some(out)
}

/// Encodes an output: sRGB-tagged (PNG `sRGB` chunk; an sRGB ICC profile otherwise).
/// A dataset PNG is filtered with Paeth on every row: on the 15-MP merge benchmark about two
/// thirds of the adaptive choice's encode time, 0.4% larger (README, PNG table); the sizes of
/// the normalise benchmark's outputs are in the README's normalise section.
const DATASET_PNG: png_encode::PngOptions = png_encode::PngOptions {
    filter: png_encode::FilterChoice::Paeth,
    ..png_encode::PngOptions::DEFAULT
};

fn encode(image: &DynamicImage, options: &NormaliseOptions) -> Result<Vec<u8>, OpError> {
    let fail = |e: &dyn std::fmt::Display| OpError::Internal(format!("encoding the output: {e}"));
    match options.format {
        OutputFormat::Png => {
            let png = png_encode::encode(image, None, &[], &DATASET_PNG).map_err(|e| fail(&e))?;
            Ok(png_encode::with_srgb_chunk(png))
        }
        OutputFormat::Jpeg => {
            use image::ImageEncoder;
            let mut out = Vec::new();
            let mut encoder =
                image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, options.quality);
            encoder
                .set_icc_profile(colour::srgb_icc())
                .map_err(|e| fail(&e))?;
            let rgb = image.to_rgb8();
            encoder
                .write_image(
                    rgb.as_raw(),
                    rgb.width(),
                    rgb.height(),
                    image::ExtendedColorType::Rgb8,
                )
                .map_err(|e| fail(&e))?;
            Ok(out)
        }
        format => crate::io::encode::encode(image, format, Some(&colour::srgb_icc()), None, &[])
            .map_err(|e| fail(&e)),
    }
}

fn write_temp(dir: &Path, bytes: &[u8]) -> std::io::Result<tempfile::TempPath> {
    let mut temp = atomic::temp_file_in(dir)?;
    temp.write_all(bytes)?;
    temp.flush()?;
    temp.as_file().sync_all()?;
    Ok(temp.into_temp_path())
}

/// A same-stem `.txt` next to the source, if there is one.
fn caption_beside(source: &Path) -> Option<PathBuf> {
    let path = source.with_extension("txt");
    path.is_file().then_some(path)
}

/// What the set already holds: names, hashes and numbers, read from the sidecars.
#[derive(Debug, Default)]
pub struct DatasetIndex {
    pub images_dir: PathBuf,
    entries: Vec<IndexEntry>,
}

#[derive(Debug, Clone)]
struct IndexEntry {
    id: String,
    name: String,
    phash: u64,
    number: u64,
    date: String,
}

/// Where an admitted image's files went.
#[derive(Debug, Clone)]
pub struct Admitted {
    pub image: PathBuf,
    pub caption: Option<PathBuf>,
    pub sidecar: PathBuf,
}

impl DatasetIndex {
    /// Reads the sidecars (`*.json`) in `images_dir` (created if missing).
    pub fn load(images_dir: &Path) -> std::io::Result<DatasetIndex> {
        std::fs::create_dir_all(images_dir)?;
        let mut entries = Vec::new();
        for entry in std::fs::read_dir(images_dir)? {
            let path = entry?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            let Ok(record) = serde_json::from_str::<Record>(&text) else {
                continue;
            };
            let (Some(name), Some(scores)) = (record.output.clone(), record.scores.as_ref()) else {
                continue;
            };
            if !images_dir.join(&name).is_file() {
                continue;
            }
            entries.push(IndexEntry {
                id: record.id.clone(),
                name,
                phash: u64::from_str_radix(&scores.phash, 16).unwrap_or(0),
                number: record.number.unwrap_or(0),
                date: record.date.clone().unwrap_or_default(),
            });
        }
        entries.sort_by_key(|e| e.number);
        Ok(DatasetIndex {
            images_dir: images_dir.to_path_buf(),
            entries,
        })
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The accepted image whose hash is within `distance` of `phash`, nearest first.
    fn near_duplicate(&self, phash: u64, distance: u32, except_id: &str) -> Option<(&str, u32)> {
        self.entries
            .iter()
            .filter(|e| e.id != except_id)
            .map(|e| (e.name.as_str(), quality::hamming(e.phash, phash)))
            .filter(|(_, d)| *d <= distance)
            .min_by_key(|(_, d)| *d)
    }

    /// Admits a staged image: near-duplicate check against the set, naming, and the durable
    /// writes (image, caption, sidecar last). A staged image that fails here comes back
    /// rejected (its temp file removed). An entry with the same id already in the set (a
    /// job re-run after a crash) keeps its name.
    pub fn admit(
        &mut self,
        mut staged: Staged,
        options: &NormaliseOptions,
        metadata_dir: &Path,
    ) -> Result<(Record, Option<Admitted>), OpError> {
        let id = staged.record.id.clone();
        let thumbs = metadata_dir.join("thumbs");
        let (Some(temp), Some(phash)) = (staged.temp.take(), staged.phash) else {
            if let Some(bytes) = &staged.thumbnail {
                staged.record.thumbnail =
                    write_thumbnail(&thumbs, &format!("rejected-{}", token(&id)), bytes);
            }
            return Ok((staged.record, None));
        };
        let previous = self.entries.iter().find(|e| e.id == id).cloned();
        if previous.is_none() {
            if let Some(distance) = options.thresholds.duplicate_distance {
                if let Some((name, d)) = self.near_duplicate(phash, distance, &id) {
                    let mut record = staged.record;
                    record.verdict = "rejected".into();
                    record.reasons.push(format!(
                        "near-duplicate of {name} (perceptual hashes {d} of 64 bits apart, threshold {distance})"
                    ));
                    record.duplicate_of = Some(name.to_string());
                    record.output_sha256 = None;
                    if let Some(bytes) = &staged.thumbnail {
                        record.thumbnail =
                            write_thumbnail(&thumbs, &format!("rejected-{}", token(&id)), bytes);
                    }
                    drop(temp);
                    return Ok((record, None));
                }
            }
        }
        let date = staged
            .record
            .when
            .get(..10)
            .unwrap_or("1970-01-01")
            .to_string();
        let (name, number, date) = match &previous {
            Some(p) => (p.name.clone(), p.number, p.date.clone()),
            None => {
                let number = match options.naming {
                    Naming::Date => {
                        self.entries
                            .iter()
                            .filter(|e| e.date == date)
                            .map(|e| e.number)
                            .max()
                            .unwrap_or(0)
                            + 1
                    }
                    _ => self.entries.iter().map(|e| e.number).max().unwrap_or(0) + 1,
                };
                let ext = options.format.extension();
                let base = self.name_for(&staged, options, number, &date);
                let mut name = format!("{base}.{ext}");
                let mut k = 2;
                // A name is taken when an entry of the set (an image with its sidecar) has
                // it. An image without a sidecar is what an admission interrupted by a crash
                // left behind: its job runs again and takes the same name over.
                let taken = |name: &str| {
                    let stem = crate::io::names::stem_of(Path::new(name));
                    self.entries.iter().any(|e| e.name == name)
                        || self.images_dir.join(format!("{stem}.json")).exists()
                };
                while taken(&name) {
                    name = format!("{base}_{k}.{ext}");
                    k += 1;
                }
                (name, number, date)
            }
        };
        let image_path = self.images_dir.join(&name);
        let stem = crate::io::names::stem_of(Path::new(&name));
        atomic::check_not_cancelled().map_err(|e| OpError::write(&image_path, e))?;
        temp.persist(&image_path)
            .map_err(|e| OpError::write(&image_path, e.error))?;
        atomic::sync_dir(&self.images_dir).map_err(|e| OpError::write(&self.images_dir, e))?;
        let mut record = staged.record;
        let caption = match &staged.caption_source {
            Some(path) => {
                read_caption(path).map(|text| (text, format!("copied from {}", path.display())))
            }
            None => options.caption_template.as_ref().map(|template| {
                (
                    fill(template, &staged.stem, options, &record, number, &date),
                    "template".to_string(),
                )
            }),
        };
        let caption_path = match &caption {
            Some((text, origin)) => {
                let path = self.images_dir.join(format!("{stem}.txt"));
                atomic::write_atomic(&path, format!("{text}\n").as_bytes())
                    .map_err(|e| OpError::write(&path, e))?;
                record
                    .operations
                    .push(serde_json::json!({"op": "caption", "source": origin}));
                record.caption = Some(text.clone());
                Some(path)
            }
            None => None,
        };
        record.output = Some(name.clone());
        record.number = Some(number);
        record.date = Some(date.clone());
        if let Some(bytes) = &staged.thumbnail {
            record.thumbnail = write_thumbnail(&thumbs, &stem, bytes);
        }
        let sidecar = self.images_dir.join(format!("{stem}.json"));
        // The sidecar is the record plus the options; written last, so it vouches for the rest.
        let mut sidecar_json = serde_json::Map::new();
        sidecar_json.insert("darkroom_version".into(), env!("CARGO_PKG_VERSION").into());
        sidecar_json.insert("options".into(), options.describe());
        if let Ok(serde_json::Value::Object(body)) = serde_json::to_value(&record) {
            sidecar_json.extend(body);
        }
        let text = serde_json::to_string_pretty(&sidecar_json).expect("json");
        atomic::write_atomic(&sidecar, text.as_bytes()).map_err(|e| OpError::write(&sidecar, e))?;
        if previous.is_none() {
            self.entries.push(IndexEntry {
                id,
                name,
                phash,
                number,
                date,
            });
        }
        Ok((
            record,
            Some(Admitted {
                image: image_path,
                caption: caption_path,
                sidecar,
            }),
        ))
    }

    fn name_for(
        &self,
        staged: &Staged,
        options: &NormaliseOptions,
        number: u64,
        date: &str,
    ) -> String {
        match &options.naming {
            Naming::Sequential => format!("{number:04}"),
            Naming::Date => format!("{date}_{number:04}"),
            Naming::Descriptive(template) => sanitize(&fill(
                template,
                &staged.stem,
                options,
                &staged.record,
                number,
                date,
            )),
        }
    }
}

/// Fills a name or caption template.
fn fill(
    template: &str,
    stem: &str,
    options: &NormaliseOptions,
    record: &Record,
    number: u64,
    date: &str,
) -> String {
    let size = format!(
        "{}x{}",
        record.width.unwrap_or(0),
        record.height.unwrap_or(0)
    );
    template
        .replace("{stem}", stem)
        .replace("{preset}", &options.resolution.name)
        .replace("{bucket}", record.bucket.as_deref().unwrap_or(&size))
        .replace("{width}", &record.width.unwrap_or(0).to_string())
        .replace("{height}", &record.height.unwrap_or(0).to_string())
        .replace("{n}", &format!("{number:04}"))
        .replace("{date}", date)
}

/// Letters, digits, `-`, `_` and `.`; everything else becomes `_`.
fn sanitize(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let cleaned = cleaned.trim_start_matches('.').to_string();
    if cleaned.is_empty() {
        "image".into()
    } else {
        cleaned
    }
}

/// A file-name-safe token of an id.
fn token(id: &str) -> String {
    let digest = crate::io::hash::sha256_hex(id.as_bytes());
    digest[..12].to_string()
}

fn read_caption(path: &Path) -> Option<String> {
    let bytes = decode::read_bounded(path, 64 * 1024).ok()?;
    let text = String::from_utf8_lossy(&bytes).trim().to_string();
    (!text.is_empty()).then_some(text)
}

fn write_thumbnail(dir: &Path, stem: &str, bytes: &[u8]) -> Option<String> {
    std::fs::create_dir_all(dir).ok()?;
    let name = format!("{stem}.jpg");
    atomic::write_atomic(&dir.join(&name), bytes).ok()?;
    Some(format!("thumbs/{name}"))
}

/// Appends one record to `processing_log.jsonl` in `metadata_dir`, durably.
pub fn log_record(metadata_dir: &Path, record: &Record) -> std::io::Result<()> {
    std::fs::create_dir_all(metadata_dir)?;
    let path = metadata_dir.join("processing_log.jsonl");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)?;
    let mut line = serde_json::to_string(record).expect("json");
    line.push('\n');
    file.write_all(line.as_bytes())?;
    file.sync_data()
}

/// Reads the processing log, the last record of each id winning.
pub fn read_log(metadata_dir: &Path) -> Vec<Record> {
    let Ok(text) = std::fs::read_to_string(metadata_dir.join("processing_log.jsonl")) else {
        return Vec::new();
    };
    let mut order: Vec<String> = Vec::new();
    let mut latest: std::collections::HashMap<String, Record> = std::collections::HashMap::new();
    for line in text.lines() {
        let Ok(record) = serde_json::from_str::<Record>(line) else {
            continue;
        };
        if !latest.contains_key(&record.id) {
            order.push(record.id.clone());
        }
        latest.insert(record.id.clone(), record);
    }
    order
        .into_iter()
        .filter_map(|id| latest.remove(&id))
        .collect()
}

/// The layout of a one-shot run's output folder.
pub struct SetLayout {
    pub images: PathBuf,
    pub metadata: PathBuf,
    pub failed: PathBuf,
}

impl SetLayout {
    pub fn under(out_dir: &Path) -> SetLayout {
        SetLayout {
            images: out_dir.join("images"),
            metadata: out_dir.join("metadata"),
            failed: out_dir.join("failed"),
        }
    }
}

/// Summary of a one-shot run.
#[derive(Debug, Default)]
pub struct RunSummary {
    pub accepted: usize,
    pub rejected: usize,
    pub failed: usize,
    pub records: Vec<Record>,
}

/// One-shot normalise of `inputs` into `out_dir`: stage in parallel, admit in input order,
/// then write the reports.
pub fn normalise_batch(
    inputs: &[PathBuf],
    out_dir: &Path,
    options: &NormaliseOptions,
    limits: &DecodeLimits,
    upscaler: Option<&SharedUpscaler<'_>>,
    tick: &(dyn Fn(&Path) + Sync),
) -> Result<RunSummary, OpError> {
    use rayon::prelude::*;
    let layout = SetLayout::under(out_dir);
    for dir in [&layout.images, &layout.metadata] {
        std::fs::create_dir_all(dir).map_err(|e| OpError::write(dir, e))?;
    }
    let mut index =
        DatasetIndex::load(&layout.images).map_err(|e| OpError::write(&layout.images, e))?;
    let staged: Vec<(PathBuf, Result<Staged, OpError>)> = inputs
        .par_iter()
        .map(|path| {
            let id = path.display().to_string();
            let up = upscaler.map(|u| u as &Upscaler<'_>);
            let result = stage(path, &id, options, limits, &layout.images, up);
            tick(path);
            (path.clone(), result)
        })
        .collect();
    let mut summary = RunSummary::default();
    for (path, result) in staged {
        let record = match result {
            Ok(staged) => index.admit(staged, options, &layout.metadata)?.0,
            Err(e) => {
                summary.failed += 1;
                Record::unreadable(path.display().to_string(), &path, &e)
            }
        };
        if record.verdict == "accepted" {
            summary.accepted += 1;
        } else {
            summary.rejected += 1;
            set_aside(&path, &layout.failed, &record);
        }
        log_record(&layout.metadata, &record).map_err(|e| OpError::write(&layout.metadata, e))?;
        summary.records.push(record);
    }
    Ok(summary)
}

/// A one-shot run leaves its inputs alone: a rejected input is copied to `failed/` with
/// `<file>.error.json` (the reasons and scores).
fn set_aside(source: &Path, failed_dir: &Path, record: &Record) {
    if std::fs::create_dir_all(failed_dir).is_err() {
        return;
    }
    let name = source
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "input".into());
    let target = crate::io::names::free_name(failed_dir, &name, &token(&record.id));
    if std::fs::copy(source, &target).is_ok() {
        let sidecar = PathBuf::from(format!("{}.error.json", target.display()));
        let body = serde_json::json!({
            "file": record.source.path,
            "reason": record.reasons.join("; "),
            "reasons": record.reasons,
            "scores": record.scores,
            "duplicate_of": record.duplicate_of,
        });
        let _ = atomic::write_atomic(
            &sidecar,
            serde_json::to_string_pretty(&body)
                .expect("json")
                .as_bytes(),
        );
    }
}

/// The image files directly in `dir`, sorted by name (hidden and temp files skipped).
pub fn list_images(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with('.') || !path.is_file() {
            continue;
        }
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
            .to_ascii_lowercase();
        if matches!(
            ext.as_str(),
            "png" | "jpg" | "jpeg" | "tif" | "tiff" | "webp" | "gif"
        ) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// A threshold: a number, or `off`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limit(pub Option<f64>);

impl std::str::FromStr for Limit {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if matches!(text, "off" | "none") {
            return Ok(Limit(None));
        }
        text.parse::<f64>()
            .ok()
            .filter(|v| v.is_finite() && *v >= 0.0)
            .map(|v| Limit(Some(v)))
            .ok_or_else(|| format!("'{text}': a number (0 or more) or off"))
    }
}

impl<'de> Deserialize<'de> for Limit {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(f64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(v) => format!("{v}").parse().map_err(serde::de::Error::custom),
            Raw::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// The least size an image too small for its preset must be enlarged to by the rule's
/// model: `factor` times its size, rounded up. The model runs as many whole passes as cover
/// it, with no resize after: the preset's own resize makes the final size, in one step (the
/// CLI and the daemon enlarge alike).
pub fn enlarged_size(image: &DynamicImage, factor: f64) -> (u32, u32) {
    (
        (f64::from(image.width()) * factor).ceil() as u32,
        (f64::from(image.height()) * factor).ceil() as u32,
    )
}

/// The recipe's settings as written: the keys of a `recipe = "normalise"` rule and the flags
/// of `darkroom normalise` are the same (`min_sharpness` / `--min-sharpness`).
#[derive(Debug, Clone, Default, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
#[command(next_help_heading = "Fit, resampling and colour")]
pub struct NormaliseSettings {
    /// Resolution: sd15 (512), sd15-768, sdxl (1024), sdxl-1280, flux (1024), flux-1280, or
    /// a size like 768 or 832x1216. Default sdxl.
    #[arg(long, value_name = "PRESET|WxH")]
    pub preset: Option<String>,
    /// Fit: center (square crop), thirds (crop placed by detail), pad (letterbox), bucket
    /// (aspect-ratio buckets in 64-px steps). Default center.
    #[arg(long, value_name = "MODE")]
    pub mode: Option<String>,
    /// Resampling filter: lanczos3, bicubic, mitchell, bilinear, box, nearest. Default lanczos3.
    #[arg(long, value_name = "FILTER")]
    pub filter: Option<String>,
    /// Resample in linear light.
    #[arg(long)]
    #[serde(default)]
    pub linear_light: bool,
    /// Alpha: flatten (onto --background) or keep. Default flatten.
    #[arg(long, value_name = "flatten|keep")]
    pub alpha: Option<String>,
    /// Background that alpha is flattened onto (#rrggbb, white, black, gray). Default white.
    #[arg(long, value_name = "COLOUR")]
    pub background: Option<String>,
    /// Letterbox colour of the pad mode. Default black.
    #[arg(long, value_name = "COLOUR")]
    pub pad_colour: Option<String>,
    /// White balance: off, gray-world or white-patch. Default off.
    #[arg(
        long,
        value_name = "METHOD",
        help_heading = "Adjustments (all off by default)"
    )]
    pub white_balance: Option<String>,
    /// Contrast stretch between luminance percentiles LOW,HIGH (e.g. 0.5,99.5).
    #[arg(
        long,
        value_name = "LOW,HIGH",
        help_heading = "Adjustments (all off by default)"
    )]
    pub contrast_stretch: Option<String>,
    /// CLAHE with this clip limit (2 is typical).
    #[arg(
        long,
        value_name = "CLIP",
        help_heading = "Adjustments (all off by default)"
    )]
    pub clahe: Option<f32>,
    /// Saturation factor (1 = unchanged).
    #[arg(
        long,
        value_name = "FACTOR",
        help_heading = "Adjustments (all off by default)"
    )]
    pub saturation: Option<f32>,
    /// Vibrance (0 = unchanged; boosts muted colours more).
    #[arg(
        long,
        value_name = "AMOUNT",
        help_heading = "Adjustments (all off by default)"
    )]
    pub vibrance: Option<f32>,
    /// Edge-preserving denoise, bilateral[:SIGMA_PIXELS,SIGMA_LEVELS].
    #[arg(
        long,
        value_name = "bilateral[:S,R]",
        help_heading = "Adjustments (all off by default)"
    )]
    pub denoise: Option<String>,
    /// Unsharp mask AMOUNT[,RADIUS[,THRESHOLD]], e.g. 0.3,1.0,2.
    #[arg(
        long,
        value_name = "A[,R[,T]]",
        help_heading = "Adjustments (all off by default)"
    )]
    pub sharpen: Option<String>,
    /// Output format: png, webp (lossless), jpg, tiff. Default png.
    #[arg(long, value_name = "FORMAT", help_heading = "Output")]
    pub format: Option<String>,
    /// JPEG quality 1-100. Default 95.
    #[arg(long, value_name = "Q", help_heading = "Output")]
    pub quality: Option<u8>,
    /// Naming: sequential (0001.png), descriptive (--name-template) or date
    /// (2026-11-21_0001.png). Default sequential.
    #[arg(long, value_name = "SCHEME", help_heading = "Output")]
    pub naming: Option<String>,
    /// Template of descriptive names over {stem} {preset} {bucket} {n} {date}.
    /// Default {stem}_{preset}_{bucket}.
    #[arg(long, value_name = "TEMPLATE", help_heading = "Output")]
    pub name_template: Option<String>,
    /// Caption for images that came without a same-stem .txt, over {stem} {preset} {bucket}
    /// {width} {height}. Default: no caption file.
    #[arg(long, value_name = "TEMPLATE", help_heading = "Output")]
    pub caption_template: Option<String>,
    /// Reject below this sharpness (variance of the Laplacian), or off. Default 20.
    #[arg(long, value_name = "N|off", help_heading = "Quality control")]
    pub min_sharpness: Option<Limit>,
    /// Reject above this noise sigma (Immerkær, 8-bit levels), or off. Default 8.
    #[arg(long, value_name = "N|off", help_heading = "Quality control")]
    pub max_noise: Option<Limit>,
    /// Reject above this JPEG blockiness, or off. Default 0.5.
    #[arg(long, value_name = "N|off", help_heading = "Quality control")]
    pub max_blockiness: Option<Limit>,
    /// Reject when more than this share of pixels is clipped at 0 or 255, or off. Default 0.2.
    #[arg(long, value_name = "SHARE|off", help_heading = "Quality control")]
    pub max_clipped: Option<Limit>,
    /// Near-duplicate when perceptual hashes differ in at most this many bits, or off.
    /// Default 8.
    #[arg(long, value_name = "BITS|off", help_heading = "Quality control")]
    pub duplicate_distance: Option<Limit>,
}

impl NormaliseSettings {
    /// Checks every setting; all problems at once, each with its key.
    pub fn resolve(&self) -> Result<NormaliseOptions, Vec<(&'static str, String)>> {
        let mut problems = Vec::new();
        let mut check = |key: &'static str, result: Result<(), String>| {
            if let Err(e) = result {
                problems.push((key, e));
            }
        };
        let resolution = Resolution::parse(self.preset.as_deref().unwrap_or("sdxl"));
        check(
            "preset",
            resolution.as_ref().map(|_| ()).map_err(Clone::clone),
        );
        let mode = self.mode.as_deref().unwrap_or("center").parse::<FitMode>();
        check("mode", mode.as_ref().map(|_| ()).map_err(Clone::clone));
        let mut options = NormaliseOptions::new(
            resolution.unwrap_or_else(|_| Resolution::parse("sdxl").expect("preset")),
            mode.unwrap_or(FitMode::Center),
        );
        if let Some(f) = &self.filter {
            match f.parse() {
                Ok(f) => options.filter = f,
                Err(e) => check("filter", Err(e)),
            }
        }
        options.linear_light = self.linear_light;
        let background = match self.background.as_deref().map(parse_colour) {
            Some(Ok(c)) => c,
            Some(Err(e)) => {
                check("background", Err(e));
                [255; 3]
            }
            None => [255; 3],
        };
        options.alpha = match self.alpha.as_deref() {
            None | Some("flatten") => AlphaPolicy::Flatten(background),
            Some("keep") => AlphaPolicy::Keep,
            Some(other) => {
                check("alpha", Err(format!("'{other}': use flatten or keep")));
                AlphaPolicy::Flatten(background)
            }
        };
        if let Some(c) = &self.pad_colour {
            match parse_colour(c) {
                Ok(c) => options.pad_colour = c,
                Err(e) => check("pad_colour", Err(e)),
            }
        }
        options.adjust.white_balance = match self.white_balance.as_deref() {
            None | Some("off") | Some("none") => None,
            Some("gray-world") | Some("grey-world") => Some(WhiteBalance::GrayWorld),
            Some("white-patch") => Some(WhiteBalance::WhitePatch),
            Some(other) => {
                check(
                    "white_balance",
                    Err(format!("'{other}': use off, gray-world or white-patch")),
                );
                None
            }
        };
        if let Some(text) = &self.contrast_stretch {
            let parsed = match text.as_str() {
                "on" | "true" => Some((0.5, 99.5)),
                _ => text.split_once(',').and_then(|(a, b)| {
                    Some((a.trim().parse::<f64>().ok()?, b.trim().parse::<f64>().ok()?))
                }),
            };
            match parsed {
                Some((lo, hi)) if (0.0..50.0).contains(&lo) && (50.0..=100.0).contains(&hi) => {
                    options.adjust.contrast_stretch = Some((lo / 100.0, hi / 100.0))
                }
                _ => check(
                    "contrast_stretch",
                    Err(format!("'{text}': percentiles LOW,HIGH such as 0.5,99.5")),
                ),
            }
        }
        let positive =
            |key: &'static str,
             v: Option<f32>,
             check: &mut dyn FnMut(&'static str, Result<(), String>)| {
                v.filter(|v| {
                    let ok = v.is_finite() && *v >= 0.0;
                    if !ok {
                        check(key, Err(format!("{v}: must be a number, 0 or more")));
                    }
                    ok
                })
            };
        options.adjust.clahe = positive("clahe", self.clahe, &mut check);
        options.adjust.saturation = positive("saturation", self.saturation, &mut check);
        options.adjust.vibrance = self.vibrance.filter(|v| v.is_finite());
        if let Some(text) = &self.denoise {
            match text.parse::<Bilateral>() {
                Ok(b) => options.adjust.denoise = Some(b),
                Err(e) => check("denoise", Err(e.to_string())),
            }
        }
        if let Some(text) = &self.sharpen {
            match text.parse::<Unsharp>() {
                Ok(u) => options.adjust.sharpen = Some(u),
                Err(e) => check("sharpen", Err(e)),
            }
        }
        if let Some(format) = &self.format {
            match OutputFormat::from_path(Path::new(&format!("x.{format}"))) {
                Ok(f) => options.format = f,
                Err(_) => check(
                    "format",
                    Err(format!("'{format}': use png, webp, jpg or tiff")),
                ),
            }
        }
        if options.alpha == AlphaPolicy::Keep && options.format == OutputFormat::Jpeg {
            check(
                "alpha",
                Err("keep needs png, webp or tiff: JPEG has no alpha".into()),
            );
        }
        if let Some(q) = self.quality {
            if (1..=100).contains(&q) {
                options.quality = q;
            } else {
                check("quality", Err(format!("{q}: 1 to 100")));
            }
        }
        match Naming::parse(
            self.naming.as_deref().unwrap_or("sequential"),
            self.name_template.as_deref(),
        ) {
            Ok(n) => options.naming = n,
            Err(e) => check("naming", Err(e)),
        }
        if self.name_template.is_some() && !matches!(options.naming, Naming::Descriptive(_)) {
            check(
                "name_template",
                Err("only used with naming = descriptive".into()),
            );
        }
        options.caption_template = self.caption_template.clone();
        let t = &mut options.thresholds;
        for (value, slot) in [
            (self.min_sharpness, &mut t.min_sharpness),
            (self.max_noise, &mut t.max_noise),
            (self.max_blockiness, &mut t.max_blockiness),
            (self.max_clipped, &mut t.max_clipped),
        ] {
            if let Some(Limit(v)) = value {
                *slot = v;
            }
        }
        if let Some(Limit(v)) = self.duplicate_distance {
            t.duplicate_distance = v.map(|d| d.round().min(64.0) as u32);
        }
        if problems.is_empty() {
            Ok(options)
        } else {
            Err(problems)
        }
    }
}
