//! A metadata-only archive: the seek windows are read by range from the complete index blob,
//! beside the spans they belong to, verified against the window digests of the metadata.
//! Hermetic: a real gzip layer indexed by the real indexer, served from memory.

use std::sync::Arc;
use std::time::Duration;

use clip_archive::{write_archive, Archive, Compression, FileType, Inode, Layer, Tree};
use clip_fetch::testing::{image_meta, sha256_digest, MemorySource, Request};
use clip_fetch::{CacheOptions, FetchError, FetchOptions, Fetcher};
use clip_testkit::{Layer as TestLayer, LayerOptions};

const SPAN: u64 = 256 << 10;

struct Setup {
    tar: Vec<u8>,
    /// The gzip layer blob.
    layer_blob: Vec<u8>,
    /// The complete index.
    complete: Vec<u8>,
    /// Its metadata alone.
    metadata: Arc<Archive<'static>>,
    layer_digest: String,
}

fn setup() -> Setup {
    let mut fixture = String::from("/rand dir 0755 0 0\n");
    for i in 0..12 {
        fixture.push_str(&format!(
            "/rand/{i}.txt file 0644 0 0 size=200000 seed={i} text\n"
        ));
    }
    let layer = TestLayer::from_fixture_with(
        &fixture,
        &LayerOptions::default().compression(clip_testkit::Compression::Gzip),
    );
    let indexed =
        clip_indexer::layer::index_layer(layer.blob(), Compression::Gzip, SPAN, &|_| {}).unwrap();
    assert!(
        indexed
            .spans
            .iter()
            .filter(|s| !s.window.is_empty())
            .count()
            >= 5,
        "checkpoints with windows"
    );
    let layer_digest = sha256_digest(layer.blob());
    let archive_layer = Layer {
        digest: layer_digest.clone(),
        media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
        compression: Compression::Gzip,
        compressed_size: indexed.compressed_size,
        uncompressed_size: indexed.uncompressed_size,
        diff_id: indexed.diff_id.clone(),
        span_size: SPAN,
        spans: indexed.spans,
    };
    let meta = image_meta("memory.test/windows:1");
    let tree = Tree::new(Inode::new(FileType::Directory, 0o755));
    let complete = write_archive(&meta, &[archive_layer], &tree).unwrap();
    let metadata_len = Archive::open(&complete).unwrap().metadata_len() as usize;
    let metadata = Arc::new(Archive::open_owned(complete[..metadata_len].to_vec()).unwrap());
    assert!(!metadata.has_windows());
    Setup {
        tar: layer.tar().to_vec(),
        layer_blob: layer.blob().to_vec(),
        complete,
        metadata,
        layer_digest,
    }
}

fn fetcher(
    s: &Setup,
    source: Arc<MemorySource>,
    windows_blob: Option<String>,
    cache: &std::path::Path,
) -> Fetcher {
    let options = FetchOptions {
        cache: CacheOptions {
            dir: cache.to_path_buf(),
            max_bytes: 1 << 30,
        },
        read_timeout: Duration::from_secs(60),
        readahead_spans: 0,
        windows_blob,
        ..FetchOptions::default()
    };
    Fetcher::with_source(s.metadata.clone(), source, options).unwrap()
}

fn source_with(s: &Setup, index_blob: &[u8]) -> (Arc<MemorySource>, String) {
    let source = Arc::new(MemorySource::new());
    assert_eq!(source.insert(s.layer_blob.clone()), s.layer_digest);
    let blob = source.insert(index_blob.to_vec());
    (source, blob)
}

#[test]
fn a_metadata_only_archive_reads_exactly_with_windows_from_the_index_blob() {
    let s = setup();
    let (source, blob) = source_with(&s, &s.complete);
    let cache = tempfile::tempdir().unwrap();
    let f = fetcher(&s, source.clone(), Some(blob.clone()), cache.path());

    // Span by span, last first: each span is a request of its own and needs its window.
    let table = s.metadata.spans(0).unwrap();
    for i in (0..table.len()).rev() {
        let span = table.get(i).unwrap();
        let (a, b) = (span.uncompressed_offset, span.uncompressed_end);
        let mut buf = vec![0; (b - a) as usize];
        assert_eq!(f.read_at(0, a, &mut buf).unwrap(), buf.len());
        assert!(
            buf == s.tar[a as usize..b as usize],
            "span {i} reads exactly"
        );
    }
    let mut all = vec![0; s.tar.len()];
    assert_eq!(f.read_at(0, 0, &mut all).unwrap(), s.tar.len());
    assert!(all == s.tar, "the layer reads exactly");
    let stats = f.stats();
    assert!(stats.window_bytes_fetched > 0, "{stats:?}");

    // Every window read is a range of the index blob beyond the metadata: one per span that
    // has a window, nothing read whole.
    let requests = source.requests();
    let window_reads: Vec<_> = requests
        .iter()
        .filter_map(|r| match r {
            Request::Range { digest, range } if *digest == blob => Some(range.clone()),
            _ => None,
        })
        .collect();
    assert!(window_reads
        .iter()
        .all(|r| r.start >= s.metadata.metadata_len() && r.end <= s.complete.len() as u64));
    let windowed = (0..table.len())
        .filter(|&i| s.metadata.window_ref(0, i).unwrap().is_some())
        .count();
    assert_eq!(window_reads.len(), windowed, "{window_reads:?}");
    assert!(
        requests.iter().all(|r| !matches!(r, Request::Blob { .. })),
        "nothing is read whole: {requests:?}"
    );
    assert_eq!(
        stats.window_bytes_fetched,
        window_reads.iter().map(|r| r.end - r.start).sum::<u64>()
    );

    // Cached spans need neither their bytes nor their windows again.
    let before = source.request_count();
    let mut again = vec![0; s.tar.len()];
    f.read_at(0, 0, &mut again).unwrap();
    assert!(again == s.tar);
    assert_eq!(source.request_count(), before);
}

#[test]
fn a_run_of_spans_needs_only_its_first_window() {
    let s = setup();
    let (source, blob) = source_with(&s, &s.complete);
    let cache = tempfile::tempdir().unwrap();
    let f = fetcher(&s, source.clone(), Some(blob.clone()), cache.path());
    let table = s.metadata.spans(0).unwrap();
    let (first, last) = (2, 5);
    let a = table.get(first).unwrap().uncompressed_offset;
    let b = table.get(last).unwrap().uncompressed_end;
    let mut buf = vec![0; (b - a) as usize];
    assert_eq!(f.read_at(0, a, &mut buf).unwrap(), buf.len());
    assert!(buf == s.tar[a as usize..b as usize]);
    let w = s.metadata.window_ref(0, first).unwrap().unwrap();
    let requests = source.requests();
    let window_reads: Vec<_> = requests
        .iter()
        .filter(|r| matches!(r, Request::Range { digest, .. } if *digest == blob))
        .collect();
    assert_eq!(
        window_reads,
        [&Request::Range {
            digest: blob.clone(),
            range: w.offset..w.offset + u64::from(w.len)
        }],
        "one window, the first span's: {requests:?}"
    );
    assert_eq!(f.stats().spans_fetched, (last - first + 1) as u64);
}

#[test]
fn a_window_that_does_not_verify_is_refused() {
    let s = setup();
    let metadata_len = s.metadata.metadata_len() as usize;
    let mut damaged = s.complete.clone();
    damaged[metadata_len + 100] ^= 1;
    let (source, blob) = source_with(&s, &damaged);
    let cache = tempfile::tempdir().unwrap();
    let f = fetcher(&s, source, Some(blob), cache.path());
    // The first window (of the first span that has one) is the damaged one.
    let span = (0..s.metadata.spans(0).unwrap().len())
        .find(|&i| s.metadata.window_ref(0, i).unwrap().is_some())
        .unwrap();
    let start = s
        .metadata
        .spans(0)
        .unwrap()
        .get(span)
        .unwrap()
        .uncompressed_offset;
    let mut buf = vec![0; 4096];
    let err = f.read_at(0, start, &mut buf).unwrap_err();
    assert!(
        matches!(err, FetchError::WindowMismatch { span: sp, .. } if sp == span),
        "{err}"
    );
    assert_eq!(err.errno(), libc::EIO);
    assert!(f.stats().verify_failures >= 1);
    // A span without a window (the first) still reads.
    let mut first = vec![0; 4096];
    assert_eq!(f.read_at(0, 0, &mut first).unwrap(), 4096);
    assert_eq!(first, s.tar[..4096]);
}

#[test]
fn without_the_index_blob_a_span_with_a_window_cannot_be_read() {
    let s = setup();
    let (source, _) = source_with(&s, &s.complete);
    let cache = tempfile::tempdir().unwrap();
    let f = fetcher(&s, source, None, cache.path());
    let span = s.metadata.spans(0).unwrap().get(3).unwrap();
    assert!(span.has_window);
    let mut buf = vec![0; 100];
    let err = f
        .read_at(0, span.uncompressed_offset, &mut buf)
        .unwrap_err();
    assert!(err.to_string().contains("metadata only"), "{err}");
    // The first span needs no window.
    assert_eq!(f.read_at(0, 0, &mut buf).unwrap(), 100);
}
