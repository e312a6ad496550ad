//! What travels between nodes: the broker envelope of a publication and
//! the cluster-wide control commands.

use std::io::Write as _;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::frames::write_json_str;
use super::{Position, is_valid_group};

/// One message to a group, as it travels between nodes:
/// `{"v":1,"group":"g","data":<JSON>}` (section 5). `ts` (unix microseconds
/// at publish) is optional and feeds the delivery-latency histogram.
#[derive(Debug, Clone)]
pub struct Publication {
    pub group: String,
    pub data: Box<RawValue>,
    pub position: Option<Position>,
    pub ts: Option<u64>,
    /// W3C `traceparent` of the publish, so delivery spans on every node
    /// join the publisher's trace (`tp` in the envelope).
    pub trace: Option<String>,
    /// A `groups.snapshot` publication's place among its group's kept
    /// latest values (`sq`/`se` in the envelope), assigned by the broker as
    /// it stores it. Never shown to clients: the hub uses it to drop the
    /// live copy of the snapshot a new subscriber was just sent.
    pub seq: Option<Position>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("envelope is not valid JSON of the expected shape")]
    Malformed,
    #[error("unsupported envelope version")]
    Version,
    #[error("envelope group does not match its channel or is invalid")]
    Group,
}

/// The envelope of `p`, as `{"v":1,"group":..,"data":..}` with the
/// optional fields after `data` in a fixed order (the history script
/// appends `offset` and `epoch` to it; see `broker::redis::history`).
///
/// Written by hand rather than by serde's derive: one envelope per
/// publication on Redis, and the derive escaped every key (a fifth of a
/// publish's envelope cost, counted in docs/performance.md, round twenty).
pub fn encode_envelope(p: &Publication) -> String {
    let data = p.data.get();
    let mut out = Vec::with_capacity(40 + p.group.len() + data.len());
    out.extend_from_slice(br#"{"v":1,"group":"#);
    write_json_str(&mut out, &p.group);
    out.extend_from_slice(br#","data":"#);
    out.extend_from_slice(data.as_bytes());
    if let Some(position) = &p.position {
        let _ = write!(out, r#","offset":{},"epoch":"#, position.offset);
        write_json_str(&mut out, &position.epoch);
    }
    if let Some(ts) = p.ts {
        let _ = write!(out, r#","ts":{ts}"#);
    }
    if let Some(tp) = &p.trace {
        out.extend_from_slice(br#","tp":"#);
        write_json_str(&mut out, tp);
    }
    if let Some(seq) = &p.seq {
        let _ = write!(out, r#","sq":{},"se":"#, seq.offset);
        write_json_str(&mut out, &seq.epoch);
    }
    out.push(b'}');
    // Only JSON text was written: the escaped strings, a `RawValue`
    // (valid JSON, so UTF-8) and ASCII.
    String::from_utf8(out).unwrap_or_default()
}

/// Decodes an envelope received on the channel of `channel_group`.
pub fn decode_envelope(channel_group: &str, payload: &[u8]) -> Result<Publication, EnvelopeError> {
    #[derive(Deserialize)]
    struct Envelope {
        v: u64,
        group: String,
        data: Box<RawValue>,
        #[serde(default)]
        offset: Option<u64>,
        #[serde(default)]
        epoch: Option<String>,
        #[serde(default)]
        ts: Option<u64>,
        #[serde(default)]
        tp: Option<String>,
        #[serde(default)]
        sq: Option<u64>,
        #[serde(default)]
        se: Option<String>,
    }
    let env: Envelope = serde_json::from_slice(payload).map_err(|_| EnvelopeError::Malformed)?;
    if env.v != 1 {
        return Err(EnvelopeError::Version);
    }
    if env.group != channel_group || !is_valid_group(&env.group) {
        return Err(EnvelopeError::Group);
    }
    let position = match (env.offset, env.epoch) {
        (Some(offset), Some(epoch)) => Some(Position { offset, epoch }),
        _ => None,
    };
    Ok(Publication {
        group: env.group,
        data: env.data,
        position,
        ts: env.ts,
        // Only a plausible traceparent is carried on (bounded, printable).
        trace: env
            .tp
            .filter(|t| t.len() <= 128 && t.bytes().all(|b| b.is_ascii_graphic())),
        seq: match (env.sq, env.se) {
            (Some(offset), Some(epoch)) => Some(Position { offset, epoch }),
            _ => None,
        },
    })
}

/// Cluster-wide commands that act on connections wherever they are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Control {
    /// Close every connection of this user with 4003.
    DisconnectUser { user_id: String },
    /// Close every connection authenticated with the token of this SHA-256
    /// digest (hex) with 4003.
    RevokeDigest { digest: String },
    /// Remove this user from this group on every connection (an unsolicited
    /// `unsubscribed`), and forget the backend's cached allow for the pair.
    Unsubscribe { user_id: String, group: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What serde's derive writes for an envelope: the hand-written
    /// encoder must agree with it byte for byte, escaping included.
    fn derived(p: &Publication) -> String {
        #[derive(Serialize)]
        struct Envelope<'a> {
            v: u8,
            group: &'a str,
            data: &'a RawValue,
            #[serde(skip_serializing_if = "Option::is_none")]
            offset: Option<u64>,
            #[serde(skip_serializing_if = "Option::is_none")]
            epoch: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            ts: Option<u64>,
            #[serde(skip_serializing_if = "Option::is_none")]
            tp: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            sq: Option<u64>,
            #[serde(skip_serializing_if = "Option::is_none")]
            se: Option<&'a str>,
        }
        serde_json::to_string(&Envelope {
            v: 1,
            group: &p.group,
            data: &p.data,
            offset: p.position.as_ref().map(|p| p.offset),
            epoch: p.position.as_ref().map(|p| p.epoch.as_str()),
            ts: p.ts,
            tp: p.trace.as_deref(),
            sq: p.seq.as_ref().map(|s| s.offset),
            se: p.seq.as_ref().map(|s| s.epoch.as_str()),
        })
        .unwrap()
    }

    #[test]
    fn encoder_writes_what_the_derive_writes() {
        let at = |offset, epoch: &str| Position {
            offset,
            epoch: epoch.into(),
        };
        for position in [None, Some(at(0, "e")), Some(at(u64::MAX, "q\"\\\u{1}é"))] {
            for ts in [None, Some(1_700_000_000_000_001)] {
                for trace in [None, Some("00-\"\\-01".to_string())] {
                    for seq in [None, Some(at(7, "s\n"))] {
                        let p = Publication {
                            group: "g.1:x@y-z_".into(),
                            data: RawValue::from_string(
                                r#"{"a":"\u00e9\"","b":[1,2.5,null]}"#.into(),
                            )
                            .unwrap(),
                            position: position.clone(),
                            ts,
                            trace: trace.clone(),
                            seq: seq.clone(),
                        };
                        let written = encode_envelope(&p);
                        assert_eq!(written, derived(&p));
                        let back = decode_envelope(&p.group, written.as_bytes()).unwrap();
                        assert_eq!(back.position, p.position);
                        assert_eq!(back.seq, p.seq);
                        assert_eq!(back.ts, p.ts);
                        assert_eq!(back.data.get(), p.data.get());
                    }
                }
            }
        }
    }

    #[test]
    fn envelope_roundtrip() {
        let p = Publication {
            group: "g".into(),
            data: RawValue::from_string("[1,2]".into()).unwrap(),
            position: None,
            ts: None,
            trace: None,
            seq: None,
        };
        let s = encode_envelope(&p);
        assert_eq!(s, r#"{"v":1,"group":"g","data":[1,2]}"#);
        assert_eq!(
            decode_envelope("g", s.as_bytes()).unwrap().data.get(),
            "[1,2]"
        );
        assert_eq!(
            decode_envelope("h", s.as_bytes()).unwrap_err(),
            EnvelopeError::Group
        );
        assert_eq!(
            decode_envelope("g", br#"{"v":2,"group":"g","data":1}"#).unwrap_err(),
            EnvelopeError::Version
        );
        assert_eq!(
            decode_envelope("g", b"{").unwrap_err(),
            EnvelopeError::Malformed
        );
        // The trace context travels with the message to other nodes.
        let traced = Publication {
            trace: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
            ..p
        };
        let s = encode_envelope(&traced);
        assert_eq!(
            decode_envelope("g", s.as_bytes()).unwrap().trace,
            traced.trace
        );
        // So does a snapshot group's sequence.
        let kept = Publication {
            seq: Some(Position {
                offset: 4,
                epoch: "e".into(),
            }),
            ..traced
        };
        let s = encode_envelope(&kept);
        assert!(s.ends_with(r#","sq":4,"se":"e"}"#), "{s}");
        assert_eq!(decode_envelope("g", s.as_bytes()).unwrap().seq, kept.seq);
    }
}
