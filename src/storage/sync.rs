//! Making what sled wrote survive a power cut.
//!
//! sled 0.34's `Db::flush` writes its log with `pwrite` and then calls
//! `sync_file_range`, which neither writes the file's metadata (its length
//! after an append) nor flushes the disk's write cache; sled's own
//! `fsync` runs only from its periodic flusher, which we turn off. Values
//! larger than a quarter of a log segment go to files of their own under
//! `blobs/`, which sled never syncs at all. So after `Db::flush` a commit
//! has survived a killed process, but not a kernel crash or a power cut.
//!
//! [`DiskSync::sync`] closes that gap without touching sled's code. A sync
//! covers an inode, not a descriptor, so it opens sled's files separately
//! and syncs, in this order:
//!
//! 1. every blob file (and any file beside `db`, such as a snapshot)
//!    written since the previous sync, with `fdatasync`;
//! 2. the `blobs` directory, with `fsync`, if its entries changed since
//!    the previous sync;
//! 3. the data file `db`, with `fdatasync` (which includes its length);
//! 4. the data directory, with `fsync`, if its entries changed.
//!
//! "Written" means complete: a file is synced once it has been closed after
//! writing (or renamed into place), never merely because it was created.
//! sled creates a blob file, writes it and closes it before the log entry
//! that points at it is complete, and `Db::flush` waits for that entry; so
//! by the time a flush has made a pointer durable, its file's close has
//! been seen. A file created while a sync runs (sled writes pages from
//! reading threads too, when a read splits or merges a node) is therefore
//! never synced half-written and then forgotten: it is synced by the sync
//! after its close.
//!
//! Which files and entries changed is learnt from inotify on both
//! directories (Linux): a sync reads the events queued since the previous
//! one (closes after writing, renames in, creations and removals), so its
//! cost follows what changed, not how many blob files the store holds
//! (listing a `blobs/` of a thousand files on every commit cost about 9 %
//! of the broker's CPU in W1). The first sync, and any sync after the
//! kernel dropped events (its queue overflowed), syncs every file. Where
//! inotify is unavailable (another OS, the per-user instance limit
//! reached) or a watch ends (a watched directory removed or replaced),
//! every sync lists both directories with each file's length and
//! modification time instead, and syncs the files that are new or changed
//! since the previous listing.
//!
//! The order matters for a power cut *during* a sync (nothing of that
//! commit is confirmed yet, but everything confirmed before must survive
//! and the store must still open). A blob file's name must be durable
//! before the log entry that points at it: a page sled writes as a blob is
//! not only this commit's data, it can be the right half of a split leaf or
//! a consolidated page holding messages confirmed long ago, and sled's
//! recovery skips a log entry whose blob file is missing, losing that page.
//! With `blobs/` synced after `db` (the order before), a cut between the
//! two lost such pages: the power-cut test with 64 KiB messages
//! (`roomq-loadtest chaos --power-loss --size 65536`) failed within 20
//! cycles (a missing page left sled's page table with a hole, and it
//! panicked on the next start, or messages came back wrong), and passed 40
//! cycles with this order (80 more with a variant that also synced
//! `blobs/` after `db`). The window this order leaves: sled
//! deletes a blob once the segment holding its replacement is written (not
//! yet synced by us), so a cut between steps 2 and 3 can make a deletion
//! durable before its replacement. The test has not hit it; ordinary
//! messages (under 6 KiB, see `sled_store::LOG_VALUE_BYTES`) make no blob
//! files at all, and keeping every value under sled's blob threshold
//! (splitting larger messages and cursors) would close both windows.
//!
//! A failed sync poisons the store for good: on Linux the kernel may mark
//! the pages clean after reporting the error, so a second `fsync` could
//! succeed without the data ever reaching the disk.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use super::{Flushed, StoreError};

/// sled 0.34's data file, inside the data directory.
const DATA_FILE: &str = "db";
/// sled 0.34's directory of blob files, inside the data directory.
const BLOB_DIR: &str = "blobs";

/// Syncs a sled data directory; see the module docs.
pub(super) struct DiskSync {
    dir: PathBuf,
    /// Held for the whole of a sync, so two syncs never interleave their
    /// directory listings.
    state: Mutex<SyncState>,
    /// Set by the first failed sync; every later call fails.
    poisoned: AtomicBool,
}

struct SyncState {
    /// `<dir>/db`, opened read-only: `fdatasync` works on any descriptor.
    data: File,
    /// How the files and entries that changed since the previous sync are
    /// found.
    tracker: Tracker,
}

/// What a sync must do besides the data file.
#[derive(Debug, Default, PartialEq, Eq)]
struct Pending {
    /// Files in `blobs/` written since the previous sync, to `fdatasync`.
    blobs: BTreeSet<OsString>,
    /// Files beside `db` (neither `db` nor `blobs`) written since the
    /// previous sync, to `fdatasync`.
    root: BTreeSet<OsString>,
    /// `blobs/` gained or lost entries: `fsync` it.
    blob_dir: bool,
    /// The data directory gained or lost entries: `fsync` it.
    root_dir: bool,
}

/// What happened to a name in one of the two directories.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    /// Created, removed or renamed away: the directory changed; the file,
    /// if any, is not complete yet (a new file is synced once it is closed
    /// after writing, [`Change::Written`]).
    Entry,
    /// A file was closed after writing: its data is complete; sync it.
    Written,
    /// A file was renamed into the directory: both.
    Arrived,
}

impl Pending {
    fn add(&mut self, in_blobs: bool, name: &std::ffi::OsStr, change: Change) {
        let (files, dir) = if in_blobs {
            (&mut self.blobs, &mut self.blob_dir)
        } else if name == DATA_FILE || name == BLOB_DIR {
            // `db` is synced on its own; `blobs` is a directory.
            self.root_dir |= change != Change::Written;
            return;
        } else {
            (&mut self.root, &mut self.root_dir)
        };
        if change != Change::Written {
            *dir = true;
        }
        if change != Change::Entry {
            files.insert(name.to_os_string());
        }
    }
}

/// Finds what changed in the two directories since the previous sync.
enum Tracker {
    /// inotify watches on both directories.
    #[cfg(target_os = "linux")]
    Watch(watch::Watcher),
    /// Listings with each file's length and modification time, compared
    /// with the previous ones.
    List {
        root: BTreeMap<OsString, Stamp>,
        blobs: BTreeMap<OsString, Stamp>,
    },
}

/// A file's length and modification time, as a listing saw them.
type Stamp = (u64, Option<std::time::SystemTime>);

impl Tracker {
    /// Starts tracking `dir`. Everything in it counts as new at the first
    /// [`Tracker::changes`].
    fn start(dir: &Path) -> Tracker {
        #[cfg(target_os = "linux")]
        match watch::Watcher::open(dir, &dir.join(BLOB_DIR)) {
            Ok(w) => return Tracker::Watch(w),
            Err(e) => tracing::warn!(
                error = %e,
                "no inotify watch on the data directory; every sync lists it instead"
            ),
        }
        Tracker::listing()
    }

    fn listing() -> Tracker {
        Tracker::List {
            root: BTreeMap::new(),
            blobs: BTreeMap::new(),
        }
    }

    /// What changed since the previous call (everything, at the first).
    fn changes(&mut self, dir: &Path) -> Result<Pending, StoreError> {
        match self {
            #[cfg(target_os = "linux")]
            Tracker::Watch(w) => match w.drain().map_err(|e| sync_error(dir, e))? {
                watch::Drained::Complete(pending) => Ok(pending),
                // The first sync, or the kernel dropped events: every
                // file is synced once.
                watch::Drained::Incomplete => everything(dir),
                // A watched directory went away or was replaced: the watch
                // can no longer see it. Listing from now on; this sync
                // covers every file.
                watch::Drained::Lost => {
                    tracing::warn!(
                        dir = %dir.display(),
                        "the inotify watch on the data directory ended; every sync lists it from now on"
                    );
                    *self = Tracker::listing();
                    self.changes(dir)
                }
            },
            Tracker::List { root, blobs } => {
                let mut pending = Pending::default();
                let now_blobs = stamped(&dir.join(BLOB_DIR))?;
                let now_root = stamped(dir)?;
                for (name, stamp) in &now_blobs {
                    match blobs.get(name) {
                        None => pending.add(true, name, Change::Arrived),
                        Some(before) if before != stamp => pending.add(true, name, Change::Written),
                        Some(_) => {}
                    }
                }
                for (name, stamp) in &now_root {
                    match root.get(name) {
                        None => pending.add(false, name, Change::Arrived),
                        Some(before) if before != stamp => {
                            pending.add(false, name, Change::Written)
                        }
                        Some(_) => {}
                    }
                }
                pending.blob_dir |= !now_blobs.keys().eq(blobs.keys());
                pending.root_dir |= !now_root.keys().eq(root.keys());
                *blobs = now_blobs;
                *root = now_root;
                Ok(pending)
            }
        }
    }
}

/// Every file in both directories, and both directories.
fn everything(dir: &Path) -> Result<Pending, StoreError> {
    let mut pending = Pending::default();
    for name in list(&dir.join(BLOB_DIR))? {
        pending.add(true, &name, Change::Arrived);
    }
    for name in list(dir)? {
        pending.add(false, &name, Change::Arrived);
    }
    pending.blob_dir = true;
    pending.root_dir = true;
    Ok(pending)
}

/// The files in `dir` with their stamps. A file removed while it is listed
/// is left out.
fn stamped(dir: &Path) -> Result<BTreeMap<OsString, Stamp>, StoreError> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).map_err(|e| sync_error(dir, e))? {
        let entry = entry.map_err(|e| sync_error(dir, e))?;
        match entry.metadata() {
            Ok(m) => {
                out.insert(entry.file_name(), (m.len(), m.modified().ok()));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(sync_error(&entry.path(), e)),
        }
    }
    Ok(out)
}

#[cfg(target_os = "linux")]
mod watch {
    //! inotify on the data directory and `blobs/`.

    use std::path::Path;

    use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};

    use super::{Change, Pending, BLOB_DIR};

    pub(super) struct Watcher {
        inotify: Inotify,
        blobs: WatchDescriptor,
        /// No drain yet: what was there before the watch began is unknown.
        fresh: bool,
        /// Holds at least one event with the longest name.
        buffer: Box<[u8]>,
    }

    /// What a drain found.
    pub(super) enum Drained {
        /// Every change since the previous drain.
        Complete(Pending),
        /// Not everything: the first drain (files made before the watch
        /// began), or the kernel dropped events (its queue overflowed).
        Incomplete,
        /// A watched directory was removed, or `blobs` was renamed or
        /// replaced: the watch no longer sees what sled writes.
        Lost,
    }

    impl Watcher {
        /// Watches both directories (their real paths, if `dir` is reached
        /// through a symbolic link). Files created from now on are
        /// reported; the caller deals with what is there already.
        pub(super) fn open(dir: &Path, blob_dir: &Path) -> std::io::Result<Watcher> {
            let inotify = Inotify::init()?;
            // A file is synced once it is closed after writing (sled writes
            // a blob file with `create_new`, then its bytes, then closes
            // it, all before the log entry that points at it is complete),
            // or once renamed into place; creations and removals change the
            // directory.
            let mask = WatchMask::CREATE
                | WatchMask::CLOSE_WRITE
                | WatchMask::MOVED_TO
                | WatchMask::DELETE
                | WatchMask::MOVED_FROM
                | WatchMask::DELETE_SELF
                | WatchMask::MOVE_SELF
                | WatchMask::ONLYDIR
                | WatchMask::DONT_FOLLOW;
            inotify.watches().add(std::fs::canonicalize(dir)?, mask)?;
            let blobs = inotify
                .watches()
                .add(std::fs::canonicalize(blob_dir)?, mask)?;
            Ok(Watcher {
                inotify,
                blobs,
                fresh: true,
                buffer: vec![0; 64 * 1024].into_boxed_slice(),
            })
        }

        /// The changes queued since the previous call.
        pub(super) fn drain(&mut self) -> std::io::Result<Drained> {
            let mut pending = Pending::default();
            let mut complete = !std::mem::replace(&mut self.fresh, false);
            let mut lost = false;
            loop {
                let events = match self.inotify.read_events(&mut self.buffer) {
                    Ok(events) => events,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                };
                for event in events {
                    let mask = event.mask;
                    if mask.intersects(
                        EventMask::IGNORED | EventMask::DELETE_SELF | EventMask::MOVE_SELF,
                    ) {
                        lost = true;
                        continue;
                    }
                    if mask.contains(EventMask::Q_OVERFLOW) {
                        complete = false;
                        continue;
                    }
                    let Some(name) = event.name else {
                        continue;
                    };
                    let in_blobs = event.wd == self.blobs;
                    // `blobs` itself removed, renamed or made again.
                    if !in_blobs && name == BLOB_DIR && !mask.contains(EventMask::CLOSE_WRITE) {
                        lost = true;
                    }
                    let change = if mask.contains(EventMask::CLOSE_WRITE) {
                        Change::Written
                    } else if mask.contains(EventMask::MOVED_TO) {
                        Change::Arrived
                    } else {
                        Change::Entry
                    };
                    pending.add(in_blobs, name, change);
                }
            }
            Ok(if lost {
                Drained::Lost
            } else if complete {
                Drained::Complete(pending)
            } else {
                Drained::Incomplete
            })
        }
    }
}

fn sync_error(path: &Path, source: std::io::Error) -> StoreError {
    StoreError::Sync {
        path: path.to_path_buf(),
        source,
    }
}

fn list(dir: &Path) -> Result<BTreeSet<OsString>, StoreError> {
    let mut names = BTreeSet::new();
    for entry in std::fs::read_dir(dir).map_err(|e| sync_error(dir, e))? {
        names.insert(entry.map_err(|e| sync_error(dir, e))?.file_name());
    }
    Ok(names)
}

/// `fdatasync` of a regular file by path. A file that is gone already (sled
/// removed the blob again) needs nothing.
fn sync_file(path: &Path) -> Result<(), StoreError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(sync_error(path, e)),
    };
    match file.metadata() {
        Ok(m) if m.is_file() => file.sync_data().map_err(|e| sync_error(path, e)),
        Ok(_) => Ok(()),
        Err(e) => Err(sync_error(path, e)),
    }
}

/// `fsync` of a directory: makes the names in it (new, removed, renamed)
/// durable.
fn sync_dir(path: &Path) -> Result<(), StoreError> {
    File::open(path)
        .and_then(|d| d.sync_all())
        .map_err(|e| sync_error(path, e))
}

impl DiskSync {
    /// Takes over a data directory sled has just opened, and syncs all of
    /// it once (sled may have created its files, and the directory itself).
    pub(super) fn open(dir: &Path) -> Result<Self, StoreError> {
        let data_path = dir.join(DATA_FILE);
        let data = File::open(&data_path).map_err(|e| sync_error(&data_path, e))?;
        let blob_dir = dir.join(BLOB_DIR);
        // Watching starts before the first sync, which syncs what is
        // there already; later files are reported.
        let state = SyncState {
            data,
            tracker: Tracker::start(dir),
        };
        let sync = DiskSync {
            dir: dir.to_path_buf(),
            state: Mutex::new(state),
            poisoned: AtomicBool::new(false),
        };
        // The first sync sees every file as new, so it syncs them all and
        // both directories.
        let _ = sync.sync()?;
        sync_dir(&blob_dir)?;
        sync_dir(dir)?;
        // The data directory's own name, if sled just created it.
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
        Ok(sync)
    }

    /// Fails if an earlier sync failed.
    pub(super) fn check(&self) -> Result<(), StoreError> {
        if self.poisoned.load(Ordering::Acquire) {
            return Err(StoreError::Poisoned);
        }
        Ok(())
    }

    /// Syncs everything sled has written so far (call it after
    /// `Db::flush`). See the module docs for the order.
    pub(super) fn sync(&self) -> Result<Flushed, StoreError> {
        self.check()?;
        let mut state = self.state.lock().map_err(|_| StoreError::Poisoned)?;
        let result = self.sync_locked(&mut state);
        if result.is_err() {
            self.poisoned.store(true, Ordering::Release);
        }
        result.map(|()| Flushed::new())
    }

    fn sync_locked(&self, state: &mut SyncState) -> Result<(), StoreError> {
        let blob_dir = self.dir.join(BLOB_DIR);
        let pending = state.tracker.changes(&self.dir)?;
        for name in &pending.blobs {
            sync_file(&blob_dir.join(name))?;
        }
        for name in &pending.root {
            sync_file(&self.dir.join(name))?;
        }
        // Before `db`: the names of new blobs must be durable before the
        // pointers to them (see the module docs).
        if pending.blob_dir {
            sync_dir(&blob_dir)?;
        }
        state
            .data
            .sync_data()
            .map_err(|e| sync_error(&self.dir.join(DATA_FILE), e))?;
        if pending.root_dir {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn names(list: &[&str]) -> BTreeSet<OsString> {
        list.iter().map(OsString::from).collect()
    }

    /// A data directory as sled lays it out, with one blob.
    fn layout() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(DATA_FILE), b"log").unwrap();
        std::fs::write(dir.path().join("conf"), b"conf").unwrap();
        std::fs::create_dir(dir.path().join(BLOB_DIR)).unwrap();
        std::fs::write(dir.path().join(BLOB_DIR).join("100"), b"b").unwrap();
        dir
    }

    fn listing() -> Tracker {
        Tracker::listing()
    }

    /// The watch reports what the listing finds, step by step, and the
    /// first call of either counts everything as new.
    #[cfg(target_os = "linux")]
    #[test]
    fn the_watch_and_the_listing_see_the_same_changes() {
        let dir = layout();
        let d = dir.path();
        let blobs = d.join(BLOB_DIR);
        let mut watch = Tracker::start(d);
        assert!(matches!(watch, Tracker::Watch(_)));
        let mut listing = listing();
        // The first call (DiskSync::open's sync) covers every file.
        let first = listing.changes(d).unwrap();
        assert_eq!(first, everything(d).unwrap());
        assert_eq!(first.blobs, names(&["100"]));
        assert_eq!(first.root, names(&["conf"]));
        assert!(first.blob_dir && first.root_dir);
        assert_eq!(watch.changes(d).unwrap(), first);

        // Nothing happened.
        assert_eq!(listing.changes(d).unwrap(), Pending::default());
        assert_eq!(watch.changes(d).unwrap(), Pending::default());

        // sled writes two blobs and removes the old one.
        std::fs::write(blobs.join("200"), b"b").unwrap();
        std::fs::write(blobs.join("300"), b"b").unwrap();
        std::fs::remove_file(blobs.join("100")).unwrap();
        let expected = Pending {
            blobs: names(&["200", "300"]),
            blob_dir: true,
            ..Pending::default()
        };
        assert_eq!(listing.changes(d).unwrap(), expected);
        assert_eq!(watch.changes(d).unwrap(), expected);

        // Only a removal: the directory, no file.
        std::fs::remove_file(blobs.join("200")).unwrap();
        let expected = Pending {
            blob_dir: true,
            ..Pending::default()
        };
        assert_eq!(listing.changes(d).unwrap(), expected);
        assert_eq!(watch.changes(d).unwrap(), expected);

        // A file beside `db`, renamed into place (as a snapshot would be).
        std::fs::write(d.join("snap.tmp"), b"s").unwrap();
        assert_eq!(watch.changes(d).unwrap().root, names(&["snap.tmp"]));
        assert_eq!(listing.changes(d).unwrap().root, names(&["snap.tmp"]));
        std::fs::rename(d.join("snap.tmp"), d.join("snap.1")).unwrap();
        let expected = Pending {
            root: names(&["snap.1"]),
            root_dir: true,
            ..Pending::default()
        };
        assert_eq!(listing.changes(d).unwrap(), expected);
        assert_eq!(watch.changes(d).unwrap(), expected);
    }

    /// A blob still being written when a sync runs is synced by the sync
    /// after it is closed, not half-written and then forgotten; the
    /// listing, which cannot see a close, syncs it again once its length
    /// or time changed.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_file_still_being_written_is_synced_after_it_is_closed() {
        use std::io::Write as _;
        let dir = layout();
        let d = dir.path();
        let mut watch = Tracker::start(d);
        let mut listing = listing();
        let _ = watch.changes(d).unwrap();
        let _ = listing.changes(d).unwrap();

        let path = d.join(BLOB_DIR).join("400");
        let mut file = std::fs::File::create_new(&path).unwrap();
        file.write_all(b"first half").unwrap();
        // Seen as a new entry only: nothing to sync yet.
        let during = watch.changes(d).unwrap();
        assert!(during.blob_dir);
        assert!(during.blobs.is_empty(), "{during:?}");
        assert_eq!(listing.changes(d).unwrap().blobs, names(&["400"]));

        file.write_all(b", second half").unwrap();
        drop(file);
        let after = watch.changes(d).unwrap();
        assert_eq!(after.blobs, names(&["400"]));
        assert!(!after.blob_dir, "closing changes no entry");
        assert_eq!(listing.changes(d).unwrap().blobs, names(&["400"]));
        assert_eq!(watch.changes(d).unwrap(), Pending::default());
    }

    /// A watched directory made again: the watch no longer sees it, so the
    /// tracker lists from then on, starting with everything.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_replaced_directory_ends_the_watch_and_listing_takes_over() {
        let dir = layout();
        let d = dir.path();
        let mut tracker = Tracker::start(d);
        let _ = tracker.changes(d).unwrap();
        std::fs::remove_dir_all(d.join(BLOB_DIR)).unwrap();
        std::fs::create_dir(d.join(BLOB_DIR)).unwrap();
        std::fs::write(d.join(BLOB_DIR).join("500"), b"b").unwrap();
        let pending = tracker.changes(d).unwrap();
        assert!(matches!(tracker, Tracker::List { .. }));
        assert_eq!(pending.blobs, names(&["500"]));
        assert!(pending.blob_dir && pending.root_dir);
        // From then on the listing's own comparisons.
        std::fs::write(d.join(BLOB_DIR).join("600"), b"b").unwrap();
        assert_eq!(tracker.changes(d).unwrap().blobs, names(&["600"]));
    }

    #[test]
    fn a_sync_after_new_blobs_succeeds_and_a_vanished_blob_needs_nothing() {
        let dir = layout();
        let d = dir.path();
        let sync = DiskSync::open(d).unwrap();
        std::fs::write(d.join(BLOB_DIR).join("400"), b"b").unwrap();
        let _ = sync.sync().unwrap();
        // Created and removed again before the sync.
        std::fs::write(d.join(BLOB_DIR).join("500"), b"b").unwrap();
        std::fs::remove_file(d.join(BLOB_DIR).join("500")).unwrap();
        let _ = sync.sync().unwrap();
        sync.check().unwrap();
    }
}
