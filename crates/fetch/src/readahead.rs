//! Readahead: a read that starts where the previous read of the same layer ended looks
//! sequential, and the next [`crate::FetchOptions::readahead_spans`] spans are fetched in the
//! background, topped up when half of the window is used (so that they come in batches,
//! coalesced into fewer requests).
//!
//! A readahead job is a [`Job::Spans`]: it claims its spans one run at a time, right before
//! fetching that run (see `run.rs`).
//!
//! # What it owns, what it must not touch
//!
//! Each layer's [`ReadaheadState`] (where the last read ended, the first span not yet handed
//! to readahead) and the choice of readahead jobs. It never blocks a reader:
//! [`Shared::note_access`] only queues a job (dropped when too many are queued: readahead is a
//! hint). Fetching is `run.rs`'s; which worker runs the job is the scheduler's.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::fetcher::{LayerState, Shared};
use crate::queue::Priority;
use crate::run::Job;
use crate::SpanRef;

/// Readahead jobs beyond this many queued are dropped (readahead is a hint).
const MAX_QUEUED_READAHEAD: usize = 64;

/// Where a layer's sequential reads are.
#[derive(Debug)]
pub(crate) struct ReadaheadState {
    /// Where the last read of this layer ended (`u64::MAX` before the first).
    last_end: AtomicU64,
    /// First span not yet handed to readahead.
    next: AtomicUsize,
}

impl Default for ReadaheadState {
    fn default() -> Self {
        ReadaheadState {
            last_end: AtomicU64::new(u64::MAX),
            next: AtomicUsize::new(0),
        }
    }
}

/// The spans readahead should fetch after a read of `[offset, end)` that ended in span
/// `last_span`, with a window of `ahead` spans over a layer of `span_count` spans; `None`
/// when the read does not look sequential or the window is full enough. Updates `state`.
fn plan(
    state: &ReadaheadState,
    offset: u64,
    end: u64,
    last_span: usize,
    ahead: usize,
    span_count: usize,
) -> Option<Range<usize>> {
    let previous_end = state.last_end.swap(end, Ordering::Relaxed);
    if previous_end != offset {
        state.next.store(0, Ordering::Relaxed);
        return None;
    }
    // Top the window up only when half of it is used.
    let next = state.next.load(Ordering::Relaxed);
    if next.saturating_sub(last_span + 1) > ahead / 2 {
        return None;
    }
    let from = (last_span + 1).max(next);
    let to = last_span
        .saturating_add(1)
        .saturating_add(ahead)
        .min(span_count);
    if from >= to {
        return None;
    }
    state.next.fetch_max(to, Ordering::Relaxed);
    Some(from..to)
}

impl Shared {
    /// Remembers where a read of `[offset, end)` (over `spans`) ended, and queues readahead
    /// when reads of the layer look sequential, up to the span that holds `file_end - 1` (the
    /// end of the file being read) at most.
    pub(crate) fn note_access(
        &self,
        l: &LayerState,
        spans: &[SpanRef],
        offset: u64,
        end: u64,
        file_end: u64,
    ) {
        let ahead = self.options.readahead_spans;
        // Readahead needs a worker of its own besides the one kept for demand.
        if ahead == 0 || self.options.workers < 2 {
            return;
        }
        let Some(last) = spans.last() else {
            return;
        };
        // Spans up to the one holding the file's last byte.
        let limit = self
            .archive
            .spans(l.index)
            .ok()
            .and_then(|t| t.find(file_end.saturating_sub(1)))
            .map_or(l.span_count, |i| i.saturating_add(1));
        if let Some(spans) = plan(&l.readahead, offset, end, last.index, ahead, limit) {
            let job = Job::Spans {
                layer: l.index,
                spans: spans.collect(),
            };
            self.submit(Priority::Readahead, job, MAX_QUEUED_READAHEAD);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequential_reads_move_a_window_topped_up_at_half() {
        let s = ReadaheadState::default();
        // The first read is not sequential (nothing before it).
        assert_eq!(plan(&s, 0, 10, 0, 4, 100), None);
        // The next one is: four spans after the one it ended in.
        assert_eq!(plan(&s, 10, 20, 1, 4, 100), Some(2..6));
        // Still more than half of the window ahead: nothing.
        assert_eq!(plan(&s, 20, 30, 2, 4, 100), None);
        // Half used: topped up from where the window ended.
        assert_eq!(plan(&s, 30, 40, 3, 4, 100), Some(6..8));
        // A jump is not sequential, and resets the window.
        assert_eq!(plan(&s, 1000, 1010, 50, 4, 100), None);
        assert_eq!(plan(&s, 1010, 1020, 51, 4, 100), Some(52..56));
        // Never past the last span.
        assert_eq!(plan(&s, 1020, 1030, 98, 4, 100), Some(99..100));
        assert_eq!(plan(&s, 1030, 1040, 99, 4, 100), None);
    }
}
