//! Fetch jobs, as the workers run them: a run of neighbouring claimed spans is fetched with one
//! ranged read of the source (at most [`crate::FetchOptions::max_request_bytes`]), split, each
//! span decoded and verified (`decode.rs`), published to the cache, and its claim completed
//! (waking its readers). A span too large for memory goes to the streaming path (`stream.rs`).
//!
//! # What it owns, what it must not touch
//!
//! The coalescing rule ([`Shared::can_join`]), what a worker does with a job, and the counters
//! of fetches (requests, bytes, spans, errors). It runs on worker threads only and holds no
//! lock across the source's reads or the cache's writes. It never waits for a reader.

use std::sync::Arc;

use clip_archive::Compression;
use clip_registry::RegistryError;

use crate::decode::{decode_gzip_run, decode_span, span_len, DecodeError, MAX_GZIP_SPAN};
use crate::fetcher::{bump, FetchResult, LayerState, Pending, Ready, Shared};
use crate::queue::Priority;
use crate::{FetchError, SpanRef};

/// zstd and uncompressed spans larger than this (uncompressed) are streamed into the cache
/// instead of being decoded in memory.
pub(crate) const MAX_BUFFERED_OUTPUT: u64 = 16 << 20;

/// Work for the workers.
pub(crate) enum Job {
    /// Fetch these claimed, neighbouring spans (one request when they fit).
    Fetch { layer: u32, claims: Vec<Pending> },
    /// Background work (readahead, prefetch, fill): fetch whatever of these spans (in
    /// increasing order) is neither cached nor under way, claiming one run at a time right
    /// before fetching it — a span further on is not held (with readers waiting on it) while
    /// earlier runs are fetched: a reader that wants it meanwhile fetches it itself, at demand
    /// priority.
    Spans { layer: u32, spans: Vec<usize> },
}

impl Shared {
    /// Runs one job on a worker.
    pub(crate) fn run_job(&self, job: Job, priority: Priority) {
        match job {
            Job::Fetch { layer, claims } => {
                let Ok(l) = self.layer(layer) else {
                    return; // claims dropped: waiters see Cancelled
                };
                // A fetch that finished between the reader's cache lookup and its claim has
                // published the span already: take it from the cache.
                let mut runs: Vec<Vec<Pending>> = vec![Vec::new()];
                for pending in claims {
                    if let Some(r) = self.cached_now(l, &pending.span) {
                        pending.claim.complete(Ok(r));
                        runs.push(Vec::new());
                    } else if let Some(run) = runs.last_mut() {
                        run.push(pending);
                    }
                }
                for run in runs.into_iter().filter(|r| !r.is_empty()) {
                    self.fetch_run(l, run, priority);
                }
            }
            Job::Spans { layer, spans } => {
                if let Ok(l) = self.layer(layer) {
                    self.run_spans(l, &spans, priority);
                }
            }
        }
    }

    /// Runs a [`Job::Spans`].
    fn run_spans(&self, l: &LayerState, spans: &[usize], priority: Priority) {
        let Ok(table) = self.archive.spans(l.index) else {
            return;
        };
        let mut run: Vec<Pending> = Vec::new();
        for &i in spans {
            if self.scheduler.is_shutdown() {
                return; // claims of `run` dropped: Cancelled
            }
            let Ok(info) = table.get(i) else {
                break;
            };
            let span = SpanRef { index: i, info };
            if span_len(&info) == 0 || l.cache.exists(&span) {
                self.handled_elsewhere(priority);
                self.fetch_pending(l, &mut run, priority);
                continue;
            }
            if !run.is_empty() && !self.can_join(l, &run, &span) {
                self.fetch_pending(l, &mut run, priority);
            }
            let Some(claim) = self.try_claim(l, i) else {
                // Someone fetches it already.
                self.handled_elsewhere(priority);
                self.fetch_pending(l, &mut run, priority);
                continue;
            };
            // Published between the check and the claim?
            if let Some(r) = self.cached_now(l, &span) {
                claim.complete(Ok(r));
                self.handled_elsewhere(priority);
                self.fetch_pending(l, &mut run, priority);
                continue;
            }
            run.push(Pending { span, claim });
        }
        self.fetch_pending(l, &mut run, priority);
    }

    /// Fetches the run claimed so far, if any.
    fn fetch_pending(&self, l: &LayerState, run: &mut Vec<Pending>, priority: Priority) {
        if !run.is_empty() {
            self.fetch_run(l, std::mem::take(run), priority);
        }
    }

    /// Whether `span` can join `run` in one request: the next span, none of them streamed,
    /// and the compressed bytes of all within `max_request_bytes`.
    pub(crate) fn can_join(&self, l: &LayerState, run: &[Pending], span: &SpanRef) -> bool {
        let (Some(first), Some(last)) = (run.first(), run.last()) else {
            return false;
        };
        last.span.index.checked_add(1) == Some(span.index)
            && !self.streams(l, &first.span)
            && !self.streams(l, &last.span)
            && !self.streams(l, span)
            && span
                .info
                .compressed_end
                .max(last.span.info.compressed_end)
                .saturating_sub(first.span.info.compressed_offset)
                <= self.options.max_request_bytes
            // A gzip run is inflated in one pass, in memory.
            && (l.compression != Compression::Gzip
                || span
                    .info
                    .uncompressed_end
                    .saturating_sub(first.span.info.uncompressed_offset)
                    <= MAX_GZIP_SPAN)
    }

    /// Whether a span is streamed into the cache rather than decoded in memory.
    pub(crate) fn streams(&self, l: &LayerState, span: &SpanRef) -> bool {
        let info = &span.info;
        l.compression != Compression::Gzip
            && (span_len(info) > MAX_BUFFERED_OUTPUT
                || info.compressed_end - info.compressed_offset > self.options.max_request_bytes)
    }

    /// Fetches a run of neighbouring claimed spans and completes every claim.
    pub(crate) fn fetch_run(&self, l: &LayerState, run: Vec<Pending>, priority: Priority) {
        #[cfg(test)]
        if self
            .panic_in_fetch
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            panic!("test hook: a fetch panics");
        }
        if let [only] = run.as_slice() {
            if self.streams(l, &only.span) {
                let size = only.span.info.compressed_end - only.span.info.compressed_offset;
                if priority == Priority::Fill && !self.throttle(size) {
                    return;
                }
                for Pending { span, claim } in run {
                    let result = self.stream_span(l, &span);
                    self.complete(l, claim, result, priority);
                }
                return;
            }
            // One gzip span is fetched and inflated in memory whatever its size: refuse
            // absurd ones before asking for (and allocating) them.
            let info = &only.span.info;
            let size = span_len(info).max(info.compressed_end - info.compressed_offset);
            if l.compression == Compression::Gzip && size > MAX_GZIP_SPAN {
                for Pending { span, claim } in run {
                    let error = DecodeError::TooLarge { size }
                        .into_fetch_error(&l.digest, span.index, &span.info);
                    self.complete(l, claim, Err(error), priority);
                }
                return;
            }
        }
        let start = run
            .iter()
            .map(|p| p.span.info.compressed_offset)
            .min()
            .unwrap_or(0);
        let end = run
            .iter()
            .map(|p| p.span.info.compressed_end)
            .max()
            .unwrap_or(0);
        tracing::debug!(layer = %l.digest, spans = ?run.first().map(|p| p.span.index)..run.last().map(|p| p.span.index + 1),
            bytes = end - start, ?priority, "fetching spans");
        if priority == Priority::Fill && !self.throttle(end - start) {
            return; // shutting down: the claims are dropped (Cancelled)
        }
        // The window the run needs (a gzip run is inflated in one pass from its first
        // checkpoint), when the archive keeps it in the index blob: one more range read, at
        // the same time as the run's own.
        let windows_range = self.windows_range(l, run.first().map(|p| p.span.index).into_iter());
        // A range the source holds locally (a startup pack) costs no request.
        let from_pack = |blob: &str, range: &std::ops::Range<u64>| self.source.holds(blob, range);
        let layer_from_pack = start < end && from_pack(&l.digest, &(start..end));
        let windows_from_pack = windows_range
            .as_ref()
            .is_some_and(|(blob, range)| from_pack(blob, range));
        let read_layer = || {
            if start < end {
                if !layer_from_pack {
                    bump(&self.counters.registry_requests, 1);
                }
                self.source.read_range(&l.digest, start..end)
            } else {
                Ok(Vec::new())
            }
        };
        let (fetched, windows) = match &windows_range {
            None => (read_layer(), None),
            Some((blob, range)) if windows_from_pack => (
                read_layer(),
                Some(self.source.read_range(blob, range.clone())),
            ),
            Some((blob, range)) => std::thread::scope(|scope| {
                let windows = scope.spawn(|| {
                    bump(&self.counters.registry_requests, 1);
                    self.source.read_range(blob, range.clone())
                });
                let fetched = read_layer();
                let windows = windows.join().unwrap_or_else(|_| {
                    Err(RegistryError::Protocol {
                        url: blob.clone(),
                        detail: "the window read panicked".to_string(),
                    })
                });
                (fetched, Some(windows))
            }),
        };
        // Either read failing fails the run (its claims: the readers try again).
        let fetched = match windows {
            Some(Err(e)) => Err(e),
            Some(Ok(w)) => fetched.map(|bytes| {
                let counter = if windows_from_pack {
                    &self.counters.pack_bytes
                } else {
                    &self.counters.window_bytes_fetched
                };
                bump(counter, w.len() as u64);
                let at = windows_range.as_ref().map_or(0, |(_, r)| r.start);
                (bytes, Some((at, w)))
            }),
            None => fetched.map(|bytes| (bytes, None)),
        };
        let (bytes, windows) = match fetched {
            Ok(fetched) => {
                self.source_ok();
                fetched
            }
            Err(e) => {
                self.source_failed(l, &e);
                let source = Arc::new(e);
                for Pending { span, claim } in run {
                    let error = FetchError::Registry {
                        layer_digest: l.digest.to_string(),
                        span: Some(span.index),
                        error: source.clone(),
                    };
                    self.complete(l, claim, Err(error), priority);
                }
                return;
            }
        };
        let counter = if layer_from_pack {
            &self.counters.pack_bytes
        } else {
            &self.counters.bytes_fetched
        };
        bump(counter, bytes.len() as u64);
        if l.compression == Compression::Gzip && run.len() > 1 {
            self.finish_gzip_run(l, run, &bytes, start, windows.as_ref(), priority);
            return;
        }
        for Pending { span, claim } in run {
            let info = &span.info;
            let slice = usize::try_from(info.compressed_offset - start)
                .ok()
                .zip(usize::try_from(info.compressed_end - start).ok())
                .and_then(|(a, b)| bytes.get(a..b));
            let result = match slice {
                Some(compressed) => self.finish_span(l, &span, compressed, windows.as_ref()),
                None => Err(FetchError::Registry {
                    layer_digest: l.digest.to_string(),
                    span: Some(span.index),
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
            self.complete(l, claim, result, priority);
        }
    }

    /// Counts a span's outcome and hands it to its readers.
    pub(crate) fn complete(
        &self,
        l: &LayerState,
        claim: crate::fetcher::SpanClaim,
        result: FetchResult,
        priority: Priority,
    ) {
        match &result {
            Ok(_) => {
                bump(&self.counters.spans_fetched, 1);
                match priority {
                    Priority::Readahead => bump(&self.counters.readahead_spans, 1),
                    Priority::Prefetch => self.prefetched(l, claim.key().1),
                    Priority::Fill => bump(&self.counters.fill_done, 1),
                    Priority::Demand => {}
                }
            }
            Err(e) => {
                bump(&self.counters.fetch_errors, 1);
                tracing::debug!(layer = %l.digest, span = claim.key().1, error = %e, "span not fetched");
            }
        }
        claim.complete(result);
    }

    /// Verifies, decodes and caches one span from exactly its compressed bytes.
    fn finish_span(
        &self,
        l: &LayerState,
        span: &SpanRef,
        compressed: &[u8],
        windows: Option<&(u64, Vec<u8>)>,
    ) -> FetchResult {
        let window = self.window(l, span, windows)?;
        let decoded = decode_span(l.compression, &span.info, &window, compressed);
        self.decoded(l, span, decoded)
    }

    /// Verifies, inflates (in one pass from the first span's checkpoint) and caches a run of
    /// neighbouring gzip spans from the run's bytes (`bytes`, from blob offset `start`), and
    /// completes every claim.
    fn finish_gzip_run(
        &self,
        l: &LayerState,
        run: Vec<Pending>,
        bytes: &[u8],
        start: u64,
        windows: Option<&(u64, Vec<u8>)>,
        priority: Priority,
    ) {
        let Some(first) = run.first() else {
            return;
        };
        let first_index = first.span.index;
        let window = match self.window(l, &first.span, windows) {
            Ok(window) => window,
            Err(e) => {
                for Pending { claim, .. } in run {
                    self.complete(l, claim, Err(e.clone()), priority);
                }
                return;
            }
        };
        let infos: Vec<_> = run.iter().map(|p| p.span.info).collect();
        // Every slice is within `bytes`: the run was read from the first span's start to the
        // furthest end (a short answer fails the run before this).
        let slices: Vec<&[u8]> = infos
            .iter()
            .map(|i| {
                let at = |o: u64| usize::try_from(o.saturating_sub(start)).unwrap_or(usize::MAX);
                bytes
                    .get(at(i.compressed_offset)..at(i.compressed_end))
                    .unwrap_or_default()
            })
            .collect();
        let from_first = usize::try_from(first.span.info.compressed_offset.saturating_sub(start))
            .ok()
            .and_then(|at| bytes.get(at..))
            .unwrap_or_default();
        let results = decode_gzip_run(&infos, &window, &slices, from_first);
        for (Pending { span, claim }, decoded) in run.into_iter().zip(results) {
            let decoded = decoded.map_err(|e| match e {
                DecodeError::AfterRefused { span } => DecodeError::AfterRefused {
                    span: first_index + span,
                },
                e => e,
            });
            let result = self.decoded(l, &span, decoded);
            self.complete(l, claim, result, priority);
        }
    }

    /// A span's decoded, verified content (or why there is none) into the cache: counts and
    /// logs what did not verify.
    fn decoded(
        &self,
        l: &LayerState,
        span: &SpanRef,
        decoded: Result<crate::decode::Verified<'_>, DecodeError>,
    ) -> FetchResult {
        let content = match decoded {
            Ok(content) => content,
            Err(DecodeError::DigestMismatch { found }) => {
                return Err(self.digest_mismatch(l, span.index, &span.info, found));
            }
            Err(e) => {
                let verify_failure = e.is_verify_failure();
                let error = e.into_fetch_error(&l.digest, span.index, &span.info);
                return Err(if verify_failure {
                    self.content_mismatch(l, error)
                } else {
                    error
                });
            }
        };
        match l.cache.store(span, &content) {
            Ok(file) => Ok(Ready::File(file)),
            Err(e) => {
                // The cache cannot take it: serve the verified bytes from memory.
                tracing::warn!(layer = %l.digest, span = span.index, error = %e,
                    "cannot cache a span; serving it from memory");
                Ok(Ready::Memory(Arc::from(content.into_owned())))
            }
        }
    }
}
