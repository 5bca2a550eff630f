//! The deterministic writer: [`write_archive`].

use std::collections::HashMap;

use xxhash_rust::xxh3::xxh3_64;
use zerocopy::little_endian::{I64, U16, U32, U64};
use zerocopy::IntoBytes;

use crate::error::ArchiveError;
use crate::format::*;
use crate::model::{Compression, FileType, ImageMeta, Inode, Layer, LayerInfo, Tree};
use crate::{FORMAT_VERSION, MAGIC};

/// Encodes an index: image metadata, the layer table with its seek spans, and the file tree.
///
/// The output is a function of the input only: the same arguments give byte-identical output.
///
/// Inodes are renumbered breadth-first from the root ([`crate::ROOT_INO`]), the children of a
/// directory in name order, a hardlinked inode at its first encounter. Inodes not reachable from
/// the root are dropped. Link counts are computed: for a non-directory the number of names it
/// has, for a directory 2 + its number of subdirectories.
/// Strings, (mode, uid, gid) triples and modification times are stored once each.
///
/// # Errors
///
/// [`ArchiveError::InvalidTree`] when the tree breaks a rule:
/// - the root is a directory; non-directories have no children;
/// - names are non-empty, at most 65535 bytes, contain no `/` or NUL, are not `.` or `..`, and
///   are unique within their directory; every child index exists;
/// - a directory has exactly one name (no hardlinked directories, no cycles);
/// - `mode` has only permission bits (`0o7777`), `mtime_nsec < 1e9`;
/// - `size` is the content length for regular files, the target length for symlinks, 0
///   otherwise; `symlink_target` only on symlinks, `rdev_*` only on devices;
/// - `data` only on regular files, and required when `size > 0`; its layer exists and
///   `offset + size` lies within the layer's uncompressed size (`offset < 2^48`);
/// - xattr names are non-empty, contain no NUL, and are unique per inode;
/// - the totals fit the format (fewer than 2^32 inodes, entries and string bytes, at most 2^31
///   distinct (mode, uid, gid) triples).
///
/// [`ArchiveError::InvalidLayer`] when a layer breaks a rule: fewer than 65535 layers; the
/// first span starts at uncompressed offset 0; spans strictly increasing by
/// `uncompressed_offset`, each starting at or before `uncompressed_size`, and never decreasing
/// in `compressed_offset` or `compressed_end`; `compressed_offset <= compressed_end <=
/// compressed_size`; windows at most 32 KiB; `bits <= 7`; `bits` and windows only on gzip
/// layers.
pub fn write_archive(
    meta: &ImageMeta,
    layers: &[Layer],
    tree: &Tree,
) -> Result<Vec<u8>, ArchiveError> {
    check_layers(layers)?;
    let plan = Plan::build(tree)?;

    let mut strings = StringTable::default();
    let mut attrs = AttrTable::default();

    // DIRENTS, directory by directory in inode order; names go first into STRINGS so that the
    // names of one directory sit together.
    let mut dirents: Vec<RawDirent> = Vec::with_capacity(plan.dirent_total);
    let mut dir_runs: Vec<(u32, u32)> = Vec::with_capacity(plan.order.len());
    for entries in &plan.entries {
        let first = to_u32(dirents.len(), "directory entries")?;
        for &(name, child) in entries {
            let name_off = strings.intern(name)?;
            let name_len = u16::try_from(name.len())
                .map_err(|_| invalid("a name longer than 65535 bytes".to_string()))?;
            dirents.push(RawDirent {
                name_off: U32::new(name_off),
                name_len: U16::new(name_len),
                ino: U32::new(child),
            });
        }
        dir_runs.push((first, to_u32(entries.len(), "directory entries")?));
    }
    to_u32(dirents.len(), "directory entries")?;

    // MTIMES: the distinct (seconds, nanoseconds) of the reachable inodes, ascending, so that
    // the table depends only on the set of times. Inodes refer to it by index.
    let mut mtimes: Vec<(i64, u32)> = plan
        .order
        .iter()
        .map(|&idx| (tree.inodes[idx].mtime_sec, tree.inodes[idx].mtime_nsec))
        .collect();
    mtimes.sort_unstable();
    mtimes.dedup();

    // INODES, XATTR INDEX, XATTRS.
    let mut inodes: Vec<RawInode> = Vec::with_capacity(plan.order.len());
    let mut xattr_index: Vec<RawXattrIndex> = Vec::new();
    let mut xattrs: Vec<RawXattr> = Vec::new();
    for (k, &idx) in plan.order.iter().enumerate() {
        let ino = to_u32(k + 1, "inodes")?;
        let inode = &tree.inodes[idx];
        check_inode(inode, layers).map_err(|why| invalid(format!("{}: {why}", plan.path(ino))))?;

        let type_bits = match inode.file_type {
            FileType::Directory => S_IFDIR,
            FileType::Regular => S_IFREG,
            FileType::Symlink => S_IFLNK,
            FileType::CharDevice => S_IFCHR,
            FileType::BlockDevice => S_IFBLK,
            FileType::Fifo => S_IFIFO,
        };
        let mut attr = attrs.intern(type_bits | inode.mode, inode.uid, inode.gid)?;
        // Present: the table holds the times of all inodes in `plan.order`; fewer than 2^32 of
        // them (checked by the plan).
        let mtime = mtimes
            .binary_search(&(inode.mtime_sec, inode.mtime_nsec))
            .map_err(|_| invalid(format!("{}: mtime not in the table", plan.path(ino))))?;
        let mtime = to_u32(mtime, "distinct mtimes")?;

        let (size, payload) = match inode.file_type {
            FileType::Directory => {
                let (first, count) = dir_runs[k];
                (
                    u64::from(plan.origin[k].0),
                    u64::from(first) | (u64::from(count) << 32),
                )
            }
            FileType::Regular => {
                let payload = match inode.data {
                    Some(d) => d.offset | (u64::from(d.layer) << DATA_OFFSET_BITS),
                    None => NO_DATA_LAYER << DATA_OFFSET_BITS,
                };
                (inode.size, payload)
            }
            FileType::Symlink => (
                inode.size,
                u64::from(strings.intern(&inode.symlink_target)?),
            ),
            FileType::CharDevice | FileType::BlockDevice => (
                0,
                u64::from(inode.rdev_major) | (u64::from(inode.rdev_minor) << 32),
            ),
            FileType::Fifo => (0, 0),
        };

        if !inode.xattrs.is_empty() {
            attr |= ATTR_HAS_XATTRS;
            let mut sorted: Vec<(&[u8], &[u8])> = inode
                .xattrs
                .iter()
                .map(|(n, v)| (n.as_slice(), v.as_slice()))
                .collect();
            sorted.sort_by(|a, b| a.0.cmp(b.0));
            if let Some(w) = sorted.windows(2).find(|w| w[0].0 == w[1].0) {
                return Err(invalid(format!(
                    "{}: xattr \"{}\" given twice",
                    plan.path(ino),
                    w[0].0.escape_ascii()
                )));
            }
            xattr_index.push(RawXattrIndex {
                ino: U32::new(ino),
                first: U32::new(to_u32(xattrs.len(), "xattrs")?),
                count: U32::new(to_u32(sorted.len(), "xattrs")?),
            });
            for (name, value) in sorted {
                xattrs.push(RawXattr {
                    name_off: U32::new(strings.intern(name)?),
                    name_len: U32::new(to_u32(name.len(), "xattr name bytes")?),
                    value_off: U32::new(strings.intern(value)?),
                    value_len: U32::new(to_u32(value.len(), "xattr value bytes")?),
                });
            }
            to_u32(xattrs.len(), "xattrs")?;
        }

        inodes.push(RawInode {
            attr: U32::new(attr),
            nlink: U32::new(plan.nlink[k]),
            size: U64::new(size),
            mtime: U32::new(mtime),
            payload: U64::new(payload),
        });
    }

    // SPANS and WINDOWS.
    let mut spans: Vec<RawSpan> = Vec::new();
    let mut windows: Vec<u8> = Vec::new();
    let mut infos: Vec<LayerInfo> = Vec::with_capacity(layers.len());
    for layer in layers {
        infos.push(LayerInfo {
            digest: layer.digest.clone(),
            media_type: layer.media_type.clone(),
            compression: layer.compression,
            compressed_size: layer.compressed_size,
            uncompressed_size: layer.uncompressed_size,
            diff_id: layer.diff_id.clone(),
            span_size: layer.span_size,
            first_span: spans.len() as u64,
            span_count: layer.spans.len() as u64,
        });
        for span in &layer.spans {
            let (window_offset, window_len, window_digest) = if span.window.is_empty() {
                (0, 0, [0; 32])
            } else {
                let packed = span.window.packed();
                let off = windows.len() as u64;
                windows.extend_from_slice(packed);
                (off, packed.len() as u32, sha256(packed))
            };
            spans.push(RawSpan {
                compressed_offset: U64::new(span.compressed_offset),
                compressed_end: U64::new(span.compressed_end),
                uncompressed_offset: U64::new(span.uncompressed_offset),
                window_offset: U64::new(window_offset),
                window_len: U32::new(window_len),
                window_raw_len: U32::new(span.window.len() as u32),
                bits: span.bits,
                reserved: [0; 7],
                digest: span.digest,
                content_digest: span.content_digest,
                window_digest,
            });
        }
    }

    let mtime_records: Vec<RawMtime> = mtimes
        .iter()
        .map(|&(sec, nsec)| RawMtime {
            sec: I64::new(sec),
            nsec: U32::new(nsec),
        })
        .collect();

    let meta_json = serde_json::to_vec(&MetaDocRef {
        image: meta,
        layers: &infos,
    })
    .map_err(|e| invalid(format!("cannot encode the image metadata: {e}")))?;

    let sections: [(u32, &[u8]); SECTION_COUNT] = [
        (KIND_META, &meta_json),
        (KIND_ATTRS, attrs.records.as_bytes()),
        (KIND_MTIMES, mtime_records.as_bytes()),
        (KIND_INODES, inodes.as_bytes()),
        (KIND_DIRENTS, dirents.as_bytes()),
        (KIND_STRINGS, &strings.bytes),
        (KIND_XATTR_INDEX, xattr_index.as_bytes()),
        (KIND_XATTRS, xattrs.as_bytes()),
        (KIND_SPANS, spans.as_bytes()),
        (KIND_WINDOWS, &windows),
    ];
    let total = SECTIONS_START + sections.iter().map(|(_, b)| b.len()).sum::<usize>();
    let metadata_len = total - windows.len();

    let mut out = Vec::with_capacity(total);
    let header = RawHeader {
        magic: MAGIC,
        version: U32::new(FORMAT_VERSION),
        flags: U32::new(0),
        file_len: U64::new(total as u64),
        checksum: U64::new(0),
        section_count: U32::new(SECTION_COUNT as u32),
        reserved: U32::new(0),
        metadata_len: U64::new(metadata_len as u64),
        reserved2: [0; 16],
    };
    out.extend_from_slice(header.as_bytes());
    let mut offset = SECTIONS_START as u64;
    for (kind, bytes) in &sections {
        let entry = RawSection {
            kind: U32::new(*kind),
            reserved: U32::new(0),
            offset: U64::new(offset),
            len: U64::new(bytes.len() as u64),
        };
        out.extend_from_slice(entry.as_bytes());
        offset += bytes.len() as u64;
    }
    for (_, bytes) in &sections {
        out.extend_from_slice(bytes);
    }
    debug_assert_eq!(out.len(), total);
    let sum = xxh3_64(&out[CHECKSUM_START..metadata_len]);
    out[24..32].copy_from_slice(&sum.to_le_bytes());
    Ok(out)
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes).into()
}

fn invalid(msg: String) -> ArchiveError {
    ArchiveError::InvalidTree(msg)
}

fn to_u32(n: usize, what: &str) -> Result<u32, ArchiveError> {
    u32::try_from(n).map_err(|_| invalid(format!("too many {what} for the format ({n})")))
}

fn check_layers(layers: &[Layer]) -> Result<(), ArchiveError> {
    if layers.len() >= NO_DATA_LAYER as usize {
        return Err(ArchiveError::InvalidLayer {
            layer: layers.len(),
            detail: format!("at most {} layers are supported", NO_DATA_LAYER - 1),
        });
    }
    for (li, layer) in layers.iter().enumerate() {
        let bad = |detail: String| ArchiveError::InvalidLayer { layer: li, detail };
        let mut prev = None;
        for (si, span) in layer.spans.iter().enumerate() {
            let bounds = crate::model::SpanBounds {
                uncompressed_offset: span.uncompressed_offset,
                compressed_offset: span.compressed_offset,
                compressed_end: span.compressed_end,
            };
            crate::model::check_span_order(si, prev, bounds).map_err(bad)?;
            prev = Some(bounds);
            if span.uncompressed_offset > layer.uncompressed_size {
                return Err(bad(format!(
                    "span {si} starts at {} beyond the uncompressed size {}",
                    span.uncompressed_offset, layer.uncompressed_size
                )));
            }
            if span.compressed_offset > span.compressed_end
                || span.compressed_end > layer.compressed_size
            {
                return Err(bad(format!(
                    "span {si} covers compressed bytes {}..{}, not within 0..{}",
                    span.compressed_offset, span.compressed_end, layer.compressed_size
                )));
            }
            if span.bits > 7 {
                return Err(bad(format!(
                    "span {si} has bits = {} (at most 7)",
                    span.bits
                )));
            }
            if span.window.len() > MAX_WINDOW {
                return Err(bad(format!(
                    "span {si} has a {}-byte window (at most {MAX_WINDOW})",
                    span.window.len()
                )));
            }
            if layer.compression != Compression::Gzip && (span.bits != 0 || !span.window.is_empty())
            {
                return Err(bad(format!(
                    "span {si} has bits or a window, but the layer is not gzip"
                )));
            }
        }
    }
    Ok(())
}

/// Why an inode is invalid, or Ok.
fn check_inode(inode: &Inode, layers: &[Layer]) -> Result<(), String> {
    if inode.mode & !PERM_MASK != 0 {
        return Err(format!(
            "mode {:#o} has bits outside 0o7777 (pass the permission bits only)",
            inode.mode
        ));
    }
    if inode.mtime_nsec >= NSEC_PER_SEC {
        return Err(format!("mtime_nsec {} is not below 1e9", inode.mtime_nsec));
    }
    let ty = inode.file_type;
    if ty != FileType::Symlink && !inode.symlink_target.is_empty() {
        return Err(format!("a {ty:?} has a symlink target"));
    }
    if !matches!(ty, FileType::CharDevice | FileType::BlockDevice)
        && (inode.rdev_major != 0 || inode.rdev_minor != 0)
    {
        return Err(format!("a {ty:?} has a device number"));
    }
    if ty != FileType::Regular && inode.data.is_some() {
        return Err(format!("a {ty:?} has a data location"));
    }
    match ty {
        FileType::Regular => match inode.data {
            None if inode.size > 0 => {
                return Err(format!(
                    "{} bytes of content but no data location",
                    inode.size
                ));
            }
            None => {}
            Some(d) => {
                let Some(layer) = layers.get(d.layer as usize) else {
                    return Err(format!(
                        "data in layer {} but there are {} layers",
                        d.layer,
                        layers.len()
                    ));
                };
                if d.offset > DATA_OFFSET_MASK {
                    return Err(format!("data offset {} is not below 2^48", d.offset));
                }
                match d.offset.checked_add(inode.size) {
                    Some(end) if end <= layer.uncompressed_size => {}
                    _ => {
                        return Err(format!(
                            "data {}+{} lies beyond the uncompressed size {} of layer {}",
                            d.offset, inode.size, layer.uncompressed_size, d.layer
                        ));
                    }
                }
            }
        },
        FileType::Symlink => {
            if inode.size != inode.symlink_target.len() as u64 {
                return Err(format!(
                    "symlink size {} is not its target length {}",
                    inode.size,
                    inode.symlink_target.len()
                ));
            }
        }
        FileType::Directory | FileType::CharDevice | FileType::BlockDevice | FileType::Fifo => {
            if inode.size != 0 {
                return Err(format!("a {ty:?} has size {} (must be 0)", inode.size));
            }
        }
    }
    for (name, _) in &inode.xattrs {
        if name.is_empty() {
            return Err("an xattr has an empty name".to_string());
        }
        if name.contains(&0) {
            return Err(format!(
                "xattr name \"{}\" contains NUL",
                name.escape_ascii()
            ));
        }
    }
    Ok(())
}

fn check_name(name: &[u8]) -> Result<(), &'static str> {
    if name.is_empty() {
        Err("an empty name")
    } else if name == b"." || name == b".." {
        Err("a name \".\" or \"..\"")
    } else if name.contains(&b'/') {
        Err("a name containing '/'")
    } else if name.contains(&0) {
        Err("a name containing NUL")
    } else if name.len() > usize::from(u16::MAX) {
        Err("a name longer than 65535 bytes")
    } else {
        Ok(())
    }
}

/// The numbering of the tree: breadth-first from the root, children in name order.
struct Plan<'t> {
    /// New ino - 1 → caller index.
    order: Vec<usize>,
    /// New ino - 1 → (parent ino, name) where it was first met; the root: (1, "").
    origin: Vec<(u32, &'t [u8])>,
    /// New ino - 1 → sorted (name, child ino); empty for non-directories.
    entries: Vec<Vec<(&'t [u8], u32)>>,
    /// New ino - 1 → link count.
    nlink: Vec<u32>,
    dirent_total: usize,
}

impl<'t> Plan<'t> {
    fn build(tree: &'t Tree) -> Result<Plan<'t>, ArchiveError> {
        let n = tree.inodes.len();
        let root = tree.inodes.get(tree.root).ok_or_else(|| {
            invalid(format!(
                "root index {} out of range ({n} inodes)",
                tree.root
            ))
        })?;
        if root.file_type != FileType::Directory {
            return Err(invalid(format!(
                "the root is a {:?}, not a directory",
                root.file_type
            )));
        }
        let mut new_of = vec![0u32; n];
        new_of[tree.root] = 1;
        let mut plan = Plan {
            order: vec![tree.root],
            origin: vec![(1, b"")],
            entries: Vec::new(),
            nlink: vec![0],
            dirent_total: 0,
        };
        let mut k = 0;
        while k < plan.order.len() {
            let idx = plan.order[k];
            let ino = (k + 1) as u32; // < order.len() + 1, checked when assigned
            let kids = tree.children.get(idx).map(Vec::as_slice).unwrap_or(&[]);
            if tree.inodes[idx].file_type != FileType::Directory {
                if !kids.is_empty() {
                    return Err(invalid(format!(
                        "{}: a {:?} has children",
                        plan.path(ino),
                        tree.inodes[idx].file_type
                    )));
                }
                plan.entries.push(Vec::new());
                k += 1;
                continue;
            }
            let mut sorted: Vec<(&'t [u8], usize)> =
                kids.iter().map(|(name, c)| (name.as_slice(), *c)).collect();
            sorted.sort_by(|a, b| a.0.cmp(b.0));
            if let Some(w) = sorted.windows(2).find(|w| w[0].0 == w[1].0) {
                return Err(invalid(format!(
                    "{}: the name \"{}\" is used twice",
                    plan.path(ino),
                    w[0].0.escape_ascii()
                )));
            }
            let mut out = Vec::with_capacity(sorted.len());
            let mut subdirs: u32 = 0;
            for (name, child) in sorted {
                if let Err(why) = check_name(name) {
                    return Err(invalid(format!(
                        "{}: {why}: \"{}\"",
                        plan.path(ino),
                        name.escape_ascii()
                    )));
                }
                let Some(child_inode) = tree.inodes.get(child) else {
                    return Err(invalid(format!(
                        "{}/{}: child index {child} out of range ({n} inodes)",
                        plan.path(ino),
                        name.escape_ascii()
                    )));
                };
                let is_dir = child_inode.file_type == FileType::Directory;
                let child_ino = if new_of[child] != 0 {
                    if is_dir {
                        return Err(invalid(format!(
                            "{}/{}: a directory named twice (hardlinked directory or cycle; \
                             also named {})",
                            plan.path(ino),
                            name.escape_ascii(),
                            plan.path(new_of[child])
                        )));
                    }
                    new_of[child]
                } else {
                    let next = to_u32(plan.order.len() + 1, "inodes")?;
                    new_of[child] = next;
                    plan.order.push(child);
                    plan.origin.push((ino, name));
                    plan.nlink.push(0);
                    next
                };
                if is_dir {
                    subdirs = subdirs
                        .checked_add(1)
                        .ok_or_else(|| invalid(overflow(ino)))?;
                } else {
                    let slot = &mut plan.nlink[(child_ino - 1) as usize];
                    *slot = slot
                        .checked_add(1)
                        .ok_or_else(|| invalid(overflow(child_ino)))?;
                }
                out.push((name, child_ino));
            }
            plan.nlink[k] = subdirs
                .checked_add(2)
                .ok_or_else(|| invalid(overflow(ino)))?;
            plan.dirent_total += out.len();
            plan.entries.push(out);
            k += 1;
        }
        Ok(plan)
    }

    /// The path of an already numbered inode, for error messages.
    fn path(&self, ino: u32) -> String {
        let mut parts: Vec<&[u8]> = Vec::new();
        let mut cur = ino;
        while cur > 1 {
            let Some(&(parent, name)) = self.origin.get((cur - 1) as usize) else {
                break;
            };
            parts.push(name);
            cur = parent;
        }
        if parts.is_empty() {
            return "/".to_string();
        }
        let mut s = String::new();
        for part in parts.iter().rev() {
            s.push('/');
            s.push_str(&part.escape_ascii().to_string());
        }
        s
    }
}

fn overflow(ino: u32) -> String {
    format!("inode {ino}: link count overflows u32")
}

/// STRINGS with deduplication; offsets follow first insertion, so the output is deterministic.
#[derive(Default)]
struct StringTable<'t> {
    bytes: Vec<u8>,
    offsets: HashMap<&'t [u8], u32>,
}

impl<'t> StringTable<'t> {
    fn intern(&mut self, s: &'t [u8]) -> Result<u32, ArchiveError> {
        if s.is_empty() {
            return Ok(0);
        }
        if let Some(&off) = self.offsets.get(s) {
            return Ok(off);
        }
        let off = to_u32(self.bytes.len(), "string bytes")?;
        to_u32(self.bytes.len() + s.len(), "string bytes")?;
        self.bytes.extend_from_slice(s);
        self.offsets.insert(s, off);
        Ok(off)
    }
}

/// ATTRS with deduplication, in first-use order. At most 2^31 records: bit 31 of an inode's
/// `attr` field is the has-xattrs flag.
#[derive(Default)]
struct AttrTable {
    records: Vec<RawAttr>,
    index: HashMap<(u32, u32, u32), u32>,
}

impl AttrTable {
    fn intern(&mut self, mode: u32, uid: u32, gid: u32) -> Result<u32, ArchiveError> {
        if let Some(&i) = self.index.get(&(mode, uid, gid)) {
            return Ok(i);
        }
        let i = to_u32(self.records.len(), "attribute records")?;
        if i > ATTR_INDEX_MASK {
            return Err(invalid(format!(
                "too many distinct (mode, uid, gid) records for the format ({})",
                self.records.len() + 1
            )));
        }
        self.records.push(RawAttr {
            mode: U32::new(mode),
            uid: U32::new(uid),
            gid: U32::new(gid),
        });
        self.index.insert((mode, uid, gid), i);
        Ok(i)
    }
}
