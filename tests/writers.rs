//! Writers that close a file before it is whole: `touch` then write, and writers that append
//! in rounds (FTP and SMB servers, sync tools, `cat >>` loops), each round ending in a
//! close-write. The real daemon must end with exactly one job for the complete file, no
//! fragment set aside, and never move a file while it is still growing.

mod common;

use common::daemon::{config_with_grace, files_in, Tree};
use common::testdata;
use std::io::Write;
use std::time::Duration;

/// The held-out photo the writers deliver: a 1.7 MB baseline JPEG.
const PHOTO: &str = "panorama_4032x1008_4to1.jpg";

fn proxies(tree: &Tree) -> Vec<String> {
    files_in(&tree.exchange_out())
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect()
}

/// Transitions of the processing log into `state`.
fn transitions_to(tree: &Tree, state: &str) -> usize {
    tree.processing_log()
        .iter()
        .filter(|t| t["to"] == state)
        .count()
}

/// Appends `bytes` to `path` in rounds of `round` bytes, opening and closing the file for
/// each, sleeping `pause(i)` after round `i`.
fn append_in_rounds(
    path: &std::path::Path,
    bytes: &[u8],
    round: usize,
    pause: impl Fn(usize) -> Duration,
) {
    for (i, chunk) in bytes.chunks(round).enumerate() {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        file.write_all(chunk).unwrap();
        drop(file);
        std::thread::sleep(pause(i));
    }
}

/// What must hold once the writer is done: one proxy of the whole photo, nothing in
/// `failed/`, every earlier claim of a partial version superseded (none set aside).
fn assert_one_job_for_the_whole_file(tree: &Tree, name_stem: &str) {
    tree.wait_for("the complete photo's proxy", || {
        proxies(tree).iter().any(|n| n.starts_with(name_stem))
    });
    // Long enough for any stray claim of a fragment (incomplete_grace is 3 s here).
    std::thread::sleep(Duration::from_secs(4));
    let names = proxies(tree);
    assert_eq!(names.len(), 1, "exactly one proxy: {names:?}");
    let failed = tree.path("var/failed/photos");
    assert!(
        files_in(&failed).is_empty(),
        "no fragment set aside: {:?}",
        files_in(&failed)
    );
    assert_eq!(transitions_to(tree, "awaiting-return"), 1);
    assert_eq!(transitions_to(tree, "failed"), 0, "{}", tree.log());
    let proxy = tree.exchange_out().join(&names[0]);
    let (w, h) = image::image_dimensions(&proxy).unwrap();
    assert_eq!((w, h), (512, 512), "a proxy of the whole 4:1 photo");
    // The complete original waits, whole, in the inbox for its return.
    let inbox = files_in(&tree.inbox());
    assert_eq!(inbox.len(), 1);
    assert_eq!(
        std::fs::read(&inbox[0]).unwrap(),
        std::fs::read(testdata(PHOTO)).unwrap()
    );
}

#[test]
fn touch_then_write_gives_one_job_for_the_written_file() {
    let mut tree = Tree::new(&config_with_grace("3s", "", ""));
    tree.start();
    let target = tree.inbox().join("x.jpg");
    std::fs::File::create(&target).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    std::fs::write(&target, std::fs::read(testdata(PHOTO)).unwrap()).unwrap();
    assert_one_job_for_the_whole_file(&tree, "x_dr");
    assert!(
        transitions_to(&tree, "incomplete") >= 1 && transitions_to(&tree, "superseded") >= 1,
        "the empty version was claimed, waited on, then superseded: {:?}",
        tree.processing_log()
    );
}

#[test]
fn a_writer_appending_in_rounds_with_a_long_pause_leaves_no_fragments() {
    let mut tree = Tree::new(&config_with_grace("3s", "", ""));
    tree.start();
    let bytes = std::fs::read(testdata(PHOTO)).unwrap();
    let target = tree.inbox().join("reopen.jpg");
    // 256-KB rounds 100 ms apart, with one 3-s pause after the third round: long enough for
    // the partial file to be claimed, decoded as truncated and (before) set aside.
    append_in_rounds(&target, &bytes, 256 * 1024, |i| {
        Duration::from_millis(if i == 2 { 3000 } else { 100 })
    });
    assert_one_job_for_the_whole_file(&tree, "reopen_dr");
    assert!(transitions_to(&tree, "superseded") >= 1);
}

#[test]
fn a_writer_pausing_longer_than_the_window_after_every_round_gives_exactly_one_output() {
    let mut tree = Tree::new(&config_with_grace("3s", "", ""));
    tree.start();
    let bytes = std::fs::read(testdata(PHOTO)).unwrap();
    let target = tree.inbox().join("slow.jpg");
    // Every pause outlasts the stability window (500 ms) and the close-write settle time.
    append_in_rounds(&target, &bytes, 400 * 1024, |_| Duration::from_millis(1500));
    assert_one_job_for_the_whole_file(&tree, "slow_dr");
    let superseded = transitions_to(&tree, "superseded");
    assert!(
        superseded >= 3,
        "each partial version was claimed and then superseded ({superseded})"
    );
}

#[test]
fn a_truncated_file_that_stays_unchanged_is_listed_then_set_aside_after_the_grace() {
    let mut tree = Tree::new(&config_with_grace("6s", "", ""));
    tree.start();
    tree.drop_file("broken_truncated.jpg", "cut.jpg");
    tree.wait_for("the truncated file to be waited on", || {
        transitions_to(&tree, "incomplete") == 1
    });
    let failed = tree.path("var/failed/photos");
    assert!(tree.inbox().join("cut.jpg").is_file(), "left in place");
    assert!(files_in(&failed).is_empty());
    let status = tree.status();
    assert!(
        status.contains("incomplete files") && status.contains("cut.jpg"),
        "{status}"
    );
    tree.wait_for("the file set aside after the grace", || {
        failed.join("cut.jpg.error.json").is_file()
    });
    let sidecar = std::fs::read_to_string(failed.join("cut.jpg.error.json")).unwrap();
    assert!(
        sidecar.contains("truncated JPEG") && sidecar.contains("incomplete_grace"),
        "{sidecar}"
    );
    assert_eq!(
        std::fs::read(failed.join("cut.jpg")).unwrap(),
        std::fs::read(testdata("broken_truncated.jpg")).unwrap()
    );
}
