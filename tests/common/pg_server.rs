//! A throwaway PostgreSQL cluster for tests that stop, restart or freeze
//! Postgres; the shared server at 127.0.0.1:5432 is never touched.
//!
//! `initdb` into a temporary directory (trust authentication, fsync off),
//! then `pg_ctl start` on a free port with the Unix socket in that
//! directory. PostgreSQL refuses to run as root, so when the tests run as
//! root every `initdb`/`pg_ctl` call goes through `runuser -u postgres`, and
//! the directory is handed to that user first. Dropping the value stops the
//! server (`-m immediate`, then SIGKILL of the postmaster if that failed)
//! and removes the directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use super::ports::{free_port, wait_for_port};

/// The OS user that runs the server when the tests run as root.
const PG_USER: &str = "postgres";

pub struct PgServer {
    pub port: u16,
    bin: PathBuf,
    dir: tempfile::TempDir,
    as_postgres: bool,
    frozen: Vec<u32>,
}

/// The newest `/usr/lib/postgresql/<version>/bin` that has `initdb`.
fn pg_bin_dir() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server binaries under /usr/lib/postgresql")
        .filter_map(Result::ok)
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found
        .pop()
        .map(|(_, bin)| bin)
        .expect("no initdb under /usr/lib/postgresql/*/bin")
}

impl PgServer {
    /// Creates a cluster and starts it; panics (after cleaning up) if it
    /// cannot.
    pub fn start() -> PgServer {
        PgServer::start_with(|_, _| {})
    }

    /// As [`PgServer::start`], with `setup(dir, data)` run between `initdb`
    /// and the first start (configuration files, certificates in `dir`);
    /// what it writes is handed to the server's user.
    pub fn start_with(setup: impl FnOnce(&Path, &Path)) -> PgServer {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let as_postgres = unsafe { libc::geteuid() } == 0;
        let dir = tempfile::Builder::new()
            .prefix("wsgate-pg-")
            .tempdir()
            .expect("temp dir");
        if as_postgres {
            let status = Command::new("chown")
                .arg(format!("{PG_USER}:"))
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(status.success(), "chown {PG_USER} {}", dir.path().display());
        }
        let server = PgServer {
            port: free_port(),
            bin: pg_bin_dir(),
            dir,
            as_postgres,
            frozen: Vec::new(),
        };
        let data = server.data_dir();
        let out = server.pg(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
        );
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        setup(server.dir.path(), &data);
        if server.as_postgres {
            let status = Command::new("chown")
                .arg("-R")
                .arg(format!("{PG_USER}:"))
                .arg(server.dir.path())
                .status()
                .expect("chown");
            assert!(status.success(), "chown -R {}", server.dir.path().display());
        }
        server.start_again();
        server
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Runs one PostgreSQL binary, as the `postgres` user when we are root.
    fn pg(&self, tool: &str, args: &[&str]) -> Output {
        // `timeout` bounds every call, whatever the server does.
        let mut cmd = Command::new("timeout");
        cmd.arg("60");
        if self.as_postgres {
            cmd.args(["runuser", "-u", PG_USER, "--"]);
        }
        cmd.arg(self.bin.join(tool))
            .args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run {tool}: {e}"))
    }

    /// `postgres://postgres@127.0.0.1:<port>/<db>`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Starts the server (again) on the same port and data directory, and
    /// waits until it accepts connections.
    pub fn start_again(&self) {
        let data = self.data_dir();
        let log = self.dir.path().join("server.log");
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let out = self.pg(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-o",
                &opts,
                "-w",
                "-t",
                "30",
                "start",
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        wait_for_postgres(self.port, true);
    }

    /// `pg_ctl stop -m immediate`: like a crash of the database server; its
    /// connections are cut and the port is closed.
    pub fn stop_immediate(&mut self) {
        self.thaw();
        let out = self.pg_ctl_stop();
        assert!(
            out.status.success(),
            "pg_ctl stop failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        wait_for_postgres(self.port, false);
    }

    /// `pg_ctl stop -m immediate`, waiting for it.
    fn pg_ctl_stop(&self) -> Output {
        let data = self.data_dir();
        self.pg(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        )
    }

    /// The postmaster's pid, from `postmaster.pid`, while it runs.
    fn postmaster_pid(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.data_dir().join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// SIGSTOP to the postmaster and every backend it forked: the port stays
    /// open but nothing answers (a hung database, not a dead one).
    pub fn freeze(&mut self) {
        let pid = self.postmaster_pid().expect("postmaster running");
        let mut pids = vec![pid];
        let out = Command::new("pgrep")
            .args(["-P", &pid.to_string()])
            .output()
            .expect("pgrep");
        pids.extend(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| l.trim().parse::<u32>().ok()),
        );
        for &p in &pids {
            signal(p, libc::SIGSTOP);
        }
        self.frozen = pids;
    }

    /// Undoes [`PgServer::freeze`].
    pub fn thaw(&mut self) {
        for p in self.frozen.drain(..) {
            signal(p, libc::SIGCONT);
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) with a pid this test started (a postmaster or its
    // child) and a plain signal number.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

fn wait_for_postgres(port: u16, up: bool) {
    wait_for_port(port, up, Duration::from_secs(30), "postgres");
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.thaw();
        let pid = self.postmaster_pid();
        let out = self.pg_ctl_stop();
        if !out.status.success()
            && let Some(pid) = pid
        {
            // Still running (pg_ctl failed or timed out): kill it outright.
            signal(pid, libc::SIGKILL);
        }
    }
}
