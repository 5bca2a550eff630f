//! Test support for clip: real parts, started by the tests themselves.
//!
//! * [`Registry`] — a real CNCF Distribution registry (`docker-registry`) on a free loopback
//!   port with its storage in a `TempDir`, optionally behind htpasswd basic auth. Its access log
//!   can be read back to count requests ([`Registry::requests_matching`],
//!   [`Registry::range_requests_matching`], [`Registry::requests_since`]), and
//!   [`Registry::blob_path`] lets a test corrupt a stored blob in place.
//! * [`Fixture`] — a tiny text language, one line per tar entry (grammar in [`fixture`]).
//! * [`Layer`] — a fixture written as an uncompressed tar in a chosen dialect ([`TarFlavor`]),
//!   then compressed ([`Compression`]: none, gzip, multi-member gzip, zstd, multi-frame zstd).
//! * [`Image`] — layers + config, pushed through the registry HTTP API as an OCI or Docker
//!   manifest ([`Image::push`]); [`push_index`] for multi-platform indexes. [`RegistryClient`] is
//!   the small API client underneath (also for hand-made blobs and manifests).
//! * [`oracle_unpack`] — `skopeo copy` + `umoci unpack` of a pushed image, snapshotted as a
//!   [`TreeSnapshot`] (path → type, mode, owner, size, mtime, link target, rdev, xattrs, inode,
//!   link count, content hash), the reference a clip mount is compared with
//!   ([`assert_same_tree`]).
//! * [`RawTar`] / [`RawHeader`] — tar streams written header by header, for torture inputs.
//! * [`FaultProxy`] — a TCP proxy in front of the registry that resets, stalls, truncates or
//!   corrupts responses on demand ([`Fault`]).
//! * [`text`] — deterministic generated content, and [`big_text_layer`] for large layers.
//!
//! Setup failures panic with a clear message (a broken environment is not something a test can
//! handle); `try_*` variants return [`Error`] where failure is the expected outcome. Every
//! process started here is owned by a value whose `Drop` kills it by pid and waits for it.
//!
//! ```no_run
//! use clip_testkit::{oracle_unpack, Image, Layer, ManifestFlavor, Registry};
//!
//! let registry = Registry::start();
//! let base = Layer::from_fixture("/etc dir 0755 0 0\n/etc/hostname file 0644 0 0 content=\"clip\\n\"");
//! let top = Layer::from_fixture("/etc/.wh.hostname whiteout");
//! let pushed = Image::new().layer(base).layer(top).push(&registry, "demo:1", ManifestFlavor::Oci);
//! let tree = oracle_unpack(&registry, "demo:1");
//! assert!(!tree.contains_key("/etc/hostname"));
//! println!("{} has {} layers", pushed.manifest_digest, pushed.layers.len());
//! ```

pub mod client;
pub mod fixture;
pub mod image;
pub mod layer;
pub mod oracle;
pub mod proxy;
pub mod rawtar;
pub mod registry;
pub mod text;

pub use client::RegistryClient;
pub use fixture::{Content, EntryKind, Fixture, FixtureEntry, FixtureError, DEFAULT_MTIME};
pub use image::{
    layer_media_type, push_index, try_push_index, Image, ImageConfig, ManifestFlavor, Platform,
    PushedImage, PushedIndex, PushedLayer,
};
pub use layer::{compress, sha256_digest, write_tar, Compression, Layer, LayerOptions, TarFlavor};
pub use oracle::{
    assert_same_tree, oracle_unpack, oracle_unpack_dir, try_oracle_unpack, EntrySnapshot,
    TreeSnapshot, Unpacked,
};
pub use proxy::{Fault, FaultProxy};
pub use rawtar::{RawHeader, RawTar};
pub use registry::{AccessLogEntry, LogMark, Registry};
pub use text::big_text_layer;

/// The error type of the fallible helpers.
pub type Error = Box<dyn std::error::Error + Send + Sync>;
