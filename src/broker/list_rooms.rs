//! `ListRooms`: the rooms of the session's own namespace, with their last
//! seq and member counts. Nothing of another namespace is visible (G5).

use roomq_wire::pb;
use uuid::Uuid;

use super::error::BrokerError;
use super::outlet::SessionOutlet;
use super::registry::Registry;
use super::reply::Reply;
use crate::config::Config;

use prost::Message as _;

/// Answers a `ListRooms` request of `session`: the rooms in `rooms` of the
/// session's namespace (looked up in `outlet`), by name, as many as fit in
/// a frame (`config`'s frame limit).
pub(super) fn list_rooms(
    rooms: &Registry,
    outlet: &SessionOutlet,
    config: &Config,
    session: Uuid,
) -> Result<Reply, BrokerError> {
    let Some(entry) = outlet.sessions.get(&session) else {
        return Ok(Reply::Gone);
    };
    let mut infos: Vec<pb::RoomInfo> = rooms
        .in_namespace(&entry.info.namespace)
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
        .unwrap_or_default();
    infos.sort_by(|a, b| a.name.cmp(&b.name));
    // Keep the reply within the frame limit.
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
    let body = pb::server_frame::Body::ListRoomsOk(pb::ListRoomsOk {
        rooms: infos,
        truncated,
    });
    Ok(Reply::Now(body))
}
