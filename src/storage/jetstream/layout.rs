//! The names of everything roomq keeps in JetStream (docs/cluster.md §3):
//! streams, subjects, buckets and keys, all under one prefix `<P>`
//! (`jetstream.prefix`). Public so that tests (and operators' tools) can
//! find a store's data without repeating the scheme.
//!
//! | what | name |
//! |---|---|
//! | a namespace's room logs | stream `<P>_ns_<ns_id>`, subjects `<P>.log.<ns_id>.>` |
//! | a room's log | subject `<P>.log.<ns_id>.<room_id>` |
//! | ids, rooms, namespace records | KV bucket `<P>_meta` |
//! | cursors | KV bucket `<P>_cursors` |
//!
//! Keys of `<P>_meta`:
//!
//! | key | value |
//! |---|---|
//! | `ns.<b64(name)>` | the name; the revision of its create is the namespace id |
//! | `room.<room_id>` | `record::encode_room(namespace, name)` (with its CRC) |
//! | `nsconf.<b64(name)>` | a namespace record, sealed (`record::seal`) |
//! | `next_room_id` | `record::encode_u64` |
//! | `dedup_cutoff` | `record::encode_u64`: dedup records accepted before it are expired |
//!
//! Keys of `<P>_cursors`: `c.<room_id>.<b64(member)>`, value
//! [`CURSOR_VERSION`] then `record::encode_cursor`.
//!
//! Names appear in keys only as unpadded base64url, whose alphabet is valid
//! in keys and subjects (names may hold `.`, `*`, `>` and spaces); the empty
//! name is written `=`, which unpadded base64 never produces.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

use crate::storage::RoomId;

/// First byte of a cursor value: the layout of what follows.
pub const CURSOR_VERSION: u8 = 1;

/// Key of the next room id in `<P>_meta`.
pub const NEXT_ROOM_ID: &str = "next_room_id";

/// Key of the dedup cutoff in `<P>_meta`.
pub const DEDUP_CUTOFF: &str = "dedup_cutoff";

/// A name as it appears in a key.
pub fn b64(name: &str) -> String {
    if name.is_empty() {
        return "=".to_string();
    }
    URL_SAFE_NO_PAD.encode(name.as_bytes())
}

/// The name [`b64`] made, if `text` is one.
pub fn unb64(text: &str) -> Option<String> {
    if text == "=" {
        return Some(String::new());
    }
    let bytes = URL_SAFE_NO_PAD.decode(text).ok()?;
    String::from_utf8(bytes).ok()
}

/// The names of one store, under its prefix.
#[derive(Debug, Clone)]
pub struct Layout {
    prefix: String,
}

impl Layout {
    pub fn new(prefix: &str) -> Self {
        Layout {
            prefix: prefix.to_string(),
        }
    }

    /// KV bucket of ids, rooms and namespace records.
    pub fn meta_bucket(&self) -> String {
        format!("{}_meta", self.prefix)
    }

    /// KV bucket of cursors.
    pub fn cursors_bucket(&self) -> String {
        format!("{}_cursors", self.prefix)
    }

    /// The stream of a namespace's room logs.
    pub fn namespace_stream(&self, ns_id: u64) -> String {
        format!("{}_ns_{ns_id}", self.prefix)
    }

    /// What that stream captures.
    pub fn namespace_subjects(&self, ns_id: u64) -> String {
        format!("{}.log.{ns_id}.>", self.prefix)
    }

    /// A room's log.
    pub fn log_subject(&self, ns_id: u64, room: RoomId) -> String {
        format!("{}.log.{ns_id}.{room}", self.prefix)
    }

    /// The room whose log `subject` is, in namespace `ns_id`.
    pub fn room_of_subject(&self, ns_id: u64, subject: &str) -> Option<RoomId> {
        subject
            .strip_prefix(&self.prefix)?
            .strip_prefix(".log.")?
            .strip_prefix(&ns_id.to_string())?
            .strip_prefix('.')?
            .parse()
            .ok()
    }
}

/// `<P>_meta` key of a namespace's id.
pub fn namespace_key(name: &str) -> String {
    format!("ns.{}", b64(name))
}

/// `<P>_meta` key of a room.
pub fn room_key(room: RoomId) -> String {
    format!("room.{room}")
}

/// `<P>_meta` key of a namespace record.
pub fn namespace_record_key(name: &str) -> String {
    format!("nsconf.{}", b64(name))
}

/// `<P>_cursors` key of a member's cursor.
pub fn cursor_key(room: RoomId, name: &str) -> String {
    format!("c.{room}.{}", b64(name))
}

/// The (room, member name) of a cursor key.
pub fn parse_cursor_key(key: &str) -> Option<(RoomId, String)> {
    let (room, name) = key.strip_prefix("c.")?.split_once('.')?;
    Some((room.parse().ok()?, unb64(name)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_keys() {
        for name in ["", "/", "a.b *>", "ünïcode"] {
            let key = cursor_key(7, name);
            assert_eq!(parse_cursor_key(&key), Some((7, name.to_string())));
            assert!(!key.ends_with('.'));
        }
        let l = Layout::new("roomq");
        assert_eq!(l.room_of_subject(3, &l.log_subject(3, 42)), Some(42));
        assert_eq!(l.room_of_subject(4, &l.log_subject(3, 42)), None);
        assert_eq!(l.room_of_subject(3, "roomq.log.3.x"), None);
    }
}
