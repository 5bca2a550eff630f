//! Talking to OCI registries: image references, authentication, manifests, platform
//! selection, and blob reads — whole streams for indexing, byte ranges for lazy mounts.
//!
//! # What this crate owns
//!
//! - [`Reference`]: parsing image names with docker's rules (`alpine` is
//!   `docker.io/library/alpine:latest`) and [`Platform`]: `os/arch[/variant]` and how an index
//!   entry is chosen for one.
//! - [`Client`]: a blocking OCI distribution client on `ureq`, shared by threads (one connection
//!   pool, one token cache). It answers `WWW-Authenticate` challenges (anonymous, HTTP basic,
//!   bearer tokens, renewing expired tokens), finds credentials (explicit ones bound to one
//!   registry, [`RegistryCredentials`]; else containers `auth.json`, docker `config.json` and
//!   credential helpers), follows redirects itself (at most 10; `Authorization` only within the
//!   origin it was sent to, so object storage never sees registry credentials; no https→http
//!   downgrade), retries transient failures with capped backoff, and counts what it does
//!   ([`StatsSnapshot`]).
//! - [`Client::resolve`]: reference + platform → [`ResolvedImage`]: the image manifest (picked
//!   from an index), the raw image config and the layer table with compression and diff_ids,
//!   every piece digest-verified.
//! - [`Client::blob_reader`]: a whole blob as a streaming, resuming, verifying [`BlobReader`];
//!   [`Client::fetch_range`]: one byte range of a blob.
//!
//! # What it must not touch
//!
//! Layer contents: no tar, no gzip or zstd, no archive format, no filesystem. Blob bytes leave
//! this crate exactly as the registry stores them; what they mean is the indexer's business.
//! Nothing is written to disk.
//!
//! Registry responses are untrusted input: they never cause a panic, and what is held in memory
//! is capped (manifests and configs 8 MiB, token responses 1 MiB, error bodies 64 KiB). Their
//! parsers are fuzzed (`fuzz/`: `registry_manifest`, `registry_auth`, through the hidden
//! `fuzzing` module).
//!
//! # Example
//!
//! ```no_run
//! use std::io::Read;
//! use clip_registry::{Client, ClientOptions, Platform, Reference};
//!
//! let client = Client::new(ClientOptions::default())?;
//! let reference: Reference = "alpine:3.20".parse()?;
//! let image = client.resolve(&reference, &Platform::host())?;
//! for layer in &image.layers {
//!     let mut blob = client.blob_reader(&reference, &layer.digest, layer.size)?;
//!     std::io::copy(&mut blob, &mut std::io::sink())?; // verified at the end
//! }
//! let first = &image.layers[0];
//! let head = client.fetch_range(&reference, &first.digest, 0..512)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]

mod artifact;
mod auth;
mod blob;
mod client;
mod error;
#[doc(hidden)]
pub mod fuzzing;
mod manifest;
mod mirror;
mod platform;
mod redirect;
mod reference;
mod resolve;
mod retry;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod testserver;

pub use artifact::{
    referrers_tag, Descriptor, FetchedManifest, PushedManifest, Referrers, ReferrersSource,
    OCI_IMAGE_INDEX, OCI_IMAGE_MANIFEST,
};
pub use auth::{Credentials, RegistryCredentials};
pub use blob::BlobReader;
pub use client::{Client, ClientOptions, Stats, StatsSnapshot};
pub use error::RegistryError;
pub use manifest::{Compression, LayerDescriptor};
pub use mirror::{Endpoint, Mirror, Mirrors};
pub use platform::Platform;
pub use reference::Reference;
pub use resolve::ResolvedImage;
pub use retry::RetryPolicy;
