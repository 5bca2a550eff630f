//! Helpers for tests and fuzzing (not needed to read or write indexes).
//!
//! [`reseal`] recomputes the checksum of a patched archive, so that corrupted bytes get past
//! [`Archive::open`] and reach the bounds checks behind it; [`exercise`] calls every reader
//! accessor on everything an archive holds. Errors are fine, panics are bugs. [`decompose`]
//! turns an archive back into the writer's input, so that a test can craft a consistent index
//! that lies (a forged window, an xattr the indexer would never record) and write it out.

use xxhash_rust::xxh3::xxh3_64;

use crate::format::CHECKSUM_START;
use crate::{Archive, ArchiveError, FileType, ImageMeta, Layer, Tree, ROOT_INO};

/// The writer's input an archive was made from: metadata, layers with their spans and
/// windows, and the tree (inode `ino` at index `ino - 1`).
pub fn decompose(archive: &Archive<'_>) -> Result<(ImageMeta, Vec<Layer>, Tree), ArchiveError> {
    let layers = (0..archive.layers().len())
        .map(|l| archive.layer_owned(u32::try_from(l).unwrap_or(u32::MAX)))
        .collect::<Result<Vec<_>, _>>()?;
    let count = archive.inode_count();
    let mut tree = Tree::default();
    for ino in 1..=count {
        let inode = archive.inode_owned(ino)?;
        let mut children = Vec::new();
        if inode.file_type == FileType::Directory {
            for entry in archive.read_dir(ino)? {
                let (name, child) = entry?;
                children.push((name.to_vec(), index_of(child)));
            }
        }
        tree.inodes.push(inode);
        tree.children.push(children);
    }
    tree.root = index_of(ROOT_INO);
    Ok((archive.meta().clone(), layers, tree))
}

fn index_of(ino: u64) -> usize {
    usize::try_from(ino.saturating_sub(1)).unwrap_or(usize::MAX)
}

/// Recomputes and stores the header checksum of `bytes` over the metadata its header names
/// (all of `bytes` when that is out of bounds; no-op for fewer than 32 bytes).
pub fn reseal(bytes: &mut [u8]) {
    let metadata_len = bytes
        .get(40..48)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_le_bytes)
        .and_then(|n| usize::try_from(n).ok())
        .filter(|&n| n >= CHECKSUM_START && n <= bytes.len())
        .unwrap_or(bytes.len());
    let Some(body) = bytes.get(CHECKSUM_START..metadata_len) else {
        return;
    };
    let sum = xxh3_64(body);
    if let Some(field) = bytes.get_mut(24..32) {
        field.copy_from_slice(&sum.to_le_bytes());
    }
}

/// What [`exercise`] saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Exercised {
    /// Successful reads.
    pub ok: u64,
    /// Reads that returned an error.
    pub errors: u64,
}

impl Exercised {
    fn note<T, E>(&mut self, r: &Result<T, E>) {
        if r.is_ok() {
            self.ok += 1;
        } else {
            self.errors += 1;
        }
    }
}

/// Walks the whole tree and reads every inode, directory, xattr, symlink, span and window of
/// `archive`, through the public accessors.
pub fn exercise(archive: &Archive<'_>) -> Exercised {
    let mut seen = Exercised::default();
    for item in archive.walk() {
        seen.note(&item);
        if let Ok((path, ino)) = item {
            let r = archive.resolve_bytes(&path);
            seen.note(&r);
            let r = archive.inode_owned(ino);
            seen.note(&r);
        }
    }
    for ino in 0..=archive.inode_count().saturating_add(1) {
        let node = archive.inode(ino);
        seen.note(&node);
        let Ok(node) = node else { continue };
        let _ = (
            node.mode(),
            node.uid(),
            node.gid(),
            node.size(),
            node.nlink(),
        );
        let _ = (
            node.mtime_sec(),
            node.mtime_nsec(),
            node.rdev_major(),
            node.rdev_minor(),
        );
        let _ = (node.data(), node.child_count());
        seen.note(&archive.xattrs(ino));
        seen.note(&archive.xattr(ino, b"user.x"));
        match node.file_type() {
            FileType::Directory => {
                seen.note(&archive.parent(ino));
                match archive.read_dir(ino) {
                    Ok(entries) => {
                        for entry in entries {
                            seen.note(&entry);
                        }
                    }
                    Err(e) => seen.note::<(), _>(&Err(e)),
                }
                seen.note(&archive.lookup(ino, b"etc"));
                seen.note(&archive.lookup(ino, b"zzzz"));
            }
            FileType::Symlink => seen.note(&archive.symlink_target(ino)),
            _ => seen.note(&archive.read_dir(ino).map(|_| ())),
        }
    }
    for layer in 0..=archive.layers().len() {
        let layer = u32::try_from(layer).unwrap_or(u32::MAX);
        let table = archive.spans(layer);
        seen.note(&table);
        let Ok(table) = table else { continue };
        for i in 0..=table.len() {
            let span = table.get(i);
            seen.note(&span);
            if let Ok(span) = span {
                let _ = table.find(span.uncompressed_offset);
                let _ = table.find(span.uncompressed_end.saturating_sub(1));
            }
            seen.note(&archive.window(layer, i));
            if let Ok(Some(w)) = archive.window_ref(layer, i) {
                // Bytes from elsewhere (a registry) are checked against the digest.
                seen.note(&w.unpack(&[0; 16]));
            }
        }
        let _ = (table.find(0), table.find(u64::MAX));
        seen.note(&archive.layer_owned(layer));
    }
    for path in ["/", "etc", "/usr/bin/../lib/./x", "/a/b/c"] {
        seen.note(&archive.resolve(path));
    }
    seen.note(&archive.parent(ROOT_INO));
    let _ = (
        archive.meta(),
        archive.section_sizes(),
        archive.entry_count(),
    );
    seen
}
