//! Fault injection against the real daemon (issue #6, first cases): temp names renamed into
//! place, hard links and sftp-style link+unlink, empty and oversized files, and a symlink
//! pointing out of the tree. Each case injects the fault, then checks what must hold: one job
//! per real file, none for the rest, a reason for every refusal, and a daemon still serving.

mod common;

use common::daemon::{config_text, files_in, temp_files, Tree};
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

/// `strace`, which the durability tests run the daemon under (scripts/test installs it).
fn strace() -> &'static str {
    let ok = std::process::Command::new("strace")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(ok, "strace is needed for the durability tests: scripts/test installs the Debian package strace");
    "strace"
}

/// Writes a PNG whose zTXt and iTXt chunks (keyword `keyword`) inflate to `mib` MiB each,
/// made with Python's zlib in a streaming loop, so neither side ever holds the inflated text.
fn with_text_bomb(png: &std::path::Path, out: &std::path::Path, keyword: &str, mib: usize) {
    let script = r#"
import sys, zlib, struct
src, dst, keyword, mib = sys.argv[1], sys.argv[2], sys.argv[3].encode(), int(sys.argv[4])
png = open(src, 'rb').read()
def chunk(kind, data):
    return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data) & 0xffffffff)
co = zlib.compressobj(9)
block = b' ' * (1 << 20)
parts = [co.compress(block) for _ in range(mib)]
data = b''.join(parts) + co.flush()
bomb = chunk(b'zTXt', keyword + b'\0\0' + data) + chunk(b'iTXt', keyword + b'\0\x01\0\0\0' + data)
open(dst, 'wb').write(png[:33] + bomb + png[33:])
"#;
    let status = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(png)
        .arg(out)
        .args([keyword, &mib.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn text_chunks_that_inflate_to_hundreds_of_mib_are_never_inflated() {
    // An input whose text chunks inflate to 2 x 400 MiB: processed as the image it is, and
    // the daemon's peak memory stays far below the bomb.
    let mut tree = Tree::new(&config_text("", ""));
    tree.start();
    let staging = tree.path("staging");
    std::fs::create_dir_all(&staging).unwrap();
    let bomb = staging.join("comment_bomb.png");
    with_text_bomb(&testdata("photo_coffee_600x400.png"), &bomb, "Comment", 400);
    assert!(
        std::fs::metadata(&bomb).unwrap().len() < 4 << 20,
        "the bomb is small on disk"
    );
    std::fs::rename(&bomb, tree.inbox().join("comment_bomb.png")).unwrap();
    tree.wait_for("the bomb's proxy", || {
        proxies(&tree)
            .iter()
            .any(|n| n.starts_with("comment_bomb_dr"))
    });
    let peak = tree.peak_rss_mib();
    assert!(peak < 250.0, "the daemon peaked at {peak:.0} MiB");
    tree.signal(libc::SIGTERM);
    assert_eq!(tree.wait_exit().code(), Some(0));

    // `darkroom merge` reads darkroom's own metadata from the delta's iTXt chunk: a bomb
    // under that keyword is ignored (the sidecar metadata file is used), under an address
    // space limit that inflating it would break.
    let dir = tempfile::tempdir().unwrap();
    common::stage(dir.path(), "photo_coffee_600x400.png");
    common::run_ok(
        dir.path(),
        &["split", "photo_coffee_600x400.png", "256", "256"],
    );
    with_text_bomb(
        &dir.path().join("photo_coffee_600x400_proxy.png"),
        &dir.path().join("delta_bomb.png"),
        darkroom::io::metadata::PNG_KEYWORD,
        600,
    );
    std::fs::copy(
        dir.path().join("photo_coffee_600x400_proxy_metadata.txt"),
        dir.path().join("delta_bomb_metadata.txt"),
    )
    .unwrap();
    let out = std::process::Command::new("prlimit")
        .args(["--as=1000000000", "--"])
        .arg(env!("CARGO_BIN_EXE_darkroom"))
        .args([
            "merge",
            "photo_coffee_600x400.png",
            "delta_bomb.png",
            "--output-image",
            "merged.png",
        ])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "merge under a 1 GB address-space limit: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.path().join("merged.png").is_file());
}

#[test]
fn writes_failing_with_efbig_keep_the_source_and_retry_until_they_succeed() {
    let mut tree = Tree::new(&config_text("max_attempts = 30", ""));
    // Files the daemon writes may not grow past 200 kB (the soft limit; the hard one stays
    // unlimited so it can be lifted later): the journal and logs fit, the 512x512 proxy of
    // the coffee photo (320 kB) does not.
    tree.start_wrapped(&["prlimit", "--fsize=200000:unlimited", "--"], &[]);
    let source = tree.drop_file("photo_coffee_600x400.png", "coffee.png");
    tree.wait_for("the write to fail", || {
        tree.log().contains("File too large")
    });
    tree.wait_for("a retry", || {
        tree.log().matches("File too large").count() >= 2
    });
    assert!(tree.log().contains("it will be retried"), "{}", tree.log());
    assert!(source.is_file(), "the source must stay in the inbox");
    assert!(
        proxies(&tree).is_empty(),
        "no truncated output: {:?}",
        proxies(&tree)
    );
    assert!(
        temp_files(&tree.path("var")).is_empty(),
        "temp files left: {:?}",
        temp_files(&tree.path("var"))
    );
    // The limit lifted on the running daemon: the next retry succeeds.
    let lifted = std::process::Command::new("prlimit")
        .args(["--pid", &tree.daemon_pid().to_string(), "--fsize=unlimited"])
        .status()
        .unwrap();
    assert!(lifted.success());
    tree.wait_for("the proxy", || {
        proxies(&tree).iter().any(|n| n.starts_with("coffee_dr"))
    });
    let proxy = files_in(&tree.exchange_out()).remove(0);
    assert!(
        std::fs::metadata(&proxy).unwrap().len() > 200_000,
        "the proxy must exceed the limit, or the test tests nothing"
    );
    let decoded = common::load(&proxy).image;
    assert_eq!((decoded.width(), decoded.height()), (512, 512));
    assert!(temp_files(&tree.path("var")).is_empty());
    tree.signal(libc::SIGTERM);
    assert_eq!(tree.wait_exit().code(), Some(0));
}

#[test]
fn kill_9_right_after_an_output_rename_before_the_journal_commit_leaves_no_duplicate() {
    let strace = strace();
    let mut tree = Tree::new(&config_text("", ""));
    let var = tree.path("var");
    // The proxy: strace holds the thread 5 s right after the rename that publishes it, so
    // the kill lands before the journal records the split.
    let proxy = tree.exchange_out().join("coffee_dr000001_proxy.png");
    let delay = |path: &std::path::Path| {
        vec![
            strace.to_string(),
            "-f".into(),
            "-qq".into(),
            "-o".into(),
            "/dev/null".into(),
            "-P".into(),
            path.display().to_string(),
            "-e".into(),
            "trace=rename,renameat,renameat2".into(),
            "-e".into(),
            "inject=rename,renameat,renameat2:delay_exit=5000000".into(),
            "-e".into(),
            "signal=none".into(),
        ]
    };
    let wrapper = delay(&proxy);
    tree.start_wrapped(&wrapper.iter().map(String::as_str).collect::<Vec<_>>(), &[]);
    tree.drop_file("photo_coffee_600x400.png", "coffee.png");
    tree.wait_for("the proxy renamed into place", || proxy.is_file());
    assert!(
        !tree.log().contains("proxy written"),
        "the journal step came first: the test tests nothing"
    );
    // SAFETY: kill(2) takes plain integers; the pid is a child this test started.
    unsafe { libc::kill(tree.daemon_pid(), libc::SIGKILL) };
    tree.wait_exit();
    tree.start();
    tree.wait_for("the split recorded", || split_jobs(&tree) == 1);
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(
        proxies(&tree),
        ["coffee_dr000001_proxy.png"],
        "exactly one proxy"
    );
    assert!(temp_files(&var).is_empty(), "{:?}", temp_files(&var));
    tree.signal(libc::SIGTERM);
    assert_eq!(tree.wait_exit().code(), Some(0));

    // The merged output: the same, between its rename and the journal's merge record.
    let output = tree.path("var/processed/photos/images/coffee.png");
    let wrapper = delay(&output);
    tree.start_wrapped(&wrapper.iter().map(String::as_str).collect::<Vec<_>>(), &[]);
    common::daemon::write_graded_proxy(
        &proxy,
        &tree.exchange_in(),
        "coffee_dr000001_proxy.png",
        20,
        true,
    );
    tree.wait_for("the merged output renamed into place", || output.is_file());
    // SAFETY: kill(2) takes plain integers; the pid is a child this test started.
    unsafe { libc::kill(tree.daemon_pid(), libc::SIGKILL) };
    tree.wait_exit();
    tree.start();
    let originals = tree.path("var/processed/photos/originals");
    tree.wait_for("the merge recorded and the original filed", || {
        files_in(&originals).len() == 1
    });
    std::thread::sleep(Duration::from_millis(800));
    let outputs = files_in(&tree.path("var/processed/photos/images"));
    assert_eq!(
        outputs,
        std::slice::from_ref(&output),
        "exactly one merged output"
    );
    assert_eq!(
        files_in(&tree.path("var/processed/photos/returns")).len(),
        1
    );
    assert!(files_in(&tree.inbox()).is_empty() && files_in(&tree.exchange_in()).is_empty());
    assert!(temp_files(&var).is_empty(), "{:?}", temp_files(&var));
    let merges = tree
        .processing_log()
        .iter()
        .filter(|t| t["kind"] == "merge" && t["to"] == "done")
        .count();
    assert_eq!(merges, 1, "the journal agrees with the disk");
    tree.signal(libc::SIGTERM);
    assert_eq!(tree.wait_exit().code(), Some(0));
}

/// A syscall of an strace log and the paths it names (fds shown with `-y`).
type Syscall = (String, Vec<String>);

/// The lines of an strace log as syscalls.
fn syscalls(trace: &str) -> Vec<Syscall> {
    trace
        .lines()
        .filter_map(|line| {
            let rest = line.split_once(' ')?.1.trim_start();
            let (name, args) = rest.split_once('(')?;
            let mut paths = Vec::new();
            // Quoted paths ("...") and fd paths (3</a/b>).
            let mut chars = args.char_indices().peekable();
            while let Some((i, c)) = chars.next() {
                let close = match c {
                    '"' => '"',
                    '<' => '>',
                    _ => continue,
                };
                let end = args[i + 1..].find(close).map(|e| i + 1 + e)?;
                paths.push(args[i + 1..end].to_string());
                while chars.peek().is_some_and(|(j, _)| *j <= end) {
                    chars.next();
                }
            }
            Some((name.to_string(), paths))
        })
        .collect()
}

#[test]
fn durability_order_is_fsync_then_rename_then_directory_fsync_then_the_source_moves() {
    let strace = strace();
    let config = format!(
        "{}\n[[rule]]\nname = \"set\"\nrecipe = \"normalise\"\npreset = \"sd15\"\ncaption_template = \"{{stem}}\"\n",
        config_text("", "")
    );
    let mut tree = Tree::new(&config);
    let trace_path = tree.path("trace.txt");
    let trace_arg = trace_path.display().to_string();
    tree.start_wrapped(
        &[
            strace,
            "-f",
            "-y",
            "-qq",
            "-o",
            &trace_arg,
            "-e",
            "trace=fsync,fdatasync,rename,renameat,renameat2",
            "-e",
            "signal=none",
        ],
        &[],
    );
    // A normalise job (image, caption, sidecar, then the original), and a full round trip
    // (proxy; merged output, then the original and the return).
    std::fs::copy(
        testdata("photo_exif_orientation6.jpg"),
        tree.path("var/inbox/set/photo.jpg"),
    )
    .unwrap();
    tree.drop_file("photo_coffee_600x400.png", "coffee.png");
    let proxy = tree.wait_for_file(&tree.exchange_out(), |n| n.starts_with("coffee_dr"));
    common::daemon::write_graded_proxy(
        &proxy,
        &tree.exchange_in(),
        "coffee_dr000002_proxy.png",
        20,
        true,
    );
    let originals = tree.path("var/processed/photos/originals");
    tree.wait_for("the merge", || files_in(&originals).len() == 1);
    tree.wait_for("the normalise job", || {
        files_in(&tree.path("var/processed/set/originals")).len() == 1
    });
    // SAFETY: kill(2) takes plain integers; the pid is a child this test started.
    unsafe { libc::kill(tree.daemon_pid(), libc::SIGTERM) };
    assert_eq!(tree.wait_exit().code(), Some(0));

    let calls = syscalls(&std::fs::read_to_string(&trace_path).unwrap());
    let position = |pred: &dyn Fn(&Syscall) -> bool, after: usize| {
        calls
            .iter()
            .enumerate()
            .skip(after)
            .find(|(_, c)| pred(c))
            .map(|(i, _)| i)
    };
    let is_rename = |c: &Syscall| c.0.starts_with("rename");
    let is_sync = |c: &Syscall| c.0 == "fsync" || c.0 == "fdatasync";
    let mut checked = 0;
    let mut last_dir_sync = std::collections::HashMap::new();
    for (i, (name, paths)) in calls.iter().enumerate() {
        if !name.starts_with("rename") {
            continue;
        }
        // rename(from, to), or renameat(dirfd<dir>, from, dirfd<dir>, to).
        let (from, to) = match paths.len() {
            2 => (&paths[0], &paths[1]),
            4 => (&paths[1], &paths[3]),
            _ => continue,
        };
        let dir = std::path::Path::new(to)
            .parent()
            .unwrap()
            .display()
            .to_string();
        if from.contains(".darkroom-tmp-") {
            // An output: its temp file synced before the rename, its folder after.
            let synced = calls[..i]
                .iter()
                .rposition(|c| is_sync(c) && c.1.first() == Some(from));
            assert!(synced.is_some(), "{to}: renamed without an fsync of {from}");
            let dir_synced = position(&|c| is_sync(c) && c.1.first() == Some(&dir), i + 1);
            assert!(
                dir_synced.is_some(),
                "{to}: its folder never synced after the rename"
            );
            last_dir_sync.insert(to.clone(), dir_synced.unwrap());
            checked += 1;
        }
    }
    // Each original moved only after every output of its job was durable.
    for (original, outputs) in [
        (
            "/inbox/set/photo.jpg",
            vec![
                "/processed/set/images/0001.png",
                "/processed/set/images/0001.txt",
                "/processed/set/images/0001.json",
            ],
        ),
        (
            "/inbox/photos/coffee.png",
            vec![
                "/processed/photos/images/coffee.png",
                "/metadata/photos/coffee.json",
            ],
        ),
    ] {
        let moved = position(
            &|c| is_rename(c) && c.1.iter().any(|p| p.ends_with(original)),
            0,
        )
        .unwrap_or_else(|| panic!("{original} never moved"));
        for output in outputs {
            let (_, synced) = last_dir_sync
                .iter()
                .find(|(to, _)| to.ends_with(output))
                .unwrap_or_else(|| panic!("{output} not written through a temp file"));
            assert!(
                *synced < moved,
                "{original} moved before {output} was durable"
            );
        }
    }
    assert!(checked >= 8, "only {checked} atomic writes seen");
}

#[test]
fn an_unreadable_input_and_a_read_only_output_folder_are_retried_until_fixed() {
    use std::os::unix::fs::PermissionsExt;
    let mut tree = Tree::new(&config_text("max_attempts = 40", ""));
    // SAFETY: a plain system call without arguments.
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        // Permissions do not bind root: the daemon runs as nobody, owning its tree.
        let status = std::process::Command::new("chown")
            .args(["-R", "65534:65534"])
            .arg(tree.dir.path())
            .status()
            .unwrap();
        assert!(status.success());
        std::fs::set_permissions(tree.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        tree.start_wrapped(
            &[
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
            ],
            &[],
        );
    } else {
        tree.start();
    }
    let set_mode = |path: &std::path::Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    // chmod 000 on an input: logged, retried with backoff, the file kept; processed once it
    // is readable again.
    let staging = tree.path("staging");
    std::fs::create_dir_all(&staging).unwrap();
    let locked = staging.join("locked.png");
    std::fs::copy(testdata("photo_coffee_600x400.png"), &locked).unwrap();
    set_mode(&locked, 0o000);
    std::fs::rename(&locked, tree.inbox().join("locked.png")).unwrap();
    let locked = tree.inbox().join("locked.png");
    tree.wait_for("two failed reads", || {
        tree.log().matches("Permission denied").count() >= 2
    });
    assert!(tree.log().contains("it will be retried"));
    assert!(locked.is_file() && proxies(&tree).is_empty());
    set_mode(&locked, 0o644);
    tree.wait_for("the proxy", || {
        proxies(&tree).iter().any(|n| n.starts_with("locked_dr"))
    });

    // A read-only output folder: the same, and no stray temp file.
    let out = tree.exchange_out();
    set_mode(&out, 0o555);
    let before = tree.log().matches("Permission denied").count();
    tree.drop_file("photo_coffee_600x400.png", "second.png");
    tree.wait_for("two failed writes", || {
        tree.log().matches("Permission denied").count() >= before + 2
    });
    assert!(
        tree.inbox().join("second.png").is_file(),
        "the source is kept"
    );
    assert!(!proxies(&tree).iter().any(|n| n.starts_with("second_dr")));
    set_mode(&out, 0o755);
    tree.wait_for("the second proxy", || {
        proxies(&tree).iter().any(|n| n.starts_with("second_dr"))
    });
    assert!(temp_files(&tree.path("var")).is_empty());
    // The proxy is on disk just before the journal's record of it.
    tree.wait_for("both splits recorded", || split_jobs(&tree) >= 2);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(split_jobs(&tree), 2, "one job each, not one per retry");
    // SAFETY: kill(2) takes plain integers; the pid is a child this test started.
    unsafe { libc::kill(tree.daemon_pid(), libc::SIGTERM) };
    assert_eq!(tree.wait_exit().code(), Some(0));
}

#[test]
fn nested_folders_made_at_once_have_every_file_processed() {
    let mut tree = Tree::new(&config_text("", ""));
    tree.start();
    // mkdir -p a/b/c and files written into c straight away: the watch on c is added only
    // after its files may already be there.
    let deep = tree.inbox().join("a/b/c");
    std::fs::create_dir_all(&deep).unwrap();
    let bytes = std::fs::read(testdata("tiny_17x9.png")).unwrap();
    for i in 0..20u8 {
        let mut variant = common::load(&testdata("tiny_17x9.png")).image.to_rgb8();
        variant.put_pixel(0, 0, image::Rgb([i, 0, 0]));
        variant.save(deep.join(format!("n{i:02}.png"))).unwrap();
    }
    std::fs::write(tree.inbox().join("a/top.png"), &bytes).unwrap();
    tree.wait_for("21 proxies", || proxies(&tree).len() == 21);
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(split_jobs(&tree), 21, "each file once");
    tree.signal(libc::SIGTERM);
    assert_eq!(tree.wait_exit().code(), Some(0));
}

#[test]
fn subfolders_emptied_by_filing_are_removed_but_never_the_inbox_or_a_folder_still_in_use() {
    let mut tree = Tree::new(&config_text("", ""));
    tree.start();
    let inbox = tree.inbox();
    std::fs::create_dir_all(inbox.join("shoot/day1")).unwrap();
    std::fs::create_dir_all(inbox.join("keep")).unwrap();
    std::fs::copy(
        testdata("broken_text_named.jpg"),
        inbox.join("shoot/day1/bad.jpg"),
    )
    .unwrap();
    std::fs::copy(
        testdata("broken_text_named.jpg"),
        inbox.join("keep/bad.jpg"),
    )
    .unwrap();
    // An upload still in progress (a temp name, never taken) keeps its folder in use.
    std::fs::write(inbox.join("keep/upload.jpg.part"), b"half a photo").unwrap();
    let failed = tree.path("var/failed/photos");
    tree.wait_for("both bad files set aside", || files_in(&failed).len() == 4);
    tree.wait_for("the emptied folders removed", || {
        !inbox.join("shoot").exists()
    });
    assert!(inbox.is_dir(), "the inbox itself stays");
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        inbox.join("keep/upload.jpg.part").is_file(),
        "a folder with a file left in it stays"
    );
    // The watcher's own note about the removed folders' watches stays out of the log.
    let log = tree.log();
    assert!(log.contains("removed an emptied subfolder"), "{log}");
    assert!(
        !log.contains("Os {") && !log.contains("watch descriptor"),
        "{log}"
    );
}

#[test]
fn a_pixel_bomb_is_quarantined_before_allocation_and_the_daemon_stays_small_and_alive() {
    let mut tree = Tree::new(&config_text("", ""));
    tree.start();
    tree.drop_file("bomb_png_100000x100000.png", "bomb.png");
    let sidecar = tree.path("var/failed/photos/bomb.png.error.json");
    tree.wait_for("the bomb set aside", || sidecar.is_file());
    let text = std::fs::read_to_string(&sidecar).unwrap();
    assert!(
        text.contains("100000x100000") && text.contains("refused before decoding"),
        "{text}"
    );
    let peak = tree.peak_rss_mib();
    assert!(peak < 100.0, "peak RSS {peak:.0} MiB for a 30 GB header");
    tree.drop_file("photo_coffee_600x400.png", "after.png");
    tree.wait_for("the next file", || {
        proxies(&tree).iter().any(|n| n.starts_with("after_dr"))
    });
    tree.signal(libc::SIGTERM);
    assert_eq!(tree.wait_exit().code(), Some(0));
}

#[test]
fn sighup_with_a_good_config_while_jobs_run_loses_no_job() {
    let mut tree = Tree::new(&config_text("workers = 1", ""));
    tree.start();
    let inbox = tree.inbox();
    // Enough queued work that the reload lands while jobs still wait, however fast the
    // machine: the check below proves it.
    let queued = 120;
    let coffee = common::load(&testdata("photo_coffee_600x400.png"))
        .image
        .to_rgb8();
    for i in 0..queued {
        let mut variant = coffee.clone();
        variant.put_pixel(0, 0, image::Rgb([(i % 256) as u8, (i / 256) as u8, 0]));
        variant.save(inbox.join(format!("q{i:03}.png"))).unwrap();
    }
    tree.wait_for("the first proxy", || !proxies(&tree).is_empty());
    let good = format!(
        "{}\n[[rule]]\nname = \"art\"\nrecipe = \"split-to-proxy\"\nsize = \"25%\"\n",
        config_text("workers = 1", "")
    );
    std::fs::write(&tree.config, good).unwrap();
    tree.signal(libc::SIGHUP);
    tree.wait_for("the reload", || {
        tree.log().contains("configuration reloaded")
    });
    assert!(
        proxies(&tree).len() < queued,
        "the reload came after the work: the test tests nothing"
    );
    std::fs::copy(
        testdata("tiny_17x9.png"),
        tree.path("var/inbox/art/new.png"),
    )
    .unwrap();
    tree.wait_for("every queued job and the new rule's", || {
        proxies(&tree).len() == queued && !files_in(&tree.path("var/exchange/out/art")).is_empty()
    });
    tree.wait_for("every split recorded", || split_jobs(&tree) > queued);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(split_jobs(&tree), queued + 1);
    tree.signal(libc::SIGTERM);
    assert_eq!(tree.wait_exit().code(), Some(0));
}

#[test]
fn a_misbehaving_model_tool_never_touches_the_original() {
    let mut tree = Tree::new(&config_text("", ""));
    tree.start();
    let original = tree.drop_file("photo_coffee_600x400.png", "coffee.png");
    let original_bytes = std::fs::read(&original).unwrap();
    let proxy = tree.wait_for_file(&tree.exchange_out(), |n| n.starts_with("coffee_dr"));
    let proxy_name = proxy.file_name().unwrap().to_string_lossy().into_owned();
    let exchange_in = tree.exchange_in();
    // A wrong-size return and a corrupt one, named after the proxy.
    image::RgbImage::new(100, 100)
        .save(exchange_in.join(format!("small_{proxy_name}")))
        .unwrap();
    let good = std::fs::read(&proxy).unwrap();
    std::fs::write(
        exchange_in.join(format!("cut_{proxy_name}")),
        &good[..good.len() / 2],
    )
    .unwrap();
    let failed = tree.path("var/failed/photos");
    tree.wait_for("both bad returns set aside", || {
        files_in(&failed)
            .iter()
            .filter(|p| p.to_string_lossy().ends_with(".error.json"))
            .count()
            == 2
    });
    let reasons: Vec<String> = files_in(&failed)
        .iter()
        .filter(|p| p.to_string_lossy().ends_with(".error.json"))
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    assert!(reasons.iter().any(|r| r.contains("100x100")), "{reasons:?}");
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("truncated") || r.contains("corrupt")),
        "{reasons:?}"
    );
    assert_eq!(
        std::fs::read(&original).unwrap(),
        original_bytes,
        "the original is untouched"
    );
    assert!(files_in(&tree.path("var/processed/photos/images")).is_empty());
    // Two good returns of the same proxy: merged twice, as variations.
    common::daemon::write_graded_proxy(&proxy, &exchange_in, &proxy_name, 10, true);
    common::daemon::write_graded_proxy(
        &proxy,
        &exchange_in,
        &format!("second_{proxy_name}"),
        30,
        true,
    );
    let images = tree.path("var/processed/photos/images");
    tree.wait_for("two merged variations", || files_in(&images).len() == 2);
    let names: Vec<String> = files_in(&images)
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    // (Variant numbers are given at pairing, so the two refused returns used 1 and 2.)
    assert!(
        names
            .iter()
            .all(|n| n.starts_with("coffee") && n.ends_with(".png")),
        "{names:?}"
    );
    let means: Vec<f64> = files_in(&images)
        .iter()
        .map(|p| common::daemon::mean_level(p))
        .collect();
    assert!(
        (means[0] - means[1]).abs() > 5.0,
        "the two variations differ: {means:?}"
    );
    tree.signal(libc::SIGTERM);
    assert_eq!(tree.wait_exit().code(), Some(0));
}

/// A valid 16384x16384 RGB PNG of black (805 MB decoded, about 800 KB on disk): decoding and
/// resampling it takes seconds, standing in for a decode that hangs.
fn write_huge_black_png(path: &std::path::Path) {
    let script = r#"
import sys, zlib, struct
side = 16384
def chunk(kind, data):
    return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data) & 0xffffffff)
co = zlib.compressobj(1)
row = b'\0' * (1 + side * 3)
idat = b''.join(co.compress(row) for _ in range(side)) + co.flush()
ihdr = struct.pack('>IIBBBBB', side, side, 8, 2, 0, 0, 0)
open(sys.argv[1], 'wb').write(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', ihdr) + chunk(b'IDAT', idat) + chunk(b'IEND', b''))
"#;
    let status = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn a_job_past_job_timeout_is_set_aside_its_late_output_dropped_and_a_fresh_worker_goes_on() {
    let mut tree = Tree::new(&config_text("workers = 1\njob_timeout = \"300ms\"", ""));
    tree.start();
    let staging = tree.path("staging");
    std::fs::create_dir_all(&staging).unwrap();
    write_huge_black_png(&staging.join("slow.png"));
    std::fs::rename(staging.join("slow.png"), tree.inbox().join("slow.png")).unwrap();
    let sidecar = tree.path("var/failed/photos/slow.png.error.json");
    tree.wait_for("the slow job set aside", || sidecar.is_file());
    let text = std::fs::read_to_string(&sidecar).unwrap();
    assert!(
        text.contains("ran longer than job_timeout (0.3s)"),
        "{text}"
    );
    assert!(
        tree.log().contains("a fresh worker takes its place"),
        "{}",
        tree.log()
    );
    tree.wait_for("the late job to come back", || {
        tree.log().contains("its result is dropped")
    });
    // The daemon goes on. The next file (a tiny one) is dropped once the late job is back,
    // so that no busy core can push it past the 300 ms as well.
    tree.drop_file("tiny_17x9.png", "next.png");
    tree.wait_for("the next file's proxy", || {
        proxies(&tree).iter().any(|n| n.starts_with("next_dr"))
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !proxies(&tree).iter().any(|n| n.starts_with("slow_dr")),
        "the late job's proxy was published: {:?}",
        proxies(&tree)
    );
    assert!(temp_files(&tree.path("var")).is_empty());
    tree.signal(libc::SIGTERM);
    assert_eq!(tree.wait_exit().code(), Some(0));
}
