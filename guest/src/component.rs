//! The thin layer between the room SDK and [`crate::rules`].

use wsroom_room_sdk::alloc::Recycler;
use wsroom_room_sdk::{
    AlarmInfo, ClientInfo, Ctx, HttpRequest, HttpResponse, Incoming, Refusal, Room, Selector,
    Sender, TextMessage, export_room,
};

use crate::rules::{self, Env, Joining, Reached, Select, Target};

// Every message costs the room a handful of small allocations (the lowered
// arguments, the parsed fields, the re-serialized message, the host's
// answer), all freed by the end of the call: the SDK's recycler hands the
// same blocks out again, talc (fewer instructions than the default
// dlmalloc) serves the rest.
#[cfg(not(target_feature = "atomics"))]
#[global_allocator]
static ALLOCATOR: Recycler<talc::wasm::WasmDynamicTalc> =
    Recycler::new(talc::wasm::new_wasm_dynamic_allocator());

// The allocator's state must sit in one page for its first write to spare
// the page a read-only mapping (see `Recycler`): one 128-byte line.
#[cfg(target_arch = "wasm32")]
const _: () = assert!(size_of::<Recycler<talc::wasm::WasmDynamicTalc>>() == 128);

struct DefaultRoom {
    /// Whether the room may have an alarm set: not once this instance
    /// cancelled it and set none since. A new instance cannot know (an
    /// instance before it, one on another node, may have set one), so it
    /// starts with yes. Spares every connection but the first a call to
    /// `cancel-alarm`.
    alarm_may_be_set: bool,
}

impl DefaultRoom {
    fn host<'a>(&'a mut self, ctx: &'a mut Ctx) -> Host<'a> {
        Host {
            ctx,
            alarm_may_be_set: &mut self.alarm_may_be_set,
        }
    }
}

impl Default for DefaultRoom {
    fn default() -> Self {
        DefaultRoom {
            alarm_may_be_set: true,
        }
    }
}

/// A rules target as the SDK's (borrowed) WIT target.
fn sdk_target<'a>(t: &'a Target<'_>) -> wsroom_room_sdk::Target<'a> {
    wsroom_room_sdk::Target {
        select: match t.select {
            Select::Client(id) => Selector::Client(id),
            Select::Kind(kind) => Selector::Kind(kind),
            Select::All => Selector::All,
        },
        except: t.except.as_slice(),
    }
}

/// [`Env`] over the SDK's context and what the room knows of its alarm.
struct Host<'a> {
    ctx: &'a mut Ctx,
    alarm_may_be_set: &'a mut bool,
}

impl Env for Host<'_> {
    fn project_id(&self) -> String {
        self.ctx.project_id()
    }

    fn send(&mut self, text: &str, targets: &[Target<'_>]) -> Reached {
        // The rules send to one or two targets: borrowed all the way to
        // the host, nothing allocated.
        let reached = match targets {
            [a] => self.ctx.send(text, &[sdk_target(a)]),
            [a, b] => self.ctx.send(text, &[sdk_target(a), sdk_target(b)]),
            _ => {
                let targets: Vec<_> = targets.iter().map(sdk_target).collect();
                self.ctx.send(text, &targets)
            }
        };
        Reached {
            first: reached.first,
            all: reached.all,
        }
    }

    fn client_count(&self) -> u32 {
        self.ctx.client_count(None)
    }

    fn now_ms(&self) -> u64 {
        self.ctx.now_ms()
    }

    fn new_id(&self) -> String {
        self.ctx.new_id()
    }

    fn config(&self, key: &str) -> Option<String> {
        self.ctx.config(key)
    }

    fn set_alarm(&mut self, delay_ms: u64) {
        *self.alarm_may_be_set = true;
        self.ctx.set_alarm(delay_ms)
    }

    fn cancel_alarm(&mut self) {
        if std::mem::take(self.alarm_may_be_set) {
            self.ctx.cancel_alarm()
        }
    }
}

impl Room for DefaultRoom {
    fn on_connect(&mut self, ctx: &mut Ctx, client: &ClientInfo) -> Result<(), Refusal> {
        rules::on_connect(
            &mut self.host(ctx),
            Joining {
                id: &client.id,
                kind: &client.kind,
            },
        )
        .map_err(|r| Refusal {
            status: r.status,
            error: r.error,
            message: r.message,
        })
    }

    /// Read in place: the message and its sender's id and type are never
    /// copied in the room.
    fn on_text(&mut self, ctx: &mut Ctx, message: TextMessage) {
        rules::on_text(
            &mut self.host(ctx),
            message.sender_id(),
            message.sender_kind(),
            message.text(),
        );
    }

    fn on_message(&mut self, ctx: &mut Ctx, sender: &Sender, message: Incoming) {
        let host = &mut self.host(ctx);
        match message {
            Incoming::Text(text) => rules::on_text(host, &sender.id, &sender.kind, &text),
            Incoming::Binary(_) => rules::on_binary(host, &sender.id),
            Incoming::TooLarge(o) => rules::on_too_large(host, &sender.id, o.size, o.limit),
        }
    }

    fn on_close(&mut self, ctx: &mut Ctx, client: &ClientInfo, _code: u16, _reason: &str) {
        rules::on_close(&mut self.host(ctx), &client.id, &client.kind);
    }

    fn on_alarm(&mut self, ctx: &mut Ctx, _info: AlarmInfo) {
        rules::on_alarm(&mut self.host(ctx));
    }

    fn fetch(&mut self, ctx: &mut Ctx, request: HttpRequest) -> HttpResponse {
        let answer = rules::on_http(
            &mut self.host(ctx),
            &request.method,
            &request.path,
            &request.body,
        );
        let mut headers = vec![("content-type".into(), "application/json".into())];
        if let Some(allow) = answer.allow {
            headers.push(("allow".into(), allow.into()));
        }
        HttpResponse {
            status: answer.status,
            headers,
            body: answer.body.into_bytes(),
        }
    }
}

export_room!(DefaultRoom);
