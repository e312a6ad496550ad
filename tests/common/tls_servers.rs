//! Throwaway TLS servers for `tests/tls.rs`: a certificate authority made by
//! the test (rcgen, no external tool), a PostgreSQL cluster that accepts only
//! TLS (or only plaintext), and a `redis-server` listening only on a TLS port.
//!
//! Everything listens on 127.0.0.1 only. Each server is a drop guard: the
//! PostgreSQL one is stopped with `pg_ctl -m immediate` (SIGKILL of the
//! postmaster if that fails), the Redis one killed, and their temporary
//! directories removed. Every wait is bounded.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::pg_server::PgServer;
use super::ports::free_port;

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

/// A throwaway PostgreSQL ([`PgServer`]) configured for TLS; stopped on drop.
pub struct TlsPg {
    server: PgServer,
}

impl TlsPg {
    /// A new cluster serving `pki`'s server certificate (ignored for
    /// [`PgTls::Off`]), started and accepting connections; panics (after
    /// cleaning up) if it cannot.
    pub fn start(pki: &Pki, tls: PgTls) -> TlsPg {
        let server = PgServer::start_with(|dir, data| {
            // The server's key must belong to the server's user, mode 0600
            // (start_with hands the files over).
            for (from, to) in [
                (&pki.server_cert, "server.pem"),
                (&pki.server_key, "server.key"),
                (&pki.ca, "ca.pem"),
            ] {
                let dest = dir.join(to);
                std::fs::copy(from, &dest).expect("copy PEM");
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o600)).unwrap();
            }
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
            let dir = dir.display();
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
        });
        TlsPg { server }
    }

    /// `postgres://postgres:<password>@<host>:<port>/postgres?<query>`. The
    /// server trusts loopback, so the password is only there to check that
    /// no error prints it.
    pub fn url(&self, host: &str, query: &str) -> String {
        let sep = if query.is_empty() { "" } else { "?" };
        format!(
            "postgres://postgres:{PG_PASSWORD}@{host}:{}/postgres{sep}{query}",
            self.server.port
        )
    }
}

/// The password in [`TlsPg::url`] and [`TlsRedis::url`].
pub const PG_PASSWORD: &str = "pg-Secret-0xC0FFEE";

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
