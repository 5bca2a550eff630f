//! Where file bytes come from: the [`ContentSource`] trait.

use std::fmt;
use std::time::Instant;

/// The bytes of the image's layers, addressed in each layer's *uncompressed* tar stream.
///
/// This is the only way the filesystem core reaches file content. The real implementation
/// (the fetcher: Range requests, span verification, inflation, cache) lives in another crate
/// and is plugged in by the binary; tests use [`crate::testing::MemoryContent`].
///
/// Implementations are called from many threads at once. [`ContentSource::read_at`] may block
/// (a fetch); it should bound the time it blocks and fail with [`ContentError`] rather than
/// hang. [`ContentSource::read_cached`] must not block at all.
pub trait ContentSource: Send + Sync {
    /// Reads up to `buf.len()` bytes at `offset` of layer `layer`'s uncompressed tar stream
    /// into `buf` and returns how many were read. A short count is allowed (the core asks again
    /// for the rest); `Ok(0)` means nothing is there (the core then reports `EIO` if it
    /// expected bytes). `since` is when the read was asked for (a filesystem request arrived):
    /// a time budget for the read counts from then, time spent queueing included.
    /// `file_end` is where the file being read ends in the layer's stream: a read never asks
    /// past it, and a source that fetches ahead of reads need not go past it either.
    fn read_at(
        &self,
        layer: u32,
        offset: u64,
        buf: &mut [u8],
        file_end: u64,
        since: Instant,
    ) -> Result<usize, ContentError>;

    /// Like [`ContentSource::read_at`], but **never blocks**: `Some` only when the bytes at
    /// `offset` are available locally (cached and verified) without waiting for a fetch, a
    /// lock held across a fetch, or anything else slow; `None` otherwise. The FUSE adapter
    /// calls it on the thread that received the request, so that reads of cached data are
    /// never queued behind reads waiting on the network; on `None` the read goes to a worker
    /// thread and [`ContentSource::read_at`].
    ///
    /// - `Some(Ok(n))`: `n` bytes of `buf` were filled. A short count is allowed (the core
    ///   asks again for the rest; if that answers `None`, the whole read goes to `read_at`
    ///   and the bytes read so far are discarded). `Some(Ok(0))` is treated like `None`.
    /// - `Some(Err(e))`: the read fails with `e`, without asking `read_at`. Return `None`
    ///   instead when `read_at` might still succeed.
    /// - `None`: not (entirely) available without waiting.
    ///
    /// The default answers `None`: every read goes through `read_at`.
    fn read_cached(
        &self,
        _layer: u32,
        _offset: u64,
        _buf: &mut [u8],
        _file_end: u64,
    ) -> Option<Result<usize, ContentError>> {
        None
    }
}

/// Why a [`ContentSource`] could not deliver bytes: the errno the reader should get (`EIO`
/// for a failed or unverifiable fetch, `ETIMEDOUT`, `ENOMEM`...), and a message for the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContentError {
    /// A positive errno value; anything else is reported as `EIO`.
    pub errno: i32,
    /// What went wrong, naming the layer, span or offset (logged, never shown to the reader).
    pub message: String,
    /// The source has reported this failure in its log already (an outage it announced once,
    /// say): the filesystem logs it at debug level only, so that one cause is one log line.
    pub logged: bool,
}

impl ContentError {
    /// An error with the given errno.
    pub fn new(errno: i32, message: impl Into<String>) -> Self {
        ContentError {
            errno,
            message: message.into(),
            logged: false,
        }
    }

    /// An `EIO` error: the usual answer for a fetch that failed or did not verify.
    pub fn io(message: impl Into<String>) -> Self {
        ContentError::new(libc::EIO, message)
    }

    /// The same error, marked as reported in the source's log already.
    pub fn already_logged(mut self) -> Self {
        self.logged = true;
        self
    }

    /// The errno to report: `errno` when it is positive, else `EIO`.
    pub fn errno(&self) -> i32 {
        if self.errno > 0 {
            self.errno
        } else {
            libc::EIO
        }
    }
}

impl fmt::Display for ContentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (errno {})", self.message, self.errno)
    }
}

impl std::error::Error for ContentError {}
