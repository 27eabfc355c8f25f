//! `split`: make the model-sized proxy of an original, with its metadata.

use super::{ensure_free_disk, layout_name, sibling_path, OpError};
use crate::core::geometry::{ProxyGeometry, Target};
use crate::core::proxy::make_proxy_owned;
use crate::io::decode::{self, DecodeLimits, ProxySource};
use crate::io::encode::estimated_size;
use crate::io::metadata::{OriginalInfo, ProxyMetadata, PNG_KEYWORD};
use crate::io::{atomic, png_encode};
use image::DynamicImage;
use std::path::{Path, PathBuf};

/// What a split wrote.
#[derive(Debug, Clone)]
pub struct SplitOutput {
    pub proxy_path: PathBuf,
    pub metadata_path: PathBuf,
    pub metadata: ProxyMetadata,
}

/// A proxy built in memory, with its metadata and the original's ICC profile.
#[derive(Debug, Clone)]
pub struct BuiltProxy {
    pub proxy: DynamicImage,
    pub metadata: ProxyMetadata,
    pub icc_profile: Option<Vec<u8>>,
}

/// Decodes an original for its proxy (a JPEG possibly reduced in the DCT domain, or already
/// resampled to the proxy's scaled size).
pub fn load_source(
    path: &Path,
    target: Target,
    limits: &DecodeLimits,
) -> Result<ProxySource, OpError> {
    let needed = |w: u32, h: u32| {
        let g = ProxyGeometry::plan(w, h, target);
        (g.scaled_width, g.scaled_height)
    };
    decode::load_proxy_sized(path, limits, &needed).map_err(|e| OpError::decode(path, e))
}

/// Builds the proxy of a decoded original, consuming it (its alpha is premultiplied in place
/// rather than in a copy). Pure apart from naming the path in metadata.
pub fn build_proxy(
    path: &Path,
    source: ProxySource,
    target: Target,
) -> Result<BuiltProxy, OpError> {
    let ProxySource {
        loaded,
        full_width,
        full_height,
        ..
    } = source;
    let geometry = ProxyGeometry::plan(full_width, full_height, target);
    let info = OriginalInfo {
        path: path.display().to_string(),
        sha256: loaded.sha256,
        width: full_width,
        height: full_height,
        exif_orientation: loaded.exif_orientation,
        color: layout_name(&loaded.image),
        has_icc_profile: loaded.icc_profile.is_some(),
    };
    let proxy =
        make_proxy_owned(loaded.image, &geometry).map_err(|e| OpError::Internal(e.to_string()))?;
    let metadata = ProxyMetadata::new(info, target, geometry, layout_name(&proxy));
    Ok(BuiltProxy {
        proxy,
        metadata,
        icc_profile: loaded.icc_profile,
    })
}

/// Where `split` writes for `input`: `{stem}_proxy.png` and `{stem}_proxy_metadata.txt`.
pub fn output_paths(input: &Path, out_dir: Option<&Path>) -> (PathBuf, PathBuf) {
    (
        sibling_path(input, out_dir, "_proxy.png"),
        sibling_path(input, out_dir, "_proxy_metadata.txt"),
    )
}

/// A proxy is a few MB of rows: bands of 256 KiB (instead of the default 1 MiB) give every
/// core a share (a 1024x1024 RGB proxy was three bands, two of them on one core). A proxy is
/// an exchange file, read once by the model tool: Paeth on every row encodes the 15-MP
/// benchmark's proxy in about three quarters of the adaptive choice's time, 1.8% larger.
const PROXY_PNG: png_encode::PngOptions = png_encode::PngOptions {
    band_bytes: 256 << 10,
    filter: png_encode::FilterChoice::Paeth,
    ..png_encode::PngOptions::DEFAULT
};

/// Writes a built proxy as PNG to `path` (durably, after checking the free disk), with its
/// metadata and any `extra_texts` in iTXt chunks and the original's ICC profile. Returns the
/// SHA-256 of the bytes written.
pub fn write_proxy_file(
    built: &BuiltProxy,
    path: &Path,
    extra_texts: &[(String, String)],
) -> Result<String, OpError> {
    let g = &built.metadata.geometry;
    let need = estimated_size(g.canvas_width, g.canvas_height, 4) + 64 * 1024;
    ensure_free_disk(&atomic::parent_dir(path), need)?;
    let mut texts = vec![(PNG_KEYWORD.to_string(), built.metadata.to_compact_json())];
    texts.extend_from_slice(extra_texts);
    let bytes = png_encode::encode(
        &built.proxy,
        built.icc_profile.as_deref(),
        &texts,
        &PROXY_PNG,
    )
    .map_err(|e| OpError::write(path, e))?;
    atomic::write_atomic(path, &bytes).map_err(|e| OpError::write(path, e))?;
    Ok(crate::io::hash::sha256_hex(&bytes))
}

/// Splits `input` into a proxy for `target`, writing beside it (or into `out_dir`).
pub fn split(
    input: &Path,
    target: Target,
    out_dir: Option<&Path>,
    limits: &DecodeLimits,
) -> Result<SplitOutput, OpError> {
    let built = build_proxy(input, load_source(input, target, limits)?, target)?;
    let (proxy_path, metadata_path) = output_paths(input, out_dir);
    let g = &built.metadata.geometry;
    write_proxy_file(&built, &proxy_path, &[])?;
    atomic::write_atomic(&metadata_path, built.metadata.to_pretty_json().as_bytes())
        .map_err(|e| OpError::write(&metadata_path, e))?;
    tracing::info!(
        input = %input.display(),
        proxy = %proxy_path.display(),
        original = %format!("{}x{}", g.original_width, g.original_height),
        scaled = %format!("{}x{}", g.scaled_width, g.scaled_height),
        canvas = %format!("{}x{}", g.canvas_width, g.canvas_height),
        "proxy written"
    );
    Ok(SplitOutput {
        proxy_path,
        metadata_path,
        metadata: built.metadata,
    })
}
