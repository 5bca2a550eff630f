//! The one error type of this crate.

/// What can go wrong writing or reading a `.clip` index.
///
/// Reader errors caused by the bytes of the file (`NotAnArchive`, `Truncated`,
/// `UnsupportedVersion`, `ChecksumMismatch`, `Corrupt`) say what to do about it. Lookups of ids
/// that do not exist (`NoSuchInode`, ...) are caller errors. `InvalidTree` and `InvalidLayer`
/// come only from [`crate::write_archive`] and point at a bug in whatever built the input.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The first bytes are not the `.clip` magic.
    #[error(
        "not a .clip index (its first bytes are \"{}\", expected \"CLIPIDX\\0\"); create one \
         with `clip index IMAGE OUT.clip`",
        .found.escape_ascii()
    )]
    NotAnArchive {
        /// Up to 8 leading bytes of the file.
        found: Vec<u8>,
    },

    /// The file is shorter than its structure says.
    #[error(
        "truncated .clip index: {len} bytes, but at least {needed} are needed (an interrupted \
         copy or download?); re-create it with `clip index`"
    )]
    Truncated {
        /// Bytes needed.
        needed: u64,
        /// Bytes present.
        len: u64,
    },

    /// The file has a format version this build does not read.
    #[error(
        "unsupported .clip format version {found}; this clip reads version {supported}: \
         {}",
        if .found > .supported {
            "upgrade clip to read it"
        } else {
            "re-create the index with `clip index`"
        }
    )]
    UnsupportedVersion {
        /// Version in the file.
        found: u32,
        /// [`crate::FORMAT_VERSION`].
        supported: u32,
    },

    /// The stored checksum does not match the bytes.
    #[error(
        "corrupt .clip index: checksum mismatch (stored {expected:#018x}, computed \
         {found:#018x}); the file was damaged, re-create it with `clip index`"
    )]
    ChecksumMismatch {
        /// Checksum stored in the header.
        expected: u64,
        /// Checksum computed over the bytes.
        found: u64,
    },

    /// A structural check failed (a reference out of range, a malformed record...).
    #[error("corrupt .clip index ({section} section): {detail}; re-create it with `clip index`")]
    Corrupt {
        /// Which section (or `header`) the problem was found in.
        section: &'static str,
        /// What exactly is wrong.
        detail: String,
    },

    /// A window was asked of a metadata-only index.
    #[error(
        "this index is metadata only: its seek windows are in the complete index in the \
         registry; mount the image by reference, or get the complete file with \
         `clip pull IMAGE OUT.clip`"
    )]
    WindowsAbsent,

    /// A window's bytes did not hash to the span's `window_digest`.
    #[error(
        "the seek window of layer {layer} span {span} does not match the digest the index \
         records for it"
    )]
    WindowMismatch {
        /// The layer.
        layer: u32,
        /// The span in the layer.
        span: u64,
    },

    /// No inode with that number.
    #[error("no inode {0} in this index")]
    NoSuchInode(u64),

    /// The inode is not a directory.
    #[error("inode {0} is not a directory")]
    NotADirectory(u64),

    /// The inode is not a symlink.
    #[error("inode {0} is not a symbolic link")]
    NotASymlink(u64),

    /// No layer with that index.
    #[error("no layer {0} in this index")]
    NoSuchLayer(u32),

    /// No span with that index in the layer.
    #[error("no span {span} in layer {layer}")]
    NoSuchSpan {
        /// Layer index.
        layer: u32,
        /// Span index within the layer.
        span: u64,
    },

    /// The writer's input tree breaks a rule (see [`crate::write_archive`]).
    #[error("cannot write .clip index: invalid tree: {0} (a bug in the indexer)")]
    InvalidTree(String),

    /// A seek window could not be packed or unpacked ([`crate::Window`]).
    #[error("seek window: {0}")]
    InvalidWindow(String),

    /// The writer's layer table breaks a rule (see [`crate::write_archive`]).
    #[error("cannot write .clip index: invalid layer {layer}: {detail} (a bug in the indexer)")]
    InvalidLayer {
        /// Index into the layer table.
        layer: usize,
        /// What is wrong.
        detail: String,
    },
}

impl ArchiveError {
    /// True when the error is about the bytes of the file (as opposed to a caller asking for an
    /// id that does not exist, or the writer's input).
    pub fn is_corruption(&self) -> bool {
        match self {
            ArchiveError::NotAnArchive { .. }
            | ArchiveError::Truncated { .. }
            | ArchiveError::UnsupportedVersion { .. }
            | ArchiveError::ChecksumMismatch { .. }
            | ArchiveError::Corrupt { .. } => true,
            // The window's bytes may come from elsewhere than the file (the registry): whose
            // fault it is, the caller knows.
            ArchiveError::WindowMismatch { .. } | ArchiveError::WindowsAbsent => false,
            ArchiveError::NoSuchInode(_)
            | ArchiveError::NotADirectory(_)
            | ArchiveError::NotASymlink(_)
            | ArchiveError::NoSuchLayer(_)
            | ArchiveError::NoSuchSpan { .. }
            | ArchiveError::InvalidTree(_)
            | ArchiveError::InvalidWindow(_)
            | ArchiveError::InvalidLayer { .. } => false,
        }
    }
}

/// Shorthand for a [`ArchiveError::Corrupt`].
pub(crate) fn corrupt(section: &'static str, detail: impl Into<String>) -> ArchiveError {
    ArchiveError::Corrupt {
        section,
        detail: detail.into(),
    }
}
