//! `darkroom enhance` with the real ONNX Runtime and a real model (waifu2x photo x2, used as
//! a same-size enhancer): via full it is the model's output brought back to the input's size;
//! via proxy the layout, alpha and bit depth of the original survive the merge.

mod common;

use common::{darkroom, load, psnr, shared_dir, stage};
use darkroom::core::resample::resize_lanczos3;
use darkroom::ops::upscale::{load_model, upscale_image, UpscaleOptions};
use image::DynamicImage;

const MODEL: &str = "waifu2x-upconv7-photo-x2";

fn enhance(dir: &std::path::Path, args: &[&str]) -> DynamicImage {
    let models = shared_dir().join("models");
    let out = darkroom()
        .current_dir(dir)
        .arg("enhance")
        .args(args)
        .args(["--model", MODEL, "--models-dir"])
        .arg(&models)
        .args(["-o", "out.png", "--overwrite"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "enhance {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    load(&dir.join("out.png")).image
}

#[test]
fn via_full_is_the_model_output_brought_back_to_the_input_size() {
    let dir = tempfile::tempdir().unwrap();
    let input = load(&stage(dir.path(), "photo_coffee_600x400.png")).image;
    let got = enhance(dir.path(), &["photo_coffee_600x400.png", "--tile", "128"]);
    assert_eq!((got.width(), got.height()), (600, 400));

    let mut model = load_model(
        &shared_dir().join(format!("models/{MODEL}.onnx")),
        &UpscaleOptions::default(),
    )
    .unwrap();
    let doubled = upscale_image(&input, &mut model, 0, 0, &mut |_, _| {}).unwrap();
    let expected = resize_lanczos3(&doubled, 600, 400).unwrap();
    let worst = got
        .to_rgb8()
        .as_raw()
        .iter()
        .zip(expected.to_rgb8().as_raw())
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap();
    assert!(
        worst <= 1,
        "tiled enhance differs from the whole-image model run by {worst}"
    );
    let change = psnr(&got, &input);
    assert!(change < 60.0, "the model changed nothing ({change:.2} dB)");
}

#[test]
fn via_proxy_keeps_alpha_bit_depth_and_layout() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (name, size, merge) in [
        ("anime_eileen_320x720_rgba.png", "160x360", "guided"),
        ("hdr_room_16bit_hlg.png", "50%", "guided"),
        ("gray_camera_512.png", "256x256", "additive"),
    ] {
        let original = load(&stage(d, name)).image;
        let got = enhance(
            d,
            &[
                name,
                "--via",
                "proxy",
                "--size",
                size,
                "--merge-method",
                merge,
            ],
        );
        assert_eq!(got.color(), original.color(), "{name}: layout kept");
        assert_eq!(
            (got.width(), got.height()),
            (original.width(), original.height()),
            "{name}"
        );
        if original.color().has_alpha() {
            let alpha =
                |i: &DynamicImage| i.to_rgba8().pixels().map(|p| p.0[3]).collect::<Vec<_>>();
            assert!(alpha(&got) == alpha(&original), "{name}: alpha untouched");
        }
        let p = psnr(&got, &original);
        assert!(
            (28.0..70.0).contains(&p),
            "{name}: PSNR {p:.2} dB against the original"
        );
    }
}

#[test]
fn a_bad_via_and_a_missing_model_are_refused_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    stage(dir.path(), "tiny_17x9.png");
    let out = darkroom()
        .current_dir(dir.path())
        .args([
            "enhance",
            "tiny_17x9.png",
            "--model",
            MODEL,
            "--via",
            "sideways",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("full"));
    let out = darkroom()
        .current_dir(dir.path())
        .args([
            "enhance",
            "tiny_17x9.png",
            "--model",
            MODEL,
            "--size",
            "50%",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("only mean something with --via proxy"));
    let out = darkroom()
        .current_dir(dir.path())
        .args(["enhance", "tiny_17x9.png", "--model", "no-such-model"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no model 'no-such-model'"));
    assert!(!dir
        .path()
        .join("tiny_17x9_enhanced_no-such-model.png")
        .exists());
}

#[test]
fn corrections_run_around_the_model_on_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // The coffee photo with a strong warm cast and JPEG blocks.
    let coffee = load(&common::testdata("photo_coffee_600x400.png"))
        .image
        .to_rgb8();
    let cast = image::RgbImage::from_fn(300, 200, |x, y| {
        let p = coffee.get_pixel(x + 150, y + 100).0;
        image::Rgb([
            (f32::from(p[0]) * 1.25).min(255.0) as u8,
            p[1],
            (f32::from(p[2]) * 0.7) as u8,
        ])
    });
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 40)
        .encode_image(&cast)
        .unwrap();
    std::fs::write(d.join("cast.jpg"), &jpeg).unwrap();
    let channel_gap = |img: &DynamicImage| {
        let rgb = img.to_rgb8();
        let mean = |c: usize| rgb.pixels().map(|p| f64::from(p.0[c])).sum::<f64>();
        (mean(0) - mean(2)).abs() / f64::from(rgb.width() * rgb.height())
    };
    let plain = enhance(d, &["cast.jpg"]);
    let corrected = enhance(
        d,
        &[
            "cast.jpg",
            "--white-balance",
            "--exposure",
            "+0.3",
            "--deblock",
            "--denoise",
            "bilateral:1.5,12",
            "--smooth",
            "median",
            "--sharpen",
            "0.3",
        ],
    );
    assert_eq!((corrected.width(), corrected.height()), (300, 200));
    let (before, after) = (channel_gap(&plain), channel_gap(&corrected));
    assert!(
        after < before / 2.0,
        "white balance should close the red-blue gap: {before:.1} -> {after:.1} levels"
    );
    let bad = darkroom()
        .current_dir(d)
        .args([
            "enhance", "cast.jpg", "--model", MODEL, "--smooth", "gaussian",
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&bad.stderr).contains("median[:RADIUS]"));
}
