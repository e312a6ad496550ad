//! A server-side WebSocket on a TCP stream: client messages in, encoded
//! frames out.
//!
//! Why not a general WebSocket library: a broadcast's frame is encoded once
//! (`frame::encode`) and every recipient's socket writes those same bytes
//! with one `writev` per batch, with no copy into a per-socket buffer; and an
//! idle socket holds no buffer at all: reads wait for readiness first, and
//! unwritten frames are kept only while a write waits.
//!
//! The read side answers pings (the newest unanswered one, section 5.5.2) and
//! a client's close (echoing its code, section 5.5.1) by itself; the writes
//! that carry those answers go out with the next write or read.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;

use super::frame::{self, OP_BINARY, OP_CLOSE, OP_CONTINUATION, OP_PING, OP_PONG, OP_TEXT};
use super::frame::{Frame, Violation};

/// Bytes reserved for a read when the buffer has less room than
/// `READ_MIN_ROOM`: client frames are small requests.
const READ_CHUNK: usize = 1024;
const READ_MIN_ROOM: usize = 256;
/// Most frames handed to one `writev` (Linux takes up to 1024).
const MAX_IOV: usize = 64;

/// A client's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A text message, checked to be UTF-8.
    Text(String),
    Binary(Bytes),
    /// Already answered with a pong.
    Ping(Bytes),
    Pong(Bytes),
    /// The client's close (code and reason; `None` without a status). It is
    /// answered with a close frame echoing the code.
    Close(Option<(u16, String)>),
}

/// Why reading failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The client broke the protocol; answer with the violation's code.
    #[error(transparent)]
    Violation(#[from] Violation),
    #[error("socket: {0}")]
    Io(#[from] io::Error),
}

/// A message arriving in fragments.
struct Partial {
    text: bool,
    data: BytesMut,
}

pub struct WebSocket {
    io: TcpStream,
    /// Bytes read and not yet decoded. Empty (no allocation) between frames.
    input: BytesMut,
    /// A fragmented message being assembled; none between messages.
    partial: Option<Box<Partial>>,
    /// Largest message (and data frame), in bytes.
    max_message: usize,
    /// Encoded frames not yet wholly written, oldest first. The first may be
    /// partly written (`front_started`); nothing goes before it then.
    out: VecDeque<Bytes>,
    front_started: bool,
    /// The pong owed for the newest ping, written at the next frame boundary.
    pong: Option<Bytes>,
    /// A close frame was queued: nothing is written after it.
    close_sent: bool,
    /// The client's half is closed (end of stream, or its close frame).
    read_done: bool,
}

impl WebSocket {
    /// A socket on `io` after the upgrade; `read` holds bytes the client
    /// sent past the upgrade request.
    pub fn new(io: TcpStream, read: Bytes, max_message: usize) -> WebSocket {
        WebSocket {
            io,
            input: BytesMut::from(&read[..]),
            partial: None,
            max_message,
            out: VecDeque::new(),
            front_started: false,
            pong: None,
            close_sent: false,
            read_done: false,
        }
    }

    /// The next message, or `None` once the client's side is closed. Pending
    /// frames (a pong, a close answer) are written along the way.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Message, Error>>> {
        // A write that waits wakes us through the same waker; its error
        // shows up on the next read anyway.
        let _ = self.poll_flush(cx);
        loop {
            if self.read_done {
                return Poll::Ready(None);
            }
            match frame::decode(&mut self.input, self.max_message) {
                Ok(Some(f)) => match self.on_frame(f) {
                    Ok(Some(message)) => {
                        let _ = self.poll_flush(cx);
                        return Poll::Ready(Some(Ok(message)));
                    }
                    Ok(None) => continue,
                    Err(v) => return Poll::Ready(Some(Err(v.into()))),
                },
                Ok(None) => {}
                Err(v) => return Poll::Ready(Some(Err(v.into()))),
            }
            if self.input.is_empty() {
                // An idle socket holds no read buffer.
                self.input = BytesMut::new();
            }
            if let Err(e) = ready!(self.io.poll_read_ready(cx)) {
                return Poll::Ready(Some(Err(e.into())));
            }
            if self.input.capacity() - self.input.len() < READ_MIN_ROOM {
                self.input.reserve(READ_CHUNK);
            }
            match self.io.try_read_buf(&mut self.input) {
                Ok(0) => {
                    self.read_done = true;
                    return Poll::Ready(None);
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Some(Err(e.into()))),
            }
        }
    }

    pub async fn recv(&mut self) -> Option<Result<Message, Error>> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Section 5.4 (fragments), 5.5 (control frames), 5.6 (UTF-8).
    fn on_frame(&mut self, f: Frame) -> Result<Option<Message>, Violation> {
        match f.opcode {
            OP_PING => {
                if !self.close_sent {
                    self.pong = Some(frame::encode(OP_PONG, &f.payload));
                }
                Ok(Some(Message::Ping(f.payload)))
            }
            OP_PONG => Ok(Some(Message::Pong(f.payload))),
            OP_CLOSE => {
                let status = frame::parse_close(&f.payload)?;
                self.read_done = true;
                if !self.close_sent {
                    let answer = match status {
                        Some((code, _)) => frame::close(code, ""),
                        None => frame::encode(OP_CLOSE, &[]),
                    };
                    self.queue_close(answer);
                }
                Ok(Some(Message::Close(
                    status.map(|(code, reason)| (code, reason.to_owned())),
                )))
            }
            OP_TEXT | OP_BINARY => {
                if self.partial.is_some() {
                    return Err(Violation::Protocol("new message inside a fragmented one"));
                }
                let text = f.opcode == OP_TEXT;
                if f.fin {
                    return message(text, f.payload).map(Some);
                }
                self.partial = Some(Box::new(Partial {
                    text,
                    data: BytesMut::from(&f.payload[..]),
                }));
                Ok(None)
            }
            OP_CONTINUATION => {
                let Some(partial) = self.partial.as_mut() else {
                    return Err(Violation::Protocol("continuation with nothing to continue"));
                };
                if partial.data.len() + f.payload.len() > self.max_message {
                    return Err(Violation::TooBig);
                }
                partial.data.extend_from_slice(&f.payload);
                if !f.fin {
                    return Ok(None);
                }
                let (text, data) = (partial.text, std::mem::take(&mut partial.data));
                self.partial = None;
                message(text, data.freeze()).map(Some)
            }
            // `decode` lets no other opcode through.
            _ => Err(Violation::Protocol("reserved opcode")),
        }
    }

    /// Queues an encoded frame (a text frame from `protocol::Frame::wire`, a
    /// ping); `flush` writes it. Nothing is queued after a close frame.
    pub fn queue(&mut self, frame: Bytes) {
        if !self.close_sent {
            self.out.push_back(frame);
        }
    }

    /// Queues a frame, and writes once a full `writev` is queued: a long
    /// run of frames (a history replay) is not held all at once.
    pub async fn feed(&mut self, frame: Bytes) -> io::Result<()> {
        self.queue(frame);
        if self.out.len() >= MAX_IOV {
            self.flush().await?;
        }
        Ok(())
    }

    /// Writes the frames of `items` (`wire` finds each one's bytes) with
    /// one write (`send` for one frame, `writev` for several) if the socket
    /// takes them at once, and queues what it does not take, for `flush`.
    /// Answers whether everything was written.
    /// Nothing is allocated and nothing waits on the common path (nothing
    /// queued before, room in the socket's buffer): a delivery to a socket
    /// whose queue was empty made and freed the queue's storage, and a
    /// write's waiting state, for every frame. With frames queued already,
    /// or a pong owed, these go behind them.
    pub fn write_or_queue<T>(
        &mut self,
        items: &[T],
        wire: impl Fn(&T) -> &Bytes,
    ) -> io::Result<bool> {
        let mut written = 0;
        if self.out.is_empty() && self.pong.is_none() && !self.close_sent && !items.is_empty() {
            let io = &self.io;
            let tried = match items {
                // `send` for one frame skips `writev`'s extra layers
                // (`vfs_writev`, `fdget_pos`: 0.5 us per delivery in a
                // profile, though alternated runs did not tell the two apart).
                [one] => io.try_write(wire(one)),
                _ => with_slices(items.iter().map(&wire), |slices| {
                    io.try_write_vectored(slices)
                }),
            };
            match tried {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => written = n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        let mut all = true;
        for item in items {
            let frame = wire(item);
            if written >= frame.len() {
                written -= frame.len();
                continue;
            }
            let mut rest = frame.clone();
            if written > 0 {
                // Partly written: the rest goes first (the queue was empty).
                rest.advance(written);
                written = 0;
                self.front_started = true;
            }
            self.queue(rest);
            all = false;
        }
        Ok(all)
    }

    fn queue_close(&mut self, frame: Bytes) {
        self.out.push_back(frame);
        self.close_sent = true;
    }

    /// Writes what is queued. Cancel-safe: what is not written stays queued,
    /// in order, ahead of anything queued later.
    pub async fn flush(&mut self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_flush(cx)).await
    }

    pub async fn send(&mut self, frame: Bytes) -> io::Result<()> {
        self.queue(frame);
        self.flush().await
    }

    /// Queues a close frame with `code` and `reason` and writes it (with
    /// everything queued before it).
    pub async fn send_close(&mut self, code: u16, reason: &str) -> io::Result<()> {
        if !self.close_sent {
            self.queue_close(frame::close(code, reason));
        }
        self.flush().await
    }

    pub fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if !self.front_started
                && let Some(pong) = self.pong.take()
            {
                self.out.push_front(pong);
            }
            if self.out.is_empty() {
                // An idle socket holds no queue.
                if self.out.capacity() > 0 {
                    self.out = VecDeque::new();
                }
                return Poll::Ready(Ok(()));
            }
            let io = Pin::new(&mut self.io);
            let written = ready!(match self.out.len() {
                1 => io.poll_write(cx, &self.out[0]),
                _ => with_slices(self.out.iter(), |slices| io.poll_write_vectored(cx, slices)),
            })?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.consume(written);
        }
    }

    /// Drops `n` written bytes from the front of the queue.
    fn consume(&mut self, mut n: usize) {
        while n > 0 {
            let Some(front) = self.out.front_mut() else {
                return;
            };
            if n < front.len() {
                front.advance(n);
                self.front_started = true;
                return;
            }
            n -= front.len();
            self.out.pop_front();
            self.front_started = false;
        }
    }

    /// Writes what is queued (a close answer, say), bounded by `limit`, then
    /// shuts the write side; the socket closes when dropped.
    pub async fn finish(&mut self, limit: std::time::Duration) {
        if let Ok(Ok(())) = tokio::time::timeout(limit, self.flush()).await {
            let _ =
                tokio::time::timeout(limit, tokio::io::AsyncWriteExt::shutdown(&mut self.io)).await;
        }
    }
}

/// Calls `write` with the first `MAX_IOV` frames as `IoSlice`s. The common
/// write is one frame or a few: setting up all 64 slices for it showed as a
/// fifth of `poll_flush` in the many-groups profile.
fn with_slices<'a, R>(
    frames: impl ExactSizeIterator<Item = &'a Bytes>,
    write: impl FnOnce(&[IoSlice<'_>]) -> R,
) -> R {
    fn call<'a, R, const N: usize>(
        frames: impl Iterator<Item = &'a Bytes>,
        n: usize,
        write: impl FnOnce(&[IoSlice<'_>]) -> R,
    ) -> R {
        let mut slices = [IoSlice::new(&[]); N];
        for (slice, frame) in slices.iter_mut().zip(frames) {
            *slice = IoSlice::new(frame);
        }
        write(&slices[..n])
    }
    const FEW: usize = 4;
    let n = frames.len().min(MAX_IOV);
    if n <= FEW {
        call::<R, FEW>(frames, n, write)
    } else {
        call::<R, MAX_IOV>(frames, n, write)
    }
}

fn message(text: bool, data: Bytes) -> Result<Message, Violation> {
    if !text {
        return Ok(Message::Binary(data));
    }
    match String::from_utf8(Vec::from(data)) {
        Ok(s) => Ok(Message::Text(s)),
        Err(_) => Err(Violation::Utf8),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    /// `write_or_queue` against a peer that does not read: the socket's
    /// buffer fills, a frame is taken in part, the rest is queued in order
    /// behind it (later calls too), and `flush` completes the stream. The
    /// peer then reads every frame whole and in order.
    #[tokio::test]
    async fn write_or_queue_keeps_order_across_a_full_socket() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let mut client = client.unwrap();
        let mut ws = WebSocket::new(accepted.unwrap().0, Bytes::new(), 1 << 20);

        // Frames of 64 KiB, each filled with its own byte.
        let frame = |i: usize| Bytes::from(vec![i as u8; 64 * 1024]);
        let mut sent = Vec::new();
        let mut first_unwritten = None;
        for call in 0..200 {
            let batch: Vec<Bytes> = (0..3).map(|k| frame(call * 3 + k)).collect();
            sent.extend(batch.iter().cloned());
            let all = ws.write_or_queue(&batch, |b| b).unwrap();
            match (all, first_unwritten) {
                (false, None) => first_unwritten = Some(call),
                (true, Some(at)) => panic!("call {call} wrote at once behind call {at}'s queue"),
                _ => {}
            }
            if first_unwritten.is_some_and(|at| call >= at + 2) {
                break;
            }
        }
        assert!(
            first_unwritten.is_some(),
            "the peer never stopped taking frames"
        );
        let expected: Vec<u8> = sent.iter().flat_map(|b| b.iter().copied()).collect();
        let reader = tokio::spawn(async move {
            let mut got = vec![0u8; expected.len()];
            client.read_exact(&mut got).await.unwrap();
            got == expected
        });
        ws.flush().await.unwrap();
        assert!(reader.await.unwrap(), "the peer read every byte in order");
    }
}
