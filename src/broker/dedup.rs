//! The dedup table: which publish ids were accepted in the dedup window,
//! and with which seqs, so that a retry is answered with the original's
//! seqs instead of being stored twice. A record is *pending* while its
//! batch is being written (retries wait for it) and *stored* once the batch
//! is on disk, until the window has passed.
//!
//! Owned by the broker actor (no lock). Every publish of an SDK carries an
//! id, so at full rate the table holds rate × window ids (millions), and it
//! is laid out for that:
//!
//! - A key is the namespace as a small number (interned once per name) and
//!   the client's 16 bytes; their hash is computed once per publish and
//!   carried in the [`DedupKey`], so the lookup, the pending entry, the
//!   stored entry and the expiry queue all reuse it.
//! - The hash is std's keyed SipHash ([`RandomState`]): clients choose the
//!   ids, so a hash they could aim collisions at would let one client slow
//!   every publish of the broker.
//! - Pending ids (a few batches' worth) live in a small table of their own,
//!   with their seqs and waiters. A stored id is one 48-byte slot of one
//!   large table: key, expiry bucket, and the original's (room, seq) inline
//!   when the publish named one room (the common case), the shared seqs
//!   otherwise. Nothing is allocated per stored id.
//! - Expiry is by buckets of [`GRAIN`]: the ids stored within one grain of
//!   each other expire together, at most one grain late. The expiry queue
//!   holds only each id's hash (8 bytes), in storing order; a bucket is a
//!   deadline and a count.
//! - `max_ids` (`limits.max_dedup_ids`) bounds the stored ids: beyond it,
//!   the oldest are forgotten before their window ends (and counted), so
//!   memory is bounded whatever the publish rate.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Duration;

use hashbrown::hash_table::{Entry, HashTable};
use prometheus::IntCounter;
use tokio::time::Instant;
use tracing::warn;
use uuid::Uuid;

use crate::session::{RequestSlot, Seqs};

/// How close in expiry the ids of one bucket are: an id is forgotten at
/// most this late. The timer the actor sleeps on has the same resolution.
pub const GRAIN: Duration = Duration::from_millis(1);

/// A dedup id as the table knows it: its namespace (interned by
/// [`DedupTable::key`]), the client's 16 bytes, and their hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DedupKey {
    hash: u64,
    ns: u32,
    id: [u8; 16],
}

impl DedupKey {
    /// The client's 16 bytes.
    pub fn id(&self) -> [u8; 16] {
        self.id
    }
}

/// A retry waiting for its original's batch: session, request id, slot.
pub type Waiter = (Uuid, u64, RequestSlot);

/// What the table knows of a dedup id.
#[derive(Debug, PartialEq)]
pub enum Known {
    /// Its batch is being written; retries wait for it ([`DedupTable::wait`]).
    Pending,
    /// Stored; retries get these seqs back.
    Stored(Seqs),
}

/// A pending id: its seqs, and the retries waiting for its batch.
#[derive(Debug)]
struct Pending {
    key: DedupKey,
    seqs: Seqs,
    waiters: Vec<Waiter>,
}

/// The original publish's (room, seq) list, as a stored id keeps it.
#[derive(Debug)]
enum Original {
    /// One room: kept inline (no allocation per id).
    One(Arc<str>, u64),
    /// Several rooms (or none): the seqs the confirmation shared.
    Many(Seqs),
}

impl Original {
    fn of(seqs: &Seqs) -> Original {
        match &**seqs {
            [(room, seq)] => Original::One(room.clone(), *seq),
            _ => Original::Many(seqs.clone()),
        }
    }

    fn seqs(&self) -> Seqs {
        match self {
            Original::One(room, seq) => Arc::from([(room.clone(), *seq)]),
            Original::Many(seqs) => seqs.clone(),
        }
    }
}

/// A stored id. 48 bytes: keep it so (see the test `stored_id_is_48_bytes`).
#[derive(Debug)]
struct Stored {
    id: [u8; 16],
    ns: u32,
    /// The sequence number of its expiry bucket: the queue forgets an id
    /// only from the bucket it was put in (not a later copy of the same
    /// key, stored again after its namespace was deleted and made anew).
    bucket: u32,
    original: Original,
}

/// The stored ids that expire within one [`GRAIN`] of each other.
#[derive(Debug)]
struct Bucket {
    /// When they are all past their window.
    deadline: Instant,
    seq: u32,
    /// How many hashes of the expiry queue are this bucket's.
    len: u32,
}

/// The dedup ids of the namespaces one actor serves.
#[derive(Debug)]
pub struct DedupTable {
    hasher: RandomState,
    /// Namespace → the number keys use for it. A deleted namespace's number
    /// is not given to a new one (see [`DedupTable::forget_namespace`]).
    names: HashMap<Arc<str>, u32>,
    next_name: u32,
    pending: HashTable<Pending>,
    stored: HashTable<Stored>,
    /// The hashes of the stored ids, oldest first, cut into `buckets`.
    order: VecDeque<u64>,
    buckets: VecDeque<Bucket>,
    next_bucket: u32,
    window: Duration,
    /// Most stored ids (0: no limit).
    max_ids: usize,
    /// Counts the ids forgotten early because of `max_ids`.
    evicted: IntCounter,
    /// Evictions not yet logged, and when the last were.
    unlogged: u64,
    logged: Option<Instant>,
}

impl DedupTable {
    /// An empty table keeping ids for `window`, at most `max_ids` stored
    /// ones (0: no limit), counting early evictions in `evicted`.
    pub fn new(window: Duration, max_ids: u64, evicted: IntCounter) -> Self {
        DedupTable {
            hasher: RandomState::new(),
            names: HashMap::new(),
            next_name: 0,
            pending: HashTable::new(),
            stored: HashTable::new(),
            order: VecDeque::new(),
            buckets: VecDeque::new(),
            next_bucket: 0,
            window,
            max_ids: usize::try_from(max_ids).unwrap_or(usize::MAX),
            evicted,
            unlogged: 0,
            logged: None,
        }
    }

    /// The key of id `id` in namespace `namespace`.
    pub fn key(&mut self, namespace: &Arc<str>, id: [u8; 16]) -> DedupKey {
        let ns = match self.names.get(&**namespace) {
            Some(ns) => *ns,
            None => {
                let ns = self.next_name;
                // Wraps after 2^32 namespaces made with dedup ids; a number
                // is reused only if its old namespace was deleted that long
                // ago, and with it every id it had.
                self.next_name = self.next_name.wrapping_add(1);
                self.names.insert(namespace.clone(), ns);
                ns
            }
        };
        DedupKey {
            hash: self.hasher.hash_one((ns, id)),
            ns,
            id,
        }
    }

    /// How many ids are known, pending or stored.
    pub fn len(&self) -> usize {
        self.pending.len() + self.stored.len()
    }

    /// What is known of `key`, if anything.
    pub fn get(&self, key: &DedupKey) -> Option<Known> {
        if self.pending.find(key.hash, |p| p.key == *key).is_some() {
            return Some(Known::Pending);
        }
        self.stored
            .find(key.hash, |s| s.ns == key.ns && s.id == key.id)
            .map(|s| Known::Stored(s.original.seqs()))
    }

    /// An id recovered from disk, stored with `seqs`, expiring at `expires`.
    /// Recovered ids come oldest first.
    pub fn restore(&mut self, namespace: &Arc<str>, id: [u8; 16], seqs: Seqs, expires: Instant) {
        let key = self.key(namespace, id);
        self.remember(key, Original::of(&seqs), expires);
    }

    /// A new publish with id `key`, given `seqs`, whose batch is open.
    pub fn pending(&mut self, key: DedupKey, seqs: Seqs) {
        let pending = Pending {
            key,
            seqs,
            waiters: Vec::new(),
        };
        match self
            .pending
            .entry(key.hash, |p| p.key == key, |p| p.key.hash)
        {
            Entry::Occupied(mut e) => *e.get_mut() = pending,
            Entry::Vacant(e) => {
                e.insert(pending);
            }
        }
    }

    /// Files a retry of pending id `key` to be answered with the original.
    /// Gives it back if `key` is not pending.
    pub fn wait(&mut self, key: &DedupKey, waiter: Waiter) -> Result<(), Waiter> {
        match self.pending.find_mut(key.hash, |p| p.key == *key) {
            Some(p) => {
                p.waiters.push(waiter);
                Ok(())
            }
            None => Err(waiter),
        }
    }

    /// The batch of pending id `key` is stored: the id is kept for the
    /// window from `now`. Returns its seqs and the retries that waited.
    pub fn stored(&mut self, key: DedupKey, now: Instant) -> Option<(Seqs, Vec<Waiter>)> {
        let Ok(entry) = self.pending.find_entry(key.hash, |p| p.key == key) else {
            return None;
        };
        let (Pending { seqs, waiters, .. }, _) = entry.remove();
        self.remember(key, Original::of(&seqs), now + self.window);
        Some((seqs, waiters))
    }

    /// Keeps `key` as stored with `original` until `expires`.
    fn remember(&mut self, key: DedupKey, original: Original, expires: Instant) {
        let bucket = self.bucket_for(expires);
        let stored = Stored {
            id: key.id,
            ns: key.ns,
            bucket,
            original,
        };
        let hasher = &self.hasher;
        match self.stored.entry(
            key.hash,
            |s| s.ns == key.ns && s.id == key.id,
            |s| hasher.hash_one((s.ns, s.id)),
        ) {
            // Only a recovered id seen twice (two records on disk): the
            // later one counts.
            Entry::Occupied(mut e) => *e.get_mut() = stored,
            Entry::Vacant(e) => {
                e.insert(stored);
            }
        }
        self.order.push_back(key.hash);
        if self.max_ids > 0 && self.stored.len() > self.max_ids {
            self.evict();
        }
    }

    /// The sequence number of the bucket of an id expiring at `expires`,
    /// which is counted in it. Expiries come in order (a later one is only
    /// ever put in the newest bucket, which may keep it a little longer).
    fn bucket_for(&mut self, expires: Instant) -> u32 {
        if let Some(b) = self.buckets.back_mut() {
            if expires <= b.deadline && b.len < u32::MAX {
                b.len += 1;
                return b.seq;
            }
        }
        let seq = self.next_bucket;
        self.next_bucket = seq.wrapping_add(1);
        self.buckets.push_back(Bucket {
            deadline: expires + GRAIN,
            seq,
            len: 1,
        });
        seq
    }

    /// Forgets the oldest stored ids until at most `max_ids` are left.
    fn evict(&mut self) {
        let mut evicted = 0;
        while self.stored.len() > self.max_ids {
            let Some(b) = self.buckets.front() else {
                break;
            };
            let seq = b.seq;
            if self.forget_oldest(seq) {
                evicted += 1;
            }
        }
        self.evicted.inc_by(evicted);
        self.unlogged += evicted;
        let now = Instant::now();
        if self.unlogged > 0
            && self
                .logged
                .is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(60))
        {
            warn!(
                evicted = self.unlogged,
                max_dedup_ids = self.max_ids,
                "dedup table full: the oldest ids were forgotten before their window ended"
            );
            self.unlogged = 0;
            self.logged = Some(now);
        }
    }

    /// Takes the oldest hash off the expiry queue (from bucket `seq`, the
    /// front one) and forgets its id if it is still there; true if it was.
    fn forget_oldest(&mut self, seq: u32) -> bool {
        if let Some(b) = self.buckets.front_mut() {
            b.len = b.len.saturating_sub(1);
            if b.len == 0 {
                self.buckets.pop_front();
            }
        }
        let Some(hash) = self.order.pop_front() else {
            return false;
        };
        let hasher = &self.hasher;
        // The full hash is compared, not just the bucket: another id of the
        // bucket that shares the table's short tag must not go in its place.
        match self.stored.find_entry(hash, |s| {
            s.bucket == seq && hasher.hash_one((s.ns, s.id)) == hash
        }) {
            Ok(e) => {
                e.remove();
                true
            }
            Err(_) => false,
        }
    }

    /// When the oldest stored ids expire.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.buckets.front().map(|b| b.deadline)
    }

    /// Forgets the stored ids whose window has passed by `now`; true if
    /// any bucket of them was due (their records on disk are then due for
    /// deletion).
    pub fn expire(&mut self, now: Instant) -> bool {
        let mut any = false;
        while let Some(b) = self.buckets.front() {
            if b.deadline > now {
                break;
            }
            let (seq, len) = (b.seq, b.len);
            if len == 0 {
                self.buckets.pop_front();
            }
            for _ in 0..len {
                self.forget_oldest(seq);
            }
            any = true;
        }
        if any {
            self.shrink();
        }
        any
    }

    /// Gives memory back once the table holds under a quarter of what it
    /// has room for (after a burst): rehashing what is left costs less than
    /// what the burst cost to insert.
    fn shrink(&mut self) {
        const SMALL: usize = 1024;
        let len = self.stored.len();
        if self.stored.capacity() > SMALL && self.stored.capacity() / 4 > len {
            let hasher = &self.hasher;
            self.stored
                .shrink_to(len * 2, |s| hasher.hash_one((s.ns, s.id)));
        }
        let len = self.order.len();
        if self.order.capacity() > SMALL && self.order.capacity() / 4 > len {
            self.order.shrink_to(len * 2);
        }
    }

    /// Forgets every id of namespace `name` (it was deleted).
    pub fn forget_namespace(&mut self, name: &str) {
        let Some(ns) = self.names.remove(name) else {
            return;
        };
        self.pending.retain(|p| p.key.ns != ns);
        self.stored.retain(|s| s.ns != ns);
        // Their hashes stay in the expiry queue and find nothing when due.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use tokio::sync::Semaphore;

    const WINDOW: Duration = Duration::from_secs(120);

    fn table(max_ids: u64) -> DedupTable {
        let evicted = IntCounter::new("evicted", "evicted").unwrap();
        DedupTable::new(WINDOW, max_ids, evicted)
    }

    fn seqs(rooms: &[(&str, u64)]) -> Seqs {
        rooms
            .iter()
            .map(|(room, seq)| (Arc::from(*room), *seq))
            .collect::<Vec<_>>()
            .into()
    }

    fn id(n: u8) -> [u8; 16] {
        [n; 16]
    }

    async fn waiter(request_id: u64) -> Waiter {
        let sem = Arc::new(Semaphore::new(10));
        let slot = RequestSlot::new(
            sem.clone().acquire_many_owned(1).await.unwrap(),
            sem.acquire_many_owned(1).await.unwrap(),
        );
        (Uuid::nil(), request_id, slot)
    }

    /// Stores `id` in namespace `ns` now, through pending.
    fn store(t: &mut DedupTable, ns: &Arc<str>, n: u8, s: Seqs) -> DedupKey {
        let key = t.key(ns, id(n));
        assert_eq!(t.get(&key), None);
        t.pending(key, s);
        assert!(t.stored(key, Instant::now()).is_some());
        key
    }

    #[test]
    fn stored_id_is_48_bytes() {
        assert_eq!(std::mem::size_of::<Stored>(), 48);
    }

    #[tokio::test(start_paused = true)]
    async fn pending_then_stored_then_expired() {
        let mut t = table(0);
        let ns: Arc<str> = Arc::from("ns");
        let key = t.key(&ns, id(1));
        assert_eq!(t.get(&key), None);
        t.pending(key, seqs(&[("a", 7)]));
        assert_eq!(t.get(&key), Some(Known::Pending));
        assert_eq!(t.next_expiry(), None, "pending ids do not expire");

        let start = Instant::now();
        let (s, waiters) = t.stored(key, start).unwrap();
        assert_eq!(s, seqs(&[("a", 7)]));
        assert!(waiters.is_empty());
        assert_eq!(t.get(&key), Some(Known::Stored(seqs(&[("a", 7)]))));
        assert_eq!(t.len(), 1);
        assert!(t.stored(key, start).is_none(), "stored only once");

        let due = t.next_expiry().unwrap();
        assert!(due >= start + WINDOW && due <= start + WINDOW + GRAIN);
        tokio::time::advance(WINDOW - Duration::from_millis(1)).await;
        assert!(!t.expire(Instant::now()));
        assert_eq!(t.get(&key), Some(Known::Stored(seqs(&[("a", 7)]))));
        tokio::time::sleep_until(due).await;
        assert!(t.expire(Instant::now()));
        assert_eq!(t.get(&key), None);
        assert_eq!((t.len(), t.next_expiry()), (0, None));
    }

    #[tokio::test(start_paused = true)]
    async fn several_rooms_come_back_whole() {
        let mut t = table(0);
        let ns: Arc<str> = Arc::from("ns");
        let many = seqs(&[("a", 1), ("b", 9), ("c", 3)]);
        let key = store(&mut t, &ns, 1, many.clone());
        assert_eq!(t.get(&key), Some(Known::Stored(many)));
        let none = seqs(&[]);
        let key = store(&mut t, &ns, 2, none.clone());
        assert_eq!(t.get(&key), Some(Known::Stored(none)));
    }

    #[tokio::test(start_paused = true)]
    async fn retries_wait_for_the_original() {
        let mut t = table(0);
        let ns: Arc<str> = Arc::from("ns");
        let key = t.key(&ns, id(1));
        assert!(t.wait(&key, waiter(1).await).is_err(), "unknown id");
        t.pending(key, seqs(&[("a", 7)]));
        assert!(t.wait(&key, waiter(2).await).is_ok());
        assert!(t.wait(&key, waiter(3).await).is_ok());
        let (s, waiters) = t.stored(key, Instant::now()).unwrap();
        assert_eq!(s, seqs(&[("a", 7)]));
        let ids: Vec<u64> = waiters.iter().map(|w| w.1).collect();
        assert_eq!(ids, [2, 3]);
        assert!(
            t.wait(&key, waiter(4).await).is_err(),
            "stored, not pending"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn namespaces_are_apart() {
        let mut t = table(0);
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        store(&mut t, &a, 1, seqs(&[("r", 1)]));
        let other = t.key(&b, id(1));
        assert_eq!(t.get(&other), None);
        assert_eq!(t.key(&Arc::from("a"), id(1)), t.key(&a, id(1)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_deleted_namespace_is_forgotten() {
        let mut t = table(0);
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        let old = store(&mut t, &a, 1, seqs(&[("r", 1)]));
        let kept = store(&mut t, &b, 1, seqs(&[("r", 1)]));
        let pending = t.key(&a, id(2));
        t.pending(pending, seqs(&[("r", 2)]));
        t.forget_namespace("a");
        assert_eq!((t.get(&old), t.get(&pending)), (None, None));
        assert!(t.stored(pending, Instant::now()).is_none());
        assert!(t.get(&kept).is_some());

        // Made again, with the same id: the new id lives its own window,
        // not cut short by the old one's hash in the expiry queue.
        tokio::time::advance(Duration::from_secs(10)).await;
        let again = store(&mut t, &a, 1, seqs(&[("r", 5)]));
        assert_ne!(again, old);
        tokio::time::advance(WINDOW - Duration::from_secs(5)).await;
        assert!(t.expire(Instant::now()));
        assert_eq!(t.get(&kept), None);
        assert_eq!(t.get(&again), Some(Known::Stored(seqs(&[("r", 5)]))));
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(t.expire(Instant::now()));
        assert_eq!(t.get(&again), None);
        assert_eq!(t.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn same_key_again_in_the_same_bucket() {
        let mut t = table(0);
        let a: Arc<str> = Arc::from("a");
        store(&mut t, &a, 1, seqs(&[("r", 1)]));
        t.forget_namespace("a");
        let again = store(&mut t, &a, 1, seqs(&[("r", 2)]));
        assert_eq!(t.len(), 1);
        tokio::time::advance(WINDOW + GRAIN).await;
        assert!(t.expire(Instant::now()));
        assert_eq!(t.get(&again), None);
        assert_eq!(t.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn buckets_are_one_grain_wide() {
        let mut t = table(0);
        let ns: Arc<str> = Arc::from("ns");
        let start = Instant::now();
        let first = store(&mut t, &ns, 1, seqs(&[("r", 1)]));
        let same = store(&mut t, &ns, 2, seqs(&[("r", 2)]));
        tokio::time::advance(GRAIN).await;
        let edge = store(&mut t, &ns, 3, seqs(&[("r", 3)]));
        tokio::time::advance(GRAIN / 2).await;
        let next = store(&mut t, &ns, 4, seqs(&[("r", 4)]));
        assert_eq!(t.buckets.len(), 2);
        assert_eq!(t.next_expiry(), Some(start + WINDOW + GRAIN));

        tokio::time::sleep_until(start + WINDOW).await;
        assert!(!t.expire(Instant::now()), "due one grain after the first");
        tokio::time::sleep_until(start + WINDOW + GRAIN).await;
        assert!(t.expire(Instant::now()));
        assert_eq!(
            (t.get(&first), t.get(&same), t.get(&edge)),
            (None, None, None)
        );
        assert!(t.get(&next).is_some());
        let due = t.next_expiry().unwrap();
        assert_eq!(due, start + WINDOW + GRAIN + GRAIN / 2 + GRAIN);
        tokio::time::sleep_until(due).await;
        assert!(t.expire(Instant::now()));
        assert_eq!(t.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn restored_ids_keep_what_is_left_of_their_window() {
        let mut t = table(0);
        let ns: Arc<str> = Arc::from("ns");
        let now = Instant::now();
        // Oldest first, as recovery hands them over.
        let soon = Duration::from_secs(5);
        t.restore(&ns, id(1), seqs(&[("r", 1)]), now + soon);
        t.restore(&ns, id(2), seqs(&[("r", 2), ("s", 1)]), now + 2 * soon);
        // An id found twice on disk: the later record counts.
        t.restore(&ns, id(1), seqs(&[("r", 3)]), now + 3 * soon);
        assert_eq!(t.len(), 2);
        let key = |t: &mut DedupTable, n| t.key(&ns, id(n));
        let (one, two) = (key(&mut t, 1), key(&mut t, 2));
        assert_eq!(t.get(&one), Some(Known::Stored(seqs(&[("r", 3)]))));

        // New ids after recovery come later than every restored one.
        let new = store(&mut t, &ns, 9, seqs(&[("r", 4)]));
        tokio::time::advance(soon + GRAIN).await;
        assert!(t.expire(Instant::now()));
        assert!(t.get(&one).is_some(), "its later record still holds");
        tokio::time::advance(soon).await;
        assert!(t.expire(Instant::now()));
        assert_eq!(t.get(&two), None);
        tokio::time::advance(soon).await;
        assert!(t.expire(Instant::now()));
        assert_eq!(t.get(&one), None);
        assert!(t.get(&new).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn beyond_the_limit_the_oldest_go_early() {
        let mut t = table(3);
        let ns: Arc<str> = Arc::from("ns");
        let mut keys = Vec::new();
        for n in 0..5 {
            keys.push(store(&mut t, &ns, n, seqs(&[("r", u64::from(n))])));
            tokio::time::advance(Duration::from_millis(10)).await;
        }
        assert_eq!(t.len(), 3);
        assert_eq!(t.evicted.get(), 2);
        assert_eq!((t.get(&keys[0]), t.get(&keys[1])), (None, None));
        for k in &keys[2..] {
            assert!(t.get(k).is_some());
        }
        // Pending ids are not counted and never evicted.
        let p = t.key(&ns, id(50));
        t.pending(p, seqs(&[("r", 50)]));
        assert_eq!((t.len(), t.evicted.get()), (4, 2));
        // The evicted ids' buckets are gone; the rest expire on time.
        assert_eq!(t.buckets.len(), 3);
        tokio::time::advance(WINDOW).await;
        assert!(t.expire(Instant::now()));
        assert_eq!(t.len(), 1);
        assert_eq!(t.evicted.get(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn the_limit_applies_to_restored_ids() {
        let mut t = table(2);
        let ns: Arc<str> = Arc::from("ns");
        let now = Instant::now();
        for n in 0..4u8 {
            let expires = now + Duration::from_secs(u64::from(n) + 1);
            t.restore(&ns, id(n), seqs(&[("r", u64::from(n))]), expires);
        }
        assert_eq!((t.len(), t.evicted.get()), (2, 2));
        let newest = t.key(&ns, id(3));
        assert!(t.get(&newest).is_some());
    }

    impl DedupTable {
        /// Bytes the table has allocated for its ids (not counting the
        /// seqs of publishes that named several rooms).
        fn bytes(&self) -> usize {
            self.stored.allocation_size()
                + self.pending.allocation_size()
                + self.order.capacity() * std::mem::size_of::<u64>()
                + self.buckets.capacity() * std::mem::size_of::<Bucket>()
        }
    }

    /// The memory figure of docs/operations.md: 1M single-room ids stored
    /// over 10 s (10,000 buckets), about what one W1 run with dedup ids
    /// leaves. The hash table doubles, so an id costs 49 bytes over its
    /// fill (7/16 to 7/8), plus 8 to 16 in the expiry queue: 65 to 128
    /// bytes; at 1M ids the table has just doubled, near the top.
    #[tokio::test(start_paused = true)]
    async fn an_id_costs_at_most_128_bytes() {
        let mut t = table(0);
        let ns: Arc<str> = Arc::from("ns");
        let room: Arc<str> = Arc::from("room");
        let n = 1_000_000u32;
        for i in 0..n {
            let mut raw = [0u8; 16];
            raw[..4].copy_from_slice(&i.to_le_bytes());
            let key = t.key(&ns, raw);
            t.pending(key, Arc::from([(room.clone(), u64::from(i))]));
            t.stored(key, Instant::now());
            if i % 100 == 0 {
                tokio::time::advance(GRAIN).await;
            }
        }
        let per_id = t.bytes() / n as usize;
        println!("{n} ids: {} bytes, {per_id} per id", t.bytes());
        assert!(per_id <= 128, "{per_id} bytes per id");
    }

    #[tokio::test(start_paused = true)]
    async fn memory_is_given_back_after_a_burst() {
        let mut t = table(0);
        let ns: Arc<str> = Arc::from("ns");
        for n in 0..10_000u32 {
            let mut raw = [0u8; 16];
            raw[..4].copy_from_slice(&n.to_le_bytes());
            let key = t.key(&ns, raw);
            t.pending(key, seqs(&[("r", u64::from(n))]));
            t.stored(key, Instant::now());
        }
        let big = t.stored.capacity();
        tokio::time::advance(Duration::from_secs(1)).await;
        store(&mut t, &ns, 1, seqs(&[("r", 1)]));
        tokio::time::advance(WINDOW).await;
        assert!(t.expire(Instant::now()));
        assert_eq!(t.len(), 1);
        assert!(t.stored.capacity() < big / 4);
        assert!(t.order.capacity() < 10_000 / 4);
    }
}
