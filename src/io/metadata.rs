//! The proxy metadata: everything a merge needs to put a delta back, and the checks that
//! refuse a delta made from another original.
//!
//! It is written as pretty JSON to `{stem}_proxy_metadata.txt` beside the proxy (the name
//! imgproxyproc uses) and embedded, compact, in every proxy and delta PNG as an iTXt chunk
//! with keyword [`PNG_KEYWORD`], so a delta carries its own geometry wherever it travels.

use crate::core::geometry::{ProxyGeometry, Target};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// iTXt keyword of the embedded metadata.
pub const PNG_KEYWORD: &str = "darkroom:proxy";
/// Value of the `format` field, so other JSON is never mistaken for proxy metadata.
pub const FORMAT: &str = "darkroom-proxy-metadata";

/// What the original was when the proxy was made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OriginalInfo {
    /// Path as given to `split` (informational).
    pub path: String,
    /// SHA-256 of the original file's bytes.
    pub sha256: String,
    /// Upright size (EXIF orientation applied).
    pub width: u32,
    pub height: u32,
    /// EXIF orientation found in the file and applied (1 = none).
    pub exif_orientation: u8,
    /// Pixel layout, e.g. "Rgb8", "Rgba16".
    pub color: String,
    pub has_icc_profile: bool,
}

/// The metadata file's content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProxyMetadata {
    pub format: String,
    pub version: u32,
    pub darkroom_version: String,
    pub original: OriginalInfo,
    /// The target as the user wrote it.
    pub target: Target,
    pub geometry: ProxyGeometry,
    /// Resampling filter of the downscale.
    pub filter: String,
    /// Proxy layout, e.g. "Rgb8".
    pub proxy_color: String,
}

#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    #[error("cannot read metadata {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not darkroom proxy metadata: {reason}")]
    Invalid { path: String, reason: String },
}

impl ProxyMetadata {
    pub fn new(
        original: OriginalInfo,
        target: Target,
        geometry: ProxyGeometry,
        proxy_color: String,
    ) -> Self {
        ProxyMetadata {
            format: FORMAT.into(),
            version: 1,
            darkroom_version: env!("CARGO_PKG_VERSION").into(),
            original,
            target,
            geometry,
            filter: "lanczos3".into(),
            proxy_color,
        }
    }

    pub fn to_compact_json(&self) -> String {
        serde_json::to_string(self).expect("metadata serialises")
    }

    pub fn to_pretty_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("metadata serialises") + "\n"
    }

    pub fn parse(text: &str, origin: &str) -> Result<Self, MetadataError> {
        let meta: ProxyMetadata =
            serde_json::from_str(text).map_err(|e| MetadataError::Invalid {
                path: origin.into(),
                reason: e.to_string(),
            })?;
        if meta.format != FORMAT {
            return Err(MetadataError::Invalid {
                path: origin.into(),
                reason: format!("format is '{}', expected '{FORMAT}'", meta.format),
            });
        }
        Ok(meta)
    }

    pub fn read(path: &Path) -> Result<Self, MetadataError> {
        let text = std::fs::read_to_string(path).map_err(|source| MetadataError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }
}

/// Largest embedded metadata text inflated (darkroom writes about 1 KiB): a compressed chunk
/// that inflates to more is ignored, so a text-chunk bomb cannot take memory.
pub const EMBEDDED_TEXT_LIMIT: usize = 1 << 20;

/// Reads darkroom's iTXt metadata from a PNG's header chunks, if the file is a PNG with one.
pub fn read_embedded(png_bytes: &[u8]) -> Option<ProxyMetadata> {
    let decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
    let reader = decoder.read_info().ok()?;
    let info = reader.info();
    let mut chunk = info
        .utf8_text
        .iter()
        .find(|chunk| chunk.keyword == PNG_KEYWORD)?
        .clone();
    chunk.decompress_text_with_limit(EMBEDDED_TEXT_LIMIT).ok()?;
    let text = chunk.get_text().ok()?;
    ProxyMetadata::parse(&text, "embedded PNG metadata").ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ProxyMetadata {
        let target = Target::pixels(64, 64);
        ProxyMetadata::new(
            OriginalInfo {
                path: "a.jpg".into(),
                sha256: "00".repeat(32),
                width: 100,
                height: 50,
                exif_orientation: 1,
                color: "Rgb8".into(),
                has_icc_profile: false,
            },
            target,
            ProxyGeometry::plan(100, 50, target),
            "Rgb8".into(),
        )
    }

    #[test]
    fn survives_a_json_round_trip() {
        let m = sample();
        assert_eq!(ProxyMetadata::parse(&m.to_pretty_json(), "t").unwrap(), m);
    }

    #[test]
    fn embedded_metadata_is_read_back_from_a_png() {
        let m = sample();
        let img = image::DynamicImage::new_rgb8(4, 4);
        let bytes = crate::io::png_encode::encode(
            &img,
            None,
            &[(PNG_KEYWORD.into(), m.to_compact_json())],
            &Default::default(),
        )
        .unwrap();
        assert_eq!(read_embedded(&bytes), Some(m));
    }

    #[test]
    fn other_json_is_refused() {
        assert!(ProxyMetadata::parse("{\"format\":\"x\"}", "t").is_err());
    }
}
