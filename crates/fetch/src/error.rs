//! [`FetchError`]: every way a read of layer bytes can fail.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clip_archive::ArchiveError;
use clip_registry::RegistryError;
use clip_zran::ZranError;

/// An error of the fetcher.
///
/// Each message includes its cause (a fetch error is usually logged on its own, so it must say
/// everything): no variant reports a `source()`, so that a chain printed with `{:#}` says each
/// thing once.
///
/// The error is `Clone` (sources are behind `Arc`) because one failed fetch is reported to every
/// reader that waited for the same span. [`FetchError::errno`] is what a filesystem answers.
#[non_exhaustive]
#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    /// The archive is inconsistent (or a layer/span index is out of range).
    #[error("reading the .clip index failed: {0}")]
    Archive(Arc<ArchiveError>),

    /// A read starts past the end of the layer's uncompressed stream.
    #[error("offset {offset} is past the end of layer {layer} ({size} uncompressed bytes)")]
    OutOfRange {
        /// Layer index.
        layer: u32,
        /// Requested offset.
        offset: u64,
        /// The layer's uncompressed size.
        size: u64,
    },

    /// A layer digest in the archive is not `sha256:<64 hex>` or `sha512:<128 hex>`.
    #[error("layer {layer} has an invalid digest {digest:?} in the .clip index")]
    InvalidLayerDigest {
        /// Layer index.
        layer: u32,
        /// The digest as stored.
        digest: String,
    },

    /// The registry could not deliver the bytes (after the client's retries).
    #[error(
        "fetching {} of layer {layer_digest} failed: {error}",
        match .span { Some(s) => format!("span {s}"), None => "a byte".to_string() }
    )]
    Registry {
        /// Layer blob digest.
        layer_digest: String,
        /// Span index in the layer (`None` for [`crate::Fetcher::check_registry`]).
        span: Option<usize>,
        /// What the registry client reported.
        error: Arc<RegistryError>,
    },

    /// The compressed bytes the registry sent do not hash to the span digest of the index.
    #[error(
        "span {span} of layer {layer_digest}: fetched bytes have sha256 {found}, the index \
         says {expected}; the registry served corrupt data (or the index does not belong to \
         this image)"
    )]
    DigestMismatch {
        /// Layer blob digest.
        layer_digest: String,
        /// Span index in the layer.
        span: usize,
        /// Span digest from the archive (hex).
        expected: String,
        /// Digest of what was received (hex).
        found: String,
    },

    /// A seek window read from the index blob does not hash to the window digest the index
    /// records for its span.
    #[error(
        "the seek window of span {span} of layer {layer_digest}, read from the index blob \
         {index_blob}, does not match the digest the index records; the registry served \
         corrupt data"
    )]
    WindowMismatch {
        /// The complete index blob the window was read from.
        index_blob: String,
        /// Layer blob digest.
        layer_digest: String,
        /// Span index in the layer.
        span: usize,
    },

    /// A span decoded to other bytes than the index records for it: the checkpoint's window or
    /// bit offset in the index is damaged or forged (the compressed bytes were verified). Or a
    /// cache entry being written did not get all its bytes.
    #[error(
        "span {span} of layer {layer_digest} decoded to content {found}, the index records \
         {expected}; the index's seek data for this span is damaged or forged: re-create the \
         index with `clip index`"
    )]
    ContentMismatch {
        /// Layer blob digest.
        layer_digest: String,
        /// Span index in the layer.
        span: usize,
        /// Content digest from the archive (hex).
        expected: String,
        /// Digest (hex) of what was decoded, or how many bytes were.
        found: String,
    },

    /// Verified gzip bytes did not inflate from the span's checkpoint.
    #[error("span {span} of layer {layer_digest} does not inflate: {error}")]
    Inflate {
        /// Layer blob digest.
        layer_digest: String,
        /// Span index in the layer.
        span: usize,
        /// What the inflater reported.
        error: Arc<ZranError>,
    },

    /// Verified zstd bytes did not decode.
    #[error("span {span} of layer {layer_digest} does not decode as zstd: {detail}")]
    Decode {
        /// Layer blob digest.
        layer_digest: String,
        /// Span index in the layer.
        span: usize,
        /// What the decoder reported.
        detail: String,
    },

    /// A span decoded to another length than the index says.
    #[error(
        "span {span} of layer {layer_digest} decoded to {found} bytes, the index says {expected}"
    )]
    LengthMismatch {
        /// Layer blob digest.
        layer_digest: String,
        /// Span index in the layer.
        span: usize,
        /// Length from the archive.
        expected: u64,
        /// Length produced.
        found: u64,
    },

    /// A gzip span is too large to be inflated in memory.
    #[error(
        "span {span} of layer {layer_digest} is {size} bytes, more than the {limit} bytes a \
         gzip span may have; re-create the index with a smaller --span"
    )]
    SpanTooLarge {
        /// Layer blob digest.
        layer_digest: String,
        /// Span index in the layer.
        span: usize,
        /// Uncompressed (or compressed) size of the span.
        size: u64,
        /// The limit.
        limit: u64,
    },

    /// A read waited longer than [`crate::FetchOptions::read_timeout`] for a span.
    #[error(
        "span {span} of layer {layer_digest} did not arrive within {after:?}; is the registry \
         reachable?"
    )]
    Timeout {
        /// Layer blob digest.
        layer_digest: String,
        /// Span index in the layer.
        span: usize,
        /// How long the read waited.
        after: Duration,
    },

    /// The cache directory could not be used.
    #[error("cache {}: {error}", .path.display())]
    Cache {
        /// The file or directory concerned.
        path: PathBuf,
        /// The I/O error.
        error: Arc<io::Error>,
    },

    /// The cache directory is not private to this user (see [`crate::cache`]).
    #[error("cache directory {0}")]
    CacheNotPrivate(crate::cache::PrivateDirError),

    /// A fetch was abandoned before it finished (the fetcher was dropped).
    #[error("fetch of span {span} of layer {layer_digest} was cancelled")]
    Cancelled {
        /// Layer blob digest.
        layer_digest: String,
        /// Span index in the layer.
        span: usize,
    },

    /// The fetch failed on an internal error: the background thread fetching the span
    /// panicked (the panic is logged; the thread goes on with other fetches).
    #[error(
        "fetch of span {span} of layer {layer_digest} failed on an internal error (a fetch \
         thread panicked; see the log)"
    )]
    Panicked {
        /// Layer blob digest.
        layer_digest: String,
        /// Span index in the layer.
        span: usize,
    },

    /// A background thread could not be started.
    #[error("cannot start a fetch thread: {0}")]
    Thread(Arc<io::Error>),
}

impl FetchError {
    /// The errno a filesystem should answer with: `EIO` for everything that is about data that
    /// cannot be delivered, `EINVAL` for a caller asking for something that does not exist.
    pub fn errno(&self) -> i32 {
        match self {
            FetchError::Archive(e) => match **e {
                ArchiveError::NoSuchLayer(_) | ArchiveError::NoSuchSpan { .. } => libc::EINVAL,
                _ => libc::EIO,
            },
            FetchError::OutOfRange { .. } => libc::EINVAL,
            FetchError::InvalidLayerDigest { .. }
            | FetchError::Registry { .. }
            | FetchError::DigestMismatch { .. }
            | FetchError::WindowMismatch { .. }
            | FetchError::ContentMismatch { .. }
            | FetchError::Inflate { .. }
            | FetchError::Decode { .. }
            | FetchError::LengthMismatch { .. }
            | FetchError::SpanTooLarge { .. }
            | FetchError::Timeout { .. }
            | FetchError::Cache { .. }
            | FetchError::CacheNotPrivate(_)
            | FetchError::Cancelled { .. }
            | FetchError::Panicked { .. }
            | FetchError::Thread(_) => libc::EIO,
        }
    }

    /// Whether trying again later may succeed: the registry failed in a way that passes
    /// (a reset, a timeout, a 5xx, a 429).
    pub fn is_transient(&self) -> bool {
        matches!(self, FetchError::Registry { error, .. } if error.is_transient())
    }

    pub(crate) fn cache(path: impl Into<PathBuf>, error: io::Error) -> FetchError {
        FetchError::Cache {
            path: path.into(),
            error: Arc::new(error),
        }
    }
}

impl From<ArchiveError> for FetchError {
    fn from(e: ArchiveError) -> Self {
        FetchError::Archive(Arc::new(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_is_eio_for_data_errors() {
        let e = FetchError::Timeout {
            layer_digest: "sha256:00".into(),
            span: 3,
            after: Duration::from_millis(5),
        };
        assert_eq!(e.errno(), libc::EIO);
        assert!(e.to_string().contains("span 3"));
        let e = FetchError::from(ArchiveError::NoSuchLayer(7));
        assert_eq!(e.errno(), libc::EINVAL);
        let e = FetchError::Registry {
            layer_digest: "sha256:00".into(),
            span: None,
            error: Arc::new(RegistryError::InvalidOptions { detail: "x".into() }),
        };
        assert_eq!(e.errno(), libc::EIO);
        assert!(e.to_string().contains("a byte of layer"), "{e}");
    }
}
