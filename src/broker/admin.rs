//! `Admin`: the `/admin` namespace's requests. Listing reads the broker's
//! tables; every change is written with the next commit and answered once
//! it is on disk.

use std::sync::Arc;

use prost::Message as _;
use roomq_wire::names::{check_name, check_namespace};
use roomq_wire::pb;
use tokio::time::Instant;
use tracing::info;
use uuid::Uuid;

use super::core::Broker;
use super::dead_letter;
use super::error::BrokerError;
use super::pipeline::{PendingConfirm, PendingReply};
use super::reply::{Deferred, Reply, Resume};
use super::room::MemberKey;
use crate::config::{DurabilityMode, NamespaceConfig, Quotas, RetentionRule, TokenConfig};
use crate::session::{Outbound, RequestSlot};
use crate::storage::{RoomId, StoreError, StoredMessage};
use crate::tenancy::{token, Tenant};
use tokio::sync::oneshot;

/// A checked admin request.
#[derive(Debug)]
pub enum AdminReq {
    ListNamespaces,
    /// `None`: every namespace.
    ListRooms(Option<String>),
    CreateNamespace(String, NamespaceConfig),
    DeleteNamespace(String),
    CreateRoom(String, String),
    DeleteRoom(String, String),
    CreateToken(String, TokenConfig),
    DeleteToken(String, String),
    PurgeRoom(String, String),
    Kick(Uuid),
    Redrive(String, String, u32),
    /// A redrive, with the dead-letter room's oldest messages read.
    Redriven(String, String, u32, ReadBack),
    /// The broker's figures: at most this many rooms, in this order.
    Stats(u32, pb::StatsOrder),
}

impl AdminReq {
    /// The (namespace, room) the request is about, whose shard handles
    /// it; `None` for the namespace-wide ones.
    pub fn room(&self) -> Option<(&str, &str)> {
        match self {
            AdminReq::CreateRoom(ns, room)
            | AdminReq::DeleteRoom(ns, room)
            | AdminReq::PurgeRoom(ns, room)
            | AdminReq::Redrive(ns, room, _)
            | AdminReq::Redriven(ns, room, ..) => Some((ns, room)),
            AdminReq::ListNamespaces
            | AdminReq::ListRooms(_)
            | AdminReq::CreateNamespace(..)
            | AdminReq::DeleteNamespace(_)
            | AdminReq::CreateToken(..)
            | AdminReq::DeleteToken(..)
            | AdminReq::Kick(_)
            | AdminReq::Stats(..) => None,
        }
    }
}

/// Messages read from the store for a request that waited for them.
pub struct ReadBack {
    room: RoomId,
    /// The first seq asked for.
    from: u64,
    msgs: Result<Vec<Arc<StoredMessage>>, StoreError>,
}

impl std::fmt::Debug for ReadBack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let read = match &self.msgs {
            Ok(m) => format!("{} messages", m.len()),
            Err(e) => format!("failed: {e}"),
        };
        write!(f, "ReadBack(room {} from {}: {read})", self.room, self.from)
    }
}

/// Most rooms one `Stats` reply lists (each takes up to about 600 bytes, so
/// the reply stays well within the default frame limit).
pub const MAX_STATS_ROOMS: u32 = 1000;

fn namespace(name: &str) -> Result<String, BrokerError> {
    check_namespace(name)?;
    Ok(name.to_string())
}

fn room(name: &str) -> Result<String, BrokerError> {
    check_name("room", name)?;
    Ok(name.to_string())
}

fn patterns(list: Vec<String>) -> Result<Vec<String>, BrokerError> {
    if list.is_empty() {
        return Ok(vec!["*".to_string()]);
    }
    for p in &list {
        check_name("room pattern", p)?;
    }
    Ok(list)
}

/// Checks an admin request; runs on the session's task.
pub fn check(a: pb::Admin) -> Result<AdminReq, BrokerError> {
    use pb::admin::Op;
    let invalid = BrokerError::InvalidRequest;
    let Some(op) = a.op else {
        return Err(invalid("admin request has no operation".into()));
    };
    Ok(match op {
        Op::Redrive(r) => AdminReq::Redrive(namespace(&r.namespace)?, room(&r.room)?, r.max),
        Op::ListNamespaces(_) => AdminReq::ListNamespaces,
        Op::Stats(s) => {
            let order = pb::StatsOrder::try_from(s.order)
                .map_err(|_| invalid(format!("unknown stats order {}", s.order)))?;
            AdminReq::Stats(s.max_rooms.min(MAX_STATS_ROOMS), order)
        }
        Op::ListRooms(r) if r.namespace.is_empty() => AdminReq::ListRooms(None),
        Op::ListRooms(r) => AdminReq::ListRooms(Some(namespace(&r.namespace)?)),
        Op::CreateNamespace(c) => {
            let durability = match pb::Durability::try_from(c.durability) {
                Ok(pb::Durability::Unspecified | pb::Durability::Sync) => DurabilityMode::Sync,
                Ok(pb::Durability::Batched) => DurabilityMode::Batched,
                Ok(pb::Durability::Volatile) | Err(_) => {
                    return Err(invalid(format!("unknown durability {}", c.durability)));
                }
            };
            let quotas = match c.quotas {
                None => Quotas::default(),
                Some(q) => Quotas {
                    max_connections: q.max_connections,
                    max_rooms: q.max_rooms,
                    max_stored_bytes: q.max_stored_bytes,
                    publish_rate: q.publish_rate,
                    publish_burst: q.publish_burst,
                    max_message_bytes: q.max_message_bytes,
                },
            };
            let settings = NamespaceConfig {
                open: c.open,
                durability,
                create_rooms: c.create_rooms.unwrap_or(true),
                quotas,
                tokens: Vec::new(),
                retention: c
                    .retention
                    .into_iter()
                    .map(|r| RetentionRule {
                        rooms: r.rooms,
                        max_messages: r.max_messages,
                        max_bytes: r.max_bytes,
                        max_age_ms: r.max_age_ms,
                    })
                    .collect(),
            };
            AdminReq::CreateNamespace(namespace(&c.name)?, settings)
        }
        Op::DeleteNamespace(d) => AdminReq::DeleteNamespace(namespace(&d.name)?),
        Op::CreateRoom(r) => AdminReq::CreateRoom(namespace(&r.namespace)?, room(&r.room)?),
        Op::DeleteRoom(r) => AdminReq::DeleteRoom(namespace(&r.namespace)?, room(&r.room)?),
        Op::PurgeRoom(r) => AdminReq::PurgeRoom(namespace(&r.namespace)?, room(&r.room)?),
        Op::CreateToken(t) => {
            check_name("token name", &t.name)?;
            let token = TokenConfig {
                name: t.name,
                // Filled in by the broker, which makes the token.
                hash: String::new(),
                publish: patterns(t.publish)?,
                subscribe: patterns(t.subscribe)?,
            };
            AdminReq::CreateToken(namespace(&t.namespace)?, token)
        }
        Op::DeleteToken(t) => {
            check_name("token name", &t.name)?;
            AdminReq::DeleteToken(namespace(&t.namespace)?, t.name)
        }
        Op::Kick(k) => match Uuid::from_slice(&k.session_id) {
            Ok(id) => AdminReq::Kick(id),
            Err(_) => return Err(invalid("session_id must be 16 bytes".into())),
        },
    })
}

fn ok(body: pb::AdminOk) -> pb::server_frame::Body {
    pb::server_frame::Body::AdminOk(body)
}

fn quotas_of(q: &Quotas) -> pb::NamespaceQuotas {
    pb::NamespaceQuotas {
        max_connections: q.max_connections,
        max_rooms: q.max_rooms,
        max_stored_bytes: q.max_stored_bytes,
        publish_rate: q.publish_rate,
        publish_burst: q.publish_burst,
        max_message_bytes: q.max_message_bytes,
    }
}

fn retention_of(r: &RetentionRule) -> pb::RetentionRule {
    pb::RetentionRule {
        rooms: r.rooms.clone(),
        max_messages: r.max_messages,
        max_bytes: r.max_bytes,
        max_age_ms: r.max_age_ms,
    }
}

fn namespace_info(t: &Tenant, rooms: usize) -> pb::NamespaceInfo {
    let p = t.policy();
    pb::NamespaceInfo {
        name: t.name.to_string(),
        open: p.open,
        durability: pb::Durability::from(p.durability) as i32,
        create_rooms: p.create_rooms,
        from_config: t.from_config,
        quotas: Some(quotas_of(&p.quotas)),
        tokens: p.tokens.iter().map(|t| t.name.to_string()).collect(),
        connections: t.usage.connections(),
        rooms: rooms as u64,
        stored_bytes: t.usage.stored_bytes(),
        published: t.usage.published(),
        retention: p.retention.iter().map(retention_of).collect(),
    }
}

impl Broker {
    pub(super) fn admin(&mut self, session: Uuid, req: AdminReq) -> Result<Reply, BrokerError> {
        if !matches!(req, AdminReq::Stats(..)) {
            // (`roomq top` asks for stats every second.)
            info!(session = %session, request = ?req, "admin request");
        }
        let result = match req {
            // What every shard answers for its own rooms is gathered by
            // the session (`BrokerHandle`), which sends each shard its own
            // command (`Command::Stats`, `AdminRooms`, `Kick`,
            // `DeleteNamespace`), never these.
            AdminReq::Stats(..)
            | AdminReq::ListRooms(_)
            | AdminReq::Kick(_)
            | AdminReq::DeleteNamespace(_) => {
                return Err(BrokerError::Internal(
                    "this admin request is gathered from every shard".into(),
                ))
            }
            AdminReq::ListNamespaces => {
                let namespaces = self
                    .tenants
                    .list()
                    .iter()
                    .map(|t| namespace_info(t, t.usage.rooms() as usize))
                    .collect();
                let body = pb::AdminOk {
                    namespaces,
                    ..Default::default()
                };
                return Ok(Reply::Now(ok(body)));
            }
            AdminReq::CreateNamespace(name, settings) => self.create_namespace(&name, settings),
            AdminReq::CreateRoom(ns, name) => self.tenant(&ns).map(|tenant| {
                let existed = self.rooms.find(&ns, &name).is_some();
                self.rooms.create_counted(
                    Some(&tenant),
                    &Arc::from(ns.as_str()),
                    &name,
                    self.pipeline.batch(),
                );
                pb::AdminOk {
                    count: u64::from(!existed),
                    ..Default::default()
                }
            }),
            AdminReq::DeleteRoom(ns, name) => self.tenant(&ns).and_then(|_| {
                let id = self
                    .rooms
                    .find(&ns, &name)
                    .ok_or_else(|| no_room(&ns, &name))?;
                self.delete_room(id);
                Ok(pb::AdminOk {
                    count: 1,
                    ..Default::default()
                })
            }),
            AdminReq::PurgeRoom(ns, name) => self.tenant(&ns).and_then(|tenant| {
                let id = self
                    .rooms
                    .find(&ns, &name)
                    .ok_or_else(|| no_room(&ns, &name))?;
                Ok(pb::AdminOk {
                    count: self.purge_room(id, &tenant),
                    ..Default::default()
                })
            }),
            AdminReq::Redrive(ns, name, max) => {
                self.tenant(&ns)?;
                let id = self
                    .rooms
                    .find(&ns, &name)
                    .ok_or_else(|| no_room(&ns, &name))?;
                return self.read_for_redrive(id, ns, name, max);
            }
            AdminReq::Redriven(ns, name, max, back) => {
                self.tenant(&ns)?;
                let id = self
                    .rooms
                    .find(&ns, &name)
                    .ok_or_else(|| no_room(&ns, &name))?;
                let from = self.rooms.get(&id).map(|r| r.first_seq);
                if back.room != id || Some(back.from) != from {
                    // Trimmed, purged or made anew while it was read.
                    return self.read_for_redrive(id, ns, name, max);
                }
                let msgs = back.msgs.map_err(BrokerError::Storage)?;
                let (count, truncated) = self.redrive(id, msgs)?;
                Ok(pb::AdminOk {
                    count,
                    truncated,
                    ..Default::default()
                })
            }
            AdminReq::CreateToken(ns, mut t) => self.tenant(&ns).and_then(|tenant| {
                let secret = token::generate().map_err(BrokerError::Internal)?;
                t.hash = token::TokenHash::of(&secret).to_text();
                let record = self
                    .tenants
                    .add_token(&tenant, t)
                    .map_err(BrokerError::InvalidRequest)?;
                self.store_namespace(&record);
                Ok(pb::AdminOk {
                    token: secret,
                    ..Default::default()
                })
            }),
            AdminReq::DeleteToken(ns, name) => self.tenant(&ns).and_then(|tenant| {
                let record = self
                    .tenants
                    .delete_token(&tenant, &name)
                    .map_err(BrokerError::TokenNotFound)?;
                self.store_namespace(&record);
                Ok(pb::AdminOk {
                    count: 1,
                    ..Default::default()
                })
            }),
        };
        let body = result?;
        if self.pipeline.batch_is_empty() {
            // Nothing to write (a kick, a room that existed).
            return Ok(Reply::Now(ok(body)));
        }
        // Answered once what it changed is on disk.
        Ok(Reply::AfterSync(Deferred::Frame {
            body: ok(body),
            then_pump: None,
        }))
    }

    /// Reads the oldest messages of dead-letter room `id` (at most `max`,
    /// 0 = the default), then redrives them (`AdminReq::Redriven`).
    fn read_for_redrive(
        &mut self,
        id: RoomId,
        ns: String,
        name: String,
        max: u32,
    ) -> Result<Reply, BrokerError> {
        let from = self.redrivable(id)?;
        let count = dead_letter::redrive_count(max);
        let store = self.outlet.reads.store();
        Ok(Reply::AfterRead(Resume::new(async move {
            let msgs = store.read(id, from, count, usize::MAX).await;
            let back = ReadBack {
                room: id,
                from,
                msgs,
            };
            AdminReq::Redriven(ns, name, max, back)
        })))
    }

    fn tenant(&self, name: &str) -> Result<Arc<Tenant>, BrokerError> {
        self.tenants
            .get(name)
            .filter(|t| !t.is_admin())
            .ok_or_else(|| BrokerError::NamespaceNotFound(name.to_string()))
    }

    fn store_namespace(&mut self, record: &crate::tenancy::StoredNamespace) {
        let body = serde_json::to_vec(record).unwrap_or_default();
        self.pipeline
            .batch()
            .namespaces
            .push((record.name.clone(), Some(body)));
    }

    fn create_namespace(
        &mut self,
        name: &str,
        settings: NamespaceConfig,
    ) -> Result<pb::AdminOk, BrokerError> {
        let tenant = self
            .tenants
            .create(name, settings)
            .map_err(BrokerError::InvalidRequest)?;
        let record = self.tenants.record_of(&tenant);
        self.store_namespace(&record);
        self.refresh_retention();
        info!(namespace = %name, "namespace created");
        Ok(pb::AdminOk {
            namespaces: vec![namespace_info(&tenant, 0)],
            ..Default::default()
        })
    }

    /// Deletes namespace `name` on this shard (see
    /// `Command::DeleteNamespace`): on the primary shard the checks, the
    /// tenant's removal and its record first; then, on every shard, its
    /// sessions there are closed and its rooms deleted. `reply` gets how
    /// many rooms went, once that is on disk.
    pub(super) fn delete_namespace(
        &mut self,
        name: &str,
        primary: bool,
        reply: oneshot::Sender<Result<u64, BrokerError>>,
    ) {
        if primary {
            let removed = self.tenant(name).and_then(|tenant| {
                self.tenants
                    .remove(name)
                    .map_err(BrokerError::InvalidRequest)?;
                Ok(tenant)
            });
            let tenant = match removed {
                Ok(t) => t,
                Err(e) => {
                    let _ = reply.send(Err(e));
                    return;
                }
            };
            self.pipeline
                .batch()
                .namespaces
                .push((name.to_string(), None));
            info!(namespace = %tenant.name, rooms = tenant.usage.rooms(), "namespace deleted");
        }
        let count = self.delete_namespace_here(name);
        if self.pipeline.batch_is_empty() {
            let _ = reply.send(Ok(count));
            return;
        }
        self.pipeline.after_sync(PendingConfirm {
            session: Uuid::nil(),
            reply: PendingReply::Notify(reply, count),
            permit: RequestSlot::none(),
            then_pump: None,
            received: None,
        });
    }

    /// Closes this shard's sessions of namespace `name` and deletes its
    /// rooms of it; returns how many rooms.
    fn delete_namespace_here(&mut self, name: &str) -> u64 {
        let sessions: Vec<Uuid> = self
            .outlet
            .sessions
            .iter()
            .filter(|(_, s)| &*s.info.namespace == name)
            .map(|(id, _)| *id)
            .collect();
        for id in &sessions {
            self.close_session(*id, BrokerError::NamespaceDeleted(name.to_string()));
        }
        let rooms: Vec<RoomId> = self
            .rooms
            .in_namespace(name)
            .map(|r| r.values().copied().collect())
            .unwrap_or_default();
        for id in &rooms {
            self.delete_room(*id);
        }
        self.rooms.forget_namespace(name);
        self.dedup.forget_namespace(name);
        self.refresh_retention();
        rooms.len() as u64
    }

    /// Sends `error` (fatal) to a session and forgets it; its writer closes
    /// the connection once the error is written.
    fn close_session(&mut self, id: Uuid, error: BrokerError) {
        if let Some(s) = self.outlet.sessions.get(&id) {
            let frame = pb::ServerFrame {
                request_id: 0,
                body: Some(pb::server_frame::Body::Error(error.into())),
            };
            if s.tx
                .try_send(Outbound::Reply {
                    frame: Box::new(frame),
                    permit: None,
                })
                .is_err()
            {
                s.kill.cancel();
            }
        }
        self.unregister(id);
    }

    /// Closes session `id` on this shard (every shard is asked).
    pub(super) fn kick(&mut self, id: Uuid) -> Result<pb::AdminOk, BrokerError> {
        if !self.outlet.sessions.contains_key(&id) {
            return Err(BrokerError::SessionNotFound(id));
        }
        if self.shard == 0 {
            info!(session = %id, "session kicked");
        }
        self.close_session(id, BrokerError::Kicked);
        Ok(pb::AdminOk {
            count: 1,
            ..Default::default()
        })
    }

    /// Deletes a room: its members are told (a non-fatal NOT_FOUND push),
    /// its data goes with the next commit.
    fn delete_room(&mut self, id: RoomId) {
        let Some(room) = self.rooms.remove(id) else {
            return;
        };
        for c in room.members.values().flat_map(|m| m.consumers.iter()) {
            if let Some(s) = self.outlet.sessions.get_mut(&c.session) {
                s.remove_membership(&room.name, &c.label);
            }
            let deleted = BrokerError::RoomDeleted {
                room: room.name.clone(),
                subscription: c.label.clone(),
            };
            self.push_error(c.session, deleted);
        }
        self.pipeline.forget_room(id);
        self.pipeline.batch().deleted_rooms.push(id);
        if let Some(t) = self.tenants.get(&room.namespace) {
            t.usage.remove_stored(room.stored_bytes);
            t.usage.remove_rooms(1);
        }
        info!(namespace = %room.namespace, room = %room.name, "room deleted");
    }

    /// Purges a room; returns how many messages it held.
    fn purge_room(&mut self, id: RoomId, tenant: &Tenant) -> u64 {
        let Some(room) = self.rooms.get(&id) else {
            return 0;
        };
        let floor = room.last_seq + 1;
        let purged = floor.saturating_sub(room.first_seq);
        let bytes = room.stored_bytes;
        info!(namespace = %room.namespace, room = %room.name, purged, "room purged");
        self.trim_room(id, floor, bytes, tenant);
        purged
    }

    /// This shard's rooms (of `namespace`, or all), by (namespace, name),
    /// as many as fit in `budget` encoded bytes.
    pub(super) fn room_infos(&mut self, namespace: Option<&str>, budget: usize) -> pb::AdminOk {
        let now = Instant::now();
        let mut ids: Vec<RoomId> = match namespace {
            Some(ns) => self
                .rooms
                .in_namespace(ns)
                .map(|r| r.values().copied().collect())
                .unwrap_or_default(),
            None => self.rooms.ids().collect(),
        };
        ids.sort_by_cached_key(|id| {
            self.rooms
                .get(id)
                .map(|r| (r.namespace.clone(), r.name.clone()))
        });
        let mut used = 0;
        let mut rooms = Vec::new();
        let mut truncated = false;
        for id in ids {
            let Some(room) = self.rooms.get_mut(&id) else {
                continue;
            };
            let members = room
                .members
                .iter()
                .map(|(key, m)| pb::MemberInfo {
                    name: match key {
                        MemberKey::Durable(n) => n.to_string(),
                        MemberKey::Ephemeral(..) | MemberKey::Group(_) => String::new(),
                    },
                    group: match key {
                        MemberKey::Group(g) => g.to_string(),
                        _ => String::new(),
                    },
                    consumers: u32::try_from(m.consumers.len()).unwrap_or(u32::MAX),
                    durable: m.durable,
                    connected: m.connected(),
                    session_id: m
                        .consumers
                        .first()
                        .map(|c| bytes::Bytes::copy_from_slice(c.session.as_bytes()))
                        .unwrap_or_default(),
                    // The lowest seq not yet acknowledged.
                    next_seq: m.unacked.keys().next().copied().unwrap_or(m.next_seq),
                    // Not yet delivered, plus delivered and not acknowledged.
                    backlog: (room.committed_seq + 1).saturating_sub(m.next_seq)
                        + m.unacked.len() as u64,
                    unacked: u32::try_from(m.unacked.len()).unwrap_or(u32::MAX),
                })
                .collect();
            let info = pb::AdminRoomInfo {
                namespace: room.namespace.to_string(),
                name: room.name.to_string(),
                first_seq: room.first_seq,
                last_seq: room.committed_seq,
                stored_bytes: room.stored_bytes,
                publish_rate: room.rate.rate(now),
                members,
            };
            used += info.encoded_len() + 8;
            if used > budget {
                truncated = true;
                break;
            }
            rooms.push(info);
        }
        pb::AdminOk {
            rooms,
            truncated,
            ..Default::default()
        }
    }
}

fn no_room(ns: &str, name: &str) -> BrokerError {
    BrokerError::RoomNotFound {
        namespace: ns.to_string(),
        room: name.to_string(),
    }
}
