//! Chroma upsampling and YCbCr to RGB conversion of [`super::pixels::to_pixels`] with AVX2:
//! the same integer arithmetic as the portable code (libjpeg's fancy upsampling, JFIF's
//! conversion in 16-bit fixed point), sixteen pixels at a time, so the same bytes (tested
//! below).

use super::header::{ComponentLayout, Layout};
use super::pixels::{blend_lines, ycbcr_to_rgb};
use std::arch::x86_64::*;

/// Converts the output lines from `first_line` on into `rows` (packed RGB), as
/// `pixels::to_pixels` does for three-component images; `by_frame` gives the scan index of
/// Y, Cb and Cr.
#[target_feature(enable = "avx2")]
pub(super) fn convert_rows(
    planes: &[Vec<u8>],
    layout: &Layout,
    by_frame: [usize; 3],
    first_line: usize,
    rows: &mut [u8],
) {
    let width = layout.out_width;
    let luma = &layout.components[by_frame[0]];
    let chroma = [
        &layout.components[by_frame[1]],
        &layout.components[by_frame[2]],
    ];
    let mut columns = [Vec::new(), Vec::new()];
    let mut lines = [vec![0i16; width], vec![0i16; width]];
    for (i, out_row) in rows.chunks_exact_mut(width * 3).enumerate() {
        let y = first_line + i;
        let luma_row = &planes[by_frame[0]][y * luma.plane_width..][..width];
        for k in 0..2 {
            vertical(&planes[by_frame[k + 1]], chroma[k], y, &mut columns[k]);
            horizontal(&columns[k], chroma[k].upsample_x, &mut lines[k]);
        }
        rgb_row(luma_row, &lines[0], &lines[1], out_row);
    }
}

/// Line `y` of a chroma plane blended with its nearer neighbour line (3:1 where the plane
/// has half the luma's lines), times 4, into `column` with one edge value repeated on each
/// side (`column[x + 1]` is column x).
#[target_feature(enable = "avx2")]
fn vertical(plane: &[u8], component: &ComponentLayout, y: usize, column: &mut Vec<i16>) {
    let stride = component.plane_width;
    column.resize(stride + 2, 0);
    blend_lines(plane, component, y, &mut column[1..=stride]);
    column[0] = column[1];
    column[stride + 1] = column[stride];
}

/// The chroma line at the luma's width from a padded `column` (see [`vertical`]): a 3:1
/// blend with the nearer neighbour column where the plane has half the width, then back to
/// 8 bits, as `pixels::upsampled_line`.
#[target_feature(enable = "avx2")]
fn horizontal(column: &[i16], upsample_x: usize, line: &mut [i16]) {
    let width = line.len();
    if upsample_x != 2 {
        for (out, &c) in line.iter_mut().zip(&column[1..]) {
            *out = (4 * c + 8) >> 4;
        }
        return;
    }
    let stride = column.len() - 2;
    let (eight, three) = (_mm_set1_epi16(8), _mm_set1_epi16(3));
    let mut sx = 0;
    // Eight chroma columns give sixteen output pixels; the loads reach column[sx + 9].
    while 2 * sx + 16 <= width && sx + 8 <= stride {
        // SAFETY: column[sx..sx + 10] is in bounds (sx + 8 <= stride, len = stride + 2), and
        // line[2 sx..2 sx + 16] too (checked above).
        unsafe {
            let at = column.as_ptr().add(sx);
            let before = _mm_loadu_si128(at.cast());
            let centre = _mm_loadu_si128(at.add(1).cast());
            let after = _mm_loadu_si128(at.add(2).cast());
            let weighted = _mm_add_epi16(_mm_mullo_epi16(centre, three), eight);
            let even = _mm_srai_epi16::<4>(_mm_add_epi16(weighted, before));
            let odd = _mm_srai_epi16::<4>(_mm_add_epi16(weighted, after));
            let out = line.as_mut_ptr().add(2 * sx);
            _mm_storeu_si128(out.cast(), _mm_unpacklo_epi16(even, odd));
            _mm_storeu_si128(out.add(8).cast(), _mm_unpackhi_epi16(even, odd));
        }
        sx += 8;
    }
    for (x, out) in line.iter_mut().enumerate().skip(2 * sx) {
        let sx = x / 2;
        let far = if x.is_multiple_of(2) { sx } else { sx + 2 };
        *out = (3 * column[sx + 1] + column[far] + 8) >> 4;
    }
}

/// For each of the three 16-byte blocks of sixteen interleaved RGB pixels and each channel,
/// the byte shuffle that puts that channel's sixteen values in their places (0x80: zero).
const INTERLEAVE: [[[u8; 16]; 3]; 3] = interleave_masks();

const fn interleave_masks() -> [[[u8; 16]; 3]; 3] {
    let mut masks = [[[0x80u8; 16]; 3]; 3];
    let mut k = 0;
    while k < 48 {
        masks[k / 16][k % 3][k % 16] = (k / 3) as u8;
        k += 1;
    }
    masks
}

/// One row of RGB from luma and the chroma lines at its width.
#[target_feature(enable = "avx2")]
fn rgb_row(luma: &[u8], cb: &[i16], cr: &[i16], out: &mut [u8]) {
    let width = luma.len();
    assert!(cb.len() >= width && cr.len() >= width && out.len() >= 3 * width);
    let shuffles = INTERLEAVE.map(|block| {
        // SAFETY: each mask holds sixteen bytes.
        block.map(|mask| unsafe { _mm_loadu_si128(mask.as_ptr().cast()) })
    });
    let mut x = 0;
    while x + 16 <= width {
        // SAFETY: x + 16 <= width bounds every load and store (checked above).
        unsafe {
            let l = _mm256_cvtepu8_epi16(_mm_loadu_si128(luma.as_ptr().add(x).cast()));
            let cb = _mm256_loadu_si256(cb.as_ptr().add(x).cast());
            let cr = _mm256_loadu_si256(cr.as_ptr().add(x).cast());
            let [r, g, b] = rgb_of(l, cb, cr);
            let dst = out.as_mut_ptr().add(3 * x);
            for (block, masks) in shuffles.iter().enumerate() {
                let bytes = _mm_or_si128(
                    _mm_or_si128(_mm_shuffle_epi8(r, masks[0]), _mm_shuffle_epi8(g, masks[1])),
                    _mm_shuffle_epi8(b, masks[2]),
                );
                _mm_storeu_si128(dst.add(16 * block).cast(), bytes);
            }
        }
        x += 16;
    }
    for x in x..width {
        let rgb = ycbcr_to_rgb(luma[x], cb[x] as u8, cr[x] as u8);
        out[3 * x..3 * x + 3].copy_from_slice(&rgb);
    }
}

/// Sixteen pixels' R, G and B bytes from their luma and chroma (16-bit lanes): JFIF's
/// conversion in 32-bit lanes, rounded and shifted as `pixels::ycbcr_to_rgb` does, the packs
/// saturating to 0..=255 as its clamps do.
#[target_feature(enable = "avx2")]
fn rgb_of(l: __m256i, cb: __m256i, cr: __m256i) -> [__m128i; 3] {
    let widen = |v: __m256i| {
        [
            _mm256_cvtepi16_epi32(_mm256_castsi256_si128(v)),
            _mm256_cvtepi16_epi32(_mm256_extracti128_si256::<1>(v)),
        ]
    };
    let offset = _mm256_set1_epi16(128);
    let (l, cb, cr) = (
        widen(l),
        widen(_mm256_sub_epi16(cb, offset)),
        widen(_mm256_sub_epi16(cr, offset)),
    );
    let round = _mm256_set1_epi32(32_768);
    let term = |a: __m256i, b: __m256i| {
        _mm256_srai_epi32::<16>(_mm256_add_epi32(_mm256_add_epi32(a, b), round))
    };
    let times = |v: __m256i, k: i32| _mm256_mullo_epi32(v, _mm256_set1_epi32(k));
    let zero = _mm256_setzero_si256();
    let channel = |half: usize| {
        [
            _mm256_add_epi32(l[half], term(times(cr[half], 91_881), zero)),
            _mm256_add_epi32(
                l[half],
                term(times(cb[half], -22_554), times(cr[half], -46_802)),
            ),
            _mm256_add_epi32(l[half], term(times(cb[half], 116_130), zero)),
        ]
    };
    let (low, high) = (channel(0), channel(1));
    std::array::from_fn(|c| {
        // 32 -> 16 bits in lane order, then 16 -> 8.
        let words = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packs_epi32(low[c], high[c]));
        _mm_packus_epi16(
            _mm256_castsi256_si128(words),
            _mm256_extracti128_si256::<1>(words),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A layout of `width x height` output pixels with chroma subsampled by `sub_x, sub_y`,
    /// its planes' sizes in whole MCUs of `n`-pixel blocks, as `Layout::of` gives them.
    fn layout(width: usize, height: usize, (sub_x, sub_y): (usize, usize), n: usize) -> Layout {
        let (mcus_across, mcus_down) = (width.div_ceil(n * sub_x), height.div_ceil(n * sub_y));
        let component =
            |h: usize, v: usize, first_block: usize, frame_index: usize| ComponentLayout {
                h,
                v,
                upsample_x: sub_x / h,
                upsample_y: sub_y / v,
                plane_width: mcus_across * h * n,
                plane_height: mcus_down * v * n,
                first_block,
                frame_index,
            };
        let luma_blocks = sub_x * sub_y;
        Layout {
            n,
            mcus_across,
            mcus_down,
            components: vec![
                component(sub_x, sub_y, 0, 0),
                component(1, 1, luma_blocks, 1),
                component(1, 1, luma_blocks + 1, 2),
            ],
            blocks_per_mcu: luma_blocks + 2,
            out_width: width,
            out_height: height,
        }
    }

    #[test]
    fn vector_conversion_equals_the_portable_one() {
        if !std::is_x86_feature_detected!("avx2") {
            eprintln!("no AVX2 on this CPU: the vector conversion is not used here");
            return;
        }
        let mut seed = 3u32;
        let mut next = || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 24) as u8
        };
        for subsampling in [(2, 2), (2, 1), (1, 1)] {
            for (width, height) in [
                (1, 1),
                (15, 3),
                (16, 2),
                (17, 5),
                (33, 4),
                (250, 7),
                (63, 9),
            ] {
                for n in [4, 5, 8] {
                    let layout = layout(width, height, subsampling, n);
                    let planes: Vec<Vec<u8>> = layout
                        .components
                        .iter()
                        .map(|c| {
                            (0..c.plane_width * c.plane_height)
                                .map(|_| next())
                                .collect()
                        })
                        .collect();
                    let mut expected = vec![0u8; width * height * 3];
                    let mut got = expected.clone();
                    super::super::pixels::convert_rows(
                        &planes,
                        &layout,
                        [0, 1, 2],
                        0,
                        &mut expected,
                    );
                    // SAFETY: the CPU has AVX2 (checked above).
                    unsafe { convert_rows(&planes, &layout, [0, 1, 2], 0, &mut got) };
                    assert!(got == expected, "{subsampling:?} {width}x{height} n={n}");
                    // From a later line on, as the second thread converts.
                    let from = height / 2;
                    let mut tail = vec![0u8; (height - from) * width * 3];
                    // SAFETY: as above.
                    unsafe { convert_rows(&planes, &layout, [0, 1, 2], from, &mut tail) };
                    assert!(
                        tail == expected[from * width * 3..],
                        "{subsampling:?} {width}x{height}"
                    );
                }
            }
        }
    }
}
