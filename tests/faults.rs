//! Fault injection against the real daemon (issue #6, first cases): temp names renamed into
//! place, hard links and sftp-style link+unlink, empty and oversized files, and a symlink
//! pointing out of the tree. Each case injects the fault, then checks what must hold: one job
//! per real file, none for the rest, a reason for every refusal, and a daemon still serving.

mod common;

use common::daemon::{config_text, files_in, Tree};
use common::testdata;
use std::time::Duration;

fn proxies(tree: &Tree) -> Vec<String> {
    files_in(&tree.exchange_out())
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect()
}

fn split_jobs(tree: &Tree) -> usize {
    tree.processing_log()
        .iter()
        .filter(|t| t["kind"] == "split" && t["to"] == "awaiting-return")
        .count()
}

#[test]
fn temp_names_renamed_into_place_give_exactly_one_job_each() {
    let mut tree = Tree::new(&config_text("", ""));
    tree.start();
    let inbox = tree.inbox();
    let bytes = std::fs::read(testdata("photo_coffee_600x400.png")).unwrap();
    std::fs::write(inbox.join("x.png.part"), &bytes).unwrap();
    std::fs::write(inbox.join(".y.tmp"), &bytes).unwrap();
    // Longer than the stability window: the temp names must still not be taken.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        proxies(&tree).is_empty(),
        "a temp name was processed: {:?}",
        proxies(&tree)
    );
    std::fs::rename(inbox.join("x.png.part"), inbox.join("x.png")).unwrap();
    std::fs::rename(inbox.join(".y.tmp"), inbox.join("y.png")).unwrap();
    tree.wait_for("two proxies", || proxies(&tree).len() == 2);
    std::thread::sleep(Duration::from_millis(1500));
    let mut names = proxies(&tree);
    names.sort();
    assert!(
        names[0].starts_with("x_dr") && names[1].starts_with("y_dr"),
        "{names:?}"
    );
    assert_eq!(split_jobs(&tree), 2, "exactly one job per file");
}

#[test]
fn a_hard_link_and_an_sftp_style_link_then_unlink_are_processed() {
    let mut tree = Tree::new(&config_text("", ""));
    tree.start();
    let outside = tree.path("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::copy(testdata("photo_coffee_600x400.png"), outside.join("a.png")).unwrap();
    std::fs::copy(testdata("tiny_17x9.png"), outside.join("b.png")).unwrap();
    // A hard link: no write happens in the inbox, so no close-write fires.
    std::fs::hard_link(outside.join("a.png"), tree.inbox().join("a.png")).unwrap();
    // sftp's atomic upload: link the finished file in, then drop the temporary name.
    std::fs::hard_link(outside.join("b.png"), tree.inbox().join("b.png")).unwrap();
    std::fs::remove_file(outside.join("b.png")).unwrap();
    tree.wait_for("two proxies", || proxies(&tree).len() == 2);
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(split_jobs(&tree), 2);
    assert!(
        outside.join("a.png").is_file(),
        "the other link is never touched"
    );
}

#[test]
fn empty_and_oversized_files_are_refused_with_a_reason_and_the_daemon_goes_on() {
    let mut tree = Tree::new(&config_text("[daemon.limits]\nmax_file_mib = 1", ""));
    tree.start();
    std::fs::write(tree.inbox().join("empty.png"), b"").unwrap();
    // The 12-MP JPEG is 3.3 MiB: over the 1 MiB limit.
    tree.drop_file("photo_bus_4032x3024_p3.jpg", "big.jpg");
    let failed = tree.path("var/failed/photos");
    for (name, reason) in [("empty.png", "empty"), ("big.jpg", "over the")] {
        let sidecar = failed.join(format!("{name}.error.json"));
        tree.wait_for(&format!("{name} refused"), || sidecar.is_file());
        let text = std::fs::read_to_string(&sidecar).unwrap();
        assert!(text.contains(reason), "{name}: {text}");
        assert!(failed.join(name).is_file(), "{name} is kept, set aside");
    }
    // Still serving.
    tree.drop_file("photo_coffee_600x400.png", "good.png");
    tree.wait_for("the good file's proxy", || {
        proxies(&tree).iter().any(|n| n.starts_with("good_dr"))
    });
}

#[test]
fn a_symlink_out_of_the_tree_is_neither_followed_nor_opened() {
    let mut tree = Tree::new(&config_text("", ""));
    tree.start();
    std::os::unix::fs::symlink("/etc/passwd", tree.inbox().join("passwd.png")).unwrap();
    std::os::unix::fs::symlink(
        testdata("photo_coffee_600x400.png"),
        tree.inbox().join("outside.png"),
    )
    .unwrap();
    tree.drop_file("tiny_17x9.png", "inside.png");
    tree.wait_for("the real file's proxy", || {
        proxies(&tree).iter().any(|n| n.starts_with("inside_dr"))
    });
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(proxies(&tree).len(), 1, "{:?}", proxies(&tree));
    let log = tree.log();
    assert!(
        log.contains("symlink points outside the watched folder"),
        "the refusal is reported:\n{log}"
    );
    assert!(
        std::fs::symlink_metadata(tree.inbox().join("passwd.png")).is_ok(),
        "the link itself is left alone"
    );
}
