//! A mutation corpus (issue #6, case 15): 2,000 bit-flipped, truncated, header-edited and
//! spliced versions of the test images go through decode and the first step of every recipe
//! (the proxy of split-to-proxy, the model input of upscale/enhance with its corrections,
//! the whole per-image work of normalise for every tenth). What must hold: no panic escapes,
//! nothing hangs (each case is watched), and every refusal is a reason, not a crash.

mod common;

use darkroom::core::corrections::{Bilateral, PreFilters};
use darkroom::core::geometry::{ProxyGeometry, Target};
use darkroom::io::decode::{self, DecodeLimits};
use darkroom::ops::normalise::{self, NormaliseOptions};
use std::sync::mpsc;
use std::time::Duration;

/// xorshift64*: deterministic, so a failing case can be reproduced by its number.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One mutation of `bytes`, and what it was.
fn mutate(bytes: &[u8], rng: &mut Rng) -> (Vec<u8>, &'static str) {
    let mut out = bytes.to_vec();
    match rng.below(5) {
        0 => {
            for _ in 0..1 + rng.below(16) {
                let i = rng.below(out.len());
                out[i] ^= 1 << rng.below(8);
            }
            (out, "bit flips")
        }
        1 => {
            for _ in 0..1 + rng.below(8) {
                let i = rng.below(out.len().min(512));
                out[i] = rng.next() as u8;
            }
            (out, "header bytes")
        }
        2 => {
            out.truncate(rng.below(bytes.len()));
            (out, "truncation")
        }
        3 => {
            // Declared sizes: PNG IHDR width/height, or a JPEG SOF's height/width.
            let value = match rng.below(4) {
                0 => 0u32,
                1 => 1,
                2 => 0xFFFF,
                _ => rng.next() as u32,
            };
            if out.starts_with(b"\x89PNG") && out.len() > 24 {
                let at = 16 + 4 * rng.below(2);
                out[at..at + 4].copy_from_slice(&value.to_be_bytes());
            } else if let Some(sof) = out
                .windows(2)
                .position(|w| w == [0xFF, 0xC0] || w == [0xFF, 0xC2])
            {
                let at = sof + 5 + 2 * rng.below(2);
                if at + 2 <= out.len() {
                    out[at..at + 2].copy_from_slice(&(value as u16).to_be_bytes());
                }
            }
            (out, "declared size")
        }
        _ => {
            // A slice of the file spliced in elsewhere (duplicated chunks, shifted data).
            let from = rng.below(out.len());
            let len = rng.below(4096).min(out.len() - from);
            let piece = out[from..from + len].to_vec();
            let at = rng.below(out.len());
            out.splice(at..at, piece);
            (out, "splice")
        }
    }
}

#[test]
fn two_thousand_mutated_files_never_panic_or_hang_in_decode_and_the_recipes_first_steps() {
    let sources = [
        "photo_coffee_600x400.png",
        "tiny_17x9.png",
        "gray_camera_512.png",
        "photo_exif_orientation6.jpg",
        "anime_eileen_320x720_rgba.png",
    ];
    let per_source = 400;
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    // Tighter limits than the defaults keep a "valid" 65535x65535 mutation from taking
    // minutes; the limits themselves are part of what is exercised.
    let limits = DecodeLimits {
        max_pixels: 40_000_000,
        max_alloc_bytes: 1 << 30,
        ..DecodeLimits::default()
    };
    let mut options = NormaliseOptions::new(
        darkroom::core::dataset::Resolution::parse("64").unwrap(),
        darkroom::core::dataset::FitMode::Thirds,
    );
    options.thresholds.duplicate_distance = None;
    let pre = PreFilters {
        white_balance: true,
        deblock: true,
        denoise: Some(Bilateral {
            sigma_spatial: 1.0,
            sigma_range: 20.0,
        }),
        ..PreFilters::default()
    };
    let (progress, seen) = mpsc::channel::<(usize, &'static str, &'static str)>();
    let (outcome_tx, outcome) = mpsc::channel::<(usize, usize, Vec<String>)>();
    let corpus: Vec<(&'static str, Vec<u8>)> = sources
        .iter()
        .map(|n| (*n, std::fs::read(common::testdata(n)).unwrap()))
        .collect();
    let worker = std::thread::spawn(move || {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let (mut decoded, mut refused) = (0, 0);
        let mut escaped = Vec::new();
        let mut case = 0;
        for (name, bytes) in &corpus {
            for _ in 0..per_source {
                case += 1;
                let (mutated, kind) = mutate(bytes, &mut rng);
                progress.send((case, name, kind)).unwrap();
                let result = std::panic::catch_unwind(|| {
                    let loaded = match decode::decode_bytes(&mutated, &limits) {
                        Ok(l) => l,
                        Err(e) => {
                            assert!(!e.to_string().is_empty());
                            return false;
                        }
                    };
                    // split-to-proxy's first step.
                    let (w, h) = (loaded.image.width(), loaded.image.height());
                    let geometry = ProxyGeometry::plan(w, h, Target::pixels(128, 128));
                    darkroom::core::proxy::make_proxy(&loaded.image, &geometry).unwrap();
                    // upscale / enhance: the corrections before the model, on a bounded crop.
                    let crop = loaded.image.crop_imm(0, 0, w.min(256), h.min(256));
                    pre.apply(crop);
                    // normalise, whole, for every tenth.
                    if case % 10 == 0 {
                        let path = images.join(format!("case{case}.bin"));
                        std::fs::write(&path, &mutated).unwrap();
                        let _ = normalise::stage(&path, "m", &options, &limits, &images, None);
                    }
                    true
                });
                match result {
                    Ok(true) => decoded += 1,
                    Ok(false) => refused += 1,
                    Err(_) => escaped.push(format!("case {case} ({name}, {kind})")),
                }
            }
        }
        outcome_tx.send((decoded, refused, escaped)).unwrap();
    });
    let mut last = (0, "", "");
    loop {
        match seen.recv_timeout(Duration::from_secs(60)) {
            Ok(step) => last = step,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!(
                    "case {} ({}, {}) has run for a minute: a hang",
                    last.0, last.1, last.2
                )
            }
        }
    }
    worker.join().unwrap();
    let (decoded, refused, escaped) = outcome.recv().unwrap();
    assert!(escaped.is_empty(), "panics escaped: {escaped:?}");
    assert_eq!(decoded + refused, sources.len() * per_source);
    // Both outcomes are exercised: many mutations still decode, many are refused.
    assert!(
        decoded > 200 && refused > 200,
        "decoded {decoded}, refused {refused}"
    );
    eprintln!("mutations: {decoded} decoded and went through the first steps, {refused} refused with a reason");
}
