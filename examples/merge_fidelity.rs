//! Merge fidelity benchmark: how well each merge method brings an edit made on the proxy back
//! to full resolution, judged against the same edit applied to the full-resolution original.
//!
//! For each image of `../shared/testdata/` below and each edit, the proxy (25%, Lanczos3, as
//! `darkroom split ... 25%` makes it) is edited and saved as 8-bit (what a model tool returns);
//! the merges are:
//! - `additive`: imgproxyproc's 8-bit delta plus refined delta (`darkroom merge`'s default);
//! - `additive16`: a 16-bit delta, the best an additive delta can do;
//! - `guided`: `darkroom merge --method guided` from the same 8-bit delta and refined delta.
//!
//! PSNR is over the whole image; SSIM over the whole image up to 4 MP, else over the central
//! 2048x1536 (SSIM's float buffers for 12 MP would dominate the run). The 12-MP photo also
//! gets a timing of the in-memory merge (no decode or encode), median of 3.
//!
//! Usage: cargo run --release --example merge_fidelity -- [CELL] [BINS] [EPSILON] [RESIDUAL]
//! [PICTURE.jpg]
//! With PICTURE, also writes a crop of the bus photo (before, additive, guided, truth, and the
//! error of each merge x8) for a person to look at.

use darkroom::core::delta::{self, DeltaDepth};
use darkroom::core::geometry::{ProxyGeometry, Target};
use darkroom::core::guided::GuidedParams;
use darkroom::core::merge::{merge_image, merge_image_enlarging_content, DeltaLayer};
use darkroom::core::metrics;
use darkroom::core::proxy::make_proxy;
use image::{DynamicImage, ImageBuffer};
use std::path::Path;
use std::time::Instant;

/// An edit on interleaved RGB floats in 8-bit units (`width x height`), in place. Spatial
/// parameters are relative to the image size, so the same edit applies at any resolution.
type Edit = fn(&mut [f32], usize, usize);

fn tone_and_saturation(px: &mut [f32], _: usize, _: usize) {
    for p in px.chunks_exact_mut(3) {
        for v in p.iter_mut() {
            let x = (*v / 255.0).max(0.0).powf(0.85);
            *v = (0.5 + 1.3 * (x - 0.5)) * 255.0;
        }
        let l = 0.2126 * p[0] + 0.7152 * p[1] + 0.0722 * p[2];
        for v in p.iter_mut() {
            *v = l + 1.35 * (*v - l);
        }
    }
}

/// A relight: red gain 0.7..1.3 across the width, blue 1.3..0.7 down the height, green
/// brighter in the middle.
fn smooth_colour_cast(px: &mut [f32], w: usize, h: usize) {
    for (n, p) in px.chunks_exact_mut(3).enumerate() {
        let (u, v) = ((n % w) as f32 / w as f32, (n / w) as f32 / h as f32);
        p[0] *= 0.7 + 0.6 * u;
        p[1] *= 0.85 + 0.3 * (std::f32::consts::PI * u).sin();
        p[2] *= 1.3 - 0.6 * v;
    }
}

/// A colour cast that varies across the picture, added rather than multiplied: warmer (red +24,
/// blue -16) on the left, cooler (red -16, blue +24) on the right, green +10 at the top to
/// -10 at the bottom.
fn varying_cast(px: &mut [f32], w: usize, h: usize) {
    for (n, p) in px.chunks_exact_mut(3).enumerate() {
        let (u, v) = ((n % w) as f32 / w as f32, (n / w) as f32 / h as f32);
        p[0] += 24.0 - 40.0 * u;
        p[1] += 10.0 - 20.0 * v;
        p[2] += -16.0 + 40.0 * u;
    }
}

fn local_contrast(px: &mut [f32], w: usize, h: usize) {
    let radius = ((0.015 * w.max(h) as f32).round() as usize).max(1);
    let mut blurred = px.to_vec();
    for _ in 0..3 {
        box_blur(&mut blurred, w, h, radius);
    }
    for (v, b) in px.iter_mut().zip(&blurred) {
        *v += 0.7 * (*v - b);
    }
}

fn strong_grade(px: &mut [f32], _: usize, _: usize) {
    for p in px.chunks_exact_mut(3) {
        p[0] = p[0] * 2.2 + 30.0;
        p[1] = p[1] * 2.0 + 25.0;
        p[2] = p[2] * 1.7 + 10.0;
    }
}

/// Separable box blur of radius `r` (borders clamped), in place.
fn box_blur(px: &mut [f32], w: usize, h: usize, r: usize) {
    let pass = |src: &[f32], len: usize, stride: usize, out: &mut Vec<f32>| {
        out.clear();
        let at = |i: isize| src[(i.clamp(0, len as isize - 1) as usize) * stride];
        let mut sum: f32 = (-(r as isize)..=r as isize).map(at).sum();
        for i in 0..len as isize {
            out.push(sum / (2 * r + 1) as f32);
            sum += at(i + r as isize + 1) - at(i - r as isize);
        }
    };
    let mut line = Vec::new();
    for c in 0..3 {
        for y in 0..h {
            pass(&px[(y * w) * 3 + c..], w, 3, &mut line);
            for (x, v) in line.iter().enumerate() {
                px[(y * w + x) * 3 + c] = *v;
            }
        }
        for x in 0..w {
            pass(&px[x * 3 + c..], h, w * 3, &mut line);
            for (y, v) in line.iter().enumerate() {
                px[(y * w + x) * 3 + c] = *v;
            }
        }
    }
}

fn global_affine(px: &mut [f32], _: usize, _: usize) {
    for p in px.chunks_exact_mut(3) {
        let [r, g, b] = [p[0], p[1], p[2]];
        p[0] = 0.9 * r + 0.15 * g + 8.0;
        p[1] = 0.85 * g + 0.05 * b + 12.0;
        p[2] = 0.8 * b + 0.1 * r + 20.0;
    }
}

/// New content no colour map explains: three opaque anti-aliased discs painted over the image.
fn painted_discs(px: &mut [f32], w: usize, h: usize) {
    let scale = w.min(h) as f32;
    let discs = [
        (0.3, 0.4, 0.12, [220.0, 40.0, 40.0]),
        (0.65, 0.55, 0.18, [30.0, 160.0, 220.0]),
        (0.5, 0.8, 0.08, [250.0, 230.0, 60.0]),
    ];
    for (n, p) in px.chunks_exact_mut(3).enumerate() {
        let (x, y) = ((n % w) as f32 + 0.5, (n / w) as f32 + 0.5);
        for (cx, cy, r, colour) in discs {
            let d = ((x - cx * w as f32).powi(2) + (y - cy * h as f32).powi(2)).sqrt();
            let cover = (r * scale - d + 0.5).clamp(0.0, 1.0);
            for (v, c) in p.iter_mut().zip(colour) {
                *v += cover * (c - *v);
            }
        }
    }
}

/// New content with hard edges: a red and white checkerboard (squares of 1.5% of the short
/// side, anti-aliased by 4x4 supersampling) pasted over the centre fifth of the picture.
fn pasted_checker(px: &mut [f32], w: usize, h: usize) {
    let short = w.min(h) as f32;
    let square = 0.015 * short;
    let (cx, cy, half) = (0.5 * w as f32, 0.5 * h as f32, 0.2 * short);
    let red = [200.0, 30.0, 40.0];
    let white = [245.0, 240.0, 230.0];
    for (n, p) in px.chunks_exact_mut(3).enumerate() {
        let (x, y) = ((n % w) as f32, (n / w) as f32);
        let (mut cover, mut reds) = (0.0f32, 0.0f32);
        for sy in 0..4 {
            for sx in 0..4 {
                let (u, v) = (x + (sx as f32 + 0.5) / 4.0, y + (sy as f32 + 0.5) / 4.0);
                if (u - cx).abs() < half && (v - cy).abs() < half {
                    cover += 1.0 / 16.0;
                    let cell =
                        ((u - cx + half) / square).floor() + ((v - cy + half) / square).floor();
                    if cell as i64 % 2 == 0 {
                        reds += 1.0 / 16.0;
                    }
                }
            }
        }
        if cover > 0.0 {
            for c in 0..3 {
                let pasted = reds * red[c] + (cover - reds) * white[c];
                p[c] = p[c] * (1.0 - cover) + pasted;
            }
        }
    }
}

const EDITS: [(&str, Edit, &str); 7] = [
    ("global affine colour change", global_affine, "affine"),
    ("tone curve + saturation", tone_and_saturation, "global"),
    ("smooth colour cast", smooth_colour_cast, "smooth"),
    ("varying colour cast (added)", varying_cast, "cast"),
    ("local contrast boost", local_contrast, "local"),
    ("strong grade (delta saturates)", strong_grade, "strong"),
    ("painted discs (new content)", painted_discs, "painted"),
];

const IMAGES: [(&str, &str); 6] = [
    ("photo_bus_4032x3024_p3.jpg", "photo"),
    ("photo_exif_orientation6.jpg", "photo"),
    ("photo_coffee_600x400.png", "photo"),
    ("hdr_room_16bit_hlg.png", "photo, 16-bit"),
    ("painting_peppercarrot_ep01_p03.jpg", "illustration"),
    ("anime_eileen_320x720_rgba.png", "illustration"),
];

/// The colour samples in 8-bit units; RGBA is flattened onto mid-gray (alpha is not what this
/// benchmark judges).
fn colour_of(image: &DynamicImage) -> Vec<f32> {
    if image.color().has_alpha() {
        return image
            .to_rgba32f()
            .pixels()
            .flat_map(|p| {
                let a = p.0[3];
                [0, 1, 2].map(|c| (p.0[c] * a + 0.5 * (1.0 - a)) * 255.0)
            })
            .collect();
    }
    image
        .to_rgb32f()
        .into_raw()
        .into_iter()
        .map(|v| v * 255.0)
        .collect()
}

fn to_image(values: &[f32], w: u32, h: u32, sixteen: bool) -> DynamicImage {
    if sixteen {
        let v = values
            .iter()
            .map(|x| (x * 257.0).round().clamp(0.0, 65535.0) as u16)
            .collect();
        DynamicImage::ImageRgb16(ImageBuffer::from_raw(w, h, v).unwrap())
    } else {
        let v = values
            .iter()
            .map(|x| x.round().clamp(0.0, 255.0) as u8)
            .collect();
        DynamicImage::ImageRgb8(ImageBuffer::from_raw(w, h, v).unwrap())
    }
}

fn ssim_region(a: &DynamicImage, b: &DynamicImage) -> f64 {
    if std::env::var("NO_SSIM").is_ok() {
        return f64::NAN;
    }
    let (w, h) = (a.width(), a.height());
    if u64::from(w) * u64::from(h) <= 4_000_000 {
        return metrics::ssim(a, b).unwrap();
    }
    let (cw, ch) = (2048.min(w), 1536.min(h));
    let (x, y) = ((w - cw) / 2, (h - ch) / 2);
    metrics::ssim(&a.crop_imm(x, y, cw, ch), &b.crop_imm(x, y, cw, ch)).unwrap()
}

fn median_ms(mut run: impl FnMut()) -> f64 {
    let mut times: Vec<f64> = (0..3)
        .map(|_| {
            let t = Instant::now();
            run();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[1]
}

struct Case {
    original: DynamicImage,
    proxy: DynamicImage,
    layers: Vec<DeltaLayer>,
    layers16: Vec<DeltaLayer>,
}

fn make_case(original: &DynamicImage, edit: Edit) -> (Case, DynamicImage) {
    let (w, h) = (original.width(), original.height());
    let sixteen = original.color().bytes_per_pixel() / original.color().channel_count() == 2;
    let mut truth = colour_of(original);
    edit(&mut truth, w as usize, h as usize);
    let truth = to_image(&truth, w, h, sixteen);

    let g = ProxyGeometry::plan(w, h, "25%".parse::<Target>().unwrap());
    let proxy = make_proxy(original, &g).unwrap();
    let mut edited = colour_of(&proxy);
    edit(&mut edited, proxy.width() as usize, proxy.height() as usize);
    let processed = to_image(&edited, proxy.width(), proxy.height(), false);
    let area = g.area();
    let layer = |image| DeltaLayer { image, area };
    let d8 = delta::compute(&proxy, &processed, DeltaDepth::Eight, true).unwrap();
    let d16 = delta::compute(&proxy, &processed, DeltaDepth::Sixteen, false).unwrap();
    let case = Case {
        original: original.clone(),
        proxy,
        layers: vec![layer(d8.main), layer(d8.refined.unwrap())],
        layers16: vec![layer(d16.main)],
    };
    (case, truth)
}

fn additive(case: &Case, sixteen_bit_delta: bool) -> DynamicImage {
    let layers = if sixteen_bit_delta {
        &case.layers16
    } else {
        &case.layers
    };
    merge_image(case.original.clone(), &case.proxy, layers, None).unwrap()
}

fn guided(case: &Case, params: &GuidedParams) -> DynamicImage {
    merge_image(
        case.original.clone(),
        &case.proxy,
        &case.layers,
        Some(params),
    )
    .unwrap()
}

fn flatten(image: DynamicImage) -> DynamicImage {
    if !image.color().has_alpha() {
        return image;
    }
    let (w, h) = (image.width(), image.height());
    to_image(&colour_of(&image), w, h, false)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mut params = GuidedParams::default();
    if let Some(v) = args.get(1).and_then(|s| s.parse().ok()) {
        params.cell = v;
    }
    if let Some(v) = args.get(2).and_then(|s| s.parse().ok()) {
        params.bins = v;
    }
    if let Some(v) = args.get(3).and_then(|s| s.parse().ok()) {
        params.epsilon = v;
    }
    if let Some(v) = args.get(4).and_then(|s| s.parse().ok()) {
        params.residual = v;
    }
    let picture = args.get(5).cloned();
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/testdata");
    println!("guided parameters: {params:?}\n");
    println!("| image | kind | edit | additive PSNR / SSIM | additive16 PSNR / SSIM | guided PSNR / SSIM | guided - additive |");
    println!("|---|---|---|---|---|---|---|");
    let mut gains: Vec<(String, f64)> = Vec::new();
    let only = std::env::var("ONLY").unwrap_or_default();
    for (file, kind) in IMAGES {
        if !file.contains(only.as_str()) {
            continue;
        }
        let loaded = darkroom::io::decode::load(&data.join(file), &Default::default())
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        let original = flatten(loaded.image);
        for (edit_name, edit, edit_kind) in EDITS {
            let (case, truth) = make_case(&original, edit);
            let a = additive(&case, false);
            let a16 = additive(&case, true);
            let g = guided(&case, &params);
            let score = |img: &DynamicImage| {
                (
                    metrics::psnr(img, &truth).unwrap(),
                    ssim_region(img, &truth),
                )
            };
            let (sa, sa16, sg) = (score(&a), score(&a16), score(&g));
            if let Ok(dir) = std::env::var("DUMP") {
                let stem = format!("{dir}/{}_{edit_kind}", &file[..file.len() - 4]);
                for (name, img) in [
                    ("truth", &truth),
                    ("additive", &a),
                    ("guided", &g),
                    ("original", &case.original),
                ] {
                    img.save(format!("{stem}_{name}.png")).unwrap();
                }
            }
            println!(
                "| {file} | {kind} | {edit_name} | {:.2} / {:.4} | {:.2} / {:.4} | {:.2} / {:.4} | {:+.2} dB |",
                sa.0, sa.1, sa16.0, sa16.1, sg.0, sg.1, sg.0 - sa.0
            );
            gains.push((format!("{kind}|{edit_kind}"), sg.0 - sa.0));
            if file.starts_with("photo_bus") && edit_kind == "global" {
                let t_add = median_ms(|| {
                    additive(&case, false);
                });
                let t_guided = median_ms(|| {
                    guided(&case, &params);
                });
                eprintln!(
                    "12-MP in-memory merge: additive {t_add:.0} ms, guided {t_guided:.0} ms ({:.2}x)",
                    t_guided / t_add
                );
                if let Some(path) = &picture {
                    write_picture(path, &case.original, &a, &g, &truth);
                }
            }
        }
    }
    let mean = |pred: &dyn Fn(&str) -> bool| {
        let v: Vec<f64> = gains
            .iter()
            .filter(|(k, _)| pred(k))
            .map(|(_, g)| *g)
            .collect();
        v.iter().sum::<f64>() / v.len() as f64
    };
    println!(
        "\nmean gain, photos, global and smooth edits: {:+.2} dB",
        mean(&|k| k.starts_with("photo") && (k.ends_with("global") || k.ends_with("smooth")))
    );
    println!("mean gain, every case: {:+.2} dB", mean(&|_| true));
    let worst = gains.iter().map(|(_, g)| *g).fold(f64::INFINITY, f64::min);
    println!("worst case: {worst:+.2} dB");
    if std::env::var("NO_CONTENT").is_err() {
        content_comparison(&data, &params, &only);
    }
}

/// New content (a pasted checkerboard) brought back by the residual's Lanczos3 and by a
/// super-resolution model (`upscale_method = "model:..."`): PSNR against the paste done at
/// full resolution, and the sharpness (variance of the Laplacian) inside the pasted square.
fn content_comparison(data: &Path, params: &GuidedParams, only: &str) {
    use darkroom::core::quality::{sharpness, Luma};
    let model_path = data.join("../models/waifu2x-upconv7-photo-x2.onnx");
    let model = darkroom::ops::upscale::load_model(&model_path, &Default::default())
        .unwrap_or_else(|e| panic!("{}: {e}", model_path.display()));
    let model = std::cell::RefCell::new(model);
    println!(
        "\nNew content: a checkerboard pasted into the proxy (waifu2x photo x2 for the model)\n"
    );
    println!("| image | additive PSNR | guided, Lanczos3 PSNR | guided, model PSNR | sharpness: truth / Lanczos3 / model | model time |");
    println!("|---|---|---|---|---|---|");
    for (file, _) in IMAGES.iter().take(4) {
        if !file.contains(only) {
            continue;
        }
        let loaded = darkroom::io::decode::load(&data.join(file), &Default::default()).unwrap();
        let original = flatten(loaded.image);
        let (case, truth) = make_case(&original, pasted_checker);
        let a = additive(&case, false);
        let g = guided(&case, params);
        let started = Instant::now();
        let enlarge = |crop: DynamicImage, target: (u32, u32)| {
            darkroom::ops::upscale::upscale_passes(
                &crop,
                &mut model.borrow_mut(),
                128,
                8,
                1,
                Some(target),
                &mut |_, _| {},
            )
        };
        let m = merge_image_enlarging_content(
            case.original.clone(),
            &case.proxy,
            &case.layers,
            params,
            &enlarge,
        )
        .unwrap()
        .unwrap();
        let seconds = started.elapsed().as_secs_f64();
        let (w, h) = (original.width(), original.height());
        let short = w.min(h) as f64;
        let side = (0.4 * short) as u32 - 8;
        let (x, y) = (w / 2 - side / 2, h / 2 - side / 2);
        let sharp = |img: &DynamicImage| sharpness(&Luma::of(&img.crop_imm(x, y, side, side)));
        let psnr = |img: &DynamicImage| metrics::psnr(img, &truth).unwrap();
        if file.starts_with("photo_exif") {
            // The other edits: where the maps explain the edit, the model must change nothing.
            for (edit_name, edit, _) in EDITS {
                let (case, truth) = make_case(&original, edit);
                let g = guided(&case, params);
                let m = merge_image_enlarging_content(
                    case.original.clone(),
                    &case.proxy,
                    &case.layers,
                    params,
                    &enlarge,
                )
                .unwrap()
                .unwrap();
                eprintln!(
                    "{file}, {edit_name}: guided {:.2} dB, guided with the model {:.2} dB",
                    metrics::psnr(&g, &truth).unwrap(),
                    metrics::psnr(&m, &truth).unwrap()
                );
            }
        }
        println!(
            "| {file} | {:.2} | {:.2} | {:.2} | {:.0} / {:.0} / {:.0} | {seconds:.1} s |",
            psnr(&a),
            psnr(&g),
            psnr(&m),
            sharp(&truth),
            sharp(&g),
            sharp(&m)
        );
    }
}

/// A 4x2 grid of 360x270 crops: before, additive, guided, truth; then |error| x8 of
/// additive and guided, and the edit itself (truth - before, offset to mid-gray).
fn write_picture(
    path: &str,
    before: &DynamicImage,
    additive: &DynamicImage,
    guided: &DynamicImage,
    truth: &DynamicImage,
) {
    let (cw, ch) = (360u32, 270u32);
    let (x0, y0) = (1900, 1300);
    let crop = |img: &DynamicImage| img.crop_imm(x0, y0, cw, ch).to_rgb8();
    let (b, a, g, t) = (crop(before), crop(additive), crop(guided), crop(truth));
    let error = |img: &image::RgbImage| {
        image::RgbImage::from_fn(cw, ch, |x, y| {
            let (p, q) = (img.get_pixel(x, y).0, t.get_pixel(x, y).0);
            image::Rgb(
                [0, 1, 2].map(|c| ((i32::from(p[c]) - i32::from(q[c])).abs() * 8).min(255) as u8),
            )
        })
    };
    let edit = image::RgbImage::from_fn(cw, ch, |x, y| {
        let (p, q) = (b.get_pixel(x, y).0, t.get_pixel(x, y).0);
        image::Rgb(
            [0, 1, 2].map(|c| (127 + (i32::from(q[c]) - i32::from(p[c])) / 2).clamp(0, 255) as u8),
        )
    });
    let blank = image::RgbImage::from_pixel(cw, ch, image::Rgb([255, 255, 255]));
    let mut sheet = image::RgbImage::new(cw * 4, ch * 2);
    for (i, tile) in [&b, &a, &g, &t, &edit, &error(&a), &error(&g), &blank]
        .iter()
        .enumerate()
    {
        image::imageops::replace(
            &mut sheet,
            *tile,
            i64::from((i as u32 % 4) * cw),
            i64::from((i as u32 / 4) * ch),
        );
    }
    sheet.save(path).expect("picture written");
    eprintln!("picture: {path}");
}
