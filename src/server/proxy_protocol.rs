//! PROXY protocol v1/v2 on the public listener (`server.proxy_protocol`):
//! a layer-4 load balancer writes the client's address in a header before
//! the client's bytes. Parsing is `ppp`'s; this module reads the header,
//! bounded in size (the caller bounds it in time), and hands back the bytes
//! read past it, which belong to the HTTP request.
//!
//! Fail closed: a connection that does not start with a valid header is
//! dropped. A v2 `LOCAL` header (the balancer's own health check) and a v1
//! `UNKNOWN` or v2 header without an IP address keep the TCP peer.

use std::io;
use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use ppp::{HeaderResult, PartialResult, v1, v2};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Longest header taken: a v1 header is at most 107 bytes; a v2 header may
/// carry up to 64 KiB of TLVs, but the balancers' (AWS, GCP, Azure) carry a
/// few dozen bytes, and a stranger on the port should not make us hold more.
pub const MAX_HEADER: usize = 4096;

/// Why a connection was dropped before HTTP.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    /// The peer closed before sending a byte (a TCP health check, a scan).
    #[error("closed before any byte")]
    Empty,
    /// Not a PROXY header, a truncated one, or one over [`MAX_HEADER`].
    #[error("invalid PROXY protocol header: {0}")]
    Invalid(String),
    #[error("reading the PROXY protocol header: {0}")]
    Io(#[from] io::Error),
}

/// Reads one PROXY header from `stream`. Returns the client's address (the
/// header's source, or `peer` when the header names none) and the bytes read
/// past the header.
pub async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
    peer: SocketAddr,
) -> Result<(SocketAddr, Bytes), HeaderError> {
    let mut buf = BytesMut::with_capacity(256);
    loop {
        let room = MAX_HEADER - buf.len();
        if room == 0 {
            return Err(HeaderError::Invalid(format!(
                "no complete header in {MAX_HEADER} bytes"
            )));
        }
        buf.reserve(room.min(1024));
        let n = (&mut *stream).take(room as u64).read_buf(&mut buf).await?;
        if n == 0 {
            return Err(if buf.is_empty() {
                HeaderError::Empty
            } else {
                HeaderError::Invalid("connection closed inside the header".into())
            });
        }
        let parsed = HeaderResult::parse(&buf);
        if parsed.is_incomplete() {
            continue;
        }
        let (len, source) = match parsed {
            HeaderResult::V1(Ok(header)) => (header.header.len(), v1_source(&header.addresses)),
            HeaderResult::V2(Ok(header)) => (header.len(), v2_source(&header)),
            HeaderResult::V1(Err(e)) => return Err(HeaderError::Invalid(e.to_string())),
            HeaderResult::V2(Err(e)) => return Err(HeaderError::Invalid(e.to_string())),
        };
        // The bytes past the header, if any; none keeps no buffer alive.
        let rest = if buf.len() > len {
            buf.freeze().slice(len..)
        } else {
            Bytes::new()
        };
        let client = source.map_or(peer, |s| SocketAddr::new(s.ip().to_canonical(), s.port()));
        return Ok((client, rest));
    }
}

fn v1_source(addresses: &v1::Addresses) -> Option<SocketAddr> {
    match addresses {
        v1::Addresses::Tcp4(a) => Some((a.source_address, a.source_port).into()),
        v1::Addresses::Tcp6(a) => Some((a.source_address, a.source_port).into()),
        v1::Addresses::Unknown => None,
    }
}

fn v2_source(header: &v2::Header<'_>) -> Option<SocketAddr> {
    if header.command == v2::Command::Local {
        return None;
    }
    match header.addresses {
        v2::Addresses::IPv4(a) => Some((a.source_address, a.source_port).into()),
        v2::Addresses::IPv6(a) => Some((a.source_address, a.source_port).into()),
        v2::Addresses::Unspecified | v2::Addresses::Unix(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> SocketAddr {
        "10.0.0.1:40000".parse().unwrap()
    }

    /// Feeds `input` in `chunk`-byte pieces.
    async fn parse(input: &[u8], chunk: usize) -> Result<(SocketAddr, Vec<u8>), HeaderError> {
        let (mut client, mut server) = tokio::io::duplex(64);
        let input = input.to_vec();
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for piece in input.chunks(chunk) {
                if client.write_all(piece).await.is_err() {
                    return;
                }
            }
        });
        let result = read_header(&mut server, peer()).await;
        let (addr, rest) = match result {
            Ok(ok) => ok,
            Err(e) => {
                drop(server); // unblocks the writer
                let _ = writer.await;
                return Err(e);
            }
        };
        let mut all = rest.to_vec();
        server.read_to_end(&mut all).await.unwrap();
        let _ = writer.await;
        Ok((addr, all))
    }

    fn v2(command: u8, family: u8, addresses: &[u8]) -> Vec<u8> {
        let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        h.push(0x20 | command);
        h.push(family);
        h.extend((addresses.len() as u16).to_be_bytes());
        h.extend(addresses);
        h
    }

    #[tokio::test]
    async fn v1_and_v2_in_any_chunking() {
        let v1 = b"PROXY TCP4 203.0.113.7 10.0.0.2 51000 8080\r\nGET / HTTP/1.1\r\n".to_vec();
        let mut v2_4 = v2(
            1,
            0x11,
            &[203, 0, 113, 8, 10, 0, 0, 2, 0xC7, 0x38, 0x1F, 0x90],
        );
        v2_4.extend(b"GET /");
        for chunk in [1, 3, 1000] {
            let (addr, rest) = parse(&v1, chunk).await.unwrap();
            assert_eq!(addr, "203.0.113.7:51000".parse().unwrap());
            assert_eq!(rest, b"GET / HTTP/1.1\r\n");
            let (addr, rest) = parse(&v2_4, chunk).await.unwrap();
            assert_eq!(addr, "203.0.113.8:51000".parse().unwrap());
            assert_eq!(rest, b"GET /");
        }
        let v1_6 = b"PROXY TCP6 2001:db8::7 2001:db8::1 4000 80\r\n";
        assert_eq!(
            parse(v1_6, 7).await.unwrap().0,
            "[2001:db8::7]:4000".parse().unwrap()
        );
    }

    #[tokio::test]
    async fn local_and_unknown_keep_the_peer() {
        let local = v2(0, 0x00, &[]);
        assert_eq!(parse(&local, 100).await.unwrap().0, peer());
        // LOCAL with addresses: still the peer.
        let local = v2(0, 0x11, &[1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2]);
        assert_eq!(parse(&local, 100).await.unwrap().0, peer());
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\nGET", 100).await.unwrap(),
            (peer(), b"GET".to_vec())
        );
    }

    #[tokio::test]
    async fn anything_else_is_refused() {
        for bad in [
            &b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"PROXY TCP4 1.2.3.4\r\n",
            b"PROXY TCP4 300.2.3.4 10.0.0.2 1 2\r\n",
            b"PROXY TCP5 1.2.3.4 10.0.0.2 1 2\r\n",
            b"\r\n\r\n\0\r\nQUIT\n\x30\x11\x00\x00",
        ] {
            assert!(
                matches!(parse(bad, 5).await, Err(HeaderError::Invalid(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        // Truncated, then closed.
        assert!(matches!(
            parse(b"PROXY TCP4 1.2.3.4 ", 5).await,
            Err(HeaderError::Invalid(_))
        ));
        assert!(matches!(parse(b"", 5).await, Err(HeaderError::Empty)));
        // Longer than MAX_HEADER (a v2 header announcing a large TLV area).
        let mut big = v2(1, 0x11, &[0; 12]);
        big[14..16].copy_from_slice(&(MAX_HEADER as u16).to_be_bytes());
        big.extend(vec![0; MAX_HEADER]);
        assert!(matches!(
            parse(&big, 512).await,
            Err(HeaderError::Invalid(_))
        ));
        // v1 with no line end within 107 bytes.
        let long = format!("PROXY TCP4 {}", "1".repeat(200));
        assert!(matches!(
            parse(long.as_bytes(), 50).await,
            Err(HeaderError::Invalid(_))
        ));
    }
}
