//! darkroom driving a real ComfyUI (0.3.64, on the CPU) as a rule's tool: round trips at full
//! resolution, restarts on either side, workflow errors, several servers, `via = "full"`.

mod common;

use common::comfyui::{self, ComfyUi};
use common::daemon::{files_in, Tree};
use common::{load, psnr, testdata};
use std::path::{Path, PathBuf};
use std::process::Command;

fn workflow(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(name)
}

/// A daemon config with one split-to-proxy rule whose tool is `tool` (a TOML inline value).
fn config(size: &str, tool: &str, rule_extra: &str) -> String {
    format!(
        "[daemon]\nroot = \"var\"\nstability_window = \"500ms\"\nretry_backoff = \"200ms\"\n\
         shutdown_timeout = \"5s\"\nlog_level = \"info\"\n\n\
         [[rule]]\nname = \"photos\"\nrecipe = \"split-to-proxy\"\nsize = \"{size}\"\n\
         tool = {tool}\n{rule_extra}\n"
    )
}

/// A `tool = { ... }` value: ComfyUI at `servers` (a list when more than one) running
/// `workflow_file` of the checkout.
fn comfy_tool(servers: &[String], workflow_file: &str) -> String {
    let quoted: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
    let servers = match quoted.as_slice() {
        [one] => one.clone(),
        many => format!("[{}]", many.join(", ")),
    };
    format!(
        "{{ comfyui = {servers}, workflow = \"{}\" }}",
        workflow(workflow_file).display()
    )
}

/// Starts a daemon whose rule (512x512 proxies) has `tool`, and drops the coffee photo in.
fn coffee_through(tool: &str, rule_extra: &str) -> Tree {
    let mut tree = Tree::new(&config("512x512", tool, rule_extra));
    tree.start();
    tree.drop_file("photo_coffee_600x400.png", "coffee.png");
    tree
}

/// Waits for a job's output and for its original to be filed (after the output and its
/// sidecar are durable); returns the output.
fn wait_done(tree: &Tree, original: &str) -> PathBuf {
    let output = tree.wait_for_file(&tree.path("var/processed/photos/images"), |_| true);
    tree.wait_for("the original to be filed", || {
        tree.path(&format!("var/processed/photos/originals/{original}"))
            .is_file()
    });
    output
}

fn images(tree: &Tree) -> Vec<PathBuf> {
    files_in(&tree.path("var/processed/photos/images"))
}

fn sidecar(tree: &Tree, output: &Path) -> serde_json::Value {
    let stem = output.file_stem().unwrap().to_string_lossy();
    let path = tree.path(&format!("var/metadata/photos/{stem}.json"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Converts an image to an sRGB PNG with Pillow's littleCMS (the reference side).
fn to_srgb(input: &Path, output: &Path) {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    let status = Command::new(python)
        .arg(workflow("tests/tools/to_srgb.py"))
        .arg(input)
        .arg(output)
        .status()
        .unwrap();
    assert!(status.success());
}

/// Runs `workflow_file` in ComfyUI on `image` (a PNG) directly, as a user would at full
/// resolution, and returns its output.
fn run_in_comfyui(server: &ComfyUi, workflow_file: &str, image: &Path) -> image::DynamicImage {
    use darkroom::io::comfyui::{PromptStatus, Server, Workflow};
    let text = std::fs::read_to_string(workflow(workflow_file)).unwrap();
    let flow = Workflow::parse(&text, None, None, &[]).unwrap();
    let client = Server::new(&server.url());
    let uploaded = client
        .upload("reference", "full.png", &std::fs::read(image).unwrap())
        .unwrap();
    let id = "reference-0000-0000-0000-000000000000";
    client
        .submit(&flow.prompt_for(&uploaded, "reference/full"), id, "test")
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(600);
    loop {
        match client.status(id).unwrap() {
            PromptStatus::Done(outputs) => {
                let bytes = client.fetch(&outputs[0].1, 1 << 30).unwrap();
                return image::load_from_memory(&bytes).unwrap();
            }
            PromptStatus::Failed(message) => panic!("the reference run failed: {message}"),
            _ => assert!(
                std::time::Instant::now() < deadline,
                "the reference run did not end"
            ),
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
}

#[test]
fn a_12_mp_photo_comes_back_from_a_comfyui_colour_workflow_within_40_db_of_the_workflow_run_at_full_resolution(
) {
    let server = comfyui::shared();
    let mut tree = Tree::new(&config(
        "1024x1024",
        &comfy_tool(&[server.url()], "config/workflows/grade.json"),
        "",
    ));
    tree.start();
    // 4032x3024 with a Display P3 profile: darkroom sends ComfyUI sRGB and puts P3 back.
    tree.drop_file("photo_bus_4032x3024_p3.jpg", "bus.jpg");
    let output = wait_done(&tree, "bus.jpg");
    assert_eq!(images(&tree).len(), 1, "one output per workflow image");
    let provenance = sidecar(&tree, &output);
    let tool = &provenance["proxy"]["tool"];
    assert_eq!(tool["tool"], "comfyui", "{provenance:#}");
    assert_eq!(tool["attempt"], 1);
    assert_eq!(provenance["return"]["pairing"], "tool");
    assert!(tree.log().contains("ComfyUI runs node 3 (ImageBlend)"));
    let merged = load(&output);
    assert!(
        merged.icc_profile.is_some(),
        "the original's profile is put back"
    );

    // The same workflow, run by ComfyUI itself on the full-resolution image (in sRGB).
    let dir = tempfile::tempdir().unwrap();
    let reference_in = dir.path().join("full_srgb.png");
    to_srgb(&testdata("photo_bus_4032x3024_p3.jpg"), &reference_in);
    let reference = run_in_comfyui(server, "config/workflows/grade.json", &reference_in);
    let ours = dir.path().join("ours_srgb.png");
    to_srgb(&output, &ours);
    let ours = image::open(&ours).unwrap();
    let original = image::open(&reference_in).unwrap();
    let gain_over_doing_nothing = psnr(&reference, &original);
    let score = psnr(&ours, &reference);
    eprintln!("merged vs full-resolution workflow: {score:.1} dB (the original: {gain_over_doing_nothing:.1} dB)");
    assert!(
        gain_over_doing_nothing < 30.0,
        "the workflow changes the colours"
    );
    assert!(score >= 40.0, "{score:.1} dB");
}

#[test]
fn when_comfyui_is_killed_mid_job_the_job_waits_and_completes_with_one_output_once_it_is_back() {
    let mut server = ComfyUi::start();
    let tree = coffee_through(
        &comfy_tool(&[server.url()], "tests/workflows/slow_blur.json"),
        "",
    );
    tree.wait_for("the slow node to run", || {
        tree.log().contains("ComfyUI runs node 3 (ImageBlur)")
    });
    server.kill();
    // `status` shows it waiting, with the reason.
    tree.wait_for("the job to wait for its tool", || {
        let status = tree.status();
        status.contains("waiting for tool for") && status.contains("is unreachable")
    });
    // Never quarantined, the original untouched.
    assert!(tree.inbox().join("coffee.png").is_file());
    assert!(files_in(&tree.path("var/failed/photos")).is_empty());
    server.restart();
    let output = wait_done(&tree, "coffee.png");
    assert_eq!(images(&tree).len(), 1);
    let provenance = sidecar(&tree, &output);
    // The restarted server had lost the prompt: a second attempt, submitted once.
    assert_eq!(provenance["proxy"]["tool"]["attempt"], 2, "{provenance:#}");
    assert_eq!(server.history_len(), 1);
    assert!(
        tree.log().contains("no longer has prompt"),
        "{}",
        tree.log()
    );
}

#[test]
fn darkroom_killed_right_after_submitting_finds_its_prompt_and_never_submits_it_twice() {
    let server = ComfyUi::start();
    let mut tree = coffee_through(
        &comfy_tool(&[server.url()], "tests/workflows/slow_blur.json"),
        "",
    );
    tree.wait_for("the submission", || {
        tree.log().contains("submitted to ComfyUI")
    });
    tree.kill_hard();
    tree.start();
    let output = wait_done(&tree, "coffee.png");
    let log = tree.log();
    assert!(
        log.contains("ComfyUI still has the prompt submitted before the restart")
            || log.contains("ComfyUI finished the prompt submitted before the restart"),
        "{log}"
    );
    assert_eq!(log.matches("submitted to ComfyUI").count(), 1, "{log}");
    assert_eq!(server.history_len(), 1, "one prompt ran in ComfyUI");
    assert_eq!(images(&tree).len(), 1);
    assert_eq!(sidecar(&tree, &output)["proxy"]["tool"]["attempt"], 1);
}

#[test]
fn a_workflow_with_a_node_type_comfyui_lacks_is_a_config_error_that_names_it() {
    let server = comfyui::shared();
    let tree = Tree::new(&config(
        "512x512",
        &comfy_tool(&[server.url()], "tests/workflows/missing_node.json"),
        "",
    ));
    let output = common::darkroom()
        .args(["check-config"])
        .arg(&tree.config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("has no node type UltimateSDUpscaleNoSuchNode"),
        "{stderr}"
    );
    assert!(stderr.contains("tool.workflow"), "{stderr}");
}

#[test]
fn a_workflow_that_fails_in_comfyui_fails_the_job_with_comfyuis_own_message() {
    let server = comfyui::shared();
    let tree = coffee_through(
        &comfy_tool(&[server.url()], "tests/workflows/fails_at_run_time.json"),
        "",
    );
    let sidecar = tree.wait_for_file(&tree.path("var/failed/photos"), |n| {
        n.ends_with(".error.json")
    });
    let error: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(sidecar).unwrap()).unwrap();
    let reason = error["reason"].as_str().unwrap();
    assert!(
        reason.contains("failed in ComfyUI: node 3 (ImageBlur)"),
        "{reason}"
    );
    assert!(
        reason.contains("Padding size should be less than"),
        "{reason}"
    );
    assert_eq!(error["kind"], "permanent");
    // Its proxy is not left behind for a return that cannot come.
    assert!(files_in(&tree.exchange_out()).is_empty());
}

#[test]
fn with_two_servers_and_one_of_them_down_every_job_goes_to_the_live_one() {
    let server = comfyui::shared();
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let mut tree = Tree::new(&config(
        "512x512",
        &comfy_tool(
            &[format!("http://127.0.0.1:{dead}"), server.url()],
            "config/workflows/grade.json",
        ),
        "",
    ));
    tree.start();
    for name in ["a.png", "b.png", "c.png"] {
        tree.drop_file("photo_coffee_600x400.png", name);
    }
    tree.wait_for("three outputs with their sidecars", || {
        files_in(&tree.path("var/metadata/photos")).len() == 3
    });
    for output in images(&tree) {
        let provenance = sidecar(&tree, &output);
        assert_eq!(provenance["proxy"]["tool"]["server"], server.url().as_str());
    }
    assert!(files_in(&tree.path("var/failed/photos")).is_empty());
}

#[test]
fn via_full_sends_the_whole_image_and_files_the_workflows_outputs_with_their_size_ratio() {
    let server = comfyui::shared();
    let tree = coffee_through(
        &comfy_tool(&[server.url()], "tests/workflows/upscale_x2.json"),
        "via = \"full\"",
    );
    let output = wait_done(&tree, "coffee.png");
    assert_eq!(image::image_dimensions(&output).unwrap(), (1200, 800));
    let provenance = sidecar(&tree, &output);
    assert_eq!(
        provenance["outputs"][0]["size_ratio"],
        serde_json::json!([2.0, 2.0])
    );
    assert_eq!(provenance["options"]["via"], "full");
    // No proxy was made.
    assert!(files_in(&tree.exchange_out()).is_empty());
}

#[test]
fn a_workflow_that_saves_two_images_gives_two_variants_and_rule_inputs_override_the_workflow() {
    let server = comfyui::shared();
    // The sample grade with its colour image made a batch of two (an `inputs` override): the
    // blend, and so the Save Image node, then gives two images.
    let tool = format!(
        "{{ comfyui = \"{}\", workflow = \"{}\", inputs = {{ \"2.batch_size\" = 2, \"3.blend_factor\" = 0.6 }} }}",
        server.url(),
        workflow("config/workflows/grade.json").display()
    );
    let mut tree = Tree::new(&config("512x512", &tool, ""));
    tree.start();
    tree.drop_file("photo_coffee_600x400.png", "coffee.png");
    // Each output's sidecar is written after it: wait for those.
    tree.wait_for("two variants with their sidecars", || {
        files_in(&tree.path("var/metadata/photos")).len() == 2
    });
    let names: Vec<String> = images(&tree)
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["coffee.png", "coffee_v2.png"]);
    for (variant, name) in [(1, "coffee.png"), (2, "coffee_v2.png")] {
        let provenance = sidecar(
            &tree,
            &tree.path(&format!("var/processed/photos/images/{name}")),
        );
        assert_eq!(provenance["return"]["variant"], variant);
        assert_eq!(provenance["return"]["pairing"], "tool");
    }
    // A stronger blend than the workflow's own 0.35: further from the original.
    let original = load(&testdata("photo_coffee_600x400.png")).image;
    let graded = load(&tree.path("var/processed/photos/images/coffee.png")).image;
    assert!(
        psnr(&original, &graded) < 25.0,
        "{:.1} dB",
        psnr(&original, &graded)
    );
}

#[test]
fn a_comfyui_server_that_does_not_answer_at_config_load_is_a_warning_not_an_error() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let tree = Tree::new(&config(
        "512x512",
        &comfy_tool(
            &[format!("http://127.0.0.1:{port}")],
            "config/workflows/grade.json",
        ),
        "",
    ));
    let output = common::darkroom()
        .args(["check-config"])
        .arg(&tree.config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: rule[0] 'photos'.tool.workflow: cannot check")
            && stderr.contains("its jobs wait for the server"),
        "{stderr}"
    );
}

#[test]
fn a_prompt_past_the_tools_timeout_is_taken_off_comfyui_and_the_job_fails_with_the_reason() {
    let server = comfyui::shared();
    let tool = format!(
        "{{ comfyui = \"{}\", workflow = \"{}\", timeout = \"1s\" }}",
        server.url(),
        workflow("tests/workflows/slow_blur.json").display()
    );
    let mut tree = Tree::new(
        &config("512x512", &tool, "").replace("[daemon]\n", "[daemon]\nmax_attempts = 1\n"),
    );
    tree.start();
    tree.drop_file("photo_coffee_600x400.png", "coffee.png");
    let sidecar = tree.wait_for_file(&tree.path("var/failed/photos"), |n| {
        n.ends_with(".error.json")
    });
    let error: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(sidecar).unwrap()).unwrap();
    let reason = error["reason"].as_str().unwrap();
    assert!(
        reason
            .contains("did not finish within the tool's timeout (1s); it was taken off the queue"),
        "{reason}"
    );
    // ComfyUI was told: the prompt leaves its queue (interrupted at its next node).
    let prompt = reason
        .split("prompt ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .to_string();
    tree.wait_for("the prompt to leave ComfyUI's queue", || {
        let queue = server.get("/queue").unwrap().to_string();
        !queue.contains(&prompt)
    });
}

#[test]
fn jobs_are_spread_over_two_live_servers() {
    let first = comfyui::shared();
    let second = ComfyUi::start();
    let mut tree = Tree::new(&config(
        "512x512",
        &comfy_tool(&[first.url(), second.url()], "config/workflows/grade.json"),
        "",
    ));
    tree.start();
    for name in ["a.png", "b.png", "c.png", "d.png"] {
        tree.drop_file("photo_coffee_600x400.png", name);
    }
    tree.wait_for("four outputs with their sidecars", || {
        files_in(&tree.path("var/metadata/photos")).len() == 4
    });
    let servers: std::collections::BTreeSet<String> = images(&tree)
        .iter()
        .map(|output| sidecar(&tree, output)["proxy"]["tool"]["server"].to_string())
        .collect();
    assert_eq!(servers.len(), 2, "{servers:?}");
    assert!(second.history_len() >= 1);
}
