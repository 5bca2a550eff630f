//! Test support: [`MemorySource`], a [`BlobSource`] in memory that can stall, fail, send wrong
//! bytes and counts what it is asked; and [`image`], an archive of uncompressed or zstd layers
//! with real span digests, served by a `MemorySource`. With them the fetcher's scheduling,
//! coalescing, single flight, timeouts, retries, verification and cancellation are tested
//! without a registry, a network or a sleep. Not for production use.

use std::collections::{HashMap, HashSet};
use std::io::{self, Read};
use std::ops::Range;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use clip_archive::{
    write_archive, Archive, ArchiveError, Compression, FileType, ImageMeta, Inode, Layer, Platform,
    Span, Tree, Window,
};
use clip_registry::RegistryError;
use sha2::{Digest as _, Sha256};

use crate::source::BlobSource;
use crate::sync::{lock, wait_while};

/// One request a [`MemorySource`] was asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// A ranged read.
    Range {
        /// The blob.
        digest: String,
        /// The bytes asked for.
        range: Range<u64>,
    },
    /// A whole blob, streamed.
    Blob {
        /// The blob.
        digest: String,
    },
}

/// Blobs in memory, by digest, behind a [`BlobSource`] that does what a test tells it to.
#[derive(Debug, Default)]
pub struct MemorySource {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct State {
    blobs: HashMap<String, Arc<[u8]>>,
    log: Vec<Request>,
    /// Requests still to fail (transiently).
    fail: usize,
    /// Requests still to answer with a wrong byte.
    corrupt: usize,
    /// Every request waits while true.
    held: bool,
    /// Requests for these blobs wait.
    held_blobs: HashSet<String>,
    /// Streams of these blobs stop after this many bytes, and wait.
    stalled_blobs: HashMap<String, usize>,
    mirrors: bool,
    distrusted: usize,
}

/// The digest of `bytes`: `sha256:<hex>`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

impl MemorySource {
    /// An empty source.
    pub fn new() -> MemorySource {
        MemorySource::default()
    }

    /// Adds a blob; returns its digest.
    pub fn insert(&self, blob: Vec<u8>) -> String {
        let digest = sha256_digest(&blob);
        lock(&self.state)
            .blobs
            .insert(digest.clone(), Arc::from(blob));
        digest
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<Request> {
        lock(&self.state).log.clone()
    }

    /// How many requests so far.
    pub fn request_count(&self) -> usize {
        lock(&self.state).log.len()
    }

    /// The next `n` requests fail with a transient error (HTTP 503).
    pub fn fail_next(&self, n: usize) {
        lock(&self.state).fail = n;
    }

    /// The next `n` requests are answered with one byte changed.
    pub fn corrupt_next(&self, n: usize) {
        lock(&self.state).corrupt = n;
    }

    /// Requests from now on wait (after being counted) until [`MemorySource::release`]: a
    /// registry that stalls.
    pub fn hold(&self) {
        lock(&self.state).held = true;
    }

    /// Requests for blob `digest` from now on wait until [`MemorySource::release`].
    pub fn hold_blob(&self, digest: &str) {
        lock(&self.state).held_blobs.insert(digest.to_string());
    }

    /// Streams of blob `digest` from now on stop after `bytes` bytes and wait until
    /// [`MemorySource::release`]: a download that stalls half way.
    pub fn stall_blob_after(&self, digest: &str, bytes: usize) {
        lock(&self.state)
            .stalled_blobs
            .insert(digest.to_string(), bytes);
    }

    /// Lets waiting and later requests (and stalled streams) through, all of them.
    pub fn release(&self) {
        let mut state = lock(&self.state);
        state.held = false;
        state.held_blobs.clear();
        state.stalled_blobs.clear();
        drop(state);
        self.changed.notify_all();
    }

    /// Whether [`BlobSource::has_mirrors`] says so.
    pub fn set_mirrors(&self, mirrors: bool) {
        lock(&self.state).mirrors = mirrors;
    }

    /// How often [`BlobSource::distrust_mirrors`] was called.
    pub fn distrusted(&self) -> usize {
        lock(&self.state).distrusted
    }

    /// Waits until at least `n` requests arrived (held ones included), at most `timeout`;
    /// returns whether they did.
    pub fn wait_for_requests(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now().checked_add(timeout);
        wait_while(&self.changed, lock(&self.state), deadline, |s| {
            s.log.len() < n
        })
        .1
    }

    /// Logs a request, waits while held, then answers it with `answer` (the blob, or why
    /// not), failing or corrupting it as told.
    fn serve<T>(
        &self,
        request: Request,
        digest: &str,
        answer: impl FnOnce(&Arc<[u8]>) -> Result<T, RegistryError>,
        corrupt: impl FnOnce(&mut T),
    ) -> Result<T, RegistryError> {
        let mut state = lock(&self.state);
        state.log.push(request);
        self.changed.notify_all();
        let (mut state, _) = wait_while(&self.changed, state, None, |s| {
            s.held || s.held_blobs.contains(digest)
        });
        if state.fail > 0 {
            state.fail -= 1;
            return Err(RegistryError::Http {
                url: format!("memory://{digest}"),
                status: 503,
                message: "test: failing as told".into(),
            });
        }
        let blob = state
            .blobs
            .get(digest)
            .cloned()
            .ok_or_else(|| RegistryError::BlobNotFound {
                reference: "memory".into(),
                digest: digest.to_string(),
            })?;
        let wrong = state.corrupt > 0;
        if wrong {
            state.corrupt -= 1;
        }
        drop(state);
        let mut out = answer(&blob)?;
        if wrong {
            corrupt(&mut out);
        }
        Ok(out)
    }
}

impl BlobSource for MemorySource {
    fn read_range(&self, digest: &str, range: Range<u64>) -> Result<Vec<u8>, RegistryError> {
        let request = Request::Range {
            digest: digest.to_string(),
            range: range.clone(),
        };
        self.serve(
            request,
            digest,
            |blob| {
                usize::try_from(range.start)
                    .ok()
                    .zip(usize::try_from(range.end).ok())
                    .and_then(|(a, b)| blob.get(a..b))
                    .map(<[u8]>::to_vec)
                    .ok_or_else(|| RegistryError::Http {
                        url: format!("memory://{digest}"),
                        status: 416,
                        message: format!("{range:?} of {} bytes", blob.len()),
                    })
            },
            |bytes| {
                if let Some(b) = bytes.first_mut() {
                    *b ^= 0xff;
                }
            },
        )
    }

    fn read_blob(
        &self,
        digest: &str,
        _size: u64,
    ) -> Result<Box<dyn Read + Send + '_>, RegistryError> {
        let request = Request::Blob {
            digest: digest.to_string(),
        };
        let blob = self.serve(
            request,
            digest,
            |blob| Ok(blob.to_vec()),
            |bytes| {
                if let Some(b) = bytes.last_mut() {
                    *b ^= 0xff;
                }
            },
        )?;
        let stall_at = lock(&self.state).stalled_blobs.get(digest).copied();
        Ok(Box::new(VerifiedStream {
            source: self,
            stall_at,
            expected: digest.to_string(),
            data: io::Cursor::new(blob),
            hasher: Some(Sha256::new()),
        }))
    }

    fn has_mirrors(&self) -> bool {
        lock(&self.state).mirrors
    }

    fn distrust_mirrors(&self) -> bool {
        let mut state = lock(&self.state);
        state.distrusted += 1;
        state.mirrors
    }
}

/// A blob stream that fails at its end when it does not hash to its digest (as the registry
/// client's blob reader does).
struct VerifiedStream<'a> {
    source: &'a MemorySource,
    /// Where the stream stalls ([`MemorySource::stall_blob_after`]).
    stall_at: Option<usize>,
    expected: String,
    data: io::Cursor<Vec<u8>>,
    /// `None` once the end was reached and verified.
    hasher: Option<Sha256>,
}

impl Read for VerifiedStream<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let at = usize::try_from(self.data.position()).unwrap_or(usize::MAX);
        let mut buf = buf;
        if let Some(stall) = self.stall_at {
            if at >= stall {
                let state = lock(&self.source.state);
                let _ = wait_while(&self.source.changed, state, None, |s| {
                    s.stalled_blobs.contains_key(&self.expected)
                });
                self.stall_at = None;
            } else if buf.len() > stall - at {
                buf = &mut buf[..stall - at];
            }
        }
        let n = self.data.read(buf)?;
        if n == 0 && !buf.is_empty() {
            let Some(hasher) = self.hasher.take() else {
                return Ok(0);
            };
            let found = format!("sha256:{}", hex::encode(hasher.finalize()));
            if found != self.expected {
                return Err(io::Error::other(RegistryError::DigestMismatch {
                    what: "blob".into(),
                    expected: self.expected.clone(),
                    found,
                }));
            }
            return Ok(0);
        }
        if let Some(hasher) = self.hasher.as_mut() {
            hasher.update(&buf[..n]);
        }
        Ok(n)
    }
}

/// One layer of an [`image`]: its uncompressed content, cut into spans of `span` bytes.
#[derive(Clone, Debug)]
pub struct TestLayer {
    /// The layer's uncompressed stream.
    pub content: Vec<u8>,
    /// [`Compression::None`] or [`Compression::Zstd`] (a frame per span).
    pub compression: Compression,
    /// Uncompressed bytes per span.
    pub span: usize,
}

/// Metadata of a test image named `reference` (linux/amd64, an empty config).
pub fn image_meta(reference: &str) -> ImageMeta {
    ImageMeta {
        reference: reference.into(),
        manifest_digest: sha256_digest(b"manifest"),
        manifest_media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        platform: Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
        },
        config_digest: sha256_digest(b"config"),
        config: "{}".into(),
    }
}

/// An archive (with an empty tree) of `layers`, and a [`MemorySource`] holding their blobs.
pub fn image(
    layers: &[TestLayer],
) -> Result<(Arc<Archive<'static>>, Arc<MemorySource>), ArchiveError> {
    let source = Arc::new(MemorySource::new());
    let mut out = Vec::new();
    for layer in layers {
        let (blob, spans) = blob_and_spans(layer);
        let digest = source.insert(blob.clone());
        out.push(Layer {
            digest,
            media_type: match layer.compression {
                Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
                Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
                Compression::None => "application/vnd.oci.image.layer.v1.tar",
            }
            .into(),
            compression: layer.compression,
            compressed_size: blob.len() as u64,
            uncompressed_size: layer.content.len() as u64,
            diff_id: sha256_digest(&layer.content),
            span_size: layer.span as u64,
            spans,
        });
    }
    let meta = image_meta("memory.test/image:1");
    let tree = Tree::new(Inode::new(FileType::Directory, 0o755));
    let bytes = write_archive(&meta, &out, &tree)?;
    Ok((Arc::new(Archive::open_owned(bytes)?), source))
}

fn blob_and_spans(layer: &TestLayer) -> (Vec<u8>, Vec<Span>) {
    let mut blob = Vec::new();
    let mut spans = Vec::new();
    for (i, chunk) in layer.content.chunks(layer.span.max(1)).enumerate() {
        let compressed = match layer.compression {
            Compression::Zstd => zstd::bulk::compress(chunk, 1).unwrap_or_default(),
            _ => chunk.to_vec(),
        };
        spans.push(Span {
            compressed_offset: blob.len() as u64,
            compressed_end: (blob.len() + compressed.len()) as u64,
            uncompressed_offset: (i * layer.span.max(1)) as u64,
            bits: 0,
            window: Window::default(),
            digest: Sha256::digest(&compressed).into(),
            content_digest: Sha256::digest(chunk).into(),
        });
        blob.extend_from_slice(&compressed);
    }
    (blob, spans)
}
