//! Tone and colour adjustments for training images, on 8-bit RGBA (alpha untouched). Every
//! one is off by default in the `normalise` recipe; each is a classical, documented method.
//!
//! - white patch (max-RGB): each channel scaled so its 99th percentile reaches 255.
//! - contrast stretch: the luminance's `low`/`high` percentiles mapped to 0 and 255.
//! - CLAHE (Zuiderveld, "Contrast Limited Adaptive Histogram Equalization", Graphics Gems IV,
//!   1994): on luma, 8x8 tiles, histogram clipped at `clip_limit` times the mean bin and the
//!   excess redistributed, tile mappings blended bilinearly; chroma kept.
//! - saturation: distance from grey scaled by a factor; vibrance: the same, weighted towards
//!   pixels that are not yet saturated.

use crate::core::quality::pixel_luma as luma;
use image::RgbaImage;

fn to_u8(v: f32) -> u8 {
    v.round().clamp(0.0, 255.0) as u8
}

/// The value at `fraction` of a 256-bin histogram.
fn percentile(histogram: &[u64; 256], fraction: f64) -> usize {
    let total: u64 = histogram.iter().sum();
    let goal = (total as f64 * fraction).ceil() as u64;
    let mut seen = 0;
    for (i, n) in histogram.iter().enumerate() {
        seen += n;
        if seen >= goal.max(1) {
            return i;
        }
    }
    255
}

/// White-patch white balance.
pub fn white_patch(image: &mut RgbaImage) {
    let mut histograms = [[0u64; 256]; 3];
    for p in image.pixels().filter(|p| p[3] > 0) {
        for c in 0..3 {
            histograms[c][p[c] as usize] += 1;
        }
    }
    let gains = histograms.map(|h| 255.0 / (percentile(&h, 0.99).max(1) as f32));
    if gains.iter().all(|g| (g - 1.0).abs() < 1e-3) {
        return;
    }
    for p in image.pixels_mut() {
        for c in 0..3 {
            p[c] = to_u8(f32::from(p[c]) * gains[c]);
        }
    }
}

/// Linear contrast stretch between the `low` and `high` luminance percentiles.
pub fn contrast_stretch(image: &mut RgbaImage, low: f64, high: f64) {
    let mut histogram = [0u64; 256];
    for p in image.pixels().filter(|p| p[3] > 0) {
        histogram[to_u8(luma(&p.0)) as usize] += 1;
    }
    let (lo, hi) = (
        percentile(&histogram, low) as f32,
        percentile(&histogram, high) as f32,
    );
    if hi - lo < 8.0 {
        return; // a flat image: stretching would only amplify noise
    }
    let gain = 255.0 / (hi - lo);
    for p in image.pixels_mut() {
        for c in 0..3 {
            p[c] = to_u8((f32::from(p[c]) - lo) * gain);
        }
    }
}

/// CLAHE on luminance with an 8x8 tile grid.
pub fn clahe(image: &mut RgbaImage, clip_limit: f32) {
    const TILES: usize = 8;
    let (w, h) = (image.width() as usize, image.height() as usize);
    if w < TILES * 2 || h < TILES * 2 {
        return;
    }
    let lum: Vec<u8> = image.pixels().map(|p| to_u8(luma(&p.0))).collect();
    let tile_w = w.div_ceil(TILES);
    let tile_h = h.div_ceil(TILES);
    // One 256-entry mapping per tile.
    let mut maps = vec![[0u8; 256]; TILES * TILES];
    for ty in 0..TILES {
        for tx in 0..TILES {
            let (x0, y0) = (tx * tile_w, ty * tile_h);
            let (x1, y1) = ((x0 + tile_w).min(w), (y0 + tile_h).min(h));
            let mut hist = [0f32; 256];
            let mut n = 0f32;
            for y in y0..y1 {
                for x in x0..x1 {
                    hist[lum[y * w + x] as usize] += 1.0;
                    n += 1.0;
                }
            }
            if n == 0.0 {
                continue;
            }
            let limit = (clip_limit * n / 256.0).max(1.0);
            let mut excess = 0f32;
            for v in hist.iter_mut() {
                if *v > limit {
                    excess += *v - limit;
                    *v = limit;
                }
            }
            let share = excess / 256.0;
            let mut cdf = 0f32;
            let map = &mut maps[ty * TILES + tx];
            for (i, v) in hist.iter().enumerate() {
                cdf += v + share;
                map[i] = to_u8(cdf / n * 255.0);
            }
        }
    }
    // Bilinear blend of the four nearest tiles' mappings (tile centres as grid points).
    let coord = |p: usize, size: usize| -> (usize, usize, f32) {
        let t = (p as f32 + 0.5) / size as f32 - 0.5;
        let t = t.clamp(0.0, (TILES - 1) as f32);
        let i = (t.floor() as usize).min(TILES - 2);
        (i, i + 1, t - i as f32)
    };
    for y in 0..h {
        let (y0, y1, fy) = coord(y, tile_h);
        for x in 0..w {
            let (x0, x1, fx) = coord(x, tile_w);
            let l = lum[y * w + x] as usize;
            let m = |tx: usize, ty: usize| f32::from(maps[ty * TILES + tx][l]);
            let top = m(x0, y0) * (1.0 - fx) + m(x1, y0) * fx;
            let bottom = m(x0, y1) * (1.0 - fx) + m(x1, y1) * fx;
            let target = top * (1.0 - fy) + bottom * fy;
            let p = image.get_pixel_mut(x as u32, y as u32);
            let delta = target - l as f32;
            // Shift the three channels together: luminance changes, chroma stays.
            for c in 0..3 {
                p[c] = to_u8(f32::from(p[c]) + delta);
            }
        }
    }
}

/// Saturation (`factor`, 1 = unchanged) then vibrance (`amount`, 0 = unchanged; favours
/// muted colours).
pub fn saturation_vibrance(image: &mut RgbaImage, factor: f32, vibrance: f32) {
    for p in image.pixels_mut() {
        let grey = luma(&p.0);
        let max = p[0].max(p[1]).max(p[2]) as f32;
        let min = p[0].min(p[1]).min(p[2]) as f32;
        let current = if max > 0.0 { (max - min) / max } else { 0.0 };
        let scale = factor * (1.0 + vibrance * (1.0 - current));
        for c in 0..3 {
            p[c] = to_u8(grey + (f32::from(p[c]) - grey) * scale);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgba;

    #[test]
    fn contrast_stretch_spans_the_range() {
        let mut img = RgbaImage::from_fn(64, 64, |x, _| {
            let v = 80 + (x as u8);
            Rgba([v, v, v, 255])
        });
        contrast_stretch(&mut img, 0.005, 0.995);
        let l: Vec<u8> = img.pixels().map(|p| p[0]).collect();
        assert!(*l.iter().min().unwrap() <= 2 && *l.iter().max().unwrap() >= 253);
    }

    #[test]
    fn white_patch_neutralises_a_warm_white() {
        let mut img = RgbaImage::from_fn(32, 32, |x, _| {
            if x < 8 {
                Rgba([250, 230, 200, 255])
            } else {
                Rgba([100, 90, 80, 255])
            }
        });
        white_patch(&mut img);
        let p = img.get_pixel(0, 0);
        assert!(p[0] >= 254 && p[1] >= 254 && p[2] >= 254, "{p:?}");
    }

    #[test]
    fn clahe_raises_local_contrast_of_a_flat_region() {
        let mut img = RgbaImage::from_fn(128, 128, |x, y| {
            let v = 100 + ((x + y) % 8) as u8;
            Rgba([v, v, v, 255])
        });
        let spread = |img: &RgbaImage| {
            let l: Vec<u8> = img.pixels().map(|p| p[0]).collect();
            l.iter().max().unwrap() - l.iter().min().unwrap()
        };
        let before = spread(&img);
        clahe(&mut img, 2.0);
        assert!(spread(&img) > before * 2, "{} -> {}", before, spread(&img));
    }

    #[test]
    fn saturation_zero_is_grey_and_vibrance_spares_saturated_colours() {
        let mut img = RgbaImage::from_pixel(2, 1, Rgba([200, 100, 50, 255]));
        img.put_pixel(1, 0, Rgba([255, 0, 0, 255]));
        let mut grey = img.clone();
        saturation_vibrance(&mut grey, 0.0, 0.0);
        let g = grey.get_pixel(0, 0);
        assert!(g[0] == g[1] && g[1] == g[2]);
        saturation_vibrance(&mut img, 1.0, 0.5);
        assert_eq!(img.get_pixel(1, 0).0, [255, 0, 0, 255]);
    }
}
