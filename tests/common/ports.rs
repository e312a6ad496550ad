//! Loopback ports: finding a free one, waiting for a server on one.

use std::net::TcpListener;
use std::time::{Duration, Instant};

/// A port that is free now, with its Redis Cluster bus port (+10000) free
/// too; nothing listens on it.
pub fn free_port() -> u16 {
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// Waits (blocking) until 127.0.0.1:`port` accepts connections (`up`) or
/// refuses them (`!up`); fails after `within`, naming `what` listens there.
pub fn wait_for_port(port: u16, up: bool, within: Duration, what: &str) {
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() != up {
        assert!(
            start.elapsed() < within,
            "{what} on {port} did not {}",
            if up { "start" } else { "stop" }
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
