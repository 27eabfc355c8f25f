//! Criterion benchmarks of the normalise recipe: one image staged end to end (decode, fit,
//! sRGB, scores, encode to a temp file) for SDXL buckets, and the quality measures alone on
//! a 1-MP output. `bench/normalise_bench.py` adds the comparison with a PIL script.

use criterion::{criterion_group, criterion_main, Criterion};
use darkroom::core::dataset::{FitMode, Resolution};
use darkroom::core::quality;
use darkroom::ops::normalise::{stage, NormaliseOptions};
use std::hint::black_box;
use std::path::PathBuf;

fn shared() -> PathBuf {
    std::env::var_os("DARKROOM_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared"))
}

fn normalise(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let options = NormaliseOptions::new(Resolution::parse("sdxl").unwrap(), FitMode::Bucket);
    let limits = Default::default();
    let mut group = c.benchmark_group("normalise sdxl bucket");
    group.sample_size(10);
    for name in [
        "photo_bus_4032x3024_p3.jpg",
        "painting_peppercarrot_ep01_p03.jpg",
    ] {
        let path = shared().join("testdata").join(name);
        group.bench_function(name, |b| {
            b.iter(|| black_box(stage(&path, name, &options, &limits, dir.path(), None).unwrap()))
        });
    }
    group.finish();

    let photo = darkroom::io::decode::load(
        &shared().join("testdata/photo_exif_orientation6.jpg"),
        &Default::default(),
    )
    .expect("the corpus photo");
    let output = photo
        .image
        .resize_exact(1216, 832, image::imageops::FilterType::Triangle);
    let luma = quality::Luma::of(&output);
    let mut group = c.benchmark_group("quality scores, 1216x832");
    group.bench_function("sharpness", |b| {
        b.iter(|| black_box(quality::sharpness(&luma)))
    });
    group.bench_function("phash", |b| b.iter(|| black_box(quality::phash(&luma))));
    let patches = quality::sample_patches(&photo.image, 64, 256);
    group.bench_function(
        "noise + blockiness, 256 patches of the 2.2-MP source",
        |b| {
            b.iter(|| {
                black_box((
                    quality::noise_sigma_of(&patches),
                    quality::blockiness_of(&patches, 8),
                ))
            })
        },
    );
    group.finish();
}

criterion_group!(benches, normalise);
criterion_main!(benches);
