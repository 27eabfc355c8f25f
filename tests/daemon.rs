//! End-to-end tests of `darkroom serve`: the real daemon as a subprocess on a temp tree, real
//! corpus images, real inotify, real signals and a real NOTIFY_SOCKET.

mod common;

use common::daemon::{config_text, files_in, mean_level, write_graded_proxy, Tree};
use common::{load, testdata};
use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

fn names(dir: &std::path::Path) -> Vec<String> {
    files_in(dir)
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect()
}

fn metadata_json(tree: &Tree, stem: &str) -> serde_json::Value {
    let path = tree.path(&format!("var/metadata/photos/{stem}.json"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// Writes `bytes` into `dir` as `name` through a hidden temp file, as a careful tool does.
fn write_via_rename(dir: &std::path::Path, name: &str, bytes: &[u8]) {
    let temp = dir.join(format!(".{name}.writing"));
    std::fs::write(&temp, bytes).unwrap();
    std::fs::rename(&temp, dir.join(name)).unwrap();
}

#[test]
fn a_merge_takes_the_proxy_the_tool_was_given_and_rebuilds_it_exactly_when_the_tool_changed_it() {
    let mut tree = Tree::new(&config_text("", ""));
    tree.start();
    let images = tree.path("var/processed/photos/images");
    // The tool leaves its input alone and returns it unchanged: the merge's baseline is the
    // proxy file itself, and the output is the original, exactly.
    tree.drop_file("photo_bus_4032x3024_p3.jpg", "bus.jpg");
    let proxy = tree.wait_for_file(&tree.exchange_out(), |n| n.ends_with("_proxy.png"));
    let given = std::fs::read(&proxy).unwrap();
    write_via_rename(&tree.exchange_in(), "bus_dr000001_proxy.png", &given);
    tree.wait_for("bus.json", || {
        tree.path("var/metadata/photos/bus.json").is_file()
    });
    let meta = metadata_json(&tree, "bus");
    assert_eq!(meta["output"]["proxy_source"], "exchange_out", "{meta:#}");
    assert_eq!(meta["output"]["geometry_source"], "journal");
    assert!(meta["timings_seconds"]["decode_original"].as_f64().unwrap() > 0.0);
    let original = load(&testdata("photo_bus_4032x3024_p3.jpg"))
        .image
        .to_rgb8();
    assert!(
        load(&images.join("bus.png")).image.to_rgb8() == original,
        "an unchanged return merges into exactly the original"
    );

    // This tool writes its result over its input before returning it: the baseline is
    // rebuilt from the original as the split made it (a DCT-reduced decode), still exact.
    tree.drop_file("painting_peppercarrot_ep01_p03.jpg", "page.jpg");
    let proxy = tree.wait_for_file(&tree.exchange_out(), |n| n.starts_with("page_"));
    let given = std::fs::read(&proxy).unwrap();
    let name = proxy.file_name().unwrap().to_string_lossy().into_owned();
    write_graded_proxy(&proxy, &tree.exchange_out(), &name, 30, false);
    write_via_rename(&tree.exchange_in(), &name, &given);
    tree.wait_for("page.json", || {
        tree.path("var/metadata/photos/page.json").is_file()
    });
    let meta = metadata_json(&tree, "page");
    assert_eq!(meta["output"]["proxy_source"], "rebuilt", "{meta:#}");
    let original = load(&testdata("painting_peppercarrot_ep01_p03.jpg"))
        .image
        .to_rgb8();
    assert!(
        load(&images.join("page.png")).image.to_rgb8() == original,
        "the rebuilt proxy is the one the tool was given"
    );
    assert!(
        !tree.path("var/state/work").exists(),
        "a merge leaves no scratch files"
    );
}

#[test]
fn the_round_trip_pairs_returns_by_name_suffix_job_id_and_content() {
    let mut tree = Tree::new(&config_text("", ""));
    tree.start();
    let original_mean = mean_level(&testdata("photo_bus_4032x3024_p3.jpg"));
    tree.drop_file("photo_bus_4032x3024_p3.jpg", "bus.jpg");
    let proxy = tree.wait_for_file(&tree.exchange_out(), |n| n.ends_with("_proxy.png"));
    let proxy_name = proxy.file_name().unwrap().to_string_lossy().into_owned();
    assert_eq!(proxy_name, "bus_dr000001_proxy.png");
    assert_eq!(image::image_dimensions(&proxy).unwrap(), (512, 512));

    // The external tool writes four variations, one per pairing style.
    let styles = [
        ("bus_dr000001_proxy.png", "name", false),
        ("bus_dr000001_proxy_00001_.png", "name", true),
        ("upscaled-dr000001.png", "job-id", true),
        ("ComfyUI_00042_.png", "content", true),
    ];
    let images = tree.path("var/processed/photos/images");
    for (index, (name, method, via_rename)) in styles.iter().enumerate() {
        let lift = 10 * (index as u8 + 1);
        write_graded_proxy(&proxy, &tree.exchange_in(), name, lift, *via_rename);
        let output_stem = if index == 0 {
            "bus".to_string()
        } else {
            format!("bus_v{}", index + 1)
        };
        let output = images.join(format!("{output_stem}.png"));
        tree.wait_for(&format!("{output_stem}.png"), || output.is_file());
        tree.wait_for("its metadata", || {
            tree.path(&format!("var/metadata/photos/{output_stem}.json"))
                .is_file()
        });

        let merged = load(&output);
        assert_eq!(
            (merged.image.width(), merged.image.height()),
            (4032, 3024),
            "the merge is at full resolution"
        );
        assert!(
            merged.icc_profile.is_some(),
            "the Display P3 profile is kept"
        );
        let shift = mean_level(&output) - original_mean;
        assert!(
            (f64::from(lift) * 0.75..=f64::from(lift) + 1.5).contains(&shift),
            "{name}: a +{lift} grade of the proxy should lift the full-res mean by about as much, got {shift:.2}"
        );
        let meta = metadata_json(&tree, &output_stem);
        assert_eq!(meta["return"]["pairing"], *method, "{name}");
        assert_eq!(meta["return"]["variant"], index as u64 + 1);
        assert_eq!(meta["recipe"], "split-to-proxy");
        assert_eq!(
            meta["output"]["merge_method"], "guided",
            "the default merge"
        );
        assert_eq!(meta["proxy"]["geometry"]["scaled_height"], 384);
        assert_eq!(
            meta["source"]["sha256"],
            darkroom::io::hash::sha256_hex(
                &std::fs::read(testdata("photo_bus_4032x3024_p3.jpg")).unwrap()
            )
        );
    }
    // The original moved only after its first output, the returns are filed, nothing is left.
    // Returns are filed after the merged output is durable: wait for the fourth merge's record.
    tree.wait_for("four merges recorded", || {
        tree.processing_log()
            .iter()
            .filter(|t| t["kind"] == "merge" && t["to"] == "done")
            .count()
            == 4
    });
    assert_eq!(
        names(&tree.path("var/processed/photos/originals")),
        ["bus.jpg"]
    );
    assert_eq!(names(&tree.inbox()), Vec::<String>::new());
    assert_eq!(names(&tree.exchange_in()), Vec::<String>::new());
    assert_eq!(names(&tree.path("var/processed/photos/returns")).len(), 4);
    assert_eq!(
        names(&images),
        ["bus.png", "bus_v2.png", "bus_v3.png", "bus_v4.png"]
    );
    let log = tree.log();
    assert_eq!(
        log.matches("merged into the full-resolution original")
            .count(),
        4
    );
    assert!(log.contains("pairing=\"content\""), "{log}");
    let transitions = tree.processing_log();
    assert_eq!(
        transitions
            .iter()
            .filter(|t| t["kind"] == "merge" && t["to"] == "done")
            .count(),
        4
    );
    assert!(
        tree.status().contains("returns  : done 4"),
        "{}",
        tree.status()
    );
}

#[test]
fn a_slow_writer_is_claimed_once_after_it_finishes() {
    let mut tree = Tree::new(&config_text("", ""));
    tree.start();
    let bytes = std::fs::read(testdata("photo_coffee_600x400.png")).unwrap();
    let target = tree.inbox().join("coffee.png");
    let mut file = std::fs::File::create(&target).unwrap();
    // Eight pieces over about 3.5 s, with one pause longer than the stability window: only
    // the open write handle tells the daemon the file is not finished.
    for (i, piece) in bytes.chunks(bytes.len() / 8 + 1).enumerate() {
        file.write_all(piece).unwrap();
        file.flush().unwrap();
        std::thread::sleep(Duration::from_millis(if i == 3 { 1500 } else { 250 }));
        assert!(
            files_in(&tree.exchange_out()).is_empty(),
            "a proxy appeared while the file was still being written"
        );
    }
    drop(file);
    let proxy = tree.wait_for_file(&tree.exchange_out(), |n| n.ends_with("_proxy.png"));
    assert_eq!(image::image_dimensions(&proxy).unwrap(), (512, 512));
    std::thread::sleep(Duration::from_secs(2));
    let claims = tree
        .processing_log()
        .iter()
        .filter(|t| t["to"] == "queued" && t["from"].is_null())
        .count();
    assert_eq!(claims, 1, "claimed once: {:?}", tree.processing_log());
    assert!(files_in(&tree.path("var/failed/photos")).is_empty());
}

#[test]
fn files_present_before_start_and_moved_in_from_outside_are_both_taken() {
    let mut tree = Tree::new(&config_text("", ""));
    std::fs::create_dir_all(tree.inbox()).unwrap();
    tree.drop_file("photo_coffee_600x400.png", "before.png");
    tree.start();
    let outside = tree.path("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::copy(testdata("gray_camera_512.png"), outside.join("moved.png")).unwrap();
    std::fs::rename(outside.join("moved.png"), tree.inbox().join("moved.png")).unwrap();
    // A subfolder created after start, with a file already inside when it is moved in.
    let folder = tree.path("outside/shoot");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::copy(testdata("tiny_17x9.png"), folder.join("tiny.png")).unwrap();
    std::fs::rename(&folder, tree.inbox().join("shoot")).unwrap();
    // Temp names are never taken.
    std::fs::copy(
        testdata("tiny_17x9.png"),
        tree.inbox().join("partial.png.part"),
    )
    .unwrap();
    tree.wait_for("three proxies", || {
        files_in(&tree.exchange_out()).len() == 3
    });
    let mut proxies = names(&tree.exchange_out());
    proxies.sort();
    assert!(
        proxies.iter().any(|n| n.starts_with("before_dr")),
        "{proxies:?}"
    );
    assert!(
        proxies.iter().any(|n| n.starts_with("moved_dr")),
        "{proxies:?}"
    );
    assert!(
        proxies.iter().any(|n| n.starts_with("tiny_dr")),
        "{proxies:?}"
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        files_in(&tree.exchange_out()).len(),
        3,
        "the .part file was ignored"
    );
}

#[test]
fn a_corrupt_file_is_quarantined_and_the_next_good_file_still_completes() {
    let mut tree = Tree::new(&config_text("", ""));
    tree.start();
    tree.drop_file("broken_truncated.png", "broken.png");
    tree.drop_file("broken_text_named.jpg", "text.jpg");
    tree.drop_file("photo_coffee_600x400.png", "coffee.png");
    let failed = tree.path("var/failed/photos");
    tree.wait_for("two quarantined files", || files_in(&failed).len() == 4);
    for name in ["broken.png", "text.jpg"] {
        let sidecar: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(failed.join(format!("{name}.error.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(sidecar["kind"], "permanent");
        assert!(
            sidecar["reason"].as_str().unwrap().contains(name),
            "{sidecar}"
        );
        assert_eq!(
            std::fs::read(failed.join(name)).unwrap(),
            std::fs::read(testdata(if name == "text.jpg" {
                "broken_text_named.jpg"
            } else {
                "broken_truncated.png"
            }))
            .unwrap(),
            "the bad file is moved aside unchanged"
        );
    }
    let proxy = tree.wait_for_file(&tree.exchange_out(), |n| n.starts_with("coffee_dr"));
    assert_eq!(image::image_dimensions(&proxy).unwrap(), (512, 512));
    // The journal records a failure after the file is moved aside, so the status may lag the
    // folder by a moment.
    tree.wait_for("both failures in the status", || {
        tree.status().contains("recent failures: 2")
    });
    assert!(tree.log().contains("moved aside with an error sidecar"));
}

/// Drops the 12-MP photo as `bus.jpg`, writes its graded proxy back as `return_name`, and
/// waits until the daemon has started merging it.
fn start_a_bus_merge(tree: &mut Tree, return_name: &str) {
    tree.start();
    tree.drop_file("photo_bus_4032x3024_p3.jpg", "bus.jpg");
    let proxy = tree.wait_for_file(&tree.exchange_out(), |n| n.ends_with("_proxy.png"));
    write_graded_proxy(&proxy, &tree.exchange_in(), return_name, 20, true);
    tree.wait_for("the merge to start", || {
        tree.processing_log().iter().any(|t| t["to"] == "merging")
    });
}

#[test]
fn a_rule_with_the_additive_merge_lifts_the_original_by_the_proxy_grade() {
    let mut tree = Tree::new(&config_text("", "merge_method = \"additive\""));
    tree.start();
    let original_mean = mean_level(&testdata("photo_coffee_600x400.png"));
    tree.drop_file("photo_coffee_600x400.png", "coffee.png");
    let proxy = tree.wait_for_file(&tree.exchange_out(), |n| n.ends_with("_proxy.png"));
    write_graded_proxy(
        &proxy,
        &tree.exchange_in(),
        "coffee_processed.png",
        15,
        true,
    );
    let output = tree.path("var/processed/photos/images/coffee.png");
    tree.wait_for("coffee.png", || output.is_file());
    tree.wait_for("its metadata", || {
        tree.path("var/metadata/photos/coffee.json").is_file()
    });
    let shift = mean_level(&output) - original_mean;
    assert!(
        (11.0..=16.5).contains(&shift),
        "a +15 grade moved the mean by {shift:.2}"
    );
    assert_eq!(
        metadata_json(&tree, "coffee")["output"]["merge_method"],
        "additive"
    );
}

#[test]
fn kill_9_during_a_merge_then_restart_gives_exactly_one_output() {
    for delay_ms in [0u64, 300] {
        let mut tree = Tree::new(&config_text("", ""));
        start_a_bus_merge(&mut tree, "bus_dr000001_proxy_out.png");
        std::thread::sleep(Duration::from_millis(delay_ms));
        tree.kill_hard();
        tree.start();
        let images = tree.path("var/processed/photos/images");
        tree.wait_for("the merge to finish after restart", || {
            tree.processing_log()
                .iter()
                .any(|t| t["kind"] == "merge" && t["to"] == "done")
        });
        assert_eq!(names(&images), ["bus.png"], "delay {delay_ms} ms");
        for dir in [
            "var/processed/photos/images",
            "var/metadata/photos",
            "var/exchange/out/photos",
        ] {
            let leftovers: Vec<String> = std::fs::read_dir(tree.path(dir))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(".darkroom-tmp"))
                .collect();
            assert!(
                leftovers.is_empty(),
                "temp files left in {dir}: {leftovers:?}"
            );
        }
        assert_eq!(
            names(&tree.path("var/processed/photos/originals")),
            ["bus.jpg"]
        );
        assert_eq!(names(&tree.path("var/processed/photos/returns")).len(), 1);
        assert!(names(&tree.inbox()).is_empty() && names(&tree.exchange_in()).is_empty());
        assert!(
            names(&tree.path("var/metadata/photos")) == ["bus.json"],
            "{:?}",
            names(&tree.path("var/metadata/photos"))
        );
        let merged = load(&images.join("bus.png"));
        assert_eq!((merged.image.width(), merged.image.height()), (4032, 3024));
        let status = tree.status();
        assert!(status.contains("returns  : done 1"), "{status}");
        assert!(status.contains("originals: done 1"), "{status}");
    }
}

#[test]
fn sigterm_lets_a_running_merge_finish_and_exits_zero() {
    let mut tree = Tree::new(&config_text("", ""));
    start_a_bus_merge(&mut tree, "bus_dr000001_proxy.png");
    tree.signal(libc::SIGTERM);
    let status = tree.wait_exit();
    assert_eq!(status.code(), Some(0), "{}", tree.log());
    assert!(tree.path("var/processed/photos/images/bus.png").is_file());
    assert!(tree.log().contains("darkroom stopped"));
    // Intake is closed: a file dropped now waits for the next start.
    assert!(tree.status().contains("returns  : done 1"));
}

fn receive_all(socket: &UnixDatagram, until: impl Fn(&[String]) -> bool) -> Vec<String> {
    let mut messages = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut buffer = [0u8; 4096];
    while !until(&messages) {
        assert!(
            Instant::now() < deadline,
            "notify messages so far: {messages:?}"
        );
        if let Ok(n) = socket.recv(&mut buffer) {
            messages.push(String::from_utf8_lossy(&buffer[..n]).into_owned());
        }
    }
    messages
}

#[test]
fn systemd_notify_ready_watchdog_status_reload_and_stopping() {
    let mut tree = Tree::new(&config_text("", ""));
    let socket_path = tree.path("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    tree.start_with_env(&[
        ("NOTIFY_SOCKET", socket_path.to_str().unwrap()),
        ("WATCHDOG_USEC", "600000"),
    ]);
    let messages = receive_all(&socket, |m| {
        m.iter().any(|s| s.contains("READY=1"))
            && m.iter().filter(|s| s.contains("WATCHDOG=1")).count() >= 2
    });
    assert!(
        messages.iter().any(|s| s.starts_with("STATUS=")),
        "{messages:?}"
    );
    let ready_at = messages.iter().position(|s| s.contains("READY=1")).unwrap();
    assert!(messages[..ready_at].iter().all(|s| !s.contains("WATCHDOG")));

    // A good reload: RELOADING=1 with MONOTONIC_USEC, then READY=1.
    tree.signal(libc::SIGHUP);
    let messages = receive_all(&socket, |m| m.iter().any(|s| s.contains("READY=1")));
    let reloading = messages
        .iter()
        .find(|s| s.contains("RELOADING=1"))
        .unwrap_or_else(|| panic!("{messages:?}"));
    let usec: u64 = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .expect("MONOTONIC_USEC")
        .parse()
        .unwrap();
    assert!(usec > 0);

    // A job shows in STATUS.
    tree.drop_file("photo_coffee_600x400.png", "coffee.png");
    receive_all(&socket, |m| {
        m.iter()
            .any(|s| s.contains("STATUS=") && s.contains("1 awaiting return"))
    });

    tree.signal(libc::SIGTERM);
    receive_all(&socket, |m| m.iter().any(|s| s.contains("STOPPING=1")));
    assert_eq!(tree.wait_exit().code(), Some(0));
}

#[test]
fn the_watchdog_keeps_being_pinged_while_large_files_are_hashed() {
    let mut tree = Tree::new(&config_text("", ""));
    let socket_path = tree.path("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    tree.start_with_env(&[
        ("NOTIFY_SOCKET", socket_path.to_str().unwrap()),
        ("WATCHDOG_USEC", "2000000"),
    ]);
    receive_all(&socket, |m| m.iter().any(|s| s.contains("READY=1")));
    // Five 500 MB files, made beside the inbox and moved in at once.
    let staging = tree.path("staging");
    std::fs::create_dir_all(&staging).unwrap();
    let mut block = vec![0u8; 1 << 20];
    for i in 0..5u8 {
        let mut file = std::fs::File::create(staging.join(format!("big{i}.png"))).unwrap();
        for (n, b) in block.iter_mut().enumerate() {
            *b = (n as u8).wrapping_mul(31).wrapping_add(i);
        }
        for _ in 0..500 {
            file.write_all(&block).unwrap();
        }
    }
    let inbox = tree.inbox();
    for i in 0..5 {
        let name = format!("big{i}.png");
        std::fs::rename(staging.join(&name), inbox.join(&name)).unwrap();
    }
    let started = Instant::now();
    let mut pings = vec![started];
    let mut buffer = [0u8; 4096];
    let claimed = |log: &str| log.matches("claimed").count();
    while claimed(&tree.log()) < 5 || started.elapsed() < Duration::from_secs(3) {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{}",
            tree.log()
        );
        if let Ok(n) = socket.recv(&mut buffer) {
            if String::from_utf8_lossy(&buffer[..n]).contains("WATCHDOG=1") {
                pings.push(Instant::now());
            }
        }
    }
    let longest = pings
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    assert!(
        longest <= Duration::from_millis(1500),
        "the longest gap between watchdog pings was {longest:?} ({} pings)",
        pings.len()
    );
    let log = tree.log();
    for i in 0..5 {
        assert_eq!(
            log.lines()
                .filter(|l| l.contains("claimed") && l.contains(&format!("big{i}.png")))
                .count(),
            1,
            "{log}"
        );
    }
    tree.signal(libc::SIGTERM);
    assert_eq!(tree.wait_exit().code(), Some(0));
    // The 2.5 GB go with the tree's folder; removed now rather than at the end of the run.
    for dir in [tree.inbox(), tree.path("var/failed/photos")] {
        for file in files_in(&dir) {
            let _ = std::fs::remove_file(file);
        }
    }
}

#[test]
fn sighup_applies_a_good_config_and_rejects_a_bad_one() {
    let mut tree = Tree::new(&config_text("", ""));
    tree.start();
    // Bad: two problems. The daemon logs both and keeps the old config.
    std::fs::write(
        &tree.config,
        config_text("workers = 0", "delta_depth = 12\n"),
    )
    .unwrap();
    tree.signal(libc::SIGHUP);
    tree.wait_for("the rejection", || {
        tree.log().contains("still running the previous one")
    });
    let log = tree.log();
    assert!(
        log.contains("daemon.workers") && log.contains("delta_depth"),
        "{log}"
    );
    tree.drop_file("photo_coffee_600x400.png", "coffee.png");
    tree.wait_for_file(&tree.exchange_out(), |n| n.starts_with("coffee_dr"));

    // Good: a second rule appears and its inbox is watched at once.
    let good = format!(
        "{}\n[[rule]]\nname = \"art\"\nrecipe = \"split-to-proxy\"\nsize = \"25%\"\n",
        config_text("", "")
    );
    std::fs::write(&tree.config, good).unwrap();
    tree.signal(libc::SIGHUP);
    tree.wait_for("the reload", || {
        tree.log().contains("configuration reloaded")
    });
    let art_inbox = tree.path("var/inbox/art");
    std::fs::copy(
        testdata("painting_peppercarrot_ep01_p03.jpg"),
        art_inbox.join("page.jpg"),
    )
    .unwrap();
    let proxy = tree.wait_for_file(&tree.path("var/exchange/out/art"), |n| {
        n.starts_with("page_dr")
    });
    assert_eq!(
        image::image_dimensions(&proxy).unwrap(),
        (382, 540),
        "25% of 1530x2160, as split makes it"
    );
    tree.signal(libc::SIGTERM);
    assert_eq!(tree.wait_exit().code(), Some(0));
}

#[test]
fn an_ambiguous_content_match_is_held_and_never_guessed() {
    let mut tree = Tree::new(&config_text("", ""));
    tree.start();
    // The same picture twice: two pending proxies with the same content.
    tree.drop_file("photo_coffee_600x400.png", "a.png");
    tree.drop_file("photo_coffee_600x400.png", "b.png");
    tree.wait_for("two proxies", || files_in(&tree.exchange_out()).len() == 2);
    let proxy = &files_in(&tree.exchange_out())[0];
    write_graded_proxy(proxy, &tree.exchange_in(), "unrelated.png", 15, true);
    tree.wait_for("the return to be held", || tree.log().contains("held:"));
    let status = tree.status();
    assert!(status.contains("held returns: 1"), "{status}");
    assert!(status.contains("awaiting return: 2"), "{status}");
    std::thread::sleep(Duration::from_secs(1));
    assert!(files_in(&tree.path("var/processed/photos/images")).is_empty());
    assert!(
        tree.exchange_in().join("unrelated.png").is_file(),
        "held in place"
    );
    // The person renames it after its proxy, as the log says: it merges, and the held job
    // closes (withdrawn), in the status and across a restart.
    let stem = proxy.file_stem().unwrap().to_string_lossy().into_owned();
    std::fs::rename(
        tree.exchange_in().join("unrelated.png"),
        tree.exchange_in().join(format!("{stem}_00001_.png")),
    )
    .unwrap();
    let images = tree.path("var/processed/photos/images");
    tree.wait_for("the renamed return to merge", || {
        files_in(&images).len() == 1
    });
    tree.wait_for("the held job to close", || {
        tree.processing_log()
            .iter()
            .any(|t| t["from"] == "held" && t["to"] == "withdrawn")
    });
    let status = tree.status();
    assert!(
        !status.contains("held returns") && !status.contains("unrelated.png"),
        "{status}"
    );
    tree.signal(libc::SIGTERM);
    assert_eq!(tree.wait_exit().code(), Some(0));
    tree.start();
    let status = tree.status();
    assert!(!status.contains("held returns"), "{status}");
    assert!(status.contains("withdrawn 1"), "{status}");
}

#[test]
fn a_held_return_never_paired_is_set_aside_when_its_window_ends() {
    let mut tree = Tree::new(&config_text(
        "",
        "return_timeout = \"3s\"\nreturn_grace = \"1s\"\noriginals = \"keep\"",
    ));
    tree.start();
    tree.drop_file("photo_coffee_600x400.png", "a.png");
    tree.drop_file("photo_coffee_600x400.png", "b.png");
    tree.wait_for("two proxies", || files_in(&tree.exchange_out()).len() == 2);
    let proxy = &files_in(&tree.exchange_out())[0];
    write_graded_proxy(proxy, &tree.exchange_in(), "unrelated.png", 15, true);
    let sidecar = tree.path("var/failed/photos/unrelated.png.error.json");
    tree.wait_for("the held return to be set aside", || sidecar.is_file());
    let text = std::fs::read_to_string(&sidecar).unwrap();
    assert!(text.contains("without being paired"), "{text}");
    // The sidecar is written before the journal records the failure.
    tree.wait_for("the journal to say so", || {
        !tree.status().contains("held returns")
    });
}

#[test]
fn a_proxy_without_a_return_expires_and_its_original_is_set_aside() {
    let mut tree = Tree::new(&config_text(
        "",
        "return_timeout = \"1s\"\nreturn_grace = \"1s\"\n",
    ));
    tree.start();
    tree.drop_file("photo_coffee_600x400.png", "coffee.png");
    let proxy = tree.wait_for_file(&tree.exchange_out(), |n| n.starts_with("coffee_dr"));
    tree.wait_for("expiry", || {
        tree.log().contains("expired: no processed image")
    });
    let failed = tree.path("var/failed/photos");
    tree.wait_for("the window to close", || {
        failed.join("coffee.png.error.json").is_file()
    });
    assert!(
        !proxy.exists(),
        "the stale proxy is removed from exchange_out"
    );
    let sidecar = std::fs::read_to_string(failed.join("coffee.png.error.json")).unwrap();
    assert!(sidecar.contains("return_timeout"), "{sidecar}");
    // A return after the window is not paired with anything.
    let graded = write_graded_proxy(
        &failed.join("coffee.png"),
        &tree.path("tmp"),
        "late.png",
        5,
        false,
    );
    std::fs::rename(
        &graded,
        tree.exchange_in().join("coffee_dr000001_proxy.png"),
    )
    .unwrap();
    tree.wait_for("the late return to be set aside", || {
        failed
            .join("coffee_dr000001_proxy.png.error.json")
            .is_file()
    });
}

#[test]
fn a_transient_failure_is_retried_then_given_up_with_a_sidecar() {
    // An external delta upscaler that always fails: a transient error (the tool may be
    // fixed), so the merge is retried with backoff and then set aside as "gave-up".
    let mut tree = Tree::new(&config_text(
        "max_attempts = 2",
        "upscale_method = \"cmd(sh -c 'echo model server down >&2; exit 3' %i %o)\"\n",
    ));
    tree.start();
    tree.drop_file("photo_coffee_600x400.png", "coffee.png");
    let proxy = tree.wait_for_file(&tree.exchange_out(), |n| n.starts_with("coffee_dr"));
    write_graded_proxy(
        &proxy,
        &tree.exchange_in(),
        "coffee_dr000001_proxy.png",
        10,
        true,
    );
    let failed = tree.path("var/failed/photos");
    let sidecar_path = failed.join("coffee_dr000001_proxy.png.error.json");
    tree.wait_for("the return to be given up", || sidecar_path.is_file());
    let sidecar: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&sidecar_path).unwrap()).unwrap();
    assert_eq!(sidecar["kind"], "gave-up");
    assert_eq!(sidecar["attempts"], 2);
    assert!(
        sidecar["reason"]
            .as_str()
            .unwrap()
            .contains("model server down"),
        "{sidecar}"
    );
    assert!(tree.log().contains("it will be retried"));
    // The original is untouched and its proxy still awaits a good return.
    assert!(tree.inbox().join("coffee.png").is_file());
    assert!(
        tree.status().contains("awaiting return: 1"),
        "{}",
        tree.status()
    );
}

#[test]
fn check_config_reports_every_problem_and_accepts_the_shipped_example() {
    // The shipped config, named as a path, as `--config` (the way serve and status take it),
    // or not at all.
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for args in [
        &["check-config", "config/darkroom.toml"][..],
        &["check-config", "--config", "config/darkroom.toml"],
        &["check-config"],
    ] {
        let out = common::run_ok(repo, args);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("photos: split-to-proxy"),
            "{args:?}: {stdout}"
        );
    }
    let (code, stderr) = common::run_err(
        repo,
        &[
            "check-config",
            "config/darkroom.toml",
            "--config",
            "other.toml",
        ],
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("cannot be used with"), "{stderr}");

    let tree = Tree::new(
        "[daemon]\nworkers = 0\nbogus = 1\n\n[[rule]]\nname = \"photos\"\nrecipe = \"split-to-proxy\"\nsize = \"huge\"\nupscale_method = \"cmd(tool %i)\"\n",
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_darkroom"))
        .args(["check-config"])
        .arg(&tree.config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("4 problems"), "{stderr}");
    // Each problem at the line of its own key.
    for needle in [
        "line 3: daemon.bogus",
        "line 2: daemon.workers",
        "line 8: rule[0] 'photos'.size",
        "line 9: rule[0] 'photos'.upscale_method",
    ] {
        assert!(stderr.contains(needle), "missing {needle}:\n{stderr}");
    }

    // The shipped example with an unknown table, a value of the wrong type and a bad size:
    // all three in one run, none hiding another.
    let example = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/darkroom.toml"),
    )
    .unwrap();
    let broken = format!("no_such_table = 1\n{example}")
        .replacen("workers = 1 ", "workers = -3 ", 1)
        .replacen("size = \"1024x1024\" ", "size = \"banana\" ", 1);
    assert!(broken.contains("workers = -3") && broken.contains("\"banana\""));
    let config = tree.path("broken.toml");
    std::fs::write(&config, &broken).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_darkroom"))
        .args(["check-config"])
        .arg(&config)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line_of = |needle: &str| broken.lines().position(|l| l.contains(needle)).unwrap() + 1;
    for needle in [
        "line 1: no_such_table: unknown table".to_string(),
        format!(
            "line {}: daemon.workers: invalid value",
            line_of("workers = -3")
        ),
        format!(
            "line {}: rule[0] 'photos'.size: 'banana'",
            line_of("\"banana\"")
        ),
    ] {
        assert!(stderr.contains(&needle), "missing {needle}:\n{stderr}");
    }
    // serve refuses the same file with the same report and exit code.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_darkroom"))
        .args(["serve", "--config"])
        .arg(&tree.config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
}

/// `systemd-analyze security --offline` of a unit file: its exposure score and report.
fn unit_exposure(unit: &std::path::Path) -> (f64, String) {
    let out = std::process::Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--threshold=20"])
        .arg(unit)
        .output()
        .expect("systemd-analyze is needed (Debian package systemd; scripts/test installs it)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let score: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for darkroom.service:")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no score in:\n{text}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    (score, text)
}

#[test]
fn the_systemd_unit_scores_two_or_lower() {
    let unit = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/darkroom.service");
    let (score, text) = unit_exposure(&unit);
    assert!(score <= 2.0, "exposure {score}:\n{text}");
}

#[test]
fn the_gpu_drop_in_shows_only_the_nvidia_devices() {
    // systemd merges a drop-in into its unit; analysed offline, the merge is the unit with
    // the drop-in's [Service] lines appended.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let unit = std::fs::read_to_string(root.join("systemd/darkroom.service")).unwrap();
    let drop_in =
        std::fs::read_to_string(root.join("systemd/darkroom.service.d/gpu.conf")).unwrap();
    let service_lines: String = drop_in
        .lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with("[Service]"))
        .map(|l| format!("{l}\n"))
        .collect();
    let merged = unit.replace("\n[Install]", &format!("{service_lines}\n[Install]"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("darkroom.service");
    std::fs::write(&path, merged).unwrap();
    let (score, text) = unit_exposure(&path);
    assert!(score <= 2.5, "exposure {score}:\n{text}");
    assert!(text.contains("PrivateDevices="), "{text}");
    assert!(
        drop_in.contains("DevicePolicy=closed") && drop_in.contains("char-nvidia-uvm"),
        "the drop-in allows the NVIDIA devices by name and nothing else"
    );
    let (default_score, _) = unit_exposure(&root.join("systemd/darkroom.service"));
    assert!(default_score <= 2.0);
}

#[test]
fn the_systemd_unit_opens_internet_sockets_to_the_loopback_only() {
    // The HTTP listener and a model tool on the same box need the loopback; nothing else.
    let unit = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/darkroom.service");
    let (score, text) = unit_exposure(&unit);
    assert!(score <= 2.0, "exposure {score}:\n{text}");
    assert!(
        text.contains("Service may allocate Internet sockets"),
        "{text}"
    );
    assert!(
        text.contains("allow list with only localhost entries"),
        "{text}"
    );
}

fn upscale_config(runtime_line: &str) -> String {
    let models = common::shared_dir().join("models");
    format!(
        "{}\n[runtime]\n{runtime_line}\n\n[models.anime]\npath = \"{}\"\ntile = 16\ncontext = 32\ndomains = [\"anime\"]\n\n\
         [[rule]]\nname = \"art\"\nrecipe = \"upscale\"\ndomain = \"anime\"\nsharpen = \"0.5\"\ndenoise_model = \"anime\"\n",
        config_text("max_attempts = 2", ""),
        models.join("realesr-animevideov3-x4.onnx").display()
    )
}

#[test]
fn a_file_dropped_into_an_upscale_rule_comes_out_upscaled_with_its_sidecar() {
    let mut tree = Tree::new(&upscale_config(""));
    tree.start();
    let inbox = tree.path("var/inbox/art");
    std::fs::copy(testdata("tiny_17x9.png"), inbox.join("tiny.png")).unwrap();
    let sprite = load(&testdata("anime_eileen_320x720_rgba.png"))
        .image
        .crop_imm(60, 0, 40, 48);
    sprite.save(tree.path("sprite.png")).unwrap();
    std::fs::rename(tree.path("sprite.png"), inbox.join("sprite.png")).unwrap();

    let images = tree.path("var/processed/art/images");
    tree.wait_for("two upscaled images", || files_in(&images).len() == 2);
    let tiny = load(&images.join("tiny_x4_anime.png"));
    assert_eq!((tiny.image.width(), tiny.image.height()), (68, 36));
    assert_eq!(
        tiny.icc_profile,
        load(&testdata("tiny_17x9.png")).icc_profile
    );
    let sprite_out = load(&images.join("sprite_x4_anime.png"));
    assert_eq!(
        (sprite_out.image.width(), sprite_out.image.height()),
        (160, 192)
    );
    assert!(sprite_out.image.color().has_alpha());

    tree.wait_for("the metadata", || {
        tree.path("var/metadata/art/tiny_x4_anime.json").is_file()
    });
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(tree.path("var/metadata/art/tiny_x4_anime.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(meta["recipe"], "upscale");
    assert_eq!(meta["model"]["scale"], 4);
    assert_eq!(meta["model"]["provider"], "CPU");
    assert_eq!(
        meta["model"]["sha256"], "1e41aaf3b5ccf8f26cac30af991ee2f20ac6c895ef136613c14bf11cb931606f",
        "the sha256 MODELS.md gives"
    );
    assert_eq!(meta["tiling"]["context"], 32);
    assert_eq!(meta["tiling"]["tiles"], 2, "17x9 in 16-px tiles");
    assert_eq!(meta["tiling"]["sharpen"]["amount"], 0.5);
    assert_eq!(meta["corrections"]["denoise_model"], "anime");
    // Originals are filed after their outputs are durable.
    let originals = tree.path("var/processed/art/originals");
    tree.wait_for("both originals filed", || names(&originals).len() == 2);
    assert_eq!(names(&originals), ["sprite.png", "tiny.png"]);
    assert!(tree.log().contains("model loaded"));
    assert_eq!(
        tree.log().matches("model loaded").count(),
        1,
        "the session is reused"
    );
}

#[test]
fn enhance_rules_keep_the_size_and_run_the_model_on_the_full_image_or_on_a_proxy() {
    let model = common::shared_dir().join("models/waifu2x-upconv7-photo-x2.onnx");
    let config = format!(
        "{}\n[models.photo]\npath = \"{}\"\ntile = 128\ndomains = [\"photo\"]\n\n\
         [[rule]]\nname = \"full\"\nrecipe = \"enhance\"\nmodel = \"photo\"\n\n\
         [[rule]]\nname = \"viaproxy\"\nrecipe = \"enhance\"\ndomain = \"photo\"\nvia = \"proxy\"\nsize = \"50%\"\n",
        config_text("", ""),
        model.display()
    );
    let mut tree = Tree::new(&config);
    tree.start();
    let original = load(&testdata("photo_coffee_600x400.png")).image;
    for rule in ["full", "viaproxy"] {
        std::fs::copy(
            testdata("photo_coffee_600x400.png"),
            tree.path(&format!("var/inbox/{rule}")).join("coffee.png"),
        )
        .unwrap();
    }
    for (rule, via) in [("full", "full"), ("viaproxy", "proxy")] {
        let output = tree.path(&format!(
            "var/processed/{rule}/images/coffee_enhanced_photo.png"
        ));
        let metadata = tree.path(&format!("var/metadata/{rule}/coffee_enhanced_photo.json"));
        tree.wait_for(&format!("the {rule} output"), || metadata.is_file());
        let enhanced = load(&output).image;
        assert_eq!((enhanced.width(), enhanced.height()), (600, 400), "{rule}");
        let p = common::psnr(&enhanced, &original);
        assert!(
            (30.0..60.0).contains(&p),
            "{rule}: the model should change the image a little, PSNR {p:.2} dB"
        );
        let meta: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&metadata).unwrap()).unwrap();
        assert_eq!(meta["recipe"], "enhance");
        assert_eq!(meta["enhance"]["via"], via);
        assert_eq!(meta["model"]["scale"], 2);
        if via == "proxy" {
            assert_eq!(meta["enhance"]["merge_method"], "guided");
            assert_eq!(meta["enhance"]["size"], "50%x50%");
        }
    }
    // Logged as what they are, and without Rust's debug formatting.
    let log = tree.log();
    assert!(
        log.contains("enhanced") && !log.contains("upscaled"),
        "{log}"
    );
    assert!(!log.contains("Some(") && !log.contains("None"), "{log}");
}

#[test]
fn a_missing_runtime_fails_model_jobs_clearly_and_other_rules_keep_working() {
    let mut tree = Tree::new(&upscale_config(
        "onnxruntime = \"/nonexistent/libonnxruntime.so.1.31.1\"",
    ));
    tree.start();
    std::fs::copy(
        testdata("tiny_17x9.png"),
        tree.path("var/inbox/art").join("tiny.png"),
    )
    .unwrap();
    tree.drop_file("photo_coffee_600x400.png", "coffee.png");
    let sidecar = tree.path("var/failed/art/tiny.png.error.json");
    tree.wait_for("the upscale to be given up", || sidecar.is_file());
    let text = std::fs::read_to_string(&sidecar).unwrap();
    assert!(
        text.contains("ONNX Runtime not found") && text.contains("gave-up"),
        "{text}"
    );
    // The split-to-proxy rule is unaffected, and the daemon is still up.
    tree.wait_for_file(&tree.exchange_out(), |n| n.starts_with("coffee_dr"));
    tree.signal(libc::SIGTERM);
    assert_eq!(tree.wait_exit().code(), Some(0));
}

#[test]
fn a_normalise_rule_without_a_runtime_gives_up_and_never_calls_a_good_image_bad() {
    let model = common::shared_dir().join("models/waifu2x-upconv7-photo-x2.onnx");
    let config = format!(
        "{}\n[runtime]\nonnxruntime = \"/nonexistent/libonnxruntime.so.1.31.1\"\n\n\
         [models.photo]\npath = \"{}\"\ntile = 128\ndomains = [\"photo\"]\n\n\
         [[rule]]\nname = \"lora\"\nrecipe = \"normalise\"\npreset = \"sdxl\"\nmode = \"bucket\"\n\
         upscale_model = \"photo\"\n",
        config_text("max_attempts = 2", ""),
        model.display()
    );
    let mut tree = Tree::new(&config);
    tree.start();
    // 600x400 needs enlarging for SDXL, so the model (and so the runtime) is needed.
    std::fs::copy(
        testdata("photo_coffee_600x400.png"),
        tree.path("var/inbox/lora/coffee.png"),
    )
    .unwrap();
    let sidecar = tree.path("var/failed/lora/coffee.png.error.json");
    tree.wait_for("the image to be given up", || sidecar.is_file());
    let text: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&sidecar).unwrap()).unwrap();
    assert_eq!(text["kind"], "gave-up", "{text}");
    assert_eq!(text["attempts"], 2, "retried first: {text}");
    assert!(
        text["reason"]
            .as_str()
            .unwrap()
            .contains("ONNX Runtime not found"),
        "{text}"
    );
    tree.signal(libc::SIGTERM);
    assert_eq!(tree.wait_exit().code(), Some(0));
}

#[test]
fn a_normalise_rule_builds_a_training_set_with_captions_rejects_and_reports() {
    let model = common::shared_dir().join("models/waifu2x-upconv7-photo-x2.onnx");
    let config = format!(
        "{}\n[models.photo]\npath = \"{}\"\ntile = 128\ndomains = [\"photo\"]\n\n\
         [[rule]]\nname = \"lora\"\nrecipe = \"normalise\"\npreset = \"sd15\"\nmode = \"bucket\"\n\
         caption_template = \"photo of {{stem}}\"\nupscale_model = \"photo\"\n",
        config_text("", ""),
        model.display()
    );
    let mut tree = Tree::new(&config);
    tree.start();
    let inbox = tree.path("var/inbox/lora");
    let images = tree.path("var/processed/lora/images");
    // The caption first, then its image (a caption that comes later is not seen).
    std::fs::write(inbox.join("bus.txt"), "a red bus in the street\n").unwrap();
    std::fs::copy(
        testdata("photo_bus_4032x3024_p3.jpg"),
        inbox.join("bus.jpg"),
    )
    .unwrap();
    tree.wait_for("the bus in the set", || images.join("0001.json").is_file());
    // The claim names the rule's recipe, in the log and in the processing log.
    assert!(
        tree.log().contains("recipe=\"normalise\""),
        "{}",
        tree.log()
    );
    assert!(tree
        .processing_log()
        .iter()
        .any(|t| t["to"] == "queued" && t["rule"] == "lora" && t["recipe"] == "normalise"));
    // A recompressed copy of the bus, a broken file, and a photo too small for sd15 (600x400
    // needs 1.07x for its 640x384 bucket: the rule's model enlarges it).
    let bus = load(&testdata("photo_bus_4032x3024_p3.jpg")).image;
    bus.resize_exact(1008, 756, image::imageops::FilterType::Triangle)
        .to_rgb8()
        .save(inbox.join("bus_small.png"))
        .unwrap();
    std::fs::copy(testdata("broken_truncated.jpg"), inbox.join("broken.jpg")).unwrap();
    std::fs::copy(
        testdata("photo_coffee_600x400.png"),
        inbox.join("coffee.png"),
    )
    .unwrap();
    let failed = tree.path("var/failed/lora");
    tree.wait_for("the copy and the broken file set aside", || {
        failed.join("bus_small.png.error.json").is_file()
            && failed.join("broken.jpg.error.json").is_file()
    });
    tree.wait_for("the coffee in the set", || {
        images.join("0002.json").is_file()
    });

    assert_eq!(
        std::fs::read_to_string(images.join("0001.txt")).unwrap(),
        "a red bus in the street\n"
    );
    assert_eq!(
        std::fs::read_to_string(images.join("0002.txt")).unwrap(),
        "photo of coffee\n"
    );
    let bus_sidecar: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(images.join("0001.json")).unwrap()).unwrap();
    assert_eq!(bus_sidecar["bucket"], "576x448");
    let coffee: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(images.join("0002.json")).unwrap()).unwrap();
    let upscale = coffee["operations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["op"] == "upscale")
        .expect("enlarged by the model");
    assert!(
        upscale["model"].as_str().unwrap().starts_with("photo x2"),
        "{upscale}"
    );
    let enlarged = load(&images.join("0002.png")).image;
    assert_eq!((enlarged.width(), enlarged.height()), (640, 384));
    // Originals and the caption that came with one are filed once the outputs are durable.
    let originals = tree.path("var/processed/lora/originals");
    tree.wait_for("the coffee's original filed", || {
        originals.join("coffee.png").is_file()
    });
    for name in ["bus.jpg", "bus.txt", "coffee.png"] {
        assert!(originals.join(name).is_file(), "{name} not filed");
    }
    let rejected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(failed.join("bus_small.png.error.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(rejected["kind"], "rejected");
    assert_eq!(rejected["details"]["duplicate_of"], "0001.png");
    assert!(rejected["details"]["scores"]["sharpness"].as_f64().unwrap() > 0.0);
    let broken = std::fs::read_to_string(failed.join("broken.jpg.error.json")).unwrap();
    assert!(broken.contains("truncated JPEG"), "{broken}");
    // The reports follow every image.
    let metadata = tree.path("var/metadata/lora");
    // Both rejects are in them: the near-duplicate and the undecodable file, which the set's
    // own processing log lists too, as a one-shot run does.
    tree.wait_for("the report to list both images and both rejects", || {
        std::fs::read_to_string(metadata.join("validation_report.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .is_some_and(|r| r["counts"]["images"] == 2 && r["counts"]["rejected"] == 2)
    });
    let report = std::fs::read_to_string(metadata.join("validation_report.json")).unwrap();
    assert!(
        report.contains("broken.jpg") && report.contains("truncated JPEG"),
        "{report}"
    );
    let set_log = std::fs::read_to_string(metadata.join("processing_log.jsonl")).unwrap();
    assert!(set_log.contains("broken.jpg"), "{set_log}");
    let html = std::fs::read_to_string(metadata.join("validation_report.html")).unwrap();
    assert!(html.contains("broken.jpg"));

    // A restart reads the set back: the next image is 0003 and the bus is still a duplicate.
    tree.signal(libc::SIGTERM);
    assert_eq!(tree.wait_exit().code(), Some(0));
    tree.start();
    std::fs::copy(
        testdata("painting_peppercarrot_ep01_p03.jpg"),
        inbox.join("pepper.jpg"),
    )
    .unwrap();
    std::fs::copy(
        testdata("photo_bus_4032x3024_p3.jpg"),
        inbox.join("bus_again.jpg"),
    )
    .unwrap();
    tree.wait_for("pepper in the set", || images.join("0003.json").is_file());
    tree.wait_for("the second bus set aside", || {
        failed.join("bus_again.jpg.error.json").is_file()
    });
    assert!(!images.join("0004.png").exists());
    let out = common::run_ok(tree.dir.path(), &["validate", "var/processed/lora"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("var/metadata/lora/validation_report.html")
    );
}

#[test]
fn kill_9_while_normalising_leaves_exactly_one_image_per_input_after_restart() {
    let config = format!(
        "{}\n[[rule]]\nname = \"set\"\nrecipe = \"normalise\"\npreset = \"sd15\"\nmode = \"center\"\n\
         caption_template = \"{{stem}}\"\nmin_sharpness = \"off\"\nmax_noise = \"off\"\nmax_blockiness = \"off\"\n\
         max_clipped = \"off\"\nduplicate_distance = \"off\"\n",
        config_text("workers = 2", "")
    );
    let mut tree = Tree::new(&config);
    let inbox = tree.path("var/inbox/set");
    let images = tree.path("var/processed/set/images");
    let photos = [
        "photo_bus_4032x3024_p3.jpg",
        "photo_exif_orientation6.jpg",
        "panorama_4032x1008_4to1.jpg",
        "painting_peppercarrot_ep01_p03.jpg",
    ];
    let pngs = || {
        files_in(&images)
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "png"))
            .count()
    };
    let (mut dropped, mut interrupted) = (0, 0);
    // The first round is killed once its first image is in the set, the second once its
    // third is: mid-run however fast the machine (a fixed sleep was not).
    for (round, kill_after) in [1usize, 3].into_iter().enumerate() {
        tree.start();
        let before = pngs();
        for copy in 0..6 {
            for name in photos {
                dropped += 1;
                std::fs::copy(
                    testdata(name),
                    inbox.join(format!("r{round}_{copy}_{name}")),
                )
                .unwrap();
            }
        }
        tree.wait_for("the round's first images", || pngs() >= before + kill_after);
        tree.kill_hard();
        // The kill came while jobs were still waiting or running.
        let left = files_in(&inbox).len();
        eprintln!("round {round}: killed with {left} inputs still in the inbox");
        interrupted += usize::from(left > 0);
    }
    assert!(
        interrupted > 0,
        "no kill landed while work was left: the test tests nothing"
    );
    tree.start();
    tree.wait_for("every input in the set", || {
        files_in(&inbox).is_empty() && pngs() == dropped && files_in(&images).len() == 3 * dropped
    });
    // Exactly one image, caption and sidecar per input: contiguous numbers, no "_2" names, no
    // image without its sidecar, each job once.
    let mut jobs = std::collections::HashSet::new();
    for n in 1..=dropped {
        for ext in ["png", "txt", "json"] {
            assert!(
                images.join(format!("{n:04}.{ext}")).is_file(),
                "{n:04}.{ext} missing"
            );
        }
        let sidecar: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(images.join(format!("{n:04}.json"))).unwrap(),
        )
        .unwrap();
        assert!(
            jobs.insert(sidecar["id"].as_str().unwrap().to_string()),
            "job twice: {}",
            sidecar["id"]
        );
        let caption = std::fs::read_to_string(images.join(format!("{n:04}.txt"))).unwrap();
        let source = sidecar["source"]["path"].as_str().unwrap();
        assert!(
            source.ends_with(&format!("{}.jpg", caption.trim())),
            "{n:04}: caption {caption:?} for {source}"
        );
    }
    assert_eq!(
        files_in(&tree.path("var/processed/set/originals")).len(),
        dropped
    );
    tree.signal(libc::SIGTERM);
    assert_eq!(tree.wait_exit().code(), Some(0));
}

#[test]
fn a_gif_a_file_no_rule_takes_and_special_entries_each_get_a_clear_outcome() {
    let mut tree = Tree::new(&config_text("", ""));
    tree.start();
    let inbox = tree.inbox();
    // Special entries: never opened, never moved, each said once.
    let fifo = std::ffi::CString::new(inbox.join("pipe.png").to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    std::os::unix::fs::symlink("loop.png", inbox.join("loop.png")).unwrap();
    std::os::unix::fs::symlink("nowhere.png", inbox.join("gone.png")).unwrap();
    // A three-frame animated GIF and a file no pattern takes.
    let gif = common::three_frame_gif();
    let dropped = Instant::now();
    std::fs::write(tree.path("anim.gif"), &gif).unwrap();
    std::fs::rename(tree.path("anim.gif"), inbox.join("anim.gif")).unwrap();
    std::fs::write(inbox.join("notes.docx"), b"PK\x03\x04 not an image at all").unwrap();

    let proxy = tree.wait_for_file(&tree.exchange_out(), |n| n.starts_with("anim_dr"));
    assert!(dropped.elapsed() < Duration::from_secs(20));
    let sidecar = tree.path("var/failed/photos/notes.docx.error.json");
    tree.wait_for("the stray file set aside", || sidecar.is_file());
    assert!(tree.path("var/failed/photos/notes.docx").is_file());
    let text: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&sidecar).unwrap()).unwrap();
    let reason = text["reason"].as_str().unwrap();
    assert!(
        reason.contains("not taken") && reason.contains("*.png") && reason.contains("*.gif"),
        "{reason}"
    );

    // The GIF's first frame went through; its provenance says the rest was dropped.
    write_graded_proxy(&proxy, &tree.exchange_in(), "anim_back.png", 20, true);
    tree.wait_for("the GIF merged", || {
        tree.path("var/metadata/photos/anim.json").is_file()
    });
    let merged = load(&tree.path("var/processed/photos/images/anim.png")).image;
    assert_eq!((merged.width(), merged.height()), (64, 48));
    let meta = metadata_json(&tree, "anim");
    let notes = meta["source"]["notes"][0].as_str().unwrap_or_default();
    assert!(notes.contains("first of its 3 frames"), "{meta}");

    let log = tree.log();
    for what in ["a FIFO", "a symlink loop", "a dangling symlink"] {
        assert_eq!(log.matches(what).count(), 1, "{what} once:\n{log}");
    }
    for name in ["pipe.png", "loop.png", "gone.png"] {
        assert!(
            std::fs::symlink_metadata(inbox.join(name)).is_ok(),
            "{name} left in place"
        );
    }
    let status = tree.status();
    assert!(status.contains("files no rule took"), "{status}");
    assert!(
        status.contains("special entries in inboxes, left alone (never opened): 3"),
        "{status}"
    );
    assert!(status.contains("pipe.png: a FIFO"), "{status}");
    // Still alive and responsive.
    tree.drop_file("photo_coffee_600x400.png", "coffee.png");
    tree.wait_for_file(&tree.exchange_out(), |n| n.starts_with("coffee_dr"));
    tree.signal(libc::SIGTERM);
    assert_eq!(tree.wait_exit().code(), Some(0));
}

#[test]
fn a_rule_with_a_model_for_new_content_merges_it_sharper_and_changes_nothing_else() {
    // Two rules, one with `upscale_method = "model:photo"`, get the same photo and return the
    // same edit: a checkerboard painted into the proxy, new content no colour map explains.
    let model = common::shared_dir().join("models/waifu2x-upconv7-photo-x2.onnx");
    let config = format!(
        "{}\n[models.photo]\npath = \"{}\"\ntile = 128\n\n\
         [[rule]]\nname = \"plain\"\nrecipe = \"split-to-proxy\"\nsize = \"512x512\"\n",
        config_text("", "upscale_method = \"model:photo\""),
        model.display()
    );
    let mut tree = Tree::new(&config);
    tree.start();
    let mut outputs = Vec::new();
    for rule in ["photos", "plain"] {
        let inbox = tree.path(&format!("var/inbox/{rule}"));
        std::fs::copy(
            testdata("photo_exif_orientation6.jpg"),
            inbox.join("falls.jpg"),
        )
        .unwrap();
        let proxy = tree.wait_for_file(&tree.path(&format!("var/exchange/out/{rule}")), |n| {
            n.ends_with("_proxy.png")
        });
        let mut edited = load(&proxy).image.to_rgb8();
        for y in 200..300u32 {
            for x in 150..350u32 {
                let red = ((x - 150) / 8 + (y - 200) / 8) % 2 == 0;
                edited.put_pixel(
                    x,
                    y,
                    image::Rgb(if red { [200, 30, 40] } else { [245, 240, 230] }),
                );
            }
        }
        let stem = proxy.file_stem().unwrap().to_string_lossy().into_owned();
        let mut bytes = Vec::new();
        edited
            .write_to(
                &mut std::io::Cursor::new(&mut bytes),
                image::ImageFormat::Png,
            )
            .unwrap();
        write_via_rename(
            &tree.path(&format!("var/exchange/in/{rule}")),
            &format!("{stem}_edited.png"),
            &bytes,
        );
        let output = tree.path(&format!("var/processed/{rule}/images/falls.png"));
        tree.wait_for("the merge", || output.is_file());
        outputs.push(load(&output).image.to_rgb8());
    }
    assert_eq!(
        metadata_json(&tree, "falls")["options"]["upscale_method"],
        "model:photo"
    );
    // The checkerboard is (150..350, 200..300) of a 512x512 canvas holding the 1800x1200
    // picture at 512x341 from row 85: (527..1230, 404..756) of the original.
    let (with_model, plain) = (&outputs[0], &outputs[1]);
    let inside = |x: u32, y: u32| (527..1230).contains(&x) && (404..756).contains(&y);
    let near = |x: u32, y: u32| (400..1360).contains(&x) && (280..880).contains(&y);
    let mut differ_inside = 0;
    for (x, y, p) in with_model.enumerate_pixels() {
        if !near(x, y) {
            assert_eq!(
                p,
                plain.get_pixel(x, y),
                "({x}, {y}) is away from the new content"
            );
        } else if inside(x, y) {
            differ_inside += usize::from(p != plain.get_pixel(x, y));
        }
    }
    assert!(
        differ_inside > 10_000,
        "the model changed {differ_inside} pixels of the new content"
    );
    let crop = |img: &image::RgbImage| {
        darkroom::core::quality::sharpness(&darkroom::core::quality::Luma::of(
            &image::DynamicImage::ImageRgb8(img.clone()).crop_imm(540, 420, 680, 320),
        ))
    };
    let (sharp_model, sharp_plain) = (crop(with_model), crop(plain));
    assert!(
        sharp_model > 1.5 * sharp_plain,
        "the model's checkerboard ({sharp_model:.0}) should be sharper than Lanczos3's ({sharp_plain:.0})"
    );
    tree.signal(libc::SIGTERM);
    assert_eq!(tree.wait_exit().code(), Some(0));
}

#[test]
fn with_watch_mode_poll_files_are_found_by_scanning_alone() {
    // What another machine writes into a shared folder raises no inotify event here; a
    // polling daemon holds no inotify watch at all, and still claims what appears.
    let mut tree = Tree::new(&config_text(
        "watch_mode = \"poll\"\npoll_interval = \"300ms\"",
        "",
    ));
    tree.start();
    assert!(
        tree.log().contains("polling the watched folders"),
        "{}",
        tree.log()
    );
    assert_eq!(
        common::inotify_fds(tree.pid()),
        0,
        "a polling daemon holds no inotify watch"
    );
    // Written in two parts with a pause between: claimed whole, once it has settled.
    let bytes = std::fs::read(testdata("photo_coffee_600x400.png")).unwrap();
    let target = tree.inbox().join("shared.png");
    let mut file = std::fs::File::create(&target).unwrap();
    file.write_all(&bytes[..bytes.len() / 2]).unwrap();
    file.sync_all().unwrap();
    std::thread::sleep(Duration::from_millis(350));
    file.write_all(&bytes[bytes.len() / 2..]).unwrap();
    drop(file);
    let proxy = tree.wait_for_file(&tree.exchange_out(), |n| n.starts_with("shared_dr"));
    let decoded = load(&proxy).image;
    assert_eq!((decoded.width(), decoded.height()), (512, 512));
    assert_eq!(tree.log().matches("claimed").count(), 1, "{}", tree.log());
    assert!(!tree.log().contains("incomplete"), "{}", tree.log());
    tree.signal(libc::SIGTERM);
    assert_eq!(tree.wait_exit().code(), Some(0));
}

#[test]
fn with_two_devices_two_model_lanes_take_turns_and_the_api_shows_each() {
    // [runtime] devices starts one model lane per CUDA device. On this CPU the provider is
    // the CPU for both, which is enough to see the work shared and reported per lane.
    let models = common::shared_dir().join("models");
    let config = format!(
        "{}\n[runtime]\nprovider = \"cpu\"\nthreads = 1\ndevices = [0, 1]\n\n\
         [models.anime]\npath = \"{}\"\ntile = 16\ncontext = 32\ndomains = [\"anime\"]\n\n\
         [[rule]]\nname = \"art\"\nrecipe = \"upscale\"\ndomain = \"anime\"\n",
        config_text("max_attempts = 2\nworkers = 2", ""),
        models.join("realesr-animevideov3-x4.onnx").display()
    );
    let mut tree = Tree::new(&config);
    tree.start();
    let inbox = tree.path("var/inbox/art");
    for i in 0..4 {
        std::fs::copy(testdata("tiny_17x9.png"), inbox.join(format!("t{i}.png"))).unwrap();
    }
    let images = tree.path("var/processed/art/images");
    tree.wait_for("four upscaled images", || files_in(&images).len() == 4);
    let status =
        common::http::get(&format!("{}/api/v1/status", common::http::base_url(&tree))).json();
    let lanes = status["model_lanes"].as_array().unwrap();
    assert_eq!(lanes.len(), 2, "{status}");
    assert_eq!(lanes[0]["device"], 0);
    assert_eq!(lanes[1]["device"], 1);
    for lane in lanes {
        assert!(
            lane["runs"].as_u64().unwrap() >= 1,
            "each lane ran a model: {status}"
        );
        assert_eq!(lane["loaded"], serde_json::json!(["anime"]), "{status}");
        assert!(lane["device_error"].is_null(), "{status}");
    }
    assert_eq!(
        status["model_lane"]["runs"].as_u64().unwrap(),
        4 + 1,
        "4 runs and the probe: {status}"
    );
    assert!(tree.log().contains("device=1"), "{}", tree.log());
    let metrics = common::http::get(&format!("{}/metrics", common::http::base_url(&tree))).text();
    for device in ["0", "1"] {
        let line = format!("darkroom_model_lane_device_failed{{device=\"{device}\"}} 0");
        assert!(metrics.contains(&line), "{line} in:\n{metrics}");
    }
}
