//! `merge`: apply delta(s) to the full-resolution original.
//!
//! The geometry comes from the metadata embedded in the delta PNG, else from a
//! `_proxy_metadata.txt` beside the delta or the original, else it is inferred from the
//! sizes. A delta made for another original (other size, or other content when metadata
//! says so) is refused with the reason.

use super::{ensure_free_disk, sibling_path, warn_if_memory_heavy, OpError};
use crate::core::delta::normalise_delta_layout;
use crate::core::geometry::ProxyGeometry;
use crate::core::guided::GuidedParams;
use crate::core::merge::{
    prepare_guided, promote_for_colour, DeltaLayer, Enlarge, MergePlan, Rect,
};
use crate::core::proxy::make_proxy_owned;
use crate::io::decode::{self, DecodeLimits, LoadedImage};
use crate::io::encode::{self, estimated_size, OutputFormat};
use crate::io::external::UpscaleMethod;
use crate::io::metadata::{self, ProxyMetadata};
use crate::io::{atomic, png_encode};
use image::DynamicImage;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How the proxy's change comes back to full resolution.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MergeMethod {
    /// `original + upscale(delta)`: imgproxyproc's merge, bit for bit in spirit.
    Additive,
    /// Local affine colour maps fitted on the proxy, applied to the original's own colours,
    /// plus the additive residual of what they miss (see `core::guided`).
    Guided(GuidedParams),
}

impl MergeMethod {
    pub fn name(&self) -> &'static str {
        match self {
            MergeMethod::Additive => "additive",
            MergeMethod::Guided(_) => "guided",
        }
    }
}

impl std::str::FromStr for MergeMethod {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim().to_ascii_lowercase().as_str() {
            "additive" => Ok(MergeMethod::Additive),
            "guided" => Ok(MergeMethod::Guided(GuidedParams::default())),
            other => Err(format!(
                "unknown merge method '{other}': use additive (imgproxyproc's delta) or guided"
            )),
        }
    }
}

/// Options of a merge. Every field documents its default.
#[derive(Debug, Clone)]
pub struct MergeOptions {
    /// A refined delta to apply after the main one. Default none.
    pub refined_delta: Option<PathBuf>,
    /// How the main delta is upscaled. Default `basic` (float Lanczos3).
    pub upscale_method: UpscaleMethod,
    /// How the refined delta is upscaled. Default: the main method.
    pub refined_upscale_method: Option<UpscaleMethod>,
    /// Output path; its extension picks the format. Default `{stem}_merged.png` beside the original.
    pub output: Option<PathBuf>,
    /// Time limit of one external upscaler run. Default 600 s.
    pub command_timeout: Duration,
    /// Merge even when the metadata says the original file differs. Default off.
    pub force: bool,
    /// Additive (default, imgproxyproc-compatible) or guided.
    pub method: MergeMethod,
    /// The proxy the delta was made against, when the caller already has it (the guided
    /// merge needs it). Default none: rebuilt from the original as `split` made it.
    pub proxy: Option<DynamicImage>,
    /// Where `model:<name>` looks for `<name>.onnx` when the name is not a path. Default
    /// `models`.
    pub models_dir: PathBuf,
}

impl Default for MergeOptions {
    fn default() -> Self {
        MergeOptions {
            refined_delta: None,
            upscale_method: UpscaleMethod::Basic,
            refined_upscale_method: None,
            output: None,
            command_timeout: Duration::from_secs(600),
            force: false,
            method: MergeMethod::Additive,
            proxy: None,
            models_dir: PathBuf::from("models"),
        }
    }
}

/// What a merge wrote.
#[derive(Debug, Clone)]
pub struct MergeOutput {
    pub output_path: PathBuf,
    pub geometry: ProxyGeometry,
    /// Where the geometry came from: "embedded", a sidecar path, or "inferred".
    pub geometry_source: String,
}

/// A delta file read for merging.
struct LoadedDelta {
    image: DynamicImage,
    embedded: Option<ProxyMetadata>,
}

fn load_delta(path: &Path, limits: &DecodeLimits) -> Result<LoadedDelta, OpError> {
    let bytes =
        decode::read_bounded(path, limits.max_file_bytes).map_err(|e| OpError::decode(path, e))?;
    let loaded = decode::decode_bytes(&bytes, limits).map_err(|e| OpError::decode(path, e))?;
    Ok(LoadedDelta {
        image: normalise_delta_layout(&loaded.image),
        embedded: metadata::read_embedded(&bytes),
    })
}

/// Sidecar metadata files that may belong to this delta, most specific first.
fn sidecar_candidates(original: &Path, delta: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let stem = crate::io::names::stem_of(delta);
    if let Some(base) = ["_delta_refined", "_delta"]
        .iter()
        .find_map(|suffix| stem.strip_suffix(suffix))
    {
        out.push(atomic::parent_dir(delta).join(format!("{base}_metadata.txt")));
    }
    out.push(sibling_path(original, None, "_proxy_metadata.txt"));
    out
}

/// Finds the geometry for `delta` and checks it fits `original`.
fn resolve_geometry(
    original_path: &Path,
    original: &LoadedImage,
    delta_path: &Path,
    delta: &LoadedDelta,
    force: bool,
) -> Result<(ProxyGeometry, String), OpError> {
    let (w, h) = (original.image.width(), original.image.height());
    let (dw, dh) = (delta.image.width(), delta.image.height());
    let mut found: Option<(ProxyMetadata, String)> =
        delta.embedded.clone().map(|m| (m, "embedded".to_string()));
    if found.is_none() {
        for candidate in sidecar_candidates(original_path, delta_path) {
            if candidate.is_file() {
                let meta = ProxyMetadata::read(&candidate)
                    .map_err(|e| OpError::mismatch(&candidate, e))?;
                found = Some((meta, candidate.display().to_string()));
                break;
            }
        }
    }
    let Some((meta, source)) = found else {
        tracing::info!(delta = %delta_path.display(), "no proxy metadata found; geometry inferred from the sizes");
        return Ok((ProxyGeometry::infer(w, h, dw, dh), "inferred".into()));
    };
    let g = meta.geometry;
    if (g.original_width, g.original_height) != (w, h) {
        return Err(OpError::mismatch(
            original_path,
            format!(
                "the delta was made for a {}x{} original ({}), but this image is {w}x{h}",
                g.original_width, g.original_height, meta.original.path
            ),
        ));
    }
    if meta.original.sha256 != original.sha256 {
        if force {
            tracing::warn!(expected = %meta.original.sha256, actual = %original.sha256, "original differs from the one the delta was made from; merging anyway (--force)");
        } else {
            return Err(OpError::mismatch(
                original_path,
                format!(
                    "this is not the file the delta was made from ({} had sha256 {}…, this one {}…); pass --force if it was only re-saved",
                    meta.original.path,
                    &meta.original.sha256[..12.min(meta.original.sha256.len())],
                    &original.sha256[..12]
                ),
            ));
        }
    }
    if (g.canvas_width, g.canvas_height) != (dw, dh) {
        return Err(OpError::mismatch(
            delta_path,
            format!(
                "the delta is {dw}x{dh} but its proxy was {}x{}",
                g.canvas_width, g.canvas_height
            ),
        ));
    }
    Ok((g, source))
}

/// Turns one delta (in its PNG layout, as `core::delta::normalise_delta_layout` leaves it)
/// into a merge layer, running an external upscaler if asked. `delta_path` names it in
/// errors.
pub fn layer_for(
    delta: DynamicImage,
    delta_path: &Path,
    geometry: &ProxyGeometry,
    method: &UpscaleMethod,
    command_timeout: Duration,
    limits: &DecodeLimits,
) -> Result<DeltaLayer, OpError> {
    let area = geometry.area();
    match method {
        // A model enlarges the guided merge's new content, not the delta.
        UpscaleMethod::Basic | UpscaleMethod::Model(_) => Ok(DeltaLayer { image: delta, area }),
        UpscaleMethod::Command(template) => {
            // Crop first, so padding never reaches the upscaler or the edges.
            let cropped = delta.crop_imm(area.x, area.y, area.width, area.height);
            let sent_16 = cropped.color().bytes_per_pixel() / cropped.color().channel_count() == 2;
            let target = (geometry.original_width, geometry.original_height);
            let returned = template
                .run(&cropped, target, command_timeout, limits)
                .map_err(|e| OpError::External {
                    path: delta_path.display().to_string(),
                    reason: e.to_string(),
                })?;
            let mut returned = normalise_delta_layout(&returned);
            let got_16 = returned.color().bytes_per_pixel() / returned.color().channel_count() == 2;
            if sent_16 != got_16 {
                tracing::warn!("the external upscaler changed the delta's bit depth; converting back (expect about one level of error)");
                returned = match (sent_16, returned.color().has_color()) {
                    (true, true) => DynamicImage::ImageRgb16(returned.to_rgb16()),
                    (true, false) => DynamicImage::ImageLuma16(returned.to_luma16()),
                    (false, true) => DynamicImage::ImageRgb8(returned.to_rgb8()),
                    (false, false) => DynamicImage::ImageLuma8(returned.to_luma8()),
                };
            }
            if (returned.width(), returned.height()) != target {
                tracing::info!(
                    returned = %format!("{}x{}", returned.width(), returned.height()),
                    target = %format!("{}x{}", target.0, target.1),
                    "resampling the external upscaler's output to the original's size"
                );
            }
            let (rw, rh) = (returned.width(), returned.height());
            Ok(DeltaLayer {
                image: returned,
                area: Rect {
                    x: 0,
                    y: 0,
                    width: rw,
                    height: rh,
                },
            })
        }
    }
}

/// Rebuilds the proxy the delta was made against, exactly as `split` made it (same reduced
/// decode, same resampling), for the guided merge's fit.
fn rebuild_proxy(
    path: &Path,
    geometry: &ProxyGeometry,
    limits: &DecodeLimits,
) -> Result<DynamicImage, OpError> {
    let needed = |_: u32, _: u32| (geometry.scaled_width, geometry.scaled_height);
    let source =
        decode::load_proxy_sized(path, limits, &needed).map_err(|e| OpError::decode(path, e))?;
    make_proxy_owned(source.loaded.image, geometry).map_err(|e| OpError::Internal(e.to_string()))
}

/// Merges the delta(s) into `original_path` and writes the result. `progress` receives
/// (rows just finished, total rows) from worker threads.
pub fn merge(
    original_path: &Path,
    delta_path: &Path,
    options: &MergeOptions,
    limits: &DecodeLimits,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<MergeOutput, OpError> {
    let output_path = options
        .output
        .clone()
        .unwrap_or_else(|| sibling_path(original_path, None, "_merged.png"));
    // A bad output name is reported before anything is decoded.
    OutputFormat::from_path(&output_path).map_err(|e| OpError::Usage(e.to_string()))?;
    let started = std::time::Instant::now();
    let original =
        decode::load(original_path, limits).map_err(|e| OpError::decode(original_path, e))?;
    tracing::debug!(elapsed = ?started.elapsed(), "original decoded");
    let delta = load_delta(delta_path, limits)?;
    let (geometry, geometry_source) =
        resolve_geometry(original_path, &original, delta_path, &delta, options.force)?;
    let content_model = match &options.upscale_method {
        UpscaleMethod::Model(name) => Some(name.clone()),
        _ => None,
    };
    if content_model.is_some() && options.method == MergeMethod::Additive {
        return Err(OpError::Usage(
            "a model (--upscale-method model:...) enlarges the new content of the guided merge; add --method guided".into(),
        ));
    }
    if let MergeMethod::Guided(_) = options.method {
        let methods = [
            Some(&options.upscale_method),
            options.refined_upscale_method.as_ref(),
        ];
        if methods
            .iter()
            .flatten()
            .any(|m| matches!(m, UpscaleMethod::Command(_)))
        {
            return Err(OpError::Usage(
                "the guided merge upsamples its own colour maps, so an external delta upscaler (cmd(...)) has nothing to do; use --method additive with cmd(...), or drop --upscale-method".into(),
            ));
        }
    }

    let mut layers = vec![layer_for(
        delta.image,
        delta_path,
        &geometry,
        &options.upscale_method,
        options.command_timeout,
        limits,
    )?];
    if let Some(refined_path) = &options.refined_delta {
        let refined = load_delta(refined_path, limits)?;
        if (refined.image.width(), refined.image.height())
            != (geometry.canvas_width, geometry.canvas_height)
        {
            return Err(OpError::mismatch(
                refined_path,
                format!(
                    "the refined delta is {}x{} but the main delta is {}x{}",
                    refined.image.width(),
                    refined.image.height(),
                    geometry.canvas_width,
                    geometry.canvas_height
                ),
            ));
        }
        let method = options
            .refined_upscale_method
            .as_ref()
            .unwrap_or(&options.upscale_method);
        layers.push(layer_for(
            refined.image,
            refined_path,
            &geometry,
            method,
            options.command_timeout,
            limits,
        )?);
    }

    let rebuilt;
    let proxy = match (options.method, &options.proxy) {
        (MergeMethod::Additive, _) => None,
        (MergeMethod::Guided(_), Some(given)) => Some(given),
        (MergeMethod::Guided(_), None) => {
            rebuilt = rebuild_proxy(original_path, &geometry, limits)?;
            Some(&rebuilt)
        }
    };
    let model = content_model
        .map(|name| {
            let path = crate::ops::upscale::resolve_model(&name, &options.models_dir)?;
            crate::ops::upscale::load_model(&path, &Default::default())
        })
        .transpose()?
        .map(std::sync::Mutex::new);
    let enlarge = |crop: DynamicImage, target: (u32, u32)| {
        let mut model = model
            .as_ref()
            .expect("only called with a model")
            .lock()
            .expect("one user");
        let context = crate::ops::upscale::recommended_context(&model.name);
        crate::ops::upscale::upscale_passes(
            &crop,
            &mut model,
            256,
            context,
            1,
            Some(target),
            &mut |_, _| {},
        )
        .map_err(OpError::from)
    };
    merge_layers(
        original,
        &layers,
        &geometry,
        options.method,
        proxy,
        model.is_some().then_some(&enlarge as Enlarge<'_, OpError>),
        &output_path,
        delta_path,
        progress,
    )?;
    tracing::debug!(elapsed = ?started.elapsed(), "written and synced");
    tracing::info!(
        original = %original_path.display(),
        delta = %delta_path.display(),
        output = %output_path.display(),
        geometry = %geometry_source,
        method = options.method.name(),
        "merged"
    );
    Ok(MergeOutput {
        output_path,
        geometry,
        geometry_source,
    })
}

/// The merge itself, for callers that hold everything in memory: applies `layers` (made
/// for `geometry`) to the decoded `original` by `method` (the guided merge fits its maps on
/// `proxy`, which it needs), encodes in the output path's format with the original's
/// metadata, and writes the result atomically. `label` names the change in errors (the
/// delta, or the returned image). `progress` receives (rows just finished, total rows).
#[allow(clippy::too_many_arguments)]
pub fn merge_layers(
    original: LoadedImage,
    layers: &[DeltaLayer],
    geometry: &ProxyGeometry,
    method: MergeMethod,
    proxy: Option<&DynamicImage>,
    enlarge: Option<Enlarge<'_, OpError>>,
    output_path: &Path,
    label: &Path,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<(), OpError> {
    let started = std::time::Instant::now();
    let format = OutputFormat::from_path(output_path).map_err(|e| OpError::Usage(e.to_string()))?;
    let delta_path = label;
    let LoadedImage {
        image,
        icc_profile,
        exif,
        packets,
        ..
    } = original;
    let mut image = promote_for_colour(image, layers);
    let (w, h) = (image.width(), image.height());
    let bpp = u64::from(image.color().bytes_per_pixel());
    warn_if_memory_heavy(
        "this merge",
        estimated_size(w, h, bpp) * 2
            + u64::from(geometry.scaled_height) * u64::from(w) * 12 * layers.len() as u64,
    );
    ensure_free_disk(&atomic::parent_dir(output_path), estimated_size(w, h, bpp))?;
    if let Some(loss) = format.loss_for(&image) {
        tracing::warn!(output = %output_path.display(), "{loss}");
    }
    let guided = match method {
        MergeMethod::Additive => None,
        MergeMethod::Guided(params) => {
            let fit_started = std::time::Instant::now();
            let Some(proxy) = proxy else {
                return Err(OpError::Internal(
                    "the guided merge needs the proxy the delta was made against".into(),
                ));
            };
            if (proxy.width(), proxy.height()) != (geometry.canvas_width, geometry.canvas_height) {
                return Err(OpError::Internal(format!(
                    "the proxy given for the guided merge is {}x{}, not the delta's {}x{}",
                    proxy.width(),
                    proxy.height(),
                    geometry.canvas_width,
                    geometry.canvas_height
                )));
            }
            let gray = !image.color().has_color();
            let prepared = prepare_guided(proxy, layers, gray, &params)
                .map_err(|e| OpError::mismatch(delta_path, e))?;
            tracing::debug!(elapsed = ?fit_started.elapsed(), cell = params.cell, bins = params.bins, epsilon = params.epsilon, "guided maps fitted");
            Some(prepared)
        }
    };
    let content = match (&guided, enlarge) {
        (Some(g), Some(enlarge)) => {
            let started = std::time::Instant::now();
            let content = g.enlarge_content(w, h, enlarge)?;
            if let Some(layer) = &content {
                tracing::debug!(elapsed = ?started.elapsed(), area = ?layer.rect, "new content enlarged by the model");
            }
            content
        }
        _ => None,
    };
    let plan = match &guided {
        None => MergePlan::new(&image, layers),
        Some(g) => MergePlan::guided(&image, &g.field, &g.residual).map(|plan| match &content {
            Some(layer) => plan.with_content(&g.field, layer, h as usize),
            None => plan,
        }),
    }
    .map_err(|e| OpError::mismatch(delta_path, e))?;
    let bytes = if format == OutputFormat::Png {
        // Apply, filter and deflate each band in one pass, while it is in cache.
        let rows = |start: usize, end: usize, out: &mut Vec<u8>| {
            // A few row buffers per ~1 MiB band: cheap, and never stale across merges.
            let mut scratch = plan.scratch();
            plan.render_rows_big_endian(&image, start, end, out, &mut scratch);
            progress((end - start) as u64, u64::from(h));
        };
        let png = png_encode::encode_rows(
            w,
            h,
            image.color(),
            png_encode::Rows::Generated(&rows),
            icc_profile.as_deref(),
            &[],
            &Default::default(),
        )
        .map_err(|e| OpError::write(output_path, e))?;
        match &exif {
            Some(exif) => png_encode::with_exif(png, exif),
            None => png,
        }
    } else {
        plan.apply_in_place(&mut image, &|rows| progress(rows, u64::from(h)))
            .map_err(|e| OpError::mismatch(delta_path, e))?;
        encode::encode(&image, format, icc_profile.as_deref(), exif.as_deref(), &[])
            .map_err(|e| OpError::write(output_path, e))?
    };
    let bytes = crate::io::xmp::embed(bytes, format, &packets, super::canvas_of(&image));
    drop(image);
    tracing::debug!(elapsed = ?started.elapsed(), bytes = bytes.len(), "encoded");
    atomic::write_atomic(output_path, &bytes).map_err(|e| OpError::write(output_path, e))?;
    Ok(())
}
