//! Criterion benchmarks of super-resolution on the real ONNX Runtime (from ./.venv):
//! the waifu2x photo model and the animevideov3 model on a 96x96 crop, untiled and tiled at
//! their recommended context. `bench/upscale_bench.py` adds the comparison with Python.

use criterion::{criterion_group, criterion_main, Criterion};
use darkroom::ops::upscale::{load_model, recommended_context, upscale_image, UpscaleOptions};
use std::hint::black_box;
use std::path::PathBuf;

fn shared() -> PathBuf {
    std::env::var_os("DARKROOM_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared"))
}

fn upscale(c: &mut Criterion) {
    let page = darkroom::io::decode::load(
        &shared().join("testdata/painting_peppercarrot_ep01_p03.jpg"),
        &Default::default(),
    )
    .expect("the corpus page");
    let input = page.image.crop_imm(400, 700, 96, 96);
    let mut group = c.benchmark_group("upscale 96x96");
    group.sample_size(10);
    for name in ["waifu2x-upconv7-photo-x2", "realesr-animevideov3-x4"] {
        let path = shared().join("models").join(format!("{name}.onnx"));
        let mut model = load_model(&path, &UpscaleOptions::default()).expect("model loads");
        let context = recommended_context(name);
        group.bench_function(format!("{name} untiled"), |b| {
            b.iter(|| black_box(upscale_image(&input, &mut model, 0, 0, &mut |_, _| {}).unwrap()))
        });
        group.bench_function(format!("{name} tiles of 48, context {context}"), |b| {
            b.iter(|| {
                black_box(upscale_image(&input, &mut model, 48, context, &mut |_, _| {}).unwrap())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, upscale);
criterion_main!(benches);
