//! Writing images: the output format follows the file extension (png by default, tiff,
//! webp lossless, jpg at quality 95), and the original's ICC profile is embedded. Callers
//! write the bytes with [`super::atomic::write_atomic`].

use super::png_encode::{self, PngOptions};
use image::codecs::jpeg::JpegEncoder;
use image::codecs::tiff::TiffEncoder;
use image::codecs::webp::WebPEncoder;
use image::{DynamicImage, ImageEncoder};
use std::path::Path;

/// Output formats darkroom writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    Png,
    Tiff,
    /// Lossless WebP (8-bit).
    WebP,
    /// JPEG at quality 95 (8-bit, no alpha).
    Jpeg,
}

#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("unknown output extension '.{0}': use .png, .tif/.tiff, .webp or .jpg/.jpeg")]
    UnknownExtension(String),
    #[error("PNG encoding failed: {0}")]
    Png(#[from] png_encode::PngEncodeError),
    #[error("{format:?} encoding failed: {reason}")]
    Codec {
        format: OutputFormat,
        reason: String,
    },
    #[error("cannot write: {0}")]
    Io(#[from] std::io::Error),
}

impl OutputFormat {
    /// The usual file extension.
    pub fn extension(self) -> &'static str {
        match self {
            OutputFormat::Png => "png",
            OutputFormat::Tiff => "tif",
            OutputFormat::WebP => "webp",
            OutputFormat::Jpeg => "jpg",
        }
    }

    /// The format an output path asks for; a path without extension gets PNG.
    pub fn from_path(path: &Path) -> Result<Self, EncodeError> {
        let Some(ext) = path.extension().and_then(|e| e.to_str()) else {
            return Ok(OutputFormat::Png);
        };
        match ext.to_ascii_lowercase().as_str() {
            "png" => Ok(OutputFormat::Png),
            "tif" | "tiff" => Ok(OutputFormat::Tiff),
            "webp" => Ok(OutputFormat::WebP),
            "jpg" | "jpeg" => Ok(OutputFormat::Jpeg),
            other => Err(EncodeError::UnknownExtension(other.to_string())),
        }
    }

    /// What this format loses from `image`, for a warning; None when nothing is lost.
    pub fn loss_for(self, image: &DynamicImage) -> Option<&'static str> {
        let sixteen = image.color().bytes_per_pixel() / image.color().channel_count() == 2;
        match self {
            OutputFormat::Jpeg if image.color().has_alpha() => {
                Some("JPEG has no alpha: transparency is dropped and it is re-encoded lossily")
            }
            OutputFormat::Jpeg if sixteen => {
                Some("JPEG is 8-bit and lossy: 16-bit samples are rounded")
            }
            OutputFormat::WebP if sixteen => Some("WebP is 8-bit: 16-bit samples are rounded"),
            _ => None,
        }
    }
}

/// Encodes `image` in `format` with the ICC profile and (PNG only) text chunks.
pub fn encode(
    image: &DynamicImage,
    format: OutputFormat,
    icc_profile: Option<&[u8]>,
    exif: Option<&[u8]>,
    texts: &[(String, String)],
) -> Result<Vec<u8>, EncodeError> {
    let codec = |reason: String| EncodeError::Codec { format, reason };
    let mut out = Vec::new();
    let embedded = Embedded { icc_profile, exif };
    match format {
        OutputFormat::Png => {
            let png = png_encode::encode(image, icc_profile, texts, &PngOptions::default())?;
            return Ok(match exif {
                Some(exif) => png_encode::with_exif(png, exif),
                None => png,
            });
        }
        OutputFormat::Tiff => {
            let mut cursor = std::io::Cursor::new(&mut out);
            write_with(TiffEncoder::new(&mut cursor), image, embedded)
        }
        OutputFormat::WebP => write_with(
            WebPEncoder::new_lossless(&mut out),
            &eight_bit(image),
            embedded,
        ),
        OutputFormat::Jpeg => {
            let eight = eight_bit(image);
            let flat = if eight.color().has_color() {
                DynamicImage::ImageRgb8(eight.to_rgb8())
            } else {
                DynamicImage::ImageLuma8(eight.to_luma8())
            };
            write_with(JpegEncoder::new_with_quality(&mut out, 95), &flat, embedded)
        }
    }
    .map_err(|e| codec(e.to_string()))?;
    Ok(out)
}

/// What an output carries over from its input besides pixels.
#[derive(Clone, Copy)]
struct Embedded<'a> {
    icc_profile: Option<&'a [u8]>,
    exif: Option<&'a [u8]>,
}

/// Embeds the ICC profile (all four codecs support it) and the EXIF block (where the codec
/// can; image's TIFF encoder cannot, so TIFF outputs go without) and writes the pixels.
fn write_with(
    mut encoder: impl ImageEncoder,
    image: &DynamicImage,
    embedded: Embedded<'_>,
) -> image::ImageResult<()> {
    if let Some(icc) = embedded.icc_profile {
        encoder
            .set_icc_profile(icc.to_vec())
            .map_err(image::ImageError::Unsupported)?;
    }
    if let Some(exif) = embedded.exif {
        if encoder.set_exif_metadata(exif.to_vec()).is_err() {
            tracing::debug!("this format's encoder cannot embed EXIF; written without it");
        }
    }
    encoder.write_image(
        image.as_bytes(),
        image.width(),
        image.height(),
        image.color().into(),
    )
}

fn eight_bit(image: &DynamicImage) -> std::borrow::Cow<'_, DynamicImage> {
    let sixteen = image.color().bytes_per_pixel() / image.color().channel_count() == 2;
    if sixteen {
        std::borrow::Cow::Owned(crate::core::proxy::to_8bit(image.clone()))
    } else {
        std::borrow::Cow::Borrowed(image)
    }
}

/// Upper bound of the bytes an encoded image takes, for the free-disk check.
pub fn estimated_size(width: u32, height: u32, bytes_per_pixel: u64) -> u64 {
    u64::from(width) * u64::from(height) * bytes_per_pixel + u64::from(height) + 64 * 1024
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extension_picks_the_format() {
        assert_eq!(
            OutputFormat::from_path(Path::new("a.PNG")).unwrap(),
            OutputFormat::Png
        );
        assert_eq!(
            OutputFormat::from_path(Path::new("a.tif")).unwrap(),
            OutputFormat::Tiff
        );
        assert_eq!(
            OutputFormat::from_path(Path::new("a.webp")).unwrap(),
            OutputFormat::WebP
        );
        assert_eq!(
            OutputFormat::from_path(Path::new("a.jpeg")).unwrap(),
            OutputFormat::Jpeg
        );
        assert!(OutputFormat::from_path(Path::new("a.gif")).is_err());
    }

    #[test]
    fn every_format_round_trips_with_its_icc_profile_and_exif() {
        let img = DynamicImage::ImageRgb8(image::ImageBuffer::from_fn(24, 16, |x, y| {
            image::Rgb([x as u8 * 10, y as u8 * 15, 90])
        }));
        use image::GenericImageView;
        let icc: &[u8] = b"not a real profile, but containers must carry it byte for byte";
        // A minimal little-endian EXIF block: one IFD0 entry, Orientation = 1.
        let exif: Vec<u8> = [
            &b"II*\0"[..],
            &8u32.to_le_bytes(),
            &1u16.to_le_bytes(),
            &0x0112u16.to_le_bytes(),
            &3u16.to_le_bytes(),
            &1u32.to_le_bytes(),
            &1u16.to_le_bytes(),
            &[0, 0],
            &0u32.to_le_bytes(),
        ]
        .concat();
        for format in [
            OutputFormat::Png,
            OutputFormat::Tiff,
            OutputFormat::WebP,
            OutputFormat::Jpeg,
        ] {
            let bytes = encode(&img, format, Some(icc), Some(&exif), &[]).unwrap();
            let decoded = crate::io::decode::decode_bytes(&bytes, &Default::default()).unwrap();
            if format != OutputFormat::Tiff {
                assert_eq!(
                    decoded.exif.as_deref(),
                    Some(exif.as_slice()),
                    "{format:?} keeps the EXIF block"
                );
            }
            assert_eq!(decoded.image.dimensions(), (24, 16), "{format:?}");
            assert_eq!(
                decoded.icc_profile.as_deref(),
                Some(icc),
                "{format:?} keeps the ICC profile"
            );
            if format != OutputFormat::Jpeg {
                assert_eq!(
                    decoded.image.to_rgb8(),
                    img.to_rgb8(),
                    "{format:?} is lossless"
                );
            }
        }
    }
}
