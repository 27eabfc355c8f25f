//! batch-split: every match processed, bad files reported, the batch never stopped.

mod common;

use common::*;

#[test]
fn one_bad_file_never_stops_the_batch() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for name in [
        "photo_coffee_600x400.png",
        "tiny_17x9.png",
        "broken_truncated.png",
        "gray_camera_512.png",
        "broken_text_named.jpg",
    ] {
        stage(d, name);
    }
    let (code, err) = run_err(d, &["batch-split", "*", "128", "128", "-j", "2"]);
    assert_eq!(code, 1);
    assert!(err.contains("3 succeeded, 2 failed, 5 total"), "{err}");
    assert!(
        err.contains("broken_truncated.png") && err.contains("broken_text_named.jpg"),
        "{err}"
    );
    for stem in ["photo_coffee_600x400", "tiny_17x9", "gray_camera_512"] {
        assert!(d.join(format!("{stem}_proxy.png")).is_file(), "{stem}");
    }
    // A second run skips darkroom's own outputs instead of splitting proxies of proxies.
    let (_, err) = run_err(d, &["batch-split", "*", "128", "128"]);
    assert!(err.contains("5 total"), "{err}");
}

#[test]
fn a_clean_batch_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    stage(d, "photo_coffee_600x400.png");
    stage(d, "anime_eileen_320x720_rgba.png");
    let out = run_ok(
        d,
        &["batch-split", "*.png", "25%", "25%", "--output-dir", "."],
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("2 succeeded, 0 failed"));
}
