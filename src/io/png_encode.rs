//! A parallel PNG encoder, because PNG encoding dominates split and merge.
//!
//! The image is cut into bands of rows; each band is filtered (adaptive per row: the filter
//! with the smallest sum of absolute residuals, as libpng and Pillow choose) and deflated on
//! its own core into a raw deflate stream ended by a sync flush, the way pigz does. The bands
//! are concatenated behind one zlib header, and their Adler-32 checksums are combined. Any
//! standard PNG reader decodes the result. iCCP (the original's colour profile) and iTXt
//! chunks (darkroom's metadata) are written before the pixel data.

use image::DynamicImage;
use rayon::prelude::*;
use std::io::Write;

/// How each row's PNG filter is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterChoice {
    /// Try all five filters per row, keep the smallest sum of absolute residuals.
    Adaptive,
    /// Paeth on every row (one pass instead of five).
    Paeth,
}

/// Encoder settings. Defaults: adaptive filters, darkroom's run-length deflate, bands of about
/// 1 MiB.
#[derive(Debug, Clone, Copy)]
pub struct PngOptions {
    /// zlib level 1 (fastest) to 9 (smallest), for the zlib strategies. Default 2.
    pub level: u32,
    /// Raw bytes per parallel band (rounded to whole rows). Default 1 MiB.
    pub band_bytes: usize,
    /// Row filter selection. Default adaptive.
    pub filter: FilterChoice,
    /// Match finding. Default: run-length matches only (darkroom's own deflate encoder), which
    /// on filtered photographic rows comes within about 9% of zlib's level 6 at a fraction of
    /// the time (README, PNG table).
    pub strategy: Strategy,
}

/// deflate strategy for the pixel data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// darkroom's own encoder (`io::deflate`): runs at distance 1 and a Huffman code per
    /// 64-KiB block, with no match search. The fastest; level is ignored.
    Runs,
    /// zlib's default: LZ77 matches plus Huffman coding.
    Default,
    /// zlib, only Huffman-coding the filtered bytes.
    HuffmanOnly,
    /// zlib's run-length strategy (distance 1), then Huffman coding.
    Rle,
}

impl Strategy {
    fn to_zlib(self) -> Option<zlib_rs::Strategy> {
        match self {
            Strategy::Runs => None,
            Strategy::Default => Some(zlib_rs::Strategy::Default),
            Strategy::HuffmanOnly => Some(zlib_rs::Strategy::HuffmanOnly),
            Strategy::Rle => Some(zlib_rs::Strategy::Rle),
        }
    }
}

impl PngOptions {
    /// The defaults, for `const` settings built from them.
    pub const DEFAULT: PngOptions = PngOptions {
        level: 2,
        band_bytes: 1 << 20,
        filter: FilterChoice::Adaptive,
        strategy: Strategy::Runs,
    };
}

impl Default for PngOptions {
    fn default() -> Self {
        PngOptions::DEFAULT
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PngEncodeError {
    #[error("PNG cannot store {0:?} pixels")]
    Layout(image::ColorType),
    #[error("deflate failed: {0}")]
    Deflate(String),
    #[error("text chunk keyword '{0}' must be 1-79 Latin-1 characters")]
    Keyword(String),
}

/// One compressed band: deflate bytes, Adler-32 of its filtered data, filtered length.
type Band = (Vec<u8>, u32, usize);

/// Produces raw PNG rows: `rows(start, end, out)` clears `out` and writes rows `start..end`
/// as PNG stores them (8-bit samples as bytes, 16-bit big-endian), from any thread.
pub type RowSource<'a> = dyn Fn(usize, usize, &mut Vec<u8>) + Sync + 'a;

/// Where the encoder reads raw rows from.
pub enum Rows<'a> {
    /// All rows, already in PNG's byte order (8-bit images): read in place.
    InPlace(&'a [u8]),
    /// Rows made on demand, band by band.
    Generated(&'a RowSource<'a>),
}

/// Encodes `image` as PNG with an optional ICC profile and UTF-8 text chunks.
pub fn encode(
    image: &DynamicImage,
    icc_profile: Option<&[u8]>,
    texts: &[(String, String)],
    options: &PngOptions,
) -> Result<Vec<u8>, PngEncodeError> {
    let samples16: Option<&[u16]> = match image {
        DynamicImage::ImageLuma16(b) => Some(b.as_raw()),
        DynamicImage::ImageLumaA16(b) => Some(b.as_raw()),
        DynamicImage::ImageRgb16(b) => Some(b.as_raw()),
        DynamicImage::ImageRgba16(b) => Some(b.as_raw()),
        _ => None,
    };
    let (w, h, color) = (image.width(), image.height(), image.color());
    let Some(samples) = samples16 else {
        return encode_rows(
            w,
            h,
            color,
            Rows::InPlace(image.as_bytes()),
            icc_profile,
            texts,
            options,
        );
    };
    let row_samples = w as usize * usize::from(color.channel_count());
    // PNG stores samples big-endian.
    let source = |start: usize, end: usize, out: &mut Vec<u8>| {
        out.clear();
        out.extend(
            samples[start * row_samples..end * row_samples]
                .iter()
                .flat_map(|s| s.to_be_bytes()),
        );
    };
    encode_rows(
        w,
        h,
        color,
        Rows::Generated(&source),
        icc_profile,
        texts,
        options,
    )
}

/// Encodes `rows` band by band in parallel.
pub fn encode_rows(
    width: u32,
    height: u32,
    color: image::ColorType,
    rows: Rows<'_>,
    icc_profile: Option<&[u8]>,
    texts: &[(String, String)],
    options: &PngOptions,
) -> Result<Vec<u8>, PngEncodeError> {
    use image::ColorType as C;
    let (colour_type, bit_depth) = match color {
        C::L8 => (0u8, 8u8),
        C::La8 => (4, 8),
        C::Rgb8 => (2, 8),
        C::Rgba8 => (6, 8),
        C::L16 => (0, 16),
        C::La16 => (4, 16),
        C::Rgb16 => (2, 16),
        C::Rgba16 => (6, 16),
        other => return Err(PngEncodeError::Layout(other)),
    };
    let bpp = usize::from(color.bytes_per_pixel());
    let row_bytes = width as usize * bpp;

    let mut out = Vec::with_capacity(row_bytes * height as usize / 2 + 1024);
    out.extend_from_slice(b"\x89PNG\r\n\x1a\n");
    let mut ihdr = Vec::with_capacity(13);
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[bit_depth, colour_type, 0, 0, 0]);
    write_chunk(&mut out, b"IHDR", &ihdr);
    if let Some(icc) = icc_profile {
        let mut data = b"ICC Profile\0\0".to_vec();
        data.extend_from_slice(&zlib(icc, 6)?);
        write_chunk(&mut out, b"iCCP", &data);
    }
    for (keyword, text) in texts {
        if keyword.is_empty() || keyword.len() > 79 || !keyword.is_ascii() {
            return Err(PngEncodeError::Keyword(keyword.clone()));
        }
        let mut data = Vec::with_capacity(keyword.len() + text.len() + 5);
        data.extend_from_slice(keyword.as_bytes());
        data.extend_from_slice(&[0, 0, 0, 0, 0]); // NUL, uncompressed, method, no language, no translation
        data.extend_from_slice(text.as_bytes());
        write_chunk(&mut out, b"iTXt", &data);
    }

    let rows_per_band = (options.band_bytes / (row_bytes + 1)).max(1);
    let bands: Vec<(usize, usize)> = (0..height as usize)
        .step_by(rows_per_band)
        .map(|start| (start, (start + rows_per_band).min(height as usize)))
        .collect();
    let last = bands.len() - 1;
    let compressed: Vec<Result<Band, PngEncodeError>> = bands
        .par_iter()
        .enumerate()
        .map_init(
            || (Vec::new(), Vec::new(), Vec::new()),
            |(raw, filtered, deflate_scratch), (index, &(start, end))| {
                match &rows {
                    Rows::InPlace(all) => {
                        filter_rows(all, row_bytes, bpp, start, end, options.filter, filtered)
                    }
                    Rows::Generated(source) => {
                        // The row above the band is needed to filter its first row.
                        let first = start.saturating_sub(1);
                        source(first, end, raw);
                        let skip = start - first;
                        let rows = skip + end - start;
                        filter_rows(raw, row_bytes, bpp, skip, rows, options.filter, filtered);
                    }
                }
                let adler = simd_adler32::adler32(&filtered.as_slice());
                let is_last = index == last;
                let deflated = match options.strategy.to_zlib() {
                    Some(strategy) => {
                        deflate_raw(filtered, options.level, strategy, is_last, deflate_scratch)?
                    }
                    None => {
                        deflate_scratch.clear();
                        crate::io::deflate::deflate_runs(filtered, is_last, deflate_scratch);
                        deflate_scratch.clone()
                    }
                };
                Ok((deflated, adler, filtered.len()))
            },
        )
        .collect();
    // One IDAT per band: the zlib header rides in the first, the Adler-32 in the last.
    let mut adler = 1u32;
    for (index, part) in compressed.into_iter().enumerate() {
        let (bytes, part_adler, len) = part?;
        adler = adler32_combine(adler, part_adler, len as u64);
        let head: &[u8] = if index == 0 { &[0x78, 0x01] } else { &[] };
        let trailer = adler.to_be_bytes();
        let tail: &[u8] = if index == last { &trailer } else { &[] };
        write_chunk_parts(&mut out, b"IDAT", &[head, &bytes, tail]);
    }
    write_chunk(&mut out, b"IEND", &[]);
    Ok(out)
}

/// Adds an `eXIf` chunk (a TIFF-structured EXIF block) right after IHDR of an encoded PNG.
pub fn with_exif(png: Vec<u8>, exif: &[u8]) -> Vec<u8> {
    with_chunk_after_ihdr(png, b"eXIf", exif)
}

/// Adds an `sRGB` chunk (perceptual intent) right after IHDR: the PNG says its pixels are
/// sRGB, the way browsers, Pillow and trainers read it.
pub fn with_srgb_chunk(png: Vec<u8>) -> Vec<u8> {
    with_chunk_after_ihdr(png, b"sRGB", &[0])
}

pub(crate) fn with_chunk_after_ihdr(mut png: Vec<u8>, kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    // Signature (8) + IHDR chunk (4 + 4 + 13 + 4).
    const AFTER_IHDR: usize = 33;
    if png.len() < AFTER_IHDR {
        return png;
    }
    // Inserted in place: a second image-sized buffer would raise the peak memory of a merge.
    let mut chunk = Vec::with_capacity(data.len() + 12);
    write_chunk(&mut chunk, kind, data);
    png.splice(AFTER_IHDR..AFTER_IHDR, chunk);
    png
}

fn write_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    write_chunk_parts(out, kind, &[data]);
}

/// Writes one chunk whose data is the concatenation of `parts`.
fn write_chunk_parts(out: &mut Vec<u8>, kind: &[u8; 4], parts: &[&[u8]]) {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    out.extend_from_slice(&(len as u32).to_be_bytes());
    out.extend_from_slice(kind);
    let mut crc = crc32fast::Hasher::new();
    crc.update(kind);
    for part in parts {
        out.extend_from_slice(part);
        crc.update(part);
    }
    out.write_all(&crc.finalize().to_be_bytes())
        .expect("Vec write");
}

/// A complete zlib stream (header, deflate, Adler-32) of `data`, for the iCCP chunk.
fn zlib(data: &[u8], level: u32) -> Result<Vec<u8>, PngEncodeError> {
    let config = zlib_rs::DeflateConfig {
        level: level as i32,
        ..zlib_rs::DeflateConfig::default()
    };
    let mut out = vec![0u8; zlib_rs::compress_bound(data.len())];
    let (written, code) = zlib_rs::compress_slice(&mut out, data, config);
    if code != zlib_rs::ReturnCode::Ok {
        return Err(PngEncodeError::Deflate(format!("{code:?}")));
    }
    let len = written.len();
    out.truncate(len);
    Ok(out)
}

/// Raw deflate of one band into `scratch`; non-final bands end byte-aligned (sync flush)
/// so bands concatenate. Returns an exactly-sized copy, so the bands waiting to be written
/// hold no slack (the scratch buffer is reused by the thread's next band).
fn deflate_raw(
    data: &[u8],
    level: u32,
    strategy: zlib_rs::Strategy,
    is_last: bool,
    scratch: &mut Vec<u8>,
) -> Result<Vec<u8>, PngEncodeError> {
    let config = zlib_rs::DeflateConfig {
        level: level as i32,
        method: zlib_rs::Method::Deflated,
        window_bits: -15,
        // Larger blocks (32 Ki symbols): fewer Huffman trees to build and send, about 5%
        // faster and a little smaller than zlib's default 8 on photographs.
        mem_level: 9,
        strategy,
    };
    let mut compressor = zlib_rs::Deflate::new_with_config(config);
    let flush = if is_last {
        zlib_rs::DeflateFlush::Finish
    } else {
        zlib_rs::DeflateFlush::SyncFlush
    };
    // Enough for incompressible input plus block and flush overhead.
    scratch.clear();
    scratch.reserve(zlib_rs::compress_bound(data.len()) + 64);
    let status = compressor
        .compress_uninit(data, scratch.spare_capacity_mut(), flush)
        .map_err(|e| PngEncodeError::Deflate(e.as_str().to_string()))?;
    let complete = compressor.total_in() as usize == data.len()
        && (matches!(status, zlib_rs::Status::StreamEnd) || !is_last);
    if !complete {
        return Err(PngEncodeError::Deflate(format!(
            "deflate stopped early ({status:?})"
        )));
    }
    let written = compressor.total_out() as usize;
    assert!(written <= scratch.capacity());
    // SAFETY: deflate initialised exactly the first `total_out` bytes of the spare capacity.
    unsafe { scratch.set_len(written) };
    Ok(scratch.clone())
}

/// Filters rows `start..end`, each prefixed by its filter-type byte.
fn filter_rows(
    raw: &[u8],
    row_bytes: usize,
    bpp: usize,
    start: usize,
    end: usize,
    choice: FilterChoice,
    out: &mut Vec<u8>,
) {
    out.clear();
    out.reserve((end - start) * (row_bytes + 1));
    let zero = vec![0u8; row_bytes];
    let mut candidates = [
        vec![0u8; row_bytes],
        vec![0u8; row_bytes],
        vec![0u8; row_bytes],
        vec![0u8; row_bytes],
        vec![0u8; row_bytes],
    ];
    for y in start..end {
        let row = &raw[y * row_bytes..(y + 1) * row_bytes];
        let prev = if y == 0 {
            &zero[..]
        } else {
            &raw[(y - 1) * row_bytes..y * row_bytes]
        };
        if choice == FilterChoice::Paeth {
            out.push(4);
            let from = out.len();
            out.resize(from + row_bytes, 0);
            apply_filter(4, row, prev, bpp, &mut out[from..]);
            continue;
        }
        let mut best = (u64::MAX, 0usize);
        for (kind, candidate) in candidates.iter_mut().enumerate() {
            apply_filter(kind, row, prev, bpp, candidate);
            let cost: u64 = candidate
                .iter()
                .map(|&b| u32::from((b as i8).unsigned_abs()))
                .sum::<u32>()
                .into();
            if cost < best.0 {
                best = (cost, kind);
            }
        }
        out.push(best.1 as u8);
        out.extend_from_slice(&candidates[best.1]);
    }
}

fn apply_filter(kind: usize, row: &[u8], prev: &[u8], bpp: usize, out: &mut [u8]) {
    let n = row.len();
    // Each arm reads only the raw rows, never `out`, so every loop vectorises.
    match kind {
        0 => out.copy_from_slice(row),
        1 => {
            out[..bpp].copy_from_slice(&row[..bpp]);
            for ((o, &x), &a) in out[bpp..].iter_mut().zip(&row[bpp..]).zip(&row[..n - bpp]) {
                *o = x.wrapping_sub(a);
            }
        }
        2 => {
            for ((o, &x), &b) in out.iter_mut().zip(row).zip(prev) {
                *o = x.wrapping_sub(b);
            }
        }
        3 => {
            for i in 0..bpp {
                out[i] = row[i].wrapping_sub(prev[i] >> 1);
            }
            for (((o, &x), &a), &b) in out[bpp..]
                .iter_mut()
                .zip(&row[bpp..])
                .zip(&row[..n - bpp])
                .zip(&prev[bpp..])
            {
                *o = x.wrapping_sub(((u16::from(a) + u16::from(b)) >> 1) as u8);
            }
        }
        _ => {
            for i in 0..bpp {
                out[i] = row[i].wrapping_sub(prev[i]);
            }
            let lanes = out[bpp..]
                .iter_mut()
                .zip(&row[bpp..])
                .zip(&row[..n - bpp])
                .zip(&prev[bpp..])
                .zip(&prev[..n - bpp]);
            for ((((o, &x), &a), &b), &c) in lanes {
                *o = x.wrapping_sub(paeth(a, b, c));
            }
        }
    }
}

/// The Paeth predictor, written without branches so it vectorises.
#[inline(always)]
fn paeth(a: u8, b: u8, c: u8) -> u8 {
    let (ia, ib, ic) = (i16::from(a), i16::from(b), i16::from(c));
    let pa = (ib - ic).abs();
    let pb = (ia - ic).abs();
    let pc = (ia + ib - 2 * ic).abs();
    let b_or_c = if pb <= pc { b } else { c };
    if pa <= pb && pa <= pc {
        a
    } else {
        b_or_c
    }
}

/// Adler-32 of the concatenation of two streams, from their checksums and the second's length.
fn adler32_combine(first: u32, second: u32, second_len: u64) -> u32 {
    const BASE: u64 = 65521;
    let rem = second_len % BASE;
    let a1 = u64::from(first & 0xffff);
    let b1 = u64::from(first >> 16);
    let a2 = u64::from(second & 0xffff);
    let b2 = u64::from(second >> 16);
    let a = (a1 + a2 + BASE - 1) % BASE;
    let b = (rem * a1 + b1 + b2 + BASE - rem) % BASE;
    (a | (b << 16)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adler_combination_equals_the_checksum_of_the_whole() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        for split in [0usize, 1, 65520, 65521, 100_000, 199_999] {
            let (a, b) = data.split_at(split);
            let combined = adler32_combine(
                simd_adler32::adler32(&a),
                simd_adler32::adler32(&b),
                b.len() as u64,
            );
            assert_eq!(
                combined,
                simd_adler32::adler32(&data.as_slice()),
                "split {split}"
            );
        }
    }

    #[test]
    fn banded_png_decodes_to_the_same_pixels() {
        for (w, h) in [(1u32, 1u32), (17, 9), (301, 257)] {
            let img = DynamicImage::ImageRgba16(image::ImageBuffer::from_fn(w, h, |x, y| {
                image::Rgba([
                    (x * 977 + y * 31) as u16,
                    ((x ^ y) * 200) as u16,
                    7,
                    (x * y) as u16,
                ])
            }));
            let options = PngOptions {
                level: 2,
                band_bytes: 4096,
                ..PngOptions::default()
            };
            let bytes = encode(
                &img,
                Some(b"fake icc"),
                &[("darkroom".into(), "{\"a\":1}".into())],
                &options,
            )
            .unwrap();
            let back =
                image::load_from_memory_with_format(&bytes, image::ImageFormat::Png).unwrap();
            assert_eq!(back, img, "{w}x{h}");
        }
    }
}
