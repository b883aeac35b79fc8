//! `ListRooms`: the rooms of the session's own namespace, with their last
//! seq and member counts. Nothing of another namespace is visible (G5).

use roomq_wire::pb;
use uuid::Uuid;

use super::core::Broker;
use super::error::BrokerError;
use super::reply::Reply;

use prost::Message as _;

impl Broker {
    pub(super) fn list_rooms(&mut self, session: Uuid) -> Result<Reply, BrokerError> {
        let Some(entry) = self.outlet.sessions.get(&session) else {
            return Ok(Reply::Gone);
        };
        let mut rooms: Vec<pb::RoomInfo> = self
            .rooms
            .in_namespace(&entry.info.namespace)
            .map(|names| {
                names
                    .values()
                    .filter_map(|id| self.rooms.get(id))
                    .map(|room| pb::RoomInfo {
                        name: room.name.to_string(),
                        last_seq: room.committed_seq,
                        members: u32::try_from(room.members.len()).unwrap_or(u32::MAX),
                        connected_members: u32::try_from(
                            room.members.values().filter(|m| m.connected()).count(),
                        )
                        .unwrap_or(u32::MAX),
                    })
                    .collect()
            })
            .unwrap_or_default();
        rooms.sort_by(|a, b| a.name.cmp(&b.name));
        // Keep the reply within the frame limit.
        let budget = self.config.limits.max_frame().saturating_sub(64);
        let mut used = 0;
        let mut fit = rooms.len();
        for (i, r) in rooms.iter().enumerate() {
            used += r.encoded_len() + 4;
            if used > budget {
                fit = i;
                break;
            }
        }
        let truncated = fit < rooms.len();
        rooms.truncate(fit);
        let body = pb::server_frame::Body::ListRoomsOk(pb::ListRoomsOk { rooms, truncated });
        Ok(Reply::Now(body))
    }
}
