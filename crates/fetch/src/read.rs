//! The read path: a read of a layer's bytes mapped to spans, each span got ready (a cache hit,
//! a fetch this read claims, or a fetch it waits for), the bytes copied out; retries of
//! transient failures within the read's budget.
//!
//! # What it owns, what it must not touch
//!
//! The reader's side of single flight (claim or wait, within the read's deadline), the
//! coalescing of a read's missing neighbouring spans into one demand job, and the retry
//! policy of a read. It runs on the caller's thread and never does network I/O itself: the
//! fetches are jobs for the workers (`run.rs`). It tells the readahead policy where reads are
//! (`readahead.rs`) but decides nothing about readahead.

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cache::{Check, Lookup};
use crate::fetcher::{bump, LayerState, Pending, Ready, Shared};
use crate::queue::Priority;
use crate::run::Job;
use crate::sync::{Flight, Joined};
use crate::{FetchError, SpanRef};

/// First pause before a read tries a failed fetch again (then doubled, up to the next).
const RETRY_PAUSE: Duration = Duration::from_millis(100);
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(2);
/// Spans of a prefetch claimed (and queued) at a time.
const PREFETCH_BATCH: usize = 64;

/// What [`Shared::lookup_cached`] found.
enum Cached {
    /// A verified entry.
    Ready(Ready),
    /// Nothing usable: fetch the span.
    Miss,
    /// Another thread is verifying the entry and the caller could not wait (any longer).
    Busy,
}

/// A read of `[offset, end)` of a layer, mapped to its spans.
struct Mapped {
    offset: u64,
    end: u64,
    spans: Vec<SpanRef>,
}

impl Shared {
    /// The spans covering `[offset, offset + want)` of layer `l` (cut at its end); `None` for
    /// a read of no bytes.
    fn map_read(
        &self,
        l: &LayerState,
        offset: u64,
        want: usize,
    ) -> Result<Option<Mapped>, FetchError> {
        let size = l.uncompressed_size;
        if offset > size {
            return Err(FetchError::OutOfRange {
                layer: l.index,
                offset,
                size,
            });
        }
        let len = (want as u64).min(size - offset);
        if len == 0 {
            return Ok(None);
        }
        let end = offset + len;
        let spans = self.map_spans(l, offset, end)?;
        Ok(Some(Mapped { offset, end, spans }))
    }

    /// The spans covering `[start, end)` (`start < end <= size`), in order.
    pub(crate) fn map_spans(
        &self,
        l: &LayerState,
        start: u64,
        end: u64,
    ) -> Result<Vec<SpanRef>, FetchError> {
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
            out.push(SpanRef { index: i, info });
            pos = info.uncompressed_end;
        }
        Ok(out)
    }

    pub(crate) fn read_at(
        &self,
        layer: u32,
        offset: u64,
        buf: &mut [u8],
        file_end: u64,
        since: Instant,
    ) -> Result<usize, FetchError> {
        let l = self.layer(layer)?;
        let Some(read) = self.map_read(l, offset, buf.len())? else {
            return Ok(0);
        };
        self.note_access(l, &read.spans, read.offset, read.end, file_end);
        let deadline = self.deadline(since);
        let mut retried = false;
        let mut refetched = false;
        let mut pause = RETRY_PAUSE;
        loop {
            let readies = match self.obtain(l, &read.spans, deadline) {
                Ok(readies) => readies,
                // Bytes that did not verify may have come from a mirror: with the mirrors now
                // out of use, fetch once more, from the registry itself.
                Err(FetchError::DigestMismatch { .. } | FetchError::WindowMismatch { .. })
                    if !refetched && self.source.has_mirrors() =>
                {
                    refetched = true;
                    continue;
                }
                // The registry failed for now: within the read's budget, try again (the
                // source's own retries are over for that fetch).
                Err(e) if e.is_transient() && Instant::now() + pause < deadline => {
                    tracing::debug!(layer = %l.digest, error = %e, "fetch failed; trying again within the read's budget");
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(MAX_RETRY_PAUSE);
                    continue;
                }
                Err(e) => return Err(e),
            };
            match self.copy_out(l, &read, &readies, buf) {
                Ok(n) => return Ok(n),
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
        file_end: u64,
    ) -> Option<Result<usize, FetchError>> {
        let l = match self.layer(layer) {
            Ok(l) => l,
            Err(e) => return Some(Err(e)),
        };
        let read = match self.map_read(l, offset, buf.len()) {
            Ok(Some(read)) => read,
            Ok(None) => return Some(Ok(0)),
            Err(e) => return Some(Err(e)),
        };
        let mut readies = Vec::with_capacity(read.spans.len());
        for span in &read.spans {
            match self.lookup_cached(l, span, Check::Cheap) {
                Cached::Ready(r) => readies.push(r),
                Cached::Miss | Cached::Busy => return None,
            }
        }
        let n = match self.copy_out(l, &read, &readies, buf) {
            Ok(n) => n,
            Err(e) => {
                // The entry was dropped: `read_at` fetches the span again.
                tracing::warn!(layer = %l.digest, error = %e, "cached span unreadable");
                return None;
            }
        };
        bump(&self.counters.cache_hits, readies.len() as u64);
        for span in &read.spans {
            self.note_served(l, span.index);
        }
        // A read served here counts for readahead like any other: a sequential reader of
        // read-ahead spans keeps the window moving.
        self.note_access(l, &read.spans, read.offset, read.end, file_end);
        Some(Ok(n))
    }

    /// Copies the read's bytes out of its ready spans; returns how many.
    fn copy_out(
        &self,
        l: &LayerState,
        read: &Mapped,
        readies: &[Ready],
        buf: &mut [u8],
    ) -> Result<usize, FetchError> {
        let (offset, end) = (read.offset, read.end);
        for (span, ready) in read.spans.iter().zip(readies) {
            let info = &span.info;
            let from = offset.max(info.uncompressed_offset);
            let to = end.min(info.uncompressed_end);
            let dst = &mut buf[(from - offset) as usize..(to - offset) as usize];
            let rel = from - info.uncompressed_offset;
            match ready {
                Ready::File(file) => l.cache.read(span, file, dst, rel)?,
                Ready::Memory(bytes) => {
                    let src = usize::try_from(rel)
                        .ok()
                        .and_then(|r| bytes.get(r..r + dst.len()))
                        .ok_or(FetchError::LengthMismatch {
                            layer_digest: l.digest.to_string(),
                            span: span.index,
                            expected: info.uncompressed_end - info.uncompressed_offset,
                            found: bytes.len() as u64,
                        })?;
                    dst.copy_from_slice(src);
                }
            }
        }
        Ok((end - offset) as usize)
    }

    /// Gets every span of a read ready, in order: from the cache, or by claiming it (the
    /// neighbouring spans it claims go to the workers as one demand job), or by waiting for
    /// whoever is fetching it.
    fn obtain(
        &self,
        l: &LayerState,
        spans: &[SpanRef],
        deadline: Instant,
    ) -> Result<Vec<Ready>, FetchError> {
        let mut ready: Vec<Option<Ready>> = Vec::with_capacity(spans.len());
        let mut waits: Vec<(usize, usize, Arc<Flight<_>>)> = Vec::new();
        let mut run: Vec<Pending> = Vec::new();
        for (k, span) in spans.iter().enumerate() {
            match self.lookup_cached(l, span, Check::Full { until: deadline }) {
                Cached::Ready(r) => {
                    bump(&self.counters.cache_hits, 1);
                    ready.push(Some(r));
                    self.submit_demand(l, &mut run);
                    continue;
                }
                Cached::Busy => {
                    // Another reader's verification of the entry outlasted our deadline.
                    // What was claimed is fetched all the same (others may wait for it).
                    self.submit_demand(l, &mut run);
                    return Err(self.timed_out(l, span.index));
                }
                Cached::Miss => {}
            }
            bump(&self.counters.cache_misses, 1);
            ready.push(None);
            match self.join(l, span.index) {
                Joined::Owner(claim) => {
                    waits.push((k, span.index, claim.flight()));
                    if !self.can_join(l, &run, span) {
                        self.submit_demand(l, &mut run);
                    }
                    run.push(Pending { span: *span, claim });
                }
                Joined::Waiter(flight) => {
                    waits.push((k, span.index, flight));
                    self.submit_demand(l, &mut run);
                }
            }
        }
        self.submit_demand(l, &mut run);
        for (k, span, flight) in waits {
            match flight.wait(deadline) {
                Some(Ok(r)) => ready[k] = Some(r),
                Some(Err(e)) => return Err(e),
                None => return Err(self.timed_out(l, span)),
            }
        }
        let readies = ready.into_iter().flatten().collect::<Vec<_>>();
        for span in spans {
            self.note_served(l, span.index);
        }
        if readies.len() != spans.len() {
            // Unreachable: every span was filled by a hit or a wait.
            return Err(FetchError::Cancelled {
                layer_digest: l.digest.to_string(),
                span: spans.first().map_or(0, |s| s.index),
            });
        }
        Ok(readies)
    }

    /// Hands a run of claimed neighbours to the workers as one demand job.
    fn submit_demand(&self, l: &LayerState, run: &mut Vec<Pending>) {
        if run.is_empty() {
            return;
        }
        let job = Job::Fetch {
            layer: l.index,
            claims: std::mem::take(run),
        };
        self.submit(Priority::Demand, job, usize::MAX);
    }

    /// A verified cache entry for the span, if there is one (`check`: see [`Check`]).
    fn lookup_cached(&self, l: &LayerState, span: &SpanRef, check: Check) -> Cached {
        match l.cache.lookup(span, check) {
            Lookup::Hit(file) => Cached::Ready(Ready::File(file)),
            Lookup::Miss => Cached::Miss,
            Lookup::Busy => Cached::Busy,
            Lookup::Corrupt(problem) => {
                self.corrupt_entry(l, span, &problem);
                Cached::Miss
            }
        }
    }

    /// A cached entry for the span that is ready to use right now, if any: a worker that
    /// holds the span's claim looks (another thread verifying it counts as a miss).
    pub(crate) fn cached_now(&self, l: &LayerState, span: &SpanRef) -> Option<Ready> {
        let check = Check::Full {
            until: Instant::now(),
        };
        match self.lookup_cached(l, span, check) {
            Cached::Ready(r) => Some(r),
            Cached::Miss | Cached::Busy => None,
        }
    }

    fn corrupt_entry(&self, l: &LayerState, span: &SpanRef, problem: &str) {
        bump(&self.counters.cache_corrupt, 1);
        tracing::error!(layer = %l.digest, span = span.index, path = %l.cache.path(&span.info).display(),
            %problem, "corrupt cache entry; fetching the span again");
    }

    pub(crate) fn fetch_range(&self, layer: u32, range: Range<u64>) -> Result<(), FetchError> {
        let l = self.layer(layer)?;
        let end = range.end.min(l.uncompressed_size);
        if range.start >= end {
            return Ok(());
        }
        let spans = self.map_spans(l, range.start, end)?;
        let deadline = self.deadline(Instant::now());
        // In batches, so that a huge range does not claim (and queue) everything at once.
        for batch in spans.chunks(PREFETCH_BATCH) {
            self.obtain(l, batch, deadline)?;
        }
        Ok(())
    }
}
