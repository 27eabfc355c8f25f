//! Delta encoding: what the model changed on the proxy, stored as an image.
//!
//! 8-bit (imgproxyproc-compatible): `delta = clip(processed - proxy + 127, 0, 255)`, so 127 is
//! "no change" and changes beyond +128/-127 saturate. The refined delta carries what the main
//! one lost: `refined = clip(processed - clip(proxy + delta - 127) + 127)`, together covering
//! +/-255. 16-bit: `delta = 32768 + 128 * change` with the change in 8-bit units; the full
//! +/-255 range fits (128..65408) and fractional changes of a 16-bit processed image keep 1/128
//! of a level, so a 16-bit delta never saturates.

use super::geometry::Rect;
use image::{DynamicImage, ImageBuffer, Luma, Rgb};

/// Neutral (no change) value of an 8-bit delta.
pub const NEUTRAL_8: f32 = 127.0;
/// Neutral value of a 16-bit delta.
pub const NEUTRAL_16: f32 = 32768.0;
/// 16-bit delta units per 8-bit level of change.
pub const UNITS_PER_LEVEL_16: f32 = 128.0;

/// Bit depth of the delta image written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum DeltaDepth {
    Eight,
    Sixteen,
}

impl DeltaDepth {
    pub fn from_bits(bits: u8) -> Option<Self> {
        match bits {
            8 => Some(DeltaDepth::Eight),
            16 => Some(DeltaDepth::Sixteen),
            _ => None,
        }
    }

    /// Bits per sample: 8 or 16.
    pub fn bits(self) -> u8 {
        match self {
            DeltaDepth::Eight => 8,
            DeltaDepth::Sixteen => 16,
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DeltaError {
    #[error("the processed image is {processed_w}x{processed_h} but the proxy is {proxy_w}x{proxy_h}; the model must return an image of the proxy's size")]
    SizeMismatch {
        proxy_w: u32,
        proxy_h: u32,
        processed_w: u32,
        processed_h: u32,
    },
}

/// The delta image(s) for one processed proxy.
#[derive(Debug, Clone)]
pub struct Deltas {
    pub main: DynamicImage,
    pub refined: Option<DynamicImage>,
}

/// Colour samples of an image as floats in 8-bit units, with 1 or 3 channels.
struct Planes {
    channels: usize,
    values: Vec<f32>,
}

fn colour_planes(image: &DynamicImage, channels: usize) -> Planes {
    let values: Vec<f32> = if channels == 1 {
        match image {
            DynamicImage::ImageLuma8(b) => b.iter().map(|&v| f32::from(v)).collect(),
            DynamicImage::ImageLumaA8(b) => b.chunks_exact(2).map(|p| f32::from(p[0])).collect(),
            _ => image.to_luma32f().iter().map(|&v| v * 255.0).collect(),
        }
    } else {
        match image {
            DynamicImage::ImageRgb8(b) => b.iter().map(|&v| f32::from(v)).collect(),
            DynamicImage::ImageRgba8(b) => b
                .chunks_exact(4)
                .flat_map(|p| [f32::from(p[0]), f32::from(p[1]), f32::from(p[2])])
                .collect(),
            _ => image.to_rgb32f().iter().map(|&v| v * 255.0).collect(),
        }
    };
    Planes { channels, values }
}

/// True when the image has colour (not gray) samples.
pub fn has_colour(image: &DynamicImage) -> bool {
    image.color().has_color()
}

/// True when an RGB(A) image carries no colour: every pixel's channels within one 8-bit
/// level of each other (grey content saved as RGB, as most tools save a grey proxy).
pub fn is_neutral(image: &DynamicImage) -> bool {
    if !has_colour(image) {
        return true;
    }
    let close = |r: i32, g: i32, b: i32, tolerance: i32| {
        (r - g).abs() <= tolerance && (g - b).abs() <= tolerance && (r - b).abs() <= tolerance
    };
    match image {
        DynamicImage::ImageRgb8(b) => b.pixels().all(|p| {
            let [r, g, bl] = p.0.map(i32::from);
            close(r, g, bl, 1)
        }),
        DynamicImage::ImageRgba8(b) => b.pixels().all(|p| {
            let [r, g, bl, _] = p.0.map(i32::from);
            close(r, g, bl, 1)
        }),
        DynamicImage::ImageRgb16(b) => b.pixels().all(|p| {
            let [r, g, bl] = p.0.map(i32::from);
            close(r, g, bl, 257)
        }),
        DynamicImage::ImageRgba16(b) => b.pixels().all(|p| {
            let [r, g, bl, _] = p.0.map(i32::from);
            close(r, g, bl, 257)
        }),
        _ => {
            let rgb = image.to_rgb32f();
            rgb.pixels().all(|p| {
                let [r, g, bl] = p.0.map(|v| (v * 255.0).round() as i32);
                close(r, g, bl, 1)
            })
        }
    }
}

/// Computes the delta (and refined delta) of `processed` against `proxy`.
///
/// The delta has three channels if the proxy has colour or the processed image adds some
/// (a grey proxy returned as neutral RGB, R = G = B, keeps a one-channel delta, so a grey
/// original stays grey); alpha is ignored (the original's alpha is what the merge keeps).
pub fn compute(
    proxy: &DynamicImage,
    processed: &DynamicImage,
    depth: DeltaDepth,
    refine: bool,
) -> Result<Deltas, DeltaError> {
    if proxy.width() != processed.width() || proxy.height() != processed.height() {
        return Err(DeltaError::SizeMismatch {
            proxy_w: proxy.width(),
            proxy_h: proxy.height(),
            processed_w: processed.width(),
            processed_h: processed.height(),
        });
    }
    let channels = if has_colour(proxy) || !is_neutral(processed) {
        3
    } else {
        1
    };
    let base = colour_planes(proxy, channels);
    let target = colour_planes(processed, channels);
    let (w, h) = (proxy.width(), proxy.height());

    let changes: Vec<f32> = target
        .values
        .iter()
        .zip(&base.values)
        .map(|(t, b)| t - b)
        .collect();
    let main = match depth {
        DeltaDepth::Eight => {
            let v: Vec<u8> = changes
                .iter()
                .map(|c| (c.round() + NEUTRAL_8).clamp(0.0, 255.0) as u8)
                .collect();
            pack8(w, h, base.channels, v)
        }
        DeltaDepth::Sixteen => {
            let v: Vec<u16> = changes
                .iter()
                .map(|c| {
                    (c * UNITS_PER_LEVEL_16 + NEUTRAL_16)
                        .round()
                        .clamp(0.0, 65535.0) as u16
                })
                .collect();
            pack16(w, h, base.channels, v)
        }
    };
    let refined = refine.then(|| {
        let decoded = decode_samples(&main);
        let v: Vec<u8> = target
            .values
            .iter()
            .zip(&base.values)
            .zip(&decoded)
            .map(|((t, b), d)| {
                let intermediate = (b + d).round().clamp(0.0, 255.0);
                ((t - intermediate).round() + NEUTRAL_8).clamp(0.0, 255.0) as u8
            })
            .collect();
        pack8(w, h, base.channels, v)
    });
    Ok(Deltas { main, refined })
}

/// Decodes every colour sample of a delta image into a signed change in 8-bit units.
pub fn decode_samples(delta: &DynamicImage) -> Vec<f32> {
    match delta {
        DynamicImage::ImageLuma8(b) => b.iter().map(|&v| f32::from(v) - NEUTRAL_8).collect(),
        DynamicImage::ImageRgb8(b) => b.iter().map(|&v| f32::from(v) - NEUTRAL_8).collect(),
        DynamicImage::ImageLuma16(b) => b
            .iter()
            .map(|&v| (f32::from(v) - NEUTRAL_16) / UNITS_PER_LEVEL_16)
            .collect(),
        DynamicImage::ImageRgb16(b) => b
            .iter()
            .map(|&v| (f32::from(v) - NEUTRAL_16) / UNITS_PER_LEVEL_16)
            .collect(),
        other => decode_samples(&normalise_delta_layout(other)),
    }
}

/// Drops alpha from a delta image a tool may have saved as RGBA / gray+alpha.
#[must_use]
pub fn normalise_delta_layout(delta: &DynamicImage) -> DynamicImage {
    match delta {
        DynamicImage::ImageLumaA8(_) => DynamicImage::ImageLuma8(delta.to_luma8()),
        DynamicImage::ImageRgba8(_) => DynamicImage::ImageRgb8(delta.to_rgb8()),
        DynamicImage::ImageLumaA16(_) => DynamicImage::ImageLuma16(delta.to_luma16()),
        DynamicImage::ImageRgba16(_)
        | DynamicImage::ImageRgb32F(_)
        | DynamicImage::ImageRgba32F(_) => DynamicImage::ImageRgb16(delta.to_rgb16()),
        other => other.clone(),
    }
}

fn pack8(w: u32, h: u32, channels: usize, v: Vec<u8>) -> DynamicImage {
    if channels == 1 {
        DynamicImage::ImageLuma8(ImageBuffer::<Luma<u8>, _>::from_raw(w, h, v).unwrap())
    } else {
        DynamicImage::ImageRgb8(ImageBuffer::<Rgb<u8>, _>::from_raw(w, h, v).unwrap())
    }
}

fn pack16(w: u32, h: u32, channels: usize, v: Vec<u16>) -> DynamicImage {
    if channels == 1 {
        DynamicImage::ImageLuma16(ImageBuffer::<Luma<u16>, _>::from_raw(w, h, v).unwrap())
    } else {
        DynamicImage::ImageRgb16(ImageBuffer::<Rgb<u16>, _>::from_raw(w, h, v).unwrap())
    }
}

/// One delta to apply: an 8/16-bit gray or RGB delta image and the area of it that maps
/// onto the whole original.
#[derive(Debug, Clone)]
pub struct DeltaLayer {
    pub image: DynamicImage,
    pub area: Rect,
}

impl DeltaLayer {
    pub(crate) fn channels(&self) -> usize {
        usize::from(self.image.color().channel_count())
    }

    /// Decodes row `y` of the layer's area into signed changes (8-bit units).
    pub(crate) fn decode_row(&self, y: u32, out: &mut [f32]) {
        let c = self.channels();
        let stride = self.image.width() as usize * c;
        let start = (self.area.y + y) as usize * stride + self.area.x as usize * c;
        let len = self.area.width as usize * c;
        match &self.image {
            DynamicImage::ImageLuma8(b) => decode8(&b.as_raw()[start..start + len], out),
            DynamicImage::ImageRgb8(b) => decode8(&b.as_raw()[start..start + len], out),
            DynamicImage::ImageLuma16(b) => decode16(&b.as_raw()[start..start + len], out),
            DynamicImage::ImageRgb16(b) => decode16(&b.as_raw()[start..start + len], out),
            _ => unreachable!("layout checked in prepare"),
        }
    }
}

fn decode8(src: &[u8], out: &mut [f32]) {
    for (o, &v) in out.iter_mut().zip(src) {
        *o = f32::from(v) - NEUTRAL_8;
    }
}

fn decode16(src: &[u16], out: &mut [f32]) {
    for (o, &v) in out.iter_mut().zip(src) {
        *o = (f32::from(v) - NEUTRAL_16) / UNITS_PER_LEVEL_16;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rgb(w: u32, h: u32, v: Vec<u8>) -> DynamicImage {
        DynamicImage::ImageRgb8(ImageBuffer::from_raw(w, h, v).unwrap())
    }

    #[test]
    fn identical_images_give_an_all_neutral_delta() {
        let a = rgb(2, 1, vec![0, 50, 255, 10, 20, 30]);
        let d = compute(&a, &a, DeltaDepth::Eight, true).unwrap();
        assert!(d.main.to_rgb8().iter().all(|&v| v == 127));
        assert!(d.refined.unwrap().to_rgb8().iter().all(|&v| v == 127));
    }

    #[test]
    fn eight_bit_delta_saturates_at_plus_128_and_minus_127() {
        let proxy = rgb(1, 1, vec![0, 255, 100]);
        let processed = rgb(1, 1, vec![255, 0, 101]);
        let d = compute(&proxy, &processed, DeltaDepth::Eight, false).unwrap();
        assert_eq!(d.main.to_rgb8().as_raw(), &vec![255, 0, 128]);
    }

    /// Applies main then refined delta the way the merge does, at proxy resolution.
    fn reconstruct(proxy: &[f32], deltas: &Deltas) -> Vec<f32> {
        let main = decode_samples(&deltas.main);
        let refined = deltas.refined.as_ref().map(decode_samples);
        proxy
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let step = (p + main[i]).clamp(0.0, 255.0);
                refined
                    .as_ref()
                    .map_or(step, |r| (step + r[i]).clamp(0.0, 255.0))
            })
            .collect()
    }

    #[test]
    fn refined_delta_recovers_changes_from_minus_254_to_plus_255() {
        // Neutral 127 makes each 8-bit delta span -127..+128, so the pair spans -254..+256.
        let proxy = rgb(2, 1, vec![0, 255, 100, 1, 254, 3]);
        let processed = rgb(2, 1, vec![255, 1, 101, 0, 0, 255]);
        let d = compute(&proxy, &processed, DeltaDepth::Eight, true).unwrap();
        let out = reconstruct(&[0.0, 255.0, 100.0, 1.0, 254.0, 3.0], &d);
        assert_eq!(out, vec![255.0, 1.0, 101.0, 0.0, 0.0, 255.0]);
    }

    #[test]
    fn refined_pair_misses_a_full_minus_255_by_one_level() {
        // Pinned on purpose: the imgproxyproc format cannot express -255; --delta-depth 16 can.
        let proxy = rgb(1, 1, vec![255, 255, 255]);
        let processed = rgb(1, 1, vec![0, 0, 0]);
        let d = compute(&proxy, &processed, DeltaDepth::Eight, true).unwrap();
        assert_eq!(reconstruct(&[255.0; 3], &d), vec![1.0; 3]);
        let d16 = compute(&proxy, &processed, DeltaDepth::Sixteen, false).unwrap();
        assert_eq!(reconstruct(&[255.0; 3], &d16), vec![0.0; 3]);
    }

    #[test]
    fn sixteen_bit_delta_never_saturates() {
        let proxy = rgb(1, 1, vec![0, 255, 100]);
        let processed = rgb(1, 1, vec![255, 0, 101]);
        let d = compute(&proxy, &processed, DeltaDepth::Sixteen, false).unwrap();
        assert_eq!(d.main.color(), image::ColorType::Rgb16);
        assert_eq!(decode_samples(&d.main), vec![255.0, -255.0, 1.0]);
    }

    #[test]
    fn a_gray_proxy_against_colour_output_gives_a_colour_delta() {
        let proxy = DynamicImage::ImageLuma8(ImageBuffer::from_raw(1, 1, vec![100]).unwrap());
        let processed = rgb(1, 1, vec![110, 100, 90]);
        let d = compute(&proxy, &processed, DeltaDepth::Eight, false).unwrap();
        assert_eq!(d.main.to_rgb8().as_raw(), &vec![137, 127, 117]);
    }

    #[test]
    fn size_mismatch_names_both_sizes() {
        let err = compute(
            &rgb(2, 1, vec![0; 6]),
            &rgb(1, 1, vec![0; 3]),
            DeltaDepth::Eight,
            false,
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("1x1") && text.contains("2x1"), "{text}");
    }
}
