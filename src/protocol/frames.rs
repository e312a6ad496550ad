//! What the server sends: encoded text frames, built once and shared by
//! every recipient of a broadcast.

use std::io::Write as _;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::RequestError;
use crate::ws;

/// An encoded text frame: the WebSocket frame (header and UTF-8 JSON) built
/// once, cheap to clone, and shared by every recipient of a broadcast, whose
/// sockets all write these same bytes (server frames are unmasked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame(Bytes);

impl Frame {
    pub fn from_string(s: String) -> Frame {
        Frame(ws::frame::encode(ws::frame::OP_TEXT, s.as_bytes()))
    }
    /// The whole WebSocket frame, as written to a socket.
    pub fn wire(&self) -> &Bytes {
        &self.0
    }
    pub fn into_wire(self) -> Bytes {
        self.0
    }
    /// The JSON.
    pub fn as_str(&self) -> &str {
        // Built only from `String`, so always UTF-8.
        std::str::from_utf8(self.payload()).unwrap_or_default()
    }
    fn payload(&self) -> &[u8] {
        &self.0[ws::frame::head_len(&self.0)..]
    }
    /// Length of the JSON, in bytes.
    pub fn len(&self) -> usize {
        self.payload().len()
    }
    pub fn is_empty(&self) -> bool {
        self.payload().is_empty()
    }
}

/// `{"type":"message","group":..,"data":..}`, with `offset`/`epoch` when the
/// group has history. Written straight into the frame's buffer, which is
/// the only copy: building the JSON first took two more allocations (the
/// escaped group, the JSON) and a copy.
pub fn message_frame(group: &str, data: &RawValue, position: Option<&Position>) -> Frame {
    let json = |out: &mut Vec<u8>| {
        out.extend_from_slice(br#"{"type":"message","group":"#);
        write_json_str(out, group);
        out.extend_from_slice(br#","data":"#);
        out.extend_from_slice(data.get().as_bytes());
        if let Some(p) = position {
            let _ = write!(out, r#","offset":{},"epoch":"#, p.offset);
            write_json_str(out, &p.epoch);
        }
        out.push(b'}');
    };
    let capacity = 48 + group.len() + data.get().len();
    Frame(ws::frame::encode_with(ws::frame::OP_TEXT, capacity, json))
}

/// `s` as a JSON string, appended to `out` (frames and envelopes).
pub(super) fn write_json_str(out: &mut Vec<u8>, s: &str) {
    if serde_json::to_writer(&mut *out, s).is_err() {
        out.extend_from_slice(b"\"\"");
    }
}

/// A group's latest message sent on `subscribe` with `"latest":true`: its
/// message frame (offset and epoch included for a history group) marked
/// `"snapshot":true`, so a client can tell it from a live message.
pub fn snapshot_frame(group: &str, data: &RawValue, position: Option<&Position>) -> Frame {
    let mut s = message_frame(group, data, position).as_str().to_string();
    s.pop();
    s.push_str(r#","snapshot":true}"#);
    Frame::from_string(s)
}

/// A message's place in a group's history (also a client's `since`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Position {
    pub offset: u64,
    pub epoch: String,
}

/// Replies and other frames addressed to one connection.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Reply<'a> {
    Welcome {
        user_id: &'a str,
        session: &'a str,
        node: &'a str,
        groups: &'a [String],
    },
    Subscribed {
        group: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
        #[serde(skip_serializing_if = "Option::is_none")]
        offset: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        epoch: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RawValue>,
    },
    Unsubscribed {
        group: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RawValue>,
    },
    Published {
        group: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RawValue>,
    },
    Pong {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RawValue>,
    },
    /// A `refresh` was accepted: the connection now runs on the new token.
    Refreshed {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RawValue>,
    },
    Error {
        code: &'a str,
        message: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RawValue>,
    },
}

impl Reply<'_> {
    pub fn encode(&self) -> Frame {
        // Serializing these plain structs cannot fail.
        Frame::from_string(serde_json::to_string(self).unwrap_or_default())
    }

    pub fn error(error: &RequestError, id: Option<&RawValue>) -> Frame {
        Reply::Error {
            code: error.code.as_str(),
            message: &error.message,
            id,
        }
        .encode()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_encode() {
        let data = RawValue::from_string(r#"{"p":1}"#.into()).unwrap();
        assert_eq!(
            message_frame("g", &data, None).as_str(),
            r#"{"type":"message","group":"g","data":{"p":1}}"#
        );
        let pos = Position {
            offset: 4,
            epoch: "e1".into(),
        };
        assert_eq!(
            message_frame("g", &data, Some(&pos)).as_str(),
            r#"{"type":"message","group":"g","data":{"p":1},"offset":4,"epoch":"e1"}"#
        );
        let id = RawValue::from_string("3".into()).unwrap();
        assert_eq!(
            Reply::Pong { id: Some(&id) }.encode().as_str(),
            r#"{"type":"pong","id":3}"#
        );
    }
}
