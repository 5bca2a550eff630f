//! The `fuser::Filesystem` implementation: each method calls the core and replies.
//!
//! No filesystem logic lives here: what an inode is, what a directory lists and what a read
//! returns are [`FsCore`]'s answers. This file only translates types, chooses the kernel
//! caching flags, and hands reads of bytes that are not at hand to the worker pool so that a
//! slow fetch never holds up a request thread, nor a read of cached bytes.

use std::any::Any;
use std::cell::RefCell;
use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant, UNIX_EPOCH};

use clip_fs::{Attr, FileType, FsCore, FsError, XattrReply};
use fuser::{
    Errno, FileAttr, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenAccMode, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyXattr, Request,
};
use tracing::{debug, error, warn};

/// How long the kernel may cache entries (names → inodes, and negative lookups) and
/// attributes. The image never changes while mounted.
pub(crate) const TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// Capabilities asked of the kernel in `init`, each only if offered.
const WANTED: [(InitFlags, &str); 3] = [
    // Lookups of a whole directory's entries come with the listing.
    (InitFlags::FUSE_DO_READDIRPLUS, "FUSE_DO_READDIRPLUS"),
    // Lookups and listings in one directory run in parallel.
    (InitFlags::FUSE_PARALLEL_DIROPS, "FUSE_PARALLEL_DIROPS"),
    // Symlink targets stay in the page cache.
    (InitFlags::FUSE_CACHE_SYMLINKS, "FUSE_CACHE_SYMLINKS"),
];

/// Background requests (readahead) the kernel may have in flight.
const MAX_BACKGROUND: u16 = 64;

/// Open replies: keep the page cache across opens; no FLUSH on close (nothing to flush).
const OPEN_FLAGS: FopenFlags = FopenFlags::FOPEN_KEEP_CACHE.union(FopenFlags::FOPEN_NOFLUSH);

/// Opendir replies: cache listings in the kernel and keep them across opens.
const OPENDIR_FLAGS: FopenFlags = FopenFlags::FOPEN_CACHE_DIR.union(FopenFlags::FOPEN_KEEP_CACHE);

/// The filesystem handed to `fuser`.
pub(crate) struct ClipFs {
    core: Arc<FsCore>,
    reads: Sender<ReadJob>,
}

/// A read waiting for a worker; the reply goes with it.
struct ReadJob {
    ino: u64,
    offset: u64,
    size: u32,
    /// When the request arrived: the read's time budget counts from then, queueing included.
    received: Instant,
    reply: ReplyData,
}

impl ClipFs {
    /// Starts `read_workers` (at least 1) read threads; they stop when the filesystem is
    /// dropped (at the end of the session), after the read they are serving.
    pub(crate) fn new(core: FsCore, read_workers: usize) -> io::Result<ClipFs> {
        let core = Arc::new(core);
        let (tx, rx) = mpsc::channel::<ReadJob>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..read_workers.max(1) {
            let (core, rx) = (core.clone(), rx.clone());
            thread::Builder::new()
                .name(format!("clip-read-{i}"))
                .spawn(move || read_worker(&core, &rx))?;
        }
        Ok(ClipFs { core, reads: tx })
    }
}

fn read_worker(core: &FsCore, jobs: &Mutex<Receiver<ReadJob>>) {
    // One buffer per worker, grown to the largest request seen (the kernel's max_pages).
    let mut buf = Vec::new();
    loop {
        let job = match jobs.lock().unwrap_or_else(PoisonError::into_inner).recv() {
            Ok(job) => job,
            Err(_) => return, // the filesystem is gone
        };
        let buf = sized_buf(&mut buf, job.size);
        // A panic (in the content source, say) fails this read, not the worker.
        let read = catch_unwind(AssertUnwindSafe(|| {
            core.read_into(job.ino, job.offset, &mut buf[..], job.received)
        }));
        match read {
            Ok(Ok(n)) => job.reply.data(&buf[..n]),
            Ok(Err(err)) => job.reply.error(fail("read", job.ino, &err)),
            Err(panic) => {
                panicked("read", job.ino, job.offset, panic.as_ref());
                job.reply.error(Errno::EIO);
            }
        }
    }
}

thread_local! {
    /// The buffer for reads served on a request thread from cached bytes, grown to the
    /// largest request seen (the kernel's max_pages).
    static CACHED_READ_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The first `size` bytes of `buf`, growing it as needed.
fn sized_buf(buf: &mut Vec<u8>, size: u32) -> &mut [u8] {
    let size = size as usize;
    if buf.len() < size {
        buf.resize(size, 0);
    }
    &mut buf[..size]
}

/// Logs a panic caught while serving `op`.
fn panicked(op: &str, ino: u64, offset: u64, panic: &(dyn Any + Send)) {
    let message = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)");
    error!(op, ino, offset, "panicked, replying EIO: {message}");
}

/// The errno for the kernel; faults (archive, content source) are logged as warnings, with
/// their causes, unless their source reported them already.
fn fail(op: &str, ino: u64, err: &FsError) -> Errno {
    if err.is_fault() && !err.is_reported() {
        let mut message = err.to_string();
        let mut source = std::error::Error::source(err);
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        warn!(op, ino, "{message}");
    } else {
        debug!(op, ino, "{err}");
    }
    Errno::from_i32(err.errno())
}

fn kind(kind: FileType) -> fuser::FileType {
    match kind {
        FileType::Directory => fuser::FileType::Directory,
        FileType::Regular => fuser::FileType::RegularFile,
        FileType::Symlink => fuser::FileType::Symlink,
        FileType::CharDevice => fuser::FileType::CharDevice,
        FileType::BlockDevice => fuser::FileType::BlockDevice,
        FileType::Fifo => fuser::FileType::NamedPipe,
    }
}

fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.blocks,
        atime: a.atime,
        mtime: a.mtime,
        ctime: a.ctime,
        crtime: a.mtime,
        kind: kind(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: a.blksize,
        flags: 0,
    }
}

/// A negative entry: node id 0 tells the kernel "no such name" and lets it cache that.
fn negative_entry() -> FileAttr {
    FileAttr {
        ino: INodeNo(0),
        size: 0,
        blocks: 0,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: fuser::FileType::RegularFile,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 0,
        flags: 0,
    }
}

const GENERATION: Generation = Generation(0);

impl Filesystem for ClipFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        for (flag, name) in WANTED {
            match config.add_capabilities(flag) {
                Ok(()) => debug!("kernel capability {name} enabled"),
                Err(_) => debug!("kernel does not offer {name}"),
            }
        }
        // The read-ahead window is already the largest the kernel offers (see `mount` for
        // how it is raised past that).
        let _ = config.set_max_background(MAX_BACKGROUND);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.core.lookup(parent.0, name.as_bytes()) {
            Ok(Some(attr)) => reply.entry(&TTL, &file_attr(&attr), GENERATION),
            Ok(None) => reply.entry(&TTL, &negative_entry(), GENERATION),
            Err(err) => reply.error(fail("lookup", parent.0, &err)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.core.getattr(ino.0) {
            Ok(attr) => reply.attr(&TTL, &file_attr(&attr)),
            Err(err) => reply.error(fail("getattr", ino.0, &err)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.core.readlink(ino.0) {
            Ok(target) => reply.data(target),
            Err(err) => reply.error(fail("readlink", ino.0, &err)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let write = flags.acc_mode() != OpenAccMode::O_RDONLY;
        match self.core.open(ino.0, write) {
            Ok(()) => reply.opened(FileHandle(0), OPEN_FLAGS),
            Err(err) => reply.error(fail("open", ino.0, &err)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let received = Instant::now();
        // Bytes the content source has at hand are served here, at once: they never queue
        // behind reads waiting on a fetch. The rest goes to the read workers.
        let reply = CACHED_READ_BUF.with_borrow_mut(|buf| {
            let buf = sized_buf(buf, size);
            let read = catch_unwind(AssertUnwindSafe(|| {
                self.core.read_cached(ino.0, offset, &mut buf[..])
            }));
            match read {
                Ok(None) => return Some(reply),
                Ok(Some(Ok(n))) => reply.data(&buf[..n]),
                Ok(Some(Err(err))) => reply.error(fail("read", ino.0, &err)),
                Err(panic) => {
                    panicked("read (cached)", ino.0, offset, panic.as_ref());
                    reply.error(Errno::EIO);
                }
            }
            None
        });
        let Some(reply) = reply else {
            return; // answered
        };
        let job = ReadJob {
            ino: ino.0,
            offset,
            size,
            received,
            reply,
        };
        if let Err(mpsc::SendError(job)) = self.reads.send(job) {
            warn!(ino = ino.0, "read: no read worker is left");
            job.reply.error(Errno::EIO);
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.core.opendir(ino.0) {
            Ok(()) => reply.opened(FileHandle(0), OPENDIR_FLAGS),
            Err(err) => reply.error(fail("opendir", ino.0, &err)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let entries = match self.core.readdir(ino.0, offset) {
            Ok(entries) => entries,
            Err(err) => return reply.error(fail("readdir", ino.0, &err)),
        };
        for entry in entries {
            match entry {
                Ok(e) => {
                    let name = OsStr::from_bytes(e.name);
                    if reply.add(INodeNo(e.attr.ino), e.offset, kind(e.attr.kind), name) {
                        break; // the buffer is full
                    }
                }
                Err(err) => return reply.error(fail("readdir", ino.0, &err)),
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let entries = match self.core.readdir(ino.0, offset) {
            Ok(entries) => entries,
            Err(err) => return reply.error(fail("readdirplus", ino.0, &err)),
        };
        for entry in entries {
            match entry {
                Ok(e) => {
                    let (name, attr) = (OsStr::from_bytes(e.name), file_attr(&e.attr));
                    if reply.add(attr.ino, e.offset, name, &TTL, &attr, GENERATION) {
                        break; // the buffer is full
                    }
                }
                Err(err) => return reply.error(fail("readdirplus", ino.0, &err)),
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let s = self.core.statfs();
        reply.statfs(
            s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize,
        );
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        match self.core.getxattr(ino.0, name.as_bytes(), size) {
            Ok(XattrReply::Size(n)) => reply.size(n),
            Ok(XattrReply::Data(value)) => reply.data(&value),
            Err(err) => reply.error(fail("getxattr", ino.0, &err)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.core.listxattr(ino.0, size) {
            Ok(XattrReply::Size(n)) => reply.size(n),
            Ok(XattrReply::Data(list)) => reply.data(&list),
            Err(err) => reply.error(fail("listxattr", ino.0, &err)),
        }
    }
}
