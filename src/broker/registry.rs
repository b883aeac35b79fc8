//! The room registry: the rooms one shard owns, by id and by (namespace,
//! name). A room is created on first use (where its namespace allows it,
//! within its room quota, counted per namespace across shards in
//! `tenancy::Usage`) and written with the next batch. Ids come from one
//! allocator shared by the shards; an id is not given twice while the
//! broker runs (after a restart, the id of a room that was created and
//! deleted may come back: all its keys went with the deleting batch).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tracing::info;

use super::error::BrokerError;
use super::room::{Member, MemberKey, Room};
use crate::metrics::Quota;
use crate::storage::{RoomId, WriteBatch};
use crate::tenancy::Tenant;

/// The rooms of one actor.
#[derive(Debug)]
pub struct Registry {
    rooms: HashMap<RoomId, Room>,
    /// namespace → room name → id.
    names: HashMap<Arc<str>, HashMap<Arc<str>, RoomId>>,
    /// The lowest id never given to a room, shared by every shard.
    next_id: Arc<AtomicU64>,
}

/// The room id allocator the shards share; its first id is `next_id` (at
/// least 1).
pub fn room_ids(next_id: RoomId) -> Arc<AtomicU64> {
    Arc::new(AtomicU64::new(next_id.max(1)))
}

impl Registry {
    /// An empty registry whose new rooms take their ids from `next_id`
    /// (see [`room_ids`]).
    pub fn new(next_id: Arc<AtomicU64>) -> Self {
        Registry {
            rooms: HashMap::new(),
            names: HashMap::new(),
            next_id,
        }
    }

    /// Adds a room found on disk.
    pub fn restore(&mut self, room: Room) {
        self.next_id.fetch_max(room.id + 1, Ordering::AcqRel);
        self.names
            .entry(room.namespace.clone())
            .or_default()
            .insert(room.name.clone(), room.id);
        self.rooms.insert(room.id, room);
    }

    pub fn get(&self, id: &RoomId) -> Option<&Room> {
        self.rooms.get(id)
    }

    pub fn get_mut(&mut self, id: &RoomId) -> Option<&mut Room> {
        self.rooms.get_mut(id)
    }

    /// Member `key` of room `id`, which a session's membership names; gone
    /// if the room or member went away meanwhile.
    pub fn member_mut(&mut self, id: &RoomId, key: &MemberKey) -> Result<&mut Member, BrokerError> {
        self.rooms
            .get_mut(id)
            .and_then(|r| r.members.get_mut(key))
            .ok_or(BrokerError::MembershipGone)
    }

    /// How many rooms there are.
    pub fn len(&self) -> usize {
        self.rooms.len()
    }

    /// Every room, by id.
    pub fn iter(&self) -> impl Iterator<Item = (&RoomId, &Room)> {
        self.rooms.iter()
    }

    /// Every room, to change.
    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut Room> {
        self.rooms.values_mut()
    }

    /// The ids of every room.
    pub fn ids(&self) -> impl Iterator<Item = RoomId> + '_ {
        self.rooms.keys().copied()
    }

    /// The rooms of `namespace`, by name.
    pub fn in_namespace(&self, namespace: &str) -> Option<&HashMap<Arc<str>, RoomId>> {
        self.names.get(namespace)
    }

    /// How many rooms `namespace` has on this shard.
    pub fn count(&self, namespace: &str) -> usize {
        self.names.get(namespace).map_or(0, |r| r.len())
    }

    /// The room `name` of `namespace`, if it exists.
    pub fn find(&self, namespace: &str, name: &str) -> Option<RoomId> {
        self.names.get(namespace)?.get(name).copied()
    }

    /// Checks that a session of `tenant` may use `names`: rooms that do not
    /// exist must be creatable on first use and within the room quota. The
    /// rooms missing are reserved in the namespace's count (every shard's
    /// rooms), so the caller then creates them all ([`Registry::create`])
    /// or gives them back (`Usage::remove_rooms`). Returns how many it
    /// reserved.
    pub fn check<'a>(
        &self,
        tenant: &Tenant,
        names: impl IntoIterator<Item = &'a str>,
    ) -> Result<u64, BrokerError> {
        let missing: Vec<&str> = names
            .into_iter()
            .filter(|n| self.find(&tenant.name, n).is_none())
            .collect();
        let Some(first) = missing.first() else {
            return Ok(0);
        };
        let policy = tenant.policy();
        if !policy.create_rooms {
            return Err(BrokerError::RoomNotCreated {
                namespace: tenant.name.to_string(),
                room: first.to_string(),
            });
        }
        let max = u64::from(policy.quotas.max_rooms);
        if !tenant.usage.reserve_rooms(missing.len() as u64, max) {
            tenant.metrics.quota_refused(Quota::Rooms);
            return Err(BrokerError::QuotaExceeded {
                quota: Quota::Rooms,
                detail: format!("namespace {} has its maximum of {max} rooms", tenant.name),
            });
        }
        Ok(missing.len() as u64)
    }

    /// The room `name` of `namespace`, created (and added to `batch`) if it
    /// is new; callers [`Registry::check`] first, which counts it.
    pub fn create(&mut self, namespace: &Arc<str>, name: &str, batch: &mut WriteBatch) -> RoomId {
        if let Some(id) = self.find(namespace, name) {
            return id;
        }
        let id = self.next_id.fetch_add(1, Ordering::AcqRel);
        // The allocator's value now; another shard may write a larger one
        // first, and recovery takes the larger of this and the highest
        // stored id + 1.
        batch.next_room_id = Some(self.next_id.load(Ordering::Acquire));
        let name: Arc<str> = Arc::from(name);
        self.names
            .entry(namespace.clone())
            .or_default()
            .insert(name.clone(), id);
        self.rooms
            .insert(id, Room::new(id, namespace.clone(), name.clone(), 0));
        batch.new_rooms.push((id, namespace.clone(), name.clone()));
        info!(namespace = %namespace, room = %name, "room created");
        id
    }

    /// The room `name` of `namespace`, created if it is new and counted in
    /// `tenant`'s rooms without a quota check: a dead-letter room, a
    /// redrive's target, a room made through `/admin`.
    pub fn create_counted(
        &mut self,
        tenant: Option<&Tenant>,
        namespace: &Arc<str>,
        name: &str,
        batch: &mut WriteBatch,
    ) -> RoomId {
        if let Some(id) = self.find(namespace, name) {
            return id;
        }
        if let Some(t) = tenant {
            t.usage.add_rooms(1);
        }
        self.create(namespace, name, batch)
    }

    /// Takes room `id` out (it is being deleted).
    pub fn remove(&mut self, id: RoomId) -> Option<Room> {
        let room = self.rooms.remove(&id)?;
        if let Some(names) = self.names.get_mut(&room.namespace) {
            names.remove(&room.name);
        }
        Some(room)
    }

    /// Forgets namespace `name` (its rooms were removed).
    pub fn forget_namespace(&mut self, name: &str) {
        self.names.remove(name);
    }
}
