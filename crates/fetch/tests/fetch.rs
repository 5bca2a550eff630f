//! The fetcher against a real registry: images built by the test kit, pushed to a loopback
//! CNCF Distribution, indexed by the real indexer, then read through `Fetcher` and compared
//! byte for byte with the layers' tar streams.

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clip_archive::Archive;
use clip_fetch::{CacheOptions, FetchError, FetchOptions, Fetcher};
use clip_indexer::{index_image, IndexOptions, Silent};
use clip_registry::{Client, ClientOptions, Platform, Reference, RetryPolicy};
use clip_testkit::{
    big_text_layer, Compression, Image, Layer, LayerOptions, ManifestFlavor, Registry,
};
use tempfile::TempDir;

/// Span size of the test indexes: small, so that a few MB make many spans.
const SPAN: u64 = 64 * 1024;

struct Setup {
    registry: Registry,
    archive: Arc<Archive<'static>>,
    reference: Reference,
    /// Per layer: the uncompressed tar.
    tars: Vec<Vec<u8>>,
    /// Per layer: the blob digest.
    digests: Vec<String>,
    cache: TempDir,
}

/// About `bytes` of compressible text plus two incompressible files.
fn fixture(bytes: u64, seed: u64) -> String {
    let mut text = big_text_layer(bytes, seed);
    text.push_str("/rand dir 0755 0 0\n");
    for i in 0..2 {
        text.push_str(&format!(
            "/rand/{i}.bin file 0644 0 0 size=150000 seed={}\n",
            seed * 10 + i
        ));
    }
    text
}

fn layer(compression: Compression, bytes: u64, seed: u64) -> Layer {
    Layer::from_fixture_with(
        &fixture(bytes, seed),
        &LayerOptions::default().compression(compression),
    )
}

fn client() -> Client {
    Client::new(ClientOptions::default()).unwrap()
}

fn setup(layers: Vec<Layer>, tag: &str) -> Setup {
    let registry = Registry::start();
    let tars = layers.iter().map(|l| l.tar().to_vec()).collect();
    let mut image = Image::new();
    for l in layers {
        image = image.layer(l);
    }
    let pushed = image.push(&registry, tag, ManifestFlavor::Oci);
    let reference: Reference = format!("{}/{tag}", registry.addr()).parse().unwrap();
    let options = IndexOptions {
        platform: "linux/amd64".parse::<Platform>().unwrap(),
        span: SPAN,
        jobs: 2,
    };
    let indexed = index_image(&client(), &reference, &options, &Silent).unwrap();
    let archive = Arc::new(Archive::open_owned(indexed.archive).unwrap());
    Setup {
        registry,
        archive,
        reference,
        tars,
        digests: pushed.layers.iter().map(|l| l.digest.clone()).collect(),
        cache: tempfile::tempdir().unwrap(),
    }
}

impl Setup {
    fn options(&self) -> FetchOptions {
        FetchOptions {
            cache: CacheOptions {
                dir: self.cache.path().to_path_buf(),
                max_bytes: 1 << 30,
            },
            ..FetchOptions::default()
        }
    }

    fn fetcher(&self, options: FetchOptions) -> Fetcher {
        Fetcher::new(
            self.archive.clone(),
            client(),
            self.reference.clone(),
            options,
        )
        .unwrap()
    }

    /// 206 answers for layer `layer`'s blob so far.
    fn range_requests(&self, layer: usize) -> usize {
        self.registry.range_requests_matching(&self.digests[layer])
    }

    fn span_count(&self, layer: u32) -> usize {
        self.archive.spans(layer).unwrap().len()
    }

    /// Uncompressed range of span `i` of `layer`.
    fn span_range(&self, layer: u32, i: usize) -> (u64, u64) {
        let s = self.archive.spans(layer).unwrap().get(i).unwrap();
        (s.uncompressed_offset, s.uncompressed_end)
    }

    /// Spans touched by reading `[offset, offset + len)` of `layer`.
    fn spans_of(&self, layer: u32, offset: u64, len: u64) -> Vec<usize> {
        let spans = self.archive.spans(layer).unwrap();
        let size = self.tars[layer as usize].len() as u64;
        let end = (offset + len).min(size);
        let (first, last) = (spans.find(offset).unwrap(), spans.find(end - 1).unwrap());
        (first..=last).collect()
    }
}

/// xorshift: deterministic "random" offsets.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn read(fetcher: &Fetcher, layer: u32, offset: u64, len: usize) -> Result<Vec<u8>, FetchError> {
    let mut buf = vec![0u8; len];
    let n = fetcher.read_at(layer, offset, &mut buf)?;
    buf.truncate(n);
    Ok(buf)
}

fn assert_same(got: &[u8], want: &[u8], what: &str) {
    assert!(
        got == want,
        "{what}: {} bytes read differ from the tar's {} bytes",
        got.len(),
        want.len()
    );
}

/// Random reads all over the layer, then the whole stream in 1 MiB reads.
fn check_reads(compression: Compression, tweak: impl FnOnce(&mut FetchOptions)) -> Setup {
    let setup = setup(vec![layer(compression, 2_500_000, 5)], "fetch:reads");
    let tar = &setup.tars[0];
    let size = tar.len() as u64;
    assert_eq!(setup.archive.layers()[0].uncompressed_size, size);
    let mut options = setup.options();
    tweak(&mut options);
    let fetcher = setup.fetcher(options);
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    for _ in 0..150 {
        let offset = rng.below(size);
        let len = 1 + rng.below(200_000) as usize;
        let got = read(&fetcher, 0, offset, len).unwrap();
        let end = (offset as usize + len).min(tar.len());
        assert_same(
            &got,
            &tar[offset as usize..end],
            &format!("read {len} at {offset}"),
        );
    }
    let mut whole = Vec::with_capacity(tar.len());
    loop {
        let chunk = read(&fetcher, 0, whole.len() as u64, 1 << 20).unwrap();
        if chunk.is_empty() {
            break;
        }
        whole.extend_from_slice(&chunk);
    }
    assert_same(&whole, tar, "the whole stream");
    assert!(read(&fetcher, 0, size, 10).unwrap().is_empty());
    assert!(matches!(
        read(&fetcher, 0, size + 1, 10),
        Err(FetchError::OutOfRange { .. })
    ));
    let stats = fetcher.stats();
    assert_eq!(stats.fetch_errors, 0, "{stats:?}");
    assert_eq!(stats.verify_failures, 0, "{stats:?}");
    assert!(
        stats.spans_fetched as usize <= setup.span_count(0),
        "each span fetched once at most: {stats:?}"
    );
    setup
}

#[test]
#[ignore = "integration: needs docker-registry (scripts/test.sh runs it)"]
fn gzip_reads_equal_the_tar() {
    let setup = check_reads(Compression::Gzip, |_| {});
    assert!(setup.span_count(0) > 20, "{} spans", setup.span_count(0));
}

#[test]
#[ignore = "integration: needs docker-registry (scripts/test.sh runs it)"]
fn multi_member_gzip_reads_equal_the_tar() {
    check_reads(Compression::GzipMultiMember(4), |_| {});
}

#[test]
#[ignore = "integration: needs docker-registry (scripts/test.sh runs it)"]
fn zstd_single_frame_reads_equal_the_tar() {
    let setup = check_reads(Compression::Zstd, |_| {});
    assert_eq!(setup.span_count(0), 1, "a single-frame layer is one span");
}

#[test]
#[ignore = "integration: needs docker-registry (scripts/test.sh runs it)"]
fn zstd_single_frame_streams_through_the_cache() {
    // With a request cap below the layer's size the single span is streamed with one
    // whole-blob request through the hasher and the decoder into the cache file.
    let setup = check_reads(Compression::Zstd, |o| o.max_request_bytes = 64 * 1024);
    assert_eq!(setup.range_requests(0), 0, "streamed as one whole-blob GET");
    assert_eq!(
        setup.registry.requests_matching("GET", &setup.digests[0]),
        1 + 1, // the indexer's pass and ours
    );
}

#[test]
#[ignore = "integration: needs docker-registry (scripts/test.sh runs it)"]
fn zstd_multi_frame_reads_equal_the_tar() {
    // Frames of 20 kB, spans of at least 64 KiB: several frames per span.
    let setup = check_reads(Compression::ZstdMultiFrame(20_000), |_| {});
    assert!(setup.span_count(0) > 10, "{} spans", setup.span_count(0));
    let s = setup.archive.spans(0).unwrap().get(1).unwrap();
    assert!(s.uncompressed_end - s.uncompressed_offset >= 60_000);
}

#[test]
#[ignore = "integration: needs docker-registry (scripts/test.sh runs it)"]
fn uncompressed_reads_equal_the_tar() {
    let setup = check_reads(Compression::None, |_| {});
    assert!(setup.span_count(0) > 20, "{} spans", setup.span_count(0));
}

#[test]
#[ignore = "integration: needs docker-registry (scripts/test.sh runs it)"]
fn uncompressed_spans_larger_than_a_request_stream_in_pieces() {
    check_reads(Compression::None, |o| o.max_request_bytes = 20_000);
}

#[test]
#[ignore = "integration: needs docker-registry (scripts/test.sh runs it)"]
fn a_small_read_fetches_one_span_with_one_request() {
    let setup = setup(vec![layer(Compression::Gzip, 2_000_000, 1)], "fetch:one");
    let fetcher = setup.fetcher(setup.options());
    let (start, end) = setup.span_range(0, 7);
    let offset = start + (end - start) / 2 - 2048;
    let before = setup.range_requests(0);
    let got = read(&fetcher, 0, offset, 4096).unwrap();
    assert_same(
        &got,
        &setup.tars[0][offset as usize..offset as usize + 4096],
        "4 KiB",
    );
    let stats = fetcher.stats();
    assert_eq!(stats.spans_fetched, 1, "{stats:?}");
    assert_eq!(stats.registry_requests, 1, "{stats:?}");
    assert_eq!((stats.cache_hits, stats.cache_misses), (0, 1), "{stats:?}");
    assert_eq!(setup.range_requests(0) - before, 1, "exactly one 206");
    let (c0, c1) = {
        let s = setup.archive.spans(0).unwrap().get(7).unwrap();
        (s.compressed_offset, s.compressed_end)
    };
    assert_eq!(
        stats.bytes_fetched,
        c1 - c0,
        "only the span's compressed bytes"
    );

    // The same bytes again: a cache hit, no request.
    let again = read(&fetcher, 0, offset, 4096).unwrap();
    assert_eq!(again, got);
    let stats = fetcher.stats();
    assert_eq!(
        (stats.cache_hits, stats.registry_requests),
        (1, 1),
        "{stats:?}"
    );
    assert_eq!(setup.range_requests(0) - before, 1);
}

#[test]
#[ignore = "integration: needs docker-registry (scripts/test.sh runs it)"]
fn neighbouring_missing_spans_are_coalesced() {
    let setup = setup(
        vec![layer(Compression::Gzip, 2_000_000, 2)],
        "fetch:coalesce",
    );
    let fetcher = setup.fetcher(setup.options());
    let (a, _) = setup.span_range(0, 4);
    let (_, b) = setup.span_range(0, 6);
    let (offset, len) = (a + 100, (b - a - 200) as usize);
    assert_eq!(setup.spans_of(0, offset, len as u64), vec![4, 5, 6]);
    let before = setup.range_requests(0);
    let got = read(&fetcher, 0, offset, len).unwrap();
    assert_same(
        &got,
        &setup.tars[0][offset as usize..offset as usize + len],
        "3 spans",
    );
    let stats = fetcher.stats();
    assert_eq!(stats.spans_fetched, 3, "{stats:?}");
    assert_eq!(stats.registry_requests, 1, "{stats:?}");
    assert_eq!(
        setup.range_requests(0) - before,
        1,
        "one Range request for 3 spans"
    );

    // A read over a cached span between two missing ones: two requests.
    let (c, _) = setup.span_range(0, 3);
    let (_, d) = setup.span_range(0, 7);
    let got = read(&fetcher, 0, c, (d - c) as usize).unwrap();
    assert_same(&got, &setup.tars[0][c as usize..d as usize], "spans 3..=7");
    assert_eq!(setup.range_requests(0) - before, 3);
    assert_eq!(fetcher.stats().spans_fetched, 5);
}

#[test]
#[ignore = "integration: needs docker-registry (scripts/test.sh runs it)"]
fn the_request_cap_splits_coalesced_fetches() {
    let setup = setup(vec![layer(Compression::None, 1_000_000, 3)], "fetch:cap");
    let mut options = setup.options();
    options.max_request_bytes = 2 * SPAN; // two uncompressed spans per request
    let fetcher = setup.fetcher(options);
    let (_, end) = setup.span_range(0, 5);
    let before = setup.range_requests(0);
    let got = read(&fetcher, 0, 0, end as usize).unwrap();
    assert_same(&got, &setup.tars[0][..end as usize], "spans 0..=5");
    assert_eq!(
        setup.range_requests(0) - before,
        3,
        "6 spans, 2 per request"
    );
}

#[test]
#[ignore = "integration: needs docker-registry (scripts/test.sh runs it)"]
fn a_warm_cache_serves_the_image_without_the_registry() {
    let setup = setup(
        vec![
            layer(Compression::Gzip, 1_000_000, 4),
            layer(Compression::ZstdMultiFrame(80_000), 600_000, 5),
            layer(Compression::None, 500_000, 6),
            layer(Compression::Zstd, 400_000, 7),
        ],
        "fetch:warm",
    );
    let read_all = |fetcher: &Fetcher| {
        for (i, tar) in setup.tars.iter().enumerate() {
            let got = read(fetcher, i as u32, 0, tar.len() + 10).unwrap();
            assert_same(&got, tar, &format!("layer {i}"));
        }
    };
    let cold = setup.fetcher(setup.options());
    read_all(&cold);
    let total_spans: usize = (0..4).map(|l| setup.span_count(l)).sum();
    assert_eq!(cold.stats().spans_fetched as usize, total_spans);
    drop(cold);

    let mark = setup.registry.log_mark();
    // A second fetcher on the same cache, whose registry does not even exist.
    let nowhere = closed_port_reference();
    let warm = Fetcher::new(setup.archive.clone(), client(), nowhere, setup.options()).unwrap();
    read_all(&warm);
    let mut rng = Rng(99);
    for _ in 0..100 {
        let layer = rng.below(4) as usize;
        let tar = &setup.tars[layer];
        let offset = rng.below(tar.len() as u64) as usize;
        let got = read(&warm, layer as u32, offset as u64, 10_000).unwrap();
        assert_same(
            &got,
            &tar[offset..(offset + 10_000).min(tar.len())],
            "warm read",
        );
    }
    let stats = warm.stats();
    assert_eq!(stats.registry_requests, 0, "{stats:?}");
    assert_eq!(stats.spans_fetched, 0, "{stats:?}");
    assert_eq!(stats.cache_misses, 0, "{stats:?}");
    assert!(setup.registry.requests_since(mark).is_empty());
}

#[test]
#[ignore = "integration: needs docker-registry (scripts/test.sh runs it)"]
fn concurrent_readers_fetch_every_span_once() {
    let setup = setup(
        vec![layer(Compression::Gzip, 3_000_000, 8)],
        "fetch:threads",
    );
    let mut options = setup.options();
    options.readahead_spans = 0;
    options.workers = 3;
    let fetcher = setup.fetcher(options);
    let tar = &setup.tars[0];
    let size = tar.len() as u64;
    let touched = std::sync::Mutex::new(BTreeSet::new());
    std::thread::scope(|scope| {
        for t in 0..16u64 {
            let (fetcher, setup, touched) = (&fetcher, &setup, &touched);
            scope.spawn(move || {
                let mut rng = Rng(0x9e37_79b9 + t * 7919);
                for _ in 0..40 {
                    // Few distinct places, so that threads collide on spans.
                    let offset = rng.below(12) * size / 12 + rng.below(100_000);
                    let offset = offset.min(size - 1);
                    let len = 1 + rng.below(150_000) as usize;
                    let got = read(fetcher, 0, offset, len).unwrap();
                    let end = (offset as usize + len).min(tar.len());
                    assert_same(&got, &tar[offset as usize..end], "concurrent read");
                    touched
                        .lock()
                        .unwrap()
                        .extend(setup.spans_of(0, offset, len as u64));
                }
            });
        }
    });
    let stats = fetcher.stats();
    let distinct = touched.into_inner().unwrap().len() as u64;
    assert_eq!(stats.spans_fetched, distinct, "{stats:?}");
    assert_eq!(stats.fetch_errors, 0, "{stats:?}");
    assert!(stats.registry_requests <= distinct, "{stats:?}");
}

/// Flips one byte of a blob in the registry's storage, in the middle of span `span`.
fn corrupt_blob(setup: &Setup, layer: usize, span: usize) {
    let s = setup
        .archive
        .spans(layer as u32)
        .unwrap()
        .get(span)
        .unwrap();
    let at = (s.compressed_offset + s.compressed_end) / 2;
    let path = setup.registry.blob_path(&setup.digests[layer]);
    let mut blob = std::fs::read(&path).unwrap();
    blob[at as usize] ^= 0x55;
    std::fs::write(&path, blob).unwrap();
}

/// Every cache entry file under the cache dir.
fn cache_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn entry_name(setup: &Setup, layer: u32, span: usize) -> String {
    let (a, b) = setup.span_range(layer, span);
    format!("{a:016x}-{:x}", b - a)
}

#[test]
#[ignore = "integration: needs docker-registry (scripts/test.sh runs it)"]
fn a_corrupt_blob_is_refused_span_by_span() {
    let setup = setup(
        vec![layer(Compression::Gzip, 2_000_000, 9)],
        "fetch:corrupt",
    );
    corrupt_blob(&setup, 0, 5);
    let mut options = setup.options();
    options.readahead_spans = 0;
    let fetcher = setup.fetcher(options);
    let (a, b) = setup.span_range(0, 5);
    for _ in 0..2 {
        let err = read(&fetcher, 0, a + 10, 100).unwrap_err();
        match &err {
            FetchError::DigestMismatch {
                layer_digest, span, ..
            } => {
                assert_eq!(*span, 5);
                assert_eq!(layer_digest, &setup.digests[0]);
            }
            other => panic!("expected a digest mismatch, got {other:?}"),
        }
        assert_eq!(err.errno(), libc::EIO);
    }
    // A read that covers the bad span fails as a whole, even when its neighbours are fine.
    let err = read(&fetcher, 0, a - 100, 200).unwrap_err();
    assert!(
        matches!(err, FetchError::DigestMismatch { span: 5, .. }),
        "{err:?}"
    );
    // Other spans are fine.
    for span in [0, 4, 6, 10] {
        let (x, y) = setup.span_range(0, span);
        let got = read(&fetcher, 0, x, (y - x) as usize).unwrap();
        assert_same(
            &got,
            &setup.tars[0][x as usize..y as usize],
            &format!("span {span}"),
        );
    }
    let stats = fetcher.stats();
    assert_eq!(stats.verify_failures, 3, "{stats:?}");
    let bad = entry_name(&setup, 0, 5);
    let files = cache_files(setup.cache.path());
    assert!(
        !files.iter().any(|p| p.ends_with(&bad)),
        "the bad span was cached: {files:?}"
    );
    assert!(files.iter().all(|p| !p.to_string_lossy().contains(".tmp-")));
    assert!(b > a);
}

#[test]
#[ignore = "integration: needs docker-registry (scripts/test.sh runs it)"]
fn a_corrupt_single_frame_zstd_blob_is_refused_when_streamed() {
    let setup = setup(
        vec![layer(Compression::Zstd, 800_000, 10)],
        "fetch:zcorrupt",
    );
    corrupt_blob(&setup, 0, 0);
    let mut options = setup.options();
    options.max_request_bytes = 32 * 1024; // stream it
    let fetcher = setup.fetcher(options);
    let err = read(&fetcher, 0, 1000, 100).unwrap_err();
    assert!(
        matches!(err, FetchError::DigestMismatch { span: 0, .. }),
        "{err:?}"
    );
    assert_eq!(fetcher.stats().verify_failures, 1);
    assert!(cache_files(setup.cache.path()).is_empty());
}

#[test]
#[ignore = "integration: needs docker-registry (scripts/test.sh runs it)"]
fn a_corrupt_cache_entry_is_detected_and_fetched_again() {
    let setup = setup(
        vec![layer(Compression::Gzip, 1_000_000, 11)],
        "fetch:badcache",
    );
    let (a, b) = setup.span_range(0, 3);
    let want = &setup.tars[0][a as usize..b as usize];
    {
        let fetcher = setup.fetcher(setup.options());
        assert_same(
            &read(&fetcher, 0, a, want.len()).unwrap(),
            want,
            "first read",
        );
    }
    let name = entry_name(&setup, 0, 3);
    let files = cache_files(setup.cache.path());
    let path = files.iter().find(|p| p.ends_with(&name)).expect("cached");
    let mut bytes = std::fs::read(path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(path, &bytes).unwrap();

    let fetcher = setup.fetcher(setup.options());
    assert_same(
        &read(&fetcher, 0, a, want.len()).unwrap(),
        want,
        "after corruption",
    );
    let stats = fetcher.stats();
    assert_eq!(stats.cache_corrupt, 1, "{stats:?}");
    assert_eq!(stats.spans_fetched, 1, "{stats:?}");
    // The entry was replaced by a good one: a third process reads it without the registry.
    let third = setup.fetcher(setup.options());
    assert_same(&read(&third, 0, a, want.len()).unwrap(), want, "third read");
    assert_eq!(third.stats().registry_requests, 0);
    assert_eq!(third.stats().cache_corrupt, 0);
}

#[test]
#[ignore = "integration: needs docker-registry (scripts/test.sh runs it)"]
fn eviction_keeps_the_cache_under_its_bound() {
    let setup = setup(vec![layer(Compression::Gzip, 2_000_000, 12)], "fetch:evict");
    let mut options = setup.options();
    let max = 6 * SPAN;
    options.cache.max_bytes = max;
    options.readahead_spans = 0;
    let fetcher = setup.fetcher(options);
    let tar = &setup.tars[0];
    let disk = || -> u64 {
        cache_files(setup.cache.path())
            .iter()
            .map(|p| std::fs::metadata(p).unwrap().len())
            .sum()
    };
    let mut pos = 0;
    while pos < tar.len() {
        let got = read(&fetcher, 0, pos as u64, 50_000).unwrap();
        assert_same(&got, &tar[pos..pos + got.len()], "read");
        pos += got.len();
        // Eviction runs in the background, never while a read waits.
        assert!(fetcher.wait_idle(Duration::from_secs(60)));
        assert!(disk() <= max, "{} bytes cached, bound {max}", disk());
    }
    assert!(disk() > 0);
    // Evicted spans come back.
    let got = read(&fetcher, 0, 0, 100_000).unwrap();
    assert_same(&got, &tar[..100_000], "re-read of evicted spans");
    assert!(fetcher.wait_idle(Duration::from_secs(60)));
    assert!(disk() <= max);
    let stats = fetcher.stats();
    assert!(
        stats.spans_fetched as usize > setup.span_count(0),
        "{stats:?}"
    );
}

#[test]
#[ignore = "integration: needs docker-registry (scripts/test.sh runs it)"]
fn sequential_reads_prefetch_the_next_spans() {
    let setup = setup(
        vec![layer(Compression::Gzip, 2_000_000, 13)],
        "fetch:readahead",
    );
    let fetcher = setup.fetcher(setup.options());
    let tar = &setup.tars[0];
    let chunk = 32 * 1024;
    // Not sequential: no readahead.
    read(&fetcher, 0, 0, chunk).unwrap();
    assert!(fetcher.wait_idle(Duration::from_secs(60)));
    assert_eq!(fetcher.stats().readahead_spans, 0);
    // Sequential: the next 4 spans are fetched in the background.
    let got = read(&fetcher, 0, chunk as u64, chunk).unwrap();
    assert_same(&got, &tar[chunk..2 * chunk], "second chunk");
    let last = *setup
        .spans_of(0, chunk as u64, chunk as u64)
        .last()
        .unwrap();
    assert!(fetcher.wait_idle(Duration::from_secs(60)));
    let stats = fetcher.stats();
    assert_eq!(stats.readahead_spans, 4, "{stats:?}");
    // They are served from the cache.
    let (a, _) = setup.span_range(0, last + 1);
    let (_, b) = setup.span_range(0, last + 4);
    let got = read(&fetcher, 0, a, (b - a) as usize).unwrap();
    assert_same(&got, &tar[a as usize..b as usize], "read-ahead spans");
    let after = fetcher.stats();
    assert_eq!(
        after.registry_requests, stats.registry_requests,
        "{after:?}"
    );
    assert_eq!(after.cache_hits - stats.cache_hits, 4, "{after:?}");
}

#[test]
#[ignore = "integration: needs docker-registry (scripts/test.sh runs it)"]
fn prefetch_caches_without_copying() {
    let setup = setup(
        vec![layer(Compression::Gzip, 1_000_000, 14)],
        "fetch:prefetch",
    );
    let fetcher = setup.fetcher(setup.options());
    let (a, b) = setup.span_range(0, 2);
    fetcher.fetch_range(0, a..b).unwrap();
    assert_eq!(fetcher.stats().spans_fetched, 1);
    let mut buf = vec![0u8; 1000];
    let got = fetcher
        .read_cached(0, a + 100, &mut buf)
        .expect("cached")
        .unwrap();
    assert_eq!(got, 1000);
    assert_same(
        &buf,
        &setup.tars[0][(a + 100) as usize..(a + 1100) as usize],
        "prefetched span",
    );
    assert_eq!(fetcher.stats().spans_fetched, 1);
    assert!(matches!(
        read(&fetcher, 9, 0, 1),
        Err(FetchError::Archive(_))
    ));
}

/// A reference to a registry that is not there (a port nobody listens on).
fn closed_port_reference() -> Reference {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("127.0.0.1:{port}/nowhere:1").parse().unwrap()
}

fn impatient_client() -> Client {
    Client::new(ClientOptions {
        retry: RetryPolicy {
            max_attempts: 2,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(10),
            deadline: Duration::from_secs(1),
        },
        ..ClientOptions::default()
    })
    .unwrap()
}

#[test]
#[ignore = "integration: needs docker-registry (scripts/test.sh runs it)"]
fn new_does_not_touch_the_network_and_check_registry_does() {
    let setup = setup(vec![layer(Compression::Gzip, 300_000, 15)], "fetch:check");
    let mut options = setup.options();
    options.read_timeout = Duration::from_secs(1);
    let nowhere = Fetcher::new(
        setup.archive.clone(),
        impatient_client(),
        closed_port_reference(),
        options,
    )
    .unwrap();
    let err = nowhere.check_registry().unwrap_err();
    assert!(
        matches!(err, FetchError::Registry { span: None, .. }),
        "{err:?}"
    );
    // A read fails too, with the registry's error once its budget is spent trying again.
    let err = read(&nowhere, 0, 0, 10).unwrap_err();
    assert!(
        matches!(err, FetchError::Registry { span: Some(0), .. }),
        "{err:?}"
    );
    let stats = nowhere.stats();
    assert!(stats.fetch_errors >= 1, "{stats:?}");
    assert_eq!(stats.timeouts, 0, "{stats:?}");

    let mark = setup.registry.log_mark();
    let fetcher = setup.fetcher(setup.options());
    assert!(
        setup.registry.requests_since(mark).is_empty(),
        "new() made requests"
    );
    fetcher.check_registry().unwrap();
    assert_eq!(setup.registry.requests_since(mark).len(), 1);
}

#[test]
#[ignore = "integration: needs docker-registry (scripts/test.sh runs it)"]
fn a_read_times_out_and_a_later_read_succeeds() {
    let setup = setup(vec![layer(Compression::Gzip, 500_000, 16)], "fetch:timeout");
    // A "registry" that accepts connections and never answers.
    let stalled = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = stalled.local_addr().unwrap().port();
    let reference: Reference = format!("127.0.0.1:{port}/stalled:1").parse().unwrap();
    let mut options = setup.options();
    options.read_timeout = Duration::from_millis(300);
    let hung = Fetcher::new(
        setup.archive.clone(),
        impatient_client(),
        reference,
        options,
    )
    .unwrap();
    let err = read(&hung, 0, 0, 4096).unwrap_err();
    assert!(
        matches!(err, FetchError::Timeout { span: 0, .. }),
        "{err:?}"
    );
    assert_eq!(err.errno(), libc::EIO);
    assert_eq!(hung.stats().timeouts, 1);
    // Readers of the same span wait on the same (stalled) fetch and time out too.
    let err = read(&hung, 0, 100, 10).unwrap_err();
    assert!(matches!(err, FetchError::Timeout { .. }), "{err:?}");
    assert_eq!(
        hung.stats().registry_requests,
        1,
        "one fetch in flight, not two"
    );

    // Once a working registry is used, the same read succeeds (same cache directory).
    let fetcher = setup.fetcher(setup.options());
    let got = read(&fetcher, 0, 0, 4096).unwrap();
    assert_same(&got, &setup.tars[0][..4096], "after the timeout");
    drop(stalled);
}

#[test]
#[ignore = "integration: needs docker-registry (scripts/test.sh runs it)"]
fn read_cached_serves_only_what_is_cached_and_verified() {
    let setup = setup(
        vec![layer(Compression::Gzip, 1_000_000, 17)],
        "fetch:cached",
    );
    let mut options = setup.options();
    options.readahead_spans = 0;
    let fetcher = setup.fetcher(options.clone());
    let tar = &setup.tars[0];
    let (a, _) = setup.span_range(0, 2);
    let (_, b) = setup.span_range(0, 3);
    let (offset, len) = (a + 100, (b - a - 200) as usize);
    assert_eq!(setup.spans_of(0, offset, len as u64), vec![2, 3]);
    let want = &tar[offset as usize..offset as usize + len];
    let mut buf = vec![0u8; len];

    // Nothing cached: None, and nothing fetched or counted.
    assert!(fetcher.read_cached(0, offset, &mut buf).is_none());
    // Half of it cached: still None (it never fetches the other half).
    read(&fetcher, 0, a, 10).unwrap();
    assert!(fetcher.read_cached(0, offset, &mut buf).is_none());
    let stats = fetcher.stats();
    assert_eq!(stats.registry_requests, 1, "{stats:?}");
    assert_eq!((stats.cache_hits, stats.cache_misses), (0, 1), "{stats:?}");

    // After a read_at of the range, read_cached serves it, counting hits like read_at.
    assert_same(&read(&fetcher, 0, offset, len).unwrap(), want, "read_at");
    let before = fetcher.stats();
    buf.fill(0);
    let n = fetcher.read_cached(0, offset, &mut buf).unwrap().unwrap();
    assert_same(&buf[..n], want, "read_cached");
    let after = fetcher.stats();
    assert_eq!(after.cache_hits - before.cache_hits, 2, "{after:?}");
    assert_eq!(after.cache_misses, before.cache_misses, "{after:?}");
    assert_eq!(after.registry_requests, before.registry_requests);

    // Requests read_at would refuse too are answered; the end of the layer reads nothing.
    let size = tar.len() as u64;
    assert!(matches!(
        fetcher.read_cached(0, size + 1, &mut buf),
        Some(Err(FetchError::OutOfRange { .. }))
    ));
    assert!(matches!(
        fetcher.read_cached(7, 0, &mut buf),
        Some(Err(FetchError::Archive(_)))
    ));
    assert!(matches!(
        fetcher.read_cached(0, size, &mut buf),
        Some(Ok(0))
    ));
    drop(fetcher);

    // Another process on the warm cache: the entries are there but not verified by it yet,
    // and read_cached never hashes one. Once read_at verified them, read_cached serves them.
    let warm = Fetcher::new(
        setup.archive.clone(),
        client(),
        closed_port_reference(),
        options,
    )
    .unwrap();
    assert!(warm.read_cached(0, offset, &mut buf).is_none());
    assert_same(&read(&warm, 0, offset, len).unwrap(), want, "warm read_at");
    buf.fill(0);
    let n = warm.read_cached(0, offset, &mut buf).unwrap().unwrap();
    assert_same(&buf[..n], want, "warm read_cached");
    assert_eq!(warm.stats().registry_requests, 0);
}

/// A registry stand-in for one blob: answers Range requests (`206`, one per connection),
/// except that a request starting at a *stalled* offset gets no answer until
/// [`StallingBlobServer::release`].
struct StallingBlobServer {
    addr: String,
    state: Arc<(std::sync::Mutex<StallState>, std::sync::Condvar)>,
}

#[derive(Default)]
struct StallState {
    released: bool,
    stop: bool,
    /// Requests held so far.
    stalled: usize,
}

impl StallingBlobServer {
    fn start(blob: Vec<u8>, stall_at: Vec<u64>) -> StallingBlobServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let state = Arc::new((
            std::sync::Mutex::new(StallState::default()),
            std::sync::Condvar::new(),
        ));
        let (blob, stall_at, shared) = (Arc::new(blob), Arc::new(stall_at), state.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if shared.0.lock().unwrap().stop {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (blob, stall_at, shared) = (blob.clone(), stall_at.clone(), shared.clone());
                std::thread::spawn(move || {
                    let _ = serve_one(conn, &blob, &stall_at, &shared);
                });
            }
        });
        StallingBlobServer { addr, state }
    }

    /// Waits until `n` requests are being held.
    fn wait_stalled(&self, n: usize) {
        let (m, cv) = &*self.state;
        let mut s = m.lock().unwrap();
        while s.stalled < n {
            s = cv.wait(s).unwrap();
        }
    }

    fn stalled(&self) -> usize {
        self.state.0.lock().unwrap().stalled
    }

    fn release(&self) {
        let (m, cv) = &*self.state;
        m.lock().unwrap().released = true;
        cv.notify_all();
    }
}

impl Drop for StallingBlobServer {
    fn drop(&mut self) {
        let (m, cv) = &*self.state;
        {
            let mut s = m.lock().unwrap();
            s.released = true;
            s.stop = true;
        }
        cv.notify_all();
        let _ = std::net::TcpStream::connect(&self.addr); // wakes the accept loop
    }
}

fn serve_one(
    conn: std::net::TcpStream,
    blob: &[u8],
    stall_at: &[u64],
    state: &(std::sync::Mutex<StallState>, std::sync::Condvar),
) -> std::io::Result<()> {
    use std::io::{BufRead as _, BufReader, Write as _};
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut range = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("range") {
                range = value
                    .trim()
                    .strip_prefix("bytes=")
                    .and_then(|r| r.split_once('-'))
                    .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)));
            }
        }
    }
    let (first, last) = range.unwrap_or((0, blob.len() as u64 - 1));
    if stall_at.contains(&first) {
        let (m, cv) = state;
        let mut s = m.lock().unwrap();
        s.stalled += 1;
        cv.notify_all();
        while !s.released {
            s = cv.wait(s).unwrap();
        }
    }
    let body = &blob[first as usize..=last as usize];
    let mut out = conn;
    write!(
        out,
        "HTTP/1.1 206 Partial Content\r\nContent-Type: application/octet-stream\r\n\
         Content-Length: {}\r\nContent-Range: bytes {first}-{last}/{}\r\n\
         Connection: close\r\n\r\n",
        body.len(),
        blob.len()
    )?;
    out.write_all(body)?;
    out.flush()
}

#[test]
#[ignore = "integration: needs docker-registry (scripts/test.sh runs it)"]
fn stalled_readahead_never_blocks_a_demand_read() {
    let setup = setup(
        vec![layer(Compression::Gzip, 3_000_000, 18)],
        "fetch:starve",
    );
    assert!(setup.span_count(0) > 21, "{} spans", setup.span_count(0));
    let spans = setup.archive.spans(0).unwrap();
    let c_off = |i: usize| spans.get(i).unwrap().compressed_offset;
    // The two readahead windows below start at spans 1 and 11: the registry holds those.
    let blob = std::fs::read(setup.registry.blob_path(&setup.digests[0])).unwrap();
    let server = StallingBlobServer::start(blob, vec![c_off(1), c_off(11)]);
    let reference: Reference = format!("{}/fetch:starve", server.addr).parse().unwrap();
    let mut options = setup.options();
    options.workers = 2;
    options.readahead_spans = 4;
    let fetcher = Fetcher::new(setup.archive.clone(), client(), reference, options).unwrap();
    let tar = &setup.tars[0];
    let check = |offset: u64, what: &str| {
        let got = read(&fetcher, 0, offset, 1000).unwrap();
        assert_same(&got, &tar[offset as usize..offset as usize + 1000], what);
    };

    // A sequential reader at the start: readahead of spans 1..5 starts and stalls.
    check(0, "span 0");
    check(1000, "span 0, sequentially");
    server.wait_stalled(1);
    // A sequential reader elsewhere: a second readahead job (spans 11..15) is queued.
    let (s10, _) = setup.span_range(0, 10);
    check(s10, "span 10");
    check(s10 + 1000, "span 10, sequentially");
    // A demand read of another span is served: one worker is always kept for demand, so the
    // second readahead job has not even started.
    let (s20, _) = setup.span_range(0, 20);
    check(s20, "span 20, while readahead stalls");
    assert_eq!(server.stalled(), 1, "a second readahead job ran");

    // Once the registry answers, both readahead jobs complete.
    server.release();
    assert!(fetcher.wait_idle(Duration::from_secs(60)));
    let stats = fetcher.stats();
    assert_eq!(stats.readahead_spans, 8, "{stats:?}");
    assert_eq!(stats.fetch_errors, 0, "{stats:?}");
    assert_eq!(server.stalled(), 2);
}

/// Where span `span` of `layer` is cached (its directory created).
fn entry_path(setup: &Setup, layer: usize, span: usize) -> PathBuf {
    let hex = setup.digests[layer].strip_prefix("sha256:").unwrap();
    let dir = setup
        .cache
        .path()
        .join("v2/spans")
        .join(&hex[..2])
        .join(hex);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(entry_name(setup, layer as u32, span))
}

#[test]
#[ignore = "integration: needs docker-registry (scripts/test.sh runs it)"]
fn fifos_symlinks_and_directories_at_entry_paths_are_not_served() {
    let setup = setup(
        vec![layer(Compression::Gzip, 1_000_000, 19)],
        "fetch:planted",
    );
    let mut options = setup.options();
    options.readahead_spans = 0;
    let tar = &setup.tars[0];
    let want = |span: usize| {
        let (a, b) = setup.span_range(0, span);
        &tar[a as usize..b as usize]
    };
    let read_span = |fetcher: &Fetcher, span: usize| {
        let (a, b) = setup.span_range(0, span);
        let got = read(fetcher, 0, a, (b - a) as usize).unwrap();
        assert_same(&got, want(span), &format!("span {span}"));
    };

    // A sound entry of span 2, moved out of the cache and symlinked back into place.
    {
        let fetcher = setup.fetcher(options.clone());
        read_span(&fetcher, 2);
    }
    let elsewhere = tempfile::tempdir().unwrap();
    let target = elsewhere.path().join("entry");
    std::fs::rename(entry_path(&setup, 0, 2), &target).unwrap();
    std::os::unix::fs::symlink(&target, entry_path(&setup, 0, 2)).unwrap();
    // A FIFO at span 1's path: opening it for reading would block until a writer came.
    let fifo = entry_path(&setup, 0, 1);
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    // A directory at span 3's path, with something in it.
    let dir = entry_path(&setup, 0, 3);
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("something"), b"x").unwrap();

    let fetcher = setup.fetcher(options);
    for span in [1, 2, 3] {
        read_span(&fetcher, span);
    }
    let stats = fetcher.stats();
    assert_eq!(
        stats.cache_corrupt, 3,
        "the FIFO, the symlink and the directory: {stats:?}"
    );
    assert_eq!(
        stats.spans_fetched, 3,
        "the symlink was not followed: {stats:?}"
    );
    // All three were replaced by real entries; the symlink's target is intact.
    for span in [1, 2, 3] {
        let meta = std::fs::symlink_metadata(entry_path(&setup, 0, span)).unwrap();
        assert!(meta.is_file(), "span {span}: {:?}", meta.file_type());
    }
    assert!(target.is_file());
    // Regression: a directory at an entry path made its span be fetched again on every miss.
    for span in [1, 2, 3] {
        read_span(&fetcher, span);
    }
    let stats = fetcher.stats();
    assert_eq!(stats.spans_fetched, 3, "{stats:?}");
    assert_eq!(stats.cache_hits, 3, "{stats:?}");
    assert_eq!(stats.fetch_errors, 0, "{stats:?}");
}
