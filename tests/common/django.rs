//! The example Django project (`examples/django`) in the Python virtualenv
//! of `scripts/install-python-tools.sh`: `manage.py` commands, and the
//! project served over HTTP (`runserver`) for wsgate to call, stopped on
//! drop. A missing virtualenv fails the test; it never skips.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::ports::{free_port, wait_for_port};

pub const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/django");
/// The checkout's `wsgate` Python package, first on `PYTHONPATH`, so the
/// example runs with this checkout's client rather than the installed one.
const PYTHON_CLIENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/clients/python/src");

/// The virtualenv's python.
pub fn venv_python() -> PathBuf {
    let venv = std::env::var_os("WSGATE_PYENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").expect("HOME is set");
            Path::new(&home).join(".cache/wsgate-pyenv")
        });
    let python = venv.join("bin/python");
    assert!(
        python.exists(),
        "the Python virtualenv is missing ({}): run `bash scripts/install-python-tools.sh` first",
        python.display()
    );
    python
}

/// Runs `manage.py <args>` in the example with `env`; returns stdout, failing
/// the test on a non-zero exit.
pub async fn manage(args: &[&str], env: &[(&str, &str)]) -> String {
    let mut command = Command::new(venv_python());
    command
        .arg("manage.py")
        .args(args)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONPATH", PYTHON_CLIENT)
        .envs(env.iter().map(|(k, v)| (k.to_string(), v.to_string())))
        .current_dir(EXAMPLE);
    let shown = format!("{args:?}");
    tokio::task::spawn_blocking(move || {
        let out = command.output().expect("python runs");
        assert!(
            out.status.success(),
            "manage.py {shown} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    })
    .await
    .unwrap()
}

/// `manage.py runserver` on a free loopback port.
pub struct DjangoServer {
    pub port: u16,
    child: Child,
}

impl DjangoServer {
    pub fn start(env: &[(&str, &str)]) -> DjangoServer {
        let port = free_port();
        let child = Command::new(venv_python())
            .args(["manage.py", "runserver", "--noreload"])
            .arg(format!("127.0.0.1:{port}"))
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("PYTHONPATH", PYTHON_CLIENT)
            .envs(env.iter().map(|(k, v)| (k.to_string(), v.to_string())))
            .current_dir(EXAMPLE)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start runserver");
        wait_for_port(port, true, Duration::from_secs(30), "django runserver");
        DjangoServer { port, child }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for DjangoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
