//! A stand-in application backend for the subscribe hook: a real HTTP
//! server on a free port that checks wsgate's signature the way a backend
//! must (HMAC-SHA256 of `<timestamp>.<body>`, compared in constant time,
//! timestamp within a minute) and answers from a set of allowed
//! (user, group) pairs, or misbehaves on request.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value;
use sha2::Sha256;

pub const HOOK_SECRET: &str = "hook-secret-0123456789abcdef-0123456789";

/// How the backend answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    Answer = 0,
    Error500 = 1,
    Slow = 2,
    BadJson = 3,
}

#[derive(Default)]
pub struct Shared {
    pub allowed: Mutex<HashSet<(String, String)>>,
    mode: AtomicU8,
    pub calls: AtomicUsize,
    /// Calls whose signature did not check out (answered 401).
    pub bad_signatures: AtomicUsize,
    pub last_body: Mutex<Option<Value>>,
}

pub struct HookBackend {
    pub addr: SocketAddr,
    pub shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl HookBackend {
    pub async fn start() -> HookBackend {
        let shared = Arc::new(Shared::default());
        let app = Router::new()
            .route("/hook", post(answer))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        HookBackend { addr, shared, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub fn allow(&self, user: &str, group: &str) {
        self.shared
            .allowed
            .lock()
            .unwrap()
            .insert((user.into(), group.into()));
    }

    pub fn disallow(&self, user: &str, group: &str) {
        self.shared
            .allowed
            .lock()
            .unwrap()
            .remove(&(user.to_string(), group.to_string()));
    }

    pub fn set_mode(&self, mode: Mode) {
        self.shared.mode.store(mode as u8, Ordering::SeqCst);
    }

    pub fn calls(&self) -> usize {
        self.shared.calls.load(Ordering::SeqCst)
    }
}

impl Drop for HookBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn signature_ok(headers: &HeaderMap, body: &[u8]) -> bool {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(ts), Some(sig)) = (get("x-wsgate-timestamp"), get("x-wsgate-signature")) else {
        return false;
    };
    let Ok(ts_num) = ts.parse::<u64>() else {
        return false;
    };
    if wsgate::clock::unix_ms() / 1000 > ts_num + 60 {
        return false;
    }
    let Some(given) = sig
        .strip_prefix("sha256=")
        .and_then(|h| hex::decode(h).ok())
    else {
        return false;
    };
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(HOOK_SECRET.as_bytes()).unwrap();
    mac.update(ts.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&given).is_ok()
}

async fn answer(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    shared.calls.fetch_add(1, Ordering::SeqCst);
    if !signature_ok(&headers, &body) {
        shared.bad_signatures.fetch_add(1, Ordering::SeqCst);
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    *shared.last_body.lock().unwrap() = Some(request.clone());
    match shared.mode.load(Ordering::SeqCst) {
        1 => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        2 => tokio::time::sleep(Duration::from_secs(10)).await,
        3 => return (StatusCode::OK, "{\"allow\": \"yes\"}").into_response(),
        _ => {}
    }
    let user = request["user_id"].as_str().unwrap_or_default().to_string();
    let group = request["group"].as_str().unwrap_or_default().to_string();
    let allow = shared.allowed.lock().unwrap().contains(&(user, group));
    (
        StatusCode::OK,
        [("content-type", "application/json")],
        format!("{{\"allow\": {allow}}}"),
    )
        .into_response()
}
