//! Proof that the seek index works on its own: for many random offsets of a real multi-MB gzip
//! layer in a real registry, fetch only the compressed bytes of the covering span with an HTTP
//! Range request, check them against the span digest, resume inflation at the checkpoint and
//! compare with a full decompression. And: every span's content digest is the sha256 of its
//! uncompressed bytes, in every compression; a layer that is not what the image config's
//! diff_id says is refused.

use clip_archive::Archive;
use clip_indexer::{index_image, IndexOptions, Silent};
use clip_registry::{Client, ClientOptions, Platform, Reference};
use clip_testkit::{
    big_text_layer, Compression, Image, Layer, LayerOptions, ManifestFlavor, Registry,
};
use sha2::{Digest, Sha256};

fn check_random_reads(compression: Compression, tag: &str) {
    let registry = Registry::start();
    // Compressible text plus incompressible files: deflate blocks of every kind.
    let mut fixture = big_text_layer(6_000_000, 11);
    fixture.push_str("/rand dir 0755 0 0\n");
    for i in 0..4 {
        fixture.push_str(&format!(
            "/rand/{i}.bin file 0644 0 0 size=400000 seed={i}\n"
        ));
    }
    let layer =
        Layer::from_fixture_with(&fixture, &LayerOptions::default().compression(compression));
    let tar = layer.tar().to_vec();
    let pushed = Image::new()
        .layer(layer)
        .push(&registry, tag, ManifestFlavor::Oci);
    assert!(
        pushed.layers[0].size > 2_000_000,
        "a multi-MB compressed layer"
    );

    let client = Client::new(ClientOptions::default()).unwrap();
    let reference: Reference = format!("{}/{tag}", registry.addr()).parse().unwrap();
    let options = IndexOptions {
        platform: Platform::host(),
        span: 256 * 1024,
        jobs: 2,
    };
    let indexed = index_image(&client, &reference, &options, &Silent).unwrap();
    let archive = Archive::open(&indexed.archive).unwrap();
    let spans = archive.spans(0).unwrap();
    assert!(spans.len() > 20, "{} spans", spans.len());
    assert_eq!(archive.layers()[0].uncompressed_size, tar.len() as u64);
    assert_content_digests(&archive, &tar);

    let mark = registry.log_mark();
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let reads = 60;
    for _ in 0..reads {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let offset = x % tar.len() as u64;
        let i = spans.find(offset).expect("a span covers every offset");
        let span = spans.get(i).unwrap();
        assert!(span.uncompressed_offset <= offset && offset < span.uncompressed_end);

        let compressed = client
            .fetch_range(
                &reference,
                &pushed.layers[0].digest,
                span.compressed_offset..span.compressed_end,
            )
            .unwrap();
        let digest: [u8; 32] = Sha256::digest(&compressed).into();
        assert_eq!(
            digest, span.digest,
            "span {i}: fetched bytes match the span digest"
        );

        let window = archive.window(0, i).unwrap();
        let want = (offset - span.uncompressed_offset) as usize + 4096;
        let want = want.min((span.uncompressed_end - span.uncompressed_offset) as usize);
        let out = clip_zran::inflate_span(span.bits, &window, &compressed, want).unwrap();
        let start = span.uncompressed_offset as usize;
        assert!(
            out == tar[start..start + want],
            "span {i} at offset {offset}: bytes differ"
        );
    }
    let ranged = registry
        .requests_since(mark)
        .into_iter()
        .filter(|r| r.method == "GET" && r.is_partial())
        .count();
    assert_eq!(ranged, reads, "every read was one Range request");
}

/// Every span's content digest is the sha256 of exactly its uncompressed bytes.
fn assert_content_digests(archive: &Archive<'_>, tar: &[u8]) {
    let spans = archive.spans(0).unwrap();
    for i in 0..spans.len() {
        let span = spans.get(i).unwrap();
        let bytes = &tar[span.uncompressed_offset as usize..span.uncompressed_end as usize];
        let want: [u8; 32] = Sha256::digest(bytes).into();
        assert_eq!(span.content_digest, want, "span {i}");
    }
}

fn index(registry: &Registry, tag: &str) -> Result<Vec<u8>, clip_indexer::IndexError> {
    let client = Client::new(ClientOptions::default()).unwrap();
    let reference: Reference = format!("{}/{tag}", registry.addr()).parse().unwrap();
    let options = IndexOptions {
        platform: Platform::host(),
        span: 64 * 1024,
        jobs: 2,
    };
    index_image(&client, &reference, &options, &Silent).map(|i| i.archive)
}

#[test]
#[ignore = "integration: needs docker-registry (scripts/test.sh runs it)"]
fn content_digests_in_every_compression() {
    let registry = Registry::start();
    let fixture = big_text_layer(600_000, 3);
    for (n, compression) in [
        Compression::None,
        Compression::Gzip,
        Compression::GzipMultiMember(3),
        Compression::Zstd,
        Compression::ZstdMultiFrame(100_000),
    ]
    .into_iter()
    .enumerate()
    {
        let layer =
            Layer::from_fixture_with(&fixture, &LayerOptions::default().compression(compression));
        let tar = layer.tar().to_vec();
        let tag = format!("digests:{n}");
        Image::new()
            .layer(layer)
            .push(&registry, &tag, ManifestFlavor::Oci);
        let bytes = index(&registry, &tag).unwrap();
        let archive = Archive::open(&bytes).unwrap();
        assert_content_digests(&archive, &tar);
    }
}

#[test]
#[ignore = "integration: needs docker-registry (scripts/test.sh runs it)"]
fn a_layer_that_is_not_its_diff_id_is_refused() {
    let registry = Registry::start();
    let real = Layer::from_fixture("/a file 0644 0 0 content=\"real\\n\"");
    let other = Layer::from_fixture("/a file 0644 0 0 content=\"fake\\n\"");
    // The blob is the real layer; the config's diff_id commits to another tar.
    let lying = Layer::from_raw(
        other.tar().to_vec(),
        real.blob().to_vec(),
        Compression::Gzip,
    );
    Image::new()
        .layer(lying)
        .push(&registry, "lying:1", ManifestFlavor::Oci);
    let err = index(&registry, "lying:1").unwrap_err();
    assert!(
        matches!(
            err,
            clip_indexer::IndexError::DiffIdMismatch { index: 0, .. }
        ),
        "{err}"
    );
    assert!(err.to_string().contains(other.diff_id()), "{err}");
}

#[test]
#[ignore = "integration: needs docker-registry (scripts/test.sh runs it)"]
fn random_reads_through_span_checkpoints() {
    check_random_reads(Compression::Gzip, "seek:gzip");
}

#[test]
#[ignore = "integration: needs docker-registry (scripts/test.sh runs it)"]
fn random_reads_across_gzip_members() {
    check_random_reads(Compression::GzipMultiMember(5), "seek:members");
}
