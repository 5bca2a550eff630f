//! Startup packs: the byte ranges a startup profile's replay reads from the registry, fetched
//! once (by the node that pushes the profile) and shipped as one blob beside the profile, so
//! that another node's replay reads them from a local file instead of sending a Range request
//! for every run of spans and every seek window.
//!
//! A pack holds nothing but ranges of the image's own blobs (layers, and the index blob whose
//! seek windows a metadata-only index leaves out), named by blob digest and offset; its bytes
//! are verified exactly as bytes from the registry are — span digests, window digests — by the
//! fetcher that reads them. A pack is a source of bytes, never a source of truth: bytes from it
//! that do not verify make [`PackSource`] stop using it (the fetcher's mirror rule), and the
//! range is read from the registry.
//!
//! - [`RangePack`]: the pack format (docs/FORMAT.md, "Startup pack"): parsing (untrusted input:
//!   every count and length checked and capped), encoding, lookup.
//! - [`PackSource`]: a [`BlobSource`] that answers from a pack what it holds and passes the rest
//!   to the registry.
//! - [`RecordingSource`]: a [`BlobSource`] that keeps every range it passes through — run the
//!   replay through it on an empty cache and what it kept is the pack.
//!
//! # What it owns, what it must not touch
//!
//! The pack's bytes and their lookup. It knows nothing of spans, windows or verification (the
//! fetcher does all of that on what it returns) and never writes anything.

use std::io::Read;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use clip_registry::RegistryError;

use crate::BlobSource;

/// The first bytes of a pack.
pub const PACK_MAGIC: &[u8; 8] = b"CLIPPACK";
/// The pack format this code reads and writes.
pub const PACK_VERSION: u32 = 1;
/// The largest pack accepted (and built): a startup reads a few percent of an image.
pub const MAX_PACK_BYTES: u64 = 512 << 20;
/// The most ranges a pack may hold.
pub const MAX_PACK_ENTRIES: usize = 1 << 20;

const HEADER: usize = 16;
const ENTRY: usize = 48;

/// Why bytes are not a pack.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PackError {
    /// It does not begin with [`PACK_MAGIC`].
    #[error("not a clip startup pack (no CLIPPACK magic)")]
    Magic,
    /// A version this code does not read.
    #[error("startup pack version {0}, this clip reads version {PACK_VERSION}")]
    Version(u32),
    /// Larger than [`MAX_PACK_BYTES`].
    #[error("startup pack of {0} bytes: more than the {MAX_PACK_BYTES} accepted")]
    TooLarge(u64),
    /// Shorter or longer than its table says.
    #[error("startup pack truncated: {what}")]
    Truncated {
        /// What is missing or left over.
        what: String,
    },
    /// A range of the table that cannot be.
    #[error("startup pack entry {entry}: {detail}")]
    Entry {
        /// Its position in the table.
        entry: usize,
        /// What is wrong with it.
        detail: String,
    },
}

/// One range of a pack: `len` bytes of blob `digest` at `offset`, at `at` in the pack.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    digest: [u8; 32],
    offset: u64,
    len: u64,
    at: usize,
}

/// A parsed startup pack: ranges of blobs, sorted by (digest, offset), none overlapping.
pub struct RangePack {
    bytes: Vec<u8>,
    entries: Vec<Entry>,
}

impl std::fmt::Debug for RangePack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RangePack")
            .field("ranges", &self.entries.len())
            .field("bytes", &self.data_len())
            .finish()
    }
}

/// `sha256:<hex>` as 32 bytes; `None` for any other digest (not packed).
fn raw_digest(digest: &str) -> Option<[u8; 32]> {
    let hex = digest.strip_prefix("sha256:")?;
    let mut raw = [0u8; 32];
    hex::decode_to_slice(hex, &mut raw).ok()?;
    Some(raw)
}

impl RangePack {
    /// Parses a pack. Untrusted input: the layout is checked whole (magic, version, sizes,
    /// ranges sorted and disjoint, data exactly as long as the ranges say); the bytes
    /// themselves are verified by whoever reads them.
    pub fn parse(bytes: Vec<u8>) -> Result<RangePack, PackError> {
        let total = bytes.len() as u64;
        if total > MAX_PACK_BYTES {
            return Err(PackError::TooLarge(total));
        }
        let header = bytes.get(..HEADER).ok_or_else(|| PackError::Truncated {
            what: format!("{total} bytes, not even a header"),
        })?;
        if &header[..8] != PACK_MAGIC {
            return Err(PackError::Magic);
        }
        let word = |at: usize| {
            u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
        };
        let version = word(8);
        if version != PACK_VERSION {
            return Err(PackError::Version(version));
        }
        let count = word(12) as usize;
        if count > MAX_PACK_ENTRIES {
            return Err(PackError::Entry {
                entry: count,
                detail: format!("{count} ranges, more than the {MAX_PACK_ENTRIES} accepted"),
            });
        }
        let table_end = HEADER + count * ENTRY;
        let table = bytes
            .get(HEADER..table_end)
            .ok_or_else(|| PackError::Truncated {
                what: format!("{count} ranges announced, {total} bytes in all"),
            })?;
        let mut entries = Vec::with_capacity(count);
        let mut at = table_end;
        for (i, raw) in table.chunks_exact(ENTRY).enumerate() {
            let u64_at = |o: usize| {
                let mut b = [0u8; 8];
                b.copy_from_slice(&raw[o..o + 8]);
                u64::from_le_bytes(b)
            };
            let mut digest = [0u8; 32];
            digest.copy_from_slice(&raw[..32]);
            let (offset, len) = (u64_at(32), u64_at(40));
            let bad = |detail: String| PackError::Entry { entry: i, detail };
            if len == 0 {
                return Err(bad("an empty range".into()));
            }
            if offset.checked_add(len).is_none() {
                return Err(bad(format!("range {offset}+{len} overflows")));
            }
            if let Some(prev) = entries.last() {
                let prev: &Entry = prev;
                if (prev.digest, prev.offset) >= (digest, offset)
                    || (prev.digest == digest && prev.offset + prev.len > offset)
                {
                    return Err(bad("ranges are not sorted and disjoint".into()));
                }
            }
            let end = usize::try_from(len)
                .ok()
                .and_then(|len| at.checked_add(len))
                .filter(|&end| end <= bytes.len())
                .ok_or_else(|| PackError::Truncated {
                    what: format!("range {i} ({len} bytes) runs past the end"),
                })?;
            entries.push(Entry {
                digest,
                offset,
                len,
                at,
            });
            at = end;
        }
        if at != bytes.len() {
            return Err(PackError::Truncated {
                what: format!("{} bytes after the last range", bytes.len() - at),
            });
        }
        Ok(RangePack { bytes, entries })
    }

    /// Encodes ranges (blob digest, offset, bytes) as a pack: sorted, neighbours of one blob
    /// merged, ranges of non-sha256 blobs and empty ones left out, overlaps kept once.
    pub fn encode(ranges: &[(String, u64, Vec<u8>)]) -> Vec<u8> {
        let mut sorted: Vec<([u8; 32], u64, &[u8])> = ranges
            .iter()
            .filter(|(_, _, b)| !b.is_empty())
            .filter_map(|(d, o, b)| Some((raw_digest(d)?, *o, b.as_slice())))
            .collect();
        sorted.sort_by_key(|&(d, o, b)| (d, o, std::cmp::Reverse(b.len())));
        // Merged: (digest, offset, bytes) with no overlaps and touching ranges joined.
        let mut merged: Vec<([u8; 32], u64, Vec<u8>)> = Vec::new();
        for (digest, offset, bytes) in sorted {
            let end = offset + bytes.len() as u64;
            if let Some((d, o, b)) = merged.last_mut() {
                let last_end = *o + b.len() as u64;
                if *d == digest && offset <= last_end {
                    if end > last_end {
                        let skip = (last_end - offset) as usize;
                        b.extend_from_slice(&bytes[skip..]);
                    }
                    continue;
                }
            }
            merged.push((digest, offset, bytes.to_vec()));
        }
        let data: usize = merged.iter().map(|(_, _, b)| b.len()).sum();
        let mut out = Vec::with_capacity(HEADER + merged.len() * ENTRY + data);
        out.extend_from_slice(PACK_MAGIC);
        out.extend_from_slice(&PACK_VERSION.to_le_bytes());
        out.extend_from_slice(&(merged.len() as u32).to_le_bytes());
        for (digest, offset, bytes) in &merged {
            out.extend_from_slice(digest);
            out.extend_from_slice(&offset.to_le_bytes());
            out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        }
        for (_, _, bytes) in &merged {
            out.extend_from_slice(bytes);
        }
        out
    }

    /// Bytes `range` of blob `digest`, when one range of the pack holds all of them.
    pub fn get(&self, digest: &str, range: &Range<u64>) -> Option<&[u8]> {
        let raw = raw_digest(digest)?;
        // The last entry starting at or before `range.start`.
        let i = self
            .entries
            .partition_point(|e| (e.digest, e.offset) <= (raw, range.start));
        let e = self.entries.get(i.checked_sub(1)?)?;
        if e.digest != raw || range.end < range.start || range.end > e.offset + e.len {
            return None;
        }
        let from = e.at + usize::try_from(range.start - e.offset).ok()?;
        let to = e.at + usize::try_from(range.end - e.offset).ok()?;
        self.bytes.get(from..to)
    }

    /// How many ranges it holds.
    pub fn ranges(&self) -> usize {
        self.entries.len()
    }

    /// The bytes of blobs it holds (its size without the table).
    pub fn data_len(&self) -> u64 {
        self.entries.iter().map(|e| e.len).sum()
    }
}

/// A [`BlobSource`] that answers ranged reads from a [`RangePack`] where the pack holds the
/// whole range, and passes everything else to `inner`. To the fetcher the pack is a mirror:
/// bytes of it that do not verify make it stop using the pack
/// ([`BlobSource::distrust_mirrors`]), and the read is tried again from `inner`.
pub struct PackSource {
    pack: RangePack,
    inner: Arc<dyn BlobSource>,
    trusted: AtomicBool,
}

impl PackSource {
    /// `inner`, with `pack` in front of it.
    pub fn new(pack: RangePack, inner: Arc<dyn BlobSource>) -> PackSource {
        PackSource {
            pack,
            inner,
            trusted: AtomicBool::new(true),
        }
    }

    fn held(&self, digest: &str, range: &Range<u64>) -> Option<&[u8]> {
        if self.trusted.load(Ordering::Relaxed) {
            self.pack.get(digest, range)
        } else {
            None
        }
    }
}

impl BlobSource for PackSource {
    fn read_range(&self, digest: &str, range: Range<u64>) -> Result<Vec<u8>, RegistryError> {
        match self.held(digest, &range) {
            Some(bytes) => Ok(bytes.to_vec()),
            None => self.inner.read_range(digest, range),
        }
    }

    fn read_blob(
        &self,
        digest: &str,
        size: u64,
    ) -> Result<Box<dyn Read + Send + '_>, RegistryError> {
        self.inner.read_blob(digest, size)
    }

    fn holds(&self, digest: &str, range: &Range<u64>) -> bool {
        self.held(digest, range).is_some()
    }

    /// Always: bytes that did not verify may have come from the pack (the question is asked
    /// after [`BlobSource::distrust_mirrors`] dropped it).
    fn has_mirrors(&self) -> bool {
        true
    }

    fn distrust_mirrors(&self) -> bool {
        let had_pack = self.trusted.swap(false, Ordering::Relaxed);
        if had_pack {
            tracing::warn!("bytes of the startup pack did not verify: not using it any more");
        }
        self.inner.distrust_mirrors() || had_pack
    }
}

/// A [`BlobSource`] that passes everything to `inner` and keeps a copy of every range read
/// that succeeded: a startup pack in the making ([`RecordingSource::pack`]).
pub struct RecordingSource {
    inner: Arc<dyn BlobSource>,
    kept: Mutex<Kept>,
}

/// The ranges a [`RecordingSource`] kept, and their bytes in all.
#[derive(Default)]
struct Kept {
    ranges: Vec<(String, u64, Vec<u8>)>,
    bytes: u64,
}

impl RecordingSource {
    /// Records reads through `inner`.
    pub fn new(inner: Arc<dyn BlobSource>) -> RecordingSource {
        RecordingSource {
            inner,
            kept: Mutex::new(Kept::default()),
        }
    }

    /// What was read so far, as a pack (see [`RangePack::encode`]).
    pub fn pack(&self) -> Vec<u8> {
        let kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        RangePack::encode(&kept.ranges)
    }
}

impl BlobSource for RecordingSource {
    fn read_range(&self, digest: &str, range: Range<u64>) -> Result<Vec<u8>, RegistryError> {
        let start = range.start;
        let bytes = self.inner.read_range(digest, range)?;
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        // Bounded, so that the pack it makes stays well within the cap, table included: past
        // half of it, reads are passed on, not kept.
        if kept.bytes + bytes.len() as u64 <= MAX_PACK_BYTES / 2 {
            kept.bytes += bytes.len() as u64;
            kept.ranges.push((digest.to_string(), start, bytes.clone()));
        }
        Ok(bytes)
    }

    fn read_blob(
        &self,
        digest: &str,
        size: u64,
    ) -> Result<Box<dyn Read + Send + '_>, RegistryError> {
        self.inner.read_blob(digest, size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> String {
        format!("sha256:{}", hex::encode([n; 32]))
    }

    #[test]
    fn ranges_round_trip_merged_and_sorted() {
        let pack = RangePack::encode(&[
            (d(2), 100, b"world".to_vec()),
            (d(1), 10, b"hello".to_vec()),
            (d(1), 15, b" there".to_vec()), // touches the one before: merged
            (d(1), 12, b"llo".to_vec()),    // inside it: kept once
            (d(3), 0, Vec::new()),          // empty: left out
            ("sha512:00".into(), 0, b"x".to_vec()), // not sha256: left out
        ]);
        let pack = RangePack::parse(pack).unwrap();
        assert_eq!(pack.ranges(), 2);
        assert_eq!(pack.data_len(), 16);
        assert_eq!(pack.get(&d(1), &(10..21)), Some(&b"hello there"[..]));
        assert_eq!(pack.get(&d(1), &(12..17)), Some(&b"llo t"[..]));
        assert_eq!(pack.get(&d(2), &(101..105)), Some(&b"orld"[..]));
        assert_eq!(pack.get(&d(2), &(100..100)), Some(&b""[..]));
        // Not (wholly) held.
        assert_eq!(pack.get(&d(1), &(9..12)), None);
        assert_eq!(pack.get(&d(1), &(20..22)), None);
        assert_eq!(pack.get(&d(2), &(0..1)), None);
        assert_eq!(pack.get(&d(4), &(10..11)), None);
        assert_eq!(pack.get("sha256:zz", &(10..11)), None);
    }

    #[test]
    fn malformed_packs_are_refused_with_what_is_wrong() {
        let good = RangePack::encode(&[(d(1), 0, b"abc".to_vec()), (d(2), 5, b"de".to_vec())]);
        assert!(RangePack::parse(good.clone()).is_ok());
        assert_eq!(
            RangePack::parse(b"NOTAPACK\x01\0\0\0\0\0\0\0".to_vec()).unwrap_err(),
            PackError::Magic
        );
        let mut v2 = good.clone();
        v2[8] = 2;
        assert_eq!(RangePack::parse(v2).unwrap_err(), PackError::Version(2));
        for cut in [3, 15, 20, good.len() - 1] {
            assert!(
                matches!(
                    RangePack::parse(good[..cut].to_vec()),
                    Err(PackError::Truncated { .. })
                ),
                "cut at {cut}"
            );
        }
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(matches!(
            RangePack::parse(trailing),
            Err(PackError::Truncated { .. })
        ));
        // Entries out of order.
        let mut swapped = good.clone();
        let (a, b) = (HEADER, HEADER + ENTRY);
        let first: Vec<u8> = swapped[a..b].to_vec();
        let second: Vec<u8> = swapped[b..b + ENTRY].to_vec();
        swapped[a..b].copy_from_slice(&second);
        swapped[b..b + ENTRY].copy_from_slice(&first);
        assert!(matches!(
            RangePack::parse(swapped),
            Err(PackError::Entry { .. })
        ));
        // A huge count, a huge length, an empty range, an offset that overflows.
        let mut count = good.clone();
        count[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            RangePack::parse(count),
            Err(PackError::Entry { .. })
        ));
        let mut long = good.clone();
        long[HEADER + 40..HEADER + 48].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(RangePack::parse(long).is_err());
        let mut empty = good.clone();
        empty[HEADER + 40..HEADER + 48].copy_from_slice(&0u64.to_le_bytes());
        assert!(matches!(
            RangePack::parse(empty),
            Err(PackError::Entry { .. })
        ));
        let mut overflow = good;
        overflow[HEADER + 32..HEADER + 40].copy_from_slice(&(u64::MAX - 1).to_le_bytes());
        assert!(matches!(
            RangePack::parse(overflow),
            Err(PackError::Entry { .. })
        ));
    }
}
