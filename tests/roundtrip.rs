//! The proxy round trip through the real binary, on every image class of the corpus:
//! when the model changes nothing, the merge gives back the original bit for bit.

mod common;

use common::*;

/// split -> (processed = proxy) -> delta -> merge, then compare with the original.
fn identity_round_trip(name: &str, width: &str, height: &str) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (original, stem) = identity_deltas(d, name, width, height);

    let delta = load(&d.join(format!("{stem}_proxy_delta.png")));
    let refined = load(&d.join(format!("{stem}_proxy_delta_refined.png")));
    for img in [&delta.image, &refined.image] {
        assert!(
            img.as_bytes().iter().all(|&v| v == 127),
            "{name}: identity delta must be all 127"
        );
    }

    run_ok(
        d,
        &[
            "merge",
            name,
            &format!("{stem}_proxy_delta.png"),
            "--refined-delta-image",
            &format!("{stem}_proxy_delta_refined.png"),
        ],
    );
    let before = load(&original);
    let after = load(&d.join(format!("{stem}_merged.png")));
    assert_eq!(
        after.image.color(),
        before.image.color(),
        "{name}: layout kept"
    );
    assert_eq!(
        (after.image.width(), after.image.height()),
        (before.image.width(), before.image.height()),
        "{name}: size kept"
    );
    assert!(
        after.image == before.image,
        "{name}: merge of an identity edit must equal the original"
    );
    assert_eq!(
        after.icc_profile, before.icc_profile,
        "{name}: ICC profile carried over"
    );
    assert_eq!(
        after.exif_orientation, 1,
        "{name}: output is upright with no orientation to apply"
    );
    assert_eq!(
        after.exif, before.exif,
        "{name}: EXIF carried into the output, orientation reset to 1"
    );
}

#[test]
fn identity_round_trip_is_exact_for_rgb() {
    identity_round_trip("photo_coffee_600x400.png", "256", "256");
}

#[test]
fn identity_round_trip_is_exact_for_rgba_and_keeps_alpha() {
    identity_round_trip("anime_eileen_320x720_rgba.png", "128", "128");
}

#[test]
fn identity_round_trip_is_exact_for_gray() {
    identity_round_trip("gray_camera_512.png", "100", "100");
}

#[test]
fn identity_round_trip_is_exact_for_16_bit_with_icc() {
    identity_round_trip("hdr_room_16bit_hlg.png", "256", "256");
}

#[test]
fn identity_round_trip_is_exact_for_a_17x9_image_with_a_larger_proxy() {
    identity_round_trip("tiny_17x9.png", "64", "64");
}

#[test]
fn identity_round_trip_is_exact_for_a_4_to_1_panorama() {
    identity_round_trip("panorama_4032x1008_4to1.jpg", "512", "512");
}

#[test]
fn identity_round_trip_is_exact_for_an_exif_rotated_jpeg() {
    identity_round_trip("photo_exif_orientation6.jpg", "512", "512");
}

#[test]
fn identity_round_trip_is_exact_for_percent_targets() {
    identity_round_trip("photo_coffee_600x400.png", "25%", "25%");
}

#[test]
fn identity_round_trip_is_exact_for_the_12_mp_photo() {
    identity_round_trip("photo_bus_4032x3024_p3.jpg", "1024", "1024");
}

#[test]
fn exif_rotated_proxy_is_upright() {
    let dir = tempfile::tempdir().unwrap();
    stage(dir.path(), "photo_exif_orientation6.jpg");
    run_ok(
        dir.path(),
        &["split", "photo_exif_orientation6.jpg", "300", "300"],
    );
    let proxy = load(&dir.path().join("photo_exif_orientation6_proxy.png"));
    assert_eq!((proxy.image.width(), proxy.image.height()), (300, 300));
    // Displays 1800x1200: landscape, so padding sits above and below (rows 0..50 black).
    let rgb = proxy.image.to_rgb8();
    assert_eq!(rgb.get_pixel(150, 10).0, [0, 0, 0]);
    assert_ne!(rgb.get_pixel(150, 150).0, [0, 0, 0]);
}

#[test]
fn metadata_records_geometry_and_hash() {
    let dir = tempfile::tempdir().unwrap();
    stage(dir.path(), "panorama_4032x1008_4to1.jpg");
    run_ok(
        dir.path(),
        &["split", "panorama_4032x1008_4to1.jpg", "1024", "1024"],
    );
    let text = std::fs::read_to_string(
        dir.path()
            .join("panorama_4032x1008_4to1_proxy_metadata.txt"),
    )
    .unwrap();
    let meta = darkroom::io::metadata::ProxyMetadata::parse(&text, "t").unwrap();
    assert_eq!(
        (meta.geometry.scaled_width, meta.geometry.scaled_height),
        (1024, 256)
    );
    assert_eq!((meta.geometry.pad_left, meta.geometry.pad_top), (0, 384));
    let bytes = std::fs::read(testdata("panorama_4032x1008_4to1.jpg")).unwrap();
    assert_eq!(meta.original.sha256, darkroom::io::hash::sha256_hex(&bytes));
}

#[test]
fn output_format_follows_the_extension() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    stage(d, "photo_coffee_600x400.png");
    run_ok(d, &["split", "photo_coffee_600x400.png", "200", "200"]);
    run_ok(
        d,
        &[
            "delta",
            "photo_coffee_600x400.png",
            "photo_coffee_600x400_proxy.png",
            "200",
            "200",
        ],
    );
    let original = load(&d.join("photo_coffee_600x400.png"));
    for (ext, format, lossless) in [
        ("tif", image::ImageFormat::Tiff, true),
        ("webp", image::ImageFormat::WebP, true),
        ("jpg", image::ImageFormat::Jpeg, false),
        ("png", image::ImageFormat::Png, true),
    ] {
        let out = format!("out.{ext}");
        run_ok(
            d,
            &[
                "merge",
                "photo_coffee_600x400.png",
                "photo_coffee_600x400_proxy_delta.png",
                "--output_image",
                &out,
            ],
        );
        let merged = load(&d.join(&out));
        assert_eq!(merged.format, format, "{ext}");
        if lossless {
            assert!(
                merged.image.to_rgb8() == original.image.to_rgb8(),
                "{ext} is lossless"
            );
        } else {
            assert!(
                psnr(&merged.image, &original.image) > 38.0,
                "jpg at q95 stays close"
            );
        }
    }
}

#[test]
fn a_delta_for_another_original_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    stage(d, "photo_coffee_600x400.png");
    stage(d, "gray_camera_512.png");
    run_ok(d, &["split", "photo_coffee_600x400.png", "200", "200"]);
    run_ok(
        d,
        &[
            "delta",
            "photo_coffee_600x400.png",
            "photo_coffee_600x400_proxy.png",
            "200",
            "200",
        ],
    );
    let (code, err) = run_err(
        d,
        &[
            "merge",
            "gray_camera_512.png",
            "photo_coffee_600x400_proxy_delta.png",
        ],
    );
    assert_eq!(code, 65);
    assert!(err.contains("600x400") && err.contains("512x512"), "{err}");
    assert!(!d.join("gray_camera_512_merged.png").exists());

    // Same size, other content: refused unless --force.
    let other = d.join("other.png");
    let mut img = load(&d.join("photo_coffee_600x400.png")).image.to_rgb8();
    img.put_pixel(0, 0, image::Rgb([1, 2, 3]));
    img.save(&other).unwrap();
    let (code, err) = run_err(
        d,
        &["merge", "other.png", "photo_coffee_600x400_proxy_delta.png"],
    );
    assert_eq!(code, 65);
    assert!(
        err.contains("not the file the delta was made from"),
        "{err}"
    );
    run_ok(
        d,
        &[
            "merge",
            "other.png",
            "photo_coffee_600x400_proxy_delta.png",
            "--force",
        ],
    );
}

#[test]
fn a_processed_image_of_the_wrong_size_is_refused_naming_both_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    stage(d, "photo_coffee_600x400.png");
    stage(d, "gray_camera_512.png");
    let (code, err) = run_err(
        d,
        &[
            "delta",
            "photo_coffee_600x400.png",
            "gray_camera_512.png",
            "256",
            "256",
        ],
    );
    assert_eq!(code, 65);
    assert!(err.contains("512x512") && err.contains("256x256"), "{err}");
}

#[test]
fn a_delta_without_metadata_is_merged_with_inferred_geometry() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    stage(d, "photo_coffee_600x400.png");
    run_ok(d, &["split", "photo_coffee_600x400.png", "256", "256"]);
    run_ok(
        d,
        &[
            "delta",
            "photo_coffee_600x400.png",
            "photo_coffee_600x400_proxy.png",
            "256",
            "256",
        ],
    );
    // Strip the embedded metadata and the sidecar, as a foreign tool might.
    let delta = load(&d.join("photo_coffee_600x400_proxy_delta.png")).image;
    delta.save(d.join("bare_delta.png")).unwrap();
    std::fs::remove_file(d.join("photo_coffee_600x400_proxy_metadata.txt")).unwrap();
    run_ok(
        d,
        &[
            "merge",
            "photo_coffee_600x400.png",
            "bare_delta.png",
            "-o",
            "out.png",
        ],
    );
    assert!(load(&d.join("out.png")).image == load(&d.join("photo_coffee_600x400.png")).image);
}

#[test]
fn sixteen_bit_delta_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    stage(d, "hdr_room_16bit_hlg.png");
    run_ok(d, &["split", "hdr_room_16bit_hlg.png", "300", "300"]);
    run_ok(
        d,
        &[
            "delta",
            "hdr_room_16bit_hlg.png",
            "hdr_room_16bit_hlg_proxy.png",
            "300",
            "300",
            "--delta-depth",
            "16",
        ],
    );
    let delta = load(&d.join("hdr_room_16bit_hlg_proxy_delta.png"));
    assert_eq!(delta.image.color(), image::ColorType::Rgb16);
    assert!(delta.image.to_rgb16().iter().all(|&v| v == 32768));
    run_ok(
        d,
        &[
            "merge",
            "hdr_room_16bit_hlg.png",
            "hdr_room_16bit_hlg_proxy_delta.png",
        ],
    );
    assert!(
        load(&d.join("hdr_room_16bit_hlg_merged.png")).image
            == load(&d.join("hdr_room_16bit_hlg.png")).image
    );
}

#[test]
fn help_teaches_with_examples() {
    for sub in ["split", "delta", "merge", "batch-split"] {
        let out = darkroom().args([sub, "--help"]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success());
        assert!(
            text.contains("Example"),
            "{sub} --help shows an example:\n{text}"
        );
    }
}

#[test]
fn a_command_whose_output_pipe_is_closed_ends_quietly_as_unix_tools_do() {
    // `darkroom check-config ... | head -1`: the reader is gone before darkroom writes.
    use std::os::unix::process::ExitStatusExt;
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let config = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/darkroom.toml");
    let out = darkroom()
        .arg("check-config")
        .arg(&config)
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGPIPE),
        "{:?} {stderr}",
        out.status
    );
}

/// The original decoded at full resolution, its proxy geometry for `target`, and the proxy
/// made from the full-resolution pixels (the reference for reduced decodes).
fn full_resolution_proxy(
    path: &std::path::Path,
    target: darkroom::core::geometry::Target,
) -> (
    darkroom::io::decode::LoadedImage,
    darkroom::core::geometry::ProxyGeometry,
    image::DynamicImage,
) {
    let full = load(path);
    let g = darkroom::core::geometry::ProxyGeometry::plan(
        full.image.width(),
        full.image.height(),
        target,
    );
    let reference = darkroom::core::proxy::make_proxy(&full.image, &g).unwrap();
    (full, g, reference)
}

/// The `needed` size a split asks the decoder for: the proxy's scaled size.
fn scaled_size_for(target: darkroom::core::geometry::Target) -> impl Fn(u32, u32) -> (u32, u32) {
    move |w, h| {
        let g = darkroom::core::geometry::ProxyGeometry::plan(w, h, target);
        (g.scaled_width, g.scaled_height)
    }
}

#[test]
fn dct_reduced_proxy_stays_within_48_db_of_a_full_resolution_lanczos_proxy() {
    use darkroom::core::geometry::Target;
    use darkroom::core::proxy::make_proxy;
    let path = testdata("photo_bus_4032x3024_p3.jpg");
    let target = Target::pixels(512, 512);
    let (full, g, reference) = full_resolution_proxy(&path, target);
    let needed = scaled_size_for(target);
    let source = darkroom::io::decode::load_for_proxy(&path, &Default::default(), &needed).unwrap();
    assert!(
        source.loaded.image.width() < full.image.width(),
        "the JPEG was reduced in the DCT domain"
    );
    assert_eq!((source.full_width, source.full_height), (4032, 3024));
    assert_eq!(source.loaded.icc_profile, full.icc_profile);
    let reduced = make_proxy(&source.loaded.image, &g).unwrap();
    let p = psnr(&reduced, &reference);
    assert!(
        p > 48.0,
        "reduced proxy only {p:.2} dB from the full-resolution one"
    );
}

#[test]
fn proxies_resampled_from_the_reduced_planes_stay_close_to_full_resolution_lanczos_proxies() {
    // `split` takes a JPEG's proxy straight from the DCT-reduced YCbCr planes (luma and
    // half-resolution chroma each resampled from its own grid, converted to RGB at proxy
    // size). The bus has restart markers, the panorama none (the speculative two-thread path).
    use darkroom::core::geometry::Target;
    use darkroom::core::proxy::make_proxy;
    for name in ["photo_bus_4032x3024_p3.jpg", "panorama_4032x1008_4to1.jpg"] {
        let path = testdata(name);
        let target = Target::pixels(512, 512);
        let (full, g, reference) = full_resolution_proxy(&path, target);
        let needed = scaled_size_for(target);
        let limits = Default::default();
        let source = darkroom::io::decode::load_proxy_sized(&path, &limits, &needed).unwrap();
        assert_eq!(
            (source.loaded.image.width(), source.loaded.image.height()),
            (g.scaled_width, g.scaled_height),
            "{name}: resampled while decoding"
        );
        assert_eq!(source.loaded.icc_profile, full.icc_profile);
        assert_eq!(source.loaded.sha256, full.sha256);
        let proxy = make_proxy(&source.loaded.image, &g).unwrap();
        let p = psnr(&proxy, &reference);
        assert!(
            p > 48.0,
            "{name}: planar proxy only {p:.2} dB from the full-resolution one"
        );
        // The same proxy every time (merge rebuilds it to fit the edit).
        let again = darkroom::io::decode::load_proxy_sized(&path, &limits, &needed).unwrap();
        assert!(again.loaded.image.as_bytes() == source.loaded.image.as_bytes());
    }
}

#[test]
fn a_grey_original_stays_grey_with_a_neutral_rgb_return_and_turns_rgb_with_a_coloured_one() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    stage(d, "gray_camera_512.png");
    assert!(!load(&d.join("gray_camera_512.png"))
        .image
        .color()
        .has_color());
    run_ok(d, &["split", "gray_camera_512.png", "256", "256"]);
    let proxy = image::open(d.join("gray_camera_512_proxy.png"))
        .unwrap()
        .to_luma8();
    // What most tools save for a grey proxy: RGB with R = G = B, here brightened.
    let neutral = image::RgbImage::from_fn(proxy.width(), proxy.height(), |x, y| {
        let v = proxy.get_pixel(x, y).0[0].saturating_add(20);
        image::Rgb([v, v, v])
    });
    neutral.save(d.join("neutral.png")).unwrap();
    // A model that tinted it.
    let tinted = image::RgbImage::from_fn(proxy.width(), proxy.height(), |x, y| {
        let v = proxy.get_pixel(x, y).0[0];
        image::Rgb([v.saturating_add(30), v, v])
    });
    tinted.save(d.join("tinted.png")).unwrap();
    for (processed, method, colour) in [
        ("neutral.png", "additive", false),
        ("neutral.png", "guided", false),
        ("tinted.png", "additive", true),
        ("tinted.png", "guided", true),
    ] {
        let delta = format!("{processed}_{method}_delta.png");
        let merged = format!("{processed}_{method}_merged.png");
        run_ok(
            d,
            &[
                "delta",
                "gray_camera_512.png",
                processed,
                "256",
                "256",
                "--delta-image",
                &delta,
            ],
        );
        run_ok(
            d,
            &[
                "merge",
                "gray_camera_512.png",
                &delta,
                "--method",
                method,
                "--output-image",
                &merged,
            ],
        );
        let out = load(&d.join(&merged)).image;
        assert_eq!(
            out.color().has_color(),
            colour,
            "{processed} with {method}: {:?}",
            out.color()
        );
        let mean = out.to_luma8().iter().map(|&v| f64::from(v)).sum::<f64>()
            / f64::from(out.width() * out.height());
        let before = load(&d.join("gray_camera_512.png"))
            .image
            .to_luma8()
            .iter()
            .map(|&v| f64::from(v))
            .sum::<f64>()
            / f64::from(out.width() * out.height());
        assert!(
            mean > before + 5.0 || colour,
            "{processed}: the lift came through"
        );
    }
}

#[test]
fn split_takes_the_size_as_wxh_or_as_two_arguments_and_says_so_when_one_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    stage(d, "tiny_17x9.png");
    std::fs::create_dir_all(d.join("one")).unwrap();
    std::fs::create_dir_all(d.join("two")).unwrap();
    run_ok(d, &["split", "tiny_17x9.png", "8x8", "--output-dir", "one"]);
    run_ok(
        d,
        &["split", "tiny_17x9.png", "8", "8", "--output-dir", "two"],
    );
    assert_eq!(
        std::fs::read(d.join("one/tiny_17x9_proxy.png")).unwrap(),
        std::fs::read(d.join("two/tiny_17x9_proxy.png")).unwrap()
    );
    let (code, stderr) = run_err(d, &["split", "tiny_17x9.png", "8"]);
    assert_eq!(code, 64, "{stderr}");
    assert!(
        stderr.contains("WIDTH and HEIGHT") && stderr.contains("8x8"),
        "{stderr}"
    );
    let (code, stderr) = run_err(d, &["split", "tiny_17x9.png", "8x8", "8"]);
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("given twice"), "{stderr}");
}
