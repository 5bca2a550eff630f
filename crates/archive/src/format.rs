//! The on-disk records, exactly as `docs/FORMAT.md` describes them.
//!
//! Every record is little-endian, `repr(C)`, without padding and without alignment requirements
//! (`Unaligned`), so a record or a table of records can be viewed in place at any offset of the
//! file. CHANGING ANY OF THIS IS A FORMAT BREAK: bump [`crate::FORMAT_VERSION`] and update
//! `docs/FORMAT.md`.

use zerocopy::little_endian::{I64, U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Size of [`RawHeader`].
pub(crate) const HEADER_LEN: usize = 64;
/// The checksum covers `bytes[CHECKSUM_START..metadata_len]`: the metadata, not the windows
/// (each window is verified by its span's `window_digest`).
pub(crate) const CHECKSUM_START: usize = 32;
/// Number of sections.
pub(crate) const SECTION_COUNT: usize = 10;
/// Byte offset of the first section (header + section table).
pub(crate) const SECTIONS_START: usize = HEADER_LEN + SECTION_COUNT * SECTION_ENTRY_LEN;
/// Size of [`RawSection`].
pub(crate) const SECTION_ENTRY_LEN: usize = 24;

/// Section kinds; section `i` of the table has kind `i + 1`.
pub(crate) const KIND_META: u32 = 1;
pub(crate) const KIND_ATTRS: u32 = 2;
pub(crate) const KIND_MTIMES: u32 = 3;
pub(crate) const KIND_INODES: u32 = 4;
pub(crate) const KIND_DIRENTS: u32 = 5;
pub(crate) const KIND_STRINGS: u32 = 6;
pub(crate) const KIND_XATTR_INDEX: u32 = 7;
pub(crate) const KIND_XATTRS: u32 = 8;
pub(crate) const KIND_SPANS: u32 = 9;
pub(crate) const KIND_WINDOWS: u32 = 10;

/// Section names, for error messages, indexed by `kind - 1`.
pub(crate) const SECTION_NAMES: [&str; SECTION_COUNT] = [
    "meta",
    "attrs",
    "mtimes",
    "inodes",
    "dirents",
    "strings",
    "xattr index",
    "xattrs",
    "spans",
    "windows",
];

/// File type bits (`S_IFMT`) as stored in [`RawAttr::mode`].
pub(crate) const S_IFMT: u32 = 0o170_000;
pub(crate) const S_IFIFO: u32 = 0o010_000;
pub(crate) const S_IFCHR: u32 = 0o020_000;
pub(crate) const S_IFDIR: u32 = 0o040_000;
pub(crate) const S_IFBLK: u32 = 0o060_000;
pub(crate) const S_IFREG: u32 = 0o100_000;
pub(crate) const S_IFLNK: u32 = 0o120_000;
/// Permission bits including setuid, setgid and sticky.
pub(crate) const PERM_MASK: u32 = 0o7777;

/// [`RawInode::attr`]: bit 31 says the inode has extended attributes.
pub(crate) const ATTR_HAS_XATTRS: u32 = 1 << 31;
/// [`RawInode::attr`]: bits 0..=30, the index into ATTRS (so ATTRS has at most 2^31 records).
pub(crate) const ATTR_INDEX_MASK: u32 = ATTR_HAS_XATTRS - 1;

/// Nanoseconds of an mtime are below this.
pub(crate) const NSEC_PER_SEC: u32 = 1_000_000_000;

/// Regular files: the payload holds `offset | layer << 48`.
pub(crate) const DATA_OFFSET_BITS: u32 = 48;
pub(crate) const DATA_OFFSET_MASK: u64 = (1 << DATA_OFFSET_BITS) - 1;
/// Layer value meaning "no data" (empty regular file).
pub(crate) const NO_DATA_LAYER: u64 = 0xFFFF;

/// Size of [`RawSpan`].
pub(crate) const SPAN_LEN: usize = 144;

/// Largest window a span may carry (the deflate dictionary size).
pub(crate) const MAX_WINDOW: usize = 32 * 1024;

/// The fixed 64-byte header at offset 0.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub(crate) struct RawHeader {
    /// [`crate::MAGIC`].
    pub magic: [u8; 8],
    /// [`crate::FORMAT_VERSION`].
    pub version: U32,
    /// 0: no flags are defined.
    pub flags: U32,
    /// Length of the complete file (metadata and windows) in bytes.
    pub file_len: U64,
    /// xxh3-64 (seed 0) of `bytes[32..metadata_len]`.
    pub checksum: U64,
    /// [`SECTION_COUNT`].
    pub section_count: U32,
    /// Zero.
    pub reserved: U32,
    /// Length of the metadata: every section but WINDOWS, which starts here. A file of
    /// exactly this many bytes is a metadata-only index.
    pub metadata_len: U64,
    /// Zero.
    pub reserved2: [u8; 16],
}

/// One entry of the section table, which follows the header.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub(crate) struct RawSection {
    pub kind: U32,
    /// Zero.
    pub reserved: U32,
    /// Absolute byte offset of the section in the file.
    pub offset: U64,
    /// Length in bytes.
    pub len: U64,
}

/// ATTRS: one unique (mode incl. type bits, uid, gid) triple. 12 bytes.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub(crate) struct RawAttr {
    pub mode: U32,
    pub uid: U32,
    pub gid: U32,
}

/// MTIMES: one unique modification time; the table is strictly increasing by (sec, nsec).
/// 12 bytes.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub(crate) struct RawMtime {
    /// Seconds since the epoch.
    pub sec: I64,
    /// Nanoseconds, below [`NSEC_PER_SEC`].
    pub nsec: U32,
}

/// INODES: one per inode, record `ino - 1`. 28 bytes.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub(crate) struct RawInode {
    /// Bits 0..=30 index into ATTRS, bit 31 has-xattrs ([`ATTR_HAS_XATTRS`]).
    pub attr: U32,
    pub nlink: U32,
    /// Regular: content length; symlink: target length; directory: parent ino; others 0.
    pub size: U64,
    /// Index into MTIMES.
    pub mtime: U32,
    /// Meaning depends on the type, see `docs/FORMAT.md`.
    pub payload: U64,
}

/// DIRENTS: one per directory entry; per directory a contiguous run sorted by name. 10 bytes.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub(crate) struct RawDirent {
    /// Offset of the name in STRINGS.
    pub name_off: U32,
    pub name_len: U16,
    pub ino: U32,
}

/// XATTR INDEX: one per inode that has xattrs, sorted by ino. 12 bytes.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub(crate) struct RawXattrIndex {
    pub ino: U32,
    /// First record in XATTRS.
    pub first: U32,
    pub count: U32,
}

/// XATTRS: one (name, value) pair, both in STRINGS. 16 bytes.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub(crate) struct RawXattr {
    pub name_off: U32,
    pub name_len: U32,
    pub value_off: U32,
    pub value_len: U32,
}

/// SPANS: one seek checkpoint. 144 bytes.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub(crate) struct RawSpan {
    pub compressed_offset: U64,
    pub compressed_end: U64,
    pub uncompressed_offset: U64,
    /// Offset of the zstd-compressed window in WINDOWS.
    pub window_offset: U64,
    /// Compressed window length (0: no window).
    pub window_len: U32,
    /// Window length after decompression (≤ 32768).
    pub window_raw_len: U32,
    pub bits: u8,
    /// Zero.
    pub reserved: [u8; 7],
    /// sha256 of the compressed bytes `compressed_offset..compressed_end`.
    pub digest: [u8; 32],
    /// sha256 of the span's uncompressed bytes.
    pub content_digest: [u8; 32],
    /// sha256 of the compressed window as stored in WINDOWS (zero when there is none).
    pub window_digest: [u8; 32],
}

// The sizes are part of the format.
const _: () = {
    assert!(core::mem::size_of::<RawHeader>() == HEADER_LEN);
    assert!(core::mem::size_of::<RawSection>() == SECTION_ENTRY_LEN);
    assert!(core::mem::size_of::<RawAttr>() == 12);
    assert!(core::mem::size_of::<RawMtime>() == 12);
    assert!(core::mem::size_of::<RawInode>() == 28);
    assert!(core::mem::size_of::<RawDirent>() == 10);
    assert!(core::mem::size_of::<RawXattrIndex>() == 12);
    assert!(core::mem::size_of::<RawXattr>() == 16);
    assert!(core::mem::size_of::<RawSpan>() == SPAN_LEN);
};

/// The META section: compact JSON of this struct (field order as declared).
#[derive(serde::Serialize)]
pub(crate) struct MetaDocRef<'a> {
    pub image: &'a crate::ImageMeta,
    pub layers: &'a [crate::LayerInfo],
}

/// What the reader parses META into.
#[derive(serde::Deserialize)]
pub(crate) struct MetaDoc {
    pub image: crate::ImageMeta,
    pub layers: Vec<crate::LayerInfo>,
}
