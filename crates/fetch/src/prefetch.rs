//! Prefetch: spans fetched before anyone reads them. Two kinds, both background work (never
//! on the last free worker, so that reads always have one):
//!
//! - **Profile replay** ([`Shared::prefetch`], priority `Prefetch`): the spans a startup
//!   profile lists, in its order, in batches coalesced into runs of neighbours, each run a job
//!   of its own, so that they go over the background workers in parallel. A read of a span the prefetch has in flight waits for
//!   that fetch (single flight) and never fetches again; spans already cached are skipped. A
//!   read that finds a span the prefetch fetched is a *prefetch hit*; a prefetched span never
//!   read is *wasted*.
//! - **Fill** ([`Shared::fill`], priority `Fill`, the lowest): every span not yet cached, so
//!   that the node stops needing the registry; bounded by a rate (bytes per second) and
//!   cancelled by shutdown, even mid-pause.
//!
//! # What it owns, what it must not touch
//!
//! The choice and batching of prefetch and fill jobs, the per-span marks behind the prefetch
//! counters, and the fill's token bucket. Fetching is `run.rs`'s, reading is `read.rs`'s.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use crate::decode::span_len;
use crate::fetcher::{bump, LayerState, Shared};
use crate::queue::Priority;
use crate::run::Job;
use crate::sync::lock;
use crate::SpanRef;

/// Profile entries per batch: within a batch, neighbours are coalesced (the batches go in
/// profile order).
const PREFETCH_BATCH: usize = 32;
/// Spans per fill job.
const FILL_BATCH: usize = 32;

/// A span the profile replay fetched.
const PREFETCHED: u8 = 1;
/// ... and a read found it (counted once).
const HIT: u8 = 2;

/// Per-span marks of one layer, for the prefetch counters.
#[derive(Debug)]
pub(crate) struct Marks(Vec<AtomicU8>);

impl Marks {
    pub(crate) fn new(spans: usize) -> Marks {
        Marks((0..spans).map(|_| AtomicU8::new(0)).collect())
    }

    fn get(&self, span: usize) -> Option<&AtomicU8> {
        self.0.get(span)
    }
}

/// A token bucket: `rate` bytes per second, up to `burst` bytes saved up.
#[derive(Debug, Clone)]
pub(crate) struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    pub(crate) fn new(rate: u64, burst: u64, now: Instant) -> Bucket {
        Bucket {
            rate: rate.max(1) as f64,
            burst: burst.max(1) as f64,
            tokens: burst.max(1) as f64,
            at: now,
        }
    }

    /// Takes `bytes` from the bucket at `now`; returns how long to wait before sending them
    /// (the debt is paid by waiting: later takers wait behind it).
    pub(crate) fn take(&mut self, bytes: u64, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = self.at.max(now);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.tokens -= bytes as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

impl Shared {
    /// Queues the profile replay of `spans` ((layer, span index), in profile order); returns
    /// how many spans were queued (those that exist; cached ones are skipped when their job
    /// runs).
    pub(crate) fn prefetch(&self, spans: &[(u32, usize)]) -> usize {
        let mut queued = 0;
        for batch in spans.chunks(PREFETCH_BATCH) {
            // Within a batch: by layer, in increasing order, so that neighbours coalesce.
            let mut by_layer: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
            for &(layer, span) in batch {
                if self.layer(layer).is_ok_and(|l| span < l.span_count) {
                    by_layer.entry(layer).or_default().push(span);
                }
            }
            for (layer, mut spans) in by_layer {
                spans.sort_unstable();
                spans.dedup();
                queued += spans.len();
                // One job per run of neighbours: the runs of a batch are fetched in parallel,
                // one request each, over the background workers.
                for run in spans.chunk_by(|a, b| a.checked_add(1) == Some(*b)) {
                    let job = Job::Spans {
                        layer,
                        spans: run.to_vec(),
                    };
                    self.submit(Priority::Prefetch, job, usize::MAX);
                }
            }
        }
        tracing::debug!(queued, "profile prefetch queued");
        queued
    }

    /// See [`crate::Fetcher::uncached`].
    pub(crate) fn uncached(&self, spans: &[(u32, usize)]) -> usize {
        spans
            .iter()
            .filter(|&&(layer, index)| {
                let (Ok(l), Ok(table)) = (self.layer(layer), self.archive.spans(layer)) else {
                    return false;
                };
                table.get(index).is_ok_and(|info| {
                    span_len(&info) > 0 && !l.cache.exists(&SpanRef { index, info })
                })
            })
            .count()
    }

    /// Queues the fill: every span of every layer, at the lowest priority, at most `rate`
    /// bytes per second when given. Returns how many spans it covers.
    pub(crate) fn fill(&self, rate: Option<u64>) -> usize {
        *lock(&self.fill_rate) =
            rate.map(|r| Bucket::new(r, self.options.max_request_bytes, Instant::now()));
        let mut total = 0;
        for l in &self.layers {
            let spans: Vec<usize> = (0..l.span_count).collect();
            for chunk in spans.chunks(FILL_BATCH) {
                total += chunk.len();
                let job = Job::Spans {
                    layer: l.index,
                    spans: chunk.to_vec(),
                };
                self.submit(Priority::Fill, job, usize::MAX);
            }
        }
        bump(&self.counters.fill_total, total as u64);
        tracing::debug!(spans = total, ?rate, "fill queued");
        total
    }

    /// Before the fill sends a request for `bytes`: waits for the rate bound; false when the
    /// fetcher shuts down meanwhile.
    pub(crate) fn throttle(&self, bytes: u64) -> bool {
        let wait = match lock(&self.fill_rate).as_mut() {
            Some(bucket) => bucket.take(bytes, Instant::now()),
            None => Duration::ZERO,
        };
        wait.is_zero() || self.scheduler.pause_until(Instant::now() + wait)
    }

    /// A background job found a span cached, or fetched by someone else.
    pub(crate) fn handled_elsewhere(&self, priority: Priority) {
        if priority == Priority::Fill {
            bump(&self.counters.fill_done, 1);
        }
    }

    /// The profile replay fetched span `span` of `l`.
    pub(crate) fn prefetched(&self, l: &LayerState, span: usize) {
        bump(&self.counters.prefetch_spans, 1);
        if let Some(mark) = l.marks.get(span) {
            mark.fetch_or(PREFETCHED, Ordering::Relaxed);
        }
    }

    /// A read was served span `span` of `l`: a prefetch hit the first time for a span the
    /// replay fetched.
    pub(crate) fn note_served(&self, l: &LayerState, span: usize) {
        let Some(mark) = l.marks.get(span) else {
            return;
        };
        if mark.load(Ordering::Relaxed) & (PREFETCHED | HIT) == PREFETCHED
            && mark.fetch_or(HIT, Ordering::Relaxed) & HIT == 0
        {
            bump(&self.counters.prefetch_hits, 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_bounds_the_rate_and_saves_up_a_burst() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // 1000 bytes/s, 500 bytes of burst.
        let mut b = Bucket::new(1000, 500, t0);
        assert_eq!(b.take(500, at(0)), Duration::ZERO, "the burst");
        // Empty: 250 more bytes wait a quarter of a second.
        assert_eq!(b.take(250, at(0)), Duration::from_millis(250));
        // The next taker waits behind that debt.
        assert_eq!(b.take(250, at(0)), Duration::from_millis(500));
        // A second later: the debt of 500 is paid and 500 more saved up, no more than burst.
        assert_eq!(b.take(0, at(1000)), Duration::ZERO);
        assert_eq!(b.take(500, at(3000)), Duration::ZERO);
        assert_eq!(b.take(1000, at(3000)), Duration::from_secs(1));
        // Time never runs backwards for it.
        assert_eq!(b.take(0, at(0)), Duration::from_secs(1));
    }
}
