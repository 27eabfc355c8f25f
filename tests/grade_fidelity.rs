//! A synthetic grade (tone curve + saturation) applied to the proxy and merged must come
//! close to the same grade applied at full resolution. The floors are documented in the
//! docs/guided-merge.md ("Fidelity of the additive merge").

mod common;

use common::*;
use image::{DynamicImage, RgbImage};

/// A gentle S tone curve plus 20% more saturation, per pixel.
pub fn grade(img: &RgbImage) -> RgbImage {
    let curve: Vec<f32> = (0..256)
        .map(|v| {
            let x = v as f32 / 255.0;
            // An S curve: darker shadows, brighter highlights.
            let s = x - 0.12 * (std::f32::consts::TAU * x).sin() / std::f32::consts::TAU;
            (s.clamp(0.0, 1.0) * 255.0).clamp(0.0, 255.0)
        })
        .collect();
    RgbImage::from_fn(img.width(), img.height(), |x, y| {
        let p = img.get_pixel(x, y).0.map(|v| curve[v as usize]);
        let luma = 0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2];
        image::Rgb(p.map(|c| (luma + 1.2 * (c - luma)).round().clamp(0.0, 255.0) as u8))
    })
}

fn merged_psnr(name: &str, size: &str, refine: bool) -> f64 {
    merged_psnr_with(name, size, refine, "additive")
}

fn merged_psnr_with(name: &str, size: &str, refine: bool, method: &str) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    stage(d, name);
    run_ok(d, &["split", name, size, size]);
    let stem = name.rsplit_once('.').unwrap().0;
    let proxy = load(&d.join(format!("{stem}_proxy.png"))).image.to_rgb8();
    grade(&proxy).save(d.join("processed.png")).unwrap();
    let mut args = vec!["delta", name, "processed.png", size, size];
    if refine {
        args.push("--refine");
    }
    run_ok(d, &args);
    let mut merge = vec![
        "merge".to_string(),
        name.to_string(),
        format!("{stem}_proxy_delta.png"),
    ];
    if refine {
        merge.push("--refined-delta-image".into());
        merge.push(format!("{stem}_proxy_delta_refined.png"));
    }
    merge.push("--method".into());
    merge.push(method.into());
    run_ok(d, &merge.iter().map(String::as_str).collect::<Vec<_>>());
    let merged = load(&d.join(format!("{stem}_merged.png"))).image;
    let reference = DynamicImage::ImageRgb8(grade(&load(&d.join(name)).image.to_rgb8()));
    let p = psnr(&merged, &reference);
    eprintln!("{name} at {size} (refine {refine}, {method}): {p:.2} dB");
    p
}

#[test]
fn a_graded_proxy_merges_close_to_the_full_resolution_grade_on_a_photo() {
    let p = merged_psnr("photo_coffee_600x400.png", "300", true);
    assert!(p > 42.0, "PSNR {p:.2} dB below the 42 dB floor");
}

#[test]
fn a_graded_proxy_merges_close_to_the_full_resolution_grade_on_a_painting() {
    let p = merged_psnr("painting_peppercarrot_ep01_p03.jpg", "512", false);
    assert!(p > 42.0, "PSNR {p:.2} dB below the 42 dB floor");
}

#[test]
fn the_guided_merge_beats_the_additive_one_on_the_same_grade() {
    for (name, size) in [
        ("photo_coffee_600x400.png", "300"),
        ("painting_peppercarrot_ep01_p03.jpg", "512"),
    ] {
        let additive = merged_psnr_with(name, size, true, "additive");
        let guided = merged_psnr_with(name, size, true, "guided");
        assert!(
            guided >= additive + 3.0,
            "{name}: guided {guided:.2} dB should beat additive {additive:.2} dB by 3 dB or more"
        );
    }
}
