//! Throwaway TLS servers for `tests/tls.rs`: a certificate authority made by
//! the test (rcgen, no external tool), a PostgreSQL cluster that accepts only
//! TLS (or only plaintext), and a `redis-server` listening only on a TLS port.
//!
//! Everything listens on 127.0.0.1 only. Each server is a drop guard: the
//! PostgreSQL one is stopped with `pg_ctl -m immediate` (SIGKILL of the
//! postmaster if that fails), the Redis one killed, and their temporary
//! directories removed. Every wait is bounded.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// A CA, a server certificate signed by it and a client certificate signed
/// by it, as PEM files in a temporary directory.
pub struct Pki {
    dir: tempfile::TempDir,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl Pki {
    /// A new CA with a name of its own; the server certificate is valid for
    /// `server_names` (DNS names or IP addresses), the client certificate's
    /// common name is `client_cn` (PostgreSQL's `clientcert=verify-full`
    /// compares it with the user name).
    pub fn new(server_names: &[&str], client_cn: &str) -> Pki {
        let name = format!("wsgate test CA {}", hex::encode(rand::random::<[u8; 4]>()));
        Pki::named(&name, server_names, client_cn)
    }

    /// Like [`Pki::new`] with the CA's common name given: a new CA named
    /// like another one is an impostor whose signatures do not verify.
    pub fn named(ca_name: &str, server_names: &[&str], client_cn: &str) -> Pki {
        let dir = tempfile::Builder::new()
            .prefix("wsgate-pki-")
            .tempdir()
            .expect("temp dir");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params
            .distinguished_name
            .push(DnType::CommonName, ca_name);
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();

        let names: Vec<String> = server_names.iter().map(|s| s.to_string()).collect();
        let mut server = CertificateParams::new(names).unwrap();
        server.distinguished_name.push(
            DnType::CommonName,
            server_names.first().copied().unwrap_or("server"),
        );
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_key = KeyPair::generate().unwrap();
        let server_cert = server.signed_by(&server_key, &ca).unwrap();

        let mut client = CertificateParams::new(Vec::<String>::new()).unwrap();
        client
            .distinguished_name
            .push(DnType::CommonName, client_cn);
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client_key = KeyPair::generate().unwrap();
        let client_cert = client.signed_by(&client_key, &ca).unwrap();

        let write = |name: &str, pem: String| {
            let path = dir.path().join(name);
            std::fs::write(&path, pem).expect("write PEM");
            path
        };
        Pki {
            ca: write("ca.pem", ca.pem()),
            server_cert: write("server.pem", server_cert.pem()),
            server_key: write("server.key", server_key.serialize_pem()),
            client_cert: write("client.pem", client_cert.pem()),
            client_key: write("client.key", client_key.serialize_pem()),
            dir,
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// A port free now on 127.0.0.1.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for_port(port: u16, what: &str) {
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{what} on {port} did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------
// PostgreSQL.

/// What the throwaway PostgreSQL accepts on 127.0.0.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgTls {
    /// `hostssl` only: a plaintext connection is refused by `pg_hba.conf`.
    Only,
    /// `hostssl … clientcert=verify-full`: TLS with a client certificate
    /// signed by the test CA whose common name is the user name.
    ClientCert,
    /// `ssl = off`, `host` only: the server answers `N` to a TLS request.
    Off,
}

/// The OS user that runs the server when the tests run as root.
const PG_USER: &str = "postgres";

pub struct TlsPg {
    pub port: u16,
    bin: PathBuf,
    dir: tempfile::TempDir,
    as_postgres: bool,
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

impl TlsPg {
    /// A new cluster serving `pki`'s server certificate (ignored for
    /// [`PgTls::Off`]), started and accepting connections; panics (after
    /// cleaning up) if it cannot.
    pub fn start(pki: &Pki, tls: PgTls) -> TlsPg {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let as_postgres = unsafe { libc::geteuid() } == 0;
        let dir = tempfile::Builder::new()
            .prefix("wsgate-tlspg-")
            .tempdir()
            .expect("temp dir");
        let server = TlsPg {
            port: free_port(),
            bin: pg_bin_dir(),
            dir,
            as_postgres,
        };
        let data = server.dir.path().join("data");
        // The server's key must belong to the server's user, mode 0600.
        for (from, to) in [
            (&pki.server_cert, "server.pem"),
            (&pki.server_key, "server.key"),
            (&pki.ca, "ca.pem"),
        ] {
            let dest = server.dir.path().join(to);
            std::fs::copy(from, &dest).expect("copy PEM");
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        server.chown();
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
        let hba = match tls {
            PgTls::Only => "hostssl all all 127.0.0.1/32 trust\n",
            PgTls::ClientCert => "hostssl all all 127.0.0.1/32 trust clientcert=verify-full\n",
            PgTls::Off => "host all all 127.0.0.1/32 trust\n",
        };
        std::fs::write(
            data.join("pg_hba.conf"),
            format!("local all all trust\n{hba}"),
        )
        .expect("write pg_hba.conf");
        let dir = server.dir.path().display();
        let ssl = match tls {
            PgTls::Off => "ssl = off\n".to_string(),
            PgTls::Only | PgTls::ClientCert => format!(
                "ssl = on\nssl_cert_file = '{dir}/server.pem'\nssl_key_file = '{dir}/server.key'\n\
                 ssl_ca_file = '{dir}/ca.pem'\n"
            ),
        };
        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .expect("postgresql.conf");
        std::io::Write::write_all(&mut conf, ssl.as_bytes()).unwrap();
        server.chown();

        let log = server.dir.path().join("server.log");
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            server.port, dir
        );
        let out = server.pg(
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
        wait_for_port(server.port, "postgres");
        server
    }

    /// Hands the directory to the server's user when we are root.
    fn chown(&self) {
        if !self.as_postgres {
            return;
        }
        let status = Command::new("chown")
            .arg("-R")
            .arg(format!("{PG_USER}:"))
            .arg(self.dir.path())
            .status()
            .expect("chown");
        assert!(status.success(), "chown {}", self.dir.path().display());
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

    /// `postgres://postgres:<password>@<host>:<port>/postgres?<query>`. The
    /// server trusts loopback, so the password is only there to check that
    /// no error prints it.
    pub fn url(&self, host: &str, query: &str) -> String {
        let sep = if query.is_empty() { "" } else { "?" };
        format!(
            "postgres://postgres:{PG_PASSWORD}@{host}:{}/postgres{sep}{query}",
            self.port
        )
    }

    fn postmaster_pid(&self) -> Option<u32> {
        let text =
            std::fs::read_to_string(self.dir.path().join("data").join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }
}

/// The password in [`TlsPg::url`] and [`TlsRedis::url`].
pub const PG_PASSWORD: &str = "pg-Secret-0xC0FFEE";

impl Drop for TlsPg {
    fn drop(&mut self) {
        let pid = self.postmaster_pid();
        let data = self.dir.path().join("data");
        let out = self.pg(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
        if !out.status.success()
            && let Some(pid) = pid
        {
            // SAFETY: kill(2) of the postmaster this guard started.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGKILL);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Redis.

/// The `requirepass` of every [`TlsRedis`].
pub const REDIS_PASSWORD: &str = "redis-Secret-0xBEEF";

/// A `redis-server` with only a TLS port (`--port 0`), killed on drop.
pub struct TlsRedis {
    pub port: u16,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

impl TlsRedis {
    /// Serves `pki`'s server certificate; with `client_certs`, clients must
    /// present a certificate signed by `pki`'s CA (`--tls-auth-clients yes`).
    pub fn start(pki: &Pki, client_certs: bool) -> TlsRedis {
        let dir = tempfile::Builder::new()
            .prefix("wsgate-tlsredis-")
            .tempdir()
            .expect("temp dir");
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--port", "0", "--bind", "127.0.0.1"])
            .args(["--tls-port", &port.to_string()])
            .arg("--tls-cert-file")
            .arg(&pki.server_cert)
            .arg("--tls-key-file")
            .arg(&pki.server_key)
            .arg("--tls-ca-cert-file")
            .arg(&pki.ca)
            .args([
                "--tls-auth-clients",
                if client_certs { "yes" } else { "no" },
            ])
            .args(["--requirepass", REDIS_PASSWORD])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let mut server = TlsRedis {
            port,
            child: Some(child),
            _dir: dir,
        };
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = server
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("redis-server exited at start ({status}); does it have TLS?");
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "redis-server on {port} did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    /// `rediss://:<password>@<host>:<port>`.
    pub fn url(&self, host: &str) -> String {
        format!("rediss://:{REDIS_PASSWORD}@{host}:{}", self.port)
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
