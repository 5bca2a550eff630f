//! The `.clip` index format: owned types, a deterministic writer, a zero-copy reader, checks.
//!
//! A `.clip` file describes one image for a lazy mount: the image metadata (reference,
//! manifest, platform, the raw config JSON), the layer table with a seek index per layer
//! ([`Span`]s, each independently fetchable and verifiable), and the merged file tree, where
//! every regular file points at its bytes in a layer's uncompressed tar stream. No file content
//! is stored.
//!
//! # What this crate owns, and what it must not touch
//!
//! It owns **the bytes of the format** — `docs/FORMAT.md` describes them byte by byte — and
//! nothing else. It is pure: no file or network I/O, no registry, no FUSE, no tar parsing, and
//! no `unsafe`. The indexer builds a [`Tree`] and [`Layer`]s and calls [`write_archive`]; the
//! CLI writes the bytes out. The mount maps the file and reads it through an [`Archive`].
//!
//! # Principal types
//!
//! - Input of the writer: [`ImageMeta`], [`Layer`] (with its [`Span`]s), and a [`Tree`] of
//!   [`Inode`]s with caller-chosen ids.
//! - [`write_archive`] validates, renumbers inodes breadth-first ([`ROOT_INO`] = 1), computes link
//!   counts, deduplicates strings, attributes and mtimes, compresses windows, and returns the
//!   bytes — the same input always gives the same bytes.
//! - [`Archive::open`] checks magic, version, length, checksum and the section table, parses
//!   the metadata and checks the table of distinct mtimes; nothing else is decoded up front.
//!   Then [`Archive::inode`] ([`InodeRef`]), [`Archive::lookup`] and [`Archive::read_dir`]
//!   (binary search / slices of one directory's sorted entries), [`Archive::spans`]
//!   ([`SpanTable`], [`SpanInfo`]) and [`Archive::window`] read what they need, range-checking
//!   every id and offset taken from the file.
//! - Every failure is an [`ArchiveError`]; no input bytes can make the reader panic (fuzzed:
//!   `fuzz/fuzz_targets/read_archive.rs`).
//!
//! # Example
//!
//! ```
//! use clip_archive::*;
//!
//! // A tree: / (root), /etc, /etc/hostname (5 bytes at offset 512 of layer 0).
//! let mut tree = Tree::new(Inode::new(FileType::Directory, 0o755));
//! let etc = tree.add(tree.root, "etc", Inode::new(FileType::Directory, 0o755));
//! let mut hostname = Inode::new(FileType::Regular, 0o644);
//! hostname.size = 5;
//! hostname.data = Some(DataLocation { layer: 0, offset: 512 });
//! tree.add(etc, "hostname", hostname);
//!
//! let meta = ImageMeta {
//!     reference: "docker.io/library/alpine:3.20".into(),
//!     manifest_digest: "sha256:00".into(),
//!     manifest_media_type: "application/vnd.oci.image.manifest.v1+json".into(),
//!     platform: Platform { os: "linux".into(), architecture: "amd64".into(), variant: None },
//!     config_digest: "sha256:11".into(),
//!     config: "{}".into(),
//! };
//! let layer = Layer {
//!     digest: "sha256:22".into(),
//!     media_type: "application/vnd.oci.image.layer.v1.tar".into(),
//!     compression: Compression::None,
//!     compressed_size: 2048,
//!     uncompressed_size: 2048,
//!     diff_id: "sha256:22".into(),
//!     span_size: 1 << 20,
//!     spans: vec![Span {
//!         compressed_offset: 0,
//!         compressed_end: 2048,
//!         uncompressed_offset: 0,
//!         bits: 0,
//!         window: Window::default(),
//!         digest: [0; 32],
//!         content_digest: [0; 32],
//!     }],
//! };
//!
//! let bytes = write_archive(&meta, &[layer], &tree)?;
//! let archive = Archive::open(&bytes)?;
//! assert_eq!(archive.meta().reference, "docker.io/library/alpine:3.20");
//!
//! let ino = archive.resolve("/etc/hostname")?.expect("exists");
//! let file = archive.inode(ino)?;
//! assert_eq!(file.file_type(), FileType::Regular);
//! assert_eq!(file.size(), 5);
//! assert_eq!(file.data(), Some(DataLocation { layer: 0, offset: 512 }));
//!
//! let etc = archive.lookup(ROOT_INO, b"etc")?.expect("exists");
//! assert_eq!(archive.lookup(etc, b"passwd")?, None);
//! let mut names = Vec::new();
//! for entry in archive.read_dir(etc)? {
//!     let (name, _ino) = entry?;
//!     names.push(name);
//! }
//! assert_eq!(names, [b"hostname"]);
//!
//! let spans = archive.spans(0)?;
//! assert_eq!(spans.find(600), Some(0));
//! # Ok::<(), ArchiveError>(())
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod error;
mod format;
mod model;
mod reader;
pub mod testing;
mod writer;

pub use error::ArchiveError;
pub use model::{
    Compression, DataLocation, FileType, ImageMeta, Ino, Inode, Layer, LayerInfo, Platform, Span,
    Tree, Window, OVERLAYFS_PRIVATE_XATTRS, ROOT_INO,
};
pub use reader::{
    Archive, DirEntries, InodeRef, SectionSizes, SpanInfo, SpanTable, Walk, WindowRef,
};
pub use writer::write_archive;

/// The first 8 bytes of every `.clip` file. Changing this is a format break.
pub const MAGIC: [u8; 8] = *b"CLIPIDX\0";

/// The format version this crate writes and reads (stored at offset 8). Changing the layout of
/// anything described in `docs/FORMAT.md` is a format break: bump this.
pub const FORMAT_VERSION: u32 = 3;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Archive<'static>>();
        check::<InodeRef<'static>>();
        check::<SpanTable<'static>>();
        check::<DirEntries<'static>>();
    }
}
