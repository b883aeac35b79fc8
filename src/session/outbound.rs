//! What a session and the broker hand each other: who the session is
//! ([`SessionInfo`]), the rooms it is in on every shard ([`SessionRooms`]),
//! the frames the broker queues for it ([`Outbound`]), and a request's share
//! of the session's budgets ([`RequestSlot`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use roomq_wire::pb;
use tokio::sync::OwnedSemaphorePermit;
use uuid::Uuid;

use crate::storage::StoredMessage;
use crate::tenancy::{Grant, Tenant};

/// A request's share of its session's budgets (requests awaiting a reply,
/// and their bytes). Held until the reply is written, then released.
#[derive(Debug)]
pub struct RequestSlot {
    _permits: Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)>,
}

impl RequestSlot {
    /// A slot made of one request permit and the request's byte permits.
    pub fn new(count: OwnedSemaphorePermit, bytes: OwnedSemaphorePermit) -> Self {
        RequestSlot {
            _permits: Some((count, bytes)),
        }
    }

    /// A slot that holds nothing: one part of a request split over shards
    /// (the request's own slot waits with the session's writer, see
    /// [`Outbound::Expect`]), or a request the broker makes itself.
    pub fn none() -> Self {
        RequestSlot { _permits: None }
    }
}

/// A frame on its way to one session's socket.
// A reply frame is the largest variant; boxing it would cost an allocation
// per reply to save a few dozen bytes per queued item.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Outbound {
    /// A reply (or push). The permit, if any, is the request's slot in the
    /// session's pending-request budget, released once the frame is written.
    /// Boxed: a `ServerFrame` is several times larger than the other
    /// variants, and every delivery and confirmation moves through the
    /// session's queue in a slot of this enum's size.
    Reply {
        frame: Box<pb::ServerFrame>,
        permit: Option<RequestSlot>,
    },
    /// A publish confirmation; encoded by the session's writer (which keeps
    /// that work off the broker actor).
    Confirm {
        request_id: u64,
        seqs: Seqs,
        duplicate: bool,
        durability: pb::Durability,
        permit: RequestSlot,
    },
    /// The reader split publish `request_id` over `parts` shards: the
    /// writer holds back their answers (each a `Confirm` or an error
    /// `Reply` with this request id and a slot) and writes one, merged, in
    /// the order of `rooms`; then releases `permit`, the request's slot.
    /// Queued before the parts are sent, so it is ahead of their answers.
    Expect {
        request_id: u64,
        parts: usize,
        rooms: Arc<[Arc<str>]>,
        permit: RequestSlot,
    },
    /// A delivery; encoded by the session's writer.
    Delivery {
        room: Arc<str>,
        label: Arc<str>,
        attempt: u32,
        redelivered: bool,
        volatile: bool,
        msg: Arc<StoredMessage>,
    },
}

/// What a session tells the broker about itself when its handshake is done.
#[derive(Debug)]
pub struct SessionInfo {
    pub id: Uuid,
    /// `id` as bytes, shared by every message the session publishes.
    pub id_bytes: bytes::Bytes,
    pub namespace: Arc<str>,
    pub client_id: Option<Arc<str>>,
    pub client_name: String,
    pub peer: String,
    /// The listener it came through.
    pub transport: crate::transport::Transport,
    /// The session's namespace.
    pub tenant: Arc<Tenant>,
    /// What the session's credentials allow.
    pub grant: Grant,
    /// Attributes set by connect hooks.
    pub attributes: std::collections::BTreeMap<String, String>,
    /// The rooms it is in, kept by the shards that own them and read by
    /// every shard.
    pub rooms: SessionRooms,
}

/// The rooms one session is in, shared by every shard: the shard that owns
/// a room adds it when the session joins and removes it when it leaves;
/// every shard reads it to apply a message's except rules and to deliver a
/// multi-room message once per session (`room::excluded_for`). Read only
/// for messages that carry such rules, and written on joins and leaves, so
/// a short `std::sync::Mutex` (never held across an `.await`) is enough.
/// It also counts the session's memberships on every shard, so that
/// `max_memberships_per_session` holds across shards.
#[derive(Debug, Default)]
pub struct SessionRooms {
    /// Room name -> memberships (labels) the session holds in it.
    rooms: Mutex<HashMap<Arc<str>, u32>>,
    /// Memberships held or reserved by a join in progress.
    held: AtomicU32,
}

impl SessionRooms {
    /// Whether the session is in room `room`.
    pub fn contains(&self, room: &str) -> bool {
        self.rooms
            .lock()
            .map(|r| r.contains_key(room))
            .unwrap_or(false)
    }

    /// Reserves one membership unless `max` are held.
    pub fn reserve(&self, max: u32) -> bool {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    /// Gives back a reservation whose join failed.
    pub fn release(&self) {
        let _ = self
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                Some(n.saturating_sub(1))
            });
    }

    /// A reserved membership in `room` was made.
    pub fn joined(&self, room: Arc<str>) {
        if let Ok(mut r) = self.rooms.lock() {
            *r.entry(room).or_default() += 1;
        }
    }

    /// A membership in `room` ended.
    pub fn left(&self, room: &str) {
        if let Ok(mut r) = self.rooms.lock() {
            if let Some(n) = r.get_mut(room) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    r.remove(room);
                }
            }
        }
        self.release();
    }
}

/// (room, seq) per room of one publish, shared by its confirmation and,
/// when it names several rooms, its dedup record.
pub type Seqs = Arc<[(Arc<str>, u64)]>;
