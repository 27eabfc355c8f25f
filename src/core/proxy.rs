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
    let (x, y) = (geometry.pad_left, geometry.pad_top);
    match (&mut canvas, &scaled) {
        (DynamicImage::ImageLuma8(c), DynamicImage::ImageLuma8(s)) => paste_rows(c, s, x, y),
        (DynamicImage::ImageLumaA8(c), DynamicImage::ImageLumaA8(s)) => paste_rows(c, s, x, y),
        (DynamicImage::ImageRgb8(c), DynamicImage::ImageRgb8(s)) => paste_rows(c, s, x, y),
        (DynamicImage::ImageRgba8(c), DynamicImage::ImageRgba8(s)) => paste_rows(c, s, x, y),
        _ => canvas
            .copy_from(&scaled, x, y)
            .map_err(|e| ResampleError::Resize(e.to_string()))?,
    }
    Ok(canvas)
}

/// Copies `image` into `canvas` at (`x`, `y`) a row at a time (the generic `copy_from` goes
/// pixel by pixel through RGBA). The caller's geometry keeps `image` inside `canvas`.
fn paste_rows<P: image::Pixel>(
    canvas: &mut image::ImageBuffer<P, Vec<P::Subpixel>>,
    image: &image::ImageBuffer<P, Vec<P::Subpixel>>,
    x: u32,
    y: u32,
) {
    let channels = usize::from(P::CHANNEL_COUNT);
    let canvas_row = canvas.width() as usize * channels;
    let row = image.width() as usize * channels;
    if row == 0 {
        return;
    }
    let offset = x as usize * channels;
    let target: &mut [P::Subpixel] = canvas;
    for (r, source) in image.as_raw().chunks_exact(row).enumerate() {
        let start = (y as usize + r) * canvas_row + offset;
        target[start..start + row].copy_from_slice(source);
    }
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
    fn padding_pastes_every_row_where_the_generic_copy_does() {
        // Distinct values per pixel and channel, so a row off by one or a shifted column shows.
        let gradient = |w: u32, h: u32, channels: u32| {
            (0..w * h * channels)
                .map(|i| (i * 7 % 251) as u8)
                .collect::<Vec<u8>>()
        };
        let (w, h) = (13, 5);
        let layouts = [
            DynamicImage::ImageLuma8(
                image::ImageBuffer::from_raw(w, h, gradient(w, h, 1)).unwrap(),
            ),
            DynamicImage::ImageLumaA8(
                image::ImageBuffer::from_raw(w, h, gradient(w, h, 2)).unwrap(),
            ),
            DynamicImage::ImageRgb8(image::ImageBuffer::from_raw(w, h, gradient(w, h, 3)).unwrap()),
            DynamicImage::ImageRgba8(
                image::ImageBuffer::from_raw(w, h, gradient(w, h, 4)).unwrap(),
            ),
        ];
        for scaled in layouts {
            for (canvas_width, canvas_height) in [(13, 11), (17, 5), (20, 11)] {
                let g = ProxyGeometry {
                    original_width: w * 3,
                    original_height: h * 3,
                    canvas_width,
                    canvas_height,
                    scaled_width: w,
                    scaled_height: h,
                    pad_left: (canvas_width - w) / 2,
                    pad_top: (canvas_height - h) / 2,
                };
                let mut expected = blank_like(&scaled, g.canvas_width, g.canvas_height).unwrap();
                expected.copy_from(&scaled, g.pad_left, g.pad_top).unwrap();
                let pasted = pad_to_canvas(scaled.clone(), &g).unwrap();
                assert_eq!(
                    pasted,
                    expected,
                    "{:?} into {canvas_width}x{canvas_height}",
                    scaled.color()
                );
            }
        }
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
