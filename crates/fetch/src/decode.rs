//! Span decoding as a pure function: compressed bytes in, verified content out.
//!
//! [`decode_span`] checks the compressed bytes against the span digest *before* decoding
//! anything, decodes them (gzip: inflate from the span's checkpoint; zstd: the span's whole
//! frames; none: as they are), checks the length and then the content digest. Only bytes that
//! passed every check come out, as [`Verified`], which nothing else can make: the cache stores
//! a `Verified` without hashing it again.
//!
//! # What it owns, what it must not touch
//!
//! The checks and the decoders, nothing else: no I/O, no counters, no logs, no locks. The
//! caller turns a [`DecodeError`] into a [`FetchError`] naming layer and span
//! ([`DecodeError::into_fetch_error`]), counts and logs it. The streaming path for spans too
//! large to hold in memory (`stream.rs`) makes the same checks in the same order on a stream.

use std::borrow::Cow;
use std::sync::Arc;

use clip_archive::{Compression, SpanInfo};
use sha2::{Digest as _, Sha256};

use crate::FetchError;

/// gzip spans are inflated in memory (the checkpoint API works on whole buffers); larger ones
/// are refused rather than allocated.
pub(crate) const MAX_GZIP_SPAN: u64 = 256 << 20;

/// The uncompressed length of a span.
pub(crate) fn span_len(info: &SpanInfo) -> u64 {
    info.uncompressed_end - info.uncompressed_offset
}

/// A span's content that hashed to its content digest.
#[derive(Debug)]
pub(crate) struct Verified<'a> {
    bytes: Cow<'a, [u8]>,
    digest: [u8; 32],
}

impl<'a> Verified<'a> {
    /// The content.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Its sha256 (the span's content digest).
    pub(crate) fn digest(&self) -> &[u8; 32] {
        &self.digest
    }

    /// The content, owned.
    pub(crate) fn into_owned(self) -> Vec<u8> {
        self.bytes.into_owned()
    }
}

/// Why a span's bytes were refused.
#[derive(Debug, Clone)]
pub(crate) enum DecodeError {
    /// The compressed bytes hash to `found`, not to the span digest.
    DigestMismatch {
        /// The sha256 of the bytes.
        found: [u8; 32],
    },
    /// A gzip span larger than [`MAX_GZIP_SPAN`] (or one that does not fit in memory).
    TooLarge {
        /// Its size.
        size: u64,
    },
    /// Verified gzip bytes did not inflate from the checkpoint.
    Inflate(Arc<clip_zran::ZranError>),
    /// Verified zstd bytes did not decode.
    Decode(String),
    /// The output has another length than the span.
    LengthMismatch {
        /// Bytes produced.
        found: u64,
    },
    /// The output hashes to `found`, not to the content digest.
    ContentMismatch {
        /// The sha256 of the output.
        found: [u8; 32],
    },
    /// Not decoded: span `span` before it in the same run (whose inflater state it continues
    /// from) did not verify.
    AfterRefused {
        /// The span that did not verify.
        span: usize,
    },
}

impl DecodeError {
    /// Whether the bytes themselves failed a digest (counted as a verification failure).
    pub(crate) fn is_verify_failure(&self) -> bool {
        matches!(
            self,
            DecodeError::DigestMismatch { .. } | DecodeError::ContentMismatch { .. }
        )
    }

    /// The error of span `span` (`info`) of layer `layer_digest`.
    pub(crate) fn into_fetch_error(
        self,
        layer_digest: &str,
        span: usize,
        info: &SpanInfo,
    ) -> FetchError {
        let layer_digest = layer_digest.to_string();
        match self {
            DecodeError::DigestMismatch { found } => FetchError::DigestMismatch {
                layer_digest,
                span,
                expected: hex::encode(info.digest),
                found: hex::encode(found),
            },
            DecodeError::TooLarge { size } => FetchError::SpanTooLarge {
                layer_digest,
                span,
                size,
                limit: MAX_GZIP_SPAN,
            },
            DecodeError::Inflate(error) => FetchError::Inflate {
                layer_digest,
                span,
                error,
            },
            DecodeError::Decode(detail) => FetchError::Decode {
                layer_digest,
                span,
                detail,
            },
            DecodeError::AfterRefused { span: refused } => FetchError::Registry {
                layer_digest: layer_digest.clone(),
                span: Some(span),
                error: Arc::new(clip_registry::RegistryError::Protocol {
                    url: layer_digest,
                    detail: format!(
                        "not decoded: the bytes of span {refused}, sent in the same response, \
                         did not verify"
                    ),
                }),
            },
            DecodeError::LengthMismatch { found } => FetchError::LengthMismatch {
                layer_digest,
                span,
                expected: span_len(info),
                found,
            },
            DecodeError::ContentMismatch { found } => FetchError::ContentMismatch {
                layer_digest,
                span,
                expected: hex::encode(info.content_digest),
                found: hex::encode(found),
            },
        }
    }
}

/// Verifies and decodes span `info` of a layer compressed with `compression` from exactly its
/// compressed bytes, with its checkpoint's `window` (gzip; empty when it has none).
pub(crate) fn decode_span<'a>(
    compression: Compression,
    info: &SpanInfo,
    window: &[u8],
    compressed: &'a [u8],
) -> Result<Verified<'a>, DecodeError> {
    let found: [u8; 32] = Sha256::digest(compressed).into();
    if found != info.digest {
        return Err(DecodeError::DigestMismatch { found });
    }
    let len = span_len(info);
    let out_len = usize::try_from(len).map_err(|_| DecodeError::TooLarge { size: len })?;
    let output: Cow<'a, [u8]> = match compression {
        Compression::None => Cow::Borrowed(compressed),
        Compression::Gzip => {
            if len > MAX_GZIP_SPAN {
                return Err(DecodeError::TooLarge { size: len });
            }
            Cow::Owned(
                clip_zran::inflate_span(info.bits, window, compressed, out_len)
                    .map_err(|e| DecodeError::Inflate(Arc::new(e)))?,
            )
        }
        Compression::Zstd => Cow::Owned(
            zstd::bulk::decompress(compressed, out_len)
                .map_err(|e| DecodeError::Decode(e.to_string()))?,
        ),
    };
    if output.len() as u64 != len {
        return Err(DecodeError::LengthMismatch {
            found: output.len() as u64,
        });
    }
    let digest: [u8; 32] = Sha256::digest(&output).into();
    if digest != info.content_digest {
        return Err(DecodeError::ContentMismatch { found: digest });
    }
    Ok(Verified {
        bytes: output,
        digest,
    })
}

/// Verifies and inflates a run of neighbouring gzip spans in one pass from the first span's
/// checkpoint, so that only the first span's `window` is needed: the inflater's state at the
/// end of a span is the next span's checkpoint. `compressed[i]` are exactly span `i`'s
/// compressed bytes and `run` the run's bytes from the first span's `compressed_offset` on.
///
/// Every span's compressed bytes are checked against its digest first; the run is inflated
/// only through the spans before the first that did not verify (that one is a
/// `DigestMismatch`, those after it `AfterRefused`); each span's output is checked against
/// its length and content digest. One result per span, in order. The caller bounds the run's
/// uncompressed size (at most [`MAX_GZIP_SPAN`]).
pub(crate) fn decode_gzip_run(
    infos: &[SpanInfo],
    window: &[u8],
    compressed: &[&[u8]],
    run: &[u8],
) -> Vec<Result<Verified<'static>, DecodeError>> {
    let mut results: Vec<Result<Verified<'static>, DecodeError>> = Vec::with_capacity(infos.len());
    let mut good = infos.len();
    for (i, (info, bytes)) in infos.iter().zip(compressed).enumerate() {
        let found: [u8; 32] = Sha256::digest(bytes).into();
        if found != info.digest {
            good = i;
            break;
        }
    }
    let (Some(first), Some(last)) = (infos.first(), infos.get(good.wrapping_sub(1))) else {
        // The first span did not verify (or there are none).
        return refused_from(infos, compressed, 0);
    };
    let total: u64 = infos.iter().take(good).map(span_len).sum();
    let input_len = last.compressed_end.saturating_sub(first.compressed_offset);
    let input = usize::try_from(input_len)
        .ok()
        .and_then(|n| run.get(..n))
        .unwrap_or(run);
    let inflated = if total > MAX_GZIP_SPAN {
        Err(DecodeError::TooLarge { size: total })
    } else {
        usize::try_from(total)
            .map_err(|_| DecodeError::TooLarge { size: total })
            .and_then(|n| {
                clip_zran::inflate_span(first.bits, window, input, n)
                    .map_err(|e| DecodeError::Inflate(Arc::new(e)))
            })
    };
    match inflated {
        Err(e) => results.extend(infos.iter().take(good).map(|_| Err(e.clone()))),
        Ok(out) => {
            let mut at = 0usize;
            for info in infos.iter().take(good) {
                let len = usize::try_from(span_len(info)).unwrap_or(usize::MAX);
                let start = at;
                let piece = start.checked_add(len).and_then(|end| out.get(start..end));
                at = start.saturating_add(len);
                results.push(match piece {
                    None => Err(DecodeError::LengthMismatch {
                        found: out.len().saturating_sub(start) as u64,
                    }),
                    Some(piece) => {
                        let digest: [u8; 32] = Sha256::digest(piece).into();
                        if digest == info.content_digest {
                            Ok(Verified {
                                bytes: Cow::Owned(piece.to_vec()),
                                digest,
                            })
                        } else {
                            Err(DecodeError::ContentMismatch { found: digest })
                        }
                    }
                });
            }
        }
    }
    results.extend(refused_from(infos, compressed, good));
    results
}

/// The results of spans `from..` of a run whose span `from` did not verify.
fn refused_from(
    infos: &[SpanInfo],
    compressed: &[&[u8]],
    from: usize,
) -> Vec<Result<Verified<'static>, DecodeError>> {
    (from..infos.len())
        .map(|i| {
            Err(if i == from {
                DecodeError::DigestMismatch {
                    found: compressed
                        .get(i)
                        .map_or([0; 32], |b| Sha256::digest(b).into()),
                }
            } else {
                DecodeError::AfterRefused { span: from }
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    fn sha(b: &[u8]) -> [u8; 32] {
        Sha256::digest(b).into()
    }

    fn info(compressed: &[u8], content: &[u8]) -> SpanInfo {
        SpanInfo {
            compressed_offset: 0,
            compressed_end: compressed.len() as u64,
            uncompressed_offset: 0,
            uncompressed_end: content.len() as u64,
            bits: 0,
            digest: sha(compressed),
            content_digest: sha(content),
            has_window: false,
        }
    }

    #[test]
    fn plain_zstd_and_gzip_spans_decode_to_their_content() {
        let content = b"hello, span".repeat(100);
        let plain = info(&content, &content);
        let out = decode_span(Compression::None, &plain, &[], &content).unwrap();
        assert_eq!(out.bytes(), &content[..]);
        assert_eq!(out.digest(), &sha(&content));

        let zstd = zstd::bulk::compress(&content, 3).unwrap();
        let out = decode_span(Compression::Zstd, &info(&zstd, &content), &[], &zstd).unwrap();
        assert_eq!(out.into_owned(), content);

        // Deflate from the first checkpoint (bits 0, no window).
        let deflate = stored_deflate(&content);
        let out = decode_span(Compression::Gzip, &info(&deflate, &content), &[], &deflate).unwrap();
        assert_eq!(out.bytes(), &content[..]);
    }

    /// `data` as raw deflate in stored blocks (which every inflater accepts).
    fn stored_deflate(data: &[u8]) -> Vec<u8> {
        stored_blocks(data, 65_535)
    }

    /// `data` as raw deflate in stored blocks of `block` bytes: block `i` starts at byte
    /// `i * (block + 5)`, a checkpoint with no pending bits (and, stored blocks referring to
    /// nothing before them, no window needed).
    fn stored_blocks(data: &[u8], block: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let chunks: Vec<&[u8]> = data.chunks(block).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            // BFINAL on the last block, BTYPE 00 (stored), padding to the byte boundary.
            out.push(u8::from(i + 1 == chunks.len()));
            let len = chunk.len() as u16;
            out.write_all(&len.to_le_bytes()).unwrap();
            out.write_all(&(!len).to_le_bytes()).unwrap();
            out.write_all(chunk).unwrap();
        }
        out
    }

    /// A run of `n` spans of `block` bytes each over stored deflate blocks: the run's bytes,
    /// each span's info and content.
    fn stored_run(content: &[u8], block: usize) -> (Vec<u8>, Vec<SpanInfo>) {
        let deflate = stored_blocks(content, block);
        let infos = content
            .chunks(block)
            .enumerate()
            .map(|(i, chunk)| {
                let c0 = (i * (block + 5)) as u64;
                let c1 = c0 + 5 + chunk.len() as u64;
                SpanInfo {
                    compressed_offset: c0,
                    compressed_end: c1,
                    uncompressed_offset: (i * block) as u64,
                    uncompressed_end: (i * block + chunk.len()) as u64,
                    bits: 0,
                    digest: sha(&deflate[c0 as usize..c1 as usize]),
                    content_digest: sha(chunk),
                    has_window: false,
                }
            })
            .collect();
        (deflate, infos)
    }

    fn slices<'a>(run: &'a [u8], infos: &[SpanInfo]) -> Vec<&'a [u8]> {
        infos
            .iter()
            .map(|i| &run[i.compressed_offset as usize..i.compressed_end as usize])
            .collect()
    }

    #[test]
    fn a_gzip_run_inflates_in_one_pass_and_each_span_is_verified() {
        let content: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
        let (run, infos) = stored_run(&content, 250);
        assert_eq!(infos.len(), 4);
        let out = decode_gzip_run(&infos, &[], &slices(&run, &infos), &run);
        let joined: Vec<u8> = out
            .into_iter()
            .flat_map(|r| r.unwrap().into_owned())
            .collect();
        assert_eq!(joined, content);

        // A span whose bytes do not verify: those before it are served, it is a digest
        // mismatch, and those after it (which continue from its state) are not decoded.
        let mut bad = run.clone();
        bad[infos[2].compressed_offset as usize + 7] ^= 1;
        let out = decode_gzip_run(&infos, &[], &slices(&bad, &infos), &bad);
        assert!(out[0].is_ok() && out[1].is_ok());
        assert!(matches!(out[2], Err(DecodeError::DigestMismatch { .. })));
        assert!(matches!(out[3], Err(DecodeError::AfterRefused { span: 2 })));

        // Output that does not match a content digest is refused, span by span.
        let mut forged = infos.clone();
        forged[1].content_digest = [9; 32];
        let out = decode_gzip_run(&forged, &[], &slices(&run, &forged), &run);
        assert!(out[0].is_ok() && out[2].is_ok() && out[3].is_ok());
        assert!(matches!(out[1], Err(DecodeError::ContentMismatch { .. })));

        // A run claiming more output than a span may have is refused before inflating.
        let mut huge = infos.clone();
        huge[3].uncompressed_end = MAX_GZIP_SPAN + 1;
        let out = decode_gzip_run(&huge, &[], &slices(&run, &huge), &run);
        assert!(out
            .iter()
            .all(|r| matches!(r, Err(DecodeError::TooLarge { .. }))));
    }

    #[test]
    fn every_check_refuses_in_order() {
        let content = b"0123456789".repeat(10);
        let good = info(&content, &content);

        // Compressed bytes are checked first: nothing is decoded from bytes that do not match.
        let mut wrong = content.clone();
        wrong[3] ^= 1;
        let e = decode_span(Compression::None, &good, &[], &wrong).unwrap_err();
        assert!(matches!(e, DecodeError::DigestMismatch { found } if found == sha(&wrong)));
        assert!(e.is_verify_failure());

        // Verified bytes that do not decode.
        let garbage = b"not zstd at all".to_vec();
        let e =
            decode_span(Compression::Zstd, &info(&garbage, &content), &[], &garbage).unwrap_err();
        assert!(matches!(e, DecodeError::Decode(_)), "{e:?}");
        assert!(!e.is_verify_failure());

        // Decoded to another length than the span.
        let short = content[..50].to_vec();
        let mut span = info(&short, &content);
        span.content_digest = sha(&content);
        let e = decode_span(Compression::None, &span, &[], &short).unwrap_err();
        assert!(
            matches!(e, DecodeError::LengthMismatch { found: 50 }),
            "{e:?}"
        );

        // Decoded to other content than the index records (a forged checkpoint, say).
        let mut forged = good;
        forged.content_digest = [7; 32];
        let e = decode_span(Compression::None, &forged, &[], &content).unwrap_err();
        assert!(matches!(e, DecodeError::ContentMismatch { found } if found == sha(&content)));
        assert!(e.is_verify_failure());
        let e = e.into_fetch_error("sha256:ab", 4, &forged);
        assert!(
            matches!(&e, FetchError::ContentMismatch { span: 4, expected, .. } if *expected == hex::encode([7; 32])),
            "{e:?}"
        );

        // A gzip span too large to inflate in memory is refused before anything is allocated.
        let mut huge = good;
        huge.uncompressed_end = MAX_GZIP_SPAN + 1;
        let e = decode_span(Compression::Gzip, &huge, &[], &content).unwrap_err();
        assert!(matches!(e, DecodeError::TooLarge { size } if size == MAX_GZIP_SPAN + 1));
    }
}
