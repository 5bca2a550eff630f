//! The span cache: decompressed spans on local disk, shared by every mount and process that uses
//! the same directory.
//!
//! # Layout (version 1)
//!
//! ```text
//! <dir>/v1/spans/<h0h1>/<layer>/<offset:016x>-<len:x>        one verified, decompressed span
//! <dir>/v1/spans/<h0h1>/<layer>/.tmp-<pid>-<seq>-<name>      being written (never served)
//! ```
//!
//! - `<layer>` is the layer blob digest's hex (`sha256:ab…` → `ab…`; other algorithms keep
//!   their name: `sha512-ab…`), `<h0h1>` its first two hex digits. The key is the *layer*, not
//!   the image: a layer shared by two images is cached once.
//! - `<offset>` is where the span starts in the layer's uncompressed tar stream (16 lowercase hex
//!   digits) and `<len>` its uncompressed length (lowercase hex, no padding).
//! - A file is a 64-byte header followed by the `len` content bytes, so that the content byte at
//!   uncompressed offset `o` sits at file offset `64 + o - offset` (reads are `pread`s):
//!
//! | offset | size | field     | meaning |
//! |-------:|-----:|-----------|---------|
//! | 0      | 8    | magic     | `"CLIPSPAN"` |
//! | 8      | 4    | version   | u32 LE, `1` |
//! | 12     | 4    | reserved  | zero |
//! | 16     | 8    | len       | u64 LE, content length |
//! | 24     | 8    | xxh3      | u64 LE, xxh3-64 (seed 0) of the content |
//! | 32     | 32   | source    | sha256 of what the span was decoded from (below) |
//!
//! `source` = sha256(`"clip-span-source-v1\0"` ‖ compression (1 byte: 0 none, 1 gzip, 2 zstd)
//! ‖ the span's 32-byte compressed digest ‖ `bits` (1 byte) ‖ the raw deflate window). An entry
//! is only served to a reader whose index says the same thing about that span, so an index
//! that lies about a layer cannot poison the cache for other images.
//!
//! # Rules
//!
//! - **Atomic publication.** An entry is written to a temp file in its final directory, its
//!   header written last, `fsync`ed, then renamed into place: a crash leaves at most a temp file,
//!   never a partial entry under a final name. Temp files older than an hour are removed by the
//!   next scan.
//! - **Verified on first use.** The first time a process opens an entry (per inode), it checks
//!   the header, the file size and the xxh3 of the content, and the source; a corrupt entry is
//!   deleted and the span fetched again. Bytes come only from spans whose compressed bytes
//!   matched their digest before they were decoded.
//! - **Bounded.** Each process counts the bytes in the directory (one scan at startup, on a
//!   background thread, plus what it writes). When a write takes the total past `max_bytes`,
//!   the directory is scanned and the least recently used entries (oldest mtime) are deleted
//!   down to 90 % of `max_bytes`. A hit bumps an entry's mtime, at most once a minute per entry.
//! - **Cheap hits.** Up to 256 verified entries stay open; a read is one `pread` of just the
//!   bytes asked for.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{FileExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clip_archive::Compression;
use sha2::{Digest as _, Sha256};
use xxhash_rust::xxh3::Xxh3;

use crate::{CacheOptions, FetchError};

/// Length of an entry's header; content starts here. Changing it is a cache format break.
pub(crate) const HEADER_LEN: u64 = 64;
/// First bytes of every entry. Changing it is a cache format break.
const MAGIC: [u8; 8] = *b"CLIPSPAN";
/// Entry format version. Changing the layout above is a cache format break: bump it and
/// [`LAYOUT_DIR`].
const VERSION: u32 = 1;
/// The versioned top directory under the cache dir.
const LAYOUT_DIR: &str = "v1";
/// Domain separation of the source hash.
const SOURCE_TAG: &[u8] = b"clip-span-source-v1\0";
/// A hit bumps the mtime at most this often per entry.
const TOUCH_INTERVAL_SECS: u64 = 60;
/// Verified entries kept open.
const OPEN_FILES: usize = 256;
/// Temp files older than this belong to a process that died.
const STALE_TEMP: Duration = Duration::from_secs(3600);
/// Buffer for checksumming an entry.
const VERIFY_CHUNK: usize = 256 * 1024;
const TEMP_PREFIX: &str = ".tmp-";

/// Identifies a span inside one fetcher: (layer index, span index).
pub(crate) type Key = (u32, usize);

/// What this process remembers about one span's entry.
#[derive(Debug, Default)]
pub(crate) struct EntryState {
    /// Inode of the file last verified (0 = none).
    verified_ino: AtomicU64,
    /// When the mtime was last bumped (seconds since the epoch).
    touched: AtomicU64,
}

impl EntryState {
    /// Forget the verification (the file turned out bad after all).
    pub(crate) fn forget(&self) {
        self.verified_ino.store(0, Ordering::Relaxed);
    }
}

/// The source hash of a span (see the module doc).
pub(crate) fn source_id(
    compression: Compression,
    digest: &[u8; 32],
    bits: u8,
    window: &[u8],
) -> [u8; 32] {
    let kind: u8 = match compression {
        Compression::None => 0,
        Compression::Gzip => 1,
        Compression::Zstd => 2,
    };
    let mut h = Sha256::new();
    h.update(SOURCE_TAG);
    h.update([kind]);
    h.update(digest);
    h.update([bits]);
    h.update(window);
    h.finalize().into()
}

/// What a lookup found.
pub(crate) enum Lookup {
    /// A verified entry, open.
    Hit(Arc<File>),
    /// No entry (or one this index must not use).
    Miss,
    /// An entry failed verification and was deleted.
    Corrupt(String),
}

/// The cache of one fetcher (clones share everything).
#[derive(Clone)]
pub(crate) struct SpanCache {
    inner: Arc<Inner>,
}

struct Inner {
    spans_dir: PathBuf,
    max_bytes: u64,
    /// Bytes believed to be in the directory.
    bytes: AtomicU64,
    /// Bytes published by this process, ever (to correct a count taken while writing).
    added: AtomicU64,
    evicting: AtomicBool,
    temp_seq: AtomicU64,
    open: Mutex<OpenFiles>,
    /// Set when the startup scan is over.
    scanned: (Mutex<bool>, Condvar),
}

struct OpenFiles {
    map: HashMap<Key, OpenEntry>,
    tick: u64,
}

struct OpenEntry {
    file: Arc<File>,
    path: PathBuf,
    tick: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl SpanCache {
    /// Creates the directory if needed and starts the background scan of what is there.
    pub(crate) fn open(options: &CacheOptions) -> Result<SpanCache, FetchError> {
        let spans_dir = options.dir.join(LAYOUT_DIR).join("spans");
        fs::create_dir_all(&spans_dir).map_err(|e| FetchError::cache(&spans_dir, e))?;
        let cache = SpanCache {
            inner: Arc::new(Inner {
                spans_dir,
                max_bytes: options.max_bytes,
                bytes: AtomicU64::new(0),
                added: AtomicU64::new(0),
                evicting: AtomicBool::new(false),
                temp_seq: AtomicU64::new(0),
                open: Mutex::new(OpenFiles {
                    map: HashMap::new(),
                    tick: 0,
                }),
                scanned: (Mutex::new(false), Condvar::new()),
            }),
        };
        let scanner = cache.clone();
        std::thread::Builder::new()
            .name("clip-cache-scan".into())
            .spawn(move || scanner.initial_scan())
            .map_err(|e| FetchError::Thread(Arc::new(e)))?;
        Ok(cache)
    }

    /// The directory of a layer's entries, or `None` when the digest is not a well-formed
    /// `sha256:`/`sha512:` digest (it becomes a path: it must not contain anything else).
    pub(crate) fn layer_dir(&self, digest: &str) -> Option<PathBuf> {
        let (algorithm, hex) = digest.split_once(':')?;
        let hex_len = match algorithm {
            "sha256" => 64,
            "sha512" => 128,
            _ => return None,
        };
        if hex.len() != hex_len || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return None;
        }
        let name = match algorithm {
            "sha256" => hex.to_string(),
            _ => format!("{algorithm}-{hex}"),
        };
        Some(self.inner.spans_dir.join(&hex[..2]).join(name))
    }

    /// The path of the entry for `len` bytes at uncompressed `offset` of a layer.
    pub(crate) fn entry_path(layer_dir: &Path, offset: u64, len: u64) -> PathBuf {
        layer_dir.join(format!("{offset:016x}-{len:x}"))
    }

    /// An open verified entry for `key`, if this process has one.
    pub(crate) fn open_entry(&self, key: Key, state: &EntryState) -> Option<Arc<File>> {
        let file = {
            let mut open = lock(&self.inner.open);
            open.tick += 1;
            let tick = open.tick;
            let entry = open.map.get_mut(&key)?;
            entry.tick = tick;
            entry.file.clone()
        };
        touch(&file, state);
        Some(file)
    }

    /// Whether an entry file exists (not verified: for readahead, which only skips it).
    pub(crate) fn exists(&self, key: Key, path: &Path) -> bool {
        lock(&self.inner.open).map.contains_key(&key) || path.is_file()
    }

    /// Looks up the entry at `path` of `len` content bytes. `source` computes the source hash
    /// this reader expects (only called when the file needs verifying; `None` = cannot tell,
    /// treat as a miss).
    pub(crate) fn lookup(
        &self,
        key: Key,
        path: &Path,
        len: u64,
        state: &EntryState,
        source: &dyn Fn() -> Option<[u8; 32]>,
    ) -> Lookup {
        if let Some(file) = self.open_entry(key, state) {
            return Lookup::Hit(file);
        }
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Lookup::Miss,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot open cache entry");
                return Lookup::Miss;
            }
        };
        let meta = match file.metadata() {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot stat cache entry");
                return Lookup::Miss;
            }
        };
        let ino = meta.ino();
        let problem = if meta.len() != HEADER_LEN.saturating_add(len) {
            Some(format!(
                "file is {} bytes, expected {} + {len}",
                meta.len(),
                HEADER_LEN
            ))
        } else if state.verified_ino.load(Ordering::Relaxed) == ino {
            None
        } else {
            match verify(&file, len) {
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot read cache entry");
                    return Lookup::Miss;
                }
                Ok(Err(problem)) => Some(problem),
                Ok(Ok(found_source)) => {
                    let Some(expected) = source() else {
                        return Lookup::Miss;
                    };
                    if found_source != expected {
                        // A valid entry, but decoded from something other than what this
                        // index describes: do not use it; a fetch will replace it.
                        tracing::warn!(path = %path.display(),
                            "cache entry was made from other span bytes than this index names; ignoring it");
                        return Lookup::Miss;
                    }
                    None
                }
            }
        };
        if let Some(problem) = problem {
            self.remove_if_same(path, ino);
            return Lookup::Corrupt(problem);
        }
        state.verified_ino.store(ino, Ordering::Relaxed);
        let file = Arc::new(file);
        self.remember(key, path, file.clone());
        touch(&file, state);
        Lookup::Hit(file)
    }

    /// Drops an entry from the open files and forgets its verification (a read of it failed).
    pub(crate) fn invalidate(&self, key: Key, state: &EntryState) {
        lock(&self.inner.open).map.remove(&key);
        state.forget();
    }

    /// Deletes `path` if it is still the file with inode `ino`.
    fn remove_if_same(&self, path: &Path, ino: u64) {
        if fs::symlink_metadata(path).is_ok_and(|m| m.ino() == ino) {
            if let Err(e) = fs::remove_file(path) {
                tracing::warn!(path = %path.display(), error = %e, "cannot delete cache entry");
            }
        }
    }

    fn remember(&self, key: Key, path: &Path, file: Arc<File>) {
        let mut open = lock(&self.inner.open);
        open.tick += 1;
        let tick = open.tick;
        if open.map.len() >= OPEN_FILES && !open.map.contains_key(&key) {
            let oldest = open.map.iter().min_by_key(|(_, e)| e.tick).map(|(k, _)| *k);
            if let Some(oldest) = oldest {
                open.map.remove(&oldest);
            }
        }
        open.map.insert(
            key,
            OpenEntry {
                file,
                path: path.to_path_buf(),
                tick,
            },
        );
    }

    /// Starts writing the entry that will live at `path` (in `layer_dir`).
    pub(crate) fn writer(&self, layer_dir: &Path, path: &Path) -> Result<EntryWriter, FetchError> {
        fs::create_dir_all(layer_dir).map_err(|e| FetchError::cache(layer_dir, e))?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let seq = self.inner.temp_seq.fetch_add(1, Ordering::Relaxed);
        let temp = layer_dir.join(format!("{TEMP_PREFIX}{}-{seq}-{name}", std::process::id()));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&temp)
            .map_err(|e| FetchError::cache(&temp, e))?;
        // From here on, dropping the writer removes the temp file.
        let mut writer = EntryWriter {
            file: Some(file),
            temp,
            path: path.to_path_buf(),
            hasher: Xxh3::new(),
            written: 0,
            published: false,
        };
        if let Some(file) = writer.file.as_mut() {
            file.write_all(&[0u8; HEADER_LEN as usize])
                .map_err(|e| FetchError::cache(&writer.temp, e))?;
        }
        Ok(writer)
    }

    /// Publishes a fully written entry: header, fsync, rename. Returns the open file.
    pub(crate) fn publish(
        &self,
        mut writer: EntryWriter,
        key: Key,
        source: [u8; 32],
        state: &EntryState,
    ) -> Result<Arc<File>, FetchError> {
        let Some(file) = writer.file.take() else {
            return Err(FetchError::cache(
                &writer.temp,
                io::Error::other("entry writer already used"),
            ));
        };
        let temp = writer.temp.clone();
        let fail = |e: io::Error| FetchError::cache(&temp, e);
        let header = encode_header(writer.written, writer.hasher.digest(), &source);
        file.write_all_at(&header, 0).map_err(fail)?;
        file.sync_all().map_err(fail)?;
        let ino = file.metadata().map_err(fail)?.ino();
        fs::rename(&writer.temp, &writer.path).map_err(fail)?;
        writer.published = true;
        state.verified_ino.store(ino, Ordering::Relaxed);
        state.touched.store(now_secs(), Ordering::Relaxed);
        let size = HEADER_LEN + writer.written;
        self.inner.added.fetch_add(size, Ordering::SeqCst);
        self.inner.bytes.fetch_add(size, Ordering::SeqCst);
        let file = Arc::new(file);
        self.remember(key, &writer.path, file.clone());
        self.maybe_evict();
        Ok(file)
    }

    /// Evicts least recently used entries when the count is past `max_bytes`. One thread at a
    /// time evicts; the others go on (the evicting thread looks again before it stops).
    pub(crate) fn maybe_evict(&self) {
        let inner = &self.inner;
        let mut passes = 0;
        while inner.bytes.load(Ordering::SeqCst) > inner.max_bytes && passes < 8 {
            if inner.evicting.swap(true, Ordering::SeqCst) {
                return;
            }
            self.evict_pass();
            passes += 1;
            inner.evicting.store(false, Ordering::SeqCst);
        }
    }

    fn evict_pass(&self) {
        let inner = &self.inner;
        let added_before = inner.added.load(Ordering::SeqCst);
        let mut entries = scan(&inner.spans_dir);
        let mut total: u64 = entries.iter().map(|e| e.size).sum();
        let target = inner.max_bytes / 10 * 9;
        let mut deleted = Vec::new();
        if total > inner.max_bytes {
            entries.sort_by_key(|e| e.mtime);
            for e in entries {
                if total <= target {
                    break;
                }
                match fs::remove_file(&e.path) {
                    Ok(()) => {
                        total = total.saturating_sub(e.size);
                        deleted.push(e.path);
                    }
                    Err(err) if err.kind() == io::ErrorKind::NotFound => {
                        total = total.saturating_sub(e.size);
                    }
                    Err(err) => {
                        tracing::warn!(path = %e.path.display(), error = %err,
                            "cannot evict cache entry");
                    }
                }
            }
            tracing::debug!(
                evicted = deleted.len(),
                bytes = total,
                max_bytes = inner.max_bytes,
                "cache eviction"
            );
        }
        // Entries written while scanning may or may not have been seen: count them again
        // (too high a count only makes the next eviction come sooner).
        let added_since = inner.added.load(Ordering::SeqCst) - added_before;
        inner.bytes.store(total + added_since, Ordering::SeqCst);
        if !deleted.is_empty() {
            // Open handles would keep the space in use: close them.
            let deleted: std::collections::HashSet<PathBuf> = deleted.into_iter().collect();
            lock(&inner.open)
                .map
                .retain(|_, e| !deleted.contains(&e.path));
        }
    }

    fn initial_scan(&self) {
        // Entries this process writes meanwhile are counted by `publish` and may be counted
        // here too: too high a count only makes the first eviction come sooner.
        let total: u64 = scan(&self.inner.spans_dir).iter().map(|e| e.size).sum();
        self.inner.bytes.fetch_add(total, Ordering::SeqCst);
        tracing::debug!(dir = %self.inner.spans_dir.display(), bytes = total, "cache scanned");
        self.maybe_evict();
        let (done, cv) = &self.inner.scanned;
        *lock(done) = true;
        cv.notify_all();
    }

    /// Waits until the startup scan (and the eviction it may start) is over.
    #[cfg(test)]
    pub(crate) fn wait_scanned(&self) {
        let (done, cv) = &self.inner.scanned;
        let mut g = lock(done);
        while !*g {
            g = cv.wait(g).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Bytes the cache believes it holds (for tests and stats).
    #[cfg(test)]
    pub(crate) fn counted_bytes(&self) -> u64 {
        self.inner.bytes.load(Ordering::Relaxed)
    }
}

/// Bumps the mtime of an entry on a hit, at most once a minute (it is the LRU clock).
fn touch(file: &File, state: &EntryState) {
    let now = now_secs();
    let last = state.touched.load(Ordering::Relaxed);
    if now.saturating_sub(last) < TOUCH_INTERVAL_SECS {
        return;
    }
    if state
        .touched
        .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
        .is_ok()
    {
        if let Err(e) = file.set_modified(SystemTime::now()) {
            tracing::debug!(error = %e, "cannot bump the mtime of a cache entry");
        }
    }
}

/// An entry being written; deleted on drop unless published.
pub(crate) struct EntryWriter {
    file: Option<File>,
    temp: PathBuf,
    path: PathBuf,
    hasher: Xxh3,
    written: u64,
    published: bool,
}

impl EntryWriter {
    /// Appends content bytes.
    pub(crate) fn write_all(&mut self, data: &[u8]) -> Result<(), FetchError> {
        let Some(file) = self.file.as_mut() else {
            return Err(FetchError::cache(
                &self.temp,
                io::Error::other("entry writer already used"),
            ));
        };
        file.write_all(data)
            .map_err(|e| FetchError::cache(&self.temp, e))?;
        self.hasher.update(data);
        self.written += data.len() as u64;
        Ok(())
    }

    /// Content bytes written so far.
    pub(crate) fn written(&self) -> u64 {
        self.written
    }
}

impl Drop for EntryWriter {
    fn drop(&mut self) {
        if !self.published {
            self.file = None;
            if let Err(e) = fs::remove_file(&self.temp) {
                tracing::debug!(path = %self.temp.display(), error = %e,
                    "cannot remove cache temp file");
            }
        }
    }
}

fn encode_header(len: u64, xxh3: u64, source: &[u8; 32]) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[0..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[16..24].copy_from_slice(&len.to_le_bytes());
    h[24..32].copy_from_slice(&xxh3.to_le_bytes());
    h[32..64].copy_from_slice(source);
    h
}

/// Checks an entry's header and content. `Ok(Err(problem))` is a corrupt entry; `Ok(Ok(source))`
/// a sound one (whose source the caller still compares).
fn verify(file: &File, len: u64) -> io::Result<Result<[u8; 32], String>> {
    let mut header = [0u8; HEADER_LEN as usize];
    if let Err(e) = file.read_exact_at(&mut header, 0) {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            return Ok(Err("shorter than its header".into()));
        }
        return Err(e);
    }
    let u32_at = |o: usize| {
        let mut b = [0u8; 4];
        b.copy_from_slice(&header[o..o + 4]);
        u32::from_le_bytes(b)
    };
    let u64_at = |o: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&header[o..o + 8]);
        u64::from_le_bytes(b)
    };
    if header[0..8] != MAGIC {
        return Ok(Err("bad magic".into()));
    }
    if u32_at(8) != VERSION || u32_at(12) != 0 {
        return Ok(Err(format!(
            "version {} (reserved {})",
            u32_at(8),
            u32_at(12)
        )));
    }
    if u64_at(16) != len {
        return Ok(Err(format!(
            "header says {} content bytes, expected {len}",
            u64_at(16)
        )));
    }
    let expected = u64_at(24);
    let mut hasher = Xxh3::new();
    let mut buf = vec![0u8; VERIFY_CHUNK.min(usize::try_from(len).unwrap_or(VERIFY_CHUNK))];
    let mut pos = 0u64;
    while pos < len {
        let want = usize::try_from(len - pos).map_or(buf.len(), |n| n.min(buf.len()));
        match file.read_at(&mut buf[..want], HEADER_LEN + pos) {
            Ok(0) => return Ok(Err(format!("ends after {pos} of {len} content bytes"))),
            Ok(n) => {
                hasher.update(&buf[..n]);
                pos += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let found = hasher.digest();
    if found != expected {
        return Ok(Err(format!(
            "content xxh3 {found:016x}, header says {expected:016x}"
        )));
    }
    let mut source = [0u8; 32];
    source.copy_from_slice(&header[32..64]);
    Ok(Ok(source))
}

struct ScannedEntry {
    path: PathBuf,
    size: u64,
    mtime: SystemTime,
}

/// Every entry under `spans_dir`; stale temp files are deleted on the way.
fn scan(spans_dir: &Path) -> Vec<ScannedEntry> {
    let mut out = Vec::new();
    let now = SystemTime::now();
    for prefix in read_dir_paths(spans_dir) {
        for layer in read_dir_paths(&prefix) {
            for path in read_dir_paths(&layer) {
                let Ok(meta) = fs::symlink_metadata(&path) else {
                    continue;
                };
                if !meta.is_file() {
                    continue;
                }
                let mtime = meta.modified().unwrap_or(UNIX_EPOCH);
                let is_temp = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(TEMP_PREFIX));
                if is_temp {
                    if now.duration_since(mtime).is_ok_and(|age| age > STALE_TEMP) {
                        let _ = fs::remove_file(&path);
                    }
                    continue;
                }
                out.push(ScannedEntry {
                    path,
                    size: meta.len(),
                    mtime,
                });
            }
        }
    }
    out
}

fn read_dir_paths(dir: &Path) -> Vec<PathBuf> {
    match fs::read_dir(dir) {
        Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(e) => {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::debug!(dir = %dir.display(), error = %e, "cannot list cache directory");
            }
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(dir: &Path, max_bytes: u64) -> SpanCache {
        SpanCache::open(&CacheOptions {
            dir: dir.to_path_buf(),
            max_bytes,
        })
        .unwrap()
    }

    const DIGEST: &str = "sha256:abababababababababababababababababababababababababababababababab";

    fn put(c: &SpanCache, key: Key, offset: u64, data: &[u8], state: &EntryState) -> PathBuf {
        let dir = c.layer_dir(DIGEST).unwrap();
        let path = SpanCache::entry_path(&dir, offset, data.len() as u64);
        let mut w = c.writer(&dir, &path).unwrap();
        w.write_all(data).unwrap();
        c.publish(w, key, [7; 32], state).unwrap();
        path
    }

    #[test]
    fn layer_dirs_only_from_well_formed_digests() {
        let tmp = tempfile::tempdir().unwrap();
        let c = cache(tmp.path(), 1 << 30);
        let dir = c.layer_dir(DIGEST).unwrap();
        assert!(dir.ends_with(format!("v1/spans/ab/{}", &DIGEST[7..])));
        for bad in [
            "sha256:../../etc",
            "sha256:ABABABABABABABABABABABABABABABABABABABABABABABABABABABABABABABAB",
            "md5:abab",
            "sha256",
            "",
        ] {
            assert_eq!(c.layer_dir(bad), None, "{bad}");
        }
        let p = SpanCache::entry_path(&dir, 0x10_0000, 0x1000);
        assert!(p.ends_with("0000000000100000-1000"));
    }

    #[test]
    fn published_entries_verify_and_corruption_is_caught() {
        let tmp = tempfile::tempdir().unwrap();
        let c = cache(tmp.path(), 1 << 30);
        let state = EntryState::default();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let path = put(&c, (0, 0), 0, &data, &state);
        let len = data.len() as u64;

        // A fresh process (new cache handle, new state) verifies and serves it.
        let c2 = cache(tmp.path(), 1 << 30);
        let fresh = EntryState::default();
        let Lookup::Hit(file) = c2.lookup((0, 0), &path, len, &fresh, &|| Some([7; 32])) else {
            panic!("expected a hit");
        };
        let mut buf = [0u8; 10];
        file.read_exact_at(&mut buf, HEADER_LEN + 500).unwrap();
        assert_eq!(buf[..], data[500..510]);

        // Another source: not used, not deleted.
        let c3 = cache(tmp.path(), 1 << 30);
        let other = EntryState::default();
        assert!(matches!(
            c3.lookup((0, 0), &path, len, &other, &|| Some([8; 32])),
            Lookup::Miss
        ));
        assert!(path.exists());

        // Flip a content byte: the next process deletes it.
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&[data[1000] ^ 1], HEADER_LEN + 1000)
            .unwrap();
        let c4 = cache(tmp.path(), 1 << 30);
        let st = EntryState::default();
        assert!(matches!(
            c4.lookup((0, 0), &path, len, &st, &|| Some([7; 32])),
            Lookup::Corrupt(_)
        ));
        assert!(!path.exists());
        assert!(matches!(
            c4.lookup((0, 0), &path, len, &st, &|| Some([7; 32])),
            Lookup::Miss
        ));
    }

    #[test]
    fn unpublished_writers_leave_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let c = cache(tmp.path(), 1 << 30);
        let dir = c.layer_dir(DIGEST).unwrap();
        let path = SpanCache::entry_path(&dir, 0, 3);
        let mut w = c.writer(&dir, &path).unwrap();
        w.write_all(b"abc").unwrap();
        drop(w);
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 0);
    }

    #[test]
    fn eviction_keeps_the_directory_under_its_bound() {
        let tmp = tempfile::tempdir().unwrap();
        let entry = HEADER_LEN + 10_000;
        let c = cache(tmp.path(), 5 * entry);
        c.wait_scanned();
        let states: Vec<EntryState> = (0..20).map(|_| EntryState::default()).collect();
        for (i, state) in states.iter().enumerate() {
            put(&c, (0, i), i as u64 * 10_000, &[i as u8; 10_000], state);
            let on_disk: u64 = scan(&c.inner.spans_dir).iter().map(|e| e.size).sum();
            assert!(on_disk <= 5 * entry, "{on_disk} bytes after {i} inserts");
        }
        assert!(c.counted_bytes() <= 5 * entry + entry);
    }
}
