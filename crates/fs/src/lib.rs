//! The read-only filesystem core: what `stat`, `ls`, `readlink`, `cat` and `getfattr` see of a
//! mounted image, computed from a `.clip` archive and a source of file bytes.
//!
//! # What this crate owns, and what it must not touch
//!
//! It owns the **meaning of the filesystem operations**: inode numbers (the archive's, stable,
//! the root is 1), attributes, directory listings with `.` and `..` and resumable offsets,
//! symlink targets, extended attributes with the size-probe protocol, reads clipped at the end
//! of the file, `statfs`, and the errno of every failure ([`FsError::errno`], matched
//! exhaustively).
//!
//! It knows nothing of FUSE (the `clip-fuse` crate adapts it to `fuser`, without adding
//! filesystem logic) and **never touches the network**: file bytes come through the
//! [`ContentSource`] trait, which the fetcher implements. Metadata operations read only the
//! archive, in memory. No `unsafe`.
//!
//! # Principal types
//!
//! - [`FsCore`] over an `Arc<Archive<'static>>` and an `Arc<dyn ContentSource>`:
//!   [`FsCore::lookup`], [`FsCore::getattr`] ([`Attr`]), [`FsCore::readdir`] ([`ReadDir`] of
//!   [`DirEntry`], attributes included for readdirplus), [`FsCore::readlink`],
//!   [`FsCore::open`], [`FsCore::read`] / [`FsCore::read_into`] (may block on the source),
//!   [`FsCore::read_cached`] (never blocks: `None` unless every byte is at hand),
//!   [`FsCore::getxattr`] / [`FsCore::listxattr`] ([`XattrReply`]), [`FsCore::statfs`]
//!   ([`StatFs`]).
//! - [`ContentSource::read_at`] reads a layer's uncompressed tar stream; a file's bytes are
//!   `[data.offset, data.offset + size)` of its layer. [`ContentSource::read_cached`] is its
//!   non-blocking twin (default: nothing cached). [`ContentError`] carries the errno.
//! - [`testing`]: an image builder and an in-memory content source for tests.
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use clip_fs::testing::ImageBuilder;
//! use clip_fs::{FsCore, XattrReply, ROOT_INO};
//!
//! let mut image = ImageBuilder::new();
//! image.file("/etc/hostname", 0o644, b"clip\n");
//! image.symlink("/etc/localtime", "/usr/share/zoneinfo/UTC");
//! let (archive, content) = image.build()?;
//! let fs = FsCore::new(archive, Arc::new(content));
//!
//! let etc = fs.lookup(ROOT_INO, b"etc")?.expect("exists");
//! let hostname = fs.lookup(etc.ino, b"hostname")?.expect("exists");
//! assert_eq!((hostname.size, hostname.perm), (5, 0o644));
//! assert_eq!(fs.read(hostname.ino, 0, 4096)?, b"clip\n");
//! assert_eq!(fs.lookup(etc.ino, b"passwd")?, None);
//!
//! let names: Vec<&[u8]> = fs.readdir(etc.ino, 0)?.map(|e| e.map(|e| e.name)).collect::<Result<_, _>>()?;
//! assert_eq!(names, [&b"."[..], b"..", b"hostname", b"localtime"]);
//!
//! let err = fs.getxattr(hostname.ino, b"user.x", 0).unwrap_err();
//! assert_eq!(err.errno(), libc::ENODATA);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod content;
mod core;
mod error;
pub mod testing;

pub use clip_archive::{FileType, Ino, ROOT_INO};

pub use crate::content::{ContentError, ContentSource};
pub use crate::core::{
    encode_dev, Attr, DirEntry, FsCore, ReadDir, StatFs, XattrReply, BLOCK_SIZE, NAME_MAX,
};
pub use crate::error::FsError;
