//! What a session and the broker hand each other: who the session is
//! ([`SessionInfo`]), the frames the broker queues for it ([`Outbound`]),
//! and a request's share of the session's budgets ([`RequestSlot`]).

use std::sync::Arc;

use roomq_wire::pb;
use tokio::sync::OwnedSemaphorePermit;
use uuid::Uuid;

use crate::storage::StoredMessage;
use crate::tenancy::{Grant, Tenant};

/// A request's share of its session's budgets (requests awaiting a reply,
/// and their bytes). Held until the reply is written, then released.
#[derive(Debug)]
pub struct RequestSlot {
    _count: OwnedSemaphorePermit,
    _bytes: OwnedSemaphorePermit,
}

impl RequestSlot {
    /// A slot made of one request permit and the request's byte permits.
    pub fn new(count: OwnedSemaphorePermit, bytes: OwnedSemaphorePermit) -> Self {
        RequestSlot {
            _count: count,
            _bytes: bytes,
        }
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
}

/// (room, seq) per room of one publish, shared by its confirmation and,
/// when it names several rooms, its dedup record.
pub type Seqs = Arc<[(Arc<str>, u64)]>;
