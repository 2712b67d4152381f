//! What nodes say to each other over NATS: the subjects, and the bodies of
//! requests and replies. The rare ones (connect, gather, report) are JSON;
//! the ones sent per message (a client's message, the frames for a client)
//! are a few fixed-size fields and the bytes as they are, so a message
//! crossing nodes is copied, never parsed or re-encoded.
//!
//! Every node listens on `wsroom.<node>.>`:
//! - `connect`: admit a client of a project this node owns ([`Connect`]).
//! - `msg.<holder>`: a client's message ([`message`]), answered once the
//!   room has handled it ([`MessageReply`]), with the frames for its node
//!   or on its own to `ack.<key>.<number>` on the holder.
//! - `close.<holder>`: a client left ([`close`]).
//! - `frames.<owner>`: what the owner's rooms sent this node's clients
//!   ([`frames`]): batches for many clients in one body, each client's
//!   numbered so that a gap is seen.
//! - `gather`: a node took over a project: which of its clients are here?
//! - `report`: `/status` or `/health` of a project this node owns.
//! - `fetch`: an HTTP request into a room this node owns ([`fetch`]),
//!   answered with the room's response ([`fetch_reply`]).
//!
//! Nothing a peer sends is trusted to be well formed: every parser returns
//! `None` on a short or malformed body.

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::engine::wit::{self, Oversize};
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
    /// (Absent from nodes of an earlier version.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) subject: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) params: Vec<(String, String)>,
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
            subject: meta.subject.as_deref().map(str::to_owned),
            params: meta
                .params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    pub(super) fn meta(&self) -> ClientMeta {
        ClientMeta {
            id: self.id.as_str().into(),
            kind: self.kind.as_str().into(),
            connected_at: self.connected_at,
            user_agent: self.user_agent.clone(),
            origin: self.origin.clone(),
            subject: self.subject.as_deref().map(Box::from),
            params: self
                .params
                .iter()
                .map(|(k, v)| (k.as_str().into(), v.as_str().into()))
                .collect(),
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum MessageReply {
    /// The room handled it.
    Handled,
    /// The room failed or went away before handling it.
    Lost,
    /// The owner serves no such client: the project moved, or is moving.
    Unknown,
}

impl MessageReply {
    fn code(&self) -> u8 {
        match self {
            MessageReply::Handled => 0,
            MessageReply::Lost => 1,
            MessageReply::Unknown => 2,
        }
    }

    fn from_code(code: u8) -> MessageReply {
        match code {
            0 => MessageReply::Handled,
            1 => MessageReply::Lost,
            _ => MessageReply::Unknown,
        }
    }

    /// The owner's answer sent on its own (to `ack.<key>`): the message's
    /// number and the answer.
    pub(super) fn encode(&self, seq: u64) -> Bytes {
        let mut out = BytesMut::with_capacity(9);
        out.put_u64(seq);
        out.put_u8(self.code());
        out.freeze()
    }

    pub(super) fn decode(body: &[u8]) -> Option<(u64, MessageReply)> {
        let seq = u64::from_be_bytes(body.get(..8)?.try_into().ok()?);
        Some((seq, MessageReply::from_code(*body.get(8)?)))
    }
}

/// The head of a [`fetch`]: all of the HTTP request but its body.
#[derive(Serialize, Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
struct FetchHead {
    project: String,
    method: String,
    path: String,
    headers: Vec<(String, String)>,
}

/// The owner's answer to a [`fetch`] (its body follows the head).
#[derive(Serialize, Deserialize, Debug, PartialEq, Eq)]
#[serde(tag = "result", rename_all = "camelCase")]
pub(super) enum FetchReply {
    Answered {
        status: u16,
        headers: Vec<(String, String)>,
    },
    /// The room has no `fetch`.
    NoHandler,
    Failed,
    TooManyRooms {
        limit: usize,
    },
    Unreachable,
    /// This node does not own the project (any more): look again.
    NotOwner,
}

/// A JSON head's length (4 bytes), the head, then raw bytes: the bodies of
/// `fetch` and its answer (an HTTP body is not worth escaping into JSON).
fn head_and_body(head: &impl Serialize, body: &[u8]) -> Bytes {
    let head = serde_json::to_vec(head).unwrap_or_default();
    let mut out = BytesMut::with_capacity(4 + head.len() + body.len());
    out.put_u32(head.len() as u32);
    out.put_slice(&head);
    out.put_slice(body);
    out.freeze()
}

fn parse_head_and_body<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Option<(T, &'a [u8])> {
    let len = u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    let head = bytes.get(4..4usize.checked_add(len)?)?;
    let body = bytes.get(4 + len..)?;
    Some((serde_json::from_slice(head).ok()?, body))
}

/// `fetch`: an HTTP request into `project`'s room.
pub(super) fn fetch(project: &str, request: &wit::HttpRequest) -> Bytes {
    let head = FetchHead {
        project: project.to_owned(),
        method: request.method.clone(),
        path: request.path.clone(),
        headers: request.headers.clone(),
    };
    head_and_body(&head, &request.body)
}

pub(super) fn parse_fetch(bytes: &[u8]) -> Option<(String, wit::HttpRequest)> {
    let (head, body) = parse_head_and_body::<FetchHead>(bytes)?;
    let request = wit::HttpRequest {
        method: head.method,
        path: head.path,
        headers: head.headers,
        body: body.to_vec(),
    };
    Some((head.project, request))
}

/// The answer to a `fetch`: how it went, and the response's body.
pub(super) fn fetch_reply(reply: &FetchReply, body: &[u8]) -> Bytes {
    head_and_body(reply, body)
}

pub(super) fn parse_fetch_reply(bytes: &[u8]) -> Option<(FetchReply, Vec<u8>)> {
    let (reply, body) = parse_head_and_body::<FetchReply>(bytes)?;
    Some((reply, body.to_vec()))
}

const TEXT: u8 = 0;
const BINARY: u8 = 1;
const TOO_LARGE: u8 = 2;

/// `msg`: the client's key, the message's number (from 1), the kind, the
/// message's bytes. Published with the reply subject `ack.<key>.<number>`
/// of the holder: NATS answers there if the owner is gone (no responders), and so
/// does the owner when it serves no such client; otherwise its answer
/// comes in a `frames` body ([`Record::Ack`]).
pub(super) fn message(key: u64, seq: u64, message: &Incoming) -> Bytes {
    let (kind, body): (u8, &[u8]) = match message {
        Incoming::Text(text) => (TEXT, text.as_bytes()),
        Incoming::Binary(bytes) => (BINARY, bytes),
        Incoming::TooLarge(_) => (TOO_LARGE, &[]),
    };
    let mut out = BytesMut::with_capacity(33 + body.len());
    out.put_u64(key);
    out.put_u64(seq);
    out.put_u8(kind);
    if let Incoming::TooLarge(over) = message {
        out.put_u64(over.size);
        out.put_u64(over.limit);
    }
    out.put_slice(body);
    out.freeze()
}

pub(super) fn parse_message(body: &[u8]) -> Option<(u64, u64, Incoming)> {
    let key = u64::from_be_bytes(body.get(..8)?.try_into().ok()?);
    let seq = u64::from_be_bytes(body.get(8..16)?.try_into().ok()?);
    let rest = body.get(17..)?;
    let message = match *body.get(16)? {
        TEXT => Incoming::Text(String::from_utf8(rest.to_vec()).ok()?),
        BINARY => Incoming::Binary(rest.to_vec()),
        TOO_LARGE => Incoming::TooLarge(Oversize {
            size: u64::from_be_bytes(rest.get(..8)?.try_into().ok()?),
            limit: u64::from_be_bytes(rest.get(8..16)?.try_into().ok()?),
        }),
        _ => return None,
    };
    Some((key, seq, message))
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
/// A frame's length word with this bit set names an earlier frame of the
/// same body instead (its index in the lower bits).
const SAME_AS: u32 = 1 << 31;

/// What the room queued for one client since its last batch.
pub(super) struct Batch {
    pub(super) key: u64,
    /// Its number among the client's batches, from 1.
    pub(super) seq: u64,
    /// What the batch ends with: with `Finish`, its last frame is the
    /// close frame.
    pub(super) next: Next,
    pub(super) frames: Vec<Bytes>,
}

/// What goes to a holder node in a `frames` body.
pub(super) enum Record {
    Frames(Batch),
    /// The owner's answer to a client's message.
    Ack {
        key: u64,
        seq: u64,
        reply: MessageReply,
    },
}

const FRAMES_RECORD: u8 = 0;
const ACK_RECORD: u8 = 1;
/// A frames record's fixed part: kind, key, number, what follows, count.
const FRAMES_RECORD_BYTES: usize = 1 + 8 + 8 + 1 + 4;
/// An answer record: kind, key, number, answer.
const ACK_RECORD_BYTES: usize = 1 + 8 + 8 + 1;

/// `frames`: the owner's epoch, then records for clients of one holder
/// node. A batch: its kind, the client's key, the batch's number, what it
/// ends with, its frame count, and each frame, written once per body: a
/// frame several clients get (a broadcast's) is written the first time and
/// named by its index after that, so a fan-out to a node's clients costs
/// one copy. An answer: its kind, the client's key, the message's number,
/// the answer. Writes as many of `records` as fit in `max_bytes` (at least
/// one) and says how many.
pub(super) fn frames(epoch: u64, records: &[Record], max_bytes: usize) -> (Bytes, usize) {
    // Each frame's place in the body, by where its bytes are (the records
    // hold them all alive, so an address names one frame); the records
    // that fit, and the body's exact size: it is allocated once.
    let mut index: foldhash::HashMap<(usize, usize), u32> = foldhash::HashMap::default();
    let mut size = 8;
    let mut fit = 0;
    for record in records {
        let added = match record {
            Record::Ack { .. } => ACK_RECORD_BYTES,
            Record::Frames(batch) => {
                let mut added = FRAMES_RECORD_BYTES + 4 * batch.frames.len();
                for frame in &batch.frames {
                    let next = index.len() as u32;
                    if *index
                        .entry((frame.as_ptr() as usize, frame.len()))
                        .or_insert(next)
                        == next
                    {
                        added += frame.len();
                    }
                }
                added
            }
        };
        if fit > 0 && size + added > max_bytes {
            break;
        }
        size += added;
        fit += 1;
    }
    let records = &records[..fit];
    let mut out = BytesMut::with_capacity(size);
    out.put_u64(epoch);
    let mut count = 0u32;
    for record in records {
        let batch = match record {
            Record::Ack { key, seq, reply } => {
                out.put_u8(ACK_RECORD);
                out.put_u64(*key);
                out.put_u64(*seq);
                out.put_u8(reply.code());
                continue;
            }
            Record::Frames(batch) => batch,
        };
        out.put_u8(FRAMES_RECORD);
        out.put_u64(batch.key);
        out.put_u64(batch.seq);
        out.put_u8(match batch.next {
            Next::Continue => CONTINUE,
            Next::Finish => FINISH,
            Next::Abort => ABORT,
        });
        out.put_u32(batch.frames.len() as u32);
        for frame in &batch.frames {
            let at = index
                .get(&(frame.as_ptr() as usize, frame.len()))
                .copied()
                .unwrap_or(count);
            if at < count {
                out.put_u32(SAME_AS | at);
            } else {
                count += 1;
                out.put_u32(frame.len() as u32);
                out.put_slice(frame);
            }
        }
    }
    debug_assert_eq!(out.len(), size);
    (out.freeze(), fit)
}

/// The owner's epoch and the records of a [`frames`] body; `None` if it is
/// malformed (then nothing of it is delivered).
pub(super) fn parse_frames(body: &Bytes) -> Option<(u64, Vec<Record>)> {
    let mut r = Reader { body, at: 0 };
    let epoch = r.u64()?;
    let mut seen: Vec<Bytes> = Vec::new();
    let mut batches = Vec::new();
    while r.at < body.len() {
        if r.bytes(1)?[0] == ACK_RECORD {
            let (key, seq) = (r.u64()?, r.u64()?);
            let reply = MessageReply::from_code(r.bytes(1)?[0]);
            batches.push(Record::Ack { key, seq, reply });
            continue;
        }
        let key = r.u64()?;
        let seq = r.u64()?;
        let next = match r.bytes(1)?[0] {
            CONTINUE => Next::Continue,
            FINISH => Next::Finish,
            ABORT => Next::Abort,
            _ => return None,
        };
        let n = r.u32()? as usize;
        let mut frames = Vec::with_capacity(n.min(1024));
        for _ in 0..n {
            let word = r.u32()?;
            if word & SAME_AS != 0 {
                frames.push(seen.get((word & !SAME_AS) as usize)?.clone());
            } else {
                let frame = r.bytes(word as usize)?;
                seen.push(frame.clone());
                frames.push(frame);
            }
        }
        batches.push(Record::Frames(Batch {
            key,
            seq,
            next,
            frames,
        }));
    }
    Some((epoch, batches))
}

/// Reads a body front to back, every read checked against its end.
struct Reader<'a> {
    body: &'a Bytes,
    at: usize,
}

impl Reader<'_> {
    fn bytes(&mut self, n: usize) -> Option<Bytes> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&end| end <= self.body.len())?;
        let slice = self.body.slice(self.at..end);
        self.at = end;
        Some(slice)
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.bytes(8)?[..].try_into().ok()?))
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.bytes(4)?[..].try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_s_identity_crosses_nodes_and_older_nodes_omit_it() {
        let meta = ClientMeta {
            id: "c1".into(),
            kind: "runtime".into(),
            subject: Some("alice".into()),
            params: vec![("room".into(), "blue".into())].into_boxed_slice(),
            ..Default::default()
        };
        let json = serde_json::to_string(&Client::new(4, &meta)).unwrap();
        let back = serde_json::from_str::<Client>(&json).unwrap().meta();
        assert_eq!(back.subject.as_deref(), Some("alice"));
        assert_eq!(&*back.params, &meta.params[..]);
        // A node of an earlier version sends neither.
        let older = r#"{"key":4,"id":"c1","kind":"runtime","connectedAt":0,"userAgent":null,"origin":null}"#;
        let back = serde_json::from_str::<Client>(older).unwrap().meta();
        assert_eq!((back.subject, back.params.len()), (None, 0));
    }

    #[test]
    fn an_http_request_and_its_answer_survive_the_trip() {
        let request = wit::HttpRequest {
            method: "POST".into(),
            path: "/messages?x=1".into(),
            headers: vec![("content-type".into(), "application/json".into())],
            body: b"{\"a\":\"\xc3\xa9\"}".to_vec(),
        };
        let (project, back) = parse_fetch(&fetch("p 1", &request)).unwrap();
        assert_eq!(project, "p 1");
        assert_eq!(
            (back.method, back.path, back.headers, back.body),
            (request.method, request.path, request.headers, request.body)
        );
        let reply = FetchReply::Answered {
            status: 202,
            headers: vec![("x".into(), "y".into())],
        };
        let (back, body) = parse_fetch_reply(&fetch_reply(&reply, b"\0\xff")).unwrap();
        assert_eq!((back, body), (reply, b"\0\xff".to_vec()));
        // Short, lying about its head's length, or not JSON: refused.
        for bad in [
            &b""[..],
            b"\0\0",
            b"\0\0\0\x09{}",
            b"\xff\xff\xff\xff",
            b"\0\0\0\x02no",
        ] {
            assert!(parse_fetch(bad).is_none());
            assert!(parse_fetch_reply(bad).is_none());
        }
    }

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
            let (key, seq, back) = parse_message(&message(7, 8, &m)).unwrap();
            assert_eq!((key, seq), (7, 8));
            assert_eq!(format!("{back:?}"), format!("{m:?}"));
        }
        assert_eq!(
            parse_close(&close(9, 1001, "bye")),
            Some((9, 1001, "bye".into()))
        );
        assert_eq!(
            MessageReply::decode(&MessageReply::Lost.encode(3)),
            Some((3, MessageReply::Lost))
        );
        let shared = Bytes::from_static(b"broadcast");
        let records = [
            Record::Frames(Batch {
                key: 3,
                seq: 5,
                next: Next::Finish,
                frames: vec![shared.clone(), Bytes::from_static(b"close")],
            }),
            Record::Ack {
                key: 3,
                seq: 2,
                reply: MessageReply::Handled,
            },
            Record::Frames(Batch {
                key: 4,
                seq: 1,
                next: Next::Continue,
                frames: vec![shared.clone()],
            }),
        ];
        let (body, _) = frames(9, &records, usize::MAX);
        // The broadcast is written once.
        assert_eq!(body.len(), 8 + 2 * 22 + 4 + 9 + 4 + 5 + 4 + 18);
        let (epoch, back) = parse_frames(&body).unwrap();
        assert_eq!(epoch, 9);
        let [
            Record::Frames(first),
            Record::Ack { key, seq, reply },
            Record::Frames(second),
        ] = &back[..]
        else {
            panic!("three records");
        };
        assert_eq!((*key, *seq, reply), (3, 2, &MessageReply::Handled));
        assert_eq!((first.key, first.seq, first.next), (3, 5, Next::Finish));
        assert_eq!(first.frames, [&b"broadcast"[..], &b"close"[..]]);
        assert_eq!(
            (second.key, second.seq, second.next),
            (4, 1, Next::Continue)
        );
        assert_eq!(second.frames, [&b"broadcast"[..]]);
    }

    #[test]
    fn a_body_holds_the_records_that_fit_counting_a_shared_frame_once() {
        let shared = Bytes::from(vec![b'x'; 100_000]);
        let batch = |key, frame: &Bytes| {
            Record::Frames(Batch {
                key,
                seq: 1,
                next: Next::Continue,
                frames: vec![frame.clone()],
            })
        };
        // Ten clients' copies of one broadcast: one frame and ten records.
        let copies: Vec<Record> = (0..10).map(|key| batch(key, &shared)).collect();
        let (body, fit) = frames(1, &copies, 200_000);
        assert_eq!(fit, 10);
        assert!(body.len() < 101_000, "{}", body.len());
        // Ten different frames: as many as the bound allows, at least one.
        let distinct: Vec<Record> = (0..10)
            .map(|key| batch(key, &Bytes::from(vec![b'y'; 100_000])))
            .collect();
        let (body, fit) = frames(1, &distinct, 350_000);
        assert_eq!(fit, 3);
        assert!(body.len() <= 350_000);
        assert_eq!(parse_frames(&body).unwrap().1.len(), 3);
        assert_eq!(frames(1, &distinct, 10).1, 1);
    }

    #[test]
    fn a_malformed_body_is_refused_not_a_panic() {
        let one = Record::Frames(Batch {
            key: 1,
            seq: 1,
            next: Next::Continue,
            frames: vec![Bytes::from_static(b"x")],
        });
        let good = frames(1, &[one], usize::MAX).0.to_vec();
        for cut in 9..good.len() {
            assert!(parse_frames(&Bytes::copy_from_slice(&good[..cut])).is_none());
        }
        // A reference to a frame not yet written.
        let mut bad = good.clone();
        bad[30..34].copy_from_slice(&(SAME_AS | 7).to_be_bytes());
        assert!(parse_frames(&Bytes::from(bad)).is_none());
        for n in 0..30 {
            let body = Bytes::from(vec![0xff; n]);
            // Eight bytes are an epoch and no batch.
            assert_eq!(parse_frames(&body).is_none(), n != 8, "{n}");
            let _ = parse_message(&body);
            let _ = parse_close(&body);
        }
        assert!(
            parse_message(&[0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, TEXT, 0xff]).is_none()
        );
    }
}
