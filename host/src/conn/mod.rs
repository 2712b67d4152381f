//! One WebSocket connection: a reader that reassembles messages and runs
//! them in the room when it is idle (queues them when it is busy), and a
//! writer that drains the connection's outbox with vectored writes and sends
//! keep-alive pings. It knows nothing of routing.

use std::borrow::Cow;
use std::future::Future;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use fastwebsockets::upgrade::UpgradeFut;
use fastwebsockets::{OpCode, Role, WebSocketError};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tracing::debug;

use crate::config::Config;
use crate::engine::wit::Oversize;
use crate::metrics::Metrics;
use crate::outbox::{self, Next, Outbox, Refused};
use crate::rate::Bucket;
use crate::room::table::ConnRef;
use crate::room::{BATCH, Event, Incoming, RoomHandle, Running};

/// How long a closing connection waits for the other side's close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Most frames handed to one vectored write.
const MAX_IOVECS: usize = 64;

/// How the connection ended, as told to the room.
struct Ended {
    code: u16,
    reason: String,
}

impl Ended {
    fn lost() -> Ended {
        Ended {
            code: 1006,
            reason: String::new(),
        }
    }
}

/// Runs an admitted connection to its end; `permit` is its place under
/// `--max-connections`.
#[allow(clippy::too_many_arguments)]
pub async fn serve(
    upgrade: UpgradeFut,
    room: RoomHandle,
    conn: ConnRef,
    outbox: Arc<Outbox>,
    permit: tokio::sync::OwnedSemaphorePermit,
    config: Arc<Config>,
    metrics: Arc<Metrics>,
) {
    metrics.connection_opened();
    let ended = match upgrade.await {
        Ok(ws) => {
            let (read, write) = tokio::io::split(ws.into_inner());
            run(read, write, &room, conn, &outbox, &config, &metrics).await
        }
        Err(e) => {
            debug!(error = %e, "websocket upgrade failed");
            outbox.abort();
            Ended::lost()
        }
    };
    let _ = room
        .send(Event::Close {
            conn,
            code: ended.code,
            reason: ended.reason,
        })
        .await;
    drop(permit);
    metrics.connection_closed();
}

async fn run<R, W>(
    read: R,
    mut write: W,
    room: &RoomHandle,
    conn: ConnRef,
    outbox: &Outbox,
    config: &Config,
    metrics: &Metrics,
) -> Ended
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let start = Instant::now();
    let last_seen = AtomicU64::new(0);
    let in_guest = AtomicBool::new(false);
    let reader = read_loop(
        read, room, conn, outbox, config, metrics, start, &last_seen, &in_guest,
    );
    let writer = write_loop(&mut write, outbox, config, start, &last_seen);
    tokio::pin!(reader, writer);
    let peer_gone = tokio::select! {
        ended = &mut reader => {
            // The client closed (its close is echoed) or vanished (abort).
            if ended.code == 1006 {
                outbox.abort();
            }
            let _ = tokio::time::timeout(CLOSE_GRACE, &mut writer).await;
            return ended;
        }
        peer_gone = &mut writer => peer_gone,
    };
    if !peer_gone {
        // We closed: give the client a moment to answer our close frame,
        // then drop it.
        if let Ok(ended) = tokio::time::timeout(CLOSE_GRACE, &mut reader).await {
            return ended;
        }
    }
    out_of_guest(reader, &in_guest).await;
    Ended::lost()
}

/// Lets a reader that is running a message in the room's guest finish that
/// call before it is dropped: a call dropped halfway fails the room, for
/// all its clients.
async fn out_of_guest<F: Future>(mut reader: Pin<&mut F>, in_guest: &AtomicBool) {
    std::future::poll_fn(|cx| {
        if !in_guest.load(Relaxed) {
            return Poll::Ready(());
        }
        match reader.as_mut().poll(cx) {
            Poll::Pending if in_guest.load(Relaxed) => Poll::Pending,
            _ => Poll::Ready(()),
        }
    })
    .await
}

#[allow(clippy::too_many_arguments)]
async fn read_loop<R: AsyncRead + Unpin>(
    read: R,
    room: &RoomHandle,
    conn: ConnRef,
    outbox: &Outbox,
    config: &Config,
    metrics: &Metrics,
    start: Instant,
    last_seen: &AtomicU64,
    in_guest: &AtomicBool,
) -> Ended {
    let (mut ws, _) = fastwebsockets::after_handshake_split(read, tokio::io::sink(), Role::Server);
    ws.set_max_message_size(config.max_frame_bytes);
    ws.set_auto_close(true);
    ws.set_auto_pong(true);
    // Replies the protocol obliges us to send (pong, close echo) go through
    // the outbox like everything else.
    let mut obligated = |frame: fastwebsockets::Frame<'_>| {
        let bytes = outbox::encode(frame.opcode, &frame.payload);
        match frame.opcode {
            OpCode::Close => outbox.close_raw(bytes),
            OpCode::Pong => outbox.push_pong(bytes),
            // fastwebsockets obliges nothing else; queued like a ping.
            _ => outbox.push_control(bytes),
        }
        std::future::ready(Ok::<(), std::convert::Infallible>(()))
    };
    let limit = config.max_message_bytes;
    // A message being reassembled from fragments.
    let mut partial: Option<(OpCode, Vec<u8>)> = None;
    // Size of a fragmented message already over the limit, being skipped.
    let mut skipping: Option<u64> = None;
    // The room, while this reader runs its messages itself, and how many
    // it ran since it took it. Dropping it gives it back (on every return
    // too) and wakes the writers of what the messages queued.
    let mut running: Option<Running<'_>> = None;
    let mut in_a_row = 0;
    // The client's budget of messages (`--max-messages-per-sec`; 0: none).
    let rate = config.max_messages_per_sec;
    let mut bucket = Bucket::full(rate, 0);
    loop {
        let mut read = std::pin::pin!(ws.read_frame(&mut obligated));
        let mut ready = None;
        if running.is_some() {
            // Keep the room only for frames already here: give it back
            // before waiting for the client.
            match std::future::poll_fn(|cx| Poll::Ready(read.as_mut().poll(cx))).await {
                Poll::Ready(frame) => ready = Some(frame),
                Poll::Pending => running = None,
            }
        }
        let frame = match ready {
            Some(frame) => frame,
            None => read.await,
        };
        let frame = match frame {
            Ok(frame) => frame,
            Err(e) => return protocol_error(e, outbox),
        };
        let now_ms = start.elapsed().as_millis() as u64;
        last_seen.store(now_ms, Relaxed);
        let message = match frame.opcode {
            OpCode::Close => {
                let (code, reason) = match frame.payload.len() {
                    0 | 1 => (1005, String::new()),
                    _ => (
                        u16::from_be_bytes([frame.payload[0], frame.payload[1]]),
                        String::from_utf8_lossy(&frame.payload[2..]).into_owned(),
                    ),
                };
                return Ended { code, reason };
            }
            OpCode::Ping | OpCode::Pong => continue,
            OpCode::Text | OpCode::Binary => {
                if partial.is_some() || skipping.is_some() {
                    outbox.close(1002, "new message before the last one was finished");
                    return Ended {
                        code: 1002,
                        reason: "protocol error".into(),
                    };
                }
                let len = frame.payload.len();
                if len > limit {
                    if frame.fin {
                        Some(too_large(len as u64, limit))
                    } else {
                        skipping = Some(len as u64);
                        None
                    }
                } else if frame.fin {
                    Some(whole(frame.opcode, frame.payload.to_vec()))
                } else {
                    partial = Some((frame.opcode, frame.payload.to_vec()));
                    None
                }
            }
            OpCode::Continuation => {
                let len = frame.payload.len() as u64;
                if let Some(size) = skipping.as_mut() {
                    *size += len;
                    if frame.fin {
                        let size = *size;
                        skipping = None;
                        Some(too_large(size, limit))
                    } else {
                        None
                    }
                } else if let Some((opcode, mut buf)) = partial.take() {
                    if buf.len() + frame.payload.len() > limit {
                        let size = (buf.len() + frame.payload.len()) as u64;
                        if frame.fin {
                            Some(too_large(size, limit))
                        } else {
                            skipping = Some(size);
                            None
                        }
                    } else {
                        buf.extend_from_slice(&frame.payload);
                        if frame.fin {
                            Some(whole(opcode, buf))
                        } else {
                            partial = Some((opcode, buf));
                            None
                        }
                    }
                } else {
                    outbox.close(1002, "continuation frame without a message");
                    return Ended {
                        code: 1002,
                        reason: "protocol error".into(),
                    };
                }
            }
        };
        let Some(message) = message else { continue };
        let message = match message {
            Ok(m) => m,
            Err(()) => {
                outbox.close(1007, "text message is not valid UTF-8");
                return Ended {
                    code: 1007,
                    reason: "invalid UTF-8".into(),
                };
            }
        };
        metrics.message_in();
        if rate > 0 && !bucket.take(rate, now_ms) {
            // Over --max-messages-per-sec: not routed; its sender hears why.
            metrics.message_rate_limited();
            debug!(project = %room.project, "message over --max-messages-per-sec, not routed");
            if outbox.push(rate_limited(&room.project, &message, rate)) == Err(Refused::Overflow) {
                metrics.outbox_overflow();
            }
            continue;
        }
        // An idle room runs the message here, without waking its task.
        if running.is_none() {
            running = room.try_run();
            in_a_row = 0;
        }
        if let Some(room) = running.as_mut() {
            in_guest.store(true, Relaxed);
            // Boxed, as the queueing below: the futures of a guest call and
            // of a send are big, and kept in place they would grow every
            // connection's task by ~3 KB, idle or not (one small allocation
            // per message instead; no difference the benchmarks resolve).
            Box::pin(room.message(conn, message)).await;
            in_guest.store(false, Relaxed);
            in_a_row += 1;
            if in_a_row == BATCH {
                // Let the room's task, and what waits for it, have a turn.
                running = None;
            }
            continue;
        }
        // A busy room queues it. A full inbox makes this wait: the client's
        // reads pause until the room catches up (TCP back-pressure),
        // nothing is dropped.
        if Box::pin(room.send(Event::Message { conn, message }))
            .await
            .is_err()
        {
            outbox.close(crate::room::CLOSE_ROOM_FAILED, "room is gone");
            return Ended {
                code: crate::room::CLOSE_ROOM_FAILED,
                reason: "room is gone".into(),
            };
        }
    }
}

/// The `error` a message over `--max-messages-per-sec` is answered with,
/// shaped as the default room's errors (see PROTOCOL.md), whatever room the
/// project runs: the room never sees the message.
fn rate_limited(project: &str, message: &Incoming, rate: u32) -> Bytes {
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
            code: "rate_limited",
            message: format!(
                "over the rate limit of {rate} per second (bursts of {}); message not routed",
                u64::from(rate) * 2
            ),
            project_id: project,
            timestamp: crate::room::now_ms(),
            message_id,
        },
    };
    // Serializing strings and numbers cannot fail.
    let json = serde_json::to_vec(&error).unwrap_or_default();
    outbox::encode(OpCode::Text, &json)
}

fn too_large(size: u64, limit: usize) -> Result<Incoming, ()> {
    Ok(Incoming::TooLarge(Oversize {
        size,
        limit: limit as u64,
    }))
}

fn whole(opcode: OpCode, payload: Vec<u8>) -> Result<Incoming, ()> {
    if opcode == OpCode::Text {
        // simdutf8 (as fastwebsockets uses): several times faster than
        // `String::from_utf8` on a message of a few hundred bytes. A text
        // message in one frame was checked by fastwebsockets already; the
        // check is repeated (~0.2% of a message's CPU) so that the unchecked
        // conversion below never rests on a dependency's internals, and it
        // is the only check of a message reassembled from fragments.
        simdutf8::basic::from_utf8(&payload).map_err(drop)?;
        // SAFETY: `payload` was just checked to be valid UTF-8.
        Ok(Incoming::Text(unsafe {
            String::from_utf8_unchecked(payload)
        }))
    } else {
        Ok(Incoming::Binary(payload))
    }
}

/// Answers a broken frame with the close code RFC 6455 gives it.
fn protocol_error(e: WebSocketError, outbox: &Outbox) -> Ended {
    let (code, reason) = match e {
        WebSocketError::FrameTooLarge => (1009, "frame too large"),
        WebSocketError::InvalidUTF8 => (1007, "invalid UTF-8"),
        WebSocketError::IoError(_)
        | WebSocketError::UnexpectedEOF
        | WebSocketError::ConnectionClosed => {
            outbox.abort();
            return Ended::lost();
        }
        _ => (1002, "protocol error"),
    };
    debug!(error = %e, code, "closing connection after a bad frame");
    outbox.close(code, reason);
    Ended {
        code,
        reason: reason.into(),
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(
    write: &mut W,
    outbox: &Outbox,
    config: &Config,
    start: Instant,
    last_seen: &AtomicU64,
) -> bool {
    let interval = config.ping_interval;
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    let mut batch: Vec<Bytes> = Vec::new();
    loop {
        tokio::select! {
            next = outbox.take(&mut batch) => {
                if next == Next::Abort {
                    return true;
                }
                // A peer that cannot take our bytes for as long as it may be
                // silent is as good as gone.
                let wrote = tokio::time::timeout(interval * 2, write_all(write, &mut batch)).await;
                batch.clear();
                if !matches!(wrote, Ok(Ok(()))) {
                    outbox.abort();
                    return true;
                }
                if next == Next::Finish {
                    let _ = write.shutdown().await;
                    return false;
                }
            }
            _ = ping.tick() => {
                let silent = start.elapsed().saturating_sub(Duration::from_millis(last_seen.load(Relaxed)));
                if silent > interval * 2 {
                    debug!("peer stopped answering pings");
                    outbox.abort();
                    return true;
                }
                outbox.push_control(outbox::encode(OpCode::Ping, b""));
            }
        }
    }
}

/// Writes every frame of `batch`, as few syscalls as the socket allows.
///
/// The `IoSlice`s live on the heap for the duration of the write only: kept
/// in the future they would cost every idle connection a kilobyte.
pub async fn write_all<W: AsyncWrite + Unpin>(
    write: &mut W,
    batch: &mut [Bytes],
) -> std::io::Result<()> {
    let mut i = 0;
    while i < batch.len() {
        let end = batch.len().min(i + MAX_IOVECS);
        let slices: Vec<IoSlice<'_>> = batch[i..end].iter().map(|b| IoSlice::new(b)).collect();
        let mut written = write.write_vectored(&slices).await?;
        drop(slices);
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while written > 0 && i < batch.len() {
            let len = batch[i].len();
            if written >= len {
                written -= len;
                i += 1;
            } else {
                batch[i].advance(written);
                written = 0;
            }
        }
    }
    write.flush().await
}
