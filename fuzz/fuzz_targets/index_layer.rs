//! Fuzzes one layer's pass: arbitrary bytes as a layer blob, compressed as the first byte says
//! (none, gzip, zstd), through `clip_indexer::layer::index_layer`; what it yields is merged
//! (as two layers, so that whiteouts meet lower content) and written as an archive, which must
//! never fail (a writer error would mean the indexer let bad input through).
//!
//! Errors are fine, panics are bugs.
//!
//! Random bytes almost never make a valid tar header, so uncompressed inputs are also fed to
//! the tar reader directly with the checksum of every non-zero block fixed up: that fuzzes the
//! field parsers, PAX records, long names and the entry rules behind the checksum.
#![no_main]

use clip_archive::{Compression, ImageMeta, Layer, Platform};
use clip_indexer::layer::{index_layer, LayerIndex};
use clip_indexer::merge::Merger;
use clip_indexer::tar::TarReader;
use clip_indexer::tarwalk;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, blob)) = data.split_first() else {
        return;
    };
    let compression = match selector % 3 {
        0 => Compression::None,
        1 => Compression::Gzip,
        _ => Compression::Zstd,
    };
    if let Ok(index) = index_layer(blob, compression, 4096, &|_| {}) {
        merge_and_write(index, compression);
    }
    if compression == Compression::None {
        let mut sealed = blob.to_vec();
        for block in sealed.chunks_exact_mut(512) {
            if block.iter().any(|&b| b != 0) {
                block[148..156].fill(b' ');
                let sum: u32 = block.iter().map(|&b| u32::from(b)).sum();
                block[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
            }
        }
        let mut reader = TarReader::new(&sealed[..]);
        while let Ok(Some(_)) = reader.next_header() {}
        let _ = tarwalk::walk(&sealed[..], |_| Ok(()));
        if let Ok(index) = index_layer(&sealed[..], compression, 4096, &|_| {}) {
            merge_and_write(index, compression);
        }
    }
});

fn merge_and_write(index: LayerIndex, compression: Compression) {
    let layer = Layer {
        digest: format!("sha256:{}", "0".repeat(64)),
        media_type: "application/vnd.oci.image.layer.v1.tar".into(),
        compression,
        compressed_size: index.compressed_size,
        uncompressed_size: index.uncompressed_size,
        diff_id: format!("sha256:{}", "1".repeat(64)),
        span_size: 4096,
        spans: index.spans,
    };
    let mut merger = Merger::new();
    if merger.apply_layer(0, index.entries.clone()).is_err() {
        return;
    }
    if merger.apply_layer(1, index.entries).is_err() {
        return;
    }
    let meta = ImageMeta {
        reference: "fuzz/layer:1".into(),
        manifest_digest: format!("sha256:{}", "2".repeat(64)),
        manifest_media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        platform: Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
        },
        config_digest: format!("sha256:{}", "3".repeat(64)),
        config: "{}".into(),
    };
    let layers = [layer.clone(), layer];
    if let Err(e) = clip_archive::write_archive(&meta, &layers, &merger.into_tree()) {
        panic!("the indexer produced a tree the writer refuses: {e}");
    }
}
