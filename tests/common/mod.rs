//! Shared helpers for the integration tests: where the shared test data lives, running the
//! real `darkroom` binary, and comparing images.
#![allow(dead_code)]

pub mod cluster;
pub mod comfyui;
pub mod daemon;
pub mod http;
pub mod postgres;

use darkroom::io::decode::{self, LoadedImage};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A TCP port on the loopback that is free now (the system's pick).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// How many inotify instances a process holds (its `anon_inode:inotify` descriptors).
pub fn inotify_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter(|fd| {
            std::fs::read_link(fd.path())
                .is_ok_and(|target| target.to_string_lossy().contains("inotify"))
        })
        .count()
}

/// `../shared` beside the checkout, or `$DARKROOM_SHARED`.
pub fn shared_dir() -> PathBuf {
    std::env::var_os("DARKROOM_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared"))
}

/// A file of the shared test corpus; fails loudly when the corpus is missing.
pub fn testdata(name: &str) -> PathBuf {
    let path = shared_dir().join("testdata").join(name);
    assert!(
        path.is_file(),
        "test data {} is missing: the tests need ../shared/testdata beside the checkout (or DARKROOM_SHARED)",
        path.display()
    );
    path
}

/// Copies a test file into `dir` (tests never write beside the read-only corpus).
pub fn stage(dir: &Path, name: &str) -> PathBuf {
    let target = dir.join(name);
    std::fs::copy(testdata(name), &target).unwrap();
    let mut perms = std::fs::metadata(&target).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(&target, perms).unwrap();
    target
}

pub fn darkroom() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_darkroom"));
    cmd.env("RUST_LOG", "warn");
    with_models(&mut cmd);
    cmd
}

/// The ONNX Runtime library that `scripts/setup-venv` installed into the checkout's `.venv`.
/// A program of the project's `.venv` (scripts/setup-venv installs it).
pub fn venv_bin(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(".venv/bin")
        .join(name)
}

pub fn runtime_library() -> Option<PathBuf> {
    let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/lib");
    std::fs::read_dir(lib).ok()?.flatten().find_map(|python| {
        let capi = python.path().join("site-packages/onnxruntime/capi");
        std::fs::read_dir(capi)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("libonnxruntime.so") && !n.contains("providers"))
            })
    })
}

/// Points `command` at the checkout's ONNX Runtime and the shared models, as a user's
/// environment (`ORT_DYLIB_PATH`, `DARKROOM_MODELS`) would: the binary itself knows
/// nothing of the build machine's folders.
pub fn with_models(command: &mut Command) -> &mut Command {
    if let Some(library) = runtime_library() {
        command.env("ORT_DYLIB_PATH", library);
    }
    command.env("DARKROOM_MODELS", shared_dir().join("models"))
}

/// Runs darkroom with `args` in `dir` and asserts success.
pub fn run_ok(dir: &Path, args: &[&str]) -> Output {
    let out = darkroom().current_dir(dir).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "darkroom {args:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs darkroom with `args` in `dir` and asserts failure; returns (exit code, stderr).
pub fn run_err(dir: &Path, args: &[&str]) -> (i32, String) {
    let out = darkroom().current_dir(dir).args(args).output().unwrap();
    assert!(
        !out.status.success(),
        "darkroom {args:?} should have failed"
    );
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Stages `name` in `dir`, splits it at `width x height` and computes the delta (and the
/// refined delta) of the unchanged proxy: the files of an identity round trip. Returns the
/// staged original and its stem.
pub fn identity_deltas(dir: &Path, name: &str, width: &str, height: &str) -> (PathBuf, String) {
    let original = stage(dir, name);
    let stem = original.file_stem().unwrap().to_string_lossy().into_owned();
    run_ok(dir, &["split", name, width, height]);
    let proxy = format!("{stem}_proxy.png");
    run_ok(dir, &["delta", name, &proxy, width, height, "--refine"]);
    (original, stem)
}

pub fn load(path: &Path) -> LoadedImage {
    decode::load(path, &Default::default()).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// PSNR in dB over all samples of two same-layout images, in 8-bit units.
pub fn psnr(a: &image::DynamicImage, b: &image::DynamicImage) -> f64 {
    assert_eq!((a.width(), a.height()), (b.width(), b.height()));
    let (a, b) = (a.to_rgb32f(), b.to_rgb32f());
    let mse: f64 = a
        .iter()
        .zip(b.iter())
        .map(|(x, y)| {
            let d = f64::from(x - y) * 255.0;
            d * d
        })
        .sum::<f64>()
        / a.len() as f64;
    if mse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (255.0f64 * 255.0 / mse).log10()
    }
}

/// Names of the files in `dir`, sorted.
pub fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A three-frame animated GIF of 64x48 gradients, each frame its own blue.
pub fn three_frame_gif() -> Vec<u8> {
    use image::codecs::gif::GifEncoder;
    use image::{Delay, Frame, Rgba, RgbaImage};
    let mut gif = Vec::new();
    {
        let mut encoder = GifEncoder::new(&mut gif);
        for i in 0..3u8 {
            let frame = RgbaImage::from_fn(64, 48, |x, y| {
                Rgba([(x * 4) as u8, (y * 5) as u8, i * 80, 255])
            });
            encoder
                .encode_frame(Frame::from_parts(
                    frame,
                    0,
                    0,
                    Delay::from_numer_denom_ms(100, 1),
                ))
                .unwrap();
        }
    }
    gif
}
