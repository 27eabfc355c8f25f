//! darkroom's own reduced-size JPEG decoder (`io::jpeg_reduced`) against `jpeg-decoder`'s
//! scaled decoding of the same real files, its two-thread entropy decoding against its own
//! one-thread decoding (bit-exact), and damaged files (no panic, and nothing but `None` or a
//! deterministic image).

mod common;

use common::testdata;
use darkroom::io::jpeg_reduced::{decode_with, EntropySplit, Reduced};

/// jpeg-decoder's decode of `bytes` at `n`/8 scale: (width, height, pixels).
fn reference(bytes: &[u8], n: usize) -> (u32, u32, Vec<u8>) {
    let mut decoder = jpeg_decoder::Decoder::new(std::io::Cursor::new(bytes));
    decoder.read_info().unwrap();
    let info = decoder.info().unwrap();
    let want = |side: u16| ((usize::from(side) * n).div_ceil(8)) as u16;
    let (w, h) = decoder.scale(want(info.width), want(info.height)).unwrap();
    let pixels = decoder.decode().unwrap();
    (u32::from(w), u32::from(h), pixels)
}

fn psnr(a: &[u8], b: &[u8]) -> f64 {
    assert_eq!(a.len(), b.len());
    let se: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2))
        .sum();
    if se == 0.0 {
        return f64::INFINITY;
    }
    10.0 * (255f64.powi(2) / (se / a.len() as f64)).log10()
}

fn both_ways(bytes: &[u8], n: usize) -> (Option<Reduced>, Option<Reduced>) {
    (decode_with(bytes, n, false), decode_with(bytes, n, true))
}

#[test]
fn real_photos_decode_as_jpeg_decoder_does_and_two_threads_equal_one() {
    // The bus has restart markers (DRI 252); the panorama and the EXIF-6 photo have none, so
    // their second thread starts speculatively in the middle of the data.
    let cases = [
        ("photo_bus_4032x3024_p3.jpg", true),
        ("panorama_4032x1008_4to1.jpg", false),
        ("photo_exif_orientation6.jpg", false),
    ];
    for (name, has_restarts) in cases {
        let bytes = std::fs::read(testdata(name)).unwrap();
        for n in [4, 2, 1] {
            let (serial, parallel) = both_ways(&bytes, n);
            let (serial, parallel) = (serial.unwrap(), parallel.unwrap());
            assert_eq!(serial.entropy, EntropySplit::Serial);
            if has_restarts {
                assert_eq!(parallel.entropy, EntropySplit::AtRestartMarker, "{name}");
            } else {
                assert!(
                    matches!(parallel.entropy, EntropySplit::Speculative { met_at_mcu } if met_at_mcu > 0),
                    "{name}: the threads met ({:?})",
                    parallel.entropy
                );
            }
            assert!(
                serial.pixels == parallel.pixels,
                "{name} n={n}: two threads gave other pixels than one"
            );
            let (w, h, expected) = reference(&bytes, n);
            assert_eq!((parallel.width, parallel.height), (w, h), "{name} n={n}");
            assert_eq!(parallel.channels, 3);
            let p = psnr(&parallel.pixels, &expected);
            // Both are DCT-domain reductions with fancy chroma upsampling; they differ in the
            // arithmetic only (jpeg-decoder keeps libjpeg's integer IDCTs).
            assert!(p > 44.0, "{name} n={n}: {p:.2} dB from jpeg-decoder");
        }
    }
}

#[test]
fn odd_sizes_and_gray_images_match_jpeg_decoder() {
    use image::codecs::jpeg::JpegEncoder;
    use image::{ExtendedColorType, ImageEncoder};
    for (w, h) in [(1u32, 1u32), (17, 9), (33, 65), (250, 17), (9, 300)] {
        let rgb: Vec<u8> = (0..w * h)
            .flat_map(|i| {
                let (x, y) = (i % w, i / w);
                [(x * 7 + y) as u8, (y * 5) as u8, ((x ^ y) * 3) as u8]
            })
            .collect();
        let gray: Vec<u8> = rgb.chunks(3).map(|p| p[0] / 2 + p[1] / 2).collect();
        for (pixels, colour, channels) in [
            (&rgb, ExtendedColorType::Rgb8, 3u8),
            (&gray, ExtendedColorType::L8, 1u8),
        ] {
            let mut file = Vec::new();
            JpegEncoder::new_with_quality(&mut file, 90)
                .write_image(pixels, w, h, colour)
                .unwrap();
            for n in [4, 2, 1] {
                let ours = decode_with(&file, n, false).expect("a baseline JPEG");
                let expected_size = ((w * n as u32).div_ceil(8), (h * n as u32).div_ceil(8));
                assert_eq!((ours.width, ours.height), expected_size, "{w}x{h} n={n}");
                assert_eq!(ours.channels, channels);
                if (w, h) == (1, 1) {
                    // jpeg-decoder takes 1/8 for any request a 1x1 image meets; the one pixel
                    // is the block's mean either way.
                    continue;
                }
                let (rw, rh, expected) = reference(&file, n);
                assert_eq!((rw, rh), expected_size);
                let p = psnr(&ours.pixels, &expected);
                assert!(p > 35.0, "{w}x{h} {colour:?} n={n}: {p:.2} dB");
            }
        }
    }
}

/// `bytes` transcoded by jpegtran (libjpeg-turbo; scripts/test installs it), which keeps
/// every coefficient.
fn jpegtran(bytes: &[u8], args: &[&str]) -> Vec<u8> {
    use std::io::Write;
    let mut child = std::process::Command::new("jpegtran")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("jpegtran runs (Debian package libjpeg-turbo-progs; scripts/test installs it)");
    let mut stdin = child.stdin.take().unwrap();
    let input = bytes.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(output.status.success(), "jpegtran {args:?} failed");
    output.stdout
}

#[test]
fn a_progressive_file_reduces_to_its_baseline_twins_pixels() {
    // jpegtran -progressive keeps every coefficient, so the progressive file's reduced decode
    // is the baseline file's, exactly, at every reduction; with restart markers too.
    let bus = std::fs::read(testdata("photo_bus_4032x3024_p3.jpg")).unwrap();
    for args in [
        &["-progressive"][..],
        &["-progressive", "-restart", "3"][..],
    ] {
        let progressive = jpegtran(&bus, args);
        for n in 1..=7 {
            let baseline = decode_with(&bus, n, false).unwrap();
            let (serial, parallel) = both_ways(&progressive, n);
            let (serial, parallel) = (serial.unwrap(), parallel.unwrap());
            assert_eq!(
                (serial.width, serial.height),
                (baseline.width, baseline.height)
            );
            assert!(
                serial.pixels == baseline.pixels,
                "{args:?} n={n}: not the baseline's pixels"
            );
            assert!(
                serial.pixels == parallel.pixels,
                "{args:?} n={n}: two threads differ"
            );
        }
    }
}

#[test]
fn a_progressive_painting_from_the_wild_decodes_as_jpeg_decoder_does() {
    let painting = std::fs::read(testdata("painting_peppercarrot_ep01_p03.jpg")).unwrap();
    for n in [4, 2, 1] {
        let ours = decode_with(&painting, n, true).expect("the painting is progressive");
        let (w, h, expected) = reference(&painting, n);
        assert_eq!((ours.width, ours.height), (w, h), "n={n}");
        let p = psnr(&ours.pixels, &expected);
        assert!(p > 44.0, "n={n}: {p:.2} dB from jpeg-decoder");
    }
}

#[test]
fn files_it_does_not_handle_are_left_to_jpeg_decoder() {
    // Arithmetic coding.
    let bus = std::fs::read(testdata("photo_bus_4032x3024_p3.jpg")).unwrap();
    assert!(decode_with(&jpegtran(&bus, &["-arithmetic"]), 4, true).is_none());
    // Truncated (no end-of-image marker), text, and a PNG.
    for name in [
        "broken_truncated.jpg",
        "broken_text_named.jpg",
        "tiny_17x9.png",
    ] {
        let bytes = std::fs::read(testdata(name)).unwrap();
        assert!(decode_with(&bytes, 2, true).is_none(), "{name}");
    }
    // No reduction asked for: the full decoder is zune-jpeg's.
    let bus = std::fs::read(testdata("photo_bus_4032x3024_p3.jpg")).unwrap();
    assert!(decode_with(&bus, 8, true).is_none());
}

#[test]
fn a_restart_marker_missing_from_the_data_is_refused() {
    let bytes = std::fs::read(testdata("photo_bus_4032x3024_p3.jpg")).unwrap();
    // Drop the first RST marker of the scan data (FF D0..D7 after the SOS).
    let sos = bytes.windows(2).position(|w| w == [0xFF, 0xDA]).unwrap();
    let rst = sos
        + bytes[sos..]
            .windows(2)
            .position(|w| w[0] == 0xFF && (0xD0..=0xD7).contains(&w[1]))
            .unwrap();
    let mut damaged = bytes.clone();
    damaged.drain(rst..rst + 2);
    assert!(decode_with(&damaged, 2, true).is_none());
    assert!(decode_with(&damaged, 2, false).is_none());
}

#[test]
fn damaged_scan_data_never_panics_and_two_threads_still_equal_one() {
    // Overwrite bytes all through the scan data of a photo without restart markers, where
    // the second thread's speculative start meets the damage; then cut the data short.
    let original = std::fs::read(testdata("photo_exif_orientation6.jpg")).unwrap();
    let sos = original.windows(2).position(|w| w == [0xFF, 0xDA]).unwrap();
    let data_start =
        sos + 2 + usize::from(u16::from_be_bytes([original[sos + 2], original[sos + 3]]));
    let data_end = original.len() - 2;
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut decoded = 0;
    for round in 0..48 {
        let mut bytes = original.clone();
        let at = data_start + (next() as usize) % (data_end - data_start);
        let length = 1 + (next() as usize) % 16;
        for b in &mut bytes[at..(at + length).min(data_end)] {
            *b = next() as u8;
        }
        if round % 4 == 3 {
            // Cut the data at `at` and end the image there.
            bytes.truncate(at);
            bytes.extend_from_slice(&[0xFF, 0xD9]);
        }
        let (serial, parallel) = both_ways(&bytes, 2);
        match (serial, parallel) {
            (Some(a), Some(b)) => {
                assert!(a.pixels == b.pixels, "round {round}: threads disagree");
                decoded += 1;
            }
            (None, None) => {}
            (a, b) => panic!(
                "round {round}: one way decoded, the other did not ({} / {})",
                a.is_some(),
                b.is_some()
            ),
        }
    }
    // Random bytes mostly make an invalid code somewhere; some land where they decode.
    assert!(decoded < 48, "damage was noticed at least once");
}

/// A full-size decode of `bytes` (zune-jpeg, through `image`), Lanczos3-resampled to
/// `width x height` as RGB.
fn full_size_resampled(bytes: &[u8], width: u32, height: u32) -> Vec<u8> {
    use fast_image_resize::{FilterType, ResizeAlg, ResizeOptions, Resizer};
    let full = image::load_from_memory(bytes).unwrap().to_rgb8();
    let mut target = image::RgbImage::new(width, height);
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Lanczos3));
    Resizer::new().resize(&full, &mut target, &options).unwrap();
    target.into_raw()
}

#[test]
fn every_reduction_from_3_to_7_eighths_is_the_image_and_two_threads_equal_one() {
    // No jpeg-decoder reference below 1/2 but 1/4 and 1/8: each reduction against the
    // full-size decode resampled to its size (a different filter, so only close), and two
    // threads against one, bit for bit, with restart markers (the bus) and without.
    for (name, has_restarts) in [
        ("photo_bus_4032x3024_p3.jpg", true),
        ("panorama_4032x1008_4to1.jpg", false),
    ] {
        let bytes = std::fs::read(testdata(name)).unwrap();
        for n in [3, 5, 6, 7] {
            let (serial, parallel) = both_ways(&bytes, n);
            let (serial, parallel) = (serial.unwrap(), parallel.unwrap());
            assert!(
                serial.pixels == parallel.pixels,
                "{name} n={n}: two threads differ"
            );
            if !has_restarts {
                assert!(matches!(parallel.entropy, EntropySplit::Speculative { .. }));
            }
            let expected = full_size_resampled(&bytes, parallel.width, parallel.height);
            let p = psnr(&parallel.pixels, &expected);
            eprintln!("{name} n={n}: {p:.2} dB from the resampled full-size decode");
            // (Measured: 38-46 dB for the bus, 34-42 dB for the panorama's fine detail.)
            assert!(
                p > 32.0,
                "{name} n={n}: {p:.2} dB from the resampled full decode"
            );
        }
    }
}

#[test]
fn full_size_luma_of_regions_is_the_full_decodes_luma() {
    use darkroom::io::jpeg_reduced::{decode_planes, decode_planes_with_luma, Region};
    for name in [
        "photo_bus_4032x3024_p3.jpg",
        "panorama_4032x1008_4to1.jpg",
        "photo_exif_orientation6.jpg",
    ] {
        let bytes = std::fs::read(testdata(name)).unwrap();
        // The full-size decode (zune-jpeg); its luma is Y again (JFIF's weights), up to the
        // rounding of R, G and B, except where a channel was clipped.
        let full = image::load_from_memory(&bytes).unwrap().to_rgb8();
        let (w, h) = (full.width() as usize, full.height() as usize);
        // Corners, the middle (where the second thread takes over) and the far edge, at
        // offsets on and off the MCU grid.
        let regions: Vec<Region> = [
            (0, 0),
            (w / 2 - 37, h / 2 - 5),
            (w - 64, h - 64),
            (8, h - 70),
        ]
        .into_iter()
        .map(|(x, y)| Region { x, y, size: 64 })
        .collect();
        for n in [1, 4, 5, 7] {
            for two_threads in [false, true] {
                let (planes, luma) =
                    decode_planes_with_luma(&bytes, n, two_threads, &regions).unwrap();
                assert_eq!(luma.len(), regions.len());
                let (mut worst, mut total, mut count) = (0f64, 0f64, 0usize);
                for (region, luma) in regions.iter().zip(&luma) {
                    for y in 0..64 {
                        for x in 0..64 {
                            let p = full.get_pixel((region.x + x) as u32, (region.y + y) as u32);
                            if p.0.iter().any(|&c| c == 0 || c == 255) {
                                continue;
                            }
                            let reference = 0.299 * f64::from(p[0])
                                + 0.587 * f64::from(p[1])
                                + 0.114 * f64::from(p[2]);
                            let diff = (f64::from(luma[y * 64 + x]) - reference).abs();
                            worst = worst.max(diff);
                            total += diff;
                            count += 1;
                        }
                    }
                }
                let mean = total / count as f64;
                eprintln!("{name} n={n} two={two_threads}: luma worst {worst:.2}, mean {mean:.3}");
                // The float transform against libjpeg's integer one, and R, G, B rounded.
                assert!(
                    worst <= 2.0 && mean < 0.3,
                    "{name} n={n}: worst {worst}, mean {mean}"
                );
                // The reduced image itself is what decode_planes gives.
                let alone = decode_planes(&bytes, n, two_threads).unwrap();
                assert_eq!(planes.size(), alone.size());
            }
        }
        // A region past the image's edge: nothing.
        let outside = [Region {
            x: w - 63,
            y: 0,
            size: 64,
        }];
        assert!(decode_planes_with_luma(&bytes, 4, false, &outside).is_none());
    }
}

#[test]
fn source_scores_of_a_reduced_decode_are_measured_at_full_size() {
    use darkroom::core::quality;
    use darkroom::io::decode::{self, DecodeLimits, PatchRequest};
    let request = PatchRequest {
        size: 64,
        max_patches: 256,
    };
    // The EXIF-6 photo is stored on its side: its patches are found in the stored image and
    // turned upright.
    for name in ["photo_bus_4032x3024_p3.jpg", "photo_exif_orientation6.jpg"] {
        let path = testdata(name);
        let limits = DecodeLimits::default();
        let source =
            decode::load_for_scoring(&path, &limits, &|w, h| (w / 5, h / 5), request).unwrap();
        assert!(
            source.loaded.image.width() < source.full_width,
            "{name}: reduced"
        );
        let patches = source.full_size_patches.expect("full-size patches");
        let full = decode::load(&path, &limits).unwrap().image;
        assert_eq!(
            (full.width(), full.height()),
            (source.full_width, source.full_height)
        );
        let reference = quality::sample_patches(&full, 64, 256);
        assert_eq!(patches.len(), reference.len());
        let (noise, expected_noise) = (
            quality::noise_sigma_of(&patches),
            quality::noise_sigma_of(&reference),
        );
        let (blockiness, expected_blockiness) = (
            quality::blockiness_of(&patches, 8).unwrap(),
            quality::blockiness_of(&reference, 8).unwrap(),
        );
        eprintln!("{name}: noise {noise:.3} / {expected_noise:.3}, blockiness {blockiness:.4} / {expected_blockiness:.4}");
        assert!(
            (noise / expected_noise - 1.0).abs() < 0.03,
            "{name}: noise {noise} vs {expected_noise}"
        );
        assert!(
            (blockiness - expected_blockiness).abs() < 0.01,
            "{name}: blockiness {blockiness} vs {expected_blockiness}"
        );
        // What measuring the reduced image would have said instead.
        let reduced =
            quality::noise_sigma_of(&quality::sample_patches(&source.loaded.image, 64, 256));
        eprintln!("{name}: noise of the reduced image {reduced:.3}");
        assert!(
            (reduced / expected_noise - 1.0).abs() > 0.2,
            "{name}: {reduced} vs {expected_noise}"
        );
    }
}

#[test]
fn what_the_proxy_path_reads_before_the_pixels_is_what_jpeg_decoder_reads() {
    // Frame size, EXIF and the ICC profile (the bus photo carries Display P3, the rotated
    // photo EXIF orientation 6), on every real JPEG of the corpus and a CMYK file.
    let bus = std::fs::read(testdata("photo_bus_4032x3024_p3.jpg")).unwrap();
    let mut files: Vec<(String, Vec<u8>)> = [
        "photo_bus_4032x3024_p3.jpg",
        "photo_exif_orientation6.jpg",
        "panorama_4032x1008_4to1.jpg",
        "painting_peppercarrot_ep01_p03.jpg",
        "broken_truncated.jpg",
    ]
    .iter()
    .map(|name| (name.to_string(), std::fs::read(testdata(name)).unwrap()))
    .collect();
    files.push(("bus, progressive".into(), jpegtran(&bus, &["-progressive"])));
    let mut with_icc = 0;
    let mut with_exif = 0;
    for (name, bytes) in &files {
        let ours = darkroom::io::jpeg_reduced::FileInfo::read(bytes).expect(name);
        let mut theirs = jpeg_decoder::Decoder::new(std::io::Cursor::new(bytes));
        theirs.read_info().unwrap();
        let info = theirs.info().unwrap();
        assert_eq!(
            (ours.width, ours.height),
            (u32::from(info.width), u32::from(info.height)),
            "{name}"
        );
        assert_eq!(
            ours.exif.map(<[u8]>::to_vec),
            theirs.exif_data().map(<[u8]>::to_vec),
            "{name}"
        );
        assert_eq!(ours.icc, theirs.icc_profile(), "{name}");
        with_icc += usize::from(ours.icc.is_some());
        with_exif += usize::from(ours.exif.is_some());
    }
    assert!(
        with_icc >= 2 && with_exif >= 1,
        "icc {with_icc}, exif {with_exif}"
    );
    // Not a JPEG, or no frame before the scan: nothing.
    assert!(darkroom::io::jpeg_reduced::FileInfo::read(b"\x89PNG\r\n\x1a\n").is_none());
    assert!(darkroom::io::jpeg_reduced::FileInfo::read(&[0xFF, 0xD8, 0xFF, 0xD9]).is_none());
}
