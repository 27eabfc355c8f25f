//! Building the proxy: Lanczos3 downscale of the upright original into its place on a
//! black canvas, always as an 8-bit image (the form every model tool reads).
//!
//! Colour layout is kept: gray stays gray, alpha stays alpha (padding is transparent black).
//! A 16-bit original is filtered at 16 bits and rounded to 8 only at the end.

use super::geometry::ProxyGeometry;
use super::resample::{blank_like, resize_lanczos3, resize_lanczos3_owned, ResampleError};
use image::{DynamicImage, GenericImage};

/// Makes the proxy canvas for `original` (already upright) as planned by `geometry`.
/// `original` may be a reduced decode of the original (same aspect, at least the scaled size).
pub fn make_proxy(
    original: &DynamicImage,
    geometry: &ProxyGeometry,
) -> Result<DynamicImage, ResampleError> {
    let scaled = resize_lanczos3(original, geometry.scaled_width, geometry.scaled_height)?;
    pad_to_canvas(to_8bit(scaled), geometry)
}

/// [`make_proxy`] for an original the caller no longer needs: alpha is premultiplied in
/// place rather than in a copy, so a large RGBA original costs no second buffer.
pub fn make_proxy_owned(
    original: DynamicImage,
    geometry: &ProxyGeometry,
) -> Result<DynamicImage, ResampleError> {
    let scaled = resize_lanczos3_owned(original, geometry.scaled_width, geometry.scaled_height)?;
    pad_to_canvas(to_8bit(scaled), geometry)
}

fn pad_to_canvas(
    scaled: DynamicImage,
    geometry: &ProxyGeometry,
) -> Result<DynamicImage, ResampleError> {
    if !geometry.is_padded() {
        return Ok(scaled);
    }
    let mut canvas = blank_like(&scaled, geometry.canvas_width, geometry.canvas_height)?;
    canvas
        .copy_from(&scaled, geometry.pad_left, geometry.pad_top)
        .map_err(|e| ResampleError::Resize(e.to_string()))?;
    Ok(canvas)
}

/// Rounds a 16-bit image to 8 bits (`round(v * 255 / 65535)`), keeping the channel layout.
#[must_use]
pub fn to_8bit(image: DynamicImage) -> DynamicImage {
    fn narrow(v: &[u16]) -> Vec<u8> {
        v.iter()
            .map(|&s| ((u32::from(s) * 255 + 32767) / 65535) as u8)
            .collect()
    }
    let (w, h) = (image.width(), image.height());
    match image {
        DynamicImage::ImageLuma16(b) => {
            DynamicImage::ImageLuma8(image::ImageBuffer::from_raw(w, h, narrow(&b)).unwrap())
        }
        DynamicImage::ImageLumaA16(b) => {
            DynamicImage::ImageLumaA8(image::ImageBuffer::from_raw(w, h, narrow(&b)).unwrap())
        }
        DynamicImage::ImageRgb16(b) => {
            DynamicImage::ImageRgb8(image::ImageBuffer::from_raw(w, h, narrow(&b)).unwrap())
        }
        DynamicImage::ImageRgba16(b) => {
            DynamicImage::ImageRgba8(image::ImageBuffer::from_raw(w, h, narrow(&b)).unwrap())
        }
        eight_bit => eight_bit,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::geometry::Target;

    #[test]
    fn padding_is_black_and_transparent() {
        let original = DynamicImage::ImageRgba8(image::RgbaImage::from_pixel(
            40,
            10,
            image::Rgba([200, 100, 50, 255]),
        ));
        let g = ProxyGeometry::plan(40, 10, Target::pixels(16, 16));
        let proxy = make_proxy(&original, &g).unwrap().into_rgba8();
        assert_eq!(proxy.dimensions(), (16, 16));
        assert_eq!(proxy.get_pixel(0, 0).0, [0, 0, 0, 0]);
        assert_eq!(proxy.get_pixel(8, 8).0, [200, 100, 50, 255]);
    }

    #[test]
    fn sixteen_bit_rounds_to_nearest() {
        let img = DynamicImage::ImageLuma16(
            image::ImageBuffer::from_raw(3, 1, vec![0, 32896, 65535]).unwrap(),
        );
        let out = to_8bit(img).into_luma8();
        assert_eq!(out.as_raw(), &vec![0, 128, 255]);
    }
}
