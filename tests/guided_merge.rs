//! The guided merge (`darkroom merge --method guided`): an identity edit gives back the
//! original exactly on every image class, an edit of one rectangle changes no pixel outside
//! it and its blend margin, a global affine colour change is reproduced at full
//! resolution to within 1 dB of the 8-bit rounding limit, and a colour change on one side of
//! a hard edge leaves no halo on the other side (where the additive merge does).

mod common;

use common::*;
use darkroom::core::delta::{self, DeltaDepth};
use darkroom::core::geometry::{ProxyGeometry, Target};
use darkroom::core::guided::GuidedParams;
use darkroom::core::merge::{merge_image, DeltaLayer};
use darkroom::core::proxy::make_proxy;
use image::{DynamicImage, RgbImage};

/// split -> (processed = proxy) -> delta --refine -> merge --method guided, through the binary.
fn guided_identity(name: &str, size: &str) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (original, stem) = identity_deltas(d, name, size, size);
    run_ok(
        d,
        &[
            "merge",
            name,
            &format!("{stem}_proxy_delta.png"),
            "--refined-delta-image",
            &format!("{stem}_proxy_delta_refined.png"),
            "--method",
            "guided",
            "-o",
            "guided.png",
        ],
    );
    let before = load(&original);
    let after = load(&d.join("guided.png"));
    assert_eq!(
        after.image.color(),
        before.image.color(),
        "{name}: layout kept"
    );
    assert_eq!(
        after.icc_profile, before.icc_profile,
        "{name}: ICC profile kept"
    );
    // Compared at 16 bits, where one 8-bit level is 257 for 8- and 16-bit images alike.
    let (a, b) = (after.image.to_rgba16(), before.image.to_rgba16());
    let one_level = 257;
    let mut worst = 0;
    for (p, q) in a.pixels().zip(b.pixels()) {
        for c in 0..3 {
            worst = worst.max((i32::from(p.0[c]) - i32::from(q.0[c])).abs());
        }
        assert_eq!(p.0[3], q.0[3], "{name}: alpha is never touched");
    }
    let _ = one_level;
    assert_eq!(
        worst, 0,
        "{name}: an identity edit moved a sample by {worst} (16-bit units); it must give back the original exactly"
    );
}

#[test]
fn an_identity_edit_gives_back_the_original_exactly() {
    for (name, size) in [
        ("photo_coffee_600x400.png", "300"),
        ("photo_exif_orientation6.jpg", "25%"),
        ("hdr_room_16bit_hlg.png", "50%"),
        ("anime_eileen_320x720_rgba.png", "256"),
        ("gray_camera_512.png", "128"),
        ("tiny_17x9.png", "8"),
    ] {
        guided_identity(name, size);
    }
}

/// The proxy (25%) of `original`, its 8-bit processed form under `edit`, and the delta layers
/// (8-bit + refined, as `darkroom delta --refine` writes them).
fn proxy_round_trip(
    original: &DynamicImage,
    edit: impl Fn(&RgbImage) -> RgbImage,
) -> (DynamicImage, Vec<DeltaLayer>) {
    let g = ProxyGeometry::plan(
        original.width(),
        original.height(),
        "25%".parse::<Target>().unwrap(),
    );
    let proxy = make_proxy(original, &g).unwrap();
    let processed = DynamicImage::ImageRgb8(edit(&proxy.to_rgb8()));
    let d = delta::compute(&proxy, &processed, DeltaDepth::Eight, true).unwrap();
    let area = g.area();
    let layers = vec![
        DeltaLayer {
            image: d.main,
            area,
        },
        DeltaLayer {
            image: d.refined.unwrap(),
            area,
        },
    ];
    (proxy, layers)
}

fn guided(original: &DynamicImage, proxy: &DynamicImage, layers: &[DeltaLayer]) -> DynamicImage {
    merge_image(
        original.clone(),
        proxy,
        layers,
        Some(&GuidedParams::default()),
    )
    .unwrap()
}

fn additive(original: &DynamicImage, proxy: &DynamicImage, layers: &[DeltaLayer]) -> DynamicImage {
    merge_image(original.clone(), proxy, layers, None).unwrap()
}

/// A colour change that stays inside 0..=255 (no clipping), so it is exactly affine.
fn affine_edit(img: &RgbImage) -> RgbImage {
    RgbImage::from_fn(img.width(), img.height(), |x, y| {
        let [r, g, b] = img.get_pixel(x, y).0.map(f32::from);
        image::Rgb(
            [
                0.8 * r + 0.1 * g + 20.0,
                0.75 * g + 0.1 * b + 30.0,
                0.7 * b + 0.15 * r + 25.0,
            ]
            .map(|v| v.round().clamp(0.0, 255.0) as u8),
        )
    })
}

#[test]
fn a_global_affine_colour_change_is_reproduced_within_1_db_of_the_rounding_limit() {
    let original = load(&testdata("photo_coffee_600x400.png")).image;
    let truth = DynamicImage::ImageRgb8(affine_edit(&original.to_rgb8()));
    let (proxy, layers) = proxy_round_trip(&original, affine_edit);
    let guided_psnr = psnr(&guided(&original, &proxy, &layers), &truth);
    let additive_psnr = psnr(&additive(&original, &proxy, &layers), &truth);
    // "Perfect" for an 8-bit result: it differs from the truth only by rounding, one level
    // of rounding on each side (MSE 1/12 + 1/12): 55.9 dB.
    let limit = 10.0 * (255.0f64 * 255.0 * 6.0).log10();
    eprintln!("affine edit: guided {guided_psnr:.2} dB, additive {additive_psnr:.2} dB, limit {limit:.2} dB");
    assert!(
        guided_psnr >= limit - 1.0,
        "guided {guided_psnr:.2} dB is more than 1 dB below the {limit:.2} dB rounding limit"
    );
    assert!(
        additive_psnr < limit - 5.0,
        "the additive merge ({additive_psnr:.2} dB) should miss the change of texture contrast"
    );
}

/// A dark textured half and a bright textured half, split at x = 256.
fn hard_edge() -> DynamicImage {
    DynamicImage::ImageRgb8(RgbImage::from_fn(512, 256, |x, y| {
        let texture = 8.0 * ((x as f32 * 0.9).sin() * (y as f32 * 1.3).cos());
        let base = if x < 256 { 60.0 } else { 190.0 };
        let v = (base + texture).round() as u8;
        image::Rgb([v, v, v])
    }))
}

/// Warms what is bright: the change grows with luma, zero at the dark half's level.
fn warm_the_bright_side(img: &RgbImage) -> RgbImage {
    RgbImage::from_fn(img.width(), img.height(), |x, y| {
        let p = img.get_pixel(x, y).0.map(f32::from);
        let luma = 0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2];
        let s = (luma - 60.0) / 130.0;
        image::Rgb(
            [p[0] + 45.0 * s, p[1] + 10.0 * s, p[2] - 35.0 * s]
                .map(|v| v.round().clamp(0.0, 255.0) as u8),
        )
    })
}

#[test]
fn a_colour_change_on_one_side_of_a_hard_edge_leaves_no_halo_on_the_other() {
    let original = hard_edge();
    let truth = warm_the_bright_side(&original.to_rgb8());
    let (proxy, layers) = proxy_round_trip(&original, warm_the_bright_side);
    let worst_near_edge = |merged: &DynamicImage| {
        let merged = merged.to_rgb8();
        let mut worst = 0i32;
        for y in 16..240 {
            // The dark side, up to 24 px from the edge: the additive delta's reach at 4x.
            for x in 232..256 {
                let (m, t) = (merged.get_pixel(x, y).0, truth.get_pixel(x, y).0);
                for c in 0..3 {
                    worst = worst.max((i32::from(m[c]) - i32::from(t[c])).abs());
                }
            }
        }
        worst
    };
    let guided_worst = worst_near_edge(&guided(&original, &proxy, &layers));
    let additive_worst = worst_near_edge(&additive(&original, &proxy, &layers));
    eprintln!("worst error beside the edge: guided {guided_worst}, additive {additive_worst}");
    assert!(
        guided_worst <= 3,
        "the guided merge bled the change across the edge by {guided_worst} levels"
    );
    assert!(
        additive_worst >= 10,
        "the additive merge was expected to show a halo here (worst {additive_worst}); the test no longer tells the methods apart"
    );
}

#[test]
fn an_external_delta_upscaler_with_the_guided_method_is_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    identity_deltas(d, "photo_coffee_600x400.png", "300", "300");
    let (code, stderr) = run_err(
        d,
        &[
            "merge",
            "photo_coffee_600x400.png",
            "photo_coffee_600x400_proxy_delta.png",
            "--method",
            "guided",
            "--upscale-method",
            "cmd(cp %i %o)",
        ],
    );
    assert_ne!(code, 0);
    assert!(stderr.contains("--method additive"), "{stderr}");
    let (_, stderr) = run_err(
        d,
        &[
            "merge",
            "photo_coffee_600x400.png",
            "photo_coffee_600x400_proxy_delta.png",
            "--method",
            "bilateral",
        ],
    );
    assert!(stderr.contains("use additive"), "{stderr}");
    assert!(!d.join("photo_coffee_600x400_merged.png").exists());
}

/// A local edit (inpainting, one retouched face) in a 25% proxy: the rectangle from (60, 40)
/// to (180, 120) of the proxy gets a new colour and contrast, nothing else changes.
fn retouch_one_rectangle(img: &RgbImage) -> RgbImage {
    RgbImage::from_fn(img.width(), img.height(), |x, y| {
        let p = *img.get_pixel(x, y);
        if (60..180).contains(&x) && (40..120).contains(&y) {
            let [r, g, b] = p.0.map(f32::from);
            image::Rgb(
                [1.3 * r - 20.0, 0.9 * g + 10.0, 0.6 * b]
                    .map(|v| v.round().clamp(0.0, 255.0) as u8),
            )
        } else {
            p
        }
    })
}

#[test]
fn an_edit_of_one_rectangle_changes_no_pixel_outside_it_and_its_margin() {
    let original = load(&testdata("photo_exif_orientation6.jpg")).image;
    let (proxy, layers) = proxy_round_trip(&original, retouch_one_rectangle);
    // The proxy is 25%: the rectangle is (240, 160)-(720, 480) in the original. The guided
    // merge blends over 7 proxy pixels around a change (2 at full strength, a ramp of 4, 1
    // for the bilinear upsampling): 28 pixels of the original.
    let margin = 28;
    let inside = |x: u32, y: u32| {
        (240 - margin..720 + margin).contains(&x) && (160 - margin..480 + margin).contains(&y)
    };
    let before = original.to_rgb8();
    for (method, merged) in [
        ("guided", guided(&original, &proxy, &layers)),
        ("additive", additive(&original, &proxy, &layers)),
    ] {
        let merged = merged.to_rgb8();
        let mut changed_inside = 0;
        for (x, y, p) in merged.enumerate_pixels() {
            if inside(x, y) {
                changed_inside += usize::from(p != before.get_pixel(x, y));
            } else {
                assert_eq!(
                    p,
                    before.get_pixel(x, y),
                    "{method}: ({x}, {y}) is outside the edit and its margin but changed"
                );
            }
        }
        // The edit itself did arrive.
        assert!(
            changed_inside > 400 * 280,
            "{method}: {changed_inside} pixels changed"
        );
    }
}

/// A red and white checkerboard (squares of 3% of the short side, 4x4 supersampled) pasted
/// over the centre of a `w x h` RGB picture: new content, the same at any resolution.
fn paste_checker(img: &mut RgbImage) {
    let (w, h) = (img.width() as f32, img.height() as f32);
    let short = w.min(h);
    let (square, half) = (0.03 * short, 0.2 * short);
    let (cx, cy) = (0.5 * w, 0.5 * h);
    for (x, y, p) in img.enumerate_pixels_mut() {
        let (mut cover, mut red) = (0.0f32, 0.0f32);
        for s in 0u8..16 {
            let u = x as f32 + (f32::from(s % 4) + 0.5) / 4.0;
            let v = y as f32 + (f32::from(s / 4) + 0.5) / 4.0;
            if (u - cx).abs() < half && (v - cy).abs() < half {
                cover += 1.0 / 16.0;
                let cell = ((u - cx + half) / square).floor() + ((v - cy + half) / square).floor();
                if cell as i64 % 2 == 0 {
                    red += 1.0 / 16.0;
                }
            }
        }
        let pasted = [0, 1, 2]
            .map(|c| red * [200.0, 30.0, 40.0][c] + (cover - red) * [245.0, 240.0, 230.0][c]);
        for (v, t) in p.0.iter_mut().zip(pasted) {
            *v = (f32::from(*v) * (1.0 - cover) + t).round() as u8;
        }
    }
}

#[test]
fn a_super_resolution_model_brings_new_content_back_sharper_than_lanczos() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let name = "photo_exif_orientation6.jpg";
    let original = load(&stage(d, name)).image;
    run_ok(d, &["split", name, "25%", "25%"]);
    let stem = "photo_exif_orientation6";
    let mut processed = load(&d.join(format!("{stem}_proxy.png"))).image.to_rgb8();
    paste_checker(&mut processed);
    processed.save(d.join("processed.png")).unwrap();
    run_ok(
        d,
        &["delta", name, "processed.png", "25%", "25%", "--refine"],
    );
    let mut truth = original.to_rgb8();
    paste_checker(&mut truth);
    let truth = DynamicImage::ImageRgb8(truth);
    let models = shared_dir().join("models");
    let (delta, refined) = (
        format!("{stem}_proxy_delta.png"),
        format!("{stem}_proxy_delta_refined.png"),
    );
    let merge = |output: &str, extra: &[&str]| {
        let mut args = vec![
            "merge",
            name,
            &delta,
            "--refined-delta-image",
            &refined,
            "--method",
            "guided",
            "-o",
            output,
        ];
        args.extend_from_slice(extra);
        run_ok(d, &args);
        load(&d.join(output)).image.to_rgb8()
    };
    let lanczos = merge("lanczos.png", &[]);
    let models_dir = models.to_string_lossy().into_owned();
    let model = merge(
        "model.png",
        &[
            "--upscale-method",
            "model:waifu2x-upconv7-photo-x2",
            "--models-dir",
            &models_dir,
        ],
    );
    let (l, m) = (
        psnr(&DynamicImage::ImageRgb8(lanczos.clone()), &truth),
        psnr(&DynamicImage::ImageRgb8(model.clone()), &truth),
    );
    eprintln!("pasted checkerboard: Lanczos3 {l:.2} dB, model {m:.2} dB");
    assert!(
        m >= l + 2.0,
        "the model ({m:.2} dB) should beat Lanczos3 ({l:.2} dB) by 2 dB"
    );
    // Away from the new content (a margin of 64 pixels around the pasted square), the
    // model changes nothing.
    let (w, h) = (truth.width() as f32, truth.height() as f32);
    let half = 0.2 * w.min(h) + 64.0;
    for (x, y, p) in model.enumerate_pixels() {
        if (x as f32 - 0.5 * w).abs() > half || (y as f32 - 0.5 * h).abs() > half {
            assert_eq!(
                p,
                lanczos.get_pixel(x, y),
                "({x}, {y}) is away from the new content"
            );
        }
    }
}

#[test]
fn a_model_for_the_additive_merge_or_a_missing_model_is_refused_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_, stem) = identity_deltas(d, "tiny_17x9.png", "8", "8");
    let delta = format!("{stem}_proxy_delta.png");
    let out = darkroom()
        .current_dir(d)
        .args([
            "merge",
            "tiny_17x9.png",
            &delta,
            "--upscale-method",
            "model:x",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("--method guided"), "{stderr}");
    let out = darkroom()
        .current_dir(d)
        .args([
            "merge",
            "tiny_17x9.png",
            &delta,
            "--method",
            "guided",
            "--upscale-method",
            "model:no_such_model",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("no model 'no_such_model'"), "{stderr}");
}
