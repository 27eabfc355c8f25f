//! Classical corrections around a model run. Before the model, in this order: gray-world
//! white balance, exposure, JPEG deblocking, and an edge-preserving (bilateral) denoise, so
//! the model does not enlarge colour casts, blocks and noise. After it: median or bilateral
//! smoothing against GAN "swirls". Every function keeps the image's colour type (bit depth,
//! gray, alpha) and leaves alpha untouched.

use super::filters::{convert_like, unsharp_mask, Unsharp};
use image::{DynamicImage, Rgba32FImage};
use rayon::prelude::*;

/// Exposure correction: a gain in linear light.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Exposure {
    /// Brings the median brightness to sRGB 0.45 (a mid-grey), gain limited to 1/4..4.
    Auto,
    /// A fixed change in stops (EV): +1 doubles the light.
    Stops(f32),
}

impl std::str::FromStr for Exposure {
    type Err = String;

    /// `auto`, or stops like `+0.5` / `-1`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("auto") {
            return Ok(Exposure::Auto);
        }
        text.parse::<f32>()
            .ok()
            .filter(|s| s.is_finite() && s.abs() <= 4.0)
            .map(Exposure::Stops)
            .ok_or_else(|| format!("'{text}': write auto, or stops between -4 and +4 (e.g. +0.5)"))
    }
}

/// Bilateral filter settings: spatial sigma in pixels, range sigma in 8-bit levels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bilateral {
    pub sigma_spatial: f32,
    pub sigma_range: f32,
}

impl Default for Bilateral {
    fn default() -> Self {
        Bilateral {
            sigma_spatial: 2.0,
            sigma_range: 20.0,
        }
    }
}

fn parse_bilateral(args: Option<&str>, text: &str) -> Result<Bilateral, String> {
    let Some(args) = args else {
        return Ok(Bilateral::default());
    };
    let bad = || {
        format!("'{text}': write bilateral or bilateral:SIGMA_PIXELS,SIGMA_LEVELS (e.g. bilateral:2,20)")
    };
    let (s, r) = args.split_once(',').ok_or_else(bad)?;
    let value = |v: &str| {
        v.trim()
            .parse::<f32>()
            .ok()
            .filter(|v| v.is_finite() && *v > 0.0)
    };
    match (value(s), value(r)) {
        (Some(s), Some(r)) if s <= 16.0 => Ok(Bilateral {
            sigma_spatial: s,
            sigma_range: r,
        }),
        _ => Err(bad()),
    }
}

impl std::str::FromStr for Bilateral {
    type Err = String;

    /// `bilateral` (2 px, 20 levels) or `bilateral:SIGMA_PIXELS,SIGMA_LEVELS`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (name, args) = match text.trim().split_once(':') {
            Some((n, a)) => (n, Some(a)),
            None => (text.trim(), None),
        };
        if !name.eq_ignore_ascii_case("bilateral") {
            return Err(format!(
                "'{text}': the denoiser is bilateral[:SIGMA_PIXELS,SIGMA_LEVELS]"
            ));
        }
        parse_bilateral(args, text)
    }
}

/// Smoothing after the model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Smoothing {
    /// Per-channel median over a `(2r+1)^2` window.
    Median {
        radius: u32,
    },
    Bilateral(Bilateral),
}

impl std::str::FromStr for Smoothing {
    type Err = String;

    /// `median`, `median:R`, `bilateral` or `bilateral:SIGMA_PIXELS,SIGMA_LEVELS`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (name, args) = match text.trim().split_once(':') {
            Some((n, a)) => (n, Some(a)),
            None => (text.trim(), None),
        };
        match name.to_ascii_lowercase().as_str() {
            "median" => {
                let radius = match args {
                    None => 1,
                    Some(a) => a
                        .trim()
                        .parse::<u32>()
                        .ok()
                        .filter(|r| (1..=4).contains(r))
                        .ok_or_else(|| format!("'{text}': the median radius is 1 to 4"))?,
                };
                Ok(Smoothing::Median { radius })
            }
            "bilateral" => parse_bilateral(args, text).map(Smoothing::Bilateral),
            _ => Err(format!(
                "'{text}': write median[:RADIUS] or bilateral[:SIGMA_PIXELS,SIGMA_LEVELS]"
            )),
        }
    }
}

/// The corrections before the model. Every field defaults to off.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PreFilters {
    /// Gray-world white balance: scale each channel so the three means agree.
    pub white_balance: bool,
    pub exposure: Option<Exposure>,
    /// Smooth small steps on the 8x8 JPEG block grid, leaving real edges.
    pub deblock: bool,
    pub denoise: Option<Bilateral>,
}

impl PreFilters {
    pub fn is_empty(&self) -> bool {
        *self == PreFilters::default()
    }

    /// Applies the corrections that are on, in order (the image comes back as it was when
    /// none is).
    pub fn apply(&self, image: DynamicImage) -> DynamicImage {
        if self.is_empty() {
            return image;
        }
        let mut pixels = image.to_rgba32f();
        if self.white_balance {
            gray_world(&mut pixels);
        }
        if let Some(exposure) = self.exposure {
            expose(&mut pixels, exposure);
        }
        if self.deblock {
            deblock(&mut pixels);
        }
        if let Some(settings) = self.denoise {
            pixels = bilateral(&pixels, settings);
        }
        convert_like(pixels, &image)
    }

    /// What was applied, for sidecars.
    pub fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "white_balance": self.white_balance.then_some("gray-world"),
            "exposure": self.exposure.map(|e| match e {
                Exposure::Auto => "auto".to_string(),
                Exposure::Stops(s) => format!("{s:+}"),
            }),
            "deblock": self.deblock,
            "denoise": self.denoise.map(|b| format!("bilateral:{},{}", b.sigma_spatial, b.sigma_range)),
        })
    }
}

/// What runs after the model, in order: `smoothing`, then the unsharp mask `sharpen`.
pub fn after_model(
    image: DynamicImage,
    smoothing: Option<Smoothing>,
    sharpen: Option<Unsharp>,
) -> DynamicImage {
    let smoothed = match smoothing {
        Some(s) => smooth(&image, s),
        None => image,
    };
    match sharpen {
        Some(settings) => unsharp_mask(&smoothed, settings),
        None => smoothed,
    }
}

/// Smooths colour after the model, keeping the colour type.
pub fn smooth(image: &DynamicImage, smoothing: Smoothing) -> DynamicImage {
    let pixels = image.to_rgba32f();
    let out = match smoothing {
        Smoothing::Median { radius } => median(&pixels, radius),
        Smoothing::Bilateral(settings) => bilateral(&pixels, settings),
    };
    convert_like(out, image)
}

/// Visible pixels (alpha above zero) carry the statistics; transparent ones only follow.
fn visible(p: &image::Rgba<f32>) -> bool {
    p.0[3] > 0.0
}

fn gray_world(img: &mut Rgba32FImage) {
    let mut sums = [0f64; 3];
    let mut n = 0f64;
    for p in img.pixels().filter(|p| visible(p)) {
        for (s, v) in sums.iter_mut().zip(p.0) {
            *s += f64::from(v);
        }
        n += 1.0;
    }
    if n == 0.0 || sums.iter().any(|s| *s <= 0.0) {
        return;
    }
    let gray = (sums[0] + sums[1] + sums[2]) / 3.0;
    let gains = sums.map(|s| (gray / s).clamp(0.5, 2.0) as f32);
    for p in img.pixels_mut() {
        for (v, g) in p.0.iter_mut().zip(gains) {
            *v = (*v * g).clamp(0.0, 1.0);
        }
    }
}

fn to_linear(v: f32) -> f32 {
    if v <= 0.04045 {
        v / 12.92
    } else {
        ((v + 0.055) / 1.055).powf(2.4)
    }
}

fn to_srgb(v: f32) -> f32 {
    if v <= 0.003_130_8 {
        v * 12.92
    } else {
        1.055 * v.powf(1.0 / 2.4) - 0.055
    }
}

fn expose(img: &mut Rgba32FImage, exposure: Exposure) {
    let gain = match exposure {
        Exposure::Stops(stops) => 2f32.powf(stops),
        Exposure::Auto => {
            let mut histogram = [0u64; 256];
            let mut n = 0u64;
            for p in img.pixels().filter(|p| visible(p)) {
                let luma = 0.2126 * p.0[0] + 0.7152 * p.0[1] + 0.0722 * p.0[2];
                histogram[(luma.clamp(0.0, 1.0) * 255.0).round() as usize] += 1;
                n += 1;
            }
            let mut seen = 0;
            let median = histogram
                .iter()
                .position(|&count| {
                    seen += count;
                    seen * 2 >= n
                })
                .unwrap_or(128) as f32
                / 255.0;
            (to_linear(0.45) / to_linear(median.max(1.0 / 255.0))).clamp(0.25, 4.0)
        }
    };
    for p in img.pixels_mut() {
        for v in &mut p.0[..3] {
            *v = to_srgb((to_linear(*v) * gain).clamp(0.0, 1.0));
        }
    }
}

/// Smooths small steps across the 8x8 block grid (in 8-bit levels: a step under 12 with
/// both sides flat within 4), as a video deblocking filter does; real edges are larger.
fn deblock(img: &mut Rgba32FImage) {
    const STEP: f32 = 12.0 / 255.0;
    const FLAT: f32 = 4.0 / 255.0;
    let (w, h) = (img.width() as usize, img.height() as usize);
    let filter = |px: [f32; 4]| -> Option<[f32; 4]> {
        let [p1, p0, q0, q1] = px;
        if (p0 - q0).abs() >= STEP || (p1 - p0).abs() >= FLAT || (q1 - q0).abs() >= FLAT {
            return None;
        }
        let d = (q0 - p0) / 4.0;
        Some([p1 + d / 2.0, p0 + d, q0 - d, q1 - d / 2.0])
    };
    let buffer: &mut [f32] = img;
    for pass in 0..2 {
        // pass 0: vertical block boundaries (across x); pass 1: horizontal ones (across y).
        let (lines, length) = if pass == 0 { (h, w) } else { (w, h) };
        for line in 0..lines {
            for edge in (8..length.saturating_sub(1)).step_by(8) {
                let at = |k: usize| {
                    if pass == 0 {
                        (line * w + k) * 4
                    } else {
                        (k * w + line) * 4
                    }
                };
                let taps = [at(edge - 2), at(edge - 1), at(edge), at(edge + 1)];
                for c in 0..3 {
                    let values = taps.map(|t| buffer[t + c]);
                    if let Some(out) = filter(values) {
                        for (t, v) in taps.iter().zip(out) {
                            buffer[t + c] = v;
                        }
                    }
                }
            }
        }
    }
}

fn bilateral(img: &Rgba32FImage, settings: Bilateral) -> Rgba32FImage {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let radius = (2.0 * settings.sigma_spatial).ceil() as isize;
    let spatial: Vec<f32> = (-radius..=radius)
        .flat_map(|dy| {
            (-radius..=radius).map(move |dx| {
                (-((dx * dx + dy * dy) as f32) / (2.0 * settings.sigma_spatial.powi(2))).exp()
            })
        })
        .collect();
    let range = 2.0 * (settings.sigma_range / 255.0).powi(2);
    let src: &[f32] = img;
    let mut out = img.clone();
    let side = (2 * radius + 1) as usize;
    out.par_chunks_mut(w * 4).enumerate().for_each(|(y, row)| {
        for x in 0..w {
            let centre = &src[(y * w + x) * 4..][..3];
            let mut acc = [0f32; 3];
            let mut total = 0f32;
            for dy in -radius..=radius {
                let yy = y as isize + dy;
                if yy < 0 || yy >= h as isize {
                    continue;
                }
                for dx in -radius..=radius {
                    let xx = x as isize + dx;
                    if xx < 0 || xx >= w as isize {
                        continue;
                    }
                    let q = &src[(yy as usize * w + xx as usize) * 4..][..3];
                    let d2 = (q[0] - centre[0]).powi(2)
                        + (q[1] - centre[1]).powi(2)
                        + (q[2] - centre[2]).powi(2);
                    let weight = spatial[(dy + radius) as usize * side + (dx + radius) as usize]
                        * (-d2 / range).exp();
                    for (a, v) in acc.iter_mut().zip(q) {
                        *a += weight * v;
                    }
                    total += weight;
                }
            }
            for (c, a) in acc.iter().enumerate() {
                row[x * 4 + c] = a / total;
            }
        }
    });
    out
}

fn median(img: &Rgba32FImage, radius: u32) -> Rgba32FImage {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let r = radius as usize;
    let src: &[f32] = img;
    let mut out = img.clone();
    out.par_chunks_mut(w * 4).enumerate().for_each(|(y, row)| {
        let mut window = Vec::with_capacity((2 * r + 1).pow(2));
        for x in 0..w {
            for c in 0..3 {
                window.clear();
                for yy in y.saturating_sub(r)..=(y + r).min(h - 1) {
                    for xx in x.saturating_sub(r)..=(x + r).min(w - 1) {
                        window.push(src[(yy * w + xx) * 4 + c]);
                    }
                }
                let middle = window.len() / 2;
                let (_, m, _) = window.select_nth_unstable_by(middle, f32::total_cmp);
                row[x * 4 + c] = *m;
            }
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{Rgb, RgbImage, Rgba, RgbaImage};

    fn noisy_step() -> DynamicImage {
        DynamicImage::ImageRgb8(RgbImage::from_fn(48, 24, |x, y| {
            let base = if x < 24 { 60i32 } else { 190 };
            let noise = ((x * 7 + y * 13) % 11) as i32 - 5;
            let v = (base + 2 * noise) as u8;
            Rgb([v, v, v])
        }))
    }

    fn spread(img: &RgbImage, xs: std::ops::Range<u32>) -> f32 {
        let values: Vec<f32> = img
            .enumerate_pixels()
            .filter(|(x, _, _)| xs.contains(x))
            .map(|(_, _, p)| f32::from(p.0[0]))
            .collect();
        let mean = values.iter().sum::<f32>() / values.len() as f32;
        (values.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / values.len() as f32).sqrt()
    }

    #[test]
    fn bilateral_denoise_flattens_noise_and_keeps_the_edge() {
        let input = noisy_step();
        let out = PreFilters {
            denoise: Some(Bilateral::default()),
            ..Default::default()
        }
        .apply(input.clone())
        .to_rgb8();
        let before = spread(&input.to_rgb8(), 4..20);
        let after = spread(&out, 4..20);
        assert!(after < before / 2.0, "noise {before:.2} -> {after:.2}");
        // The edge keeps its full height: no blur across 130 levels.
        let (left, right) = (out.get_pixel(22, 12).0[0], out.get_pixel(25, 12).0[0]);
        assert!(left < 75 && right > 175, "edge {left} | {right}");
    }

    #[test]
    fn median_removes_an_isolated_speck() {
        let mut img = RgbImage::from_pixel(9, 9, Rgb([100, 100, 100]));
        img.put_pixel(4, 4, Rgb([255, 0, 255]));
        let out = smooth(&DynamicImage::ImageRgb8(img), "median".parse().unwrap()).to_rgb8();
        assert_eq!(out.get_pixel(4, 4).0, [100, 100, 100]);
    }

    #[test]
    fn gray_world_neutralises_a_cast_and_exposure_brightens_in_stops() {
        let cast = DynamicImage::ImageRgb8(RgbImage::from_fn(16, 16, |x, y| {
            let v = (40 + x * 8 + y * 2) as f32;
            Rgb([(v * 1.3) as u8, v as u8, (v * 0.7) as u8])
        }));
        let balanced = PreFilters {
            white_balance: true,
            ..Default::default()
        }
        .apply(cast.clone())
        .to_rgb8();
        let means: Vec<f32> = (0..3)
            .map(|c| balanced.pixels().map(|p| f32::from(p.0[c])).sum::<f32>() / 256.0)
            .collect();
        assert!((means[0] - means[2]).abs() < 2.0, "{means:?}");

        let grey = DynamicImage::ImageRgb8(RgbImage::from_pixel(4, 4, Rgb([60, 60, 60])));
        let up = PreFilters {
            exposure: Some("+1".parse().unwrap()),
            ..Default::default()
        }
        .apply(grey.clone())
        .to_rgb8();
        // sRGB 60 is 0.0452 linear; doubled, 0.0904 linear, is sRGB 85.
        assert_eq!(up.get_pixel(0, 0).0, [85, 85, 85]);
        let auto = PreFilters {
            exposure: Some(Exposure::Auto),
            ..Default::default()
        }
        .apply(grey.clone())
        .to_rgb8();
        assert!(
            (114..=116).contains(&auto.get_pixel(0, 0).0[0]),
            "mid-grey after auto"
        );
    }

    #[test]
    fn deblocking_smooths_block_steps_but_not_edges() {
        let blocky = DynamicImage::ImageRgb8(RgbImage::from_fn(32, 8, |x, _| {
            let v = match x / 8 {
                0 => 100,
                1 => 106,
                2 => 106,
                _ => 230,
            };
            Rgb([v, v, v])
        }));
        let out = PreFilters {
            deblock: true,
            ..Default::default()
        }
        .apply(blocky.clone())
        .to_rgb8();
        let row: Vec<u8> = (0..32).map(|x| out.get_pixel(x, 4).0[0]).collect();
        assert!(
            row[7] > 100 && row[8] < 106,
            "the small step is softened: {row:?}"
        );
        assert_eq!(
            (row[23], row[24]),
            (106, 230),
            "the real edge stays: {row:?}"
        );
    }

    #[test]
    fn alpha_and_colour_types_survive_and_settings_parse() {
        let rgba = DynamicImage::ImageRgba8(RgbaImage::from_fn(12, 12, |x, y| {
            Rgba([(x * 20) as u8, (y * 20) as u8, 90, (x * y) as u8])
        }));
        let out = smooth(&rgba, "bilateral:1,10".parse().unwrap());
        assert_eq!(out.color(), rgba.color());
        let alpha = |i: &DynamicImage| i.to_rgba8().pixels().map(|p| p.0[3]).collect::<Vec<_>>();
        assert_eq!(alpha(&out), alpha(&rgba));
        assert!("median:9".parse::<Smoothing>().is_err());
        assert!("gaussian".parse::<Smoothing>().is_err());
        assert!("bilateral:2".parse::<Bilateral>().is_err());
        assert!("+9".parse::<Exposure>().is_err());
        assert_eq!("-0.5".parse::<Exposure>().unwrap(), Exposure::Stops(-0.5));
    }
}
