//! Guided merge: the model's edit, modelled as a bilateral grid of affine colour maps that is
//! fitted on the proxy and sliced by the full-resolution original's own colours.
//!
//! An additive delta (`original + upscale(processed - proxy)`) only moves local averages: the
//! original's fine texture keeps its old contrast and colour, and the upsampled change bleeds
//! across edges the proxy could not resolve. Here, after bilateral guided upsampling (Chen et
//! al., SIGGRAPH Asia 2016):
//!
//! 1. **Splat** (proxy resolution). Every proxy pixel adds its colour statistics to the 8
//!    nodes of a grid over (x, y, luminance) around it, with tent weights: `cell` proxy pixels
//!    per spatial cell, `bins` luminance nodes from black to white. A processed sample clipped
//!    at 0 or 255 is left out of its channel's statistics: it only says that the edit reaches
//!    past the range there (the merge clips the same way), and fitting it would flatten the
//!    map for every pixel that was not clipped.
//! 2. **Fit**, coarse to fine, each level a ridge-regularised least-squares affine map
//!    `P ~ A I + b` (A 3x3) per output channel, pulled towards the level above: the whole
//!    image's map (or the identity when no global map explains the edit); then each spatial
//!    node's map over all luminances; then each grid node's map. A node with little data
//!    leans on its parent's map, and a direction of colour its pixels do not span takes its
//!    parent's gain. Where a node's map explains the edit no better than the additive model
//!    (new content), it blends towards the additive delta.
//! 3. **Residual.** What the sliced maps miss on the proxy is carried as a 16-bit delta layer
//!    and upsampled with Lanczos3 like an additive delta.
//! 4. **Slice** (full resolution, in the merge's row bands): each original pixel takes the
//!    trilinear interpolation of the maps at its position and its *own* luminance, so the maps
//!    follow the original's edges and a dark pixel next to a bright one gets the dark map.
//! 5. **Untouched stays untouched.** Where the processed proxy equals the proxy over a
//!    neighbourhood, the output is the original, sample for sample.
//!
//! Everything works in 8-bit units (0..=255 as floats); a 16-bit original is scaled on the fly.

use super::delta::DeltaLayer;
use super::delta::{NEUTRAL_16, UNITS_PER_LEVEL_16};
use super::geometry::Rect;

use image::{DynamicImage, ImageBuffer};
use rayon::prelude::*;

/// Parameters of the guided fit. Every field documents its default.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GuidedParams {
    /// Proxy pixels per spatial grid cell. Smaller follows faster-varying edits, larger fits
    /// more robustly. Default 8.
    pub cell: u32,
    /// Luminance nodes from black to white (at least 2). Default 16.
    pub bins: u32,
    /// Ridge weight in 8-bit levels squared: colours that vary by much less than
    /// `sqrt(epsilon)` levels in a node take the parent map's gain. Default 4.
    pub epsilon: f32,
    /// Share of what the maps miss on the proxy that is added back as an upsampled delta.
    /// Default 1.
    pub residual: f32,
    /// Residual ratio `E_affine / E_additive` below which a node's map is used as fitted.
    /// Default 0.5.
    pub fallback_start: f32,
    /// Residual ratio at and above which the additive delta is used instead. Default 0.9.
    pub fallback_end: f32,
}

impl Default for GuidedParams {
    fn default() -> Self {
        GuidedParams {
            cell: 8,
            bins: 16,
            epsilon: 4.0,
            residual: 1.0,
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
    #[error("the guided merge needs a cell of 1 proxy pixel or more, 2 luminance bins or more, an epsilon above 0, a residual share from 0 to 1, and fallback_start below fallback_end")]
    Params,
}

/// Affine colour maps on a bilateral grid, the residual, and the untouched mask, at proxy
/// resolution.
#[derive(Debug, Clone)]
pub struct GuidedField {
    pub width: usize,
    pub height: usize,
    grid: Grid,
    /// 3 per pixel: the share of processed minus the sliced maps that is added back.
    residual: Vec<f32>,
    /// Per pixel, how much of the merge applies: 0 where the model changed nothing nearby (the
    /// original is kept exactly), 1 at and around its changes. `None` when it is 1 everywhere.
    touched: Option<Vec<f32>>,
    /// Where no colour map explains the processed proxy (new content).
    content: Option<ContentRegion>,
}

/// Where the model painted new content: the maps leave more than [`CONTENT_LEVELS`] of the
/// processed proxy unexplained. The additive residual brings such content back at the
/// proxy's resolution; a super-resolution model can bring it back sharper.
#[derive(Debug, Clone)]
pub struct ContentRegion {
    /// The bounding box of the non-zero weights, in proxy pixels of the fitted area.
    pub area: Rect,
    /// Per pixel of the fitted area: 1 on new content, ramping to 0 around it.
    pub weights: Vec<f32>,
}

/// Coefficients per grid node: A row-major (output channel by input channel), then b.
const COEFFS: usize = 12;
/// Statistics per grid node and output channel: weight, sum f (3), sum f f^T (6), sum P,
/// sum P f (3), sum P^2. Colours are centred on [`CENTRE`].
const CHANNEL_STATS: usize = 15;
const STATS: usize = 3 * CHANNEL_STATS;
/// Colour values are centred before squaring, so sums keep their precision.
const CENTRE: f32 = 127.5;
/// Residual energy (8-bit levels squared, summed over channels) that 8-bit rounding of the
/// proxy and the processed image alone can cause; below it, models are not told apart.
const NOISE_FLOOR: f64 = 1.0;
/// The global map is the prior when its residual ratio is below the first value, the
/// identity above the second.
const GLOBAL_TRUST: (f64, f64) = (0.05, 0.25);
/// Tent weight (in proxy pixels) at which a node's own fit and its parent's map count
/// equally: nodes with less data lean on the parent.
const PARENT_WEIGHT: f64 = 4.0;
/// Luma weights (Rec. 601) of the grid's luminance axis.
const LUMA: [f32; 3] = [0.299, 0.587, 0.114];
/// Unexplained change (8-bit levels, largest channel) from which a proxy pixel starts to
/// count as new content, and at which it fully does.
const CONTENT_LEVELS: (f32, f32) = (24.0, 48.0);
/// Proxy pixels around a change that get the full merge, and the width of the ramp to the
/// untouched original beyond them.
const TOUCH_MARGIN: usize = 2;
const TOUCH_RAMP: usize = 4;

#[inline]
fn luma(i: [f32; 3]) -> f32 {
    LUMA[0] * i[0] + LUMA[1] * i[1] + LUMA[2] * i[2]
}

/// The grid: `nodes_x x nodes_y` spatial nodes, `bins` luminance nodes each, [`COEFFS`] per
/// node, x fastest after the luminance.
#[derive(Debug, Clone)]
struct Grid {
    /// The proxy area the grid spans, in proxy pixels.
    width: usize,
    height: usize,
    cell: f32,
    nodes_x: usize,
    nodes_y: usize,
    bins: usize,
    coefficients: Vec<f32>,
}

/// A position on one grid axis: the lower node and the weight of the upper one.
#[derive(Debug, Clone, Copy)]
struct Tent {
    node: u32,
    upper: f32,
}

impl Tent {
    fn at(coordinate: f32, nodes: usize) -> Tent {
        let c = coordinate.clamp(0.0, (nodes - 1) as f32);
        let node = (c.floor() as usize).min(nodes - 2);
        Tent {
            node: node as u32,
            upper: c - node as f32,
        }
    }
}

/// Tents of `destination` samples spread over `source` proxy pixels, on a grid with `cell`
/// proxy pixels per cell.
fn spatial_tents(source: usize, destination: usize, cell: f32, nodes: usize) -> Vec<Tent> {
    let scale = source as f64 / destination as f64;
    (0..destination)
        .map(|d| Tent::at(((d as f64 + 0.5) * scale) as f32 / cell, nodes))
        .collect()
}

type Map = [[f64; 3]; 3];

const IDENTITY: Map = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];

/// Weighted means and covariances of one output channel from a node's statistics.
struct Channel {
    weight: f64,
    mean_f: [f64; 3],
    mean_p: f64,
    cov_ff: Map,
    cov_pf: [f64; 3],
    var_p: f64,
}

impl Channel {
    /// From one channel's [`CHANNEL_STATS`] sums; `None` without data.
    fn from_sums(s: &[f64]) -> Option<Channel> {
        let weight = s[0];
        if weight <= 1e-9 {
            return None;
        }
        let m = |k: usize| s[k] / weight;
        let mean_f = [m(1), m(2), m(3)];
        let mut cov_ff = [[0.0; 3]; 3];
        let mut k = 4;
        for a in 0..3 {
            for b in a..3 {
                let c = m(k) - mean_f[a] * mean_f[b];
                cov_ff[a][b] = c;
                cov_ff[b][a] = c;
                k += 1;
            }
        }
        let mean_p = m(10);
        Some(Channel {
            weight,
            mean_f,
            mean_p,
            cov_ff,
            cov_pf: std::array::from_fn(|c| m(11 + c) - mean_p * mean_f[c]),
            var_p: (m(14) - mean_p * mean_p).max(0.0),
        })
    }

    /// The ridge solution `a = (C_Pf + eps a0)(C_ff + eps 1)^-1` and its mean squared residual
    /// (with its best offset). With `M = C_ff + eps 1` and `a M = C_Pf + eps a0`, the term
    /// `a C_ff a^T` is `a (C_Pf + eps a0)^T - eps |a|^2`, so no matrix product is needed.
    fn ridge(&self, epsilon: f64, prior: &[f64; 3]) -> ([f64; 3], f64) {
        let mut m = self.cov_ff;
        for (d, row) in m.iter_mut().enumerate() {
            row[d] += epsilon;
        }
        let inverse = invert_spd(&m);
        let rhs: [f64; 3] = std::array::from_fn(|c| self.cov_pf[c] + epsilon * prior[c]);
        let a: [f64; 3] = std::array::from_fn(|c| (0..3).map(|k| rhs[k] * inverse[k][c]).sum());
        let e = (0..3)
            .map(|i| a[i] * (epsilon * prior[i] - self.cov_pf[i] - epsilon * a[i]))
            .sum::<f64>()
            + self.var_p;
        (a, e.max(0.0))
    }

    /// Mean squared residual of the additive model (gain 1 on its own input channel `o`,
    /// only the offset fitted): the variance of the change.
    fn additive_residual(&self, o: usize) -> f64 {
        (self.var_p - 2.0 * self.cov_pf[o] + self.cov_ff[o][o]).max(0.0)
    }
}

/// A node's statistics, per output channel: a sample whose processed value is clipped at 0 or
/// 255 in a channel says only that the map reaches past the range there, so it is left out
/// of that channel's fit (the merge clips the same way).
struct Moments([Option<Channel>; 3]);

impl Moments {
    fn from_sums(s: &[f64]) -> Moments {
        Moments(std::array::from_fn(|o| {
            Channel::from_sums(&s[o * CHANNEL_STATS..(o + 1) * CHANNEL_STATS])
        }))
    }

    /// The fitted map towards `prior` (its gains are the ridge target; a channel with no data
    /// takes its row, and one with little data leans on it), blended towards the identity
    /// (the additive delta) where it explains the edit no better than the identity does.
    fn fit(&self, epsilon: f64, prior: &Affine, fallback: (f64, f64)) -> Affine {
        let mut fitted = *prior;
        let (mut e_fit, mut e_add) = (0.0, 0.0);
        for (o, channel) in self.0.iter().enumerate() {
            if let Some(c) = channel {
                let (a, e) = c.ridge(epsilon, &prior.a[o]);
                fitted.a[o] = a;
                e_fit += e;
                e_add += c.additive_residual(o);
            }
        }
        // Nodes where even the additive model leaves less than NOISE_FLOOR (flat, barely
        // changed) cannot tell the models apart: they keep the fitted map.
        let t = smoothstep(fallback.0, fallback.1, e_fit / (e_add + NOISE_FLOOR));
        let mut out = *prior;
        for (o, channel) in self.0.iter().enumerate() {
            if let Some(c) = channel {
                let a: [f64; 3] =
                    std::array::from_fn(|i| fitted.a[o][i] + t * (IDENTITY[o][i] - fitted.a[o][i]));
                let b = c.mean_p - (0..3).map(|i| a[i] * c.mean_f[i]).sum::<f64>();
                let lean = c.weight / (c.weight + PARENT_WEIGHT);
                out.a[o] = std::array::from_fn(|i| prior.a[o][i] + lean * (a[i] - prior.a[o][i]));
                out.b[o] = prior.b[o] + lean * (b - prior.b[o]);
            }
        }
        out
    }
}

/// `P - c = a (I - c) + b`, colours centred on [`CENTRE`].
#[derive(Debug, Clone, Copy)]
struct Affine {
    a: Map,
    b: [f64; 3],
}

impl Affine {
    const IDENTITY: Affine = Affine {
        a: IDENTITY,
        b: [0.0; 3],
    };

    /// `self + t (other - self)`: outputs blend the same way for every colour.
    fn towards(&self, other: &Affine, t: f64) -> Affine {
        Affine {
            a: std::array::from_fn(|o| {
                std::array::from_fn(|c| self.a[o][c] + t * (other.a[o][c] - self.a[o][c]))
            }),
            b: std::array::from_fn(|o| self.b[o] + t * (other.b[o] - self.b[o])),
        }
    }

    /// Stored uncentred: `P = A I + (b + c - c rowsum(A))`.
    fn store(&self, out: &mut [f32]) {
        let centre = f64::from(CENTRE);
        for o in 0..3 {
            for c in 0..3 {
                out[o * 3 + c] = self.a[o][c] as f32;
            }
            let row_sum: f64 = self.a[o].iter().sum();
            out[9 + o] = (self.b[o] + centre - row_sum * centre) as f32;
        }
    }
}

/// Inverse of a symmetric positive-definite 3x3 matrix (Gauss-Jordan; the ridge keeps the
/// pivots away from zero).
fn invert_spd(m: &Map) -> Map {
    let mut a = *m;
    let mut inv = IDENTITY;
    for col in 0..3 {
        let pivot = a[col][col];
        for k in 0..3 {
            a[col][k] /= pivot;
            inv[col][k] /= pivot;
        }
        for row in 0..3 {
            if row != col {
                let factor = a[row][col];
                if factor != 0.0 {
                    for k in 0..3 {
                        a[row][k] -= factor * a[col][k];
                        inv[row][k] -= factor * inv[col][k];
                    }
                }
            }
        }
    }
    inv
}

fn smoothstep(edge0: f64, edge1: f64, x: f64) -> f64 {
    let t = ((x - edge0) / (edge1 - edge0)).clamp(0.0, 1.0);
    t * t * (3.0 - 2.0 * t)
}

/// One pixel pair's statistics: per output channel, the values [`Channel::from_sums`] reads,
/// or all zero where the processed channel is clipped.
fn pixel_stats(f: &[f64; 3], p: &[f64; 3], out: &mut [f64; STATS]) {
    let mut ff = [0f64; 6];
    let mut k = 0;
    for a in 0..3 {
        for b in a..3 {
            ff[k] = f[a] * f[b];
            k += 1;
        }
    }
    let clip = f64::from(CENTRE) - 0.5;
    for (o, s) in out.chunks_exact_mut(CHANNEL_STATS).enumerate() {
        if p[o].abs() >= clip {
            s.fill(0.0);
            continue;
        }
        s[0] = 1.0;
        s[1..4].copy_from_slice(f);
        s[4..10].copy_from_slice(&ff);
        s[10] = p[o];
        for c in 0..3 {
            s[11 + c] = p[o] * f[c];
        }
        s[14] = p[o] * p[o];
    }
}

/// Per-pixel statistics of `proxy -> processed` summed over the whole image.
fn image_totals(proxy: &[f32], processed: &[f32]) -> Vec<f64> {
    proxy
        .par_chunks(3 * 4096)
        .zip(processed.par_chunks(3 * 4096))
        .map(|(i, p)| {
            let mut sums = vec![0f64; STATS];
            let mut one = [0f64; STATS];
            for (pi, pp) in i.chunks_exact(3).zip(p.chunks_exact(3)) {
                let f = [0, 1, 2].map(|c| f64::from(pi[c] - CENTRE));
                let q = [0, 1, 2].map(|c| f64::from(pp[c] - CENTRE));
                pixel_stats(&f, &q, &mut one);
                for (s, v) in sums.iter_mut().zip(&one) {
                    *s += v;
                }
            }
            sums
        })
        .reduce(
            || vec![0f64; STATS],
            |mut a, b| {
                for (x, y) in a.iter_mut().zip(&b) {
                    *x += y;
                }
                a
            },
        )
}

/// Splats `proxy -> processed` (interleaved RGB, `width x height`) onto `grid` and fits its
/// nodes with `fit_row`, one row of nodes at a time: the statistics of the whole grid are
/// never held.
fn fit_grid(
    proxy: &[f32],
    processed: &[f32],
    grid: &mut Grid,
    fit_row: &(dyn Fn(&[f64], &mut [f32]) + Sync),
) {
    let (width, height) = (grid.width, grid.height);
    let (nodes_x, nodes_y, bins) = (grid.nodes_x, grid.nodes_y, grid.bins);
    let columns = spatial_tents(width, width, grid.cell, nodes_x);
    let rows = spatial_tents(height, height, grid.cell, nodes_y);
    let node_row = nodes_x * bins * STATS;
    let coefficient_row = nodes_x * bins * COEFFS;
    let bin_scale = (bins - 1) as f32 / 255.0;
    // The proxy rows whose lower node row is `band` touch only node rows `band` and
    // `band + 1`: each band fills a two-row buffer, and the buffers are added in order.
    let band_rows = |band: usize| {
        let first = rows.partition_point(|t| (t.node as usize) < band);
        let end = rows.partition_point(|t| t.node as usize <= band);
        first..end
    };
    let splat_band = |band: usize| {
        // f32 within a band (a node sums a few hundred pixels), f64 across bands.
        let mut buffer = vec![0f32; 2 * node_row];
        let mut one = [0f64; STATS];
        let mut one32 = [0f32; STATS];
        for y in band_rows(band) {
            let ty = rows[y];
            for (x, tx) in columns.iter().enumerate() {
                let at = (y * width + x) * 3;
                let i = [proxy[at], proxy[at + 1], proxy[at + 2]];
                let tl = Tent::at(luma(i) * bin_scale, bins);
                let f = i.map(|v| f64::from(v - CENTRE));
                let p: [f64; 3] = std::array::from_fn(|c| f64::from(processed[at + c] - CENTRE));
                pixel_stats(&f, &p, &mut one);
                for (o, v) in one32.iter_mut().zip(&one) {
                    *o = *v as f32;
                }
                for (gy, wy) in [(0, 1.0 - ty.upper), (1, ty.upper)] {
                    for (gx, wx) in [(tx.node, 1.0 - tx.upper), (tx.node + 1, tx.upper)] {
                        for (gl, wl) in [(tl.node, 1.0 - tl.upper), (tl.node + 1, tl.upper)] {
                            let w = wy * wx * wl;
                            if w > 0.0 {
                                let n = gy * node_row + (gx as usize * bins + gl as usize) * STATS;
                                for (g, v) in buffer[n..n + STATS].iter_mut().zip(&one32) {
                                    *g += w * v;
                                }
                            }
                        }
                    }
                }
            }
        }
        buffer
    };
    let mut pending = vec![0f64; node_row];
    let bands: Vec<usize> = (0..nodes_y - 1).collect();
    for group in bands.chunks(2 * rayon::current_num_threads()) {
        let buffers: Vec<Vec<f32>> = group.par_iter().map(|&b| splat_band(b)).collect();
        for (&band, buffer) in group.iter().zip(&buffers) {
            // Node row `band` has all its pixels now.
            for (p, v) in pending.iter_mut().zip(&buffer[..node_row]) {
                *p += f64::from(*v);
            }
            fit_row(
                &pending,
                &mut grid.coefficients[band * coefficient_row..][..coefficient_row],
            );
            for (p, v) in pending.iter_mut().zip(&buffer[node_row..]) {
                *p = f64::from(*v);
            }
        }
    }
    fit_row(
        &pending,
        &mut grid.coefficients[(nodes_y - 1) * coefficient_row..][..coefficient_row],
    );
}

/// The ridge prior of the spatial nodes: the whole image's map where that map explains the
/// edit (a global grade), the identity where it does not (a spatially varying edit, whose
/// global fit would push cross-channel terms into nodes that cannot correct them).
fn global_prior(totals: &[f64], epsilon: f64) -> Affine {
    let moments = Moments::from_sums(totals);
    let fitted = moments.fit(epsilon, &Affine::IDENTITY, (f64::MAX, f64::MAX));
    let (mut e_fit, mut e_add) = (0.0, 0.0);
    for (o, channel) in moments.0.iter().enumerate() {
        if let Some(c) = channel {
            e_fit += c.ridge(epsilon, &IDENTITY[o]).1;
            e_add += c.additive_residual(o);
        }
    }
    let trust = 1.0
        - smoothstep(
            GLOBAL_TRUST.0,
            GLOBAL_TRUST.1,
            e_fit / (e_add + NOISE_FLOOR),
        );
    Affine::IDENTITY.towards(&fitted, trust)
}

/// Shrinks residuals of the size that 8-bit rounding alone leaves (a level or less), which
/// would otherwise be upsampled into noise, and keeps larger ones: `r^3 / (r^2 + 0.5^2)`.
#[inline]
fn core_out_rounding(r: f32) -> f32 {
    r * r * r / (r * r + 0.25)
}

/// Separable maximum over `(2r+1)^2` windows of a `width x height` mask, clipped at borders.
fn dilate(mask: &[f32], width: usize, height: usize, r: usize) -> Vec<f32> {
    let mut across = vec![0f32; mask.len()];
    for y in 0..height {
        let row = &mask[y * width..][..width];
        for x in 0..width {
            across[y * width + x] = row[x.saturating_sub(r)..=(x + r).min(width - 1)]
                .iter()
                .fold(0f32, |m, v| m.max(*v));
        }
    }
    let mut out = vec![0f32; mask.len()];
    for y in 0..height {
        for x in 0..width {
            out[y * width + x] = (y.saturating_sub(r)..=(y + r).min(height - 1))
                .map(|yy| across[yy * width + x])
                .fold(0f32, f32::max);
        }
    }
    out
}

/// Separable mean over `(2r+1)^2` windows, the border replicated.
fn box_mean(mask: &[f32], width: usize, height: usize, r: usize) -> Vec<f32> {
    let n = (2 * r + 1) as f32;
    let at = |i: isize, len: usize| i.clamp(0, len as isize - 1) as usize;
    let mut across = vec![0f32; mask.len()];
    for y in 0..height {
        for x in 0..width {
            let sum: f32 = (-(r as isize)..=r as isize)
                .map(|d| mask[y * width + at(x as isize + d, width)])
                .sum();
            across[y * width + x] = sum / n;
        }
    }
    let mut out = vec![0f32; mask.len()];
    for y in 0..height {
        for x in 0..width {
            let sum: f32 = (-(r as isize)..=r as isize)
                .map(|d| across[at(y as isize + d, height) * width + x])
                .sum();
            // Exactly 0 and 1 stay exact, so untouched areas keep the original bit for bit.
            out[y * width + x] = if sum == 0.0 { 0.0 } else { (sum / n).min(1.0) };
        }
    }
    out
}

/// How much of the merge applies at each proxy pixel: 1 within [`TOUCH_MARGIN`] pixels of a
/// pixel the model changed, ramping to exactly 0 over [`TOUCH_RAMP`] more. `None` when every
/// pixel gets the full merge.
fn touched_mask(proxy: &[f32], processed: &[f32], width: usize, height: usize) -> Option<Vec<f32>> {
    let changed: Vec<f32> = proxy
        .chunks_exact(3)
        .zip(processed.chunks_exact(3))
        .map(|(i, p)| if i == p { 0.0 } else { 1.0 })
        .collect();
    let grown = dilate(&changed, width, height, TOUCH_MARGIN + TOUCH_RAMP / 2);
    if grown.iter().all(|v| *v == 1.0) {
        return None;
    }
    Some(box_mean(&grown, width, height, TOUCH_RAMP / 2))
}

/// The new-content region of a residual (`width x height`, RGB, unexplained change) of
/// `processed`.
fn content_region(
    raw: &[f32],
    processed: &[f32],
    width: usize,
    height: usize,
) -> Option<ContentRegion> {
    let (low, high) = CONTENT_LEVELS;
    let hard: Vec<f32> = raw
        .chunks_exact(3)
        .zip(processed.chunks_exact(3))
        .map(|(r, p)| {
            // A clipped sample is an edit past the range, not new content.
            let m = (0..3)
                .filter(|&c| p[c] > 0.5 && p[c] < 254.5)
                .fold(0f32, |m, c| m.max(r[c].abs()));
            smoothstep(f64::from(low), f64::from(high), f64::from(m)) as f32
        })
        .collect();
    if hard.iter().all(|v| *v == 0.0) {
        return None;
    }
    let weights = box_mean(&dilate(&hard, width, height, 1), width, height, 1);
    let (mut x0, mut y0, mut x1, mut y1) = (width, height, 0, 0);
    for (n, w) in weights.iter().enumerate() {
        if *w > 0.0 {
            let (x, y) = (n % width, n / width);
            (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x + 1), y1.max(y + 1));
        }
    }
    Some(ContentRegion {
        area: Rect {
            x: x0 as u32,
            y: y0 as u32,
            width: (x1 - x0) as u32,
            height: (y1 - y0) as u32,
        },
        weights,
    })
}

impl GuidedField {
    /// Where the model painted new content, if anywhere.
    #[must_use]
    pub fn content(&self) -> Option<&ContentRegion> {
        self.content.as_ref()
    }

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
        if params.cell == 0
            || params.bins < 2
            || params.epsilon.is_nan()
            || params.epsilon <= 0.0
            || !(0.0..=1.0).contains(&params.residual)
            || params.fallback_start.is_nan()
            || params.fallback_start >= params.fallback_end
        {
            return Err(GuidedError::Params);
        }
        let cell = params.cell as f32;
        let bins = params.bins as usize;
        let nodes_x = width.div_ceil(params.cell as usize) + 1;
        let nodes_y = height.div_ceil(params.cell as usize) + 1;
        let epsilon = f64::from(params.epsilon);
        let fallback = (
            f64::from(params.fallback_start),
            f64::from(params.fallback_end),
        );

        // 1 + 2: the whole image's map (fitted on every pixel at once: it needs almost no
        // ridge), then splat and fit, coarse to fine.
        let global = global_prior(&image_totals(proxy, processed), epsilon * 1e-3);
        let fit_row = |stats: &[f64], out: &mut [f32]| {
            out.par_chunks_mut(bins * COEFFS)
                .zip(stats.par_chunks(bins * STATS))
                .for_each(|(out, node_stats)| {
                    let mut spatial_sums = [0f64; STATS];
                    for bin in node_stats.chunks_exact(STATS) {
                        for (s, v) in spatial_sums.iter_mut().zip(bin) {
                            *s += v;
                        }
                    }
                    let parent = Moments::from_sums(&spatial_sums).fit(epsilon, &global, fallback);
                    for (bin_out, bin_stats) in out
                        .chunks_exact_mut(COEFFS)
                        .zip(node_stats.chunks_exact(STATS))
                    {
                        Moments::from_sums(bin_stats)
                            .fit(epsilon, &parent, fallback)
                            .store(bin_out);
                    }
                });
        };
        let mut grid = Grid {
            width,
            height,
            cell,
            nodes_x,
            nodes_y,
            bins,
            coefficients: vec![0f32; nodes_x * nodes_y * bins * COEFFS],
        };
        fit_grid(proxy, processed, &mut grid, &fit_row);
        // 3: the share of what the sliced maps miss on the proxy.
        let mut mapped = proxy.to_vec();
        let slicer = grid.slicer(width, height, 3);
        mapped.par_chunks_mut(width * 3).enumerate().for_each_init(
            || slicer.scratch(),
            |scratch, (y, row)| slicer.transform_row(y, row, 1.0, scratch),
        );
        let raw: Vec<f32> = mapped
            .par_iter()
            .zip(processed.par_iter())
            .map(|(m, p)| p - m.clamp(0.0, 255.0))
            .collect();
        let content = content_region(&raw, processed, width, height);
        let share = params.residual;
        let residual = raw.iter().map(|r| share * core_out_rounding(*r)).collect();
        let touched = touched_mask(proxy, processed, width, height);
        Ok(GuidedField {
            width,
            height,
            residual,
            touched,
            content,
            grid,
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

    /// Prepares the slicing of the maps onto a `width x height` original with `colour` (1 or
    /// 3) colour channels.
    pub fn upsampler(&self, width: u32, height: u32, colour: usize) -> AffineUpsampler<'_> {
        let mut slicer = self.grid.slicer(width as usize, height as usize, colour);
        slicer.touched = self.touched.as_deref().map(|mask| {
            UpsampledMask::new(
                mask,
                (self.width, self.height),
                (width as usize, height as usize),
            )
        });
        slicer
    }
}

impl Grid {
    /// Coefficients per node as a gray original sees them (every input channel equal,
    /// output averaged): gain and offset.
    fn gray(&self) -> Vec<f32> {
        self.coefficients
            .chunks_exact(COEFFS)
            .flat_map(|c| {
                [
                    c[..9].iter().sum::<f32>() / 3.0,
                    (c[9] + c[10] + c[11]) / 3.0,
                ]
            })
            .collect()
    }

    /// The maps, ready to slice onto a `width x height` picture of the proxy's area with
    /// `colour` (1 or 3) colour channels.
    fn slicer(&self, width: usize, height: usize, colour: usize) -> AffineUpsampler<'_> {
        let (coefficients, per_node) = if colour == 1 {
            (std::borrow::Cow::Owned(self.gray()), 2)
        } else {
            (
                std::borrow::Cow::Borrowed(self.coefficients.as_slice()),
                COEFFS,
            )
        };
        AffineUpsampler {
            nodes_x: self.nodes_x,
            bins: self.bins,
            per_node,
            coefficients,
            columns: spatial_tents(self.width, width, self.cell, self.nodes_x),
            rows: spatial_tents(self.height, height, self.cell, self.nodes_y),
            touched: None,
        }
    }
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

/// A mask at proxy resolution, upsampled bilinearly onto the original row by row; exactly 0
/// wherever both its neighbours are 0.
pub struct UpsampledMask<'a> {
    mask: &'a [f32],
    source_width: usize,
    columns: Vec<(u32, u32, f32)>,
    rows: Vec<(u32, u32, f32)>,
}

impl<'a> UpsampledMask<'a> {
    /// `mask` covers a `source_width x source_height` proxy area that spans a `width x
    /// height` original.
    #[must_use]
    pub fn new(
        mask: &'a [f32],
        (source_width, source_height): (usize, usize),
        (width, height): (usize, usize),
    ) -> Self {
        UpsampledMask {
            mask,
            source_width,
            columns: bilinear_positions(source_width, width),
            rows: bilinear_positions(source_height, height),
        }
    }

    /// The weights of row `y` of the original, into `out` (cleared first).
    pub fn row(&self, y: usize, out: &mut Vec<f32>) {
        let (first, second, fy) = self.rows[y];
        let top = &self.mask[first as usize * self.source_width..][..self.source_width];
        let bottom = &self.mask[second as usize * self.source_width..][..self.source_width];
        out.clear();
        out.extend(self.columns.iter().map(|&(x0, x1, fx)| {
            let (x0, x1) = (x0 as usize, x1 as usize);
            let l = top[x0] + fy * (bottom[x0] - top[x0]);
            let r = top[x1] + fy * (bottom[x1] - top[x1]);
            if l == 0.0 && r == 0.0 {
                0.0
            } else {
                l + fx * (r - l)
            }
        }));
    }
}

/// The four grid nodes of one row of the grid around a pixel (its tent along x and along
/// luminance), as `(index, weight)`; `node(x, level)` gives a node's index.
#[inline]
fn corners(tx: Tent, tl: Tent, node: impl Fn(usize, usize) -> usize) -> [(usize, f32); 4] {
    let (gx, gl) = (tx.node as usize, tl.node as usize);
    [
        (node(gx, gl), (1.0 - tx.upper) * (1.0 - tl.upper)),
        (node(gx + 1, gl), tx.upper * (1.0 - tl.upper)),
        (node(gx, gl + 1), (1.0 - tx.upper) * tl.upper),
        (node(gx + 1, gl + 1), tx.upper * tl.upper),
    ]
}

/// The grid's maps, sliced row by row onto the original.
pub struct AffineUpsampler<'a> {
    nodes_x: usize,
    bins: usize,
    per_node: usize,
    coefficients: std::borrow::Cow<'a, [f32]>,
    columns: Vec<Tent>,
    rows: Vec<Tent>,
    touched: Option<UpsampledMask<'a>>,
}

/// Per-thread buffers for [`AffineUpsampler::transform_row`].
pub struct SliceScratch {
    /// One row of the grid, interpolated vertically.
    coefficients: Vec<f32>,
    /// How much of the merge applies at each pixel of the row (when there is a mask).
    pub weights: Vec<f32>,
}

impl AffineUpsampler<'_> {
    /// Scratch for [`Self::transform_row`].
    #[must_use]
    pub fn scratch(&self) -> SliceScratch {
        SliceScratch {
            coefficients: vec![0f32; self.nodes_x * self.bins * self.per_node],
            weights: Vec::new(),
        }
    }

    /// Whether some pixels keep the original (see [`Self::weights_row`]).
    #[must_use]
    pub fn has_untouched(&self) -> bool {
        self.touched.is_some()
    }

    /// How much of the merge applies to each pixel of row `y`, into `scratch.weights`: 0
    /// where the original must be kept exactly.
    pub fn weights_row(&self, y: usize, scratch: &mut SliceScratch) {
        if let Some(t) = &self.touched {
            t.row(y, &mut scratch.weights);
        }
    }

    /// Maps row `y` of the original's colour samples (`colour` interleaved channels, in units
    /// where one 8-bit level is `unit`) through the sliced maps, in place.
    pub fn transform_row(
        &self,
        y: usize,
        values: &mut [f32],
        unit: f32,
        scratch: &mut SliceScratch,
    ) {
        let k = self.per_node;
        let row_len = self.nodes_x * self.bins * k;
        let ty = self.rows[y];
        let top = &self.coefficients[ty.node as usize * row_len..][..row_len];
        let bottom = &self.coefficients[(ty.node as usize + 1) * row_len..][..row_len];
        let grid_row = &mut scratch.coefficients;
        for ((s, t), b) in grid_row.iter_mut().zip(top).zip(bottom) {
            *s = t + ty.upper * (b - t);
        }
        let to_bins = (self.bins - 1) as f32 / (255.0 * unit);
        let bins = self.bins;
        let node = |gx: usize, gl: usize| (gx * bins + gl) * k;
        if k == 2 {
            for (v, tx) in values.iter_mut().zip(&self.columns) {
                let tl = Tent::at(*v * to_bins, bins);
                let (mut gain, mut offset) = (0f32, 0f32);
                for (at, w) in corners(*tx, tl, node) {
                    gain += w * grid_row[at];
                    offset += w * grid_row[at + 1];
                }
                *v = gain * *v + offset * unit;
            }
            return;
        }
        let mut c = [0f32; COEFFS];
        for (px, tx) in values.chunks_exact_mut(3).zip(&self.columns) {
            let i = [px[0], px[1], px[2]];
            let tl = Tent::at(luma(i) * to_bins, bins);
            c.fill(0.0);
            for (at, w) in corners(*tx, tl, node) {
                for (o, v) in c.iter_mut().zip(&grid_row[at..at + COEFFS]) {
                    *o += w * v;
                }
            }
            for o in 0..3 {
                px[o] =
                    c[o * 3] * i[0] + c[o * 3 + 1] * i[1] + c[o * 3 + 2] * i[2] + c[9 + o] * unit;
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

    fn sliced(field: &GuidedField, w: usize, h: usize, row: &mut [f32], y: usize) {
        let up = field.upsampler(w as u32, h as u32, 3);
        let mut scratch = up.scratch();
        up.transform_row(y, row, 1.0, &mut scratch);
    }

    #[test]
    fn an_identity_edit_fits_the_identity_and_touches_nothing() {
        let (w, h) = (40, 30);
        let proxy = textured(w, h);
        let field = GuidedField::fit(&proxy, &proxy, w, h, &GuidedParams::default()).unwrap();
        for c in field.grid.coefficients.chunks_exact(COEFFS) {
            for (k, v) in c.iter().enumerate() {
                let expected = if k < 9 && k % 4 == 0 { 1.0 } else { 0.0 };
                assert!((v - expected).abs() < 1e-3, "coefficient {k}: {v}");
            }
        }
        assert!(field.residual.iter().all(|r| r.abs() < 1e-2));
        let touched = field.touched.as_ref().expect("a mask");
        assert!(touched.iter().all(|t| *t == 0.0));
    }

    #[test]
    fn a_global_affine_edit_is_recovered_for_colours_the_proxy_never_had() {
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
        let mut row: Vec<f32> = (0..96)
            .flat_map(|x| [x as f32 * 2.5, 128.0, 255.0 - x as f32])
            .collect();
        let expected: Vec<f32> = row.chunks_exact(3).flat_map(edit).collect();
        sliced(&field, 96, 64, &mut row, 17);
        for (g, e) in row.iter().zip(&expected) {
            assert!((g - e).abs() < 0.25, "{g} vs {e}");
        }
    }

    #[test]
    fn a_grade_that_clips_keeps_its_gain_for_the_pixels_it_did_not_clip() {
        // x2 + 20 clips everything above 117.5 at 255; the pixels below it still say x2.
        let (w, h) = (48, 32);
        let proxy = textured(w, h);
        let processed: Vec<f32> = proxy.iter().map(|v| (2.0 * v + 20.0).min(255.0)).collect();
        let field = GuidedField::fit(&proxy, &processed, w, h, &GuidedParams::default()).unwrap();
        let mut row: Vec<f32> = (0..96).flat_map(|x| [30.0 + x as f32 * 0.5; 3]).collect();
        let expected: Vec<f32> = row.iter().map(|v| 2.0 * v + 20.0).collect();
        sliced(&field, 96, 64, &mut row, 30);
        for (g, e) in row.iter().zip(&expected) {
            assert!(
                g.min(255.0) - e.min(255.0) < 1.0 && e.min(255.0) - g.min(255.0) < 1.0,
                "{g} vs {e}"
            );
        }
    }

    #[test]
    fn dark_and_bright_pixels_of_one_area_get_their_own_maps() {
        // A tone curve: darks lifted by 30, brights kept. One spatial cell holds both.
        let (w, h) = (32, 32);
        let proxy: Vec<f32> = (0..w * h)
            .flat_map(|n| {
                if (n % w + n / w) % 2 == 0 {
                    [30.0; 3]
                } else {
                    [220.0; 3]
                }
            })
            .collect();
        let processed: Vec<f32> = proxy
            .iter()
            .map(|v| if *v < 128.0 { v + 30.0 } else { *v })
            .collect();
        let field = GuidedField::fit(&proxy, &processed, w, h, &GuidedParams::default()).unwrap();
        let mut row: Vec<f32> = (0..64)
            .flat_map(|x| if x % 2 == 0 { [30.0; 3] } else { [220.0; 3] })
            .collect();
        sliced(&field, 64, 64, &mut row, 20);
        for px in row.chunks_exact(3) {
            let expected = if px[0] < 128.0 { 60.0 } else { 220.0 };
            assert!(
                px.iter().all(|v| (v - expected).abs() < 1.0) || (px[0] - 220.0).abs() < 1.0,
                "{px:?}"
            );
        }
        assert!(
            row.chunks_exact(3)
                .step_by(2)
                .all(|px| (px[0] - 60.0).abs() < 1.0),
            "{row:?}"
        );
    }

    #[test]
    fn painted_content_falls_back_to_the_additive_delta() {
        let (w, h) = (40, 40);
        let proxy = textured(w, h);
        let processed: Vec<f32> = proxy
            .iter()
            .enumerate()
            .map(|(n, v)| v + if (n / 3 * 7919) % 13 < 6 { 30.0 } else { -30.0 })
            .collect();
        let field = GuidedField::fit(&proxy, &processed, w, h, &GuidedParams::default()).unwrap();
        let nodes = field.grid.coefficients.len() / COEFFS;
        let mean_diagonal: f32 = field
            .grid
            .coefficients
            .chunks_exact(COEFFS)
            .map(|c| (c[0] + c[4] + c[8]) / 3.0)
            .sum::<f32>()
            / nodes as f32;
        assert!((mean_diagonal - 1.0).abs() < 0.1, "{mean_diagonal}");
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
    fn the_mask_is_one_around_a_change_and_exactly_zero_beyond_its_ramp() {
        let (w, h) = (40, 20);
        let proxy = textured(w, h);
        let mut processed = proxy.clone();
        processed[(10 * w + 5) * 3] += 40.0;
        let mask = touched_mask(&proxy, &processed, w, h).unwrap();
        for y in 0..h {
            for x in 0..w {
                let d = (x as i32 - 5).abs().max((y as i32 - 10).abs()) as usize;
                let m = mask[y * w + x];
                if d <= TOUCH_MARGIN {
                    assert_eq!(m, 1.0, "({x},{y})");
                } else if d > TOUCH_MARGIN + TOUCH_RAMP {
                    assert_eq!(m, 0.0, "({x},{y})");
                } else {
                    assert!(m > 0.0 && m < 1.0, "({x},{y}): {m}");
                }
            }
        }
    }

    #[test]
    fn mismatched_inputs_and_bad_parameters_are_refused() {
        let proxy = vec![0f32; 30];
        assert!(matches!(
            GuidedField::fit(&proxy, &proxy[..27], 5, 2, &GuidedParams::default()),
            Err(GuidedError::SampleCount { .. })
        ));
        for params in [
            GuidedParams {
                cell: 0,
                ..GuidedParams::default()
            },
            GuidedParams {
                bins: 1,
                ..GuidedParams::default()
            },
            GuidedParams {
                residual: 1.5,
                ..GuidedParams::default()
            },
        ] {
            assert_eq!(
                GuidedField::fit(&proxy, &proxy, 5, 2, &params).unwrap_err(),
                GuidedError::Params
            );
        }
    }
}
