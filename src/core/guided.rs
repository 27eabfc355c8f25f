//! Guided merge: the model's edit, modelled as a spatially varying affine colour transform that
//! is fitted on the proxy and applied to the full-resolution original's own colours.
//!
//! An additive delta (`original + upscale(processed - proxy)`) only moves local averages: the
//! original's fine texture keeps its old contrast and colour, and the upsampled change bleeds
//! across edges the proxy could not resolve. Here, as in the fast guided filter used for
//! upsampling (He and Sun 2015; the idea of bilateral guided upsampling, Chen et al. 2016):
//!
//! 1. **Fit** (proxy resolution). In the `(2r+1)^2` window around each proxy pixel, solve the
//!    least-squares affine map `P ~ A I + b` from proxy colours `I` to processed colours `P`
//!    (A is 3x3, b 3), with a ridge term `eps |A - A0|^2` that pulls windows with little colour
//!    variation (which say little about a gain) towards `A0`, the whole image's affine map.
//! 2. **Fallback**. The window's affine residual is compared with the additive model's (A = 1).
//!    Where the affine map is not clearly better (`rho = E_affine / E_additive` between
//!    `fallback_start` and `fallback_end`), A is blended towards the identity, which is the
//!    additive delta: a model that painted new content keeps the additive behaviour.
//! 3. **Smooth**. The coefficients are averaged over the same windows (the guided filter's
//!    second box filter), so neighbouring maps agree.
//! 4. **Residual**. What the smoothed maps still miss on the proxy, `R = P - (A I + b)`, is
//!    carried as a 16-bit delta layer and upsampled with Lanczos3 like an additive delta.
//! 5. **Apply** (full resolution, in the merge's row bands): the coefficients are upsampled
//!    bilinearly and `out = A(x) I_full + b(x) + R_up(x)`. Edges come from the original itself,
//!    since every pixel is mapped by its own colour.
//!
//! For locally constant maps this is `upscale(P) + A (I_full - upscale(I))`: the additive merge
//! with the original's detail passed through the local colour transform instead of unchanged.
//! Everything works in 8-bit units (0..=255 as floats); a 16-bit original is scaled on the fly.

use super::delta::DeltaLayer;
use super::delta::{NEUTRAL_16, UNITS_PER_LEVEL_16};
use super::geometry::Rect;
use image::{DynamicImage, ImageBuffer};
use rayon::prelude::*;
use std::borrow::Cow;

/// Parameters of the guided fit. Every field documents its default.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GuidedParams {
    /// Window radius in proxy pixels: each map is fitted on `(2r+1)^2` proxy pixels. Smaller
    /// follows faster-varying edits, larger fits more robustly. Default 3.
    pub radius: u32,
    /// Ridge weight in 8-bit levels squared: a window whose colours vary by much less than
    /// `sqrt(eps)` levels takes the whole image's map. Default 2.
    pub epsilon: f32,
    /// Residual ratio `E_affine / E_additive` below which the affine map is used as fitted.
    /// Default 0.5.
    pub fallback_start: f32,
    /// Residual ratio at and above which the additive delta is used instead. Default 0.9.
    pub fallback_end: f32,
}

impl Default for GuidedParams {
    fn default() -> Self {
        GuidedParams {
            radius: 3,
            epsilon: 2.0,
            fallback_start: 0.5,
            fallback_end: 0.9,
        }
    }
}

/// Why a guided fit cannot run.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
pub enum GuidedError {
    #[error("the proxy has {proxy} samples but the processed image {processed} (expected {expected}: RGB, {width}x{height})")]
    SampleCount {
        proxy: usize,
        processed: usize,
        expected: usize,
        width: usize,
        height: usize,
    },
    #[error("an empty proxy area ({0}x{1}) cannot be fitted")]
    Empty(usize, usize),
    #[error("fallback_start ({start}) must be below fallback_end ({end}) and epsilon > 0")]
    Params { start: f32, end: f32 },
}

/// Per-pixel affine colour maps and the residual, at proxy resolution.
#[derive(Debug, Clone)]
pub struct GuidedField {
    pub width: usize,
    pub height: usize,
    /// 12 per pixel: A row-major (output channel by input channel), then b; 8-bit units.
    coefficients: Vec<f32>,
    /// 3 per pixel: processed minus the smoothed maps applied to the proxy.
    residual: Vec<f32>,
}

/// Features per pixel: the three centred colour channels and the curvature term `q`.
const FEATURES: usize = 4;
/// Coefficients per pixel: the 3x3 colour part of A, its curvature column (3), then b (3).
const COEFFS: usize = 15;
/// Window statistics per pixel: mean f (4), mean P (3), f f^T (10), P f^T (12), P_o^2 (3).
const STATS: usize = 32;
/// Rows per parallel strip of the box filters (each strip re-reads `2r` rows around it).
const STRIP_ROWS: usize = 48;
/// Colour values are centred before squaring, so f32 sums keep their precision.
const CENTRE: f32 = 127.5;
/// Residual energy (8-bit levels squared, summed over channels) that 8-bit rounding of the
/// proxy and the processed image alone can cause; below it, models are not told apart.
const NOISE_FLOOR: f64 = 1.0;
/// The global map is the prior when its residual ratio is below the first value, the
/// identity above the second.
const GLOBAL_TRUST: (f64, f64) = (0.05, 0.25);
/// Luma weights (Rec. 601) of the curvature term.
const LUMA: [f32; 3] = [0.299, 0.587, 0.114];

/// The curvature feature of a colour in 8-bit units: `(L - 127.5)^2 / 127.5`, which lets a
/// window's map bend like a tone curve across the range of brightness it spans.
#[inline]
fn curvature(i: [f32; 3]) -> f32 {
    let l = LUMA[0] * i[0] + LUMA[1] * i[1] + LUMA[2] * i[2] - CENTRE;
    l * l / CENTRE
}

/// Box means of a `width x height` image with `k` interleaved channels over `(2r+1)^2`
/// windows clipped at the borders, for the output rows `rows`. Rows are pulled from `source`
/// and the means of each output row handed to `sink` in order; only `2r+2` horizontally
/// summed rows are held, never the image, so strips of rows can run in parallel.
fn box_means(
    width: usize,
    height: usize,
    k: usize,
    radius: usize,
    rows: std::ops::Range<usize>,
    mut source: impl FnMut(usize, &mut [f32]),
    mut sink: impl FnMut(usize, &[f32]),
) {
    let row_len = width * k;
    let ring_rows = 2 * radius + 2;
    let mut ring = vec![0f32; ring_rows * row_len];
    let mut raw = vec![0f32; row_len];
    let mut column_sums = vec![0f64; row_len];
    let mut means = vec![0f32; row_len];
    let mut running = vec![0f64; k];
    let mut load = |y: usize, ring: &mut [f32], column_sums: &mut [f64]| {
        source(y, &mut raw);
        let slot = &mut ring[(y % ring_rows) * row_len..][..row_len];
        running.fill(0.0);
        for x in 0..=radius.min(width - 1) {
            for (r, v) in running.iter_mut().zip(&raw[x * k..(x + 1) * k]) {
                *r += f64::from(*v);
            }
        }
        for x in 0..width {
            for (s, r) in slot[x * k..(x + 1) * k].iter_mut().zip(&running) {
                *s = *r as f32;
            }
            if x + radius + 1 < width {
                let at = (x + radius + 1) * k;
                for (r, v) in running.iter_mut().zip(&raw[at..at + k]) {
                    *r += f64::from(*v);
                }
            }
            if x >= radius {
                let at = (x - radius) * k;
                for (r, v) in running.iter_mut().zip(&raw[at..at + k]) {
                    *r -= f64::from(*v);
                }
            }
        }
        for (c, s) in column_sums.iter_mut().zip(slot.iter()) {
            *c += f64::from(*s);
        }
    };
    for y in rows.start.saturating_sub(radius)..=(rows.start + radius).min(height - 1) {
        load(y, &mut ring, &mut column_sums);
    }
    for y in rows.clone() {
        if y > rows.start {
            if y + radius < height {
                load(y + radius, &mut ring, &mut column_sums);
            }
            if y > radius {
                let slot = &ring[((y - radius - 1) % ring_rows) * row_len..][..row_len];
                for (c, s) in column_sums.iter_mut().zip(slot) {
                    *c -= f64::from(*s);
                }
            }
        }
        let rows = ((y + radius).min(height - 1) - y.saturating_sub(radius) + 1) as f64;
        for x in 0..width {
            let cols = ((x + radius).min(width - 1) - x.saturating_sub(radius) + 1) as f64;
            let n = rows * cols;
            for (m, c) in means[x * k..(x + 1) * k]
                .iter_mut()
                .zip(&column_sums[x * k..(x + 1) * k])
            {
                *m = (*c / n) as f32;
            }
        }
        sink(y, &means);
    }
}

/// Window statistics of one pixel pair.
fn pixel_stats(i: &[f32], p: &[f32], out: &mut [f32]) {
    let f = [
        i[0] - CENTRE,
        i[1] - CENTRE,
        i[2] - CENTRE,
        curvature([i[0], i[1], i[2]]),
    ];
    let p = [p[0] - CENTRE, p[1] - CENTRE, p[2] - CENTRE];
    out[..4].copy_from_slice(&f);
    out[4..7].copy_from_slice(&p);
    let mut k = 7;
    for a in 0..FEATURES {
        for b in a..FEATURES {
            out[k] = f[a] * f[b];
            k += 1;
        }
    }
    for o in 0..3 {
        for c in 0..FEATURES {
            out[17 + o * FEATURES + c] = p[o] * f[c];
        }
        out[29 + o] = p[o] * p[o];
    }
}

type Map = [[f64; FEATURES]; 3];

/// Covariances from window means of [`pixel_stats`].
struct Moments {
    mean_f: [f64; FEATURES],
    mean_p: [f64; 3],
    cov_ff: [[f64; FEATURES]; FEATURES],
    cov_pf: Map,
    var_p: [f64; 3],
}

impl Moments {
    fn from_means(m: &[f32]) -> Self {
        let f = |k: usize| f64::from(m[k]);
        let mean_f = [f(0), f(1), f(2), f(3)];
        let mean_p = [f(4), f(5), f(6)];
        let mut cov_ff = [[0.0; FEATURES]; FEATURES];
        let mut k = 7;
        for a in 0..FEATURES {
            for b in a..FEATURES {
                let c = f(k) - mean_f[a] * mean_f[b];
                cov_ff[a][b] = c;
                cov_ff[b][a] = c;
                k += 1;
            }
        }
        let mut cov_pf = [[0.0; FEATURES]; 3];
        let mut var_p = [0.0; 3];
        for o in 0..3 {
            for c in 0..FEATURES {
                cov_pf[o][c] = f(17 + o * FEATURES + c) - mean_p[o] * mean_f[c];
            }
            var_p[o] = (f(29 + o) - mean_p[o] * mean_p[o]).max(0.0);
        }
        Moments {
            mean_f,
            mean_p,
            cov_ff,
            cov_pf,
            var_p,
        }
    }

    /// The ridge solution `A = (C_Pf + eps A0)(C_ff + eps 1)^-1`.
    fn ridge(&self, epsilon: f64, prior: &Map) -> Map {
        let mut m = self.cov_ff;
        for (d, row) in m.iter_mut().enumerate() {
            row[d] += epsilon;
        }
        let inverse = invert_spd(&m);
        let mut a = [[0.0; FEATURES]; 3];
        for o in 0..3 {
            let mut rhs = [0.0; FEATURES];
            for (c, r) in rhs.iter_mut().enumerate() {
                *r = self.cov_pf[o][c] + epsilon * prior[o][c];
            }
            for c in 0..FEATURES {
                a[o][c] = (0..FEATURES).map(|k| rhs[k] * inverse[k][c]).sum();
            }
        }
        a
    }

    /// Mean squared residual of the ridge solution `a` (with its best `b`), summed over
    /// channels. With `M = C_ff + eps 1` and `a M = C_Pf + eps A0`, the quadratic term
    /// `a C_ff a^T` is `a (C_Pf + eps A0)^T - eps |a|^2`, so no matrix product is needed.
    fn ridge_residual(&self, a: &Map, epsilon: f64, prior: &Map) -> f64 {
        let mut e = 0.0;
        for o in 0..3 {
            for i in 0..FEATURES {
                e += a[o][i] * (epsilon * prior[o][i] - self.cov_pf[o][i] - epsilon * a[o][i]);
            }
            e += self.var_p[o];
        }
        e.max(0.0)
    }

    /// Mean squared residual of the additive model (A = 1: only `b` fitted): the variance of
    /// the change `P - I`, summed over channels.
    fn additive_residual(&self) -> f64 {
        (0..3)
            .map(|o| self.var_p[o] - 2.0 * self.cov_pf[o][o] + self.cov_ff[o][o])
            .sum::<f64>()
            .max(0.0)
    }
}

/// Inverse of a symmetric positive-definite matrix (Gauss-Jordan; the ridge keeps the
/// pivots away from zero).
fn invert_spd(m: &[[f64; FEATURES]; FEATURES]) -> [[f64; FEATURES]; FEATURES] {
    let mut a = *m;
    let mut inv = [[0.0; FEATURES]; FEATURES];
    for (d, row) in inv.iter_mut().enumerate() {
        row[d] = 1.0;
    }
    for col in 0..FEATURES {
        let pivot = a[col][col];
        for k in 0..FEATURES {
            a[col][k] /= pivot;
            inv[col][k] /= pivot;
        }
        for row in 0..FEATURES {
            if row != col {
                let factor = a[row][col];
                if factor != 0.0 {
                    for k in 0..FEATURES {
                        a[row][k] -= factor * a[col][k];
                        inv[row][k] -= factor * inv[col][k];
                    }
                }
            }
        }
    }
    inv
}

const IDENTITY: Map = [
    [1.0, 0.0, 0.0, 0.0],
    [0.0, 1.0, 0.0, 0.0],
    [0.0, 0.0, 1.0, 0.0],
];

fn smoothstep(edge0: f64, edge1: f64, x: f64) -> f64 {
    let t = ((x - edge0) / (edge1 - edge0)).clamp(0.0, 1.0);
    t * t * (3.0 - 2.0 * t)
}

impl GuidedField {
    /// Fits the maps from `proxy` to `processed`: interleaved RGB in 8-bit units, `width x
    /// height` each (the proxy's unpadded area).
    pub fn fit(
        proxy: &[f32],
        processed: &[f32],
        width: usize,
        height: usize,
        params: &GuidedParams,
    ) -> Result<GuidedField, GuidedError> {
        let expected = width * height * 3;
        if proxy.len() != expected || processed.len() != expected {
            return Err(GuidedError::SampleCount {
                proxy: proxy.len(),
                processed: processed.len(),
                expected,
                width,
                height,
            });
        }
        if width == 0 || height == 0 {
            return Err(GuidedError::Empty(width, height));
        }
        if params.fallback_start >= params.fallback_end
            || params.epsilon.is_nan()
            || params.epsilon <= 0.0
        {
            return Err(GuidedError::Params {
                start: params.fallback_start,
                end: params.fallback_end,
            });
        }
        let radius = params.radius as usize;
        let epsilon = f64::from(params.epsilon);
        // The prior is fitted on every pixel at once: it needs almost no ridge.
        let global = global_map(proxy, processed, epsilon * 1e-3);

        // 1 + 2: per-pixel ridge fits with the additive fallback.
        let mut coefficients = vec![0f32; width * height * COEFFS];
        let row_stats = |y: usize, out: &mut [f32]| {
            let at = y * width * 3;
            for x in 0..width {
                let px = at + x * 3;
                pixel_stats(
                    &proxy[px..px + 3],
                    &processed[px..px + 3],
                    &mut out[x * STATS..(x + 1) * STATS],
                );
            }
        };
        let (start, end) = (
            f64::from(params.fallback_start),
            f64::from(params.fallback_end),
        );
        let row_len = width * COEFFS;
        coefficients
            .par_chunks_mut(STRIP_ROWS * row_len)
            .enumerate()
            .for_each(|(strip, chunk)| {
                let first = strip * STRIP_ROWS;
                let rows = first..first + chunk.len() / row_len;
                box_means(width, height, STATS, radius, rows, row_stats, |y, means| {
                    let out = &mut chunk[(y - first) * row_len..][..row_len];
                    for (m, c) in means.chunks_exact(STATS).zip(out.chunks_exact_mut(COEFFS)) {
                        let moments = Moments::from_means(m);
                        let fitted = moments.ridge(epsilon, &global);
                        // Windows where even the additive model leaves less than NOISE_FLOOR
                        // (flat, barely changed) cannot tell the models apart: they keep the
                        // fitted map.
                        let rho = moments.ridge_residual(&fitted, epsilon, &global)
                            / (moments.additive_residual() + NOISE_FLOOR);
                        let t = smoothstep(start, end, rho);
                        store_map(&moments, &fitted, t, c);
                    }
                });
            });

        // 3: average the maps over the same windows.
        let mut smoothed = vec![0f32; coefficients.len()];
        smoothed
            .par_chunks_mut(STRIP_ROWS * row_len)
            .enumerate()
            .for_each(|(strip, chunk)| {
                let first = strip * STRIP_ROWS;
                let rows = first..first + chunk.len() / row_len;
                box_means(
                    width,
                    height,
                    COEFFS,
                    radius,
                    rows,
                    |y, out| out.copy_from_slice(&coefficients[y * row_len..][..row_len]),
                    |y, means| chunk[(y - first) * row_len..][..row_len].copy_from_slice(means),
                );
            });
        drop(coefficients);
        let coefficients = smoothed;

        // 4: the residual of the smoothed maps on the proxy.
        let mut residual = vec![0f32; width * height * 3];
        residual
            .par_chunks_mut(3)
            .zip(coefficients.par_chunks(COEFFS))
            .zip(proxy.par_chunks(3).zip(processed.par_chunks(3)))
            .for_each(|((r, c), (i, p))| {
                let q = apply_map(c, [i[0], i[1], i[2]]);
                for o in 0..3 {
                    r[o] = core_out_rounding(p[o] - q[o]);
                }
            });
        Ok(GuidedField {
            width,
            height,
            coefficients,
            residual,
        })
    }

    /// The residual as a 16-bit delta layer (gray when `gray`), to merge like any delta.
    pub fn residual_layer(&self, gray: bool) -> DeltaLayer {
        let encode = |v: f32| {
            (NEUTRAL_16 + v * UNITS_PER_LEVEL_16)
                .round()
                .clamp(0.0, 65535.0) as u16
        };
        let (w, h) = (self.width as u32, self.height as u32);
        let image = if gray {
            let samples = self
                .residual
                .chunks_exact(3)
                .map(|r| encode((r[0] + r[1] + r[2]) / 3.0))
                .collect();
            DynamicImage::ImageLuma16(ImageBuffer::from_raw(w, h, samples).expect("sized"))
        } else {
            let samples = self.residual.iter().map(|&v| encode(v)).collect();
            DynamicImage::ImageRgb16(ImageBuffer::from_raw(w, h, samples).expect("sized"))
        };
        DeltaLayer {
            image,
            area: Rect {
                x: 0,
                y: 0,
                width: w,
                height: h,
            },
        }
    }

    /// The maps as seen by a gray original (every input channel equal, output averaged):
    /// 3 coefficients per pixel: gain, curvature, offset.
    fn gray_coefficients(&self) -> Vec<f32> {
        self.coefficients
            .chunks_exact(COEFFS)
            .flat_map(|c| {
                let gain = c[..9].iter().sum::<f32>() / 3.0;
                let bend = (c[9] + c[10] + c[11]) / 3.0;
                let offset = (c[12] + c[13] + c[14]) / 3.0;
                [gain, bend, offset]
            })
            .collect()
    }

    /// Prepares the bilinear upsampling of the maps onto a `width x height` original with
    /// `colour` (1 or 3) colour channels.
    pub fn upsampler(&self, width: u32, height: u32, colour: usize) -> AffineUpsampler<'_> {
        let (coefficients, per_pixel) = if colour == 1 {
            (Cow::Owned(self.gray_coefficients()), 3)
        } else {
            (Cow::Borrowed(self.coefficients.as_slice()), COEFFS)
        };
        AffineUpsampler {
            source_width: self.width,
            per_pixel,
            coefficients,
            columns: bilinear_positions(self.width, width as usize),
            rows: bilinear_positions(self.height, height as usize),
        }
    }
}

/// The ridge prior of every window: the whole image's map where that map explains the edit
/// (a global grade), the identity where it does not (a spatially varying edit, whose global
/// fit would push cross-channel terms into windows that cannot correct them).
fn global_map(proxy: &[f32], processed: &[f32], epsilon: f64) -> Map {
    let sums = proxy
        .par_chunks(3 * 4096)
        .zip(processed.par_chunks(3 * 4096))
        .map(|(i, p)| {
            let mut acc = [0f64; STATS];
            let mut one = [0f32; STATS];
            for (pi, pp) in i.chunks_exact(3).zip(p.chunks_exact(3)) {
                pixel_stats(pi, pp, &mut one);
                for (a, v) in acc.iter_mut().zip(&one) {
                    *a += f64::from(*v);
                }
            }
            acc
        })
        .reduce(
            || [0f64; STATS],
            |mut a, b| {
                for (x, y) in a.iter_mut().zip(&b) {
                    *x += y;
                }
                a
            },
        );
    let n = (proxy.len() / 3) as f64;
    let means: Vec<f32> = sums.iter().map(|s| (s / n) as f32).collect();
    let moments = Moments::from_means(&means);
    let global = moments.ridge(epsilon, &IDENTITY);
    let rho = moments.ridge_residual(&global, epsilon, &IDENTITY)
        / (moments.additive_residual() + NOISE_FLOOR);
    let trust = 1.0 - smoothstep(GLOBAL_TRUST.0, GLOBAL_TRUST.1, rho);
    let mut prior = IDENTITY;
    for (p, g) in prior.iter_mut().zip(&global) {
        for (pv, gv) in p.iter_mut().zip(g) {
            *pv += trust * (gv - *pv);
        }
    }
    prior
}

/// Stores `A' = A + t (1 - A)` and the offset that goes with it, uncentred, into `out`.
fn store_map(m: &Moments, fitted: &Map, t: f64, out: &mut [f32]) {
    let mut a = [[0.0; FEATURES]; 3];
    for o in 0..3 {
        for c in 0..FEATURES {
            a[o][c] = fitted[o][c] + t * (IDENTITY[o][c] - fitted[o][c]);
        }
    }
    let centre = f64::from(CENTRE);
    for o in 0..3 {
        for c in 0..3 {
            out[o * 3 + c] = a[o][c] as f32;
        }
        out[9 + o] = a[o][3] as f32;
        // P - c = A_rgb (I - c) + d q + b_c  =>  P = A_rgb I + d q + (b_c + c - c sum(A_rgb)).
        let b_centred = m.mean_p[o] - (0..FEATURES).map(|c| a[o][c] * m.mean_f[c]).sum::<f64>();
        let row_sum: f64 = a[o][..3].iter().sum();
        out[12 + o] = (b_centred + centre - row_sum * centre) as f32;
    }
}

/// Shrinks residuals of the size that 8-bit rounding alone leaves (a level or less), which
/// would otherwise be upsampled into noise, and keeps larger ones: `r^3 / (r^2 + 0.5^2)`.
#[inline]
fn core_out_rounding(r: f32) -> f32 {
    r * r * r / (r * r + 0.25)
}

/// One pixel (8-bit units) through stored coefficients.
#[inline]
fn apply_map(c: &[f32], i: [f32; 3]) -> [f32; 3] {
    let q = curvature(i);
    [
        c[0] * i[0] + c[1] * i[1] + c[2] * i[2] + c[9] * q + c[12],
        c[3] * i[0] + c[4] * i[1] + c[5] * i[2] + c[10] * q + c[13],
        c[6] * i[0] + c[7] * i[1] + c[8] * i[2] + c[11] * q + c[14],
    ]
}

/// For each destination sample, the two source samples around it and the weight of the
/// second (pixel centres at `i + 0.5`, clamped at the borders).
fn bilinear_positions(source: usize, destination: usize) -> Vec<(u32, u32, f32)> {
    let scale = source as f64 / destination as f64;
    (0..destination)
        .map(|d| {
            let s = ((d as f64 + 0.5) * scale - 0.5).clamp(0.0, (source - 1) as f64);
            let first = s.floor() as usize;
            let second = (first + 1).min(source - 1);
            (first as u32, second as u32, (s - first as f64) as f32)
        })
        .collect()
}

/// The affine maps, upsampled bilinearly row by row onto the original.
pub struct AffineUpsampler<'a> {
    source_width: usize,
    per_pixel: usize,
    coefficients: Cow<'a, [f32]>,
    columns: Vec<(u32, u32, f32)>,
    rows: Vec<(u32, u32, f32)>,
}

impl AffineUpsampler<'_> {
    /// Scratch for [`Self::transform_row`].
    #[must_use]
    pub fn scratch(&self) -> Vec<f32> {
        vec![0f32; self.source_width * self.per_pixel]
    }

    /// Maps row `y` of the original's colour samples (`colour` interleaved channels, in units
    /// where one 8-bit level is `unit`) through the upsampled maps, in place.
    pub fn transform_row(&self, y: usize, values: &mut [f32], unit: f32, scratch: &mut [f32]) {
        let k = self.per_pixel;
        let row_len = self.source_width * k;
        let (first, second, fy) = self.rows[y];
        let top = &self.coefficients[first as usize * row_len..][..row_len];
        let bottom = &self.coefficients[second as usize * row_len..][..row_len];
        for ((s, t), b) in scratch.iter_mut().zip(top).zip(bottom) {
            *s = t + fy * (b - t);
        }
        let to_units = 1.0 / unit;
        if k == 3 {
            for (v, &(x0, x1, fx)) in values.iter_mut().zip(&self.columns) {
                let (l, r) = (x0 as usize * 3, x1 as usize * 3);
                let lerp = |k: usize| scratch[l + k] + fx * (scratch[r + k] - scratch[l + k]);
                let level = *v * to_units - CENTRE;
                let q = level * level / CENTRE;
                *v = lerp(0) * *v + (lerp(1) * q + lerp(2)) * unit;
            }
            return;
        }
        let mut c = [0f32; COEFFS];
        for (px, &(x0, x1, fx)) in values.chunks_exact_mut(3).zip(&self.columns) {
            let left = &scratch[x0 as usize * COEFFS..][..COEFFS];
            let right = &scratch[x1 as usize * COEFFS..][..COEFFS];
            for ((o, l), r) in c.iter_mut().zip(left).zip(right) {
                *o = l + fx * (r - l);
            }
            let i = [px[0], px[1], px[2]];
            let q = curvature([i[0] * to_units, i[1] * to_units, i[2] * to_units]);
            for o in 0..3 {
                px[o] = c[o * 3] * i[0]
                    + c[o * 3 + 1] * i[1]
                    + c[o * 3 + 2] * i[2]
                    + (c[9 + o] * q + c[12 + o]) * unit;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn textured(w: usize, h: usize) -> Vec<f32> {
        (0..w * h)
            .flat_map(|n| {
                let (x, y) = ((n % w) as f32, (n / w) as f32);
                let t = ((x * 0.7).sin() * (y * 0.45).cos() + 1.0) * 50.0;
                [40.0 + t + x, 60.0 + t * 0.8, 90.0 + t * 0.5 + y * 0.3]
            })
            .collect()
    }

    #[test]
    fn box_means_equal_a_direct_window_average() {
        let (w, h, k, r) = (13, 9, 2, 2);
        let data: Vec<f32> = (0..w * h * k).map(|v| ((v * 37) % 101) as f32).collect();
        let mut got = vec![0f32; w * h * k];
        box_means(
            w,
            h,
            k,
            r,
            0..h,
            |y, out| out.copy_from_slice(&data[y * w * k..(y + 1) * w * k]),
            |y, m| got[y * w * k..(y + 1) * w * k].copy_from_slice(m),
        );
        for y in 0..h {
            for x in 0..w {
                for c in 0..k {
                    let (mut sum, mut n) = (0.0, 0.0);
                    for yy in y.saturating_sub(r)..=(y + r).min(h - 1) {
                        for xx in x.saturating_sub(r)..=(x + r).min(w - 1) {
                            sum += data[(yy * w + xx) * k + c];
                            n += 1.0;
                        }
                    }
                    let got = got[(y * w + x) * k + c];
                    assert!(
                        (got - sum / n).abs() < 1e-3,
                        "({x},{y},{c}): {got} vs {}",
                        sum / n
                    );
                }
            }
        }
    }

    #[test]
    fn an_identity_edit_fits_the_identity_with_no_residual() {
        let (w, h) = (40, 30);
        let proxy = textured(w, h);
        let field = GuidedField::fit(&proxy, &proxy, w, h, &GuidedParams::default()).unwrap();
        for c in field.coefficients.chunks_exact(COEFFS) {
            for (k, v) in c.iter().enumerate() {
                let expected = if k < 9 && k % 4 == 0 { 1.0 } else { 0.0 };
                // (indices 9..15: curvature and offset, all zero)
                assert!((v - expected).abs() < 1e-3, "coefficient {k}: {v}");
            }
        }
        assert!(field.residual.iter().all(|r| r.abs() < 1e-2));
    }

    #[test]
    fn a_global_affine_edit_is_recovered_in_every_window() {
        let (w, h) = (48, 32);
        let proxy = textured(w, h);
        let edit = |i: &[f32]| {
            [
                1.2 * i[0] - 0.1 * i[1] + 10.0,
                0.9 * i[1] + 0.05 * i[2] + 5.0,
                0.8 * i[2] + 0.1 * i[0] - 3.0,
            ]
        };
        let processed: Vec<f32> = proxy.chunks_exact(3).flat_map(edit).collect();
        let field = GuidedField::fit(&proxy, &processed, w, h, &GuidedParams::default()).unwrap();
        // Applied to colours the proxy never had, the maps still give the edit.
        let up = field.upsampler(96, 64, 3);
        let mut scratch = up.scratch();
        let mut row: Vec<f32> = (0..96)
            .flat_map(|x| [x as f32 * 2.5, 128.0, 255.0 - x as f32])
            .collect();
        let expected: Vec<f32> = row.chunks_exact(3).flat_map(edit).collect();
        up.transform_row(17, &mut row, 1.0, &mut scratch);
        for (g, e) in row.iter().zip(&expected) {
            assert!((g - e).abs() < 0.05, "{g} vs {e}");
        }
    }

    #[test]
    fn painted_content_falls_back_to_the_additive_delta() {
        let (w, h) = (40, 40);
        let proxy = textured(w, h);
        // New content that no colour map explains: a pattern unrelated to the proxy.
        let processed: Vec<f32> = proxy
            .iter()
            .enumerate()
            .map(|(n, v)| v + if (n / 3 * 7919) % 13 < 6 { 30.0 } else { -30.0 })
            .collect();
        let field = GuidedField::fit(&proxy, &processed, w, h, &GuidedParams::default()).unwrap();
        let mean_diagonal: f32 = field
            .coefficients
            .chunks_exact(COEFFS)
            .map(|c| (c[0] + c[4] + c[8]) / 3.0)
            .sum::<f32>()
            / (w * h) as f32;
        assert!((mean_diagonal - 1.0).abs() < 0.05, "{mean_diagonal}");
    }

    #[test]
    fn gray_originals_get_gain_and_offset() {
        let (w, h) = (20, 20);
        let proxy: Vec<f32> = (0..w * h)
            .flat_map(|n| {
                let v = ((n * 31) % 200) as f32 + 20.0;
                [v, v, v]
            })
            .collect();
        let processed: Vec<f32> = proxy.iter().map(|v| v * 0.5 + 40.0).collect();
        let field = GuidedField::fit(&proxy, &processed, w, h, &GuidedParams::default()).unwrap();
        let up = field.upsampler(40, 40, 1);
        let mut scratch = up.scratch();
        let mut row = vec![100.0f32 * 257.0; 40];
        up.transform_row(3, &mut row, 257.0, &mut scratch);
        for v in row {
            assert!((v / 257.0 - 90.0).abs() < 0.5, "{}", v / 257.0);
        }
    }

    #[test]
    fn mismatched_inputs_are_refused() {
        let proxy = vec![0f32; 30];
        assert!(matches!(
            GuidedField::fit(&proxy, &proxy[..27], 5, 2, &GuidedParams::default()),
            Err(GuidedError::SampleCount { .. })
        ));
    }
}
