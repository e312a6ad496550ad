//! The wall clock, in the units the rest of the code stores and sends.
//!
//! One place, so every timestamp (token expiry, node heartbeats, publish
//! times, Django's `expiry`) is read the same way. A clock set before 1970
//! reads as 0 rather than panicking.

use std::time::{SystemTime, UNIX_EPOCH};

fn since_epoch() -> std::time::Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    since_epoch().as_millis() as u64
}

/// Microseconds since the Unix epoch.
pub fn unix_micros() -> u64 {
    since_epoch().as_micros() as u64
}
