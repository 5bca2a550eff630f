//! Hermetic tests of the fetcher's scheduling and verification, with the in-memory source of
//! [`crate::testing`]: no registry, no network, no sleeps for synchronisation (tests wait for
//! conditions: requests arrived, counters reached).
#![allow(clippy::single_range_in_vec_init)] // "one request of one range" is what tests check

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clip_archive::{Archive, Compression};

use crate::fetcher::Shared;
use crate::testing::{image, sha256_digest, MemorySource, Request, TestLayer};
use crate::{
    default_cache_dir, BlobSource, CacheOptions, FetchError, FetchOptions, FetchStats, Fetcher,
    PackSource, RangePack, RecordingSource, MAX_PACK_BYTES,
};

const SPAN: usize = 1000;
const WAIT: Duration = Duration::from_secs(60);

/// Layer contents: `spans` spans of [`SPAN`] bytes, each byte telling layer and position.
fn content(layer: u8, spans: usize) -> Vec<u8> {
    (0..spans * SPAN)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(layer))
        .collect()
}

fn plain(layer: u8, spans: usize) -> TestLayer {
    TestLayer {
        content: content(layer, spans),
        compression: Compression::None,
        span: SPAN,
    }
}

fn options(cache: &Path) -> FetchOptions {
    FetchOptions {
        cache: CacheOptions {
            dir: cache.to_path_buf(),
            max_bytes: 1 << 30,
        },
        read_timeout: WAIT,
        readahead_spans: 0,
        ..FetchOptions::default()
    }
}

struct Setup {
    archive: Arc<Archive<'static>>,
    source: Arc<MemorySource>,
    layers: Vec<TestLayer>,
    _cache: tempfile::TempDir,
    cache_dir: std::path::PathBuf,
}

fn setup(layers: Vec<TestLayer>) -> Setup {
    let (archive, source) = image(&layers).unwrap();
    let cache = tempfile::tempdir().unwrap();
    Setup {
        archive,
        source,
        layers,
        cache_dir: cache.path().to_path_buf(),
        _cache: cache,
    }
}

impl Setup {
    fn fetcher(&self, tune: impl FnOnce(&mut FetchOptions)) -> Fetcher {
        let mut options = options(&self.cache_dir);
        tune(&mut options);
        Fetcher::with_source(self.archive.clone(), self.source.clone(), options).unwrap()
    }

    fn shared(&self, tune: impl FnOnce(&mut FetchOptions)) -> Arc<Shared> {
        let mut options = options(&self.cache_dir);
        tune(&mut options);
        Shared::start(self.archive.clone(), self.source.clone(), options).unwrap()
    }

    fn digest(&self, layer: usize) -> String {
        self.archive.layers()[layer].digest.clone()
    }

    /// The expected bytes `[offset, offset + len)` of layer `layer`.
    fn bytes(&self, layer: usize, offset: usize, len: usize) -> &[u8] {
        &self.layers[layer].content[offset..offset + len]
    }
}

/// Reads `len` bytes at `offset` of layer `layer` and checks them.
fn read_ok(s: &Setup, f: &Fetcher, layer: u32, offset: usize, len: usize) {
    let mut buf = vec![0; len];
    let n = f.read_at(layer, offset as u64, &mut buf).unwrap();
    assert_eq!(n, len);
    assert_eq!(&buf[..], s.bytes(layer as usize, offset, len));
}

/// Waits until `cond` holds (at most [`WAIT`]): a condition, not a duration.
fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "gave up waiting until {what}");
        std::thread::yield_now();
    }
}

fn ranges(source: &MemorySource) -> Vec<std::ops::Range<u64>> {
    source
        .requests()
        .into_iter()
        .map(|r| match r {
            Request::Range { range, .. } => range,
            Request::Blob { .. } => panic!("unexpected whole-blob read"),
        })
        .collect()
}

#[test]
fn neighbouring_spans_of_a_read_are_one_request_within_max_request_bytes() {
    let s = setup(vec![plain(0, 10)]);
    let f = s.fetcher(|_| {});
    read_ok(&s, &f, 0, 0, 10 * SPAN);
    assert_eq!(ranges(&s.source), [0..10 * SPAN as u64]);
    let stats = f.stats();
    assert_eq!(
        (
            stats.registry_requests,
            stats.spans_fetched,
            stats.cache_misses
        ),
        (1, 10, 10)
    );
    // Cached now: no request at all.
    read_ok(&s, &f, 0, 500, 5000);
    assert_eq!(s.source.request_count(), 1);
    assert_eq!(f.stats().cache_hits, 6);

    // Three spans a request at most.
    let s = setup(vec![plain(1, 10)]);
    let f = s.fetcher(|o| o.max_request_bytes = 3 * SPAN as u64);
    read_ok(&s, &f, 0, 0, 10 * SPAN);
    // (Requests made by several workers at once: in any order.)
    let mut got = ranges(&s.source);
    got.sort_by_key(|r| r.start);
    assert_eq!(got, [0..3000, 3000..6000, 6000..9000, 9000..10_000]);
    assert!(got.iter().all(|r| r.end - r.start <= 3 * SPAN as u64));
}

#[test]
fn one_fetch_per_span_however_many_readers() {
    let s = setup(vec![plain(0, 4)]);
    let f = s.fetcher(|o| o.workers = 4);
    s.source.hold();
    const READERS: u64 = 8;
    std::thread::scope(|scope| {
        for _ in 0..READERS {
            scope.spawn(|| read_ok(&s, &f, 0, 1000, 1000));
        }
        // Every reader has missed the cache (and claimed or joined the fetch) before the
        // registry answers.
        until("every reader missed", || f.stats().cache_misses == READERS);
        assert!(s.source.wait_for_requests(1, WAIT));
        s.source.release();
    });
    assert_eq!(ranges(&s.source), [1000..2000]);
    let stats = f.stats();
    assert_eq!((stats.spans_fetched, stats.registry_requests), (1, 1));
}

#[test]
fn readahead_stops_at_the_end_of_the_file_being_read() {
    let s = setup(vec![plain(0, 20)]);
    let f = s.fetcher(|o| o.readahead_spans = 4);
    // A file of spans 0..3 (ending inside span 2), read sequentially to its end.
    let file_end = 2 * SPAN as u64 + 500;
    let mut buf = vec![0; SPAN];
    for at in [0, SPAN as u64] {
        assert_eq!(
            f.read_file_at(0, at, &mut buf, file_end, Instant::now())
                .unwrap(),
            SPAN
        );
    }
    assert!(f.wait_idle(WAIT));
    assert_eq!(f.stats().readahead_spans, 1, "span 2, the file's last");
    // The same reads of a file that goes on: four spans ahead.
    let g = setup(vec![plain(0, 20)]);
    let f = g.fetcher(|o| o.readahead_spans = 4);
    for at in [0, SPAN as u64] {
        f.read_file_at(0, at, &mut buf, 20 * SPAN as u64, Instant::now())
            .unwrap();
    }
    assert!(f.wait_idle(WAIT));
    assert_eq!(f.stats().readahead_spans, 4, "spans 2..6");
}

#[test]
fn demand_is_served_while_readahead_stalls_and_queued_readahead_waits() {
    let s = setup(vec![plain(0, 20), plain(1, 20), plain(2, 20)]);
    // Spans 0 and 1 of layers 0 and 2 are cached by an earlier fetcher without readahead.
    {
        let f = s.fetcher(|_| {});
        read_ok(&s, &f, 0, 0, 2 * SPAN);
        read_ok(&s, &f, 2, 0, 2 * SPAN);
    }
    let before = s.source.request_count();
    // Two workers: one for background work at most, one always free for demand.
    let f = s.fetcher(|o| {
        o.workers = 2;
        o.readahead_spans = 4;
    });
    s.source.hold_blob(&s.digest(0));
    // Sequential reads of layer 0 (cache hits) start readahead, which stalls.
    read_ok(&s, &f, 0, 0, SPAN);
    read_ok(&s, &f, 0, SPAN, SPAN);
    assert!(s.source.wait_for_requests(before + 1, WAIT));
    // Sequential reads of layer 2 queue more readahead: no background slot is free for it.
    read_ok(&s, &f, 2, 0, SPAN);
    read_ok(&s, &f, 2, SPAN, SPAN);
    // A demand read of layer 1 is served all the same, before the queued readahead.
    read_ok(&s, &f, 1, 5 * SPAN, SPAN);
    let digests: Vec<String> = s.source.requests()[before..]
        .iter()
        .map(|r| match r {
            Request::Range { digest, .. } | Request::Blob { digest } => digest.clone(),
        })
        .collect();
    assert_eq!(digests, [s.digest(0), s.digest(1)]);
    s.source.release();
    assert!(f.wait_idle(WAIT));
    let stats = f.stats();
    assert_eq!(stats.readahead_spans, 8, "spans 2..6 of layers 0 and 2");
    assert!(s.source.requests()[before + 2..]
        .iter()
        .all(|r| matches!(r, Request::Range { digest, .. } if *digest == s.digest(2))));
    // Read-ahead spans are served from the cache.
    let before = f.stats();
    read_ok(&s, &f, 2, 2 * SPAN, 4 * SPAN);
    let after = f.stats();
    assert_eq!(after.cache_misses, before.cache_misses);
    assert_eq!(after.cache_hits, before.cache_hits + 4);
}

#[test]
fn a_stalled_source_times_the_read_out_and_the_fetch_goes_on() {
    let s = setup(vec![plain(0, 4)]);
    let f = s.fetcher(|o| o.read_timeout = Duration::from_millis(200));
    s.source.hold();
    let started = Instant::now();
    let mut buf = vec![0; SPAN];
    let err = f.read_at(0, 0, &mut buf).unwrap_err();
    assert!(
        matches!(err, FetchError::Timeout { span: 0, .. }),
        "{err:?}"
    );
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(err.errno(), libc::EIO);
    assert_eq!(f.stats().timeouts, 1);
    // The fetch was not abandoned: once the registry answers, the span is cached.
    assert!(f.read_cached(0, 0, &mut buf).is_none());
    s.source.release();
    assert!(f.wait_idle(WAIT));
    assert_eq!(f.read_cached(0, 0, &mut buf).unwrap().unwrap(), SPAN);
    assert_eq!(&buf[..], s.bytes(0, 0, SPAN));
    assert_eq!(s.source.request_count(), 1);
}

#[test]
fn a_read_budget_counts_from_when_the_request_arrived() {
    let s = setup(vec![plain(0, 4)]);
    let f = s.fetcher(|o| o.read_timeout = Duration::from_secs(5));
    s.source.hold();
    let mut buf = vec![0; SPAN];
    // Asked for long ago: its budget is spent already, whatever the queue.
    let since = Instant::now() - Duration::from_secs(10);
    let err = f.read_at_since(0, 0, &mut buf, since).unwrap_err();
    assert!(matches!(err, FetchError::Timeout { .. }), "{err:?}");
    s.source.release();
}

#[test]
fn transient_failures_are_retried_within_the_read_budget() {
    let s = setup(vec![plain(0, 4)]);
    let f = s.fetcher(|_| {});
    s.source.fail_next(2);
    read_ok(&s, &f, 0, 0, SPAN);
    assert_eq!(s.source.request_count(), 3);
    let stats = f.stats();
    assert_eq!((stats.fetch_errors, stats.spans_fetched), (2, 1));

    // A registry that keeps failing: the read fails with its error once the budget is spent.
    let f = s.fetcher(|o| o.read_timeout = Duration::from_millis(300));
    s.source.fail_next(usize::MAX);
    let mut buf = vec![0; SPAN];
    let err = f.read_at(0, 2 * SPAN as u64, &mut buf).unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    assert!(
        matches!(err, FetchError::Registry { span: Some(2), .. }),
        "{err:?}"
    );
    s.source.fail_next(0);
}

#[test]
fn wrong_bytes_are_refused_counted_and_never_cached() {
    let s = setup(vec![plain(0, 4)]);
    let f = s.fetcher(|_| {});
    s.source.corrupt_next(1);
    let mut buf = vec![0; SPAN];
    let err = f.read_at(0, 0, &mut buf).unwrap_err();
    assert!(
        matches!(err, FetchError::DigestMismatch { span: 0, .. }),
        "{err:?}"
    );
    let stats = f.stats();
    assert_eq!((stats.verify_failures, stats.fetch_errors), (1, 1));
    assert!(f.read_cached(0, 0, &mut buf).is_none(), "nothing cached");
    assert_eq!(s.source.distrusted(), 1);
    // The next read fetches again, and gets the right bytes.
    read_ok(&s, &f, 0, 0, SPAN);
    assert_eq!(s.source.request_count(), 2);

    // Behind mirrors, bytes that do not verify are fetched once more within the same read
    // (the source is told to distrust its mirrors first).
    let s = setup(vec![plain(1, 4)]);
    let f = s.fetcher(|_| {});
    s.source.set_mirrors(true);
    s.source.corrupt_next(1);
    read_ok(&s, &f, 0, 0, SPAN);
    assert_eq!(s.source.request_count(), 2);
    assert_eq!(s.source.distrusted(), 1);
    assert_eq!(f.stats().verify_failures, 1);
}

#[test]
fn a_span_too_large_for_memory_is_streamed_and_verified() {
    // One zstd frame (one span) decoding to more than the in-memory limit.
    let big = crate::run::MAX_BUFFERED_OUTPUT as usize + 4096;
    let content: Vec<u8> = (0..big).map(|i| (i / 4096) as u8).collect();
    let s = setup(vec![TestLayer {
        content,
        compression: Compression::Zstd,
        span: big,
    }]);
    let f = s.fetcher(|_| {});
    // A whole-blob read whose stream does not verify: refused, nothing cached.
    s.source.corrupt_next(1);
    let mut buf = vec![0; 100];
    let err = f.read_at(0, 5000, &mut buf).unwrap_err();
    assert!(
        matches!(
            err,
            FetchError::DigestMismatch { span: 0, .. } | FetchError::Decode { .. }
        ),
        "{err:?}"
    );
    assert!(f.read_cached(0, 5000, &mut buf).is_none());
    read_ok(&s, &f, 0, big - 100, 100);
    assert!(s
        .source
        .requests()
        .iter()
        .all(|r| matches!(r, Request::Blob { .. })));
    assert!(f.read_cached(0, 0, &mut buf).is_some());
}

#[test]
fn shutting_down_cancels_queued_fetches_and_lets_running_ones_finish() {
    let s = setup(vec![plain(0, 10)]);
    // One worker: the second read's fetch is queued behind the first.
    let shared = s.shared(|o| o.workers = 1);
    s.source.hold();
    std::thread::scope(|scope| {
        let first = scope.spawn(|| {
            let mut buf = vec![0; SPAN];
            shared
                .read_at(0, 0, &mut buf, u64::MAX, Instant::now())
                .map(|_| buf)
        });
        assert!(s.source.wait_for_requests(1, WAIT));
        let second = scope.spawn(|| {
            let mut buf = vec![0; SPAN];
            shared.read_at(0, 5 * SPAN as u64, &mut buf, u64::MAX, Instant::now())
        });
        until("the second read missed", || {
            shared.stats().cache_misses == 2
        });
        // What dropping the fetcher does.
        shared.shutdown();
        let err = second.join().unwrap().unwrap_err();
        assert!(
            matches!(err, FetchError::Cancelled { span: 5, .. }),
            "{err:?}"
        );
        s.source.release();
        assert_eq!(first.join().unwrap().unwrap(), s.bytes(0, 0, SPAN));
    });
    assert_eq!(s.source.request_count(), 1, "the queued fetch never ran");
    assert_eq!(shared.flights.len(), 0);
}

#[test]
fn a_panicking_fetch_fails_its_readers_and_the_worker_goes_on() {
    let s = setup(vec![plain(0, 4)]);
    // One worker: if the panic killed it, nothing would serve the second read.
    let shared = s.shared(|o| o.workers = 1);
    let mut buf = vec![0u8; 10];
    shared.panic_in_fetch.store(true, Ordering::SeqCst);
    let err = shared
        .read_at(0, 0, &mut buf, u64::MAX, Instant::now())
        .unwrap_err();
    assert!(
        matches!(err, FetchError::Panicked { span: 0, .. }),
        "{err:?}"
    );
    assert_eq!(err.errno(), libc::EIO);
    assert!(shared.wait_idle(WAIT));
    // The same worker takes the next job, and the failed span was not remembered as claimed.
    shared.panic_in_fetch.store(false, Ordering::SeqCst);
    assert_eq!(
        shared
            .read_at(0, 0, &mut buf, u64::MAX, Instant::now())
            .unwrap(),
        10
    );
    assert_eq!(&buf[..], s.bytes(0, 0, 10));
    assert_eq!(shared.stats().timeouts, 0);
    shared.shutdown();
}

#[test]
fn reads_past_the_end_and_of_unknown_layers_are_refused() {
    let s = setup(vec![plain(0, 2)]);
    let f = s.fetcher(|_| {});
    let mut buf = vec![0; 10];
    assert_eq!(f.read_at(0, 2 * SPAN as u64, &mut buf).unwrap(), 0);
    let err = f.read_at(0, 2 * SPAN as u64 + 1, &mut buf).unwrap_err();
    assert_eq!(err.errno(), libc::EINVAL);
    assert_eq!(f.read_at(9, 0, &mut buf).unwrap_err().errno(), libc::EINVAL);
    // A read across the end is cut at the end.
    let mut buf = vec![0; 2 * SPAN];
    assert_eq!(f.read_at(0, 1500, &mut buf).unwrap(), 500);
    assert_eq!(
        f.stats(),
        FetchStats {
            registry_requests: 1,
            bytes_fetched: 1000,
            spans_fetched: 1,
            cache_misses: 1,
            ..FetchStats::default()
        }
    );
}

#[test]
fn fetcher_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Fetcher>();
}

#[test]
fn default_cache_dir_is_absolute() {
    let dir = default_cache_dir();
    assert!(dir.is_absolute(), "{}", dir.display());
    assert!(dir.ends_with("clip") || dir.to_string_lossy().contains("clip-cache-"));
}

#[test]
fn stats_serialize_with_their_field_names() {
    let json = serde_json::to_value(FetchStats::default()).unwrap();
    for field in [
        "registry_requests",
        "bytes_fetched",
        "spans_fetched",
        "cache_hits",
        "cache_misses",
        "verify_failures",
        "fetch_errors",
        "readahead_spans",
        "timeouts",
    ] {
        assert_eq!(json[field], 0, "{field}");
    }
}

#[test]
fn a_profile_is_prefetched_coalesced_and_its_hits_counted() {
    let s = setup(vec![plain(0, 20), plain(1, 20)]);
    // Two workers: one background worker, so the prefetch runs its batches in order.
    let f = s.fetcher(|o| o.workers = 2);
    // Span 2 of layer 0 is cached already: skipped.
    read_ok(&s, &f, 0, 2 * SPAN, SPAN);
    let before = s.source.request_count();
    let queued = f.prefetch(&[(0, 6), (0, 5), (1, 3), (0, 2), (0, 7), (0, 99), (7, 0)]);
    assert_eq!(queued, 5, "pairs that name no span are ignored");
    assert!(f.wait_idle(WAIT));
    // Neighbours coalesced (5..8 in one request), in layer order within the batch.
    let mut got = ranges(&s.source)[before..].to_vec();
    got.sort_by_key(|r| r.start);
    assert_eq!(got, [3 * SPAN as u64..4 * SPAN as u64, 5000..8000]);
    let stats = f.stats();
    assert_eq!((stats.prefetch_spans, stats.prefetch_hits), (4, 0));
    assert_eq!(stats.prefetch_wasted, 4);
    // A read of prefetched spans is served from the cache, and hits once per span.
    let requests = s.source.request_count();
    read_ok(&s, &f, 0, 5 * SPAN, 2 * SPAN);
    read_ok(&s, &f, 0, 5 * SPAN, SPAN);
    let mut buf = vec![0; SPAN];
    assert_eq!(
        f.read_cached(1, 3 * SPAN as u64, &mut buf)
            .unwrap()
            .unwrap(),
        SPAN
    );
    assert_eq!(s.source.request_count(), requests);
    let stats = f.stats();
    assert_eq!((stats.prefetch_hits, stats.prefetch_wasted), (3, 1));
    // A span not prefetched is no hit.
    read_ok(&s, &f, 0, 12 * SPAN, SPAN);
    assert_eq!(f.stats().prefetch_hits, 3);
}

#[test]
fn a_read_of_a_span_in_flight_for_the_prefetch_waits_for_it() {
    let s = setup(vec![plain(0, 8)]);
    let f = s.fetcher(|o| o.workers = 2);
    s.source.hold();
    f.prefetch(&[(0, 3)]);
    assert!(s.source.wait_for_requests(1, WAIT));
    std::thread::scope(|scope| {
        let reader = scope.spawn(|| read_ok(&s, &f, 0, 3 * SPAN, SPAN));
        until("the reader joined the fetch", || {
            f.stats().cache_misses == 1
        });
        s.source.release();
        reader.join().unwrap();
    });
    assert_eq!(ranges(&s.source), [3000..4000], "fetched once");
    let stats = f.stats();
    assert_eq!((stats.prefetch_spans, stats.prefetch_hits), (1, 1));
}

#[test]
fn reads_go_before_the_prefetch_and_fetch_what_it_has_not_claimed() {
    let s = setup(vec![plain(0, 8), plain(1, 8)]);
    let f = s.fetcher(|o| o.workers = 2);
    // The prefetch's first batch stalls on layer 0; its later batches wait behind it.
    s.source.hold_blob(&s.digest(0));
    let mut profile = vec![(0, 0)];
    profile.extend((0..40).map(|i| (1, i % 8)));
    f.prefetch(&profile);
    assert!(s.source.wait_for_requests(1, WAIT));
    // A read of layer 1 does not wait for the prefetch: it fetches the span itself.
    read_ok(&s, &f, 1, 4 * SPAN, SPAN);
    s.source.release();
    assert!(f.wait_idle(WAIT));
    // And the prefetch did not fetch that span again.
    let layer1: Vec<_> = s
        .source
        .requests()
        .into_iter()
        .filter_map(|r| match r {
            Request::Range { digest, range } if digest == s.digest(1) => Some(range),
            _ => None,
        })
        .collect();
    let fetched: u64 = layer1.iter().map(|r| r.end - r.start).sum();
    assert_eq!(
        fetched,
        8 * SPAN as u64,
        "each span of layer 1 once: {layer1:?}"
    );
}

#[test]
fn the_fill_fetches_what_is_not_cached() {
    let s = setup(vec![plain(0, 10), plain(1, 10)]);
    let f = s.fetcher(|_| {});
    read_ok(&s, &f, 1, 0, SPAN);
    assert_eq!(f.fill(None), 20);
    assert!(f.wait_idle(WAIT));
    let stats = f.stats();
    assert_eq!((stats.fill_total, stats.fill_done), (20, 20));
    assert_eq!(
        stats.spans_fetched, 20,
        "the span read first is not fetched again"
    );
    // Everything is local now.
    let requests = s.source.request_count();
    read_ok(&s, &f, 0, 0, 10 * SPAN);
    read_ok(&s, &f, 1, 0, 10 * SPAN);
    assert_eq!(s.source.request_count(), requests);
}

#[test]
fn a_fill_paused_by_its_rate_ends_with_the_fetcher() {
    let s = setup(vec![plain(0, 10)]);
    let shared = s.shared(|o| {
        o.max_request_bytes = SPAN as u64;
        o.workers = 2;
    });
    // One span's worth of burst, then a byte a second: the second request would wait 1000 s.
    shared.fill(Some(1));
    until("the first span is fetched", || {
        shared.stats().fill_done == 1
    });
    assert_eq!(s.source.request_count(), 1);
    shared.shutdown();
    until("the paused fill ended", || {
        shared.scheduler.wait_idle(Some(Instant::now()))
    });
    assert_eq!(
        s.source.request_count(),
        1,
        "nothing sent after the shutdown"
    );
}

#[test]
fn a_startup_pack_serves_the_replay_without_a_request() {
    let s = setup(vec![plain(0, 20), plain(1, 20)]);
    let profile = [(0, 6), (0, 5), (1, 3), (0, 2), (0, 7)];
    // The node that pushes the profile: its replay, on an empty cache, through a recorder.
    let recorder = Arc::new(RecordingSource::new(s.source.clone()));
    let pack = {
        let cache = tempfile::tempdir().unwrap();
        let f = Fetcher::with_source(s.archive.clone(), recorder.clone(), options(cache.path()))
            .unwrap();
        f.prefetch(&profile);
        assert!(f.wait_idle(WAIT));
        RangePack::parse(recorder.pack()).unwrap()
    };
    assert_eq!(
        pack.data_len(),
        5 * SPAN as u64,
        "what the replay read, once"
    );
    // Another node: the same replay reads the pack, not the registry.
    let before = s.source.request_count();
    let packed = Arc::new(PackSource::new(pack, s.source.clone()));
    let f = Fetcher::with_source(s.archive.clone(), packed, options(&s.cache_dir)).unwrap();
    f.prefetch(&profile);
    assert!(f.wait_idle(WAIT));
    assert_eq!(s.source.request_count(), before);
    let stats = f.stats();
    assert_eq!(
        (
            stats.registry_requests,
            stats.bytes_fetched,
            stats.pack_bytes,
            stats.prefetch_spans
        ),
        (0, 0, 5 * SPAN as u64, 5)
    );
    read_ok(&s, &f, 0, 5 * SPAN, 3 * SPAN);
    assert_eq!(s.source.request_count(), before, "served from the cache");
    // What the pack does not hold comes from the registry.
    read_ok(&s, &f, 1, 10 * SPAN, SPAN);
    assert_eq!(
        ranges(&s.source)[before..],
        [10 * SPAN as u64..11 * SPAN as u64]
    );
}

#[test]
fn bytes_of_a_pack_that_do_not_verify_are_refused_and_the_pack_dropped() {
    let s = setup(vec![plain(0, 20)]);
    // A pack of spans 4..8 of layer 0 with one byte of span 5 changed.
    let mut lying = s.bytes(0, 4 * SPAN, 4 * SPAN).to_vec();
    lying[SPAN + 10] ^= 1;
    let pack =
        RangePack::parse(RangePack::encode(&[(s.digest(0), 4 * SPAN as u64, lying)])).unwrap();
    let packed = Arc::new(PackSource::new(pack, s.source.clone()));
    let f = Fetcher::with_source(s.archive.clone(), packed, options(&s.cache_dir)).unwrap();
    // The read of span 5 gets the right bytes: the pack's did not verify, the registry's did.
    read_ok(&s, &f, 0, 5 * SPAN, SPAN);
    let stats = f.stats();
    assert_eq!((stats.verify_failures, stats.registry_requests), (1, 1));
    assert_eq!(ranges(&s.source), [5 * SPAN as u64..6 * SPAN as u64]);
    // And the pack is not used any more: span 6, which it holds, comes from the registry.
    read_ok(&s, &f, 0, 6 * SPAN, SPAN);
    assert_eq!(s.source.request_count(), 2);
    assert_eq!(
        f.stats().pack_bytes,
        SPAN as u64,
        "only the refused span came from it"
    );
}

/// The ranges asked of `source`, whole-blob reads left out.
fn range_requests(source: &MemorySource) -> Vec<std::ops::Range<u64>> {
    source
        .requests()
        .into_iter()
        .filter_map(|r| match r {
            Request::Range { range, .. } => Some(range),
            Request::Blob { .. } => None,
        })
        .collect()
}

/// A pack of spans `spans` of layer 0, as the registry would have it: a blob of `s.source`.
fn pack_blob(s: &Setup, spans: std::ops::Range<usize>) -> (String, u64) {
    let bytes = s.bytes(0, spans.start * SPAN, spans.len() * SPAN).to_vec();
    let pack = RangePack::encode(&[(s.digest(0), (spans.start * SPAN) as u64, bytes)]);
    let size = pack.len() as u64;
    (s.source.insert(pack), size)
}

#[test]
fn a_pack_downloaded_while_the_mount_starts_serves_the_replay() {
    let s = setup(vec![plain(0, 20)]);
    let (digest, size) = pack_blob(&s, 2..6);
    // The pack's download stalls: the replay's reads wait for it rather than ask for ranges.
    s.source.hold_blob(&digest);
    let packed = Arc::new(PackSource::without_pack(s.source.clone(), WAIT));
    let f = Fetcher::with_source(s.archive.clone(), packed.clone(), options(&s.cache_dir)).unwrap();
    assert_eq!(f.uncached(&[(0, 2), (0, 3), (0, 30), (9, 0)]), 2);
    packed.download(&digest, size).unwrap();
    f.prefetch(&[(0, 3), (0, 2), (0, 5)]);
    assert!(s.source.wait_for_requests(1, WAIT));
    s.source.release();
    assert!(f.wait_idle(WAIT));
    assert_eq!(
        s.source.requests(),
        [Request::Blob { digest }],
        "the pack, and not one range"
    );
    let stats = f.stats();
    assert_eq!((stats.registry_requests, stats.prefetch_spans), (0, 3));
    assert_eq!(stats.pack_bytes, 2 * SPAN as u64 + SPAN as u64);
    assert_eq!(f.uncached(&[(0, 2), (0, 3), (0, 5)]), 0);
    // A range the pack's table does not name goes to the registry.
    read_ok(&s, &f, 0, 10 * SPAN, SPAN);
    assert_eq!(
        range_requests(&s.source),
        [10 * SPAN as u64..11 * SPAN as u64]
    );
}

#[test]
fn a_read_the_pack_does_not_hold_does_not_wait_for_its_data() {
    let s = setup(vec![plain(0, 20)]);
    // The pack's download stalls after its table (one range: 16 + 56 bytes).
    let (digest, size) = pack_blob(&s, 2..6);
    s.source.stall_blob_after(&digest, 72);
    let packed = Arc::new(PackSource::without_pack(s.source.clone(), WAIT));
    let f = Fetcher::with_source(s.archive.clone(), packed.clone(), options(&s.cache_dir)).unwrap();
    packed.download(&digest, size).unwrap();
    // Not held: from the registry, while the pack's data is still to come.
    read_ok(&s, &f, 0, 12 * SPAN, SPAN);
    // Held: served from the pack once it is there, without a range request.
    s.source.release();
    read_ok(&s, &f, 0, 4 * SPAN, SPAN);
    assert_eq!(
        s.source.requests(),
        [
            Request::Blob {
                digest: digest.clone()
            },
            Request::Range {
                digest: s.digest(0),
                range: 12 * SPAN as u64..13 * SPAN as u64
            }
        ]
    );
    assert_eq!(f.stats().pack_bytes, SPAN as u64);
}

#[test]
fn a_read_waits_for_the_pack_no_longer_than_the_source_says() {
    let s = setup(vec![plain(0, 20)]);
    let (digest, size) = pack_blob(&s, 2..6);
    s.source.hold_blob(&digest);
    // No wait at all: the read the stalled pack would hold goes to the registry.
    let packed = Arc::new(PackSource::without_pack(s.source.clone(), Duration::ZERO));
    let f = Fetcher::with_source(s.archive.clone(), packed.clone(), options(&s.cache_dir)).unwrap();
    packed.download(&digest, size).unwrap();
    read_ok(&s, &f, 0, 3 * SPAN, SPAN);
    assert_eq!(
        range_requests(&s.source),
        [3 * SPAN as u64..4 * SPAN as u64]
    );
    // Once it came, it is used.
    s.source.release();
    until("the pack is there", || {
        packed.holds(&s.digest(0), &(4 * SPAN as u64..5 * SPAN as u64))
    });
    read_ok(&s, &f, 0, 4 * SPAN, SPAN);
    assert_eq!(range_requests(&s.source).len(), 1);
}

#[test]
fn a_pack_that_fails_to_download_is_not_used_and_reads_go_to_the_registry() {
    let s = setup(vec![plain(0, 20)]);
    // Named with a size it does not have: the stream fails its size check.
    let (digest, size) = pack_blob(&s, 2..6);
    for (digest, size) in [
        (digest.clone(), size + 1),
        (digest.clone(), size - 1),
        (sha256_digest(b"no such blob"), size),
        (digest, MAX_PACK_BYTES + 1),
    ] {
        let packed = Arc::new(PackSource::without_pack(s.source.clone(), WAIT));
        let cache = tempfile::tempdir().unwrap();
        let f =
            Fetcher::with_source(s.archive.clone(), packed.clone(), options(cache.path())).unwrap();
        packed.download(&digest, size).unwrap();
        let before = range_requests(&s.source).len();
        read_ok(&s, &f, 0, 3 * SPAN, SPAN);
        assert_eq!(
            range_requests(&s.source)[before..],
            [3 * SPAN as u64..4 * SPAN as u64],
            "{digest} of {size} bytes"
        );
        assert_eq!(f.stats().pack_bytes, 0);
    }
}

#[test]
fn a_pack_serves_its_first_ranges_before_the_rest_arrives() {
    let s = setup(vec![plain(0, 20)]);
    // Span 7 first (what the start needs first), then spans 2..4.
    let pack = RangePack::encode(&[
        (
            s.digest(0),
            7 * SPAN as u64,
            s.bytes(0, 7 * SPAN, SPAN).to_vec(),
        ),
        (
            s.digest(0),
            2 * SPAN as u64,
            s.bytes(0, 2 * SPAN, 2 * SPAN).to_vec(),
        ),
    ]);
    let size = pack.len() as u64;
    let digest = s.source.insert(pack);
    // The download stalls after the table (two ranges: 16 + 2 × 56 bytes) and span 7.
    s.source.stall_blob_after(&digest, 128 + SPAN);
    let packed = Arc::new(PackSource::without_pack(s.source.clone(), WAIT));
    let f = Fetcher::with_source(s.archive.clone(), packed.clone(), options(&s.cache_dir)).unwrap();
    packed.download(&digest, size).unwrap();
    read_ok(&s, &f, 0, 7 * SPAN, SPAN);
    assert_eq!(range_requests(&s.source), [], "span 7 came from the pack");
    s.source.release();
    read_ok(&s, &f, 0, 3 * SPAN, SPAN);
    assert_eq!(range_requests(&s.source), []);
    assert_eq!(f.stats().pack_bytes, 2 * SPAN as u64);
}
