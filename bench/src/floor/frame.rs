//! RFC 6455 framing, by hand, for the floor: the server's frames are
//! unmasked and encoded once into a [`Bytes`] that every recipient shares;
//! the client's frames are masked and decoded from a read buffer that may
//! hold part of a frame, one frame, or several.
//!
//! Only what the floor needs: no extensions (RSV bits must be 0), no
//! fragmented messages (a data frame without FIN, or a continuation frame,
//! is refused by the session with a close), control frames of at most 125
//! bytes, client frames up to a configured size.

use base64::Engine;
use bytes::{BufMut, Bytes, BytesMut};
use sha1::{Digest, Sha1};

pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`: base64(SHA-1(key + GUID)).
pub fn accept_key(key: &str) -> String {
    let mut h = Sha1::new();
    h.update(key.trim().as_bytes());
    h.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// One unmasked server frame with FIN set.
pub fn encode(opcode: u8, payload: &[u8]) -> Bytes {
    let len = payload.len();
    let mut out = BytesMut::with_capacity(len + 10);
    out.put_u8(0x80 | opcode);
    if len < 126 {
        out.put_u8(len as u8);
    } else if len <= u16::MAX as usize {
        out.put_u8(126);
        out.put_u16(len as u16);
    } else {
        out.put_u8(127);
        out.put_u64(len as u64);
    }
    out.put_slice(payload);
    out.freeze()
}

/// A text frame.
pub fn text(payload: &[u8]) -> Bytes {
    encode(OP_TEXT, payload)
}

/// A close frame with a status code and a reason (truncated to fit 125 bytes).
pub fn close(code: u16, reason: &str) -> Bytes {
    let mut p = Vec::with_capacity(2 + reason.len());
    p.extend_from_slice(&code.to_be_bytes());
    let r = reason.as_bytes();
    p.extend_from_slice(&r[..r.len().min(123)]);
    encode(OP_CLOSE, &p)
}

/// A client frame, unmasked.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    pub opcode: u8,
    pub payload: BytesMut,
}

/// Why a client frame is refused: the close code to send, and a reason.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal(pub u16, pub &'static str);

/// Takes one complete client frame off the front of `buf`, if there is one
/// (`Ok(None)`: read more). Frames larger than `max` are refused (1009)
/// before their payload is read.
pub fn decode(buf: &mut BytesMut, max: usize) -> Result<Option<Frame>, Refusal> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    if b0 & 0x70 != 0 {
        return Err(Refusal(1002, "reserved bits set"));
    }
    let fin = b0 & 0x80 != 0;
    let opcode = b0 & 0x0F;
    if b1 & 0x80 == 0 {
        return Err(Refusal(1002, "client frames must be masked"));
    }
    let (len, at) = match b1 & 0x7F {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u16::from_be_bytes([buf[2], buf[3]]) as u64, 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(b), 10)
        }
        n => (n as u64, 2),
    };
    if opcode >= 0x8 {
        if !fin || len > 125 {
            return Err(Refusal(1002, "bad control frame"));
        }
        if !matches!(opcode, OP_CLOSE | OP_PING | OP_PONG) {
            return Err(Refusal(1002, "unknown opcode"));
        }
    } else if opcode > OP_BINARY {
        return Err(Refusal(1002, "unknown opcode"));
    }
    if len > max as u64 {
        return Err(Refusal(1009, "frame too large"));
    }
    let len = len as usize;
    if buf.len() < at + 4 + len {
        buf.reserve(at + 4 + len - buf.len());
        return Ok(None);
    }
    let mask = [buf[at], buf[at + 1], buf[at + 2], buf[at + 3]];
    let _ = buf.split_to(at + 4);
    let mut payload = buf.split_to(len);
    unmask(&mut payload, mask);
    Ok(Some(Frame {
        fin,
        opcode,
        payload,
    }))
}

/// XORs `data` with the 4-byte mask (its own inverse).
pub fn unmask(data: &mut [u8], mask: [u8; 4]) {
    let word = u32::from_ne_bytes(mask);
    let mut chunks = data.chunks_exact_mut(4);
    for c in &mut chunks {
        let v = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]) ^ word;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i];
    }
}

/// The status code of a close frame's payload (1005: none given).
pub fn close_code(payload: &[u8]) -> u16 {
    if payload.len() >= 2 {
        u16::from_be_bytes([payload[0], payload[1]])
    } else {
        1005
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// A masked client frame, as a browser or tungstenite sends it.
    pub fn client_frame(fin: bool, opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
        let len = payload.len();
        if len < 126 {
            out.push(0x80 | len as u8);
        } else if len <= 65535 {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        out.extend_from_slice(&mask);
        let mut p = payload.to_vec();
        unmask(&mut p, mask);
        out.extend_from_slice(&p);
        out
    }

    #[test]
    fn accept_key_of_the_rfc_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn encodes_the_three_length_forms() {
        let f = text(b"hi");
        assert_eq!(&f[..], &[0x81, 2, b'h', b'i']);
        let p = vec![b'x'; 126];
        let f = text(&p);
        assert_eq!(&f[..4], &[0x81, 126, 0, 126]);
        assert_eq!(f.len(), 4 + 126);
        let p = vec![b'x'; 70_000];
        let f = text(&p);
        assert_eq!(f[1], 127);
        assert_eq!(u64::from_be_bytes(f[2..10].try_into().unwrap()), 70_000);
        assert_eq!(f.len(), 10 + 70_000);
        let c = close(4009, "slow consumer");
        assert_eq!(c[0], 0x88);
        assert_eq!(close_code(&c[2..]), 4009);
        assert_eq!(&c[4..], b"slow consumer");
    }

    #[test]
    fn decodes_masked_frames_of_every_length() {
        for len in [0usize, 5, 125, 126, 1000, 65535, 65536, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut buf = BytesMut::from(&client_frame(true, OP_TEXT, &payload, [1, 2, 3, 4])[..]);
            let f = decode(&mut buf, 1 << 20).unwrap().unwrap();
            assert!(f.fin);
            assert_eq!(f.opcode, OP_TEXT);
            assert_eq!(&f.payload[..], &payload[..], "len {len}");
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn a_frame_split_across_reads_and_two_in_one_read() {
        let a = client_frame(
            true,
            OP_TEXT,
            br#"{"type":"auth","token":"t"}"#,
            [9, 8, 7, 6],
        );
        let b = client_frame(true, OP_PING, b"p", [0xAA, 0xBB, 0xCC, 0xDD]);
        let mut all = a.clone();
        all.extend_from_slice(&b);
        // Byte by byte: nothing until the last byte of each frame.
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for byte in &all {
            buf.put_u8(*byte);
            while let Some(f) = decode(&mut buf, 1024).unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got.len(), 2);
        assert_eq!(&got[0].payload[..], br#"{"type":"auth","token":"t"}"#);
        assert_eq!((got[1].opcode, &got[1].payload[..]), (OP_PING, &b"p"[..]));
        // Both in one read.
        let mut buf = BytesMut::from(&all[..]);
        assert_eq!(decode(&mut buf, 1024).unwrap().unwrap().opcode, OP_TEXT);
        assert_eq!(decode(&mut buf, 1024).unwrap().unwrap().opcode, OP_PING);
        assert_eq!(decode(&mut buf, 1024).unwrap(), None);
    }

    #[test]
    fn close_and_ping() {
        let mut p = 1000u16.to_be_bytes().to_vec();
        p.extend_from_slice(b"bye");
        let mut buf = BytesMut::from(&client_frame(true, OP_CLOSE, &p, [5, 6, 7, 8])[..]);
        let f = decode(&mut buf, 1024).unwrap().unwrap();
        assert_eq!(f.opcode, OP_CLOSE);
        assert_eq!(close_code(&f.payload), 1000);
        assert_eq!(close_code(&[]), 1005);
        let mut buf = BytesMut::from(&client_frame(true, OP_PING, b"abc", [1, 1, 1, 1])[..]);
        let f = decode(&mut buf, 1024).unwrap().unwrap();
        assert_eq!(
            &encode(OP_PONG, &f.payload)[..],
            &[0x8A, 3, b'a', b'b', b'c']
        );
    }

    #[test]
    fn refusals() {
        // Unmasked.
        let mut buf = BytesMut::from(&[0x81u8, 1, b'x'][..]);
        assert_eq!(decode(&mut buf, 1024).unwrap_err().0, 1002);
        // Reserved bit (compression) set.
        let mut f = client_frame(true, OP_TEXT, b"x", [1, 2, 3, 4]);
        f[0] |= 0x40;
        assert_eq!(
            decode(&mut BytesMut::from(&f[..]), 1024).unwrap_err().0,
            1002
        );
        // Fragmented control frame; control frame over 125 bytes.
        let f = client_frame(false, OP_PING, b"x", [1, 2, 3, 4]);
        assert_eq!(
            decode(&mut BytesMut::from(&f[..]), 1024).unwrap_err().0,
            1002
        );
        let f = client_frame(true, OP_PING, &[0; 126], [1, 2, 3, 4]);
        assert_eq!(
            decode(&mut BytesMut::from(&f[..]), 1024).unwrap_err().0,
            1002
        );
        // Too large: refused from the header alone.
        let f = client_frame(true, OP_TEXT, &[0; 2000], [1, 2, 3, 4]);
        assert_eq!(
            decode(&mut BytesMut::from(&f[..4]), 1024).unwrap_err().0,
            1009
        );
        // A fragment is decoded (FIN clear); the session refuses it.
        let f = client_frame(false, OP_TEXT, b"x", [1, 2, 3, 4]);
        let d = decode(&mut BytesMut::from(&f[..]), 1024).unwrap().unwrap();
        assert!(!d.fin);
    }

    #[test]
    fn unmask_is_its_own_inverse_at_any_alignment() {
        let orig: Vec<u8> = (0..37).collect();
        let mut d = orig.clone();
        unmask(&mut d[3..], [0x12, 0x34, 0x56, 0x78]);
        assert_ne!(d, orig);
        unmask(&mut d[3..], [0x12, 0x34, 0x56, 0x78]);
        assert_eq!(d, orig);
        let mut d = vec![0u8; 6];
        unmask(&mut d, [1, 2, 3, 4]);
        assert_eq!(d, vec![1, 2, 3, 4, 1, 2]);
    }
}
