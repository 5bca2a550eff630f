//! The snapshotter's errors, and the gRPC code containerd expects for each.

use std::path::PathBuf;

/// An error of a snapshot operation, or of the snapshotter's own state.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No snapshot (or parent) of that name.
    #[error("snapshot {key:?} does not exist")]
    NotFound {
        /// The key or name asked for.
        key: String,
    },
    /// The key or name is taken; for a remote layer, the answer that says "already there".
    #[error("snapshot {key:?} already exists")]
    AlreadyExists {
        /// The key or name.
        key: String,
    },
    /// The snapshot is not in a state that allows the operation.
    #[error("snapshot {key:?}: {reason}")]
    FailedPrecondition {
        /// The key or name.
        key: String,
        /// Why not.
        reason: String,
    },
    /// A request that cannot be right (an empty key, a bad filter, an unknown field path).
    #[error("invalid argument: {reason}")]
    InvalidArgument {
        /// What is wrong.
        reason: String,
    },
    /// A file system operation under the root directory failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The metadata file cannot be read back.
    #[error("metadata {}: {reason}", path.display())]
    Metadata {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Mounting or unmounting a clip image failed.
    #[error("image {image}: {reason}")]
    Mount {
        /// The image's manifest digest.
        image: String,
        /// The mounter's message.
        reason: String,
    },
    /// The gRPC server failed.
    #[error("serving {}: {reason}", socket.display())]
    Serve {
        /// The socket.
        socket: PathBuf,
        /// What failed.
        reason: String,
    },
}

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn invalid(reason: impl Into<String>) -> Error {
        Error::InvalidArgument {
            reason: reason.into(),
        }
    }

    pub(crate) fn not_found(key: &str) -> Error {
        Error::NotFound {
            key: key.to_string(),
        }
    }

    pub(crate) fn exists(key: &str) -> Error {
        Error::AlreadyExists {
            key: key.to_string(),
        }
    }

    pub(crate) fn precondition(key: &str, reason: impl Into<String>) -> Error {
        Error::FailedPrecondition {
            key: key.to_string(),
            reason: reason.into(),
        }
    }

    /// The gRPC status code containerd maps back to its `errdefs` (`NotFound`,
    /// `AlreadyExists`, `FailedPrecondition`, `InvalidArgument`; `Internal` for the rest).
    pub fn code(&self) -> tonic::Code {
        match self {
            Error::NotFound { .. } => tonic::Code::NotFound,
            Error::AlreadyExists { .. } => tonic::Code::AlreadyExists,
            Error::FailedPrecondition { .. } => tonic::Code::FailedPrecondition,
            Error::InvalidArgument { .. } => tonic::Code::InvalidArgument,
            Error::Io { .. } | Error::Metadata { .. } | Error::Serve { .. } => {
                tonic::Code::Internal
            }
            Error::Mount { .. } => tonic::Code::Unavailable,
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> tonic::Status {
        tonic::Status::new(e.code(), e.to_string())
    }
}
