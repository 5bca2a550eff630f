//! [`FsCore`]: the filesystem operations over an archive and a content source.

use std::borrow::Cow;
use std::convert::Infallible;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clip_archive::{Archive, DirEntries, FileType, Ino, InodeRef};

use crate::content::{ContentError, ContentSource};
use crate::error::FsError;

/// Block size reported by `stat` (`st_blksize`) and `statfs`.
pub const BLOCK_SIZE: u32 = 4096;

/// Longest name `statfs` announces (the archive itself allows longer; the kernel does not).
pub const NAME_MAX: u32 = 255;

/// The attributes of an inode, as `stat` shows them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attr {
    /// Inode number (the archive's; the root is [`clip_archive::ROOT_INO`] = 1).
    pub ino: Ino,
    /// Regular file: content length; symlink: target length; others 0.
    pub size: u64,
    /// 512-byte blocks: `ceil(size / 512)` for regular files, 0 for the rest.
    pub blocks: u64,
    /// Access time: the image records none, so the modification time.
    pub atime: SystemTime,
    /// Modification time, with nanoseconds.
    pub mtime: SystemTime,
    /// Change time: the modification time.
    pub ctime: SystemTime,
    /// File type.
    pub kind: FileType,
    /// Permission bits including setuid, setgid and sticky (`0o7777`).
    pub perm: u16,
    /// Link count: names of a non-directory; 2 + subdirectories for a directory.
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Device number of a device node in the kernel's 32-bit encoding (`new_encode_dev`: 12
    /// bits of major, 20 of minor); 0 for the rest.
    pub rdev: u32,
    /// Preferred I/O size ([`BLOCK_SIZE`]).
    pub blksize: u32,
}

/// One entry of a directory listing, `.` and `..` included.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirEntry<'a> {
    /// The name (`.`, `..`, or an entry name).
    pub name: &'a [u8],
    /// The offset to resume the listing *after* this entry (FUSE's `off`): the entry's
    /// position + 1, where `.` is position 0, `..` position 1 and the `i`-th entry in name
    /// order position `i + 2`. Stable across calls: the image never changes.
    pub offset: u64,
    /// The entry's attributes (for readdirplus; `attr.ino` and `attr.kind` for readdir).
    pub attr: Attr,
}

/// The answer to `getxattr`/`listxattr`, following the size-probe protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum XattrReply<'a> {
    /// The caller asked with size 0: the number of bytes needed.
    Size(u32),
    /// The value, or the list of NUL-terminated names.
    Data(Cow<'a, [u8]>),
}

/// Filesystem statistics for `statfs`: a full, read-only filesystem.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatFs {
    /// Total blocks of [`BLOCK_SIZE`]: the bytes of all regular files, rounded up.
    pub blocks: u64,
    /// Free blocks: 0.
    pub bfree: u64,
    /// Blocks available to unprivileged users: 0.
    pub bavail: u64,
    /// Inodes: the archive's inode count.
    pub files: u64,
    /// Free inodes: 0.
    pub ffree: u64,
    /// Block size.
    pub bsize: u32,
    /// Longest name.
    pub namelen: u32,
    /// Fragment size (= block size).
    pub frsize: u32,
}

/// The read-only filesystem over one archive.
///
/// Every method takes `&self` and may be called from many threads at once. Metadata
/// operations read only the archive (memory); [`FsCore::read`] and [`FsCore::read_into`] are
/// the ones that reach the [`ContentSource`], and may block as long as the source does;
/// [`FsCore::read_cached`] reaches it too but never blocks.
pub struct FsCore {
    archive: Arc<Archive<'static>>,
    content: Arc<dyn ContentSource>,
    /// Sum of the sizes of all regular files, computed on the first `statfs`.
    content_bytes: OnceLock<u64>,
}

impl std::fmt::Debug for FsCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FsCore")
            .field("archive", &self.archive)
            .finish_non_exhaustive()
    }
}

impl FsCore {
    /// A filesystem serving `archive`, with file bytes from `content`. Decodes nothing up
    /// front.
    pub fn new(archive: Arc<Archive<'static>>, content: Arc<dyn ContentSource>) -> Self {
        FsCore {
            archive,
            content,
            content_bytes: OnceLock::new(),
        }
    }

    /// The archive being served.
    pub fn archive(&self) -> &Arc<Archive<'static>> {
        &self.archive
    }

    /// The attributes of `ino`.
    pub fn getattr(&self, ino: Ino) -> Result<Attr, FsError> {
        self.node(ino).map(|node| attr_of(&node))
    }

    /// Looks `name` up in directory `parent`: `Ok(None)` when there is no such entry (a
    /// negative answer the kernel may cache: the image never changes). `.` and `..` resolve to
    /// the directory and its parent.
    pub fn lookup(&self, parent: Ino, name: &[u8]) -> Result<Option<Attr>, FsError> {
        self.dir_node(parent)?;
        let child = match name {
            b"." => Some(parent),
            b".." => Some(self.parent_of(parent)?),
            _ => self
                .archive
                .lookup(parent, name)
                .map_err(|source| FsError::Archive {
                    ino: parent,
                    source,
                })?,
        };
        child.map(|ino| self.getattr(ino)).transpose()
    }

    /// The target of symlink `ino`.
    pub fn readlink(&self, ino: Ino) -> Result<&[u8], FsError> {
        let node = self.node(ino)?;
        if node.file_type() != FileType::Symlink {
            return Err(FsError::NotASymlink(ino));
        }
        self.archive
            .symlink_target(ino)
            .map_err(|source| FsError::Archive { ino, source })
    }

    /// Checks that `ino` can be opened as a file: a regular file, and not for writing.
    pub fn open(&self, ino: Ino, write: bool) -> Result<(), FsError> {
        let node = self.node(ino)?;
        match node.file_type() {
            FileType::Regular if write => Err(FsError::ReadOnly(ino)),
            FileType::Regular => Ok(()),
            FileType::Directory => Err(FsError::IsADirectory(ino)),
            FileType::Symlink | FileType::CharDevice | FileType::BlockDevice | FileType::Fifo => {
                Err(FsError::NotARegularFile(ino))
            }
        }
    }

    /// Checks that `ino` can be opened as a directory.
    pub fn opendir(&self, ino: Ino) -> Result<(), FsError> {
        self.dir_node(ino).map(|_| ())
    }

    /// Lists directory `dir` from `offset` (0 for the start, else the
    /// [`DirEntry::offset`] of the last entry received): `.`, `..`, then the entries in name
    /// order.
    pub fn readdir(&self, dir: Ino, offset: u64) -> Result<ReadDir<'_>, FsError> {
        self.dir_node(dir)?;
        let parent = self.parent_of(dir)?;
        let archive_err = |source| FsError::Archive { ino: dir, source };
        let mut entries = self.archive.read_dir(dir).map_err(archive_err)?;
        for _ in 0..offset.saturating_sub(2) {
            match entries.next() {
                Some(Ok(_)) => {}
                Some(Err(source)) => return Err(archive_err(source)),
                None => break,
            }
        }
        Ok(ReadDir {
            core: self,
            dir,
            parent,
            pos: offset,
            entries,
            done: false,
        })
    }

    /// Reads up to `size` bytes of regular file `ino` at `offset`. Fewer bytes at the end of
    /// the file, none at or past it; a size-0 file never reaches the content source.
    pub fn read(&self, ino: Ino, offset: u64, size: u32) -> Result<Vec<u8>, FsError> {
        let node = self.file_node(ino)?;
        let len = read_len(node.size(), offset, u64::from(size));
        let mut buf = vec![0; len];
        let n = self.read_node(&node, offset, &mut buf, Instant::now())?;
        buf.truncate(n);
        Ok(buf)
    }

    /// [`FsCore::read`] into a caller's buffer; returns the number of bytes read. `since` is
    /// when the read was asked for: the content source's time budget counts from then (see
    /// [`ContentSource::read_at`]).
    pub fn read_into(
        &self,
        ino: Ino,
        offset: u64,
        buf: &mut [u8],
        since: Instant,
    ) -> Result<usize, FsError> {
        let node = self.file_node(ino)?;
        self.read_node(&node, offset, buf, since)
    }

    /// [`FsCore::read_into`] served only from bytes the content source has at hand
    /// ([`ContentSource::read_cached`]): never blocks on a fetch.
    ///
    /// `None` when any part of the range is not available that way: nothing was read that
    /// counts (bytes already copied into `buf` are to be ignored), and the caller asks
    /// [`FsCore::read_into`] instead, on a thread that may block. `Some` is the same answer
    /// `read_into` would give: clipped at the end of the file, and never a short read for a
    /// missing part. Answers that need no bytes (a size-0 file, a read at or past the end,
    /// `EISDIR`, a stale inode...) are always `Some` and never reach the content source.
    pub fn read_cached(
        &self,
        ino: Ino,
        offset: u64,
        buf: &mut [u8],
    ) -> Option<Result<usize, FsError>> {
        let node = match self.file_node(ino) {
            Ok(node) => node,
            Err(err) => return Some(Err(err)),
        };
        self.fill(&node, offset, buf, |layer, at, rest, file_end| {
            match self.content.read_cached(layer, at, rest, file_end) {
                // "Nothing there" is for `read_at` to say (it reports the error).
                None | Some(Ok(0)) => Err(()),
                Some(answer) => Ok(answer),
            }
        })
        .ok()
    }

    /// The value of extended attribute `name` of `ino`, or its length when `size` is 0.
    /// `ENODATA` when there is none, `ERANGE` when it does not fit in `size` bytes.
    pub fn getxattr(&self, ino: Ino, name: &[u8], size: u32) -> Result<XattrReply<'_>, FsError> {
        let node = self.node(ino)?;
        let value = if node.has_xattrs() && !is_hidden_xattr(name) {
            self.archive
                .xattr(ino, name)
                .map_err(|source| FsError::Archive { ino, source })?
        } else {
            None
        };
        let value = value.ok_or_else(|| FsError::NoSuchXattr {
            ino,
            name: name.to_vec(),
        })?;
        sized(ino, Cow::Borrowed(value), size)
    }

    /// The names of the extended attributes of `ino`, each followed by a NUL, or the length of
    /// that list when `size` is 0. `ERANGE` when it does not fit in `size` bytes.
    pub fn listxattr(&self, ino: Ino, size: u32) -> Result<XattrReply<'_>, FsError> {
        let node = self.node(ino)?;
        let mut list = Vec::new();
        if node.has_xattrs() {
            let pairs = self
                .archive
                .xattrs(ino)
                .map_err(|source| FsError::Archive { ino, source })?;
            for (name, _) in pairs.into_iter().filter(|(n, _)| !is_hidden_xattr(n)) {
                list.extend_from_slice(name);
                list.push(0);
            }
        }
        sized(ino, Cow::Owned(list), size)
    }

    /// Statistics of a full read-only filesystem. The first call sums the sizes of all
    /// regular files (one pass over the inodes); later calls are free.
    pub fn statfs(&self) -> StatFs {
        let bytes = *self.content_bytes.get_or_init(|| {
            (1..=self.archive.inode_count())
                .filter_map(|ino| self.archive.inode(ino).ok())
                .filter(|node| node.file_type() == FileType::Regular)
                .fold(0u64, |sum, node| sum.saturating_add(node.size()))
        });
        StatFs {
            blocks: bytes.div_ceil(u64::from(BLOCK_SIZE)),
            bfree: 0,
            bavail: 0,
            files: self.archive.inode_count(),
            ffree: 0,
            bsize: BLOCK_SIZE,
            namelen: NAME_MAX,
            frsize: BLOCK_SIZE,
        }
    }

    fn node(&self, ino: Ino) -> Result<InodeRef<'_>, FsError> {
        if ino == 0 || ino > self.archive.inode_count() {
            return Err(FsError::NoSuchInode(ino));
        }
        self.archive
            .inode(ino)
            .map_err(|source| FsError::Archive { ino, source })
    }

    fn dir_node(&self, ino: Ino) -> Result<InodeRef<'_>, FsError> {
        let node = self.node(ino)?;
        if node.file_type() != FileType::Directory {
            return Err(FsError::NotADirectory(ino));
        }
        Ok(node)
    }

    fn file_node(&self, ino: Ino) -> Result<InodeRef<'_>, FsError> {
        let node = self.node(ino)?;
        match node.file_type() {
            FileType::Regular => Ok(node),
            FileType::Directory => Err(FsError::IsADirectory(ino)),
            FileType::Symlink | FileType::CharDevice | FileType::BlockDevice | FileType::Fifo => {
                Err(FsError::NotARegularFile(ino))
            }
        }
    }

    fn parent_of(&self, dir: Ino) -> Result<Ino, FsError> {
        self.archive
            .parent(dir)
            .map_err(|source| FsError::Archive { ino: dir, source })
    }

    /// Fills `buf` (up to the end of the file) from the content source, blocking as long as
    /// it does.
    fn read_node(
        &self,
        node: &InodeRef<'_>,
        offset: u64,
        buf: &mut [u8],
        since: Instant,
    ) -> Result<usize, FsError> {
        let Ok(read) = self.fill(node, offset, buf, |layer, at, rest, file_end| {
            Ok::<_, Infallible>(self.content.read_at(layer, at, rest, file_end, since))
        });
        read
    }

    /// Fills `buf` (up to the end of the file) with what `source` gives for the file's bytes,
    /// asking again after short counts. Stops with `Err(miss)` as soon as `source` answers
    /// `Err(miss)`, discarding what was read.
    fn fill<M>(
        &self,
        node: &InodeRef<'_>,
        offset: u64,
        buf: &mut [u8],
        mut source: impl FnMut(u32, u64, &mut [u8], u64) -> Result<Result<usize, ContentError>, M>,
    ) -> Result<Result<usize, FsError>, M> {
        let ino = node.ino();
        let size = node.size();
        let len = read_len(size, offset, buf.len() as u64);
        if len == 0 {
            return Ok(Ok(0));
        }
        let Some(loc) = node.data() else {
            return Ok(Err(FsError::NoContentLocation(ino, size)));
        };
        // The archive checked that data.offset + size fits in the layer, and offset < size.
        let start = loc.offset.saturating_add(offset);
        let file_end = loc.offset.saturating_add(size);
        let mut done = 0;
        while let Some(rest) = buf.get_mut(done..len).filter(|r| !r.is_empty()) {
            let at = start.saturating_add(done as u64);
            match source(loc.layer, at, rest, file_end)? {
                Ok(0) => {
                    return Ok(Err(FsError::ShortContent {
                        ino,
                        layer: loc.layer,
                        offset: at,
                        missing: (len - done) as u64,
                    }))
                }
                Ok(n) => done += n.min(rest.len()),
                Err(source) => {
                    return Ok(Err(FsError::Content {
                        ino,
                        layer: loc.layer,
                        offset: at,
                        source,
                    }))
                }
            }
        }
        Ok(Ok(len))
    }
}

/// The listing of one directory; see [`FsCore::readdir`]. Stops after the first error.
#[derive(Debug)]
pub struct ReadDir<'a> {
    core: &'a FsCore,
    dir: Ino,
    parent: Ino,
    /// Position of the next entry.
    pos: u64,
    /// The directory's entries, already advanced to `pos`.
    entries: DirEntries<'a>,
    done: bool,
}

impl<'a> Iterator for ReadDir<'a> {
    type Item = Result<DirEntry<'a>, FsError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let (name, ino) = match self.pos {
            0 => (&b"."[..], self.dir),
            1 => (&b".."[..], self.parent),
            _ => match self.entries.next()? {
                Ok(entry) => entry,
                Err(source) => {
                    self.done = true;
                    return Some(Err(FsError::Archive {
                        ino: self.dir,
                        source,
                    }));
                }
            },
        };
        self.pos = self.pos.saturating_add(1);
        let item = self.core.getattr(ino).map(|attr| DirEntry {
            name,
            offset: self.pos,
            attr,
        });
        self.done = item.is_err();
        Some(item)
    }
}

/// How many bytes a read of `want` at `offset` gets from a file of `size` bytes.
/// Extended attributes that would steer an overlay filesystem stacked on the mount (opaque
/// directories, redirects...: [`clip_archive::OVERLAYFS_PRIVATE_XATTRS`]): never shown, whatever
/// the index says. An image must not decide what overlayfs does with the layers of a container
/// built on it (`umoci unpack` drops them too, and `clip index` does not record them).
fn is_hidden_xattr(name: &[u8]) -> bool {
    clip_archive::OVERLAYFS_PRIVATE_XATTRS.contains(&name)
}

fn read_len(size: u64, offset: u64, want: u64) -> usize {
    let n = size.saturating_sub(offset).min(want);
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// The size-probe protocol: size 0 asks for the length; too small is `ERANGE`.
fn sized(ino: Ino, data: Cow<'_, [u8]>, size: u32) -> Result<XattrReply<'_>, FsError> {
    if size == 0 {
        return Ok(XattrReply::Size(
            u32::try_from(data.len()).unwrap_or(u32::MAX),
        ));
    }
    if data.len() > size as usize {
        return Err(FsError::XattrBufferTooSmall {
            ino,
            needed: data.len(),
            given: size,
        });
    }
    Ok(XattrReply::Data(data))
}

fn attr_of(node: &InodeRef<'_>) -> Attr {
    let kind = node.file_type();
    let size = node.size();
    let mtime = system_time(node.mtime_sec(), node.mtime_nsec());
    Attr {
        ino: node.ino(),
        size,
        blocks: if kind == FileType::Regular {
            size.div_ceil(512)
        } else {
            0
        },
        atime: mtime,
        mtime,
        ctime: mtime,
        kind,
        perm: (node.mode() & 0o7777) as u16,
        nlink: node.nlink(),
        uid: node.uid(),
        gid: node.gid(),
        rdev: encode_dev(node.rdev_major(), node.rdev_minor()),
        blksize: BLOCK_SIZE,
    }
}

/// Seconds (possibly negative) and nanoseconds since the epoch as a `SystemTime`.
fn system_time(sec: i64, nsec: u32) -> SystemTime {
    let whole = if sec >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_secs(sec.unsigned_abs()))
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_secs(sec.unsigned_abs()))
    };
    whole
        .and_then(|t| t.checked_add(Duration::from_nanos(u64::from(nsec))))
        .unwrap_or(UNIX_EPOCH)
}

/// The kernel's `new_encode_dev`: `mmmM MMmm` (12 bits of major, 20 of minor) in 32 bits.
/// Larger numbers cannot be expressed in a FUSE attribute and are truncated.
pub fn encode_dev(major: u32, minor: u32) -> u32 {
    (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & 0xf_ff00) << 12)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use clip_archive::{Inode, ROOT_INO};

    use super::*;
    use crate::testing::{ImageBuilder, MemoryContent};

    struct Fixture {
        core: FsCore,
        content: Arc<MemoryContent>,
    }

    impl Fixture {
        fn ino(&self, path: &str) -> Ino {
            self.core
                .archive()
                .resolve(path)
                .unwrap()
                .unwrap_or_else(|| panic!("{path} missing"))
        }
    }

    fn fixture() -> Fixture {
        fixture_with(|_, _| {})
    }

    /// The fixture, with `prepare` setting the content source up (cached ranges...).
    fn fixture_with(prepare: impl FnOnce(&Archive<'static>, &mut MemoryContent)) -> Fixture {
        let mut b = ImageBuilder::new();
        b.dir("/etc", 0o755);
        b.file("/etc/hostname", 0o644, b"clip\n");
        let passwd = b.file("/etc/passwd", 0o600, b"root:x:0:0::/root:/bin/sh\n");
        b.inode_mut(passwd).mtime_sec = 1_700_000_000;
        b.inode_mut(passwd).mtime_nsec = 123_456_789;
        let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        b.file("/bin/busybox", 0o4755, &big);
        b.hardlink("/bin/ls", "/bin/busybox");
        b.symlink("/bin/sh", "busybox");
        b.file("/empty", 0o644, b"");
        let home = b.dir("/home/user", 0o700);
        b.inode_mut(home).uid = 1000;
        b.inode_mut(home).gid = 1000;
        let mut null = Inode::new(FileType::CharDevice, 0o666);
        null.rdev_major = 1;
        null.rdev_minor = 3;
        b.add("/null", null);
        let mut disk = Inode::new(FileType::BlockDevice, 0o660);
        disk.rdev_major = 259;
        disk.rdev_minor = 70000;
        b.add("/disk", disk);
        b.add("/fifo", Inode::new(FileType::Fifo, 0o644));
        let x = b.file("/xattrs", 0o644, b"x");
        b.inode_mut(x).xattrs = vec![
            (b"user.b".to_vec(), b"second".to_vec()),
            (b"user.a".to_vec(), b"first".to_vec()),
            (b"security.capability".to_vec(), vec![1, 0, 0, 2]),
        ];
        let old = b.file("/old", 0o644, b"1969");
        b.inode_mut(old).mtime_sec = -2;
        b.inode_mut(old).mtime_nsec = 500_000_000;
        for i in 0..50 {
            b.file(&format!("/many/f{i:03}"), 0o644, b"");
        }
        let (archive, mut content) = b.build().unwrap();
        prepare(&archive, &mut content);
        let content = Arc::new(content);
        Fixture {
            core: FsCore::new(archive, content.clone()),
            content,
        }
    }

    #[test]
    fn getattr_reports_the_archive() {
        let f = fixture();
        let root = f.core.getattr(ROOT_INO).unwrap();
        assert_eq!(root.kind, FileType::Directory);
        assert_eq!(root.perm, 0o755);
        // etc, bin, home, many: 2 + 4 subdirectories.
        assert_eq!(root.nlink, 6);

        let passwd = f.core.getattr(f.ino("/etc/passwd")).unwrap();
        assert_eq!(passwd.kind, FileType::Regular);
        assert_eq!(passwd.perm, 0o600);
        assert_eq!(passwd.size, 26);
        assert_eq!(passwd.blocks, 1);
        assert_eq!(passwd.blksize, BLOCK_SIZE);
        let mtime = UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
        assert_eq!(
            (passwd.mtime, passwd.atime, passwd.ctime),
            (mtime, mtime, mtime)
        );

        let old = f.core.getattr(f.ino("/old")).unwrap();
        assert_eq!(old.mtime, UNIX_EPOCH - Duration::from_millis(1500));

        let busybox = f.core.getattr(f.ino("/bin/busybox")).unwrap();
        let ls = f.core.getattr(f.ino("/bin/ls")).unwrap();
        assert_eq!(busybox, ls, "a hardlink is the same inode");
        assert_eq!(busybox.nlink, 2);
        assert_eq!(busybox.perm, 0o4755);
        assert_eq!(busybox.blocks, 100_000u64.div_ceil(512));

        let sh = f.core.getattr(f.ino("/bin/sh")).unwrap();
        assert_eq!((sh.kind, sh.size, sh.blocks), (FileType::Symlink, 7, 0));

        let home = f.core.getattr(f.ino("/home/user")).unwrap();
        assert_eq!((home.uid, home.gid, home.perm), (1000, 1000, 0o700));

        let null = f.core.getattr(f.ino("/null")).unwrap();
        assert_eq!((null.kind, null.rdev), (FileType::CharDevice, 0x103));
        let disk = f.core.getattr(f.ino("/disk")).unwrap();
        assert_eq!(disk.kind, FileType::BlockDevice);
        let (major, minor) = (
            (disk.rdev >> 8) & 0xfff,
            (disk.rdev & 0xff) | ((disk.rdev >> 12) & 0xfff00),
        );
        assert_eq!(
            (major, minor),
            (259, 70000),
            "new_decode_dev gives back the numbers"
        );
        assert_eq!(f.core.getattr(f.ino("/fifo")).unwrap().kind, FileType::Fifo);

        let count = f.core.archive().inode_count();
        assert!(matches!(f.core.getattr(0), Err(FsError::NoSuchInode(0))));
        let err = f.core.getattr(count + 1).unwrap_err();
        assert_eq!(err.errno(), libc::ESTALE);
    }

    #[test]
    fn lookup_finds_names_and_answers_none_for_missing_ones() {
        let f = fixture();
        let etc = f.ino("/etc");
        let hostname = f.core.lookup(etc, b"hostname").unwrap().unwrap();
        assert_eq!(hostname.ino, f.ino("/etc/hostname"));
        assert_eq!(f.core.lookup(etc, b"shadow").unwrap(), None);
        assert_eq!(f.core.lookup(etc, b".").unwrap().unwrap().ino, etc);
        assert_eq!(f.core.lookup(etc, b"..").unwrap().unwrap().ino, ROOT_INO);
        assert_eq!(
            f.core.lookup(ROOT_INO, b"..").unwrap().unwrap().ino,
            ROOT_INO
        );
        let err = f.core.lookup(hostname.ino, b"x").unwrap_err();
        assert_eq!(err.errno(), libc::ENOTDIR);
    }

    fn names(entries: &[DirEntry<'_>]) -> Vec<String> {
        entries
            .iter()
            .map(|e| String::from_utf8_lossy(e.name).into_owned())
            .collect()
    }

    #[test]
    fn readdir_lists_dot_dotdot_then_names_with_stable_offsets() {
        let f = fixture();
        let etc = f.ino("/etc");
        let all: Vec<DirEntry<'_>> = f
            .core
            .readdir(etc, 0)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(names(&all), [".", "..", "hostname", "passwd"]);
        assert_eq!(
            all.iter().map(|e| e.offset).collect::<Vec<_>>(),
            [1, 2, 3, 4]
        );
        assert_eq!(all[0].attr.ino, etc);
        assert_eq!(all[1].attr.ino, ROOT_INO);
        assert_eq!(all[2].attr, f.core.getattr(f.ino("/etc/hostname")).unwrap());

        // Resuming at every offset gives the rest of the same listing.
        for (i, entry) in all.iter().enumerate() {
            let rest: Vec<DirEntry<'_>> = f
                .core
                .readdir(etc, entry.offset)
                .unwrap()
                .map(Result::unwrap)
                .collect();
            assert_eq!(rest, all[i + 1..]);
        }
        assert_eq!(f.core.readdir(etc, 1000).unwrap().count(), 0);

        // A bigger directory, read in pages the way the kernel does.
        let many = f.ino("/many");
        let mut seen = Vec::new();
        let mut offset = 0;
        loop {
            let page: Vec<DirEntry<'_>> = f
                .core
                .readdir(many, offset)
                .unwrap()
                .take(7)
                .map(Result::unwrap)
                .collect();
            let Some(last) = page.last() else { break };
            offset = last.offset;
            seen.extend(page);
        }
        assert_eq!(seen.len(), 52);
        assert_eq!(names(&seen[2..3]), ["f000"]);
        assert_eq!(names(&seen[51..]), ["f049"]);

        let err = f.core.readdir(f.ino("/etc/hostname"), 0).unwrap_err();
        assert_eq!(err.errno(), libc::ENOTDIR);
        assert!(f.core.opendir(etc).is_ok());
        assert_eq!(
            f.core.opendir(f.ino("/null")).unwrap_err().errno(),
            libc::ENOTDIR
        );
    }

    #[test]
    fn readlink_returns_the_target() {
        let f = fixture();
        assert_eq!(f.core.readlink(f.ino("/bin/sh")).unwrap(), b"busybox");
        let err = f.core.readlink(f.ino("/etc/hostname")).unwrap_err();
        assert_eq!(err.errno(), libc::EINVAL);
    }

    #[test]
    fn read_returns_the_bytes_short_at_eof_and_nothing_past_it() {
        let f = fixture();
        let hostname = f.ino("/etc/hostname");
        assert_eq!(f.core.read(hostname, 0, 4096).unwrap(), b"clip\n");
        assert_eq!(f.core.read(hostname, 2, 2).unwrap(), b"ip");
        assert_eq!(f.core.read(hostname, 3, 100).unwrap(), b"p\n");
        assert_eq!(f.core.read(hostname, 5, 100).unwrap(), b"");
        assert_eq!(f.core.read(hostname, u64::MAX, 100).unwrap(), b"");

        let busybox = f.ino("/bin/busybox");
        let want: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let mut got = Vec::new();
        let mut offset = 0;
        loop {
            let chunk = f.core.read(busybox, offset, 32 * 1024).unwrap();
            if chunk.is_empty() {
                break;
            }
            offset += chunk.len() as u64;
            got.extend(chunk);
        }
        assert_eq!(got, want);
        let mut buf = [0u8; 10];
        assert_eq!(
            f.core
                .read_into(busybox, 99_995, &mut buf, Instant::now())
                .unwrap(),
            5
        );
        assert_eq!(buf[..5], want[99_995..]);

        let err = f.core.read(f.ino("/etc"), 0, 10).unwrap_err();
        assert_eq!(err.errno(), libc::EISDIR);
    }

    #[test]
    fn empty_files_and_reads_past_eof_never_reach_the_source() {
        let f = fixture();
        let before = f.content.reads();
        assert_eq!(f.core.read(f.ino("/empty"), 0, 4096).unwrap(), b"");
        assert_eq!(f.core.read(f.ino("/etc/hostname"), 5, 4096).unwrap(), b"");
        assert_eq!(f.core.read(f.ino("/etc/hostname"), 0, 0).unwrap(), b"");
        assert_eq!(f.content.reads(), before);
    }

    #[test]
    fn read_cached_answers_like_read_into_when_everything_is_cached() {
        let f = fixture_with(|_, content| content.cache(0, 0..u64::MAX));
        let cases: &[(&str, u64, usize)] = &[
            ("/etc/hostname", 0, 4096),
            ("/etc/hostname", 2, 2),
            ("/etc/hostname", 3, 100),
            ("/etc/hostname", 5, 100),
            ("/etc/hostname", u64::MAX, 100),
            ("/etc/hostname", 0, 0),
            ("/empty", 0, 4096),
            ("/bin/busybox", 0, 32 * 1024),
            ("/bin/busybox", 65_536, 128 * 1024),
            ("/bin/busybox", 99_995, 10),
            ("/bin/busybox", 100_000, 10),
        ];
        for &(path, offset, size) in cases {
            let ino = f.ino(path);
            let mut want = vec![0; size];
            let want_n = f
                .core
                .read_into(ino, offset, &mut want, Instant::now())
                .unwrap();
            let mut got = vec![0; size];
            let got_n = f
                .core
                .read_cached(ino, offset, &mut got)
                .unwrap_or_else(|| panic!("{path} at {offset}: not served from the cache"))
                .unwrap();
            assert_eq!(got_n, want_n, "{path} at {offset} for {size}");
            assert_eq!(
                got[..got_n],
                want[..want_n],
                "{path} at {offset} for {size}"
            );
        }
        let reads = f.content.reads();
        let mut buf = [0u8; 64];
        f.core.read_cached(f.ino("/etc/passwd"), 0, &mut buf);
        assert_eq!(f.content.reads(), reads, "read_at is never called");

        let err = f.core.read_cached(f.ino("/etc"), 0, &mut buf).unwrap();
        assert_eq!(err.unwrap_err().errno(), libc::EISDIR);
        let count = f.core.archive().inode_count();
        let err = f.core.read_cached(count + 1, 0, &mut buf).unwrap();
        assert_eq!(err.unwrap_err().errno(), libc::ESTALE);
    }

    #[test]
    fn read_cached_is_none_unless_every_byte_of_the_range_is_cached() {
        // busybox's first 40000 bytes, in two adjacent ranges (a read across both is served
        // in two calls); the rest of the layer is not cached.
        let f = fixture_with(|archive, content| {
            let ino = archive.resolve("/bin/busybox").unwrap().unwrap();
            let loc = archive.inode(ino).unwrap().data().unwrap();
            content.cache(loc.layer, loc.offset..loc.offset + 30_000);
            content.cache(loc.layer, loc.offset + 30_000..loc.offset + 40_000);
        });
        let busybox = f.ino("/bin/busybox");
        let want: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let mut buf = vec![0u8; 40_000];
        assert_eq!(
            f.core.read_cached(busybox, 0, &mut buf).unwrap().unwrap(),
            40_000
        );
        assert_eq!(buf, want[..40_000]);
        let calls = f.content.cached_reads();
        assert_eq!(
            f.core
                .read_cached(busybox, 29_000, &mut buf[..2000])
                .unwrap()
                .unwrap(),
            2000
        );
        assert_eq!(f.content.cached_reads(), calls + 2, "one call per range");
        assert_eq!(buf[..2000], want[29_000..31_000]);

        // Partly cached ranges are not served at all, never short.
        for (offset, size) in [(39_999, 2), (0, 40_001), (30_000, 20_000), (40_000, 10)] {
            let mut buf = vec![0u8; size];
            assert!(
                f.core.read_cached(busybox, offset, &mut buf).is_none(),
                "{offset} for {size}"
            );
        }
        let mut buf = [0u8; 100];
        assert!(f
            .core
            .read_cached(f.ino("/etc/hostname"), 0, &mut buf)
            .is_none());
        // Answers that need no bytes do not need the cache.
        assert_eq!(
            f.core
                .read_cached(f.ino("/empty"), 0, &mut buf)
                .unwrap()
                .unwrap(),
            0
        );
        assert_eq!(
            f.core
                .read_cached(f.ino("/etc/hostname"), 5, &mut buf)
                .unwrap()
                .unwrap(),
            0
        );
        assert_eq!(
            f.core
                .read_cached(f.ino("/etc/hostname"), 0, &mut buf[..0])
                .unwrap()
                .unwrap(),
            0
        );
        assert_eq!(f.content.reads(), 0, "read_at is never called");
    }

    /// A source whose `read_cached` gives one fixed answer, and whose `read_at` must not be
    /// called.
    struct CacheAnswers(Option<Result<usize, ContentError>>);

    impl ContentSource for CacheAnswers {
        fn read_at(
            &self,
            _: u32,
            _: u64,
            _: &mut [u8],
            _: u64,
            _: std::time::Instant,
        ) -> Result<usize, ContentError> {
            panic!("read_cached must not fall back to read_at");
        }

        fn read_cached(
            &self,
            _: u32,
            _: u64,
            buf: &mut [u8],
            _: u64,
        ) -> Option<Result<usize, ContentError>> {
            self.0.clone().map(|r| r.map(|n| n.min(buf.len())))
        }
    }

    #[test]
    fn read_cached_reports_source_errors_and_leaves_empty_answers_to_read_at() {
        let mut b = ImageBuilder::new();
        b.file("/f", 0o644, b"hello world");
        let (archive, _) = b.build().unwrap();
        let ino = archive.resolve("/f").unwrap().unwrap();
        let read = |answer| {
            let core = FsCore::new(archive.clone(), Arc::new(CacheAnswers(answer)));
            core.read_cached(ino, 0, &mut [0u8; 100])
        };
        let err = read(Some(Err(ContentError::new(libc::ENOMEM, "cache"))));
        let err = err.unwrap().unwrap_err();
        assert_eq!(err.errno(), libc::ENOMEM);
        assert!(err.is_fault());
        assert!(read(Some(Err(ContentError::new(0, "?")))).unwrap().is_err());
        assert!(
            read(Some(Ok(0))).is_none(),
            "\"nothing there\" is read_at's to say"
        );
        assert!(read(None).is_none());
        // A source without `read_cached` (the trait's default): nothing is ever cached.
        let source = Arc::new(Flaky {
            inner: MemoryContent::new(Vec::new()),
            calls: AtomicU64::new(0),
            mode: 0,
        });
        let core = FsCore::new(archive.clone(), source.clone());
        assert!(core.read_cached(ino, 0, &mut [0u8; 100]).is_none());
        assert_eq!(source.calls.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn open_accepts_regular_files_for_reading_only() {
        let f = fixture();
        assert!(f.core.open(f.ino("/etc/hostname"), false).is_ok());
        let cases = [
            ("/etc/hostname", true, libc::EROFS),
            ("/etc", false, libc::EISDIR),
            ("/null", false, libc::EINVAL),
        ];
        for (path, write, errno) in cases {
            assert_eq!(
                f.core.open(f.ino(path), write).unwrap_err().errno(),
                errno,
                "{path}"
            );
        }
    }

    #[test]
    fn xattrs_follow_the_size_probe_protocol() {
        let f = fixture();
        let x = f.ino("/xattrs");
        assert_eq!(
            f.core.getxattr(x, b"user.a", 0).unwrap(),
            XattrReply::Size(5)
        );
        assert_eq!(
            f.core.getxattr(x, b"user.a", 5).unwrap(),
            XattrReply::Data(Cow::Borrowed(b"first"))
        );
        assert_eq!(
            f.core.getxattr(x, b"user.b", 100).unwrap(),
            XattrReply::Data(Cow::Borrowed(b"second"))
        );
        assert_eq!(
            f.core.getxattr(x, b"user.b", 3).unwrap_err().errno(),
            libc::ERANGE
        );
        assert_eq!(
            f.core.getxattr(x, b"user.c", 100).unwrap_err().errno(),
            libc::ENODATA
        );
        let plain = f.ino("/etc/hostname");
        assert_eq!(
            f.core.getxattr(plain, b"user.a", 0).unwrap_err().errno(),
            libc::ENODATA
        );

        let list = b"security.capability\0user.a\0user.b\0";
        assert_eq!(
            f.core.listxattr(x, 0).unwrap(),
            XattrReply::Size(list.len() as u32)
        );
        assert_eq!(
            f.core.listxattr(x, 1000).unwrap(),
            XattrReply::Data(Cow::Owned(list.to_vec()))
        );
        assert_eq!(f.core.listxattr(x, 10).unwrap_err().errno(), libc::ERANGE);
        assert_eq!(f.core.listxattr(plain, 0).unwrap(), XattrReply::Size(0));
        assert_eq!(
            f.core.listxattr(plain, 10).unwrap(),
            XattrReply::Data(Cow::Owned(Vec::new()))
        );
    }

    #[test]
    fn statfs_describes_a_full_read_only_filesystem() {
        let f = fixture();
        let s = f.core.statfs();
        // hostname 5 + passwd 26 + busybox 100000 + xattrs 1 + old 4 (ls is busybox).
        assert_eq!(s.blocks, 100_036u64.div_ceil(4096));
        assert_eq!((s.bfree, s.bavail, s.ffree), (0, 0, 0));
        assert_eq!(s.files, f.core.archive().inode_count());
        assert_eq!((s.bsize, s.frsize, s.namelen), (4096, 4096, 255));
        assert_eq!(f.core.statfs(), s);
    }

    /// A source that fails, or returns fewer bytes than asked, one call at a time.
    struct Flaky {
        inner: MemoryContent,
        calls: AtomicU64,
        mode: u8,
    }

    impl ContentSource for Flaky {
        fn read_at(
            &self,
            layer: u32,
            offset: u64,
            buf: &mut [u8],
            file_end: u64,
            since: std::time::Instant,
        ) -> Result<usize, ContentError> {
            self.calls.fetch_add(1, Ordering::Relaxed);
            match self.mode {
                // One byte at a time.
                0 => {
                    let one = buf.len().min(1);
                    self.inner
                        .read_at(layer, offset, &mut buf[..one], file_end, since)
                }
                1 => Err(ContentError::new(libc::ETIMEDOUT, "registry stalled")),
                2 => Err(ContentError::new(0, "no errno")),
                _ => Ok(0),
            }
        }
    }

    #[test]
    fn short_reads_are_retried_and_failures_map_to_errnos() {
        let mut b = ImageBuilder::new();
        b.file("/f", 0o644, b"hello world");
        let (archive, content) = b.build().unwrap();
        let f_ino = archive.resolve("/f").unwrap().unwrap();
        let mut content = Some(content);
        for (mode, want) in [
            (0u8, Ok(b"hello world".to_vec())),
            (1, Err(libc::ETIMEDOUT)),
            (2, Err(libc::EIO)),
            (3, Err(libc::EIO)),
        ] {
            let inner = content
                .take()
                .unwrap_or_else(|| MemoryContent::new(Vec::new()));
            let source = Arc::new(Flaky {
                inner,
                calls: AtomicU64::new(0),
                mode,
            });
            let core = FsCore::new(archive.clone(), source.clone());
            let got = core.read(f_ino, 0, 100);
            match (&got, &want) {
                (Ok(bytes), Ok(want)) => {
                    assert_eq!(bytes, want);
                    assert_eq!(source.calls.load(Ordering::Relaxed), 11);
                }
                (Err(e), Err(errno)) => {
                    assert_eq!(e.errno(), *errno, "mode {mode}: {e}");
                    assert!(e.is_fault());
                }
                _ => panic!("mode {mode}: got {got:?}"),
            }
        }
    }
}
