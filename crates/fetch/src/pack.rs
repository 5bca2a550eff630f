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
//!   to the registry; the pack may be downloaded (from that registry) while it is in use, its
//!   table first, so that only reads of ranges it holds wait for it.
//! - [`RecordingSource`]: a [`BlobSource`] that keeps every range it passes through — run the
//!   replay through it on an empty cache and what it kept is the pack.
//!
//! # What it owns, what it must not touch
//!
//! The pack's bytes, their download and their lookup. It knows nothing of spans, windows or
//! verification (the fetcher does all of that on what it returns) and never writes anything.

use std::io::Read;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use clip_registry::RegistryError;

use crate::sync::{lock, wait_while};
use crate::BlobSource;

/// The first bytes of a pack.
pub const PACK_MAGIC: &[u8; 8] = b"CLIPPACK";
/// The pack format this code reads and writes.
pub const PACK_VERSION: u32 = 2;
/// The largest pack accepted (and built): a startup reads a few percent of an image.
pub const MAX_PACK_BYTES: u64 = 512 << 20;
/// The most ranges a pack may hold.
pub const MAX_PACK_ENTRIES: usize = 1 << 20;

const HEADER: usize = 16;
const ENTRY: usize = 56;

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

/// Bytes of a blob: its digest, where they start in it, the bytes.
pub type BlobRange = (String, u64, Vec<u8>);

/// One range of a pack: `len` bytes of blob `digest` at `offset`, at `at` in the pack.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    digest: [u8; 32],
    offset: u64,
    len: u64,
    at: usize,
}

/// The table of a pack (what it holds, and where in it), known before its data: checked whole
/// against the pack's size, so that every range it names lies within the pack.
#[derive(Debug)]
struct Table {
    entries: Vec<Entry>,
}

/// The length of the header and table of a pack of `total` bytes that begins with `header`
/// (at least [`HEADER`] bytes): magic, version and count checked.
fn table_len(header: &[u8], total: u64) -> Result<usize, PackError> {
    if total > MAX_PACK_BYTES {
        return Err(PackError::TooLarge(total));
    }
    let header = header.get(..HEADER).ok_or_else(|| PackError::Truncated {
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
    let len = HEADER + count * ENTRY;
    if len as u64 > total {
        return Err(PackError::Truncated {
            what: format!("{count} ranges announced, {total} bytes in all"),
        });
    }
    Ok(len)
}

impl Table {
    /// Parses the header and table at the start of `bytes` (at least [`table_len`] of them),
    /// the table of a pack of `total` bytes. Untrusted input: every range checked (not empty,
    /// no overflow, sorted and disjoint), and their data exactly as long as the rest.
    fn parse(bytes: &[u8], total: u64) -> Result<Table, PackError> {
        let table_end = table_len(bytes, total)?;
        let table = bytes
            .get(HEADER..table_end)
            .ok_or_else(|| PackError::Truncated {
                what: format!("{} bytes of a {table_end}-byte table", bytes.len()),
            })?;
        // `total` is at most MAX_PACK_BYTES: a usize here.
        let total = usize::try_from(total).map_err(|_| PackError::TooLarge(total))?;
        let mut entries: Vec<Entry> = Vec::with_capacity(table.len() / ENTRY);
        for (i, raw) in table.chunks_exact(ENTRY).enumerate() {
            let u64_at = |o: usize| {
                let mut b = [0u8; 8];
                b.copy_from_slice(&raw[o..o + 8]);
                u64::from_le_bytes(b)
            };
            let mut digest = [0u8; 32];
            digest.copy_from_slice(&raw[..32]);
            let (offset, len, data_at) = (u64_at(32), u64_at(40), u64_at(48));
            let bad = |detail: String| PackError::Entry { entry: i, detail };
            if len == 0 {
                return Err(bad("an empty range".into()));
            }
            if offset.checked_add(len).is_none() {
                return Err(bad(format!("range {offset}+{len} overflows")));
            }
            if let Some(prev) = entries.last() {
                if (prev.digest, prev.offset) >= (digest, offset)
                    || (prev.digest == digest && prev.offset + prev.len > offset)
                {
                    return Err(bad("ranges are not sorted and disjoint".into()));
                }
            }
            // Where its data is: within the data, which the ranges must tile exactly.
            let at = usize::try_from(data_at)
                .ok()
                .and_then(|a| table_end.checked_add(a))
                .filter(|&a| {
                    usize::try_from(len)
                        .ok()
                        .and_then(|len| a.checked_add(len))
                        .is_some_and(|end| end <= total)
                })
                .ok_or_else(|| PackError::Truncated {
                    what: format!("range {i} ({len} bytes at {data_at}) runs past the end"),
                })?;
            entries.push(Entry {
                digest,
                offset,
                len,
                at,
            });
        }
        let mut tiles: Vec<(usize, u64)> = entries.iter().map(|e| (e.at, e.len)).collect();
        tiles.sort_unstable();
        let mut next = table_end;
        for (at, len) in tiles {
            if at != next {
                return Err(PackError::Truncated {
                    what: format!(
                        "the ranges' data do not follow each other (a range at {}, {} expected)",
                        at - table_end,
                        next - table_end
                    ),
                });
            }
            next += len as usize; // at + len <= total: checked above
        }
        if next != total {
            return Err(PackError::Truncated {
                what: format!("{} bytes after the last range", total - next),
            });
        }
        Ok(Table { entries })
    }

    /// Where in the pack bytes `range` of blob `digest` are, when one range holds all of them.
    fn find(&self, digest: &str, range: &Range<u64>) -> Option<Range<usize>> {
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
        Some(from..to)
    }
}

/// A parsed startup pack: ranges of blobs, sorted by (digest, offset), none overlapping.
pub struct RangePack {
    bytes: Vec<u8>,
    table: Arc<Table>,
}

impl std::fmt::Debug for RangePack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RangePack")
            .field("ranges", &self.ranges())
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

/// Why a pack could not be downloaded.
#[derive(Debug, thiserror::Error)]
enum LoadError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Pack(#[from] PackError),
    #[error("stopped: the mount ended, or the pack was dropped")]
    Cancelled,
}

impl RangePack {
    /// Parses a pack. Untrusted input: the layout is checked whole (magic, version, sizes,
    /// ranges sorted and disjoint, data exactly as long as the ranges say); the bytes
    /// themselves are verified by whoever reads them.
    pub fn parse(bytes: Vec<u8>) -> Result<RangePack, PackError> {
        let table = Table::parse(&bytes, bytes.len() as u64)?;
        Ok(RangePack {
            bytes,
            table: Arc::new(table),
        })
    }

    /// Encodes ranges (blob digest, offset, bytes) as a pack, their data in the order given
    /// (what is needed first, first: a pack is used as it downloads): neighbours of one blob
    /// merged (at the place of the earliest), ranges of non-sha256 blobs and empty ones left
    /// out, overlaps kept once.
    pub fn encode(ranges: &[BlobRange]) -> Vec<u8> {
        let mut sorted: Vec<([u8; 32], u64, &[u8], usize)> = ranges
            .iter()
            .enumerate()
            .filter(|(_, (_, _, b))| !b.is_empty())
            .filter_map(|(rank, (d, o, b))| Some((raw_digest(d)?, *o, b.as_slice(), rank)))
            .collect();
        sorted.sort_by_key(|&(d, o, b, _)| (d, o, std::cmp::Reverse(b.len())));
        // Merged: (digest, offset, bytes, rank) with no overlaps and touching ranges joined.
        let mut merged: Vec<([u8; 32], u64, Vec<u8>, usize)> = Vec::new();
        for (digest, offset, bytes, rank) in sorted {
            let end = offset + bytes.len() as u64;
            if let Some((d, o, b, r)) = merged.last_mut() {
                let last_end = *o + b.len() as u64;
                if *d == digest && offset <= last_end {
                    if end > last_end {
                        let skip = (last_end - offset) as usize;
                        b.extend_from_slice(&bytes[skip..]);
                    }
                    *r = (*r).min(rank);
                    continue;
                }
            }
            merged.push((digest, offset, bytes.to_vec(), rank));
        }
        // The data in rank order; the table in (digest, offset) order, saying where each is.
        let mut order: Vec<usize> = (0..merged.len()).collect();
        order.sort_by_key(|&i| (merged[i].3, i));
        let mut at = vec![0u64; merged.len()];
        let mut next = 0u64;
        for &i in &order {
            at[i] = next;
            next += merged[i].2.len() as u64;
        }
        let data = usize::try_from(next).unwrap_or(0);
        let mut out = Vec::with_capacity(HEADER + merged.len() * ENTRY + data);
        out.extend_from_slice(PACK_MAGIC);
        out.extend_from_slice(&PACK_VERSION.to_le_bytes());
        out.extend_from_slice(&(merged.len() as u32).to_le_bytes());
        for ((digest, offset, bytes, _), at) in merged.iter().zip(&at) {
            out.extend_from_slice(digest);
            out.extend_from_slice(&offset.to_le_bytes());
            out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
            out.extend_from_slice(&at.to_le_bytes());
        }
        for &i in &order {
            out.extend_from_slice(&merged[i].2);
        }
        out
    }

    /// Bytes `range` of blob `digest`, when one range of the pack holds all of them.
    pub fn get(&self, digest: &str, range: &Range<u64>) -> Option<&[u8]> {
        self.bytes.get(self.table.find(digest, range)?)
    }

    /// How many ranges it holds.
    pub fn ranges(&self) -> usize {
        self.table.entries.len()
    }

    /// The bytes of blobs it holds (its size without the table).
    pub fn data_len(&self) -> u64 {
        self.table.entries.iter().map(|e| e.len).sum()
    }
}

/// `reader.read_exact`, its failure a registry error (a blob stream's errors carry one).
fn read_exact(reader: &mut dyn Read, buf: &mut [u8]) -> Result<(), LoadError> {
    let mut done = 0;
    while done < buf.len() {
        match read_some(reader, &mut buf[done..])? {
            0 => {
                return Err(PackError::Truncated {
                    what: "the blob ended early".into(),
                }
                .into())
            }
            n => done += n,
        }
    }
    Ok(())
}

/// One `read`, interrupted ones retried.
fn read_some(reader: &mut dyn Read, buf: &mut [u8]) -> Result<usize, LoadError> {
    loop {
        match reader.read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(LoadError::Registry(RegistryError::from_io_owned(e))),
        }
    }
}

/// A [`BlobSource`] that answers ranged reads from a [`RangePack`] where the pack holds the
/// whole range, and passes everything else to `inner`. To the fetcher the pack is a mirror:
/// bytes of it that do not verify make it stop using the pack
/// ([`BlobSource::distrust_mirrors`]), and the read is tried again from `inner`.
///
/// The pack may be given at once ([`PackSource::new`], [`PackSource::put`]) or downloaded
/// while the source is already in use ([`PackSource::download`]), and is used as it arrives:
/// a read waits (at most the source's `wait`) for the pack's table, then, when the table says
/// the pack holds the range, for the range's bytes; every other read goes to `inner` at once.
/// A pack's data comes in the order its maker gave (what a start needs first, first). A pack
/// that fails to download is not used (said once in the log).
pub struct PackSource {
    inner: Arc<dyn BlobSource>,
    slot: Arc<Slot>,
    /// Whether a pack was ever given or downloading (then bytes that did not verify may have
    /// come from it).
    offered: AtomicBool,
    trusted: AtomicBool,
    wait: Duration,
}

/// The pack of a [`PackSource`], shared with the thread that downloads it.
#[derive(Default)]
struct Slot {
    state: Mutex<PackState>,
    changed: Condvar,
}

#[derive(Default)]
enum PackState {
    /// None (none given, or its download failed).
    #[default]
    Absent,
    /// Being downloaded: its table once read, and the bytes of the pack so far.
    Loading(Option<(Arc<Table>, Vec<u8>)>),
    Ready(Arc<RangePack>),
}

impl Slot {
    fn set(&self, state: PackState) {
        *lock(&self.state) = state;
        self.changed.notify_all();
    }
}

impl PackSource {
    /// `inner`, with `pack` in front of it.
    pub fn new(pack: RangePack, inner: Arc<dyn BlobSource>) -> PackSource {
        let source = PackSource::without_pack(inner, Duration::ZERO);
        source.put(pack);
        source
    }

    /// `inner`, with no pack in front of it yet (see [`PackSource::put`] and
    /// [`PackSource::download`]); a read waits at most `wait` for a pack being downloaded.
    pub fn without_pack(inner: Arc<dyn BlobSource>, wait: Duration) -> PackSource {
        PackSource {
            inner,
            slot: Arc::new(Slot::default()),
            offered: AtomicBool::new(false),
            trusted: AtomicBool::new(true),
            wait,
        }
    }

    /// Puts `pack` in front of `inner` (replacing any pack given before).
    pub fn put(&self, pack: RangePack) {
        self.offered.store(true, Ordering::Relaxed);
        self.slot.set(PackState::Ready(Arc::new(pack)));
    }

    /// Starts downloading the pack, blob `digest` of `size` bytes of `inner`, on a thread of
    /// its own; reads use it as it arrives (see the type's doc). The download stops when the
    /// source is dropped.
    pub fn download(&self, digest: &str, size: u64) -> std::io::Result<()> {
        if size > MAX_PACK_BYTES {
            tracing::warn!(
                digest,
                size,
                "startup pack larger than {MAX_PACK_BYTES} bytes: not used"
            );
            return Ok(());
        }
        self.offered.store(true, Ordering::Relaxed);
        self.slot.set(PackState::Loading(None));
        let (slot, inner) = (Arc::downgrade(&self.slot), self.inner.clone());
        let digest = digest.to_string();
        let spawned = std::thread::Builder::new()
            .name("clip-pack".into())
            .spawn(move || {
                let started = Instant::now();
                let loaded = inner
                    .read_blob(&digest, size)
                    .map_err(LoadError::from)
                    .and_then(|mut reader| load(&slot, &mut reader, size));
                let Some(slot) = slot.upgrade() else {
                    return; // the mount is over
                };
                match loaded {
                    Ok(ranges) => {
                        tracing::info!(
                            ranges,
                            bytes = size,
                            ms = started.elapsed().as_millis() as u64,
                            "startup pack downloaded"
                        );
                    }
                    Err(e) => {
                        tracing::warn!("the startup pack {digest} is not used: {e}");
                        slot.set(PackState::Absent);
                    }
                }
            });
        if let Err(e) = spawned {
            self.slot.set(PackState::Absent);
            return Err(e);
        }
        Ok(())
    }

    /// `f` of bytes `range` of blob `digest`, when the pack holds them and may be used:
    /// waiting for them while it downloads (see the type's doc).
    fn with_held<R>(
        &self,
        digest: &str,
        range: &Range<u64>,
        f: impl FnOnce(&[u8]) -> R,
    ) -> Option<R> {
        if !self.trusted.load(Ordering::Relaxed) {
            return None;
        }
        let deadline = Instant::now() + self.wait;
        let state = lock(&self.slot.state);
        let (state, _) = wait_while(
            &self.slot.changed,
            state,
            Some(deadline),
            |state| match state {
                PackState::Loading(None) => true,
                PackState::Loading(Some((table, bytes))) => table
                    .find(digest, range)
                    .is_some_and(|at| at.end > bytes.len()),
                _ => false,
            },
        );
        match &*state {
            PackState::Ready(pack) => pack.get(digest, range).map(f),
            PackState::Loading(Some((table, bytes))) => {
                bytes.get(table.find(digest, range)?).map(f)
            }
            _ => None,
        }
    }
}

/// Downloads a pack of `size` bytes from `reader` (a blob stream, which checks the blob's
/// digest at its end) into `slot`, as [`RangePack::parse`] checks it: the table first, then the
/// data, each chunk usable as soon as it is there; at the end the slot holds the pack, ready.
/// Returns how many ranges it holds. Stops when the slot is gone.
fn load(slot: &Weak<Slot>, reader: &mut dyn Read, size: u64) -> Result<usize, LoadError> {
    let mut bytes = vec![0u8; HEADER.min(usize::try_from(size).unwrap_or(usize::MAX))];
    read_exact(reader, &mut bytes)?;
    let table_end = table_len(&bytes, size)?;
    bytes.resize(table_end, 0);
    read_exact(reader, &mut bytes[HEADER..])?;
    let table = Arc::new(Table::parse(&bytes, size)?);
    // `size` is at most MAX_PACK_BYTES (table_len checked it).
    let size = usize::try_from(size).map_err(|_| PackError::TooLarge(size))?;
    bytes.reserve_exact(size - bytes.len());
    slot.upgrade()
        .ok_or(LoadError::Cancelled)?
        .set(PackState::Loading(Some((table.clone(), bytes))));
    let mut received = table_end;
    let mut chunk = vec![0u8; 256 << 10];
    loop {
        let n = read_some(reader, &mut chunk)?;
        if n == 0 {
            break; // the end, where the stream checked the blob's digest
        }
        if received + n > size {
            return Err(PackError::Truncated {
                what: format!("the blob is longer than its {size} bytes"),
            }
            .into());
        }
        let slot = slot.upgrade().ok_or(LoadError::Cancelled)?;
        let mut state = lock(&slot.state);
        let PackState::Loading(Some((_, bytes))) = &mut *state else {
            return Err(LoadError::Cancelled); // dropped: its bytes did not verify
        };
        bytes.extend_from_slice(&chunk[..n]);
        received += n;
        drop(state);
        slot.changed.notify_all();
    }
    if received != size {
        return Err(PackError::Truncated {
            what: format!("the blob ended after {received} of its {size} bytes"),
        }
        .into());
    }
    let slot = slot.upgrade().ok_or(LoadError::Cancelled)?;
    let mut state = lock(&slot.state);
    let PackState::Loading(Some((_, bytes))) = std::mem::take(&mut *state) else {
        return Err(LoadError::Cancelled);
    };
    let ranges = table.entries.len();
    *state = PackState::Ready(Arc::new(RangePack { bytes, table }));
    drop(state);
    slot.changed.notify_all();
    Ok(ranges)
}

impl BlobSource for PackSource {
    fn read_range(&self, digest: &str, range: Range<u64>) -> Result<Vec<u8>, RegistryError> {
        match self.with_held(digest, &range, <[u8]>::to_vec) {
            Some(bytes) => Ok(bytes),
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
        self.with_held(digest, range, |_| ()).is_some()
    }

    /// Once a pack was given: bytes that did not verify may have come from it (the question
    /// is asked after [`BlobSource::distrust_mirrors`] dropped it).
    fn has_mirrors(&self) -> bool {
        self.offered.load(Ordering::Relaxed) || self.inner.has_mirrors()
    }

    fn distrust_mirrors(&self) -> bool {
        let had_pack =
            self.trusted.swap(false, Ordering::Relaxed) && self.offered.load(Ordering::Relaxed);
        if had_pack {
            tracing::warn!("bytes of the startup pack did not verify: not using it any more");
            self.slot.set(PackState::Absent);
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
    ranges: Vec<BlobRange>,
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

    /// What was read so far, as a pack (see [`RangePack::encode`]), its data in the order read.
    pub fn pack(&self) -> Vec<u8> {
        self.pack_by(|_, _| 0)
    }

    /// What was read so far, as a pack whose data come in the order of `rank` (blob digest,
    /// range read → lowest first; ties in the order read).
    pub fn pack_by(&self, rank: impl Fn(&str, &Range<u64>) -> usize) -> Vec<u8> {
        let kept = lock(&self.kept);
        let mut ranked: Vec<(usize, &BlobRange)> = kept
            .ranges
            .iter()
            .map(|r| (rank(&r.0, &(r.1..r.1 + r.2.len() as u64)), r))
            .collect();
        ranked.sort_by_key(|&(rank, _)| rank);
        let ordered: Vec<BlobRange> = ranked.into_iter().map(|(_, r)| r.clone()).collect();
        RangePack::encode(&ordered)
    }
}

impl BlobSource for RecordingSource {
    fn read_range(&self, digest: &str, range: Range<u64>) -> Result<Vec<u8>, RegistryError> {
        let start = range.start;
        let bytes = self.inner.read_range(digest, range)?;
        let mut kept = lock(&self.kept);
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
    fn data_come_in_the_order_given_and_must_tile() {
        // Given: d(2) first, then d(1); d(1)'s two ranges merged, at the earlier's place.
        let bytes = RangePack::encode(&[
            (d(2), 0, b"first".to_vec()),
            (d(1), 10, b"second".to_vec()),
            (d(1), 16, b"!".to_vec()),
        ]);
        let data = &bytes[HEADER + 2 * ENTRY..];
        assert_eq!(data, b"firstsecond!");
        let pack = RangePack::parse(bytes.clone()).unwrap();
        assert_eq!(pack.get(&d(1), &(10..17)), Some(&b"second!"[..]));
        assert_eq!(pack.get(&d(2), &(0..5)), Some(&b"first"[..]));
        // The table is in (digest, offset) order: d(1)'s entry first, its data at 5.
        let at = |entry: usize| {
            let o = HEADER + entry * ENTRY + 48;
            u64::from_le_bytes(bytes[o..o + 8].try_into().unwrap())
        };
        assert_eq!((at(0), at(1)), (5, 0));
        // Data positions that overlap, or leave a gap, are refused.
        for (a, b) in [(0, 0), (5, 1), (6, 0), (7, 0)] {
            let mut bad = bytes.clone();
            bad[HEADER + 48..HEADER + 56].copy_from_slice(&(a as u64).to_le_bytes());
            bad[HEADER + ENTRY + 48..HEADER + ENTRY + 56]
                .copy_from_slice(&(b as u64).to_le_bytes());
            assert!(RangePack::parse(bad).is_err(), "d(1) at {a}, d(2) at {b}");
        }
    }

    #[test]
    fn malformed_packs_are_refused_with_what_is_wrong() {
        let good = RangePack::encode(&[(d(1), 0, b"abc".to_vec()), (d(2), 5, b"de".to_vec())]);
        assert!(RangePack::parse(good.clone()).is_ok());
        assert_eq!(
            RangePack::parse(b"NOTAPACK\x01\0\0\0\0\0\0\0".to_vec()).unwrap_err(),
            PackError::Magic
        );
        for version in [1, 3] {
            let mut other = good.clone();
            other[8] = version;
            assert_eq!(
                RangePack::parse(other).unwrap_err(),
                PackError::Version(u32::from(version))
            );
        }
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
