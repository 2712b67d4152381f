//! One WebSocket connection, from the upgrade to its end: a reader
//! ([`reader`]) that checks and reassembles frames ([`frames`]) and hands
//! messages to the room, and a writer ([`writer`]) that drains the
//! connection's outbox and keeps the peer alive. It knows nothing of
//! routing.

mod frames;
mod reader;
pub(crate) mod writer;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::task::Poll;
use std::time::{Duration, Instant};

use fastwebsockets::upgrade::UpgradeFut;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::OwnedSemaphorePermit;
use tracing::debug;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::outbox::Outbox;
use crate::room::table::ConnRef;
use crate::room::{Event, RoomHandle};

/// How long a closing connection waits for the other side's close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// A connection the room admitted, waiting for its upgrade to finish.
pub(crate) struct Admitted {
    pub(crate) room: RoomHandle,
    pub(crate) conn: ConnRef,
    pub(crate) outbox: Arc<Outbox>,
    /// Its place under `--max-connections`, given back when it ends.
    pub(crate) permit: OwnedSemaphorePermit,
}

/// What the reader and the writer of one connection share.
struct Connection<'a> {
    room: &'a RoomHandle,
    conn: ConnRef,
    outbox: &'a Outbox,
    config: &'a Config,
    metrics: &'a Metrics,
    /// The clock `last_seen` counts from.
    start: Instant,
    /// Milliseconds from `start` to the last frame read: the writer's ping
    /// timeout reads it.
    last_seen: AtomicU64,
    /// The reader is in the middle of a guest call (see [`out_of_guest`]).
    in_guest: AtomicBool,
}

/// How the connection ended, as told to the room.
struct Ended {
    code: u16,
    reason: String,
}

impl Ended {
    /// Gone without a close frame (1006).
    fn lost() -> Ended {
        Ended {
            code: 1006,
            reason: String::new(),
        }
    }
}

/// Runs an admitted connection to its end, then tells the room it left.
pub(crate) async fn serve(
    upgrade: UpgradeFut,
    admitted: Admitted,
    config: Arc<Config>,
    metrics: Arc<Metrics>,
) {
    let Admitted {
        room,
        conn,
        outbox,
        permit,
    } = admitted;
    metrics.connection_opened();
    let ended = match upgrade.await {
        Ok(ws) => {
            let (read, write) = tokio::io::split(ws.into_inner());
            let connection = Connection {
                room: &room,
                conn,
                outbox: &outbox,
                config: &config,
                metrics: &metrics,
                start: Instant::now(),
                last_seen: AtomicU64::new(0),
                in_guest: AtomicBool::new(false),
            };
            run(read, write, &connection).await
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

async fn run<R, W>(read: R, mut write: W, c: &Connection<'_>) -> Ended
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let reader = reader::read_loop(read, c);
    let writer = writer::write_loop(&mut write, c);
    tokio::pin!(reader, writer);
    let peer_gone = tokio::select! {
        ended = &mut reader => {
            // The client closed (its close is echoed) or vanished (abort).
            if ended.code == 1006 {
                c.outbox.abort();
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
    out_of_guest(reader, &c.in_guest).await;
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
