//! Upscale speed per model: output megapixels per second untiled, and the cost of tiling
//! (tiled time / untiled time for the same output) at the model's recommended context.
//!
//! Usage: cargo run --release --example upscale_bench --
//!            [MODELS_DIR] [SIZE] [RUNS] [TILE] [PROVIDER] [MODELS] [BATCH] [CONV_SEARCH]
//!
//! PROVIDER is auto, cpu or cuda (default auto); MODELS a comma-separated list of model
//! names (default: the three CPU-sized models); BATCH, when above 1, also times the tiled
//! run with that many tiles per model run; CONV_SEARCH is cuDNN's (heuristic or exhaustive,
//! default heuristic). The input is a SIZE x SIZE crop of the Pepper &
//! Carrot page in `$DARKROOM_SHARED/testdata` (default `../shared`). Prints one JSON object
//! per model (bench/upscale_bench.py compares with Python).

use darkroom::io::onnx::Provider;
use darkroom::ops::upscale::{load_model, recommended_context, upscale_image, UpscaleOptions};
use std::time::Instant;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let shared = std::env::var_os("DARKROOM_SHARED")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared"));
    let models_dir = args
        .get(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| shared.join("models"));
    let size: u32 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(128);
    let runs: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(3);
    let tile: u32 = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(64);
    let provider: Provider = args
        .get(5)
        .map(|s| s.parse().unwrap_or_else(|e| panic!("PROVIDER {e}")))
        .unwrap_or(Provider::Auto);
    let names: Vec<String> = args.get(6).map_or_else(
        || {
            [
                "waifu2x-upconv7-photo-x2",
                "realesr-animevideov3-x4",
                "realesrgan-x4plus-anime-6b-x4",
            ]
            .map(String::from)
            .to_vec()
        },
        |list| list.split(',').map(String::from).collect(),
    );
    let batch: usize = args.get(7).and_then(|s| s.parse().ok()).unwrap_or(1);
    let conv_search: darkroom::io::onnx::ConvSearch = args
        .get(8)
        .map(|s| s.parse().unwrap_or_else(|e| panic!("CONV_SEARCH {e}")))
        .unwrap_or_default();
    let source = darkroom::io::decode::load(
        &shared.join("testdata/painting_peppercarrot_ep01_p03.jpg"),
        &Default::default(),
    )
    .expect("the corpus page");
    let input = source.image.crop_imm(400, 700, size, size);
    for name in &names {
        let path = models_dir.join(format!("{name}.onnx"));
        let options = |batch| UpscaleOptions {
            provider,
            batch,
            conv_search,
            ..UpscaleOptions::default()
        };
        let mut model = load_model(&path, &options(1)).expect("model");
        let context = recommended_context(name);
        let time = |model: &mut darkroom::io::onnx::Model, tile: u32, context: u32| {
            // One run first: a GPU's first run of a shape picks its kernels.
            let output = upscale_image(&input, model, tile, context, &mut |_, _| {}).unwrap();
            let times: Vec<f64> = (0..runs)
                .map(|_| {
                    let started = Instant::now();
                    upscale_image(&input, model, tile, context, &mut |_, _| {}).unwrap();
                    started.elapsed().as_secs_f64()
                })
                .collect();
            (median(times), output.to_rgb8())
        };
        let (untiled, whole) = time(&mut model, 0, 0);
        let (tiled, tiled_output) = time(&mut model, tile, context);
        // Seams: the largest difference of a tiled output from the untiled one, in levels.
        let largest_difference = |other: &image::RgbImage| {
            whole
                .as_raw()
                .iter()
                .zip(other.as_raw())
                .map(|(a, b)| a.abs_diff(*b))
                .max()
                .unwrap_or(0)
        };
        let tiled_max_diff = largest_difference(&tiled_output);
        let tiled_batch = (batch > 1).then(|| {
            let mut batched = load_model(&path, &options(batch)).expect("model");
            let (seconds, output) = time(&mut batched, tile, context);
            (seconds, largest_difference(&output))
        });
        let scale = model.scale;
        let out_mp = f64::from(size * scale).powi(2) / 1e6;
        let batch_field = tiled_batch
            .map(|(s, diff)| {
                format!(", \"tiled_batch_s\": {s:.4}, \"batch\": {batch}, \"tiled_batch_max_diff\": {diff}")
            })
            .unwrap_or_default();
        println!(
            "{{\"model\": \"{name}\", \"provider\": \"{}\", \"input\": {size}, \"scale\": {scale}, \"untiled_s\": {untiled:.4}, \"tiled_s\": {tiled:.4}, \"tile\": {tile}, \"context\": {context}, \"output_mp_per_s\": {:.4}, \"tiling_cost\": {:.3}, \"tiled_max_diff\": {tiled_max_diff}{batch_field}}}",
            model.provider,
            out_mp / untiled,
            tiled / untiled
        );
    }
}
