//! Recovery: [`Recovered`] rebuilt from the buckets and the rooms' newest
//! records, in order:
//!
//! 1. `<P>_meta`, read whole by an ordered consumer (served by the
//!    bucket's stream leader, unlike a KV `get`): rooms, namespace ids,
//!    namespace records, the next room id, the dedup cutoff.
//! 2. Each room's newest record, from the stream leader: its last seq,
//!    first seq and stored bytes, and the stream sequence the next append
//!    names (the fence). A room whose newest record is a tombstone was
//!    being deleted: the deletion is finished and the room is not
//!    returned.
//! 3. `<P>_cursors`, read whole the same way.
//! 4. Dedup records: the headers of each namespace's records from
//!    `dedup_window_ms` + 30 s ago on (an ordered consumer with
//!    `headers_only`), their dedup parts put back together by namespace
//!    and id; those accepted before the stored cutoff are not returned.
//!
//! Every value and record header is checked; damage fails the recovery
//! with [`StoreError::Corrupt`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use async_nats::jetstream::{kv, stream};
use bytes::Bytes;
use futures::{StreamExt as _, TryStreamExt as _};

use super::head::{Head, Kind};
use super::layout::{self, CURSOR_VERSION};
use super::{engine, is_kv_removal, lock, record_key, Inner, Namespace, RoomState, CONCURRENCY};
use crate::storage::record::{decode_cursor, decode_room, decode_u64, open as open_sealed};
use crate::storage::{DedupRecord, Recovered, RecoveredRoom, RoomId, RoomStats, StoreError};

/// Margin of the dedup scan for clocks that disagree.
const CLOCK_MARGIN: Duration = Duration::from_secs(30);

/// A dedup record being put back together from its parts, keyed by each
/// part's index among its record's seqs *and* its room: one id may have
/// several records (a publish split over the broker's shards stores one
/// per shard, each with its own rooms, each indexed from 0), and all of
/// their seqs belong to the id.
struct Assembly {
    timestamp_ms: u64,
    pairs: BTreeMap<(u32, RoomId), (RoomId, u64)>,
}

impl Inner {
    pub(super) async fn recover(&self) -> Result<Recovered, StoreError> {
        let _writing = self.writing.lock().await;
        let mut out = Recovered::default();

        // 1. Keys.
        let mut rooms: Vec<(RoomId, String, String)> = Vec::new();
        let mut namespace_ids: HashMap<String, u64> = HashMap::new();
        for (key, value, revision) in self.scan_bucket(&self.meta).await? {
            let bytes = key.as_bytes();
            if let Some(id) = key.strip_prefix("room.") {
                let id: RoomId = id.parse().map_err(|_| bad_key(&key))?;
                let (namespace, name) = decode_room(bytes, &value)?;
                rooms.push((id, namespace, name));
            } else if let Some(name) = key.strip_prefix("ns.") {
                let name = layout::unb64(name).ok_or_else(|| bad_key(&key))?;
                namespace_ids.insert(name, revision);
            } else if key.starts_with("nsconf.") {
                out.namespaces.push(open_sealed(bytes, &value)?.to_vec());
            } else if key == layout::NEXT_ROOM_ID {
                out.next_room_id = out.next_room_id.max(decode_u64(bytes, &value)?);
            } else if key == layout::DEDUP_CUTOFF {
                self.dedup_cutoff
                    .fetch_max(decode_u64(bytes, &value)?, Ordering::AcqRel);
            }
        }

        // 2. Rooms.
        let mut namespaces: HashMap<String, Namespace> = HashMap::new();
        for (name, id) in &namespace_ids {
            if rooms.iter().any(|r| r.1 == *name) {
                namespaces.insert(name.clone(), self.namespace_with_id(name, *id).await?);
            }
        }
        let wanted: Vec<(RoomId, String, Option<Namespace>)> = rooms
            .iter()
            .map(|(id, namespace, _)| (*id, namespace.clone(), namespaces.get(namespace).cloned()))
            .collect();
        let states: HashMap<RoomId, Option<RoomState>> = futures::stream::iter(wanted)
            .map(|(id, namespace, ns)| async move {
                let Some(ns) = ns else {
                    return Err(StoreError::Corrupt {
                        key: layout::room_key(id),
                        why: "the room's namespace has no id",
                    });
                };
                Ok((id, self.load_room_or_finish(id, &namespace, ns).await?))
            })
            .buffer_unordered(CONCURRENCY)
            .try_collect()
            .await?;
        let mut live: HashMap<RoomId, RoomState> = HashMap::new();
        for (id, namespace, name) in rooms {
            out.next_room_id = out.next_room_id.max(id.saturating_add(1));
            let Some(Some(state)) = states.get(&id) else {
                continue;
            };
            out.rooms.push(RecoveredRoom {
                id,
                namespace: Arc::from(namespace),
                name: Arc::from(name),
                last_seq: state.last,
                stats: RoomStats {
                    first_seq: state.first,
                    stored_bytes: state.bytes,
                },
            });
        }
        for (id, state) in states {
            if let Some(state) = state {
                live.insert(id, state);
            }
        }

        // 3. Cursors.
        for (key, value, _) in self.scan_bucket(&self.cursors).await? {
            let (room, name) = layout::parse_cursor_key(&key).ok_or_else(|| bad_key(&key))?;
            let Some((&version, record)) = value.split_first() else {
                return Err(StoreError::Corrupt {
                    key,
                    why: "empty cursor value",
                });
            };
            if version != CURSOR_VERSION {
                return Err(StoreError::Corrupt {
                    key,
                    why: "unknown cursor layout",
                });
            }
            let cursor = decode_cursor(key.as_bytes(), record)?;
            if live.contains_key(&room) {
                out.cursors.push((room, Arc::from(name), cursor));
            }
        }

        // 4. Dedup records.
        let cutoff = self.dedup_cutoff.load(Ordering::Acquire);
        let mut assemblies: HashMap<(Arc<str>, [u8; 16]), Assembly> = HashMap::new();
        let scanned: HashSet<u64> = live.values().map(|s| s.ns.id).collect();
        for ns_id in scanned {
            let Some(state) = live.values().find(|s| s.ns.id == ns_id) else {
                continue;
            };
            let stream = state.ns.stream.clone();
            for (subject, seq, headers) in self.scan_headers(&stream, ns_id).await? {
                let Some(room) = self.layout.room_of_subject(ns_id, &subject) else {
                    continue;
                };
                let Some(owner) = live.get(&room) else {
                    continue;
                };
                let head = Head::from_headers(headers.as_ref(), &record_key(&subject, seq))?;
                for part in head.dedup {
                    let namespace = part.namespace.unwrap_or_else(|| owner.namespace.clone());
                    let assembly =
                        assemblies
                            .entry((namespace, part.id))
                            .or_insert_with(|| Assembly {
                                timestamp_ms: part.timestamp_ms,
                                pairs: BTreeMap::new(),
                            });
                    assembly.timestamp_ms = part.timestamp_ms;
                    assembly.pairs.insert((part.index, room), (room, part.seq));
                }
            }
        }
        for ((namespace, id), a) in assemblies {
            if a.timestamp_ms >= cutoff {
                out.dedup.push((
                    namespace,
                    id,
                    DedupRecord {
                        timestamp_ms: a.timestamp_ms,
                        seqs: a.pairs.into_values().collect(),
                    },
                ));
            }
        }

        *lock(&self.rooms) = live;
        Ok(out)
    }

    /// A room's state from its newest record; a tombstone there means the
    /// deletion was interrupted: it is finished, and `None` returned.
    async fn load_room_or_finish(
        &self,
        id: RoomId,
        namespace: &str,
        ns: Namespace,
    ) -> Result<Option<RoomState>, StoreError> {
        let subject = self.layout.log_subject(ns.id, id);
        let stream = ns.stream.clone();
        if let Some(state) = self.load_room(id, Arc::from(namespace), ns).await? {
            return Ok(Some(state));
        }
        let Some((tip, head)) = super::last_record(&stream, &subject).await? else {
            return Ok(None);
        };
        tracing::info!(room = id, "finishing the deletion of a room");
        let view = super::RoomView {
            namespace: Arc::from(namespace),
            stream,
            subject: Arc::from(subject),
            tip,
            last: head.last,
            first: head.first,
            bytes: head.bytes,
        };
        debug_assert!(head.kind == Kind::Tombstone);
        self.clean_up_deleted(id, &view, tip).await?;
        Ok(None)
    }

    /// Every key of `bucket` with its value and revision (deleted keys
    /// left out), read by an ordered consumer, so from the stream leader.
    async fn scan_bucket(
        &self,
        bucket: &kv::Store,
    ) -> Result<Vec<(String, Bytes, u64)>, StoreError> {
        let config = pull::OrderedConfig {
            filter_subject: format!("{}>", bucket.prefix),
            deliver_policy: DeliverPolicy::LastPerSubject,
            ..Default::default()
        };
        let mut out = Vec::new();
        for (subject, seq, headers, payload) in self.scan(&bucket.stream, config).await? {
            if is_kv_removal(headers.as_ref()) {
                continue;
            }
            let key = subject
                .strip_prefix(bucket.prefix.as_str())
                .ok_or_else(|| bad_key(&subject))?;
            out.push((key.to_string(), payload, seq));
        }
        Ok(out)
    }

    /// The headers of the records of namespace `ns_id` stored in the last
    /// dedup window (plus a margin).
    async fn scan_headers(
        &self,
        stream: &stream::Stream,
        ns_id: u64,
    ) -> Result<Vec<(String, u64, Option<async_nats::HeaderMap>)>, StoreError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let start = now.saturating_sub(self.dedup_window + CLOCK_MARGIN);
        let start_time =
            async_nats::datetime::from_nanos(i128::try_from(start.as_nanos()).unwrap_or(0))
                .map_err(|e| engine("dedup scan start", e))?;
        let config = pull::OrderedConfig {
            filter_subject: self.layout.namespace_subjects(ns_id),
            deliver_policy: DeliverPolicy::ByStartTime { start_time },
            headers_only: true,
            ..Default::default()
        };
        Ok(self
            .scan(stream, config)
            .await?
            .into_iter()
            .map(|(subject, seq, headers, _)| (subject, seq, headers))
            .collect())
    }

    /// Everything `config` selects from `stream` as it is now: the messages
    /// pending when the consumer was made (subject, stream sequence,
    /// headers, payload).
    #[allow(clippy::type_complexity)]
    async fn scan(
        &self,
        stream: &stream::Stream,
        config: pull::OrderedConfig,
    ) -> Result<Vec<(String, u64, Option<async_nats::HeaderMap>, Bytes)>, StoreError> {
        let what = format!(
            "scan {} ({})",
            stream.cached_info().config.name,
            config.filter_subject
        );
        let consumer = stream
            .create_consumer(config)
            .await
            .map_err(|e| engine(&what, e))?;
        let mut pending = consumer.cached_info().num_pending;
        let mut out = Vec::new();
        if pending == 0 {
            return Ok(out);
        }
        let mut messages = consumer.messages().await.map_err(|e| engine(&what, e))?;
        while pending > 0 {
            let next = tokio::time::timeout(self.request_timeout, messages.next())
                .await
                .map_err(|_| engine(&what, "no message within the request timeout"))?;
            let Some(message) = next else {
                return Err(engine(&what, "the consumer ended early"));
            };
            let message = message.map_err(|e| engine(&what, e))?;
            let info = message.info().map_err(|e| engine(&what, e))?;
            pending = info.pending;
            let seq = info.stream_sequence;
            out.push((
                message.subject.to_string(),
                seq,
                message.headers.clone(),
                message.payload.clone(),
            ));
        }
        Ok(out)
    }
}

fn bad_key(key: &str) -> StoreError {
    StoreError::Corrupt {
        key: key.to_string(),
        why: "malformed key",
    }
}
