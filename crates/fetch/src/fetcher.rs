//! The engine behind [`crate::Fetcher`]: what the fetcher's threads share, and its lifecycle.
//!
//! [`Shared`] holds the archive, the [`BlobSource`], the cache, the spans in flight, the
//! scheduler and the counters. Its behaviour is split by job across modules, each an `impl
//! Shared` block:
//!
//! - `read.rs`: the read path (`read_at`, `read_cached`, getting spans ready, copying out);
//! - `readahead.rs`: the readahead policy and readahead jobs;
//! - `prefetch.rs`: profile replay and the fill, and their counters;
//! - `run.rs`: fetch jobs: coalesced requests, split, decode, publish, claims completed;
//! - `stream.rs`: spans too large for memory, streamed into the cache;
//! - `decode.rs` (a pure function) and `queue.rs` (the scheduler) know nothing of `Shared`.
//!
//! This module owns creation and shutdown, the per-layer state, the counters and the error
//! reports that count (timeouts, verification failures).

use std::fs::File;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clip_archive::{Archive, Compression, SpanInfo};

use crate::cache::{Key, LayerCache, SpanCache};
use crate::prefetch::{Bucket, Marks};
use crate::queue::{Priority, Scheduler};
use crate::readahead::ReadaheadState;
use crate::run::Job;
use crate::source::BlobSource;
use crate::sync::{lock, Claim, Joined, SingleFlight};
use crate::{FetchError, FetchOptions, FetchStats, SpanRef};

/// Where a fetched span's verified bytes are.
#[derive(Clone, Debug)]
pub(crate) enum Ready {
    /// In a published cache entry (content at [`crate::cache::HEADER_LEN`]).
    File(Arc<File>),
    /// In memory, because the cache could not take it (disk full, read-only...).
    Memory(Arc<[u8]>),
}

/// What the readers of a span in flight get.
pub(crate) type FetchResult = Result<Ready, FetchError>;

/// The duty to fetch one span (see [`crate::sync::Claim`]).
pub(crate) type SpanClaim = Claim<Key, FetchResult>;

/// A claimed span, on its way to a worker.
pub(crate) struct Pending {
    pub(crate) span: SpanRef,
    pub(crate) claim: SpanClaim,
}

/// A layer as the fetcher sees it.
pub(crate) struct LayerState {
    pub(crate) index: u32,
    pub(crate) digest: Arc<str>,
    pub(crate) compression: Compression,
    pub(crate) compressed_size: u64,
    pub(crate) uncompressed_size: u64,
    /// Spans in its table.
    pub(crate) span_count: usize,
    /// Its entries in the span cache.
    pub(crate) cache: LayerCache,
    /// Where its sequential reads are.
    pub(crate) readahead: ReadaheadState,
    /// Which spans the profile replay fetched, and which of those were read.
    pub(crate) marks: Marks,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) registry_requests: AtomicU64,
    pub(crate) bytes_fetched: AtomicU64,
    pub(crate) window_bytes_fetched: AtomicU64,
    pub(crate) pack_bytes: AtomicU64,
    pub(crate) spans_fetched: AtomicU64,
    pub(crate) cache_hits: AtomicU64,
    pub(crate) cache_misses: AtomicU64,
    pub(crate) verify_failures: AtomicU64,
    pub(crate) fetch_errors: AtomicU64,
    pub(crate) readahead_spans: AtomicU64,
    pub(crate) timeouts: AtomicU64,
    pub(crate) cache_corrupt: AtomicU64,
    pub(crate) prefetch_spans: AtomicU64,
    pub(crate) prefetch_hits: AtomicU64,
    pub(crate) fill_total: AtomicU64,
    pub(crate) fill_done: AtomicU64,
}

pub(crate) fn bump(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// What the readers of a span get when its claim is dropped unfinished.
fn abandoned(l: &LayerState, span: usize) -> impl FnOnce(bool) -> FetchResult + Send + 'static {
    let digest = l.digest.clone();
    move |panicking| {
        let layer_digest = digest.to_string();
        Err(if panicking {
            FetchError::Panicked { layer_digest, span }
        } else {
            FetchError::Cancelled { layer_digest, span }
        })
    }
}

/// Everything the fetcher's threads share.
pub(crate) struct Shared {
    pub(crate) archive: Arc<Archive<'static>>,
    pub(crate) source: Arc<dyn BlobSource>,
    pub(crate) options: FetchOptions,
    pub(crate) layers: Vec<LayerState>,
    pub(crate) cache: SpanCache,
    pub(crate) flights: Arc<SingleFlight<Key, FetchResult>>,
    pub(crate) scheduler: Scheduler<Job>,
    pub(crate) counters: Counters,
    /// The fill's rate bound, once a fill was asked for with one.
    pub(crate) fill_rate: Mutex<Option<Bucket>>,
    /// Since when the source has been failing with transient errors (an outage, announced
    /// once in the log), if it is.
    pub(crate) outage: Mutex<Option<Instant>>,
    /// Test hook: makes every fetch run panic.
    #[cfg(test)]
    pub(crate) panic_in_fetch: std::sync::atomic::AtomicBool,
}

impl Shared {
    pub(crate) fn start(
        archive: Arc<Archive<'static>>,
        source: Arc<dyn BlobSource>,
        mut options: FetchOptions,
    ) -> Result<Arc<Shared>, FetchError> {
        options.workers = options.workers.max(1);
        options.max_request_bytes = options.max_request_bytes.max(1);
        let cache = SpanCache::open(&options.cache)?;
        let mut layers = Vec::with_capacity(archive.layers().len());
        for (i, info) in archive.layers().iter().enumerate() {
            let index =
                u32::try_from(i).map_err(|_| clip_archive::ArchiveError::NoSuchLayer(u32::MAX))?;
            let span_count = archive.spans(index)?.len();
            let layer_cache = cache
                .layer(index, &info.digest, span_count)
                .ok_or_else(|| FetchError::InvalidLayerDigest {
                    layer: index,
                    digest: info.digest.clone(),
                })?;
            layers.push(LayerState {
                index,
                digest: Arc::from(info.digest.as_str()),
                compression: info.compression,
                compressed_size: info.compressed_size,
                uncompressed_size: info.uncompressed_size,
                span_count,
                cache: layer_cache,
                readahead: ReadaheadState::default(),
                marks: Marks::new(span_count),
            });
        }
        let workers = options.workers;
        let shared = Arc::new(Shared {
            archive,
            source,
            options,
            layers,
            cache,
            flights: Arc::new(SingleFlight::default()),
            scheduler: Scheduler::new(workers),
            counters: Counters::default(),
            fill_rate: Mutex::new(None),
            outage: Mutex::new(None),
            #[cfg(test)]
            panic_in_fetch: std::sync::atomic::AtomicBool::new(false),
        });
        for n in 0..workers {
            let worker = shared.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("clip-fetch-{n}"))
                .spawn(move || {
                    worker
                        .scheduler
                        .work(|job, priority| worker.run_job(job, priority))
                });
            if let Err(e) = spawned {
                shared.shutdown();
                return Err(FetchError::Thread(Arc::new(e)));
            }
        }
        Ok(shared)
    }

    /// Stops the workers after their current job; queued jobs are dropped (their claims wake
    /// their waiters with `Cancelled`).
    pub(crate) fn shutdown(&self) {
        self.scheduler.shutdown();
    }

    pub(crate) fn layer(&self, layer: u32) -> Result<&LayerState, FetchError> {
        usize::try_from(layer)
            .ok()
            .and_then(|i| self.layers.get(i))
            .ok_or_else(|| clip_archive::ArchiveError::NoSuchLayer(layer).into())
    }

    /// When a read asked for at `since` must be over.
    pub(crate) fn deadline(&self, since: Instant) -> Instant {
        since
            .checked_add(self.options.read_timeout)
            .or_else(|| since.checked_add(Duration::from_secs(86_400 * 365)))
            .unwrap_or(since)
    }

    /// Claims span `span` of layer `l`, or joins the fetch under way. A claim dropped
    /// unfinished fails its waiters with `Cancelled` (or `Panicked` while unwinding).
    pub(crate) fn join(&self, l: &LayerState, span: usize) -> Joined<Key, FetchResult> {
        self.flights.join((l.index, span), abandoned(l, span))
    }

    /// Claims span `span` of layer `l` only if nobody is fetching it.
    pub(crate) fn try_claim(&self, l: &LayerState, span: usize) -> Option<SpanClaim> {
        self.flights.try_claim((l.index, span), abandoned(l, span))
    }

    /// Hands fetch work to the workers at `priority` (dropped, which cancels its claims, when
    /// the fetcher is shutting down or the queue of that priority is full).
    pub(crate) fn submit(&self, priority: Priority, job: Job, max_queued: usize) {
        self.scheduler.submit(priority, job, max_queued);
    }

    pub(crate) fn stats(&self) -> FetchStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        FetchStats {
            registry_requests: get(&c.registry_requests),
            bytes_fetched: get(&c.bytes_fetched),
            window_bytes_fetched: get(&c.window_bytes_fetched),
            pack_bytes: get(&c.pack_bytes),
            spans_fetched: get(&c.spans_fetched),
            cache_hits: get(&c.cache_hits),
            cache_misses: get(&c.cache_misses),
            verify_failures: get(&c.verify_failures),
            fetch_errors: get(&c.fetch_errors),
            readahead_spans: get(&c.readahead_spans),
            timeouts: get(&c.timeouts),
            cache_corrupt: get(&c.cache_corrupt),
            prefetch_spans: get(&c.prefetch_spans),
            prefetch_hits: get(&c.prefetch_hits),
            prefetch_wasted: get(&c.prefetch_spans).saturating_sub(get(&c.prefetch_hits)),
            fill_total: get(&c.fill_total),
            fill_done: get(&c.fill_done),
        }
    }

    /// Waits until no background job is queued or running and the evictor is idle, at most
    /// `timeout`.
    pub(crate) fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = Instant::now().checked_add(timeout);
        self.scheduler.wait_idle(deadline) && self.cache.wait_evictor_idle(deadline)
    }

    /// A fetch from the source failed with `e`. A transient failure starts an outage,
    /// announced once; until the source answers again, further ones are logged at debug
    /// level only. Other failures are reported each time.
    pub(crate) fn source_failed(&self, l: &LayerState, e: &clip_registry::RegistryError) {
        if !e.is_transient() {
            tracing::warn!(layer = %l.digest, error = %e, "span fetch failed");
            return;
        }
        let started = {
            let mut outage = lock(&self.outage);
            let started = outage.is_none();
            outage.get_or_insert_with(Instant::now);
            started
        };
        if started {
            tracing::warn!(error = %e, timeout = ?self.options.read_timeout,
                "the registry cannot be reached: reads of data not in the cache fail once their \
                 time is up, until it is back (cached data is served)");
        } else {
            tracing::debug!(layer = %l.digest, error = %e, "fetch failed: the registry is still unreachable");
        }
    }

    /// A fetch from the source succeeded: an outage is over.
    pub(crate) fn source_ok(&self) {
        if let Some(since) = lock(&self.outage).take() {
            tracing::info!(after = ?since.elapsed(), "the registry is reachable again");
        }
    }

    /// Whether the source is failing now (an outage).
    pub(crate) fn in_outage(&self) -> bool {
        lock(&self.outage).is_some()
    }

    /// A read gave up waiting for span `span`.
    pub(crate) fn timed_out(&self, l: &LayerState, span: usize) -> FetchError {
        bump(&self.counters.timeouts, 1);
        if self.in_outage() {
            tracing::debug!(layer = %l.digest, span, "read timed out: the registry is unreachable");
        } else {
            tracing::warn!(layer = %l.digest, span, timeout = ?self.options.read_timeout,
                "read timed out waiting for a span");
        }
        FetchError::Timeout {
            layer_digest: l.digest.to_string(),
            span,
            after: self.options.read_timeout,
        }
    }

    /// Bytes of span `i` that did not verify (compressed digest `found`): counted, logged,
    /// mirrors distrusted, never used.
    pub(crate) fn digest_mismatch(
        &self,
        l: &LayerState,
        i: usize,
        info: &SpanInfo,
        found: [u8; 32],
    ) -> FetchError {
        bump(&self.counters.verify_failures, 1);
        if self.source.distrust_mirrors() {
            tracing::warn!(layer = %l.digest, span = i,
                "bytes that did not verify may have come from a mirror: reading from the registry itself for a while");
        }
        let expected = hex::encode(info.digest);
        let found = hex::encode(found);
        tracing::error!(layer = %l.digest, span = i, %expected, %found,
            "span digest mismatch: the registry sent other bytes than the index names; refusing them");
        FetchError::DigestMismatch {
            layer_digest: l.digest.to_string(),
            span: i,
            expected,
            found,
        }
    }

    /// A span decoded to other bytes than the index records: counted and logged, never served.
    pub(crate) fn content_mismatch(&self, l: &LayerState, error: FetchError) -> FetchError {
        bump(&self.counters.verify_failures, 1);
        tracing::error!(layer = %l.digest, error = %error,
            "span content mismatch: refusing the decoded bytes");
        error
    }

    /// The decompression window of a span (gzip checkpoints), empty when it has none: from
    /// the archive, or from `fetched` (the windows of its run read from the index blob: the
    /// range they start at and the bytes), verified against the span's window digest.
    pub(crate) fn window(
        &self,
        l: &LayerState,
        span: &SpanRef,
        fetched: Option<&(u64, Vec<u8>)>,
    ) -> Result<Vec<u8>, FetchError> {
        if !span.info.has_window {
            return Ok(Vec::new());
        }
        if self.archive.has_windows() {
            return Ok(self.archive.window(l.index, span.index)?);
        }
        let (Some(w), Some((start, bytes))) =
            (self.archive.window_ref(l.index, span.index)?, fetched)
        else {
            return Err(clip_archive::ArchiveError::WindowsAbsent.into());
        };
        let packed = w
            .offset
            .checked_sub(*start)
            .and_then(|at| usize::try_from(at).ok())
            .and_then(|at| bytes.get(at..)?.get(..usize::try_from(w.len).ok()?))
            .unwrap_or_default();
        match w.unpack(packed) {
            Ok(window) => Ok(window),
            Err(clip_archive::ArchiveError::WindowMismatch { .. }) => {
                bump(&self.counters.verify_failures, 1);
                if self.source.distrust_mirrors() {
                    tracing::warn!(layer = %l.digest, span = span.index,
                        "bytes that did not verify may have come from a mirror: reading from the registry itself for a while");
                }
                let blob = self.options.windows_blob.clone().unwrap_or_default();
                tracing::error!(layer = %l.digest, span = span.index, index_blob = %blob,
                    "seek window digest mismatch: the registry sent other bytes than the index names; refusing them");
                Err(FetchError::WindowMismatch {
                    index_blob: blob,
                    layer_digest: l.digest.to_string(),
                    span: span.index,
                })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The range of the index blob that holds the windows of `spans` (neighbours, in order),
    /// when the archive does not: `None` when it does or none of them has one.
    pub(crate) fn windows_range(
        &self,
        l: &LayerState,
        spans: impl Iterator<Item = usize>,
    ) -> Option<(String, std::ops::Range<u64>)> {
        if self.archive.has_windows() {
            return None;
        }
        let blob = self.options.windows_blob.as_ref()?;
        let mut range: Option<std::ops::Range<u64>> = None;
        for i in spans {
            if let Ok(Some(w)) = self.archive.window_ref(l.index, i) {
                let end = w.offset.saturating_add(u64::from(w.len));
                range = Some(match range {
                    Some(r) => r.start.min(w.offset)..r.end.max(end),
                    None => w.offset..end,
                });
            }
        }
        // Windows follow each other in span order without gaps (checked at open): the range
        // of a run's windows is the sum of their lengths.
        range.map(|r| (blob.clone(), r))
    }

    pub(crate) fn check_registry(&self) -> Result<(), FetchError> {
        let Some(l) = self.layers.iter().find(|l| l.compressed_size > 0) else {
            return Ok(());
        };
        bump(&self.counters.registry_requests, 1);
        let bytes = self
            .source
            .read_range(&l.digest, 0..1)
            .map_err(|e| FetchError::Registry {
                layer_digest: l.digest.to_string(),
                span: None,
                error: Arc::new(e),
            })?;
        bump(&self.counters.bytes_fetched, bytes.len() as u64);
        Ok(())
    }
}
