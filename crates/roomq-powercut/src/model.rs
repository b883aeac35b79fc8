//! The file system's state and the power cut, with no FUSE in sight (so it
//! can be tested directly).
//!
//! Every operation is applied to the *live* backing directory at once, so
//! programs see an ordinary file system. Beside it the model keeps what a
//! disk would hold if the power went now:
//!
//! - per file, a *durable copy* (`<durable>/<ino>`), brought up to date by
//!   `fsync`/`fdatasync` of that file: only the byte ranges written since
//!   the previous sync are copied, and the length;
//! - per directory, the entries (name → inode) as they were at its last
//!   `fsync`. Creating, removing or renaming a file changes only the live
//!   entries until the directory itself is synced.
//!
//! [`Model::cut`] then rebuilds the live directory from those: the tree of
//! durable entries from the root, each file with its durable contents (a
//! file whose name is durable but that was never synced comes back empty).
//! Optionally, writes not yet synced are *torn*: each 4 KiB sector of them
//! that lies within the file's durable length survives or not by a coin
//! flip, as a disk that wrote some sectors before the power went would
//! leave it. This is the strict model POSIX allows, not what one file
//! system happens to do.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The root directory's inode number (FUSE's).
pub const ROOT: u64 = 1;

/// The unit a torn write is made of.
pub const SECTOR: u64 = 4096;

/// File or directory: the only kinds this file system holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
}

#[derive(Debug)]
struct Node {
    kind: Kind,
    /// Where the node is in the live tree: `None` once unlinked.
    place: Option<(u64, OsString)>,
    /// Live entries (directories).
    entries: BTreeMap<OsString, u64>,
    /// Entries at the directory's last sync.
    durable_entries: BTreeMap<OsString, u64>,
    /// Byte ranges written since the file's last sync, `[start, end)`,
    /// sorted and merged.
    dirty: Vec<(u64, u64)>,
}

impl Node {
    fn new(kind: Kind, parent: u64, name: &OsStr) -> Node {
        Node {
            kind,
            place: Some((parent, name.to_os_string())),
            entries: BTreeMap::new(),
            durable_entries: BTreeMap::new(),
            dirty: Vec::new(),
        }
    }

    fn mark_dirty(&mut self, start: u64, end: u64) {
        if end <= start {
            return;
        }
        self.dirty.push((start, end));
        self.dirty.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(self.dirty.len());
        for &(s, e) in &self.dirty {
            match merged.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        self.dirty = merged;
    }
}

/// An open file: the live file, and which inode it belongs to.
#[derive(Debug)]
pub struct Handle {
    pub ino: u64,
    pub file: File,
}

/// What a cut did (for the caller's log).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CutStats {
    /// Files in the tree after the cut.
    pub files: u64,
    /// Bytes written but not synced, dropped.
    pub dropped_bytes: u64,
    /// Of those, sectors that survived anyway (torn writes).
    pub torn_sectors: u64,
    /// Names created, removed or renamed whose directory was not synced.
    pub reverted_dirs: u64,
}

/// The state of a power-cut file system; see the module docs.
#[derive(Debug)]
pub struct Model {
    live: PathBuf,
    durable: PathBuf,
    nodes: HashMap<u64, Node>,
    next_ino: u64,
    handles: HashMap<u64, Handle>,
    next_fh: u64,
}

fn not_found() -> io::Error {
    io::Error::from(io::ErrorKind::NotFound)
}

fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

// Linux errno values (std has no names for them).
const ENOTDIR: i32 = 20;
const EISDIR: i32 = 21;
const ENOTEMPTY: i32 = 39;
const EEXIST: i32 = 17;
const EINVAL: i32 = 22;

impl Model {
    /// A model over `live` (which must be empty) keeping durable copies in
    /// `durable` (also empty). Both directories are created if missing.
    pub fn new(live: &Path, durable: &Path) -> io::Result<Model> {
        std::fs::create_dir_all(live)?;
        std::fs::create_dir_all(durable)?;
        if std::fs::read_dir(live)?.next().is_some() {
            return Err(io::Error::other(format!(
                "{} must be empty: a power-cut file system starts from nothing",
                live.display()
            )));
        }
        let mut nodes = HashMap::new();
        let mut root = Node::new(Kind::Dir, ROOT, OsStr::new(""));
        root.place = Some((ROOT, OsString::new()));
        nodes.insert(ROOT, root);
        Ok(Model {
            live: live.to_path_buf(),
            durable: durable.to_path_buf(),
            nodes,
            next_ino: ROOT + 1,
            handles: HashMap::new(),
            next_fh: 1,
        })
    }

    fn node(&self, ino: u64) -> io::Result<&Node> {
        self.nodes.get(&ino).ok_or_else(not_found)
    }

    fn node_mut(&mut self, ino: u64) -> io::Result<&mut Node> {
        self.nodes.get_mut(&ino).ok_or_else(not_found)
    }

    /// The live path of a linked node.
    pub fn path(&self, ino: u64) -> io::Result<PathBuf> {
        let mut names = Vec::new();
        let mut at = ino;
        while at != ROOT {
            let (parent, name) = self.node(at)?.place.clone().ok_or_else(not_found)?;
            names.push(name);
            at = parent;
            if names.len() > 4096 {
                return Err(errno(EINVAL));
            }
        }
        let mut path = self.live.clone();
        for name in names.iter().rev() {
            path.push(name);
        }
        Ok(path)
    }

    fn durable_path(&self, ino: u64) -> PathBuf {
        self.durable.join(ino.to_string())
    }

    pub fn kind(&self, ino: u64) -> io::Result<Kind> {
        Ok(self.node(ino)?.kind)
    }

    /// Metadata of a node: by path, or through an open handle once it is
    /// unlinked.
    pub fn metadata(&self, ino: u64) -> io::Result<std::fs::Metadata> {
        match self.path(ino) {
            Ok(p) => std::fs::symlink_metadata(p),
            Err(e) => self
                .handles
                .values()
                .find(|h| h.ino == ino)
                .ok_or(e)?
                .file
                .metadata(),
        }
    }

    pub fn lookup(&self, parent: u64, name: &OsStr) -> io::Result<u64> {
        let dir = self.node(parent)?;
        if dir.kind != Kind::Dir {
            return Err(errno(ENOTDIR));
        }
        dir.entries.get(name).copied().ok_or_else(not_found)
    }

    /// Entries of a directory, in name order.
    pub fn entries(&self, ino: u64) -> io::Result<Vec<(OsString, u64, Kind)>> {
        let dir = self.node(ino)?;
        if dir.kind != Kind::Dir {
            return Err(errno(ENOTDIR));
        }
        Ok(dir
            .entries
            .iter()
            .map(|(n, i)| {
                let kind = self.nodes.get(i).map_or(Kind::File, |n| n.kind);
                (n.clone(), *i, kind)
            })
            .collect())
    }

    /// The parent of a directory (the root is its own).
    pub fn parent(&self, ino: u64) -> u64 {
        self.nodes
            .get(&ino)
            .and_then(|n| n.place.as_ref())
            .map_or(ROOT, |(p, _)| *p)
    }

    fn add_node(&mut self, kind: Kind, parent: u64, name: &OsStr) -> io::Result<u64> {
        let ino = self.next_ino;
        self.next_ino += 1;
        self.nodes.insert(ino, Node::new(kind, parent, name));
        self.node_mut(parent)?
            .entries
            .insert(name.to_os_string(), ino);
        Ok(ino)
    }

    fn check_new(&self, parent: u64, name: &OsStr) -> io::Result<PathBuf> {
        let dir = self.node(parent)?;
        if dir.kind != Kind::Dir {
            return Err(errno(ENOTDIR));
        }
        if dir.entries.contains_key(name) {
            return Err(errno(EEXIST));
        }
        Ok(self.path(parent)?.join(name))
    }

    /// Creates and opens a new file; returns (inode, handle).
    pub fn create(&mut self, parent: u64, name: &OsStr, mode: u32) -> io::Result<(u64, u64)> {
        let path = self.check_new(parent, name)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(mode & 0o7777)
            .open(&path)?;
        let ino = self.add_node(Kind::File, parent, name)?;
        Ok((ino, self.add_handle(ino, file)))
    }

    pub fn mkdir(&mut self, parent: u64, name: &OsStr, mode: u32) -> io::Result<u64> {
        let path = self.check_new(parent, name)?;
        std::fs::create_dir(&path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode & 0o7777))?;
        self.add_node(Kind::Dir, parent, name)
    }

    fn add_handle(&mut self, ino: u64, file: File) -> u64 {
        let fh = self.next_fh;
        self.next_fh += 1;
        self.handles.insert(fh, Handle { ino, file });
        fh
    }

    /// Opens an existing file (always read-write underneath; the kernel has
    /// checked the caller's access mode). `truncate` empties it.
    pub fn open(&mut self, ino: u64, truncate: bool) -> io::Result<u64> {
        if self.kind(ino)? != Kind::File {
            return Err(errno(EISDIR));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.path(ino)?)?;
        if truncate {
            let len = file.metadata()?.len();
            file.set_len(0)?;
            self.node_mut(ino)?.mark_dirty(0, len);
        }
        Ok(self.add_handle(ino, file))
    }

    pub fn release(&mut self, fh: u64) {
        self.handles.remove(&fh);
    }

    pub fn read(&self, fh: u64, offset: u64, size: u32) -> io::Result<Vec<u8>> {
        let h = self.handles.get(&fh).ok_or_else(|| errno(9))?;
        let mut buf = vec![0u8; size as usize];
        let mut filled = 0usize;
        while filled < buf.len() {
            let Some(rest) = buf.get_mut(filled..) else {
                break;
            };
            let n = h.file.read_at(rest, offset + filled as u64)?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        buf.truncate(filled);
        Ok(buf)
    }

    pub fn write(&mut self, fh: u64, offset: u64, data: &[u8]) -> io::Result<u32> {
        let h = self.handles.get(&fh).ok_or_else(|| errno(9))?;
        h.file.write_all_at(data, offset)?;
        let ino = h.ino;
        self.node_mut(ino)?
            .mark_dirty(offset, offset + data.len() as u64);
        u32::try_from(data.len()).map_err(|_| errno(EINVAL))
    }

    /// Changes a file's length (truncate or extend with zeros).
    pub fn set_len(&mut self, ino: u64, fh: Option<u64>, len: u64) -> io::Result<()> {
        let old = self.metadata(ino)?.len();
        match fh.and_then(|fh| self.handles.get(&fh)) {
            Some(h) => h.file.set_len(len)?,
            None => OpenOptions::new()
                .write(true)
                .open(self.path(ino)?)?
                .set_len(len)?,
        }
        self.node_mut(ino)?.mark_dirty(old.min(len), old.max(len));
        Ok(())
    }

    pub fn set_mode(&mut self, ino: u64, mode: u32) -> io::Result<()> {
        std::fs::set_permissions(
            self.path(ino)?,
            std::fs::Permissions::from_mode(mode & 0o7777),
        )
    }

    /// Removes a name (a file, or an empty directory with `dir`).
    pub fn remove(&mut self, parent: u64, name: &OsStr, dir: bool) -> io::Result<()> {
        let ino = self.lookup(parent, name)?;
        let node = self.node(ino)?;
        match (node.kind, dir) {
            (Kind::Dir, false) => return Err(errno(EISDIR)),
            (Kind::File, true) => return Err(errno(ENOTDIR)),
            (Kind::Dir, true) if !node.entries.is_empty() => return Err(errno(ENOTEMPTY)),
            _ => {}
        }
        let path = self.path(ino)?;
        if dir {
            std::fs::remove_dir(&path)?;
        } else {
            std::fs::remove_file(&path)?;
        }
        self.node_mut(parent)?.entries.remove(name);
        self.node_mut(ino)?.place = None;
        Ok(())
    }

    pub fn rename(
        &mut self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        no_replace: bool,
    ) -> io::Result<()> {
        let ino = self.lookup(parent, name)?;
        if self.kind(new_parent)? != Kind::Dir {
            return Err(errno(ENOTDIR));
        }
        let replaced = self.lookup(new_parent, new_name).ok();
        if replaced.is_some() && no_replace {
            return Err(errno(EEXIST));
        }
        if replaced == Some(ino) {
            return Ok(());
        }
        let from = self.path(ino)?;
        let to = self.path(new_parent)?.join(new_name);
        std::fs::rename(&from, &to)?;
        if let Some(old) = replaced {
            self.node_mut(old)?.place = None;
        }
        self.node_mut(parent)?.entries.remove(name);
        self.node_mut(new_parent)?
            .entries
            .insert(new_name.to_os_string(), ino);
        self.node_mut(ino)?.place = Some((new_parent, new_name.to_os_string()));
        Ok(())
    }

    /// `fsync`/`fdatasync` of a file: its durable copy catches up with the
    /// live one. Of a directory: its durable entries become the live ones.
    pub fn sync(&mut self, ino: u64, fh: Option<u64>) -> io::Result<()> {
        match self.kind(ino)? {
            Kind::Dir => {
                let node = self.node_mut(ino)?;
                node.durable_entries = node.entries.clone();
                Ok(())
            }
            Kind::File => self.sync_file(ino, fh),
        }
    }

    fn sync_file(&mut self, ino: u64, fh: Option<u64>) -> io::Result<()> {
        let live = match fh.and_then(|fh| self.handles.get(&fh)) {
            Some(h) => h.file.try_clone()?,
            None => match self.handles.values().find(|h| h.ino == ino) {
                Some(h) => h.file.try_clone()?,
                None => File::open(self.path(ino)?)?,
            },
        };
        let durable = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(self.durable_path(ino))?;
        let len = live.metadata()?.len();
        let dirty = std::mem::take(&mut self.node_mut(ino)?.dirty);
        let mut buf = vec![0u8; 256 * 1024];
        for (start, end) in dirty {
            let end = end.min(len);
            let mut at = start;
            while at < end {
                let n = usize::try_from((end - at).min(buf.len() as u64)).unwrap_or(0);
                let Some(chunk) = buf.get_mut(..n) else {
                    break;
                };
                live.read_exact_at(chunk, at)?;
                durable.write_all_at(chunk, at)?;
                at += n as u64;
            }
        }
        durable.set_len(len)?;
        Ok(())
    }

    /// The power cut: see the module docs. `tear` is a random source for
    /// torn writes (`None`: every unsynced write is dropped whole). Every
    /// open handle is dropped: call it only when no program has the file
    /// system open (the broker was killed and reaped).
    pub fn cut(&mut self, mut tear: Option<&mut dyn FnMut() -> bool>) -> io::Result<CutStats> {
        let mut stats = CutStats::default();
        self.handles.clear();
        // Torn writes land in the durable copies first.
        let inos: Vec<u64> = self.nodes.keys().copied().collect();
        for ino in &inos {
            let Some(node) = self.nodes.get(ino) else {
                continue;
            };
            if node.kind != Kind::File {
                continue;
            }
            stats.dropped_bytes += node.dirty.iter().map(|(s, e)| e - s).sum::<u64>();
            let Some(coin) = tear.as_mut() else {
                continue;
            };
            let (Ok(live), Ok(durable)) = (
                self.path(*ino).and_then(File::open),
                OpenOptions::new().write(true).open(self.durable_path(*ino)),
            ) else {
                continue;
            };
            let durable_len = durable.metadata()?.len();
            let mut sector = vec![0u8; SECTOR as usize];
            for &(start, end) in &node.dirty {
                let mut s = start / SECTOR * SECTOR;
                while s < end.min(durable_len) {
                    let n = SECTOR.min(durable_len - s);
                    if coin() {
                        let Some(buf) = sector.get_mut(..n as usize) else {
                            break;
                        };
                        if live.read_exact_at(buf, s).is_ok() {
                            durable.write_all_at(buf, s)?;
                            stats.torn_sectors += 1;
                        }
                    }
                    s += SECTOR;
                }
            }
        }
        for node in self.nodes.values() {
            if node.kind == Kind::Dir && node.entries != node.durable_entries {
                stats.reverted_dirs += 1;
            }
        }
        // Rebuild the live tree from the durable one.
        for entry in std::fs::read_dir(&self.live)? {
            let path = entry?.path();
            if path.is_dir() {
                std::fs::remove_dir_all(&path)?;
            } else {
                std::fs::remove_file(&path)?;
            }
        }
        let mut keep: HashMap<u64, Node> = HashMap::new();
        let mut stack = vec![(ROOT, ROOT, OsString::new(), self.live.clone())];
        while let Some((ino, parent, name, path)) = stack.pop() {
            let Some(old) = self.nodes.remove(&ino) else {
                continue;
            };
            let mut node = Node::new(old.kind, parent, &name);
            if old.kind == Kind::Dir {
                if ino != ROOT {
                    std::fs::create_dir(&path)?;
                }
                for (child_name, child) in &old.durable_entries {
                    if keep.contains_key(child) || self.nodes.contains_key(child) {
                        stack.push((*child, ino, child_name.clone(), path.join(child_name)));
                    }
                }
                node.entries = old.durable_entries.clone();
                node.durable_entries = old.durable_entries;
            } else {
                let durable = self.durable_path(ino);
                if durable.exists() {
                    std::fs::copy(&durable, &path)?;
                } else {
                    File::create(&path)?;
                }
                stats.files += 1;
            }
            keep.insert(ino, node);
        }
        // Nodes that did not survive, and their durable copies, are gone.
        for ino in self.nodes.keys() {
            let _ = std::fs::remove_file(self.durable_path(*ino));
        }
        self.nodes = keep;
        Ok(stats)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn model() -> (tempfile::TempDir, Model) {
        let dir = tempfile::tempdir().unwrap();
        let m = Model::new(&dir.path().join("live"), &dir.path().join("durable")).unwrap();
        (dir, m)
    }

    fn read(m: &Model, path: &str) -> Option<Vec<u8>> {
        std::fs::read(m.live.join(path)).ok()
    }

    #[test]
    fn unsynced_writes_and_names_are_dropped() {
        let (_d, mut m) = model();
        let (a, fh) = m.create(ROOT, OsStr::new("a"), 0o644).unwrap();
        m.write(fh, 0, b"hello").unwrap();
        // The file's data is synced, its name is not.
        m.sync(a, Some(fh)).unwrap();
        m.cut(None).unwrap();
        assert_eq!(read(&m, "a"), None, "the name was never made durable");

        let (a, fh) = m.create(ROOT, OsStr::new("a"), 0o644).unwrap();
        m.write(fh, 0, b"hello").unwrap();
        m.sync(ROOT, None).unwrap();
        m.cut(None).unwrap();
        assert_eq!(read(&m, "a"), Some(Vec::new()), "name durable, data not");
        assert_eq!(m.lookup(ROOT, OsStr::new("a")).unwrap(), a);

        let fh = m.open(a, false).unwrap();
        m.write(fh, 0, b"hello").unwrap();
        m.sync(a, Some(fh)).unwrap();
        m.write(fh, 5, b" world").unwrap();
        m.write(fh, 0, b"J").unwrap();
        let stats = m.cut(None).unwrap();
        assert_eq!(read(&m, "a"), Some(b"hello".to_vec()));
        assert_eq!(stats.dropped_bytes, 7);
    }

    #[test]
    fn directories_revert_creates_removes_and_renames() {
        let (_d, mut m) = model();
        let sub = m.mkdir(ROOT, OsStr::new("blobs"), 0o755).unwrap();
        let (x, fh) = m.create(sub, OsStr::new("1"), 0o644).unwrap();
        m.write(fh, 0, b"one").unwrap();
        m.sync(x, Some(fh)).unwrap();
        m.sync(sub, None).unwrap();
        m.sync(ROOT, None).unwrap();
        // Unsynced: a removal, a rename and a new file.
        m.rename(sub, OsStr::new("1"), ROOT, OsStr::new("moved"), false)
            .unwrap();
        let (_y, fh2) = m.create(sub, OsStr::new("2"), 0o644).unwrap();
        m.write(fh2, 0, b"two").unwrap();
        let stats = m.cut(None).unwrap();
        assert_eq!(read(&m, "blobs/1"), Some(b"one".to_vec()));
        assert_eq!(read(&m, "moved"), None);
        assert_eq!(read(&m, "blobs/2"), None);
        assert_eq!(stats.reverted_dirs, 2);
        assert_eq!(stats.files, 1);

        m.remove(sub, OsStr::new("1"), false).unwrap();
        m.sync(sub, None).unwrap();
        m.cut(None).unwrap();
        assert_eq!(read(&m, "blobs/1"), None);
        assert!(m.live.join("blobs").is_dir());
    }

    #[test]
    fn torn_writes_keep_some_sectors_within_the_durable_length() {
        let (_d, mut m) = model();
        let (a, fh) = m.create(ROOT, OsStr::new("a"), 0o644).unwrap();
        m.write(fh, 0, &vec![0u8; 4 * SECTOR as usize]).unwrap();
        m.sync(a, Some(fh)).unwrap();
        m.sync(ROOT, None).unwrap();
        m.write(fh, 0, &vec![1u8; 6 * SECTOR as usize]).unwrap();
        let mut flips = [true, false, true, false, true, true].into_iter();
        let mut coin = move || flips.next().unwrap_or(false);
        let stats = m.cut(Some(&mut coin)).unwrap();
        let back = read(&m, "a").unwrap();
        assert_eq!(
            back.len(),
            4 * SECTOR as usize,
            "the unsynced length is lost"
        );
        let kept: Vec<u8> = back.chunks(SECTOR as usize).map(|c| c[0]).collect();
        assert_eq!(kept, vec![1, 0, 1, 0]);
        assert_eq!(stats.torn_sectors, 2);
    }

    #[test]
    fn a_truncation_is_a_change_like_any_other() {
        let (_d, mut m) = model();
        let (a, fh) = m.create(ROOT, OsStr::new("a"), 0o644).unwrap();
        m.write(fh, 0, b"0123456789").unwrap();
        m.sync(a, Some(fh)).unwrap();
        m.sync(ROOT, None).unwrap();
        m.set_len(a, Some(fh), 4).unwrap();
        m.cut(None).unwrap();
        assert_eq!(read(&m, "a"), Some(b"0123456789".to_vec()));
        let fh = m.open(a, false).unwrap();
        m.set_len(a, Some(fh), 4).unwrap();
        m.set_len(a, Some(fh), 8).unwrap();
        m.sync(a, Some(fh)).unwrap();
        m.cut(None).unwrap();
        assert_eq!(read(&m, "a"), Some(b"0123\0\0\0\0".to_vec()));
    }
}
