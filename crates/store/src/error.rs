//! [`StoreError`].

use std::io;
use std::path::PathBuf;

use clip_archive::ArchiveError;
use clip_registry::RegistryError;

/// Why an index could not be pushed, found, fetched or kept.
///
/// Messages say everything on their own (no variant reports a `source()`), so that a chain
/// printed with `{:#}` says each thing once.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Talking to the registry failed.
    #[error("{0}")]
    Registry(RegistryError),

    /// The archive is not a readable index.
    #[error("the index {what} is unusable: {error}")]
    Archive {
        /// Which index.
        what: String,
        /// What the reader found.
        error: ArchiveError,
    },

    /// The index does not describe the image it is meant for.
    #[error(
        "the index {what} does not belong to {image}: {reason}; it is refused (re-create it \
         with `clip index {image} --push`)"
    )]
    NotBound {
        /// Which index.
        what: String,
        /// The image.
        image: String,
        /// What differs.
        reason: String,
    },

    /// The artifact in the registry is not a clip artifact as this clip writes them.
    #[error("artifact {digest} in {repository} is not a usable {what}: {reason}")]
    BadArtifact {
        /// The artifact manifest's digest.
        digest: String,
        /// Where it is.
        repository: String,
        /// What it should be (`clip index`, `clip startup profile`).
        what: &'static str,
        /// What is wrong.
        reason: String,
    },

    /// A file of the store could not be read or written.
    #[error("index store {}: {error}", .path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        error: io::Error,
    },

    /// A startup profile is unusable.
    #[error("the startup profile {what}: {error}")]
    Profile {
        /// Which profile.
        what: String,
        /// What is wrong.
        error: crate::ProfileError,
    },

    /// The index's metadata could not be compressed for pushing.
    #[error("compressing the metadata of the index for {image}: {error}")]
    Compress {
        /// The image.
        image: String,
        /// What zstd said.
        error: io::Error,
    },

    /// The store's directory is not private to this user.
    #[error("index store directory {0}")]
    NotPrivate(clip_sys::private::PrivateDirError),
}

impl From<RegistryError> for StoreError {
    fn from(e: RegistryError) -> Self {
        StoreError::Registry(e)
    }
}
