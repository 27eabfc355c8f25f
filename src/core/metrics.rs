//! Image quality metrics: PSNR and SSIM (Wang et al. 2004: an 11x11 Gaussian window with
//! sigma 1.5, K1 = 0.01, K2 = 0.03, on 8-bit units), averaged over the RGB channels.

use image::DynamicImage;

/// Why two images cannot be compared.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the images differ in size: {0}x{1} and {2}x{3}")]
pub struct SizeMismatch(pub u32, pub u32, pub u32, pub u32);

fn planes(image: &DynamicImage) -> [Vec<f64>; 3] {
    let rgb = image.to_rgb32f();
    let mut out = [Vec::new(), Vec::new(), Vec::new()];
    for p in rgb.pixels() {
        for (plane, v) in out.iter_mut().zip(p.0) {
            plane.push(f64::from(v) * 255.0);
        }
    }
    out
}

fn check(a: &DynamicImage, b: &DynamicImage) -> Result<(), SizeMismatch> {
    if a.width() != b.width() || a.height() != b.height() {
        return Err(SizeMismatch(a.width(), a.height(), b.width(), b.height()));
    }
    Ok(())
}

/// Mean squared error over all RGB samples, in 8-bit units.
pub fn mse(a: &DynamicImage, b: &DynamicImage) -> Result<f64, SizeMismatch> {
    check(a, b)?;
    let (pa, pb) = (planes(a), planes(b));
    let mut sum = 0.0;
    let mut n = 0.0;
    for c in 0..3 {
        for (x, y) in pa[c].iter().zip(&pb[c]) {
            sum += (x - y) * (x - y);
            n += 1.0;
        }
    }
    Ok(sum / n)
}

/// Peak signal-to-noise ratio in dB (infinite for identical images).
pub fn psnr(a: &DynamicImage, b: &DynamicImage) -> Result<f64, SizeMismatch> {
    let m = mse(a, b)?;
    Ok(if m == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (255.0f64 * 255.0 / m).log10()
    })
}

fn gaussian_blur(plane: &[f64], width: usize, height: usize) -> Vec<f64> {
    const RADIUS: i64 = 5;
    let weights: Vec<f64> = (-RADIUS..=RADIUS)
        .map(|i| (-(i * i) as f64 / (2.0 * 1.5 * 1.5)).exp())
        .collect();
    let total: f64 = weights.iter().sum();
    let weights: Vec<f64> = weights.iter().map(|w| w / total).collect();
    let blur = |input: &[f64], horizontal: bool| -> Vec<f64> {
        let mut out = vec![0.0; input.len()];
        for y in 0..height {
            for x in 0..width {
                let mut acc = 0.0;
                let mut norm = 0.0;
                for (k, w) in weights.iter().enumerate() {
                    let d = k as i64 - RADIUS;
                    let (sx, sy) = if horizontal {
                        (x as i64 + d, y as i64)
                    } else {
                        (x as i64, y as i64 + d)
                    };
                    if sx >= 0 && sy >= 0 && (sx as usize) < width && (sy as usize) < height {
                        acc += w * input[sy as usize * width + sx as usize];
                        norm += w;
                    }
                }
                out[y * width + x] = acc / norm;
            }
        }
        out
    };
    blur(&blur(plane, true), false)
}

/// Mean structural similarity, 1 for identical images.
pub fn ssim(a: &DynamicImage, b: &DynamicImage) -> Result<f64, SizeMismatch> {
    check(a, b)?;
    let (w, h) = (a.width() as usize, a.height() as usize);
    let (c1, c2) = ((0.01f64 * 255.0).powi(2), (0.03f64 * 255.0).powi(2));
    let (pa, pb) = (planes(a), planes(b));
    let mut total = 0.0;
    for c in 0..3 {
        let (x, y) = (&pa[c], &pb[c]);
        let product =
            |p: &[f64], q: &[f64]| p.iter().zip(q).map(|(u, v)| u * v).collect::<Vec<_>>();
        let mx = gaussian_blur(x, w, h);
        let my = gaussian_blur(y, w, h);
        let sxx = gaussian_blur(&product(x, x), w, h);
        let syy = gaussian_blur(&product(y, y), w, h);
        let sxy = gaussian_blur(&product(x, y), w, h);
        let mut sum = 0.0;
        for i in 0..w * h {
            let (vx, vy, cxy) = (
                sxx[i] - mx[i] * mx[i],
                syy[i] - my[i] * my[i],
                sxy[i] - mx[i] * my[i],
            );
            sum += ((2.0 * mx[i] * my[i] + c1) * (2.0 * cxy + c2))
                / ((mx[i] * mx[i] + my[i] * my[i] + c1) * (vx + vy + c2));
        }
        total += sum / (w * h) as f64;
    }
    Ok(total / 3.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{Rgb, RgbImage};

    fn pattern(noise: u8) -> DynamicImage {
        DynamicImage::ImageRgb8(RgbImage::from_fn(40, 30, |x, y| {
            let n = if (x * 7 + y * 13) % 5 == 0 { noise } else { 0 };
            Rgb([(x * 6) as u8 + n, (y * 8) as u8, 100])
        }))
    }

    #[test]
    fn identical_images_are_perfect_and_noise_lowers_both() {
        let a = pattern(0);
        assert_eq!(psnr(&a, &a).unwrap(), f64::INFINITY);
        assert!((ssim(&a, &a).unwrap() - 1.0).abs() < 1e-9);
        let b = pattern(20);
        let (p, s) = (psnr(&a, &b).unwrap(), ssim(&a, &b).unwrap());
        assert!(p > 20.0 && p < 40.0, "{p}");
        assert!(s < 0.99 && s > 0.5, "{s}");
    }

    #[test]
    fn mse_of_a_uniform_offset() {
        let a = DynamicImage::ImageRgb8(RgbImage::from_pixel(4, 4, Rgb([10, 10, 10])));
        let b = DynamicImage::ImageRgb8(RgbImage::from_pixel(4, 4, Rgb([13, 13, 13])));
        assert!((mse(&a, &b).unwrap() - 9.0).abs() < 1e-3);
        assert!(psnr(&a, &DynamicImage::new_rgb8(3, 4)).is_err());
    }
}
