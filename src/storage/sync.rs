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
    /// Names in the data directory at the previous sync.
    root: BTreeSet<OsString>,
    /// Names in `blobs/` at the previous sync.
    blobs: BTreeSet<OsString>,
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
        let state = SyncState {
            data,
            root: BTreeSet::new(),
            blobs: BTreeSet::new(),
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
        let blobs = list(&blob_dir)?;
        for name in blobs.difference(&state.blobs) {
            sync_file(&blob_dir.join(name))?;
        }
        let root = list(&self.dir)?;
        for name in root.difference(&state.root) {
            if name != DATA_FILE && name != BLOB_DIR {
                sync_file(&self.dir.join(name))?;
            }
        }
        state
            .data
            .sync_data()
            .map_err(|e| sync_error(&self.dir.join(DATA_FILE), e))?;
        if blobs != state.blobs {
            sync_dir(&blob_dir)?;
            state.blobs = blobs;
        }
        if root != state.root {
            sync_dir(&self.dir)?;
            state.root = root;
        }
        Ok(())
    }
}
