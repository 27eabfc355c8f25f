//! The 4x4 inverse transform of [`super::pixels`] with x86-64 vector instructions: the same
//! fixed-point butterflies, wrapping arithmetic and rounding, so its pixels equal the
//! portable code's exactly (tested below), four lanes at a time with the transposes between
//! the passes done in registers.

use super::pixels::{fill_flat, BUTTERFLY, FRACTION_BITS};
use std::arch::x86_64::*;

/// Dequantises and inverse-transforms one block's 4x4 coefficients (row-major), its DC value
/// plus `dc_offset` (wrapping), into `out` (4 rows of `stride`), as `pixels::idct_block::<4>`
/// does.
#[target_feature(enable = "avx2")]
#[inline]
pub(super) fn idct_4x4_block(
    coefficients: &[i16; 16],
    dc_offset: i16,
    quant: &[i32; 16],
    out: &mut [u8],
    stride: usize,
) {
    assert!(
        out.len() >= 3 * stride + 4,
        "a 4x4 block's rows fit in `out`"
    );
    // SAFETY: the loads read the 32 bytes of `coefficients` and the 64 of `quant`.
    let (rows01, rows23, q) = unsafe {
        let c = coefficients.as_ptr().cast::<__m128i>();
        let q = quant.as_ptr().cast::<__m128i>();
        (
            _mm_loadu_si128(c),
            _mm_loadu_si128(c.add(1)),
            [
                _mm_loadu_si128(q),
                _mm_loadu_si128(q.add(1)),
                _mm_loadu_si128(q.add(2)),
                _mm_loadu_si128(q.add(3)),
            ],
        )
    };
    // In the register, not in memory: a 2-byte store under these loads would stall them.
    let rows01 = _mm_add_epi16(rows01, _mm_cvtsi32_si128(i32::from(dc_offset as u16)));
    // Flat (every AC coefficient zero): the portable code's shortcut, same level.
    let ac_mask = _mm_set_epi16(-1, -1, -1, -1, -1, -1, -1, 0);
    if _mm_testz_si128(rows01, ac_mask) == 1 && _mm_testz_si128(rows23, rows23) == 1 {
        return fill_flat::<4>(
            coefficients[0].wrapping_add(dc_offset),
            quant[0],
            out,
            stride,
        );
    }
    // Dequantised rows: lanes over u, one register per v.
    let f = [
        _mm_mullo_epi32(_mm_cvtepi16_epi32(rows01), q[0]),
        _mm_mullo_epi32(_mm_cvtepi16_epi32(_mm_srli_si128::<8>(rows01)), q[1]),
        _mm_mullo_epi32(_mm_cvtepi16_epi32(rows23), q[2]),
        _mm_mullo_epi32(_mm_cvtepi16_epi32(_mm_srli_si128::<8>(rows23)), q[3]),
    ];
    // Along u (inputs: one register per u, lanes over v), rounded back to whole units.
    let half = _mm_set1_epi32(1 << (FRACTION_BITS - 1));
    let t = butterflies(transpose(f))
        .map(|t| _mm_srai_epi32::<FRACTION_BITS_I32>(_mm_add_epi32(t, half)));
    // Along v (one register per v, lanes over x): the rows of the block.
    let rows = butterflies(transpose(t));
    const SHIFT: i32 = FRACTION_BITS_I32 + 2;
    let bias = _mm_set1_epi32((128 << SHIFT) + (1 << (SHIFT - 1)));
    let [r0, r1, r2, r3] = rows.map(|r| _mm_srai_epi32::<SHIFT>(_mm_add_epi32(r, bias)));
    // Saturating packs clamp to 0..=255 as the portable code's clamp does.
    let pixels = _mm_packus_epi16(_mm_packs_epi32(r0, r1), _mm_packs_epi32(r2, r3));
    let rows = [
        _mm_cvtsi128_si32(pixels),
        _mm_extract_epi32::<1>(pixels),
        _mm_extract_epi32::<2>(pixels),
        _mm_extract_epi32::<3>(pixels),
    ];
    for (y, row) in rows.into_iter().enumerate() {
        out[y * stride..][..4].copy_from_slice(&row.to_le_bytes());
    }
}

const FRACTION_BITS_I32: i32 = FRACTION_BITS as i32;

/// Dequantises and inverse-transforms one block's N x N coefficients (row-major), its DC
/// value plus `dc_offset` (wrapping), by the float basis of `pixels::idct_block` (N = 3, 5,
/// 6 or 7), a row of pixels per register (N of its eight lanes). The same products and sums
/// in the same order (no fused multiply-adds), so the same pixels as the portable code.
#[target_feature(enable = "avx2")]
#[inline]
pub(super) fn idct_float_block<const N: usize>(
    coefficients: &[i16],
    dc_offset: i16,
    quant: &[i32],
    basis: &[[f32; 8]; N],
    out: &mut [u8],
    stride: usize,
) {
    let coefficients = &coefficients[..N * N];
    let quant = &quant[..N * N];
    assert!(
        out.len() >= (N - 1) * stride + N,
        "the block's rows fit in `out`"
    );
    // The DC value in a register: a copy of the block with it stored would stall the loads
    // of the block that overlap the 2-byte store.
    let dc = coefficients[0].wrapping_add(dc_offset);
    if coefficients[1..].iter().all(|&c| c == 0) {
        return fill_flat::<N>(dc, quant[0], out, stride);
    }
    // Rows of coefficients past the last with one not zero add nothing (exactly: +0.0 to
    // each sum), so both passes stop there; at 5/8 most blocks of a photo use two or three.
    let used_rows = 1
        + (1..N)
            .rev()
            .find(|&v| coefficients[v * N..][..N].iter().any(|&c| c != 0))
            .unwrap_or(0);
    // SAFETY: each row of `basis` holds eight floats.
    let rows: [__m256; N] = std::array::from_fn(|u| unsafe { _mm256_loadu_ps(basis[u].as_ptr()) });
    // Along u: t[v] (lanes over x) = sum_u F[v][u] basis[u].
    let mut t = [_mm256_setzero_ps(); N];
    for (v, t) in t.iter_mut().enumerate().take(used_rows) {
        for (u, row) in rows.iter().enumerate() {
            let coefficient = if v + u == 0 {
                dc
            } else {
                coefficients[v * N + u]
            };
            let f = f32::from(coefficient) * quant[v * N + u] as f32;
            *t = _mm256_add_ps(*t, _mm256_mul_ps(_mm256_set1_ps(f), *row));
        }
    }
    // Along v: line y = sum_v basis[v][y] t[v]; then 1/4, the level shift, clamping and
    // truncation as the portable code's `as u8`.
    let (quarter, level_shift) = (_mm256_set1_ps(0.25), _mm256_set1_ps(128.5));
    let (low, high) = (_mm256_setzero_ps(), _mm256_set1_ps(255.0));
    for y in 0..N {
        let mut sum = _mm256_setzero_ps();
        for (v, t) in t.iter().enumerate().take(used_rows) {
            sum = _mm256_add_ps(sum, _mm256_mul_ps(_mm256_set1_ps(basis[v][y]), *t));
        }
        let value = _mm256_add_ps(_mm256_mul_ps(sum, quarter), level_shift);
        let clamped = _mm256_min_ps(_mm256_max_ps(value, low), high);
        let words = _mm256_cvttps_epi32(clamped);
        let packed = _mm_packs_epi32(
            _mm256_castsi256_si128(words),
            _mm256_extracti128_si256::<1>(words),
        );
        let bytes = _mm_cvtsi128_si64(_mm_packus_epi16(packed, packed)).to_le_bytes();
        out[y * stride..][..N].copy_from_slice(&bytes[..N]);
    }
}

/// `pixels::idct4_lanes`: the 4-point butterflies on four lanes.
#[target_feature(enable = "avx2")]
fn butterflies(f: [__m128i; 4]) -> [__m128i; 4] {
    let [half_sqrt_2, c1, c3] = BUTTERFLY.map(|c| _mm_set1_epi32(c));
    let even0 = _mm_mullo_epi32(_mm_add_epi32(f[0], f[2]), half_sqrt_2);
    let even1 = _mm_mullo_epi32(_mm_sub_epi32(f[0], f[2]), half_sqrt_2);
    let odd0 = _mm_add_epi32(_mm_mullo_epi32(f[1], c1), _mm_mullo_epi32(f[3], c3));
    let odd1 = _mm_sub_epi32(_mm_mullo_epi32(f[1], c3), _mm_mullo_epi32(f[3], c1));
    [
        _mm_add_epi32(even0, odd0),
        _mm_add_epi32(even1, odd1),
        _mm_sub_epi32(even1, odd1),
        _mm_sub_epi32(even0, odd0),
    ]
}

/// Transposes a 4x4 matrix of 32-bit values held as four row registers.
#[target_feature(enable = "avx2")]
fn transpose([a, b, c, d]: [__m128i; 4]) -> [__m128i; 4] {
    let ab_low = _mm_unpacklo_epi32(a, b);
    let cd_low = _mm_unpacklo_epi32(c, d);
    let ab_high = _mm_unpackhi_epi32(a, b);
    let cd_high = _mm_unpackhi_epi32(c, d);
    [
        _mm_unpacklo_epi64(ab_low, cd_low),
        _mm_unpackhi_epi64(ab_low, cd_low),
        _mm_unpacklo_epi64(ab_high, cd_high),
        _mm_unpackhi_epi64(ab_high, cd_high),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::jpeg_reduced::pixels::{idct_basis_padded, idct_block_portable};

    #[test]
    fn vector_float_transforms_equal_the_portable_ones() {
        if !std::is_x86_feature_detected!("avx2") {
            eprintln!("no AVX2 on this CPU: the vector transforms are not used here");
            return;
        }
        fn check<const N: usize>(seed: &mut u32) {
            let mut next = |range: i32| {
                *seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                ((*seed >> 8) as i32).rem_euclid(2 * range + 1) - range
            };
            for case in 0..3_000 {
                let range = [100, 2047, 32767][case % 3];
                let coefficients: Vec<i16> = (0..N * N)
                    .map(|i| {
                        if (case % 4 == 0 && i > 0) || next(3) == 0 {
                            0
                        } else {
                            next(range) as i16
                        }
                    })
                    .collect();
                let quant: Vec<i32> = (0..N * N)
                    .map(|_| 1 + next(127).unsigned_abs() as i32)
                    .collect();
                let stride = N + (case % 7);
                let mut expected = vec![0u8; (N - 1) * stride + N];
                let mut got = expected.clone();
                let basis = idct_basis_padded::<N>();
                let dc_offset = if case % 5 == 0 { next(range) as i16 } else { 0 };
                let mut offset_applied = coefficients.clone();
                offset_applied[0] = offset_applied[0].wrapping_add(dc_offset);
                idct_block_portable::<N>(&offset_applied, &quant, &mut expected, stride);
                // SAFETY: the CPU has AVX2 (checked above).
                unsafe {
                    idct_float_block::<N>(
                        &coefficients,
                        dc_offset,
                        &quant,
                        &basis,
                        &mut got,
                        stride,
                    )
                };
                assert_eq!(got, expected, "N = {N}: {coefficients:?} {quant:?}");
            }
        }
        let mut seed = 5u32;
        check::<3>(&mut seed);
        check::<5>(&mut seed);
        check::<6>(&mut seed);
        check::<7>(&mut seed);
    }

    #[test]
    fn vector_4x4_transform_equals_the_portable_one() {
        if !std::is_x86_feature_detected!("avx2") {
            eprintln!("no AVX2 on this CPU: the vector transform is not used here");
            return;
        }
        let mut seed = 11u32;
        let mut next = |range: i32| {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            ((seed >> 8) as i32).rem_euclid(2 * range + 1) - range
        };
        for case in 0..5_000 {
            // Small photographic values, full 12-bit ones, and anything an i16 holds (wrapping).
            let range = [100, 2047, 32767][case % 3];
            let mut coefficients = [0i16; 16];
            let dc_offset = if case % 5 == 0 { next(range) as i16 } else { 0 };
            for (i, c) in coefficients.iter_mut().enumerate() {
                // Every fourth block flat, others with a few zeros.
                *c = if (case % 4 == 0 && i > 0) || next(3) == 0 {
                    0
                } else {
                    next(range) as i16
                };
            }
            let quant: [i32; 16] = std::array::from_fn(|_| 1 + next(127).unsigned_abs() as i32);
            let stride = 4 + (case % 7);
            let mut expected = vec![0u8; 3 * stride + 4];
            let mut got = expected.clone();
            let mut offset_applied = coefficients;
            offset_applied[0] = offset_applied[0].wrapping_add(dc_offset);
            idct_block_portable::<4>(&offset_applied, &quant, &mut expected, stride);
            // SAFETY: the CPU has AVX2 (checked above).
            unsafe { idct_4x4_block(&coefficients, dc_offset, &quant, &mut got, stride) };
            assert_eq!(got, expected, "{coefficients:?} {quant:?}");
        }
    }
}
