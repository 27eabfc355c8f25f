//! Running the real `darkroom serve` as a subprocess on a temp tree, and acting as the
//! external model tool beside it.

use super::testdata;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long a test waits for anything the daemon should do (generous: CI may be slow).
pub const PATIENCE: Duration = Duration::from_secs(90);

/// A temp tree with a config, and the daemon running on it (when started).
pub struct Tree {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub child: Option<Child>,
    pub stderr_path: PathBuf,
    starts: usize,
}

/// The config every daemon test starts from: one split-to-proxy rule `photos`, a short
/// stability window and incomplete grace, 512x512 proxies. `rule_extra` lines are appended
/// to the rule.
pub fn config_text(daemon_extra: &str, rule_extra: &str) -> String {
    config_with_grace("1s", daemon_extra, rule_extra)
}

/// [`config_text`] with another `incomplete_grace`.
pub fn config_with_grace(incomplete_grace: &str, daemon_extra: &str, rule_extra: &str) -> String {
    format!(
        "[daemon]\nroot = \"var\"\nstability_window = \"500ms\"\nincomplete_grace = \"{incomplete_grace}\"\nretry_backoff = \"200ms\"\nshutdown_timeout = \"60s\"\nlog_level = \"info\"\n{daemon_extra}\n\n\
         [[rule]]\nname = \"photos\"\nrecipe = \"split-to-proxy\"\nsize = \"512x512\"\n{rule_extra}\n"
    )
}

/// `serve --config CONFIG` on `command`, outside systemd, logging at the config's level to
/// `stderr`.
pub fn serve_args(command: &mut Command, config: &Path, stderr: std::fs::File) {
    command
        .args(["serve", "--config"])
        .arg(config)
        .env_remove("RUST_LOG")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
}

impl Tree {
    pub fn new(config: &str) -> Tree {
        // Tests run side by side: each daemon's listener takes a port the system picks
        // (it writes the address to state/http.address), unless the test sets [http].
        let config = if config.contains("[http]") {
            config.to_string()
        } else {
            format!("{config}\n[http]\nlisten = \"127.0.0.1:0\"\n")
        };
        let config = config.as_str();
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("darkroom.toml");
        std::fs::write(&config_path, config).unwrap();
        let stderr_path = dir.path().join("daemon.stderr");
        Tree {
            dir,
            config: config_path,
            child: None,
            stderr_path,
            starts: 0,
        }
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    pub fn inbox(&self) -> PathBuf {
        self.path("var/inbox/photos")
    }

    pub fn exchange_out(&self) -> PathBuf {
        self.path("var/exchange/out/photos")
    }

    pub fn exchange_in(&self) -> PathBuf {
        self.path("var/exchange/in/photos")
    }

    /// Starts `darkroom serve` with extra environment variables.
    pub fn start_with_env(&mut self, env: &[(&str, &str)]) {
        self.start_wrapped(&[], env);
    }

    /// Starts `darkroom serve` under a wrapper command (`prlimit ...`, `setpriv ...`,
    /// `strace ...`), which gets the darkroom binary and its arguments appended.
    pub fn start_wrapped(&mut self, wrapper: &[&str], env: &[(&str, &str)]) {
        assert!(self.child.is_none(), "daemon already running");
        self.starts += 1;
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.stderr_path)
            .unwrap();
        let mut command = match wrapper.split_first() {
            None => Command::new(env!("CARGO_BIN_EXE_darkroom")),
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(env!("CARGO_BIN_EXE_darkroom"));
                c
            }
        };
        serve_args(&mut command, &self.config, stderr);
        super::with_models(&mut command);
        for (k, v) in env {
            command.env(k, v);
        }
        self.child = Some(command.spawn().unwrap());
        self.wait_for("the daemon to start", || {
            self.log().matches("darkroom is running").count() >= self.starts
        });
    }

    pub fn start(&mut self) {
        self.start_with_env(&[]);
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("daemon running").id() as i32
    }

    /// The darkroom process: the child itself, or the child of a wrapper that forks it
    /// (strace).
    pub fn daemon_pid(&self) -> i32 {
        let pid = self.pid();
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        children
            .split_whitespace()
            .next()
            .map_or(pid, |c| c.parse().unwrap())
    }

    /// The daemon's peak resident memory so far (VmHWM), in MiB.
    pub fn peak_rss_mib(&self) -> f64 {
        proc_status_mib(self.daemon_pid(), "VmHWM")
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) takes plain integers; the pid is our own child's.
        assert_eq!(unsafe { libc::kill(self.pid(), signal) }, 0);
    }

    /// Waits for the daemon to exit and returns its status.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("daemon running");
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("the daemon did not exit; its log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `kill -9`.
    pub fn kill_hard(&mut self) {
        let mut child = self.child.take().expect("daemon running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Everything the daemon wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// The processing log's lines.
    pub fn processing_log(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.path("var/metadata/processing_log.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Polls `condition` until it holds, or fails the test with the daemon's log.
    pub fn wait_for(&self, what: &str, mut condition: impl FnMut() -> bool) {
        let deadline = Instant::now() + PATIENCE;
        while !condition() {
            if Instant::now() > deadline {
                panic!("timed out waiting for {what}; daemon log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Waits until `dir` holds a file whose name satisfies `matches`; returns its path.
    pub fn wait_for_file(&self, dir: &Path, matches: impl Fn(&str) -> bool) -> PathBuf {
        let mut found = None;
        self.wait_for(&format!("a file in {}", dir.display()), || {
            found = files_in(dir).into_iter().find(|p| {
                let name = p.file_name().unwrap().to_string_lossy();
                !name.starts_with('.') && matches(&name)
            });
            found.is_some()
        });
        found.unwrap()
    }

    /// Copies a corpus file into the inbox the way `cp` does (written in place, then closed).
    pub fn drop_file(&self, corpus_name: &str, as_name: &str) -> PathBuf {
        let target = self.inbox().join(as_name);
        std::fs::create_dir_all(self.inbox()).unwrap();
        std::fs::copy(testdata(corpus_name), &target).unwrap();
        target
    }

    /// `darkroom status` for this tree.
    pub fn status(&self) -> String {
        let config = self.config.to_str().expect("temp paths are UTF-8");
        let out = super::run_ok(self.dir.path(), &["status", "--config", config]);
        String::from_utf8(out.stdout).unwrap()
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Visible plain files in `dir` (not recursive, no dotfiles such as darkroom's temp files
/// being written), sorted; empty when it does not exist.
pub fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// A proxy's PNG bytes with every channel lifted by `lift` (a stand-in for a model's edit).
pub fn graded_proxy_bytes(proxy: &[u8], lift: u8) -> Vec<u8> {
    let image = image::load_from_memory(proxy).unwrap().to_rgb8();
    let graded = image::RgbImage::from_fn(image.width(), image.height(), |x, y| {
        let p = image.get_pixel(x, y).0;
        image::Rgb(p.map(|v| v.saturating_add(lift)))
    });
    let mut bytes = Vec::new();
    graded
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .unwrap();
    bytes
}

/// Acts as the external model: brightens the proxy by `lift` levels and writes the result
/// as `name` in `dir`, either in place (`via_rename` false) or through a hidden temp file
/// renamed into place.
pub fn write_graded_proxy(
    proxy: &Path,
    dir: &Path,
    name: &str,
    lift: u8,
    via_rename: bool,
) -> PathBuf {
    let bytes = graded_proxy_bytes(&std::fs::read(proxy).unwrap(), lift);
    std::fs::create_dir_all(dir).unwrap();
    let target = dir.join(name);
    if via_rename {
        let temp = dir.join(format!(".{name}.writing"));
        std::fs::write(&temp, &bytes).unwrap();
        std::fs::rename(&temp, &target).unwrap();
    } else {
        let mut file = std::fs::File::create(&target).unwrap();
        file.write_all(&bytes).unwrap();
    }
    target
}

/// Mean of all samples of an image, in 8-bit units.
pub fn mean_level(path: &Path) -> f64 {
    let image = image::open(path).unwrap().to_rgb8();
    image.as_raw().iter().map(|&v| f64::from(v)).sum::<f64>() / image.as_raw().len() as f64
}

/// Hidden temp files left anywhere under `dir` (there must be none once jobs are done).
pub fn temp_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if entry
                .file_name()
                .to_string_lossy()
                .starts_with(".darkroom-tmp-")
            {
                found.push(path);
            }
        }
    }
    found
}

/// A memory line (`VmRSS`, `VmHWM`, ...) of `/proc/PID/status`, in MiB.
pub fn proc_status_mib(pid: i32, key: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{key} in /proc/{pid}/status"));
    kib / 1024.0
}
