//! The FUSE side: each request becomes a call on the [`Model`], under one
//! mutex (a short `std::sync::Mutex`, never held across anything but the
//! model's own file I/O). Attributes and names are given with a time to
//! live of zero and files are opened with direct I/O, so the kernel caches
//! nothing that a power cut could make stale.

use std::ffi::OsStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

use crate::model::{Kind, Model};

/// Nothing is cached by the kernel.
const TTL: Duration = Duration::ZERO;

// Linux open(2) flag values.
const O_TRUNC: i32 = 0o1000;

/// The file system handed to `fuser`.
pub struct PowercutFs {
    pub(crate) model: Arc<Mutex<Model>>,
}

fn io_errno(e: &std::io::Error) -> Errno {
    match e.raw_os_error() {
        Some(code) => Errno::from_i32(code),
        None if e.kind() == std::io::ErrorKind::NotFound => Errno::ENOENT,
        None => Errno::EIO,
    }
}

fn attr(model: &Model, ino: u64) -> Result<FileAttr, Errno> {
    use std::os::unix::fs::MetadataExt;
    let m = model.metadata(ino).map_err(|e| io_errno(&e))?;
    let kind = match model.kind(ino).map_err(|e| io_errno(&e))? {
        Kind::Dir => FileType::Directory,
        Kind::File => FileType::RegularFile,
    };
    let time = |secs: i64, nsecs: i64| {
        let secs = u64::try_from(secs).unwrap_or(0);
        let nsecs = u32::try_from(nsecs).unwrap_or(0);
        SystemTime::UNIX_EPOCH + Duration::new(secs, nsecs)
    };
    Ok(FileAttr {
        ino: INodeNo(ino),
        size: m.size(),
        blocks: m.blocks(),
        atime: time(m.atime(), m.atime_nsec()),
        mtime: time(m.mtime(), m.mtime_nsec()),
        ctime: time(m.ctime(), m.ctime_nsec()),
        crtime: time(m.ctime(), m.ctime_nsec()),
        kind,
        perm: u16::try_from(m.mode() & 0o7777).unwrap_or(0o644),
        nlink: u32::try_from(m.nlink()).unwrap_or(1),
        uid: m.uid(),
        gid: m.gid(),
        rdev: 0,
        blksize: 4096,
        flags: 0,
    })
}

impl PowercutFs {
    fn with<T>(&self, f: impl FnOnce(&mut Model) -> Result<T, Errno>) -> Result<T, Errno> {
        let mut model = self.model.lock().map_err(|_| Errno::EIO)?;
        f(&mut model)
    }

    fn entry(&self, reply: ReplyEntry, f: impl FnOnce(&mut Model) -> std::io::Result<u64>) {
        match self.with(|m| {
            let ino = f(m).map_err(|e| io_errno(&e))?;
            attr(m, ino)
        }) {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn empty(&self, reply: ReplyEmpty, f: impl FnOnce(&mut Model) -> std::io::Result<()>) {
        match self.with(|m| f(m).map_err(|e| io_errno(&e))) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}

impl Filesystem for PowercutFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.entry(reply, |m| m.lookup(parent.0, name));
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.with(|m| attr(m, ino.0)) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let result = self.with(|m| {
            if let Some(len) = size {
                m.set_len(ino.0, fh.map(|f| f.0), len)
                    .map_err(|e| io_errno(&e))?;
            }
            if let Some(mode) = mode {
                m.set_mode(ino.0, mode).map_err(|e| io_errno(&e))?;
            }
            attr(m, ino.0)
        });
        match result {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        self.entry(reply, |m| m.mkdir(parent.0, name, mode & !umask));
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.empty(reply, |m| m.remove(parent.0, name, false));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.empty(reply, |m| m.remove(parent.0, name, true));
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let no_replace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        if !(flags - RenameFlags::RENAME_NOREPLACE).is_empty() {
            return reply.error(Errno::EINVAL);
        }
        self.empty(reply, |m| {
            m.rename(parent.0, name, newparent.0, newname, no_replace)
        });
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let truncate = flags.0 & O_TRUNC != 0;
        match self.with(|m| m.open(ino.0, truncate).map_err(|e| io_errno(&e))) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let result = self.with(|m| {
            let (ino, fh) = m
                .create(parent.0, name, mode & !umask)
                .map_err(|e| io_errno(&e))?;
            Ok((attr(m, ino)?, fh))
        });
        match result {
            Ok((a, fh)) => reply.created(
                &TTL,
                &a,
                Generation(0),
                FileHandle(fh),
                FopenFlags::FOPEN_DIRECT_IO,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.with(|m| m.read(fh.0, offset, size).map_err(|e| io_errno(&e))) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.with(|m| m.write(fh.0, offset, data).map_err(|e| io_errno(&e))) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close(2) syncs nothing.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.empty(reply, |m| {
            m.release(fh.0);
            Ok(())
        });
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.empty(reply, |m| m.sync(ino.0, Some(fh.0)));
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.opened(FileHandle(0), FopenFlags::empty());
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let listed = self.with(|m| {
            let mut all = vec![
                (".".into(), ino.0, Kind::Dir),
                ("..".into(), m.parent(ino.0), Kind::Dir),
            ];
            all.extend(m.entries(ino.0).map_err(|e| io_errno(&e))?);
            Ok(all)
        });
        let all = match listed {
            Ok(all) => all,
            Err(e) => return reply.error(e),
        };
        let skip = usize::try_from(offset).unwrap_or(usize::MAX);
        for (i, (name, child, kind)) in all.into_iter().enumerate().skip(skip) {
            let kind = match kind {
                Kind::Dir => FileType::Directory,
                Kind::File => FileType::RegularFile,
            };
            if reply.add(INodeNo(child), i as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.empty(reply, |m| m.sync(ino.0, None));
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }
}
