//! Lazy, verified reads of layer bytes: the part of a clip mount that touches the network.
//!
//! # What this crate consumes and produces
//!
//! It **consumes** an opened `.clip` archive ([`clip_archive::Archive`]: the layer table and
//! each layer's seek spans), a [`BlobSource`] of the layers' compressed bytes (in a mount, a
//! [`RegistrySource`]: a [`clip_registry::Client`] + the image [`clip_registry::Reference`];
//! in tests, the in-memory [`testing::MemorySource`]) and a cache directory. It **produces**
//! verified bytes of a
//! layer's *uncompressed tar stream*: [`Fetcher::read_at`]`(layer, offset, buf)`. It knows
//! nothing of inodes, paths or FUSE: the filesystem core maps a file to `(layer, offset)` (the
//! archive's data location) and asks for bytes.
//!
//! # How a read is served
//!
//! 1. **Span mapping.** The read is mapped to the spans that cover it (binary search in the
//!    layer's span table).
//! 2. **Cache.** Each span is looked up in the on-disk cache ([`cache`] documents the layout):
//!    a hit is a `pread` of just the bytes asked for from an open, verified entry.
//! 3. **Single flight.** A missing span is claimed in an in-flight map; a reader that finds the
//!    span already claimed waits for that fetch (with [`FetchOptions::read_timeout`]) instead of
//!    fetching it again. Failures reach every waiter and are not remembered: the next read tries
//!    again.
//! 4. **Fetch.** Neighbouring missing spans of one read are fetched with **one** HTTP Range
//!    request (up to [`FetchOptions::max_request_bytes`]) on a background worker, then split
//!    and **verified span by span** (sha256 of the compressed bytes against the span digest)
//!    before anything is decoded: a mismatch is a [`FetchError::DigestMismatch`] and an error
//!    log naming layer and span, never wrong bytes, never a cache entry. Verified bytes are
//!    decoded (gzip: inflate from the span's checkpoint with `clip-zran`; zstd: decode the
//!    span's whole frames; uncompressed: as they are), their length checked, and published to
//!    the cache atomically. A zstd or uncompressed span too large to hold in memory (a
//!    single-frame zstd layer is one span) is streamed through the hasher and the decoder
//!    straight into the cache file, and published only once its digest matched.
//! 5. **Readahead.** A read that starts where the previous read of the same layer ended looks
//!    sequential: the next [`FetchOptions::readahead_spans`] spans are fetched in the
//!    background, claimed through the same single-flight map, one run at a time. Readahead
//!    never occupies the last free worker: fetches a reader waits for always have one.
//!
//! No lock is held across network or disk I/O: a slow fetch never blocks lookups or reads of
//! cached spans, and [`Fetcher::read_cached`] serves cached bytes without waiting for anything.
//! A panic in a background fetch fails that fetch's spans (`EIO` for their readers) and is
//! logged; the worker goes on. Cache eviction runs on a thread of its own. Memory use is
//! bounded: span buffers are transient, at most 256 cache files are kept open, and nothing
//! else is cached in memory.
//!
//! # Modules
//!
//! Each has one job, and its docs say what it owns and what it must not touch:
//!
//! | module | its job |
//! |---|---|
//! | `source` | [`BlobSource`], the fetcher's whole view of the network, and [`RegistrySource`] |
//! | `pack` | startup packs: [`RangePack`], [`PackSource`] (a pack in front of the registry), [`RecordingSource`] (makes one) |
//! | `queue` | the scheduler: jobs by priority (demand, then readahead), the workers |
//! | `read` | the read path: spans of a read, claim or wait, copy out, retries in the budget |
//! | `readahead` | the readahead policy and readahead jobs |
//! | `run` | fetch jobs: coalesced ranged reads, split, decode, publish, claims completed |
//! | `decode` | span decoding as a pure function: digest, inflate/decode, length, content digest |
//! | `stream` | spans too large for memory, streamed through the checks into the cache |
//! | `fetcher` | the state the threads share, its creation and shutdown, the counters |
//! | `sync` | a poison-proof lock, waits until a deadline, a generic single flight |
//! | [`cache`] | the on-disk cache (entry codec, verification, writing, eviction) |
//! | [`testing`] | the in-memory source and test images |
//!
//! # Time bounds
//!
//! A read waits at most [`FetchOptions::read_timeout`] for its spans and then fails with
//! [`FetchError::Timeout`] (`EIO`); the fetch itself goes on in the background and a later read
//! may find the span cached. Transient registry failures are retried by the registry client
//! under its own [`clip_registry::RetryPolicy`]: set `read_timeout` at least as long as that
//! policy's `deadline` if a read should see the retries through rather than time out first.
//!
//! # Example
//!
//! ```no_run
//! use std::sync::Arc;
//! use clip_archive::Archive;
//! use clip_fetch::{Fetcher, FetchOptions};
//! use clip_registry::{Client, ClientOptions, Reference};
//!
//! let archive = Arc::new(Archive::open_owned(std::fs::read("alpine.clip")?)?);
//! let reference: Reference = archive.meta().reference.parse()?;
//! let client = Client::new(ClientOptions::default())?;
//! let fetcher = Fetcher::new(archive.clone(), client, reference, FetchOptions::default())?;
//! fetcher.check_registry()?;
//!
//! let ino = archive.resolve("/etc/os-release")?.expect("exists");
//! let file = archive.inode(ino)?;
//! let data = file.data().expect("a regular file with content");
//! let mut buf = vec![0; file.size() as usize];
//! let n = fetcher.read_at(data.layer, data.offset, &mut buf)?;
//! println!("{}", String::from_utf8_lossy(&buf[..n]));
//! println!("{:?}", fetcher.stats());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod cache;
mod decode;
mod error;
mod fetcher;
mod pack;
mod prefetch;
mod queue;
mod read;
mod readahead;
mod run;
mod source;
mod stream;
mod sync;
pub mod testing;
#[cfg(test)]
mod tests;

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clip_archive::{Archive, SpanInfo};
use clip_registry::{Client, Reference};

pub use cache::PrivateDirError;
pub use error::FetchError;
pub use pack::{
    BlobRange, PackError, PackSource, RangePack, RecordingSource, MAX_PACK_BYTES, MAX_PACK_ENTRIES,
    PACK_MAGIC, PACK_VERSION,
};
pub use source::{BlobSource, RegistrySource};

/// One span of a layer: its index in the layer's span table, and what the table says of it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SpanRef {
    pub(crate) index: usize,
    pub(crate) info: SpanInfo,
}

/// Where the span cache lives and how large it may grow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheOptions {
    /// The cache directory (created if missing); [`default_cache_dir`] by default.
    pub dir: PathBuf,
    /// Bound on the bytes of the cache files; past it the least recently used are evicted down
    /// to 90 % of it. Default 10 GiB.
    pub max_bytes: u64,
}

impl Default for CacheOptions {
    fn default() -> Self {
        CacheOptions {
            dir: default_cache_dir(),
            max_bytes: 10 << 30,
        }
    }
}

/// The default cache directory: `/var/cache/clip` for root; otherwise `$XDG_CACHE_HOME/clip`,
/// else `~/.cache/clip`, else `clip-cache-<uid>` in the temp directory.
pub fn default_cache_dir() -> PathBuf {
    let uid = effective_uid();
    if uid == Some(0) {
        return PathBuf::from("/var/cache/clip");
    }
    let absolute = |v: std::ffi::OsString| Some(PathBuf::from(v)).filter(|p| p.is_absolute());
    if let Some(xdg) = std::env::var_os("XDG_CACHE_HOME").and_then(absolute) {
        return xdg.join("clip");
    }
    if let Some(home) = std::env::var_os("HOME").and_then(absolute) {
        return home.join(".cache").join("clip");
    }
    std::env::temp_dir().join(format!("clip-cache-{}", uid.unwrap_or(u32::MAX)))
}

/// The effective uid, without `unsafe`: `/proc/self` belongs to it.
pub(crate) fn effective_uid() -> Option<u32> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(Path::new("/proc/self"))
        .ok()
        .map(|m| m.uid())
}

/// How a [`Fetcher`] fetches and caches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchOptions {
    /// The span cache.
    pub cache: CacheOptions,
    /// The budget of one read: the longest it waits for its spans, fetches failing and being
    /// tried again within it; past it the read fails with [`FetchError::Timeout`] (the mount
    /// answers `EIO` and stays up). Default 30 s. Give the registry client a retry policy
    /// bounded by time (its `deadline`) rather than by a small number of attempts, so that a
    /// fetch keeps trying for as long as readers may wait for it.
    pub read_timeout: Duration,
    /// Spans fetched ahead in the background when reads of a layer look sequential. Default 4;
    /// 0 disables readahead.
    pub readahead_spans: usize,
    /// Most compressed bytes one Range request may cover when neighbouring spans are
    /// coalesced. Default 4 MiB (about ten 1 MiB spans of typical text): larger requests
    /// save round trips but hold more in memory while a run is verified and inflated.
    pub max_request_bytes: u64,
    /// Background fetch threads: they bound concurrent registry requests. Default 8: a start
    /// is a chain of small fetches whose time is mostly round trips, so parallel requests
    /// matter more than bandwidth. One of them is always kept for fetches a read waits for:
    /// background work (readahead, prefetch, fill) runs on at most `workers - 1` at a time,
    /// so with 1 worker there is none.
    pub workers: usize,
    /// The complete index blob, read through the same source, when the archive is metadata
    /// only ([`clip_archive::Archive::has_windows`] false): a span's seek window is read from
    /// it by range (one request for the windows of a run, beside the run's own) and verified
    /// against the window digest of the span. Ignored when the archive has its windows.
    pub windows_blob: Option<String>,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            cache: CacheOptions::default(),
            read_timeout: Duration::from_secs(30),
            readahead_spans: 4,
            max_request_bytes: 4 << 20,
            workers: 8,
            windows_blob: None,
        }
    }
}

/// Counters of a [`Fetcher`] since it was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct FetchStats {
    /// Registry requests made (Range requests and whole-blob streams; the client's own retries
    /// not counted).
    pub registry_requests: u64,
    /// Compressed layer bytes received from the registry.
    pub bytes_fetched: u64,
    /// Seek-window bytes received from the registry (the index blob of a metadata-only
    /// archive); the requests are counted in `registry_requests`.
    pub window_bytes_fetched: u64,
    /// Compressed layer and window bytes read from the startup pack instead of the registry
    /// (not counted in `bytes_fetched`, `window_bytes_fetched` or `registry_requests`).
    pub pack_bytes: u64,
    /// Spans fetched, verified, decoded (and cached).
    pub spans_fetched: u64,
    /// Spans a read found in the cache.
    pub cache_hits: u64,
    /// Spans a read did not find in the cache (fetched, or waited for).
    pub cache_misses: u64,
    /// Spans whose fetched bytes did not match their digest.
    pub verify_failures: u64,
    /// Span fetches that failed (digest mismatches included).
    pub fetch_errors: u64,
    /// Spans fetched by readahead (also counted in `spans_fetched`).
    pub readahead_spans: u64,
    /// Reads that gave up waiting after `read_timeout`.
    pub timeouts: u64,
    /// Cache entries found corrupt (deleted and fetched again).
    pub cache_corrupt: u64,
    /// Spans fetched by the replay of a startup profile (also counted in `spans_fetched`).
    pub prefetch_spans: u64,
    /// Of those, spans a read found (each counted once).
    pub prefetch_hits: u64,
    /// Of those, spans no read has found (yet): `prefetch_spans - prefetch_hits`.
    pub prefetch_wasted: u64,
    /// Spans the fill (`Fetcher::fill`) covers.
    pub fill_total: u64,
    /// Of those, spans it has seen cached: fetched by it, found cached, or fetched by a read.
    pub fill_done: u64,
}

/// Serves verified bytes of the layers of one archive. `Send + Sync`; share it by reference
/// or in an `Arc`. Dropping it cancels queued background fetches (a fetch under way finishes
/// on its thread).
pub struct Fetcher {
    shared: Arc<fetcher::Shared>,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Fetcher {
    /// A fetcher for `archive`'s layers, read from `reference`'s repository with `client`
    /// (a [`RegistrySource`]). Creates the cache directory and starts the background threads;
    /// does not touch the network (see [`Fetcher::check_registry`]).
    pub fn new(
        archive: Arc<Archive<'static>>,
        client: Client,
        reference: Reference,
        options: FetchOptions,
    ) -> Result<Fetcher, FetchError> {
        Fetcher::with_source(
            archive,
            Arc::new(RegistrySource::new(client, reference)),
            options,
        )
    }

    /// A fetcher for `archive`'s layers, read from any [`BlobSource`] (an in-memory one in
    /// tests: [`testing::MemorySource`]).
    pub fn with_source(
        archive: Arc<Archive<'static>>,
        source: Arc<dyn BlobSource>,
        options: FetchOptions,
    ) -> Result<Fetcher, FetchError> {
        Ok(Fetcher {
            shared: fetcher::Shared::start(archive, source, options)?,
        })
    }

    /// Reads `buf.len()` bytes (fewer at the end of the layer) at `offset` of layer `layer`'s
    /// uncompressed stream; returns how many. `offset` equal to the layer size reads 0 bytes.
    /// The read may take [`FetchOptions::read_timeout`] from now.
    pub fn read_at(&self, layer: u32, offset: u64, buf: &mut [u8]) -> Result<usize, FetchError> {
        self.read_at_since(layer, offset, buf, Instant::now())
    }

    /// [`Fetcher::read_at`] for a read that was asked for at `since` (when a filesystem request
    /// arrived, say): its [`FetchOptions::read_timeout`] counts from then, queueing included.
    /// Within that budget failed fetches are tried again; past it the read fails with
    /// [`FetchError::Timeout`] (or the last fetch error).
    pub fn read_at_since(
        &self,
        layer: u32,
        offset: u64,
        buf: &mut [u8],
        since: Instant,
    ) -> Result<usize, FetchError> {
        self.shared.read_at(layer, offset, buf, u64::MAX, since)
    }

    /// [`Fetcher::read_at_since`] for a read of a file that ends at `file_end` of the layer's
    /// stream: readahead stops at the span holding the file's last byte (a file read to its
    /// end says nothing about the files after it).
    pub fn read_file_at(
        &self,
        layer: u32,
        offset: u64,
        buf: &mut [u8],
        file_end: u64,
        since: Instant,
    ) -> Result<usize, FetchError> {
        self.shared.read_at(layer, offset, buf, file_end, since)
    }

    /// [`Fetcher::read_at`] for bytes that are in the cache already, without ever waiting:
    /// `Some` only when every span the read needs has a cache entry this process has open and
    /// verified (or verified before and finds unchanged: a 64-byte header check, never a hash
    /// of the content). It never claims or fetches a span, never waits for a fetch or for
    /// another thread verifying an entry. `None` means "not (entirely) available that way":
    /// call `read_at`. `Some(Err(_))` only for a read `read_at` would refuse too (no such
    /// layer, offset past its end). Hits are counted as `read_at` counts them, and the read
    /// counts for readahead.
    ///
    /// Meant for a filesystem's request thread, so that reads of cached data never queue
    /// behind reads waiting on the network.
    pub fn read_cached(
        &self,
        layer: u32,
        offset: u64,
        buf: &mut [u8],
    ) -> Option<Result<usize, FetchError>> {
        self.shared.read_cached(layer, offset, buf, u64::MAX)
    }

    /// [`Fetcher::read_cached`] for a read of a file that ends at `file_end` of the layer's
    /// stream (see [`Fetcher::read_file_at`]).
    pub fn read_file_cached(
        &self,
        layer: u32,
        offset: u64,
        buf: &mut [u8],
        file_end: u64,
    ) -> Option<Result<usize, FetchError>> {
        self.shared.read_cached(layer, offset, buf, file_end)
    }

    /// Makes sure every span covering `range` of the layer's uncompressed stream is in the
    /// cache (fetching what is missing, coalesced, at the priority of a read), without copying
    /// bytes anywhere; returns once they are.
    pub fn fetch_range(&self, layer: u32, range: Range<u64>) -> Result<(), FetchError> {
        self.shared.fetch_range(layer, range)
    }

    /// Starts fetching `spans` — (layer, span index) pairs, a startup profile's spans in its
    /// order — in the background, coalescing neighbours, over the background workers in
    /// parallel, below reads and above readahead. Returns at once, with how many spans were
    /// queued (pairs that name no span are ignored). A read of a span in flight waits for that
    /// fetch; cached spans are skipped. See the `prefetch_*` counters.
    pub fn prefetch(&self, spans: &[(u32, usize)]) -> usize {
        self.shared.prefetch(spans)
    }

    /// How many of `spans` (layer, span) have no entry in the cache (entries are not verified
    /// here): whether replaying them needs any bytes at all. Spans the archive does not have,
    /// and empty ones, count as cached.
    pub fn uncached(&self, spans: &[(u32, usize)]) -> usize {
        self.shared.uncached(spans)
    }

    /// Starts fetching every span of the image not yet cached, at the lowest priority, at most
    /// `rate` bytes per second when given, so that the node stops needing the registry.
    /// Returns at once, with how many spans it covers; see `fill_total` and `fill_done`.
    /// Dropping the fetcher cancels it, also mid-pause.
    pub fn fill(&self, rate: Option<u64>) -> usize {
        self.shared.fill(rate)
    }

    /// Tells the fetcher that a request to its registry made elsewhere (a probe before
    /// mounting) failed with `error`: a transient failure starts an outage just as one of its
    /// own fetches would (announced once in the log); others are logged.
    pub fn note_registry_failure(&self, error: &clip_registry::RegistryError) {
        if let Some(l) = self.shared.layers.first() {
            self.shared.source_failed(l, error);
        }
    }

    /// Whether the registry is failing now with errors that pass (unreachable, 5xx): an
    /// outage, announced once in the log. Failures during it need no log line of their own.
    pub fn registry_unreachable(&self) -> bool {
        self.shared.in_outage()
    }

    /// Waits until no background fetch (readahead included) is queued or running and the cache
    /// eviction that writes may have started is over, at most `timeout`; returns whether that
    /// is the case. For warm-up and tests.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        self.shared.wait_idle(timeout)
    }

    /// The counters so far.
    pub fn stats(&self) -> FetchStats {
        self.shared.stats()
    }

    /// One cheap request (one byte of the first non-empty layer blob), so that a mount can fail
    /// early with a clear message when the registry is unreachable or refuses us.
    pub fn check_registry(&self) -> Result<(), FetchError> {
        self.shared.check_registry()
    }
}

impl Drop for Fetcher {
    fn drop(&mut self) {
        self.shared.shutdown();
    }
}
