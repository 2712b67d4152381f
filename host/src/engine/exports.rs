//! A room's exports, whichever version of the contract it was built against.
//!
//! Three sets of exports are in use: the current world's (`wit/room.wit`,
//! 0.4.0: text messages go to `on-text`), 0.3.0's (`wit/0.3.0/`: every
//! message to `on-message`), and the one before (`wit/0.2.0/`, whose
//! exports 0.1.0 shares: no `fetch`, and two fields fewer in
//! `client-info`). A component is checked against each in that order;
//! [`Room`] calls any of them with the current types (0.3.0's are the
//! same), converting for the earliest (a room built before `fetch` has
//! none: [`Room::call_fetch`] says so). A current room may also export
//! `on-texts` (the `batched-room` world: a client's text messages several
//! at a time), found apart from the world's exports.

use wasmtime::Store;
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{ComponentExportIndex, Func, InstancePre, Type, TypedFunc};

use super::RoomState;

pub(super) mod current {
    wasmtime::component::bindgen!({
        world: "room",
        path: "../wit",
        exports: { default: async },
    });
}

/// 0.3.0's exports, with the current world's types (the same records).
mod v0_3 {
    wasmtime::component::bindgen!({
        world: "room",
        path: "../wit/0.3.0",
        exports: { default: async },
        with: { "wsroom:room/types@0.3.0": super::current::wsroom::room::types },
    });
}

mod earlier {
    wasmtime::component::bindgen!({
        world: "room",
        path: "../wit/0.2.0",
        exports: { default: async },
    });
}

use current::wsroom::room::types as wit;
use earlier::wsroom::room::types as earlier_wit;

/// The `client-info` of the contracts before 0.3.0, for their imports.
pub(crate) use earlier_wit::ClientInfo as EarlierClientInfo;

/// A compiled room component, checked against the world it was built for,
/// ready to instantiate.
pub(crate) enum RoomPre {
    Current {
        pre: InstancePre<RoomState>,
        indices: current::RoomIndices,
        /// Its `on-texts`, if it has one of the right type.
        on_texts: Option<ComponentExportIndex>,
    },
    V0_3(v0_3::RoomPre<RoomState>),
    /// Built against 0.1.0 or 0.2.0: its exports found once, for every
    /// instance.
    Earlier {
        pre: InstancePre<RoomState>,
        indices: earlier::RoomIndices,
        on_message: ComponentExportIndex,
    },
}

/// A room instance's exports.
pub(crate) enum Room {
    Current {
        room: current::Room,
        /// Its `on-texts`, checked against [`OnTextsParams`] when the
        /// component was loaded.
        on_texts: Option<Func>,
    },
    V0_3(v0_3::Room),
    Earlier {
        room: earlier::Room,
        /// Its `on-message`, typed with the current world's `sender` and
        /// `incoming` (the same records since 0.1.0), so a message reaches
        /// an earlier room without being copied into the earlier bindings'
        /// types first.
        on_message: Func,
    },
}

impl RoomPre {
    /// The component's exports as the current world's, or else as an
    /// earlier one's; the error of the current world's check if none.
    pub(super) fn new(pre: InstancePre<RoomState>) -> wasmtime::Result<RoomPre> {
        match current::RoomIndices::new(&pre) {
            Ok(indices) => {
                let on_texts = on_texts_export(&pre)?;
                Ok(RoomPre::Current {
                    pre,
                    indices,
                    on_texts,
                })
            }
            Err(current) => {
                if let Ok(pre) = v0_3::RoomPre::new(pre.clone()) {
                    return Ok(RoomPre::V0_3(pre));
                }
                let earlier = earlier::RoomIndices::new(&pre).and_then(|indices| {
                    let on_message = pre
                        .component()
                        .get_export_index(None, "on-message")
                        .ok_or_else(|| wasmtime::Error::msg("no `on-message` export"))?;
                    Ok((indices, on_message))
                });
                match earlier {
                    Ok((indices, on_message)) => Ok(RoomPre::Earlier {
                        pre,
                        indices,
                        on_message,
                    }),
                    Err(earlier) => Err(current.context(format!(
                        "nor the exports of wsroom:room@0.3.0, 0.2.0 and before: {earlier:#}"
                    ))),
                }
            }
        }
    }

    /// Whether its instances take a client's text messages several at a
    /// time (`on-texts`).
    pub(super) fn takes_batches(&self) -> bool {
        matches!(
            self,
            RoomPre::Current {
                on_texts: Some(_),
                ..
            }
        )
    }

    pub(super) fn instance_pre(&self) -> &InstancePre<RoomState> {
        match self {
            RoomPre::Current { pre, .. } => pre,
            RoomPre::V0_3(pre) => pre.instance_pre(),
            RoomPre::Earlier { pre, .. } => pre,
        }
    }

    pub(super) async fn instantiate_async(
        &self,
        store: &mut Store<RoomState>,
    ) -> wasmtime::Result<Room> {
        Ok(match self {
            RoomPre::Current {
                pre,
                indices,
                on_texts,
            } => {
                let instance = pre.instantiate_async(&mut *store).await?;
                let room = indices.load(&mut *store, &instance)?;
                let on_texts = on_texts.and_then(|index| instance.get_func(&mut *store, index));
                Room::Current { room, on_texts }
            }
            RoomPre::V0_3(pre) => Room::V0_3(pre.instantiate_async(store).await?),
            RoomPre::Earlier {
                pre,
                indices,
                on_message,
            } => {
                let instance = pre.instantiate_async(&mut *store).await?;
                let room = indices.load(&mut *store, &instance)?;
                let on_message = instance
                    .get_func(&mut *store, on_message)
                    .ok_or_else(|| wasmtime::Error::msg("no `on-message` export"))?;
                // Checked once here; `call_on_message` relies on it.
                on_message.typed::<OnMessageParams<'_>, ()>(&*store)?;
                Room::Earlier { room, on_message }
            }
        })
    }
}

/// `on-message`'s parameters, in every contract.
type OnMessageParams<'a> = (&'a wit::Sender, &'a wit::Incoming);

/// `on-texts`'s parameters: the sender and the messages in one string, the
/// offsets of the sender's type and of the first message, where each
/// message ends.
type OnTextsParams<'a> = (&'a str, u32, u32, &'a [u32]);

/// The component's `on-texts`, if it exports one; an error if it exports
/// one of another type (it claims the `batched-room` world and breaks it).
fn on_texts_export(pre: &InstancePre<RoomState>) -> wasmtime::Result<Option<ComponentExportIndex>> {
    let component = pre.component();
    let Some((item, index)) = component.get_export(None, "on-texts") else {
        return Ok(None);
    };
    let fits = match item {
        ComponentItem::ComponentFunc(func) => {
            let params: Vec<Type> = func.params().map(|(_, ty)| ty).collect();
            func.results().len() == 0
                && matches!(
                    params.as_slice(),
                    [Type::String, Type::U32, Type::U32, Type::List(ends)]
                        if matches!(ends.ty(), Type::U32)
                )
        }
        _ => false,
    };
    if !fits {
        wasmtime::bail!(
            "its `on-texts` export is not `func(data: string, kind-at: u32, text-at: u32, ends: list<u32>)`"
        );
    }
    Ok(Some(index))
}

impl From<&wit::ClientInfo> for EarlierClientInfo {
    fn from(info: &wit::ClientInfo) -> EarlierClientInfo {
        EarlierClientInfo {
            id: info.id.clone(),
            kind: info.kind.clone(),
            connected_at: info.connected_at,
            user_agent: info.user_agent.clone(),
            origin: info.origin.clone(),
        }
    }
}

impl Room {
    pub(crate) async fn call_on_connect(
        &self,
        store: &mut Store<RoomState>,
        client: &wit::ClientInfo,
    ) -> wasmtime::Result<Result<(), wit::Refusal>> {
        match self {
            Room::Current { room, .. } => room.call_on_connect(store, client).await,
            Room::V0_3(room) => room.call_on_connect(store, client).await,
            Room::Earlier { room, .. } => Ok(room
                .call_on_connect(store, &client.into())
                .await?
                .map_err(|r| wit::Refusal {
                    status: r.status,
                    error: r.error,
                    message: r.message,
                })),
        }
    }

    /// Hands a client's message to the room. `scratch` is where a text
    /// message is laid out for a current room's `on-text` (kept by the
    /// caller from one message to the next, so that nothing is allocated
    /// for it once its string has grown).
    pub(crate) async fn call_on_message(
        &self,
        store: &mut Store<RoomState>,
        sender: &wit::Sender,
        message: &wit::Incoming,
        scratch: &mut wit::TextFrom,
    ) -> wasmtime::Result<()> {
        match self {
            Room::Current { room, .. } => match message {
                wit::Incoming::Text(text) => {
                    lay_out(scratch, sender, text);
                    room.call_on_text(store, scratch).await
                }
                _ => room.call_on_message(store, sender, message).await,
            },
            Room::V0_3(room) => room.call_on_message(store, sender, message).await,
            Room::Earlier { on_message, .. } => {
                // SAFETY: the function was type-checked against these
                // parameter and result types when the room was instantiated.
                let typed =
                    unsafe { TypedFunc::<OnMessageParams<'_>, ()>::new_unchecked(*on_message) };
                typed.call_async(store, (sender, message)).await
            }
        }
    }

    /// Whether the room takes a client's text messages several at a time
    /// ([`Room::call_on_texts`]).
    pub(crate) fn takes_batches(&self) -> bool {
        matches!(
            self,
            Room::Current {
                on_texts: Some(_),
                ..
            }
        )
    }

    /// Hands a client's text messages, laid out by [`Batch`], to the
    /// room's `on-texts` (one message alone to `on-text`, laid out as it
    /// takes it already); `Ok(false)` (nothing called) for a room that takes
    /// no batches.
    pub(crate) async fn call_on_texts(
        &self,
        store: &mut Store<RoomState>,
        batch: &Batch,
    ) -> wasmtime::Result<bool> {
        let Room::Current { room, on_texts } = self else {
            return Ok(false);
        };
        if batch.alone() {
            room.call_on_text(store, &batch.laid).await?;
            return Ok(true);
        }
        let Some(on_texts) = on_texts else {
            return Ok(false);
        };
        // SAFETY: the export's type was checked against these parameter and
        // result types when the component was loaded (`on_texts_export`).
        let typed = unsafe { TypedFunc::<OnTextsParams<'_>, ()>::new_unchecked(*on_texts) };
        let laid = &batch.laid;
        let params = (
            laid.data.as_str(),
            laid.kind_at,
            laid.text_at,
            batch.ends.as_slice(),
        );
        typed.call_async(store, params).await?;
        Ok(true)
    }

    /// The export a message goes to (for the log).
    pub(crate) fn message_export(&self, message: &wit::Incoming) -> &'static str {
        match (self, message) {
            (Room::Current { .. }, wit::Incoming::Text(_)) => "on-text",
            _ => "on-message",
        }
    }

    pub(crate) async fn call_on_close(
        &self,
        store: &mut Store<RoomState>,
        client: &wit::ClientInfo,
        code: u16,
        reason: &str,
    ) -> wasmtime::Result<()> {
        match self {
            Room::Current { room, .. } => room.call_on_close(store, client, code, reason).await,
            Room::V0_3(room) => room.call_on_close(store, client, code, reason).await,
            Room::Earlier { room, .. } => {
                room.call_on_close(store, &client.into(), code, reason)
                    .await
            }
        }
    }

    pub(crate) async fn call_alarm(
        &self,
        store: &mut Store<RoomState>,
        info: wit::AlarmInfo,
    ) -> wasmtime::Result<()> {
        match self {
            Room::Current { room, .. } => room.call_alarm(store, info).await,
            Room::V0_3(room) => room.call_alarm(store, info).await,
            Room::Earlier { room, .. } => {
                let info = earlier_wit::AlarmInfo {
                    retry_count: info.retry_count,
                };
                room.call_alarm(store, info).await
            }
        }
    }

    /// The room's `fetch`; `None` for a room built before it existed.
    pub(crate) async fn call_fetch(
        &self,
        store: &mut Store<RoomState>,
        request: &wit::HttpRequest,
    ) -> wasmtime::Result<Option<wit::HttpResponse>> {
        match self {
            Room::Current { room, .. } => room.call_fetch(store, request).await.map(Some),
            Room::V0_3(room) => room.call_fetch(store, request).await.map(Some),
            Room::Earlier { .. } => Ok(None),
        }
    }
}

/// Lays a text message out as `on-text` takes it: the sender's id, its
/// type and the text in one string.
fn lay_out(scratch: &mut wit::TextFrom, sender: &wit::Sender, text: &str) {
    let data = &mut scratch.data;
    data.clear();
    // Exact: the caller keeps it up to a size, which doubling would pass.
    data.reserve_exact(sender.id.len() + sender.kind.len() + text.len());
    data.push_str(&sender.id);
    data.push_str(&sender.kind);
    data.push_str(text);
    // An id and a type are a few hundred bytes at most (the host's limits).
    scratch.kind_at = sender.id.len() as u32;
    scratch.text_at = (sender.id.len() + sender.kind.len()) as u32;
}

/// A client's text messages laid out for `on-texts`: the first as `on-text`
/// takes it (its sender's id, its type and the text), the others after it,
/// and where each ends.
pub(crate) struct Batch {
    laid: wit::TextFrom,
    ends: Vec<u32>,
}

impl Default for Batch {
    fn default() -> Batch {
        Batch {
            laid: wit::TextFrom {
                data: String::new(),
                kind_at: 0,
                text_at: 0,
            },
            ends: Vec::new(),
        }
    }
}

impl Batch {
    /// Adds a message of `sender` (the same for every message of a batch:
    /// the first one's is kept).
    pub(crate) fn push(&mut self, sender: &wit::Sender, text: &str) {
        if self.ends.is_empty() {
            lay_out(&mut self.laid, sender, text);
        } else {
            self.laid.data.push_str(text);
        }
        // A batch is bounded (its messages are each under 64 KiB, and it
        // runs once past 64 KiB: `room::turn`), far below 4 GiB.
        self.ends.push(self.laid.data.len() as u32);
    }

    /// Whether it holds one message, which [`Room::call_on_texts`] hands
    /// to `on-text` (one list less for the room).
    fn alone(&self) -> bool {
        self.ends.len() == 1
    }

    /// The export [`Room::call_on_texts`] hands it to (for the log).
    pub(crate) fn export(&self) -> &'static str {
        if self.alone() { "on-text" } else { "on-texts" }
    }

    pub(crate) fn len(&self) -> usize {
        self.ends.len()
    }

    /// The messages, in order.
    pub(crate) fn texts(&self) -> impl Iterator<Item = &str> + '_ {
        let starts = std::iter::once(self.laid.text_at).chain(self.ends.iter().copied());
        starts.zip(self.ends.iter().copied()).map(|(start, end)| {
            let part = self.laid.data.get(start as usize..end as usize);
            part.unwrap_or_default()
        })
    }

    /// Bytes laid out so far.
    pub(crate) fn bytes(&self) -> usize {
        self.laid.data.len()
    }

    /// Bytes its buffers hold.
    pub(crate) fn bytes_kept(&self) -> usize {
        self.laid.data.capacity() + self.ends.capacity() * 4
    }

    /// Empties the batch, keeping its buffers.
    pub(crate) fn clear(&mut self) {
        self.ends.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_lays_out_its_sender_once_and_each_message_where_it_ends() {
        let sender = wit::Sender {
            id: "c1".into(),
            kind: "runtime".into(),
        };
        let mut batch = Batch::default();
        for text in ["{\"a\":1}", "é", ""] {
            batch.push(&sender, text);
        }
        assert_eq!(batch.laid.data, "c1runtime{\"a\":1}é");
        assert_eq!((batch.laid.kind_at, batch.laid.text_at), (2, 9));
        assert_eq!(batch.ends, [16, 18, 18]);
        assert_eq!(batch.texts().collect::<Vec<_>>(), ["{\"a\":1}", "é", ""]);
        // Emptied, it lays the next sender out afresh.
        batch.clear();
        assert_eq!(batch.len(), 0);
        let other = wit::Sender {
            id: "c22".into(),
            kind: "admin".into(),
        };
        batch.push(&other, "x");
        // (One message: laid out as `on-text` takes it.)
        assert_eq!(batch.laid.data, "c22adminx");
        assert_eq!((batch.laid.kind_at, batch.laid.text_at), (3, 8));
        assert_eq!(batch.texts().collect::<Vec<_>>(), ["x"]);
    }
}
