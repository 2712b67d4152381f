//! A room's WASI stdout and stderr. Each complete line goes to the host's
//! log with the project id, under the room's budget of lines (shared with
//! the `log` import, see [`LogBudget`]), cut to [`MAX_LINE`] bytes: a room
//! that prints in a loop cannot flood the host's log.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;
use tracing::info;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

use crate::room::log_limit::{LogBudget, MAX_LINE};

/// One of a room's two output streams; cheap to clone (WASI asks for a
/// fresh writer per stream handle).
#[derive(Clone)]
pub(crate) struct RoomOutput {
    state: Arc<Mutex<Lines>>,
}

struct Lines {
    project: Arc<str>,
    stream: &'static str,
    budget: Arc<LogBudget>,
    /// The line being written, up to [`MAX_LINE`] bytes.
    partial: Vec<u8>,
}

/// A room's stdout and stderr.
pub(crate) fn streams(project: Arc<str>, budget: Arc<LogBudget>) -> (RoomOutput, RoomOutput) {
    let stream = |name| RoomOutput {
        state: Arc::new(Mutex::new(Lines {
            project: project.clone(),
            stream: name,
            budget: budget.clone(),
            partial: Vec::new(),
        })),
    };
    (stream("stdout"), stream("stderr"))
}

impl RoomOutput {
    fn lines(&self) -> std::sync::MutexGuard<'_, Lines> {
        // Plain data, no panics while held; recover it if one ever did.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Lines {
    fn write(&mut self, mut buf: &[u8]) {
        while let Some(at) = memchr::memchr(b'\n', buf) {
            self.push(&buf[..at]);
            self.emit();
            buf = &buf[at + 1..];
        }
        self.push(buf);
    }

    /// Keeps the start of an over-long line; the rest is cut.
    fn push(&mut self, bytes: &[u8]) {
        let room = MAX_LINE.saturating_sub(self.partial.len());
        self.partial
            .extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    fn emit(&mut self) {
        let line = std::mem::take(&mut self.partial);
        if self.budget.admit() {
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches('\r');
            info!(project = &*self.project, "room {}: {line}", self.stream);
        }
    }
}

impl Drop for Lines {
    /// A last line without its newline is not lost.
    fn drop(&mut self) {
        if !self.partial.is_empty() {
            self.emit();
        }
    }
}

impl IsTerminal for RoomOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for RoomOutput {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl AsyncWrite for RoomOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.lines().write(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_cut_and_budgeted() {
        let metrics = Arc::new(crate::metrics::Metrics::default());
        let (out, err) = streams(
            "p".into(),
            Arc::new(LogBudget::new("p".into(), 1, metrics.clone())),
        );
        let dropped = || metrics.to_json()["logLinesDropped"].as_u64().unwrap();
        {
            let mut lines = out.lines();
            // Budget: a burst of 2 lines at 1 per second, both streams.
            lines.write(b"one\ntw");
            lines.write(b"o\nthree\n");
            assert_eq!(dropped(), 1);
            // An over-long line keeps its first MAX_LINE bytes.
            lines.write(&vec![b'x'; MAX_LINE + 10]);
            assert_eq!(lines.partial.len(), MAX_LINE);
        }
        err.lines().write(b"on stderr\n");
        assert_eq!(dropped(), 2, "stderr shares the budget");
        // A last line without its newline still counts when the stream goes.
        drop(out);
        assert_eq!(dropped(), 3);
    }
}
