//! Upscale speed per model: output megapixels per second untiled, and the cost of tiling
//! (tiled time / untiled time for the same output) at the model's recommended context.
//!
//! Usage: cargo run --release --example upscale_bench -- [MODELS_DIR] [SIZE] [RUNS] [TILE]
//! Prints one JSON object per model (bench/upscale_bench.py compares with Python).

use darkroom::ops::upscale::{load_model, recommended_context, upscale_image, UpscaleOptions};
use std::time::Instant;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let models_dir = args
        .get(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| manifest.join("../shared/models"));
    let size: u32 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(128);
    let runs: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(3);
    let tile: u32 = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(64);
    let source = darkroom::io::decode::load(
        &manifest.join("../shared/testdata/painting_peppercarrot_ep01_p03.jpg"),
        &Default::default(),
    )
    .expect("the corpus page");
    let input = source.image.crop_imm(400, 700, size, size);
    for name in [
        "waifu2x-upconv7-photo-x2",
        "realesr-animevideov3-x4",
        "realesrgan-x4plus-anime-6b-x4",
    ] {
        let path = models_dir.join(format!("{name}.onnx"));
        let mut model = load_model(&path, &UpscaleOptions::default()).expect("model");
        let context = recommended_context(name);
        let mut time = |tile: u32, context: u32| {
            let times: Vec<f64> = (0..runs)
                .map(|_| {
                    let started = Instant::now();
                    upscale_image(&input, &mut model, tile, context, &mut |_, _| {}).unwrap();
                    started.elapsed().as_secs_f64()
                })
                .collect();
            median(times)
        };
        let untiled = time(0, 0);
        let tiled = time(tile, context);
        let scale = model.scale;
        let out_mp = f64::from(size * scale).powi(2) / 1e6;
        println!(
            "{{\"model\": \"{name}\", \"input\": {size}, \"scale\": {scale}, \"untiled_s\": {untiled:.4}, \"tiled_s\": {tiled:.4}, \"tile\": {tile}, \"context\": {context}, \"output_mp_per_s\": {:.4}, \"tiling_cost\": {:.3}}}",
            out_mp / untiled,
            tiled / untiled
        );
    }
}
