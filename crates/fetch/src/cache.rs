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
//! - **Verified on (re)open.** Whenever a process opens an entry it checks that it is a regular
//!   file (opened with `O_NOFOLLOW | O_NONBLOCK`: a symlink or a FIFO planted at an entry path is
//!   never followed nor waited on), its size, its header and its source. The xxh3 of the content
//!   is checked the first time, and again whenever the file is not the one this process last
//!   verified for that span (device, inode, length, ctime and mtime all compared: a recycled
//!   inode number is not enough). One thread verifies an entry at a time; concurrent readers of
//!   it wait for that verification (within their read deadline) instead of hashing it again. A
//!   corrupt entry is deleted and the span fetched again; something that is not a regular file
//!   is deleted when it belongs to this user and is not a directory, and otherwise left alone
//!   (the span is then fetched and served from memory if it cannot be cached). Bytes come only
//!   from spans whose compressed bytes matched their digest before they were decoded.
//! - **Bounded.** Each process counts the bytes in the directory (one scan at startup, plus
//!   what it writes). When a write takes the total past `max_bytes`, a background thread scans
//!   the directory and deletes the least recently used entries (oldest mtime) down to 90 % of
//!   `max_bytes`; the write itself never waits for it. When a pass can delete nothing (the
//!   entries belong to someone else, say) the next pass waits until the count has grown by
//!   another 10 % of `max_bytes`. A hit bumps an entry's mtime, at most once a minute per entry.
//! - **Cheap hits.** Up to 256 verified entries stay open; a read is one `pread` of just the
//!   bytes asked for.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{FileExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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
/// Most eviction passes one request for eviction makes.
const MAX_EVICT_PASSES: u32 = 8;

/// Identifies a span inside one fetcher: (layer index, span index).
pub(crate) type Key = (u32, usize);

/// Which file an entry was when this process verified its content. A file whose identity is
/// the same has not been replaced or written since (writing changes the ctime, and nobody
/// can set the ctime back), so its content hash need not be checked again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Identity {
    dev: u64,
    ino: u64,
    len: u64,
    ctime: (i64, i64),
    mtime: (i64, i64),
}

impl Identity {
    fn of(meta: &fs::Metadata) -> Identity {
        Identity {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            ctime: (meta.ctime(), meta.ctime_nsec()),
            mtime: (meta.mtime(), meta.mtime_nsec()),
        }
    }
}

/// What this process remembers about one span's entry.
#[derive(Debug, Default)]
pub(crate) struct EntryState {
    /// The file whose content was last verified (or written) by this process.
    verified: Mutex<Option<Identity>>,
    /// When the mtime was last bumped (seconds since the epoch).
    touched: AtomicU64,
}

impl EntryState {
    /// Forget the verification (the file turned out bad after all).
    pub(crate) fn forget(&self) {
        *lock(&self.verified) = None;
    }

    fn is_verified(&self, identity: Identity) -> bool {
        *lock(&self.verified) == Some(identity)
    }

    fn set_verified(&self, identity: Identity) {
        *lock(&self.verified) = Some(identity);
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

/// How much a lookup may do to an entry it has not verified yet.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Check {
    /// Hash its content if need be, and wait (until then) for another thread that is doing so.
    Full {
        /// How long to wait for another thread's verification.
        until: Instant,
    },
    /// Never hash, never wait: only an entry that is open already, or that this process
    /// verified before and that is still the same file (its header and source are checked).
    Cheap,
}

/// What a lookup found.
pub(crate) enum Lookup {
    /// A verified entry, open.
    Hit(Arc<File>),
    /// No entry (or one this index must not use, or one [`Check::Cheap`] cannot vouch for).
    Miss,
    /// An entry failed verification and was deleted (or is not a regular file).
    Corrupt(String),
    /// Another thread is verifying the entry, and the caller could not wait (any longer).
    Busy,
}

/// The cache of one fetcher (clones share everything).
#[derive(Clone)]
pub(crate) struct SpanCache {
    inner: Arc<Inner>,
}

struct Inner {
    spans_dir: PathBuf,
    max_bytes: u64,
    /// Our effective uid: we delete only what is ours.
    uid: Option<u32>,
    /// Bytes believed to be in the directory.
    bytes: AtomicU64,
    /// Bytes published by this process, ever (to correct a count taken while writing).
    added: AtomicU64,
    temp_seq: AtomicU64,
    open: Mutex<OpenFiles>,
    /// Entries being verified, by key: one verification at a time per entry.
    verifying: Mutex<HashMap<Key, Arc<Verification>>>,
    /// Talks to the background evictor.
    evictor: Arc<Evictor>,
    /// Byte count at which a pass last could delete nothing (`0`: none did); the next pass
    /// waits for the count to grow by a tenth of `max_bytes` past it.
    stuck_at: AtomicU64,
    /// Eviction passes (directory scans) made.
    passes: AtomicU64,
    /// How entries are deleted by eviction (`fs::remove_file`; tests make it fail).
    remove: fn(&Path) -> io::Result<()>,
    /// Set when the startup scan is over.
    scanned: (Mutex<bool>, Condvar),
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The evictor only holds a weak reference: tell it to stop.
        lock(&self.evictor.state).stop = true;
        self.evictor.changed.notify_all();
    }
}

/// The evictor thread's mailbox.
#[derive(Default)]
struct Evictor {
    state: Mutex<EvictorState>,
    changed: Condvar,
}

#[derive(Default)]
struct EvictorState {
    /// Someone asked for an eviction pass.
    requested: bool,
    /// The evictor is scanning or deleting (or doing the startup scan).
    busy: bool,
    stop: bool,
}

/// One verification of an entry under way; others wait for it.
#[derive(Default)]
struct Verification {
    done: Mutex<bool>,
    finished: Condvar,
}

impl Verification {
    /// Waits until the verification is over (true) or `until` passed (false).
    fn wait(&self, until: Instant) -> bool {
        let mut done = lock(&self.done);
        while !*done {
            let now = Instant::now();
            if now >= until {
                return false;
            }
            done = self
                .finished
                .wait_timeout(done, until - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }
}

/// The duty to verify one entry; dropping it (panics included) wakes the waiters.
struct Verifying<'a> {
    cache: &'a Inner,
    key: Key,
    verification: Arc<Verification>,
}

impl Drop for Verifying<'_> {
    fn drop(&mut self) {
        {
            let mut map = lock(&self.cache.verifying);
            if map
                .get(&self.key)
                .is_some_and(|v| Arc::ptr_eq(v, &self.verification))
            {
                map.remove(&self.key);
            }
        }
        *lock(&self.verification.done) = true;
        self.verification.finished.notify_all();
    }
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

/// Opens an entry for reading without following a symlink at its path and without blocking
/// on a FIFO (the caller checks that it got a regular file).
fn open_entry_file(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
}

fn file_kind(meta: &fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt as _;
    let t = meta.file_type();
    if t.is_symlink() {
        "a symlink"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_block_device() || t.is_char_device() {
        "a device"
    } else {
        "not a regular file"
    }
}

impl SpanCache {
    /// Creates the directory if needed and starts the background thread that scans what is
    /// there and evicts when asked to.
    pub(crate) fn open(options: &CacheOptions) -> Result<SpanCache, FetchError> {
        SpanCache::open_with(options, |p| fs::remove_file(p))
    }

    fn open_with(
        options: &CacheOptions,
        remove: fn(&Path) -> io::Result<()>,
    ) -> Result<SpanCache, FetchError> {
        let spans_dir = options.dir.join(LAYOUT_DIR).join("spans");
        fs::create_dir_all(&spans_dir).map_err(|e| FetchError::cache(&spans_dir, e))?;
        let evictor = Arc::new(Evictor {
            state: Mutex::new(EvictorState {
                busy: true, // the startup scan
                ..EvictorState::default()
            }),
            changed: Condvar::new(),
        });
        let cache = SpanCache {
            inner: Arc::new(Inner {
                spans_dir,
                max_bytes: options.max_bytes,
                uid: crate::effective_uid(),
                bytes: AtomicU64::new(0),
                added: AtomicU64::new(0),
                temp_seq: AtomicU64::new(0),
                open: Mutex::new(OpenFiles {
                    map: HashMap::new(),
                    tick: 0,
                }),
                verifying: Mutex::new(HashMap::new()),
                evictor: evictor.clone(),
                stuck_at: AtomicU64::new(0),
                passes: AtomicU64::new(0),
                remove,
                scanned: (Mutex::new(false), Condvar::new()),
            }),
        };
        let weak = Arc::downgrade(&cache.inner);
        std::thread::Builder::new()
            .name("clip-cache-evict".into())
            .spawn(move || evictor_thread(&weak, &evictor))
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
        lock(&self.inner.open).map.contains_key(&key)
            || fs::symlink_metadata(path).is_ok_and(|m| m.is_file())
    }

    /// Looks up the entry at `path` of `len` content bytes. `source` computes the source hash
    /// this reader expects (`None` = cannot tell, treat as a miss). One thread at a time
    /// verifies an entry; what the others do meanwhile is up to `check`.
    pub(crate) fn lookup(
        &self,
        key: Key,
        path: &Path,
        len: u64,
        state: &EntryState,
        source: &dyn Fn() -> Option<[u8; 32]>,
        check: Check,
    ) -> Lookup {
        loop {
            if let Some(file) = self.open_entry(key, state) {
                return Lookup::Hit(file);
            }
            let claimed = {
                let mut verifying = lock(&self.inner.verifying);
                match verifying.get(&key) {
                    Some(other) => Err(other.clone()),
                    None => {
                        let verification = Arc::new(Verification::default());
                        verifying.insert(key, verification.clone());
                        Ok(Verifying {
                            cache: &self.inner,
                            key,
                            verification,
                        })
                    }
                }
            };
            let _verifying = match claimed {
                Ok(guard) => guard,
                Err(other) => match check {
                    Check::Cheap => return Lookup::Busy,
                    Check::Full { until } => {
                        if !other.wait(until) {
                            return Lookup::Busy;
                        }
                        // Verified (now open, or cheap to reopen), deleted, or refused: look
                        // again.
                        continue;
                    }
                },
            };
            // Someone may have verified it between the first look and the claim.
            if let Some(file) = self.open_entry(key, state) {
                return Lookup::Hit(file);
            }
            return self.open_and_check(key, path, len, state, source, check);
        }
    }

    /// Opens and checks an entry (the caller is the one verifying it).
    fn open_and_check(
        &self,
        key: Key,
        path: &Path,
        len: u64,
        state: &EntryState,
        source: &dyn Fn() -> Option<[u8; 32]>,
        check: Check,
    ) -> Lookup {
        let file = match open_entry_file(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Lookup::Miss,
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return self.not_a_file(path, None);
            }
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
        if !meta.file_type().is_file() {
            return self.not_a_file(path, Some(&meta));
        }
        let corrupt = |problem: String| {
            // Whatever was verified before is gone: a new file that gets the same inode
            // number (and, timestamps being coarse, maybe the same times) is not trusted.
            state.forget();
            self.remove_if_same(path, &meta);
            Lookup::Corrupt(problem)
        };
        if meta.len() != HEADER_LEN.saturating_add(len) {
            return corrupt(format!(
                "file is {} bytes, expected {} + {len}",
                meta.len(),
                HEADER_LEN
            ));
        }
        // The header (and with it the source) is checked on every open, even of a file this
        // process verified before: it is 64 bytes.
        let header = match read_header(&file, len) {
            Ok(Ok(header)) => header,
            Ok(Err(problem)) => return corrupt(problem),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read cache entry");
                return Lookup::Miss;
            }
        };
        let Some(expected) = source() else {
            return Lookup::Miss;
        };
        if header.source != expected {
            // Maybe a valid entry, but decoded from something other than what this index
            // describes: do not use it; a fetch will replace it.
            tracing::warn!(path = %path.display(),
                "cache entry was made from other span bytes than this index names; ignoring it");
            return Lookup::Miss;
        }
        // The content hash only when this is not the very file verified before.
        let identity = Identity::of(&meta);
        if !state.is_verified(identity) {
            if matches!(check, Check::Cheap) {
                return Lookup::Miss;
            }
            match hash_content(&file, len, header.xxh3) {
                Ok(Ok(())) => state.set_verified(identity),
                Ok(Err(problem)) => return corrupt(problem),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot read cache entry");
                    return Lookup::Miss;
                }
            }
        }
        let file = Arc::new(file);
        self.remember(key, path, file.clone());
        touch(&file, state);
        Lookup::Hit(file)
    }

    /// Something other than a regular file sits at an entry path (`meta`: what was opened,
    /// if anything was). It is deleted when it is ours and not a directory; otherwise left
    /// alone: the span is fetched again, and served from memory if it cannot be cached.
    fn not_a_file(&self, path: &Path, opened: Option<&fs::Metadata>) -> Lookup {
        let Ok(meta) = fs::symlink_metadata(path) else {
            return Lookup::Miss; // gone meanwhile
        };
        let kind = file_kind(&meta);
        if meta.is_file() {
            return Lookup::Miss; // replaced by a regular file meanwhile: look again later
        }
        let same = opened.is_none_or(|o| o.dev() == meta.dev() && o.ino() == meta.ino());
        if meta.is_dir() || Some(meta.uid()) != self.inner.uid || !same {
            tracing::warn!(path = %path.display(), kind, owner = meta.uid(),
                "cache entry path holds something that is not a regular file and not ours to delete; ignoring it");
            return Lookup::Miss;
        }
        if let Err(e) = fs::remove_file(path) {
            tracing::warn!(path = %path.display(), error = %e, "cannot delete cache entry");
        }
        Lookup::Corrupt(format!("{kind}, not a regular file"))
    }

    /// Drops an entry from the open files and forgets its verification (a read of it failed).
    pub(crate) fn invalidate(&self, key: Key, state: &EntryState) {
        lock(&self.inner.open).map.remove(&key);
        state.forget();
    }

    /// Deletes `path` if it is still the file `meta` describes.
    fn remove_if_same(&self, path: &Path, meta: &fs::Metadata) {
        if fs::symlink_metadata(path).is_ok_and(|m| m.dev() == meta.dev() && m.ino() == meta.ino())
        {
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

    /// Publishes a fully written entry: header, fsync, rename. Returns the open file. Never
    /// evicts on the caller's thread: past the bound it only wakes the evictor.
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
        fs::rename(&writer.temp, &writer.path).map_err(fail)?;
        writer.published = true;
        // After the rename (which may change the ctime): this is the file we know is sound.
        match file.metadata() {
            Ok(meta) => state.set_verified(Identity::of(&meta)),
            Err(_) => state.forget(),
        }
        state.touched.store(now_secs(), Ordering::Relaxed);
        let size = HEADER_LEN + writer.written;
        self.inner.added.fetch_add(size, Ordering::SeqCst);
        self.inner.bytes.fetch_add(size, Ordering::SeqCst);
        let file = Arc::new(file);
        self.remember(key, &writer.path, file.clone());
        self.request_eviction();
        Ok(file)
    }

    /// Wakes the evictor when the count is past the bound.
    fn request_eviction(&self) {
        if self.inner.bytes.load(Ordering::SeqCst) <= self.inner.max_bytes {
            return;
        }
        let evictor = &self.inner.evictor;
        lock(&evictor.state).requested = true;
        evictor.changed.notify_all();
    }

    /// Waits until the evictor has nothing to do (startup scan included), at most until
    /// `deadline`; returns whether that is so.
    pub(crate) fn wait_evictor_idle(&self, deadline: Option<Instant>) -> bool {
        let evictor = &self.inner.evictor;
        let mut state = lock(&evictor.state);
        while (state.busy || state.requested) && !state.stop {
            let now = Instant::now();
            let left = match deadline {
                Some(d) if d <= now => return false,
                Some(d) => d - now,
                None => Duration::from_secs(3600),
            };
            state = evictor
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }

    /// Evicts least recently used entries while the count is past `max_bytes` (on the evictor
    /// thread). Gives up when a pass deletes nothing, until the count grows by another tenth
    /// of `max_bytes`: a directory full of entries we may not delete is not rescanned for every
    /// write.
    fn evict(&self) {
        let inner = &self.inner;
        for _ in 0..MAX_EVICT_PASSES {
            let bytes = inner.bytes.load(Ordering::SeqCst);
            if bytes <= inner.max_bytes {
                inner.stuck_at.store(0, Ordering::SeqCst);
                return;
            }
            let stuck_at = inner.stuck_at.load(Ordering::SeqCst);
            if stuck_at != 0 && bytes < stuck_at.saturating_add((inner.max_bytes / 10).max(1)) {
                return;
            }
            match self.evict_pass() {
                // The count was too high: recounted, look again.
                None => {}
                Some(0) => {
                    let bytes = inner.bytes.load(Ordering::SeqCst);
                    if bytes > inner.max_bytes {
                        tracing::warn!(
                            bytes,
                            max_bytes = inner.max_bytes,
                            "the cache is past its bound and no entry could be evicted"
                        );
                        inner.stuck_at.store(bytes.max(1), Ordering::SeqCst);
                    }
                    return;
                }
                Some(_) => inner.stuck_at.store(0, Ordering::SeqCst),
            }
        }
    }

    /// One scan of the directory, deleting the oldest entries when it is past its bound.
    /// `None` when the scan found it within bound (the count is corrected); otherwise how many
    /// entries were deleted (or found gone).
    fn evict_pass(&self) -> Option<usize> {
        let inner = &self.inner;
        inner.passes.fetch_add(1, Ordering::Relaxed);
        let added_before = inner.added.load(Ordering::SeqCst);
        let mut entries = scan(&inner.spans_dir);
        let mut total: u64 = entries.iter().map(|e| e.size).sum();
        let target = inner.max_bytes / 10 * 9;
        let mut deleted = Vec::new();
        let mut freed = None;
        if total > inner.max_bytes {
            let mut count = 0;
            entries.sort_by_key(|e| e.mtime);
            for e in entries {
                if total <= target {
                    break;
                }
                match (inner.remove)(&e.path) {
                    Ok(()) => {
                        total = total.saturating_sub(e.size);
                        count += 1;
                        deleted.push(e.path);
                    }
                    Err(err) if err.kind() == io::ErrorKind::NotFound => {
                        total = total.saturating_sub(e.size);
                        count += 1;
                    }
                    Err(err) => {
                        tracing::debug!(path = %e.path.display(), error = %err,
                            "cannot evict cache entry");
                    }
                }
            }
            tracing::debug!(
                evicted = count,
                bytes = total,
                max_bytes = inner.max_bytes,
                "cache eviction"
            );
            freed = Some(count);
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
        freed
    }

    fn initial_scan(&self) {
        // Entries this process writes meanwhile are counted by `publish` and may be counted
        // here too: too high a count only makes the first eviction come sooner.
        let total: u64 = scan(&self.inner.spans_dir).iter().map(|e| e.size).sum();
        self.inner.bytes.fetch_add(total, Ordering::SeqCst);
        tracing::debug!(dir = %self.inner.spans_dir.display(), bytes = total, "cache scanned");
        self.evict();
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

    /// Closes an open entry without forgetting its verification (as the open-file bound does).
    #[cfg(test)]
    pub(crate) fn invalidate_open(&self, key: Key) {
        lock(&self.inner.open).map.remove(&key);
    }

    /// Pretends another thread is verifying `key` until the guard is dropped.
    #[cfg(test)]
    fn start_verifying_for_test(&self, key: Key) -> Verifying<'_> {
        let verification = Arc::new(Verification::default());
        lock(&self.inner.verifying).insert(key, verification.clone());
        Verifying {
            cache: &self.inner,
            key,
            verification,
        }
    }

    /// Bytes the cache believes it holds (for tests and stats).
    #[cfg(test)]
    pub(crate) fn counted_bytes(&self) -> u64 {
        self.inner.bytes.load(Ordering::Relaxed)
    }
}

/// The evictor: the startup scan, then an eviction whenever asked, until the cache is gone.
/// It holds the cache only while it works, so that dropping the last handle stops it.
fn evictor_thread(cache: &Weak<Inner>, evictor: &Evictor) {
    if let Some(inner) = cache.upgrade() {
        SpanCache { inner }.initial_scan();
    }
    loop {
        {
            let mut state = lock(&evictor.state);
            state.busy = false;
            evictor.changed.notify_all();
            while !state.requested && !state.stop {
                state = evictor
                    .changed
                    .wait(state)
                    .unwrap_or_else(|p| p.into_inner());
            }
            if state.stop {
                return;
            }
            state.requested = false;
            state.busy = true;
        }
        let Some(inner) = cache.upgrade() else {
            return;
        };
        let cache = SpanCache { inner };
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cache.evict()));
        if outcome.is_err() {
            tracing::error!("cache eviction panicked; it will be tried again on the next write");
        }
    }
}

/// Bumps the mtime of an entry on a hit, at most once a minute (it is the LRU clock). The
/// bump changes the file's ctime and mtime: when this process had verified that very file, it
/// remembers the file as it is after the bump.
fn touch(file: &File, state: &EntryState) {
    let now = now_secs();
    let last = state.touched.load(Ordering::Relaxed);
    if now.saturating_sub(last) < TOUCH_INTERVAL_SECS {
        return;
    }
    if state
        .touched
        .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
        .is_err()
    {
        return;
    }
    let before = file.metadata().ok().map(|m| Identity::of(&m));
    if let Err(e) = file.set_modified(SystemTime::now()) {
        tracing::debug!(error = %e, "cannot bump the mtime of a cache entry");
        return;
    }
    let after = file.metadata().ok().map(|m| Identity::of(&m));
    let mut verified = lock(&state.verified);
    if before.is_some() && *verified == before {
        *verified = after;
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

/// What an entry's header says (once its fixed fields checked out).
struct Header {
    xxh3: u64,
    source: [u8; 32],
}

/// Reads and checks an entry's header. `Ok(Err(problem))` is a corrupt entry.
fn read_header(file: &File, len: u64) -> io::Result<Result<Header, String>> {
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
    let mut source = [0u8; 32];
    source.copy_from_slice(&header[32..64]);
    Ok(Ok(Header {
        xxh3: u64_at(24),
        source,
    }))
}

/// Checks the xxh3 of an entry's `len` content bytes against `expected`.
fn hash_content(file: &File, len: u64, expected: u64) -> io::Result<Result<(), String>> {
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
    Ok(Ok(()))
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

    fn full() -> Check {
        Check::Full {
            until: Instant::now() + Duration::from_secs(60),
        }
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
        let Lookup::Hit(file) = c2.lookup((0, 0), &path, len, &fresh, &|| Some([7; 32]), full())
        else {
            panic!("expected a hit");
        };
        let mut buf = [0u8; 10];
        file.read_exact_at(&mut buf, HEADER_LEN + 500).unwrap();
        assert_eq!(buf[..], data[500..510]);

        // Another source: not used, not deleted.
        let c3 = cache(tmp.path(), 1 << 30);
        let other = EntryState::default();
        assert!(matches!(
            c3.lookup((0, 0), &path, len, &other, &|| Some([8; 32]), full()),
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
            c4.lookup((0, 0), &path, len, &st, &|| Some([7; 32]), full()),
            Lookup::Corrupt(_)
        ));
        assert!(!path.exists());
        assert!(matches!(
            c4.lookup((0, 0), &path, len, &st, &|| Some([7; 32]), full()),
            Lookup::Miss
        ));
    }

    #[test]
    fn a_reopened_entry_is_rehashed_unless_it_is_the_very_file_verified() {
        let tmp = tempfile::tempdir().unwrap();
        let c = cache(tmp.path(), 1 << 30);
        let state = EntryState::default();
        let data = vec![5u8; 50_000];
        let path = put(&c, (0, 0), 0, &data, &state);
        let len = data.len() as u64;
        let source = || Some([7; 32]);

        // Closed (as when more than 256 entries are open), the same file reopens cheaply: no
        // hash needed, so even the cheap check serves it.
        c.invalidate_open((0, 0));
        assert!(matches!(
            c.lookup((0, 0), &path, len, &state, &source, Check::Cheap),
            Lookup::Hit(_)
        ));

        // The header is read on every reopen: a different source is refused even though the
        // file is the one verified.
        c.invalidate_open((0, 0));
        assert!(matches!(
            c.lookup((0, 0), &path, len, &state, &|| Some([8; 32]), Check::Cheap),
            Lookup::Miss
        ));

        // The file changed in place: the cheap check cannot vouch for it and the full one
        // hashes it and finds it corrupt, its inode number notwithstanding. (Timestamps can be
        // as coarse as a clock tick, so the test moves the mtime out of doubt.)
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&[6], HEADER_LEN + 10).unwrap();
        f.set_modified(UNIX_EPOCH + Duration::from_secs(1_000_000))
            .unwrap();
        drop(f);
        c.invalidate_open((0, 0));
        assert!(matches!(
            c.lookup((0, 0), &path, len, &state, &source, Check::Cheap),
            Lookup::Miss
        ));
        assert!(path.exists(), "the cheap check deletes nothing");
        assert!(matches!(
            c.lookup((0, 0), &path, len, &state, &source, full()),
            Lookup::Corrupt(_)
        ));

        // Another file at the path, sound: hashed once, then cheap.
        let path = put(&c, (0, 0), 0, &data, &EntryState::default());
        c.invalidate_open((0, 0));
        assert!(matches!(
            c.lookup((0, 0), &path, len, &state, &source, Check::Cheap),
            Lookup::Miss
        ));
        assert!(matches!(
            c.lookup((0, 0), &path, len, &state, &source, full()),
            Lookup::Hit(_)
        ));
        c.invalidate_open((0, 0));
        assert!(matches!(
            c.lookup((0, 0), &path, len, &state, &source, Check::Cheap),
            Lookup::Hit(_)
        ));
    }

    #[test]
    fn concurrent_lookups_share_one_verification() {
        let tmp = tempfile::tempdir().unwrap();
        let c = cache(tmp.path(), 1 << 30);
        let data = vec![9u8; 300_000];
        let path = put(&c, (0, 0), 0, &data, &EntryState::default());
        let len = data.len() as u64;
        let fresh = cache(tmp.path(), 1 << 30);
        let state = EntryState::default();
        // Someone is verifying the entry: a cheap lookup does not wait, a full one with no
        // time left gives up, and both leave the entry alone.
        let guard = fresh.start_verifying_for_test((0, 0));
        assert!(matches!(
            fresh.lookup((0, 0), &path, len, &state, &|| Some([7; 32]), Check::Cheap),
            Lookup::Busy
        ));
        assert!(matches!(
            fresh.lookup(
                (0, 0),
                &path,
                len,
                &state,
                &|| Some([7; 32]),
                Check::Full {
                    until: Instant::now()
                }
            ),
            Lookup::Busy
        ));
        // Readers wait for the verification under way and then find its result.
        let sources = AtomicU64::new(0);
        std::thread::scope(|s| {
            let readers: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        let source = || {
                            sources.fetch_add(1, Ordering::SeqCst);
                            Some([7; 32])
                        };
                        matches!(
                            fresh.lookup((0, 0), &path, len, &state, &source, full()),
                            Lookup::Hit(_)
                        )
                    })
                })
                .collect();
            drop(guard);
            for r in readers {
                assert!(r.join().unwrap());
            }
        });
        // One of them opened and verified the entry; the others found it open.
        assert_eq!(sources.load(Ordering::SeqCst), 1);
        assert!(fresh.inner.verifying.lock().unwrap().is_empty());
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
            assert!(c.wait_evictor_idle(None));
            let on_disk: u64 = scan(&c.inner.spans_dir).iter().map(|e| e.size).sum();
            assert!(on_disk <= 5 * entry, "{on_disk} bytes after {i} inserts");
        }
        assert!(c.counted_bytes() <= 5 * entry);
    }

    #[test]
    fn a_pass_that_deletes_nothing_is_not_repeated_for_every_write() {
        let tmp = tempfile::tempdir().unwrap();
        let entry = HEADER_LEN + 1_000;
        // A tenth of the bound is two entries.
        let max = 20 * entry;
        let c = SpanCache::open_with(
            &CacheOptions {
                dir: tmp.path().to_path_buf(),
                max_bytes: max,
            },
            |_| Err(io::Error::from_raw_os_error(libc::EACCES)),
        )
        .unwrap();
        assert!(c.wait_evictor_idle(None));
        let states: Vec<EntryState> = (0..30).map(|_| EntryState::default()).collect();
        let put_one = |i: usize| {
            put(&c, (0, i), i as u64 * 1_000, &[1; 1_000], &states[i]);
            assert!(c.wait_evictor_idle(None));
            c.inner.passes.load(Ordering::Relaxed)
        };
        for i in 0..20 {
            assert_eq!(put_one(i), 0, "within bound");
        }
        // Past the bound: one pass, which cannot delete anything.
        assert_eq!(put_one(20), 1);
        // Further writes do not rescan until a tenth of the bound more has been written.
        assert_eq!(put_one(21), 1);
        assert_eq!(put_one(22), 2);
        assert_eq!(put_one(23), 2);
        assert_eq!(put_one(24), 3);
        // Nothing was deleted, and the count is right.
        assert_eq!(scan(&c.inner.spans_dir).len(), 25);
        assert_eq!(c.counted_bytes(), 25 * entry);
    }

    #[test]
    fn dropping_the_cache_stops_its_evictor() {
        let tmp = tempfile::tempdir().unwrap();
        let c = cache(tmp.path(), 1 << 30);
        assert!(c.wait_evictor_idle(None));
        let evictor = c.inner.evictor.clone();
        drop(c);
        assert!(lock(&evictor.state).stop);
    }
}
