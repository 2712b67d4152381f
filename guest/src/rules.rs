//! The default room's policy: docs/PROTOCOL.md's routing rules and system
//! messages, in plain Rust over the [`Env`] trait so they unit-test natively.
//! The wit-bindgen glue in `lib.rs` implements [`Env`] with the host's imports.

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt;

use system::SystemMessage;

/// The client types the default room admits.
pub const ADMITTED_TYPES: [&str; 3] = ["runtime", "data-agent", "admin"];
/// The type that receives monitoring copies of routed messages.
pub const ADMIN: &str = "admin";
/// Cleanup delay when the host does not configure one: five minutes.
pub const DEFAULT_CLEANUP_DELAY_MS: u64 = 5 * 60 * 1000;

/// Which clients a send reaches (mirrors the WIT `target`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Select<'a> {
    Client(&'a str),
    Kind(&'a str),
    All,
}

/// One target of a send: a selector and the clients it skips.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target<'a> {
    pub select: Select<'a>,
    pub except: Option<&'a str>,
}

/// What a send reached: how many clients its first target added, and how
/// many it reached in all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reached {
    pub first: u32,
    pub all: u32,
}

/// What the room needs from its host.
pub trait Env {
    fn project_id(&self) -> String;
    /// Delivers `text` once to each client in the union of `targets`.
    fn send(&mut self, text: &str, targets: &[Target<'_>]) -> Reached;
    fn client_count(&self) -> u32;
    fn now_ms(&self) -> u64;
    fn new_id(&self) -> String;
    fn config(&self, key: &str) -> Option<String>;
    fn set_alarm(&mut self, delay_ms: u64);
    fn cancel_alarm(&mut self);
}

/// A connection the host asks the room to admit.
pub struct Joining<'a> {
    pub id: &'a str,
    pub kind: &'a str,
}

/// Why a connection is refused (mirrors the WIT `refusal`).
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub error: String,
    pub message: String,
}

/// The error codes of docs/PROTOCOL.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidJson,
    InvalidMessage,
    UnknownTarget,
    MessageTooLarge,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::InvalidMessage => "invalid_message",
            ErrorCode::UnknownTarget => "unknown_target",
            ErrorCode::MessageTooLarge => "message_too_large",
        }
    }
}

/// `on-connect`: admit the default types, cancel a pending cleanup, greet.
pub fn on_connect(env: &mut impl Env, client: Joining<'_>) -> Result<(), Refusal> {
    if !ADMITTED_TYPES.contains(&client.kind) {
        return Err(Refusal {
            status: 400,
            error: "invalid_type".into(),
            message: format!(
                "type must be one of: {}; got {:?}",
                ADMITTED_TYPES.join(", "),
                client.kind
            ),
        });
    }
    env.cancel_alarm();
    let project_id = env.project_id();
    let text = SystemMessage::new(&env.new_id(), "connected")
        .str("clientId", client.id)
        .str("projectId", &project_id)
        .number("clientCount", env.client_count().into())
        .str(
            "message",
            &["connected to project ", &project_id, " as ", client.kind].concat(),
        )
        .number("timestamp", env.now_ms())
        .finish();
    env.send(
        &text,
        &[Target {
            select: Select::Client(client.id),
            except: None,
        }],
    );
    Ok(())
}

/// `on-close`: tell everyone left, and schedule cleanup when nobody is.
pub fn on_close(env: &mut impl Env, id: &str, kind: &str) {
    let remaining = env.client_count();
    if remaining > 0 {
        let text = SystemMessage::new(&env.new_id(), "client_left")
            .str("clientId", id)
            .str("clientType", kind)
            .str("projectId", &env.project_id())
            .number("clientCount", remaining.into())
            .number("timestamp", env.now_ms())
            .finish();
        env.send(
            &text,
            &[Target {
                select: Select::All,
                except: None,
            }],
        );
    } else {
        let delay = env
            .config("cleanup-delay-ms")
            .and_then(|v| v.parse().ok())
            .unwrap_or(DEFAULT_CLEANUP_DELAY_MS);
        env.set_alarm(delay);
    }
}

/// `alarm`: the cleanup alarm. The host removes a room that is empty and has
/// no alarm set, so there is nothing to do here; a room that got a new
/// client in the meantime simply stays.
pub fn on_alarm(_env: &mut impl Env) {}

/// A binary frame: the default room speaks JSON text only.
pub fn on_binary(env: &mut impl Env, sender: &str) {
    send_error(
        env,
        sender,
        ErrorCode::InvalidMessage,
        "binary frames are not supported; send JSON text",
        None,
    );
}

/// A message the host discarded for its size.
pub fn on_too_large(env: &mut impl Env, sender: &str, size: u64, limit: u64) {
    send_error(
        env,
        sender,
        ErrorCode::MessageTooLarge,
        &format!("message of {size} bytes is over the limit of {limit} bytes"),
        None,
    );
}

/// A text message (`on-text`): validate, stamp `from`, route; an
/// `error` back to the sender when the message is refused.
pub fn on_text(env: &mut impl Env, sender_id: &str, sender_kind: &str, text: &str) {
    if let Err(rejected) = deliver(env, sender_id, sender_kind, text) {
        send_error(
            env,
            sender_id,
            rejected.code,
            &rejected.message,
            rejected.message_id.as_deref(),
        );
    }
}

/// Why a message was not (fully) delivered.
#[derive(Debug, PartialEq, Eq)]
pub struct Rejected {
    pub code: ErrorCode,
    pub message: String,
    /// The message's own `id`, if it had a string one.
    pub message_id: Option<String>,
    /// Clients it reached all the same (an `unknown_target` message's
    /// admin copies).
    pub delivered: u32,
}

/// Validates a message, stamps its `from` with the sender's id and type,
/// and routes it: how many clients it reached. An `unknown_target` message
/// still reached the admins (as docs/PROTOCOL.md says).
pub fn deliver(
    env: &mut impl Env,
    sender_id: &str,
    sender_kind: &str,
    text: &str,
) -> Result<u32, Rejected> {
    // The scanner reads the usual message in a fraction of serde's time;
    // whatever it does not fully understand, serde reads (and explains).
    let fields =
        match scan::fields(text).map_or_else(|| serde_json::from_str::<Fields<'_>>(text), Ok) {
            Ok(fields) => fields,
            Err(_) => {
                // Tell apart "not JSON" from "JSON, but not an object".
                let (code, message) = match serde_json::from_str::<de::IgnoredAny>(text) {
                    Ok(_) => (
                        ErrorCode::InvalidMessage,
                        "message must be a JSON object".to_string(),
                    ),
                    Err(e) => (ErrorCode::InvalidJson, format!("invalid JSON: {e}")),
                };
                return Err(Rejected {
                    code,
                    message,
                    message_id: None,
                    delivered: 0,
                });
            }
        };
    // Only an error reply needs the message's id.
    let rejected = |code, message: String| Rejected {
        code,
        message,
        message_id: fields.message_id(),
        delivered: 0,
    };
    let route = fields
        .route()
        .map_err(|why| rejected(ErrorCode::InvalidMessage, why.into()))?;
    let Some(out) = fields.stamped(text, sender_id, sender_kind) else {
        // Cannot happen: the fields were parsed from `text`. Refused rather
        // than sent on with an unstamped `from`.
        return Err(rejected(
            ErrorCode::InvalidMessage,
            "message could not be stamped".into(),
        ));
    };
    // The sender never receives its own message. A target of one type
    // cannot include a sender of another, so it needs no exception (one
    // lookup less for the host, per target, per message).
    let except = Some(sender_id);
    let except_of_kind = |kind: &str| except.filter(|_| kind == sender_kind);
    let reached = match route {
        Route::ToId(id) => {
            let reached = env.send(
                &out,
                &[
                    Target {
                        select: Select::Client(&id),
                        except: None,
                    },
                    Target {
                        select: Select::Kind(ADMIN),
                        except: except_of_kind(ADMIN),
                    },
                ],
            );
            if reached.first == 0 {
                return Err(Rejected {
                    delivered: reached.all,
                    ..rejected(
                        ErrorCode::UnknownTarget,
                        format!("no client with id {id:?} in this project"),
                    )
                });
            }
            reached
        }
        Route::ToType(kind) => env.send(
            &out,
            &[
                Target {
                    select: Select::Kind(&kind),
                    except: except_of_kind(&kind),
                },
                Target {
                    select: Select::Kind(ADMIN),
                    except: except_of_kind(ADMIN),
                },
            ],
        ),
        Route::Broadcast => env.send(
            &out,
            &[Target {
                select: Select::All,
                except,
            }],
        ),
    };
    Ok(reached.all)
}

/// The sender of messages that come over HTTP (`POST /messages`): its
/// `from` is `{"id": "server", "type": "server"}`.
pub const SERVER: &str = "server";

/// An HTTP answer: status, JSON body, and for a `405` the methods the
/// path answers (its `Allow` header).
#[derive(Debug, PartialEq, Eq)]
pub struct HttpAnswer {
    pub status: u16,
    pub body: String,
    pub allow: Option<&'static str>,
}

impl HttpAnswer {
    fn json(status: u16, body: impl Serialize) -> HttpAnswer {
        HttpAnswer {
            status,
            // These bodies always serialize (string keys only).
            body: serde_json::to_string(&body).unwrap_or_default(),
            allow: None,
        }
    }

    fn not_allowed(allow: &'static str) -> HttpAnswer {
        HttpAnswer {
            allow: Some(allow),
            ..HttpAnswer::error(
                405,
                "method_not_allowed",
                &format!("this path answers {allow}"),
            )
        }
    }

    fn error(status: u16, code: &str, message: &str) -> HttpAnswer {
        HttpAnswer::json(
            status,
            HttpError {
                error: code,
                message,
            },
        )
    }
}

#[derive(Serialize)]
struct HttpError<'a> {
    error: &'a str,
    message: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Delivered<'a> {
    delivered: u32,
    project_id: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RoomState<'a> {
    project_id: &'a str,
    client_count: u32,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct HttpRejected<'a> {
    error: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    message_id: Option<&'a str>,
    delivered: u32,
}

/// `fetch`: `POST /messages` routes its body as a message from the server
/// (202 with how many clients it reached); `GET /` (and `HEAD /`) says how
/// many clients the room has.
pub fn on_http(env: &mut impl Env, method: &str, path: &str, body: &[u8]) -> HttpAnswer {
    let path = path.split('?').next().unwrap_or_default();
    match (method, path) {
        ("POST", "/messages") => {
            let Ok(text) = std::str::from_utf8(body) else {
                return HttpAnswer::json(
                    400,
                    HttpRejected {
                        error: ErrorCode::InvalidJson.as_str(),
                        message: "invalid JSON: the body is not UTF-8",
                        message_id: None,
                        delivered: 0,
                    },
                );
            };
            let project_id = env.project_id();
            match deliver(env, SERVER, SERVER, text) {
                Ok(delivered) => HttpAnswer::json(
                    202,
                    Delivered {
                        delivered,
                        project_id: &project_id,
                    },
                ),
                Err(rejected) => HttpAnswer::json(
                    match rejected.code {
                        ErrorCode::UnknownTarget => 404,
                        _ => 400,
                    },
                    HttpRejected {
                        error: rejected.code.as_str(),
                        message: &rejected.message,
                        message_id: rejected.message_id.as_deref(),
                        delivered: rejected.delivered,
                    },
                ),
            }
        }
        ("GET" | "HEAD", "/") => {
            let project_id = env.project_id();
            HttpAnswer::json(
                200,
                RoomState {
                    project_id: &project_id,
                    client_count: env.client_count(),
                },
            )
        }
        (_, "/messages") => HttpAnswer::not_allowed("POST"),
        (_, "/") => HttpAnswer::not_allowed("GET, HEAD"),
        _ => HttpAnswer::error(
            404,
            "not_found",
            "the default room answers POST /messages and GET /",
        ),
    }
}

fn send_error(
    env: &mut impl Env,
    to: &str,
    code: ErrorCode,
    message: &str,
    message_id: Option<&str>,
) {
    let mut text = SystemMessage::new(&env.new_id(), "error")
        .str("code", code.as_str())
        .str("message", message)
        .str("projectId", &env.project_id())
        .number("timestamp", env.now_ms());
    if let Some(id) = message_id {
        text = text.str("messageId", id);
    }
    let text = text.finish();
    env.send(
        &text,
        &[Target {
            select: Select::Client(to),
            except: None,
        }],
    );
}

/// Where a valid message goes.
#[derive(Debug, PartialEq, Eq)]
enum Route<'a> {
    ToId(Cow<'a, str>),
    ToType(Cow<'a, str>),
    Broadcast,
}

/// What the room reads of a message, in its one pass over the text: where
/// `to` says it goes, every `from` value (to be replaced), the `id` (for an
/// error reply). Every other value is validated and skipped, never rebuilt.
/// Of duplicate keys the last `to` and `id` count, as JSON.parse on the
/// receiving end would see them.
#[derive(Debug, PartialEq, Eq)]
struct Fields<'a> {
    to: Option<To<'a>>,
    /// Each value's text, exactly as it lies in the message.
    from: Vec<&'a str>,
    /// The value's text, exactly as it lies in the message.
    id: Option<&'a str>,
    /// How many fields the object has.
    count: usize,
}

/// The value of `to`.
#[derive(Debug, PartialEq, Eq)]
enum To<'a> {
    Null,
    /// An object; its `id` and `type` are `Some` when present, even as null.
    Object {
        id: Option<Field<'a>>,
        kind: Option<Field<'a>>,
    },
    /// Anything else, or an object with `id` or `type` twice.
    Invalid,
}

impl<'a> Fields<'a> {
    /// The message's `id`, if it is a string.
    fn message_id(&self) -> Option<String> {
        self.id
            .and_then(|raw| serde_json::from_str::<String>(raw).ok())
    }

    fn route(&self) -> Result<Route<'a>, &'static str> {
        let (id, kind) = match &self.to {
            None | Some(To::Null) => return Ok(Route::Broadcast),
            Some(To::Invalid) => return Err("`to` must be an object or null"),
            Some(To::Object { id, kind }) => (id, kind),
        };
        let string = |v: &Option<Field<'a>>, what| match v {
            None => Ok(Cow::Borrowed("")),
            Some(Field::Str(s)) => Ok(s.clone()),
            Some(Field::Other) => Err(what),
        };
        let id = string(id, "`to.id` must be a string")?;
        let kind = string(kind, "`to.type` must be a string")?;
        Ok(if !id.is_empty() {
            Route::ToId(id)
        } else if !kind.is_empty() {
            Route::ToType(kind)
        } else {
            Route::Broadcast
        })
    }

    /// The message with `from.id` and `from.type` set to the sender's:
    /// `text` copied as it is except for the value of every `from` (or with
    /// `from` added before the closing brace), so every other byte, spacing
    /// and key escapes included, is unchanged. `self` must have been parsed
    /// from `text`; `None` if a value does not lie inside it.
    fn stamped(&self, text: &str, id: &str, kind: &str) -> Option<String> {
        let stamp = |out: &mut String, from: Option<&str>| match from {
            // A `from` object with fields of its own keeps them.
            Some(raw) if raw.starts_with('{') && raw != "{}" => {
                push_from_keeping_fields(out, raw, id, kind)
            }
            _ => push_from(out, id, kind),
        };
        let mut out = String::with_capacity(text.len() + id.len() + kind.len() + 32);
        let mut copied = 0;
        for &value in &self.from {
            let start = (value.as_ptr() as usize).checked_sub(text.as_ptr() as usize)?;
            let end = start.checked_add(value.len())?;
            if text.get(start..end)? != value {
                return None;
            }
            out.push_str(text.get(copied..start)?);
            stamp(&mut out, Some(value));
            copied = end;
        }
        if !self.from.is_empty() {
            out.push_str(text.get(copied..)?);
        } else {
            // A JSON object ends with its brace, and maybe JSON's
            // whitespace (a search back for the brace cost more).
            let close = text
                .trim_end_matches([' ', '\n', '\t', '\r'])
                .len()
                .checked_sub(1)
                .filter(|&at| text.as_bytes()[at] == b'}')?;
            out.push_str(&text[..close]);
            if self.count > 0 {
                out.push(',');
            }
            out.push_str("\"from\":");
            stamp(&mut out, None);
            out.push_str(&text[close..]);
        }
        Some(out)
    }
}

/// Appends the object `raw` (a `from` the sender wrote) with its `id` and
/// `type` set, its other fields kept; as [`push_from`] if it has no others.
/// Apart, and cold: serde's code would otherwise weigh on every message's
/// stamping (the room compiled to wasm spills what it cannot keep in
/// registers).
#[cold]
#[inline(never)]
fn push_from_keeping_fields(out: &mut String, raw: &str, id: &str, kind: &str) {
    let extra = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(raw)
        .ok()
        .filter(|obj| obj.keys().any(|k| k != "id" && k != "type"));
    match extra {
        Some(mut obj) => {
            obj.insert("type".into(), kind.into());
            obj.insert("id".into(), id.into());
            out.push_str(&serde_json::Value::Object(obj).to_string());
        }
        None => push_from(out, id, kind),
    }
}

/// Appends `{"id":ID,"type":KIND}`. Ids and types rarely need escaping:
/// then it is five plain copies (the room does this for every message).
fn push_from(out: &mut String, id: &str, kind: &str) {
    if is_plain(id) && is_plain(kind) {
        out.reserve(id.len() + kind.len() + 19);
        out.push_str("{\"id\":\"");
        out.push_str(id);
        out.push_str("\",\"type\":\"");
        out.push_str(kind);
        out.push_str("\"}");
    } else {
        out.push_str("{\"id\":");
        push_json_string(out, id);
        out.push_str(",\"type\":");
        push_json_string(out, kind);
        out.push('}');
    }
}

/// Whether `s` goes into a JSON string as it is (no byte to escape): the
/// fast pass's string scan, sixteen bytes at a time in the room.
fn is_plain(s: &str) -> bool {
    scan::first_stop(s.as_bytes()).is_none()
}

/// Appends `s` as a JSON string.
fn push_json_string(out: &mut String, s: &str) {
    if is_plain(s) {
        out.push('"');
        out.push_str(s);
        out.push('"');
    } else {
        // Serializing a &str to JSON cannot fail.
        out.push_str(&serde_json::to_string(s).unwrap_or_default());
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Fields<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Fields<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Fields<'a>, M::Error> {
                let mut fields = Fields {
                    to: None,
                    from: Vec::new(),
                    id: None,
                    count: 0,
                };
                while let Some(key) = map.next_key::<Key>()? {
                    fields.count += 1;
                    match key {
                        Key::To => fields.to = Some(map.next_value()?),
                        Key::From => fields.from.push(map.next_value::<&RawValue>()?.get()),
                        Key::Id => fields.id = Some(map.next_value::<&RawValue>()?.get()),
                        Key::Other => {
                            map.next_value::<de::IgnoredAny>()?;
                        }
                    }
                }
                Ok(fields)
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// A top-level key, as far as the room cares. Escaped keys count by their
/// value (`"t\u006f"` is `to`).
enum Key {
    To,
    From,
    Id,
    Other,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
                Ok(match v {
                    "to" => Key::To,
                    "from" => Key::From,
                    "id" => Key::Id,
                    _ => Key::Other,
                })
            }
        }
        d.deserialize_str(V)
    }
}

/// Visitor methods that take a boolean, a number or an array (skipping its
/// elements) as `$value`: the values `to` and its fields only note.
macro_rules! skip_scalars_and_arrays {
    ($value:expr) => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element::<de::IgnoredAny>()?.is_some() {}
            Ok($value)
        }
    };
}

impl<'de: 'a, 'a> Deserialize<'de> for To<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = To<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_unit<E: de::Error>(self) -> Result<To<'a>, E> {
                Ok(To::Null)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<To<'a>, A::Error> {
                let (mut id, mut kind, mut twice) = (None, None, false);
                while let Some(key) = map.next_key::<Field<'a>>()? {
                    let slot = match &key {
                        Field::Str(k) if k == "id" => &mut id,
                        Field::Str(k) if k == "type" => &mut kind,
                        _ => {
                            map.next_value::<de::IgnoredAny>()?;
                            continue;
                        }
                    };
                    twice |= slot.is_some();
                    *slot = Some(map.next_value::<Field<'a>>()?);
                }
                Ok(if twice {
                    To::Invalid
                } else {
                    To::Object { id, kind }
                })
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<To<'a>, E> {
                Ok(To::Invalid)
            }
            skip_scalars_and_arrays!(To::Invalid);
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// A key or a value in `to`: a string (borrowed from the input
/// unless it has escapes), or anything else, skipped.
#[derive(Debug, PartialEq, Eq)]
enum Field<'a> {
    Str(Cow<'a, str>),
    Other,
}

impl<'de: 'a, 'a> Deserialize<'de> for Field<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Field<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Field<'a>, E> {
                Ok(Field::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Field<'a>, E> {
                Ok(Field::Str(Cow::Owned(v.to_owned())))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Field<'a>, E> {
                Ok(Field::Other)
            }
            skip_scalars_and_arrays!(Field::Other);
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Field<'a>, A::Error> {
                while map
                    .next_entry::<de::IgnoredAny, de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(Field::Other)
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

mod scan;
mod system;
#[cfg(test)]
mod tests;
