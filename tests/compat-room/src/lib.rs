//! A room built against contract 0.3.0 (`wit/0.3.0/`), as rooms in the wild
//! are. It greets a client with `connected` (its id), as the default room
//! does. Every message, text included, comes to `on-message`, and `send`
//! answers a count per target. A text message goes to its sender and every
//! client of the sender's type (each once); then the sender gets
//! `{"counts": [..], "params": [[name, value], ..]}`: what each of the two
//! targets added, and its own query parameters as `client` tells them.

#![cfg(target_arch = "wasm32")]
// The generated export glue takes one argument per flattened WIT value.
#![allow(clippy::too_many_arguments)]

wit_bindgen::generate!({
    world: "room",
    path: "../../wit/0.3.0",
});

use wsroom::room::host;
use wsroom::room::types::{Selector, Target};

struct Compat;

fn to(select: Selector) -> Target {
    Target {
        select,
        except: Vec::new(),
    }
}

impl Guest for Compat {
    fn on_connect(client: ClientInfo) -> Result<(), Refusal> {
        let hello = serde_json::json!({"type": "connected", "payload": {"clientId": client.id}});
        host::send(&hello.to_string(), &[to(Selector::Client(client.id))]);
        Ok(())
    }

    fn on_message(sender: Sender, message: Incoming) {
        let Incoming::Text(text) = message else {
            return;
        };
        let counts = host::send(
            &text,
            &[
                to(Selector::Client(sender.id.clone())),
                to(Selector::Kind(sender.kind.clone())),
            ],
        );
        let params = host::client(&sender.id)
            .map(|c| c.params)
            .unwrap_or_default();
        let answer = serde_json::json!({"counts": counts, "params": params});
        host::send(&answer.to_string(), &[to(Selector::Client(sender.id))]);
    }

    fn on_close(_client: ClientInfo, _code: u16, _reason: String) {}

    fn alarm(_info: AlarmInfo) {}

    fn fetch(_request: HttpRequest) -> HttpResponse {
        HttpResponse {
            status: 404,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }
}

export!(Compat);
