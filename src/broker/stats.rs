//! `Stats`: a snapshot of the broker's figures, for the admin `Stats` op
//! (`roomq stats`, `roomq top`) and for `/metrics`, which sets its gauges
//! from it. Counters come from the metrics registry; rooms, members and
//! backlogs from the actor's tables, read in one pass. Only the top
//! `max_rooms` rooms (by backlog or by publish rate) are kept, chosen with a
//! partial sort, so a broker with many rooms answers with a bounded reply.

use std::collections::HashMap;
use std::sync::Arc;

use roomq_wire::pb;
use tokio::time::Instant;

use super::clock::now_ms;
use super::core::Broker;
use super::outlet::DeliveryTally;
use super::room::Room;
use crate::metrics::summary;
use crate::transport::Transport;

/// Stored messages of `room` not yet acked by its slowest durable member.
fn backlog(room: &Room) -> u64 {
    room.members
        .values()
        .filter(|m| m.durable)
        .map(|m| {
            let floor = m.ack_floor().max(room.first_seq);
            (room.committed_seq + 1).saturating_sub(floor)
        })
        .max()
        .unwrap_or(0)
}

impl Broker {
    /// Adds what one pump handed out to the room's namespace's counters.
    pub(super) fn count_deliveries(&self, namespace: &str, tally: DeliveryTally, expired: u64) {
        if !self.metrics.enabled {
            return;
        }
        if let Some(t) = self.tenants.get(namespace) {
            t.metrics.deliveries.inc_by(tally.delivered);
            t.metrics.redeliveries.inc_by(tally.redelivered);
            t.metrics.expired.inc_by(expired);
        }
    }

    /// The broker's figures, with at most `max_rooms` rooms in `order`.
    pub(super) fn stats(&mut self, max_rooms: usize, order: pb::StatsOrder) -> pb::BrokerStats {
        let now = Instant::now();
        let (mut tcp, mut ws) = (0u32, 0u32);
        let mut sessions: HashMap<Arc<str>, u32> = HashMap::new();
        for s in self.outlet.sessions.values() {
            match s.info.transport {
                Transport::Tcp => tcp += 1,
                Transport::WebSocket => ws += 1,
            }
            *sessions.entry(s.info.namespace.clone()).or_default() += 1;
        }
        let mut members: HashMap<Arc<str>, u64> = HashMap::new();
        let mut rooms: Vec<pb::RoomStats> = Vec::new();
        let mut keys: Vec<(f64, usize)> = Vec::with_capacity(self.rooms.len());
        let mut all: Vec<&mut Room> = self.rooms.values_mut().collect();
        for (i, room) in all.iter_mut().enumerate() {
            *members.entry(room.namespace.clone()).or_default() += room.members.len() as u64;
            let key = match order {
                pb::StatsOrder::Backlog => backlog(room) as f64,
                pb::StatsOrder::PublishRate => room.rate.rate(now),
            };
            keys.push((key, i));
        }
        // Largest first; ties by name so the order is stable.
        let by = |a: &(f64, usize), b: &(f64, usize)| b.0.total_cmp(&a.0);
        if keys.len() > max_rooms {
            if max_rooms > 0 {
                keys.select_nth_unstable_by(max_rooms - 1, by);
            }
            keys.truncate(max_rooms);
        }
        keys.sort_by(|a, b| {
            by(a, b).then_with(|| match (all.get(a.1), all.get(b.1)) {
                (Some(x), Some(y)) => (&x.namespace, &x.name).cmp(&(&y.namespace, &y.name)),
                _ => std::cmp::Ordering::Equal,
            })
        });
        for (_, i) in keys {
            let Some(room) = all.get_mut(i) else {
                continue;
            };
            rooms.push(pb::RoomStats {
                namespace: room.namespace.to_string(),
                name: room.name.to_string(),
                last_seq: room.committed_seq,
                publish_rate: room.rate.rate(now),
                backlog: backlog(room),
                members: u32::try_from(room.members.len()).unwrap_or(u32::MAX),
                connected_members: u32::try_from(
                    room.members.values().filter(|m| m.connected()).count(),
                )
                .unwrap_or(u32::MAX),
                redeliveries: room.redelivered,
                dead_lettered: room.dead_lettered,
            });
        }
        let namespaces = self
            .tenants
            .list()
            .into_iter()
            .map(|t| {
                let m = &t.metrics;
                pb::NamespaceStats {
                    name: t.name.to_string(),
                    sessions: sessions.get(&t.name).copied().unwrap_or(0),
                    rooms: self.rooms.count(&t.name) as u64,
                    members: members.get(&t.name).copied().unwrap_or(0),
                    published: m.published.get(),
                    stored_bytes: m.stored_bytes.get(),
                    duplicates: m.duplicates.get(),
                    deliveries: m.deliveries.get(),
                    redeliveries: m.redeliveries.get(),
                    acks: m.acks.get(),
                    nacks: m.nacks.get(),
                    dead_lettered: m.dead_lettered_total(),
                    expired: m.expired.get(),
                }
            })
            .collect();
        let metrics = &self.metrics;
        let totals = metrics.totals();
        pb::BrokerStats {
            time_ms: now_ms(),
            uptime_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            connections_tcp: tcp,
            connections_ws: ws,
            storage_bytes: u64::try_from(metrics.storage_bytes.get()).unwrap_or(0),
            rooms_total: self.rooms.len() as u64,
            namespaces,
            rooms,
            commit_flush_seconds: Some(summary(&metrics.commit_flush)),
            commit_batch_messages: Some(summary(&metrics.commit_batch)),
            publish_confirm_seconds: Some(summary(&metrics.publish_confirm)),
            delivery_lag_seconds: Some(summary(&metrics.delivery_lag)),
            errors: totals.errors,
            handshakes_refused: totals.handshakes_refused,
            slow_consumer_disconnects: metrics.slow_consumer_disconnects.get(),
            quota_refusals: totals.quota_refusals,
            dedup_ids: self.dedup.len() as u64,
            dedup_evicted: metrics.dedup_evicted.get(),
        }
    }
}
