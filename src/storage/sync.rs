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
//! 1. every blob file (and any new file beside `db`, such as a snapshot)
//!    that appeared since the previous sync, with `fdatasync`;
//! 2. the data file `db`, with `fdatasync` (which includes its length);
//! 3. the `blobs` directory and the data directory, with `fsync`, if their
//!    entries changed since the previous sync.
//!
//! Which files and entries are new is learnt from inotify on both
//! directories (Linux): a sync reads the events queued since the previous
//! one, so its cost follows what changed, not how many blob files the store
//! holds (listing a `blobs/` of a thousand files on every commit cost about
//! 9 % of the broker's CPU in W1). Where inotify is unavailable (another
//! OS, the per-user instance limit reached) or its queue overflowed, the
//! directories are listed instead: compared with the previous listing, or,
//! after an overflow, every file is synced once.
//!
//! The order matters for a power cut *during* a sync (nothing of that
//! commit is confirmed yet, but the store must still open): sled deletes a
//! blob only once the log entry that replaced it is written, so the
//! directory, which makes those deletions durable, is synced after the data
//! file that holds the replacements. The one window left — a cut between
//! steps 2 and 3 — can lose the names of blobs created in this commit;
//! sled's recovery reads a log entry whose blob is missing as a dangling
//! pointer and skips it, so only the unconfirmed commit's pages are
//! affected. The power-cut chaos test (`roomq-loadtest chaos --power-loss`)
//! cuts power at random moments, inside syncs too.
//!
//! A failed sync poisons the store for good: on Linux the kernel may mark
//! the pages clean after reporting the error, so a second `fsync` could
//! succeed without the data ever reaching the disk.

use std::collections::BTreeSet;
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
    /// New files in `blobs/`, to `fdatasync`.
    blobs: BTreeSet<OsString>,
    /// New files beside `db` (neither `db` nor `blobs`), to `fdatasync`.
    root: BTreeSet<OsString>,
    /// `blobs/` gained or lost entries: `fsync` it.
    blob_dir: bool,
    /// The data directory gained or lost entries: `fsync` it.
    root_dir: bool,
}

impl Pending {
    fn add(&mut self, in_blobs: bool, name: &std::ffi::OsStr, created: bool) {
        if in_blobs {
            self.blob_dir = true;
            if created {
                self.blobs.insert(name.to_os_string());
            }
        } else {
            self.root_dir = true;
            if created && name != DATA_FILE && name != BLOB_DIR {
                self.root.insert(name.to_os_string());
            }
        }
    }
}

/// Finds what changed in the two directories since the previous sync.
enum Tracker {
    /// inotify watches on both directories.
    #[cfg(target_os = "linux")]
    Watch(watch::Watcher),
    /// Listings, compared with the previous ones.
    List {
        root: BTreeSet<OsString>,
        blobs: BTreeSet<OsString>,
    },
}

impl Tracker {
    /// Starts tracking `dir`. Everything in it counts as new at the first
    /// [`Tracker::changes`].
    fn start(dir: &Path) -> Tracker {
        #[cfg(target_os = "linux")]
        match watch::Watcher::open(dir, &dir.join(BLOB_DIR)) {
            Ok(w) => return Tracker::Watch(w),
            Err(e) => tracing::info!(
                error = %e,
                "no inotify watch on the data directory; syncs list it instead"
            ),
        }
        Tracker::List {
            root: BTreeSet::new(),
            blobs: BTreeSet::new(),
        }
    }

    /// What changed since the previous call (everything, at the first).
    fn changes(&mut self, dir: &Path) -> Result<Pending, StoreError> {
        match self {
            #[cfg(target_os = "linux")]
            Tracker::Watch(w) => match w.drain().map_err(|e| sync_error(dir, e))? {
                Some(pending) => Ok(pending),
                // The first sync, or the kernel dropped events: every
                // file is synced once.
                None => everything(dir),
            },
            Tracker::List { root, blobs } => {
                let blob_dir = dir.join(BLOB_DIR);
                let now_blobs = list(&blob_dir)?;
                let now_root = list(dir)?;
                let mut pending = Pending::default();
                for name in now_blobs.difference(blobs) {
                    pending.add(true, name, true);
                }
                for name in now_root.difference(root) {
                    pending.add(false, name, true);
                }
                pending.blob_dir = now_blobs != *blobs;
                pending.root_dir = now_root != *root;
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
        pending.add(true, &name, true);
    }
    for name in list(dir)? {
        pending.add(false, &name, true);
    }
    pending.blob_dir = true;
    pending.root_dir = true;
    Ok(pending)
}

#[cfg(target_os = "linux")]
mod watch {
    //! inotify on the data directory and `blobs/`.

    use std::path::Path;

    use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};

    use super::Pending;

    pub(super) struct Watcher {
        inotify: Inotify,
        blobs: WatchDescriptor,
        /// No drain yet: what was there before the watch began is unknown.
        fresh: bool,
        /// Holds at least one event with the longest name.
        buffer: Box<[u8]>,
    }

    impl Watcher {
        /// Watches both directories. Files created from now on are
        /// reported; the caller deals with what is there already.
        pub(super) fn open(dir: &Path, blob_dir: &Path) -> std::io::Result<Watcher> {
            let inotify = Inotify::init()?;
            let mask = WatchMask::CREATE
                | WatchMask::MOVED_TO
                | WatchMask::DELETE
                | WatchMask::MOVED_FROM
                | WatchMask::ONLYDIR
                | WatchMask::DONT_FOLLOW;
            inotify.watches().add(dir, mask)?;
            let blobs = inotify.watches().add(blob_dir, mask)?;
            Ok(Watcher {
                inotify,
                blobs,
                fresh: true,
                buffer: vec![0; 64 * 1024].into_boxed_slice(),
            })
        }

        /// The changes queued since the previous call, or `None` if they
        /// do not tell everything: at the first call (files made before
        /// the watch began), or when the kernel dropped events (its queue
        /// overflowed) or a watch ended.
        pub(super) fn drain(&mut self) -> std::io::Result<Option<Pending>> {
            let mut pending = Pending::default();
            let mut complete = !std::mem::replace(&mut self.fresh, false);
            loop {
                let events = match self.inotify.read_events(&mut self.buffer) {
                    Ok(events) => events,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                };
                for event in events {
                    if event
                        .mask
                        .intersects(EventMask::Q_OVERFLOW | EventMask::IGNORED)
                    {
                        complete = false;
                        continue;
                    }
                    let Some(name) = event.name else {
                        continue;
                    };
                    let created = event
                        .mask
                        .intersects(EventMask::CREATE | EventMask::MOVED_TO);
                    pending.add(event.wd == self.blobs, name, created);
                }
            }
            Ok(complete.then_some(pending))
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
        state
            .data
            .sync_data()
            .map_err(|e| sync_error(&self.dir.join(DATA_FILE), e))?;
        if pending.blob_dir {
            sync_dir(&blob_dir)?;
        }
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
        let mut listing = Tracker::List {
            root: BTreeSet::new(),
            blobs: BTreeSet::new(),
        };
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
