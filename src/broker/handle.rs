//! The way in to the broker's shards: [`BrokerHandle`], a cheap cloneable
//! handle over one bounded command queue per shard. Single-room requests go
//! to the room's shard ([`shard_of`]); what concerns every shard is sent to
//! each (a session's `Register`, `Unregister` and `Writable`), and what
//! every shard answers for its own rooms is gathered here and merged (stats,
//! room lists, a kick, a namespace's deletion). Merging is exact because a
//! room lives on one shard: per-room figures are disjoint and add up, while
//! sessions, registered on every shard, are counted from one.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use roomq_wire::pb;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::error::{BrokerError, BrokerGone};
use super::placement::shard_of;
use super::Command;
use crate::session::{Outbound, SessionInfo};

/// A cheap, cloneable way to reach the broker's shards.
#[derive(Debug, Clone)]
pub struct BrokerHandle {
    shards: Arc<[mpsc::Sender<Command>]>,
}

impl BrokerHandle {
    /// A handle over the shards' command queues, shard 0 first.
    pub fn new(shards: Vec<mpsc::Sender<Command>>) -> Self {
        BrokerHandle {
            shards: shards.into(),
        }
    }

    /// How many shards there are.
    pub fn shards(&self) -> usize {
        self.shards.len()
    }

    /// The shard that owns room `room` of `namespace`.
    pub fn shard_of(&self, namespace: &str, room: &str) -> usize {
        shard_of(namespace, room, self.shards.len())
    }

    /// Sends a command to shard `shard`, waiting for room in its queue.
    /// Fails only when the broker has stopped.
    pub async fn send_to(&self, shard: usize, cmd: Command) -> Result<(), BrokerGone> {
        let tx = self.shards.get(shard).ok_or(BrokerGone)?;
        tx.send(cmd).await.map_err(|_| BrokerGone)
    }

    /// Sends `make()`'s command to every shard, in order.
    async fn broadcast(&self, make: impl Fn() -> Command) -> Result<(), BrokerGone> {
        for tx in self.shards.iter() {
            tx.send(make()).await.map_err(|_| BrokerGone)?;
        }
        Ok(())
    }

    /// Sends every shard the command `make` builds around a reply channel,
    /// then waits for every answer (shard 0's first).
    async fn gather<T>(
        &self,
        make: impl Fn(oneshot::Sender<T>) -> Command,
    ) -> Result<Vec<T>, BrokerGone> {
        let mut waiting = Vec::with_capacity(self.shards.len());
        for tx in self.shards.iter() {
            let (reply, answer) = oneshot::channel();
            tx.send(make(reply)).await.map_err(|_| BrokerGone)?;
            waiting.push(answer);
        }
        let mut answers = Vec::with_capacity(waiting.len());
        for answer in waiting {
            answers.push(answer.await.map_err(|_| BrokerGone)?);
        }
        Ok(answers)
    }

    /// Registers a session whose handshake is done with every shard.
    /// `Some(resumed)`: whether any shard holds durable state of its client;
    /// `None`: the namespace was deleted meanwhile (then no shard keeps it).
    pub async fn register(
        &self,
        info: &Arc<SessionInfo>,
        tx: &mpsc::Sender<Outbound>,
        blocked: &Arc<AtomicBool>,
        kill: &CancellationToken,
    ) -> Result<Option<bool>, BrokerGone> {
        let answers = self
            .gather(|reply| Command::Register {
                info: info.clone(),
                tx: tx.clone(),
                blocked: blocked.clone(),
                kill: kill.clone(),
                reply,
            })
            .await?;
        if answers.iter().any(Option::is_none) {
            self.unregister(info.id).await?;
            return Ok(None);
        }
        Ok(Some(answers.into_iter().any(|a| a == Some(true))))
    }

    /// The session's connection is gone: every shard lets it go.
    pub async fn unregister(&self, session: Uuid) -> Result<(), BrokerGone> {
        self.broadcast(|| Command::Unregister { session }).await
    }

    /// The session's queue, once full, has drained: every shard delivers
    /// what waited for it.
    pub async fn writable(&self, session: Uuid) -> Result<(), BrokerGone> {
        self.broadcast(|| Command::Writable { session }).await
    }

    /// The broker's figures, with at most `max_rooms` rooms in `order`,
    /// gathered from every shard.
    pub async fn stats(
        &self,
        max_rooms: usize,
        order: pb::StatsOrder,
    ) -> Result<pb::BrokerStats, BrokerGone> {
        let parts = self
            .gather(|reply| Command::Stats {
                max_rooms,
                order,
                reply,
            })
            .await?;
        Ok(merge_stats(parts, max_rooms, order))
    }

    /// The rooms of `namespace` on every shard, by name.
    pub async fn list_rooms(&self, namespace: &Arc<str>) -> Result<Vec<pb::RoomInfo>, BrokerGone> {
        let parts = self
            .gather(|reply| Command::ListRooms {
                namespace: namespace.clone(),
                reply,
            })
            .await?;
        let mut rooms: Vec<pb::RoomInfo> = parts.into_iter().flatten().collect();
        rooms.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(rooms)
    }

    /// `/admin`'s room list (of `namespace`, or of all), within `budget`
    /// encoded bytes.
    pub async fn admin_rooms(
        &self,
        namespace: Option<String>,
        budget: usize,
    ) -> Result<pb::AdminOk, BrokerGone> {
        let parts = self
            .gather(|reply| Command::AdminRooms {
                namespace: namespace.clone(),
                budget,
                reply,
            })
            .await?;
        Ok(merge_admin_rooms(parts, budget))
    }

    /// Closes session `id` on every shard; whether any had it.
    pub async fn kick(&self, id: Uuid) -> Result<bool, BrokerGone> {
        let found = self
            .gather(|reply| Command::Kick { session: id, reply })
            .await?;
        Ok(found.into_iter().any(|f| f))
    }

    /// Deletes namespace `name`: shard 0 checks it may, removes it from the
    /// tenants, and writes its record; then every other shard deletes its
    /// rooms of it. Answered once every shard has synced; the count is the
    /// rooms deleted.
    pub async fn delete_namespace(
        &self,
        name: &str,
    ) -> Result<Result<u64, BrokerError>, BrokerGone> {
        let (reply, answer) = oneshot::channel();
        self.send_to(
            0,
            Command::DeleteNamespace {
                name: name.to_string(),
                primary: true,
                reply,
            },
        )
        .await?;
        let mut count = match answer.await.map_err(|_| BrokerGone)? {
            Ok(n) => n,
            Err(e) => return Ok(Err(e)),
        };
        let mut waiting = Vec::new();
        for shard in 1..self.shards.len() {
            let (reply, answer) = oneshot::channel();
            let cmd = Command::DeleteNamespace {
                name: name.to_string(),
                primary: false,
                reply,
            };
            self.send_to(shard, cmd).await?;
            waiting.push(answer);
        }
        for answer in waiting {
            match answer.await.map_err(|_| BrokerGone)? {
                Ok(n) => count += n,
                Err(e) => return Ok(Err(e)),
            }
        }
        Ok(Ok(count))
    }
}

/// The key a room is listed by in `order`, largest first.
fn stats_key(room: &pb::RoomStats, order: pb::StatsOrder) -> f64 {
    match order {
        pb::StatsOrder::Backlog => room.backlog as f64,
        pb::StatsOrder::PublishRate => room.publish_rate,
    }
}

/// One set of figures from every shard's: rooms are disjoint (each shard
/// sent its top `max_rooms`, so the top of all is among them), per-namespace
/// room and member counts add up; sessions, registered on every shard, and
/// the process-wide counters are taken from shard 0.
pub fn merge_stats(
    parts: Vec<pb::BrokerStats>,
    max_rooms: usize,
    order: pb::StatsOrder,
) -> pb::BrokerStats {
    let mut parts = parts.into_iter();
    let Some(mut all) = parts.next() else {
        return pb::BrokerStats::default();
    };
    let mut index: HashMap<String, usize> = all
        .namespaces
        .iter()
        .enumerate()
        .map(|(i, n)| (n.name.clone(), i))
        .collect();
    for part in parts {
        all.rooms_total += part.rooms_total;
        all.dedup_ids += part.dedup_ids;
        all.rooms.extend(part.rooms);
        for ns in part.namespaces {
            match index.get(&ns.name).and_then(|i| all.namespaces.get_mut(*i)) {
                Some(have) => {
                    have.rooms += ns.rooms;
                    have.members += ns.members;
                }
                None => {
                    // Created between two shards' answers.
                    index.insert(ns.name.clone(), all.namespaces.len());
                    all.namespaces.push(ns);
                }
            }
        }
    }
    all.rooms.sort_by(|a, b| {
        stats_key(b, order)
            .total_cmp(&stats_key(a, order))
            .then_with(|| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)))
    });
    all.rooms.truncate(max_rooms);
    all
}

/// One `/admin` room list from every shard's, each sorted by (namespace,
/// name) and cut at the budget. Where a shard's list was cut, rooms that
/// sort after its last one may be missing from it, so the merged list
/// ends there too.
pub fn merge_admin_rooms(parts: Vec<pb::AdminOk>, budget: usize) -> pb::AdminOk {
    use prost::Message as _;
    let mut truncated = false;
    let mut cut: Option<(String, String)> = None;
    let mut rooms = Vec::new();
    for part in parts {
        if part.truncated {
            truncated = true;
            let last = part
                .rooms
                .last()
                .map(|r| (r.namespace.clone(), r.name.clone()))
                .unwrap_or_default();
            cut = Some(match cut {
                Some(c) if c <= last => c,
                _ => last,
            });
        }
        rooms.extend(part.rooms);
    }
    rooms.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    if let Some((ns, name)) = &cut {
        rooms.retain(|r| (&r.namespace, &r.name) <= (ns, name));
    }
    let mut used = 0;
    let mut fit = rooms.len();
    for (i, r) in rooms.iter().enumerate() {
        used += r.encoded_len() + 8;
        if used > budget {
            fit = i;
            truncated = true;
            break;
        }
    }
    rooms.truncate(fit);
    pb::AdminOk {
        rooms,
        truncated,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(ns: &str, name: &str, backlog: u64) -> pb::RoomStats {
        pb::RoomStats {
            namespace: ns.into(),
            name: name.into(),
            backlog,
            ..Default::default()
        }
    }

    #[test]
    fn stats_add_rooms_and_count_sessions_once() {
        let ns = |rooms, members| pb::NamespaceStats {
            name: "/".into(),
            sessions: 3,
            rooms,
            members,
            ..Default::default()
        };
        let a = pb::BrokerStats {
            rooms_total: 2,
            connections_tcp: 3,
            namespaces: vec![ns(2, 4)],
            rooms: vec![room("/", "a", 5), room("/", "b", 1)],
            dedup_ids: 10,
            ..Default::default()
        };
        let b = pb::BrokerStats {
            rooms_total: 1,
            connections_tcp: 3,
            namespaces: vec![ns(1, 2)],
            rooms: vec![room("/", "c", 3)],
            dedup_ids: 5,
            ..Default::default()
        };
        let m = merge_stats(vec![a, b], 2, pb::StatsOrder::Backlog);
        assert_eq!(m.rooms_total, 3);
        assert_eq!(m.connections_tcp, 3);
        assert_eq!(m.dedup_ids, 15);
        let names: Vec<&str> = m.rooms.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["a", "c"]);
        let n = &m.namespaces[0];
        assert_eq!((n.sessions, n.rooms, n.members), (3, 3, 6));
    }

    #[test]
    fn admin_rooms_end_where_a_cut_shard_ended() {
        let info = |name: &str| pb::AdminRoomInfo {
            namespace: "/".into(),
            name: name.into(),
            ..Default::default()
        };
        let a = pb::AdminOk {
            rooms: vec![info("a"), info("c")],
            truncated: true,
            ..Default::default()
        };
        let b = pb::AdminOk {
            rooms: vec![info("b"), info("d")],
            ..Default::default()
        };
        let m = merge_admin_rooms(vec![a, b], 1 << 20);
        let names: Vec<&str> = m.rooms.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert!(m.truncated);
    }
}
