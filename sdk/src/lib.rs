//! Write a [wsroom](../README.md) room in Rust.
//!
//! Implement [`Room`] for a type with a [`Default`], export it with
//! [`export_room!`], and build the crate as a `cdylib` for `wasm32-wasip2`:
//!
//! ```no_run
//! use wsroom_room_sdk::{Ctx, Incoming, Room, Sender, export_room};
//!
//! #[derive(Default)]
//! struct Echo;
//!
//! impl Room for Echo {
//!     fn on_message(&mut self, ctx: &mut Ctx, from: &Sender, message: Incoming) {
//!         if let Incoming::Text(text) = message {
//!             ctx.send_to_client(&from.id, &text);
//!         }
//!     }
//! }
//!
//! export_room!(Echo);
//! ```
//!
//! The host keeps the connection table, each client's attachment, the
//! room's store and its alarm. The value of your type lives in the room's
//! instance, which the host drops when the room hibernates or its code is
//! reloaded; the next event starts from `Default` again. Keep what must
//! survive in [`Ctx::storage_set`] (durable: it outlives restarts) or
//! [`Ctx::set_attachment`] (for as long as the client is connected).

#![warn(missing_docs)]

pub mod alloc;

/// The generated bindings of the `wsroom:room/batched-room` world (the
/// `room` world's exports and `on-texts`).
#[doc(hidden)]
#[allow(clippy::too_many_arguments)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "batched-room",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "__export_room_world",
        default_bindings_module: "wsroom_room_sdk::bindings",
        // Import parameters are borrowed: a `send` builds its targets from
        // `&str`s, without allocating in the room per message.
        ownership: Borrowing {
            duplicate_if_necessary: true
        },
    });
}

use bindings::wsroom::room::host;
pub use bindings::wsroom::room::types::{
    AlarmInfo, AttachmentError, ClientInfo, HttpRequest, HttpResponse, Incoming, LogLevel,
    Oversize, Reached, Refusal, Selector, Sender, StorageError, Target,
};

/// A text message and its sender, as the host hands them to the room: in
/// one string, read in place ([`TextMessage::text`] and the sender's
/// [`id`](TextMessage::sender_id) and [`kind`](TextMessage::sender_kind)),
/// or taken apart ([`TextMessage::into_parts`]).
pub struct TextMessage {
    data: String,
    kind_at: usize,
    text_at: usize,
}

impl TextMessage {
    #[doc(hidden)]
    pub fn __new(message: bindings::wsroom::room::types::TextFrom) -> TextMessage {
        let (kind_at, text_at) = (message.kind_at as usize, message.text_at as usize);
        let data = message.data;
        // The host lays the parts out on character boundaries; were it not
        // to, the whole string is the text, from nobody.
        let laid_out =
            kind_at <= text_at && data.is_char_boundary(kind_at) && data.is_char_boundary(text_at);
        let (kind_at, text_at) = if laid_out { (kind_at, text_at) } else { (0, 0) };
        TextMessage {
            data,
            kind_at,
            text_at,
        }
    }

    /// Each message of an `on-texts` batch (see `wit/room.wit`), in order,
    /// as a [`TextMessage`] of its own. An offset the host got wrong (out
    /// of order, past the end, inside a character) ends the batch there.
    #[doc(hidden)]
    pub fn __each_of_batch(
        data: &str,
        kind_at: u32,
        text_at: u32,
        ends: &[u32],
        mut each: impl FnMut(TextMessage),
    ) {
        let (kind_at, text_at) = (kind_at as usize, text_at as usize);
        let at_boundary = |i: usize| data.is_char_boundary(i);
        if !(kind_at <= text_at && at_boundary(kind_at) && at_boundary(text_at)) {
            return;
        }
        let sender = &data[..text_at];
        let mut start = text_at;
        for &end in ends {
            let end = end as usize;
            if end < start || !at_boundary(end) {
                return;
            }
            let mut one = String::with_capacity(sender.len() + end - start);
            one.push_str(sender);
            one.push_str(&data[start..end]);
            each(TextMessage {
                data: one,
                kind_at,
                text_at,
            });
            start = end;
        }
    }

    /// The sender's id.
    pub fn sender_id(&self) -> &str {
        &self.data[..self.kind_at]
    }

    /// The sender's type.
    pub fn sender_kind(&self) -> &str {
        &self.data[self.kind_at..self.text_at]
    }

    /// The message.
    pub fn text(&self) -> &str {
        &self.data[self.text_at..]
    }

    /// The sender and the message, owned.
    pub fn into_parts(mut self) -> (Sender, String) {
        let from = Sender {
            id: self.sender_id().to_owned(),
            kind: self.sender_kind().to_owned(),
        };
        self.data.replace_range(..self.text_at, "");
        (from, self.data)
    }
}

/// A room's handlers. Only `on_message` is required.
pub trait Room: Default + 'static {
    /// A client asks to join. Return a [`Refusal`] (see [`refuse`]) to turn
    /// it away with an HTTP status before the WebSocket opens.
    fn on_connect(&mut self, ctx: &mut Ctx, client: &ClientInfo) -> Result<(), Refusal> {
        let _ = (ctx, client);
        Ok(())
    }

    /// A message from a client. A message over the host's size limit
    /// arrives as [`Incoming::TooLarge`], without its contents.
    fn on_message(&mut self, ctx: &mut Ctx, from: &Sender, message: Incoming);

    /// A text message from a client. By default it goes to
    /// [`Room::on_message`] as an [`Incoming::Text`]; a room that reads it
    /// in place here spares the copies of the text and the sender's id and
    /// type that takes. Messages a client sent together, which the host
    /// hands over in one call (`on-texts`), come here one at a time, in
    /// order.
    fn on_text(&mut self, ctx: &mut Ctx, message: TextMessage) {
        let (from, text) = message.into_parts();
        self.on_message(ctx, &from, Incoming::Text(text));
    }

    /// A client left (it is no longer in the table).
    fn on_close(&mut self, ctx: &mut Ctx, client: &ClientInfo, code: u16, reason: &str) {
        let _ = (ctx, client, code, reason);
    }

    /// The alarm set with [`Ctx::set_alarm`] fired.
    fn on_alarm(&mut self, ctx: &mut Ctx, info: AlarmInfo) {
        let _ = (ctx, info);
    }

    /// An HTTP request to `/rooms/{projectId}/...` (its `path` is the part
    /// after the project id). By default: 404, as for a room with no HTTP.
    fn fetch(&mut self, ctx: &mut Ctx, request: HttpRequest) -> HttpResponse {
        let _ = (ctx, request);
        json_response(
            404,
            r#"{"error":"not_found","message":"this room answers no HTTP requests"}"#,
        )
    }
}

/// An HTTP response with a JSON body (`content-type: application/json`).
pub fn json_response(status: u16, json: &str) -> HttpResponse {
    HttpResponse {
        status,
        headers: vec![("content-type".to_owned(), "application/json".to_owned())],
        body: json.as_bytes().to_vec(),
    }
}

/// A refusal for [`Room::on_connect`].
pub fn refuse(status: u16, error: &str, message: &str) -> Refusal {
    Refusal {
        status,
        error: error.to_owned(),
        message: message.to_owned(),
    }
}

/// What a handler can do: send, look up clients, keep data, set the alarm.
/// Every call acts on this room's own project only.
pub struct Ctx {
    _private: (),
}

impl Ctx {
    #[doc(hidden)]
    pub fn __new() -> Ctx {
        Ctx { _private: () }
    }

    /// Sends `text` to one client; whether it is connected.
    pub fn send_to_client(&mut self, id: &str, text: &str) -> bool {
        self.send(
            text,
            &[Target {
                select: Selector::Client(id),
                except: &[],
            }],
        )
        .first
            > 0
    }

    /// Sends `text` to every client of a type; how many got it.
    pub fn send_to_type(&mut self, kind: &str, text: &str) -> u32 {
        self.send(
            text,
            &[Target {
                select: Selector::Kind(kind),
                except: &[],
            }],
        )
        .first
    }

    /// Sends `text` to every client; how many got it.
    pub fn broadcast(&mut self, text: &str) -> u32 {
        self.send(
            text,
            &[Target {
                select: Selector::All,
                except: &[],
            }],
        )
        .first
    }

    /// Sends `text` to every client but one; how many got it.
    pub fn broadcast_except(&mut self, except: &str, text: &str) -> u32 {
        self.send(
            text,
            &[Target {
                select: Selector::All,
                except: &[except],
            }],
        )
        .first
    }

    /// The general form: `text` goes once to each client in the union of
    /// `targets` (the host frames it once and de-duplicates). Returns how
    /// many clients the first target added, and how many the send reached
    /// in all (the other targets' own counts are not told).
    pub fn send(&mut self, text: &str, targets: &[Target<'_>]) -> Reached {
        host::send(text, targets)
    }

    /// Closes a client's WebSocket with `code` and `reason`; whether it was
    /// connected.
    pub fn close(&mut self, id: &str, code: u16, reason: &str) -> bool {
        host::close(id, code, reason)
    }

    /// One client, if connected.
    pub fn client(&self, id: &str) -> Option<ClientInfo> {
        host::client(id)
    }

    /// Connected clients, of one type or all, in connection order.
    pub fn clients(&self, kind: Option<&str>) -> Vec<ClientInfo> {
        host::clients(kind)
    }

    /// How many clients are connected, of one type or all.
    pub fn client_count(&self, kind: Option<&str>) -> u32 {
        host::client_count(kind)
    }

    /// Keeps up to 16 KiB with a client while it is connected; `None` clears.
    pub fn set_attachment(&mut self, id: &str, data: Option<&[u8]>) -> Result<(), AttachmentError> {
        host::set_attachment(id, data)
    }

    /// What `set_attachment` stored with a client, if anything.
    pub fn attachment(&self, id: &str) -> Option<Vec<u8>> {
        host::attachment(id)
    }

    /// The value stored under `key` in the room's store, if any. The store
    /// is kept by the host across hibernation, reloads and restarts, until
    /// the room deletes it; what an event sends waits until what it wrote
    /// is durable (the output gate, `wit/room.wit`).
    pub fn storage_get(&self, key: &str) -> Option<Vec<u8>> {
        host::storage_get(key)
    }

    /// Stores `value` under `key` (keys: 1 byte to 1 KiB); `Full` when the
    /// store would pass the host's `--room-storage-bytes`, `Unavailable`
    /// for about a second after the host's disk failed.
    pub fn storage_set(&mut self, key: &str, value: &[u8]) -> Result<(), StorageError> {
        host::storage_set(key, value)
    }

    /// Removes a key; whether it was there.
    pub fn storage_delete(&mut self, key: &str) -> bool {
        host::storage_delete(key)
    }

    /// Up to `limit` keys starting with `prefix`, in byte order.
    pub fn storage_keys(&self, prefix: &str, limit: u32) -> Vec<String> {
        host::storage_keys(prefix, limit)
    }

    /// Deletes every key of the room's store and cancels its alarm: all
    /// the data the host keeps for the room.
    pub fn storage_delete_all(&mut self) {
        host::storage_delete_all();
    }

    /// Sets the alarm `delay_ms` from now, replacing any other.
    pub fn set_alarm(&mut self, delay_ms: u64) {
        host::set_alarm(delay_ms);
    }

    /// Cancels the alarm, if one is set.
    pub fn cancel_alarm(&mut self) {
        host::cancel_alarm();
    }

    /// When the alarm fires (ms since the Unix epoch), if set.
    pub fn alarm_at(&self) -> Option<u64> {
        host::alarm_at()
    }

    /// The project this room serves. Asked of the host once: an instance
    /// serves one project all its life.
    pub fn project_id(&self) -> String {
        static PROJECT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        PROJECT.get_or_init(host::project_id).clone()
    }

    /// A value of the host's `--room-config`.
    pub fn config(&self, key: &str) -> Option<String> {
        host::config(key)
    }

    /// Wall clock, ms since the Unix epoch.
    pub fn now_ms(&self) -> u64 {
        host::now_ms()
    }

    /// A fresh random UUID.
    pub fn new_id(&self) -> String {
        host::new_id()
    }

    /// A line in the host's log, tagged with the project.
    pub fn log(&self, level: LogLevel, message: &str) {
        host::log(level, message);
    }
}

/// Exports a [`Room`] type as the component's room.
#[macro_export]
macro_rules! export_room {
    ($room:ty) => {
        const _: () = {
            // Boxed, so that the static is zeros whatever the room's type
            // (`None` of a type with a niche, a `bool` field say, is not):
            // it then lies in memory no instance has to copy from the
            // component's data, where a write would cost every live
            // instance a private page.
            ::std::thread_local! {
                static ROOM: ::core::cell::RefCell<
                    ::core::option::Option<::std::boxed::Box<$room>>,
                > = const { ::core::cell::RefCell::new(::core::option::Option::None) };
            }

            fn with<T>(f: impl FnOnce(&mut $room, &mut $crate::Ctx) -> T) -> T {
                ROOM.with(|cell| {
                    let mut slot = cell.borrow_mut();
                    let room = slot.get_or_insert_with(::std::boxed::Box::default);
                    f(&mut **room, &mut $crate::Ctx::__new())
                })
            }

            struct Export;

            impl $crate::bindings::Guest for Export {
                fn on_connect(
                    client: $crate::ClientInfo,
                ) -> ::core::result::Result<(), $crate::Refusal> {
                    with(|room, ctx| $crate::Room::on_connect(room, ctx, &client))
                }

                fn on_text(message: $crate::bindings::wsroom::room::types::TextFrom) {
                    let message = $crate::TextMessage::__new(message);
                    with(|room, ctx| $crate::Room::on_text(room, ctx, message))
                }

                fn on_texts(
                    data: ::std::string::String,
                    kind_at: u32,
                    text_at: u32,
                    ends: ::std::vec::Vec<u32>,
                ) {
                    let each =
                        |message| with(|room, ctx| $crate::Room::on_text(room, ctx, message));
                    $crate::TextMessage::__each_of_batch(&data, kind_at, text_at, &ends, each)
                }

                fn on_message(from: $crate::Sender, message: $crate::Incoming) {
                    with(|room, ctx| $crate::Room::on_message(room, ctx, &from, message))
                }

                fn on_close(client: $crate::ClientInfo, code: u16, reason: ::std::string::String) {
                    with(|room, ctx| $crate::Room::on_close(room, ctx, &client, code, &reason))
                }

                fn alarm(info: $crate::AlarmInfo) {
                    with(|room, ctx| $crate::Room::on_alarm(room, ctx, info))
                }

                fn fetch(request: $crate::HttpRequest) -> $crate::HttpResponse {
                    with(|room, ctx| $crate::Room::fetch(room, ctx, request))
                }
            }

    $crate::bindings::__export_room_world!(Export with_types_in $crate::bindings);
        };
    };
}

#[cfg(test)]
mod tests {
    use super::TextMessage;
    use crate::bindings::wsroom::room::types::TextFrom;

    fn message(data: &str, kind_at: u32, text_at: u32) -> TextMessage {
        TextMessage::__new(TextFrom {
            data: data.into(),
            kind_at,
            text_at,
        })
    }

    #[test]
    fn a_text_message_reads_in_place_and_comes_apart_into_its_parts() {
        let m = message("c1runtime{\"é\":1}", 2, 9);
        assert_eq!(
            (m.sender_id(), m.sender_kind(), m.text()),
            ("c1", "runtime", "{\"é\":1}")
        );
        let (from, text) = m.into_parts();
        assert_eq!((from.id.as_str(), from.kind.as_str()), ("c1", "runtime"));
        assert_eq!(text, "{\"é\":1}");
    }

    fn batch(
        data: &str,
        kind_at: u32,
        text_at: u32,
        ends: &[u32],
    ) -> Vec<(String, String, String)> {
        let mut seen = Vec::new();
        TextMessage::__each_of_batch(data, kind_at, text_at, ends, |m| {
            let parts = (m.sender_id(), m.sender_kind(), m.text());
            seen.push((parts.0.to_owned(), parts.1.to_owned(), parts.2.to_owned()));
        });
        seen
    }

    #[test]
    fn a_batch_is_each_of_its_messages_in_order_from_its_one_sender() {
        let data = "c1runtime{\"a\":1}é{}";
        let one = |text: &str| ("c1".to_owned(), "runtime".to_owned(), text.to_owned());
        assert_eq!(
            batch(data, 2, 9, &[16, 18, 20, 20]),
            vec![one("{\"a\":1}"), one("é"), one("{}"), one("")]
        );
        // No messages: nothing.
        assert!(batch(data, 2, 9, &[]).is_empty());
    }

    #[test]
    fn a_batch_ends_at_an_offset_out_of_order_past_the_end_or_inside_a_character() {
        let data = "c1runtime{\"a\":1}é{}";
        let first = (
            "c1".to_owned(),
            "runtime".to_owned(),
            "{\"a\":1}".to_owned(),
        );
        for ends in [&[16, 15, 20][..], &[16, 99], &[16, 17, 20]] {
            assert_eq!(batch(data, 2, 9, ends), vec![first.clone()], "{ends:?}");
        }
        // A sender laid out wrong: no message at all.
        for (kind_at, text_at) in [(9, 2), (2, 99)] {
            assert!(batch(data, kind_at, text_at, &[16, 20]).is_empty());
        }
    }

    #[test]
    fn offsets_past_the_end_or_inside_a_character_make_it_all_text_from_nobody() {
        for (kind_at, text_at) in [(1, 99), (3, 1), (2, 3)] {
            let m = message("aébc", kind_at, text_at);
            assert_eq!((m.sender_id(), m.sender_kind(), m.text()), ("", "", "aébc"));
        }
    }
}
