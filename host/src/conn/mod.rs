//! One WebSocket connection, from the upgrade to its end: a reader
//! ([`reader`]) that reads frames off the socket ([`wire`]), checks and
//! reassembles them ([`frames`]) and hands messages to the room, and a writer ([`writer`]) that drains the
//! connection's outbox and keeps the peer alive. It knows nothing of
//! routing.

mod frames;
mod reader;
mod wire;
pub(crate) mod writer;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use fastwebsockets::upgrade::UpgradeFut;
use hyper::upgrade::Parts;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tracing::debug;

use crate::cluster::RemoteClient;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::outbox::Outbox;
use crate::room::table::ConnRef;
use crate::room::{Event, RoomHandle};

/// How long a closing connection waits for the other side's close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Where a connection's messages go.
pub(crate) enum RoomLink {
    /// The project's room runs on this node.
    Local { room: RoomHandle, conn: ConnRef },
    /// Another node of the cluster owns the project.
    Remote(RemoteClient),
}

impl RoomLink {
    fn project(&self) -> &str {
        match self {
            RoomLink::Local { room, .. } => &room.project,
            RoomLink::Remote(remote) => remote.project(),
        }
    }
}

/// A connection the room admitted, waiting for its upgrade to finish.
pub(crate) struct Admitted {
    pub(crate) link: RoomLink,
    pub(crate) outbox: Arc<Outbox>,
    /// Its place under `--max-connections`, given back when it ends.
    pub(crate) permit: OwnedSemaphorePermit,
}

/// What the reader and the writer of one connection share.
struct Connection<'a> {
    link: &'a RoomLink,
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
        link,
        outbox,
        permit,
    } = admitted;
    metrics.connection_opened();
    let ended = match upgrade.await {
        Ok(ws) => {
            let connection = Connection {
                link: &link,
                outbox: &outbox,
                config: &config,
                metrics: &metrics,
                start: Instant::now(),
                last_seen: AtomicU64::new(0),
                in_guest: AtomicBool::new(false),
            };
            // A plain TCP connection is read and written through the
            // socket's own halves; behind hyper's upgrade every read and
            // write went through its type-erased stream, its buffer of
            // early bytes and a lock shared by the two halves (~2% of the
            // server's instructions per rpc request).
            match ws
                .into_inner()
                .into_inner()
                .downcast::<TokioIo<TcpStream>>()
            {
                Ok(Parts { io, read_buf, .. }) => {
                    let (read, write) = io.into_inner().into_split();
                    let read = EarlyBytes::new(read_buf, read);
                    let socket = Arc::new(writer::SharedSocket::new(write, metrics.clone()));
                    let _through = writer::WriteThroughGuard::new(&outbox, socket.clone());
                    run(read, writer::SharedWrite(socket), &connection).await
                }
                Err(upgraded) => {
                    let (read, write) = tokio::io::split(TokioIo::new(upgraded));
                    run(read, write, &connection).await
                }
            }
        }
        Err(e) => {
            debug!(error = %e, "websocket upgrade failed");
            outbox.abort();
            Ended::lost()
        }
    };
    let code = ended.code;
    match &link {
        RoomLink::Local { room, conn } => {
            let _ = room
                .send(Event::Close {
                    conn: *conn,
                    code: ended.code,
                    reason: ended.reason,
                })
                .await;
        }
        RoomLink::Remote(remote) => remote.close(ended.code, &ended.reason).await,
    }
    drop(permit);
    metrics.connection_closed(code);
}

async fn run<R, W>(read: R, mut write: W, c: &Connection<'_>) -> Ended
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let reader = reader::read_loop(read, c);
    let writer = writer::write_loop(&mut write, c);
    tokio::pin!(reader, writer);
    // Both are polled at every wake-up; `biased` spares the random draw
    // tokio would make for their order each time.
    let peer_gone = tokio::select! {
        biased;
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

/// A connection's socket with the bytes the client sent right behind its
/// upgrade request (read by hyper with the request) in front. The buffer
/// they sit in, hyper's whole read buffer, is let go once they are read,
/// not kept for the connection's life.
struct EarlyBytes<R> {
    /// Boxed: most clients send none, and every byte of this struct is in
    /// each connection's task, several times over.
    early: Option<Box<Bytes>>,
    read: R,
}

impl<R> EarlyBytes<R> {
    fn new(early: Bytes, read: R) -> EarlyBytes<R> {
        // Empty, it may still hold hyper's buffer.
        let early = (!early.is_empty()).then(|| Box::new(early));
        EarlyBytes { early, read }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for EarlyBytes<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let Some(early) = self.early.as_mut() else {
            return Pin::new(&mut self.read).poll_read(cx, buf);
        };
        let n = early.len().min(buf.remaining());
        buf.put_slice(&early[..n]);
        early.advance(n);
        if early.is_empty() {
            self.early = None;
        }
        Poll::Ready(Ok(()))
    }
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
