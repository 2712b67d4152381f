//! The rules a client's frames must follow (RFC 6455 sections 5 and 7), and
//! the reassembly of fragmented messages: [`Frames::accept`] takes each frame
//! as read and says what it means for the connection. Pure (no I/O), so
//! every rule has a unit test below.
//!
//! fastwebsockets parses frames; its automatic pong and close echo are off,
//! because they answer before the frame could be checked (an unmasked close
//! was echoed, a 200-byte close echoed as a 200-byte control frame).

use fastwebsockets::{CloseCode, Frame, OpCode};

use crate::engine::wit::{Incoming, Oversize};

/// Largest payload of a control frame (RFC 6455 5.5).
const MAX_CONTROL_PAYLOAD: usize = 125;

/// What one frame means.
#[derive(Debug)]
pub(crate) enum Step {
    /// A complete message for the room; a message over the limit arrives as
    /// its size only ([`Incoming::TooLarge`]), the room answers it.
    Message(Incoming),
    /// A fragment of a message, or a pong: nothing to do yet.
    Nothing,
    /// A ping: answer with a pong carrying this payload.
    Ping(Vec<u8>),
    /// The client closes with this code (1005: it gave none) and reason;
    /// `echo` is the close frame's payload, to send back.
    Close {
        code: u16,
        reason: String,
        echo: Vec<u8>,
    },
}

/// The violation of a control frame over 125 bytes (fastwebsockets finds
/// it in a ping's header, [`Frames`] in a close's or a pong's).
pub(crate) const CONTROL_TOO_LARGE: Violation = protocol_error("control frame over 125 bytes");

/// A broken rule: the connection is closed with this code.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub(crate) struct Violation {
    pub(crate) code: u16,
    pub(crate) reason: &'static str,
}

pub(crate) const fn protocol_error(reason: &'static str) -> Violation {
    Violation { code: 1002, reason }
}

pub(crate) const INVALID_UTF8: Violation = Violation {
    code: 1007,
    reason: "invalid UTF-8",
};

/// A frame over `--max-frame-bytes` (fastwebsockets finds it in the header).
pub(crate) const FRAME_TOO_LARGE: Violation = Violation {
    code: 1009,
    reason: "frame too large",
};

/// One connection's reassembly state: the message being put together from
/// fragments, or the size of one already over the limit being skipped.
pub(crate) struct Frames {
    /// `--max-message-bytes`.
    limit: usize,
    partial: Option<(OpCode, Vec<u8>)>,
    skipping: Option<u64>,
}

impl Frames {
    pub(crate) fn new(limit: usize) -> Frames {
        Frames {
            limit,
            partial: None,
            skipping: None,
        }
    }

    /// Checks `frame` against the rules and takes it in.
    pub(crate) fn accept(&mut self, frame: &mut Frame<'_>) -> Result<Step, Violation> {
        if !is_masked(frame) {
            // RFC 6455 5.1: a server closes on an unmasked client frame.
            return Err(protocol_error("client frames must be masked"));
        }
        match frame.opcode {
            OpCode::Close | OpCode::Ping | OpCode::Pong
                if frame.payload.len() > MAX_CONTROL_PAYLOAD =>
            {
                Err(CONTROL_TOO_LARGE)
            }
            OpCode::Close => close(&frame.payload),
            OpCode::Ping => Ok(Step::Ping(frame.payload.to_vec())),
            OpCode::Pong => Ok(Step::Nothing),
            OpCode::Text | OpCode::Binary => self.start(frame),
            OpCode::Continuation => self.continue_with(frame),
        }
    }

    /// The first frame of a message.
    fn start(&mut self, frame: &Frame<'_>) -> Result<Step, Violation> {
        if self.partial.is_some() || self.skipping.is_some() {
            return Err(protocol_error(
                "new message before the last one was finished",
            ));
        }
        let len = frame.payload.len();
        if len > self.limit {
            return Ok(self.skip(len as u64, frame.fin));
        }
        if frame.fin {
            return whole(frame.opcode, frame.payload.to_vec()).map(Step::Message);
        }
        self.partial = Some((frame.opcode, frame.payload.to_vec()));
        Ok(Step::Nothing)
    }

    /// A continuation frame.
    fn continue_with(&mut self, frame: &Frame<'_>) -> Result<Step, Violation> {
        let len = frame.payload.len() as u64;
        if let Some(size) = self.skipping.take() {
            return Ok(self.skip(size + len, frame.fin));
        }
        let Some((opcode, mut buf)) = self.partial.take() else {
            return Err(protocol_error("continuation frame without a message"));
        };
        let size = buf.len() + frame.payload.len();
        if size > self.limit {
            return Ok(self.skip(size as u64, frame.fin));
        }
        buf.extend_from_slice(&frame.payload);
        if frame.fin {
            return whole(opcode, buf).map(Step::Message);
        }
        self.partial = Some((opcode, buf));
        Ok(Step::Nothing)
    }

    /// A message over the limit: its bytes are dropped as they come, and
    /// the room hears its size once it ends.
    fn skip(&mut self, size: u64, fin: bool) -> Step {
        if !fin {
            self.skipping = Some(size);
            return Step::Nothing;
        }
        Step::Message(Incoming::TooLarge(Oversize {
            size,
            limit: self.limit as u64,
        }))
    }
}

/// Whether the client masked the frame: the header fastwebsockets would
/// write for it carries the mask bit of the frame it read (the field
/// itself is private).
fn is_masked(frame: &mut Frame<'_>) -> bool {
    let mut head = [0u8; 14];
    frame.fmt_head(&mut head);
    head[1] & 0x80 != 0
}

/// A close frame: no payload, or a code RFC 6455 allows on the wire and a
/// UTF-8 reason.
fn close(payload: &[u8]) -> Result<Step, Violation> {
    match payload {
        [] => Ok(Step::Close {
            code: 1005,
            reason: String::new(),
            echo: Vec::new(),
        }),
        [_] => Err(protocol_error("close frame with a 1-byte payload")),
        [high, low, reason @ ..] => {
            // The reason first, as fastwebsockets checked them: a close
            // wrong in both ways gets 1007.
            let reason = simdutf8::basic::from_utf8(reason).map_err(|_| INVALID_UTF8)?;
            let code = u16::from_be_bytes([*high, *low]);
            if !CloseCode::from(code).is_allowed() {
                return Err(protocol_error("close code not allowed"));
            }
            Ok(Step::Close {
                code,
                reason: reason.to_owned(),
                echo: payload.to_vec(),
            })
        }
    }
}

fn whole(opcode: OpCode, payload: Vec<u8>) -> Result<Incoming, Violation> {
    if opcode != OpCode::Text {
        return Ok(Incoming::Binary(payload));
    }
    // simdutf8 (as fastwebsockets uses): several times faster than
    // `String::from_utf8` on a message of a few hundred bytes. A text
    // message in one frame was checked by fastwebsockets already; the check
    // is repeated (~0.2% of a message's CPU) so that the unchecked
    // conversion below never rests on a dependency's internals, and it is
    // the only check of a message reassembled from fragments.
    simdutf8::basic::from_utf8(&payload).map_err(|_| INVALID_UTF8)?;
    // SAFETY: `payload` was just checked to be valid UTF-8.
    Ok(Incoming::Text(unsafe {
        String::from_utf8_unchecked(payload)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use fastwebsockets::Payload;

    const MASK: Option<[u8; 4]> = Some([1, 2, 3, 4]);

    fn accept(
        f: &mut Frames,
        fin: bool,
        opcode: OpCode,
        payload: &[u8],
    ) -> Result<Step, Violation> {
        f.accept(&mut Frame::new(
            fin,
            opcode,
            MASK,
            Payload::Owned(payload.to_vec()),
        ))
    }

    /// The step, for comparing: `incoming` as text, size or bytes.
    fn shown(step: Result<Step, Violation>) -> String {
        match step {
            Ok(Step::Message(Incoming::Text(text))) => format!("text {text}"),
            Ok(Step::Message(Incoming::Binary(bytes))) => format!("binary {bytes:?}"),
            Ok(Step::Message(Incoming::TooLarge(o))) => {
                format!("too large {} > {}", o.size, o.limit)
            }
            Ok(Step::Nothing) => "nothing".into(),
            Ok(Step::Ping(payload)) => format!("ping {}", payload.len()),
            Ok(Step::Close { code, reason, echo }) => {
                format!("close {code} {reason:?} {}", echo.len())
            }
            Err(v) => format!("violation {} {}", v.code, v.reason),
        }
    }

    fn code(step: Result<Step, Violation>) -> u16 {
        step.err().map_or(0, |v| v.code)
    }

    #[test]
    fn fragments_make_one_message() {
        let mut f = Frames::new(10);
        assert_eq!(shown(accept(&mut f, false, OpCode::Text, b"ab")), "nothing");
        // Control frames may come between fragments.
        assert_eq!(shown(accept(&mut f, true, OpCode::Ping, b"p")), "ping 1");
        assert_eq!(
            shown(accept(&mut f, false, OpCode::Continuation, b"cd")),
            "nothing"
        );
        assert_eq!(
            shown(accept(&mut f, true, OpCode::Continuation, b"e")),
            "text abcde"
        );
        assert_eq!(
            shown(accept(&mut f, true, OpCode::Binary, &[0xff])),
            "binary [255]"
        );
        assert_eq!(shown(accept(&mut f, true, OpCode::Pong, b"")), "nothing");
    }

    #[test]
    fn a_message_over_the_limit_is_skipped_and_reported_with_its_size() {
        let mut f = Frames::new(10);
        assert_eq!(
            shown(accept(&mut f, true, OpCode::Text, &[b'x'; 11])),
            "too large 11 > 10"
        );
        // Over the limit by its fragments: the rest is skipped, then the
        // whole size is reported once.
        assert_eq!(
            shown(accept(&mut f, false, OpCode::Text, &[b'x'; 8])),
            "nothing"
        );
        assert_eq!(
            shown(accept(&mut f, false, OpCode::Continuation, &[b'x'; 8])),
            "nothing"
        );
        assert_eq!(
            shown(accept(&mut f, true, OpCode::Continuation, &[b'x'; 4])),
            "too large 20 > 10"
        );
        // Then the connection goes on; exactly at the limit is fine.
        assert_eq!(shown(accept(&mut f, true, OpCode::Text, b"ok")), "text ok");
        assert_eq!(
            shown(accept(&mut f, true, OpCode::Text, &[b'y'; 10])),
            "text yyyyyyyyyy"
        );
    }

    #[test]
    fn fragments_out_of_order_are_protocol_errors() {
        let mut f = Frames::new(10);
        assert_eq!(code(accept(&mut f, true, OpCode::Continuation, b"x")), 1002);
        let mut f = Frames::new(10);
        accept(&mut f, false, OpCode::Text, b"a").unwrap();
        assert_eq!(code(accept(&mut f, true, OpCode::Text, b"b")), 1002);
        // Also while skipping a message over the limit.
        let mut f = Frames::new(1);
        accept(&mut f, false, OpCode::Text, b"ab").unwrap();
        assert_eq!(code(accept(&mut f, true, OpCode::Binary, b"b")), 1002);
    }

    #[test]
    fn text_must_be_utf8_even_across_fragments() {
        let mut f = Frames::new(10);
        assert_eq!(code(accept(&mut f, true, OpCode::Text, &[0xc3])), 1007);
        // "é" split between two fragments is fine...
        let mut f = Frames::new(10);
        accept(&mut f, false, OpCode::Text, &[0xc3]).unwrap();
        assert_eq!(
            shown(accept(&mut f, true, OpCode::Continuation, &[0xa9])),
            "text é"
        );
        // ...half of it is not.
        accept(&mut f, false, OpCode::Text, b"a").unwrap();
        assert_eq!(
            code(accept(&mut f, true, OpCode::Continuation, &[0xc3])),
            1007
        );
    }

    #[test]
    fn unmasked_frames_are_refused() {
        let mut f = Frames::new(10);
        for opcode in [OpCode::Text, OpCode::Close, OpCode::Ping, OpCode::Binary] {
            let mut unmasked = Frame::new(true, opcode, None, Payload::Owned(b"hi".to_vec()));
            assert_eq!(
                shown(f.accept(&mut unmasked)),
                "violation 1002 client frames must be masked",
                "{opcode:?}"
            );
        }
    }

    #[test]
    fn control_frames_over_125_bytes_are_refused() {
        let mut f = Frames::new(1000);
        for opcode in [OpCode::Close, OpCode::Ping, OpCode::Pong] {
            let mut payload = vec![b'r'; 126];
            payload[..2].copy_from_slice(&1000u16.to_be_bytes());
            assert_eq!(
                code(accept(&mut f, true, opcode, &payload)),
                1002,
                "{opcode:?}"
            );
            payload.pop();
            assert!(accept(&mut f, true, opcode, &payload).is_ok(), "{opcode:?}");
        }
    }

    #[test]
    fn close_frames_are_checked_and_echoed() {
        let mut f = Frames::new(10);
        assert_eq!(
            shown(accept(&mut f, true, OpCode::Close, b"")),
            "close 1005 \"\" 0"
        );
        let mut payload = 4000u16.to_be_bytes().to_vec();
        payload.extend_from_slice("bye é".as_bytes());
        assert_eq!(
            shown(accept(&mut f, true, OpCode::Close, &payload)),
            "close 4000 \"bye é\" 8"
        );
        assert_eq!(code(accept(&mut f, true, OpCode::Close, &[3])), 1002);
        // Codes that must not be sent on the wire, or unassigned.
        for close in [999u16, 1005, 1006, 1015, 1016, 2999, 5000] {
            let payload = close.to_be_bytes();
            assert_eq!(
                code(accept(&mut f, true, OpCode::Close, &payload)),
                1002,
                "{close}"
            );
        }
        let mut payload = 1000u16.to_be_bytes().to_vec();
        payload.push(0xff);
        assert_eq!(code(accept(&mut f, true, OpCode::Close, &payload)), 1007);
        // Wrong in both ways: the reason is checked first.
        let mut payload = 1005u16.to_be_bytes().to_vec();
        payload.push(0xff);
        assert_eq!(code(accept(&mut f, true, OpCode::Close, &payload)), 1007);
    }
}
