//! Rough numbers for the fetcher against a loopback registry, with baselines from the same run:
//!
//! ```text
//! cargo run --release -p clip-fetch --example measure [MB]
//! ```
//!
//! Builds one gzip layer of about MB (default 64) megabytes of text, indexes it with 1 MiB spans,
//! then measures: cold 4 KiB reads (one span fetched each), a cold sequential read of the whole
//! layer (readahead on), warm sequential reads (first with a fresh fetcher, which verifies each
//! cache file once, then again), warm random 4 KiB reads, and as the baseline the same reads
//! with `pread` from the tar on local disk. Prints; asserts only that the bytes are right.

use std::os::unix::fs::FileExt as _;
use std::sync::Arc;
use std::time::Instant;

use clip_archive::Archive;
use clip_fetch::{CacheOptions, FetchOptions, Fetcher};
use clip_indexer::{index_image, IndexOptions, Silent};
use clip_registry::{Client, ClientOptions, Platform, Reference};
use clip_testkit::{
    big_text_layer, Compression, Image, Layer, LayerOptions, ManifestFlavor, Registry,
};

const CHUNK: usize = 128 * 1024;

/// A `kB` field of `/proc/self/status`.
fn status_kb(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn mb_s(bytes: usize, secs: f64) -> f64 {
    bytes as f64 / secs / 1e6
}

/// Reads the whole layer in `CHUNK` reads; checks the bytes when `tar` is given (outside the
/// timing).
fn read_all(fetcher: &Fetcher, size: usize, tar: Option<&[u8]>) -> f64 {
    let mut buf = vec![0u8; CHUNK];
    let mut took = 0.0;
    let mut pos = 0;
    while pos < size {
        let start = Instant::now();
        let n = fetcher.read_at(0, pos as u64, &mut buf).unwrap();
        took += start.elapsed().as_secs_f64();
        if let Some(tar) = tar {
            assert!(buf[..n] == tar[pos..pos + n]);
        }
        pos += n;
    }
    took
}

fn main() {
    let mb: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(64);
    let registry = Registry::start();
    let layer = Layer::from_fixture_with(
        &big_text_layer(mb << 20, 1),
        &LayerOptions::default().compression(Compression::Gzip),
    );
    let tar = layer.tar().to_vec();
    let blob_size = layer.blob().len();
    Image::new()
        .layer(layer)
        .push(&registry, "measure:1", ManifestFlavor::Oci);
    let client = Client::new(ClientOptions::default()).unwrap();
    let reference: Reference = format!("{}/measure:1", registry.addr()).parse().unwrap();
    let options = IndexOptions {
        platform: "linux/amd64".parse::<Platform>().unwrap(),
        span: 1 << 20,
        jobs: 1,
    };
    let indexed = index_image(&client, &reference, &options, &Silent).unwrap();
    let archive = Arc::new(Archive::open_owned(indexed.archive).unwrap());
    let spans = archive.spans(0).unwrap();
    println!(
        "layer: {} MB tar, {} MB gzip, {} spans",
        tar.len() >> 20,
        blob_size >> 20,
        spans.len()
    );

    let cache = tempfile::tempdir().unwrap();
    let fetch_options = FetchOptions {
        cache: CacheOptions {
            dir: cache.path().to_path_buf(),
            max_bytes: 1 << 40,
        },
        ..FetchOptions::default()
    };
    let new_fetcher = || {
        Fetcher::new(
            archive.clone(),
            client.clone(),
            reference.clone(),
            fetch_options.clone(),
        )
        .unwrap()
    };

    // Cold 4 KiB reads, one per span, every other span (no readahead: not sequential).
    let fetcher = new_fetcher();
    let mut buf = vec![0u8; 4096];
    let mut n = 0;
    let start = Instant::now();
    for i in (0..spans.len()).step_by(2) {
        let s = spans.get(i).unwrap();
        let at = s.uncompressed_offset + (s.uncompressed_end - s.uncompressed_offset) / 2;
        let got = fetcher.read_at(0, at, &mut buf).unwrap();
        assert!(buf[..got] == tar[at as usize..at as usize + got]);
        n += 1;
    }
    let per = start.elapsed().as_secs_f64() / n as f64;
    println!(
        "cold 4 KiB read (one span fetched, verified, inflated, cached): {:.2} ms ({n} reads, {} requests)",
        per * 1e3,
        fetcher.stats().registry_requests
    );
    drop(fetcher);
    drop(std::fs::remove_dir_all(cache.path().join("v1")));

    // Cold sequential read of everything, with the peak RSS growth it causes.
    let rss_before = status_kb("VmRSS");
    let _ = std::fs::write("/proc/self/clear_refs", "5"); // resets VmHWM
    let fetcher = new_fetcher();
    let secs = read_all(&fetcher, tar.len(), Some(&tar));
    let stats = fetcher.stats();
    println!(
        "cold sequential read: {:.0} MB/s ({} requests, {} spans by readahead, {} MB fetched)",
        mb_s(tar.len(), secs),
        stats.registry_requests,
        stats.readahead_spans,
        stats.bytes_fetched >> 20
    );
    fetcher.wait_idle(std::time::Duration::from_secs(60));
    drop(fetcher);
    println!(
        "peak RSS growth during the cold sequential read: {} MB",
        status_kb("VmHWM").saturating_sub(rss_before) >> 10
    );

    // Warm: a fresh fetcher (first open of each entry verifies it), then a second pass.
    let fetcher = new_fetcher();
    let first = read_all(&fetcher, tar.len(), None);
    let second = read_all(&fetcher, tar.len(), Some(&tar));
    assert_eq!(fetcher.stats().registry_requests, 0);
    println!(
        "warm sequential read, {CHUNK}-byte reads: {:.0} MB/s first pass (verifying), {:.0} MB/s after",
        mb_s(tar.len(), first),
        mb_s(tar.len(), second)
    );

    // Warm random 4 KiB reads.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let reads = 200_000;
    let start = Instant::now();
    for _ in 0..reads {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let at = x % (tar.len() as u64 - 4096);
        fetcher.read_at(0, at, &mut buf).unwrap();
    }
    let warm_random = start.elapsed().as_secs_f64();
    println!(
        "warm random 4 KiB reads: {:.1} µs each",
        warm_random / reads as f64 * 1e6
    );

    // Baseline: the tar on local disk, same read sizes.
    let path = cache.path().join("layer.tar");
    std::fs::write(&path, &tar).unwrap();
    let file = std::fs::File::open(&path).unwrap();
    let mut big = vec![0u8; CHUNK];
    let start = Instant::now();
    let mut pos = 0;
    while pos < tar.len() {
        let n = file.read_at(&mut big, pos as u64).unwrap();
        pos += n;
    }
    let native = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..reads {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let at = x % (tar.len() as u64 - 4096);
        file.read_at(&mut buf, at).unwrap();
    }
    let native_random = start.elapsed().as_secs_f64();
    println!(
        "baseline pread of the tar on disk: {:.0} MB/s sequential, {:.1} µs per random 4 KiB",
        mb_s(tar.len(), native),
        native_random / reads as f64 * 1e6
    );
    println!(
        "ratios (fetcher / native throughput): sequential warm {:.2}, random warm {:.2}",
        native / second,
        native_random / warm_random
    );
}
