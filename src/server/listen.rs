//! The listening sockets: one per distinct address, each with the router of
//! the roles (public WebSocket, backend API, metrics) bound there, served by
//! our own accept loop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use bytes::Bytes;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use axum::routing::get;

use super::proxy_protocol::{self, HeaderError};
use super::{Addrs, StartError};
use crate::api::{self, ApiState};
use crate::metrics::{Metrics, Rejection};
use crate::prefixed::Prefixed;
use crate::state::AppState;
use crate::{handshake, ops};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Public,
    Api,
    Metrics,
}

/// Binds one listener per distinct address (port 0 always gets its own);
/// roles that share an address share its router.
pub(super) fn bind_roles(
    state: &AppState,
    api_state: ApiState,
) -> Result<(Vec<(TcpListener, Router)>, Addrs), StartError> {
    let config = &state.config;
    let mut by_addr: Vec<(SocketAddr, Vec<Role>)> = Vec::new();
    for (addr, role) in [
        (config.server.listen, Role::Public),
        (config.api.listen, Role::Api),
        (config.metrics.listen, Role::Metrics),
    ] {
        match by_addr
            .iter_mut()
            .find(|(a, _)| *a == addr && addr.port() != 0)
        {
            Some((_, roles)) => roles.push(role),
            None => by_addr.push((addr, vec![role])),
        }
    }
    let mut listeners = Vec::new();
    let (mut ws, mut api, mut metrics) = (None, None, None);
    for (addr, roles) in by_addr {
        let listener = bind(addr).map_err(|source| StartError::Bind { addr, source })?;
        let local = listener
            .local_addr()
            .map_err(|source| StartError::Bind { addr, source })?;
        let mut router = Router::new();
        if roles.contains(&Role::Public) || roles.contains(&Role::Metrics) {
            router = router.merge(ops::health_router(state.clone()));
        }
        for role in roles {
            router = match role {
                Role::Public => {
                    ws = Some(local);
                    router.merge(
                        Router::new()
                            .route(&config.server.ws_path, get(handshake::upgrade))
                            .with_state(state.clone()),
                    )
                }
                Role::Api => {
                    api = Some(local);
                    router.merge(api::router(api_state.clone()))
                }
                Role::Metrics => {
                    metrics = Some(local);
                    router.merge(ops::metrics_router(state.clone()))
                }
            };
        }
        listeners.push((listener, router));
    }
    let (Some(ws), Some(api), Some(metrics)) = (ws, api, metrics) else {
        unreachable!("every role is bound above");
    };
    Ok((listeners, Addrs { ws, api, metrics }))
}

/// Listen backlog: reconnect storms (a drained node's clients arriving at
/// once) need more than the usual 128 or 1024 pending handshakes.
const LISTEN_BACKLOG: u32 = 4096;

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Accepts connections until `stop` flips, serving HTTP/1.1 with upgrades.
///
/// Our own loop rather than `axum::serve`, for three things it does not do:
/// a deadline on the request headers (`server.handshake_timeout`), so slow or
/// half-open upgrades (slowloris) are dropped; the peer address as
/// `ConnectInfo` for the per-IP limits; and, with `proxy_protocol` (the
/// public listener under `server.proxy_protocol`), a PROXY protocol header
/// read first, within `server.handshake_timeout` of the accept (the request
/// headers then have their own), whose address becomes the peer's.
///
/// `connect_info`: whether requests carry the peer address, which only the
/// WebSocket upgrade reads (on the public listener). Elsewhere it would be
/// boxed into every request's extensions and freed for nothing.
pub(super) async fn serve_listener(
    listener: TcpListener,
    router: Router,
    handshake_timeout: Duration,
    proxy_protocol: bool,
    connect_info: bool,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    // Every connection task holds a sender; when all are dropped, all are done.
    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<()>(1);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = async { let _ = stop.wait_for(|s| *s).await; } => break,
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let stop = stop.clone();
        let done = done_tx.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _done = done;
            let (stream, peer) = if proxy_protocol {
                match read_proxy_header(stream, peer, handshake_timeout, &metrics, stop.clone())
                    .await
                {
                    Some(proxied) => proxied,
                    None => return,
                }
            } else {
                (Prefixed::new(Bytes::new(), stream), peer)
            };
            let peer = connect_info.then_some(peer);
            serve_connection(stream, peer, router, handshake_timeout, &metrics, stop).await;
        });
    }
    // Plain HTTP connections (API calls, probes) get a moment to finish;
    // an upgraded socket leaves hyper at its upgrade (the drain closed it).
    drop(done_tx);
    let _ = tokio::time::timeout(Duration::from_secs(5), done_rx.recv()).await;
}

/// Serves one connection's HTTP/1.1 requests (and its upgrade), with `peer`
/// as their `ConnectInfo` when given.
async fn serve_connection(
    stream: Prefixed<TcpStream>,
    peer: Option<SocketAddr>,
    router: Router,
    handshake_timeout: Duration,
    metrics: &Metrics,
    mut stop: watch::Receiver<bool>,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let service =
        hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
            if let Some(peer) = peer {
                request
                    .extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
            }
            tower_service::Service::call(&mut router.clone(), request)
        });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(handshake_timeout)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    let mut connection = std::pin::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = async { let _ = stop.wait_for(|s| *s).await; } => {
            // Finish the request in flight, then close.
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        if e.is_timeout() {
            // The request headers did not arrive in time (slowloris).
            metrics.rejected(Rejection::HandshakeTimeout);
        }
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// Set once a connection without a valid PROXY header was warned about.
static WARNED_NO_PROXY_HEADER: AtomicBool = AtomicBool::new(false);

/// Reads the PROXY header within `handshake_timeout`; `None` when the
/// connection is to be dropped (no valid header in time, or the node stops).
async fn read_proxy_header(
    mut stream: TcpStream,
    peer: SocketAddr,
    handshake_timeout: Duration,
    metrics: &Metrics,
    mut stop: watch::Receiver<bool>,
) -> Option<(Prefixed<TcpStream>, SocketAddr)> {
    let read = tokio::time::timeout(
        handshake_timeout,
        proxy_protocol::read_header(&mut stream, peer),
    );
    let result = tokio::select! {
        result = read => result,
        _ = async { let _ = stop.wait_for(|s| *s).await; } => return None,
    };
    match result {
        Ok(Ok((client, rest))) => Some((Prefixed::new(rest, stream), client)),
        Err(_elapsed) => {
            // Nothing (or not enough) in time: slow, like a slow request.
            metrics.rejected(Rejection::HandshakeTimeout);
            tracing::debug!(%peer, "no PROXY protocol header in time");
            None
        }
        // A TCP health check or a scan: connected and left.
        Ok(Err(HeaderError::Empty)) => None,
        Ok(Err(e)) => {
            metrics.rejected(Rejection::ProxyProtocol);
            if !WARNED_NO_PROXY_HEADER.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    %peer,
                    error = %e,
                    "connection without a valid PROXY protocol header dropped \
                     (server.proxy_protocol is on): is PROXY protocol on at the load balancer, \
                     and does every path to server.listen go through it?"
                );
            } else {
                tracing::debug!(%peer, error = %e, "connection without a PROXY protocol header dropped");
            }
            None
        }
    }
}
