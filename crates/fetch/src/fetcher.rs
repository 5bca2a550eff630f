//! The engine behind [`crate::Fetcher`]: span mapping, the read path, background workers,
//! coalesced fetches, verification and decoding.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{self, Read};
use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use clip_archive::{Archive, Compression, SpanInfo};
use clip_registry::{Client, Reference, RegistryError};
use sha2::{Digest as _, Sha256};

use crate::cache::{Check, LayerCache, Lookup, SpanCache};
use crate::flight::{Claim, Claimed, Flight, Flights, Ready};
use crate::{FetchError, FetchOptions, FetchStats};

/// zstd and uncompressed spans larger than this (uncompressed) are streamed into the cache
/// instead of being decoded in memory.
const MAX_BUFFERED_OUTPUT: u64 = 16 << 20;
/// gzip spans are inflated in memory (the checkpoint API works on whole buffers); larger ones
/// are refused rather than allocated.
const MAX_GZIP_SPAN: u64 = 256 << 20;
/// Copy buffer of the streaming path.
const STREAM_CHUNK: usize = 128 * 1024;
/// First pause before a read tries a failed fetch again (then doubled, up to the next).
const RETRY_PAUSE: Duration = Duration::from_millis(100);
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(2);
/// Readahead requests beyond this many queued are dropped (readahead is a hint).
const MAX_QUEUED_READAHEAD: usize = 64;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A layer as the fetcher sees it.
struct LayerState {
    index: u32,
    digest: Arc<str>,
    compression: Compression,
    compressed_size: u64,
    uncompressed_size: u64,
    /// Spans in its table.
    span_count: usize,
    /// Its entries in the span cache.
    cache: LayerCache,
    /// Where the last read of this layer ended (`u64::MAX` before the first).
    last_end: AtomicU64,
    /// First span not yet handed to readahead.
    readahead_next: AtomicUsize,
}

fn span_len(info: &SpanInfo) -> u64 {
    info.uncompressed_end - info.uncompressed_offset
}

/// Work for the background threads.
enum Job {
    /// Fetch these claimed, neighbouring spans (one Range request when they fit).
    Fetch {
        layer: u32,
        claims: Vec<(SpanInfo, Claim)>,
        readahead: bool,
    },
    /// Fetch whatever of these spans is neither cached nor under way.
    Readahead { layer: u32, spans: Range<usize> },
}

/// The jobs waiting for a worker, and what the workers are doing.
///
/// **Readahead never starves demand.** At most `workers - 1` readahead jobs run at once: one
/// worker is always left for demand jobs (fetches a reader waits for), so a demand job never
/// waits for a readahead fetch to end, however slow or stalled the registry is for it. (It may
/// wait for other demand jobs: that is what the worker count bounds.) With a single worker
/// there is no readahead at all (see [`Shared::note_access`]). A readahead job also claims its
/// spans one run at a time, right before fetching that run, so that a reader wanting a later
/// span of the job fetches it itself rather than waiting behind the job's earlier runs.
#[derive(Default)]
struct Queue {
    demand: VecDeque<Job>,
    readahead: VecDeque<Job>,
    /// Jobs being run by workers.
    running: usize,
    /// Readahead jobs among them.
    running_readahead: usize,
    /// Worker threads.
    workers: usize,
    shutdown: bool,
}

impl Queue {
    fn new(workers: usize) -> Queue {
        Queue {
            workers,
            ..Queue::default()
        }
    }

    fn is_idle(&self) -> bool {
        self.demand.is_empty() && self.readahead.is_empty() && self.running == 0
    }

    /// The job a free worker takes next (and whether it is readahead), counted as running:
    /// demand first; readahead only while another worker stays free for demand.
    fn next_job(&mut self) -> Option<(Job, bool)> {
        if let Some(job) = self.demand.pop_front() {
            self.running += 1;
            return Some((job, false));
        }
        if self.running_readahead + 1 < self.workers {
            if let Some(job) = self.readahead.pop_front() {
                self.running += 1;
                self.running_readahead += 1;
                return Some((job, true));
            }
        }
        None
    }

    /// A job taken by [`Queue::next_job`] is over.
    fn job_done(&mut self, readahead: bool) {
        self.running = self.running.saturating_sub(1);
        if readahead {
            self.running_readahead = self.running_readahead.saturating_sub(1);
        }
    }
}

#[derive(Default)]
struct Counters {
    registry_requests: AtomicU64,
    bytes_fetched: AtomicU64,
    spans_fetched: AtomicU64,
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
    verify_failures: AtomicU64,
    fetch_errors: AtomicU64,
    readahead_spans: AtomicU64,
    timeouts: AtomicU64,
    cache_corrupt: AtomicU64,
}

fn bump(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// Everything the fetcher's threads share.
pub(crate) struct Shared {
    archive: Arc<Archive<'static>>,
    client: Client,
    reference: Reference,
    options: FetchOptions,
    layers: Vec<LayerState>,
    cache: SpanCache,
    flights: Arc<Flights>,
    queue: Mutex<Queue>,
    queue_ready: Condvar,
    /// Notified when the queue becomes idle.
    queue_idle: Condvar,
    counters: Counters,
    /// Test hook: makes every fetch run panic.
    #[cfg(test)]
    panic_in_fetch: std::sync::atomic::AtomicBool,
}

/// What [`Shared::lookup_cached`] found.
enum Cached {
    /// A verified entry.
    Ready(Ready),
    /// Nothing usable: fetch the span.
    Miss,
    /// Another thread is verifying the entry and the caller could not wait (any longer).
    Busy,
}

/// One span a read touches.
struct Part {
    span: usize,
    info: SpanInfo,
}

impl Shared {
    pub(crate) fn start(
        archive: Arc<Archive<'static>>,
        client: Client,
        reference: Reference,
        mut options: FetchOptions,
    ) -> Result<Arc<Shared>, FetchError> {
        options.workers = options.workers.max(1);
        options.max_request_bytes = options.max_request_bytes.max(1);
        let cache = SpanCache::open(&options.cache)?;
        let mut layers = Vec::with_capacity(archive.layers().len());
        for (i, info) in archive.layers().iter().enumerate() {
            let index =
                u32::try_from(i).map_err(|_| clip_archive::ArchiveError::NoSuchLayer(u32::MAX))?;
            let spans = archive.spans(index)?;
            let layer_cache = cache
                .layer(index, &info.digest, spans.len())
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
                span_count: spans.len(),
                cache: layer_cache,
                last_end: AtomicU64::new(u64::MAX),
                readahead_next: AtomicUsize::new(0),
            });
        }
        let workers = options.workers;
        let shared = Arc::new(Shared {
            archive,
            client,
            reference,
            options,
            layers,
            cache,
            flights: Arc::new(Flights::default()),
            queue: Mutex::new(Queue::new(workers)),
            queue_ready: Condvar::new(),
            queue_idle: Condvar::new(),
            counters: Counters::default(),
            #[cfg(test)]
            panic_in_fetch: std::sync::atomic::AtomicBool::new(false),
        });
        for n in 0..shared.options.workers {
            let worker = shared.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("clip-fetch-{n}"))
                .spawn(move || worker.work());
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
        let dropped = {
            let mut q = lock(&self.queue);
            q.shutdown = true;
            let mut jobs: Vec<Job> = q.demand.drain(..).collect();
            jobs.extend(q.readahead.drain(..));
            jobs
        };
        self.queue_ready.notify_all();
        self.queue_idle.notify_all();
        drop(dropped);
    }

    fn layer(&self, layer: u32) -> Result<&LayerState, FetchError> {
        usize::try_from(layer)
            .ok()
            .and_then(|i| self.layers.get(i))
            .ok_or_else(|| clip_archive::ArchiveError::NoSuchLayer(layer).into())
    }

    /// When a read asked for at `since` must be over.
    fn deadline(&self, since: Instant) -> Instant {
        since
            .checked_add(self.options.read_timeout)
            .or_else(|| since.checked_add(Duration::from_secs(86_400 * 365)))
            .unwrap_or(since)
    }

    pub(crate) fn stats(&self) -> FetchStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        FetchStats {
            registry_requests: get(&c.registry_requests),
            bytes_fetched: get(&c.bytes_fetched),
            spans_fetched: get(&c.spans_fetched),
            cache_hits: get(&c.cache_hits),
            cache_misses: get(&c.cache_misses),
            verify_failures: get(&c.verify_failures),
            fetch_errors: get(&c.fetch_errors),
            readahead_spans: get(&c.readahead_spans),
            timeouts: get(&c.timeouts),
            cache_corrupt: get(&c.cache_corrupt),
        }
    }

    /// The spans covering `[start, end)` (`start < end <= size`), in order.
    fn map_spans(
        &self,
        l: &LayerState,
        start: u64,
        end: u64,
    ) -> Result<Vec<(usize, SpanInfo)>, FetchError> {
        let table = self.archive.spans(l.index)?;
        let mut out = Vec::new();
        let mut pos = start;
        while pos < end {
            let corrupt = |detail: String| -> FetchError {
                clip_archive::ArchiveError::Corrupt {
                    section: "spans",
                    detail: format!("layer {}: {detail}", l.index),
                }
                .into()
            };
            let i = table
                .find(pos)
                .ok_or_else(|| corrupt(format!("no span covers uncompressed offset {pos}")))?;
            let info = table.get(i)?;
            if !(info.uncompressed_offset <= pos && pos < info.uncompressed_end) {
                return Err(corrupt(format!(
                    "span {i} ({}..{}) was found for offset {pos}",
                    info.uncompressed_offset, info.uncompressed_end
                )));
            }
            out.push((i, info));
            pos = info.uncompressed_end;
        }
        Ok(out)
    }

    pub(crate) fn read_at(
        &self,
        layer: u32,
        offset: u64,
        buf: &mut [u8],
        since: Instant,
    ) -> Result<usize, FetchError> {
        let l = self.layer(layer)?;
        let size = l.uncompressed_size;
        if offset > size {
            return Err(FetchError::OutOfRange {
                layer,
                offset,
                size,
            });
        }
        let len = (buf.len() as u64).min(size - offset);
        if len == 0 {
            return Ok(0);
        }
        let end = offset + len;
        let spans = self.map_spans(l, offset, end)?;
        if let Some(&(last, _)) = spans.last() {
            self.note_access(l, offset, end, last);
        }
        let deadline = self.deadline(since);
        let mut retried = false;
        let mut refetched = false;
        let mut pause = RETRY_PAUSE;
        loop {
            let (parts, readies) = match self.obtain(l, &spans, deadline) {
                Ok(ready) => ready,
                // Bytes that did not verify may have come from a mirror: with the mirrors now
                // out of use, fetch once more, from the registry itself.
                Err(FetchError::DigestMismatch { .. })
                    if !refetched && self.client.has_mirrors(&self.reference) =>
                {
                    refetched = true;
                    continue;
                }
                // The registry failed for now: within the read's budget, try again (the
                // client's own retries are over for that fetch).
                Err(e) if e.is_transient() && Instant::now() + pause < deadline => {
                    tracing::debug!(layer = %l.digest, error = %e, "fetch failed; trying again within the read's budget");
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(MAX_RETRY_PAUSE);
                    continue;
                }
                Err(e) => return Err(e),
            };
            match self.copy_out(l, &parts, &readies, offset, end, buf) {
                Ok(()) => return Ok(len as usize),
                // A cache file went bad under us (written to, or truncated, by someone): it was
                // invalidated, so one more round verifies it again or fetches the span again.
                Err(e) if !retried => {
                    tracing::warn!(layer = %l.digest, error = %e, "cached span unusable; checking it again");
                    retried = true;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// [`crate::Fetcher::read_cached`]: serves the read only when every span it needs is open
    /// already, or reopens without hashing (see [`Check::Cheap`]). Never claims, fetches,
    /// waits for a flight or another thread's verification, nor hashes an entry.
    pub(crate) fn read_cached(
        &self,
        layer: u32,
        offset: u64,
        buf: &mut [u8],
    ) -> Option<Result<usize, FetchError>> {
        let l = match self.layer(layer) {
            Ok(l) => l,
            Err(e) => return Some(Err(e)),
        };
        let size = l.uncompressed_size;
        if offset > size {
            return Some(Err(FetchError::OutOfRange {
                layer,
                offset,
                size,
            }));
        }
        let len = (buf.len() as u64).min(size - offset);
        if len == 0 {
            return Some(Ok(0));
        }
        let end = offset + len;
        let spans = match self.map_spans(l, offset, end) {
            Ok(spans) => spans,
            Err(e) => return Some(Err(e)),
        };
        let mut parts = Vec::with_capacity(spans.len());
        let mut readies = Vec::with_capacity(spans.len());
        for &(i, info) in &spans {
            match self.lookup_cached(l, i, &info, Check::Cheap) {
                Cached::Ready(r) => {
                    parts.push(Part { span: i, info });
                    readies.push(r);
                }
                Cached::Miss | Cached::Busy => return None,
            }
        }
        if let Err(e) = self.copy_out(l, &parts, &readies, offset, end, buf) {
            // The entry was dropped: `read_at` fetches the span again.
            tracing::warn!(layer = %l.digest, error = %e, "cached span unreadable");
            return None;
        }
        bump(&self.counters.cache_hits, parts.len() as u64);
        // A read served here counts for readahead like any other: a sequential reader of
        // read-ahead spans keeps the window moving.
        if let Some(&(last, _)) = spans.last() {
            self.note_access(l, offset, end, last);
        }
        Some(Ok(len as usize))
    }

    fn copy_out(
        &self,
        l: &LayerState,
        parts: &[Part],
        readies: &[Ready],
        offset: u64,
        end: u64,
        buf: &mut [u8],
    ) -> Result<(), FetchError> {
        for (part, ready) in parts.iter().zip(readies) {
            let info = &part.info;
            let from = offset.max(info.uncompressed_offset);
            let to = end.min(info.uncompressed_end);
            let dst = &mut buf[(from - offset) as usize..(to - offset) as usize];
            let rel = from - info.uncompressed_offset;
            match ready {
                Ready::File(file) => {
                    if let Err(e) = l.cache.read(part.span, file, dst, rel) {
                        l.cache.invalidate(part.span);
                        return Err(FetchError::cache(l.cache.path(info), e));
                    }
                }
                Ready::Memory(bytes) => {
                    let src = usize::try_from(rel)
                        .ok()
                        .and_then(|r| bytes.get(r..r + dst.len()))
                        .ok_or(FetchError::LengthMismatch {
                            layer_digest: l.digest.to_string(),
                            span: part.span,
                            expected: span_len(info),
                            found: bytes.len() as u64,
                        })?;
                    dst.copy_from_slice(src);
                }
            }
        }
        Ok(())
    }

    /// Remembers where reads of a layer end and schedules readahead for sequential ones.
    fn note_access(&self, l: &LayerState, offset: u64, end: u64, last_span: usize) {
        let ahead = self.options.readahead_spans;
        // Readahead needs a worker of its own besides the one kept for demand (see `Queue`).
        if ahead == 0 || self.options.workers < 2 {
            return;
        }
        let previous_end = l.last_end.swap(end, Ordering::Relaxed);
        if previous_end != offset {
            l.readahead_next.store(0, Ordering::Relaxed);
            return;
        }
        // Top the window up only when half of it is used, so that readahead fetches come in
        // batches (coalesced into fewer requests) rather than one span at a time.
        let next = l.readahead_next.load(Ordering::Relaxed);
        if next.saturating_sub(last_span + 1) > ahead / 2 {
            return;
        }
        let from = (last_span + 1).max(next);
        let to = last_span
            .saturating_add(1)
            .saturating_add(ahead)
            .min(l.span_count);
        if from >= to {
            return;
        }
        l.readahead_next.fetch_max(to, Ordering::Relaxed);
        let mut q = lock(&self.queue);
        if q.shutdown || q.readahead.len() >= MAX_QUEUED_READAHEAD {
            return;
        }
        q.readahead.push_back(Job::Readahead {
            layer: l.index,
            spans: from..to,
        });
        drop(q);
        self.queue_ready.notify_one();
    }

    /// Gets every span of a read ready: from the cache, or by claiming and fetching it, or by
    /// waiting for whoever is fetching it.
    fn obtain(
        &self,
        l: &LayerState,
        spans: &[(usize, SpanInfo)],
        deadline: Instant,
    ) -> Result<(Vec<Part>, Vec<Ready>), FetchError> {
        let mut parts = Vec::with_capacity(spans.len());
        let mut ready: Vec<Option<Ready>> = Vec::with_capacity(spans.len());
        let mut waits: Vec<(usize, usize, Arc<Flight>)> = Vec::new();
        let mut run: Vec<(SpanInfo, Claim)> = Vec::new();
        for (k, &(i, info)) in spans.iter().enumerate() {
            match self.lookup_cached(l, i, &info, Check::Full { until: deadline }) {
                Cached::Ready(r) => {
                    bump(&self.counters.cache_hits, 1);
                    parts.push(Part { span: i, info });
                    ready.push(Some(r));
                    self.submit(l, &mut run, false);
                    continue;
                }
                Cached::Busy => {
                    // Another reader's verification of the entry outlasted our deadline.
                    // What was claimed is fetched all the same (others may wait for it).
                    self.submit(l, &mut run, false);
                    return Err(self.timed_out(l, i));
                }
                Cached::Miss => {}
            }
            bump(&self.counters.cache_misses, 1);
            parts.push(Part { span: i, info });
            ready.push(None);
            match self.flights.claim((l.index, i), &l.digest) {
                Claimed::Owner(claim) => {
                    waits.push((k, i, claim.flight()));
                    if !self.can_join(l, &run, i, &info) {
                        self.submit(l, &mut run, false);
                    }
                    run.push((info, claim));
                }
                Claimed::Waiter(flight) => {
                    waits.push((k, i, flight));
                    self.submit(l, &mut run, false);
                }
            }
        }
        self.submit(l, &mut run, false);
        for (k, span, flight) in waits {
            match flight.wait(deadline) {
                Some(Ok(r)) => ready[k] = Some(r),
                Some(Err(e)) => return Err(e),
                None => return Err(self.timed_out(l, span)),
            }
        }
        let readies = ready.into_iter().flatten().collect::<Vec<_>>();
        if readies.len() != parts.len() {
            // Unreachable: every part was filled by a hit or a wait.
            return Err(FetchError::Cancelled {
                layer_digest: l.digest.to_string(),
                span: parts.first().map_or(0, |p| p.span),
            });
        }
        Ok((parts, readies))
    }

    /// Whether span `i` can join `run` in one Range request.
    fn can_join(
        &self,
        l: &LayerState,
        run: &[(SpanInfo, Claim)],
        i: usize,
        info: &SpanInfo,
    ) -> bool {
        let (Some((first, _)), Some((last, last_claim))) = (run.first(), run.last()) else {
            return false;
        };
        last_claim.span().checked_add(1) == Some(i)
            && !self.streams(l, first)
            && !self.streams(l, last)
            && !self.streams(l, info)
            && info
                .compressed_end
                .max(last.compressed_end)
                .saturating_sub(first.compressed_offset)
                <= self.options.max_request_bytes
    }

    /// Whether a span is streamed into the cache rather than decoded in memory.
    fn streams(&self, l: &LayerState, info: &SpanInfo) -> bool {
        l.compression != Compression::Gzip
            && (span_len(info) > MAX_BUFFERED_OUTPUT
                || info.compressed_end - info.compressed_offset > self.options.max_request_bytes)
    }

    /// Hands a run of claims to the workers.
    fn submit(&self, l: &LayerState, run: &mut Vec<(SpanInfo, Claim)>, readahead: bool) {
        if run.is_empty() {
            return;
        }
        let claims = std::mem::take(run);
        let job = Job::Fetch {
            layer: l.index,
            claims,
            readahead,
        };
        let mut q = lock(&self.queue);
        if q.shutdown {
            return; // dropping the job cancels its claims
        }
        q.demand.push_back(job);
        drop(q);
        self.queue_ready.notify_one();
    }

    /// A verified cache entry for the span, if there is one (`check`: see [`Check`]).
    fn lookup_cached(&self, l: &LayerState, i: usize, info: &SpanInfo, check: Check) -> Cached {
        match l.cache.lookup(i, info, check) {
            Lookup::Hit(file) => Cached::Ready(Ready::File(file)),
            Lookup::Miss => Cached::Miss,
            Lookup::Busy => Cached::Busy,
            Lookup::Corrupt(problem) => {
                bump(&self.counters.cache_corrupt, 1);
                tracing::error!(layer = %l.digest, span = i, path = %l.cache.path(info).display(),
                    %problem, "corrupt cache entry; fetching the span again");
                Cached::Miss
            }
        }
    }

    /// A cached entry for the span that is ready to use right now, if any: a worker that
    /// holds the span's claim looks (another thread verifying it counts as a miss).
    fn cached_now(&self, l: &LayerState, i: usize, info: &SpanInfo) -> Option<Ready> {
        match self.lookup_cached(
            l,
            i,
            info,
            Check::Full {
                until: Instant::now(),
            },
        ) {
            Cached::Ready(r) => Some(r),
            Cached::Miss | Cached::Busy => None,
        }
    }

    /// A read gave up waiting for span `span`.
    fn timed_out(&self, l: &LayerState, span: usize) -> FetchError {
        bump(&self.counters.timeouts, 1);
        tracing::warn!(layer = %l.digest, span, timeout = ?self.options.read_timeout,
            "read timed out waiting for a span");
        FetchError::Timeout {
            layer_digest: l.digest.to_string(),
            span,
            after: self.options.read_timeout,
        }
    }

    fn window(&self, l: &LayerState, i: usize, info: &SpanInfo) -> Result<Vec<u8>, FetchError> {
        if info.has_window {
            Ok(self.archive.window(l.index, i)?)
        } else {
            Ok(Vec::new())
        }
    }

    pub(crate) fn prefetch(&self, layer: u32, range: Range<u64>) -> Result<(), FetchError> {
        let l = self.layer(layer)?;
        let end = range.end.min(l.uncompressed_size);
        if range.start >= end {
            return Ok(());
        }
        let spans = self.map_spans(l, range.start, end)?;
        let deadline = self.deadline(Instant::now());
        // In batches, so that a huge range does not claim (and queue) everything at once.
        for batch in spans.chunks(64) {
            self.obtain(l, batch, deadline)?;
        }
        Ok(())
    }

    pub(crate) fn check_registry(&self) -> Result<(), FetchError> {
        let Some(l) = self.layers.iter().find(|l| l.compressed_size > 0) else {
            return Ok(());
        };
        bump(&self.counters.registry_requests, 1);
        let bytes = self
            .client
            .fetch_range(&self.reference, &l.digest, 0..1)
            .map_err(|e| FetchError::Registry {
                layer_digest: l.digest.to_string(),
                span: None,
                error: Arc::new(e),
            })?;
        bump(&self.counters.bytes_fetched, bytes.len() as u64);
        Ok(())
    }

    // ---- background workers -------------------------------------------------------------

    fn work(self: Arc<Self>) {
        loop {
            let (job, readahead) = {
                let mut q = lock(&self.queue);
                loop {
                    if q.shutdown {
                        return;
                    }
                    if let Some(next) = q.next_job() {
                        break next;
                    }
                    q = self.queue_ready.wait(q).unwrap_or_else(|p| p.into_inner());
                }
            };
            // Counted as running until it is over, even if it unwinds.
            let _running = Running {
                shared: &self,
                readahead,
            };
            // A panic (a bug) must not take the worker with it: the job's claims are dropped
            // while unwinding, which fails them (their readers get `FetchError::Panicked`), and
            // the worker goes on with the next job.
            if let Err(panic) = catch_unwind(AssertUnwindSafe(|| self.run_job(job))) {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "(not a string)".to_string());
                tracing::error!(panic = %message, readahead,
                    "a fetch job panicked; its spans failed, the worker goes on");
            }
        }
    }

    fn is_shutdown(&self) -> bool {
        lock(&self.queue).shutdown
    }

    /// Waits until no background job is queued or running, at most `timeout`.
    pub(crate) fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = Instant::now().checked_add(timeout);
        self.wait_queue_idle(deadline) && self.cache.wait_evictor_idle(deadline)
    }

    fn wait_queue_idle(&self, deadline: Option<Instant>) -> bool {
        let mut q = lock(&self.queue);
        while !q.is_idle() && !q.shutdown {
            let now = Instant::now();
            let left = match deadline {
                Some(d) if d <= now => return false,
                Some(d) => d - now,
                None => Duration::from_secs(3600),
            };
            q = self
                .queue_idle
                .wait_timeout(q, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        q.is_idle()
    }

    fn run_job(&self, job: Job) {
        match job {
            Job::Fetch {
                layer,
                claims,
                readahead,
            } => {
                let Ok(l) = self.layer(layer) else {
                    return; // claims dropped: waiters see Cancelled
                };
                // A fetch that finished between the reader's cache lookup and its claim has
                // published the span already: take it from the cache.
                let mut runs: Vec<Vec<(SpanInfo, Claim)>> = vec![Vec::new()];
                for (info, claim) in claims {
                    if let Some(r) = self.cached_now(l, claim.span(), &info) {
                        claim.complete(Ok(r));
                        runs.push(Vec::new());
                    } else if let Some(run) = runs.last_mut() {
                        run.push((info, claim));
                    }
                }
                for run in runs.into_iter().filter(|r| !r.is_empty()) {
                    self.fetch_run(l, run, readahead);
                }
            }
            Job::Readahead { layer, spans } => {
                let Ok(l) = self.layer(layer) else {
                    return;
                };
                // Claims are taken for one run at a time, right before it is fetched: a span
                // further on is not held (with readers waiting on it) while earlier runs are
                // fetched; a reader that wants it meanwhile fetches it itself.
                let Ok(table) = self.archive.spans(layer) else {
                    return;
                };
                let mut run: Vec<(SpanInfo, Claim)> = Vec::new();
                for i in spans {
                    if self.is_shutdown() {
                        return; // claims of `run` dropped: Cancelled
                    }
                    let Ok(info) = table.get(i) else {
                        break;
                    };
                    if span_len(&info) == 0 || l.cache.exists(i, &info) {
                        self.fetch_readahead(l, &mut run);
                        continue;
                    }
                    if !run.is_empty() && !self.can_join(l, &run, i, &info) {
                        self.fetch_readahead(l, &mut run);
                    }
                    let Some(claim) = self.flights.try_claim((l.index, i), &l.digest) else {
                        self.fetch_readahead(l, &mut run);
                        continue;
                    };
                    // Published between the check and the claim?
                    if let Some(r) = self.cached_now(l, i, &info) {
                        claim.complete(Ok(r));
                        self.fetch_readahead(l, &mut run);
                        continue;
                    }
                    run.push((info, claim));
                }
                self.fetch_readahead(l, &mut run);
            }
        }
    }

    /// Fetches the run a readahead job has claimed so far, if any.
    fn fetch_readahead(&self, l: &LayerState, run: &mut Vec<(SpanInfo, Claim)>) {
        if !run.is_empty() {
            self.fetch_run(l, std::mem::take(run), true);
        }
    }

    /// Fetches a run of neighbouring claimed spans and completes every claim.
    fn fetch_run(&self, l: &LayerState, run: Vec<(SpanInfo, Claim)>, readahead: bool) {
        #[cfg(test)]
        if self.panic_in_fetch.load(Ordering::SeqCst) {
            panic!("test hook: a fetch panics");
        }
        if run.len() == 1 && self.streams(l, &run[0].0) {
            for (info, claim) in run {
                let result = self.stream_span(l, claim.span(), &info);
                self.complete(l, claim, result, readahead);
            }
            return;
        }
        if let [(info, _)] = run.as_slice() {
            // One gzip span is fetched and inflated in memory whatever its size: refuse
            // absurd ones before asking for (and allocating) them.
            let size = span_len(info).max(info.compressed_end - info.compressed_offset);
            if l.compression == Compression::Gzip && size > MAX_GZIP_SPAN {
                for (_, claim) in run {
                    let error = FetchError::SpanTooLarge {
                        layer_digest: l.digest.to_string(),
                        span: claim.span(),
                        size,
                        limit: MAX_GZIP_SPAN,
                    };
                    self.complete(l, claim, Err(error), readahead);
                }
                return;
            }
        }
        let start = run
            .iter()
            .map(|(s, _)| s.compressed_offset)
            .min()
            .unwrap_or(0);
        let end = run.iter().map(|(s, _)| s.compressed_end).max().unwrap_or(0);
        tracing::debug!(layer = %l.digest, spans = ?run.first().map(|(_, c)| c.span())..run.last().map(|(_, c)| c.span() + 1),
            bytes = end - start, readahead, "fetching spans");
        let fetched = if start < end {
            bump(&self.counters.registry_requests, 1);
            self.client
                .fetch_range(&self.reference, &l.digest, start..end)
        } else {
            Ok(Vec::new())
        };
        let bytes = match fetched {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::warn!(layer = %l.digest, error = %e, "span fetch failed");
                let source = Arc::new(e);
                for (_, claim) in run {
                    let error = FetchError::Registry {
                        layer_digest: l.digest.to_string(),
                        span: Some(claim.span()),
                        error: source.clone(),
                    };
                    self.complete(l, claim, Err(error), readahead);
                }
                return;
            }
        };
        bump(&self.counters.bytes_fetched, bytes.len() as u64);
        for (info, claim) in run {
            let slice = usize::try_from(info.compressed_offset - start)
                .ok()
                .zip(usize::try_from(info.compressed_end - start).ok())
                .and_then(|(a, b)| bytes.get(a..b));
            let result = match slice {
                Some(compressed) => self.finish_span(l, claim.span(), &info, compressed),
                None => Err(FetchError::Registry {
                    layer_digest: l.digest.to_string(),
                    span: Some(claim.span()),
                    error: Arc::new(RegistryError::Protocol {
                        url: l.digest.to_string(),
                        detail: format!(
                            "asked for {} bytes at {start}, got {}",
                            end - start,
                            bytes.len()
                        ),
                    }),
                }),
            };
            self.complete(l, claim, result, readahead);
        }
    }

    fn complete(
        &self,
        l: &LayerState,
        claim: Claim,
        result: Result<Ready, FetchError>,
        readahead: bool,
    ) {
        match &result {
            Ok(_) => {
                bump(&self.counters.spans_fetched, 1);
                if readahead {
                    bump(&self.counters.readahead_spans, 1);
                }
            }
            Err(e) => {
                bump(&self.counters.fetch_errors, 1);
                tracing::debug!(layer = %l.digest, span = claim.span(), error = %e, "span not fetched");
            }
        }
        claim.complete(result);
    }

    fn digest_mismatch(
        &self,
        l: &LayerState,
        i: usize,
        info: &SpanInfo,
        found: [u8; 32],
    ) -> FetchError {
        bump(&self.counters.verify_failures, 1);
        if self.client.distrust_mirrors(&self.reference) {
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

    /// Verifies, decodes and caches one span from its compressed bytes.
    fn finish_span(
        &self,
        l: &LayerState,
        i: usize,
        info: &SpanInfo,
        compressed: &[u8],
    ) -> Result<Ready, FetchError> {
        let found: [u8; 32] = Sha256::digest(compressed).into();
        if found != info.digest {
            return Err(self.digest_mismatch(l, i, info, found));
        }
        let len = span_len(info);
        let too_large = || FetchError::SpanTooLarge {
            layer_digest: l.digest.to_string(),
            span: i,
            size: len,
            limit: MAX_GZIP_SPAN,
        };
        let out_len = usize::try_from(len).map_err(|_| too_large())?;
        let window = self.window(l, i, info)?;
        let output: Cow<'_, [u8]> = match l.compression {
            Compression::None => Cow::Borrowed(compressed),
            Compression::Gzip => {
                if len > MAX_GZIP_SPAN {
                    return Err(too_large());
                }
                Cow::Owned(
                    clip_zran::inflate_span(info.bits, &window, compressed, out_len).map_err(
                        |e| FetchError::Inflate {
                            layer_digest: l.digest.to_string(),
                            span: i,
                            error: Arc::new(e),
                        },
                    )?,
                )
            }
            Compression::Zstd => {
                Cow::Owned(zstd::bulk::decompress(compressed, out_len).map_err(|e| {
                    FetchError::Decode {
                        layer_digest: l.digest.to_string(),
                        span: i,
                        detail: e.to_string(),
                    }
                })?)
            }
        };
        if output.len() as u64 != len {
            return Err(FetchError::LengthMismatch {
                layer_digest: l.digest.to_string(),
                span: i,
                expected: len,
                found: output.len() as u64,
            });
        }
        match self.store(l, i, info, &output) {
            Ok(file) => Ok(Ready::File(file)),
            Err(e @ FetchError::ContentMismatch { .. }) => Err(self.content_mismatch(l, e)),
            Err(e) => {
                // The cache cannot take it: check the content here, and serve it from memory.
                let found: [u8; 32] = Sha256::digest(&output).into();
                if found != info.content_digest {
                    return Err(self.content_mismatch(
                        l,
                        FetchError::ContentMismatch {
                            layer_digest: l.digest.to_string(),
                            span: i,
                            expected: hex::encode(info.content_digest),
                            found: hex::encode(found),
                        },
                    ));
                }
                tracing::warn!(layer = %l.digest, span = i, error = %e,
                    "cannot cache a span; serving it from memory");
                Ok(Ready::Memory(Arc::from(output.into_owned())))
            }
        }
    }

    /// Writes a decoded span into the cache; published only if it has the content digest.
    fn store(
        &self,
        l: &LayerState,
        i: usize,
        info: &SpanInfo,
        data: &[u8],
    ) -> Result<Arc<std::fs::File>, FetchError> {
        let mut writer = l.cache.writer(info)?;
        writer.write_all(data)?;
        l.cache.publish(writer, &l.digest, i)
    }

    /// A span decoded to other bytes than the index records: counted and logged, never served.
    fn content_mismatch(&self, l: &LayerState, error: FetchError) -> FetchError {
        bump(&self.counters.verify_failures, 1);
        tracing::error!(layer = %l.digest, error = %error,
            "span content mismatch: refusing the decoded bytes");
        error
    }

    /// Streams a large zstd or uncompressed span from the registry through the hasher and the
    /// decoder into a cache temp file; publishes it once the digest matched.
    fn stream_span(&self, l: &LayerState, i: usize, info: &SpanInfo) -> Result<Ready, FetchError> {
        let len = span_len(info);
        let registry_error = |error: RegistryError| FetchError::Registry {
            layer_digest: l.digest.to_string(),
            span: Some(i),
            error: Arc::new(error),
        };
        tracing::debug!(layer = %l.digest, span = i, bytes = info.compressed_end - info.compressed_offset,
            "streaming a large span");
        let whole_blob = info.compressed_offset == 0 && info.compressed_end == l.compressed_size;
        let source: Box<dyn Read + Send + '_> = if whole_blob {
            bump(&self.counters.registry_requests, 1);
            Box::new(
                self.client
                    .blob_reader(&self.reference, &l.digest, l.compressed_size)
                    .map_err(registry_error)?,
            )
        } else {
            Box::new(RangeChunks {
                shared: self,
                digest: &l.digest,
                pos: info.compressed_offset,
                end: info.compressed_end,
                buf: Vec::new(),
                at: 0,
            })
        };
        let failure = RefCell::new(None::<RegistryError>);
        let mut hashing = HashingReader {
            inner: source,
            hasher: Sha256::new(),
            count: 0,
            failure: &failure,
        };
        let mut writer = l.cache.writer(info)?;
        let decode_error = |detail: String| FetchError::Decode {
            layer_digest: l.digest.to_string(),
            span: i,
            detail,
        };

        // Why a copy stopped before the end of the stream.
        enum Stop {
            /// Here, not in the registry's bytes: the cache file cannot take them (ENOSPC...),
            /// or they are more than the index says.
            Local(FetchError),
            /// Reading (decoding) failed.
            Read(io::Error),
        }
        let copied: Result<(), Stop> = {
            let mut copy = |reader: &mut dyn Read| -> Result<(), Stop> {
                let mut buf = vec![0u8; STREAM_CHUNK];
                loop {
                    let n = match reader.read(&mut buf) {
                        Ok(0) => return Ok(()),
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(Stop::Read(e)),
                    };
                    if writer.written() + n as u64 > len {
                        return Err(Stop::Local(FetchError::LengthMismatch {
                            layer_digest: l.digest.to_string(),
                            span: i,
                            expected: len,
                            found: writer.written() + n as u64,
                        }));
                    }
                    writer.write_all(&buf[..n]).map_err(Stop::Local)?;
                }
            };
            match l.compression {
                Compression::Zstd => match zstd::stream::read::Decoder::new(&mut hashing) {
                    Ok(mut decoder) => copy(&mut decoder),
                    Err(e) => Err(Stop::Read(e)),
                },
                Compression::None | Compression::Gzip => copy(&mut hashing),
            }
        };
        let copied = match copied {
            // A local failure is final whatever the rest of the blob holds: do not download
            // it (possibly gigabytes) just to hash it.
            Err(Stop::Local(e)) => {
                bump(&self.counters.bytes_fetched, hashing.count);
                return Err(e);
            }
            Err(Stop::Read(e)) => Err(decode_error(e.to_string())),
            Ok(()) => Ok(()),
        };
        // Read what the decoder left: the digest covers every compressed byte of the span, and
        // a whole blob is verified by the client at its end. That is when the decoder stopped
        // early (trailing bytes after the last frame), or when it failed on bytes that may be
        // corrupt: a digest mismatch is the better report then (and counted as one). Not after
        // a registry failure, which is the report.
        let drained = if failure.borrow().is_some() {
            Ok(0)
        } else {
            io::copy(&mut hashing, &mut io::sink())
        };
        bump(&self.counters.bytes_fetched, hashing.count);
        let complete = hashing.count == info.compressed_end - info.compressed_offset;
        let found: [u8; 32] = hashing.hasher.finalize().into();
        let failure = failure.borrow_mut().take();
        match failure {
            Some(RegistryError::DigestMismatch { .. }) => {
                return Err(self.digest_mismatch(l, i, info, found));
            }
            Some(e) => return Err(registry_error(e)),
            None => {}
        }
        if let Err(e) = drained {
            return Err(decode_error(e.to_string()));
        }
        if !complete || found != info.digest {
            return Err(self.digest_mismatch(l, i, info, found));
        }
        copied?;
        if writer.written() != len {
            return Err(FetchError::LengthMismatch {
                layer_digest: l.digest.to_string(),
                span: i,
                expected: len,
                found: writer.written(),
            });
        }
        match l.cache.publish(writer, &l.digest, i) {
            Ok(file) => Ok(Ready::File(file)),
            Err(e @ FetchError::ContentMismatch { .. }) => Err(self.content_mismatch(l, e)),
            Err(e) => Err(e),
        }
    }
}

/// Marks a worker's job as over when dropped.
struct Running<'a> {
    shared: &'a Shared,
    readahead: bool,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        let mut q = lock(&self.shared.queue);
        q.job_done(self.readahead);
        if q.is_idle() {
            self.shared.queue_idle.notify_all();
        }
        if self.readahead && !q.readahead.is_empty() {
            // A readahead slot is free: an idle worker may take the next readahead job.
            self.shared.queue_ready.notify_one();
        }
    }
}

/// Hashes and counts what passes through; a registry failure underneath is kept aside (the
/// decoder above only sees an I/O error).
struct HashingReader<'a> {
    inner: Box<dyn Read + Send + 'a>,
    hasher: Sha256,
    count: u64,
    failure: &'a RefCell<Option<RegistryError>>,
}

impl Read for HashingReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => {
                self.hasher.update(&buf[..n]);
                self.count += n as u64;
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Err(e),
            Err(e) => {
                let message = e.to_string();
                let registry = match e
                    .into_inner()
                    .map(|inner| inner.downcast::<RegistryError>())
                {
                    Some(Ok(r)) => *r,
                    Some(Err(other)) => RegistryError::Transport {
                        url: String::new(),
                        source: io::Error::other(other),
                    },
                    None => RegistryError::Transport {
                        url: String::new(),
                        source: io::Error::other(message.clone()),
                    },
                };
                // The first failure is the one that matters (a failed stream only repeats
                // that it failed).
                self.failure.borrow_mut().get_or_insert(registry);
                Err(io::Error::other(message))
            }
        }
    }
}

/// A blob range as a stream of Range requests of at most `max_request_bytes` each.
struct RangeChunks<'a> {
    shared: &'a Shared,
    digest: &'a str,
    pos: u64,
    end: u64,
    buf: Vec<u8>,
    at: usize,
}

impl Read for RangeChunks<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.at == self.buf.len() {
            if self.pos >= self.end {
                return Ok(0);
            }
            let to = self
                .pos
                .saturating_add(self.shared.options.max_request_bytes)
                .min(self.end);
            bump(&self.shared.counters.registry_requests, 1);
            self.buf = self
                .shared
                .client
                .fetch_range(&self.shared.reference, self.digest, self.pos..to)
                .map_err(io::Error::other)?;
            self.at = 0;
            if self.buf.len() as u64 != to - self.pos {
                return Err(io::Error::other(RegistryError::Protocol {
                    url: self.digest.to_string(),
                    detail: format!("asked for {} bytes, got {}", to - self.pos, self.buf.len()),
                }));
            }
            self.pos = to;
        }
        let n = out.len().min(self.buf.len() - self.at);
        out[..n].copy_from_slice(&self.buf[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CacheOptions;
    use clip_archive::{write_archive, FileType, ImageMeta, Inode, Layer, Platform, Span, Tree};
    use clip_registry::{ClientOptions, RetryPolicy};

    fn readahead(from: usize) -> Job {
        Job::Readahead {
            layer: 0,
            spans: from..from + 4,
        }
    }

    fn demand() -> Job {
        Job::Fetch {
            layer: 0,
            claims: Vec::new(),
            readahead: false,
        }
    }

    #[test]
    fn readahead_always_leaves_a_worker_for_demand() {
        let mut q = Queue::new(2);
        q.readahead.push_back(readahead(0));
        q.readahead.push_back(readahead(4));
        assert!(matches!(q.next_job(), Some((Job::Readahead { .. }, true))));
        // One readahead job runs (stalled, say): the other worker is kept for demand.
        assert!(q.next_job().is_none());
        q.demand.push_back(demand());
        q.demand.push_back(demand());
        assert!(matches!(q.next_job(), Some((Job::Fetch { .. }, false))));
        // Demand is bounded by nothing but the workers themselves.
        assert!(matches!(q.next_job(), Some((Job::Fetch { .. }, false))));
        q.job_done(false);
        q.job_done(false);
        assert!(q.next_job().is_none(), "the first readahead job still runs");
        q.job_done(true);
        assert!(matches!(
            q.next_job(),
            Some((Job::Readahead { spans, .. }, true)) if spans == (4..8)
        ));
        q.job_done(true);
        assert!(q.is_idle());

        // Four workers: three readahead jobs at once, never four.
        let mut q = Queue::new(4);
        for i in 0..5 {
            q.readahead.push_back(readahead(4 * i));
        }
        for _ in 0..3 {
            assert!(matches!(q.next_job(), Some((_, true))));
        }
        assert!(q.next_job().is_none());
        q.demand.push_back(demand());
        assert!(matches!(q.next_job(), Some((_, false))));

        // One worker: it is the demand worker; readahead never runs.
        let mut q = Queue::new(1);
        q.readahead.push_back(readahead(0));
        assert!(q.next_job().is_none());
    }

    const DIGEST: &str = "sha256:3333333333333333333333333333333333333333333333333333333333333333";

    /// One uncompressed layer of 100 bytes in one span, served by nobody.
    fn unreachable_fetcher(cache: &std::path::Path, workers: usize) -> Arc<Shared> {
        let tree = Tree::new(Inode::new(FileType::Directory, 0o755));
        let meta = ImageMeta {
            reference: "127.0.0.1:1/unit:1".into(),
            manifest_digest: "sha256:00".into(),
            manifest_media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            platform: Platform {
                os: "linux".into(),
                architecture: "amd64".into(),
                variant: None,
            },
            config_digest: "sha256:11".into(),
            config: "{}".into(),
        };
        let layer = Layer {
            digest: DIGEST.into(),
            media_type: "application/vnd.oci.image.layer.v1.tar".into(),
            compression: Compression::None,
            compressed_size: 100,
            uncompressed_size: 100,
            diff_id: DIGEST.into(),
            span_size: 1 << 20,
            spans: vec![Span {
                compressed_offset: 0,
                compressed_end: 100,
                uncompressed_offset: 0,
                bits: 0,
                window: clip_archive::Window::default(),
                digest: [0; 32],
                content_digest: [0; 32],
            }],
        };
        let bytes = write_archive(&meta, &[layer], &tree).unwrap();
        let archive = Arc::new(Archive::open_owned(bytes).unwrap());
        // A port nobody listens on: fetches fail at once with a registry error.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let reference: Reference = format!("127.0.0.1:{port}/unit:1").parse().unwrap();
        let client = Client::new(ClientOptions {
            retry: RetryPolicy {
                max_attempts: 1,
                initial_backoff: Duration::from_millis(1),
                max_backoff: Duration::from_millis(1),
                deadline: Duration::from_secs(10),
            },
            ..ClientOptions::default()
        })
        .unwrap();
        let options = FetchOptions {
            cache: CacheOptions {
                dir: cache.to_path_buf(),
                max_bytes: 1 << 30,
            },
            // A dead worker would make a read time out; a live one fails it with the registry
            // error once the read's budget is spent on retries.
            read_timeout: Duration::from_secs(2),
            workers,
            ..FetchOptions::default()
        };
        Shared::start(archive, client, reference, options).unwrap()
    }

    #[test]
    fn a_panicking_fetch_fails_its_readers_and_the_worker_goes_on() {
        let cache = tempfile::tempdir().unwrap();
        // One worker: if the panic killed it, nothing would serve the second read.
        let shared = unreachable_fetcher(cache.path(), 1);
        let mut buf = [0u8; 10];
        shared.panic_in_fetch.store(true, Ordering::SeqCst);
        let err = shared.read_at(0, 0, &mut buf, Instant::now()).unwrap_err();
        assert!(
            matches!(err, FetchError::Panicked { span: 0, .. }),
            "{err:?}"
        );
        assert_eq!(err.errno(), libc::EIO);
        assert!(shared.wait_idle(Duration::from_secs(60)));

        // The same worker takes the next job (which fails for want of a registry, not of a
        // worker), and the failed span was not remembered as claimed.
        shared.panic_in_fetch.store(false, Ordering::SeqCst);
        let err = shared.read_at(0, 0, &mut buf, Instant::now()).unwrap_err();
        assert!(
            matches!(err, FetchError::Registry { span: Some(0), .. }),
            "{err:?}"
        );
        assert_eq!(shared.stats().timeouts, 0);
        shared.shutdown();
    }
}
