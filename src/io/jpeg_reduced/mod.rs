//! Reduced-size decoding of baseline JPEGs, for proxies: each 8x8 block is transformed
//! straight to N x N pixels (N = 4, 2 or 1) from its N x N lowest frequencies (the DCT
//! scaling of libjpeg 7 and later), and the entropy-coded data is decoded on two threads.
//!
//! Huffman decoding is serial by nature and is most of a reduced decode's time. With restart
//! markers the two halves start at a marker; without them the second thread starts decoding
//! at the middle of the data as if an MCU began there. JPEG's Huffman codes resynchronise
//! within a few blocks, so that thread's MCU boundaries soon fall on the true ones; the first
//! thread, arriving at the middle, looks for the first MCU boundary at which both threads
//! stood at the same bit and takes the second thread's blocks from there, in place (a
//! decoder's state at an MCU boundary is its bit position and the DC predictions; DC values
//! are kept modulo 2^16, so the second thread's, summed from zero, are off by one constant
//! per component, added as each block is transformed). When the threads never meet, the
//! first thread decodes on alone: the same pixels, just slower. Tests check the two-thread
//! result equals the one-thread result exactly.
//!
//! Only what proxies of photos need is decoded here: 8-bit baseline (or extended) Huffman,
//! one interleaved scan, one or three components sampled 1x or 2x. Anything else (progressive,
//! arithmetic coding, CMYK or RGB-coded files, several scans) and any damage gives `None`,
//! and the caller decodes the file at full size (zune-jpeg), which reports errors the usual
//! way.

#[cfg(target_arch = "x86_64")]
mod colour_x86;
mod entropy;
mod full_luma;
mod header;
#[cfg(target_arch = "x86_64")]
mod idct_x86;
mod parallel;
mod pixels;
mod progressive;

use entropy::{EntropyData, ScanTables};
pub use full_luma::Region;
pub use header::FileInfo;
use header::{Header, Layout};
use pixels::{inverse_transform, to_pixels, ycbcr_to_rgb};

/// A decoded, reduced image: 8-bit gray (1 channel) or RGB (3 channels), rows packed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reduced {
    pub width: u32,
    pub height: u32,
    pub channels: u8,
    pub pixels: Vec<u8>,
    /// How the entropy-coded data was shared between threads (for tests and logs).
    pub entropy: EntropySplit,
}

/// How the Huffman decoding was split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntropySplit {
    /// One thread decoded everything (small data, or asked for).
    Serial,
    /// Two threads, split at a restart marker.
    AtRestartMarker,
    /// Two threads; the second one's MCU boundaries met the first one's at this MCU.
    Speculative { met_at_mcu: usize },
    /// Two threads tried, but they never met: the first thread decoded on alone.
    SpeculativeUnmet,
}

impl std::fmt::Display for EntropySplit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EntropySplit::Serial => write!(f, "one thread"),
            EntropySplit::AtRestartMarker => write!(f, "two threads, split at a restart marker"),
            EntropySplit::Speculative { met_at_mcu } => {
                write!(f, "two threads, met at MCU {met_at_mcu}")
            }
            EntropySplit::SpeculativeUnmet => write!(f, "two threads tried, one decoded alone"),
        }
    }
}

/// Below this much entropy-coded data, a second thread costs more than it saves.
const PARALLEL_FROM_BYTES: usize = 256 * 1024;

/// Decodes `bytes` at `n`/8 of its size (`n` = 4, 2 or 1) to pixels, on two threads when
/// `two_threads` and the data is large enough to be worth it.
pub fn decode_with(bytes: &[u8], n: usize, two_threads: bool) -> Option<Reduced> {
    decode_planes(bytes, n, two_threads).map(Planes::into_reduced)
}

/// A reduced JPEG as its component planes (luma, and chroma at its own resolution), before
/// any upsampling or colour conversion.
pub struct Planes {
    layout: Layout,
    /// In scan order, each `plane_width x plane_height` (whole MCUs).
    planes: Vec<Vec<u8>>,
    parallel: bool,
    pub entropy: EntropySplit,
}

/// Decodes `bytes` at `n`/8 of its size into its planes; see [`decode_with`].
pub fn decode_planes(bytes: &[u8], n: usize, two_threads: bool) -> Option<Planes> {
    decode_planes_with_luma(bytes, n, two_threads, &[]).map(|(planes, _)| planes)
}

/// [`decode_planes`], and the luma (Y) of each region of the stored image at full size,
/// rows packed (for scores that must see the image at the size it was made; see
/// `full_luma`). `None` as for [`decode_planes`], or when a region leaves the image.
pub fn decode_planes_with_luma(
    bytes: &[u8],
    n: usize,
    two_threads: bool,
    regions: &[Region],
) -> Option<(Planes, Vec<Vec<u8>>)> {
    let parallel_from = if two_threads {
        PARALLEL_FROM_BYTES
    } else {
        usize::MAX
    };
    decode_planes_split_from(bytes, n, parallel_from, regions)
}

/// [`decode_with`] on two threads however little data there is: the speculative split on
/// every file, for the tests and fuzz targets that check it gives the one-thread result.
pub fn decode_always_split(bytes: &[u8], n: usize) -> Option<Reduced> {
    decode_planes_split_from(bytes, n, 0, &[]).map(|(planes, _)| planes.into_reduced())
}

/// The decode, with the Huffman decoding shared between two threads when the entropy-coded
/// data has at least `parallel_from` bytes.
fn decode_planes_split_from(
    bytes: &[u8],
    n: usize,
    parallel_from: usize,
    regions: &[Region],
) -> Option<(Planes, Vec<Vec<u8>>)> {
    if !(1..=entropy::MAX_KEPT).contains(&n) {
        return None;
    }
    let Some(header) = Header::parse(bytes) else {
        // Progressive: one thread decodes the scans; the transform is shared as above.
        if !regions.is_empty() {
            return None;
        }
        // Its entropy-coded data is about the file's size.
        let parallel = bytes.len() >= parallel_from;
        let decoded = progressive::decode(bytes, n, parallel)?;
        let planes = inverse_transform(
            &decoded.coefficients,
            &decoded.layout,
            &decoded.tables,
            parallel,
        );
        return Some((
            Planes {
                layout: decoded.layout,
                planes,
                parallel,
                entropy: EntropySplit::Serial,
            },
            Vec::new(),
        ));
    };
    let layout = Layout::of(&header, n)?;
    let data = EntropyData::unstuff(&bytes[header.scan_start..])?;
    let tables = ScanTables::of(&header, n)?;
    let parallel = data.bytes.len() >= parallel_from;
    let (coefficients, entropy) =
        parallel::decode_entropy(&data, &layout, &tables, header.restart_interval, parallel)?;
    let luma = if regions.is_empty() {
        Vec::new()
    } else {
        full_luma::luma_regions(&header, &data, &layout, &coefficients, regions)?
    };
    let planes = inverse_transform(&coefficients, &layout, &tables, parallel);
    Some((
        Planes {
            layout,
            planes,
            parallel,
            entropy,
        },
        luma,
    ))
}

impl Planes {
    /// The reduced image's size.
    pub fn size(&self) -> (u32, u32) {
        (self.layout.out_width as u32, self.layout.out_height as u32)
    }

    /// 1 (gray) or 3 (RGB).
    pub fn channels(&self) -> u8 {
        if self.layout.components.len() == 1 {
            1
        } else {
            3
        }
    }

    /// The reduced image's pixels, rows packed: chroma upsampled, converted to RGB.
    fn pixels(&self) -> Vec<u8> {
        to_pixels(&self.planes, &self.layout, self.parallel)
    }

    fn into_reduced(self) -> Reduced {
        let (width, height) = self.size();
        Reduced {
            width,
            height,
            channels: self.channels(),
            pixels: self.pixels(),
            entropy: self.entropy,
        }
    }

    /// The reduced image itself, as [`Planes::pixels`].
    pub fn into_image(self) -> Option<image::DynamicImage> {
        let (width, height) = self.size();
        let pixels = self.pixels();
        if self.channels() == 1 {
            image::GrayImage::from_raw(width, height, pixels).map(image::DynamicImage::ImageLuma8)
        } else {
            image::RgbImage::from_raw(width, height, pixels).map(image::DynamicImage::ImageRgb8)
        }
    }

    /// The image Lanczos3-resampled to `width x height`: each plane from its own grid
    /// (chroma from its half-resolution samples, which lie centred on the luma pixels they
    /// cover, as JFIF places them), then converted to RGB at the small size. Resampling is
    /// linear, so this is the RGB image resampled, less the work of upsampling chroma and
    /// converting every reduced pixel; only values that the filter's overshoot takes out of
    /// gamut are clamped at another point.
    pub fn resized(self, width: u32, height: u32) -> Option<image::DynamicImage> {
        use fast_image_resize::{FilterType, ResizeAlg, ResizeOptions, Resizer};
        use rayon::prelude::*;
        let (out_w, out_h) = (self.layout.out_width as f64, self.layout.out_height as f64);
        // The planes at once (luma is most of the work; fast_image_resize splits each plane's
        // rows between threads as well).
        let resized: Vec<(usize, Vec<u8>)> = self
            .planes
            .into_par_iter()
            .zip(&self.layout.components)
            .map(|(plane, c)| {
                let source =
                    image::GrayImage::from_raw(c.plane_width as u32, c.plane_height as u32, plane)?;
                let mut target = image::GrayImage::new(width, height);
                let options = ResizeOptions::new()
                    .resize_alg(ResizeAlg::Convolution(FilterType::Lanczos3))
                    .crop(
                        0.0,
                        0.0,
                        out_w / c.upsample_x as f64,
                        out_h / c.upsample_y as f64,
                    );
                Resizer::new().resize(&source, &mut target, &options).ok()?;
                Some((c.frame_index, target.into_raw()))
            })
            .collect::<Option<_>>()?;
        let mut by_frame = vec![Vec::new(); resized.len()];
        for (frame_index, plane) in resized {
            by_frame[frame_index] = plane;
        }
        if by_frame.len() == 1 {
            let luma = by_frame.pop()?;
            return image::GrayImage::from_raw(width, height, luma)
                .map(image::DynamicImage::ImageLuma8);
        }
        let row = width as usize;
        let mut rgb = vec![0u8; by_frame[0].len() * 3];
        rgb.par_chunks_mut(row * 3)
            .zip(by_frame[0].par_chunks(row))
            .zip(by_frame[1].par_chunks(row))
            .zip(by_frame[2].par_chunks(row))
            .with_min_len(64)
            .for_each(|(((out, luma), cb), cr)| {
                for (((rgb, &l), &cb), &cr) in out.chunks_exact_mut(3).zip(luma).zip(cb).zip(cr) {
                    rgb.copy_from_slice(&ycbcr_to_rgb(l, cb, cr));
                }
            });
        image::RgbImage::from_raw(width, height, rgb).map(image::DynamicImage::ImageRgb8)
    }
}
