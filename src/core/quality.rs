//! Image quality measures for training-set control. Pure: a luminance plane in, numbers out.
//!
//! - sharpness: variance of the 3x3 Laplacian (Pech-Pacheco et al., 2000), in 8-bit levels².
//! - noise: Immerkær's fast noise variance estimation (J. Immerkær, "Fast Noise Variance
//!   Estimation", CVIU 64(2), 1996): the image convolved with the difference of two
//!   Laplacians, whose mean absolute value times sqrt(pi/2)/6 estimates the Gaussian noise
//!   sigma, in 8-bit levels; averaged over non-edge pixels only (Tai & Yang, 2008).
//! - blockiness: mean absolute step across the 8x8 JPEG block boundaries divided by the mean
//!   step inside blocks, minus one (0 = no block structure; a heavily compressed JPEG scores
//!   0.5 and more), horizontal and vertical together.
//! - clipping: the share of pixels whose luminance is 0 or 255.
//! - perceptual hash: the 64-bit DCT hash (pHash as `imagehash.phash` computes it: 32x32
//!   area-averaged luminance, 2-D DCT-II, the 8x8 lowest frequencies against their median);
//!   near-duplicates are hashes within a small Hamming distance.

use image::DynamicImage;

/// A luminance plane (Rec. 601 weights) in 8-bit levels, as `f32`.
#[derive(Debug, Clone)]
pub struct Luma {
    pub width: usize,
    pub height: usize,
    pub data: Vec<f32>,
}

/// Rec. 601 luma of an RGB(A) pixel's first three bytes, the weighting every score uses:
/// `0.299 r + 0.587 g + 0.114 b` in `f32`.
#[inline(always)]
pub fn pixel_luma(p: &[u8]) -> f32 {
    REC601[0] * f32::from(p[0]) + REC601[1] * f32::from(p[1]) + REC601[2] * f32::from(p[2])
}

const REC601: [f32; 3] = [0.299, 0.587, 0.114];

/// Appends [`pixel_luma`] of each pixel of `row` (`channels` = 3 or 4 bytes a pixel) to
/// `out`, eight pixels to a vector instruction where the CPU has AVX2 (the same products and
/// sums, so the same values: about a fifth of the time per pixel).
fn extend_luma(out: &mut Vec<f32>, row: &[u8], channels: usize) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2.
        return unsafe { extend_luma_avx2(out, row, channels) };
    }
    extend_luma_any(out, row, channels);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn extend_luma_avx2(out: &mut Vec<f32>, row: &[u8], channels: usize) {
    extend_luma_any(out, row, channels);
}

/// [`extend_luma`] for any CPU (inlined into each compiled variant; a fixed pixel size per
/// branch lets the compiler vectorise the strided loads).
#[inline(always)]
fn extend_luma_any(out: &mut Vec<f32>, row: &[u8], channels: usize) {
    // Written through a slice, not `Vec::extend`, whose body (a std generic) the compiler
    // may leave out of line, compiled without the vector instructions.
    let start = out.len();
    out.resize(start + row.len() / channels, 0.0);
    let luma = &mut out[start..];
    match channels {
        3 => luma
            .iter_mut()
            .zip(row.chunks_exact(3))
            .for_each(|(l, p)| *l = pixel_luma(p)),
        _ => luma
            .iter_mut()
            .zip(row.chunks_exact(4))
            .for_each(|(l, p)| *l = pixel_luma(p)),
    }
}

/// How many rows ahead [`Luma::of_region`] prefetches.
const PREFETCH_ROWS_AHEAD: usize = 6;

/// Asks the CPU to start loading the cache lines of `bytes` (only a hint: no effect on
/// results; nothing on other architectures).
#[inline(always)]
fn prefetch(bytes: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let lines = (0..bytes.len())
            .step_by(64)
            .chain(bytes.len().checked_sub(1));
        for at in lines {
            // SAFETY: a prefetch never faults, and the address is inside the slice anyway.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(bytes.as_ptr().add(at).cast()) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = bytes;
}

/// [`extend_luma`] of a whole buffer.
fn luma_of_rows(pixels: &[u8], channels: usize) -> Vec<f32> {
    let mut data = Vec::with_capacity(pixels.len() / channels);
    extend_luma(&mut data, pixels, channels);
    data
}

impl Luma {
    pub fn of(image: &DynamicImage) -> Luma {
        let data: Vec<f32> = match image {
            DynamicImage::ImageRgb8(b) => luma_of_rows(b.as_raw(), 3),
            DynamicImage::ImageRgba8(b) => return Luma::of_rgba8(b),
            DynamicImage::ImageLuma8(b) => b.as_raw().iter().map(|&v| f32::from(v)).collect(),
            other => luma_of_rows(other.to_rgb8().as_raw(), 3),
        };
        Luma {
            width: image.width() as usize,
            height: image.height() as usize,
            data,
        }
    }

    /// [`Luma::of`] the `width x height` region at (`x`, `y`) (inside the image), read
    /// straight from 8-bit buffers instead of through a cropped copy.
    pub fn of_region(image: &DynamicImage, x: u32, y: u32, width: u32, height: u32) -> Luma {
        fn rows<'a>(
            raw: &'a [u8],
            stride: usize,
            channels: usize,
            (x, y, width, height): (u32, u32, u32, u32),
        ) -> impl Iterator<Item = &'a [u8]> + 'a {
            let (start, length) = (x as usize * channels, width as usize * channels);
            raw.chunks_exact(stride)
                .skip(y as usize)
                .take(height as usize)
                .map(move |row| &row[start..start + length])
        }
        let region = (x, y, width, height);
        let stride = image.width() as usize;
        let mut data = Vec::with_capacity(width as usize * height as usize);
        // A region's rows lie an image row apart, too far for the CPU's own prefetching:
        // each row is asked for a few rows before it is read.
        let mut extend_rows = |raw: &[u8], channels: usize| {
            let rows: Vec<&[u8]> = rows(raw, stride * channels, channels, region).collect();
            for (i, row) in rows.iter().enumerate() {
                if let Some(ahead) = rows.get(i + PREFETCH_ROWS_AHEAD) {
                    prefetch(ahead);
                }
                extend_luma(&mut data, row, channels);
            }
        };
        match image {
            DynamicImage::ImageRgb8(b) => extend_rows(b.as_raw(), 3),
            DynamicImage::ImageRgba8(b) => extend_rows(b.as_raw(), 4),
            DynamicImage::ImageLuma8(b) => {
                for row in rows(b.as_raw(), stride, 1, region) {
                    data.extend(row.iter().map(|&v| f32::from(v)));
                }
            }
            other => return Luma::of(&other.crop_imm(x, y, width, height)),
        }
        Luma {
            width: width as usize,
            height: height as usize,
            data,
        }
    }

    /// [`Luma::of`] an RGBA buffer, without wrapping (and copying) it into an image.
    pub fn of_rgba8(buffer: &image::RgbaImage) -> Luma {
        let data = luma_of_rows(buffer.as_raw(), 4);
        Luma {
            width: buffer.width() as usize,
            height: buffer.height() as usize,
            data,
        }
    }

    fn at(&self, x: usize, y: usize) -> f32 {
        self.data[y * self.width + x]
    }

    /// Rows `y - 1`, `y` and `y + 1`, each `width` long.
    fn rows_around(&self, y: usize) -> (&[f32], &[f32], &[f32]) {
        let w = self.width;
        (
            &self.data[(y - 1) * w..y * w],
            &self.data[y * w..(y + 1) * w],
            &self.data[(y + 1) * w..(y + 2) * w],
        )
    }
}

/// Variance of the 3x3 Laplacian (4-neighbour) over the interior.
pub fn sharpness(luma: &Luma) -> f64 {
    let (w, h) = (luma.width, luma.height);
    if w < 3 || h < 3 {
        return 0.0;
    }
    // Four running sums of each (one would make every addition wait for the one before).
    let (mut sums, mut sums2) = ([0f64; 4], [0f64; 4]);
    let n = w - 2;
    for y in 1..h - 1 {
        let (above, row, below) = luma.rows_around(y);
        let (left, centre, right) = (&row[..n], &row[1..=n], &row[2..n + 2]);
        let (above, below) = (&above[1..=n], &below[1..=n]);
        let laplacian =
            |x: usize| f64::from(left[x] + right[x] + above[x] + below[x] - 4.0 * centre[x]);
        let mut x = 0;
        while x + 4 <= n {
            for lane in 0..4 {
                let v = laplacian(x + lane);
                sums[lane] += v;
                sums2[lane] += v * v;
            }
            x += 4;
        }
        for x in x..n {
            let v = laplacian(x);
            sums[0] += v;
            sums2[0] += v * v;
        }
    }
    let count = (n * (h - 2)) as f64;
    let total = |s: [f64; 4]| (s[0] + s[1]) + (s[2] + s[3]);
    let mean = total(sums) / count;
    total(sums2) / count - mean * mean
}

/// Noise sigma in 8-bit levels: Immerkær's operator averaged over the flat pixels only. As
/// Tai & Yang ("Fast method for image noise estimation using Laplacian operator and adaptive
/// edge detection", ISCCSP 2008) do, pixels whose Sobel gradient is in the top 10% are left
/// out, so texture and edges are not mistaken for noise.
pub fn noise_sigma(luma: &Luma) -> f64 {
    noise_sigma_of(std::slice::from_ref(luma))
}

/// [`noise_sigma`] over several patches of one image together (one edge threshold).
pub fn noise_sigma_of(patches: &[Luma]) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2.
        return unsafe { noise_sigma_of_avx2(patches) };
    }
    noise_sigma_of_any(patches)
}

/// [`noise_sigma_of`] with eight-lane vectors for the operators.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn noise_sigma_of_avx2(patches: &[Luma]) -> f64 {
    noise_sigma_of_any(patches)
}

/// [`noise_sigma_of`] for any CPU (inlined into each compiled variant).
#[inline(always)]
fn noise_sigma_of_any(patches: &[Luma]) -> f64 {
    let measured = |l: &&Luma| l.width >= 3 && l.height >= 3;
    let total = patches
        .iter()
        .filter(measured)
        .map(|l| (l.width - 2) * (l.height - 2))
        .sum();
    let mut gradient = vec![0f32; total];
    let mut response = vec![0f32; total];
    let mut at = 0;
    for luma in patches.iter().filter(measured) {
        let n = luma.width - 2;
        for y in 1..luma.height - 1 {
            let rows = luma.rows_around(y);
            let (g, r) = (&mut gradient[at..at + n], &mut response[at..at + n]);
            if n < LANES {
                for x in 0..n {
                    let (gx, rx) = gradient_and_response::<1>(rows, x);
                    (g[x], r[x]) = (gx[0], rx[0]);
                }
            } else {
                // Eight outputs per step; the last step ends at the row's end and overlaps
                // the one before (the same values again), so no output is left to a scalar
                // tail.
                for x in (0..n).step_by(LANES).map(|x| x.min(n - LANES)) {
                    let (gx, rx) = gradient_and_response::<LANES>(rows, x);
                    g[x..x + LANES].copy_from_slice(&gx);
                    r[x..x + LANES].copy_from_slice(&rx);
                }
            }
            at += n;
        }
    }
    let inner = gradient.len();
    if inner == 0 {
        return 0.0;
    }
    let cut = (inner * 9 / 10).min(inner - 1);
    let threshold = kth_smallest_non_negative(&gradient, cut);
    // Four running sums (one sum would make every addition wait for the one before), and
    // no branch on flatness, which is unpredictable.
    let (mut sums, mut counts) = ([0f64; 4], [0u64; 4]);
    let (gradients, responses) = (gradient.chunks_exact(4), response.chunks_exact(4));
    for (&g, &r) in gradients.remainder().iter().zip(responses.remainder()) {
        let flat = g <= threshold;
        sums[0] += if flat { f64::from(r) } else { 0.0 };
        counts[0] += u64::from(flat);
    }
    for (g4, r4) in gradients.zip(responses) {
        for i in 0..4 {
            let flat = g4[i] <= threshold;
            sums[i] += if flat { f64::from(r4[i]) } else { 0.0 };
            counts[i] += u64::from(flat);
        }
    }
    let n: u64 = counts.iter().sum();
    if n == 0 {
        return 0.0;
    }
    let sum = (sums[0] + sums[1]) + (sums[2] + sums[3]);
    (std::f64::consts::PI / 2.0).sqrt() * sum / (6.0 * n as f64)
}

/// Vector width (f32 lanes of AVX2) the noise operators are written for.
const LANES: usize = 8;

/// The Sobel gradient magnitude (|gx| + |gy|) and the absolute Laplacian response (kernel
/// [[1,-2,1],[-2,4,-2],[1,-2,1]]) of `W` neighbouring pixels, the first centred at column
/// `x + 1` of the middle row of `rows` (the rows above, at and below); a fixed width so
/// the compiler computes them in one vector each.
#[inline(always)]
fn gradient_and_response<const W: usize>(
    (above, row, below): (&[f32], &[f32], &[f32]),
    x: usize,
) -> ([f32; W], [f32; W]) {
    let window = |line: &[f32], dx: usize| -> [f32; W] {
        line[x + dx..x + dx + W].try_into().expect("W values")
    };
    let (a0, a1, a2) = (window(above, 0), window(above, 1), window(above, 2));
    let (m0, m1, m2) = (window(row, 0), window(row, 1), window(row, 2));
    let (b0, b1, b2) = (window(below, 0), window(below, 1), window(below, 2));
    let (mut g, mut r) = ([0f32; W], [0f32; W]);
    for i in 0..W {
        let gx = a2[i] + 2.0 * m2[i] + b2[i] - a0[i] - 2.0 * m0[i] - b0[i];
        let gy = b0[i] + 2.0 * b1[i] + b2[i] - a0[i] - 2.0 * a1[i] - a2[i];
        g[i] = gx.abs() + gy.abs();
        let v = a0[i] - 2.0 * a1[i] + a2[i] - 2.0 * m0[i] + 4.0 * m1[i] - 2.0 * m2[i] + b0[i]
            - 2.0 * b1[i]
            + b2[i];
        r[i] = v.abs();
    }
    (g, r)
}

/// The `k`-th smallest (from 0) of `values`, all finite and non-negative, without sorting or
/// copying them all: non-negative floats order as their bit patterns do, so one pass counts
/// the values per top 16 bits, and only the bucket holding rank `k` (about 1% of a photo's
/// gradients) is copied and partially sorted. The same value `select_nth_unstable` gives.
fn kth_smallest_non_negative(values: &[f32], k: usize) -> f32 {
    assert!(k < values.len(), "rank {k} of {} values", values.len());
    let bucket = |v: f32| (v.to_bits() >> 16) as usize;
    let mut counts = vec![0u32; 1 << 16];
    for &v in values {
        debug_assert!(v.is_finite() && v.is_sign_positive(), "{v}");
        counts[bucket(v)] += 1;
    }
    let mut below = 0usize;
    let mut target = 0;
    for (index, &count) in counts.iter().enumerate() {
        if below + count as usize > k {
            target = index;
            break;
        }
        below += count as usize;
    }
    let mut in_bucket: Vec<f32> = values
        .iter()
        .copied()
        .filter(|&v| bucket(v) == target)
        .collect();
    *in_bucket
        .select_nth_unstable_by(k - below, f32::total_cmp)
        .1
}

/// Up to `max_patches` square luminance patches of `size` pixels spread evenly over the
/// image, their corners on the 8-pixel grid (so JPEG blocks stay aligned). The noise and
/// blockiness of a large source are measured on these instead of on every pixel; an image
/// smaller than one patch is one patch.
pub fn sample_patches(image: &DynamicImage, size: u32, max_patches: u32) -> Vec<Luma> {
    match patch_origins(image.width(), image.height(), size, max_patches) {
        Some(origins) => origins
            .into_iter()
            .map(|(x, y)| Luma::of_region(image, x, y, size, size))
            .collect(),
        None => vec![Luma::of(image)],
    }
}

/// The top-left corners of [`sample_patches`]'s patches in a `width x height` image (rows of
/// patches top to bottom, each left to right); `None` when the image is smaller than a patch
/// (the whole image is measured then).
pub fn patch_origins(
    width: u32,
    height: u32,
    size: u32,
    max_patches: u32,
) -> Option<Vec<(u32, u32)>> {
    if width < size || height < size {
        return None;
    }
    let per_axis = (f64::from(max_patches).sqrt() as u32).max(1);
    let (nx, ny) = ((width / size).min(per_axis), (height / size).min(per_axis));
    let origin = |i: u32, n: u32, length: u32| -> u32 {
        let span = length - size;
        let at = if n > 1 {
            u64::from(span) * u64::from(i) / u64::from(n - 1)
        } else {
            u64::from(span / 2)
        };
        (at as u32) / 8 * 8
    };
    Some(
        (0..ny)
            .flat_map(|j| (0..nx).map(move |i| (origin(i, nx, width), origin(j, ny, height))))
            .collect(),
    )
}

/// Block-boundary steps over in-block steps, minus one, on a `block`-pixel grid (8 for a
/// JPEG decoded at full size). `None` when the image has fewer than two blocks each way.
pub fn blockiness(luma: &Luma, block: usize) -> Option<f64> {
    blockiness_of(std::slice::from_ref(luma), block)
}

/// [`blockiness`] over patches whose corners lie on the block grid.
pub fn blockiness_of(patches: &[Luma], block: usize) -> Option<f64> {
    let (mut edge, mut edge_n, mut inner, mut inner_n) = (0f64, 0f64, 0f64, 0f64);
    for luma in patches {
        let (w, h) = (luma.width, luma.height);
        if block < 2 || w < 2 * block || h < 2 * block {
            continue;
        }
        // Steps across the grid's vertical lines, x = block - 1, 2 * block - 1, ...
        let edges_per_row = (w - 1) / block;
        for row in luma.data.chunks_exact(w) {
            let all = sum_abs_diff(&row[..w - 1], &row[1..]);
            let on_edges: f64 = (block - 1..w - 1)
                .step_by(block)
                .map(|x| f64::from((row[x + 1] - row[x]).abs()))
                .sum();
            edge += on_edges;
            edge_n += edges_per_row as f64;
            inner += all - on_edges;
            inner_n += (w - 1 - edges_per_row) as f64;
        }
        for (y, (row, below)) in luma
            .data
            .chunks_exact(w)
            .zip(luma.data.chunks_exact(w).skip(1))
            .enumerate()
        {
            let sum = sum_abs_diff(row, below);
            if (y + 1) % block == 0 {
                edge += sum;
                edge_n += w as f64;
            } else {
                inner += sum;
                inner_n += w as f64;
            }
        }
    }
    if edge_n == 0.0 {
        return None;
    }
    let inner_mean = inner / inner_n;
    if inner_mean < 1e-6 {
        return Some(0.0);
    }
    Some(((edge / edge_n) / inner_mean - 1.0).max(0.0))
}

/// Sum of `|b - a|` over two equally long rows, in eight f32 lanes (a row's steps are at
/// most 255 each, well within f32's exact range for a row) so the loop vectorises.
fn sum_abs_diff(a: &[f32], b: &[f32]) -> f64 {
    let mut lanes = [0f32; 8];
    let (a_chunks, b_chunks) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a_chunks
        .remainder()
        .iter()
        .zip(b_chunks.remainder())
        .map(|(a, b)| (b - a).abs())
        .sum();
    for (a8, b8) in a_chunks.zip(b_chunks) {
        for i in 0..8 {
            lanes[i] += (b8[i] - a8[i]).abs();
        }
    }
    lanes.iter().map(|&v| f64::from(v)).sum::<f64>() + f64::from(tail)
}

/// Shares of pixels at luminance 0 (dark) and 255 (bright), after rounding.
pub fn clipping(luma: &Luma) -> (f64, f64) {
    let n = luma.data.len().max(1) as f64;
    let dark = luma.data.iter().filter(|&&v| v < 0.5).count() as f64;
    let bright = luma.data.iter().filter(|&&v| v >= 254.5).count() as f64;
    (dark / n, bright / n)
}

/// [`clipping`] over the pixels where `mask` is true (the opaque ones of an RGBA image).
pub fn clipping_where(luma: &Luma, mask: &[bool]) -> (f64, f64) {
    let (mut dark, mut bright, mut n) = (0usize, 0usize, 0usize);
    for (v, _) in luma.data.iter().zip(mask).filter(|(_, m)| **m) {
        n += 1;
        dark += usize::from(*v < 0.5);
        bright += usize::from(*v >= 254.5);
    }
    let n = n.max(1) as f64;
    (dark as f64 / n, bright as f64 / n)
}

/// The 64-bit DCT perceptual hash.
pub fn phash(luma: &Luma) -> u64 {
    const N: usize = 32;
    let (w, h) = (luma.width.max(1), luma.height.max(1));
    // Area average onto 32x32: the rows of each band summed per column first (independent
    // additions, which vectorise), then each band's column sums into its 32 cells.
    let mut small = [[0f64; N]; N];
    let mut count = [[0f64; N]; N];
    // Which of the 32 columns each x falls in, worked out once rather than per pixel.
    let column_of: Vec<usize> = (0..luma.width).map(|x| x * N / w).collect();
    let mut column_sums = vec![0f64; luma.width];
    for (by, (cells, counts)) in small.iter_mut().zip(&mut count).enumerate() {
        // The rows y with y * N / h == by.
        let band = (by * h).div_ceil(N)..((by + 1) * h).div_ceil(N).min(luma.height);
        if band.is_empty() {
            continue;
        }
        column_sums.fill(0.0);
        for row in luma.data.chunks_exact(w).skip(band.start).take(band.len()) {
            for (sum, v) in column_sums.iter_mut().zip(row) {
                *sum += f64::from(*v);
            }
        }
        for (sum, &bx) in column_sums.iter().zip(&column_of) {
            cells[bx] += sum;
            counts[bx] += band.len() as f64;
        }
    }
    for (row, counts) in small.iter_mut().zip(&count) {
        for (v, c) in row.iter_mut().zip(counts) {
            if *c > 0.0 {
                *v /= c;
            }
        }
    }
    // Separable DCT-II, only the 8 lowest frequencies are needed each way.
    let cos: Vec<[f64; N]> = (0..8)
        .map(|k| {
            let mut row = [0f64; N];
            for (n, v) in row.iter_mut().enumerate() {
                *v = (std::f64::consts::PI * k as f64 * (2 * n + 1) as f64 / (2 * N) as f64).cos();
            }
            row
        })
        .collect();
    let mut rows = [[0f64; 8]; N];
    for (y, line) in small.iter().enumerate() {
        for (k, c) in cos.iter().enumerate() {
            rows[y][k] = line.iter().zip(c).map(|(a, b)| a * b).sum();
        }
    }
    let mut low = [0f64; 64];
    for u in 0..8 {
        for v in 0..8 {
            low[u * 8 + v] = (0..N).map(|y| rows[y][v] * cos[u][y]).sum();
        }
    }
    let mut sorted = low;
    sorted.sort_by(f64::total_cmp);
    let median = (sorted[31] + sorted[32]) / 2.0;
    low.iter().enumerate().fold(0u64, |hash, (i, v)| {
        if *v > median {
            hash | (1 << (63 - i))
        } else {
            hash
        }
    })
}

/// Bits that differ between two hashes.
pub fn hamming(a: u64, b: u64) -> u32 {
    (a ^ b).count_ones()
}

/// Gradient energy along each axis of a small copy, for the `thirds` crop placement:
/// Sobel magnitude of luminance, squared so that the strongest detail dominates, summed per
/// column and per row.
#[allow(clippy::needless_range_loop)]
pub fn detail_profile(luma: &Luma) -> crate::core::dataset::DetailProfile {
    let (w, h) = (luma.width, luma.height);
    let mut columns = vec![0f64; w];
    let mut rows = vec![0f64; h];
    if w >= 3 && h >= 3 {
        for y in 1..h - 1 {
            for x in 1..w - 1 {
                let p = |dx: usize, dy: usize| f64::from(luma.at(x + dx - 1, y + dy - 1));
                let gx = p(2, 0) + 2.0 * p(2, 1) + p(2, 2) - p(0, 0) - 2.0 * p(0, 1) - p(0, 2);
                let gy = p(0, 2) + 2.0 * p(1, 2) + p(2, 2) - p(0, 0) - 2.0 * p(1, 0) - p(2, 0);
                let energy = gx * gx + gy * gy;
                columns[x] += energy;
                rows[y] += energy;
            }
        }
    }
    crate::core::dataset::DetailProfile { columns, rows }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_luma_equals_the_weighted_sum_of_each_pixel() {
        // Every level in every channel, rows of odd lengths (vector body and scalar tail).
        let rgb: Vec<u8> = (0..3 * 1021).map(|i| (i * 7 + i / 3) as u8).collect();
        for channels in [3, 4] {
            for length in [1, 7, 8, 9, 255, 1021] {
                let row = &rgb[..length / channels * channels];
                let mut out = vec![-1.0];
                extend_luma(&mut out, row, channels);
                let expected: Vec<f32> = std::iter::once(-1.0)
                    .chain(row.chunks_exact(channels).map(|p| {
                        0.299 * f32::from(p[0]) + 0.587 * f32::from(p[1]) + 0.114 * f32::from(p[2])
                    }))
                    .collect();
                assert_eq!(out, expected, "{channels} channels, {length} bytes");
            }
        }
        for (r, g, b) in [
            (0, 0, 0),
            (255, 255, 255),
            (1, 2, 3),
            (200, 17, 99),
            (13, 250, 128),
        ] {
            let expected = 0.299 * f32::from(r) + 0.587 * f32::from(g) + 0.114 * f32::from(b);
            assert_eq!(pixel_luma(&[r, g, b]), expected);
        }
    }

    #[test]
    fn the_bucketed_rank_selection_equals_select_nth() {
        // Values with many ties and a wide range, as gradient magnitudes have.
        let mut state = 12345u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as u32
        };
        let values: Vec<f32> = (0..20_000)
            .map(|i| match i % 4 {
                0 => 0.0,
                1 => (next() % 50) as f32 * 0.25,
                2 => (next() % 4000) as f32 * 0.299,
                _ => (next() % 1_000_000) as f32 / 7.0,
            })
            .collect();
        for k in [0, 1, 4999, 10_000, 17_999, 19_998, 19_999] {
            let mut copy = values.clone();
            let expected = *copy.select_nth_unstable_by(k, f32::total_cmp).1;
            assert_eq!(kth_smallest_non_negative(&values, k), expected, "rank {k}");
        }
        assert_eq!(kth_smallest_non_negative(&[3.5], 0), 3.5);
    }

    #[test]
    fn a_region_reads_the_same_luma_as_a_cropped_copy() {
        let (w, h) = (23u32, 17u32);
        let bytes = |channels: u32| -> Vec<u8> {
            (0..w * h * channels)
                .map(|i| (i * 13 % 256) as u8)
                .collect()
        };
        let images = [
            DynamicImage::ImageRgb8(image::ImageBuffer::from_raw(w, h, bytes(3)).unwrap()),
            DynamicImage::ImageRgba8(image::ImageBuffer::from_raw(w, h, bytes(4)).unwrap()),
            DynamicImage::ImageLuma8(image::ImageBuffer::from_raw(w, h, bytes(1)).unwrap()),
            DynamicImage::ImageLumaA8(image::ImageBuffer::from_raw(w, h, bytes(2)).unwrap()),
        ];
        for image in &images {
            for (x, y, rw, rh) in [(0, 0, w, h), (5, 3, 8, 8), (15, 9, 8, 8), (0, 16, 23, 1)] {
                let region = Luma::of_region(image, x, y, rw, rh);
                let copy = Luma::of(&image.crop_imm(x, y, rw, rh));
                assert_eq!((region.width, region.height), (copy.width, copy.height));
                assert_eq!(region.data, copy.data, "{:?} at {x},{y}", image.color());
            }
        }
    }

    fn plane(width: usize, height: usize, f: impl Fn(usize, usize) -> f32) -> Luma {
        let data = (0..height)
            .flat_map(|y| (0..width).map(move |x| (x, y)))
            .map(|(x, y)| f(x, y))
            .collect();
        Luma {
            width,
            height,
            data,
        }
    }

    /// The scores as first written, pixel by pixel: the reference the row-sliced versions
    /// must reproduce.
    fn naive_noise_and_blockiness(patches: &[Luma], block: usize) -> (f64, f64) {
        let (mut gradient, mut response) = (Vec::new(), Vec::new());
        for l in patches {
            for y in 1..l.height - 1 {
                for x in 1..l.width - 1 {
                    let p = |dx: usize, dy: usize| l.at(x + dx - 1, y + dy - 1);
                    let gx = p(2, 0) + 2.0 * p(2, 1) + p(2, 2) - p(0, 0) - 2.0 * p(0, 1) - p(0, 2);
                    let gy = p(0, 2) + 2.0 * p(1, 2) + p(2, 2) - p(0, 0) - 2.0 * p(1, 0) - p(2, 0);
                    gradient.push(gx.abs() + gy.abs());
                    let v = p(0, 0) - 2.0 * p(1, 0) + p(2, 0) - 2.0 * p(0, 1) + 4.0 * p(1, 1)
                        - 2.0 * p(2, 1)
                        + p(0, 2)
                        - 2.0 * p(1, 2)
                        + p(2, 2);
                    response.push(v.abs());
                }
            }
        }
        let mut sorted = gradient.clone();
        let cut = (sorted.len() * 9 / 10).min(sorted.len() - 1);
        let threshold = *sorted.select_nth_unstable_by(cut, f32::total_cmp).1;
        let (mut sum, mut n) = (0f64, 0usize);
        for (g, r) in gradient.iter().zip(&response) {
            if *g <= threshold {
                sum += f64::from(*r);
                n += 1;
            }
        }
        let noise = (std::f64::consts::PI / 2.0).sqrt() * sum / (6.0 * n as f64);
        let (mut edge, mut edge_n, mut inner, mut inner_n) = (0f64, 0f64, 0f64, 0f64);
        for l in patches {
            for y in 0..l.height {
                for x in 0..l.width - 1 {
                    let d = f64::from((l.at(x + 1, y) - l.at(x, y)).abs());
                    if (x + 1) % block == 0 {
                        (edge, edge_n) = (edge + d, edge_n + 1.0);
                    } else {
                        (inner, inner_n) = (inner + d, inner_n + 1.0);
                    }
                }
            }
            for y in 0..l.height - 1 {
                for x in 0..l.width {
                    let d = f64::from((l.at(x, y + 1) - l.at(x, y)).abs());
                    if (y + 1) % block == 0 {
                        (edge, edge_n) = (edge + d, edge_n + 1.0);
                    } else {
                        (inner, inner_n) = (inner + d, inner_n + 1.0);
                    }
                }
            }
        }
        (noise, (edge / edge_n) / (inner / inner_n) - 1.0)
    }

    #[test]
    fn the_row_sliced_scores_match_the_pixel_by_pixel_reference() {
        // Blocky, noisy patches of a few sizes (odd widths leave a tail after the 8 lanes).
        let patches: Vec<Luma> = [(64, 64), (37, 29), (16, 70)]
            .into_iter()
            .enumerate()
            .map(|(k, (w, h))| {
                plane(w, h, move |x, y| {
                    let block_level = ((x / 8 + 3 * (y / 8) + k) % 5) as f32 * 30.0;
                    block_level + 40.0 + 12.0 * hash_noise(x + 100 * k, y)
                })
            })
            .collect();
        let (noise, blockiness) = naive_noise_and_blockiness(&patches, 8);
        // The same operator values; only the flat pixels' responses are summed in four
        // running sums instead of one.
        let fast_noise = noise_sigma_of(&patches);
        assert!(
            (fast_noise - noise).abs() < 1e-12 * noise,
            "{fast_noise} vs {noise}"
        );
        // The vector variant (where the CPU runs one) equals the portable one exactly.
        assert_eq!(fast_noise, noise_sigma_of_any(&patches));
        let fast = blockiness_of(&patches, 8).unwrap();
        assert!(blockiness > 0.1, "the patches are blocky: {blockiness}");
        assert!(
            (fast - blockiness).abs() < 1e-9 * blockiness,
            "{fast} vs {blockiness}"
        );
    }

    /// A deterministic pseudo-random value in [-1, 1].
    fn hash_noise(x: usize, y: usize) -> f32 {
        let mut v = (x as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ (y as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
        v ^= v >> 29;
        v = v.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        v ^= v >> 32;
        (v % 20001) as f32 / 10000.0 - 1.0
    }

    #[test]
    fn noise_estimate_tracks_added_noise() {
        let smooth = plane(256, 256, |x, y| (x + y) as f32 * 0.4 + 20.0);
        assert!(noise_sigma(&smooth) < 0.01);
        // Uniform noise in [-a, a] has sigma a/sqrt(3).
        let noisy = plane(256, 256, |x, y| 100.0 + 17.32 * hash_noise(x, y));
        let sigma = noise_sigma(&noisy);
        assert!((sigma - 10.0).abs() < 1.5, "{sigma}");
    }

    #[test]
    fn blockiness_sees_the_8x8_grid() {
        let blocks = plane(128, 128, |x, y| {
            ((x / 8 * 37 + y / 8 * 11) % 60) as f32 + 0.1 * (x % 8) as f32
        });
        let smooth = plane(128, 128, |x, y| {
            (x as f32 * 0.7 + y as f32 * 0.3).sin() * 40.0 + 100.0
        });
        assert!(blockiness(&blocks, 8).unwrap() > 5.0);
        assert!(blockiness(&smooth, 8).unwrap() < 0.1);
        assert_eq!(blockiness(&plane(10, 10, |_, _| 0.0), 8), None);
    }

    #[test]
    fn clipping_counts_both_ends() {
        let p = plane(10, 10, |x, _| match x {
            0 => 0.0,
            1 | 2 => 255.0,
            _ => 128.0,
        });
        assert_eq!(clipping(&p), (0.1, 0.2));
    }

    #[test]
    fn phash_is_stable_under_small_changes_and_differs_across_images() {
        let a = plane(300, 200, |x, y| {
            ((x as f32 / 23.0).sin() * (y as f32 / 17.0).cos() * 100.0) + 128.0
        });
        let a_noisy = plane(300, 200, |x, y| a.at(x, y) + 3.0 * hash_noise(x, y));
        let b = plane(300, 200, |x, y| ((x * y) % 97) as f32 * 2.0);
        assert!(hamming(phash(&a), phash(&a_noisy)) <= 4);
        assert!(hamming(phash(&a), phash(&b)) > 16);
    }

    #[test]
    fn blur_lowers_sharpness() {
        let sharp = plane(64, 64, |x, y| {
            if (x / 4 + y / 4) % 2 == 0 {
                200.0
            } else {
                50.0
            }
        });
        let soft = plane(64, 64, |x, y| {
            125.0
                + 75.0
                    * ((x as f32 / 4.0) * std::f32::consts::PI).sin()
                    * ((y as f32 / 4.0) * std::f32::consts::PI).sin()
        });
        assert!(sharpness(&sharp) > 10.0 * sharpness(&soft));
    }
}
