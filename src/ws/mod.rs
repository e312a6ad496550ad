//! The WebSocket protocol (RFC 6455), server side, on a TCP stream.
//!
//! - `frame`: frames, pure: decoding a client's, encoding the server's.
//! - `socket`: [`WebSocket`]: messages in (fragments assembled, control
//!   frames answered, UTF-8 and sizes checked), encoded frames out with
//!   vectored writes.
//! - `upgrade`: the opening handshake as an axum extractor.
//!
//! Why our own: every recipient of a broadcast writes the same encoded frame
//! (server frames are unmasked), so the frame is built once per message and
//! written without a copy per socket; and an idle socket holds no read or
//! write buffer. tests/malformed/ and tests/ws_conformance/ hold the
//! conformance cases (fragmentation, control frames, the close handshake,
//! masking, UTF-8, size limits) against a running node.

pub mod frame;
mod socket;
mod upgrade;

pub use socket::{Error, Message, WebSocket};
pub use upgrade::{Refusal, WebSocketUpgrade, accept_key};
