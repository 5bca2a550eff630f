//! A containerd remote snapshotter that serves image layers from clip indexes.
//!
//! `clip snapshotter` runs this crate behind containerd's `[proxy_plugins]`: containerd calls
//! the `containerd.services.snapshots.v1.Snapshots` gRPC service on a unix socket
//! ([`service::serve`]) for every layer it unpacks and every container it starts.
//!
//! # What this crate owns, and what it must not touch
//!
//! It owns **snapshot metadata** (every snapshot, its kind, parent, labels and directory,
//! persisted atomically under the root directory: [`meta`]), **the gRPC service** with
//! containerd's error codes and filter syntax ([`service`], [`filter`]), **the normal path**
//! — exactly what containerd's overlayfs snapshotter does, so that images without a clip
//! index, unlabelled layers and the pause image work — and **the lifecycle of one clip mount
//! per image** (mounted when a container first needs it, adopted or restored after a restart,
//! released with the image's last snapshot).
//!
//! It **must not decode an index nor fetch a byte**: finding an image's index and mounting it
//! go through the [`Images`] trait, which the CLI implements with its index store, registry
//! client and `clip mount` daemons. The mount daemons are separate processes: a snapshotter
//! that dies or restarts takes no mount down, so running containers keep reading.
//!
//! # The remote path, and how a merged index meets per-layer snapshots
//!
//! containerd prepares an image's layers one by one, bottom up, each labelled with its chain
//! ID (`containerd.io/snapshot.ref`) and — from the CRI plugin or `ctr-remote image rpull` —
//! the image reference, layer digest and (CRI) manifest digest ([`remote`]). When the image's
//! registry has a clip index bound to that image, and the index's chain of `diff_id`s up to
//! the layer is that chain ID, the snapshotter commits the layer at once under the chain ID
//! and answers `AlreadyExists`: containerd then finds it with `List`
//! (`labels."containerd.io/snapshot.ref"==…,parent==…`) and never downloads the blob.
//!
//! A clip index is the image's *merged* tree, not one tree per layer. So the **top layer's
//! snapshot stands for the whole image** — its lower directory is the image's clip mount —
//! and the **lower layers' snapshots are empty**. When a container's snapshot is prepared
//! over such a chain, the walk up its ancestors stops at the first clip top layer: the mount
//! shows everything below it, and the empty lower snapshots are never stacked. Snapshots
//! committed above a clip image (a layer pulled normally on top of it, a container
//! committed) stack above the mount as usual. The one chain this cannot serve is a normal
//! layer directly above a clip *lower* layer (another image sharing only the bottom layers of
//! a lazily pulled one, pulled after it): its mounts fail with `FailedPrecondition` naming the
//! image to remove. nydus-snapshotter makes the same choice with its bootstrap.
//!
//! # Example
//!
//! ```no_run
//! use std::sync::Arc;
//! # fn images() -> Arc<dyn clip_snapshotter::Images> { unimplemented!() }
//! let snapshotter = clip_snapshotter::Snapshotter::open("/var/lib/clip-snapshotter".as_ref(), images())?;
//! clip_snapshotter::service::serve_until_signal(
//!     "/run/clip-snapshotter/clip.sock".into(),
//!     Arc::new(snapshotter),
//! )?;
//! # Ok::<(), clip_snapshotter::Error>(())
//! ```
//!
//! # Dependencies, and their traps
//!
//! The gRPC types come from `containerd-snapshots` 0.3 (containerd's own Rust extensions:
//! `snapshots.proto` and `mount.proto` generated with tonic 0.9 / prost 0.11); only its `api`
//! module is used, and the service is implemented on the generated trait directly, so that
//! error codes, `Update` field masks and `List` batches are ours. Its build script runs
//! `protoc` (Debian `protobuf-compiler`). containerd 1.6's metadata layer only passes labels
//! prefixed `containerd.io/snapshot/` (and `containerd.io/snapshot.ref`) down to a
//! snapshotter, and its backend keys are `NAMESPACE/N/KEY`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod error;
pub mod filter;
pub mod meta;
pub mod remote;
pub mod service;
mod snapshotter;
#[cfg(test)]
mod tests;

pub use crate::error::Error;
pub use crate::meta::Kind;
pub use crate::remote::{chain_id, BoxError, Images, IndexedImage, LayerRequest, MountSource};
pub use crate::snapshotter::{Info, Mount, Snapshotter, Usage};
