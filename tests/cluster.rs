//! Three real daemons on one shared tree and one real PostgreSQL journal: the work is
//! shared, nothing is done twice, and a host that dies, stalls or loses the database loses
//! nothing.

mod common;

use common::cluster::Cluster;
use common::daemon::write_graded_proxy;
use common::postgres::PgServer;
use std::path::Path;
use std::time::Duration;

const PHOTO: &str = "photo_coffee_600x400.png";

/// `SELECT count(*) ... WHERE <condition>` on the jobs table.
fn jobs_where(server: &PgServer, condition: &str) -> usize {
    server
        .psql(&format!("SELECT count(*) FROM jobs WHERE {condition}"))
        .parse()
        .unwrap()
}

#[test]
fn three_hosts_share_300_drops_and_every_proxy_and_merge_happens_once() {
    let server = PgServer::start();
    let mut cluster = Cluster::new(&server, 3, "", "");
    cluster.start_all();
    for i in 0..300 {
        cluster.drop_file(PHOTO, &format!("p{i:03}.png"));
    }
    cluster.wait_for("300 proxies", |c| {
        c.files("var/exchange/out/photos").len() >= 300
            && jobs_where(&server, "kind = 'split' AND state = 'awaiting-return'") == 300
    });
    let proxies = cluster.files("var/exchange/out/photos");
    assert_eq!(proxies.len(), 300, "exactly one proxy per image");
    assert_eq!(
        jobs_where(&server, "kind = 'split'"),
        300,
        "one job per image"
    );
    assert_eq!(
        jobs_where(&server, "kind = 'split' AND attempts != 1"),
        0,
        "no split ran twice"
    );
    for index in 0..3 {
        let proxied = cluster.log(index).matches("proxy written").count();
        assert!(
            proxied > 0,
            "host {} did none of the work:\n{}",
            cluster.hosts[index].name,
            cluster.logs()
        );
    }
    // Returns, merged exactly once whichever host takes them.
    for proxy in proxies.iter().take(12) {
        let name = proxy.file_name().unwrap().to_str().unwrap();
        write_graded_proxy(
            proxy,
            &cluster.path("var/exchange/in/photos"),
            name,
            20,
            true,
        );
    }
    cluster.wait_for("12 merges", |c| {
        c.files("var/processed/photos/images").len() >= 12
            && jobs_where(&server, "kind = 'merge' AND state = 'done'") == 12
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(cluster.files("var/processed/photos/images").len(), 12);
    assert_eq!(jobs_where(&server, "kind = 'merge'"), 12);
    assert_eq!(jobs_where(&server, "kind = 'merge' AND attempts != 1"), 0);
    cluster.assert_no_temp_files();
    let status = String::from_utf8(
        common::run_ok(
            cluster.dir.path(),
            &[
                "status",
                "--config",
                cluster.hosts[0].config.to_str().unwrap(),
            ],
        )
        .stdout,
    )
    .unwrap();
    assert!(status.contains("hosts: 3"), "{status}");
    assert!(status.contains("elected scanner"), "{status}");
}

/// Three hosts at work: `files` photos dropped, the first `proxies` of them proxied.
fn busy_cluster(server: &PgServer, files: usize, proxies: usize) -> Cluster {
    let mut cluster = Cluster::new(server, 3, "", "");
    cluster.start_all();
    for i in 0..files {
        cluster.drop_file(PHOTO, &format!("p{i:02}.png"));
    }
    cluster.wait_for("the first proxies", |c| {
        c.files("var/exchange/out/photos").len() >= proxies
    });
    cluster
}

/// A tool that takes a minute on its first call (the host running it is then killed or
/// stopped) and copies the proxy back at once on every later call.
fn slow_once_tool(dir: &Path, seconds: u32) -> String {
    let script = dir.join("tool.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nif mkdir '{}' 2>/dev/null; then sleep {seconds}; fi\ncp \"$1\" \"$2\"\n",
            dir.join("first-call").display()
        ),
    )
    .unwrap();
    std::os::unix::fs::PermissionsExt::set_mode(
        &mut std::fs::metadata(&script).unwrap().permissions(),
        0o755,
    );
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    format!(
        "tool = \"cmd({} %i %o)\"\ncommand_timeout = \"120s\"",
        script.display()
    )
}

/// The index of the host whose lease a job at the tool is under.
fn holder(cluster: &Cluster, server: &PgServer) -> usize {
    let mut name = String::new();
    cluster.wait_for("a job at the tool", |_| {
        name = server.psql("SELECT leased_by FROM jobs WHERE state = 'at-tool'");
        !name.is_empty()
    });
    cluster.hosts.iter().position(|h| h.name == name).unwrap()
}

#[test]
fn a_host_killed_while_it_runs_a_job_is_replaced_and_the_output_exists_once() {
    let server = PgServer::start();
    let tools = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::new(&server, 3, "", &slow_once_tool(tools.path(), 60));
    cluster.start_all();
    cluster.drop_file(PHOTO, "coffee.png");
    let victim = holder(&cluster, &server);
    cluster.kill_hard(victim);
    cluster.wait_for("the job finished by another host", |c| {
        c.files("var/processed/photos/images").len() == 1
            && jobs_where(&server, "kind = 'merge' AND state = 'done'") == 1
    });
    let survivors: Vec<usize> = (0..3).filter(|&i| i != victim).collect();
    assert!(
        survivors.iter().any(|&i| cluster
            .log(i)
            .contains("taken over: its host stopped renewing its lease")),
        "{}",
        cluster.logs()
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(cluster.files("var/processed/photos/images").len(), 1);
    assert_eq!(jobs_where(&server, "kind = 'merge'"), 1);
    cluster.assert_no_temp_files();
}

#[test]
fn a_stalled_host_s_late_result_is_refused_by_its_fencing_token() {
    let server = PgServer::start();
    let tools = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::new(&server, 3, "", &slow_once_tool(tools.path(), 8));
    cluster.start_all();
    cluster.drop_file(PHOTO, "coffee.png");
    let stalled = holder(&cluster, &server);
    cluster.signal(stalled, libc::SIGSTOP);
    cluster.wait_for("the job finished by another host", |c| {
        c.files("var/processed/photos/images").len() == 1
            && jobs_where(&server, "kind = 'merge' AND state = 'done'") == 1
    });
    // The stalled host's tool call ends while it is stopped; its result waits for it.
    std::thread::sleep(Duration::from_secs(9));
    cluster.signal(stalled, libc::SIGCONT);
    cluster.wait_for("the late result refused", |c| {
        c.log(stalled).contains("this result is not recorded")
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(cluster.files("var/processed/photos/images").len(), 1);
    assert_eq!(jobs_where(&server, "kind = 'merge'"), 1, "no second merge");
    assert_eq!(jobs_where(&server, "kind = 'split' AND state = 'done'"), 1);
    cluster.assert_no_temp_files();
}

#[test]
fn the_database_stopped_for_20_seconds_mid_run_loses_and_repeats_nothing() {
    let server = PgServer::start();
    let cluster = busy_cluster(&server, 40, 5);
    server.stop();
    std::thread::sleep(Duration::from_secs(20));
    server.start_again();
    cluster.wait_for("40 proxies", |c| {
        c.files("var/exchange/out/photos").len() >= 40
            && jobs_where(&server, "kind = 'split' AND state = 'awaiting-return'") == 40
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(cluster.files("var/exchange/out/photos").len(), 40);
    assert_eq!(jobs_where(&server, "kind = 'split'"), 40);
    cluster.assert_no_temp_files();
    assert!(
        (0..3).all(|i| cluster.log(i).contains("reconnected to the journal")),
        "{}",
        cluster.logs()
    );
}

#[test]
fn a_host_whose_connection_is_cut_reconnects_and_carries_on() {
    let server = PgServer::start();
    let cluster = busy_cluster(&server, 30, 3);
    let cut: usize = server
        .psql(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE application_name LIKE 'darkroom%'",
        )
        .parse()
        .unwrap();
    assert!(
        cut >= 6,
        "each host has a daemon and a heartbeat connection: {cut}"
    );
    cluster.wait_for("30 proxies", |_| {
        jobs_where(&server, "kind = 'split' AND state = 'awaiting-return'") == 30
    });
    assert_eq!(cluster.files("var/exchange/out/photos").len(), 30);
    assert!(
        (0..3).all(|i| cluster.log(i).contains("reconnected to the journal")),
        "{}",
        cluster.logs()
    );
}

#[test]
fn a_single_host_journal_migrates_into_postgresql_and_its_jobs_go_on_there() {
    use common::daemon::{config_text, files_in, Tree};
    let server = PgServer::start();
    let mut tree = Tree::new(&config_text("", ""));
    tree.start();
    for name in ["a.png", "b.png", "c.png"] {
        tree.drop_file(PHOTO, name);
    }
    tree.wait_for("three proxies", || {
        files_in(&tree.exchange_out()).len() == 3
    });
    tree.signal(libc::SIGTERM);
    assert_eq!(tree.wait_exit().code(), Some(0));
    let config = tree.config.to_str().unwrap().to_string();
    let url = server.url();
    let out = common::run_ok(
        tree.dir.path(),
        &["journal", "migrate", "--config", &config, "--to", &url],
    );
    let said = String::from_utf8(out.stdout).unwrap();
    assert!(said.contains("copied 3 jobs"), "{said}");
    assert_eq!(
        jobs_where(&server, "kind = 'split' AND state = 'awaiting-return'"),
        3
    );
    let events: usize = server.psql("SELECT count(*) FROM events").parse().unwrap();
    assert!(
        events >= 9,
        "queued, running, awaiting-return for each: {events}"
    );
    // A second copy into the same database is refused, and writes nothing.
    let again = common::darkroom()
        .args(["journal", "migrate", "--config", &config, "--to", &url])
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds 3 jobs"));
    // The daemon, now on PostgreSQL, merges a return of a proxy the single host wrote.
    let text = std::fs::read_to_string(&tree.config).unwrap().replacen(
        "[daemon]\n",
        &format!("[daemon]\njournal = \"{url}\"\nhost = \"solo\"\n"),
        1,
    );
    std::fs::write(&tree.config, text).unwrap();
    tree.start();
    let proxy = files_in(&tree.exchange_out()).remove(0);
    let name = proxy.file_name().unwrap().to_str().unwrap().to_string();
    write_graded_proxy(&proxy, &tree.exchange_in(), &name, 20, true);
    tree.wait_for("the merge", || {
        files_in(&tree.path("var/processed/photos/images")).len() == 1
    });
    assert_eq!(
        jobs_where(&server, "kind = 'split'"),
        3,
        "no file claimed twice"
    );
    let next_id: i64 = server.psql("SELECT max(id) FROM jobs").parse().unwrap();
    assert_eq!(next_id, 4, "new ids follow the copied ones");
}

#[test]
fn roles_send_model_rules_to_model_hosts_and_the_rest_to_cpu_hosts() {
    let server = PgServer::start();
    let tools = tempfile::tempdir().unwrap();
    let copy_tool = tools.path().join("copy.sh");
    std::fs::write(&copy_tool, "#!/bin/sh\ncp \"$1\" \"$2\"\n").unwrap();
    std::fs::set_permissions(
        &copy_tool,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let tooled_rule = format!(
        "\n[[rule]]\nname = \"tooled\"\nrecipe = \"split-to-proxy\"\nsize = \"256x256\"\n\
         tool = \"cmd({} %i %o)\"\n",
        copy_tool.display()
    );
    let mut cluster = Cluster::with_extras(
        &server,
        &["roles = [\"intake\", \"cpu\"]", "roles = [\"model\"]"],
        &tooled_rule,
    );
    cluster.start_all();
    for i in 0..4 {
        cluster.drop_file(PHOTO, &format!("p{i}.png"));
        std::fs::create_dir_all(cluster.path("var/inbox/tooled")).unwrap();
        std::fs::copy(
            common::testdata(PHOTO),
            cluster.path(&format!("var/inbox/tooled/t{i}.png")),
        )
        .unwrap();
    }
    cluster.wait_for("4 proxies and 4 tooled merges", |c| {
        jobs_where(&server, "rule = 'photos' AND state = 'awaiting-return'") == 4
            && c.files("var/processed/tooled/images").len() == 4
    });
    let (cpu, model) = (cluster.log(0), cluster.log(1));
    let proxies = |log: &str, rule: &str| {
        log.lines()
            .filter(|l| l.contains("proxy written") && l.contains(&format!("inbox/{rule}/")))
            .count()
    };
    assert_eq!(proxies(&cpu, "photos"), 4, "{}", cluster.logs());
    assert_eq!(proxies(&cpu, "tooled"), 0, "{}", cluster.logs());
    assert_eq!(proxies(&model, "tooled"), 4, "{}", cluster.logs());
    assert_eq!(proxies(&model, "photos"), 0, "{}", cluster.logs());
    let status = String::from_utf8(
        common::run_ok(
            cluster.dir.path(),
            &[
                "status",
                "--config",
                cluster.hosts[0].config.to_str().unwrap(),
            ],
        )
        .stdout,
    )
    .unwrap();
    assert!(status.contains("roles intake,cpu"), "{status}");
    assert!(status.contains("roles model"), "{status}");
    assert!(
        status
            .lines()
            .any(|l| l.contains("  a (") && l.contains("elected scanner")),
        "only a host with the intake role scans: {status}"
    );
}

#[test]
fn polling_hosts_elect_one_scanner_and_another_takes_over_when_it_dies() {
    // Polling, as on NFS or SMB where inotify sees nothing another machine writes.
    let server = PgServer::start();
    let mut cluster = Cluster::new(
        &server,
        3,
        "watch_mode = \"poll\"\npoll_interval = \"300ms\"",
        "",
    );
    cluster.start_all();
    for index in 0..3 {
        assert_eq!(
            common::inotify_fds(cluster.pid(index)),
            0,
            "host {} polls",
            cluster.hosts[index].name
        );
    }
    cluster.drop_file(PHOTO, "first.png");
    cluster.wait_for("the first proxy", |_| {
        jobs_where(&server, "kind = 'split' AND state = 'awaiting-return'") == 1
    });
    let scanner = server.psql("SELECT host FROM leaders WHERE role = 'scanner'");
    let victim = cluster
        .hosts
        .iter()
        .position(|h| h.name == scanner)
        .unwrap();
    cluster.kill_hard(victim);
    cluster.drop_file(PHOTO, "second.png");
    cluster.wait_for("the second proxy, claimed by a new scanner", |_| {
        jobs_where(&server, "kind = 'split' AND state = 'awaiting-return'") == 2
    });
    let successor = server.psql("SELECT host FROM leaders WHERE role = 'scanner'");
    assert_ne!(successor, scanner);
    let index = cluster
        .hosts
        .iter()
        .position(|h| h.name == successor)
        .unwrap();
    assert!(
        cluster
            .log(index)
            .contains("elected to scan the watched folders"),
        "{}",
        cluster.logs()
    );
    assert_eq!(cluster.files("var/exchange/out/photos").len(), 2);
}
