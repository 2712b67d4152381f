//! What nodes say to each other over NATS: the subjects, and the bodies of
//! requests and replies. The rare ones (connect, gather, report) are JSON;
//! the ones sent per message (a client's message, the frames for a client)
//! are a few fixed-size fields and the bytes as they are, so a message
//! crossing nodes is copied, never parsed or re-encoded.
//!
//! Every node listens on `wsroom.<node>.>`:
//! - `connect`: admit a client of a project this node owns ([`Connect`]).
//! - `msg.<holder>`: a client's message ([`message`]), answered once the
//!   room has handled it ([`MessageReply`]).
//! - `close.<holder>`: a client left ([`close`]).
//! - `frames.<owner>`: what a room sent one of this node's clients
//!   ([`frames`]), in order, numbered so that a gap is seen.
//! - `gather`: a node took over a project: which of its clients are here?
//! - `report`: `/status` or `/health` of a project this node owns.
//!
//! Nothing a peer sends is trusted to be well formed: every parser returns
//! `None` on a short or malformed body.

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::engine::wit::Oversize;
use crate::outbox::Next;
use crate::room::{ClientMeta, Incoming};

/// The first token of every subject.
const PREFIX: &str = "wsroom";

/// The subject of `verb` on `node`.
pub(super) fn subject(node: &str, verb: &str) -> String {
    format!("{PREFIX}.{node}.{verb}")
}

/// What a node subscribes to.
pub(super) fn inbox(node: &str) -> String {
    format!("{PREFIX}.{node}.>")
}

/// A request's verb and, for per-client subjects, the other node's name.
pub(super) fn parse_subject(subject: &str) -> Option<(&str, Option<&str>)> {
    let mut tokens = subject.split('.');
    let (_prefix, _node, verb) = (tokens.next()?, tokens.next()?, tokens.next()?);
    Some((verb, tokens.next()))
}

/// A client as the node that holds its socket describes it.
#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
pub(super) struct Client {
    /// The holder's number for it, in every message about it.
    pub(super) key: u64,
    pub(super) id: String,
    pub(super) kind: String,
    pub(super) connected_at: u64,
    pub(super) user_agent: Option<String>,
    pub(super) origin: Option<String>,
}

impl Client {
    pub(super) fn new(key: u64, meta: &ClientMeta) -> Client {
        Client {
            key,
            id: meta.id.to_string(),
            kind: meta.kind.to_string(),
            connected_at: meta.connected_at,
            user_agent: meta.user_agent.clone(),
            origin: meta.origin.clone(),
        }
    }

    pub(super) fn meta(&self) -> ClientMeta {
        ClientMeta {
            id: self.id.as_str().into(),
            kind: self.kind.as_str().into(),
            connected_at: self.connected_at,
            user_agent: self.user_agent.clone(),
            origin: self.origin.clone(),
        }
    }
}

/// `connect`: a holder asks the owner to admit a client.
#[derive(Serialize, Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
pub(super) struct Connect {
    pub(super) project: String,
    pub(super) holder: String,
    /// The holder's epoch: its clients are dropped when it ends.
    pub(super) holder_epoch: u64,
    pub(super) client: Client,
}

/// The owner's answer to [`Connect`].
#[derive(Serialize, Deserialize, Debug)]
#[serde(tag = "result", rename_all = "camelCase")]
pub(super) enum ConnectReply {
    Admitted,
    Refused {
        status: u16,
        error: String,
        message: String,
    },
    Full {
        limit: usize,
    },
    TooManyRooms {
        limit: usize,
    },
    Failed,
    Unreachable,
    /// This node does not own the project (any more): look again.
    NotOwner,
}

/// `gather`: the new owner of `project` asks for its clients.
#[derive(Serialize, Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
pub(super) struct Gather {
    pub(super) project: String,
    pub(super) owner: String,
    pub(super) epoch: u64,
}

/// A node's answer to [`Gather`].
#[derive(Serialize, Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub(super) struct Gathered {
    /// The answering node's epoch.
    pub(super) epoch: u64,
    pub(super) clients: Vec<Client>,
}

/// `report`: `/status` (or `/health` when `health`) of a project.
#[derive(Serialize, Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
pub(super) struct Report {
    pub(super) project: String,
    pub(super) health: bool,
}

/// The owner's answer to a message.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum MessageReply {
    /// The room handled it.
    Handled,
    /// The room failed or went away before handling it.
    Lost,
    /// The owner serves no such client: the project moved, or is moving.
    Unknown,
}

impl MessageReply {
    pub(super) fn encode(&self) -> Bytes {
        Bytes::from_static(match self {
            MessageReply::Handled => b"",
            MessageReply::Lost => b"lost",
            MessageReply::Unknown => b"unknown",
        })
    }

    pub(super) fn decode(body: &[u8]) -> MessageReply {
        match body {
            b"" => MessageReply::Handled,
            b"lost" => MessageReply::Lost,
            _ => MessageReply::Unknown,
        }
    }
}

const TEXT: u8 = 0;
const BINARY: u8 = 1;
const TOO_LARGE: u8 = 2;

/// `msg`: the client's key, the kind, the message's bytes.
pub(super) fn message(key: u64, message: &Incoming) -> Bytes {
    let (kind, body): (u8, &[u8]) = match message {
        Incoming::Text(text) => (TEXT, text.as_bytes()),
        Incoming::Binary(bytes) => (BINARY, bytes),
        Incoming::TooLarge(_) => (TOO_LARGE, &[]),
    };
    let mut out = BytesMut::with_capacity(25 + body.len());
    out.put_u64(key);
    out.put_u8(kind);
    if let Incoming::TooLarge(over) = message {
        out.put_u64(over.size);
        out.put_u64(over.limit);
    }
    out.put_slice(body);
    out.freeze()
}

pub(super) fn parse_message(body: &[u8]) -> Option<(u64, Incoming)> {
    let key = u64::from_be_bytes(body.get(..8)?.try_into().ok()?);
    let rest = body.get(9..)?;
    let message = match *body.get(8)? {
        TEXT => Incoming::Text(String::from_utf8(rest.to_vec()).ok()?),
        BINARY => Incoming::Binary(rest.to_vec()),
        TOO_LARGE => Incoming::TooLarge(Oversize {
            size: u64::from_be_bytes(rest.get(..8)?.try_into().ok()?),
            limit: u64::from_be_bytes(rest.get(8..16)?.try_into().ok()?),
        }),
        _ => return None,
    };
    Some((key, message))
}

/// `close`: the client's key, the close code, the reason.
pub(super) fn close(key: u64, code: u16, reason: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(10 + reason.len());
    out.put_u64(key);
    out.put_u16(code);
    out.put_slice(reason.as_bytes());
    out.freeze()
}

pub(super) fn parse_close(body: &[u8]) -> Option<(u64, u16, String)> {
    let key = u64::from_be_bytes(body.get(..8)?.try_into().ok()?);
    let code = u16::from_be_bytes(body.get(8..10)?.try_into().ok()?);
    let reason = String::from_utf8_lossy(body.get(10..)?).into_owned();
    Some((key, code, reason))
}

const CONTINUE: u8 = 0;
const FINISH: u8 = 1;
const ABORT: u8 = 2;

/// `frames`: the client's key, the owner's epoch, the batch's number, what
/// the batch ends with, the close frame's length (when it ends with one),
/// then the frames as the client will read them.
pub(super) fn frames(key: u64, epoch: u64, seq: u64, next: Next, batch: &[Bytes]) -> Bytes {
    let len: usize = batch.iter().map(Bytes::len).sum();
    let mut out = BytesMut::with_capacity(29 + len);
    out.put_u64(key);
    out.put_u64(epoch);
    out.put_u64(seq);
    let (flag, close_len) = match next {
        Next::Continue => (CONTINUE, 0),
        Next::Finish => (FINISH, batch.last().map_or(0, Bytes::len)),
        Next::Abort => (ABORT, 0),
    };
    out.put_u8(flag);
    out.put_u32(u32::try_from(close_len).unwrap_or(0));
    for frame in batch {
        out.put_slice(frame);
    }
    out.freeze()
}

/// A batch of frames for one client, as [`frames`] wrote it.
pub(super) struct Frames {
    pub(super) key: u64,
    pub(super) epoch: u64,
    pub(super) seq: u64,
    pub(super) next: Next,
    /// The data frames.
    pub(super) data: Bytes,
    /// The close frame it ends with (`Next::Finish`).
    pub(super) close: Bytes,
}

pub(super) fn parse_frames(body: &Bytes) -> Option<Frames> {
    let field = |at: usize| -> Option<u64> {
        Some(u64::from_be_bytes(body.get(at..at + 8)?.try_into().ok()?))
    };
    let next = match *body.get(24)? {
        CONTINUE => Next::Continue,
        FINISH => Next::Finish,
        ABORT => Next::Abort,
        _ => return None,
    };
    let close_len = u32::from_be_bytes(body.get(25..29)?.try_into().ok()?) as usize;
    let frames = body.slice(29.min(body.len())..);
    let split = frames.len().checked_sub(close_len)?;
    Some(Frames {
        key: field(0)?,
        epoch: field(8)?,
        seq: field(16)?,
        next,
        data: frames.slice(..split),
        close: frames.slice(split..),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_closes_and_frames_survive_the_trip() {
        for m in [
            Incoming::Text("héllo".into()),
            Incoming::Binary(vec![0, 1, 2]),
            Incoming::TooLarge(Oversize {
                size: 1 << 40,
                limit: 1 << 20,
            }),
        ] {
            let (key, back) = parse_message(&message(7, &m)).unwrap();
            assert_eq!(key, 7);
            assert_eq!(format!("{back:?}"), format!("{m:?}"));
        }
        assert_eq!(
            parse_close(&close(9, 1001, "bye")),
            Some((9, 1001, "bye".into()))
        );
        let batch = [Bytes::from_static(b"ab"), Bytes::from_static(b"close")];
        let f = parse_frames(&frames(3, 4, 5, Next::Finish, &batch)).unwrap();
        assert_eq!((f.key, f.epoch, f.seq, f.next), (3, 4, 5, Next::Finish));
        assert_eq!((&f.data[..], &f.close[..]), (&b"ab"[..], &b"close"[..]));
    }

    #[test]
    fn a_malformed_body_is_refused_not_a_panic() {
        let mut bad = frames(1, 1, 1, Next::Continue, &[]).to_vec();
        bad[25..29].copy_from_slice(&100u32.to_be_bytes());
        assert!(parse_frames(&Bytes::from(bad)).is_none());
        for n in 0..30 {
            let body = Bytes::from(vec![0xff; n]);
            assert!(parse_frames(&body).is_none());
            let _ = parse_message(&body);
            let _ = parse_close(&body);
        }
        assert!(parse_message(&[0, 0, 0, 0, 0, 0, 0, 1, TEXT, 0xff]).is_none());
    }
}
