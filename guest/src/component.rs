//! The thin layer between the WIT world and [`crate::rules`].

// The generated export glue takes one argument per flattened WIT value.
#![allow(clippy::too_many_arguments)]

use crate::rules::{self, Env, Joining, Select, Target};

wit_bindgen::generate!({
    world: "room",
    path: "../wit",
});

use wsroom::room::host;
use wsroom::room::types as wit;

struct Room;

/// [`Env`] over the host's imports.
struct Host;

impl Env for Host {
    fn project_id(&self) -> String {
        host::project_id()
    }

    fn send(&mut self, text: &str, targets: &[Target<'_>]) -> Vec<u32> {
        let targets: Vec<wit::Target> = targets
            .iter()
            .map(|t| wit::Target {
                select: match t.select {
                    Select::Client(id) => wit::Selector::Client(id.to_owned()),
                    Select::Kind(kind) => wit::Selector::Kind(kind.to_owned()),
                    Select::All => wit::Selector::All,
                },
                except: t.except.iter().map(|id| id.to_string()).collect(),
            })
            .collect();
        host::send(text, &targets)
    }

    fn client_count(&self) -> u32 {
        host::client_count(None)
    }

    fn now_ms(&self) -> u64 {
        host::now_ms()
    }

    fn new_id(&self) -> String {
        host::new_id()
    }

    fn config(&self, key: &str) -> Option<String> {
        host::config(key)
    }

    fn set_alarm(&mut self, delay_ms: u64) {
        host::set_alarm(delay_ms)
    }

    fn cancel_alarm(&mut self) {
        host::cancel_alarm()
    }
}

impl Guest for Room {
    fn on_connect(client: wit::ClientInfo) -> Result<(), wit::Refusal> {
        rules::on_connect(
            &mut Host,
            Joining {
                id: &client.id,
                kind: &client.kind,
            },
        )
        .map_err(|r| wit::Refusal {
            status: r.status,
            error: r.error,
            message: r.message,
        })
    }

    fn on_message(sender: wit::Sender, message: Incoming) {
        match message {
            Incoming::Text(text) => rules::on_text(&mut Host, &sender.id, &sender.kind, &text),
            Incoming::Binary(_) => rules::on_binary(&mut Host, &sender.id),
            Incoming::TooLarge(o) => rules::on_too_large(&mut Host, &sender.id, o.size, o.limit),
        }
    }

    fn on_close(client: wit::ClientInfo, _code: u16, _reason: String) {
        rules::on_close(&mut Host, &client.id, &client.kind);
    }

    fn alarm(_info: wit::AlarmInfo) {
        rules::on_alarm(&mut Host);
    }
}

export!(Room);
