//! The durable store of a cluster: rooms' data and alarms in JetStream, so
//! that a project that moves to another node keeps them.
//!
//! Each room is one value in the bucket `wsroom-data` (key: its projectId
//! in base64url), written whole at each commit with compare-and-set on the
//! revision the room last read or wrote: one write makes a batch's changes
//! durable at once, and a node that lost the project cannot write over its
//! successor (its commit fails, as after a disk error, and its room, which
//! the lost lease stops before its next batch anyway, reads its data again).
//! The cost is the room's size per commit, not the changes' (rooms are
//! bounded by `--room-storage-bytes`, and by NATS' largest message).
//!
//! Pending alarms are also listed in the bucket `wsroom-alarms` (projectId
//! → when), which every node watches ([`JetStreamStore::watch_alarms`]): an
//! alarm whose owner is gone is fired by the live node that takes its
//! project.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use anyhow::Context as _;
use async_nats::jetstream::{self, kv};
use base64::Engine as _;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::StreamExt as _;
use tracing::warn;

use super::{Alarm, Changes, CommitError, RETRY_AFTER_FAILURE_MS, RoomData, Stats};
use crate::cluster::key;

const DATA_BUCKET: &str = "wsroom-data";
const ALARMS_BUCKET: &str = "wsroom-alarms";
/// The first byte of a stored room: the layout's version.
const LAYOUT: u8 = 1;

pub(crate) struct JetStreamStore {
    data: kv::Store,
    alarms: kv::Store,
    /// NATS' largest message: a room's value must fit in one.
    max_bytes: usize,
    refuse_writes_until: AtomicU64,
    stats: Stats,
}

impl JetStreamStore {
    /// Opens (or makes) the buckets on `client`'s JetStream.
    pub(crate) async fn open(client: &async_nats::Client) -> anyhow::Result<JetStreamStore> {
        let js = jetstream::new(client.clone());
        let data = crate::cluster::bucket(
            &js,
            DATA_BUCKET,
            "wsroom: each room's store and alarm",
            std::time::Duration::ZERO,
        )
        .await?;
        let alarms = crate::cluster::bucket(
            &js,
            ALARMS_BUCKET,
            "wsroom: each room's pending alarm, for the nodes to fire those of dead owners",
            std::time::Duration::ZERO,
        )
        .await?;
        Ok(JetStreamStore {
            data,
            alarms,
            max_bytes: client.server_info().max_payload,
            refuse_writes_until: AtomicU64::new(0),
            stats: Stats::default(),
        })
    }

    /// NATS' largest message, the bound of a room's stored value.
    pub(crate) fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    pub(crate) fn stats(&self) -> &Stats {
        &self.stats
    }

    pub(crate) fn accepts_writes(&self) -> bool {
        self.refuse_writes_until.load(Relaxed) <= crate::room::now_ms()
    }

    /// The room's data and alarm, and the revision to commit over.
    pub(crate) async fn load(&self, project: &str) -> anyhow::Result<RoomData> {
        let entry = self
            .data
            .entry(key(project))
            .await
            .context("cannot read the room's data from JetStream")?;
        let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) else {
            return Ok(RoomData::default());
        };
        let mut data = decode(entry.value).context("the room's stored data is damaged")?;
        data.revision = entry.revision;
        Ok(data)
    }

    /// Writes the room whole (`changes` carries every entry and the alarm)
    /// over the revision it read; the new revision.
    pub(crate) async fn commit(&self, project: &str, changes: Changes) -> Result<u64, CommitError> {
        let started = Instant::now();
        let result = self.write(project, &changes).await;
        match &result {
            Ok(_) => self.stats.committed(1, started.elapsed()),
            Err((e, every_room)) => {
                self.stats.failed();
                warn!(project, error = %e, "commit to JetStream failed; the room's last changes are lost and its clients closed");
                // JetStream out of reach concerns every room; a conflict on
                // this room's revision, only this one.
                if *every_room {
                    self.refuse_writes_until
                        .store(crate::room::now_ms() + RETRY_AFTER_FAILURE_MS, Relaxed);
                }
            }
        }
        result.map_err(|(e, _)| format!("{e:#}").into())
    }

    /// The new revision; or why not, and whether it concerns every room.
    async fn write(&self, project: &str, changes: &Changes) -> Result<u64, (anyhow::Error, bool)> {
        let alarm = changes.alarm.flatten();
        let value = encode(&changes.entries, alarm);
        if value.len() > self.max_bytes {
            return Err((
                anyhow::anyhow!(
                    "the room's store ({} bytes) is larger than NATS' largest message ({} bytes)",
                    value.len(),
                    self.max_bytes
                ),
                false,
            ));
        }
        let key = key(project);
        let conflict = |e: &dyn std::fmt::Display| {
            (
                anyhow::anyhow!("another node wrote the room's data (it took the project?): {e}"),
                false,
            )
        };
        let revision = if changes.revision == 0 {
            self.data
                .create(&key, value)
                .await
                .map_err(|e| match e.kind() {
                    kv::CreateErrorKind::AlreadyExists => conflict(&e),
                    _ => (anyhow::anyhow!("cannot write the room's data: {e}"), true),
                })?
        } else {
            self.data
                .update(&key, value, changes.revision)
                .await
                .map_err(|e| match e.kind() {
                    kv::UpdateErrorKind::WrongLastRevision => conflict(&e),
                    _ => (anyhow::anyhow!("cannot write the room's data: {e}"), true),
                })?
        };
        if changes.alarm_changed {
            // The index only helps other nodes find the alarm; the room's
            // own value above is what counts.
            let indexed = match alarm {
                Some(a) => self
                    .alarms
                    .put(&key, a.at.to_string().into())
                    .await
                    .map(|_| ())
                    .map_err(anyhow::Error::from),
                None => self.alarms.delete(&key).await.map_err(anyhow::Error::from),
            };
            if let Err(e) = indexed {
                warn!(project, "cannot update the index of alarms: {e}");
            }
        }
        Ok(revision)
    }

    /// Calls `due` with each project whose indexed alarm is due, about once
    /// a second, for as long as the process runs; `due` returns when to
    /// ask again about that project (if its alarm is still pending then).
    pub(crate) async fn watch_alarms<F, Fut>(self: Arc<Self>, mut due: F)
    where
        F: FnMut(String) -> Fut,
        Fut: Future<Output = Instant>,
    {
        let mut pending: HashMap<String, (u64, Instant)> = HashMap::new();
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            let mut watch = match self.alarms.watch_all().await {
                Ok(watch) => watch,
                Err(e) => {
                    warn!("cannot watch the index of alarms: {e}; trying again");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    continue;
                }
            };
            loop {
                tokio::select! {
                    entry = watch.next() => {
                        let Some(Ok(entry)) = entry else { break };
                        let Some(project) = project_of(&entry.key) else { continue };
                        let at = std::str::from_utf8(&entry.value).ok().and_then(|v| v.parse().ok());
                        match (entry.operation, at) {
                            (kv::Operation::Put, Some(at)) => {
                                pending.insert(project, (at, Instant::now()));
                            }
                            _ => {
                                pending.remove(&project);
                            }
                        }
                    }
                    _ = tick.tick() => {
                        let now_ms = crate::room::now_ms();
                        let now = Instant::now();
                        for (project, (at, next_look)) in pending.iter_mut() {
                            if *at <= now_ms && *next_look <= now {
                                *next_look = due(project.clone()).await;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The projectId a key names (see [`key`]).
fn project_of(key: &str) -> Option<String> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(key)
        .ok()?;
    String::from_utf8(bytes).ok()
}

/// A room as stored: the layout, the alarm (a flag, then when and its
/// retries), then each entry as its key's and its value's lengths and
/// bytes.
fn encode(entries: &[(String, Option<Vec<u8>>)], alarm: Option<Alarm>) -> Bytes {
    let size: usize = entries
        .iter()
        .map(|(k, v)| 8 + k.len() + v.as_ref().map_or(0, Vec::len))
        .sum();
    let mut out = BytesMut::with_capacity(14 + size);
    out.put_u8(LAYOUT);
    match alarm {
        Some(a) => {
            out.put_u8(1);
            out.put_u64(a.at);
            out.put_u32(a.retry);
        }
        None => out.put_u8(0),
    }
    for (k, v) in entries {
        if let Some(v) = v {
            out.put_u32(k.len() as u32);
            out.put_slice(k.as_bytes());
            out.put_u32(v.len() as u32);
            out.put_slice(v);
        }
    }
    out.freeze()
}

fn decode(mut value: Bytes) -> anyhow::Result<RoomData> {
    fn take(value: &mut Bytes, n: usize) -> anyhow::Result<Bytes> {
        anyhow::ensure!(value.remaining() >= n, "truncated");
        Ok(value.split_to(n))
    }
    fn len(value: &mut Bytes) -> anyhow::Result<usize> {
        Ok(take(value, 4)?.get_u32() as usize)
    }
    let layout = take(&mut value, 1)?.get_u8();
    anyhow::ensure!(layout == LAYOUT, "unknown layout {layout}");
    let alarm = match take(&mut value, 1)?.get_u8() {
        0 => None,
        _ => {
            let mut a = take(&mut value, 12)?;
            Some(Alarm {
                at: a.get_u64(),
                retry: a.get_u32(),
            })
        }
    };
    let mut entries = BTreeMap::new();
    while value.has_remaining() {
        let n = len(&mut value)?;
        let k = String::from_utf8(take(&mut value, n)?.to_vec())?;
        let n = len(&mut value)?;
        entries.insert(k, take(&mut value, n)?.to_vec());
    }
    Ok(RoomData {
        entries,
        alarm,
        revision: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_room_survives_its_encoding_and_damage_is_an_error() {
        let entries = vec![
            ("a".to_string(), Some(b"1".to_vec())),
            ("gone".to_string(), None),
            ("é".to_string(), Some(vec![0, 255])),
        ];
        let alarm = Some(Alarm { at: 42, retry: 3 });
        let data = decode(encode(&entries, alarm)).unwrap();
        assert_eq!(data.alarm, alarm);
        assert_eq!(data.entries.len(), 2);
        assert_eq!(data.entries["é"], vec![0, 255]);
        let whole = encode(&entries, None);
        for cut in 0..whole.len() {
            let _ = decode(whole.slice(..cut));
        }
        assert!(decode(whole.slice(..whole.len() - 1)).is_err());
        assert!(decode(Bytes::from_static(&[9])).is_err());
    }
}
