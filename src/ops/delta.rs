//! `split-with-processed` (alias `delta`): the delta(s) between the proxy and what the model
//! made of it.

use super::split::{build_proxy, load_source};
use super::{ensure_free_disk, sibling_path, OpError};
use crate::core::delta::{self, DeltaDepth, Deltas};
use crate::core::geometry::Target;
use crate::io::decode::{self, DecodeLimits};
use crate::io::encode::estimated_size;
use crate::io::metadata::{ProxyMetadata, PNG_KEYWORD};
use crate::io::{atomic, png_encode};
use std::path::{Path, PathBuf};

/// Options of a delta computation.
#[derive(Debug, Clone)]
pub struct DeltaOptions {
    /// Also write the refined delta. Default off.
    pub refine: bool,
    /// Where to write the main delta. Default `{original stem}_proxy_delta.png` beside the original.
    pub delta_path: Option<PathBuf>,
    /// 8 (imgproxyproc-compatible, default) or 16 bits.
    pub depth: DeltaDepth,
    /// A proxy file to use instead of rebuilding it from the original.
    pub proxy_path: Option<PathBuf>,
}

/// What was written.
#[derive(Debug, Clone)]
pub struct DeltaOutput {
    pub delta_path: PathBuf,
    pub refined_path: Option<PathBuf>,
    pub metadata: ProxyMetadata,
    /// The proxy the delta was computed against, for a guided merge that follows.
    pub proxy: image::DynamicImage,
}

/// Path of the refined delta that goes with a main delta path.
pub fn refined_path_for(delta_path: &Path) -> PathBuf {
    let stem = crate::io::names::stem_of(delta_path);
    atomic::parent_dir(delta_path).join(format!("{stem}_refined.png"))
}

/// Computes and writes the delta(s) of `processed` against the proxy of `original`.
pub fn split_with_processed(
    original_path: &Path,
    processed_path: &Path,
    target: Target,
    options: &DeltaOptions,
    limits: &DecodeLimits,
) -> Result<DeltaOutput, OpError> {
    let built = build_proxy(
        original_path,
        load_source(original_path, target, limits)?,
        target,
    )?;
    let proxy = match &options.proxy_path {
        None => built.proxy,
        Some(path) => {
            let loaded = decode::load(path, limits).map_err(|e| OpError::decode(path, e))?;
            let g = &built.metadata.geometry;
            if (loaded.image.width(), loaded.image.height()) != (g.canvas_width, g.canvas_height) {
                return Err(OpError::mismatch(
                    path,
                    format!(
                        "the proxy is {}x{} but {} at {} gives a {}x{} proxy",
                        loaded.image.width(),
                        loaded.image.height(),
                        original_path.display(),
                        target,
                        g.canvas_width,
                        g.canvas_height
                    ),
                ));
            }
            loaded.image
        }
    };
    let processed =
        decode::load(processed_path, limits).map_err(|e| OpError::decode(processed_path, e))?;
    let Deltas { main, refined } =
        delta::compute(&proxy, &processed.image, options.depth, options.refine)
            .map_err(|e| OpError::mismatch(processed_path, e))?;

    let delta_path = options
        .delta_path
        .clone()
        .unwrap_or_else(|| sibling_path(original_path, None, "_proxy_delta.png"));
    let refined_path = refined.as_ref().map(|_| {
        if options.delta_path.is_some() {
            refined_path_for(&delta_path)
        } else {
            sibling_path(original_path, None, "_proxy_delta_refined.png")
        }
    });
    let need = 2 * estimated_size(main.width(), main.height(), 6);
    ensure_free_disk(&atomic::parent_dir(&delta_path), need)?;

    let texts = [(PNG_KEYWORD.to_string(), built.metadata.to_compact_json())];
    let write = |image: &image::DynamicImage, path: &Path| -> Result<(), OpError> {
        let bytes = png_encode::encode(image, None, &texts, &Default::default())
            .map_err(|e| OpError::write(path, e))?;
        atomic::write_atomic(path, &bytes).map_err(|e| OpError::write(path, e))
    };
    write(&main, &delta_path)?;
    if let (Some(image), Some(path)) = (&refined, &refined_path) {
        write(image, path)?;
    }
    tracing::info!(
        original = %original_path.display(),
        processed = %processed_path.display(),
        delta = %delta_path.display(),
        refined = %refined_path
            .as_ref()
            .map_or_else(|| "none".to_string(), |p| p.display().to_string()),
        bits = options.depth.bits(),
        "delta written"
    );
    Ok(DeltaOutput {
        delta_path,
        refined_path,
        metadata: built.metadata,
        proxy,
    })
}
