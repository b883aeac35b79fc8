//! Reads of stored messages, off the actor. A room delivers from its cache
//! of recent messages; a member that needs older ones (a replay, a
//! redelivery of an evicted message) asks for them here, and waits. The read
//! runs beside the actor, and its result comes back as a [`StoreEvent`],
//! handled like a finished commit: the room gets the messages for one pump
//! of its members and lets them go.
//!
//! Reads of the same (room, seq) are merged, and at most
//! `storage.max_reads_in_flight` run at once; the others queue in order.
//! Every queued request is one (room, seq) of some member, so the queue is
//! bounded by the members the broker holds. Work that needs several reads
//! (the retention sweep, a join's search by time) runs as one task that
//! reports once.

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::sync::Arc;

use tokio::sync::mpsc;

use super::Request;
use crate::session::RequestSlot;
use crate::storage::{RoomId, Store, StoreError, StoredMessage};

/// Most message bytes one read brings back.
pub const READ_BYTES: usize = 4 * 1024 * 1024;

/// Most messages one read brings back: a read serves the member that asked
/// and the members just behind or ahead of it.
pub const READ_AHEAD: usize = 256;

/// What the storage side reports to the actor.
#[derive(Debug)]
pub enum StoreEvent {
    /// Messages of `room` from `from` on, for the members waiting on them.
    Read {
        room: RoomId,
        from: u64,
        result: Result<Vec<Arc<StoredMessage>>, StoreError>,
    },
    /// Retention found that `room`'s messages below `floor` (`bytes` of
    /// them) are due to go, looking from `first`.
    Retention {
        room: RoomId,
        first: u64,
        floor: u64,
        bytes: u64,
    },
    /// A request that waited for stored data (see `Reply::AfterRead`),
    /// completed with it: handled now like a new request.
    Resume {
        session: uuid::Uuid,
        request_id: u64,
        permit: RequestSlot,
        request: Request,
    },
}

/// The read side of the storage seam.
pub struct Reads {
    store: Arc<dyn Store>,
    tx: mpsc::UnboundedSender<StoreEvent>,
    rx: mpsc::UnboundedReceiver<StoreEvent>,
    /// Message reads running: (room, from).
    running: HashSet<(RoomId, u64)>,
    /// Message reads asked for while `max` were running, in order; each
    /// also in `waiting`.
    queue: VecDeque<(RoomId, u64)>,
    waiting: HashSet<(RoomId, u64)>,
    max: usize,
    /// Rooms whose read failed, with when to pump them again (which asks
    /// for the read anew), soonest first.
    retries: std::collections::BTreeSet<(tokio::time::Instant, RoomId)>,
    /// The rooms in `retries`.
    retrying: HashSet<RoomId>,
}

impl Reads {
    /// Reads from `store`, at most `max` message reads at once.
    pub fn new(store: Arc<dyn Store>, max: usize) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Reads {
            store,
            tx,
            rx,
            running: HashSet::new(),
            queue: VecDeque::new(),
            waiting: HashSet::new(),
            max: max.max(1),
            retries: std::collections::BTreeSet::new(),
            retrying: HashSet::new(),
        }
    }

    /// Notes that a read of `room` failed: the room is pumped again at
    /// `at`, and its members (which waited rather than skip anything) ask
    /// for the read anew. One retry per room is pending at a time.
    pub fn retry_at(&mut self, room: RoomId, at: tokio::time::Instant) {
        if self.retrying.insert(room) {
            self.retries.insert((at, room));
        }
    }

    /// When the next retry is due.
    pub fn next_retry(&self) -> Option<tokio::time::Instant> {
        self.retries.first().map(|(at, _)| *at)
    }

    /// The rooms whose retries are due at `now`, taken off the list.
    pub fn due_retries(&mut self, now: tokio::time::Instant) -> Vec<RoomId> {
        let mut due = Vec::new();
        while let Some(&(at, room)) = self.retries.first() {
            if at > now {
                break;
            }
            self.retries.pop_first();
            self.retrying.remove(&room);
            due.push(room);
        }
        due
    }

    /// The store, for work that reads more than once (see [`Reads::spawn`]).
    pub fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    /// Asks for the messages of `room` from `from` on. Merged with a read of
    /// the same (room, from) that is running or queued.
    pub fn request(&mut self, room: RoomId, from: u64) {
        let key = (room, from);
        if self.running.contains(&key) || self.waiting.contains(&key) {
            return;
        }
        if self.running.len() >= self.max {
            self.waiting.insert(key);
            self.queue.push_back(key);
            return;
        }
        self.start(key);
    }

    fn start(&mut self, (room, from): (RoomId, u64)) {
        self.running.insert((room, from));
        let read = self.store.read(room, from, READ_AHEAD, READ_BYTES);
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let result = read.await;
            // The actor is gone when this fails: nobody waits any more.
            let _ = tx.send(StoreEvent::Read { room, from, result });
        });
    }

    /// Runs `work` beside the actor; the event it returns comes back
    /// through [`Reads::next`].
    pub fn spawn(&self, work: impl Future<Output = StoreEvent> + Send + 'static) {
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let _ = tx.send(work.await);
        });
    }

    /// Runs `work` beside the actor for request `request_id` of `session`,
    /// which holds `permit` until it is answered.
    pub fn resume(
        &self,
        session: uuid::Uuid,
        request_id: u64,
        permit: RequestSlot,
        work: impl Future<Output = Request> + Send + 'static,
    ) {
        self.spawn(async move {
            StoreEvent::Resume {
                session,
                request_id,
                permit,
                request: work.await,
            }
        });
    }

    /// The next event. Never ends while the broker holds `self` (it keeps a
    /// sender).
    pub async fn next(&mut self) -> Option<StoreEvent> {
        self.rx.recv().await
    }

    /// Notes that the read of (room, from) has reported, and starts queued
    /// ones in its place.
    pub fn finished(&mut self, room: RoomId, from: u64) {
        self.running.remove(&(room, from));
        while self.running.len() < self.max {
            let Some(key) = self.queue.pop_front() else {
                break;
            };
            self.waiting.remove(&key);
            self.start(key);
        }
    }
}
