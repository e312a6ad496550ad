//! RFC 6455 frames, pure: decoding a client's frames from the bytes read so
//! far, and encoding the server's. No I/O, so every rule is unit-tested and
//! fuzzed on its own.
//!
//! Server frames are never masked (section 5.1), so one encoded frame (header
//! and payload in one buffer) serves every recipient of a broadcast.

use bytes::{Buf, Bytes, BytesMut};

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Largest header of a server frame: 2 bytes, then a 64-bit length.
pub const MAX_HEAD: usize = 10;
/// Largest payload of a control frame (section 5.5).
pub const MAX_CONTROL: usize = 125;

/// How a client broke the protocol, named by the close code that answers it
/// (section 7.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// 1002.
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// 1007: a text message (or a close reason) that is not UTF-8.
    #[error("invalid UTF-8")]
    Utf8,
    /// 1009: a frame or message over the size limit.
    #[error("message too big")]
    TooBig,
}

/// One client frame, unmasked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    pub opcode: u8,
    pub payload: Bytes,
}

impl Frame {
    pub fn is_control(&self) -> bool {
        self.opcode & 0x8 != 0
    }
}

/// Takes one whole frame off the front of `buf` and unmasks it, or answers
/// `Ok(None)` when more bytes are needed. Once a header is in, `buf` is
/// reserved to hold the whole frame, so the rest is read in few reads.
///
/// `max` bounds a data frame's payload; it is checked from the header, so a
/// claim of 2^63 bytes costs nothing.
pub fn decode(buf: &mut BytesMut, max: usize) -> Result<Option<Frame>, Violation> {
    let Some(&[b0, b1]) = buf.get(..2) else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 {
        return Err(Violation::Protocol(
            "reserved bits set without an extension",
        ));
    }
    let fin = b0 & 0x80 != 0;
    let opcode = b0 & 0x0F;
    let control = match opcode {
        OP_CONTINUATION | OP_TEXT | OP_BINARY => false,
        OP_CLOSE | OP_PING | OP_PONG => true,
        _ => return Err(Violation::Protocol("reserved opcode")),
    };
    if b1 & 0x80 == 0 {
        return Err(Violation::Protocol("client frames must be masked"));
    }
    let short = (b1 & 0x7F) as usize;
    if control && !fin {
        return Err(Violation::Protocol("fragmented control frame"));
    }
    if control && short > MAX_CONTROL {
        return Err(Violation::Protocol("control frame over 125 bytes"));
    }
    let (extra, len) = match short {
        126 => match buf.get(2..4) {
            Some(b) => (2, u16::from_be_bytes([b[0], b[1]]) as u64),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => {
                let len = u64::from_be_bytes(b.try_into().unwrap_or_default());
                if len >> 63 != 0 {
                    return Err(Violation::Protocol("64-bit length with the top bit set"));
                }
                (8, len)
            }
            None => return Ok(None),
        },
        n => (0, n as u64),
    };
    if !control && len > max as u64 {
        return Err(Violation::TooBig);
    }
    let len = len as usize;
    let head = 2 + extra + 4;
    if buf.len() < head + len {
        buf.reserve(head + len - buf.len());
        return Ok(None);
    }
    let mask: [u8; 4] = buf[head - 4..head].try_into().unwrap_or_default();
    buf.advance(head);
    let mut payload = buf.split_to(len);
    unmask(&mut payload, mask);
    Ok(Some(Frame {
        fin,
        opcode,
        payload: payload.freeze(),
    }))
}

fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// The header of a final, unmasked frame of `len` bytes: its bytes and length.
pub fn head(opcode: u8, len: usize) -> ([u8; MAX_HEAD], usize) {
    let mut h = [0u8; MAX_HEAD];
    h[0] = 0x80 | opcode;
    let n = if len < 126 {
        h[1] = len as u8;
        2
    } else if len <= u16::MAX as usize {
        h[1] = 126;
        h[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        h[1] = 127;
        h[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    };
    (h, n)
}

/// Length of the header at the front of an encoded server frame.
pub fn head_len(frame: &[u8]) -> usize {
    match frame.get(1).map(|b| b & 0x7F) {
        Some(126) => 4,
        Some(127) => 10,
        Some(_) => 2,
        None => frame.len(),
    }
}

/// A whole server frame whose payload `write` appends, written in place:
/// room for the longest header is kept in front and the unused part of it
/// skipped, so the payload is neither built elsewhere nor copied.
/// `capacity`: the payload's expected length.
pub fn encode_with(opcode: u8, capacity: usize, write: impl FnOnce(&mut Vec<u8>)) -> Bytes {
    let mut out = Vec::with_capacity(MAX_HEAD + capacity);
    out.resize(MAX_HEAD, 0);
    write(&mut out);
    let (h, n) = head(opcode, out.len() - MAX_HEAD);
    let start = MAX_HEAD - n;
    out[start..MAX_HEAD].copy_from_slice(&h[..n]);
    let mut frame = Bytes::from(out);
    frame.advance(start);
    frame
}

/// A whole server frame: header and payload in one buffer.
pub fn encode(opcode: u8, payload: &[u8]) -> Bytes {
    let (h, n) = head(opcode, payload.len());
    let mut out = Vec::with_capacity(n + payload.len());
    out.extend_from_slice(&h[..n]);
    out.extend_from_slice(payload);
    Bytes::from(out)
}

/// A close frame with `code` and `reason` (cut to fit a control frame, at a
/// character boundary).
pub fn close(code: u16, reason: &str) -> Bytes {
    let mut end = reason.len().min(MAX_CONTROL - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    encode(OP_CLOSE, &payload)
}

/// A close frame's code and reason; `None` when it has no payload (the
/// status is then 1005, "no status received", which is never on the wire).
pub fn parse_close(payload: &[u8]) -> Result<Option<(u16, &str)>, Violation> {
    match payload {
        [] => Ok(None),
        [_] => Err(Violation::Protocol("close payload of one byte")),
        [a, b, reason @ ..] => {
            let code = u16::from_be_bytes([*a, *b]);
            if !close_code_allowed(code) {
                return Err(Violation::Protocol("close code not allowed on the wire"));
            }
            let reason = std::str::from_utf8(reason).map_err(|_| Violation::Utf8)?;
            Ok(Some((code, reason)))
        }
    }
}

/// Codes a peer may send (sections 7.4.1 and 7.4.2): the defined ones
/// except those that only describe a connection (1004-1006, 1015), and the
/// ranges for libraries and applications.
pub fn close_code_allowed(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    /// A masked client frame, as a browser sends it.
    fn client(b0: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![b0];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xFFFF => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&MASK);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
        out
    }

    #[test]
    fn a_frame_written_in_place_is_the_frame_encoded() {
        // Each header length: 7-bit, 16-bit and 64-bit payload lengths.
        for n in [0, 1, 125, 126, 65_535, 65_536] {
            let payload = vec![b'x'; n];
            let in_place = encode_with(OP_TEXT, 16, |out| out.extend_from_slice(&payload));
            assert_eq!(in_place, encode(OP_TEXT, &payload), "{n} bytes");
            assert_eq!(head_len(&in_place), head(OP_TEXT, n).1);
        }
    }

    fn decode_all(bytes: &[u8], max: usize) -> Result<Option<Frame>, Violation> {
        decode(&mut BytesMut::from(bytes), max)
    }

    #[test]
    fn rfc_sample_frames_decode() {
        // Section 5.7: a masked "Hello".
        let bytes = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        let f = decode_all(&bytes, 100).unwrap().unwrap();
        assert_eq!(
            (f.fin, f.opcode, &f.payload[..]),
            (true, OP_TEXT, &b"Hello"[..])
        );
        // 256 and 65,536 bytes: the 16- and 64-bit lengths.
        for n in [0, 125, 126, 256, 65_535, 65_536] {
            let payload = vec![b'x'; n];
            let f = decode_all(&client(0x82, &payload), 1 << 20)
                .unwrap()
                .unwrap();
            assert_eq!(f.payload.len(), n);
            assert!(f.payload.iter().all(|&b| b == b'x'));
        }
    }

    #[test]
    fn every_prefix_asks_for_more_and_the_rest_stays() {
        let mut bytes = client(0x81, &[b'a'; 300]);
        bytes.extend(client(0x89, b"p"));
        for cut in 0..bytes.len() - 7 {
            let mut buf = BytesMut::from(&bytes[..cut]);
            if cut < 308 {
                assert_eq!(decode(&mut buf, 1000), Ok(None), "cut at {cut}");
                assert_eq!(buf.len(), cut, "nothing consumed at {cut}");
            }
        }
        let mut buf = BytesMut::from(&bytes[..]);
        assert_eq!(decode(&mut buf, 1000).unwrap().unwrap().payload.len(), 300);
        let ping = decode(&mut buf, 1000).unwrap().unwrap();
        assert_eq!((ping.opcode, &ping.payload[..]), (OP_PING, &b"p"[..]));
        assert!(buf.is_empty());
    }

    #[test]
    fn violations_get_their_codes() {
        let p = |what| Err(Violation::Protocol(what));
        let unmasked = [0x81, 0x01, b'x'];
        assert_eq!(decode_all(&unmasked, 10), p("client frames must be masked"));
        for rsv in [0x40, 0x20, 0x10] {
            assert_eq!(
                decode_all(&client(0x81 | rsv, b"x"), 10),
                p("reserved bits set without an extension")
            );
        }
        for op in [3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF] {
            assert_eq!(
                decode_all(&client(0x80 | op, b""), 10),
                p("reserved opcode")
            );
        }
        assert_eq!(
            decode_all(&client(0x09, b"x"), 10),
            p("fragmented control frame")
        );
        assert_eq!(
            decode_all(&client(0x89, &[0; 126]), 1000),
            p("control frame over 125 bytes")
        );
        let huge = [&[0x81, 0xFF][..], &(1u64 << 63).to_be_bytes(), &MASK].concat();
        assert_eq!(
            decode_all(&huge, 10),
            p("64-bit length with the top bit set")
        );
        // Over the limit: known from the header alone, before the payload.
        let big = [&[0x81, 0xFF][..], &(1u64 << 40).to_be_bytes()].concat();
        assert_eq!(decode_all(&big, 1000), Err(Violation::TooBig));
        assert_eq!(
            decode_all(&client(0x81, &[b'a'; 11]), 10),
            Err(Violation::TooBig)
        );
        // A control frame is bounded by 125 whatever the limit.
        assert!(decode_all(&client(0x89, &[0; 125]), 10).unwrap().is_some());
    }

    #[test]
    fn a_claimed_length_reserves_room_once_the_header_is_in() {
        let bytes = client(0x81, &[b'a'; 5000]);
        let mut buf = BytesMut::from(&bytes[..8]);
        assert_eq!(decode(&mut buf, 10_000), Ok(None));
        assert!(buf.capacity() >= bytes.len());
    }

    #[test]
    fn server_frames_are_unmasked_and_final() {
        for n in [0, 125, 126, 65_535, 65_536] {
            let f = encode(OP_TEXT, &vec![b'y'; n]);
            assert_eq!(f[0], 0x81);
            assert_eq!(f[1] & 0x80, 0, "unmasked");
            assert_eq!(f.len() - head_len(&f), n);
        }
        assert_eq!(&encode(OP_TEXT, b"Hello")[..], b"\x81\x05Hello");
    }

    #[test]
    fn close_payloads() {
        assert_eq!(parse_close(b""), Ok(None));
        assert_eq!(
            parse_close(&[3]),
            Err(Violation::Protocol("close payload of one byte"))
        );
        assert_eq!(parse_close(b"\x03\xe8bye"), Ok(Some((1000, "bye"))));
        assert_eq!(parse_close(b"\x03\xe8\xff"), Err(Violation::Utf8));
        for code in [
            0u16,
            999,
            1004,
            1005,
            1006,
            1015,
            1016,
            2999,
            5000,
            u16::MAX,
        ] {
            assert!(parse_close(&code.to_be_bytes()).is_err(), "{code}");
        }
        for code in [1000u16, 1001, 1003, 1007, 1011, 1014, 3000, 4001, 4999] {
            assert!(parse_close(&code.to_be_bytes()).is_ok(), "{code}");
        }
        let long = "é".repeat(100);
        let f = close(4000, &long);
        assert!(f.len() - head_len(&f) <= MAX_CONTROL);
        let (code, reason) = parse_close(&f[2..]).unwrap().unwrap();
        assert_eq!(code, 4000);
        assert!(long.starts_with(reason));
    }
}
