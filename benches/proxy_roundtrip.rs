//! Criterion benchmarks of the proxy round trip on the 12-MP photo of the shared corpus:
//! split (decode + proxy + PNG), delta, merge (additive and guided, in memory), and the PNG
//! encoder alone; and the reduced-size JPEG decoder against jpeg-decoder's scaled decoding.
//! `cargo bench` runs them; `bench/compare_pil.py` compares the CLI against PIL.

use criterion::{criterion_group, criterion_main, Criterion};
use darkroom::core::delta::{compute, DeltaDepth};
use darkroom::core::geometry::{ProxyGeometry, Target};
use darkroom::core::guided::GuidedParams;
use darkroom::core::merge::{apply_layers, prepare_guided, DeltaLayer, MergePlan};
use darkroom::core::proxy::make_proxy;
use darkroom::io::decode;
use darkroom::io::png_encode::{self, PngOptions};
use std::hint::black_box;
use std::path::PathBuf;

fn photo() -> PathBuf {
    let shared = std::env::var_os("DARKROOM_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared"));
    shared.join("testdata/photo_bus_4032x3024_p3.jpg")
}

fn round_trip(c: &mut Criterion) {
    let path = photo();
    let limits = decode::DecodeLimits::default();
    let target = Target::pixels(1024, 1024);
    let needed = |w: u32, h: u32| {
        let g = ProxyGeometry::plan(w, h, target);
        (g.scaled_width, g.scaled_height)
    };
    let original = decode::load(&path, &limits).expect("the 12-MP photo decodes");
    let geometry = ProxyGeometry::plan(original.image.width(), original.image.height(), target);
    let proxy = make_proxy(&original.image, &geometry).unwrap();
    let proxy_rgb = proxy.to_rgb8();
    let graded = image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(
        proxy.width(),
        proxy.height(),
        |x, y| image::Rgb(proxy_rgb.get_pixel(x, y).0.map(|v| v.saturating_add(12))),
    ));
    let delta = compute(&proxy, &graded, DeltaDepth::Eight, false)
        .unwrap()
        .main;

    let mut group = c.benchmark_group("photo_12mp");
    group.sample_size(10);
    group.bench_function("split: decode for proxy + proxy + png", |b| {
        b.iter(|| {
            let source = decode::load_for_proxy(&path, &limits, &needed).unwrap();
            let g = ProxyGeometry::plan(source.full_width, source.full_height, target);
            let proxy = make_proxy(&source.loaded.image, &g).unwrap();
            black_box(png_encode::encode(&proxy, None, &[], &PngOptions::default()).unwrap())
        })
    });
    group.bench_function("delta: 1024x1024 with refine", |b| {
        b.iter(|| black_box(compute(&proxy, &graded, DeltaDepth::Eight, true).unwrap()))
    });
    let layer = DeltaLayer {
        image: delta,
        area: geometry.area(),
    };
    group.bench_function("merge: apply delta to 12 MP", |b| {
        b.iter_batched_ref(
            || original.image.clone(),
            |img| apply_layers(img, std::slice::from_ref(&layer), &|_| {}).unwrap(),
            criterion::BatchSize::LargeInput,
        )
    });
    let params = GuidedParams::default();
    group.bench_function("guided merge: fit the maps on the 1024x768 proxy", |b| {
        b.iter(|| {
            black_box(prepare_guided(&proxy, std::slice::from_ref(&layer), false, &params).unwrap())
        })
    });
    group.bench_function("guided merge: fit + apply to 12 MP", |b| {
        b.iter_batched_ref(
            || original.image.clone(),
            |img| {
                let g =
                    prepare_guided(&proxy, std::slice::from_ref(&layer), false, &params).unwrap();
                let plan = MergePlan::guided(img, &g.field, &g.residual).unwrap();
                plan.apply_in_place(img, &|_| {}).unwrap();
            },
            criterion::BatchSize::LargeInput,
        )
    });
    group.bench_function("png: encode 12 MP RGB (default options)", |b| {
        b.iter(|| {
            black_box(
                png_encode::encode(&original.image, None, &[], &PngOptions::default()).unwrap(),
            )
        })
    });
    group.bench_function("decode: 12 MP JPEG full", |b| {
        b.iter(|| black_box(decode::load(&path, &limits).unwrap()))
    });
    group.finish();
}

/// darkroom's reduced-size JPEG decoder against jpeg-decoder's scaled decoding, on the
/// 12-MP photo at half size (what a 512-px proxy keeps, with the reducing gap of 2).
fn reduced_decode(c: &mut Criterion) {
    use darkroom::io::jpeg_reduced::decode_with;
    let path = photo();
    let bytes = std::fs::read(&path).unwrap();
    let mut group = c.benchmark_group("photo_12mp_half_size");
    group.sample_size(10);
    group.bench_function("jpeg-decoder, scaled", |b| {
        b.iter(|| {
            let mut decoder = jpeg_decoder::Decoder::new(std::io::Cursor::new(&bytes));
            decoder.scale(2016, 1512).unwrap();
            black_box(decoder.decode().unwrap())
        })
    });
    for (name, two_threads) in [
        ("darkroom, one thread", false),
        ("darkroom, two threads", true),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| black_box(decode_with(&bytes, 4, two_threads).unwrap()))
        });
    }
    let limits = decode::DecodeLimits::default();
    let target = Target::pixels(512, 512);
    let needed = |w: u32, h: u32| {
        let g = ProxyGeometry::plan(w, h, target);
        (g.scaled_width, g.scaled_height)
    };
    group.bench_function(
        "split to 512: decode resampled from the planes + proxy + png",
        |b| {
            b.iter(|| {
                let source = decode::load_proxy_sized(&path, &limits, &needed).unwrap();
                let g = ProxyGeometry::plan(source.full_width, source.full_height, target);
                let proxy = make_proxy(&source.loaded.image, &g).unwrap();
                black_box(png_encode::encode(&proxy, None, &[], &PngOptions::default()).unwrap())
            })
        },
    );
    group.finish();
}

criterion_group!(benches, round_trip, reduced_decode);
criterion_main!(benches);
