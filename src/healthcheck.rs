//! `wsgate healthcheck [--url URL]`: the image's `HEALTHCHECK`, with no
//! shell or curl in the image. One HTTP/1.1 GET, bounded by [`TIMEOUT`];
//! exit 0 on a 2xx answer, 1 on anything else (refused, timeout, 404, 503),
//! 2 when the configuration does not load.
//!
//! Without `--url` it GETs `/healthz` (the process serves: a liveness
//! check, so a draining node is not reported unhealthy) on
//! `metrics.listen`, read from the same configuration as `serve`, with an
//! unspecified address (`0.0.0.0`, `[::]`) replaced by loopback.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use hyper::{Request, StatusCode, Uri, header};
use hyper_util::rt::TokioIo;

use crate::config::Config;

/// The longest a check takes: connect, request and answer.
pub const TIMEOUT: Duration = Duration::from_secs(3);

/// The path checked without `--url`.
pub const PATH: &str = "/healthz";

/// `http://ADDR/healthz` for the metrics listener at `listen`.
pub fn default_url(listen: SocketAddr) -> String {
    let mut addr = listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            IpAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
            IpAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
        });
    }
    format!("http://{addr}{PATH}")
}

/// GETs `url` (plain `http://` only) and returns the answer's status.
pub async fn probe(url: &str, timeout: Duration) -> Result<StatusCode, String> {
    let uri: Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!("{url}: only http:// URLs can be checked"));
    }
    let authority = uri
        .authority()
        .ok_or_else(|| format!("{url}: no host"))?
        .clone();
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = authority.port_u16().unwrap_or(80);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let request = Request::get(path)
        .header(header::HOST, authority.as_str())
        .header(header::USER_AGENT, "wsgate-healthcheck")
        .header(header::CONNECTION, "close")
        .body(String::new())
        .map_err(|e| format!("{url}: {e}"))?;
    let exchange = async {
        let stream = tokio::net::TcpStream::connect((host, port))
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        let connection = tokio::spawn(connection);
        let answer = sender.send_request(request).await;
        connection.abort();
        answer.map(|r| r.status()).map_err(|e| e.to_string())
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(status)) => Ok(status),
        Ok(Err(e)) => Err(format!("GET {url}: {e}")),
        Err(_) => Err(format!("GET {url}: no answer within {timeout:?}")),
    }
}

/// The subcommand: `url`, else `/healthz` on the configured metrics listener.
pub fn main(config_file: Option<&Path>, url: Option<&str>) -> ExitCode {
    let url = match url {
        Some(url) => url.to_string(),
        None => match Config::load(config_file) {
            Ok(config) => default_url(config.metrics.listen),
            Err(e) => {
                eprintln!("wsgate: {e}");
                return ExitCode::from(2);
            }
        },
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("wsgate: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(probe(&url, TIMEOUT)) {
        Ok(status) if status.is_success() => {
            println!("healthy: GET {url}: {status}");
            ExitCode::SUCCESS
        }
        Ok(status) => {
            eprintln!("wsgate: unhealthy: GET {url}: {status}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("wsgate: unhealthy: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_url_uses_loopback_for_unspecified_addresses() {
        let url = |s: &str| default_url(s.parse().unwrap());
        assert_eq!(url("0.0.0.0:9090"), "http://127.0.0.1:9090/healthz");
        assert_eq!(url("[::]:9090"), "http://[::1]:9090/healthz");
        assert_eq!(url("10.1.2.3:9191"), "http://10.1.2.3:9191/healthz");
        assert_eq!(url("[fd00::5]:9090"), "http://[fd00::5]:9090/healthz");
    }

    #[tokio::test]
    async fn refuses_what_it_cannot_check() {
        for url in ["https://127.0.0.1:1/healthz", "not a url", "http:///x"] {
            assert!(probe(url, TIMEOUT).await.is_err(), "{url}");
        }
    }

    #[tokio::test]
    async fn a_silent_server_times_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/healthz", listener.local_addr().unwrap());
        let started = std::time::Instant::now();
        let err = probe(&url, Duration::from_millis(300)).await.unwrap_err();
        assert!(err.contains("no answer"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(2));
        drop(listener);
    }
}
