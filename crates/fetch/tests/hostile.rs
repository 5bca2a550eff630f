//! Archives that lie: the fetcher refuses them with errors, without panicking, allocating what
//! they claim or (where it can tell up front) touching the network.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use clip_archive::{
    write_archive, Archive, Compression, FileType, ImageMeta, Inode, Layer, Platform, Span, Tree,
};
use clip_fetch::{CacheOptions, FetchError, FetchOptions, Fetcher};
use clip_registry::{Client, ClientOptions, Reference, RetryPolicy};

const DIGEST: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

fn archive(layer: Layer) -> Arc<Archive<'static>> {
    let tree = Tree::new(Inode::new(FileType::Directory, 0o755));
    let meta = ImageMeta {
        reference: "127.0.0.1:1/hostile:1".into(),
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
    let bytes = write_archive(&meta, &[layer], &tree).unwrap();
    Arc::new(Archive::open_owned(bytes).unwrap())
}

fn layer(digest: &str, compression: Compression, size: u64, spans: Vec<Span>) -> Layer {
    Layer {
        digest: digest.into(),
        media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
        compression,
        compressed_size: size,
        uncompressed_size: size,
        diff_id: DIGEST.into(),
        span_size: 1 << 20,
        spans,
    }
}

fn span(c0: u64, c1: u64, u0: u64) -> Span {
    Span {
        compressed_offset: c0,
        compressed_end: c1,
        uncompressed_offset: u0,
        bits: 0,
        window: clip_archive::Window::default(),
        digest: [0; 32],
        content_digest: [0; 32],
    }
}

/// A port nobody listens on.
fn nowhere() -> Reference {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("127.0.0.1:{port}/hostile:1").parse().unwrap()
}

fn fetcher(archive: Arc<Archive<'static>>, cache: &std::path::Path) -> Result<Fetcher, FetchError> {
    let client = Client::new(ClientOptions {
        retry: RetryPolicy {
            max_attempts: 1,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(1),
            deadline: Duration::from_millis(100),
        },
        ..ClientOptions::default()
    })
    .unwrap();
    let options = FetchOptions {
        cache: CacheOptions {
            dir: cache.to_path_buf(),
            max_bytes: 1 << 30,
        },
        ..FetchOptions::default()
    };
    Fetcher::new(archive, client, nowhere(), options)
}

#[test]
fn a_layer_digest_that_is_not_a_digest_is_refused() {
    let cache = tempfile::tempdir().unwrap();
    for digest in ["sha256:../../../etc", "md5:00", "sha256:ABCD"] {
        let a = archive(layer(digest, Compression::None, 10, vec![span(0, 10, 0)]));
        let err = fetcher(a, cache.path()).unwrap_err();
        assert!(
            matches!(err, FetchError::InvalidLayerDigest { layer: 0, .. }),
            "{err:?}"
        );
    }
}

#[test]
fn an_absurd_gzip_span_is_refused_before_it_is_fetched() {
    let cache = tempfile::tempdir().unwrap();
    // One gzip span claiming a terabyte.
    let a = archive(layer(
        DIGEST,
        Compression::Gzip,
        1 << 40,
        vec![span(0, 1 << 40, 0)],
    ));
    let f = fetcher(a, cache.path()).unwrap();
    let mut buf = [0u8; 16];
    let err = f.read_at(0, 1 << 30, &mut buf).unwrap_err();
    assert!(
        matches!(err, FetchError::SpanTooLarge { span: 0, .. }),
        "{err:?}"
    );
    assert_eq!(f.stats().registry_requests, 0);
    assert_eq!(err.errno(), libc::EIO);
}

#[test]
fn reads_beyond_a_layer_and_of_missing_layers_are_errors() {
    let cache = tempfile::tempdir().unwrap();
    let a = archive(layer(DIGEST, Compression::None, 100, vec![span(0, 100, 0)]));
    let f = fetcher(a, cache.path()).unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(f.read_at(0, 100, &mut buf).unwrap(), 0);
    assert!(matches!(
        f.read_at(0, 101, &mut buf),
        Err(FetchError::OutOfRange {
            layer: 0,
            offset: 101,
            size: 100
        })
    ));
    assert!(matches!(
        f.read_at(1, 0, &mut buf),
        Err(FetchError::Archive(_))
    ));
    assert_eq!(f.read_at(0, 0, &mut []).unwrap(), 0);
    assert_eq!(f.stats().registry_requests, 0);
}

#[test]
fn a_cache_dir_that_cannot_be_created_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("file");
    std::fs::write(&file, b"not a directory").unwrap();
    let a = archive(layer(DIGEST, Compression::None, 10, vec![span(0, 10, 0)]));
    let err = fetcher(a, &file).unwrap_err();
    assert!(matches!(err, FetchError::CacheNotPrivate(_)), "{err:?}");
    assert!(err.to_string().contains("cannot create it"), "{err}");
}

#[test]
#[ignore = "integration: needs docker-registry (scripts/test.sh runs it)"]
fn a_streamed_span_longer_than_the_index_says_stops_at_once() {
    // A 4 MB uncompressed blob whose index says its second span holds 1 MB: streamed in
    // 100 kB requests, the copy notices after 1 MB and 100 kB, and stops there rather than
    // downloading the remaining 3 MB only to hash them.
    let registry = clip_testkit::Registry::start();
    let blob: Vec<u8> = (0..4_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let digest = registry.client().push_blob("hostile", &blob).unwrap();
    let span_digest = |bytes: &[u8]| -> [u8; 32] {
        use sha2::Digest as _;
        sha2::Sha256::digest(bytes).into()
    };
    let mut l = layer(&digest, Compression::None, blob.len() as u64, Vec::new());
    l.uncompressed_size = 1_000_100;
    l.spans = vec![
        Span {
            digest: span_digest(&blob[..100]),
            ..span(0, 100, 0)
        },
        Span {
            digest: span_digest(&blob[100..]),
            ..span(100, blob.len() as u64, 100)
        },
    ];
    let cache = tempfile::tempdir().unwrap();
    let options = FetchOptions {
        cache: CacheOptions {
            dir: cache.path().to_path_buf(),
            max_bytes: 1 << 30,
        },
        max_request_bytes: 100_000,
        readahead_spans: 0,
        ..FetchOptions::default()
    };
    let reference: Reference = format!("{}/hostile:1", registry.addr()).parse().unwrap();
    let f = Fetcher::new(
        archive(l),
        Client::new(ClientOptions::default()).unwrap(),
        reference,
        options,
    )
    .unwrap();
    let mut buf = [0u8; 16];
    let err = f.read_at(0, 500, &mut buf).unwrap_err();
    assert!(
        matches!(
            err,
            FetchError::LengthMismatch {
                span: 1,
                expected: 1_000_000,
                ..
            }
        ),
        "{err:?}"
    );
    let stats = f.stats();
    assert_eq!(stats.registry_requests, 11, "{stats:?}");
    assert_eq!(stats.bytes_fetched, 1_100_000, "{stats:?}");
    // Nothing of it was cached, not even a temp file.
    let leftovers: Vec<_> = std::fs::read_dir(cache.path().join("v2/spans"))
        .unwrap()
        .flat_map(|prefix| std::fs::read_dir(prefix.unwrap().path()).unwrap())
        .flat_map(|layer| std::fs::read_dir(layer.unwrap().path()).unwrap())
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
