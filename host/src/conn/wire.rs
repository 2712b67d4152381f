//! Reading a client's frames off the wire (RFC 6455 section 5.2) into a
//! buffer the connection holds only while bytes are waiting in it.
//!
//! An idle connection is most of what a server holds: thousands of clients
//! connected and silent. A read buffer kept for a connection's whole life
//! (fastwebsockets keeps 8 KiB) cost ~4 KB of every idle connection's
//! memory; [`FrameReader`] waits for the client with no buffer at all (the
//! first bytes land in a buffer on the thread's stack) and gives its buffer
//! back whenever it has drained and the client has nothing more to send.
//!
//! Only the frame's shape is checked here (reserved bits, opcode, control
//! frames whole and small enough for a ping, the frame size limit); what the
//! frames mean, masking included, is [`super::frames`]'s.

use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Poll, ready};

use bytes::{Buf, BytesMut};
use fastwebsockets::{Frame, OpCode, Payload, WebSocketError};
use tokio::io::{AsyncRead, ReadBuf};

/// What a read asks for at least, and what the first read of a waiting
/// connection lands in (on the stack).
const READ_CHUNK: usize = 8192;

/// Largest payload of a control frame (RFC 6455 5.5).
const MAX_CONTROL_PAYLOAD: u64 = 125;

/// A connection's reading side: its buffered bytes and the size limit.
pub(crate) struct FrameReader {
    buf: BytesMut,
    /// Whether `buf` has an allocation (its `capacity` does not say: the
    /// bytes read past are not counted in it).
    holding: bool,
    /// Whether `buf`'s allocation is smaller than [`READ_CHUNK`] (sized to
    /// the bytes that arrived), too small to read into.
    small: bool,
    /// Bytes of the frame last returned, dropped from `buf` at the next read
    /// (the frame borrowed them until then).
    consumed: usize,
    /// A frame whose payload is this long or longer is refused
    /// (`--max-message-bytes` × 4).
    max_frame: usize,
}

/// Where a frame's header says its parts are.
struct Head {
    fin: bool,
    opcode: OpCode,
    mask: Option<[u8; 4]>,
    header_len: usize,
    payload_len: usize,
}

impl FrameReader {
    pub(crate) fn new(max_frame: usize) -> FrameReader {
        FrameReader {
            buf: BytesMut::new(),
            holding: false,
            small: false,
            consumed: 0,
            max_frame,
        }
    }

    /// The next frame, unmasked in place; `UnexpectedEOF` when the client's
    /// stream ends, even between frames.
    pub(crate) async fn read_frame<R: AsyncRead + Unpin>(
        &mut self,
        read: &mut R,
    ) -> Result<Frame<'_>, WebSocketError> {
        self.buf.advance(self.consumed);
        self.consumed = 0;
        // Polled by hand rather than as nested futures: the future that
        // waits here is part of every connection's task, idle or not.
        let head = std::future::poll_fn(|cx| self.poll_head(read, cx)).await?;
        self.consumed = head.header_len + head.payload_len;
        let payload = &mut self.buf[head.header_len..self.consumed];
        if let Some(mask) = head.mask {
            fastwebsockets::unmask(payload, mask);
        }
        // The mask stays on the frame only to say the client masked it
        // (`frames::is_masked`); its payload is already unmasked.
        Ok(Frame::new(
            head.fin,
            head.opcode,
            head.mask,
            Payload::BorrowedMut(payload),
        ))
    }

    /// Whether bytes past the frame last returned are already buffered (the
    /// client sent more than one frame at once).
    pub(crate) fn has_more(&self) -> bool {
        self.buf.len() > self.consumed
    }

    /// The header at the front of the buffer, or how many bytes must be
    /// buffered before it can be read.
    fn parse_head(&self) -> Result<Result<Head, usize>, WebSocketError> {
        let buf = &self.buf[..];
        let [first, second, rest @ ..] = buf else {
            return Ok(Err(2));
        };
        if first & 0b0111_0000 != 0 {
            return Err(WebSocketError::ReservedBitsNotZero);
        }
        let fin = first & 0b1000_0000 != 0;
        let opcode = OpCode::try_from(first & 0b0000_1111)?;
        let masked = second & 0b1000_0000 != 0;
        let (extended, payload_len) = match second & 0x7F {
            126 => match rest {
                [a, b, ..] => (2, u64::from(u16::from_be_bytes([*a, *b]))),
                _ => return Ok(Err(4)),
            },
            127 => match rest.first_chunk::<8>() {
                Some(len) => (8, u64::from_be_bytes(*len)),
                None => return Ok(Err(10)),
            },
            len => (0, u64::from(len)),
        };
        let is_control = matches!(opcode, OpCode::Close | OpCode::Ping | OpCode::Pong);
        if is_control && !fin {
            return Err(WebSocketError::ControlFrameFragmented);
        }
        if is_control && payload_len > MAX_CONTROL_PAYLOAD {
            // (fastwebsockets' name for it; the reader closes with 1002
            // "control frame over 125 bytes" for a close or pong too.)
            return Err(WebSocketError::PingFrameTooLarge);
        }
        let header_len = 2 + extended + if masked { 4 } else { 0 };
        // (Checked: with a limit near `usize::MAX` the sum could wrap.)
        let payload_len = match usize::try_from(payload_len) {
            Ok(len) if len < self.max_frame && len.checked_add(header_len).is_some() => len,
            _ => return Err(WebSocketError::FrameTooLarge),
        };
        let mask = if masked {
            match buf.get(2 + extended..header_len) {
                Some(&[a, b, c, d]) => Some([a, b, c, d]),
                _ => return Ok(Err(header_len)),
            }
        } else {
            None
        };
        Ok(Ok(Head {
            fin,
            opcode,
            mask,
            header_len,
            payload_len,
        }))
    }

    /// Reads until a whole frame is buffered: its header. A connection with
    /// nothing buffered waits without a buffer, and gives back the one it
    /// had if the client turns out to have nothing more to send.
    fn poll_head<R: AsyncRead + Unpin>(
        &mut self,
        read: &mut R,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Result<Head, WebSocketError>> {
        loop {
            let needed = match self.parse_head()? {
                Ok(head) if self.buf.len() >= head.header_len + head.payload_len => {
                    return Poll::Ready(Ok(head));
                }
                Ok(head) => head.header_len + head.payload_len,
                Err(needed) => needed,
            };
            if ready!(self.poll_read_some(read, cx, needed))? == 0 {
                return Poll::Ready(Err(WebSocketError::UnexpectedEOF));
            }
        }
    }

    fn poll_read_some<R: AsyncRead + Unpin>(
        &mut self,
        read: &mut R,
        cx: &mut std::task::Context<'_>,
        needed: usize,
    ) -> Poll<Result<usize, WebSocketError>> {
        if self.holding && self.small && self.buf.is_empty() {
            // Drained, and too small to read into: a client sending one
            // message at a time lands here for every message. The stack
            // serves it better than growing this buffer to READ_CHUNK each
            // time (a reallocation of 8 KiB per message, freed when the
            // read finds nothing more).
            self.buf = BytesMut::new();
            self.holding = false;
        }
        if !self.holding {
            // No buffer: the first bytes go to the stack, and only bytes
            // that arrived take memory.
            let mut landing = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
            let mut landing = ReadBuf::uninit(&mut landing);
            ready!(Pin::new(read).poll_read(cx, &mut landing))?;
            let got = landing.filled();
            if got.is_empty() {
                return Poll::Ready(Ok(0));
            }
            // A full landing: more is coming, make room for it.
            let room = if got.len() == READ_CHUNK {
                2 * READ_CHUNK
            } else {
                got.len()
            };
            let size = room.max(needed);
            self.buf = BytesMut::with_capacity(size);
            self.buf.extend_from_slice(got);
            self.holding = true;
            self.small = size < READ_CHUNK;
            return Poll::Ready(Ok(got.len()));
        }
        // Reuses the buffer's whole allocation when what is buffered fits
        // (moved to its front; nothing to move when it has drained). Grows
        // as bytes arrive, doubling, not by what a header claims: a client
        // announcing a large frame and sending nothing holds little.
        self.buf.reserve(READ_CHUNK);
        self.small = false;
        let spare = self.buf.spare_capacity_mut();
        let mut into = ReadBuf::uninit(spare);
        match Pin::new(read).poll_read(cx, &mut into) {
            Poll::Ready(Ok(())) => {
                let got = into.filled().len();
                // SAFETY: `poll_read` initialised the first `got` bytes of
                // the spare capacity (`ReadBuf::filled`).
                unsafe { self.buf.set_len(self.buf.len() + got) };
                Poll::Ready(Ok(got))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e.into())),
            Poll::Pending => {
                if self.buf.is_empty() {
                    // The client is quiet and nothing is half read: wait
                    // without the buffer.
                    self.buf = BytesMut::new();
                    self.holding = false;
                }
                Poll::Pending
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client's frame: masked with `mask`, the length in its shortest form
    /// unless `long` asks for the 8-byte one.
    fn frame(first: u8, payload: &[u8], mask: Option<[u8; 4]>, long: bool) -> Vec<u8> {
        let mut out = vec![first];
        let mask_bit = if mask.is_some() { 0x80 } else { 0 };
        match payload.len() {
            n if long || n > 0xFFFF => {
                out.push(mask_bit | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
            n if n > 125 => {
                out.push(mask_bit | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => out.push(mask_bit | n as u8),
        }
        let mut body = payload.to_vec();
        if let Some(mask) = mask {
            out.extend_from_slice(&mask);
            for (i, b) in body.iter_mut().enumerate() {
                *b ^= mask[i % 4];
            }
        }
        out.extend_from_slice(&body);
        out
    }

    const MASK: Option<[u8; 4]> = Some([1, 2, 3, 4]);

    /// Reads every frame from `bytes` delivered in pieces of `piece` bytes.
    async fn read_all(
        bytes: &[u8],
        piece: usize,
        max_frame: usize,
    ) -> Vec<Result<(bool, OpCode, Vec<u8>), String>> {
        let mut stream = arriving_in_pieces(bytes, piece);
        let mut reader = FrameReader::new(max_frame);
        let mut out = Vec::new();
        loop {
            match reader.read_frame(&mut stream).await {
                Ok(frame) => out.push(Ok((frame.fin, frame.opcode, frame.payload.to_vec()))),
                Err(WebSocketError::UnexpectedEOF) => return out,
                Err(e) => {
                    out.push(Err(e.to_string()));
                    return out;
                }
            }
        }
    }

    /// A stream that yields `bytes` `piece` bytes at a time, pending once
    /// between pieces (as a socket whose data comes in several packets).
    fn arriving_in_pieces(bytes: &[u8], piece: usize) -> Pieces {
        Pieces {
            chunks: bytes.chunks(piece).map(<[u8]>::to_vec).collect(),
            next: 0,
            pending: false,
        }
    }

    struct Pieces {
        chunks: Vec<Vec<u8>>,
        next: usize,
        pending: bool,
    }

    impl AsyncRead for Pieces {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            if !self.pending {
                self.pending = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            self.pending = false;
            let next = self.next;
            let Some(chunk) = self.chunks.get_mut(next) else {
                return Poll::Ready(Ok(()));
            };
            let n = chunk.len().min(buf.remaining());
            buf.put_slice(&chunk[..n]);
            chunk.drain(..n);
            if chunk.is_empty() {
                self.next += 1;
            }
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn frames_come_out_whole_however_the_bytes_arrive() {
        let big = vec![b'x'; 70_000];
        let mut wire = frame(0x81, b"hello", MASK, false);
        wire.extend(frame(0x01, &[b'a'; 300], MASK, false));
        wire.extend(frame(0x80, b"b", MASK, true));
        wire.extend(frame(0x82, &big, MASK, false));
        wire.extend(frame(0x89, b"ping", MASK, false));
        for piece in [1, 3, 7, 100, 4096, 5000, wire.len()] {
            let frames = read_all(&wire, piece, 1 << 20).await;
            let expect = vec![
                Ok((true, OpCode::Text, b"hello".to_vec())),
                Ok((false, OpCode::Text, vec![b'a'; 300])),
                Ok((true, OpCode::Continuation, b"b".to_vec())),
                Ok((true, OpCode::Binary, big.clone())),
                Ok((true, OpCode::Ping, b"ping".to_vec())),
            ];
            assert!(frames == expect, "pieces of {piece}");
        }
    }

    #[tokio::test]
    async fn broken_headers_are_refused() {
        let cases: [(Vec<u8>, &str); 7] = [
            (frame(0xC1, b"x", MASK, false), "Reserved bits are not zero"),
            (frame(0x83, b"x", MASK, false), "Invalid value"),
            (
                frame(0x09, b"x", MASK, false),
                "Control frame must not be fragmented",
            ),
            (frame(0x89, &[0; 126], MASK, false), "Ping frame too large"),
            (frame(0x8A, &[0; 126], MASK, false), "Ping frame too large"),
            (frame(0x88, &[0; 126], MASK, true), "Ping frame too large"),
            (frame(0x82, &[0; 1000], MASK, false), "Frame too large"),
        ];
        for (wire, error) in cases {
            let frames = read_all(&wire, 2, 1000).await;
            assert_eq!(frames, vec![Err(error.to_string())]);
        }
        // A length no machine could hold, even with no limit to speak of.
        for limit in [1000, usize::MAX] {
            let mut huge = vec![0x82, 0x80 | 127];
            huge.extend_from_slice(&(u64::MAX - 12).to_be_bytes());
            huge.extend_from_slice(&[1, 2, 3, 4]);
            assert_eq!(
                read_all(&huge, 100, limit).await,
                vec![Err("Frame too large".to_string())]
            );
        }
    }

    #[tokio::test]
    async fn an_unmasked_frame_reads_as_unmasked() {
        let wire = frame(0x81, b"plain", None, false);
        let mut reader = FrameReader::new(1000);
        let mut stream = arriving_in_pieces(&wire, 100);
        let mut frame = reader.read_frame(&mut stream).await.unwrap();
        let mut head = [0u8; 14];
        frame.fmt_head(&mut head);
        assert_eq!(head[1] & 0x80, 0);
        assert_eq!(&frame.payload[..], b"plain");
    }

    #[tokio::test]
    async fn a_frame_announced_large_takes_memory_as_its_bytes_arrive() {
        let mut wire = frame(0x82, &vec![7; 4 << 20], MASK, false);
        wire.truncate(20_000);
        let mut stream = arriving_in_pieces(&wire, wire.len());
        let mut reader = FrameReader::new(8 << 20);
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        {
            let mut next = std::pin::pin!(reader.read_frame(&mut stream));
            for _ in 0..4 {
                assert!(next.as_mut().poll(&mut cx).is_pending());
            }
        }
        assert_eq!(reader.buf.len(), 20_000);
        assert!(
            reader.buf.capacity() < 64 * 1024,
            "{}",
            reader.buf.capacity()
        );
    }

    #[tokio::test]
    async fn a_quiet_connection_holds_no_buffer() {
        let mut wire = frame(0x81, &[b'm'; 2000], MASK, false);
        wire.extend(frame(0x81, b"two", MASK, false));
        // Two frames in one packet, then a quiet client.
        let mut stream = arriving_in_pieces(&wire, wire.len());
        stream.chunks.push(frame(0x81, b"later", MASK, false));
        let mut reader = FrameReader::new(1 << 20);
        assert!(!reader.holding);
        assert_eq!(
            reader.read_frame(&mut stream).await.unwrap().payload.len(),
            2000
        );
        assert_eq!(
            &reader.read_frame(&mut stream).await.unwrap().payload[..],
            b"two"
        );
        assert!(reader.holding, "still holds what it read");
        // The next read finds nothing waiting (the stream is pending once
        // before each piece): the buffer goes while it waits.
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        {
            let mut next = std::pin::pin!(reader.read_frame(&mut stream));
            assert!(next.as_mut().poll(&mut cx).is_pending());
        }
        assert!(!reader.holding, "gave its buffer back while waiting");
        assert_eq!(reader.buf.capacity(), 0);
        assert_eq!(
            &reader.read_frame(&mut stream).await.unwrap().payload[..],
            b"later"
        );
    }
}
