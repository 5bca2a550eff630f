//! Image → archive.
//!
//! The indexer consumes what [`clip_registry`] resolves (manifest, config, layer blob streams)
//! and produces a `.clip` archive through [`clip_archive::write_archive`]. Each layer is read
//! exactly once, as a stream, by [`layer::index_layer`]: the blob is decompressed, its tar is
//! read ([`tar`], Go's `archive/tar` rules) and interpreted ([`tarwalk`]) and, in the same pass, seek checkpoints are taken and every span's
//! compressed bytes are hashed. Layers are indexed in parallel (`jobs` threads) and merged in
//! layer order by [`merge::Merger`], which applies the OCI whiteout rules and drops the runtime
//! directories.
//!
//! The indexer owns tar semantics, whiteouts and the choice of spans. It must not know the
//! archive's byte layout (that is `clip-archive`), speak HTTP (that is `clip-registry`) or read
//! file contents beyond what the single pass sees.

#![forbid(unsafe_code)]

pub mod layer;
pub mod merge;
pub mod tar;
pub mod tarwalk;

use std::io::{self, Read};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use clip_archive::{Compression, ImageMeta, Layer, Platform};
use clip_registry::{Client, Platform as RegistryPlatform, Reference, RegistryError};

/// Default distance between seek checkpoints, in uncompressed bytes. See `docs/FORMAT.md`
/// ("Choosing the span") for the measurement behind it.
pub const DEFAULT_SPAN: u64 = 128 << 10;

/// Why one layer could not be indexed. Every message names the tar offset and, when known, the
/// entry (an excerpt: quoted, escaped, cut after 100 bytes), once.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LayerError {
    /// The tar stream breaks a rule of the format (Go's `archive/tar`, and so docker,
    /// containerd and umoci, refuse it too).
    #[error(transparent)]
    Tar(#[from] tar::TarError),
    /// A well-formed entry that cannot be indexed, because an unpack could not create it either
    /// or clip does not support it (sparse files).
    #[error("{}: {detail}", tar::entry_context(*.offset, Some(.path)))]
    Entry {
        /// The entry's name as an excerpt (quoted and escaped).
        path: String,
        /// Offset of the entry's header in the layer's uncompressed stream.
        offset: u64,
        detail: String,
    },
    #[error(transparent)]
    Decompress(clip_zran::ZranError),
    /// Reading the blob failed (network, registry, decompression).
    #[error("{0}")]
    Read(io::Error),
}

/// Why an image could not be indexed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IndexError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The message is completed by `source` (print the chain, e.g. `{:#}` with anyhow).
    #[error("layer {index} ({digest})")]
    Layer {
        image: String,
        index: usize,
        digest: String,
        source: LayerError,
    },
    /// The message is completed by `source`.
    #[error("layer {index} ({digest}) cannot be applied")]
    Merge {
        image: String,
        index: usize,
        digest: String,
        source: merge::MergeError,
    },
    #[error(
        "layer {index} ({digest}) unpacks to {found}, but the image config names diff_id \
         {expected}: the config does not describe this layer; the image is broken or was \
         tampered with"
    )]
    DiffIdMismatch {
        image: String,
        index: usize,
        digest: String,
        expected: String,
        found: String,
    },
    /// `image` is not repeated in the message: callers say what they were indexing.
    #[error("{detail}")]
    Image { image: String, detail: String },
    #[error(transparent)]
    Archive(#[from] clip_archive::ArchiveError),
}

/// How to index.
#[derive(Clone, Debug)]
pub struct IndexOptions {
    pub platform: RegistryPlatform,
    /// Uncompressed bytes between checkpoints.
    pub span: u64,
    /// Layers indexed at once.
    pub jobs: usize,
}

/// Told about the progress of an indexing run; called from several threads.
pub trait Progress: Sync {
    fn resolved(&self, _layers: &[clip_registry::LayerDescriptor]) {}
    fn layer_bytes(&self, _layer: usize, _compressed_bytes: u64) {}
    fn layer_entries(&self, _layer: usize, _entries: u64) {}
    fn layer_done(&self, _layer: usize) {}
}

/// No progress reporting.
pub struct Silent;
impl Progress for Silent {}

/// What an indexing run produced.
#[derive(Debug)]
pub struct Indexed {
    pub archive: Vec<u8>,
    /// Size of the image manifest indexed (its digest and media type are in the archive).
    pub manifest_size: u64,
    pub entries: u64,
    pub layers: usize,
    pub compressed_bytes: u64,
    pub uncompressed_bytes: u64,
    pub elapsed: Duration,
}

/// Indexes `reference` into an archive.
pub fn index_image(
    client: &Client,
    reference: &Reference,
    options: &IndexOptions,
    progress: &dyn Progress,
) -> Result<Indexed, IndexError> {
    let started = Instant::now();
    let image = client.resolve(reference, &options.platform)?;
    let image_name = reference.to_string();
    progress.resolved(&image.layers);

    let results: Vec<Mutex<Option<Result<layer::LayerIndex, LayerError>>>> =
        image.layers.iter().map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    let jobs = options.jobs.clamp(1, image.layers.len().max(1));
    let failed = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(desc) = image.layers.get(i) else {
                    break;
                };
                if failed.load(Ordering::Relaxed) {
                    break;
                }
                let result = index_one(client, reference, i, desc, options.span, progress);
                if result.is_err() {
                    failed.store(true, Ordering::Relaxed);
                }
                progress.layer_done(i);
                if let Ok(mut slot) = results[i].lock() {
                    *slot = Some(result);
                }
            });
        }
    });

    let mut results: Vec<Option<Result<layer::LayerIndex, LayerError>>> = results
        .into_iter()
        .map(|slot| slot.into_inner().ok().flatten())
        .collect();
    // Report the first failure in layer order; layers skipped after it are its knock-on.
    if let Some(i) = results.iter().position(|r| matches!(r, Some(Err(_)))) {
        if let Some(Some(Err(source))) = results.get_mut(i).map(Option::take) {
            return Err(layer_error(&image_name, i, &image.layers[i].digest, source));
        }
    }

    let mut merger = merge::Merger::new();
    let mut layers = Vec::with_capacity(image.layers.len());
    let mut compressed_bytes = 0;
    let mut uncompressed_bytes = 0;
    for (i, (desc, result)) in image.layers.iter().zip(results).enumerate() {
        let Some(Ok(indexed)) = result else {
            return Err(IndexError::Image {
                image: image_name.clone(),
                detail: format!("layer {i} ({}) was not indexed", desc.digest),
            });
        };
        if indexed.compressed_size != desc.size {
            return Err(IndexError::Image {
                image: image_name.clone(),
                detail: format!(
                    "layer {i} ({}) is {} bytes, the manifest says {}",
                    desc.digest, indexed.compressed_size, desc.size
                ),
            });
        }
        // The index may only describe the layers the image names: the uncompressed stream
        // must be the one the config's diff_id commits to.
        if indexed.diff_id != desc.diff_id {
            return Err(IndexError::DiffIdMismatch {
                image: image_name.clone(),
                index: i,
                digest: desc.digest.clone(),
                expected: desc.diff_id.clone(),
                found: indexed.diff_id,
            });
        }
        // A gzip stream written as a few giant deflate blocks (zlib-ng's level-1 "quick"
        // strategy does that) has no boundary to checkpoint at: every miss then costs a block.
        let widest = indexed
            .spans
            .windows(2)
            .map(|w| w[1].uncompressed_offset - w[0].uncompressed_offset)
            .chain(
                indexed
                    .spans
                    .last()
                    .map(|s| indexed.uncompressed_size - s.uncompressed_offset),
            )
            .max()
            .unwrap_or(0);
        if compression_of(desc) == Compression::Gzip && widest > 8 * options.span {
            tracing::warn!(
                layer = %desc.digest,
                "the layer's deflate blocks are up to {} MiB long, so a lazy read may fetch that \
                 much; recompressing it with a standard gzip (level 6) would avoid this",
                widest >> 20
            );
        }
        compressed_bytes += indexed.compressed_size;
        uncompressed_bytes += indexed.uncompressed_size;
        let layer_index = u32::try_from(i).map_err(|_| IndexError::Image {
            image: image_name.clone(),
            detail: "too many layers".into(),
        })?;
        merger
            .apply_layer(layer_index, indexed.entries)
            .map_err(|source| IndexError::Merge {
                image: image_name.clone(),
                index: i,
                digest: desc.digest.clone(),
                source,
            })?;
        layers.push(Layer {
            digest: desc.digest.clone(),
            media_type: desc.media_type.clone(),
            compression: compression_of(desc),
            compressed_size: indexed.compressed_size,
            uncompressed_size: indexed.uncompressed_size,
            diff_id: desc.diff_id.clone(),
            span_size: options.span,
            spans: indexed.spans,
        });
    }

    let meta = ImageMeta {
        reference: image_name.clone(),
        manifest_digest: image.manifest_digest.clone(),
        manifest_media_type: image.manifest_media_type.clone(),
        platform: Platform {
            os: image.platform.os.clone(),
            architecture: image.platform.architecture.clone(),
            variant: image.platform.variant.clone(),
        },
        config_digest: image.config_digest.clone(),
        config: String::from_utf8(image.config.clone()).map_err(|_| IndexError::Image {
            image: image_name.clone(),
            detail: "the image config is not UTF-8 JSON".into(),
        })?,
    };
    let tree = merger.into_tree();
    let archive = clip_archive::write_archive(&meta, &layers, &tree)?;
    let entries = clip_archive::Archive::open(&archive)?.entry_count();
    Ok(Indexed {
        archive,
        manifest_size: image.manifest.len() as u64,
        entries,
        layers: layers.len(),
        compressed_bytes,
        uncompressed_bytes,
        elapsed: started.elapsed(),
    })
}

fn layer_error(image: &str, index: usize, digest: &str, source: LayerError) -> IndexError {
    // A registry failure surfacing through the stream (digest mismatch, retries exhausted)
    // is reported as what it is.
    let registry = match &source {
        LayerError::Read(e)
        | LayerError::Tar(tar::TarError::Read { source: e, .. })
        | LayerError::Decompress(clip_zran::ZranError::Io(e)) => find_registry_error(e),
        _ => None,
    };
    match registry {
        Some(detail) => IndexError::Layer {
            image: image.to_string(),
            index,
            digest: digest.to_string(),
            source: LayerError::Read(io::Error::other(detail)),
        },
        None => IndexError::Layer {
            image: image.to_string(),
            index,
            digest: digest.to_string(),
            source,
        },
    }
}

fn find_registry_error(e: &io::Error) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = e.get_ref().map(|x| x as _);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<RegistryError>() {
            return Some(r.to_string());
        }
        if let Some(io) = err.downcast_ref::<io::Error>() {
            if let Some(inner) = io.get_ref() {
                cur = Some(inner as _);
                continue;
            }
        }
        cur = err.source();
    }
    None
}

/// Counts compressed bytes for the progress display.
struct Counting<'a, R> {
    inner: R,
    layer: usize,
    progress: &'a dyn Progress,
    total: u64,
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.total += n as u64;
        self.progress.layer_bytes(self.layer, self.total);
        Ok(n)
    }
}

/// The archive's name for a layer's compression.
fn compression_of(desc: &clip_registry::LayerDescriptor) -> Compression {
    match desc.compression {
        clip_registry::Compression::None => Compression::None,
        clip_registry::Compression::Gzip => Compression::Gzip,
        clip_registry::Compression::Zstd => Compression::Zstd,
    }
}

fn index_one(
    client: &Client,
    reference: &Reference,
    i: usize,
    desc: &clip_registry::LayerDescriptor,
    span: u64,
    progress: &dyn Progress,
) -> Result<layer::LayerIndex, LayerError> {
    let blob = client
        .blob_reader(reference, &desc.digest, desc.size)
        .map_err(|e| LayerError::Read(io::Error::other(e)))?;
    let counting = Counting {
        inner: blob,
        layer: i,
        progress,
        total: 0,
    };
    layer::index_layer(counting, compression_of(desc), span, &|n| {
        progress.layer_entries(i, n)
    })
}
