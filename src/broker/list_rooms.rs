//! `ListRooms`: the rooms of the session's own namespace, with their last
//! seq and member counts. Nothing of another namespace is visible (G5).
//! Every shard lists its own rooms ([`list_rooms`], for
//! `Command::ListRooms`); the session merges them
//! (`BrokerHandle::list_rooms`) and answers with as many as fit in a
//! frame ([`answer`]).

use std::sync::Arc;

use roomq_wire::pb;

use super::registry::Registry;
use crate::config::Config;

use prost::Message as _;

/// The rooms of `namespace` in `rooms` (one shard's).
pub(super) fn list_rooms(rooms: &Registry, namespace: &Arc<str>) -> Vec<pb::RoomInfo> {
    rooms
        .in_namespace(namespace)
        .map(|names| {
            names
                .values()
                .filter_map(|id| rooms.get(id))
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
        .unwrap_or_default()
}

/// The reply to `ListRooms`: `infos` (every shard's, sorted by name), as
/// many as fit in a frame (`config`'s frame limit).
pub fn answer(mut infos: Vec<pb::RoomInfo>, config: &Config) -> pb::server_frame::Body {
    let budget = config.limits.max_frame().saturating_sub(64);
    let mut used = 0;
    let mut fit = infos.len();
    for (i, r) in infos.iter().enumerate() {
        used += r.encoded_len() + 4;
        if used > budget {
            fit = i;
            break;
        }
    }
    let truncated = fit < infos.len();
    infos.truncate(fit);
    pb::server_frame::Body::ListRoomsOk(pb::ListRoomsOk {
        rooms: infos,
        truncated,
    })
}
