//! Resampling: the anti-aliased Lanczos3 downscale that makes a proxy, and the float
//! Lanczos3 weight tables that bring a delta back to full resolution.
//!
//! The downscale uses `fast_image_resize` (SIMD, alpha-aware: colour is premultiplied while
//! filtering so transparent pixels never bleed dark fringes). The upscale of a delta is done
//! here in `f32` so that a delta is never re-quantised to 8 bits on its way up: imgproxyproc
//! resizes the delta as an 8-bit image and rounds; darkroom keeps the fraction.

use fast_image_resize::{FilterType, ResizeAlg, ResizeOptions, Resizer};
use image::DynamicImage;

/// Why a resample failed. These only happen on programming errors or absurd sizes.
#[derive(Debug, thiserror::Error)]
pub enum ResampleError {
    #[error("resampling failed: {0}")]
    Resize(String),
    #[error("this pixel layout cannot be resampled: {0:?}")]
    UnsupportedLayout(image::ColorType),
}

/// Lanczos3 (anti-aliased) resize of a whole image to `width x height`, keeping its type.
pub fn resize_lanczos3(
    image: &DynamicImage,
    width: u32,
    height: u32,
) -> Result<DynamicImage, ResampleError> {
    if image.width() == width && image.height() == height {
        return Ok(image.clone());
    }
    let mut dst = blank_like(image, width, height)?;
    let options = ResizeOptions::new()
        .resize_alg(ResizeAlg::Convolution(FilterType::Lanczos3))
        .use_alpha(true);
    Resizer::new()
        .resize(image, &mut dst, &options)
        .map_err(|e| ResampleError::Resize(e.to_string()))?;
    Ok(dst)
}

/// Lanczos3 resize that consumes its input: an image with alpha is premultiplied in place
/// (instead of in a full-size copy, which for a 52-MP RGBA original is 208 MB), resized,
/// and the small result un-premultiplied. Same result as [`resize_lanczos3`].
pub fn resize_lanczos3_owned(
    mut image: DynamicImage,
    width: u32,
    height: u32,
) -> Result<DynamicImage, ResampleError> {
    if (image.width(), image.height()) == (width, height) {
        return Ok(image);
    }
    if !image.color().has_alpha() {
        return resize_lanczos3(&image, width, height);
    }
    let fail = |e: &dyn std::fmt::Display| ResampleError::Resize(e.to_string());
    let mul_div = fast_image_resize::MulDiv::default();
    mul_div
        .multiply_alpha_inplace(&mut image)
        .map_err(|e| fail(&e))?;
    let mut dst = blank_like(&image, width, height)?;
    let options = ResizeOptions::new()
        .resize_alg(ResizeAlg::Convolution(FilterType::Lanczos3))
        .use_alpha(false);
    Resizer::new()
        .resize(&image, &mut dst, &options)
        .map_err(|e| fail(&e))?;
    drop(image);
    mul_div
        .divide_alpha_inplace(&mut dst)
        .map_err(|e| fail(&e))?;
    Ok(dst)
}

/// A black (and, where there is alpha, fully transparent) image of the same type.
pub fn blank_like(
    image: &DynamicImage,
    width: u32,
    height: u32,
) -> Result<DynamicImage, ResampleError> {
    use image::ColorType as C;
    Ok(match image.color() {
        C::L8 => DynamicImage::new_luma8(width, height),
        C::La8 => DynamicImage::new_luma_a8(width, height),
        C::Rgb8 => DynamicImage::new_rgb8(width, height),
        C::Rgba8 => DynamicImage::new_rgba8(width, height),
        C::L16 => DynamicImage::new_luma16(width, height),
        C::La16 => DynamicImage::new_luma_a16(width, height),
        C::Rgb16 => DynamicImage::new_rgb16(width, height),
        C::Rgba16 => DynamicImage::new_rgba16(width, height),
        other => return Err(ResampleError::UnsupportedLayout(other)),
    })
}

/// The Lanczos kernel with three lobes.
fn lanczos3(x: f64) -> f64 {
    let x = x.abs();
    if x < 1e-12 {
        1.0
    } else if x >= 3.0 {
        0.0
    } else {
        let px = std::f64::consts::PI * x;
        3.0 * px.sin() * (px / 3.0).sin() / (px * px)
    }
}

/// Normalised 1-D filter taps mapping `src` samples onto `dst` samples.
///
/// Pixel centres are at `i + 0.5` in both grids (the convention of Pillow and
/// fast_image_resize); taps that fall outside the source are dropped and the rest
/// renormalised, so edges are neither darkened nor wrapped.
#[derive(Debug, Clone)]
pub struct Taps {
    /// First source index read for each destination sample.
    pub start: Vec<u32>,
    /// Number of real taps for each destination sample (all inside the source).
    pub len: Vec<u32>,
    /// Weights, `width` per destination sample (zero-filled past the real taps).
    pub weights: Vec<f32>,
    /// Number of weights stored per destination sample.
    pub width: usize,
}

impl Taps {
    #[must_use]
    pub fn lanczos3(src: u32, dst: u32) -> Self {
        assert!(src > 0 && dst > 0);
        let scale = f64::from(src) / f64::from(dst);
        let filter_scale = scale.max(1.0);
        let support = 3.0 * filter_scale;
        let width = (support.ceil() as usize) * 2 + 1;
        let mut start = Vec::with_capacity(dst as usize);
        let mut len = Vec::with_capacity(dst as usize);
        let mut weights = vec![0f32; dst as usize * width];
        let mut scratch = Vec::with_capacity(width);
        for i in 0..dst as usize {
            let center = (i as f64 + 0.5) * scale;
            let left = ((center - support).floor().max(0.0)) as i64;
            let right = ((center + support).ceil() as i64).min(i64::from(src));
            scratch.clear();
            let mut sum = 0.0;
            for j in left..right {
                let w = lanczos3((j as f64 + 0.5 - center) / filter_scale);
                scratch.push(w);
                sum += w;
            }
            // Trim zero taps at both ends so `width` always suffices.
            let mut first = 0;
            while first + 1 < scratch.len() && scratch[first] == 0.0 {
                first += 1;
            }
            let mut last = scratch.len();
            while last > first + 1 && scratch[last - 1] == 0.0 {
                last -= 1;
            }
            let taps = &scratch[first..last.min(first + width)];
            start.push((left as usize + first) as u32);
            len.push(taps.len() as u32);
            let row = &mut weights[i * width..i * width + taps.len()];
            for (slot, w) in row.iter_mut().zip(taps) {
                *slot = (*w / sum) as f32;
            }
        }
        Taps {
            start,
            len,
            weights,
            width,
        }
    }

    /// Source start index and the real weights for destination sample `i`; every
    /// `start + k` for `k < weights.len()` lies inside the source.
    #[inline]
    pub fn get(&self, i: usize) -> (usize, &[f32]) {
        let from = i * self.width;
        (
            self.start[i] as usize,
            &self.weights[from..from + self.len[i] as usize],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taps_sum_to_one_and_stay_inside_the_source() {
        for (src, dst) in [
            (7u32, 29u32),
            (1024, 4032),
            (768, 3024),
            (3, 3),
            (1, 9),
            (4032, 1024),
        ] {
            let taps = Taps::lanczos3(src, dst);
            for i in 0..dst as usize {
                let (start, w) = taps.get(i);
                let sum: f32 = w.iter().sum();
                assert!((sum - 1.0).abs() < 1e-4, "{src}->{dst} at {i}: {sum}");
                assert!(start + w.len() <= src as usize);
            }
        }
    }

    #[test]
    fn owned_resize_premultiplies_in_place_with_the_same_result() {
        let img = DynamicImage::ImageRgba8(image::RgbaImage::from_fn(61, 37, |x, y| {
            image::Rgba([(x * 4) as u8, (y * 6) as u8, 99, ((x * y) % 256) as u8])
        }));
        let borrowed = resize_lanczos3(&img, 20, 11).unwrap();
        let owned = resize_lanczos3_owned(img, 20, 11).unwrap();
        assert_eq!(owned, borrowed);
    }

    #[test]
    fn resize_keeps_the_pixel_type() {
        let img = DynamicImage::new_rgba16(40, 20);
        let out = resize_lanczos3(&img, 10, 5).unwrap();
        assert_eq!(out.color(), image::ColorType::Rgba16);
        assert_eq!((out.width(), out.height()), (10, 5));
    }
}
