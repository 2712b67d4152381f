//! A room for the host's fault-containment tests. It admits every client and
//! echoes each text message back to its sender as `{"echo": text}`,
//! except for commands:
//!
//! - `panic`: panics (a trap);
//! - `loop`: spins forever (stopped by the CPU budget);
//! - `alloc`: allocates until the memory cap stops it;
//! - `print`: writes a line to stdout and stderr, then echoes;
//! - `who`: echoes "<clients> <clients of my type> <my type>" from the host;
//! - `close:CODE`: echoes "bye", then has the host close the sender with
//!   CODE (twice: the second must say there is no such client);
//! - `spin:MS`: stays busy for MS milliseconds, then echoes;
//! - `alarm:MS`: sets the alarm MS milliseconds from now, then echoes;
//! - `attach:TEXT`: stores TEXT as the client's attachment;
//! - `attachment`: echoes the stored attachment;
//! - `log:N`: writes N lines with the `log` import, then echoes;
//! - `print:N`: writes N lines to stderr, then echoes.
//!
//! Its alarm traps on the first `fixture-alarm-failures` attempts (room
//! config) and logs `fixture alarm ran (retry N)` when it succeeds.

#![cfg(target_arch = "wasm32")]
// The generated export glue takes one argument per flattened WIT value.
#![allow(clippy::too_many_arguments)]

wit_bindgen::generate!({
    world: "room",
    // Built against the contract's first version, as rooms in the wild
    // are: the host must keep loading them (wit/0.1.0/).
    path: "../../wit/0.1.0",
});

use wsroom::room::host;
use wsroom::room::types::{AttachmentError, LogLevel, Selector, Target};

struct Fixture;

impl Guest for Fixture {
    fn on_connect(client: ClientInfo) -> Result<(), Refusal> {
        host::cancel_alarm();
        let hello = serde_json::json!({"type": "connected", "payload": {"clientId": client.id}});
        send_to(&client.id, &hello.to_string());
        Ok(())
    }

    fn on_message(sender: Sender, message: Incoming) {
        let Incoming::Text(text) = message else {
            return;
        };
        match text.as_str() {
            "panic" => panic!("asked to panic"),
            "recurse" => {
                // Until wasmtime's stack limit traps: deep in the fiber's
                // native stack, which the next instance may be handed.
                send_to(&sender.id, &deeper(0).to_string());
            }
            "loop" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "alloc" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "print" => {
                println!("fixture room writes to stdout");
                eprintln!("fixture room writes to stderr");
                echo(&sender.id, &text);
            }
            "attachment" => {
                let data = host::attachment(&sender.id).unwrap_or_default();
                echo(&sender.id, &String::from_utf8_lossy(&data));
            }
            "who" => {
                // What the host's table says: everyone, and this sender.
                let all = host::clients(None);
                let me = host::client(&sender.id).map(|c| c.kind).unwrap_or_default();
                echo(
                    &sender.id,
                    &format!(
                        "{} {} {}",
                        all.len(),
                        host::client_count(Some(&sender.kind)),
                        me
                    ),
                );
            }
            _ if text.starts_with("close:") => {
                let code: u16 = text["close:".len()..].parse().unwrap_or(0);
                // Sent in the same call: it must arrive before the close.
                echo(&sender.id, "bye");
                let closed = host::close(&sender.id, code, "closed by the room");
                let again = host::close(&sender.id, code, "closed by the room");
                host::log(
                    LogLevel::Info,
                    &format!("fixture close: {closed} then {again}"),
                );
            }
            _ if text.starts_with("spin:") => {
                // Busy for that many milliseconds, then echo.
                let ms: u64 = text["spin:".len()..].parse().unwrap_or(0);
                let until = host::now_ms() + ms;
                while host::now_ms() < until {
                    std::hint::spin_loop();
                }
                echo(&sender.id, &text);
            }
            _ if text.starts_with("alarm:") => {
                // Sets the alarm MS milliseconds from now, then echoes.
                let ms: u64 = text["alarm:".len()..].parse().unwrap_or(0);
                host::set_alarm(ms);
                echo(&sender.id, &text);
            }
            _ if text.starts_with("print:") => {
                let n: u32 = text["print:".len()..].parse().unwrap_or(0);
                for i in 0..n {
                    eprintln!("fixture stderr line {i}");
                }
                echo(&sender.id, &text);
            }
            _ if text.starts_with("log:") => {
                let n: u32 = text["log:".len()..].parse().unwrap_or(0);
                for i in 0..n {
                    host::log(LogLevel::Info, &format!("fixture log line {i}"));
                }
                echo(&sender.id, &text);
            }
            _ if text.starts_with("attach:") => {
                let data = text.as_bytes()["attach:".len()..].to_vec();
                let result = match host::set_attachment(&sender.id, Some(&data)) {
                    Ok(()) => "ok",
                    Err(AttachmentError::TooLarge) => "too-large",
                    Err(AttachmentError::NoSuchClient) => "no-such-client",
                };
                echo(&sender.id, result);
            }
            _ => echo(&sender.id, &text),
        }
    }

    fn on_close(_client: ClientInfo, _code: u16, _reason: String) {
        if host::client_count(None) == 0 {
            let delay = host::config("cleanup-delay-ms")
                .and_then(|v| v.parse().ok())
                .unwrap_or(300_000);
            host::set_alarm(delay);
        }
    }

    /// Traps on the first `fixture-alarm-failures` attempts (room config),
    /// then logs that it ran.
    fn alarm(info: AlarmInfo) {
        let failures: u32 = host::config("fixture-alarm-failures")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if info.retry_count < failures {
            panic!("alarm attempt {} fails on purpose", info.retry_count);
        }
        host::log(
            LogLevel::Info,
            &format!("fixture alarm ran (retry {})", info.retry_count),
        );
    }
}

/// Sends `{"echo": text}` back.
fn echo(to: &str, text: &str) {
    send_to(to, &serde_json::json!({ "echo": text }).to_string());
}

fn send_to(to: &str, text: &str) {
    host::send(
        text,
        &[Target {
            select: Selector::Client(to.to_owned()),
            except: Vec::new(),
        }],
    );
}

export!(Fixture);

/// Recursion that the compiler cannot turn into a loop: each call's result
/// is needed, rotated, after the next returns.
#[inline(never)]
fn deeper(n: u64) -> u64 {
    if n == u64::MAX {
        return n;
    }
    deeper(n + 1).rotate_left(1) ^ n
}
