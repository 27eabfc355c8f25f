//! Several real `darkroom serve` processes sharing one tree and one PostgreSQL journal, as
//! hosts of a cluster do: each with its own host name, state and log folders.

use super::daemon::{files_in, serve_args, PATIENCE};
use super::postgres::PgServer;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

pub struct Host {
    pub name: String,
    pub config: PathBuf,
    pub stderr: PathBuf,
    pub child: Option<Child>,
    starts: usize,
}

pub struct Cluster {
    /// The shared tree (`var/`), and each host's config, state and logs.
    pub dir: tempfile::TempDir,
    pub hosts: Vec<Host>,
}

impl Cluster {
    /// `count` hosts named `a`, `b`, ... on `server`'s journal. `daemon_extra` and
    /// `rule_extra` are added to every host's `[daemon]` table and to the `photos` rule.
    pub fn new(server: &PgServer, count: usize, daemon_extra: &str, rule_extra: &str) -> Cluster {
        Cluster::with_extras(server, &vec![daemon_extra; count], rule_extra)
    }

    /// One host per entry of `daemon_extras`, each with those lines in its `[daemon]`.
    pub fn with_extras(server: &PgServer, daemon_extras: &[&str], rule_extra: &str) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("var");
        let hosts = daemon_extras
            .iter()
            .enumerate()
            .map(|(i, daemon_extra)| {
                let name = ((b'a' + i as u8) as char).to_string();
                let config = dir.path().join(format!("{name}.toml"));
                let text = format!(
                    "[daemon]\nroot = \"{root}\"\nstate_dir = \"{state}\"\nlog_dir = \"{logs}\"\n\
                     journal = \"{url}\"\nhost = \"{name}\"\nlease_timeout = \"3s\"\n\
                     stability_window = \"500ms\"\nincomplete_grace = \"1s\"\nretry_backoff = \"200ms\"\n\
                     shutdown_timeout = \"20s\"\nlog_level = \"info\"\nworkers = 1\n{daemon_extra}\n\n\
                     [[rule]]\nname = \"photos\"\nrecipe = \"split-to-proxy\"\nsize = \"256x256\"\n{rule_extra}\n\n\
                     [http]\nlisten = \"127.0.0.1:0\"\n",
                    root = root.display(),
                    state = dir.path().join(format!("state-{name}")).display(),
                    logs = dir.path().join(format!("logs-{name}")).display(),
                    url = server.url(),
                );
                std::fs::write(&config, text).unwrap();
                Host {
                    stderr: dir.path().join(format!("{name}.stderr")),
                    name,
                    config,
                    child: None,
                    starts: 0,
                }
            })
            .collect();
        Cluster { dir, hosts }
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    pub fn inbox(&self) -> PathBuf {
        self.path("var/inbox/photos")
    }

    pub fn start_all(&mut self) {
        for index in 0..self.hosts.len() {
            self.start(index);
        }
    }

    pub fn start(&mut self, index: usize) {
        let host = &mut self.hosts[index];
        assert!(host.child.is_none(), "host {} already runs", host.name);
        host.starts += 1;
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&host.stderr)
            .unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_darkroom"));
        serve_args(&mut command, &host.config, stderr);
        host.child = Some(command.spawn().unwrap());
        let starts = host.starts;
        self.wait_for(&format!("host {} to start", self.hosts[index].name), |c| {
            c.log(index).matches("darkroom is running").count() >= starts
        });
    }

    /// The HTTP API of a host (its listener writes the port it got to its state folder).
    pub fn base_url(&self, index: usize) -> String {
        let file = self.path(&format!("state-{}/http.address", self.hosts[index].name));
        let address = std::fs::read_to_string(file).expect("the host's listener address");
        format!("http://{}", address.trim())
    }

    pub fn pid(&self, index: usize) -> i32 {
        self.hosts[index].child.as_ref().expect("host running").id() as i32
    }

    pub fn signal(&self, index: usize, signal: i32) {
        // SAFETY: kill(2) takes plain integers; the pid is our own child's.
        assert_eq!(unsafe { libc::kill(self.pid(index), signal) }, 0);
    }

    /// `kill -9`.
    pub fn kill_hard(&mut self, index: usize) {
        let mut child = self.hosts[index].child.take().expect("host running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    pub fn log(&self, index: usize) -> String {
        std::fs::read_to_string(&self.hosts[index].stderr).unwrap_or_default()
    }

    /// Every host's log, for a failing test's message.
    pub fn logs(&self) -> String {
        (0..self.hosts.len())
            .map(|i| format!("--- host {} ---\n{}", self.hosts[i].name, self.log(i)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Polls `condition` until it holds, or fails the test with every host's log.
    pub fn wait_for(&self, what: &str, mut condition: impl FnMut(&Cluster) -> bool) {
        let deadline = Instant::now() + PATIENCE * 2;
        while !condition(self) {
            if Instant::now() > deadline {
                panic!("timed out waiting for {what}; logs:\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Copies a corpus file into the inbox under `as_name`, whole (temp name, then rename).
    pub fn drop_file(&self, corpus_name: &str, as_name: &str) {
        std::fs::create_dir_all(self.inbox()).unwrap();
        let temp = self.inbox().join(format!(".{as_name}.part"));
        std::fs::copy(super::testdata(corpus_name), &temp).unwrap();
        std::fs::rename(&temp, self.inbox().join(as_name)).unwrap();
    }

    /// Visible files in a folder of the shared tree.
    pub fn files(&self, relative: &str) -> Vec<PathBuf> {
        files_in(&self.path(relative))
    }

    /// Fails the test when a darkroom temp file is left anywhere in the shared tree.
    pub fn assert_no_temp_files(&self) {
        let left = self.temp_files();
        assert!(left.is_empty(), "temp files left: {left:?}");
    }

    /// darkroom temp files anywhere in the shared tree.
    pub fn temp_files(&self) -> Vec<PathBuf> {
        fn walk(dir: &Path, found: &mut Vec<PathBuf>) {
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    walk(&path, found);
                } else if entry
                    .file_name()
                    .to_string_lossy()
                    .starts_with(".darkroom-tmp-")
                {
                    found.push(path);
                }
            }
        }
        let mut found = Vec::new();
        walk(&self.path("var"), &mut found);
        found
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for host in &mut self.hosts {
            if let Some(mut child) = host.child.take() {
                // A host stopped by a test must be continued to die.
                // SAFETY: kill(2) on our own child.
                unsafe { libc::kill(child.id() as i32, libc::SIGCONT) };
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
