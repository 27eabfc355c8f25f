//! A real PostgreSQL server of its own for a test: `initdb` into a temp folder, started
//! with `pg_ctl` on a free port (as the `postgres` user when the tests run as root, since
//! the server refuses to run as root), stopped and started again at will, and removed when
//! dropped. The server comes from Debian's `postgresql` package, which `scripts/test`
//! installs.

use super::free_port;
use std::path::PathBuf;
use std::process::{Command, Output};

pub struct PgServer {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
    /// Run the server's programs as the `postgres` user (the tests run as root).
    as_postgres: bool,
}

/// The newest installed server's programs (`/usr/lib/postgresql/<version>/bin`).
fn server_bin() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| entries.flatten().map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    versions.retain(|bin| bin.join("initdb").is_file());
    versions.sort();
    versions.pop().expect(
        "the cluster tests need a PostgreSQL server: install Debian's postgresql package \
         (scripts/test does)",
    )
}

impl PgServer {
    pub fn start() -> PgServer {
        let bin = server_bin();
        // SAFETY: geteuid has no preconditions.
        let as_postgres = unsafe { libc::geteuid() } == 0;
        let dir = tempfile::Builder::new()
            .prefix("darkroom-pg-")
            .tempdir_in("/tmp")
            .unwrap();
        if as_postgres {
            let status = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(
                status.success(),
                "cannot hand the server's folder to postgres"
            );
        }
        let mut server = PgServer {
            dir,
            bin,
            port: free_port(),
            as_postgres,
        };
        let data = server.data();
        server.run_ok(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "darkroom",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        // The port was free a moment ago; a test beside this one may have taken it since.
        for _ in 0..3 {
            if server.pg_ctl_start().status.success() {
                return server;
            }
            server.port = free_port();
        }
        server.start_again();
        server
    }

    fn pg_ctl_start(&self) -> Output {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("server.log").display().to_string();
        self.command("pg_ctl")
            .args([
                "-D",
                &self.data(),
                "-l",
                &log,
                "-o",
                &options,
                "-w",
                "start",
            ])
            .output()
            .unwrap()
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    fn run_ok(&self, program: &str, args: &[&str]) -> Output {
        let out = self.command(program).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{program} {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// The URL a darkroom `[daemon] journal` names.
    pub fn url(&self) -> String {
        format!("postgresql://darkroom@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts the server (again, after [`PgServer::stop`]) and waits until it answers.
    pub fn start_again(&self) {
        let out = self.pg_ctl_start();
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
    }

    /// Stops the server, disconnecting every client (`pg_ctl stop -m fast`).
    pub fn stop(&self) {
        self.run_ok("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "stop"]);
    }

    /// Runs SQL with `psql` and returns its unaligned output.
    pub fn psql(&self, sql: &str) -> String {
        let out = self.run_ok(
            "psql",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "darkroom",
                "-d",
                "postgres",
                "-At",
                "-c",
                sql,
            ],
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The server's own log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .args(["-D", &self.data(), "-m", "immediate", "-w", "stop"])
            .output();
    }
}
