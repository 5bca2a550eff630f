//! The zero-copy reader: [`Archive`] over `&[u8]`.
//!
//! Nothing in here may panic on any input bytes: every offset, length and id read from the file
//! is range-checked where it is used (with `.get()` and checked arithmetic), whether or not the
//! checksum matched. The lints below hold this module to it.
#![deny(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::arithmetic_side_effects,
    clippy::cast_possible_truncation
)]

use std::fmt;
use std::ops::Range;

use serde::Serialize;
use xxhash_rust::xxh3::xxh3_64;
use zerocopy::{FromBytes, Immutable, KnownLayout};

use crate::error::{corrupt, ArchiveError};
use crate::format::*;
use crate::model::{
    DataLocation, FileType, ImageMeta, Ino, Inode, Layer, LayerInfo, Span, Window, ROOT_INO,
};
use crate::{FORMAT_VERSION, MAGIC};

/// A `.clip` index viewed in place: opening checks the header, the checksum and the section
/// table and parses the metadata; entries are decoded only when asked for.
///
/// `Archive` either borrows the bytes ([`Archive::open`]: `Archive<'a>` lives no longer than
/// they do) or owns them ([`Archive::open_owned`]: an `Archive<'static>` over a memory map, a
/// `Vec`, ..., freed with the archive). What it hands out ([`InodeRef`], [`DirEntries`],
/// [`SpanTable`], names and values) borrows the archive. It is `Send + Sync`.
pub struct Archive<'a> {
    bytes: Bytes<'a>,
    meta: ImageMeta,
    layers: Vec<LayerInfo>,
    /// Where each fixed-record or string section lies in `bytes` (checked at open).
    sections: Sections,
    sizes: SectionSizes,
}

/// The bytes of an archive: borrowed, or owned by it.
enum Bytes<'a> {
    Borrowed(&'a [u8]),
    Owned(Box<dyn AsRef<[u8]> + Send + Sync>),
}

impl Bytes<'_> {
    fn get(&self) -> &[u8] {
        match self {
            Bytes::Borrowed(b) => b,
            Bytes::Owned(b) => (**b).as_ref(),
        }
    }
}

/// The sections an archive reads after open, as ranges of its bytes. Ranges rather than
/// slices so that an archive can own its bytes without borrowing from itself; each section is
/// sliced (and its records viewed, a length check) where it is used.
#[derive(Clone, Debug, Default)]
struct Sections {
    attrs: Range<usize>,
    mtimes: Range<usize>,
    inodes: Range<usize>,
    dirents: Range<usize>,
    strings: Range<usize>,
    xattr_index: Range<usize>,
    xattrs: Range<usize>,
    spans: Range<usize>,
    /// Where WINDOWS lies in the complete file (offset = the metadata length); in `bytes`
    /// only when the file is complete ([`Archive::has_windows`]).
    windows: Range<usize>,
    /// Whether the bytes hold WINDOWS (a complete file) or end before it (metadata only).
    windows_present: bool,
}

impl fmt::Debug for Archive<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Archive")
            .field("reference", &self.meta.reference)
            .field("layers", &self.layers.len())
            .field("inodes", &self.inodes().len())
            .field("entries", &self.entry_count())
            .field("bytes", &self.as_bytes().len())
            .finish()
    }
}

/// Bytes per section, for `clip inspect`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SectionSizes {
    /// The complete file (metadata and windows).
    pub total: u64,
    /// The metadata: everything but the windows (what every node downloads).
    pub metadata: u64,
    /// Header and section table.
    pub header: u64,
    /// Image metadata and layer table (JSON).
    pub meta: u64,
    /// Unique (mode, uid, gid) records.
    pub attrs: u64,
    /// Unique modification time records.
    pub mtimes: u64,
    /// Inode records.
    pub inodes: u64,
    /// Directory entry records.
    pub dirents: u64,
    /// Names, symlink targets, xattr names and values (deduplicated).
    pub strings: u64,
    /// Per-inode xattr index.
    pub xattr_index: u64,
    /// Xattr (name, value) records.
    pub xattrs: u64,
    /// Seek span records.
    pub spans: u64,
    /// Compressed seek windows.
    pub windows: u64,
}

/// One inode, decoded from its record. Cheap to copy.
#[derive(Clone, Copy, Debug)]
pub struct InodeRef<'a> {
    ino: Ino,
    raw: &'a RawInode,
    mtime: &'a RawMtime,
    file_type: FileType,
    perm: u32,
    uid: u32,
    gid: u32,
}

impl InodeRef<'_> {
    /// The inode number.
    pub fn ino(&self) -> Ino {
        self.ino
    }
    /// The type.
    pub fn file_type(&self) -> FileType {
        self.file_type
    }
    /// Permission bits including setuid/setgid/sticky (`0o7777`), without the type bits.
    pub fn mode(&self) -> u32 {
        self.perm
    }
    /// Owner.
    pub fn uid(&self) -> u32 {
        self.uid
    }
    /// Group.
    pub fn gid(&self) -> u32 {
        self.gid
    }
    /// Regular: content length; symlink: target length; others 0.
    pub fn size(&self) -> u64 {
        match self.file_type {
            FileType::Regular | FileType::Symlink => self.raw.size.get(),
            _ => 0,
        }
    }
    /// Modification time, seconds since the epoch.
    pub fn mtime_sec(&self) -> i64 {
        self.mtime.sec.get()
    }
    /// Nanoseconds of the modification time (< 1e9).
    pub fn mtime_nsec(&self) -> u32 {
        self.mtime.nsec.get()
    }
    /// Link count: names of a non-directory; 2 + subdirectories of a directory.
    pub fn nlink(&self) -> u32 {
        self.raw.nlink.get()
    }
    /// Device major number (devices only, else 0).
    pub fn rdev_major(&self) -> u32 {
        match self.file_type {
            FileType::CharDevice | FileType::BlockDevice => low32(self.raw.payload.get()),
            _ => 0,
        }
    }
    /// Device minor number (devices only, else 0).
    pub fn rdev_minor(&self) -> u32 {
        match self.file_type {
            FileType::CharDevice | FileType::BlockDevice => high32(self.raw.payload.get()),
            _ => 0,
        }
    }
    /// Where the content of a regular file is; `None` for empty files and other types.
    /// (The layer index was checked when the inode was read.)
    pub fn data(&self) -> Option<DataLocation> {
        if self.file_type != FileType::Regular {
            return None;
        }
        let (layer, offset) = split_data(self.raw.payload.get());
        if u64::from(layer) == NO_DATA_LAYER {
            None
        } else {
            Some(DataLocation { layer, offset })
        }
    }
    /// Whether the inode has extended attributes.
    pub fn has_xattrs(&self) -> bool {
        self.raw.attr.get() & ATTR_HAS_XATTRS != 0
    }
    /// Directories: the number of entries (not counting `.` and `..`), as recorded; 0 for other
    /// types. [`Archive::read_dir`] checks it against the file.
    pub fn child_count(&self) -> u32 {
        match self.file_type {
            FileType::Directory => high32(self.raw.payload.get()),
            _ => 0,
        }
    }
}

/// The seek spans of one layer.
#[derive(Clone, Copy, Debug)]
pub struct SpanTable<'a> {
    layer: u32,
    records: &'a [RawSpan],
    compressed_size: u64,
    uncompressed_size: u64,
}

/// One span, decoded and checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpanInfo {
    /// First blob byte needed.
    pub compressed_offset: u64,
    /// One past the last blob byte needed.
    pub compressed_end: u64,
    /// Start of this span's output in the uncompressed tar stream.
    pub uncompressed_offset: u64,
    /// End (exclusive) of this span's output: the next span's start, or the layer's
    /// uncompressed size for the last span.
    pub uncompressed_end: u64,
    /// gzip: unused bits (0..=7) of the byte at `compressed_offset` to prime the inflater with.
    pub bits: u8,
    /// sha256 of `blob[compressed_offset..compressed_end]`.
    pub digest: [u8; 32],
    /// sha256 of the span's uncompressed bytes (`uncompressed_offset..uncompressed_end`).
    pub content_digest: [u8; 32],
    /// Whether [`Archive::window`] returns a non-empty dictionary.
    pub has_window: bool,
}

/// Where a span's compressed seek window lies in the complete index file, and the digest
/// that verifies it wherever its bytes come from ([`Archive::window_ref`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowRef {
    /// The layer of the span.
    pub layer: u32,
    /// The span, within its layer.
    pub span: usize,
    /// Offset of the compressed window in the complete file.
    pub offset: u64,
    /// Its compressed length.
    pub len: u32,
    /// Its length once decompressed (at most 32 KiB).
    pub raw_len: u32,
    /// sha256 of the compressed bytes.
    pub digest: [u8; 32],
}

impl WindowRef {
    /// The dictionary, from the window's stored bytes: checked against the digest before it
    /// is decompressed (bounded by `raw_len`), then checked to have exactly `raw_len` bytes.
    pub fn unpack(&self, packed: &[u8]) -> Result<Vec<u8>, ArchiveError> {
        use sha2::Digest as _;
        let found: [u8; 32] = sha2::Sha256::digest(packed).into();
        if packed.len() as u64 != u64::from(self.len) || found != self.digest {
            return Err(ArchiveError::WindowMismatch {
                layer: self.layer,
                span: self.span as u64,
            });
        }
        let bad = |detail: String| {
            corrupt(
                "windows",
                format!("layer {} span {}: {detail}", self.layer, self.span),
            )
        };
        let raw_len = usize::try_from(self.raw_len)
            .ok()
            .filter(|&n| n <= MAX_WINDOW)
            .ok_or_else(|| bad(format!("window of {} bytes", self.raw_len)))?;
        let out = zstd::bulk::decompress(packed, raw_len)
            .map_err(|e| bad(format!("window does not decompress: {e}")))?;
        if out.len() != raw_len {
            return Err(bad(format!(
                "window has {} bytes, expected {raw_len}",
                out.len()
            )));
        }
        Ok(out)
    }
}

impl<'a> SpanTable<'a> {
    /// The layer these spans belong to.
    pub fn layer(&self) -> u32 {
        self.layer
    }

    /// Number of spans.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// True when the layer has no spans.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Span `i`, checked: ordered offsets, `bits <= 7`, a window of at most 32 KiB.
    pub fn get(&self, i: usize) -> Result<SpanInfo, ArchiveError> {
        let bad =
            |detail: String| corrupt("spans", format!("layer {} span {i}: {detail}", self.layer));
        let rec = self.records.get(i).ok_or(ArchiveError::NoSuchSpan {
            layer: self.layer,
            span: i as u64,
        })?;
        let start = rec.uncompressed_offset.get();
        let end = self.end_of(i);
        if start > end || (start == end && i.checked_add(1) != Some(self.records.len())) {
            return Err(bad(format!(
                "uncompressed range {start}..{end} is out of order"
            )));
        }
        let (c0, c1) = (rec.compressed_offset.get(), rec.compressed_end.get());
        if c0 > c1 || c1 > self.compressed_size {
            return Err(bad(format!(
                "compressed range {c0}..{c1} is not within the blob's {} bytes",
                self.compressed_size
            )));
        }
        if rec.bits > 7 {
            return Err(bad(format!("bits = {} (at most 7)", rec.bits)));
        }
        let raw_len = rec.window_raw_len.get();
        if usize::try_from(raw_len).map_or(true, |n| n > MAX_WINDOW) {
            return Err(bad(format!(
                "window of {raw_len} bytes (at most {MAX_WINDOW})"
            )));
        }
        if rec.reserved != [0; 7] {
            return Err(bad("reserved bytes are not zero".to_string()));
        }
        if (raw_len == 0) != (rec.window_len.get() == 0)
            || (raw_len == 0 && (rec.window_offset.get() != 0 || rec.window_digest != [0; 32]))
        {
            return Err(bad(
                "a window without bytes, or bytes without a window".to_string()
            ));
        }
        Ok(SpanInfo {
            compressed_offset: c0,
            compressed_end: c1,
            uncompressed_offset: start,
            uncompressed_end: end,
            bits: rec.bits,
            digest: rec.digest,
            content_digest: rec.content_digest,
            has_window: raw_len > 0,
        })
    }

    /// The span whose uncompressed range contains `uncompressed_offset` (binary search), or
    /// `None` when the offset lies before the first span or at/after the layer's end.
    pub fn find(&self, uncompressed_offset: u64) -> Option<usize> {
        let p = self
            .records
            .partition_point(|r| r.uncompressed_offset.get() <= uncompressed_offset);
        let i = p.checked_sub(1)?;
        (uncompressed_offset < self.end_of(i)).then_some(i)
    }

    /// Iterates over all spans in order.
    pub fn iter(&self) -> impl Iterator<Item = Result<SpanInfo, ArchiveError>> + 'a {
        let table = *self;
        (0..table.len()).map(move |i| table.get(i))
    }

    /// Uncompressed end of span `i` as recorded (not checked).
    fn end_of(&self, i: usize) -> u64 {
        match i.checked_add(1).and_then(|n| self.records.get(n)) {
            Some(next) => next.uncompressed_offset.get(),
            None => self.uncompressed_size,
        }
    }
}

/// The entries of one directory, sorted by name bytes. Yields an error (and stops) where the
/// file is inconsistent.
#[derive(Clone, Debug)]
pub struct DirEntries<'a> {
    dir: Ino,
    run: std::slice::Iter<'a, RawDirent>,
    strings: &'a [u8],
    inode_count: u64,
    prev: Option<&'a [u8]>,
}

impl<'a> Iterator for DirEntries<'a> {
    type Item = Result<(&'a [u8], Ino), ArchiveError>;

    fn next(&mut self) -> Option<Self::Item> {
        let d = self.run.next()?;
        let item = (|| {
            let name = dirent_name(self.strings, d)?;
            if let Some(prev) = self.prev {
                if prev >= name {
                    return Err(corrupt(
                        "dirents",
                        format!("entries of directory {} are not sorted by name", self.dir),
                    ));
                }
            }
            self.prev = Some(name);
            Ok((name, dirent_ino(self.inode_count, d)?))
        })();
        if item.is_err() {
            // Stop after the first error.
            self.run = [].iter();
        }
        Some(item)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.run.len()))
    }
}

impl<'a> Archive<'a> {
    /// Opens an index: checks the magic, the version, the length, the checksum and the section
    /// table, parses the metadata and checks the (small) table of distinct mtimes. Entries are
    /// not decoded.
    pub fn open(bytes: &'a [u8]) -> Result<Self, ArchiveError> {
        let (meta, layers, sections, sizes) = parse(bytes)?;
        Archive {
            bytes: Bytes::Borrowed(bytes),
            meta,
            layers,
            sections,
            sizes,
        }
        .checked()
    }

    /// Checks what [`Archive::open`] checks after parsing: the root, the span tables, the tree.
    fn checked(self) -> Result<Self, ArchiveError> {
        let root = self.inode(ROOT_INO).map_err(|e| match e {
            ArchiveError::NoSuchInode(_) => corrupt("inodes", "there is no root inode"),
            e => e,
        })?;
        if root.file_type() != FileType::Directory {
            return Err(corrupt("inodes", "the root inode is not a directory"));
        }
        if root.raw.size.get() != ROOT_INO {
            return Err(corrupt("inodes", "the root's parent is not the root"));
        }
        self.check_spans()?;
        self.check_tree()?;
        Ok(self)
    }

    /// [`Archive::open`] for bytes the archive keeps: a memory map, a `Vec<u8>`, an
    /// `Arc<[u8]>`... They are freed when the archive is dropped; nothing is leaked. `bytes`
    /// must give the same bytes every time it is asked (every type that holds immutable bytes
    /// does).
    pub fn open_owned(
        bytes: impl AsRef<[u8]> + Send + Sync + 'static,
    ) -> Result<Archive<'static>, ArchiveError> {
        let (meta, layers, sections, sizes) = parse(bytes.as_ref())?;
        Archive {
            bytes: Bytes::Owned(Box::new(bytes)),
            meta,
            layers,
            sections,
            sizes,
        }
        .checked()
    }

    /// A section's bytes (empty if the range is not in the bytes: it was checked at open).
    fn section(&self, range: &Range<usize>) -> &[u8] {
        self.bytes.get().get(range.clone()).unwrap_or_default()
    }

    /// A record section as a table (viewed once at open: the view cannot fail here).
    fn table<T>(&self, range: &Range<usize>) -> &[T]
    where
        T: FromBytes + KnownLayout + Immutable + zerocopy::Unaligned,
    {
        <[T]>::ref_from_bytes(self.section(range)).unwrap_or_default()
    }

    fn attrs(&self) -> &[RawAttr] {
        self.table(&self.sections.attrs)
    }

    fn mtimes(&self) -> &[RawMtime] {
        self.table(&self.sections.mtimes)
    }

    fn inodes(&self) -> &[RawInode] {
        self.table(&self.sections.inodes)
    }

    fn dirents(&self) -> &[RawDirent] {
        self.table(&self.sections.dirents)
    }

    fn strings(&self) -> &[u8] {
        self.section(&self.sections.strings)
    }

    fn xattr_index(&self) -> &[RawXattrIndex] {
        self.table(&self.sections.xattr_index)
    }

    fn xattr_records(&self) -> &[RawXattr] {
        self.table(&self.sections.xattrs)
    }

    fn span_records(&self) -> &[RawSpan] {
        self.table(&self.sections.spans)
    }

    /// Every layer's span table, checked once at open (one pass over SPANS): a layer with
    /// bytes has spans, the first starts at 0, uncompressed offsets strictly increase and
    /// compressed ranges never go backwards, so that neighbouring spans make one bounded
    /// request and every offset of the layer is covered exactly once.
    fn check_spans(&self) -> Result<(), ArchiveError> {
        // Windows follow each other in span order, without gaps, and fill WINDOWS exactly:
        // the windows of neighbouring spans are one bounded range of the complete file.
        let mut next_window: u64 = 0;
        for (i, info) in self.layers.iter().enumerate() {
            let layer = u32::try_from(i).map_err(|_| corrupt("meta", "too many layers"))?;
            let table = self.spans(layer)?;
            if table.is_empty() && info.uncompressed_size > 0 {
                return Err(corrupt(
                    "spans",
                    format!(
                        "layer {layer} has {} bytes but no spans",
                        info.uncompressed_size
                    ),
                ));
            }
            let mut prev = None;
            for s in 0..table.len() {
                let span = table.get(s)?;
                let bounds = crate::model::SpanBounds {
                    uncompressed_offset: span.uncompressed_offset,
                    compressed_offset: span.compressed_offset,
                    compressed_end: span.compressed_end,
                };
                crate::model::check_span_order(s, prev, bounds)
                    .map_err(|detail| corrupt("spans", format!("layer {layer}: {detail}")))?;
                prev = Some(bounds);
                if let Some(rec) = table.records.get(s).filter(|r| r.window_len.get() > 0) {
                    if rec.window_offset.get() != next_window {
                        return Err(corrupt(
                            "spans",
                            format!(
                                "layer {layer} span {s}: window at {}, expected {next_window}",
                                rec.window_offset.get()
                            ),
                        ));
                    }
                    next_window = next_window.saturating_add(u64::from(rec.window_len.get()));
                }
            }
        }
        let windows_len = self.sections.windows.len() as u64;
        if next_window != windows_len {
            return Err(corrupt(
                "windows",
                format!("the windows fill {next_window} bytes of {windows_len}"),
            ));
        }
        Ok(())
    }

    /// The directory structure, checked once at open (one pass over INODES and DIRENTS):
    /// every inode record is valid; each directory's parent is a directory; the entry runs of
    /// the directories follow each other in inode order and cover DIRENTS exactly; names are
    /// non-empty, contain neither `/` nor NUL, are not `.` or `..`, and are sorted; every
    /// subdirectory is named once, in its recorded parent. So what is reachable from the root
    /// is a tree, and lookups and listings can trust the table's shape.
    fn check_tree(&self) -> Result<(), ArchiveError> {
        let count = self.inode_count();
        let mut named = vec![0u64; self.inodes().len().div_ceil(64)];
        let mut next_entry: u64 = 0;
        for ino in 1..=count {
            let node = self.inode(ino)?;
            if node.file_type != FileType::Directory {
                continue;
            }
            let parent = node.raw.size.get();
            if self.kind_of(parent) != Some(FileType::Directory) {
                return Err(corrupt(
                    "inodes",
                    format!("the parent ({parent}) of directory {ino} is not a directory"),
                ));
            }
            let first = u64::from(low32(node.raw.payload.get()));
            if first != next_entry {
                return Err(corrupt(
                    "inodes",
                    format!(
                        "the entries of directory {ino} start at {first}, expected {next_entry}"
                    ),
                ));
            }
            let run = self.dir_run(ino)?;
            next_entry = next_entry.saturating_add(run.len() as u64);
            let mut prev: Option<&[u8]> = None;
            for d in run {
                let name = dirent_name(self.strings(), d)?;
                if name.is_empty()
                    || name == b"."
                    || name == b".."
                    || name.iter().any(|&b| b == b'/' || b == 0)
                {
                    return Err(corrupt(
                        "dirents",
                        format!(
                            "directory {ino} holds the invalid name \"{}\"",
                            excerpt(name)
                        ),
                    ));
                }
                if prev.is_some_and(|p| p >= name) {
                    return Err(corrupt(
                        "dirents",
                        format!("the entries of directory {ino} are not sorted by name"),
                    ));
                }
                prev = Some(name);
                let child = dirent_ino(count, d)?;
                if self.kind_of(child) == Some(FileType::Directory) {
                    let child_parent = self.inodes_raw(child).map(|r| r.size.get());
                    if child == ROOT_INO || child_parent != Some(ino) || !set_bit(&mut named, child)
                    {
                        return Err(corrupt(
                            "dirents",
                            format!(
                                "directory {child} is named \"{}\" in directory {ino}, which is \
                                 not its only parent",
                                excerpt(name)
                            ),
                        ));
                    }
                }
            }
        }
        if next_entry != self.dirents().len() as u64 {
            return Err(corrupt(
                "dirents",
                format!(
                    "the directories hold {next_entry} entries, the table {}",
                    self.dirents().len()
                ),
            ));
        }
        Ok(())
    }

    fn inodes_raw(&self, ino: Ino) -> Option<&RawInode> {
        ino.checked_sub(1)
            .and_then(|i| usize::try_from(i).ok())
            .and_then(|i| self.inodes().get(i))
    }

    /// The type of an inode from its raw record, `None` when the record or its attributes are
    /// invalid.
    fn kind_of(&self, ino: Ino) -> Option<FileType> {
        let raw = self.inodes_raw(ino)?;
        let attr = usize::try_from(raw.attr.get() & ATTR_INDEX_MASK)
            .ok()
            .and_then(|i| self.attrs().get(i))?;
        file_type_of(attr.mode.get())
    }

    /// The bytes this archive was opened on.
    pub fn as_bytes(&self) -> &[u8] {
        self.bytes.get()
    }

    /// Image metadata.
    pub fn meta(&self) -> &ImageMeta {
        &self.meta
    }

    /// The layer table, bottom layer first.
    pub fn layers(&self) -> &[LayerInfo] {
        &self.layers
    }

    /// The seek spans of a layer.
    pub fn spans(&self, layer: u32) -> Result<SpanTable<'_>, ArchiveError> {
        let info = self.layer_info(layer)?;
        let records = range(info.first_span, info.span_count)
            .and_then(|r| self.span_records().get(r))
            .ok_or_else(|| corrupt("meta", format!("layer {layer}: span range out of bounds")))?;
        Ok(SpanTable {
            layer,
            records,
            compressed_size: info.compressed_size,
            uncompressed_size: info.uncompressed_size,
        })
    }

    /// Whether the seek windows are in this file (a complete index) or not (a metadata-only
    /// index, whose windows are read from the complete file elsewhere: [`Archive::window_ref`]).
    pub fn has_windows(&self) -> bool {
        self.sections.windows_present
    }

    /// Length of the metadata, the prefix of the complete file that a metadata-only index is.
    pub fn metadata_len(&self) -> u64 {
        self.sections.windows.start as u64
    }

    /// Length of the complete file (metadata and windows).
    pub fn complete_len(&self) -> u64 {
        self.sections.windows.end as u64
    }

    /// Where span `span`'s compressed window lies in the complete file, and what verifies it;
    /// `None` when the span has none (checked at open: within WINDOWS, in span order).
    pub fn window_ref(&self, layer: u32, span: usize) -> Result<Option<WindowRef>, ArchiveError> {
        let table = self.spans(layer)?;
        let rec = table.records.get(span).ok_or(ArchiveError::NoSuchSpan {
            layer,
            span: span as u64,
        })?;
        let (raw_len, len) = (rec.window_raw_len.get(), rec.window_len.get());
        if raw_len == 0 {
            return Ok(None);
        }
        let offset = (self.sections.windows.start as u64)
            .checked_add(rec.window_offset.get())
            .ok_or_else(|| corrupt("spans", format!("layer {layer} span {span}: window offset")))?;
        Ok(Some(WindowRef {
            layer,
            span,
            offset,
            len,
            raw_len,
            digest: rec.window_digest,
        }))
    }

    /// The decompressed deflate dictionary of a span (empty when it has none), from this
    /// file's WINDOWS, verified against the span's `window_digest`. A metadata-only index
    /// has none: [`ArchiveError::WindowsAbsent`].
    pub fn window(&self, layer: u32, span: usize) -> Result<Vec<u8>, ArchiveError> {
        let Some(w) = self.window_ref(layer, span)? else {
            return Ok(Vec::new());
        };
        w.unpack(self.packed_bytes(&w)?)
    }

    /// The stored (compressed) bytes of a window of this file.
    fn packed_bytes(&self, w: &WindowRef) -> Result<&[u8], ArchiveError> {
        if !self.has_windows() {
            return Err(ArchiveError::WindowsAbsent);
        }
        range(w.offset, u64::from(w.len))
            .and_then(|r| self.bytes.get().get(r))
            .ok_or_else(|| {
                corrupt(
                    "windows",
                    format!(
                        "layer {} span {}: window bytes {}+{} out of bounds",
                        w.layer, w.span, w.offset, w.len
                    ),
                )
            })
    }

    /// A span's window as stored (checked to unpack to its recorded length).
    fn packed_window(&self, layer: u32, span: usize) -> Result<Window, ArchiveError> {
        let Some(w) = self.window_ref(layer, span)? else {
            return Ok(Window::default());
        };
        let packed = self.packed_bytes(&w)?;
        w.unpack(packed)?;
        Ok(Window::from_packed(packed.to_vec(), w.raw_len))
    }

    /// Number of inodes (`1..=inode_count` are valid inode numbers).
    pub fn inode_count(&self) -> u64 {
        self.inodes().len() as u64
    }

    /// Number of names: directory entries + 1 for the root. Hardlinks count once per name.
    pub fn entry_count(&self) -> u64 {
        (self.dirents().len() as u64).saturating_add(1)
    }

    /// Bytes per section.
    pub fn section_sizes(&self) -> SectionSizes {
        self.sizes
    }

    /// Reads an inode.
    pub fn inode(&self, ino: Ino) -> Result<InodeRef<'_>, ArchiveError> {
        let raw = ino
            .checked_sub(1)
            .and_then(|i| usize::try_from(i).ok())
            .and_then(|i| self.inodes().get(i))
            .ok_or(ArchiveError::NoSuchInode(ino))?;
        let attr_idx = raw.attr.get() & ATTR_INDEX_MASK;
        let attr = usize::try_from(attr_idx)
            .ok()
            .and_then(|i| self.attrs().get(i))
            .ok_or_else(|| {
                corrupt(
                    "inodes",
                    format!(
                        "inode {ino} refers to attribute record {attr_idx} of {}",
                        self.attrs().len()
                    ),
                )
            })?;
        let mode = attr.mode.get();
        let Some(file_type) = file_type_of(mode) else {
            return Err(corrupt(
                "attrs",
                format!("record {attr_idx}: mode {mode:#o}"),
            ));
        };
        if mode & !(S_IFMT | PERM_MASK) != 0 {
            return Err(corrupt(
                "attrs",
                format!("record {attr_idx}: mode {mode:#o}"),
            ));
        }
        // The values were checked at open (`check_mtimes`); only the index is checked here.
        let mtime_idx = raw.mtime.get();
        let mtime = usize::try_from(mtime_idx)
            .ok()
            .and_then(|i| self.mtimes().get(i))
            .ok_or_else(|| {
                corrupt(
                    "inodes",
                    format!(
                        "inode {ino} refers to mtime record {mtime_idx} of {}",
                        self.mtimes().len()
                    ),
                )
            })?;
        if file_type == FileType::Regular {
            let (layer, offset) = split_data(raw.payload.get());
            if u64::from(layer) != NO_DATA_LAYER {
                let info = self.layers.get(layer as usize).ok_or_else(|| {
                    corrupt(
                        "inodes",
                        format!(
                            "inode {ino}: data in layer {layer} of {}",
                            self.layers.len()
                        ),
                    )
                })?;
                let size = raw.size.get();
                if offset
                    .checked_add(size)
                    .is_none_or(|end| end > info.uncompressed_size)
                {
                    return Err(corrupt(
                        "inodes",
                        format!(
                            "inode {ino}: data {offset}+{size} beyond the end of layer {layer}"
                        ),
                    ));
                }
            }
        }
        Ok(InodeRef {
            ino,
            raw,
            mtime,
            file_type,
            perm: mode & PERM_MASK,
            uid: attr.uid.get(),
            gid: attr.gid.get(),
        })
    }

    /// Looks `name` up in directory `dir` (binary search). `Ok(None)` when there is no such
    /// entry.
    pub fn lookup(&self, dir: Ino, name: &[u8]) -> Result<Option<Ino>, ArchiveError> {
        let run = self.dir_run(dir)?;
        let (mut lo, mut hi) = (0usize, run.len());
        while lo < hi {
            // lo < hi <= run.len(), so mid < run.len() and the additions cannot overflow.
            let mid = lo.saturating_add(hi.saturating_sub(lo) / 2);
            let d = run
                .get(mid)
                .ok_or_else(|| corrupt("dirents", "binary search out of range"))?;
            match dirent_name(self.strings(), d)?.cmp(name) {
                std::cmp::Ordering::Less => lo = mid.saturating_add(1),
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return dirent_ino(self.inode_count(), d).map(Some),
            }
        }
        Ok(None)
    }

    /// The entries of a directory, sorted by name bytes (without `.` and `..`).
    pub fn read_dir(&self, dir: Ino) -> Result<DirEntries<'_>, ArchiveError> {
        let run = self.dir_run(dir)?;
        Ok(DirEntries {
            dir,
            run: run.iter(),
            strings: self.strings(),
            inode_count: self.inode_count(),
            prev: None,
        })
    }

    /// The parent of a directory; the root's parent is the root.
    pub fn parent(&self, dir: Ino) -> Result<Ino, ArchiveError> {
        let node = self.inode(dir)?;
        if node.file_type != FileType::Directory {
            return Err(ArchiveError::NotADirectory(dir));
        }
        let parent = node.raw.size.get();
        if parent == 0 || parent > self.inode_count() {
            return Err(corrupt(
                "inodes",
                format!("directory {dir} has parent {parent}"),
            ));
        }
        Ok(parent)
    }

    /// The target of a symlink.
    pub fn symlink_target(&self, ino: Ino) -> Result<&[u8], ArchiveError> {
        let node = self.inode(ino)?;
        if node.file_type != FileType::Symlink {
            return Err(ArchiveError::NotASymlink(ino));
        }
        let (off, len) = (node.raw.payload.get(), node.raw.size.get());
        range(off, len)
            .and_then(|r| self.strings().get(r))
            .ok_or_else(|| {
                corrupt(
                    "inodes",
                    format!("symlink {ino}: target {off}+{len} out of bounds"),
                )
            })
    }

    /// The extended attributes of an inode as (name, value), sorted by name.
    #[allow(clippy::type_complexity)] // the plain type says it best
    pub fn xattrs(&self, ino: Ino) -> Result<Vec<(&[u8], &[u8])>, ArchiveError> {
        let pairs = self.xattr_run(ino)?;
        let mut out = Vec::with_capacity(pairs.len());
        for x in pairs {
            out.push(self.xattr_pair(ino, x)?);
        }
        Ok(out)
    }

    /// The value of one extended attribute, `Ok(None)` when the inode has no such attribute.
    pub fn xattr(&self, ino: Ino, name: &[u8]) -> Result<Option<&[u8]>, ArchiveError> {
        for x in self.xattr_run(ino)? {
            let (n, v) = self.xattr_pair(ino, x)?;
            if n == name {
                return Ok(Some(v));
            }
        }
        Ok(None)
    }

    /// Resolves a path from the root: `"/a/b"` or `"a/b"`; `.` and empty components are
    /// skipped, `..` goes to the parent. Symlinks are not followed. `Ok(None)` when a component
    /// does not exist; [`ArchiveError::NotADirectory`] when a non-final component is not a
    /// directory.
    pub fn resolve(&self, path: &str) -> Result<Option<Ino>, ArchiveError> {
        self.resolve_bytes(path.as_bytes())
    }

    /// [`Archive::resolve`] for paths that are not UTF-8.
    pub fn resolve_bytes(&self, path: &[u8]) -> Result<Option<Ino>, ArchiveError> {
        let mut cur = ROOT_INO;
        for comp in path.split(|&b| b == b'/') {
            match comp {
                b"" | b"." => {}
                b".." => cur = self.parent(cur)?,
                name => match self.lookup(cur, name)? {
                    Some(ino) => cur = ino,
                    None => return Ok(None),
                },
            }
        }
        Ok(Some(cur))
    }

    /// Depth-first walk of the whole tree, in name order, yielding `(path, ino)`; the root
    /// comes first as `"/"`. Hardlinked inodes appear once per name. Terminates on any input:
    /// each directory is entered at most once, and only from its recorded parent.
    pub fn walk(&self) -> Walk<'_> {
        Walk {
            archive: self,
            stack: Vec::new(),
            path: Vec::new(),
            entered: vec![0; self.inodes().len().div_ceil(64)],
            started: false,
            pending: None,
        }
    }

    /// The whole inode as an owned [`Inode`] (with xattrs and symlink target).
    pub fn inode_owned(&self, ino: Ino) -> Result<Inode, ArchiveError> {
        let node = self.inode(ino)?;
        let xattrs = if node.has_xattrs() {
            self.xattrs(ino)?
                .into_iter()
                .map(|(n, v)| (n.to_vec(), v.to_vec()))
                .collect()
        } else {
            Vec::new()
        };
        let symlink_target = if node.file_type == FileType::Symlink {
            self.symlink_target(ino)?.to_vec()
        } else {
            Vec::new()
        };
        Ok(Inode {
            file_type: node.file_type,
            mode: node.mode(),
            uid: node.uid(),
            gid: node.gid(),
            size: node.size(),
            mtime_sec: node.mtime_sec(),
            mtime_nsec: node.mtime_nsec(),
            rdev_major: node.rdev_major(),
            rdev_minor: node.rdev_minor(),
            xattrs,
            symlink_target,
            data: node.data(),
        })
    }

    /// A layer with all its spans and decompressed windows, as an owned [`Layer`].
    pub fn layer_owned(&self, layer: u32) -> Result<Layer, ArchiveError> {
        let info = self.layer_info(layer)?;
        let table = self.spans(layer)?;
        let mut spans = Vec::with_capacity(table.len());
        for i in 0..table.len() {
            let s = table.get(i)?;
            spans.push(Span {
                compressed_offset: s.compressed_offset,
                compressed_end: s.compressed_end,
                uncompressed_offset: s.uncompressed_offset,
                bits: s.bits,
                window: self.packed_window(layer, i)?,
                digest: s.digest,
                content_digest: s.content_digest,
            });
        }
        Ok(Layer {
            digest: info.digest.clone(),
            media_type: info.media_type.clone(),
            compression: info.compression,
            compressed_size: info.compressed_size,
            uncompressed_size: info.uncompressed_size,
            diff_id: info.diff_id.clone(),
            span_size: info.span_size,
            spans,
        })
    }

    fn layer_info(&self, layer: u32) -> Result<&LayerInfo, ArchiveError> {
        usize::try_from(layer)
            .ok()
            .and_then(|l| self.layers.get(l))
            .ok_or(ArchiveError::NoSuchLayer(layer))
    }

    /// The dirent run of a directory, range-checked.
    fn dir_run(&self, dir: Ino) -> Result<&[RawDirent], ArchiveError> {
        let node = self.inode(dir)?;
        if node.file_type != FileType::Directory {
            return Err(ArchiveError::NotADirectory(dir));
        }
        let payload = node.raw.payload.get();
        let (first, count) = (u64::from(low32(payload)), u64::from(high32(payload)));
        range(first, count)
            .and_then(|r| self.dirents().get(r))
            .ok_or_else(|| {
                corrupt(
                    "inodes",
                    format!(
                        "directory {dir}: entries {first}+{count} out of {}",
                        self.dirents().len()
                    ),
                )
            })
    }

    /// The xattr records of an inode (empty if it has none).
    fn xattr_run(&self, ino: Ino) -> Result<&[RawXattr], ArchiveError> {
        let node = self.inode(ino)?;
        if !node.has_xattrs() {
            return Ok(&[]);
        }
        let idx = self
            .xattr_index()
            .binary_search_by_key(&ino, |r| u64::from(r.ino.get()))
            .ok()
            .and_then(|i| self.xattr_index().get(i))
            .ok_or_else(|| {
                corrupt(
                    "xattr index",
                    format!("inode {ino} has xattrs but no index entry"),
                )
            })?;
        let (first, count) = (u64::from(idx.first.get()), u64::from(idx.count.get()));
        range(first, count)
            .and_then(|r| self.xattr_records().get(r))
            .ok_or_else(|| {
                corrupt(
                    "xattr index",
                    format!("inode {ino}: xattrs {first}+{count} out of bounds"),
                )
            })
    }

    fn xattr_pair(&self, ino: Ino, x: &RawXattr) -> Result<(&[u8], &[u8]), ArchiveError> {
        let get = |off: u32, len: u32| {
            range(u64::from(off), u64::from(len)).and_then(|r| self.strings().get(r))
        };
        let name = get(x.name_off.get(), x.name_len.get());
        let value = get(x.value_off.get(), x.value_len.get());
        match (name, value) {
            (Some(n), Some(v)) => Ok((n, v)),
            _ => Err(corrupt(
                "xattrs",
                format!("inode {ino}: an xattr string is out of bounds"),
            )),
        }
    }
}

/// The depth-first iterator of [`Archive::walk`].
pub struct Walk<'s> {
    archive: &'s Archive<'s>,
    /// Open directories: entries still to visit, the directory, the length of its path.
    stack: Vec<(DirEntries<'s>, Ino, usize)>,
    path: Vec<u8>,
    /// Bit per inode: directory already entered.
    entered: Vec<u64>,
    started: bool,
    pending: Option<ArchiveError>,
}

impl fmt::Debug for Walk<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Walk")
            .field("path", &self.path.escape_ascii().to_string())
            .finish()
    }
}

impl Walk<'_> {
    /// Marks a directory as entered; false if it already was (or the ino is out of range).
    fn enter(&mut self, ino: Ino) -> bool {
        set_bit(&mut self.entered, ino)
    }
}

impl Iterator for Walk<'_> {
    type Item = Result<(Vec<u8>, Ino), ArchiveError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(e) = self.pending.take() {
            return Some(Err(e));
        }
        if !self.started {
            self.started = true;
            self.enter(ROOT_INO);
            match self.archive.read_dir(ROOT_INO) {
                Ok(entries) => self.stack.push((entries, ROOT_INO, 0)),
                Err(e) => self.pending = Some(e),
            }
            return Some(Ok((b"/".to_vec(), ROOT_INO)));
        }
        loop {
            let (entries, dir, dir_len) = self.stack.last_mut()?;
            let (dir, dir_len) = (*dir, *dir_len);
            let (name, ino) = match entries.next() {
                None => {
                    self.stack.pop();
                    continue;
                }
                Some(Err(e)) => return Some(Err(e)),
                Some(Ok(entry)) => entry,
            };
            self.path.truncate(dir_len);
            self.path.push(b'/');
            self.path.extend_from_slice(name);
            let node = match self.archive.inode(ino) {
                Ok(node) => node,
                Err(e) => return Some(Err(e)),
            };
            if node.file_type() == FileType::Directory {
                let parent_ok = matches!(self.archive.parent(ino), Ok(p) if p == dir);
                if ino == ROOT_INO || !parent_ok || !self.enter(ino) {
                    return Some(Err(corrupt(
                        "dirents",
                        format!(
                            "directory {ino} named at {} is not a child of directory {dir}",
                            self.path.escape_ascii()
                        ),
                    )));
                }
                match self.archive.read_dir(ino) {
                    Ok(entries) => self.stack.push((entries, ino, self.path.len())),
                    Err(e) => self.pending = Some(e),
                }
            }
            return Some(Ok((self.path.clone(), ino)));
        }
    }
}

/// What [`Archive::open`] reads up front: the metadata, the layer table, where the sections
/// are, their sizes. Checks the magic, the version, the length, the checksum, the section
/// table, the record sections' lengths, the layers' span ranges and the mtimes.
fn parse(
    bytes: &[u8],
) -> Result<(ImageMeta, Vec<LayerInfo>, Sections, SectionSizes), ArchiveError> {
    let len = bytes.len() as u64;

    let head = bytes.get(..MAGIC.len()).unwrap_or(bytes);
    if MAGIC.get(..head.len()) != Some(head) {
        return Err(ArchiveError::NotAnArchive {
            found: head.to_vec(),
        });
    }
    // The version sits at offset 8 in every version of the format.
    if let Some(v) = bytes.get(8..12) {
        let version = u32::from_le_bytes([
            *v.first().unwrap_or(&0),
            *v.get(1).unwrap_or(&0),
            *v.get(2).unwrap_or(&0),
            *v.get(3).unwrap_or(&0),
        ]);
        if version != FORMAT_VERSION {
            return Err(ArchiveError::UnsupportedVersion {
                found: version,
                supported: FORMAT_VERSION,
            });
        }
    }
    let (header, _) = RawHeader::ref_from_prefix(bytes).map_err(|_| ArchiveError::Truncated {
        needed: HEADER_LEN as u64,
        len,
    })?;
    let file_len = header.file_len.get();
    let metadata_len = header.metadata_len.get();
    if metadata_len < SECTIONS_START as u64 || metadata_len > file_len {
        return Err(corrupt(
            "header",
            format!("metadata length {metadata_len} (the file has {file_len} bytes)"),
        ));
    }
    // A complete file, or its metadata alone.
    if len < metadata_len {
        return Err(ArchiveError::Truncated {
            needed: metadata_len,
            len,
        });
    }
    if len != metadata_len && len < file_len {
        return Err(ArchiveError::Truncated {
            needed: file_len,
            len,
        });
    }
    if len > file_len {
        return Err(corrupt(
            "header",
            format!("the file has {len} bytes but its header says {file_len}"),
        ));
    }
    let windows_present = len == file_len;
    let stored = header.checksum.get();
    let computed = xxh3_64(
        range(
            CHECKSUM_START as u64,
            metadata_len.saturating_sub(CHECKSUM_START as u64),
        )
        .and_then(|r| bytes.get(r))
        .unwrap_or(&[]),
    );
    if stored != computed {
        return Err(ArchiveError::ChecksumMismatch {
            expected: stored,
            found: computed,
        });
    }
    if header.flags.get() != 0 {
        return Err(corrupt(
            "header",
            format!("unknown flags {:#x}", header.flags.get()),
        ));
    }
    if header.reserved.get() != 0 || header.reserved2 != [0; 16] {
        return Err(corrupt("header", "reserved bytes are not zero"));
    }
    if header.section_count.get() as usize != SECTION_COUNT {
        return Err(corrupt(
            "header",
            format!(
                "{} sections, version {FORMAT_VERSION} has {SECTION_COUNT}",
                header.section_count.get()
            ),
        ));
    }
    let table = bytes
        .get(HEADER_LEN..SECTIONS_START)
        .and_then(|t| <[RawSection]>::ref_from_bytes(t).ok())
        .ok_or(ArchiveError::Truncated {
            needed: SECTIONS_START as u64,
            len,
        })?;

    let mut sections: [&[u8]; SECTION_COUNT] = [&[]; SECTION_COUNT];
    let mut ranges: [Range<usize>; SECTION_COUNT] = Default::default();
    let mut expected = SECTIONS_START as u64;
    for (i, (entry, slot)) in table.iter().zip(sections.iter_mut()).enumerate() {
        let name = SECTION_NAMES.get(i).copied().unwrap_or("?");
        let kind = entry.kind.get();
        if u32::try_from(i).ok().and_then(|i| i.checked_add(1)) != Some(kind) {
            return Err(corrupt(
                "header",
                format!("section table entry {i} has kind {kind}, expected the {name} section"),
            ));
        }
        if entry.reserved.get() != 0 {
            return Err(corrupt(
                "header",
                format!("{name} section: reserved field not zero"),
            ));
        }
        let (off, slen) = (entry.offset.get(), entry.len.get());
        let end = off.checked_add(slen);
        if off != expected || end.is_none_or(|e| e > file_len) {
            return Err(corrupt(
                "header",
                format!(
                    "{name} section at {off}+{slen} is not where expected ({expected}, \
                         within {file_len} bytes)"
                ),
            ));
        }
        let r = range(off, slen).ok_or_else(|| {
            corrupt(
                "header",
                format!("{name} section at {off}+{slen} is out of bounds"),
            )
        })?;
        let is_windows = kind == crate::format::KIND_WINDOWS;
        if is_windows && off != metadata_len {
            return Err(corrupt(
                "header",
                format!("the windows start at {off}, the metadata ends at {metadata_len}"),
            ));
        }
        *slot = if is_windows && !windows_present {
            &[]
        } else {
            bytes.get(r.clone()).ok_or_else(|| {
                corrupt(
                    "header",
                    format!("{name} section at {off}+{slen} is out of bounds"),
                )
            })?
        };
        if let Some(range_slot) = ranges.get_mut(i) {
            *range_slot = r;
        }
        expected = end.unwrap_or(file_len);
    }
    if expected != file_len {
        return Err(corrupt(
            "header",
            format!("sections end at {expected}, but the file has {file_len} bytes"),
        ));
    }
    let [meta, attrs, mtimes, inodes, dirents, strings, xattr_index, xattrs, spans, windows] =
        sections;

    let doc: MetaDoc =
        serde_json::from_slice(meta).map_err(|e| corrupt("meta", format!("invalid JSON: {e}")))?;
    let spans: &[RawSpan] = records(spans, "spans")?;
    if doc.layers.len() as u64 >= NO_DATA_LAYER {
        return Err(corrupt("meta", format!("{} layers", doc.layers.len())));
    }
    let mut next_span: u64 = 0;
    for (i, l) in doc.layers.iter().enumerate() {
        if l.first_span != next_span {
            return Err(corrupt(
                "meta",
                format!(
                    "layer {i}: spans start at {}, expected {next_span}",
                    l.first_span
                ),
            ));
        }
        next_span = next_span
            .checked_add(l.span_count)
            .ok_or_else(|| corrupt("meta", format!("layer {i}: span count overflows")))?;
    }
    if next_span != spans.len() as u64 {
        return Err(corrupt(
            "meta",
            format!(
                "the layers have {next_span} spans, the spans section {}",
                spans.len()
            ),
        ));
    }

    let mtime_records: &[RawMtime] = records(mtimes, "mtimes")?;
    check_mtimes(mtime_records)?;

    // Each record section is viewed once here, so that later views cannot fail.
    records::<RawAttr>(attrs, "attrs")?;
    records::<RawInode>(inodes, "inodes")?;
    records::<RawDirent>(dirents, "dirents")?;
    records::<RawXattrIndex>(xattr_index, "xattr index")?;
    records::<RawXattr>(xattrs, "xattrs")?;
    let [_, r_attrs, r_mtimes, r_inodes, r_dirents, r_strings, r_xattr_index, r_xattrs, r_spans, r_windows] =
        ranges;
    let sections = Sections {
        attrs: r_attrs,
        mtimes: r_mtimes,
        inodes: r_inodes,
        dirents: r_dirents,
        strings: r_strings,
        xattr_index: r_xattr_index,
        xattrs: r_xattrs,
        spans: r_spans,
        windows: r_windows.clone(),
        windows_present,
    };
    let sizes = SectionSizes {
        total: file_len,
        metadata: metadata_len,
        header: SECTIONS_START as u64,
        meta: meta.len() as u64,
        attrs: attrs.len() as u64,
        mtimes: mtimes.len() as u64,
        inodes: inodes.len() as u64,
        dirents: dirents.len() as u64,
        strings: strings.len() as u64,
        xattr_index: xattr_index.len() as u64,
        xattrs: xattrs.len() as u64,
        spans: (spans.len() as u64).saturating_mul(SPAN_LEN as u64),
        windows: r_windows.len() as u64,
    };
    let _ = windows;
    Ok((doc.image, doc.layers, sections, sizes))
}

/// `off..off + len` as a usize range, if it does not overflow.
fn range(off: u64, len: u64) -> Option<Range<usize>> {
    let start = usize::try_from(off).ok()?;
    let end = usize::try_from(off.checked_add(len)?).ok()?;
    Some(start..end)
}

/// Views a fixed-record section as a table.
fn records<'a, T>(bytes: &'a [u8], section: &'static str) -> Result<&'a [T], ArchiveError>
where
    T: FromBytes + KnownLayout + Immutable + zerocopy::Unaligned,
{
    <[T]>::ref_from_bytes(bytes).map_err(|_| {
        corrupt(
            section,
            format!(
                "length {} is not a multiple of the {}-byte record",
                bytes.len(),
                std::mem::size_of::<T>()
            ),
        )
    })
}

/// MTIMES: nanoseconds below 1e9, strictly increasing by (seconds, nanoseconds). Checked once
/// at open: one pass over a small table (few distinct times), cheaper than the checksum.
fn check_mtimes(table: &[RawMtime]) -> Result<(), ArchiveError> {
    let mut prev: Option<(i64, u32)> = None;
    for (i, rec) in table.iter().enumerate() {
        let cur = (rec.sec.get(), rec.nsec.get());
        if cur.1 >= NSEC_PER_SEC {
            return Err(corrupt(
                "mtimes",
                format!("record {i}: {} nanoseconds (not below 1e9)", cur.1),
            ));
        }
        if prev.is_some_and(|p| p >= cur) {
            return Err(corrupt(
                "mtimes",
                format!("record {i}: the table is not strictly increasing"),
            ));
        }
        prev = Some(cur);
    }
    Ok(())
}

/// The file type of a mode's type bits.
fn file_type_of(mode: u32) -> Option<FileType> {
    match mode & S_IFMT {
        S_IFDIR => Some(FileType::Directory),
        S_IFREG => Some(FileType::Regular),
        S_IFLNK => Some(FileType::Symlink),
        S_IFCHR => Some(FileType::CharDevice),
        S_IFBLK => Some(FileType::BlockDevice),
        S_IFIFO => Some(FileType::Fifo),
        _ => None,
    }
}

/// Sets the bit of `ino` (1-based); false if it was set already or is out of range.
fn set_bit(bits: &mut [u64], ino: Ino) -> bool {
    let Some(i) = ino.checked_sub(1).and_then(|i| usize::try_from(i).ok()) else {
        return false;
    };
    let Some(word) = bits.get_mut(i / 64) else {
        return false;
    };
    let bit = 1u64 << (i % 64);
    if *word & bit != 0 {
        return false;
    }
    *word |= bit;
    true
}

/// At most 64 bytes of a name, escaped, for messages.
fn excerpt(name: &[u8]) -> String {
    let cut = name.get(..64).unwrap_or(name);
    let mut s = cut.escape_ascii().to_string();
    if cut.len() < name.len() {
        s.push_str(&format!("… ({} bytes)", name.len()));
    }
    s
}

fn dirent_name<'a>(strings: &'a [u8], d: &RawDirent) -> Result<&'a [u8], ArchiveError> {
    let (off, len) = (u64::from(d.name_off.get()), u64::from(d.name_len.get()));
    range(off, len)
        .and_then(|r| strings.get(r))
        .ok_or_else(|| corrupt("dirents", format!("name {off}+{len} out of bounds")))
}

fn dirent_ino(inode_count: u64, d: &RawDirent) -> Result<Ino, ArchiveError> {
    let ino = u64::from(d.ino.get());
    if ino == 0 || ino > inode_count {
        return Err(corrupt(
            "dirents",
            format!("entry refers to inode {ino} of {inode_count}"),
        ));
    }
    Ok(ino)
}

#[allow(clippy::cast_possible_truncation)] // masked/shifted to fit
fn low32(v: u64) -> u32 {
    (v & 0xFFFF_FFFF) as u32
}

#[allow(clippy::cast_possible_truncation)] // shifted to fit
fn high32(v: u64) -> u32 {
    (v >> 32) as u32
}

/// Regular file payload → (layer, offset).
#[allow(clippy::cast_possible_truncation)] // shifted to 16 bits
fn split_data(payload: u64) -> (u32, u64) {
    (
        (payload >> DATA_OFFSET_BITS) as u32,
        payload & DATA_OFFSET_MASK,
    )
}
