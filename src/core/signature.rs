//! Content signatures of proxies, for pairing a returned image that kept neither the proxy's
//! name nor its metadata with the proxy it came from.
//!
//! A signature is the luminance of the image averaged over a 16x16 grid of cells, made zero
//! mean and unit length. Two signatures compare by their dot product, which is the Pearson
//! correlation of the two grids: a colour grade, a contrast change or a light restyle keeps
//! it near 1, a different picture drops it far lower.

use image::DynamicImage;

/// Cells per side of the grid.
pub const GRID: usize = 16;

/// A normalised luminance grid.
#[derive(Debug, Clone, PartialEq)]
pub struct Signature {
    cells: Vec<f32>,
}

impl Signature {
    /// Computes the signature of an image.
    pub fn of(image: &DynamicImage) -> Signature {
        let (width, height) = (image.width() as usize, image.height() as usize);
        let mut sums = vec![0f64; GRID * GRID];
        let mut counts = vec![0u32; GRID * GRID];
        let rgb = image.to_rgb32f();
        for (x, y, pixel) in rgb.enumerate_pixels() {
            let [r, g, b] = pixel.0;
            let luma = 0.2126 * r + 0.7152 * g + 0.0722 * b;
            let cx = (x as usize * GRID) / width.max(1);
            let cy = (y as usize * GRID) / height.max(1);
            sums[cy * GRID + cx] += f64::from(luma);
            counts[cy * GRID + cx] += 1;
        }
        let means: Vec<f64> = sums
            .iter()
            .zip(&counts)
            .map(|(s, &n)| if n == 0 { 0.0 } else { s / f64::from(n) })
            .collect();
        Signature::normalised(&means)
    }

    fn normalised(values: &[f64]) -> Signature {
        let mean = values.iter().sum::<f64>() / values.len() as f64;
        let centred: Vec<f64> = values.iter().map(|v| v - mean).collect();
        let norm = centred.iter().map(|v| v * v).sum::<f64>().sqrt();
        let cells = centred
            .iter()
            .map(|v| if norm > 1e-12 { (v / norm) as f32 } else { 0.0 })
            .collect();
        Signature { cells }
    }

    /// Correlation with another signature, in -1..=1 (0 for a flat image).
    pub fn correlation(&self, other: &Signature) -> f64 {
        self.cells
            .iter()
            .zip(&other.cells)
            .map(|(a, b)| f64::from(*a) * f64::from(*b))
            .sum()
    }

    /// Little-endian bytes, for storing.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.cells.iter().flat_map(|c| c.to_le_bytes()).collect()
    }

    /// Reads stored bytes back; `None` when they are not a signature.
    pub fn from_bytes(bytes: &[u8]) -> Option<Signature> {
        if bytes.len() != GRID * GRID * 4 {
            return None;
        }
        let cells = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Some(Signature { cells })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{Rgb, RgbImage};

    fn gradient(flip: bool) -> DynamicImage {
        DynamicImage::ImageRgb8(RgbImage::from_fn(64, 48, |x, y| {
            let v = if flip { 235 - y * 5 } else { y * 5 } as u8;
            Rgb([(x * 4) as u8, v, 128])
        }))
    }

    #[test]
    fn a_graded_copy_matches_and_a_different_picture_does_not() {
        let original = gradient(false);
        let mut graded = original.to_rgb8();
        for p in graded.pixels_mut() {
            p.0 = [
                (f32::from(p.0[0]) * 0.8 + 20.0) as u8,
                (f32::from(p.0[1]) * 0.9) as u8,
                p.0[2] / 2,
            ];
        }
        let a = Signature::of(&original);
        let b = Signature::of(&DynamicImage::ImageRgb8(graded));
        let c = Signature::of(&gradient(true));
        assert!(a.correlation(&b) > 0.98, "{}", a.correlation(&b));
        assert!(a.correlation(&c) < 0.5, "{}", a.correlation(&c));
    }

    #[test]
    fn bytes_round_trip() {
        let s = Signature::of(&gradient(false));
        assert_eq!(Signature::from_bytes(&s.to_bytes()), Some(s));
        assert_eq!(Signature::from_bytes(&[0; 3]), None);
    }
}
