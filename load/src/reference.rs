//! `wsroom-load reference-server`: a lean native WebSocket server, no wasm,
//! that routes the load tool's messages like the default room, so wsroom
//! can be compared with it on the same machine in the same session.
//!
//! It does only what the benchmarks need: `connected` with a client id,
//! routing by `to.id` / `to.type` / broadcast with `from` stamped, and each
//! message parsed once and framed once into a shared `Bytes` queued on every
//! recipient's outbox, drained by that connection's writer with vectored
//! writes. No admin copies, no validation errors, no limits beyond the
//! outbox bound: it is a yardstick, not a server to run.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use bytes::Bytes;
use fastwebsockets::{OpCode, Role};
use http_body_util::Empty;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::net::TcpListener;

use wsroom::outbox::{self, Next, Outbox};
use wsroom::write_all;

struct Client {
    id: Arc<str>,
    kind: Arc<str>,
    outbox: Arc<Outbox>,
}

#[derive(Default)]
struct Room {
    clients: Mutex<Vec<Client>>,
}

type Rooms = Arc<Mutex<HashMap<String, Arc<Room>>>>;

/// Listens on `listen` and serves until the process is killed; returns
/// only if it cannot listen or accept.
pub async fn serve(listen: SocketAddr) -> anyhow::Result<()> {
    anyhow::ensure!(
        listen.ip().is_loopback(),
        "the reference server listens on loopback only"
    );
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    println!(
        "reference server listening on http://{}",
        listener.local_addr()?
    );
    serve_on(listener).await
}

/// Serves on `listener`, bound to a loopback address, until the task is
/// dropped; returns only if it cannot accept.
pub async fn serve_on(listener: TcpListener) -> anyhow::Result<()> {
    anyhow::ensure!(
        listener.local_addr()?.ip().is_loopback(),
        "the reference server listens on loopback only"
    );
    let rooms: Rooms = Arc::default();
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let rooms = rooms.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| upgrade(rooms.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        });
    }
}

async fn upgrade(
    rooms: Rooms,
    mut req: Request<hyper::body::Incoming>,
) -> anyhow::Result<Response<Empty<Bytes>>> {
    let mut kind = String::new();
    let mut project = String::new();
    for (k, v) in url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()) {
        match &*k {
            "type" => kind = v.into_owned(),
            "projectId" => project = v.into_owned(),
            _ => {}
        }
    }
    let (response, fut) = fastwebsockets::upgrade::upgrade(&mut req)?;
    let room = rooms
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(project)
        .or_default()
        .clone();
    tokio::spawn(async move {
        if let Ok(ws) = fut.await {
            connection(ws.into_inner(), room, kind.into()).await;
        }
    });
    let (parts, _) = response.into_parts();
    Ok(Response::from_parts(parts, Empty::new()))
}

async fn connection(io: TokioIo<hyper::upgrade::Upgraded>, room: Arc<Room>, kind: Arc<str>) {
    let id: Arc<str> = uuid::Uuid::new_v4().to_string().into();
    let outbox = Arc::new(Outbox::new(64 << 20));
    let hello = serde_json::json!({"type": "connected", "payload": {"clientId": &*id}});
    let _ = outbox.push(outbox::encode(OpCode::Text, hello.to_string().as_bytes()));
    room.clients
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(Client {
            id: id.clone(),
            kind: kind.clone(),
            outbox: outbox.clone(),
        });
    let (read, mut write) = tokio::io::split(io);
    let reader = async {
        let (mut ws, _) =
            fastwebsockets::after_handshake_split(read, tokio::io::sink(), Role::Server);
        ws.set_auto_close(true);
        ws.set_auto_pong(true);
        let mut obligated = |_frame: fastwebsockets::Frame<'_>| {
            std::future::ready(Ok::<(), std::convert::Infallible>(()))
        };
        while let Ok(frame) = ws.read_frame(&mut obligated).await {
            match frame.opcode {
                OpCode::Text => route(&room, &id, &kind, &frame.payload),
                OpCode::Close => break,
                _ => {}
            }
        }
    };
    let writer = async {
        let mut batch = Vec::new();
        while outbox.take(&mut batch).await == Next::Continue {
            if write_all(&mut write, &mut batch).await.is_err() {
                break;
            }
            batch.clear();
        }
    };
    tokio::select! {
        () = reader => {}
        () = writer => {}
    }
    outbox.abort();
    room.clients
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|c| !Arc::ptr_eq(&c.id, &id));
}

/// The top-level fields, values kept as raw JSON.
#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow)]
    to: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct To<'a> {
    #[serde(borrow, default)]
    id: Option<&'a str>,
    #[serde(borrow, default, rename = "type")]
    kind: Option<&'a str>,
}

fn route(room: &Room, sender: &str, sender_kind: &str, text: &[u8]) {
    let Ok(message) = serde_json::from_slice::<Message<'_>>(text) else {
        return;
    };
    let to = message
        .to
        .and_then(|raw| serde_json::from_str::<To<'_>>(raw.get()).ok());
    // The message with `from` appended: framed once, shared by everyone.
    let Some(body) = text.strip_suffix(b"}") else {
        return;
    };
    let mut out = Vec::with_capacity(text.len() + 80);
    out.extend_from_slice(body);
    out.extend_from_slice(br#","from":{"id":""#);
    out.extend_from_slice(sender.as_bytes());
    out.extend_from_slice(br#"","type":""#);
    out.extend_from_slice(sender_kind.as_bytes());
    out.extend_from_slice(br#""}}"#);
    let frame = outbox::encode(OpCode::Text, &out);
    let clients = room.clients.lock().unwrap_or_else(|e| e.into_inner());
    let deliver = |c: &Client| {
        let _ = c.outbox.push(frame.clone());
    };
    match to {
        Some(To { id: Some(id), .. }) if !id.is_empty() => {
            clients.iter().filter(|c| &*c.id == id).for_each(deliver);
        }
        Some(To {
            kind: Some(kind), ..
        }) if !kind.is_empty() => clients
            .iter()
            .filter(|c| &*c.kind == kind && &*c.id != sender)
            .for_each(deliver),
        _ => clients
            .iter()
            .filter(|c| &*c.id != sender)
            .for_each(deliver),
    }
}
