//! The HTTP API, metrics, events, webhooks and dashboard against the real daemon: real
//! subprocesses, real files, a real HTTP receiver, promtool, schemathesis and Chromium.

mod common;

use common::daemon::{config_text, files_in, Tree};
use common::http::{self, base_url, get, get_with, multipart, post, post_with, wait_json};
use common::testdata;
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn started(config: &str) -> (Tree, String) {
    let mut tree = Tree::new(config);
    tree.start();
    let base = base_url(&tree);
    (tree, base)
}

fn upload(base: &str, rule: &str, name: &str, bytes: &[u8]) -> http::Answer {
    post(
        &format!("{base}/api/v1/rules/{rule}/images?name={}", percent(name)),
        bytes,
    )
}

fn percent(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn state_of(base: &str, id: i64) -> String {
    get(&format!("{base}/api/v1/jobs/{id}")).json()["state"]
        .as_str()
        .unwrap()
        .to_string()
}

fn wait_state(base: &str, id: i64, states: &[&str]) -> Value {
    wait_json(
        &format!("{base}/api/v1/jobs/{id}"),
        &format!("job {id} to be {states:?}"),
        |job| states.contains(&job["state"].as_str().unwrap_or("")),
    )
}

#[test]
fn an_image_goes_up_its_proxy_comes_down_its_return_goes_up_and_the_result_comes_down() {
    let (tree, base) = started(&config_text("", ""));
    let original = std::fs::read(testdata("photo_coffee_600x400.png")).unwrap();

    // Raw body: 201 with the job once claimed, the same way a dropped file goes.
    let answer = upload(&base, "photos", "coffee.png", &original);
    assert_eq!(answer.status, 201, "{}", answer.text());
    let job = answer.json();
    let id = job["id"].as_i64().unwrap();
    assert_eq!(job["rule"], "photos");
    assert_eq!(job["recipe"], "split-to-proxy");
    assert_eq!(job["name"], "coffee.png");
    assert!(tree.inbox().join("coffee.png").exists() || tree.path("var/processed").exists());

    let job = wait_state(&base, id, &["awaiting-return"]);
    assert_eq!(job["outputs"], json!([]));
    let events: Vec<&str> = job["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["state"].as_str().unwrap())
        .collect();
    assert_eq!(events, ["queued", "running", "awaiting-return"]);

    // Before the merge, the output is a 404 that says why.
    let early = get(&format!("{base}/api/v1/jobs/{id}/output"));
    assert_eq!(early.status, 404);
    assert!(early.json()["error"]
        .as_str()
        .unwrap()
        .contains("waits for its processed proxy"));

    let proxy = get(&format!("{base}/api/v1/jobs/{id}/proxy"));
    assert_eq!(proxy.status, 200);
    assert_eq!(proxy.content_type, "image/png");
    let on_disk = std::fs::read(files_in(&tree.exchange_out())[0].clone()).unwrap();
    assert_eq!(proxy.body, on_disk);

    // The processed proxy goes back over HTTP and pairs with this job (by name, not guess).
    let processed = common::daemon::graded_proxy_bytes(&proxy.body, 12);
    let answer = post(&format!("{base}/api/v1/jobs/{id}/return"), &processed);
    assert_eq!(answer.status, 202, "{}", answer.text());
    let merge_id = answer.json()["return_job"]
        .as_i64()
        .expect("claimed return");
    let merge = wait_state(&base, merge_id, &["done"]);
    assert_eq!(merge["parent"], json!(id));
    assert_eq!(merge["pairing"], "name");

    let output = get(&format!("{base}/api/v1/jobs/{id}/output"));
    assert_eq!(output.status, 200, "{}", output.text());
    let result = image::load_from_memory(&output.body).unwrap();
    assert_eq!((result.width(), result.height()), (600, 400));
    let job = get(&format!("{base}/api/v1/jobs/{id}")).json();
    assert_eq!(job["state"], "done");
    assert_eq!(job["outputs"].as_array().unwrap().len(), 1);
    assert_eq!(job["returns"], json!([merge_id]));

    // The input is served from wherever it is now (filed under originals/).
    let input = get(&format!("{base}/api/v1/jobs/{id}/input"));
    assert_eq!(input.status, 200);
    assert_eq!(input.body, original);

    // Multipart, with the file's name from the form.
    let (content_type, body) = multipart(
        "file",
        "tiny.png",
        &std::fs::read(testdata("tiny_17x9.png")).unwrap(),
    );
    let answer = post_with(
        &format!("{base}/api/v1/rules/photos/images"),
        &body,
        &[("X-Darkroom-Request", "1"), ("Content-Type", &content_type)],
    );
    assert_eq!(answer.status, 201, "{}", answer.text());
    assert_eq!(answer.json()["name"], "tiny.png");

    // Listing, filtering and paging.
    let all = get(&format!("{base}/api/v1/jobs?rule=photos&limit=1")).json();
    assert_eq!(all["jobs"].as_array().unwrap().len(), 1);
    let cursor = all["next_cursor"].as_i64().unwrap();
    let next = get(&format!(
        "{base}/api/v1/jobs?rule=photos&limit=1&cursor={cursor}"
    ))
    .json();
    assert!(next["jobs"][0]["id"].as_i64().unwrap() < cursor);
    let merges = get(&format!("{base}/api/v1/jobs?kind=merge&state=done")).json();
    assert_eq!(merges["jobs"].as_array().unwrap().len(), 1);

    let rules = get(&format!("{base}/api/v1/rules")).json();
    assert_eq!(rules["rules"][0]["name"], "photos");
    assert_eq!(rules["rules"][0]["jobs"]["done"], json!(2));

    let thumb = get(&format!("{base}/api/v1/jobs/{id}/thumbnail?of=output"));
    assert_eq!(thumb.status, 200);
    let thumb = image::load_from_memory(&thumb.body).unwrap();
    assert!(thumb.width() <= 320 && thumb.height() <= 320);
}

#[test]
fn bad_requests_get_a_json_4xx_that_says_what_to_do_and_nothing_else_happens() {
    let (tree, base) = started(&config_text("[daemon.limits]\nmax_file_mib = 1\n", ""));
    let expect = |answer: http::Answer, status: u16, says: &str| {
        assert_eq!(answer.status, status, "{}", answer.text());
        assert!(
            answer.content_type.starts_with("application/json"),
            "{}",
            answer.content_type
        );
        let error = answer.json()["error"].as_str().unwrap().to_string();
        assert!(error.contains(says), "{error}");
    };
    let png = std::fs::read(testdata("tiny_17x9.png")).unwrap();
    expect(
        upload(&base, "nope", "a.png", &png),
        404,
        "the rules are photos",
    );
    expect(
        get(&format!("{base}/api/v1/rules/photos/images")),
        405,
        "not allowed",
    );
    expect(get(&format!("{base}/api/v1/jobs/abc")), 400, "not a job id");
    expect(
        get(&format!("{base}/api/v1/jobs/99999")),
        404,
        "no job 99999",
    );
    expect(
        get(&format!("{base}/api/v1/jobs?state=sleeping")),
        400,
        "not a state",
    );
    expect(get(&format!("{base}/api/v1/jobs?limit=0")), 400, "limit");
    for filter in ["rule", "state", "kind", "file"] {
        expect(
            get(&format!("{base}/api/v1/jobs?{filter}=")),
            400,
            "has no value",
        );
    }
    expect(
        get(&format!("{base}/api/v1/jobs?colour=red")),
        400,
        "unknown parameter",
    );
    expect(
        get(&format!("{base}/api/v2/everything")),
        404,
        "openapi.json",
    );
    expect(
        post(&format!("{base}/api/v1/jobs/1/retry"), b""),
        404,
        "no job 1",
    );
    expect(upload(&base, "photos", "empty.png", b""), 400, "empty");
    let big = vec![7u8; 1_200_000];
    expect(
        upload(&base, "photos", "big.png", &big),
        413,
        "max_file_mib",
    );
    expect(
        post_with(
            &format!("{base}/api/v1/rules/photos/images"),
            b"--xyz\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nabc",
            &[
                ("X-Darkroom-Request", "1"),
                ("Content-Type", "multipart/form-data; boundary=xyz"),
            ],
        ),
        400,
        "multipart",
    );
    let (content_type, body) = multipart("image", "a.png", &png);
    expect(
        post_with(
            &format!("{base}/api/v1/rules/photos/images"),
            &body,
            &[("X-Darkroom-Request", "1"), ("Content-Type", &content_type)],
        ),
        400,
        "unexpected part 'image'",
    );
    assert!(files_in(&tree.inbox()).is_empty(), "nothing landed");

    // Hostile names are stored under a name the server chose, inside the inbox.
    let long = "x".repeat(4096);
    let long_stored = format!("{}.png", "x".repeat(120));
    for (given, stored) in [
        ("../../etc/passwd", "passwd.png"),
        ("a\0b.png", "ab.png"),
        (long.as_str(), long_stored.as_str()),
    ] {
        let answer = upload(&base, "photos", given, &png);
        assert_eq!(answer.status, 201, "{}", answer.text());
        assert_eq!(answer.json()["name"], json!(stored));
    }
    assert!(!tree.path("etc").exists() && !tree.path("var/etc").exists());

    // A non-image upload is a failed job with its reason, as a dropped one would be.
    let answer = upload(&base, "photos", "notes.png", b"this is not an image at all");
    assert_eq!(answer.status, 201, "{}", answer.text());
    let id = answer.json()["id"].as_i64().unwrap();
    let job = wait_state(&base, id, &["failed"]);
    assert_eq!(job["failure"], "bad-input");
    assert!(
        job["error"].as_str().unwrap().contains("notes.png"),
        "{job}"
    );
    assert!(tree.path("var/failed/photos/notes.png.error.json").exists());
    assert!(!tree.log().contains("panicked"));
}

#[test]
fn pages_of_other_sites_cannot_change_anything_and_other_host_names_are_refused() {
    let (tree, base) = started(&config_text("", ""));
    let png = std::fs::read(testdata("tiny_17x9.png")).unwrap();
    let url = format!("{base}/api/v1/rules/photos/images?name=a.png");
    // No marker header: refused, as a cross-site form post would be.
    assert_eq!(post_with(&url, &png, &[]).status, 403);
    assert_eq!(
        post_with(&url, &png, &[("Content-Type", "text/plain")]).status,
        403
    );
    // A browser says where a request comes from.
    assert_eq!(
        post_with(
            &url,
            &png,
            &[
                ("X-Darkroom-Request", "1"),
                ("Sec-Fetch-Site", "cross-site")
            ]
        )
        .status,
        403
    );
    // DNS rebinding: a name that resolves here but is not this machine's.
    let answer = get_with(
        &format!("{base}/api/v1/jobs"),
        &[("Host", "evil.example:8480")],
    );
    assert_eq!(answer.status, 421, "{}", answer.text());
    assert!(files_in(&tree.inbox()).is_empty());

    // A real browser on a page of another origin tries a form post, a no-cors fetch and a
    // fetch with the header (which needs a preflight this server never grants).
    let site = tempfile::tempdir().unwrap();
    let page = format!(
        r#"<!doctype html><html><body>
<form id="f" method="POST" enctype="multipart/form-data" action="{base}/api/v1/rules/photos/images?name=form.png" target="sink">
<input type="hidden" name="file" value="not really"></form>
<iframe name="sink"></iframe>
<script>
document.getElementById('f').submit();
fetch('{base}/api/v1/rules/photos/images?name=nocors.png', {{method: 'POST', mode: 'no-cors', body: 'x'}}).catch(() => {{}});
fetch('{base}/api/v1/rules/photos/images?name=header.png', {{method: 'POST', headers: {{'X-Darkroom-Request': '1'}}, body: 'x'}})
  .then(() => document.title = 'sent', () => document.title = 'blocked');
fetch('{base}/api/v1/jobs/1/cancel', {{method: 'POST', headers: {{'Content-Type': 'application/json'}}, body: '{{}}'}})
  .then(() => {{}}, () => {{}});
</script></body></html>"#
    );
    std::fs::write(site.path().join("index.html"), page).unwrap();
    let mut server = Command::new("python3")
        .args(["-m", "http.server", "0", "--bind", "127.0.0.1"])
        .current_dir(site.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let port = {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(server.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        // "Serving HTTP on 127.0.0.1 port 43567 (http://127.0.0.1:43567/) ..."
        line.split("port ")
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
            .to_string()
    };
    let mut browser = http::Browser::open(&format!("http://localhost:{port}/index.html"), 800, 600);
    browser.wait_for(
        "the page's requests to settle",
        "document.title === 'blocked' || document.title === 'sent'",
    );
    assert_eq!(browser.eval("document.title"), json!("blocked"));
    std::thread::sleep(Duration::from_secs(2));
    let _ = server.kill();
    let _ = server.wait();
    assert!(
        files_in(&tree.inbox()).is_empty(),
        "{:?}",
        files_in(&tree.inbox())
    );
    let jobs = get(&format!("{base}/api/v1/jobs")).json();
    assert_eq!(jobs["jobs"], json!([]));
    assert!(tree.log().contains("") && !tree.log().contains("received over HTTP"));
}

#[test]
fn off_loopback_the_listener_needs_a_token_and_checks_it_on_every_request() {
    // Without a token, check-config refuses a listener other machines can reach.
    let dir = tempfile::tempdir().unwrap();
    let config = config_text("", "") + "\n[http]\nlisten = \"0.0.0.0:0\"\n";
    std::fs::write(dir.path().join("darkroom.toml"), &config).unwrap();
    let (code, stderr) = common::run_err(dir.path(), &["check-config", "darkroom.toml"]);
    assert_eq!(code, 78, "{stderr}");
    assert!(
        stderr.contains("http.listen") && stderr.contains("token"),
        "{stderr}"
    );

    let token = "0123456789abcdef0123456789abcdef";
    let (_tree, base) = started(
        &(config_text("", "")
            + &format!("\n[http]\nlisten = \"0.0.0.0:0\"\ntoken = \"{token}\"\n")),
    );
    let base = base.replace("0.0.0.0", "127.0.0.1");
    assert_eq!(get(&format!("{base}/healthz")).status, 200);
    let refused = get(&format!("{base}/api/v1/jobs"));
    assert_eq!(refused.status, 401);
    assert!(refused.json()["error"]
        .as_str()
        .unwrap()
        .contains("Authorization: Bearer"));
    assert_eq!(
        get_with(
            &format!("{base}/api/v1/jobs"),
            &[("Authorization", "Bearer wrong-token-wrong-token")]
        )
        .status,
        401
    );
    let bearer = format!("Bearer {token}");
    assert_eq!(
        get_with(
            &format!("{base}/api/v1/jobs"),
            &[("Authorization", &bearer)]
        )
        .status,
        200
    );
    assert_eq!(get(&format!("{base}/metrics")).status, 401);
    assert_eq!(get(&format!("{base}/")).status, 401);
    // With the token, any Host is fine (it is reached by name from other machines).
    assert_eq!(
        get_with(
            &format!("{base}/api/v1/rules"),
            &[("Authorization", &bearer), ("Host", "darkroom.lan:8480")]
        )
        .status,
        200
    );
}

#[test]
fn a_failed_job_is_retried_and_a_waiting_one_cancelled_over_http() {
    let (tree, base) = started(&config_text("", ""));
    // A truncated file waits in place (incomplete) for its writer: cancel it.
    let dropped = tree.drop_file("broken_truncated.jpg", "cut.jpg");
    let id = {
        let mut id = None;
        tree.wait_for("the truncated file's job", || {
            id = get(&format!("{base}/api/v1/jobs?state=incomplete")).json()["jobs"][0]["id"]
                .as_i64();
            id.is_some()
        });
        id.unwrap()
    };
    let answer = post(&format!("{base}/api/v1/jobs/{id}/cancel"), b"");
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json()["state"], "cancelled");
    assert!(!dropped.exists());
    let aside = tree.path("var/failed/photos/cut.jpg");
    assert!(aside.exists());
    let sidecar: Value = serde_json::from_slice(
        &std::fs::read(tree.path("var/failed/photos/cut.jpg.error.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(sidecar["kind"], "cancelled");
    let again = post(&format!("{base}/api/v1/jobs/{id}/cancel"), b"");
    assert_eq!(again.status, 409);
    assert!(again.json()["error"]
        .as_str()
        .unwrap()
        .contains("cancelled already"));

    // Retry: the file goes back where it was claimed and the same job runs again.
    let answer = post(&format!("{base}/api/v1/jobs/{id}/retry"), b"");
    assert_eq!(answer.status, 202, "{}", answer.text());
    assert!(dropped.exists() && !aside.exists());
    assert!(!tree.path("var/failed/photos/cut.jpg.error.json").exists());
    wait_state(&base, id, &["incomplete"]);
    let job = get(&format!("{base}/api/v1/jobs/{id}")).json();
    let states: Vec<&str> = job["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["state"].as_str().unwrap())
        .collect();
    assert!(
        states.windows(2).any(|w| w == ["cancelled", "queued"]),
        "{states:?}"
    );

    // A done job is not retried; a bad file fails again after its retry.
    let answer = upload(&base, "photos", "junk.png", b"junk junk junk");
    let junk = answer.json()["id"].as_i64().unwrap();
    wait_state(&base, junk, &["failed"]);
    assert_eq!(
        post(&format!("{base}/api/v1/jobs/{junk}/retry"), b"").status,
        202
    );
    let job = wait_json(
        &format!("{base}/api/v1/jobs/{junk}"),
        "the second failure",
        |job| {
            job["state"] == "failed"
                && job["events"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|e| e["state"] == "failed")
                    .count()
                    == 2
        },
    );
    assert_eq!(job["attempts"], json!(1));

    // A file moved back by hand is its job's retry too, never ignored.
    let failed_path = tree.path("var/failed/photos/junk.png");
    std::fs::rename(&failed_path, tree.inbox().join("junk.png")).unwrap();
    wait_json(
        &format!("{base}/api/v1/jobs/{junk}"),
        "the third failure",
        |job| {
            job["events"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["state"] == "failed")
                .count()
                == 3
        },
    );
    assert_eq!(state_of(&base, junk), "failed");
}

#[test]
fn events_stream_every_transition_and_a_reconnect_gets_what_it_missed() {
    use std::io::{BufRead, BufReader};
    let (tree, base) = started(&config_text("", ""));
    let response = http::agent()
        .get(&format!("{base}/api/v1/events"))
        .call()
        .unwrap();
    assert_eq!(
        response
            .headers()
            .get("content-type")
            .unwrap()
            .to_str()
            .unwrap(),
        "text/event-stream"
    );
    let reader = BufReader::new(response.into_body().into_reader());
    tree.drop_file("photo_coffee_600x400.png", "coffee.png");
    let mut states = Vec::new();
    let mut last_id = 0;
    for line in reader.lines() {
        let line = line.unwrap();
        if let Some(id) = line.strip_prefix("id: ") {
            last_id = id.parse().unwrap();
        }
        if let Some(data) = line.strip_prefix("data: ") {
            let event: Value = serde_json::from_str(data).unwrap();
            states.push(event["state"].as_str().unwrap().to_string());
            if event["state"] == "awaiting-return" {
                break;
            }
        }
    }
    assert_eq!(states, ["queued", "running", "awaiting-return"]);
    // Replaying from the second event gives the rest, in order.
    let replay = http::agent()
        .get(&format!("{base}/api/v1/events"))
        .header("Last-Event-ID", (last_id - 2).to_string())
        .call()
        .unwrap();
    let mut replayed = Vec::new();
    for line in BufReader::new(replay.into_body().into_reader()).lines() {
        if let Some(data) = line.unwrap().strip_prefix("data: ") {
            let event: Value = serde_json::from_str(data).unwrap();
            replayed.push(event["state"].as_str().unwrap().to_string());
            if replayed.len() == 2 {
                break;
            }
        }
    }
    assert_eq!(replayed, ["running", "awaiting-return"]);
}

#[test]
fn metrics_pass_promtool_and_count_what_happened() {
    let (tree, base) = started(&config_text("", ""));
    tree.drop_file("photo_coffee_600x400.png", "coffee.png");
    tree.drop_file("broken_text_named.jpg", "bad.jpg");
    wait_json(
        &format!("{base}/api/v1/jobs?state=failed"),
        "the bad file's failure",
        |page| page["jobs"].as_array().is_some_and(|j| !j.is_empty()),
    );
    wait_json(
        &format!("{base}/api/v1/jobs?state=awaiting-return"),
        "the proxy",
        |page| page["jobs"].as_array().is_some_and(|j| !j.is_empty()),
    );
    let metrics = get(&format!("{base}/metrics"));
    assert_eq!(metrics.status, 200);
    assert!(metrics
        .content_type
        .starts_with("text/plain; version=0.0.4"));
    let text = metrics.text();
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is needed: scripts/test installs the Debian package prometheus");
    use std::io::Write;
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "darkroom_jobs{rule=\"photos\",recipe=\"split-to-proxy\",kind=\"split\",state=\"awaiting-return\"} 1",
        "darkroom_jobs{rule=\"photos\",recipe=\"split-to-proxy\",kind=\"split\",state=\"failed\"} 1",
        "darkroom_failures_total{rule=\"photos\",class=\"bad-input\"} 1",
        "darkroom_proxies_awaiting_return{rule=\"photos\"} 1",
        "darkroom_queue_depth{rule=\"photos\"} 0",
        "darkroom_job_duration_seconds_count{recipe=\"split-to-proxy\",kind=\"split\"}",
        "darkroom_stage_duration_seconds_count{recipe=\"split-to-proxy\",stage=\"decode\"} 1",
        "darkroom_claim_latency_seconds_count 2",
        "darkroom_model_lane_running 0",
    ] {
        assert!(text.contains(expected), "missing {expected}:\n{text}");
    }
    let read: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("darkroom_read_bytes_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(read >= 466_706.0, "{read}");
    // Prometheus itself asks for OpenMetrics.
    let open = get_with(
        &format!("{base}/metrics"),
        &[("Accept", "application/openmetrics-text; version=1.0.0")],
    );
    assert!(open
        .content_type
        .starts_with("application/openmetrics-text"));
    assert!(open.text().ends_with("# EOF\n"));
    let ready = get(&format!("{base}/readyz"));
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["ready"], json!(true));
}

/// A webhook receiver: answers 503 to its first `failures` requests, then 200, and keeps
/// every request it got (key, event, signature, body) one JSON per line.
fn receiver(dir: &Path, port: u16, failures: u32) -> std::process::Child {
    let log = dir.join("received.jsonl");
    Command::new("python3")
        .arg(std::path::absolute("tests/tools/webhook_receiver.py").unwrap())
        .args([port.to_string(), failures.to_string()])
        .arg(&log)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

fn received(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("received.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[test]
fn webhooks_reach_a_receiver_that_was_down_even_across_a_kill_9() {
    let port = common::free_port();
    let secret = "webhook-secret-for-the-test";
    let config = config_text("max_attempts = 1\n", "")
        + &format!(
            "\n[[notify]]\nurl = \"http://127.0.0.1:{port}/hook\"\nevents = [\"done\", \"failed\", \"gave-up\", \"expired\"]\nsecret = \"{secret}\"\n"
        );
    let (mut tree, base) = started(&config);
    let inbox_dir = tempfile::tempdir().unwrap();
    // The receiver is down while two jobs end: a failure now, a done later.
    tree.drop_file("broken_text_named.jpg", "bad.jpg");
    let failed = wait_json(
        &format!("{base}/api/v1/jobs?state=failed"),
        "the failure",
        |p| p["jobs"].as_array().is_some_and(|j| !j.is_empty()),
    )["jobs"][0]["id"]
        .as_i64()
        .unwrap();
    tree.drop_file("photo_coffee_600x400.png", "coffee.png");
    let split = wait_json(
        &format!("{base}/api/v1/jobs?state=awaiting-return"),
        "the proxy",
        |p| p["jobs"].as_array().is_some_and(|j| !j.is_empty()),
    )["jobs"][0]["id"]
        .as_i64()
        .unwrap();
    let proxy = get(&format!("{base}/api/v1/jobs/{split}/proxy")).body;
    let merge = post(&format!("{base}/api/v1/jobs/{split}/return"), &proxy).json()["return_job"]
        .as_i64()
        .unwrap();
    wait_state(&base, merge, &["done"]);
    // The daemon tried and failed (nothing listens); it dies before any delivery lands.
    tree.wait_for("a failed delivery", || {
        tree.log().contains("webhook delivery failed")
    });
    tree.kill_hard();

    // The receiver comes up failing its first two answers; the daemon comes back.
    let mut server = receiver(inbox_dir.path(), port, 2);
    tree.start();
    let base = base_url(&tree);
    let expected = [(failed, "failed"), (merge, "done"), (split, "done")];
    tree.wait_for("every notification", || {
        let got = received(inbox_dir.path());
        expected.iter().all(|(job, event)| {
            got.iter().any(|r| {
                r["status"] == 200
                    && r["body"]["job"]["id"] == json!(job)
                    && r["body"]["event"] == *event
            })
        })
    });
    let got = received(inbox_dir.path());
    let _ = server.kill();
    let _ = server.wait();
    // Every accepted request carries a valid signature and its idempotency key; each key
    // was accepted exactly once.
    let mut accepted = std::collections::HashMap::new();
    for request in got.iter().filter(|r| r["status"] == 200) {
        let body = request["raw"].as_str().unwrap();
        let expected_signature = darkroom::daemon::notify::signature(secret, body.as_bytes());
        assert_eq!(request["signature"], expected_signature.as_str());
        assert_eq!(request["key"], request["body"]["id"]);
        *accepted
            .entry(request["key"].as_str().unwrap().to_string())
            .or_insert(0) += 1;
    }
    assert!(accepted.values().all(|n| *n == 1), "{accepted:?}");
    assert_eq!(accepted.len(), 3, "{got:?}");
    assert_eq!(got.iter().filter(|r| r["status"] == 503).count(), 2);
    let done = got
        .iter()
        .find(|r| r["status"] == 200 && r["body"]["job"]["id"] == json!(split))
        .unwrap();
    assert_eq!(done["body"]["job"]["rule"], "photos");
    assert_eq!(done["body"]["job"]["outputs"].as_array().unwrap().len(), 1);
    assert!(Path::new(done["body"]["job"]["outputs"][0].as_str().unwrap()).exists());
    // The status shows the target healthy again.
    let status = get(&format!("{base}/api/v1/status")).json();
    assert_eq!(status["notify"][0]["delivery"]["failures"], json!(0));
}

#[test]
fn a_hundred_parallel_uploads_make_a_hundred_jobs_and_a_hundred_proxies() {
    let (tree, base) = started(&config_text("workers = 2\n", ""));
    let png = std::sync::Arc::new(std::fs::read(testdata("tiny_17x9.png")).unwrap());
    let threads: Vec<_> = (0..100)
        .map(|i| {
            let base = base.clone();
            let png = std::sync::Arc::clone(&png);
            std::thread::spawn(move || {
                // Half of them under one name: each still lands, under a name of its own.
                let name = if i % 2 == 0 {
                    format!("up{i:03}.png")
                } else {
                    "same.png".into()
                };
                let answer = upload(&base, "photos", &name, &png);
                assert!(
                    answer.status == 201 || answer.status == 202,
                    "{}",
                    answer.text()
                );
                answer.json()["name"].as_str().unwrap().to_string()
            })
        })
        .collect();
    let names: Vec<String> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(names.len(), 100);
    assert!(names.iter().filter(|n| n.starts_with("same")).count() == 50);
    tree.wait_for("100 proxies", || {
        files_in(&tree.exchange_out()).len() == 100
    });
    let page = wait_json(
        &format!("{base}/api/v1/jobs?limit=500"),
        "100 jobs awaiting return",
        |p| {
            p["jobs"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|j| j["state"] == "awaiting-return")
                .count()
                == 100
        },
    );
    assert_eq!(page["jobs"].as_array().unwrap().len(), 100);
}

#[test]
fn the_api_matches_its_openapi_document_under_schemathesis() {
    let (tree, base) = started(&config_text("[daemon.limits]\nmax_file_mib = 4\n", ""));
    tree.drop_file("photo_coffee_600x400.png", "coffee.png");
    tree.drop_file("broken_text_named.jpg", "bad.jpg");
    let schemathesis = common::venv_bin("schemathesis");
    let report = tempfile::tempdir().unwrap();
    // The event stream never ends by itself: it is read for a second per request, apart.
    for (paths, examples, timeout) in [
        (["--exclude-path", "/api/v1/events"], "25", "30"),
        (["--include-path", "/api/v1/events"], "5", "1"),
    ] {
        let out = Command::new(&schemathesis)
            .args(["run", &format!("{base}/api/v1/openapi.json")])
            .args(["--url", &base])
            .args(["--checks", "all"])
            .args(["--header", "X-Darkroom-Request: 1"])
            .args(["--max-examples", examples])
            .args(["--request-timeout", timeout])
            .args(["--phases", "examples,coverage,fuzzing"])
            // A fixed seed, so a run is reproducible; other seeds by hand
            // (`--seed`) explore further.
            .args(["--seed", "20261204"])
            .args(paths)
            .arg("--no-color")
            .current_dir(report.path())
            .output()
            .expect("schemathesis runs (scripts/setup-venv installs it)");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{text}\ndaemon log:\n{}", tree.log());
    }
    assert!(!tree.log().contains("panicked"));
}

#[test]
fn the_dashboard_shows_work_live_and_its_retry_button_requeues_a_failed_job() {
    let (tree, base) = started(&config_text("", ""));
    let mut browser = http::Browser::open(&format!("{base}/"), 1280, 900);
    browser.wait_for(
        "the live feed",
        "document.getElementById('live').textContent === 'live'",
    );
    browser.wait_for(
        "the rule's card",
        "document.querySelector('#rules .card h3') !== null",
    );
    assert_eq!(
        browser.eval("document.querySelector('#rules .card h3 span').textContent"),
        json!("photos")
    );

    // A dropped image appears, goes through and shows with its thumbnail.
    tree.drop_file("photo_coffee_600x400.png", "coffee.png");
    browser.wait_for(
        "the proxy's row with its thumbnail",
        "[...document.querySelectorAll('#awaiting tbody tr')].some(r => r.textContent.includes('coffee.png') \
         && r.querySelector('img.thumb') && r.querySelector('img.thumb').complete \
         && r.querySelector('img.thumb').naturalWidth > 0)",
    );
    let id = get(&format!("{base}/api/v1/jobs?state=awaiting-return")).json()["jobs"][0]["id"]
        .as_i64()
        .unwrap();
    let proxy = get(&format!("{base}/api/v1/jobs/{id}/proxy")).body;
    assert_eq!(
        post(
            &format!("{base}/api/v1/jobs/{id}/return"),
            &common::daemon::graded_proxy_bytes(&proxy, 12)
        )
        .status,
        202
    );
    browser.wait_for(
        "the finished card with before and after",
        "[...document.querySelectorAll('#finished .card')].some(c => c.textContent.includes('coffee.png') \
         && [...c.querySelectorAll('img')].every(i => i.complete && i.naturalWidth > 0))",
    );

    // A failure shows with its reason; its retry button requeues it.
    tree.drop_file("broken_text_named.jpg", "bad.jpg");
    browser.wait_for(
        "the failure's row",
        "[...document.querySelectorAll('#failed tbody tr')].some(r => r.textContent.includes('bad.jpg') \
         && r.textContent.includes('not an image'))",
    );
    let failed = get(&format!("{base}/api/v1/jobs?state=failed")).json()["jobs"][0]["id"]
        .as_i64()
        .unwrap();
    let screenshot_dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let shot = browser.screenshot(&screenshot_dir.join("dashboard.png"));
    let image = image::open(&shot).unwrap();
    assert_eq!((image.width(), image.height()), (1280, 900));
    println!("dashboard screenshot: {}", shot.display());
    browser.eval(&format!(
        "document.querySelector('button[data-retry=\"{failed}\"]').click(), true"
    ));
    wait_json(
        &format!("{base}/api/v1/jobs/{failed}"),
        "the retried job's second run",
        |job| {
            job["events"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["state"] == "queued")
                .count()
                == 2
        },
    );
    // The journal records the requeue a moment before the log line is written.
    tree.wait_for("the log's line for the requeue", || {
        tree.log().contains("claimed again")
    });

    // A phone-sized window shows the same page without sideways scrolling.
    let mut phone = http::Browser::open(&format!("{base}/"), 390, 844);
    phone.wait_for(
        "the page on a phone",
        "document.querySelector('#rules .card') !== null",
    );
    assert_eq!(
        phone.eval("document.documentElement.scrollWidth <= window.innerWidth + 1"),
        json!(true)
    );
    phone.screenshot(&screenshot_dir.join("dashboard-phone.png"));
}
