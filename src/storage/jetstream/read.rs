//! Reads (docs/cluster.md §3, "roomq seq and stream sequence"): the record
//! holding a seq is found through the room's index (first seq → stream
//! sequence, for records written or read), else by binary search over the
//! subject's stream sequences, each probe one direct get of the first
//! record at or after a sequence; then records are read forward, decoded
//! with their checksums, control records skipped.
//!
//! A direct get may be answered by a replica that lags. A "not found" for
//! a sequence the store knows is written (up to the room's newest record)
//! is asked again of the stream leader before it counts.

use std::sync::Arc;

use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::stream::{DirectGetErrorKind, LastRawMessageErrorKind};

use super::head::{Head, Kind};
use super::{engine, lock, record_key, Inner, RoomView};
use crate::storage::record::{decode_log_batch, log_batch_count};
use crate::storage::{RoomId, StoreError, StoredMessage};

impl Inner {
    pub(super) async fn read(
        &self,
        room: RoomId,
        from: u64,
        max: usize,
        max_bytes: usize,
    ) -> Result<Vec<Arc<StoredMessage>>, StoreError> {
        let mut out = Vec::new();
        if max == 0 {
            return Ok(out);
        }
        let Some(view) = self.room(room).await? else {
            return Ok(out);
        };
        let from = from.max(view.first).max(1);
        if from > view.last {
            return Ok(out);
        }
        let mut record = self.find_record(room, &view, from).await?;
        let mut bytes = 0usize;
        loop {
            let key = record_key(&view.subject, record.sequence);
            let head = Head::from_headers(Some(&record.headers), &key)?;
            if head.kind == Kind::Messages && head.last >= from {
                self.remember(room, head.seq, head.count, record.sequence);
                if log_batch_count(key.as_bytes(), &record.payload)? != head.count {
                    return Err(StoreError::Corrupt {
                        key,
                        why: "record holds another number of messages than it says",
                    });
                }
                let before = out.len();
                decode_log_batch(key.as_bytes(), record.payload.clone(), from, &mut out, max)?;
                // Keep messages up to the one that brings the bytes read
                // to `max_bytes`.
                let mut kept = before;
                for m in out.iter().skip(before) {
                    if bytes >= max_bytes {
                        break;
                    }
                    bytes += m.encoded.len();
                    kept += 1;
                }
                out.truncate(kept);
                if out.len() >= max || bytes >= max_bytes {
                    break;
                }
            }
            if record.sequence >= view.tip {
                break;
            }
            match self.next_record(&view, record.sequence + 1).await? {
                Some(next) => record = next,
                None => break,
            }
        }
        Ok(out)
    }

    /// The first record of the room whose `Roomq-Last` is at least `seq`
    /// (the record holding `seq`, if it is stored), where `seq` is at most
    /// the room's last seq. `Roomq-Last` never decreases along a room's
    /// chain, which is what makes the search work.
    pub(super) async fn find_record(
        &self,
        room: RoomId,
        view: &RoomView,
        seq: u64,
    ) -> Result<StreamMessage, StoreError> {
        // Bounds from the index: below, a record ending before `seq`;
        // above, one starting after it (or the newest record).
        let (mut lo, mut hi, exact) = {
            let rooms = lock(&self.rooms);
            let index = rooms.get(&room).map(|s| &s.index);
            let below = index.and_then(|i| i.range(..=seq).next_back());
            let above = index.and_then(|i| i.range(seq + 1..).next());
            let exact = below
                .filter(|(first, e)| seq < first.saturating_add(u64::from(e.count)))
                .map(|(_, e)| e.stream_seq);
            let lo = below.map_or(1, |(_, e)| e.stream_seq + 1);
            let hi = above.map_or(view.tip, |(_, e)| e.stream_seq.min(view.tip));
            (lo.min(hi), hi, exact)
        };
        if let Some(at) = exact {
            return self.known_record(view, at).await;
        }
        let mut found: Option<(u64, StreamMessage)> = None;
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let probe = self.known_record(view, mid).await?;
            let head = Head::from_headers(
                Some(&probe.headers),
                &record_key(&view.subject, probe.sequence),
            )?;
            if head.kind == Kind::Messages {
                self.remember(room, head.seq, head.count, probe.sequence);
            }
            if head.last >= seq {
                hi = mid;
                found = Some((mid, probe));
            } else {
                lo = probe.sequence.saturating_add(1).min(hi);
            }
        }
        match found {
            Some((at, record)) if at == lo => Ok(record),
            _ => self.known_record(view, lo).await,
        }
    }

    /// The first record of the room at or after stream sequence `from`,
    /// which must exist (`from` is at most the room's newest record).
    async fn known_record(&self, view: &RoomView, from: u64) -> Result<StreamMessage, StoreError> {
        self.next_record(view, from).await?.ok_or_else(|| {
            engine(
                format!("reading {}", view.subject),
                format!(
                    "no record at or after {from}, below its newest record {}",
                    view.tip
                ),
            )
        })
    }

    /// The first record of the room at or after stream sequence `from`.
    async fn next_record(
        &self,
        view: &RoomView,
        from: u64,
    ) -> Result<Option<StreamMessage>, StoreError> {
        match view
            .stream
            .direct_get_next_for_subject(view.subject.to_string(), Some(from))
            .await
        {
            Ok(record) => return Ok(Some(record)),
            Err(e) if e.kind() == DirectGetErrorKind::NotFound && from <= view.tip => {}
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(engine(format!("read {} from {from}", view.subject), e)),
        }
        // A replica that lags may not have it yet: ask the leader.
        match view
            .stream
            .get_first_raw_message_by_subject(view.subject.as_ref(), from)
            .await
        {
            Ok(record) => Ok(Some(record)),
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(engine(format!("read {} from {from}", view.subject), e)),
        }
    }
}
