//! Bad input gets a clear one-line error naming the file and the reason, a non-zero exit
//! code, no output file, and never a panic.

mod common;

use common::*;

fn refuses(name: &str, reason_fragment: &str) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    stage(d, name);
    let before = listing(d);
    for args in [
        vec!["split", name, "256", "256"],
        vec!["delta", name, name, "256", "256"],
    ] {
        let (code, err) = run_err(d, &args);
        assert_eq!(code, 65, "{args:?}: bad data exits 65; stderr: {err}");
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: one line, got: {err}");
        assert!(lines[0].contains(name), "{args:?}: names the file: {err}");
        assert!(
            lines[0].to_lowercase().contains(reason_fragment),
            "{args:?}: says why ('{reason_fragment}'): {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
        assert_eq!(listing(d), before, "{args:?}: no output left behind");
    }
}

#[test]
fn truncated_png_is_refused() {
    refuses("broken_truncated.png", "truncated or corrupt");
}

#[test]
fn truncated_jpeg_is_refused_rather_than_grey_filled() {
    refuses("broken_truncated.jpg", "truncated jpeg");
}

#[test]
fn text_named_jpg_is_refused_as_not_an_image() {
    refuses("broken_text_named.jpg", "not an image");
}

#[test]
fn decompression_bomb_header_is_refused_before_allocation() {
    refuses("bomb_png_100000x100000.png", "100000x100000");
}

#[test]
fn empty_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("empty.png"), b"").unwrap();
    let (code, err) = run_err(dir.path(), &["split", "empty.png", "64", "64"]);
    assert_eq!(code, 65);
    assert!(err.contains("empty.png") && err.contains("empty"), "{err}");
}

#[test]
fn missing_file_exits_66() {
    let dir = tempfile::tempdir().unwrap();
    let (code, err) = run_err(dir.path(), &["split", "nowhere.png", "64", "64"]);
    assert_eq!(code, 66);
    assert!(err.contains("nowhere.png"), "{err}");
}

#[test]
fn a_file_over_the_size_limit_is_refused_without_decoding() {
    let dir = tempfile::tempdir().unwrap();
    stage(dir.path(), "photo_bus_4032x3024_p3.jpg");
    let (code, err) = run_err(
        dir.path(),
        &[
            "--max-file-mib",
            "1",
            "split",
            "photo_bus_4032x3024_p3.jpg",
            "64",
            "64",
        ],
    );
    assert_eq!(code, 65);
    assert!(err.contains("over the 1048576-byte limit"), "{err}");
}

#[test]
fn bad_sizes_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    stage(dir.path(), "tiny_17x9.png");
    for bad in ["0", "0%", "1001%", "12px"] {
        let (code, err) = run_err(dir.path(), &["split", "tiny_17x9.png", bad, "64"]);
        assert_eq!(code, 2, "{bad}: clap usage error; {err}");
        assert!(err.contains(bad), "{err}");
    }
}

#[test]
fn png_named_jpg_is_sniffed_and_processed() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(testdata("tiny_17x9.png"), dir.path().join("looks_like.jpg")).unwrap();
    run_ok(dir.path(), &["split", "looks_like.jpg", "32", "32"]);
    assert!(dir.path().join("looks_like_proxy.png").is_file());
}

#[test]
fn inputs_the_fuzzers_found_are_refused_with_a_reason() {
    // Each `regression_*` seed of fuzz/seeds is an input a fuzz target once failed on; the
    // fuzz runs replay them first, and the library must refuse them here too (with overflow
    // checks or without: an error either way, never a crash).
    let seeds = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    let mut found = 0;
    for target in std::fs::read_dir(&seeds).unwrap().flatten() {
        if !target.path().is_dir() || !target.file_name().to_string_lossy().starts_with("decode_") {
            continue;
        }
        for file in std::fs::read_dir(target.path()).unwrap().flatten() {
            if !file
                .file_name()
                .to_string_lossy()
                .starts_with("regression_")
            {
                continue;
            }
            let bytes = std::fs::read(file.path()).unwrap();
            let result = darkroom::io::decode::decode_bytes(&bytes, &Default::default());
            let error = result
                .err()
                .unwrap_or_else(|| panic!("{:?} decoded", file.path()));
            assert!(!error.to_string().trim().is_empty());
            found += 1;
        }
    }
    assert!(found >= 1, "no regression inputs under {}", seeds.display());
}
