//! A connection's reader: reads frames, has [`Frames`] check and reassemble
//! them, applies the message rate, and hands each message to the room:
//! it runs the message itself when the room is idle (no task switch on the
//! message path), and queues it in the room's inbox when the room is busy.

use std::borrow::Cow;
use std::sync::atomic::Ordering::Relaxed;
use std::task::Poll;

use bytes::Bytes;
use fastwebsockets::{OpCode, WebSocketError};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncRead;
use tracing::debug;

use super::frames::{
    CONTROL_TOO_LARGE, FRAME_TOO_LARGE, Frames, INVALID_UTF8, Step, Violation, protocol_error,
};
use super::wire::FrameReader;
use super::{Connection, Ended, RoomLink};
use crate::outbox::{self, Refused};
use crate::rate::Bucket;
use crate::room::{BATCH, CLOSE_ROOM_FAILED, CLOSE_SERVICE_RESTART, Event, Incoming, ReaderTurn};

/// Ends the reader's turn at running the room, if it has one: runs the
/// text messages it gathered, then hands what the room's calls sent to the
/// writers. Before the reader answers its client itself (so that what the
/// room sent comes first), waits for it, or lets the room's task run. (A
/// macro, so that the connection's task holds only a box for the call at
/// each place it ends a turn: every byte of the task is in every idle
/// connection.)
macro_rules! end_turn {
    ($turn:ident, $c:expr) => {
        if let Some(running) = $turn.as_mut()
            && running.has_gathered()
        {
            $c.in_guest.store(true, Relaxed);
            Box::pin(running.run_gathered()).await;
            $c.in_guest.store(false, Relaxed);
        }
        // Dropped here, not at the return: its frames go out first.
        drop($turn.take());
    };
}

/// Reads until the client closes, breaks a rule or goes away.
pub(super) async fn read_loop<R: AsyncRead + Unpin>(mut stream: R, c: &Connection<'_>) -> Ended {
    let mut wire = FrameReader::new(c.config.max_frame_bytes);
    let mut frames = Frames::new(c.config.max_message_bytes);
    // The reader's turn at running the room, and how many messages it ran
    // in this turn. Ending the turn (dropping it, on every return too)
    // flushes what the messages queued to the writers and wakes them.
    let mut turn: Option<ReaderTurn<'_>> = None;
    let mut in_a_row = 0;
    // The client's budget of messages (`--max-messages-per-sec`; 0: none).
    let rate = c.config.max_messages_per_sec;
    let mut bucket = Bucket::full(rate, 0);
    loop {
        // Keep the room only for frames already here: end the turn before
        // waiting for the client. (The read that found nothing is dropped
        // before the turn ends and begun again: its bytes are in `wire`,
        // and no future of the connection's task holds both.)
        let mut ready = None;
        if turn.is_some() {
            let mut read = std::pin::pin!(wire.read_frame(&mut stream));
            if let Poll::Ready(frame) =
                std::future::poll_fn(|cx| Poll::Ready(read.as_mut().poll(cx))).await
            {
                ready = Some(frame);
            }
        }
        let frame = match ready {
            Some(frame) => frame,
            None => {
                end_turn!(turn, c);
                wire.read_frame(&mut stream).await
            }
        };
        let mut frame = match frame {
            Ok(frame) => frame,
            Err(e) => {
                end_turn!(turn, c);
                return broken_frame(e, c);
            }
        };
        // One clock read per frame: the client's last sign of life, and a
        // message's read time for `wsroom_message_duration_seconds`.
        let read_at = std::time::Instant::now();
        let now_ms = read_at.saturating_duration_since(c.start).as_millis() as u64;
        // A client's own pings do not show it reads what it is sent: only
        // its other frames (our pings' pongs among them) keep it alive.
        if frame.opcode != OpCode::Ping {
            c.last_seen.store(now_ms, Relaxed);
        }
        let step = frames.accept(&mut frame);
        // Nothing borrows the frame past here (it would be in the task
        // across the awaits below).
        drop(frame);
        // Whether the client's next frames are already here (a room that
        // takes batches then gets its text messages together).
        let more = wire.has_more();
        let message = match step {
            Ok(Step::Message(message)) => message,
            Ok(Step::Nothing) => continue,
            Ok(Step::Ping(payload)) => {
                c.outbox.push_pong(outbox::encode(OpCode::Pong, &payload));
                continue;
            }
            Ok(Step::Close { code, reason, echo }) => {
                end_turn!(turn, c);
                c.outbox.close_raw(outbox::encode(OpCode::Close, &echo));
                return Ended { code, reason };
            }
            Err(violation) => {
                end_turn!(turn, c);
                return violated(violation, c);
            }
        };
        c.metrics.message_in(match &message {
            Incoming::Text(text) => text.len(),
            Incoming::Binary(bytes) => bytes.len(),
            Incoming::TooLarge(o) => usize::try_from(o.size).unwrap_or(usize::MAX),
        });
        if rate > 0 && !bucket.take(rate, now_ms) {
            // Over --max-messages-per-sec: not routed; its sender hears why.
            c.metrics.message_rate_limited();
            debug!(project = %c.link.project(), "message over --max-messages-per-sec, not routed");
            let error = rate_limited(c.link.project(), &message, rate);
            // Not kept across the wait below (the task would hold room for
            // it at every wait).
            drop(message);
            // Its answer comes after what the messages before it sent.
            end_turn!(turn, c);
            if c.outbox.push(error) == Err(Refused::Overflow) {
                c.metrics.outbox_overflow();
            }
            continue;
        }
        let (room, conn) = match c.link {
            RoomLink::Local { room, conn } => (room, *conn),
            RoomLink::Remote(remote) => {
                // Held until the owner node has handled it (one message in
                // flight per client keeps them in order across nodes).
                if let Err(why) = Box::pin(remote.forward(&message)).await {
                    let error =
                        system_error(c.link.project(), why.code, why.message.into(), &message);
                    if c.outbox.push(error) == Err(Refused::Overflow) {
                        c.metrics.outbox_overflow();
                    }
                    if why.reconnect {
                        return violated(
                            Violation {
                                code: CLOSE_SERVICE_RESTART,
                                reason: "the project moved; reconnect",
                            },
                            c,
                        );
                    }
                }
                continue;
            }
        };
        // An idle room runs the message here, without waking its task.
        if turn.is_none() {
            turn = room.try_run();
            in_a_row = 0;
        }
        if let Some(running) = turn.as_mut() {
            c.in_guest.store(true, Relaxed);
            // Boxed, as the queueing below: the future of a guest call
            // (~600 bytes) and of a send would grow every connection's task
            // by as much, idle or not (one small allocation per message
            // instead; no difference the benchmarks resolve).
            Box::pin(running.message(conn, message, read_at, more)).await;
            c.in_guest.store(false, Relaxed);
            in_a_row += 1;
            if in_a_row == BATCH {
                // Let the room's task, and what waits for it, have a turn.
                end_turn!(turn, c);
            }
            continue;
        }
        // A busy room queues it. A full inbox makes this wait: the client's
        // reads pause until the room catches up (TCP back-pressure),
        // nothing is dropped.
        let event = Event::Message {
            conn,
            message,
            read_at,
        };
        if Box::pin(room.send(event)).await.is_err() {
            return violated(
                Violation {
                    code: CLOSE_ROOM_FAILED,
                    reason: "room is gone",
                },
                c,
            );
        }
    }
}

/// Closes the connection with the violation's code.
fn violated(violation: Violation, c: &Connection<'_>) -> Ended {
    debug!(
        code = violation.code,
        reason = violation.reason,
        "closing connection"
    );
    c.outbox.close(violation.code, violation.reason);
    Ended {
        code: violation.code,
        reason: violation.reason.into(),
    }
}

/// A frame fastwebsockets could not read: the close code RFC 6455 gives
/// it, or the peer gone.
fn broken_frame(e: WebSocketError, c: &Connection<'_>) -> Ended {
    let violation = match e {
        WebSocketError::FrameTooLarge => FRAME_TOO_LARGE,
        WebSocketError::InvalidUTF8 => INVALID_UTF8,
        WebSocketError::PingFrameTooLarge => CONTROL_TOO_LARGE,
        WebSocketError::IoError(_)
        | WebSocketError::UnexpectedEOF
        | WebSocketError::ConnectionClosed => {
            c.outbox.abort();
            return Ended::lost();
        }
        _ => protocol_error("protocol error"),
    };
    debug!(error = %e, "bad frame");
    violated(violation, c)
}

/// The `error` a message over `--max-messages-per-sec` is answered with.
fn rate_limited(project: &str, message: &Incoming, rate: u32) -> Bytes {
    let text = format!(
        "over the rate limit of {rate} per second (bursts of {}); message not routed",
        u64::from(rate) * 2
    );
    system_error(project, "rate_limited", text, message)
}

/// An `error` from the host about one of the client's messages, shaped as
/// the default room's errors (docs/PROTOCOL.md) whatever room the project
/// runs, with the message's `id` when it has one.
fn system_error(project: &str, code: &'static str, text: String, message: &Incoming) -> Bytes {
    #[derive(Deserialize)]
    struct WithId<'a> {
        #[serde(borrow)]
        id: Option<Cow<'a, str>>,
    }
    #[derive(Serialize)]
    struct SystemError<'a> {
        id: String,
        #[serde(rename = "type")]
        kind: &'static str,
        from: SystemFrom,
        payload: ErrorPayload<'a>,
    }
    #[derive(Serialize)]
    struct SystemFrom {
        #[serde(rename = "type")]
        kind: &'static str,
    }
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct ErrorPayload<'a> {
        code: &'static str,
        message: String,
        project_id: &'a str,
        timestamp: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        message_id: Option<Cow<'a, str>>,
    }
    let message_id = match message {
        Incoming::Text(text) => serde_json::from_str::<WithId<'_>>(text)
            .ok()
            .and_then(|m| m.id),
        _ => None,
    };
    let error = SystemError {
        id: uuid::Uuid::new_v4().to_string(),
        kind: "error",
        from: SystemFrom { kind: "system" },
        payload: ErrorPayload {
            code,
            message: text,
            project_id: project,
            timestamp: crate::room::now_ms(),
            message_id,
        },
    };
    // Serializing strings and numbers cannot fail.
    let json = serde_json::to_vec(&error).unwrap_or_default();
    outbox::encode(OpCode::Text, &json)
}
