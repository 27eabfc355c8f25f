//! Super-resolution with the real ONNX Runtime (the onnxruntime 1.31.1 wheel that
//! scripts/setup-venv puts in ./.venv) and the real models of ../shared/models.

mod common;

use common::{darkroom, load, psnr, run_ok, shared_dir, stage, testdata};
use darkroom::io::onnx::Model;
use darkroom::ops::upscale::{load_model, upscale_image, UpscaleOptions};
use image::{imageops, DynamicImage, GenericImageView};
use std::path::PathBuf;

fn model_path(name: &str) -> PathBuf {
    let path = shared_dir().join("models").join(format!("{name}.onnx"));
    assert!(path.is_file(), "model {} is missing", path.display());
    path
}

fn model(name: &str) -> Model {
    load_model(&model_path(name), &UpscaleOptions::default())
        .unwrap_or_else(|e| panic!("{name}: {e} (run scripts/setup-venv)"))
}

fn crop(name: &str, x: u32, y: u32, w: u32, h: u32) -> DynamicImage {
    load(&testdata(name)).image.crop_imm(x, y, w, h)
}

fn max_abs_diff(a: &DynamicImage, b: &DynamicImage) -> u8 {
    assert_eq!(a.dimensions(), b.dimensions());
    a.to_rgba8()
        .as_raw()
        .iter()
        .zip(b.to_rgba8().as_raw())
        .map(|(x, y)| x.abs_diff(*y))
        .max()
        .unwrap()
}

#[test]
fn tiled_equals_untiled_for_each_shipped_model_at_its_context() {
    // Inputs wider than tile + 2 x context, so some tiles never see the whole image.
    let cases = [
        ("waifu2x-upconv7-photo-x2", 8, 24, (96, 40)),
        ("realesr-animevideov3-x4", 32, 24, (120, 40)),
        ("realesrgan-x4plus-anime-6b-x4", 64, 32, (176, 36)),
    ];
    for (name, context, tile, (w, h)) in cases {
        let mut m = model(name);
        let input = crop("painting_peppercarrot_ep01_p03.jpg", 400, 700, w, h);
        let whole = upscale_image(&input, &mut m, 0, 0, &mut |_, _| {}).unwrap();
        let mut tiles_seen = 0;
        let tiled = upscale_image(&input, &mut m, tile, context, &mut |_, total| {
            tiles_seen = total
        })
        .unwrap();
        assert!(tiles_seen >= 4, "{name}: {tiles_seen} tiles");
        assert_eq!(whole.dimensions(), (w * m.scale, h * m.scale));
        let diff = max_abs_diff(&whole, &tiled);
        assert!(
            diff <= 1,
            "{name}: tiled differs from untiled by {diff}/255"
        );
        // Without context the seams are visible: the test can fail.
        let seamy = upscale_image(&input, &mut m, tile, 0, &mut |_, _| {}).unwrap();
        assert!(
            max_abs_diff(&whole, &seamy) > 1,
            "{name}: context made no difference"
        );
    }
}

#[test]
fn the_waifu2x_photo_model_beats_bicubic() {
    let hr = crop("photo_coffee_600x400.png", 100, 80, 240, 200);
    let lr = hr.resize_exact(120, 100, imageops::FilterType::CatmullRom);
    let bicubic = lr.resize_exact(240, 200, imageops::FilterType::CatmullRom);
    let mut m = model("waifu2x-upconv7-photo-x2");
    assert_eq!(m.scale, 2);
    let sr = upscale_image(&lr, &mut m, 64, 8, &mut |_, _| {}).unwrap();
    let (model_db, bicubic_db) = (psnr(&sr, &hr), psnr(&bicubic, &hr));
    assert!(
        model_db > bicubic_db + 0.5,
        "waifu2x {model_db:.2} dB vs bicubic {bicubic_db:.2} dB"
    );
}

#[test]
fn the_cli_upscales_odd_sizes_exactly_and_keeps_the_profile() {
    let dir = tempfile::tempdir().unwrap();
    let input = stage(dir.path(), "tiny_17x9.png");
    let out = darkroom()
        .current_dir(dir.path())
        .args(["upscale"])
        .arg(&input)
        .args(["--model", "realesr-animevideov3-x4", "--tile", "8"])
        .arg("--models-dir")
        .arg(shared_dir().join("models"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let output = dir.path().join("tiny_17x9_x4_realesr-animevideov3-x4.png");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        output.display().to_string()
    );
    let result = load(&output);
    assert_eq!((result.image.width(), result.image.height()), (68, 36));
    assert_eq!(
        result.icc_profile,
        load(&input).icc_profile,
        "the sRGB profile is kept"
    );
}

/// Mean distance (in 8-bit levels) from `colour` of the visible pixels (alpha >= 128) that
/// touch a mostly transparent one (alpha < 64): the rim where a halo would show.
fn rim_error(image: &DynamicImage, colour: [u8; 3]) -> f64 {
    let rgba = image.to_rgba8();
    let (w, h) = rgba.dimensions();
    let (mut sum, mut n) = (0.0, 0.0);
    for y in 1..h - 1 {
        for x in 1..w - 1 {
            let p = rgba.get_pixel(x, y).0;
            if p[3] < 128 {
                continue;
            }
            let touches = [(0i32, 1i32), (0, -1), (1, 0), (-1, 0)]
                .iter()
                .any(|(dx, dy)| {
                    rgba.get_pixel((x as i32 + dx) as u32, (y as i32 + dy) as u32)
                        .0[3]
                        < 64
                });
            if touches {
                sum += (0..3)
                    .map(|c| f64::from(p[c].abs_diff(colour[c])))
                    .sum::<f64>()
                    / 3.0;
                n += 1.0;
            }
        }
    }
    assert!(n > 20.0, "too few rim pixels");
    sum / n
}

#[test]
fn alpha_edges_come_out_without_dark_halos() {
    // A flat-coloured disc on fully transparent black, as many exporters leave transparent
    // pixels: a model that saw that black would pull the disc's rim dark.
    let colour = [230u8, 200, 120];
    let disc = image::RgbaImage::from_fn(64, 64, |x, y| {
        let d = ((x as f32 - 31.5).powi(2) + (y as f32 - 31.5).powi(2)).sqrt();
        let a = (20.0 - d + 0.5).clamp(0.0, 1.0);
        if a > 0.0 {
            image::Rgba([colour[0], colour[1], colour[2], (a * 255.0).round() as u8])
        } else {
            image::Rgba([0, 0, 0, 0])
        }
    });
    let disc = DynamicImage::ImageRgba8(disc);
    let mut m = model("realesr-animevideov3-x4");
    let up = upscale_image(&disc, &mut m, 32, 32, &mut |_, _| {}).unwrap();
    assert!(matches!(up, DynamicImage::ImageRgba8(_)));
    assert_eq!(up.dimensions(), (256, 256));
    let error = rim_error(&up, colour);
    assert!(
        error < 8.0,
        "the rim is {error:.1} levels off its colour: a halo"
    );
    let rgba = up.to_rgba8();
    assert!(
        rgba.get_pixel(2, 2).0[3] < 4,
        "transparent stays transparent"
    );
    assert!(rgba.get_pixel(128, 128).0[3] > 250, "opaque stays opaque");

    // The sprite keeps its alpha channel and size.
    let sprite = crop("anime_eileen_320x720_rgba.png", 60, 0, 48, 48);
    let up = upscale_image(&sprite, &mut m, 0, 0, &mut |_, _| {}).unwrap();
    assert!(matches!(up, DynamicImage::ImageRgba8(_)));
    assert_eq!(up.dimensions(), (192, 192));
}

#[test]
fn grey_stays_grey_and_16_bit_stays_16_bit() {
    let mut m = model("waifu2x-upconv7-photo-x2");
    let grey = crop("gray_camera_512.png", 200, 200, 32, 24);
    let up = upscale_image(&grey, &mut m, 0, 0, &mut |_, _| {}).unwrap();
    assert!(
        matches!(up, DynamicImage::ImageLuma8(_)),
        "{:?}",
        up.color()
    );
    assert_eq!(up.dimensions(), (64, 48));

    let hdr = crop("hdr_room_16bit_hlg.png", 300, 200, 32, 24);
    let up = upscale_image(&hdr, &mut m, 0, 0, &mut |_, _| {}).unwrap();
    let DynamicImage::ImageRgb16(buffer) = &up else {
        panic!("16-bit input gave {:?}", up.color());
    };
    let not_8_bit = buffer.as_raw().iter().filter(|&&v| v % 257 != 0).count();
    assert!(
        not_8_bit > buffer.as_raw().len() / 2,
        "the samples look truncated to 8 bits"
    );
}

#[test]
fn a_corrupt_model_and_a_missing_runtime_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let input = stage(dir.path(), "tiny_17x9.png");
    let bad_model = dir.path().join("broken.onnx");
    std::fs::write(&bad_model, b"this is not a protobuf").unwrap();
    let out = darkroom()
        .args(["upscale"])
        .arg(&input)
        .arg("--model")
        .arg(&bad_model)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(65), "{stderr}");
    assert!(
        stderr.contains("broken.onnx") && stderr.contains("not a valid ONNX model"),
        "{stderr}"
    );

    let out = darkroom()
        .env(
            "ORT_DYLIB_PATH",
            dir.path().join("no-such-libonnxruntime.so"),
        )
        .args(["upscale"])
        .arg(&input)
        .arg("--model")
        .arg(model_path("waifu2x-upconv7-photo-x2"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("ONNX Runtime not found") && stderr.contains("scripts/setup-venv"),
        "{stderr}"
    );
    assert_eq!(
        common::listing(dir.path()),
        ["broken.onnx", "tiny_17x9.png"],
        "no output on failure"
    );
}

#[test]
fn compare_prints_psnr_and_ssim_and_refuses_different_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let hr = crop("photo_coffee_600x400.png", 100, 80, 120, 100);
    let blurred = hr.blur(1.5);
    hr.save(dir.path().join("hr.png")).unwrap();
    blurred.save(dir.path().join("blurred.png")).unwrap();
    let out = darkroom()
        .current_dir(dir.path())
        .args(["compare", "hr.png", "blurred.png"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let expected = psnr(&hr, &blurred);
    let printed: f64 = text
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{text}"));
    assert!((printed - expected).abs() < 0.01, "{text} vs {expected:.2}");
    let ssim: f64 = text.split_whitespace().nth(4).unwrap().parse().unwrap();
    assert!(ssim > 0.3 && ssim < 0.99, "{text}");

    let (code, stderr) = common::run_err(
        dir.path(),
        &[
            "compare",
            "hr.png",
            &testdata("tiny_17x9.png").display().to_string(),
        ],
    );
    assert_eq!(code, 65);
    assert!(stderr.contains("differ in size"), "{stderr}");
}

#[test]
fn passes_target_and_sharpen_on_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let input = stage(dir.path(), "tiny_17x9.png");
    let run = |extra: &[&str], output: &str| {
        let out = darkroom()
            .current_dir(dir.path())
            .arg("upscale")
            .arg(&input)
            .args(["--model", "waifu2x-upconv7-photo-x2", "--output", output])
            .arg("--models-dir")
            .arg(shared_dir().join("models"))
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        load(&dir.path().join(output)).image
    };
    let twice = run(&["--passes", "2"], "twice.png");
    assert_eq!(twice.dimensions(), (68, 36), "x2 twice is x4");
    let target = run(&["--target", "50x30"], "target.png");
    assert_eq!(
        target.dimensions(),
        (50, 30),
        "two passes, then Lanczos to the target"
    );
    let plain = run(&[], "plain.png");
    let sharp = run(&["--sharpen", "1.0,1.0"], "sharp.png");
    assert_eq!(sharp.dimensions(), (34, 18));
    assert!(
        max_abs_diff(&plain, &sharp) > 5,
        "sharpening changed nothing"
    );
    let (code, stderr) = common::run_err(
        dir.path(),
        &[
            "upscale",
            "tiny_17x9.png",
            "--model",
            "x",
            "--target",
            "big",
        ],
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("WxH"), "{stderr}");
}

#[test]
fn passes_are_bounded_outputs_are_named_by_scale_and_target_and_never_overwritten_unasked() {
    let dir = tempfile::tempdir().unwrap();
    stage(dir.path(), "tiny_17x9.png");
    let models = shared_dir().join("models");
    let models = models.to_str().unwrap();
    let base = [
        "upscale",
        "tiny_17x9.png",
        "--model",
        "waifu2x-upconv7-photo-x2",
    ];
    let with = |extra: &[&str]| -> Vec<String> {
        base.iter()
            .chain(["--models-dir", models].iter())
            .chain(extra.iter())
            .map(|s| s.to_string())
            .collect()
    };
    fn args(v: &[String]) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }
    for passes in ["0", "5", "9"] {
        let (code, stderr) = common::run_err(dir.path(), &args(&with(&["--passes", passes])));
        assert_eq!(code, 2, "--passes {passes}: {stderr}");
        assert!(
            stderr.contains("1..=4") || stderr.contains("1 to 4"),
            "{stderr}"
        );
    }
    // Named as the daemon names them: the scale to the power of the passes, or the target.
    let out = run_ok(dir.path(), &args(&with(&["--passes", "2"])));
    let x4 = dir.path().join("tiny_17x9_x4_waifu2x-upconv7-photo-x2.png");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "tiny_17x9_x4_waifu2x-upconv7-photo-x2.png"
    );
    assert_eq!(load(&x4).image.dimensions(), (68, 36));
    run_ok(dir.path(), &args(&with(&["--target", "50x30"])));
    let target = dir
        .path()
        .join("tiny_17x9_50x30_waifu2x-upconv7-photo-x2.png");
    assert_eq!(load(&target).image.dimensions(), (50, 30));
    // A second run refuses, names the file and leaves it as it was; --overwrite replaces it.
    let before = std::fs::read(&x4).unwrap();
    let modified = std::fs::metadata(&x4).unwrap().modified().unwrap();
    let (code, stderr) = common::run_err(dir.path(), &args(&with(&["--passes", "2"])));
    assert_eq!(code, 73, "{stderr}");
    assert!(
        stderr.contains("tiny_17x9_x4_waifu2x-upconv7-photo-x2.png")
            && stderr.contains("already exists")
            && stderr.contains("--overwrite"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(&x4).unwrap(), before);
    assert_eq!(
        std::fs::metadata(&x4).unwrap().modified().unwrap(),
        modified
    );
    run_ok(dir.path(), &args(&with(&["--passes", "2", "--overwrite"])));
    assert!(std::fs::metadata(&x4).unwrap().modified().unwrap() > modified);
    // The same holds for the other commands that write named outputs.
    run_ok(dir.path(), &["split", "tiny_17x9.png", "8", "8"]);
    let (code, stderr) = common::run_err(dir.path(), &["split", "tiny_17x9.png", "8", "8"]);
    assert_eq!(code, 73, "{stderr}");
    assert!(stderr.contains("tiny_17x9_proxy.png"), "{stderr}");
    run_ok(
        dir.path(),
        &["split", "tiny_17x9.png", "8", "8", "--overwrite"],
    );
}

#[test]
fn cuda_when_required_is_an_error_on_a_runtime_without_it_and_auto_runs_on_the_cpu() {
    // The tests' runtime is the CPU wheel of ./.venv (no libonnxruntime_providers_cuda.so),
    // whatever GPU the machine has, so this holds everywhere.
    let dir = tempfile::tempdir().unwrap();
    let input = stage(dir.path(), "tiny_17x9.png");
    let run = |provider: &str| {
        darkroom()
            .env("RUST_LOG", "info")
            .current_dir(dir.path())
            .arg("upscale")
            .arg(&input)
            .arg("--model")
            .arg(model_path("waifu2x-upconv7-photo-x2"))
            .args(["--provider", provider, "--output", "out.png"])
            .output()
            .unwrap()
    };
    let out = run("cuda");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("CUDA execution provider was requested but cannot be used")
            && stderr.contains("onnxruntime-gpu"),
        "{stderr}"
    );
    assert!(!dir.path().join("out.png").exists());
    let out = run("auto");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("no CUDA provider; running on the CPU"),
        "{stderr}"
    );
    assert!(stderr.contains("ONNX Runtime loaded"), "{stderr}");
}

/// A variant of a shipped model made by tests/tools/model_variant.py (fp16, other ranges).
fn model_variant(dir: &std::path::Path, name: &str, args: &[&str]) -> PathBuf {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = dir.join(format!("{name}-{}.onnx", args.join("").replace('-', "")));
    let out = std::process::Command::new(root.join(".venv/bin/python"))
        .arg(root.join("tests/tools/model_variant.py"))
        .arg(model_path(name))
        .arg(&target)
        .args(args)
        .output()
        .expect("run scripts/setup-venv first");
    assert!(
        out.status.success(),
        "model_variant.py {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    target
}

#[test]
fn batches_of_tiles_give_the_same_pixels_as_one_tile_per_run() {
    for (name, context, tile, (w, h)) in [
        ("waifu2x-upconv7-photo-x2", 8, 24, (96, 40)),
        ("realesr-animevideov3-x4", 32, 24, (120, 40)),
    ] {
        let input = crop("painting_peppercarrot_ep01_p03.jpg", 300, 600, w, h);
        let mut one_per_run = model(name);
        // batch "auto", the default: one tile per run on the CPU, where more is no faster.
        assert_eq!(one_per_run.provider, "CPU");
        assert_eq!(one_per_run.options.batch, 1, "{name}");
        let single =
            upscale_image(&input, &mut one_per_run, tile, context, &mut |_, _| {}).unwrap();
        let options = UpscaleOptions {
            batch: 4,
            ..UpscaleOptions::default()
        };
        let mut batched = load_model(&model_path(name), &options).unwrap();
        let mut updates = 0;
        let stacked = upscale_image(&input, &mut batched, tile, context, &mut |_, _| {
            updates += 1
        })
        .unwrap();
        // Four tiles per run: fewer progress updates than tiles, and no batch fell back.
        let tiles = darkroom::core::tiling::plan(w, h, tile, context).len();
        assert!(updates < tiles, "{name}: {updates} runs for {tiles} tiles");
        assert_eq!(batched.options.batch, 4, "{name}: a batch failed");
        assert_eq!(
            single.to_rgb8().as_raw(),
            stacked.to_rgb8().as_raw(),
            "{name}: batched tiles differ from single ones"
        );
    }
}

#[test]
fn float16_models_and_other_value_ranges_give_the_float32_result() {
    use darkroom::io::onnx::{Precision, ValueRange};
    let dir = tempfile::tempdir().unwrap();
    let name = "waifu2x-upconv7-photo-x2";
    let input = crop("photo_coffee_600x400.png", 100, 80, 64, 48);
    let reference = upscale_image(&input, &mut model(name), 0, 0, &mut |_, _| {}).unwrap();

    let half = model_variant(dir.path(), name, &["--fp16"]);
    let mut m = load_model(&half, &UpscaleOptions::default()).unwrap();
    assert_eq!(
        (m.input_precision, m.output_precision, m.scale),
        (Precision::Float16, Precision::Float16, 2)
    );
    let out = upscale_image(&input, &mut m, 32, 8, &mut |_, _| {}).unwrap();
    let diff = max_abs_diff(&reference, &out);
    assert!(diff <= 2, "fp16 differs from fp32 by {diff}/255");
    assert!(psnr(&reference, &out) > 50.0);

    for (flag, range) in [("signed", ValueRange::Signed), ("byte", ValueRange::Byte)] {
        let variant = model_variant(dir.path(), name, &["--range", flag]);
        if range == ValueRange::Byte {
            // Read as 0..1, the output is wrong: the test can fail. (A -1..1 model read as
            // 0..1 comes out nearly right when it is nearly linear, so only 0..255 shows it.)
            let mut unaware = load_model(&variant, &UpscaleOptions::default()).unwrap();
            let wrong = upscale_image(&input, &mut unaware, 0, 0, &mut |_, _| {}).unwrap();
            assert!(
                max_abs_diff(&reference, &wrong) > 16,
                "{flag}: range had no effect"
            );
        }
        let options = UpscaleOptions {
            range,
            ..UpscaleOptions::default()
        };
        let mut aware = load_model(&variant, &options).unwrap();
        let right = upscale_image(&input, &mut aware, 0, 0, &mut |_, _| {}).unwrap();
        let diff = max_abs_diff(&reference, &right);
        assert!(diff <= 1, "{flag}: differs by {diff}/255");
    }

    // The command line: an fp16 model in -1..1, four tiles per run.
    let both = model_variant(dir.path(), name, &["--fp16", "--range", "signed"]);
    input.save(dir.path().join("in.png")).unwrap();
    let both = both.to_str().unwrap();
    run_ok(
        dir.path(),
        &[
            "upscale",
            "in.png",
            "--model",
            both,
            "--input-range",
            "-1..1",
            "--batch",
            "4",
            "--tile",
            "24",
            "-o",
            "out.png",
        ],
    );
    let got = load(&dir.path().join("out.png")).image;
    let diff = max_abs_diff(&reference, &got);
    assert!(diff <= 2, "CLI fp16 -1..1 differs by {diff}/255");
}

/// Runs `command` to its end; returns its exit status and peak resident memory in MiB.
#[allow(clippy::zombie_processes)] // reaped by wait4, which also gives the peak memory
fn run_measured(command: &mut std::process::Command) -> (std::process::ExitStatus, f64) {
    use std::os::unix::process::ExitStatusExt;
    let child = command
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut status = 0;
    // SAFETY: rusage is a plain out-struct; the pid is our own child, reaped here once.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: status and usage are valid out-pointers for the call's duration.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as i32);
    (
        std::process::ExitStatus::from_raw(status),
        usage.ru_maxrss as f64 / 1024.0,
    )
}

#[test]
fn tile_auto_fits_the_memory_budget_and_matches_the_untiled_result() {
    let dir = tempfile::tempdir().unwrap();
    let input = crop("photo_coffee_600x400.png", 0, 0, 320, 240);
    input.save(dir.path().join("in.png")).unwrap();
    let name = "waifu2x-upconv7-photo-x2";
    let upscale = |tile: &str, output: &str| {
        let mut command = darkroom();
        command
            .current_dir(dir.path())
            .args(["upscale", "in.png", "--model"])
            .arg(model_path(name))
            .args(["--tile", tile, "--memory-budget-mib", "48", "-o", output]);
        command
    };
    let (status, whole_mib) = run_measured(&mut upscale("0", "whole.png"));
    assert!(status.success());
    let (status, auto_mib) = run_measured(&mut upscale("auto", "auto.png"));
    assert!(status.success());
    // The model needs about 4 KiB per pixel: 77k pixels at once is ~300 MiB; 48 MiB with
    // the 2x margin allows a window of about 80 px: 48- or 64-px tiles with 8 px of context.
    assert!(
        auto_mib < whole_mib - 120.0,
        "tile auto peaked at {auto_mib:.0} MiB, the whole image at {whole_mib:.0} MiB"
    );
    let whole = load(&dir.path().join("whole.png")).image;
    let auto = load(&dir.path().join("auto.png")).image;
    assert!(max_abs_diff(&whole, &auto) <= 1);

    let out = upscale("auto", "again.png")
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    let tile: u32 = log
        .lines()
        .find(|l| l.contains("tile size from the memory budget"))
        .and_then(|l| l.split("tile=").nth(1))
        .and_then(|t| t.split_whitespace().next())
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no tile in the log:\n{log}"));
    // 48 or 64 depending on the few percent the measurement varies by.
    assert!((32..=64).contains(&tile), "tile {tile}");
}

#[test]
fn an_onnx_denoiser_runs_before_the_model_at_the_input_size() {
    use darkroom::ops::enhance::{enhance_image, Via};
    let dir = tempfile::tempdir().unwrap();
    let input = crop("photo_coffee_600x400.png", 200, 100, 48, 40);
    input.save(dir.path().join("in.png")).unwrap();
    let (main, denoiser) = ("realesr-animevideov3-x4", "waifu2x-upconv7-photo-x2");
    let (main_path, denoiser_path) = (model_path(main), model_path(denoiser));
    run_ok(
        dir.path(),
        &[
            "upscale",
            "in.png",
            "--model",
            main_path.to_str().unwrap(),
            "--denoise-model",
            denoiser_path.to_str().unwrap(),
            "--tile",
            "0",
            "-o",
            "out.png",
        ],
    );
    let got = load(&dir.path().join("out.png")).image;

    // The same by hand: the denoiser at the input's size, then the model.
    let mut first = model(denoiser);
    let cleaned = enhance_image(input.clone(), &Via::Full, &mut |image| {
        Ok(upscale_image(image, &mut first, 0, 0, &mut |_, _| {}).unwrap())
    })
    .unwrap();
    assert_eq!(cleaned.dimensions(), (48, 40));
    let mut m = model(main);
    let expected = upscale_image(&cleaned, &mut m, 0, 0, &mut |_, _| {}).unwrap();
    assert!(max_abs_diff(&expected, &got) <= 1);
    let plain = upscale_image(&input, &mut m, 0, 0, &mut |_, _| {}).unwrap();
    assert!(
        max_abs_diff(&plain, &got) > 1,
        "the denoiser changed nothing"
    );
}

#[test]
fn the_tile_bar_on_a_terminal_never_shows_a_full_bar_at_zero_tiles() {
    // `script` (util-linux, in Debian's essential bsdutils) gives the command a real terminal,
    // so indicatif draws as a person sees it.
    let dir = tempfile::tempdir().unwrap();
    stage(dir.path(), "photo_coffee_600x400.png");
    let command = format!(
        "{} upscale photo_coffee_600x400.png --model waifu2x-upconv7-photo-x2 --models-dir {} --tile 64",
        env!("CARGO_BIN_EXE_darkroom"),
        shared_dir().join("models").display()
    );
    let out = common::with_models(&mut std::process::Command::new("script"))
        .current_dir(dir.path())
        .args(["-qec", &command, "/dev/null"])
        .env("TERM", "xterm")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(
        screen.contains("/70 tiles"),
        "the bar counted the tiles: {screen}"
    );
    assert!(!screen.contains("0/0 tiles"), "{screen}");
}
