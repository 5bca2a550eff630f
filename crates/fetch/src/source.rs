//! [`BlobSource`]: where the fetcher gets compressed layer bytes, and its implementation for a
//! registry ([`RegistrySource`]: a [`clip_registry::Client`] and the image's
//! [`clip_registry::Reference`]).
//!
//! # What it owns, what it must not touch
//!
//! The trait is the fetcher's whole view of the network: a ranged read and a streamed read of
//! a blob named by its digest, and the two questions about mirrors that verification needs. It
//! knows nothing of spans, digests of spans, decoding or the cache; it does not count requests
//! (the fetcher does) and need not verify anything but what it says it verifies. Tests use the
//! in-memory source of [`crate::testing`] in its place.

use std::io::Read;
use std::ops::Range;

use clip_registry::{Client, Reference, RegistryError};

/// Compressed bytes of layer blobs, by digest. `Send + Sync`: the fetcher's workers call it
/// from several threads at once. Its calls block (network I/O); the fetcher holds no lock
/// while it waits for them.
///
/// Errors are [`RegistryError`]s: what a source reports is what the fetcher reports as
/// [`crate::FetchError::Registry`], and [`RegistryError::is_transient`] says whether a read
/// tries again within its budget.
pub trait BlobSource: Send + Sync + 'static {
    /// Exactly the bytes `range` of blob `digest` (an empty range gives no bytes). Retrying
    /// transient failures before giving up is up to the source.
    fn read_range(&self, digest: &str, range: Range<u64>) -> Result<Vec<u8>, RegistryError>;

    /// The whole blob `digest` of `size` bytes, as a stream. A failure while reading is an
    /// [`std::io::Error`] whose inner error is the [`RegistryError`] (see
    /// [`RegistryError::from_io`]); a stream that does not hash to `digest` fails at its end
    /// with [`RegistryError::DigestMismatch`].
    fn read_blob(
        &self,
        digest: &str,
        size: u64,
    ) -> Result<Box<dyn Read + Send + '_>, RegistryError>;

    /// Whether [`BlobSource::read_range`] of `range` of blob `digest` is answered from local
    /// bytes (a startup pack, [`crate::PackSource`]) rather than with a request.
    fn holds(&self, _digest: &str, _range: &Range<u64>) -> bool {
        false
    }

    /// Whether bytes may come from somewhere else than the blob's origin (mirrors): bytes that
    /// did not verify are then fetched once more, after [`BlobSource::distrust_mirrors`].
    fn has_mirrors(&self) -> bool {
        false
    }

    /// Bytes read through this source did not verify: stop using mirrors for a while. Returns
    /// whether there were any.
    fn distrust_mirrors(&self) -> bool {
        false
    }
}

/// The blobs of one image in its registry (or its mirrors), read with a registry client.
#[derive(Clone, Debug)]
pub struct RegistrySource {
    client: Client,
    reference: Reference,
}

impl RegistrySource {
    /// Blobs of `reference`'s repository, read with `client`.
    pub fn new(client: Client, reference: Reference) -> RegistrySource {
        RegistrySource { client, reference }
    }
}

impl BlobSource for RegistrySource {
    fn read_range(&self, digest: &str, range: Range<u64>) -> Result<Vec<u8>, RegistryError> {
        self.client.fetch_range(&self.reference, digest, range)
    }

    fn read_blob(
        &self,
        digest: &str,
        size: u64,
    ) -> Result<Box<dyn Read + Send + '_>, RegistryError> {
        let reader = self.client.blob_reader(&self.reference, digest, size)?;
        Ok(Box::new(reader))
    }

    fn has_mirrors(&self) -> bool {
        self.client.has_mirrors(&self.reference)
    }

    fn distrust_mirrors(&self) -> bool {
        self.client.distrust_mirrors(&self.reference)
    }
}
