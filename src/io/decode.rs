//! Bounded decoding of untrusted image files.
//!
//! The format is sniffed from the content (an extension is never trusted), the declared size
//! is checked against the limits before any pixel buffer is allocated, allocation is capped
//! through `image::Limits`, a JPEG without its end-of-image marker is refused instead of
//! being passed on with the decoder's grey fill, and a decoder panic is turned into an error
//! for that file. EXIF orientation is applied so callers always see the upright image.

use super::jpeg_reduced;
use crate::core::quality::Luma;
use crate::io::hash::sha256_hex;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader};
use std::io::{Cursor, Read};
use std::path::Path;

/// Limits on what a decode may cost. Every field documents its default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest file read, in bytes. Default 1 GiB.
    pub max_file_bytes: u64,
    /// Largest width or height. Default 65,535 px.
    pub max_side: u32,
    /// Largest pixel count. Default 268 MP (16,384 x 16,384).
    pub max_pixels: u64,
    /// Largest total allocation the decoder may make. Default 4 GiB.
    pub max_alloc_bytes: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_file_bytes: 1 << 30,
            max_side: 65_535,
            max_pixels: 16_384 * 16_384,
            max_alloc_bytes: 4 << 30,
        }
    }
}

/// Why a file could not be decoded. Each message names the reason; callers add the path.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("cannot read: {0}")]
    Io(#[from] std::io::Error),
    #[error("the file is empty (0 bytes)")]
    Empty,
    #[error("the file is {size} bytes, over the {limit}-byte limit")]
    FileTooLarge { size: u64, limit: u64 },
    #[error(
        "not an image: the content matches no known image format (the extension is not trusted)"
    )]
    NotAnImage,
    #[error("{0:?} images are not supported; use PNG, JPEG, TIFF or WebP")]
    UnsupportedFormat(ImageFormat),
    #[error("declares {width}x{height} pixels, over the limit of {limit} (max side {max_side}); refused before decoding")]
    TooManyPixels {
        width: u32,
        height: u32,
        limit: u64,
        max_side: u32,
    },
    #[error("truncated or corrupt {format:?} data: {reason}")]
    Corrupt { format: ImageFormat, reason: String },
    #[error("declares {width}x{height} pixels: an image has at least one pixel each way")]
    NoPixels { width: u32, height: u32 },
    #[error(
        "{coding} JPEG: darkroom reads 8-bit Huffman-coded JPEGs (baseline, extended and \
         progressive); {advice}"
    )]
    UnsupportedJpeg {
        coding: &'static str,
        advice: &'static str,
    },
    #[error("truncated JPEG: the end-of-image marker is missing")]
    TruncatedJpeg,
    #[error("the decoder crashed on this file ({0}); treated as corrupt")]
    DecoderPanic(String),
}

impl DecodeError {
    /// True when retrying later cannot help (the file itself is bad).
    pub fn is_permanent(&self) -> bool {
        !matches!(self, DecodeError::Io(_))
    }

    /// True when the file may simply not be whole yet: empty, or ending before its image
    /// data does. A watched folder gives such a file time to grow before setting it aside.
    pub fn may_be_incomplete(&self) -> bool {
        matches!(
            self,
            DecodeError::Empty | DecodeError::TruncatedJpeg | DecodeError::Corrupt { .. }
        )
    }
}

/// A decoded, upright image with what the file said about it.
#[derive(Debug, Clone)]
pub struct LoadedImage {
    pub image: DynamicImage,
    pub format: ImageFormat,
    pub icc_profile: Option<Vec<u8>>,
    /// EXIF orientation that was applied (1 = none), as the EXIF number.
    pub exif_orientation: u8,
    /// The file's EXIF block with its orientation reset to 1 (the pixels are upright), to
    /// carry into outputs. `None` without EXIF (and for DCT-reduced proxy decodes).
    pub exif: Option<Vec<u8>>,
    /// The file's XMP packet (orientation reset to 1) and IPTC block, to carry into outputs.
    /// Empty for DCT-reduced proxy decodes.
    pub packets: crate::io::xmp::Packets,
    /// SHA-256 of the file's bytes, hex.
    pub sha256: String,
    pub file_bytes: u64,
}

/// Reads at most `limit` bytes of `path`, refusing empty and oversized files before reading.
pub fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>, DecodeError> {
    let file = std::fs::File::open(path)?;
    let size = file.metadata()?.len();
    if size == 0 {
        return Err(DecodeError::Empty);
    }
    if size > limit {
        return Err(DecodeError::FileTooLarge { size, limit });
    }
    let mut bytes = crate::io::system::with_capacity_large(size as usize);
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(DecodeError::FileTooLarge {
            size: bytes.len() as u64,
            limit,
        });
    }
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    crate::io::traffic::note_read(bytes.len() as u64);
    Ok(bytes)
}

/// Sniffs the format of `bytes`, accepting only the formats darkroom reads.
pub fn sniff(bytes: &[u8]) -> Result<ImageFormat, DecodeError> {
    let format = image::guess_format(bytes).map_err(|_| DecodeError::NotAnImage)?;
    match format {
        ImageFormat::Png
        | ImageFormat::Jpeg
        | ImageFormat::Tiff
        | ImageFormat::WebP
        | ImageFormat::Gif => Ok(format),
        other => Err(DecodeError::UnsupportedFormat(other)),
    }
}

/// Reads, checks and decodes the image at `path`.
pub fn load(path: &Path, limits: &DecodeLimits) -> Result<LoadedImage, DecodeError> {
    let bytes = read_bounded(path, limits.max_file_bytes)?;
    decode_bytes(&bytes, limits)
}

/// Decodes an in-memory file.
pub fn decode_bytes(bytes: &[u8], limits: &DecodeLimits) -> Result<LoadedImage, DecodeError> {
    let format = sniff(bytes)?;
    if format == ImageFormat::Jpeg {
        if !jpeg_is_complete(bytes) {
            return Err(DecodeError::TruncatedJpeg);
        }
        refuse_unsupported_jpeg(bytes)?;
    }
    let (decoded, sha256) = while_hashing(bytes, || {
        std::panic::catch_unwind(|| {
            decode_sniffed(bytes, format, limits)
                .map(|decoded| (decoded, crate::io::xmp::read(bytes, format)))
        })
    });
    let decoded = decoded.map_err(|panic| {
        let text = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        DecodeError::DecoderPanic(text)
    })??;
    let ((image, icc_profile, exif_orientation, exif), packets) = decoded;
    Ok(LoadedImage {
        image,
        format,
        icc_profile,
        exif_orientation,
        exif,
        packets,
        sha256,
        file_bytes: bytes.len() as u64,
    })
}

/// Runs `work` while another thread hashes `bytes` (a 4-MB file's SHA-256 is a few
/// milliseconds that a decode need not wait for); returns both. A small file is hashed in
/// line: its hash takes less than starting a thread.
fn while_hashing<T>(bytes: &[u8], work: impl FnOnce() -> T) -> (T, String) {
    const HASH_IN_LINE_BELOW: usize = 1 << 20;
    if bytes.len() < HASH_IN_LINE_BELOW {
        return (work(), sha256_hex(bytes));
    }
    std::thread::scope(|scope| {
        let hash = scope.spawn(|| sha256_hex(bytes));
        let result = work();
        (result, hash.join().expect("hashing does not panic"))
    })
}

type Decoded = (DynamicImage, Option<Vec<u8>>, u8, Option<Vec<u8>>);

fn decode_sniffed(
    bytes: &[u8],
    format: ImageFormat,
    limits: &DecodeLimits,
) -> Result<Decoded, DecodeError> {
    let corrupt = |e: image::ImageError| DecodeError::Corrupt {
        format,
        reason: e.to_string(),
    };
    let mut reader = ImageReader::new(Cursor::new(bytes));
    reader.set_format(format);
    let mut decoder = reader.into_decoder().map_err(corrupt)?;
    let (width, height) = decoder.dimensions();
    if width == 0 || height == 0 {
        return Err(DecodeError::NoPixels { width, height });
    }
    let pixels = u64::from(width) * u64::from(height);
    if width > limits.max_side || height > limits.max_side || pixels > limits.max_pixels {
        return Err(DecodeError::TooManyPixels {
            width,
            height,
            limit: limits.max_pixels,
            max_side: limits.max_side,
        });
    }
    let mut icc = decoder.icc_profile().ok().flatten();
    if icc.is_none() && format == ImageFormat::Tiff {
        // image's TIFF decoder does not hand back the ICC tag; read it directly.
        icc = tiff::decoder::Decoder::new(Cursor::new(bytes))
            .and_then(|mut d| d.get_tag_u8_vec(tiff::tags::Tag::IccProfile))
            .ok();
    }
    let exif = decoder
        .exif_metadata()
        .ok()
        .flatten()
        .and_then(|raw| crate::io::exif::upright(&raw));
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut image_limits = image::Limits::default();
    image_limits.max_image_width = Some(limits.max_side);
    image_limits.max_image_height = Some(limits.max_side);
    image_limits.max_alloc = Some(limits.max_alloc_bytes);
    decoder.set_limits(image_limits).map_err(corrupt)?;
    let mut image = DynamicImage::from_decoder(decoder).map_err(corrupt)?;
    image.apply_orientation(orientation);
    let image = match image {
        DynamicImage::ImageRgb32F(_) => DynamicImage::ImageRgb16(image.to_rgb16()),
        DynamicImage::ImageRgba32F(_) => DynamicImage::ImageRgba16(image.to_rgba16()),
        other => other,
    };
    Ok((image, icc, orientation_to_exif(orientation), exif))
}

fn orientation_to_exif(o: image::metadata::Orientation) -> u8 {
    use image::metadata::Orientation as O;
    match o {
        O::NoTransforms => 1,
        O::FlipHorizontal => 2,
        O::Rotate180 => 3,
        O::FlipVertical => 4,
        O::Rotate90FlipH => 5,
        O::Rotate90 => 6,
        O::Rotate270FlipH => 7,
        O::Rotate270 => 8,
    }
}

/// An image decoded for making a proxy: possibly reduced in the DCT domain (JPEG only), with
/// the full upright size the geometry must be planned on.
#[derive(Debug, Clone)]
pub struct ProxySource {
    pub loaded: LoadedImage,
    pub full_width: u32,
    pub full_height: u32,
    /// Asked for by [`load_for_scoring`] and given when the image was DCT-reduced: the luma
    /// of the source-score patches ([`crate::core::quality::patch_origins`] on the upright
    /// full size), decoded at full size.
    pub full_size_patches: Option<Vec<Luma>>,
}

/// The square patches that source scores are measured on ([`crate::core::quality::sample_patches`]).
#[derive(Debug, Clone, Copy)]
pub struct PatchRequest {
    pub size: u32,
    pub max_patches: u32,
}

/// Decodes `path` for a proxy. `needed(full_w, full_h)` gives the upright size the proxy
/// will be resampled to; a JPEG is then decoded at 1/2, 1/4 or 1/8 scale in the DCT domain
/// (as libjpeg's and Pillow's draft mode do) when the reduced image still has at least that
/// many pixels on both sides, so most of the IDCT and colour work is skipped. Anything
/// unusual (CMYK, arithmetic coding, a decoder error) falls back to the full decode, which
/// reports errors the usual way.
pub fn load_for_proxy(
    path: &Path,
    limits: &DecodeLimits,
    needed: &dyn Fn(u32, u32) -> (u32, u32),
) -> Result<ProxySource, DecodeError> {
    load_reduced(path, limits, needed, Finish::Reduced, None)
}

/// [`load_for_proxy`] for a caller that also measures the source on `patches`: where the
/// image is DCT-reduced, the patches' luma comes back decoded at full size, so the scores
/// do not depend on how far the decode was reduced; where the reduced decoder cannot give
/// them, the image is decoded at full size instead.
pub fn load_for_scoring(
    path: &Path,
    limits: &DecodeLimits,
    needed: &dyn Fn(u32, u32) -> (u32, u32),
    patches: PatchRequest,
) -> Result<ProxySource, DecodeError> {
    load_reduced(path, limits, needed, Finish::Reduced, Some(patches))
}

/// [`load_for_proxy`] for a caller that resamples the whole image to exactly the `needed`
/// size (a proxy): where darkroom's own reduced JPEG decoder takes the file, the image comes
/// back already resampled to that size, each YCbCr plane from its own grid, so the
/// reduced image is never upsampled and converted to RGB pixel by pixel. Other files come
/// back as from [`load_for_proxy`]; either way the caller's resampling finishes the job.
pub fn load_proxy_sized(
    path: &Path,
    limits: &DecodeLimits,
    needed: &dyn Fn(u32, u32) -> (u32, u32),
) -> Result<ProxySource, DecodeError> {
    load_reduced(path, limits, needed, Finish::ResampledToNeeded, None)
}

/// How far a reduced decode goes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Finish {
    Reduced,
    ResampledToNeeded,
}

fn load_reduced(
    path: &Path,
    limits: &DecodeLimits,
    needed: &dyn Fn(u32, u32) -> (u32, u32),
    finish: Finish,
    patches: Option<PatchRequest>,
) -> Result<ProxySource, DecodeError> {
    let bytes = read_bounded(path, limits.max_file_bytes)?;
    reduced_or_full(&bytes, limits, needed, finish, patches)
}

/// [`load_for_proxy`] of an in-memory file.
pub fn proxy_source_of(
    bytes: &[u8],
    limits: &DecodeLimits,
    needed: &dyn Fn(u32, u32) -> (u32, u32),
) -> Result<ProxySource, DecodeError> {
    reduced_or_full(bytes, limits, needed, Finish::Reduced, None)
}

fn reduced_or_full(
    bytes: &[u8],
    limits: &DecodeLimits,
    needed: &dyn Fn(u32, u32) -> (u32, u32),
    finish: Finish,
    patches: Option<PatchRequest>,
) -> Result<ProxySource, DecodeError> {
    if sniff(bytes)? == ImageFormat::Jpeg && jpeg_is_complete(bytes) {
        // Guarded as the full decode is: a panic in the reduced path falls back to the full
        // decode, which reports the file's error.
        let reduced = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            reduced_jpeg(bytes, limits, needed, finish, patches)
        }));
        if let Ok(Some(source)) = reduced {
            return Ok(source);
        }
    }
    let loaded = decode_bytes(bytes, limits)?;
    Ok(ProxySource {
        full_width: loaded.image.width(),
        full_height: loaded.image.height(),
        loaded,
        full_size_patches: None,
    })
}

fn reduced_jpeg(
    bytes: &[u8],
    limits: &DecodeLimits,
    needed: &dyn Fn(u32, u32) -> (u32, u32),
    finish: Finish,
    patches: Option<PatchRequest>,
) -> Option<ProxySource> {
    use image::metadata::Orientation;
    let info = jpeg_reduced::FileInfo::read(bytes)?;
    let (stored_w, stored_h) = (info.width, info.height);
    if stored_w > limits.max_side
        || stored_h > limits.max_side
        || u64::from(stored_w) * u64::from(stored_h) > limits.max_pixels
    {
        return None; // the full path reports the limit
    }
    let orientation = info
        .exif
        .and_then(Orientation::from_exif_chunk)
        .unwrap_or(Orientation::NoTransforms);
    let swapped = matches!(
        orientation,
        Orientation::Rotate90
            | Orientation::Rotate270
            | Orientation::Rotate90FlipH
            | Orientation::Rotate270FlipH
    );
    let (full_w, full_h) = if swapped {
        (stored_h, stored_w)
    } else {
        (stored_w, stored_h)
    };
    let (need_w, need_h) = needed(full_w, full_h);
    // The needed size as the file stores the image (what its planes are resampled to).
    let resample_to = if swapped {
        (need_h, need_w)
    } else {
        (need_w, need_h)
    };
    // Keep a reducing gap of 2, as Pillow's thumbnail does: the DCT reduction stops at twice
    // the final size and the Lanczos filter does the last step, so the proxy stays within a
    // hair of a full-resolution Lanczos downscale (README: "split and DCT-domain reduction").
    let (req_w, req_h) = (resample_to.0 * REDUCING_GAP, resample_to.1 * REDUCING_GAP);
    // The most reduction (N of every 8 pixels kept) that leaves both sides at least the
    // needed size; none possible: the full decoder (zune-jpeg) is faster.
    let scaled_side = |side: u32, n: u32| (side * n).div_ceil(8);
    let kept =
        (1..8).find(|&n| scaled_side(stored_w, n) >= req_w && scaled_side(stored_h, n) >= req_h)?;
    let (w, h) = (scaled_side(stored_w, kept), scaled_side(stored_h, kept));
    let icc = info.icc;
    // Where the score patches (on the upright full size) lie in the stored image.
    let regions: Vec<jpeg_reduced::Region> = patches
        .and_then(|p| {
            let origins =
                crate::core::quality::patch_origins(full_w, full_h, p.size, p.max_patches)?;
            Some(
                origins
                    .into_iter()
                    .map(|origin| {
                        let (x, y) =
                            stored_square(orientation, (stored_w, stored_h), origin, p.size);
                        jpeg_reduced::Region {
                            x: x as usize,
                            y: y as usize,
                            size: p.size as usize,
                        }
                    })
                    .collect(),
            )
        })
        .unwrap_or_default();
    let mut full_size_luma = None;
    let (image, sha256) = while_hashing(bytes, || {
        match jpeg_reduced::decode_planes_with_luma(bytes, kept as usize, true, &regions) {
            Some((planes, luma)) if planes.size() == (w, h) => {
                tracing::debug!(entropy = %planes.entropy, "reduced JPEG decode");
                full_size_luma = Some(luma);
                match finish {
                    Finish::Reduced => planes.into_image(),
                    Finish::ResampledToNeeded => planes.resized(resample_to.0, resample_to.1),
                }
            }
            // Not a file for darkroom's decoder (CMYK, arithmetic, damaged...): the full
            // decode reads it, or says why not.
            _ => None,
        }
    });
    let mut image = image?;
    image.apply_orientation(orientation);
    let full_size_patches = match full_size_luma {
        Some(luma) if !luma.is_empty() => Some(
            luma.into_iter()
                .zip(&regions)
                .map(|(pixels, region)| {
                    let side = region.size as u32;
                    let mut patch =
                        DynamicImage::ImageLuma8(image::GrayImage::from_raw(side, side, pixels)?);
                    patch.apply_orientation(orientation);
                    Some(Luma::of(&patch))
                })
                .collect::<Option<Vec<Luma>>>()?,
        ),
        _ => None,
    };
    Some(ProxySource {
        loaded: LoadedImage {
            image,
            format: ImageFormat::Jpeg,
            icc_profile: icc,
            exif_orientation: orientation_to_exif(orientation),
            exif: None,
            packets: Default::default(),
            sha256,
            file_bytes: bytes.len() as u64,
        },
        full_width: full_w,
        full_height: full_h,
        full_size_patches,
    })
}

/// Where the upright image's `size`-pixel square at `origin` lies in the stored image
/// (`stored` = its width and height), under EXIF `orientation`: its top-left corner there.
/// The square's stored pixels, oriented, are the upright ones.
fn stored_square(
    orientation: image::metadata::Orientation,
    stored: (u32, u32),
    origin: (u32, u32),
    size: u32,
) -> (u32, u32) {
    let far = (origin.0 + size - 1, origin.1 + size - 1);
    let corners = [origin, (far.0, origin.1), (origin.0, far.1), far];
    let stored_corners = corners.map(|(x, y)| stored_pixel(orientation, stored, x, y));
    (
        stored_corners.iter().map(|c| c.0).min().unwrap_or(0),
        stored_corners.iter().map(|c| c.1).min().unwrap_or(0),
    )
}

/// The stored pixel that `image`'s `apply_orientation(orientation)` puts at upright pixel
/// `(x, y)`, for a stored image `width x height`.
fn stored_pixel(
    orientation: image::metadata::Orientation,
    (width, height): (u32, u32),
    x: u32,
    y: u32,
) -> (u32, u32) {
    use image::metadata::Orientation as O;
    match orientation {
        O::NoTransforms => (x, y),
        O::FlipHorizontal => (width - 1 - x, y),
        O::FlipVertical => (x, height - 1 - y),
        O::Rotate180 => (width - 1 - x, height - 1 - y),
        O::Rotate90 => (y, height - 1 - x),
        O::Rotate270 => (width - 1 - y, x),
        O::Rotate90FlipH => (y, x),
        O::Rotate270FlipH => (width - 1 - y, height - 1 - x),
    }
}

/// How much larger than the proxy a DCT-reduced decode must stay (Pillow's default is 2).
const REDUCING_GAP: u32 = 2;

/// Refuses, with what to do instead, the JPEG codings darkroom's decoders do not read
/// (where the decoder's own words would be "header DAC is not supported").
fn refuse_unsupported_jpeg(bytes: &[u8]) -> Result<(), DecodeError> {
    const TO_HUFFMAN: &str = "re-encode it losslessly with Huffman coding first, for example \
         `jpegtran -copy all -optimize in.jpg > out.jpg`";
    const TO_16_BIT: &str = "convert it to a 16-bit PNG or TIFF first";
    let Some((marker, precision)) = jpeg_frame(bytes) else {
        return Ok(()); // no frame header: the decoder reports the file as corrupt
    };
    let (coding, advice) = match marker {
        0xC9..=0xCB | 0xCD..=0xCF => ("arithmetic-coded", TO_HUFFMAN),
        0xC3 => ("lossless", TO_16_BIT),
        0xC5..=0xC7 => ("hierarchical", TO_16_BIT),
        _ if precision > 8 => ("12-bit", TO_16_BIT),
        _ => return Ok(()),
    };
    Err(DecodeError::UnsupportedJpeg { coding, advice })
}

/// The first frame header's marker (SOF0-SOF15) and sample precision.
fn jpeg_frame(bytes: &[u8]) -> Option<(u8, u8)> {
    jpeg_reduced::FileInfo::read(bytes).map(|info| (info.frame_marker, info.precision))
}

/// Walks the JPEG marker structure and reports whether the end-of-image marker is reached.
///
/// Segments are skipped by their length (so an EXIF thumbnail's own EOI does not count),
/// entropy-coded data is scanned for the next real marker (skipping stuffed `FF 00`, fill
/// bytes and restart markers). A file cut anywhere before EOI returns false.
pub fn jpeg_is_complete(bytes: &[u8]) -> bool {
    if bytes.len() < 4 || bytes[0] != 0xFF || bytes[1] != 0xD8 {
        return false;
    }
    let mut i = 2;
    loop {
        // Find the next marker, skipping fill bytes.
        while i < bytes.len() && bytes[i] != 0xFF {
            i += 1;
        }
        while i < bytes.len() && bytes[i] == 0xFF {
            i += 1;
        }
        let Some(&marker) = bytes.get(i) else {
            return false;
        };
        i += 1;
        match marker {
            0xD9 => return true,
            0x01 | 0xD0..=0xD7 => continue,
            _ => {
                if i + 2 > bytes.len() {
                    return false;
                }
                let len = usize::from(u16::from_be_bytes([bytes[i], bytes[i + 1]]));
                if len < 2 || i + len > bytes.len() {
                    return false;
                }
                i += len;
                if marker == 0xDA {
                    // Entropy-coded data follows until a marker that is not RST or stuffing.
                    loop {
                        i = memchr::memchr(0xFF, &bytes[i.min(bytes.len())..])
                            .map_or(bytes.len(), |at| i + at);
                        if i + 1 >= bytes.len() {
                            return false;
                        }
                        let next = bytes[i + 1];
                        if next == 0x00 || (0xD0..=0xD7).contains(&next) || next == 0xFF {
                            i += if next == 0xFF { 1 } else { 2 };
                            continue;
                        }
                        break;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_squares_oriented_are_the_upright_squares() {
        use image::metadata::Orientation as O;
        use image::GenericImageView;
        let (w, h) = (37u32, 23u32);
        let stored = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 7]));
        for orientation in [
            O::NoTransforms,
            O::Rotate90,
            O::Rotate180,
            O::Rotate270,
            O::FlipHorizontal,
            O::FlipVertical,
            O::Rotate90FlipH,
            O::Rotate270FlipH,
        ] {
            let mut upright = DynamicImage::ImageRgb8(stored.clone());
            upright.apply_orientation(orientation);
            let (uw, uh) = upright.dimensions();
            for (origin, size) in [
                ((0, 0), 5),
                ((3, 7), 9),
                ((uw - 11, uh - 11), 11),
                ((1, 2), 20),
            ] {
                let (sx, sy) = stored_square(orientation, (w, h), origin, size);
                let mut square =
                    DynamicImage::ImageRgb8(stored.view(sx, sy, size, size).to_image());
                square.apply_orientation(orientation);
                assert_eq!(
                    square.to_rgb8(),
                    upright.crop_imm(origin.0, origin.1, size, size).to_rgb8(),
                    "{orientation:?} at {origin:?}"
                );
            }
        }
    }

    #[test]
    fn a_minimal_marker_stream_is_complete_and_its_prefixes_are_not() {
        // SOI, a 4-byte APP0, SOS with 2-byte header + data containing stuffing and RST, EOI.
        let jpeg = [
            0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x04, 0xAA, 0xBB, 0xFF, 0xDA, 0x00, 0x02, 0x12, 0xFF,
            0x00, 0x34, 0xFF, 0xD0, 0x56, 0xFF, 0xD9,
        ];
        assert!(jpeg_is_complete(&jpeg));
        for cut in 0..jpeg.len() - 1 {
            assert!(!jpeg_is_complete(&jpeg[..cut]), "prefix of {cut} bytes");
        }
    }

    #[test]
    fn an_eoi_inside_a_segment_does_not_count() {
        let jpeg = [0xFF, 0xD8, 0xFF, 0xE1, 0x00, 0x06, 0xFF, 0xD9, 0x00, 0x00];
        assert!(!jpeg_is_complete(&jpeg));
    }

    #[test]
    fn text_is_not_an_image() {
        assert!(matches!(
            sniff(b"hello, this is text"),
            Err(DecodeError::NotAnImage)
        ));
    }
}
