//! Retention: a namespace's rules bound what each room keeps (messages,
//! bytes, age). Every `storage.retention_interval_ms` the actor trims the
//! oldest committed messages past a bound; their log values are deleted
//! with the next commit, so sled can reuse the space. Members left behind
//! are moved up and owed a gap notice (see `room::Member::trim`). Purges
//! and redrives trim through the same path.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::info;

use super::clock::now_ms;
use super::core::Broker;
use super::reads::StoreEvent;
use crate::config::RetentionRule;
use crate::storage::{RoomId, RoomStats, Store, StoredMessage};
use crate::tenancy::{pattern, Tenant};

/// Most messages one room is trimmed by in one sweep; the rest waits for
/// the next, so a sweep never stalls the actor for long.
pub const MAX_TRIM_PER_SWEEP: usize = 4_096;

/// The rule that applies to `room`, if any.
pub fn rule_for<'a>(rules: &'a [RetentionRule], room: &str) -> Option<&'a RetentionRule> {
    rules.iter().find(|r| pattern::matches(&r.rooms, room))
}

/// When retention next sweeps, and the rooms whose stored log is being
/// scanned for it.
#[derive(Debug)]
pub struct RetentionState {
    /// Some namespace has retention rules.
    active: bool,
    /// When the next sweep is due.
    next: Instant,
    /// Rooms whose scan of the stored log is running.
    scans: HashSet<RoomId>,
    /// `Tenants::generation` when `active` was last worked out.
    pub generation: u64,
}

impl Default for RetentionState {
    fn default() -> Self {
        RetentionState {
            active: false,
            next: Instant::now(),
            scans: HashSet::new(),
            generation: 0,
        }
    }
}

impl RetentionState {
    /// When the next sweep is due, if any namespace has rules.
    pub fn next_sweep(&self) -> Option<Instant> {
        self.active.then_some(self.next)
    }
}

impl Broker {
    /// Whether any namespace has retention rules (then the actor wakes
    /// for its sweeps).
    pub(super) fn refresh_retention(&mut self) {
        self.retention.generation = self.tenants.generation();
        self.retention.active = self
            .tenants
            .list()
            .iter()
            .any(|t| !t.policy().retention.is_empty());
    }

    /// Runs a retention sweep if one is due.
    pub(super) fn maybe_trim(&mut self) {
        let now = Instant::now();
        if !self.retention.active || now < self.retention.next {
            return;
        }
        self.retention.next =
            now + Duration::from_millis(self.config.storage.retention_interval_ms);
        let wall = now_ms();
        for tenant in self.tenants.list() {
            let policy = tenant.policy();
            if policy.retention.is_empty() {
                continue;
            }
            let rooms: Vec<(RoomId, RetentionRule)> = match self.rooms.in_namespace(&tenant.name) {
                Some(rooms) => rooms
                    .iter()
                    .filter_map(|(name, id)| {
                        rule_for(&policy.retention, name).map(|r| (*id, r.clone()))
                    })
                    .collect(),
                None => continue,
            };
            for (id, rule) in rooms {
                self.apply_retention(id, &rule, wall);
            }
        }
    }

    /// Trims room `id` down to `rule`: from what the room has cached if
    /// its oldest messages are there, otherwise after a scan of the stored
    /// log beside the actor ([`StoreEvent::Retention`]).
    fn apply_retention(&mut self, id: RoomId, rule: &RetentionRule, wall: u64) {
        if self.retention.scans.contains(&id) {
            return;
        }
        let Some(room) = self.rooms.get(&id) else {
            return;
        };
        let first = room.first_seq;
        let committed = room.committed_seq;
        if first > committed {
            return;
        }
        let mut scan = Scan::new(rule, wall, first, committed, room.stored_bytes);
        if !scan.may_trim() {
            return;
        }
        if room.cache.front().is_some_and(|m| m.seq <= first) {
            for m in room.cache.iter().filter(|m| m.seq >= first) {
                if !scan.step(m) {
                    break;
                }
            }
            let (floor, bytes) = (scan.floor, scan.bytes);
            self.retention_scanned(id, first, floor, bytes);
            return;
        }
        self.retention.scans.insert(id);
        let store = self.outlet.reads.store();
        self.outlet.reads.spawn(async move {
            scan.run(store, id).await;
            StoreEvent::Retention {
                room: id,
                first,
                floor: scan.floor,
                bytes: scan.bytes,
            }
        });
    }

    /// Retention found that room `id`'s messages below `floor` (`bytes` of
    /// them) are due to go, looking from `first`. Trims them unless the room
    /// was trimmed meanwhile (the next sweep looks again).
    pub(super) fn retention_scanned(&mut self, id: RoomId, first: u64, floor: u64, bytes: u64) {
        self.retention.scans.remove(&id);
        let Some(room) = self.rooms.get(&id) else {
            return;
        };
        if room.first_seq != first || floor <= first {
            return;
        }
        let Some(tenant) = self.tenants.get(&room.namespace) else {
            return;
        };
        info!(namespace = %room.namespace, room = %room.name, from = first, to = floor - 1, "retention trimmed the log");
        self.trim_room(id, floor, bytes, &tenant);
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
                self.pipeline.mark_dirty(id, key.clone());
            }
        }
        tenant.usage.remove_stored(bytes);
        self.pipeline.batch().room_stats.push((id, stats));
        self.pipeline.batch().purged.push(id);
        self.pump_room(id);
    }
}

/// A retention sweep of one room: walks its oldest messages while they are
/// past the rule's bounds.
#[derive(Debug)]
struct Scan {
    rule: RetentionRule,
    wall: u64,
    first: u64,
    committed: u64,
    stored: u64,
    /// Keeping `max_messages` means keeping seqs from this one on.
    count_floor: u64,
    /// Everything below is due to go.
    floor: u64,
    /// The bytes of the messages below `floor`.
    bytes: u64,
}

impl Scan {
    fn new(rule: &RetentionRule, wall: u64, first: u64, committed: u64, stored: u64) -> Self {
        let count_floor = match rule.max_messages {
            0 => 0,
            n => (committed + 1).saturating_sub(n),
        };
        Scan {
            rule: rule.clone(),
            wall,
            first,
            committed,
            stored,
            count_floor,
            floor: first,
            bytes: 0,
        }
    }

    /// Whether any message may be past a bound (no reading needed to rule
    /// it out).
    fn may_trim(&self) -> bool {
        let over_bytes = self.rule.max_bytes > 0 && self.stored > self.rule.max_bytes;
        self.count_floor > self.first || over_bytes || self.rule.max_age_ms > 0
    }

    /// Looks at the next message; false once the sweep is over.
    fn step(&mut self, m: &StoredMessage) -> bool {
        if m.seq > self.committed || self.floor - self.first >= MAX_TRIM_PER_SWEEP as u64 {
            return false;
        }
        let rule = &self.rule;
        let too_many = m.seq < self.count_floor;
        let too_big = rule.max_bytes > 0 && self.stored.saturating_sub(self.bytes) > rule.max_bytes;
        let too_old =
            rule.max_age_ms > 0 && m.info.timestamp_ms.saturating_add(rule.max_age_ms) <= self.wall;
        if !(too_many || too_big || too_old) {
            return false;
        }
        self.floor = m.seq + 1;
        self.bytes += m.encoded.len() as u64;
        true
    }

    /// Sweeps room `id` in the store.
    async fn run(&mut self, store: Arc<dyn Store>, id: RoomId) {
        while self.floor <= self.committed {
            // Usually only the oldest few are looked at: start small.
            let chunk = if self.floor == self.first { 16 } else { 256 };
            let msgs = match store.read(id, self.floor, chunk, usize::MAX).await {
                Ok(m) => m,
                Err(e) => {
                    tracing::error!(room_id = id, error = %e, "retention cannot read the room; not trimmed");
                    self.floor = self.first;
                    self.bytes = 0;
                    return;
                }
            };
            if msgs.is_empty() {
                return;
            }
            for m in &msgs {
                if !self.step(m) {
                    return;
                }
            }
        }
    }
}
