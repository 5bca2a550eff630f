//! The streaming path: a zstd or uncompressed span too large to hold in memory (a
//! single-frame zstd layer is one span) is read from the source as a stream (the whole blob,
//! or ranged reads of at most [`crate::FetchOptions::max_request_bytes`]), hashed and decoded
//! on the way straight into a cache temp file, and published only once the compressed digest
//! matched (and, by the cache, the content digest).
//!
//! # What it owns, what it must not touch
//!
//! The checks of `decode.rs` in the same order, on a stream: nothing decoded is published
//! before every compressed byte of the span was hashed and matched. It writes only through the
//! cache's entry writer, and keeps no more than one copy buffer in memory.

use std::cell::RefCell;
use std::io::{self, Read};
use std::sync::Arc;

use clip_archive::Compression;
use clip_registry::RegistryError;
use sha2::{Digest as _, Sha256};

use crate::decode::span_len;
use crate::fetcher::{bump, FetchResult, LayerState, Ready, Shared};
use crate::{FetchError, SpanRef};

/// Copy buffer of the streaming path.
const STREAM_CHUNK: usize = 128 * 1024;

impl Shared {
    /// Streams a large zstd or uncompressed span from the source through the hasher and the
    /// decoder into a cache temp file; publishes it once the digest matched.
    pub(crate) fn stream_span(&self, l: &LayerState, span: &SpanRef) -> FetchResult {
        let (i, info) = (span.index, &span.info);
        let len = span_len(info);
        let registry_error = |error: RegistryError| {
            self.source_failed(l, &error);
            FetchError::Registry {
                layer_digest: l.digest.to_string(),
                span: Some(i),
                error: Arc::new(error),
            }
        };
        tracing::debug!(layer = %l.digest, span = i, bytes = info.compressed_end - info.compressed_offset,
            "streaming a large span");
        let whole_blob = info.compressed_offset == 0 && info.compressed_end == l.compressed_size;
        let source: Box<dyn Read + Send + '_> = if whole_blob {
            bump(&self.counters.registry_requests, 1);
            self.source
                .read_blob(&l.digest, l.compressed_size)
                .map_err(registry_error)?
        } else {
            Box::new(RangeChunks {
                shared: self,
                digest: &l.digest,
                pos: info.compressed_offset,
                end: info.compressed_end,
                buf: Vec::new(),
                at: 0,
            })
        };
        let failure = RefCell::new(None::<RegistryError>);
        let mut hashing = HashingReader {
            inner: source,
            hasher: Sha256::new(),
            count: 0,
            failure: &failure,
        };
        let mut writer = l.cache.writer(span)?;
        let decode_error = |detail: String| FetchError::Decode {
            layer_digest: l.digest.to_string(),
            span: i,
            detail,
        };

        // Why a copy stopped before the end of the stream.
        enum Stop {
            /// Here, not in the registry's bytes: the cache file cannot take them (ENOSPC...),
            /// or they are more than the index says.
            Local(FetchError),
            /// Reading (decoding) failed.
            Read(io::Error),
        }
        let copied: Result<(), Stop> = {
            let mut copy = |reader: &mut dyn Read| -> Result<(), Stop> {
                let mut buf = vec![0u8; STREAM_CHUNK];
                loop {
                    let n = match reader.read(&mut buf) {
                        Ok(0) => return Ok(()),
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(Stop::Read(e)),
                    };
                    if writer.written() + n as u64 > len {
                        return Err(Stop::Local(FetchError::LengthMismatch {
                            layer_digest: l.digest.to_string(),
                            span: i,
                            expected: len,
                            found: writer.written() + n as u64,
                        }));
                    }
                    writer.write_all(&buf[..n]).map_err(Stop::Local)?;
                }
            };
            match l.compression {
                Compression::Zstd => match zstd::stream::read::Decoder::new(&mut hashing) {
                    Ok(mut decoder) => copy(&mut decoder),
                    Err(e) => Err(Stop::Read(e)),
                },
                Compression::None | Compression::Gzip => copy(&mut hashing),
            }
        };
        let copied = match copied {
            // A local failure is final whatever the rest of the blob holds: do not download
            // it (possibly gigabytes) just to hash it.
            Err(Stop::Local(e)) => {
                bump(&self.counters.bytes_fetched, hashing.count);
                return Err(e);
            }
            Err(Stop::Read(e)) => Err(decode_error(e.to_string())),
            Ok(()) => Ok(()),
        };
        // Read what the decoder left: the digest covers every compressed byte of the span, and
        // a whole blob is verified by the client at its end. That is when the decoder stopped
        // early (trailing bytes after the last frame), or when it failed on bytes that may be
        // corrupt: a digest mismatch is the better report then (and counted as one). Not after
        // a registry failure, which is the report.
        let drained = if failure.borrow().is_some() {
            Ok(0)
        } else {
            io::copy(&mut hashing, &mut io::sink())
        };
        bump(&self.counters.bytes_fetched, hashing.count);
        let complete = hashing.count == info.compressed_end - info.compressed_offset;
        let found: [u8; 32] = hashing.hasher.finalize().into();
        let failure = failure.borrow_mut().take();
        match failure {
            Some(RegistryError::DigestMismatch { .. }) => {
                return Err(self.digest_mismatch(l, i, info, found));
            }
            Some(e) => return Err(registry_error(e)),
            None => {}
        }
        if let Err(e) = drained {
            return Err(decode_error(e.to_string()));
        }
        if !complete || found != info.digest {
            return Err(self.digest_mismatch(l, i, info, found));
        }
        copied?;
        if writer.written() != len {
            return Err(FetchError::LengthMismatch {
                layer_digest: l.digest.to_string(),
                span: i,
                expected: len,
                found: writer.written(),
            });
        }
        match l.cache.publish(writer) {
            Ok(file) => Ok(Ready::File(file)),
            Err(e @ FetchError::ContentMismatch { .. }) => Err(self.content_mismatch(l, e)),
            Err(e) => Err(e),
        }
    }
}

/// Hashes and counts what passes through; a registry failure underneath is kept aside (the
/// decoder above only sees an I/O error).
struct HashingReader<'a> {
    inner: Box<dyn Read + Send + 'a>,
    hasher: Sha256,
    count: u64,
    failure: &'a RefCell<Option<RegistryError>>,
}

impl Read for HashingReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => {
                self.hasher.update(&buf[..n]);
                self.count += n as u64;
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Err(e),
            Err(e) => {
                let message = e.to_string();
                let registry = RegistryError::from_io_owned(e);
                // The first failure is the one that matters (a failed stream only repeats
                // that it failed).
                self.failure.borrow_mut().get_or_insert(registry);
                Err(io::Error::other(message))
            }
        }
    }
}

/// A blob range as a stream of ranged reads of at most `max_request_bytes` each.
struct RangeChunks<'a> {
    shared: &'a Shared,
    digest: &'a str,
    pos: u64,
    end: u64,
    buf: Vec<u8>,
    at: usize,
}

impl Read for RangeChunks<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.at == self.buf.len() {
            if self.pos >= self.end {
                return Ok(0);
            }
            let to = self
                .pos
                .saturating_add(self.shared.options.max_request_bytes)
                .min(self.end);
            bump(&self.shared.counters.registry_requests, 1);
            self.buf = self
                .shared
                .source
                .read_range(self.digest, self.pos..to)
                .map_err(io::Error::other)?;
            self.at = 0;
            if self.buf.len() as u64 != to - self.pos {
                return Err(io::Error::other(RegistryError::Protocol {
                    url: self.digest.to_string(),
                    detail: format!("asked for {} bytes, got {}", to - self.pos, self.buf.len()),
                }));
            }
            self.pos = to;
        }
        let n = out.len().min(self.buf.len() - self.at);
        out[..n].copy_from_slice(&self.buf[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}
