//! From coefficients to pixels: the reduced inverse DCT, chroma upsampling and colour
//! conversion.

use super::entropy::{ScanTables, MAX_SCAN_COMPONENTS};
use super::header::{ComponentLayout, Layout};
use super::parallel::Coefficients;

/// The n-point inverse DCT basis, transposed: `basis[u][x]` = C(u) cos((2x + 1) u pi / 2n),
/// with C(0) = 1/sqrt(2). An n x n block of the kept coefficients F (scaled by n/8 so a flat
/// block keeps its level) gives f(x, y) = 1/4 sum C(u) C(v) F(u, v) cos(..x..) cos(..y..).
pub(super) fn idct_basis<const N: usize>() -> [[f32; N]; N] {
    let mut basis = [[0f32; N]; N];
    for (u, row) in basis.iter_mut().enumerate() {
        for (x, value) in row.iter_mut().enumerate() {
            let c = if u == 0 {
                std::f64::consts::FRAC_1_SQRT_2
            } else {
                1.0
            };
            let angle = (2 * x + 1) as f64 * u as f64 * std::f64::consts::PI / (2 * N) as f64;
            *value = (c * angle.cos()) as f32;
        }
    }
    basis
}

/// [`idct_basis`] with each row padded to eight lanes (for the vector transform).
pub(super) fn idct_basis_padded<const N: usize>() -> [[f32; 8]; N] {
    let basis = idct_basis::<N>();
    std::array::from_fn(|u| std::array::from_fn(|x| if x < N { basis[u][x] } else { 0.0 }))
}

/// Dequantises and inverse-transforms one block's N x N coefficients (row-major) into `out`
/// (N rows of `stride`), level-shifted, rounded and clamped to 0..=255.
#[inline(always)]
fn idct_block<const N: usize>(
    coefficients: &[i16],
    quant: &[i32],
    basis: &[[f32; N]; N],
    out: &mut [u8],
    stride: usize,
) {
    let coefficients = &coefficients[..N * N];
    if coefficients[1..].iter().all(|&c| c == 0) {
        return fill_flat::<N>(coefficients[0], quant[0], out, stride);
    }
    if N == 4 {
        return idct_4x4(coefficients, quant, out, stride);
    }
    // Rows: t[v][x] = sum_u F[v][u] basis[u][x].
    let mut t = [[0f32; N]; N];
    for v in 0..N {
        for u in 0..N {
            let f = f32::from(coefficients[v * N + u]) * quant[v * N + u] as f32;
            for x in 0..N {
                t[v][x] += f * basis[u][x];
            }
        }
    }
    // Columns: out[y][x] = 1/4 sum_v basis[v][y] t[v][x], level-shifted.
    for y in 0..N {
        let mut sum = [0f32; N];
        for v in 0..N {
            for x in 0..N {
                sum[x] += basis[v][y] * t[v][x];
            }
        }
        let row = &mut out[y * stride..][..N];
        for x in 0..N {
            row[x] = (sum[x] * 0.25 + 128.5).clamp(0.0, 255.0) as u8;
        }
    }
}

/// A full-size 8x8 block (64 coefficients, row-major) to pixels by the float basis (as
/// `idct_block`), with AVX2 where the CPU has it.
pub(super) fn idct_8x8(
    coefficients: &[i16],
    quant: &[i32],
    basis: &[[f32; 8]; 8],
    out: &mut [u8],
    stride: usize,
) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2.
        unsafe {
            super::idct_x86::idct_float_block::<8>(coefficients, 0, quant, basis, out, stride)
        };
        return;
    }
    idct_block::<8>(coefficients, quant, basis, out, stride);
}

/// Fills the N x N pixels of a flat block (every AC coefficient zero) with its level: DC / 8,
/// level-shifted and clamped.
#[inline(always)]
pub(super) fn fill_flat<const N: usize>(dc: i16, quant: i32, out: &mut [u8], stride: usize) {
    let level = (f32::from(dc) * quant as f32 / 8.0 + 128.5).clamp(0.0, 255.0) as u8;
    for y in 0..N {
        out[y * stride..][..N].fill(level);
    }
}

/// The chroma plane lines that output line `y` blends: the line covering it and, where the
/// plane has half the luma's lines, its neighbour on `y`'s side (the edge line repeated at
/// the top and bottom), weighted 3:1 as libjpeg's fancy upsampling does.
#[inline(always)]
pub(super) fn chroma_lines(component: &ComponentLayout, y: usize) -> (usize, Option<usize>) {
    let rows = component.plane_height;
    if component.upsample_y != 2 {
        return (y.min(rows - 1), None);
    }
    let near = y / 2;
    let far = if y.is_multiple_of(2) {
        near.saturating_sub(1)
    } else {
        (near + 1).min(rows - 1)
    };
    (near, Some(far))
}

/// Line `y` of a chroma plane blended with its nearer neighbour line (3:1 where the plane
/// has half the luma's lines, see [`chroma_lines`]), times 4, into `column` (the plane's
/// width): the vertical half of fancy upsampling, in `i32` for the portable code and in
/// `i16` (16 lanes) for AVX2's.
#[inline(always)]
pub(super) fn blend_lines<T>(plane: &[u8], component: &ComponentLayout, y: usize, column: &mut [T])
where
    T: Copy + From<u8> + std::ops::Add<Output = T> + std::ops::Mul<Output = T>,
{
    let stride = component.plane_width;
    let (near, far) = chroma_lines(component, y);
    let near_row = &plane[near * stride..][..stride];
    match far {
        Some(far) => {
            let far_row = &plane[far * stride..][..stride];
            for ((c, &a), &b) in column.iter_mut().zip(near_row).zip(far_row) {
                *c = T::from(3) * T::from(a) + T::from(b);
            }
        }
        None => {
            for (c, &a) in column.iter_mut().zip(near_row) {
                *c = T::from(4) * T::from(a);
            }
        }
    }
}

/// Four lanes, for the 4x4 transform's butterflies (the compiler keeps them in one vector
/// register).
type Lanes = [i32; 4];

#[inline(always)]
fn lanes(f: impl Fn(usize) -> i32) -> Lanes {
    [f(0), f(1), f(2), f(3)]
}

/// Fixed-point fraction bits of the butterfly constants.
pub(super) const FRACTION_BITS: u32 = 12;

/// The butterflies' constants, in FRACTION_BITS fixed point: 1/sqrt 2, cos(pi/8), cos(3pi/8).
pub(super) const BUTTERFLY: [i32; 3] = [2896, 3784, 1567];

/// The 4-point inverse DCT of [`idct_basis`] on four lanes at once, by butterflies (the even
/// part from F0 and F2, both weighted 1/sqrt 2, the odd part from F1 and F3), in fixed point:
/// the results carry FRACTION_BITS more bits than the inputs.
#[inline(always)]
fn idct4_lanes(f: [Lanes; 4]) -> [Lanes; 4] {
    let [half_sqrt_2, c1, c3] = BUTTERFLY;
    // Wrapping: a damaged file's coefficients give wrong pixels, never an overflow panic.
    let even0 = lanes(|i| f[0][i].wrapping_add(f[2][i]).wrapping_mul(half_sqrt_2));
    let even1 = lanes(|i| f[0][i].wrapping_sub(f[2][i]).wrapping_mul(half_sqrt_2));
    let odd0 = lanes(|i| {
        f[1][i]
            .wrapping_mul(c1)
            .wrapping_add(f[3][i].wrapping_mul(c3))
    });
    let odd1 = lanes(|i| {
        f[1][i]
            .wrapping_mul(c3)
            .wrapping_sub(f[3][i].wrapping_mul(c1))
    });
    [
        lanes(|i| even0[i].wrapping_add(odd0[i])),
        lanes(|i| even1[i].wrapping_add(odd1[i])),
        lanes(|i| even1[i].wrapping_sub(odd1[i])),
        lanes(|i| even0[i].wrapping_sub(odd0[i])),
    ]
}

/// [`idct_block`] for 4x4 (half-size decoding, the common proxy case): the same transform
/// by butterflies in fixed point, four columns or rows at a time.
#[inline(always)]
fn idct_4x4(coefficients: &[i16], quant: &[i32], out: &mut [u8], stride: usize) {
    // An 8-bit JPEG's dequantised coefficients stay under 2^13, so nothing overflows below.
    let f = |v: usize, u: usize| i32::from(coefficients[v * 4 + u]).wrapping_mul(quant[v * 4 + u]);
    // Along u, a lane per v: t[x][v] = sum_u basis[u][x] F[v][u], rounded back to whole units.
    let half = 1 << (FRACTION_BITS - 1);
    let t = idct4_lanes([
        lanes(|v| f(v, 0)),
        lanes(|v| f(v, 1)),
        lanes(|v| f(v, 2)),
        lanes(|v| f(v, 3)),
    ])
    .map(|t| t.map(|value| value.wrapping_add(half) >> FRACTION_BITS));
    // Along v, a lane per x: rows[y][x] = sum_v basis[v][y] t[x][v]; then the 1/4, the level
    // shift, rounding and clamping.
    let rows = idct4_lanes([
        lanes(|x| t[x][0]),
        lanes(|x| t[x][1]),
        lanes(|x| t[x][2]),
        lanes(|x| t[x][3]),
    ]);
    let shift = FRACTION_BITS + 2;
    let bias = (128 << shift) + (1 << (shift - 1));
    for (y, row) in rows.iter().enumerate() {
        let line = &mut out[y * stride..][..4];
        for x in 0..4 {
            line[x] = (row[x].wrapping_add(bias) >> shift).clamp(0, 255) as u8;
        }
    }
}

/// Transforms every block into its component's reduced plane (scan order), the MCU rows
/// shared between two threads when `parallel`.
pub(super) fn inverse_transform(
    coefficients: &Coefficients,
    layout: &Layout,
    tables: &ScanTables,
    parallel: bool,
) -> Vec<Vec<u8>> {
    match layout.n {
        7 => transform_planes::<7>(coefficients, layout, tables, parallel),
        6 => transform_planes::<6>(coefficients, layout, tables, parallel),
        5 => transform_planes::<5>(coefficients, layout, tables, parallel),
        4 => transform_planes::<4>(coefficients, layout, tables, parallel),
        3 => transform_planes::<3>(coefficients, layout, tables, parallel),
        2 => transform_planes::<2>(coefficients, layout, tables, parallel),
        _ => transform_planes::<1>(coefficients, layout, tables, parallel),
    }
}

fn transform_planes<const N: usize>(
    coefficients: &Coefficients,
    layout: &Layout,
    tables: &ScanTables,
    parallel: bool,
) -> Vec<Vec<u8>> {
    let mut planes: Vec<Vec<u8>> = layout
        .components
        .iter()
        .map(|c| crate::io::system::zeroed_large(c.plane_width * c.plane_height))
        .collect();
    let band_size = |c: &ComponentLayout| c.v * N * c.plane_width;
    if !parallel || layout.mcus_down < 2 {
        let bands = planes.iter_mut().map(|p| p.as_mut_slice()).collect();
        transform_mcu_rows::<N>(coefficients, layout, tables, 0, bands);
    } else {
        let half = layout.mcus_down / 2;
        let (top, bottom): (Vec<&mut [u8]>, Vec<&mut [u8]>) = planes
            .iter_mut()
            .zip(&layout.components)
            .map(|(p, c)| p.split_at_mut(half * band_size(c)))
            .unzip();
        rayon::join(
            || transform_mcu_rows::<N>(coefficients, layout, tables, 0, top),
            || transform_mcu_rows::<N>(coefficients, layout, tables, half, bottom),
        );
    }
    planes
}

/// Transforms the MCU rows from `first_row` on into `bands` (per component, the plane lines
/// those rows cover), with vector instructions where the CPU has them.
fn transform_mcu_rows<const N: usize>(
    coefficients: &Coefficients,
    layout: &Layout,
    tables: &ScanTables,
    first_row: usize,
    bands: Vec<&mut [u8]>,
) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2.
        return unsafe {
            transform_mcu_rows_avx2::<N>(coefficients, layout, tables, first_row, bands)
        };
    }
    transform_mcu_rows_any::<N, false>(coefficients, layout, tables, first_row, bands)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn transform_mcu_rows_avx2<const N: usize>(
    coefficients: &Coefficients,
    layout: &Layout,
    tables: &ScanTables,
    first_row: usize,
    bands: Vec<&mut [u8]>,
) {
    transform_mcu_rows_any::<N, true>(coefficients, layout, tables, first_row, bands)
}

/// [`transform_mcu_rows`]; `AVX2`: the 4x4 blocks through [`super::idct_x86`] (only in
/// [`transform_mcu_rows_avx2`]).
#[inline(always)]
fn transform_mcu_rows_any<const N: usize, const AVX2: bool>(
    coefficients: &Coefficients,
    layout: &Layout,
    tables: &ScanTables,
    first_row: usize,
    mut bands: Vec<&mut [u8]>,
) {
    let basis = idct_basis::<N>();
    let basis_padded = idct_basis_padded::<N>();
    let first = &layout.components[0];
    let rows = bands[0].len() / (first.plane_width * first.v * N);
    for row in 0..rows {
        let mcu_row = first_row + row;
        for mx in 0..layout.mcus_across {
            let (mcu, dc_offset) = coefficients.mcu(mcu_row * layout.mcus_across + mx);
            for (c, component) in layout.components.iter().enumerate() {
                let stride = component.plane_width;
                let band = &mut *bands[c];
                let quant = &tables.quant[c];
                let dc_offset = dc_offset[c % MAX_SCAN_COMPONENTS];
                for by in 0..component.v {
                    for bx in 0..component.h {
                        let index = component.first_block + by * component.h + bx;
                        let block = &mcu[index * N * N..][..N * N];
                        let x = (mx * component.h + bx) * N;
                        let y = (row * component.v + by) * N;
                        let out = &mut band[y * stride + x..];
                        #[cfg(target_arch = "x86_64")]
                        if AVX2 && N == 4 {
                            let block = block.try_into().expect("16");
                            let quant = quant[..16].try_into().expect("16");
                            // SAFETY: AVX2 is set only in transform_mcu_rows_avx2, which runs
                            // only where the CPU has AVX2.
                            unsafe {
                                super::idct_x86::idct_4x4_block(
                                    block, dc_offset, quant, out, stride,
                                )
                            };
                            continue;
                        }
                        #[cfg(target_arch = "x86_64")]
                        if AVX2 && N >= 3 {
                            // SAFETY: as above.
                            unsafe {
                                super::idct_x86::idct_float_block::<N>(
                                    block,
                                    dc_offset,
                                    quant,
                                    &basis_padded,
                                    out,
                                    stride,
                                )
                            };
                            continue;
                        }
                        let mut with_dc = [0i16; 64];
                        with_dc[..N * N].copy_from_slice(block);
                        with_dc[0] = with_dc[0].wrapping_add(dc_offset);
                        idct_block::<N>(&with_dc, quant, &basis, out, stride);
                    }
                }
            }
        }
    }
}

/// Upsamples the chroma planes (triangle filter, as libjpeg's "fancy" upsampling) and
/// converts to RGB, or crops the gray plane; rows shared between two threads when `parallel`.
pub(super) fn to_pixels(planes: &[Vec<u8>], layout: &Layout, parallel: bool) -> Vec<u8> {
    let (width, height) = (layout.out_width, layout.out_height);
    if layout.components.len() == 1 {
        let stride = layout.components[0].plane_width;
        let mut out = Vec::with_capacity(width * height);
        for row in planes[0].chunks_exact(stride).take(height) {
            out.extend_from_slice(&row[..width]);
        }
        return out;
    }
    // Planes by frame order: Y, Cb, Cr.
    let mut by_frame: [usize; 3] = [0; 3];
    for (scan_index, c) in layout.components.iter().enumerate() {
        by_frame[c.frame_index] = scan_index;
    }
    let mut out = vec![0u8; width * height * 3];
    let convert = |first_line: usize, rows: &mut [u8]| {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2.
            unsafe { super::colour_x86::convert_rows(planes, layout, by_frame, first_line, rows) };
            return;
        }
        convert_rows(planes, layout, by_frame, first_line, rows);
    };
    if parallel && height >= 2 {
        let half = height / 2;
        let (top, bottom) = out.split_at_mut(half * width * 3);
        rayon::join(|| convert(0, top), || convert(half, bottom));
    } else {
        convert(0, &mut out);
    }
    out
}

/// Converts the output lines from `first_line` on into `rows` (packed RGB) for a
/// three-component image; `by_frame` gives the scan index of Y, Cb and Cr.
pub(super) fn convert_rows(
    planes: &[Vec<u8>],
    layout: &Layout,
    by_frame: [usize; 3],
    first_line: usize,
    rows: &mut [u8],
) {
    let width = layout.out_width;
    let mut chroma = [vec![0i32; width], vec![0i32; width]];
    let mut column = Vec::new();
    let luma = &layout.components[by_frame[0]];
    for (i, out_row) in rows.chunks_exact_mut(width * 3).enumerate() {
        let y = first_line + i;
        let luma_row = &planes[by_frame[0]][y * luma.plane_width..];
        for (k, line) in chroma.iter_mut().enumerate() {
            let c = &layout.components[by_frame[k + 1]];
            upsampled_line(&planes[by_frame[k + 1]], c, y, &mut column, line);
        }
        for (x, rgb) in out_row.chunks_exact_mut(3).enumerate() {
            let l = i32::from(luma_row[x]);
            rgb.copy_from_slice(&ycbcr_to_rgb_i32(l, chroma[0][x], chroma[1][x]));
        }
    }
}

/// One output line `y` of a chroma plane at the luma plane's resolution: a 3:1 blend with
/// the nearer neighbour line and column where the plane has half the resolution, so each
/// output pixel is weighted by distance as libjpeg's fancy upsampling does.
fn upsampled_line(
    plane: &[u8],
    component: &ComponentLayout,
    y: usize,
    column: &mut Vec<i32>,
    line: &mut [i32],
) {
    let stride = component.plane_width;
    column.clear();
    column.resize(stride, 0);
    blend_lines(plane, component, y, column);
    // Horizontal, times 4 again; then back to 8 bits.
    if component.upsample_x == 2 {
        for (x, out) in line.iter_mut().enumerate() {
            let sx = x / 2;
            let far = if x.is_multiple_of(2) {
                sx.saturating_sub(1)
            } else {
                (sx + 1).min(stride - 1)
            };
            *out = (3 * column[sx] + column[far] + 8) >> 4;
        }
    } else {
        for (out, &c) in line.iter_mut().zip(column.iter()) {
            *out = (4 * c + 8) >> 4;
        }
    }
}

/// JFIF's YCbCr to RGB, in 16-bit fixed point, rounded and clamped.
#[inline(always)]
pub(super) fn ycbcr_to_rgb(l: u8, cb: u8, cr: u8) -> [u8; 3] {
    ycbcr_to_rgb_i32(i32::from(l), i32::from(cb), i32::from(cr))
}

#[inline(always)]
fn ycbcr_to_rgb_i32(l: i32, cb: i32, cr: i32) -> [u8; 3] {
    let (cb, cr) = (cb - 128, cr - 128);
    let r = l + ((91_881 * cr + 32_768) >> 16);
    let g = l + ((-22_554 * cb - 46_802 * cr + 32_768) >> 16);
    let b = l + ((116_130 * cb + 32_768) >> 16);
    [
        r.clamp(0, 255) as u8,
        g.clamp(0, 255) as u8,
        b.clamp(0, 255) as u8,
    ]
}

/// `idct_block::<N>` (for N = 4 by the butterflies, otherwise by the float basis), for the
/// vector versions' tests.
#[cfg(test)]
pub(super) fn idct_block_portable<const N: usize>(
    coefficients: &[i16],
    quant: &[i32],
    out: &mut [u8],
    stride: usize,
) {
    idct_block::<N>(coefficients, quant, &idct_basis::<N>(), out, stride);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flat_block_keeps_its_level_at_every_size() {
        fn flat<const N: usize>() -> Vec<u8> {
            let mut coefficients = [0i16; 64];
            coefficients[0] = 10; // x quant 8 = 80 -> level 80 / 8 = 10 above 128
            let mut out = vec![0u8; N * N];
            idct_block::<N>(&coefficients, &[8; 64], &idct_basis::<N>(), &mut out, N);
            out
        }
        let every_size = [
            flat::<1>(),
            flat::<2>(),
            flat::<3>(),
            flat::<4>(),
            flat::<5>(),
            flat::<6>(),
            flat::<7>(),
            flat::<8>(),
        ];
        for out in every_size {
            assert!(out.iter().all(|&p| p == 138), "{out:?}");
        }
        // The same level through the full transform (a zero AC term breaks the flat path).
        let mut coefficients = [0i16; 16];
        coefficients[0] = 10;
        coefficients[15] = 0;
        let mut out = [0u8; 16];
        let basis = idct_basis::<4>();
        let quant = [8i32; 16];
        coefficients[1] = 1;
        idct_block::<4>(&coefficients, &quant, &basis, &mut out, 4);
        let mean = out.iter().map(|&p| f64::from(p)).sum::<f64>() / 16.0;
        assert!((mean - 138.0).abs() < 0.5, "{out:?}");
    }

    #[test]
    fn the_4x4_butterflies_equal_the_basis_transform() {
        let quant: Vec<i32> = (1..=16).collect();
        let basis = idct_basis::<4>();
        let mut seed = 7u32;
        for _ in 0..200 {
            let coefficients: Vec<i16> = (0..16)
                .map(|_| {
                    seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    ((seed >> 16) % 200) as i16 - 100
                })
                .collect();
            // The basis product, as the generic transform computes it for N = 2.
            let mut expected = [0u8; 16];
            for y in 0..4 {
                for x in 0..4 {
                    let mut sum = 0.0;
                    for v in 0..4 {
                        for u in 0..4 {
                            sum += basis[v][y]
                                * basis[u][x]
                                * f32::from(coefficients[v * 4 + u])
                                * quant[v * 4 + u] as f32;
                        }
                    }
                    expected[y * 4 + x] = (sum * 0.25 + 128.5).clamp(0.0, 255.0) as u8;
                }
            }
            let mut out = [0u8; 16];
            idct_4x4(&coefficients, &quant, &mut out, 4);
            for (a, b) in out.iter().zip(&expected) {
                assert!(a.abs_diff(*b) <= 1, "{out:?} vs {expected:?}");
            }
        }
    }

    #[test]
    fn a_reduced_block_is_the_mean_of_the_full_blocks_quarters_for_a_gentle_ramp() {
        // Forward 8x8 DCT of a horizontal ramp, then the 4x4 inverse: each output pixel
        // should be close to the mean of the two input columns it covers.
        let pixel = |x: usize, _y: usize| 100.0 + 4.0 * x as f64;
        let mut dct = [0f64; 64];
        for v in 0..8 {
            for u in 0..8 {
                let cu = if u == 0 {
                    std::f64::consts::FRAC_1_SQRT_2
                } else {
                    1.0
                };
                let cv = if v == 0 {
                    std::f64::consts::FRAC_1_SQRT_2
                } else {
                    1.0
                };
                let mut sum = 0.0;
                for y in 0..8 {
                    for x in 0..8 {
                        sum += (pixel(x, y) - 128.0)
                            * (((2 * x + 1) * u) as f64 * std::f64::consts::PI / 16.0).cos()
                            * (((2 * y + 1) * v) as f64 * std::f64::consts::PI / 16.0).cos();
                    }
                }
                dct[v * 8 + u] = 0.25 * cu * cv * sum;
            }
        }
        let n = 4;
        let mut coefficients = [0i16; 16];
        for v in 0..n {
            for u in 0..n {
                coefficients[v * n + u] = dct[v * 8 + u].round() as i16;
            }
        }
        let mut out = [0u8; 16];
        idct_block::<4>(&coefficients, &[1; 16], &idct_basis::<4>(), &mut out, n);
        for y in 0..n {
            for x in 0..n {
                let mean = (pixel(2 * x, y) + pixel(2 * x + 1, y)) / 2.0;
                let got = f64::from(out[y * n + x]);
                assert!((got - mean).abs() <= 1.5, "({x},{y}): {got} vs {mean}");
            }
        }
    }
}
