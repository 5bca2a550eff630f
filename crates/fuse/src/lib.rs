//! The FUSE adapter: serves a [`clip_fs::FsCore`] through the kernel with `fuser` 0.18, and
//! mounts and unmounts it.
//!
//! # What this crate owns, and what it must not touch
//!
//! It owns **the kernel interface**: mount options, init capabilities, cache lifetimes, the
//! threads that serve requests, and unmounting (also of a mount whose process died). It
//! contains **no filesystem logic**: every `fuser::Filesystem` method is a few lines that call
//! the core and reply, or reply `err.errno()`. It never touches the network or the archive
//! bytes itself, and has no `unsafe` (mount syscalls go through `fuser` and `rustix`).
//!
//! # How it serves
//!
//! - **Read-only, checked by the kernel.** Mounted `ro,nodev,nosuid,default_permissions`, type
//!   `fuse.clip`, source `clip`: the kernel refuses every write with `EROFS` (no write method
//!   is implemented) and checks modes and owners itself. With
//!   [`MountOptions::allow_other`], processes of any uid get in (the session filters no uid);
//!   without it, only the mounting user (the kernel's rule).
//! - **Cached by the kernel.** Entries, negative lookups and attributes live for a day (the
//!   image is immutable); opens keep the page cache (`FOPEN_KEEP_CACHE`), directory listings
//!   are cached (`FOPEN_CACHE_DIR`); `FUSE_DO_READDIRPLUS`, `FUSE_PARALLEL_DIROPS` and
//!   `FUSE_CACHE_SYMLINKS` are asked for when offered; the read-ahead window of the mount is
//!   raised to 1 MiB (as root).
//! - **Never blocked by a slow fetch.** [`MountOptions::threads`] threads read requests from
//!   the kernel. A file read whose bytes the content source has at hand
//!   ([`clip_fs::FsCore::read_cached`], which never blocks) is answered on the spot; the
//!   others are handed, with their reply, to [`MountOptions::read_workers`] other threads. So
//!   lookups, listings, `stat` and reads of cached data go on while reads wait on the
//!   network, however many of those there are. A panic while serving a read fails that read
//!   with `EIO` and is logged; the thread goes on serving.
//!
//! FUSE passthrough is not used: it needs a local file holding exactly one image file's
//! bytes, which the span cache does not produce.
//!
//! # Example
//!
//! ```no_run
//! use std::sync::Arc;
//! use clip_fs::{testing::ImageBuilder, FsCore};
//! use clip_fuse::{mount, MountOptions};
//!
//! let mut image = ImageBuilder::new();
//! image.file("/hello", 0o644, b"hi\n");
//! let (archive, content) = image.build()?;
//! let mounted = mount(
//!     FsCore::new(archive, Arc::new(content)),
//!     "/mnt/image".as_ref(),
//!     &MountOptions::default(),
//! )?;
//! // Ready: the mount serves. On SIGTERM, another thread calls `unmounter.unmount()`.
//! let unmounter = mounted.unmounter();
//! # drop(unmounter);
//! mounted.wait()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod adapter;
mod error;
mod mount;

pub use crate::error::MountError;
pub use crate::mount::{is_mountpoint, mount, unmount, MountOptions, Mounted, Unmounter};
