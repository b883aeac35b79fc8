//! A FUSE file system that simulates power cuts, for testing what a
//! program's data survives.
//!
//! It passes every operation through to a backing directory, so the
//! program under test sees an ordinary file system, and remembers what a
//! disk would hold if the power went now: per file, the bytes as of its
//! last `fsync`/`fdatasync`; per directory, the names as of its last
//! `fsync`. [`Mounted::cut`] makes the backing directory look exactly like
//! that (writes and names that were never synced are gone; optionally some
//! sectors of unsynced writes survive, torn). Run it only while nothing has
//! the file system open: kill the program under test (SIGKILL) and reap it
//! first, then cut, then start the program again on the same mount.
//!
//! The model is the strict one POSIX allows (and that Jepsen's LazyFS made
//! common in testing): it does not assume that a file system orders
//! metadata and data for you, and `sync_file_range` syncs nothing.
//!
//! Layout:
//! - `model`: the state and the cut, with no FUSE (unit-tested directly).
//! - `fs`: the FUSE request handlers over the model.

mod fs;
pub mod model;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub use model::CutStats;

/// A mounted power-cut file system. Dropping it unmounts.
pub struct Mounted {
    model: Arc<Mutex<model::Model>>,
    mountpoint: PathBuf,
    session: Option<fuser::BackgroundSession>,
}

impl Mounted {
    /// Mounts at `mountpoint` (an empty directory) a file system whose live
    /// files are kept in `backing` and whose synced state in `durable`
    /// (both empty or missing). Needs `/dev/fuse` and the right to mount
    /// (root, or `fusermount3` from Debian's `fuse3`).
    pub fn mount(backing: &Path, durable: &Path, mountpoint: &Path) -> std::io::Result<Mounted> {
        let model = Arc::new(Mutex::new(model::Model::new(backing, durable)?));
        let fs = fs::PowercutFs {
            model: model.clone(),
        };
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            fuser::MountOption::FSName("roomq-powercut".into()),
            fuser::MountOption::Subtype("roomq-powercut".into()),
            fuser::MountOption::NoAtime,
        ];
        let session = fuser::spawn_mount(fs, mountpoint, &config)?;
        Ok(Mounted {
            model,
            mountpoint: mountpoint.to_path_buf(),
            session: Some(session),
        })
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// Cuts the power: the backing directory becomes what was synced. With
    /// `tear`, each 4 KiB sector of an unsynced overwrite survives when the
    /// coin says so. Nothing may have the file system open.
    pub fn cut(&self, tear: Option<&mut dyn FnMut() -> bool>) -> std::io::Result<CutStats> {
        let mut model = self
            .model
            .lock()
            .map_err(|_| std::io::Error::other("the file system's state is poisoned"))?;
        model.cut(tear)
    }

    /// Unmounts and waits for the FUSE session to end.
    pub fn unmount(mut self) -> std::io::Result<()> {
        match self.session.take() {
            Some(s) => s.umount_and_join(),
            None => Ok(()),
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            let _ = s.umount_and_join();
        }
    }
}
