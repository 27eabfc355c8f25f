//! A real ComfyUI server for the connector tests: ComfyUI 0.3.64 from
//! `../shared/third_party/comfyui`, run on the CPU by the venv `scripts/setup-comfyui`
//! installs, with a base folder of its own in a temp dir, on a free port.

use super::free_port;
use super::shared_dir;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long ComfyUI may take to start listening (22-36 s alone on a 2-core machine; several
/// tests start theirs at once).
const START_PATIENCE: Duration = Duration::from_secs(240);

pub struct ComfyUi {
    pub port: u16,
    pub base: tempfile::TempDir,
    child: Option<Child>,
}

/// The ComfyUI venv's Python; fails with what to run when it is missing.
fn python() -> PathBuf {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv-comfyui/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: run scripts/setup-comfyui (scripts/test does)",
        python.display()
    );
    python
}

impl ComfyUi {
    /// Starts a server and waits until it answers.
    pub fn start() -> ComfyUi {
        let base = tempfile::tempdir().unwrap();
        for dir in ["custom_nodes", "models", "input", "output", "temp", "user"] {
            std::fs::create_dir_all(base.path().join(dir)).unwrap();
        }
        let mut server = ComfyUi {
            port: free_port(),
            base,
            child: None,
        };
        server.launch();
        server
    }

    fn launch(&mut self) {
        assert!(self.child.is_none());
        let main = shared_dir().join("third_party/comfyui/main.py");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let mut command = Command::new(python());
        // SAFETY: prctl(2) with plain integers, between fork and exec: the server dies with
        // the thread that started it, so no test run leaves one behind.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = command
            .arg("-B")
            .arg(&main)
            .args(["--cpu", "--listen", "127.0.0.1", "--port"])
            .arg(self.port.to_string())
            .arg("--disable-auto-launch")
            .arg("--base-directory")
            .arg(self.base.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let started = Instant::now();
        while self.get("/queue").is_none() {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("ComfyUI exited ({status}); its log:\n{}", self.log());
            }
            assert!(
                started.elapsed() < START_PATIENCE,
                "ComfyUI did not start listening; its log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn log_path(&self) -> PathBuf {
        self.base.path().join("comfyui.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// `kill -9` of the server and everything it started.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on the process group of our own child; plain integers.
            unsafe {
                libc::kill(-(child.id() as i32), libc::SIGKILL);
            }
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and folders (its queue and history are gone, as
    /// after any ComfyUI restart).
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    /// GET `path` as JSON, `None` when the server does not answer.
    pub fn get(&self, path: &str) -> Option<serde_json::Value> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        let mut response = agent.get(format!("{}{path}", self.url())).call().ok()?;
        let text = response.body_mut().read_to_string().ok()?;
        serde_json::from_str(&text).ok()
    }

    /// How many prompts the server has run since it started.
    pub fn history_len(&self) -> usize {
        self.get("/history")
            .and_then(|h| h.as_object().map(|o| o.len()))
            .expect("ComfyUI answers /history")
    }
}

/// One server shared by the tests that neither stop nor restart it. It is started by a thread
/// that lives as long as the test run, so it stays up between tests and dies with the run.
pub fn shared() -> &'static ComfyUi {
    static SHARED: std::sync::OnceLock<&'static ComfyUi> = std::sync::OnceLock::new();
    SHARED.get_or_init(|| {
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let server: &'static ComfyUi = Box::leak(Box::new(ComfyUi::start()));
            sender.send(server).unwrap();
            loop {
                std::thread::park();
            }
        });
        receiver.recv().expect("the shared ComfyUI started")
    })
}

impl Drop for ComfyUi {
    fn drop(&mut self) {
        self.kill();
    }
}
