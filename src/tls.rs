//! TLS to the backing services.
//!
//! **PostgreSQL.** sqlx does the TLS (rustls with ring; the system's CA
//! store, plus the `sslrootcert` file when given) and reads the standard
//! options from `database.url` (`sslmode`, `sslrootcert`, `sslcert`,
//! `sslkey`) or from `PGSSLMODE`, `PGSSLROOTCERT`, `PGSSLCERT`, `PGSSLKEY`.
//! The `Any` pool of the stores and the revocation `PgListener` both parse
//! the URL the same way. This module checks, at start-up, that the files
//! those options name can be read and parsed ([`check_postgres_url`]), warns
//! about modes that do not verify the server ([`postgres_warning`]), and
//! turns sqlx's TLS failures into one line that says what went wrong
//! ([`postgres_error`]).
//!
//! **Redis.** fred does the TLS for `rediss://`; with `redis.tls_ca_file`
//! (or a client certificate, `redis.tls_cert_file` + `redis.tls_key_file`)
//! [`client_config`] builds the rustls configuration from those PEM files.
//!
//! Nothing here knows the configuration types: callers pass the paths and
//! the name of the section the keys belong to, so errors name the key.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{CertificateError, ClientConfig, RootCertStore};

/// A TLS file that cannot be used, with the configuration key naming it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct TlsFileError {
    pub key: String,
    pub message: String,
}

/// The `<section>.tls_ca_file`, `tls_cert_file` and `tls_key_file` keys.
#[derive(Debug, Clone, Copy)]
pub struct ClientTlsFiles<'a> {
    /// The configuration section, e.g. `redis`.
    pub section: &'a str,
    pub ca: Option<&'a Path>,
    pub cert: Option<&'a Path>,
    pub key: Option<&'a Path>,
}

impl ClientTlsFiles<'_> {
    pub fn is_empty(&self) -> bool {
        self.ca.is_none() && self.cert.is_none() && self.key.is_none()
    }

    fn error(&self, key: &str, message: impl Into<String>) -> TlsFileError {
        TlsFileError {
            key: format!("{}.{key}", self.section),
            message: message.into(),
        }
    }
}

/// The rustls client configuration the files ask for, or `None` when none
/// is set (the client library's default then applies). With a CA file, the
/// server must present a certificate from one of its CAs (the system's
/// store is not consulted); without one, the system's store is used. The
/// client certificate and its key come together.
pub fn client_config(files: &ClientTlsFiles) -> Result<Option<ClientConfig>, TlsFileError> {
    if files.is_empty() {
        return Ok(None);
    }
    let roots = match files.ca {
        Some(path) => ca_roots(path).map_err(|m| files.error("tls_ca_file", m))?,
        None => system_roots(),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| files.error("tls_ca_file", e.to_string()))?
        .with_root_certificates(roots);
    let config = match (files.cert, files.key) {
        (None, None) => builder.with_no_client_auth(),
        (Some(_), None) => {
            return Err(files.error(
                "tls_key_file",
                format!("required with {}.tls_cert_file", files.section),
            ));
        }
        (None, Some(_)) => {
            return Err(files.error(
                "tls_cert_file",
                format!("required with {}.tls_key_file", files.section),
            ));
        }
        (Some(cert), Some(key)) => {
            let chain = certificates(cert).map_err(|m| files.error("tls_cert_file", m))?;
            let key = private_key(key).map_err(|m| files.error("tls_key_file", m))?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                files.error(
                    "tls_key_file",
                    format!("does not go with {}.tls_cert_file: {e}", files.section),
                )
            })?
        }
    };
    Ok(Some(config))
}

/// A rustls client configuration on ring with the system's CA store (the
/// JWKS fetch of `auth.jwt_jwks_url`).
pub fn system_client_config() -> Result<ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(system_roots())
        .with_no_client_auth())
}

/// Every certificate in the PEM file at `path` (at least one).
fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let shown = path.display();
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read {shown}: {}", pem_error(e)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{shown}: {}", pem_error(e)))?;
    if certs.is_empty() {
        return Err(format!("{shown}: no PEM certificate in it"));
    }
    Ok(certs)
}

/// The CAs in the PEM file at `path`, as trust anchors.
fn ca_roots(path: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(path)? {
        roots
            .add(cert)
            .map_err(|e| format!("{}: not a usable CA certificate: {e}", path.display()))?;
    }
    Ok(roots)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) in the PEM file at `path`.
fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            format!("{}: no PEM private key in it", path.display())
        }
        e => format!("cannot read {}: {}", path.display(), pem_error(e)),
    })
}

fn pem_error(e: rustls::pki_types::pem::Error) -> String {
    match e {
        rustls::pki_types::pem::Error::Io(io) => io.to_string(),
        other => format!("not valid PEM ({other})"),
    }
}

/// The system's CA store (what fred uses for a plain `rediss://`).
fn system_roots() -> RootCertStore {
    let mut roots = RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for error in &found.errors {
        tracing::warn!(error = %error, "cannot load a system CA certificate");
    }
    roots.add_parsable_certificates(found.certs);
    roots
}

// ---------------------------------------------------------------------------
// PostgreSQL.

/// The options of a `postgres://` URL that name files, with the variable
/// that stands in for each when the URL does not set it.
const PG_FILE_OPTIONS: [(&[&str], &str); 3] = [
    (&["sslrootcert", "ssl-root-cert", "ssl-ca"], "PGSSLROOTCERT"),
    (&["sslcert", "ssl-cert"], "PGSSLCERT"),
    (&["sslkey", "ssl-key"], "PGSSLKEY"),
];

/// The effective `sslmode` and file options of a `postgres://` URL: the URL's
/// query first, then the `PG*` variables (as sqlx reads them).
fn postgres_tls_options(url: &str) -> Option<(String, Vec<(&'static str, String)>)> {
    let parsed = url::Url::parse(url).ok()?;
    let query: Vec<(String, String)> = parsed.query_pairs().into_owned().collect();
    let param = |names: &[&str]| {
        query
            .iter()
            .rev()
            .find(|(k, _)| names.contains(&k.as_str()))
            .map(|(_, v)| v.clone())
    };
    let mode = param(&["sslmode", "ssl-mode"])
        .or_else(|| std::env::var("PGSSLMODE").ok())
        .unwrap_or_else(|| "prefer".into())
        .to_ascii_lowercase();
    let files = PG_FILE_OPTIONS
        .iter()
        .filter_map(|(names, var)| {
            let value = param(names).or_else(|| std::env::var(var).ok())?;
            Some((names[0], value))
        })
        .collect();
    Some((mode, files))
}

/// Checks that the files `sslrootcert`, `sslcert` and `sslkey` name (in the
/// URL or the `PG*` variables) can be read and hold PEM certificates / a
/// key, so a typo in a path is reported at start-up by name instead of as
/// an I/O error from the first connection. Inline PEM values are accepted
/// as they are. The error names the option, never the URL.
pub fn check_postgres_url(url: &str) -> Result<(), String> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Ok(());
    }
    let Some((mode, files)) = postgres_tls_options(url) else {
        return Ok(());
    };
    if !matches!(
        mode.as_str(),
        "disable" | "allow" | "prefer" | "require" | "verify-ca" | "verify-full"
    ) {
        return Err(format!(
            "sslmode {mode:?} is not one of disable, allow, prefer, require, verify-ca, verify-full"
        ));
    }
    for (option, value) in files {
        if value.trim_start().starts_with("-----BEGIN") {
            continue;
        }
        let path = PathBuf::from(&value);
        let checked = if option == "sslkey" {
            private_key(&path).map(drop)
        } else {
            certificates(&path).map(drop)
        };
        checked.map_err(|message| format!("{option}: {message}"))?;
    }
    Ok(())
}

/// A warning for a Postgres URL whose `sslmode` does not verify the server,
/// unless it is on this host (a Unix socket or a loopback address).
pub fn postgres_warning(url: &str) -> Option<String> {
    let (mode, _) = postgres_tls_options(url)?;
    let host = url::Url::parse(url).ok()?.host_str().map(str::to_owned);
    let local = match host.as_deref() {
        None | Some("") | Some("localhost") => true,
        Some(h) => {
            h.starts_with('%') || {
                let h = h.trim_start_matches('[').trim_end_matches(']');
                h.parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
            }
        }
    };
    if local || matches!(mode.as_str(), "verify-full" | "verify-ca") {
        return None;
    }
    Some(format!(
        "database.url: sslmode={mode} does not verify the server's certificate{}; \
         use sslmode=verify-full (with sslrootcert for a private CA)",
        match mode.as_str() {
            "prefer" | "allow" => ", and falls back to plaintext when TLS is declined",
            "disable" => " (no TLS at all)",
            _ => "",
        }
    ))
}

/// One line for a TLS failure reaching PostgreSQL, or `None` for any other
/// error. sqlx reports a failed handshake as an I/O error carrying the
/// rustls error, and a server that refuses TLS as a TLS error.
pub fn postgres_error(e: &sqlx::Error) -> Option<String> {
    let rustls_error = match e {
        sqlx::Error::Io(io) => io.get_ref().and_then(|s| s.downcast_ref::<rustls::Error>()),
        sqlx::Error::Tls(source) => source.downcast_ref::<rustls::Error>(),
        _ => None,
    };
    let what = match (e, rustls_error) {
        (_, Some(rustls::Error::InvalidCertificate(cert))) => certificate_problem(cert),
        (_, Some(other)) => format!("handshake failed: {other}"),
        (sqlx::Error::Tls(source), None) if source.to_string().contains("does not support TLS") => {
            "the server does not accept TLS connections, and sslmode requires TLS".to_string()
        }
        (sqlx::Error::Tls(source), None) => source.to_string(),
        _ => return None,
    };
    Some(format!("TLS to PostgreSQL: {what}"))
}

fn certificate_problem(cert: &CertificateError) -> String {
    match cert {
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            format!(
                "host name mismatch: {cert} (connect by a name the certificate lists, \
                 or use sslmode=verify-ca)"
            )
        }
        // Another CA with the same name as the trusted one: BadSignature.
        #[allow(deprecated)]
        CertificateError::UnknownIssuer | CertificateError::BadSignature => {
            "certificate verification failed: the server's certificate is not signed by a \
             trusted CA (sslrootcert names the CA file)"
                .to_string()
        }
        other => format!("certificate verification failed: {other}"),
    }
}

// ---------------------------------------------------------------------------
// Redis.

/// One line for a TLS failure reaching Redis, or `None` for any other error.
/// fred reports a failed handshake only as text (the `Debug` form of the
/// I/O error carrying the rustls error), so this reads that text.
pub fn redis_error(details: &str) -> Option<String> {
    let inner = |marker: &str| {
        let start = details.find(marker)? + marker.len();
        let rest = &details[start..];
        let mut depth = 1usize;
        let end = rest.char_indices().find_map(|(i, c)| {
            match c {
                '(' | '{' => depth += 1,
                ')' | '}' => depth -= 1,
                _ => {}
            }
            (depth == 0).then_some(i)
        })?;
        Some(rest[..end].trim().to_string())
    };
    let what = if let Some(cert) = inner("InvalidCertificate(") {
        if cert.starts_with("UnknownIssuer") || cert.starts_with("BadSignature") {
            "certificate verification failed: the server's certificate is not signed by a \
             trusted CA (redis.tls_ca_file names the CA file)"
                .to_string()
        } else if cert.starts_with("NotValidForName") {
            format!(
                "host name mismatch: the server's certificate is not valid for the host in \
                 redis.url ({cert})"
            )
        } else {
            format!("certificate verification failed: {cert}")
        }
    } else if let Some(alert) = inner("AlertReceived(") {
        match alert.as_str() {
            "CertificateRequired" => "the server requires a client certificate \
                                      (redis.tls_cert_file and redis.tls_key_file)"
                .to_string(),
            "UnknownCA" | "BadCertificate" | "DecryptError" | "CertificateUnknown" => format!(
                "the server refused the client certificate ({alert}): is \
                 redis.tls_cert_file signed by a CA the server trusts?"
            ),
            _ => format!("the server ended the handshake: {alert}"),
        }
    } else if details.contains("InvalidMessage(") || details.contains("CorruptMessage") {
        "handshake failed: the server does not speak TLS on this port (use redis:// for a \
         plaintext port)"
            .to_string()
    } else {
        return None;
    };
    Some(format!("TLS to Redis: {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files<'a>(
        ca: Option<&'a Path>,
        cert: Option<&'a Path>,
        key: Option<&'a Path>,
    ) -> ClientTlsFiles<'a> {
        ClientTlsFiles {
            section: "redis",
            ca,
            cert,
            key,
        }
    }

    #[test]
    fn no_files_no_config() {
        assert!(client_config(&files(None, None, None)).unwrap().is_none());
    }

    #[test]
    fn errors_name_the_key_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let err = client_config(&files(Some(&missing), None, None)).unwrap_err();
        assert_eq!(err.key, "redis.tls_ca_file");
        assert!(err.message.contains("missing.pem"), "{err}");

        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").unwrap();
        let err = client_config(&files(Some(&junk), None, None)).unwrap_err();
        assert_eq!(err.key, "redis.tls_ca_file");
        assert!(err.message.contains("no PEM certificate"), "{err}");

        let err = client_config(&files(None, Some(&junk), None)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "redis.tls_key_file: required with redis.tls_cert_file"
        );
        let err = client_config(&files(None, None, Some(&junk))).unwrap_err();
        assert_eq!(err.key, "redis.tls_cert_file");
    }

    #[test]
    fn postgres_options_from_the_url() {
        let (mode, files) = postgres_tls_options(
            "postgres://u:p@h/db?sslmode=verify-full&sslrootcert=%2Fca%20x.pem",
        )
        .unwrap();
        assert_eq!(mode, "verify-full");
        assert_eq!(files, vec![("sslrootcert", "/ca x.pem".to_string())]);
        let err = check_postgres_url("postgres://u:secret@h/db?sslrootcert=/nonexistent/ca.pem")
            .unwrap_err();
        assert!(
            err.starts_with("sslrootcert: cannot read /nonexistent/ca.pem"),
            "{err}"
        );
        assert!(!err.contains("secret"));
        let err = check_postgres_url("postgres://h/db?sslmode=verify_full").unwrap_err();
        assert!(err.contains("not one of"), "{err}");
        assert!(check_postgres_url("sqlite://x.db?mode=rwc").is_ok());
    }

    #[test]
    fn redis_errors_in_one_line() {
        let io = |e: &str| format!("Custom {{ kind: InvalidData, error: {e} }}");
        let line = redis_error(&io("InvalidCertificate(UnknownIssuer)")).unwrap();
        assert!(line.contains("certificate verification failed"), "{line}");
        let line = redis_error(&io(
            "InvalidCertificate(NotValidForNameContext { expected: IpAddress(V4(Ipv4Addr([127, 0, 0, 1]))), presented: [\"DnsName(\\\"x\\\")\"] })",
        ))
        .unwrap();
        assert!(
            line.starts_with("TLS to Redis: host name mismatch"),
            "{line}"
        );
        assert!(
            line.ends_with("presented: [\"DnsName(\\\"x\\\")\"] })"),
            "{line}"
        );
        let line = redis_error(&io("AlertReceived(CertificateRequired)")).unwrap();
        assert!(line.contains("redis.tls_cert_file"), "{line}");
        assert!(redis_error("Connection refused (os error 111)").is_none());
    }

    #[test]
    fn warning_for_unverified_remote_postgres() {
        assert!(postgres_warning("postgres://u@db.example/x?sslmode=require").is_some());
        assert!(postgres_warning("postgres://u@db.example/x?sslmode=verify-full").is_none());
        assert!(postgres_warning("postgres://u@127.0.0.1/x").is_none());
        assert!(postgres_warning("postgres://u@[::1]/x").is_none());
        assert!(postgres_warning("postgres://u@localhost/x?sslmode=disable").is_none());
    }
}
