//! Filters around a model run: the unsharp mask that post-sharpens an upscale.

use image::{DynamicImage, Rgba32FImage};

/// Unsharp mask settings: `out = in + amount x (in - blur(in, radius))` wherever the
/// difference exceeds `threshold` (in 8-bit levels), as in GIMP and ImageMagick.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Unsharp {
    pub amount: f32,
    /// Gaussian sigma in pixels.
    pub radius: f32,
    pub threshold: f32,
}

impl std::str::FromStr for Unsharp {
    type Err = String;

    /// `AMOUNT[,RADIUS[,THRESHOLD]]`, e.g. `0.5` or `0.8,1.5,2`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = text.split(',').map(str::trim).collect();
        let number = |i: usize, default: f32| -> Result<f32, String> {
            match parts.get(i) {
                None => Ok(default),
                Some(p) => p
                    .parse::<f32>()
                    .ok()
                    .filter(|v| v.is_finite() && *v >= 0.0)
                    .ok_or_else(|| {
                        format!("'{text}': write AMOUNT[,RADIUS[,THRESHOLD]], e.g. 0.5,1.0,2")
                    }),
            }
        };
        if parts.len() > 3 {
            return Err(format!("'{text}': at most AMOUNT,RADIUS,THRESHOLD"));
        }
        let unsharp = Unsharp {
            amount: number(0, 0.5)?,
            radius: number(1, 1.0)?,
            threshold: number(2, 0.0)?,
        };
        if unsharp.radius <= 0.0 {
            return Err(format!("'{text}': the radius must be above 0"));
        }
        Ok(unsharp)
    }
}

/// Converts float RGBA back to the colour type of `like` (bit depth and channels).
pub fn convert_like(image: Rgba32FImage, like: &DynamicImage) -> DynamicImage {
    let float = DynamicImage::ImageRgba32F(image);
    match like {
        DynamicImage::ImageLuma8(_) => float.to_luma8().into(),
        DynamicImage::ImageLumaA8(_) => float.to_luma_alpha8().into(),
        DynamicImage::ImageRgb8(_) => float.to_rgb8().into(),
        DynamicImage::ImageRgba8(_) => float.to_rgba8().into(),
        DynamicImage::ImageLuma16(_) => float.to_luma16().into(),
        DynamicImage::ImageLumaA16(_) => float.to_luma_alpha16().into(),
        DynamicImage::ImageRgb16(_) => float.to_rgb16().into(),
        DynamicImage::ImageRgba16(_) => float.to_rgba16().into(),
        DynamicImage::ImageRgb32F(_) => float.to_rgb32f().into(),
        _ => float,
    }
}

/// Sharpens colour (alpha untouched), keeping the image's colour type.
pub fn unsharp_mask(image: &DynamicImage, settings: Unsharp) -> DynamicImage {
    let original = image.to_rgba32f();
    let blurred = DynamicImage::ImageRgba32F(original.clone())
        .blur(settings.radius)
        .to_rgba32f();
    let threshold = settings.threshold / 255.0;
    let mut out = original;
    for (p, b) in out.pixels_mut().zip(blurred.pixels()) {
        for c in 0..3 {
            let diff = p.0[c] - b.0[c];
            if diff.abs() > threshold {
                p.0[c] = (p.0[c] + settings.amount * diff).clamp(0.0, 1.0);
            }
        }
    }
    convert_like(out, image)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{Luma, RgbImage};

    #[test]
    fn sharpening_raises_edge_contrast_and_leaves_flat_areas() {
        let step = DynamicImage::ImageRgb8(RgbImage::from_fn(32, 8, |x, _| {
            let v = if x < 16 { 80 } else { 170 };
            image::Rgb([v, v, v])
        }));
        let sharp = unsharp_mask(&step, "1.0,1.5".parse().unwrap()).to_rgb8();
        assert!(
            sharp.get_pixel(15, 4).0[0] < 80,
            "dark side of the edge darker"
        );
        assert!(sharp.get_pixel(16, 4).0[0] > 170, "light side lighter");
        assert_eq!(sharp.get_pixel(2, 4).0[0], 80, "flat area unchanged");
    }

    #[test]
    fn colour_types_are_kept_and_settings_parse() {
        let grey = DynamicImage::ImageLuma16(image::ImageBuffer::from_pixel(4, 4, Luma([1000u16])));
        assert!(matches!(
            unsharp_mask(
                &grey,
                Unsharp {
                    amount: 1.0,
                    radius: 1.0,
                    threshold: 0.0
                }
            ),
            DynamicImage::ImageLuma16(_)
        ));
        assert_eq!(
            "0.8,2,3".parse::<Unsharp>().unwrap(),
            Unsharp {
                amount: 0.8,
                radius: 2.0,
                threshold: 3.0
            }
        );
        assert!("a".parse::<Unsharp>().is_err());
        assert!("1,0".parse::<Unsharp>().is_err());
    }
}
