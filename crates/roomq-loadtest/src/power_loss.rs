//! `chaos --power-loss`: the broker's data directory lives on a
//! [`roomq_powercut`] FUSE file system, and every kill is also a power
//! cut: after SIGKILL (and reaping), everything the broker wrote but did
//! not `fsync` — bytes, and names in directories not synced — is dropped,
//! as a disk would lose it. With `--tear`, some 4 KiB sectors of unsynced
//! overwrites survive (torn writes).
//!
//! The FUSE server runs on threads of this process; the mount is removed
//! when the run ends (also on error, when [`PowerLoss`] is dropped).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use roomq_powercut::Mounted;
use serde::Serialize;

use crate::load::SplitMix64;

/// How long a cut waits after the kill, so that FUSE requests the dead
/// process had already sent are handled before the disk "loses power".
const SETTLE: Duration = Duration::from_millis(100);

/// What the cuts dropped, over the run.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct CutTotals {
    pub cuts: u32,
    /// Bytes written but never synced, dropped.
    pub dropped_bytes: u64,
    /// Sectors of those that survived anyway (`--tear`).
    pub torn_sectors: u64,
    /// Directories whose unsynced creates, removes or renames were undone.
    pub reverted_dirs: u64,
}

/// A mounted power-cut file system and the coin for torn writes.
pub struct PowerLoss {
    fs: Mounted,
    tear: bool,
    rng: SplitMix64,
    pub totals: CutTotals,
}

impl PowerLoss {
    /// Mounts under `root` (a fresh temporary directory); returns the data
    /// directory for `roomqd`, inside the mount.
    pub fn mount(root: &Path, tear: bool, seed: u64) -> anyhow::Result<(PowerLoss, PathBuf)> {
        let mnt = root.join("mnt");
        std::fs::create_dir_all(&mnt).context("creating the mount point")?;
        let fs = Mounted::mount(&root.join("live"), &root.join("durable"), &mnt).context(
            "mounting the power-cut file system (needs /dev/fuse and root, or fusermount3 \
             from Debian's fuse3)",
        )?;
        let power = PowerLoss {
            fs,
            tear,
            rng: SplitMix64(seed ^ 0x0070_0c07),
            totals: CutTotals::default(),
        };
        Ok((power, mnt.join("data")))
    }

    /// The cut itself: call it after the broker was killed and reaped.
    pub async fn cut(&mut self) -> anyhow::Result<()> {
        tokio::time::sleep(SETTLE).await;
        let rng = &mut self.rng;
        let mut coin = || rng.next() & 1 == 1;
        let tear: Option<&mut dyn FnMut() -> bool> = if self.tear { Some(&mut coin) } else { None };
        let stats = self.fs.cut(tear).context("cutting the power")?;
        self.totals.cuts += 1;
        self.totals.dropped_bytes += stats.dropped_bytes;
        self.totals.torn_sectors += stats.torn_sectors;
        self.totals.reverted_dirs += stats.reverted_dirs;
        Ok(())
    }

    /// Unmounts.
    pub fn unmount(self) -> anyhow::Result<()> {
        self.fs
            .unmount()
            .context("unmounting the power-cut file system")
    }
}
