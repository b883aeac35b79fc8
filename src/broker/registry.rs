//! The room registry: the rooms one actor owns, by id and by (namespace,
//! name), and the ids given to new rooms. A room is created on first use
//! (where its namespace allows it, within its room quota) and written with
//! the next batch; ids are never reused, even after a room is deleted.

use std::collections::HashMap;
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
    /// The lowest id never given to a room.
    next_id: RoomId,
}

impl Registry {
    /// An empty registry whose first new room gets id `next_id` (at least 1).
    pub fn new(next_id: RoomId) -> Self {
        Registry {
            rooms: HashMap::new(),
            names: HashMap::new(),
            next_id: next_id.max(1),
        }
    }

    /// Adds a room found on disk.
    pub fn restore(&mut self, room: Room) {
        self.next_id = self.next_id.max(room.id + 1);
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

    /// How many rooms `namespace` has.
    pub fn count(&self, namespace: &str) -> usize {
        self.names.get(namespace).map_or(0, |r| r.len())
    }

    /// The room `name` of `namespace`, if it exists.
    pub fn find(&self, namespace: &str, name: &str) -> Option<RoomId> {
        self.names.get(namespace)?.get(name).copied()
    }

    /// Checks that a session of `tenant` may use `names`: rooms that do not
    /// exist must be creatable on first use and within the room quota.
    pub fn check<'a>(
        &self,
        tenant: &Tenant,
        names: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), BrokerError> {
        let missing: Vec<&str> = names
            .into_iter()
            .filter(|n| self.find(&tenant.name, n).is_none())
            .collect();
        let Some(first) = missing.first() else {
            return Ok(());
        };
        let policy = tenant.policy();
        if !policy.create_rooms {
            return Err(BrokerError::RoomNotCreated {
                namespace: tenant.name.to_string(),
                room: first.to_string(),
            });
        }
        let rooms = self.count(&tenant.name);
        let max = policy.quotas.max_rooms as usize;
        if rooms + missing.len() > max {
            tenant.metrics.quota_refused(Quota::Rooms);
            return Err(BrokerError::QuotaExceeded {
                quota: Quota::Rooms,
                detail: format!("namespace {} has its maximum of {max} rooms", tenant.name),
            });
        }
        Ok(())
    }

    /// The room `name` of `namespace`, created (and added to `batch`) if it
    /// is new; callers [`Registry::check`] first.
    pub fn create(&mut self, namespace: &Arc<str>, name: &str, batch: &mut WriteBatch) -> RoomId {
        if let Some(id) = self.find(namespace, name) {
            return id;
        }
        let id = self.next_id;
        self.next_id += 1;
        batch.next_room_id = Some(self.next_id);
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
