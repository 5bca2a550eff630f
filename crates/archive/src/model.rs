//! Owned types: what the writer takes in and what the reader hands back.

use serde::{Deserialize, Serialize};

use crate::ArchiveError;

/// An inode number. [`ROOT_INO`] (1) is the root directory; numbers are dense, `1..=inode_count`.
pub type Ino = u64;

/// The root directory's inode number.
pub const ROOT_INO: Ino = 1;

/// Extended attributes by which overlayfs keeps its own bookkeeping on a layer: an image must
/// not carry them into a container's overlay (they would make it hide or redirect content of
/// the layers below). `umoci unpack` drops them ("ignoring forbidden xattr"), `clip index` does
/// not record them, and a mount never shows them, whatever an index says.
pub const OVERLAYFS_PRIVATE_XATTRS: &[&[u8]] = &[
    b"trusted.overlay.opaque",
    b"trusted.overlay.redirect",
    b"trusted.overlay.origin",
    b"trusted.overlay.impure",
    b"trusted.overlay.nlink",
    b"trusted.overlay.upper",
    b"trusted.overlay.metacopy",
];

/// The platform an image manifest was chosen for (`linux/arm64/v8`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    /// `linux`, `windows`, ...
    pub os: String,
    /// `amd64`, `arm64`, ...
    pub architecture: String,
    /// `v8`, `v7`, ... when the manifest names one.
    pub variant: Option<String>,
}

/// Where the index came from: the image, its manifest and its config.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageMeta {
    /// Canonical full reference, e.g. `docker.io/library/alpine:3.20`.
    pub reference: String,
    /// Digest of the (platform) manifest, `sha256:…`.
    pub manifest_digest: String,
    /// Media type of that manifest.
    pub manifest_media_type: String,
    /// The platform the manifest was chosen for.
    pub platform: Platform,
    /// Digest of the image config blob.
    pub config_digest: String,
    /// The full image config JSON, exactly as fetched (raw text, not re-serialized).
    pub config: String,
}

/// How a layer blob is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// A plain tar stream.
    None,
    /// gzip (possibly multi-member); spans resume inflation at deflate block boundaries.
    Gzip,
    /// zstd; spans sit at frame boundaries.
    Zstd,
}

/// One independently fetchable and verifiable piece of a layer blob (a seek checkpoint).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Span {
    /// First blob byte needed. For gzip with `bits > 0` this is the byte holding the pending bits.
    pub compressed_offset: u64,
    /// One past the last blob byte needed (exclusive).
    pub compressed_end: u64,
    /// Where this span's output starts in the layer's uncompressed tar stream.
    pub uncompressed_offset: u64,
    /// gzip: how many (0..=7) unused bits of the byte at `compressed_offset` prime the inflater;
    /// 0 otherwise.
    pub bits: u8,
    /// gzip: the deflate dictionary (≤ 32 KiB, may be empty); empty otherwise.
    pub window: Window,
    /// sha256 of `blob[compressed_offset..compressed_end]`: checked before a fetched span is
    /// decoded.
    pub digest: [u8; 32],
    /// sha256 of the span's uncompressed bytes (`uncompressed_offset` up to the next span's
    /// start, or the layer's end): checked after decoding, before a byte is served or cached.
    pub content_digest: [u8; 32],
}

/// Where a span lies, for the order rule of a layer's spans.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SpanBounds {
    pub uncompressed_offset: u64,
    pub compressed_offset: u64,
    pub compressed_end: u64,
}

/// The order rule of a layer's spans, applied by the writer to what it is given and by the
/// reader to what it opens: the first span starts at uncompressed offset 0, each next one
/// further on, and compressed ranges never go backwards (so that neighbouring spans make one
/// bounded request and every offset of the layer is covered exactly once). `prev` is the
/// previous span of the layer; the error says what is wrong with span `index`.
pub(crate) fn check_span_order(
    index: usize,
    prev: Option<SpanBounds>,
    span: SpanBounds,
) -> Result<(), String> {
    match prev {
        None if span.uncompressed_offset != 0 => Err(format!(
            "the first span starts at uncompressed offset {}, not 0",
            span.uncompressed_offset
        )),
        Some(p) if span.uncompressed_offset <= p.uncompressed_offset => Err(format!(
            "span {index} starts at uncompressed offset {}, not after the previous span's {}",
            span.uncompressed_offset, p.uncompressed_offset
        )),
        Some(p)
            if span.compressed_offset < p.compressed_offset
                || span.compressed_end < p.compressed_end =>
        {
            Err(format!(
                "span {index} covers compressed bytes {}..{}, before the previous span's {}..{}",
                span.compressed_offset, span.compressed_end, p.compressed_offset, p.compressed_end
            ))
        }
        _ => Ok(()),
    }
}

/// A span's deflate dictionary (at most 32 KiB), held zstd-compressed exactly as the archive
/// stores it: an indexing run keeps about 13 KiB per checkpoint in memory instead of 32, and
/// the writer copies the bytes as they are. [`crate::Archive::window`] returns it unpacked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Window {
    packed: Vec<u8>,
    len: u32,
}

/// zstd level of windows. Part of the determinism contract: same input, same bytes.
const WINDOW_ZSTD_LEVEL: i32 = 3;

impl Window {
    /// Packs a raw dictionary. An empty one packs to nothing.
    pub fn new(raw: &[u8]) -> Result<Window, ArchiveError> {
        if raw.is_empty() {
            return Ok(Window::default());
        }
        let len = u32::try_from(raw.len())
            .map_err(|_| ArchiveError::InvalidWindow(format!("{} bytes", raw.len())))?;
        let packed = zstd::bulk::compress(raw, WINDOW_ZSTD_LEVEL)
            .map_err(|e| ArchiveError::InvalidWindow(e.to_string()))?;
        Ok(Window { packed, len })
    }

    /// A window as stored: `packed` zstd bytes that unpack to `len` bytes (not checked here).
    pub(crate) fn from_packed(packed: Vec<u8>, len: u32) -> Window {
        Window { packed, len }
    }

    /// Length of the raw dictionary.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// True for no dictionary.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The zstd-compressed bytes.
    pub fn packed(&self) -> &[u8] {
        &self.packed
    }

    /// The raw dictionary.
    pub fn unpack(&self) -> Result<Vec<u8>, ArchiveError> {
        if self.len == 0 {
            return Ok(Vec::new());
        }
        let out = zstd::bulk::decompress(&self.packed, self.len())
            .map_err(|e| ArchiveError::InvalidWindow(e.to_string()))?;
        if out.len() != self.len() {
            return Err(ArchiveError::InvalidWindow(format!(
                "unpacks to {} bytes, not {}",
                out.len(),
                self.len
            )));
        }
        Ok(out)
    }
}

/// One layer of the image and its seek index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layer {
    /// Blob digest, `sha256:…`.
    pub digest: String,
    /// Media type from the manifest.
    pub media_type: String,
    /// Blob compression.
    pub compression: Compression,
    /// Blob size in bytes (from the manifest).
    pub compressed_size: u64,
    /// Length of the uncompressed tar stream.
    pub uncompressed_size: u64,
    /// sha256 of the uncompressed tar stream (`sha256:…`), from the image config.
    pub diff_id: String,
    /// The nominal span size the index was built with.
    pub span_size: u64,
    /// Sorted by `uncompressed_offset`, strictly increasing. The uncompressed end of span `i` is
    /// the start of span `i + 1`; the last one ends at `uncompressed_size`.
    pub spans: Vec<Span>,
}

/// A layer as the reader describes it: [`Layer`] without its spans (see
/// [`crate::Archive::spans`]). Stored in the META section.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerInfo {
    /// Blob digest, `sha256:…`.
    pub digest: String,
    /// Media type from the manifest.
    pub media_type: String,
    /// Blob compression.
    pub compression: Compression,
    /// Blob size in bytes.
    pub compressed_size: u64,
    /// Length of the uncompressed tar stream.
    pub uncompressed_size: u64,
    /// sha256 of the uncompressed tar stream.
    pub diff_id: String,
    /// The nominal span size the index was built with.
    pub span_size: u64,
    /// Index of this layer's first record in the SPANS section.
    pub first_span: u64,
    /// Number of spans of this layer.
    pub span_count: u64,
}

/// The type of an inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileType {
    /// A directory.
    Directory,
    /// A regular file.
    Regular,
    /// A symbolic link.
    Symlink,
    /// A character device.
    CharDevice,
    /// A block device.
    BlockDevice,
    /// A named pipe.
    Fifo,
}

/// Where a regular file's content lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataLocation {
    /// Index into the layer table.
    pub layer: u32,
    /// Offset of the first content byte in that layer's UNCOMPRESSED tar stream.
    pub offset: u64,
}

/// One inode as the writer takes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inode {
    /// The inode type.
    pub file_type: FileType,
    /// Permission bits including setuid/setgid/sticky (`0o7777`), NOT the type bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Regular: content length; symlink: target length; others 0.
    pub size: u64,
    /// Modification time, seconds since the epoch (may be negative).
    pub mtime_sec: i64,
    /// Nanoseconds, `< 1_000_000_000`.
    pub mtime_nsec: u32,
    /// Devices only.
    pub rdev_major: u32,
    /// Devices only.
    pub rdev_minor: u32,
    /// Extended attributes as (name, value). Names are unique, non-empty and contain no NUL.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// Symlinks only.
    pub symlink_target: Vec<u8>,
    /// Regular files with `size > 0` (may also be set for empty regular files).
    pub data: Option<DataLocation>,
}

impl Inode {
    /// An inode of the given type and permission bits, everything else zero or empty.
    pub fn new(file_type: FileType, mode: u32) -> Inode {
        Inode {
            file_type,
            mode,
            uid: 0,
            gid: 0,
            size: 0,
            mtime_sec: 0,
            mtime_nsec: 0,
            rdev_major: 0,
            rdev_minor: 0,
            xattrs: Vec::new(),
            symlink_target: Vec::new(),
            data: None,
        }
    }
}

/// Input to the writer: inodes and directory contents.
///
/// Ids are the caller's (indexes into `inodes`); the writer renumbers them and does not store
/// them. A hardlink is the same inode index named in two places.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tree {
    /// All inodes; those not reachable from `root` are dropped by the writer.
    pub inodes: Vec<Inode>,
    /// Index of the root directory in `inodes`.
    pub root: usize,
    /// Per inode index, the (name, child index) pairs of a directory, in any order. May be
    /// shorter than `inodes`; must be empty for non-directories.
    pub children: Vec<Vec<(Vec<u8>, usize)>>,
}

impl Tree {
    /// A tree holding only `root` (which should be a directory).
    pub fn new(root: Inode) -> Tree {
        Tree {
            inodes: vec![root],
            root: 0,
            children: vec![Vec::new()],
        }
    }

    /// Adds an inode without naming it anywhere; returns its index.
    pub fn push(&mut self, inode: Inode) -> usize {
        self.inodes.push(inode);
        self.children.push(Vec::new());
        self.inodes.len() - 1
    }

    /// Names `child` as `name` in directory `dir` (both indexes). Validation happens in the
    /// writer.
    pub fn link(&mut self, dir: usize, name: impl Into<Vec<u8>>, child: usize) {
        if self.children.len() <= dir {
            self.children.resize_with(dir + 1, Vec::new);
        }
        if let Some(list) = self.children.get_mut(dir) {
            list.push((name.into(), child));
        }
    }

    /// Adds `inode` and names it `name` in `dir`; returns its index.
    pub fn add(&mut self, dir: usize, name: impl Into<Vec<u8>>, inode: Inode) -> usize {
        let idx = self.push(inode);
        self.link(dir, name, idx);
        idx
    }
}
