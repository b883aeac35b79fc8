//! Retention: a namespace's rules bound what each room keeps (messages,
//! bytes, age). Every `storage.retention_interval_ms` the actor trims the
//! oldest committed messages past a bound; their log values are deleted
//! with the next commit, so sled can reuse the space. Members left behind
//! are moved up and owed a gap notice (see `room::Member::trim`). Purges
//! and redrives trim through the same path.

use std::time::Duration;

use tokio::time::Instant;
use tracing::info;

use super::{now_ms, Broker};
use crate::config::RetentionRule;
use crate::storage::{RoomId, RoomStats};
use crate::tenancy::{pattern, Tenant};

/// Most messages one room is trimmed by in one sweep; the rest waits for
/// the next, so a sweep never stalls the actor for long.
pub const MAX_TRIM_PER_SWEEP: usize = 4_096;

/// The rule that applies to `room`, if any.
pub fn rule_for<'a>(rules: &'a [RetentionRule], room: &str) -> Option<&'a RetentionRule> {
    rules.iter().find(|r| pattern::matches(&r.rooms, room))
}

impl Broker {
    /// Whether any namespace has retention rules (then the actor wakes
    /// for its sweeps).
    pub(super) fn refresh_retention(&mut self) {
        self.retention_active = self
            .tenants
            .list()
            .iter()
            .any(|t| !t.policy().retention.is_empty());
    }

    /// Runs a retention sweep if one is due.
    pub(super) fn maybe_trim(&mut self) {
        let now = Instant::now();
        if !self.retention_active || now < self.next_retention {
            return;
        }
        self.next_retention =
            now + Duration::from_millis(self.config.storage.retention_interval_ms);
        let wall = now_ms();
        for tenant in self.tenants.list() {
            let policy = tenant.policy();
            if policy.retention.is_empty() {
                continue;
            }
            let rooms: Vec<(RoomId, RetentionRule)> = match self.namespaces.get(&tenant.name) {
                Some(rooms) => rooms
                    .iter()
                    .filter_map(|(name, id)| {
                        rule_for(&policy.retention, name).map(|r| (*id, r.clone()))
                    })
                    .collect(),
                None => continue,
            };
            for (id, rule) in rooms {
                self.apply_retention(id, &rule, wall, &tenant);
            }
        }
    }

    /// Trims room `id` down to `rule`.
    fn apply_retention(&mut self, id: RoomId, rule: &RetentionRule, wall: u64, tenant: &Tenant) {
        let Some(room) = self.rooms.get(&id) else {
            return;
        };
        let first = room.first_seq;
        let committed = room.committed_seq;
        let stored = room.stored_bytes;
        if first > committed {
            return;
        }
        // Keeping `max_messages` means keeping seqs from this one on.
        let count_floor = match rule.max_messages {
            0 => 0,
            n => (committed + 1).saturating_sub(n),
        };
        let over_bytes = rule.max_bytes > 0 && stored > rule.max_bytes;
        let oldest_may_be_old = rule.max_age_ms > 0;
        if count_floor <= first && !over_bytes && !oldest_may_be_old {
            return;
        }
        // Read in small chunks: usually only the oldest few are looked at.
        let mut floor = first;
        let mut bytes = 0u64;
        'sweep: while floor <= committed && floor - first < MAX_TRIM_PER_SWEEP as u64 {
            let msgs = match self.store.read(id, floor, 256, usize::MAX) {
                Ok(m) => m,
                Err(e) => {
                    tracing::error!(room_id = id, error = %e, "retention cannot read the room; not trimmed");
                    return;
                }
            };
            if msgs.is_empty() {
                break;
            }
            for m in msgs {
                if m.seq > committed {
                    break 'sweep;
                }
                let too_many = m.seq < count_floor;
                let too_big = rule.max_bytes > 0 && stored.saturating_sub(bytes) > rule.max_bytes;
                let too_old = rule.max_age_ms > 0
                    && m.info.timestamp_ms.saturating_add(rule.max_age_ms) <= wall;
                if !(too_many || too_big || too_old) {
                    break 'sweep;
                }
                floor = m.seq + 1;
                bytes += m.encoded.len() as u64;
            }
        }
        if floor > first {
            if let Some(room) = self.rooms.get(&id) {
                info!(namespace = %room.namespace, room = %room.name, from = first, to = floor - 1, "retention trimmed the log");
            }
            self.trim_room(id, floor, bytes, tenant);
        }
    }

    /// Deletes the messages of room `id` below `floor` (`bytes` of them):
    /// moves its members up (owing them gap notices, sent now to those
    /// connected) and writes the new floor with the next commit.
    pub(super) fn trim_room(&mut self, id: RoomId, floor: u64, bytes: u64, tenant: &Tenant) {
        let Some(room) = self.rooms.get_mut(&id) else {
            return;
        };
        room.trim(floor, bytes);
        let stats = RoomStats {
            first_seq: room.first_seq,
            stored_bytes: room.stored_bytes,
        };
        for (key, m) in &room.members {
            if m.durable {
                self.dirty.insert((id, key.clone()));
            }
        }
        tenant.usage.remove_stored(bytes);
        self.open.write.room_stats.push((id, stats));
        self.open.write.purged.push(id);
        self.pump_room(id);
    }
}
