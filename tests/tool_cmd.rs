//! A split-to-proxy rule whose tool is a command (`tool = "cmd(...)"`): darkroom runs it on
//! each proxy and merges its output back; a failing, hanging or resizing tool fails the job
//! with the reason.

mod common;

use common::daemon::{config_text, files_in, Tree};
use std::path::Path;

fn python_tool(args: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    format!(
        "tool = \"cmd({} {} %i %o{args})\"",
        root.join(".venv/bin/python").display(),
        root.join("tests/tools/grade_tool.py").display()
    )
}

/// Starts a daemon whose rule runs `tool_line`, drops a photo, and returns the tree.
fn run_with(tool_line: &str, daemon_extra: &str) -> Tree {
    let mut tree = Tree::new(&config_text(
        daemon_extra,
        &format!("{tool_line}\ncommand_timeout = \"2s\""),
    ));
    tree.start();
    tree.drop_file("photo_coffee_600x400.png", "coffee.png");
    tree
}

/// The error sidecar of the set-aside photo.
fn failure(tree: &Tree) -> serde_json::Value {
    let sidecar = tree.wait_for_file(&tree.path("var/failed/photos"), |n| {
        n.ends_with(".error.json")
    });
    serde_json::from_str(&std::fs::read_to_string(sidecar).unwrap()).unwrap()
}

#[test]
fn a_script_tool_grades_each_proxy_and_its_change_is_merged_at_full_resolution() {
    let tree = run_with(&python_tool(""), "");
    let output = tree.wait_for_file(&tree.path("var/processed/photos/images"), |_| true);
    tree.wait_for("the original to be filed", || {
        tree.path("var/processed/photos/originals/coffee.png")
            .is_file()
    });
    let original = common::load(&tree.path("var/processed/photos/originals/coffee.png"));
    let merged = common::load(&output);
    assert_eq!(
        (merged.image.width(), merged.image.height()),
        (original.image.width(), original.image.height())
    );
    // The grade lifts red against blue at full resolution.
    let (o, m) = (original.image.to_rgb8(), merged.image.to_rgb8());
    let mean = |img: &image::RgbImage, c: usize| {
        img.pixels().map(|p| f64::from(p[c])).sum::<f64>() / (img.width() * img.height()) as f64
    };
    assert!(mean(&m, 0) - mean(&m, 2) > mean(&o, 0) - mean(&o, 2) + 5.0);
    let provenance: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(tree.path("var/metadata/photos/coffee.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(provenance["proxy"]["tool"]["tool"], "cmd");
    assert_eq!(provenance["return"]["pairing"], "tool");
    assert!(
        files_in(&tree.exchange_in()).is_empty(),
        "nothing goes through exchange_in"
    );
}

#[test]
fn a_tool_that_exits_1_fails_the_job_with_its_stderr() {
    let tree = run_with(
        "tool = \"cmd(sh -c 'echo model exploded: out of memory >&2; exit 1' %i %o)\"",
        "max_attempts = 2",
    );
    let error = failure(&tree);
    let reason = error["reason"].as_str().unwrap();
    assert!(reason.contains("model exploded: out of memory"), "{reason}");
    assert_eq!(error["kind"], "gave-up", "retried, then given up: {error}");
}

#[test]
fn a_tool_that_hangs_is_killed_at_command_timeout_with_its_process_group() {
    let tree = run_with(
        "tool = \"cmd(sh -c 'sleep 300 & sleep 300; true' %i %o)\"",
        "max_attempts = 1",
    );
    let error = failure(&tree);
    let reason = error["reason"].as_str().unwrap();
    assert!(
        reason.contains("did not finish within 2 s and was killed"),
        "{reason}"
    );
    // No `sleep 300` of the tool's group survives.
    let survivors = std::process::Command::new("pgrep")
        .args(["-f", "sleep 300"])
        .output()
        .unwrap();
    assert!(survivors.stdout.is_empty(), "left running: {:?}", survivors);
}

#[test]
fn a_tool_that_changes_the_proxys_size_fails_the_job_with_both_sizes() {
    let tree = run_with(&python_tool(" --half"), "");
    let error = failure(&tree);
    let reason = error["reason"].as_str().unwrap();
    assert!(
        reason.contains("the command returned 256x256, but the proxy it was given is 512x512"),
        "{reason}"
    );
    assert_eq!(error["kind"], "permanent");
}
