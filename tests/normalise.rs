//! The `normalise` recipe and `darkroom validate` on real images from ../shared/testdata,
//! through the library (sizes, colour) and the real binary (sets, captions, reports, bad
//! files), with the HTML report rendered by headless Chromium.

mod common;

use common::{darkroom, load, run_ok, stage, testdata};
use darkroom::core::colour;
use darkroom::core::dataset::{FitMode, Resolution, PRESETS};
use darkroom::io::decode::DecodeLimits;
use darkroom::ops::normalise::{self, Limit, NormaliseOptions, NormaliseSettings};
use image::{DynamicImage, GenericImageView};
use std::path::{Path, PathBuf};

/// Quality checks off, so only geometry decides.
fn no_checks(mut options: NormaliseOptions) -> NormaliseOptions {
    options.thresholds = normalise::Thresholds {
        min_sharpness: None,
        max_noise: None,
        max_blockiness: None,
        max_clipped: None,
        duplicate_distance: None,
    };
    options
}

/// A temp folder with `in/` holding copies of the named corpus files.
fn input_folder(names: &[&str]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    for name in names {
        stage(&input, name);
    }
    (dir, input)
}

fn records(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("metadata/processing_log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn record_for<'a>(records: &'a [serde_json::Value], source_name: &str) -> &'a serde_json::Value {
    records
        .iter()
        .find(|r| r["source"]["path"].as_str().unwrap().ends_with(source_name))
        .unwrap_or_else(|| panic!("no record for {source_name}"))
}

fn output_of(out: &Path, record: &serde_json::Value) -> PathBuf {
    out.join("images")
        .join(record["output"].as_str().expect("accepted"))
}

#[test]
fn every_preset_and_mode_gives_the_exact_size_or_a_too_small_rejection() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    // Upright sizes: 1800x1200 (EXIF 6), 4032x1008, 1530x2160.
    let sources = [
        ("photo_exif_orientation6.jpg", (1800u32, 1200u32)),
        ("panorama_4032x1008_4to1.jpg", (4032, 1008)),
        ("painting_peppercarrot_ep01_p03.jpg", (1530, 2160)),
    ];
    let limits = DecodeLimits::default();
    let mut accepted = 0;
    for (preset, side) in PRESETS
        .iter()
        .map(|(n, s)| (n.to_string(), *s))
        .chain([("832x1216".to_string(), 0)])
    {
        let resolution = Resolution::parse(&preset).unwrap();
        for mode in [
            FitMode::Center,
            FitMode::Thirds,
            FitMode::Pad,
            FitMode::Bucket,
        ] {
            let options = no_checks(NormaliseOptions::new(resolution.clone(), mode));
            for (name, (w, h)) in sources {
                let staged =
                    normalise::stage(&testdata(name), name, &options, &limits, &images, None)
                        .unwrap();
                let r = &staged.record;
                let plan = darkroom::core::dataset::plan(mode, &resolution, w, h, None);
                if plan.scale > 1.0 {
                    assert_eq!(r.verdict, "rejected", "{preset} {mode:?} {name}");
                    assert!(r.reasons[0].starts_with("too small"), "{:?}", r.reasons);
                    continue;
                }
                assert_eq!(
                    r.verdict, "accepted",
                    "{preset} {mode:?} {name}: {:?}",
                    r.reasons
                );
                let temp = staged.temp.as_ref().unwrap();
                let out = load(temp).image;
                let expected = match mode {
                    FitMode::Bucket => plan.bucket.unwrap(),
                    _ => (resolution.width, resolution.height),
                };
                assert_eq!(
                    (out.width(), out.height()),
                    expected,
                    "{preset} {mode:?} {name}"
                );
                if side != 0 && mode != FitMode::Bucket {
                    assert_eq!(out.width(), side);
                }
                accepted += 1;
            }
        }
    }
    assert!(accepted > 40, "only {accepted} accepted");
}

#[test]
fn bucketing_picks_the_expected_buckets_and_exif_rotation_comes_out_upright() {
    let (dir, _) = input_folder(&[
        "photo_bus_4032x3024_p3.jpg",
        "photo_exif_orientation6.jpg",
        "panorama_4032x1008_4to1.jpg",
        "painting_peppercarrot_ep01_p03.jpg",
    ]);
    let out = dir.path().join("set");
    run_ok(
        dir.path(),
        &[
            "normalise",
            "in",
            "set",
            "--preset",
            "sdxl",
            "--mode",
            "bucket",
            "--naming",
            "descriptive",
        ],
    );
    let records = records(&out);
    for (name, bucket) in [
        ("photo_bus_4032x3024_p3.jpg", "1152x896"),
        ("photo_exif_orientation6.jpg", "1216x832"),
        ("panorama_4032x1008_4to1.jpg", "2048x512"),
        ("painting_peppercarrot_ep01_p03.jpg", "832x1216"),
    ] {
        let r = record_for(&records, name);
        assert_eq!(r["verdict"], "accepted", "{name}: {}", r["reasons"]);
        assert_eq!(r["bucket"], bucket, "{name}");
        let stem = name.trim_end_matches(".jpg");
        assert_eq!(r["output"], format!("{stem}_sdxl_{bucket}.png"));
        let image = load(&output_of(&out, r)).image;
        assert_eq!(format!("{}x{}", image.width(), image.height()), bucket);
    }
    // The EXIF-6 photo is stored 1200x1800: upright it is landscape, and its pixels match
    // the upright source (resampled the same way), not the stored frame.
    let r = record_for(&records, "photo_exif_orientation6.jpg");
    assert!(r["operations"]
        .as_array()
        .unwrap()
        .iter()
        .any(|o| o["op"] == "orient"));
    let produced = load(&output_of(&out, r)).image;
    let upright = load(&testdata("photo_exif_orientation6.jpg")).image;
    let cw = 1200.0 * 1216.0 / 832.0;
    let crop = upright.crop_imm(((1800.0 - cw) / 2.0) as u32, 0, cw as u32, 1200);
    let reference = crop.resize_exact(1216, 832, image::imageops::FilterType::Lanczos3);
    let psnr = common::psnr(&produced, &reference);
    assert!(psnr > 30.0, "output vs upright reference: {psnr:.1} dB");
}

/// Display P3 (sRGB transfer curve) to sRGB by hand: the published linear matrix.
fn p3_to_srgb_by_hand(p: [u8; 3]) -> [f64; 3] {
    let lin = |v: u8| {
        let v = f64::from(v) / 255.0;
        if v <= 0.04045 {
            v / 12.92
        } else {
            ((v + 0.055) / 1.055).powf(2.4)
        }
    };
    let enc = |v: f64| {
        let v = v.clamp(0.0, 1.0);
        255.0
            * if v <= 0.003_130_8 {
                v * 12.92
            } else {
                1.055 * v.powf(1.0 / 2.4) - 0.055
            }
    };
    let [r, g, b] = p.map(lin);
    [
        enc(1.224_940 * r - 0.224_940 * g),
        enc(-0.042_057 * r + 1.042_057 * g),
        enc(-0.019_638 * r - 0.078_636 * g + 1.098_274 * b),
    ]
}

#[test]
fn display_p3_photo_comes_out_srgb_tagged_with_converted_colours() {
    let loaded = load(&testdata("photo_bus_4032x3024_p3.jpg"));
    let icc = loaded
        .icc_profile
        .clone()
        .expect("the bus photo carries Display P3");
    let small = loaded
        .image
        .resize_exact(504, 378, image::imageops::FilterType::Triangle);
    let (converted, result) = colour::to_srgb(small.clone(), Some(&icc));
    assert!(
        matches!(result, colour::ColourResult::Converted(ref n) if n.contains("P3")),
        "{result:?}"
    );
    let (before, after) = (small.to_rgb8(), converted.to_rgb8());
    let mut worst = 0f64;
    let mut changed = 0;
    for (a, b) in before.pixels().zip(after.pixels()) {
        let reference = p3_to_srgb_by_hand(a.0);
        for c in 0..3 {
            worst = worst.max((reference[c] - f64::from(b[c])).abs());
        }
        changed += usize::from(a != b);
    }
    assert!(
        worst <= 2.5,
        "moxcms vs the hand conversion: worst {worst:.2} levels"
    );
    assert!(
        changed > before.len() / 20,
        "the conversion changed only {changed} pixels"
    );

    // End to end: the PNG says sRGB (an sRGB chunk, no P3 profile) and the sidecar says
    // what was converted.
    let (dir, _) = input_folder(&["photo_bus_4032x3024_p3.jpg"]);
    run_ok(
        dir.path(),
        &[
            "normalise",
            "in",
            "set",
            "--preset",
            "sd15",
            "--mode",
            "center",
        ],
    );
    let out = dir.path().join("set");
    let bytes = std::fs::read(out.join("images/0001.png")).unwrap();
    let chunk_types: Vec<&[u8]> = png_chunks(&bytes);
    assert!(chunk_types.contains(&&b"sRGB"[..]), "no sRGB chunk");
    assert!(
        !chunk_types.contains(&&b"iCCP"[..]),
        "the P3 profile must not be carried over"
    );
    let record = &records(&out)[0];
    let colour_op = record["operations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["op"] == "colour")
        .unwrap();
    assert!(colour_op["result"]
        .as_str()
        .unwrap()
        .contains("converted from ICC 'Display P3'"));
}

fn png_chunks(bytes: &[u8]) -> Vec<&[u8]> {
    let mut chunks = Vec::new();
    let mut at = 8;
    while at + 8 <= bytes.len() {
        let len = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        chunks.push(&bytes[at + 4..at + 8]);
        at += 12 + len;
    }
    chunks
}

#[test]
fn sixteen_bit_grey_and_rgba_inputs() {
    let (dir, _) = input_folder(&[
        "hdr_room_16bit_hlg.png",
        "anime_eileen_320x720_rgba.png",
        "gray_camera_512.png",
    ]);
    let common_args = ["--preset", "320", "--mode", "pad", "--min-sharpness", "off"];
    let mut args = vec!["normalise", "in", "flat"];
    args.extend(common_args);
    run_ok(dir.path(), &args);
    let mut args = vec!["normalise", "in", "kept", "--alpha", "keep"];
    args.extend(common_args);
    run_ok(dir.path(), &args);

    let flat = records(&dir.path().join("flat"));
    // 16-bit: rounded to 8 bits (recorded), HLG profile converted, tonal detail kept.
    let hdr = record_for(&flat, "hdr_room_16bit_hlg.png");
    assert_eq!(hdr["verdict"], "accepted", "{}", hdr["reasons"]);
    let ops = hdr["operations"].as_array().unwrap();
    assert!(ops
        .iter()
        .any(|o| o["op"] == "bit-depth" && o["from"] == 16));
    let image = load(&output_of(&dir.path().join("flat"), hdr)).image;
    assert_eq!(image.color(), image::ColorType::Rgb8);
    let levels: std::collections::HashSet<u8> = image.to_rgb8().pixels().map(|p| p[1]).collect();
    assert!(levels.len() > 150, "only {} green levels", levels.len());

    // Grey comes out as RGB with equal channels.
    let grey = load(&output_of(
        &dir.path().join("flat"),
        record_for(&flat, "gray_camera_512.png"),
    ))
    .image;
    assert_eq!(grey.color(), image::ColorType::Rgb8);
    assert!(grey
        .to_rgb8()
        .pixels()
        .all(|p| p[0] == p[1] && p[1] == p[2]));

    // RGBA flattened onto white: transparent corners are white, and no dark fringe grows
    // where the sprite meets the background.
    let eileen = record_for(&flat, "anime_eileen_320x720_rgba.png");
    let flat_sprite = load(&output_of(&dir.path().join("flat"), eileen))
        .image
        .to_rgb8();
    assert_eq!((flat_sprite.width(), flat_sprite.height()), (320, 320));
    let source = load(&testdata("anime_eileen_320x720_rgba.png"))
        .image
        .to_rgba8();
    // Pad mode: 320x720 fits as 142x320 at x = 89 on a black canvas.
    assert_eq!(
        flat_sprite.get_pixel(100, 2).0,
        [255, 255, 255],
        "background of the sprite"
    );
    assert_eq!(flat_sprite.get_pixel(5, 160).0, [0, 0, 0], "letterbox");
    let darkest_near_edge = (0..320)
        .flat_map(|y| (90..230).map(move |x| (x, y)))
        .filter(|&(x, y)| {
            let sx = ((x - 89) as f64 * 320.0 / 142.0) as u32;
            let sy = (y as f64 * 720.0 / 320.0) as u32;
            sx < 320 && sy < 720 && source.get_pixel(sx, sy)[3] == 0
        })
        .map(|(x, y)| {
            let p = flat_sprite.get_pixel(x, y);
            (u32::from(p[0]) + u32::from(p[1]) + u32::from(p[2])) / 3
        })
        .min()
        .unwrap();
    assert!(
        darkest_near_edge > 120,
        "a dark halo in the transparent area: {darkest_near_edge}"
    );

    let kept = records(&dir.path().join("kept"));
    let sprite = load(&output_of(
        &dir.path().join("kept"),
        record_for(&kept, "anime_eileen_320x720_rgba.png"),
    ))
    .image;
    assert_eq!(sprite.color(), image::ColorType::Rgba8);
    assert_eq!(sprite.get_pixel(100, 2)[3], 0, "alpha kept");
    let opaque = sprite.to_rgba8().pixels().filter(|p| p[3] == 255).count();
    assert!(opaque > 142 * 320 / 5, "only {opaque} opaque pixels");
}

#[test]
fn scores_rank_blur_and_noise_and_near_duplicates_are_flagged() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    let source = load(&testdata("photo_exif_orientation6.jpg")).image;
    source.save(input.join("a_source.png")).unwrap();
    image::imageops::blur(&source.to_rgb8(), 4.0)
        .save(input.join("b_blurred.png"))
        .unwrap();
    let mut noisy = source.to_rgb8();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for p in noisy.pixels_mut() {
        for c in 0..3 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let n = ((state % 41) as i32) - 20; // uniform +-20: sigma 11.8
            p[c] = (i32::from(p[c]) + n).clamp(0, 255) as u8;
        }
    }
    noisy.save(input.join("c_noisy.png")).unwrap();
    // A resized, recompressed copy of the bus, and the bus itself.
    stage(&input, "photo_bus_4032x3024_p3.jpg");
    let bus = load(&testdata("photo_bus_4032x3024_p3.jpg")).image;
    let half = bus.resize_exact(2016, 1512, image::imageops::FilterType::Triangle);
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 70)
        .encode_image(&half)
        .unwrap();
    std::fs::write(input.join("z_bus_copy.jpg"), jpeg).unwrap();

    run_ok(
        dir.path(),
        &[
            "normalise",
            "in",
            "set",
            "--preset",
            "sd15",
            "--mode",
            "center",
            "--min-sharpness",
            "off",
            "--max-noise",
            "off",
        ],
    );
    let out = dir.path().join("set");
    let records = records(&out);
    let score = |name: &str, key: &str| record_for(&records, name)["scores"][key].as_f64().unwrap();
    assert!(
        score("b_blurred.png", "sharpness") < score("a_source.png", "sharpness") / 3.0,
        "blurred {} vs source {}",
        score("b_blurred.png", "sharpness"),
        score("a_source.png", "sharpness")
    );
    assert!(
        score("c_noisy.png", "noise_sigma") > score("a_source.png", "noise_sigma") + 5.0,
        "noisy {} vs source {}",
        score("c_noisy.png", "noise_sigma"),
        score("a_source.png", "noise_sigma")
    );
    // The blurred and noisy copies are near-duplicates of the source too: the perceptual
    // hash sees the same picture. The bus copy is a near-duplicate of the bus.
    let copy = record_for(&records, "z_bus_copy.jpg");
    assert_eq!(copy["verdict"], "rejected");
    let bus_output = record_for(&records, "photo_bus_4032x3024_p3.jpg")["output"]
        .as_str()
        .unwrap();
    assert_eq!(copy["duplicate_of"], bus_output);
    assert!(copy["reasons"][0]
        .as_str()
        .unwrap()
        .starts_with("near-duplicate of"));
    assert!(out.join("failed/z_bus_copy.jpg").is_file());
    let sidecar: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("failed/z_bus_copy.jpg.error.json")).unwrap(),
    )
    .unwrap();
    assert!(sidecar["scores"]["phash"].is_string());
    for name in ["b_blurred.png", "c_noisy.png"] {
        assert_eq!(record_for(&records, name)["verdict"], "rejected", "{name}");
    }
    // With duplicates off, the thresholds decide: the blurred copy fails min-sharpness.
    run_ok(
        dir.path(),
        &[
            "normalise",
            "in",
            "set2",
            "--preset",
            "sd15",
            "--mode",
            "center",
            "--duplicate-distance",
            "off",
            "--min-sharpness",
            "60",
        ],
    );
    let second = self::records(&dir.path().join("set2"));
    let blurred = record_for(&second, "b_blurred.png");
    assert_eq!(blurred["verdict"], "rejected");
    assert!(
        blurred["reasons"][0]
            .as_str()
            .unwrap()
            .starts_with("blurry"),
        "{}",
        blurred["reasons"]
    );
    let noisy = record_for(&second, "c_noisy.png");
    assert!(noisy["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r.as_str().unwrap().starts_with("noisy")));
    assert_eq!(record_for(&second, "a_source.png")["verdict"], "accepted");
}

#[test]
fn captions_are_copied_or_templated_and_names_follow_the_scheme() {
    let (dir, input) = input_folder(&[
        "photo_exif_orientation6.jpg",
        "painting_peppercarrot_ep01_p03.jpg",
    ]);
    std::fs::write(
        input.join("photo_exif_orientation6.txt"),
        "  a man on a bridge, sunset \n",
    )
    .unwrap();
    let template = "painting, {stem}, {preset} {bucket}";
    run_ok(
        dir.path(),
        &[
            "normalise",
            "in",
            "set",
            "--preset",
            "sd15",
            "--mode",
            "bucket",
            "--caption-template",
            template,
        ],
    );
    let out = dir.path().join("set");
    let images = out.join("images");
    // Sequential names in input order.
    assert_eq!(
        std::fs::read_to_string(images.join("0001.txt")).unwrap(),
        "painting, painting_peppercarrot_ep01_p03, sd15 448x576\n"
    );
    assert_eq!(
        std::fs::read_to_string(images.join("0002.txt")).unwrap(),
        "a man on a bridge, sunset\n"
    );
    let sidecar: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(images.join("0002.json")).unwrap()).unwrap();
    assert_eq!(sidecar["caption"], "a man on a bridge, sunset");
    assert_eq!(sidecar["source"]["sha256"].as_str().unwrap().len(), 64);
    assert!(sidecar["operations"]
        .as_array()
        .unwrap()
        .iter()
        .any(|o| o["op"] == "caption"));
    assert_eq!(sidecar["options"]["mode"], "bucket");

    // A second run into the same set goes on numbering; the sources it already holds keep
    // their names (their entries are updated, not duplicated).
    stage(&input, "panorama_4032x1008_4to1.jpg");
    run_ok(
        dir.path(),
        &[
            "normalise",
            "in",
            "set",
            "--preset",
            "sd15",
            "--mode",
            "bucket",
        ],
    );
    assert!(images.join("0003.png").is_file());
    assert!(!images.join("0004.png").exists());

    // Date naming.
    run_ok(
        dir.path(),
        &[
            "normalise",
            "in",
            "dated",
            "--preset",
            "sd15",
            "--naming",
            "date",
            "--format",
            "jpg",
            "--quality",
            "90",
        ],
    );
    let names: Vec<String> = std::fs::read_dir(dir.path().join("dated/images"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".jpg"))
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
    for name in &names {
        assert!(
            name.len() == "2026-11-21_0001.jpg".len()
                && name.as_bytes()[4] == b'-'
                && name.contains("_000"),
            "{name}"
        );
    }
}

#[test]
fn bad_files_are_rejected_with_reasons_and_the_batch_completes() {
    let (dir, input) = input_folder(&[
        "broken_truncated.jpg",
        "broken_truncated.png",
        "broken_text_named.jpg",
        "bomb_png_100000x100000.png",
        "tiny_17x9.png",
        "photo_exif_orientation6.jpg",
        "painting_peppercarrot_ep01_p03.jpg",
    ]);
    let out = run_ok(
        dir.path(),
        &[
            "normalise",
            "in",
            "set",
            "--preset",
            "sd15",
            "--mode",
            "thirds",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("2 accepted, 5 rejected (4 unreadable) of 7"),
        "{stderr}"
    );
    let set = dir.path().join("set");
    for (name, why) in [
        ("broken_truncated.jpg", "truncated JPEG"),
        ("broken_truncated.png", "truncated or corrupt"),
        ("broken_text_named.jpg", "not an image"),
        ("bomb_png_100000x100000.png", "refused before decoding"),
        ("tiny_17x9.png", "too small"),
    ] {
        let sidecar =
            std::fs::read_to_string(set.join(format!("failed/{name}.error.json"))).unwrap();
        assert!(sidecar.contains(why), "{name}: {sidecar}");
        assert!(stderr.contains(name), "{name} not in the summary");
    }
    // On the command line the hint names the flag, not the daemon's key.
    let tiny = std::fs::read_to_string(set.join("failed/tiny_17x9.png.error.json")).unwrap();
    assert!(
        tiny.contains("--upscale-model") && !tiny.contains("upscale_model)"),
        "{tiny}"
    );
    assert_eq!(
        common::daemon::files_in(&set.join("images"))
            .iter()
            .filter(|p| p.extension().unwrap() == "png")
            .count(),
        2
    );
    // The inputs are untouched.
    assert_eq!(std::fs::read_dir(&input).unwrap().count(), 7);
}

/// Renders `html` with headless Chromium: a screenshot and the DOM after layout.
fn chromium(html: &Path, dir: &Path) -> (DynamicImage, String) {
    let binary = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| std::process::Command::new(b).arg("--version").output().is_ok_and(|o| o.status.success()))
        .expect("headless Chromium is needed for the report test: scripts/test installs the Debian package chromium");
    let url = format!("file://{}", html.display());
    let shot = dir.join("report.png");
    let common_args = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
    ];
    let status = std::process::Command::new(binary)
        .args(common_args)
        .args([
            "--window-size=1200,2400",
            &format!("--screenshot={}", shot.display()),
            &url,
        ])
        .output()
        .unwrap();
    assert!(
        shot.is_file(),
        "no screenshot: {}",
        String::from_utf8_lossy(&status.stderr)
    );
    let dom = std::process::Command::new(binary)
        .args(common_args)
        .args(["--dump-dom", &url])
        .output()
        .unwrap();
    (
        load(&shot).image,
        String::from_utf8_lossy(&dom.stdout).into_owned(),
    )
}

#[test]
fn the_html_report_renders_in_chromium_and_lists_what_the_json_lists() {
    let (dir, input) = input_folder(&[
        "photo_exif_orientation6.jpg",
        "painting_peppercarrot_ep01_p03.jpg",
        "panorama_4032x1008_4to1.jpg",
        "anime_eileen_320x720_rgba.png",
        "broken_truncated.jpg",
        "tiny_17x9.png",
    ]);
    std::fs::copy(
        testdata("photo_exif_orientation6.jpg"),
        input.join("zz_same_photo.jpg"),
    )
    .unwrap();
    run_ok(
        dir.path(),
        &[
            "normalise",
            "in",
            "set",
            "--preset",
            "sd15",
            "--mode",
            "bucket",
            "--caption-template",
            "{stem}",
        ],
    );
    let metadata = dir.path().join("set/metadata");
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(metadata.join("validation_report.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(report["counts"]["images"], 4);
    assert_eq!(report["rejected"].as_array().unwrap().len(), 3);
    assert_eq!(report["duplicate_groups"].as_array().unwrap().len(), 1);
    let quality: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(metadata.join("quality_assessment.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(quality["images"].as_array().unwrap().len(), 7);

    let (shot, dom) = chromium(&metadata.join("validation_report.html"), dir.path());
    // The page rendered: not blank, with the blue histogram bars and the thumbnails' colours.
    let rgb = shot.to_rgb8();
    let distinct: std::collections::HashSet<[u8; 3]> = rgb.pixels().map(|p| p.0).collect();
    assert!(
        distinct.len() > 1000,
        "the screenshot looks blank ({} colours)",
        distinct.len()
    );
    assert!(
        rgb.pixels().any(|p| p.0 == [0x4a, 0x7b, 0xd0]),
        "no histogram bar drawn"
    );
    // Everything the JSON lists is on the page.
    for image in report["images"].as_array().unwrap() {
        let name = image["name"].as_str().unwrap();
        assert!(
            dom.contains(&format!("data-name=\"{name}\"")),
            "{name} missing from the contact sheet"
        );
        let thumb = image["thumbnail"].as_str().unwrap();
        assert!(metadata.join(thumb).is_file(), "{thumb}");
    }
    for rejected in report["rejected"].as_array().unwrap() {
        let source = rejected["source"].as_str().unwrap();
        assert!(
            dom.contains(source),
            "{source} missing from the rejected list"
        );
        let reason = rejected["reasons"][0].as_str().unwrap();
        assert!(
            dom.contains(
                &reason
                    .replace('&', "&amp;")
                    .replace('<', "&lt;")
                    .replace('>', "&gt;")
            ),
            "{reason}"
        );
    }
    for (bucket, count) in report["buckets"].as_object().unwrap() {
        assert!(
            dom.contains(&format!("<td>{bucket}</td><td class=\"n\">{count}</td>")),
            "bucket {bucket}"
        );
    }
    assert!(dom.contains("zz_same_photo.jpg (rejected)"));
}

#[test]
fn validate_rechecks_a_set_and_reports_what_changed() {
    let (dir, _) = input_folder(&[
        "photo_exif_orientation6.jpg",
        "painting_peppercarrot_ep01_p03.jpg",
    ]);
    run_ok(
        dir.path(),
        &[
            "normalise",
            "in",
            "set",
            "--preset",
            "sd15",
            "--caption-template",
            "{stem}",
        ],
    );
    let out = run_ok(dir.path(), &["validate", "set"]);
    assert!(String::from_utf8_lossy(&out.stdout)
        .trim()
        .ends_with("set/metadata/validation_report.html"));
    let images = dir.path().join("set/images");
    // Break it: a caption gone, an image changed, an orphan caption, a file that is not
    // what its name says.
    std::fs::remove_file(images.join("0001.txt")).unwrap();
    let changed = load(&images.join("0002.png")).image.fliph();
    changed.save(images.join("0002.png")).unwrap();
    std::fs::write(images.join("0009.txt"), "orphan").unwrap();
    std::fs::copy(testdata("broken_text_named.jpg"), images.join("0010.png")).unwrap();
    let output = darkroom()
        .current_dir(dir.path())
        .args(["validate", "set"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(65));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for expected in [
        "0001.png: no caption",
        "0002.png: the file's SHA-256 differs from its sidecar's",
        "0009.txt: orphan .txt",
        "0010.png: does not decode",
    ] {
        assert!(
            stderr.contains(expected),
            "missing '{expected}' in:\n{stderr}"
        );
    }
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("set/metadata/validation_report.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(report["checked"], "decoded");
    assert!(report["problems"].as_array().unwrap().len() >= 4);
}

#[test]
fn settings_report_every_problem_at_once() {
    let settings = NormaliseSettings {
        preset: Some("sdxxl".into()),
        mode: Some("squash".into()),
        filter: Some("sinc".into()),
        background: Some("#12".into()),
        quality: Some(0),
        max_noise: Some(Limit(None)),
        alpha: Some("keep".into()),
        format: Some("jpg".into()),
        ..NormaliseSettings::default()
    };
    let problems = settings.resolve().unwrap_err();
    let keys: Vec<&str> = problems.iter().map(|(k, _)| *k).collect();
    assert_eq!(
        keys,
        ["preset", "mode", "filter", "background", "alpha", "quality"],
        "{problems:?}"
    );
    let (code, stderr) = common::run_err(
        Path::new("."),
        &[
            "normalise",
            ".",
            "/tmp/x",
            "--preset",
            "sdxxl",
            "--mode",
            "squash",
        ],
    );
    assert_eq!(code, 64);
    assert!(
        stderr.contains("--preset: 'sdxxl'") && stderr.contains("--mode: 'squash'"),
        "{stderr}"
    );
}

#[test]
fn filters_linear_light_adjustments_and_formats() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    // A one-pixel black/white checkerboard: averaged in gamma space it is sRGB 128 (too
    // dark); averaged in linear light it is sRGB ~188.
    let board = image::RgbImage::from_fn(512, 512, |x, y| {
        if (x + y) % 2 == 0 {
            image::Rgb([255, 255, 255])
        } else {
            image::Rgb([0, 0, 0])
        }
    });
    let board_path = dir.path().join("board.png");
    board.save(&board_path).unwrap();
    let limits = DecodeLimits::default();
    let mean = |staged: &normalise::Staged| {
        let image = load(staged.temp.as_ref().unwrap()).image.to_rgb8();
        image.pixels().map(|p| f64::from(p[0])).sum::<f64>()
            / (image.width() * image.height()) as f64
    };
    let mut options = no_checks(NormaliseOptions::new(
        Resolution::parse("128").unwrap(),
        FitMode::Center,
    ));
    options.filter = normalise::ResizeFilter::Box;
    let gamma = normalise::stage(&board_path, "g", &options, &limits, &images, None).unwrap();
    options.linear_light = true;
    let linear = normalise::stage(&board_path, "l", &options, &limits, &images, None).unwrap();
    assert!(
        (mean(&gamma) - 127.5).abs() < 2.0,
        "gamma-space mean {}",
        mean(&gamma)
    );
    assert!(
        (mean(&linear) - 187.5).abs() < 2.0,
        "linear-light mean {}",
        mean(&linear)
    );
    // Every filter gives the exact size.
    for filter in [
        "lanczos3", "bicubic", "mitchell", "bilinear", "box", "nearest",
    ] {
        options.filter = filter.parse().unwrap();
        options.linear_light = false;
        let staged = normalise::stage(
            &testdata("photo_exif_orientation6.jpg"),
            filter,
            &options,
            &limits,
            &images,
            None,
        )
        .unwrap();
        let out = load(staged.temp.as_ref().unwrap()).image;
        assert_eq!((out.width(), out.height()), (128, 128), "{filter}");
    }

    // The adjustments through the binary, in order, each recorded; WebP and TIFF outputs
    // carry the sRGB profile.
    let input = dir.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    stage(&input, "photo_exif_orientation6.jpg");
    let adjust = [
        "--white-balance",
        "white-patch",
        "--contrast-stretch",
        "0.5,99.5",
        "--clahe",
        "2",
        "--saturation",
        "1.2",
        "--vibrance",
        "0.3",
        "--denoise",
        "bilateral",
        "--sharpen",
        "0.3,1,2",
    ];
    for format in ["webp", "tiff"] {
        let out = format!("set-{format}");
        let mut args = vec![
            "normalise",
            "in",
            out.as_str(),
            "--preset",
            "sd15",
            "--format",
            format,
        ];
        args.extend(adjust);
        run_ok(dir.path(), &args);
        let record = &records(&dir.path().join(&out))[0];
        let ops: Vec<&str> = record["operations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["op"].as_str().unwrap())
            .collect();
        let wanted = [
            "white-balance",
            "contrast-stretch",
            "clahe",
            "saturation",
            "denoise",
            "unsharp-mask",
        ];
        let at: Vec<usize> = wanted
            .iter()
            .map(|w| {
                ops.iter()
                    .position(|o| o == w)
                    .unwrap_or_else(|| panic!("{w} not in {ops:?}"))
            })
            .collect();
        assert!(at.windows(2).all(|p| p[0] < p[1]), "order {ops:?}");
        let path = output_of(&dir.path().join(&out), record);
        assert!(path
            .to_string_lossy()
            .ends_with(if format == "webp" { ".webp" } else { ".tif" }));
        let loaded = load(&path);
        assert_eq!((loaded.image.width(), loaded.image.height()), (512, 512));
        assert_eq!(
            loaded.icc_profile.as_deref(),
            Some(colour::srgb_icc().as_slice()),
            "{format}"
        );
    }
    let plain = load(&dir.path().join("set-webp/images/0001.webp")).image;
    run_ok(
        dir.path(),
        &[
            "normalise",
            "in",
            "plain",
            "--preset",
            "sd15",
            "--format",
            "webp",
        ],
    );
    let untouched = load(&dir.path().join("plain/images/0001.webp")).image;
    let p = common::psnr(&plain, &untouched);
    assert!(p < 30.0, "the adjustments changed little: {p:.1} dB");
}

#[test]
fn a_too_small_source_is_enlarged_by_the_named_model_on_the_command_line() {
    let (dir, _) = input_folder(&["photo_coffee_600x400.png"]);
    let models = common::shared_dir().join("models");
    run_ok(
        dir.path(),
        &[
            "normalise",
            "in",
            "set",
            "--preset",
            "sd15",
            "--mode",
            "bucket",
            "--upscale-model",
            "waifu2x-upconv7-photo-x2",
            "--models-dir",
            models.to_str().unwrap(),
        ],
    );
    let record = &records(&dir.path().join("set"))[0];
    assert_eq!(record["verdict"], "accepted", "{}", record["reasons"]);
    let upscale = record["operations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["op"] == "upscale")
        .unwrap();
    assert_eq!(upscale["to"], "1200x800");
    let out = load(&output_of(&dir.path().join("set"), record)).image;
    assert_eq!((out.width(), out.height()), (640, 384));
    // Without the model it is rejected, with the factor it would need.
    run_ok(
        dir.path(),
        &[
            "normalise",
            "in",
            "bare",
            "--preset",
            "sd15",
            "--mode",
            "bucket",
        ],
    );
    let bare = &records(&dir.path().join("bare"))[0];
    assert!(
        bare["reasons"][0]
            .as_str()
            .unwrap()
            .contains("would need 1.07x enlarging"),
        "{}",
        bare["reasons"]
    );
}

#[test]
fn an_animated_gif_is_read_as_its_first_frame_and_its_record_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    let gif = common::three_frame_gif();
    std::fs::write(input.join("anim.gif"), &gif).unwrap();
    run_ok(dir.path(), &["normalise", "in", "set", "--preset", "sd15"]);
    let records = records(&dir.path().join("set"));
    let record = record_for(&records, "anim.gif");
    let first_frame = record["operations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["op"] == "first-frame")
        .unwrap_or_else(|| panic!("no first-frame note: {record:#}"));
    assert!(
        first_frame["note"]
            .as_str()
            .unwrap()
            .contains("the first of its 3 frames was used; the 2 later frames were dropped"),
        "{first_frame}"
    );
    // The GIF is far too small for sd15: its rejection still carries the note.
    assert_eq!(record["verdict"], "rejected");
}
