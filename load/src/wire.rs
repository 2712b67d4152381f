//! The load tool's client side of a WebSocket after the handshake: frames
//! read in place from one buffer, and masked text frames written.
//!
//! fastwebsockets' reader splits every frame off its buffer into a
//! `BytesMut` of its own and checks every text frame's UTF-8; in `fanout`
//! that was a quarter of the tool's CPU, and the tool shares the cores with
//! the server it measures. This reader hands out each frame as a slice of
//! its buffer and leaves the payload unchecked: the tool checks what it
//! needs of every delivery itself and parses every 64th in full (which
//! checks its UTF-8). Frame headers are checked as RFC 6455 asks of a
//! client: no reserved bits, no mask, known opcodes, control frames whole
//! and short. Messages split into fragments are refused: neither wsroom nor
//! the reference server sends them.

use std::io;

use fastwebsockets::{OpCode, Payload};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

/// The buffer's size at first: an idle connection (`connect` holds
/// thousands) reads little more than its `connected` message.
const FIRST_SIZE: usize = 4 * 1024;
/// The size the buffer grows to while reads keep filling it (16 KiB read
/// a little faster than 64 KiB in `fanout`: what one read brings is then
/// still in the cache when the frames are checked).
const READ_SIZE: usize = 16 * 1024;
/// Largest frame accepted; the buffer grows to hold one that large.
const MAX_FRAME: usize = 64 << 20;

/// A frame the peer sent.
pub(crate) struct Frame<'a> {
    pub(crate) opcode: OpCode,
    pub(crate) payload: &'a [u8],
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum WireError {
    #[error("connection closed by the server without a close frame")]
    Eof,
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("bad frame from the server: {0}")]
    Protocol(&'static str),
}

/// One client connection: reads frames in place, answers pings, writes
/// masked text frames.
pub(crate) struct Client<S> {
    io: S,
    buf: Vec<u8>,
    /// Unread bytes are `buf[start..end]`.
    start: usize,
    end: usize,
    /// Scratch buffer for outgoing frames.
    out: Vec<u8>,
}

/// Where the next frame sits in the buffer.
struct Parsed {
    opcode: OpCode,
    payload: std::ops::Range<usize>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    pub(crate) fn new(io: S) -> Self {
        Client {
            io,
            buf: vec![0; FIRST_SIZE],
            start: 0,
            end: 0,
            out: Vec::new(),
        }
    }

    /// The next text, binary or close frame; pings are answered and pongs
    /// skipped on the way. Cancel-safe: a frame is consumed only when it is
    /// returned (a pong written for a ping may be cut short, though).
    pub(crate) async fn read_frame(&mut self) -> Result<Frame<'_>, WireError> {
        loop {
            match self.parse()? {
                Ok(Parsed { opcode, payload }) => {
                    self.start = payload.end;
                    match opcode {
                        OpCode::Ping => self.write_pong(payload).await?,
                        OpCode::Pong => {}
                        _ => {
                            return Ok(Frame {
                                opcode,
                                payload: &self.buf[payload],
                            });
                        }
                    }
                }
                Err(needed) => self.fill(needed).await?,
            }
        }
    }

    /// Writes one masked text frame (after anything queued).
    pub(crate) async fn write_text(&mut self, text: &[u8]) -> io::Result<()> {
        append_masked(&mut self.out, OpCode::Text, text);
        self.flush().await
    }

    /// Appends one masked text frame to what [`Client::flush`] writes; a
    /// busy sender queues many and writes them at once.
    pub(crate) fn queue_text(&mut self, text: &[u8]) {
        append_masked(&mut self.out, OpCode::Text, text);
    }

    /// Bytes queued and not yet written.
    pub(crate) fn queued(&self) -> usize {
        self.out.len()
    }

    /// Writes everything queued.
    pub(crate) async fn flush(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            self.io.write_all(&self.out).await?;
            self.out.clear();
        }
        self.io.flush().await
    }

    /// Writes a ping's pong (after anything queued).
    async fn write_pong(&mut self, ping: std::ops::Range<usize>) -> io::Result<()> {
        append_masked(&mut self.out, OpCode::Pong, &self.buf[ping]);
        self.flush().await
    }

    /// The next frame if it is all in the buffer, or how many more bytes
    /// from `start` are needed to know more.
    fn parse(&self) -> Result<Result<Parsed, usize>, WireError> {
        let b = &self.buf[self.start..self.end];
        if b.len() < 2 {
            return Ok(Err(2));
        }
        if b[0] & 0x70 != 0 {
            return Err(WireError::Protocol("reserved bits set"));
        }
        let fin = b[0] & 0x80 != 0;
        let opcode = match b[0] & 0x0f {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xa => OpCode::Pong,
            _ => return Err(WireError::Protocol("unknown opcode")),
        };
        if !fin || opcode == OpCode::Continuation {
            return Err(WireError::Protocol(
                "fragmented message (the load tool reads whole frames only)",
            ));
        }
        if b[1] & 0x80 != 0 {
            return Err(WireError::Protocol("masked frame from a server"));
        }
        let (head, len) = match b[1] & 0x7f {
            126 => {
                let Some(l) = b.get(2..4) else {
                    return Ok(Err(4));
                };
                (4, u16::from_be_bytes([l[0], l[1]]) as u64)
            }
            127 => {
                let Some(l) = b.get(2..10) else {
                    return Ok(Err(10));
                };
                (10, u64::from_be_bytes(l.try_into().expect("8 bytes")))
            }
            n => (2, u64::from(n)),
        };
        let is_control = matches!(opcode, OpCode::Close | OpCode::Ping | OpCode::Pong);
        if is_control && len > 125 {
            return Err(WireError::Protocol("control frame over 125 bytes"));
        }
        if len > (MAX_FRAME - head) as u64 {
            return Err(WireError::Protocol("frame over the tool's 64 MiB limit"));
        }
        let total = head + len as usize;
        if b.len() < total {
            return Ok(Err(total));
        }
        Ok(Ok(Parsed {
            opcode,
            payload: self.start + head..self.start + total,
        }))
    }

    /// Reads once from the socket, first moving the unread bytes (part of
    /// one frame) to the front, and growing the buffer if the frame needs
    /// `needed` bytes and would not fit.
    async fn fill(&mut self, needed: usize) -> Result<(), WireError> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if needed > self.buf.len() {
            self.buf.resize(needed, 0);
        }
        let free = self.buf.len() - self.end;
        let n = self.io.read(&mut self.buf[self.end..]).await?;
        if n == 0 {
            return Err(WireError::Eof);
        }
        self.end += n;
        if n == free && self.buf.len() < READ_SIZE {
            // The read filled the buffer: more is likely waiting.
            self.buf.resize((self.buf.len() * 2).min(READ_SIZE), 0);
        }
        Ok(())
    }
}

/// Appends a final, masked frame (a fresh random mask, as RFC 6455 asks of
/// a client).
fn append_masked(out: &mut Vec<u8>, opcode: OpCode, payload: &[u8]) {
    let mask: [u8; 4] = uuid::Uuid::new_v4().as_bytes()[..4]
        .try_into()
        .expect("4 bytes");
    let mut head = [0u8; 14];
    let n = fastwebsockets::Frame::new(true, opcode, Some(mask), Payload::Borrowed(payload))
        .fmt_head(&mut head);
    out.extend_from_slice(&head[..n]);
    let start = out.len();
    out.extend_from_slice(payload);
    let word = u32::from_ne_bytes(mask);
    let mut chunks = out[start..].chunks_exact_mut(4);
    for chunk in &mut chunks {
        let x = u32::from_ne_bytes(chunk.try_into().expect("4 bytes")) ^ word;
        chunk.copy_from_slice(&x.to_ne_bytes());
    }
    for (b, m) in chunks.into_remainder().iter_mut().zip(mask) {
        *b ^= m;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(bytes: &[u8]) -> Client<tokio::io::DuplexStream> {
        let (a, mut b) = tokio::io::duplex(1 << 20);
        let bytes = bytes.to_vec();
        tokio::spawn(async move {
            b.write_all(&bytes).await.unwrap();
            // Keep the other end open until the test reads everything.
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        });
        Client::new(a)
    }

    fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut head = [0u8; 10];
        let n = fastwebsockets::Frame::new(
            true,
            OpCode::try_from(opcode).unwrap(),
            None,
            fastwebsockets::Payload::Borrowed(payload),
        )
        .fmt_head(&mut head);
        [&head[..n], payload].concat()
    }

    #[tokio::test]
    async fn reads_frames_of_every_length_split_anywhere() {
        let sizes = [0usize, 1, 125, 126, 300, 65535, 65536, 200_000];
        let mut all = Vec::new();
        for &n in &sizes {
            all.extend(frame(0x1, &vec![b'a' + (n % 26) as u8; n]));
        }
        let (a, mut b) = tokio::io::duplex(7);
        tokio::spawn(async move {
            // Trickle in odd-sized pieces, so headers and payloads split.
            for piece in all.chunks(4093) {
                b.write_all(piece).await.unwrap();
            }
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        });
        let mut c = Client::new(a);
        for &n in &sizes {
            let f = tokio::time::timeout(std::time::Duration::from_secs(5), c.read_frame())
                .await
                .expect("in time")
                .expect("a frame");
            assert_eq!(f.opcode, OpCode::Text);
            assert_eq!(f.payload.len(), n);
            assert!(f.payload.iter().all(|&x| x == b'a' + (n % 26) as u8));
        }
    }

    #[tokio::test]
    async fn refuses_what_a_server_must_not_send() {
        let mut masked = frame(0x1, b"hi");
        masked[1] |= 0x80;
        let mut fragment = frame(0x1, b"hi");
        fragment[0] &= 0x7f;
        let mut rsv = frame(0x1, b"hi");
        rsv[0] |= 0x40;
        let long_ping = frame(0x9, &[0; 126]);
        for (bytes, what) in [
            (masked, "masked"),
            (fragment, "fragmented"),
            (rsv, "reserved"),
            (long_ping, "control frame"),
            (vec![0x83, 0], "unknown opcode"),
        ] {
            let mut c = client(&bytes);
            match c.read_frame().await {
                Err(WireError::Protocol(e)) => assert!(e.contains(what), "{e} for {what}"),
                Err(e) => panic!("{what}: {e}"),
                Ok(f) => panic!("{what}: accepted as {:?}", f.opcode),
            }
        }
    }

    #[tokio::test]
    async fn answers_pings_and_reports_eof() {
        let (a, mut b) = tokio::io::duplex(1024);
        let mut c = Client::new(a);
        b.write_all(&frame(0x9, b"abc")).await.unwrap();
        b.write_all(&frame(0x1, b"after")).await.unwrap();
        let f = c.read_frame().await.unwrap();
        assert_eq!(f.payload, b"after");
        // The pong: final, opcode 10, masked, 3 bytes, payload "abc" masked.
        let mut pong = [0u8; 9];
        b.read_exact(&mut pong).await.unwrap();
        assert_eq!(pong[0], 0x8a);
        assert_eq!(pong[1], 0x80 | 3);
        let mask = &pong[2..6];
        let payload: Vec<u8> = pong[6..].iter().zip(mask).map(|(x, m)| x ^ m).collect();
        assert_eq!(payload, b"abc");
        drop(b);
        assert!(matches!(c.read_frame().await, Err(WireError::Eof)));
    }

    #[tokio::test]
    async fn queued_frames_go_out_in_order_on_flush() {
        let (a, b) = tokio::io::duplex(1 << 20);
        let mut c = Client::new(a);
        let texts: Vec<String> = (0..50).map(|i| "m".repeat(i * 7)).collect();
        for t in &texts {
            c.queue_text(t.as_bytes());
        }
        assert!(c.queued() > 0);
        c.flush().await.unwrap();
        assert_eq!(c.queued(), 0);
        let mut ws = fastwebsockets::WebSocket::after_handshake(b, fastwebsockets::Role::Server);
        for t in &texts {
            let f = ws.read_frame().await.unwrap();
            assert_eq!(&f.payload[..], t.as_bytes());
        }
    }

    #[tokio::test]
    async fn writes_masked_text_a_server_reads() {
        let (a, b) = tokio::io::duplex(1 << 20);
        let mut c = Client::new(a);
        let text = "é".repeat(40_000);
        c.write_text(text.as_bytes()).await.unwrap();
        let mut ws = fastwebsockets::WebSocket::after_handshake(b, fastwebsockets::Role::Server);
        let f = ws.read_frame().await.unwrap();
        assert_eq!(f.opcode, OpCode::Text);
        assert_eq!(&f.payload[..], text.as_bytes());
    }
}
