//! `Publish`: store a message in one or more rooms and confirm it with its
//! seq in each, once a flush covers it (`sync` durability).

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use prost::Message as _;
use roomq_wire::names::check_name;
use roomq_wire::pb;
use uuid::Uuid;

use super::clock::now_ms;
use super::core::Broker;
use super::dedup::Known;
use super::error::BrokerError;
use super::reply::{Deferred, Reply};
use crate::config::Limits;
use crate::metrics::Quota;
use crate::session::SessionInfo;
use crate::storage::{key_hash, Extra, MessageInfo, RoomId, StoredMessage};
use crate::tenancy::middleware::PublishCtx;

/// A checked publish.
#[derive(Debug)]
pub struct PublishReq {
    pub rooms: Vec<String>,
    pub dedup: Option<[u8; 16]>,
    pub except_self: bool,
    /// Not stored; delivered to whoever is joined now.
    pub volatile: bool,
    /// `except_sessions`, `except_rooms` and the rooms of a multi-room
    /// publish.
    pub extra: Option<Arc<Extra>>,
    /// The routing fields of `encoded`.
    pub info: MessageInfo,
    /// Store only if the (single) room's last seq is this.
    pub expected_last_seq: Option<u64>,
    /// The wire `Message` without its seq, encoded once for every room and
    /// every delivery.
    pub encoded: Bytes,
}

impl PublishReq {
    /// The part of this publish for `rooms`, some of its rooms that share
    /// a shard: the same message (its `Extra` still names every room, so
    /// a session in several of them is served once) and the same dedup id.
    pub fn part(&self, rooms: Vec<String>) -> PublishReq {
        PublishReq {
            rooms,
            dedup: self.dedup,
            except_self: self.except_self,
            volatile: self.volatile,
            extra: self.extra.clone(),
            info: self.info,
            expected_last_seq: self.expected_last_seq,
            encoded: self.encoded.clone(),
        }
    }

    /// The message to store (seq 0 until it is appended) for `session`,
    /// whose client id is `client_id`.
    fn message(&self, session: Uuid, client_id: Option<Arc<str>>) -> StoredMessage {
        StoredMessage {
            seq: 0,
            encoded: self.encoded.clone(),
            except_session: self.except_self.then(|| *session.as_bytes()),
            except_client: client_id.filter(|_| self.except_self),
            extra: self.extra.clone(),
            info: self.info,
        }
    }
}

/// Checks a publish, runs the namespace's publish hooks, and encodes its
/// message (after the hooks, so that a hook may add headers); runs on the
/// session's task.
pub async fn check(
    mut p: pb::Publish,
    session: &SessionInfo,
    limits: &Limits,
) -> Result<PublishReq, BrokerError> {
    validate(&p, limits)?;
    let tenant = session.tenant.clone();
    for hook in tenant.chain() {
        let mut ctx = PublishCtx {
            tenant: &tenant,
            session,
            rooms: &p.rooms,
            event: &p.event,
            payload: &p.payload,
            headers: &mut p.headers,
        };
        if let Some(e) = BrokerError::refused_by(hook.publish(&mut ctx).await) {
            return Err(e);
        }
    }
    encode(p, session, limits)
}

/// The checks that need no hook: rooms, event, dedup id, precondition.
fn validate(p: &pb::Publish, limits: &Limits) -> Result<(), BrokerError> {
    let invalid = BrokerError::InvalidRequest;
    if p.rooms.is_empty() {
        return Err(invalid("publish names no room".into()));
    }
    if p.rooms.len() > limits.max_rooms_per_publish as usize {
        return Err(invalid(format!(
            "publish names {} rooms; the limit is {}",
            p.rooms.len(),
            limits.max_rooms_per_publish
        )));
    }
    let mut seen = HashSet::new();
    for room in &p.rooms {
        check_name("room", room)?;
        // (The common single-room publish needs no set.)
        if p.rooms.len() > 1 && !seen.insert(room.as_str()) {
            return Err(invalid(format!("room {room:?} is named twice")));
        }
    }
    check_name("event", &p.event)?;
    if p.expected_last_seq.is_some() && p.rooms.len() != 1 {
        return Err(invalid("expected_last_seq needs exactly one room".into()));
    }
    if !matches!(p.dedup_id.len(), 0 | 16) {
        return Err(invalid(format!(
            "dedup_id must be 16 bytes (a UUID), not {}",
            p.dedup_id.len()
        )));
    }
    if !p.key.is_empty() {
        check_name("key", &p.key)?;
    }
    if p.deliver_at_ms != 0 && p.delay_ms != 0 {
        return Err(invalid(
            "deliver_at_ms and delay_ms exclude each other".into(),
        ));
    }
    // (The clock is read only for an absolute time, off the common path.)
    let at = match p.deliver_at_ms {
        0 => 0,
        ms => ms.saturating_sub(now_ms()),
    };
    let ahead = p.delay_ms.max(at);
    if ahead > limits.max_schedule_ms {
        return Err(invalid(format!(
            "delivery is scheduled {ahead} ms ahead; the limit is {} ms",
            limits.max_schedule_ms
        )));
    }
    if p.volatile {
        let stored_only = [
            (!p.dedup_id.is_empty(), "dedup_id"),
            (p.expected_last_seq.is_some(), "expected_last_seq"),
            (p.ttl_ms != 0, "ttl_ms"),
            (p.deliver_at_ms != 0, "deliver_at_ms"),
            (p.delay_ms != 0, "delay_ms"),
        ];
        if let Some((_, field)) = stored_only.iter().find(|(set, _)| *set) {
            return Err(invalid(format!(
                "a volatile publish is not stored: {field} does not apply"
            )));
        }
    }
    let most = limits.max_rooms_per_publish as usize;
    if p.except_rooms.len() > most || p.except_sessions.len() > most {
        return Err(invalid(format!(
            "a publish may name at most {most} except rooms and {most} except sessions"
        )));
    }
    for room in &p.except_rooms {
        check_name("room", room)?;
    }
    if let Some(bad) = p.except_sessions.iter().find(|s| s.len() != 16) {
        return Err(invalid(format!(
            "except_sessions entries are 16 bytes, not {}",
            bad.len()
        )));
    }
    Ok(())
}

/// Checks the headers (hooks may have added some) and encodes the message.
fn encode(
    p: pb::Publish,
    session: &SessionInfo,
    limits: &Limits,
) -> Result<PublishReq, BrokerError> {
    if p.headers.len() > limits.max_headers as usize {
        return Err(BrokerError::InvalidRequest(format!(
            "{} headers; the limit is {}",
            p.headers.len(),
            limits.max_headers
        )));
    }
    for key in p.headers.keys() {
        check_name("header name", key)?;
    }
    let dedup = <[u8; 16]>::try_from(&p.dedup_id[..]).ok();
    let now = now_ms();
    let deliver_at_ms = match (p.deliver_at_ms, p.delay_ms) {
        (0, 0) => 0,
        (0, delay) => now.saturating_add(delay),
        (at, _) => at,
    };
    // The routing fields, from the values at hand (the same a scan of the
    // encoding would read, as debug builds check, without the scan).
    let info = MessageInfo {
        key_hash: match p.key.as_str() {
            "" => 0,
            key => key_hash(key.as_bytes()),
        },
        timestamp_ms: now,
        expires_at_ms: match p.ttl_ms {
            0 => 0,
            ttl => now.saturating_add(ttl),
        },
        deliver_at_ms,
    };
    let message = pb::Message {
        seq: 0,
        event: p.event,
        payload: p.payload,
        headers: p.headers,
        publisher_session: session.id_bytes.clone(),
        timestamp_ms: now,
        key: p.key,
        expires_at_ms: info.expires_at_ms,
        deliver_at_ms,
    };
    let encoded = Bytes::from(message.encode_to_vec());
    debug_assert_eq!(info, MessageInfo::of(&encoded));
    let extra = Extra {
        except_sessions: p.except_sessions.iter().map(|s| s.to_vec()).collect(),
        except_rooms: p.except_rooms,
        rooms: if p.rooms.len() > 1 {
            p.rooms.clone()
        } else {
            Vec::new()
        },
    };
    let empty =
        extra.except_sessions.is_empty() && extra.except_rooms.is_empty() && extra.rooms.is_empty();
    let limit = limits
        .max_frame()
        .saturating_sub(roomq_wire::DELIVERY_OVERHEAD);
    if encoded.len() > limit {
        return Err(BrokerError::MessageTooLarge {
            size: encoded.len(),
            limit,
        });
    }
    Ok(PublishReq {
        rooms: p.rooms,
        dedup,
        except_self: p.except_self,
        volatile: p.volatile,
        extra: (!empty).then(|| Arc::new(extra)),
        info,
        expected_last_seq: p.expected_last_seq,
        encoded,
    })
}

/// The confirmation frame.
pub fn ok_frame(
    request_id: u64,
    seqs: &[(Arc<str>, u64)],
    duplicate: bool,
    durability: pb::Durability,
) -> pb::ServerFrame {
    pb::ServerFrame {
        request_id,
        body: Some(pb::server_frame::Body::PublishOk(pb::PublishOk {
            seqs: seqs
                .iter()
                .map(|(room, seq)| pb::RoomSeq {
                    room: room.to_string(),
                    seq: *seq,
                })
                .collect(),
            duplicate,
            durability: durability as i32,
        })),
    }
}

impl Broker {
    /// Gives `msg` the next seq of room `room_id` and adds it to the open
    /// batch; it is delivered once that batch is on disk. Returns the seq.
    pub(super) fn append(&mut self, room_id: RoomId, mut msg: StoredMessage) -> u64 {
        let Some(room) = self.rooms.get_mut(&room_id) else {
            return 0;
        };
        room.last_seq += 1;
        room.stored_bytes += msg.encoded.len() as u64;
        room.rate.record(tokio::time::Instant::now(), 1);
        msg.seq = room.last_seq;
        self.pipeline.append(room_id, Arc::new(msg));
        room.last_seq
    }

    /// A volatile publish: handed to the consumers joined now, once per
    /// session across its rooms, and answered at once; nothing is stored.
    fn publish_volatile(&mut self, session: Uuid, req: PublishReq) -> Reply {
        let Some(entry) = self.outlet.sessions.get(&session) else {
            return Reply::Gone;
        };
        let namespace = entry.info.namespace.clone();
        let tenant = entry.info.tenant.clone();
        let mut delivered = 0;
        let msg = Arc::new(req.message(session, entry.info.client_id.clone()));
        let mut served = Vec::new();
        for name in &req.rooms {
            let Some(id) = self.rooms.find(&namespace, name) else {
                continue;
            };
            let Some(room) = self.rooms.get_mut(&id) else {
                continue;
            };
            self.outlet.begin();
            room.volatile(&msg, &mut served, &mut self.outlet);
            delivered += self.outlet.tally().delivered;
        }
        if delivered > 0 && self.metrics.enabled {
            tenant.metrics.deliveries.inc_by(delivered);
        }
        Reply::Confirm {
            seqs: Arc::from(Vec::new()),
            duplicate: false,
            durability: pb::Durability::Volatile,
        }
    }

    pub(super) fn publish(&mut self, session: Uuid, req: PublishReq) -> Result<Reply, BrokerError> {
        let Some(entry) = self.outlet.sessions.get(&session) else {
            return Ok(Reply::Gone);
        };
        let namespace = entry.info.namespace.clone();
        let client_id = entry.info.client_id.clone();
        let tenant = entry.info.tenant.clone();
        if req.volatile {
            return Ok(self.publish_volatile(session, req));
        }
        let policy = tenant.policy();
        let durability = pb::Durability::from(policy.durability);
        let dedup_key = req.dedup.map(|id| self.dedup.key(&namespace, id));
        if let Some(key) = dedup_key {
            match self.dedup.get(&key) {
                Some(Known::Stored(seqs)) => {
                    tenant.metrics.duplicates.inc();
                    if self.pipeline.unsynced() {
                        // The original may be written but not yet synced
                        // (a `batched` namespace): a duplicate says SYNC,
                        // so it waits for the next sync.
                        return Ok(Reply::AfterSync(Deferred::Confirm {
                            seqs,
                            duplicate: true,
                            received: None,
                        }));
                    }
                    return Ok(Reply::Confirm {
                        seqs,
                        duplicate: true,
                        durability: pb::Durability::Sync,
                    });
                }
                Some(Known::Pending) => {
                    tenant.metrics.duplicates.inc();
                    return Ok(Reply::WithOriginal(key));
                }
                None => {}
            }
        }
        if let Some(expected) = req.expected_last_seq {
            let last = req
                .rooms
                .first()
                .and_then(|name| self.rooms.find(&namespace, name))
                .and_then(|id| self.rooms.get(&id))
                .map_or(0, |room| room.last_seq);
            if last != expected {
                return Err(BrokerError::PreconditionFailed {
                    last_seq: last,
                    expected,
                });
            }
        }
        // Reserves the rooms it will create (given back if the publish is
        // refused below).
        let reserved = self
            .rooms
            .check(&tenant, req.rooms.iter().map(String::as_str))?;
        // Checked here, not by the quota middleware: only the actor knows
        // what the publishes accepted before this one add.
        let max_stored = policy.quotas.max_stored_bytes;
        let adding = (req.encoded.len() as u64).saturating_mul(req.rooms.len() as u64);
        let stored = tenant.usage.stored_bytes();
        if max_stored > 0 && stored.saturating_add(adding) > max_stored {
            let detail = format!(
                "namespace {} stores {stored} of its {max_stored} bytes; this message needs {adding}",
                tenant.name
            );
            tenant.metrics.quota_refused(Quota::StoredBytes);
            tenant.usage.remove_rooms(reserved);
            return Err(BrokerError::QuotaExceeded {
                quota: Quota::StoredBytes,
                detail,
            });
        }
        let mut seqs = Vec::with_capacity(req.rooms.len());
        let mut stored = Vec::with_capacity(req.rooms.len());
        let size = req.encoded.len() as u64;
        let template = req.message(session, client_id);
        for name in &req.rooms {
            let room_id = self.rooms.create(&namespace, name, self.pipeline.batch());
            let seq = self.append(room_id, template.clone());
            if let Some(room) = self.rooms.get(&room_id) {
                seqs.push((room.name.clone(), seq));
                stored.push((room_id, seq));
            }
        }
        let (bytes, count) = (size * stored.len() as u64, stored.len() as u64);
        tenant.usage.add_stored(bytes, count);
        if self.metrics.enabled {
            tenant.metrics.published.inc_by(count);
            tenant.metrics.stored_bytes.inc_by(bytes);
        }
        let seqs: crate::session::Seqs = seqs.into();
        if let Some(key) = dedup_key {
            self.pipeline.batch().dedup_put.push((
                namespace,
                key.id(),
                crate::storage::DedupRecord {
                    timestamp_ms: now_ms(),
                    seqs: stored,
                },
            ));
            self.dedup.pending(key, seqs.clone());
            self.pipeline.stores_dedup(key);
        }
        if durability == pb::Durability::Batched {
            // Confirmed now; written (and delivered) with the next commit.
            return Ok(Reply::Confirm {
                seqs,
                duplicate: false,
                durability,
            });
        }
        Ok(Reply::AfterSync(Deferred::Confirm {
            seqs,
            duplicate: false,
            received: self.metrics.enabled.then(tokio::time::Instant::now),
        }))
    }
}
