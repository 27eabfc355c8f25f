//! darkroom's JPEG decoding against libjpeg-turbo, the reference decoder, on a corpus made
//! in the test (`tests/tools/jpeg_corpus.py`: baseline and progressive; 4:4:4, 4:2:2, 4:2:0
//! and 4:4:0; restart intervals; grayscale, Adobe CMYK and YCCK; odd sizes down to 1xN and
//! Nx1; a progressive scan script with split bands and refinements; arithmetic coding;
//! 12-bit; truncated and corrupted files).
//!
//! - Full-size decodes (`io::decode`, what every recipe reads) match libjpeg-turbo's within
//!   [`FULL_PSNR_MIN`] and [`FULL_MAX_ABS`] ([`full_bound`] states the one exception).
//! - Reduced decodes at 1/2, 1/4 and 1/8 (the proxy path: darkroom's own decoder; what it
//!   does not take, CMYK and YCCK here, is decoded at full size) are within [`SCALED_PSNR_MIN`]
//!   and [`SCALED_MAX_ABS`] of libjpeg-turbo's own DCT-scaled decodes, and within one level
//!   at 1/8 where no component is subsampled (both are then each block's mean). The two
//!   reductions differ by design: darkroom keeps each block's n x n lowest frequencies
//!   (libjpeg 7's DCT scaling, as jpeg-decoder does) and upsamples subsampled chroma, where
//!   libjpeg-turbo's 1/2 and 1/4 transforms (`jidctred.c`) fold the higher frequencies in,
//!   close to a block average, and decode subsampled chroma with a larger transform instead
//!   of upsampling it. The proxy is resampled from twice its size either way.
//! - darkroom's other reductions (3/8, 5/8, 6/8, 7/8), which libjpeg-turbo's Pillow build
//!   does not offer, are within [`RESIZED_PSNR_MIN`] of the full decode resized (Lanczos3)
//!   the same way: padded to whole blocks, scaled by n/8, cropped.
//! - A progressive file and the baseline file with the same coefficients reduce to the same
//!   pixels, exactly.
//! - Both decoders give the same verdict (accept or refuse), or the difference is one of
//!   [`documented_difference`]'s, with the reason it gives.

mod common;

use darkroom::io::decode::{self, DecodeError, DecodeLimits};
use darkroom::io::jpeg_reduced;
use image::DynamicImage;
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;

/// Full-size decodes: PSNR over every sample, and the largest difference of one sample.
const FULL_PSNR_MIN: f64 = 45.0;
const FULL_MAX_ABS: u8 = 4;
/// Reduced decodes at 1/2, 1/4 and 1/8 against libjpeg-turbo's scaled decodes.
const SCALED_PSNR_MIN: f64 = 29.0;
const SCALED_MAX_ABS: u8 = 100;
/// darkroom's 3/8, 5/8, 6/8 and 7/8 reductions against the full decode resized.
const RESIZED_PSNR_MIN: f64 = 30.0;

/// The full-size bound for a case: PSNR, largest difference, and why it differs from the
/// general one.
fn full_bound(case: &Value) -> (f64, u8, &'static str) {
    if case["features"]["size"]
        .as_str()
        .is_some_and(|s| s.starts_with("1x"))
    {
        return (
            40.0,
            13,
            "one pixel wide, 4:2:0: zune-jpeg's vertical chroma upsampling differs from \
             libjpeg-turbo's at a one-pixel width",
        );
    }
    (FULL_PSNR_MIN, FULL_MAX_ABS, "")
}

/// A verdict of darkroom's that differs from libjpeg-turbo's on purpose: the reason, when
/// darkroom's error is the expected one.
fn documented_difference(case: &Value, error: &DecodeError) -> Option<&'static str> {
    let warning = case["warning"].as_str().unwrap_or("");
    if warning.contains("Premature end of JPEG file") {
        return matches!(error, DecodeError::TruncatedJpeg).then_some(
            "a JPEG without its end-of-image marker may still be being written: darkroom \
             refuses it (and the daemon waits incomplete_grace for the writer) where \
             libjpeg-turbo warns and fills the rest with grey",
        );
    }
    let coding = case["features"]["coding"].as_str().unwrap_or("");
    let bits = case["features"]["bits"].as_u64().unwrap_or(8);
    match error {
        DecodeError::UnsupportedJpeg {
            coding: refused, ..
        } => {
            if coding.starts_with("arithmetic") && *refused == "arithmetic-coded" {
                Some(
                    "arithmetic coding (rare outside archives) is refused with the lossless \
                     jpegtran command that makes the file readable",
                )
            } else if bits == 12 && *refused == "12-bit" {
                Some("12-bit JPEGs are refused with the advice to convert them to 16-bit PNG or TIFF")
            } else {
                None
            }
        }
        _ => None,
    }
}

fn corpus(dir: &Path) -> Vec<Value> {
    let status = std::process::Command::new(common::venv_bin("python"))
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tools/jpeg_corpus.py"))
        .arg(dir)
        .arg(common::shared_dir().join("testdata"))
        .status()
        .expect("the project venv's python runs (scripts/setup-venv)");
    assert!(status.success(), "jpeg_corpus.py failed");
    let manifest = std::fs::read_to_string(dir.join("manifest.json")).unwrap();
    serde_json::from_str::<Vec<Value>>(&manifest).unwrap()
}

/// PSNR and largest sample difference of `ours` against `reference` (same size), compared
/// in the reference's colour type (gray or RGB).
fn difference(ours: &DynamicImage, reference: &DynamicImage) -> (f64, u8) {
    assert_eq!(
        (ours.width(), ours.height()),
        (reference.width(), reference.height())
    );
    let (a, b): (Vec<u8>, Vec<u8>) = if reference.color().channel_count() == 1 {
        (ours.to_luma8().into_raw(), reference.to_luma8().into_raw())
    } else {
        (ours.to_rgb8().into_raw(), reference.to_rgb8().into_raw())
    };
    let mut squares = 0f64;
    let mut max = 0u8;
    for (x, y) in a.iter().zip(&b) {
        let d = x.abs_diff(*y);
        max = max.max(d);
        squares += f64::from(d) * f64::from(d);
    }
    let mse = squares / a.len() as f64;
    let psnr = if mse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (255.0f64 * 255.0 / mse).log10()
    };
    (psnr, max)
}

/// `image` as a decode at `n`/8 covers it: padded to whole 8x8 blocks by repeating its last
/// row and column (as encoders pad), resized by n/8 (Lanczos3), cropped to the reduced size.
fn resized_as_reduced(image: &DynamicImage, n: u32) -> DynamicImage {
    let (width, height) = (image.width(), image.height());
    let (padded_w, padded_h) = (width.div_ceil(8) * 8, height.div_ceil(8) * 8);
    let rgb = image.to_rgb8();
    let padded = image::RgbImage::from_fn(padded_w, padded_h, |x, y| {
        *rgb.get_pixel(x.min(width - 1), y.min(height - 1))
    });
    let resized = DynamicImage::ImageRgb8(padded).resize_exact(
        padded_w * n / 8,
        padded_h * n / 8,
        image::imageops::FilterType::Lanczos3,
    );
    let cropped = resized.crop_imm(0, 0, (width * n).div_ceil(8), (height * n).div_ceil(8));
    if image.color().channel_count() == 1 {
        DynamicImage::ImageLuma8(cropped.to_luma8())
    } else {
        cropped
    }
}

fn open(dir: &Path, name: &str) -> DynamicImage {
    image::open(dir.join(name)).unwrap()
}

fn reduced_image(reduced: jpeg_reduced::Reduced) -> DynamicImage {
    if reduced.channels == 1 {
        DynamicImage::ImageLuma8(
            image::GrayImage::from_raw(reduced.width, reduced.height, reduced.pixels).unwrap(),
        )
    } else {
        DynamicImage::ImageRgb8(
            image::RgbImage::from_raw(reduced.width, reduced.height, reduced.pixels).unwrap(),
        )
    }
}

/// The `needed` size that makes the proxy path decode at `eighths`/8: the proxy path keeps
/// a reducing gap of 2 and takes the most reduction that leaves both sides at least that.
fn needed_for(eighths: u32) -> impl Fn(u32, u32) -> (u32, u32) {
    move |w, h| {
        let side = |s: u32| ((s * eighths).div_ceil(8) / 2).max(1);
        (side(w), side(h))
    }
}

#[test]
fn darkroom_decodes_jpegs_as_libjpeg_turbo_does() {
    let dir = tempfile::tempdir().unwrap();
    let cases = corpus(dir.path());
    let limits = DecodeLimits::default();
    let mut failures = Vec::new();
    let mut fail = |text: String| {
        eprintln!("FAIL {text}");
        failures.push(text);
    };
    // Each file's own reduced decodes at 1/8 ... 7/8, for the progressive twins.
    let mut reductions: HashMap<String, Vec<Option<jpeg_reduced::Reduced>>> = HashMap::new();
    for case in &cases {
        let name = case["name"].as_str().unwrap();
        let bytes = std::fs::read(dir.path().join(case["file"].as_str().unwrap())).unwrap();
        let accepted = case["reference"] == "accept";
        let clean = accepted && case["warning"].is_null();
        let full = decode::decode_bytes(&bytes, &limits);
        match (&full, accepted) {
            (Ok(loaded), true) => {
                let reference = open(dir.path(), &format!("{name}.full.png"));
                let (psnr, max) = difference(&loaded.image, &reference);
                let (psnr_min, max_abs, why) = full_bound(case);
                eprintln!("{name:32} full  psnr {psnr:6.2} max {max:3} {why}");
                if clean && (psnr < psnr_min || max > max_abs) {
                    fail(format!("{name}: full decode psnr {psnr:.2} max {max}"));
                }
            }
            (Err(error), true) => match documented_difference(case, error) {
                Some(reason) => eprintln!("{name:32} refused ({error}): {reason}"),
                None => fail(format!(
                    "{name}: libjpeg-turbo decodes it{}, darkroom refuses: {error}",
                    case["warning"]
                        .as_str()
                        .map(|w| format!(" (warning: {w})"))
                        .unwrap_or_default()
                )),
            },
            (Ok(_), false) => fail(format!(
                "{name}: libjpeg-turbo refuses it ({}), darkroom decodes it",
                case["error"]
            )),
            (Err(error), false) => eprintln!("{name:32} refused by both: {error}"),
        }
        if !clean {
            continue;
        }
        let Ok(loaded) = &full else { continue };
        let (width, height) = (loaded.image.width(), loaded.image.height());
        let reference = open(dir.path(), &format!("{name}.full.png"));
        for (eighths, file) in case["scaled"].as_object().unwrap() {
            let eighths: u32 = eighths.parse().unwrap();
            let turbo = open(dir.path(), file.as_str().unwrap());
            let source = decode::proxy_source_of(&bytes, &limits, &needed_for(eighths)).unwrap();
            let ours = &source.loaded.image;
            if (ours.width(), ours.height()) != (turbo.width(), turbo.height()) {
                eprintln!("{name:32} proxy {eighths}/8 not reduced (full decode)");
                continue;
            }
            let (psnr, max) = difference(ours, &turbo);
            eprintln!("{name:32} proxy {eighths}/8 psnr {psnr:6.2} max {max:3}");
            let not_subsampled =
                case["features"]["subsampling"] == "444" || case["features"]["colour"] == "gray";
            let max_abs = if eighths == 1 && not_subsampled {
                1
            } else {
                SCALED_MAX_ABS
            };
            if psnr < SCALED_PSNR_MIN || max > max_abs {
                fail(format!(
                    "{name}: proxy path at {eighths}/8: psnr {psnr:.2} max {max} against \
                     libjpeg-turbo's scaled decode"
                ));
            }
        }
        let mut own = Vec::new();
        for n in 1..=7u32 {
            let reduced = jpeg_reduced::decode_with(&bytes, n as usize, false);
            own.push(reduced.clone());
            let Some(reduced) = reduced else { continue };
            let image = reduced_image(reduced);
            assert_eq!(
                (image.width(), image.height()),
                ((width * n).div_ceil(8), (height * n).div_ceil(8))
            );
            if [1, 2, 4].contains(&n) || width < 8 || height < 8 {
                continue; // compared above, through the proxy path
            }
            let (psnr, max) = difference(&image, &resized_as_reduced(&reference, n));
            eprintln!("{name:32} own   {n}/8 vs resized psnr {psnr:6.2} max {max:3}");
            if psnr < RESIZED_PSNR_MIN {
                fail(format!(
                    "{name}: own decoder at {n}/8 against a resize psnr {psnr:.2}"
                ));
            }
        }
        reductions.insert(name.to_string(), own);
    }
    for case in &cases {
        let Some(twin) = case["features"]["same_coefficients_as"].as_str() else {
            continue;
        };
        let name = case["name"].as_str().unwrap();
        let (Some(ours), Some(theirs)) = (reductions.get(name), reductions.get(twin)) else {
            fail(format!("{name}: no reduced decodes to compare with {twin}"));
            continue;
        };
        for (n, (a, b)) in ours.iter().zip(theirs).enumerate() {
            let summary = |r: &Option<jpeg_reduced::Reduced>| {
                r.as_ref().map(|r| (r.width, r.height, r.pixels.clone()))
            };
            if summary(a).is_none() || summary(a) != summary(b) {
                fail(format!(
                    "{name}: its {}/8 reduced decode is not {twin}'s ({} / {})",
                    n + 1,
                    if a.is_some() {
                        "decoded"
                    } else {
                        "not decoded"
                    },
                    if b.is_some() {
                        "decoded"
                    } else {
                        "not decoded"
                    },
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} differences:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
