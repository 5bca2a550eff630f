//! The one error type of this crate, and its errno.

use clip_archive::{ArchiveError, Ino};

use crate::content::ContentError;

/// Why a filesystem operation failed. [`FsError::errno`] is what the kernel hands the caller.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// An inode number the archive does not have (the kernel holds a stale number).
    #[error("no inode {0} in this image")]
    NoSuchInode(Ino),

    /// A directory operation on something else.
    #[error("inode {0} is not a directory")]
    NotADirectory(Ino),

    /// A file operation (open, read) on a directory.
    #[error("inode {0} is a directory")]
    IsADirectory(Ino),

    /// `readlink` on something that is not a symbolic link.
    #[error("inode {0} is not a symbolic link")]
    NotASymlink(Ino),

    /// `open` or `read` on a device, fifo or symlink (the kernel does not send those).
    #[error("inode {0} is not a regular file")]
    NotARegularFile(Ino),

    /// An attempt to open for writing: the image is read-only.
    #[error("inode {0}: the image is read-only")]
    ReadOnly(Ino),

    /// The inode has no extended attribute of that name.
    #[error("inode {ino} has no extended attribute {}", .name.escape_ascii())]
    NoSuchXattr {
        /// The inode.
        ino: Ino,
        /// The attribute name asked for.
        name: Vec<u8>,
    },

    /// The caller's buffer is too small for the value or the list (probe with size 0 first).
    #[error("inode {ino}: extended attribute buffer of {given} bytes, {needed} needed")]
    XattrBufferTooSmall {
        /// The inode.
        ino: Ino,
        /// Bytes needed.
        needed: usize,
        /// Bytes offered.
        given: u32,
    },

    /// The archive is inconsistent where this operation looked (it was checked when opened,
    /// so this means corruption the checksum did not catch, or a bug).
    #[error("inode {ino}: the archive is inconsistent")]
    Archive {
        /// The inode being served.
        ino: Ino,
        /// What the archive reader found.
        #[source]
        source: ArchiveError,
    },

    /// The content source failed to deliver a file's bytes.
    #[error("inode {ino}: cannot read layer {layer} at offset {offset}")]
    Content {
        /// The inode being read.
        ino: Ino,
        /// Layer of its content.
        layer: u32,
        /// Offset in the layer's uncompressed stream where the failed read started.
        offset: u64,
        /// What the source said.
        #[source]
        source: ContentError,
    },

    /// The content source returned no bytes where the archive says the file's bytes are.
    #[error(
        "inode {ino}: layer {layer} ended at offset {offset}, {missing} bytes short of the file's \
         content"
    )]
    ShortContent {
        /// The inode being read.
        ino: Ino,
        /// Layer of its content.
        layer: u32,
        /// Offset in the layer where the source had nothing more.
        offset: u64,
        /// Bytes still expected.
        missing: u64,
    },

    /// A regular file with bytes but no content location (an archive the writer would refuse).
    #[error("inode {0} has {1} bytes of content but no location for them")]
    NoContentLocation(Ino, u64),
}

impl FsError {
    /// The errno for the kernel. Matched exhaustively: a new variant must decide.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NoSuchInode(_) => libc::ESTALE,
            FsError::NotADirectory(_) => libc::ENOTDIR,
            FsError::IsADirectory(_) => libc::EISDIR,
            FsError::NotASymlink(_) | FsError::NotARegularFile(_) => libc::EINVAL,
            FsError::ReadOnly(_) => libc::EROFS,
            FsError::NoSuchXattr { .. } => libc::ENODATA,
            FsError::XattrBufferTooSmall { .. } => libc::ERANGE,
            FsError::Content { source, .. } => source.errno(),
            FsError::Archive { .. }
            | FsError::ShortContent { .. }
            | FsError::NoContentLocation(..) => libc::EIO,
        }
    }

    /// Whether the cause was logged already where it arose (see [`ContentError::logged`]).
    pub fn is_reported(&self) -> bool {
        matches!(self, FsError::Content { source, .. } if source.logged)
    }

    /// True for failures worth a log line at warning level: the archive or the content source
    /// let the reader down. False for the ordinary answers (`ENOTDIR`, `ENODATA`, ...).
    pub fn is_fault(&self) -> bool {
        match self {
            FsError::Archive { .. }
            | FsError::Content { .. }
            | FsError::ShortContent { .. }
            | FsError::NoContentLocation(..) => true,
            FsError::NoSuchInode(_)
            | FsError::NotADirectory(_)
            | FsError::IsADirectory(_)
            | FsError::NotASymlink(_)
            | FsError::NotARegularFile(_)
            | FsError::ReadOnly(_)
            | FsError::NoSuchXattr { .. }
            | FsError::XattrBufferTooSmall { .. } => false,
        }
    }
}
