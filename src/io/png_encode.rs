//! A parallel PNG encoder, because PNG encoding dominates split and merge.
//!
//! The image is cut into bands of rows; each band is filtered (adaptive per row: the filter
//! with the smallest sum of absolute residuals, as libpng and Pillow choose) and deflated on
//! its own core into a raw deflate stream ended by a sync flush, the way pigz does. The bands
//! are concatenated behind one zlib header, and their Adler-32 checksums are combined. Any
//! standard PNG reader decodes the result. iCCP (the original's colour profile) and iTXt
//! chunks (darkroom's metadata) are written before the pixel data.

use flate2::{Compress, Compression, FlushCompress, Status};
use image::DynamicImage;
use rayon::prelude::*;
use std::io::Write;

/// Encoder settings. Defaults: level 2, bands of about 1 MiB of raw rows.
#[derive(Debug, Clone, Copy)]
pub struct PngOptions {
    /// zlib level 1 (fastest) to 9 (smallest). Default 2: see the README's size/time table.
    pub level: u32,
    /// Raw bytes per parallel band (rounded to whole rows). Default 1 MiB.
    pub band_bytes: usize,
}

impl Default for PngOptions {
    fn default() -> Self {
        PngOptions {
            level: 2,
            band_bytes: 1 << 20,
        }
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

/// Encodes `image` as PNG with an optional ICC profile and UTF-8 text chunks.
pub fn encode(
    image: &DynamicImage,
    icc_profile: Option<&[u8]>,
    texts: &[(String, String)],
    options: &PngOptions,
) -> Result<Vec<u8>, PngEncodeError> {
    use image::ColorType as C;
    let (colour_type, bit_depth) = match image.color() {
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
    let bpp = usize::from(image.color().bytes_per_pixel());
    let (width, height) = (image.width(), image.height());
    let row_bytes = width as usize * bpp;
    let raw: std::borrow::Cow<'_, [u8]> = if bit_depth == 16 {
        // PNG stores samples big-endian.
        let samples: &[u16] = match image {
            DynamicImage::ImageLuma16(b) => b.as_raw(),
            DynamicImage::ImageLumaA16(b) => b.as_raw(),
            DynamicImage::ImageRgb16(b) => b.as_raw(),
            DynamicImage::ImageRgba16(b) => b.as_raw(),
            _ => unreachable!(),
        };
        std::borrow::Cow::Owned(samples.iter().flat_map(|s| s.to_be_bytes()).collect())
    } else {
        std::borrow::Cow::Borrowed(image.as_bytes())
    };

    let mut out = Vec::with_capacity(raw.len() / 2 + 1024);
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
    let compressed: Vec<Result<(Vec<u8>, u32, usize), PngEncodeError>> = bands
        .par_iter()
        .enumerate()
        .map(|(index, &(start, end))| {
            let filtered = filter_rows(&raw, row_bytes, bpp, start, end);
            let adler = simd_adler32::adler32(&filtered.as_slice());
            let deflated = deflate_raw(&filtered, options.level, index == last)?;
            Ok((deflated, adler, filtered.len()))
        })
        .collect();
    let mut stream = vec![0x78, 0x01];
    let mut adler = 1u32;
    for part in compressed {
        let (bytes, part_adler, len) = part?;
        stream.extend_from_slice(&bytes);
        adler = adler32_combine(adler, part_adler, len as u64);
    }
    stream.extend_from_slice(&adler.to_be_bytes());
    for piece in stream.chunks(1 << 20) {
        write_chunk(&mut out, b"IDAT", piece);
    }
    write_chunk(&mut out, b"IEND", &[]);
    Ok(out)
}

fn write_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let mut crc = crc32fast::Hasher::new();
    crc.update(kind);
    crc.update(data);
    out.write_all(&crc.finalize().to_be_bytes())
        .expect("Vec write");
}

fn zlib(data: &[u8], level: u32) -> Result<Vec<u8>, PngEncodeError> {
    let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), Compression::new(level));
    encoder
        .write_all(data)
        .and_then(|_| encoder.finish())
        .map_err(|e| PngEncodeError::Deflate(e.to_string()))
}

/// Raw deflate of one band; non-final bands end byte-aligned (sync flush) so bands concatenate.
fn deflate_raw(data: &[u8], level: u32, is_last: bool) -> Result<Vec<u8>, PngEncodeError> {
    let mut compressor = Compress::new(Compression::new(level), false);
    let mut out = Vec::with_capacity(data.len() / 2 + 64);
    let flush = if is_last {
        FlushCompress::Finish
    } else {
        FlushCompress::Sync
    };
    loop {
        if out.capacity() - out.len() < 64 {
            out.reserve(out.capacity().max(4096));
        }
        let consumed = compressor.total_in() as usize;
        let status = compressor
            .compress_vec(&data[consumed..], &mut out, flush)
            .map_err(|e| PngEncodeError::Deflate(e.to_string()))?;
        let done_input = compressor.total_in() as usize == data.len();
        match status {
            Status::StreamEnd => break,
            Status::Ok | Status::BufError
                if done_input && !is_last && out.capacity() > out.len() =>
            {
                // A sync flush is complete once it no longer fills the output buffer.
                break;
            }
            _ => {}
        }
    }
    Ok(out)
}

/// Filters rows `start..end`, each prefixed by its filter-type byte.
fn filter_rows(raw: &[u8], row_bytes: usize, bpp: usize, start: usize, end: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity((end - start) * (row_bytes + 1));
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
        let mut best = (u64::MAX, 0usize);
        for (kind, candidate) in candidates.iter_mut().enumerate() {
            apply_filter(kind, row, prev, bpp, candidate);
            let cost: u64 = candidate
                .iter()
                .map(|&b| u64::from((b as i8).unsigned_abs()))
                .sum();
            if cost < best.0 {
                best = (cost, kind);
            }
        }
        out.push(best.1 as u8);
        out.extend_from_slice(&candidates[best.1]);
    }
    out
}

fn apply_filter(kind: usize, row: &[u8], prev: &[u8], bpp: usize, out: &mut [u8]) {
    match kind {
        0 => out.copy_from_slice(row),
        1 => {
            out[..bpp].copy_from_slice(&row[..bpp]);
            for i in bpp..row.len() {
                out[i] = row[i].wrapping_sub(row[i - bpp]);
            }
        }
        2 => {
            for i in 0..row.len() {
                out[i] = row[i].wrapping_sub(prev[i]);
            }
        }
        3 => {
            for i in 0..bpp {
                out[i] = row[i].wrapping_sub(prev[i] >> 1);
            }
            for i in bpp..row.len() {
                let avg = ((u16::from(row[i - bpp]) + u16::from(prev[i])) >> 1) as u8;
                out[i] = row[i].wrapping_sub(avg);
            }
        }
        _ => {
            for i in 0..bpp {
                out[i] = row[i].wrapping_sub(prev[i]);
            }
            for i in bpp..row.len() {
                out[i] = row[i].wrapping_sub(paeth(row[i - bpp], prev[i], prev[i - bpp]));
            }
        }
    }
}

#[inline]
fn paeth(a: u8, b: u8, c: u8) -> u8 {
    let (ia, ib, ic) = (i16::from(a), i16::from(b), i16::from(c));
    let p = ia + ib - ic;
    let (pa, pb, pc) = ((p - ia).abs(), (p - ib).abs(), (p - ic).abs());
    if pa <= pb && pa <= pc {
        a
    } else if pb <= pc {
        b
    } else {
        c
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
