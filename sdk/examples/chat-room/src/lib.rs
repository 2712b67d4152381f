//! A chat room built on the room SDK. Every text a client sends is a chat
//! line (`{"text": "…"}`, or any other text as is): it is stamped, kept in
//! the room's store and sent to everyone. A client that joins first gets
//! `{"type": "history", "messages": [...]}` with what the store holds. An
//! alarm trims the store to the newest `chat-history` lines (room config,
//! default 20) `chat-trim-ms` after a new line (default 1000).
//!
//! The store is kept by the host, so the history survives hibernation,
//! code reloads and restarts, which drop this instance and its memory. The
//! text `/clear` deletes the history (all of the room's data) and tells
//! everyone `{"type": "cleared"}`.
//!
//! Over HTTP (`/rooms/{projectId}/...`), `GET /history` answers
//! `{"messages": [...]}`: the same history, for a backend.

use serde_json::{Value, json};
use wsroom_room_sdk::{
    AlarmInfo, ClientInfo, Ctx, HttpRequest, HttpResponse, Incoming, Refusal, Room, Sender,
    export_room, json_response,
};

/// Key prefix of stored lines; the rest is a zero-padded sequence number,
/// so byte order is arrival order.
const LINE: &str = "line:";
const NEXT: &str = "next";

#[derive(Default)]
struct Chat;

fn config_u64(ctx: &Ctx, key: &str, default: u64) -> u64 {
    ctx.config(key)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn lines(ctx: &Ctx) -> Vec<String> {
    ctx.storage_keys(LINE, u32::MAX)
}

/// The kept lines, oldest first.
fn history(ctx: &Ctx) -> Vec<Value> {
    lines(ctx)
        .iter()
        .filter_map(|k| ctx.storage_get(k))
        .filter_map(|v| serde_json::from_slice(&v).ok())
        .collect()
}

impl Room for Chat {
    fn on_connect(&mut self, ctx: &mut Ctx, client: &ClientInfo) -> Result<(), Refusal> {
        let history = json!({"type": "history", "messages": history(ctx)});
        ctx.send_to_client(&client.id, &history.to_string());
        Ok(())
    }

    fn on_message(&mut self, ctx: &mut Ctx, from: &Sender, message: Incoming) {
        let Incoming::Text(text) = message else {
            let error = json!({"type": "error", "message": "send text"});
            ctx.send_to_client(&from.id, &error.to_string());
            return;
        };
        if text == "/clear" {
            ctx.storage_delete_all();
            ctx.broadcast(&json!({"type": "cleared"}).to_string());
            return;
        }
        let said = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v.get("text").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or(text);
        let line = json!({"type": "chat", "from": from.id, "text": said, "at": ctx.now_ms()});
        let line = line.to_string();
        let seq = ctx
            .storage_get(NEXT)
            .and_then(|v| String::from_utf8(v).ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        let stored = ctx
            .storage_set(&format!("{LINE}{seq:020}"), line.as_bytes())
            .and_then(|()| ctx.storage_set(NEXT, (seq + 1).to_string().as_bytes()));
        if let Err(e) = stored {
            // Full, or the disk failing: the line still goes out, it just
            // is not replayed.
            ctx.log(
                wsroom_room_sdk::LogLevel::Warn,
                &format!("chat line not kept: {e:?}"),
            );
        }
        ctx.broadcast(&line);
        if ctx.alarm_at().is_none() {
            let delay = config_u64(ctx, "chat-trim-ms", 1000);
            ctx.set_alarm(delay);
        }
    }

    fn on_alarm(&mut self, ctx: &mut Ctx, _info: AlarmInfo) {
        let keep = config_u64(ctx, "chat-history", 20) as usize;
        let keys = lines(ctx);
        for key in &keys[..keys.len().saturating_sub(keep)] {
            ctx.storage_delete(key);
        }
    }

    fn fetch(&mut self, ctx: &mut Ctx, request: HttpRequest) -> HttpResponse {
        let path = request.path.split('?').next().unwrap_or_default();
        match (request.method.as_str(), path) {
            ("GET", "/history") => {
                json_response(200, &json!({"messages": history(ctx)}).to_string())
            }
            (_, "/history") => {
                json_response(405, r#"{"error":"method_not_allowed","message":"use GET"}"#)
            }
            _ => json_response(
                404,
                r#"{"error":"not_found","message":"this room answers GET /history"}"#,
            ),
        }
    }
}

export_room!(Chat);
