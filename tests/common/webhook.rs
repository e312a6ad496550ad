//! A webhook receiver for the occupancy tests: a real HTTP server on a free
//! port that records every request and answers 500 to the first few.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value;

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Hit {
    pub timestamp: String,
    pub signature: String,
    pub body: Vec<u8>,
    /// What the receiver answered.
    pub status: u16,
}

impl Hit {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }

    /// Whether the signature is HMAC-SHA256(secret, timestamp "." body),
    /// checked in constant time by `verify_slice`.
    pub fn verifies(&self, secret: &str) -> bool {
        let Some(hex_sig) = self.signature.strip_prefix("sha256=") else {
            return false;
        };
        let Ok(given) = hex::decode(hex_sig) else {
            return false;
        };
        let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(self.timestamp.as_bytes());
        mac.update(b".");
        mac.update(&self.body);
        mac.verify_slice(&given).is_ok()
    }
}

#[derive(Clone)]
struct Shared {
    hits: Arc<Mutex<Vec<Hit>>>,
    fail_first: Arc<AtomicUsize>,
}

pub struct WebhookReceiver {
    pub addr: SocketAddr,
    shared: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl WebhookReceiver {
    /// Listens on a free loopback port; the first `fail_first` requests get 500.
    pub async fn start(fail_first: usize) -> WebhookReceiver {
        let shared = Shared {
            hits: Arc::default(),
            fail_first: Arc::new(AtomicUsize::new(fail_first)),
        };
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(receive))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        WebhookReceiver { addr, shared, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub fn hits(&self) -> Vec<Hit> {
        self.shared.hits.lock().unwrap().clone()
    }

    /// The bodies answered 2xx (the events delivered).
    pub fn delivered(&self) -> Vec<Value> {
        self.hits()
            .iter()
            .filter(|h| h.status == 200)
            .map(Hit::json)
            .collect()
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn receive(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let fail = shared
        .fail_first
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
        .is_ok();
    let status = if fail {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    };
    shared.hits.lock().unwrap().push(Hit {
        timestamp: header("x-wsgate-timestamp"),
        signature: header("x-wsgate-signature"),
        body: body.to_vec(),
        status: status.as_u16(),
    });
    status
}
