//! `--upscale-method cmd(...)` with real external programs: a working upscaler, one that
//! fails, one that hangs.

mod common;

use common::*;
use std::path::Path;

fn tool() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/tools/nn_upscale.py")
        .display()
        .to_string()
}

/// Split coffee, brighten the proxy's content by 20 levels, compute the delta.
fn graded_delta(d: &Path) {
    stage(d, "photo_coffee_600x400.png");
    run_ok(d, &["split", "photo_coffee_600x400.png", "150", "150"]);
    let proxy = load(&d.join("photo_coffee_600x400_proxy.png"))
        .image
        .to_rgb8();
    let brighter = image::ImageBuffer::from_fn(proxy.width(), proxy.height(), |x, y| {
        image::Rgb(proxy.get_pixel(x, y).0.map(|v| v.saturating_add(20)))
    });
    brighter.save(d.join("processed.png")).unwrap();
    run_ok(
        d,
        &[
            "delta",
            "photo_coffee_600x400.png",
            "processed.png",
            "150",
            "150",
        ],
    );
}

#[test]
fn an_external_upscaler_delta_is_merged_like_the_builtin_one() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    graded_delta(d);
    let method = format!("cmd(python3 {} -i %i -o %o -s 4)", tool());
    run_ok(
        d,
        &[
            "merge",
            "photo_coffee_600x400.png",
            "photo_coffee_600x400_proxy_delta.png",
            "--upscale_method",
            &method,
            "-o",
            "ext.png",
        ],
    );
    run_ok(
        d,
        &[
            "merge",
            "photo_coffee_600x400.png",
            "photo_coffee_600x400_proxy_delta.png",
            "-o",
            "basic.png",
        ],
    );
    let ext = load(&d.join("ext.png")).image;
    let basic = load(&d.join("basic.png")).image;
    assert_eq!((ext.width(), ext.height()), (600, 400));
    // A uniform +20 delta upscales the same whichever way (edges aside).
    assert!(psnr(&ext, &basic) > 45.0, "psnr {}", psnr(&ext, &basic));
    let original = load(&d.join("photo_coffee_600x400.png")).image;
    assert!(psnr(&ext, &original) < 25.0, "the edit was applied");
    // No temp files leak into the working folder.
    assert!(listing(d).iter().all(|n| !n.contains("darkroom-tmp")));
}

#[test]
fn a_failing_upscaler_reports_its_stderr_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    graded_delta(d);
    let (code, err) = run_err(
        d,
        &[
            "merge",
            "photo_coffee_600x400.png",
            "photo_coffee_600x400_proxy_delta.png",
            "--upscale-method",
            "cmd(sh -c 'echo CUDA out of memory >&2; exit 7' %i %o)",
        ],
    );
    assert_eq!(code, 1);
    assert!(err.contains("CUDA out of memory"), "{err}");
    assert!(!d.join("photo_coffee_600x400_merged.png").exists());
}

#[test]
fn a_hanging_upscaler_is_killed_at_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    graded_delta(d);
    let (code, err) = run_err(
        d,
        &[
            "merge",
            "photo_coffee_600x400.png",
            "photo_coffee_600x400_proxy_delta.png",
            "--cmd-timeout",
            "1",
            "--upscale-method",
            "cmd(sh -c 'sleep 60' sh %i %o)",
        ],
    );
    assert_eq!(code, 1);
    assert!(err.contains("did not finish within 1 s"), "{err}");
}

#[test]
fn a_missing_upscaler_says_how_to_fix_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    graded_delta(d);
    let (_, err) = run_err(
        d,
        &[
            "merge",
            "photo_coffee_600x400.png",
            "photo_coffee_600x400_proxy_delta.png",
            "--upscale-method",
            "cmd(no-such-upscaler-xyz -i %i -o %o)",
        ],
    );
    assert!(
        err.contains("no-such-upscaler-xyz") && err.contains("installed"),
        "{err}"
    );
}

#[test]
fn an_upscaler_returning_the_wrong_shape_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    graded_delta(d);
    // Copies a square image over the output: wrong aspect for a 3:2 original.
    let square = testdata("gray_camera_512.png").display().to_string();
    let method = format!("cmd(sh -c 'cp {square} \"$2\"' sh %i %o)");
    let (_, err) = run_err(
        d,
        &[
            "merge",
            "photo_coffee_600x400.png",
            "photo_coffee_600x400_proxy_delta.png",
            "--upscale-method",
            &method,
        ],
    );
    assert!(err.contains("512x512") && err.contains("600x400"), "{err}");
}
