//! Training-set geometry: resolution presets, aspect-ratio buckets, and where a crop goes.
//!
//! Pure: sizes in, rectangles out. The `normalise` recipe decodes, asks [`plan`] what to cut
//! and how large to make it, and resamples.

use std::fmt;

/// A training resolution: a named preset or an explicit size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    /// `sdxl`, `sd15-768`, ... or `WxH` for an explicit size.
    pub name: String,
    pub width: u32,
    pub height: u32,
}

/// The presets, with their side length (seed 000's "Model-Specific Standards").
pub const PRESETS: &[(&str, u32)] = &[
    ("sd15", 512),
    ("sd15-768", 768),
    ("sdxl", 1024),
    ("sdxl-1280", 1280),
    ("flux", 1024),
    ("flux-1280", 1280),
];

impl Resolution {
    /// `sdxl` (a preset), `768` (a square) or `832x1216`.
    pub fn parse(text: &str) -> Result<Resolution, String> {
        let text = text.trim();
        if let Some((name, side)) = PRESETS.iter().find(|(n, _)| n.eq_ignore_ascii_case(text)) {
            return Ok(Resolution {
                name: name.to_string(),
                width: *side,
                height: *side,
            });
        }
        let number = |s: &str| {
            s.trim()
                .parse::<u32>()
                .ok()
                .filter(|v| (64..=8192).contains(v))
        };
        let size = match text.split_once(['x', 'X']) {
            Some((w, h)) => number(w).zip(number(h)),
            None => number(text).map(|s| (s, s)),
        };
        let names: Vec<&str> = PRESETS.iter().map(|(n, _)| *n).collect();
        let (width, height) = size.ok_or_else(|| {
            format!(
                "'{text}' is neither a preset ({}) nor a size such as 768 or 832x1216 (64 to 8192 px)",
                names.join(", ")
            )
        })?;
        Ok(Resolution {
            name: format!("{width}x{height}"),
            width,
            height,
        })
    }

    pub fn area(&self) -> u64 {
        u64::from(self.width) * u64::from(self.height)
    }
}

impl fmt::Display for Resolution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}x{})", self.name, self.width, self.height)
    }
}

/// How an image is fitted to the resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FitMode {
    /// Crop the centre to the target's aspect, then resize.
    Center,
    /// Crop to the target's aspect, placed so the strongest detail sits on a third line.
    Thirds,
    /// Resize to fit inside the target and letterbox with a colour.
    Pad,
    /// Pick the aspect-ratio bucket nearest the image's aspect, crop the minimum, resize.
    Bucket,
}

impl std::str::FromStr for FitMode {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "center" | "centre" => Ok(FitMode::Center),
            "thirds" => Ok(FitMode::Thirds),
            "pad" => Ok(FitMode::Pad),
            "bucket" => Ok(FitMode::Bucket),
            other => Err(format!("'{other}': use center, thirds, pad or bucket")),
        }
    }
}

impl FitMode {
    pub fn name(self) -> &'static str {
        match self {
            FitMode::Center => "center",
            FitMode::Thirds => "thirds",
            FitMode::Pad => "pad",
            FitMode::Bucket => "bucket",
        }
    }
}

/// Bucket sides are multiples of this, as diffusion trainers (kohya's sd-scripts) use.
pub const BUCKET_STEP: u32 = 64;

/// The aspect-ratio buckets of a resolution: every `w x h` with both sides multiples of 64,
/// each side between half and twice the preset's side, and the largest height for each width
/// whose area stays within the preset's area (kohya's `make_buckets` rule, with
/// `min_bucket_reso = side/2`, `max_bucket_reso = 2 x side`). Sorted by aspect, wide last.
pub fn buckets(resolution: &Resolution) -> Vec<(u32, u32)> {
    let area = resolution.area();
    let side = (area as f64).sqrt();
    let round_down = |v: f64| ((v / f64::from(BUCKET_STEP)).floor() as u32).max(1) * BUCKET_STEP;
    let (min, max) = (round_down(side / 2.0), round_down(side * 2.0));
    let mut out = Vec::new();
    let mut width = min;
    while width <= max {
        let height = ((area / u64::from(width)) as u32 / BUCKET_STEP * BUCKET_STEP).min(max);
        if height >= min {
            out.push((width, height));
        }
        width += BUCKET_STEP;
    }
    let mirrored: Vec<(u32, u32)> = out.iter().map(|&(w, h)| (h, w)).collect();
    out.extend(mirrored);
    out.sort_by(|a, b| {
        let ka = f64::from(a.0) / f64::from(a.1);
        let kb = f64::from(b.0) / f64::from(b.1);
        ka.total_cmp(&kb).then(a.0.cmp(&b.0))
    });
    out.dedup();
    out
}

/// The bucket whose aspect is nearest (in log ratio, so 2:1 and 1:2 are equally far from
/// 1:1) to `width x height`; among equally near ones, the largest.
pub fn choose_bucket(buckets: &[(u32, u32)], width: u32, height: u32) -> (u32, u32) {
    let aspect = (f64::from(width) / f64::from(height)).ln();
    *buckets
        .iter()
        .min_by(|a, b| {
            let da = ((f64::from(a.0) / f64::from(a.1)).ln() - aspect).abs();
            let db = ((f64::from(b.0) / f64::from(b.1)).ln() - aspect).abs();
            da.total_cmp(&db)
                .then((u64::from(b.0) * u64::from(b.1)).cmp(&(u64::from(a.0) * u64::from(a.1))))
        })
        .expect("a resolution always has buckets")
}

/// A crop rectangle in source pixels (fractional edges are allowed: the resampler takes them).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Crop {
    pub left: f64,
    pub top: f64,
    pub width: f64,
    pub height: f64,
}

/// What to do to one image: crop, resize, and (for `pad`) place on a canvas.
#[derive(Debug, Clone, PartialEq)]
pub struct FitPlan {
    pub crop: Crop,
    /// Size the crop is resampled to.
    pub resize_to: (u32, u32),
    /// Size of the output (larger than `resize_to` only for `pad`).
    pub canvas: (u32, u32),
    /// Where the resized image sits on the canvas.
    pub offset: (u32, u32),
    /// The bucket, in `bucket` mode.
    pub bucket: Option<(u32, u32)>,
    /// Output size / crop size: above 1 means the source is too small for the resolution.
    pub scale: f64,
}

/// Detail along one axis of the image, for `thirds`: a profile of column (or row) sums of
/// gradient energy, measured on a small copy and mapped onto source coordinates.
#[derive(Debug, Clone, PartialEq)]
pub struct DetailProfile {
    /// Energy per column (`horizontal`) or per row, equally spaced over the source.
    pub columns: Vec<f64>,
    pub rows: Vec<f64>,
}

/// Plans the fit of a `width x height` source.
pub fn plan(
    mode: FitMode,
    resolution: &Resolution,
    width: u32,
    height: u32,
    detail: Option<&DetailProfile>,
) -> FitPlan {
    let (w, h) = (f64::from(width), f64::from(height));
    let (target, bucket) = match mode {
        FitMode::Bucket => {
            let b = choose_bucket(&buckets(resolution), width, height);
            (b, Some(b))
        }
        _ => ((resolution.width, resolution.height), None),
    };
    let (tw, th) = (f64::from(target.0), f64::from(target.1));
    if mode == FitMode::Pad {
        let scale = (tw / w).min(th / h);
        let rw = ((w * scale).round() as u32).clamp(1, target.0);
        let rh = ((h * scale).round() as u32).clamp(1, target.1);
        return FitPlan {
            crop: Crop {
                left: 0.0,
                top: 0.0,
                width: w,
                height: h,
            },
            resize_to: (rw, rh),
            canvas: target,
            offset: ((target.0 - rw) / 2, (target.1 - rh) / 2),
            bucket,
            scale,
        };
    }
    // The largest crop of the target's aspect.
    let (cw, ch) = if w / h > tw / th {
        (h * tw / th, h)
    } else {
        (w, w * th / tw)
    };
    let place = |free: f64, size: f64, profile: Option<&Vec<f64>>| -> f64 {
        let centre = (free - size) / 2.0;
        match (mode, profile) {
            (FitMode::Thirds, Some(p)) if free - size > 0.5 => {
                thirds_offset(p, free, size).unwrap_or(centre)
            }
            _ => centre,
        }
    };
    let left = place(w, cw, detail.map(|d| &d.columns));
    let top = place(h, ch, detail.map(|d| &d.rows));
    FitPlan {
        crop: Crop {
            left,
            top,
            width: cw,
            height: ch,
        },
        resize_to: target,
        canvas: target,
        offset: (0, 0),
        bucket,
        scale: tw / cw,
    }
}

/// Offset of a crop `size` long on an axis `length` long that puts the detail's centroid on
/// the crop's first or second third line, whichever the crop can reach more closely (ties:
/// the one keeping more detail inside). `None` when the profile has no detail to go by.
fn thirds_offset(profile: &[f64], length: f64, size: f64) -> Option<f64> {
    let total: f64 = profile.iter().sum();
    if profile.is_empty() || total <= f64::EPSILON {
        return None;
    }
    let bin = length / profile.len() as f64;
    let centroid = profile
        .iter()
        .enumerate()
        .map(|(i, e)| (i as f64 + 0.5) * bin * e)
        .sum::<f64>()
        / total;
    let inside = |offset: f64| -> f64 {
        profile
            .iter()
            .enumerate()
            .filter(|(i, _)| {
                let x = (*i as f64 + 0.5) * bin;
                x >= offset && x <= offset + size
            })
            .map(|(_, e)| e)
            .sum()
    };
    [1.0 / 3.0, 2.0 / 3.0]
        .into_iter()
        .map(|third| {
            let offset = (centroid - third * size).clamp(0.0, length - size);
            let miss = ((centroid - offset) / size - third).abs();
            (offset, miss, inside(offset))
        })
        .min_by(|a, b| a.1.total_cmp(&b.1).then(b.2.total_cmp(&a.2)))
        .map(|(offset, _, _)| offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_and_explicit_sizes_parse() {
        assert_eq!(Resolution::parse("sdxl").unwrap().width, 1024);
        assert_eq!(Resolution::parse("SD15-768").unwrap().height, 768);
        assert_eq!(Resolution::parse("flux-1280").unwrap().width, 1280);
        let r = Resolution::parse("832x1216").unwrap();
        assert_eq!(
            (r.width, r.height, r.name.as_str()),
            (832, 1216, "832x1216")
        );
        assert_eq!(Resolution::parse("640").unwrap().height, 640);
        let e = Resolution::parse("sdxxl").unwrap_err();
        assert!(e.contains("sd15, sd15-768, sdxl"), "{e}");
        assert!(Resolution::parse("10x10").is_err());
    }

    #[test]
    fn buckets_stay_within_the_area_on_the_64_grid() {
        for preset in ["sd15", "sdxl", "flux-1280"] {
            let r = Resolution::parse(preset).unwrap();
            let b = buckets(&r);
            assert!(b.contains(&(r.width, r.height)), "{preset} has its square");
            for &(w, h) in &b {
                assert!(w % 64 == 0 && h % 64 == 0);
                assert!(u64::from(w) * u64::from(h) <= r.area(), "{w}x{h}");
                assert!(b.contains(&(h, w)), "mirrored");
            }
        }
    }

    #[test]
    fn known_aspects_get_their_buckets() {
        let sdxl = Resolution::parse("sdxl").unwrap();
        let b = buckets(&sdxl);
        // The 4:1 panorama (4032x1008) fits 2048x512 exactly.
        assert_eq!(choose_bucket(&b, 4032, 1008), (2048, 512));
        assert_eq!(choose_bucket(&b, 1008, 4032), (512, 2048));
        // 4:3 and 3:2 photos, the 2:3 portrait, the square.
        assert_eq!(choose_bucket(&b, 4032, 3024), (1152, 896));
        assert_eq!(choose_bucket(&b, 1800, 1200), (1216, 832));
        assert_eq!(choose_bucket(&b, 1200, 1800), (832, 1216));
        assert_eq!(choose_bucket(&b, 512, 512), (1024, 1024));
        let sd15 = Resolution::parse("sd15").unwrap();
        assert_eq!(choose_bucket(&buckets(&sd15), 4032, 1008), (1024, 256));
    }

    #[test]
    fn every_mode_lands_on_its_exact_size() {
        let r = Resolution::parse("sdxl").unwrap();
        for (w, h) in [
            (4032, 3024),
            (1800, 1200),
            (4032, 1008),
            (17, 9),
            (1024, 1024),
        ] {
            for mode in [FitMode::Center, FitMode::Thirds, FitMode::Pad] {
                let p = plan(mode, &r, w, h, None);
                assert_eq!(p.canvas, (1024, 1024), "{mode:?} {w}x{h}");
                assert!(p.crop.left >= 0.0 && p.crop.left + p.crop.width <= f64::from(w) + 1e-9);
                assert!(p.crop.top >= 0.0 && p.crop.top + p.crop.height <= f64::from(h) + 1e-9);
            }
            let p = plan(FitMode::Bucket, &r, w, h, None);
            assert_eq!(Some(p.canvas), p.bucket);
            let crop_aspect = p.crop.width / p.crop.height;
            let bucket_aspect = f64::from(p.canvas.0) / f64::from(p.canvas.1);
            assert!((crop_aspect - bucket_aspect).abs() < 1e-9);
        }
        let pad = plan(FitMode::Pad, &r, 4032, 1008, None);
        assert_eq!((pad.resize_to, pad.offset), ((1024, 256), (0, 384)));
        assert!(plan(FitMode::Center, &r, 600, 400, None).scale > 2.5);
        assert!(plan(FitMode::Center, &r, 4032, 3024, None).scale < 0.34);
    }

    #[test]
    fn thirds_puts_the_detail_on_a_third_line() {
        let r = Resolution::parse("512").unwrap();
        // A 3000x1000 image whose detail is a narrow band at x = 2400.
        let mut columns = vec![0.0; 300];
        columns[240] = 10.0;
        let detail = DetailProfile {
            columns,
            rows: vec![1.0; 100],
        };
        let p = plan(FitMode::Thirds, &r, 3000, 1000, Some(&detail));
        let at = (2405.0 - p.crop.left) / p.crop.width;
        assert!((at - 2.0 / 3.0).abs() < 0.01, "detail at {at} of the crop");
        // Without detail, thirds is centre.
        let flat = DetailProfile {
            columns: vec![0.0; 300],
            rows: vec![0.0; 100],
        };
        let c = plan(FitMode::Thirds, &r, 3000, 1000, Some(&flat));
        assert_eq!(c.crop.left, 1000.0);
    }
}
