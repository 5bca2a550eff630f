//! The span cache: decompressed spans on local disk, shared by every mount and process of one
//! user that uses the same directory, and private to that user.
//!
//! # Layout (version 2)
//!
//! ```text
//! <dir>/                                                   0700, ours (checked at open)
//! <dir>/v2/spans/<h0h1>/<layer>/<offset:016x>-<len:x>      one verified, decompressed span
//! <dir>/v2/spans/<h0h1>/<layer>/.tmp-<pid>-<seq>-<name>    being written (never served)
//! ```
//!
//! - `<layer>` is the layer blob digest's hex (`sha256:ab…` → `ab…`; other algorithms keep
//!   their name: `sha512-ab…`), `<h0h1>` its first two hex digits. The key is the *layer*, not
//!   the image: a layer shared by two images is cached once.
//! - `<offset>` is where the span starts in the layer's uncompressed tar stream (16 lowercase hex
//!   digits) and `<len>` its uncompressed length (lowercase hex, no padding).
//! - A file is a 64-byte header (module `entry`) followed by the `len` content bytes, so that the
//!   content byte at uncompressed offset `o` sits at file offset `64 + o - offset`. The header
//!   records the sha256 of the content, which is the span's content digest in the index.
//!
//! # Rules
//!
//! - **Private.** The cache directory must belong to the user and must not be writable by
//!   others (refused, with what to fix); directories are created `0700` and entries `0600`
//!   whatever the umask; a directory readable by others (made by an earlier clip) is tightened.
//!   Below the cache directory nothing is ever reached through a symlink: every directory and
//!   entry is opened relative to its parent with `O_NOFOLLOW`, by the scan and the eviction too.
//! - **Only verified bytes go in.** An entry is published only when its content hashed to the
//!   span's content digest (and, before decoding, the compressed bytes to the span digest).
//! - **Atomic publication.** An entry is written to a temp file in its final directory, its
//!   header last, `fsync`ed, then renamed into place: a crash leaves at most a temp file,
//!   never a partial entry under a final name. Temp files older than an hour are removed by the
//!   next scan.
//! - **Verified when opened, rechecked when read.** A process that opens an entry checks that it
//!   is a regular file, its size and header, that the header's digest is the one its index
//!   records for the span (an entry made for other content is not used, and is replaced by the
//!   next fetch), and the sha256 of the content, unless this process verified that very file
//!   before (device, inode, length, ctime and mtime all equal). After every read of an open
//!   entry the file is checked to be still that file: an entry written to in place (which
//!   changes its ctime) is dropped, hashed again, found corrupt, deleted and fetched again. One
//!   thread verifies an entry at a time; concurrent readers wait for it (within their read
//!   deadline). Something other than a regular file at an entry path is removed when it is ours
//!   (a directory too: emptied away), else left alone, and the span is served from memory.
//! - **Bounded.** See module `evict`: past `max_bytes` a background thread deletes the least
//!   recently used entries (oldest mtime; a hit bumps it at most once a minute) down to 90 %.
//! - **Cheap hits.** Up to 256 verified entries stay open; a read is one `pread` of just the
//!   bytes asked for and one `fstat`.
//! - **Compatibility.** Changing any of this is a cache format break: bump `entry::VERSION`
//!   and `LAYOUT_DIR`. The directory of the previous layout (`v1`) is deleted by the startup
//!   scan; spans are cheap to fetch again.

mod entry;
mod evict;

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Write as _};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use clip_archive::SpanInfo;
use rustix::fs::{AtFlags, Mode, OFlags};
use sha2::{Digest as _, Sha256};

use crate::{CacheOptions, FetchError};
use clip_sys::private as dir;
use clip_sys::private::open_private_dir;
pub use clip_sys::private::PrivateDirError;
pub(crate) use entry::HEADER_LEN;

/// The versioned top directory under the cache dir. Changing the layout is a cache format
/// break: bump it and [`entry::VERSION`].
const LAYOUT_DIR: &str = "v2";
/// Layouts of earlier versions, deleted by the startup scan.
const OLD_LAYOUT_DIRS: &[&str] = &["v1"];
/// A hit bumps the mtime at most this often per entry.
const TOUCH_INTERVAL_SECS: u64 = 60;
/// Verified entries kept open.
const OPEN_FILES: usize = 256;
const TEMP_PREFIX: &str = ".tmp-";
/// Something that is not a span entry, moved out of an entry's way.
const JUNK_PREFIX: &str = ".junk-";

/// Identifies a span inside one fetcher: (layer index, span index).
pub(crate) type Key = (u32, usize);

/// Which file an entry was when this process verified its content. A file whose identity is
/// the same has not been replaced or written since (writing changes the ctime, and nobody
/// can set the ctime back), so its content need not be hashed again.
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
struct EntryState {
    /// The file whose content was last verified (or written) by this process.
    verified: Mutex<Option<Identity>>,
    /// When the mtime was last bumped (seconds since the epoch).
    touched: AtomicU64,
}

impl EntryState {
    fn forget(&self) {
        *lock(&self.verified) = None;
    }

    fn is_verified(&self, identity: Identity) -> bool {
        *lock(&self.verified) == Some(identity)
    }

    fn set_verified(&self, identity: Identity) {
        *lock(&self.verified) = Some(identity);
    }
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
    /// verified before and that is still the same file (its header is checked).
    Cheap,
}

/// What a lookup found.
pub(crate) enum Lookup {
    /// A verified entry, open.
    Hit(Arc<File>),
    /// No entry (or one made for other content, or one [`Check::Cheap`] cannot vouch for).
    Miss,
    /// An entry failed verification and was deleted (or is not a regular file).
    Corrupt(String),
    /// Another thread is verifying the entry, and the caller could not wait (any longer).
    Busy,
}

/// The cache directory, shared by the layers of one fetcher (clones share everything).
#[derive(Clone)]
pub(crate) struct SpanCache {
    inner: Arc<Inner>,
}

struct Inner {
    /// `<dir>/v2/spans`, open.
    spans: OwnedFd,
    spans_path: PathBuf,
    /// `<dir>`, open (for the removal of old layouts).
    root: OwnedFd,
    max_bytes: u64,
    /// Our effective uid: we delete only what is ours.
    uid: u32,
    /// Bytes believed to be in the directory.
    bytes: AtomicU64,
    /// Bytes published by this process, ever (to correct a count taken while writing).
    added: AtomicU64,
    temp_seq: AtomicU64,
    open: Mutex<OpenFiles>,
    /// Entries being verified, by key: one verification at a time per entry.
    verifying: Mutex<HashMap<Key, Arc<Verification>>>,
    evict: Arc<evict::Evict>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.evict.stop();
    }
}

struct OpenFiles {
    map: HashMap<Key, OpenEntry>,
    tick: u64,
}

struct OpenEntry {
    file: Arc<File>,
    /// (device, inode), to close it when eviction deletes it.
    id: (u64, u64),
    tick: u64,
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

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The name of a layer's directory and its two-digit prefix, or `None` when the digest is not
/// a well-formed `sha256:`/`sha512:` digest (it becomes a path: it must not contain anything
/// else).
fn layer_names(digest: &str) -> Option<(String, String)> {
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
    Some((hex.get(..2)?.to_string(), name))
}

/// The entry name of the span `info`.
fn entry_name(info: &SpanInfo) -> String {
    format!(
        "{:016x}-{:x}",
        info.uncompressed_offset,
        info.uncompressed_end - info.uncompressed_offset
    )
}

impl SpanCache {
    /// Opens (creating) the cache directory, checks that it is private, and starts the
    /// background thread that scans what is there and evicts when asked to.
    pub(crate) fn open(options: &CacheOptions) -> Result<SpanCache, FetchError> {
        SpanCache::open_with(options, evict::unlink)
    }

    fn open_with(options: &CacheOptions, remove: evict::Remove) -> Result<SpanCache, FetchError> {
        let root = open_private_dir(&options.dir).map_err(FetchError::CacheNotPrivate)?;
        let versioned = options.dir.join(LAYOUT_DIR);
        let open_sub = |parent: &OwnedFd, name: &str, path: &Path| {
            dir::open_dir_at(parent.as_fd(), name, true, path)
                .map_err(|e| FetchError::cache(path, e))
        };
        let layout = open_sub(&root, LAYOUT_DIR, &versioned)?;
        let spans_path = versioned.join("spans");
        let spans = open_sub(&layout, "spans", &spans_path)?;
        let cache = SpanCache {
            inner: Arc::new(Inner {
                spans,
                spans_path,
                root,
                max_bytes: options.max_bytes,
                uid: rustix::process::geteuid().as_raw(),
                bytes: AtomicU64::new(0),
                added: AtomicU64::new(0),
                temp_seq: AtomicU64::new(0),
                open: Mutex::new(OpenFiles {
                    map: HashMap::new(),
                    tick: 0,
                }),
                verifying: Mutex::new(HashMap::new()),
                evict: Arc::new(evict::Evict::new(remove)),
            }),
        };
        evict::start(&cache)?;
        Ok(cache)
    }

    /// The cache of one layer with `spans` spans, or `None` when the digest is malformed.
    pub(crate) fn layer(&self, index: u32, digest: &str, spans: usize) -> Option<LayerCache> {
        let (prefix, name) = layer_names(digest)?;
        Some(LayerCache {
            cache: self.clone(),
            index,
            path: self.inner.spans_path.join(&prefix).join(&name),
            prefix,
            name,
            entries: (0..spans).map(|_| EntryState::default()).collect(),
        })
    }

    /// Waits until the evictor has nothing to do (startup scan included), at most until
    /// `deadline`; returns whether that is so.
    pub(crate) fn wait_evictor_idle(&self, deadline: Option<Instant>) -> bool {
        self.inner.evict.wait_idle(deadline)
    }

    fn open_entry(&self, key: Key) -> Option<Arc<File>> {
        let mut open = lock(&self.inner.open);
        open.tick += 1;
        let tick = open.tick;
        let entry = open.map.get_mut(&key)?;
        entry.tick = tick;
        Some(entry.file.clone())
    }

    fn remember(&self, key: Key, file: Arc<File>, meta: &fs::Metadata) {
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
                id: (meta.dev(), meta.ino()),
                tick,
            },
        );
    }

    /// Closes an open entry without forgetting its verification (as the open-file bound does).
    #[cfg(test)]
    fn close_for_test(&self, key: Key) {
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

    #[cfg(test)]
    fn request_eviction_for_test(&self) {
        self.inner
            .bytes
            .fetch_add(self.inner.max_bytes + 1, Ordering::SeqCst);
        self.inner.evict.request();
    }

    /// Wakes the evictor when the count is past the bound.
    fn request_eviction(&self) {
        if self.inner.bytes.load(Ordering::SeqCst) > self.inner.max_bytes {
            self.inner.evict.request();
        }
    }
}

/// The cache of one layer of one fetcher: where its entries live, and what this process knows
/// of each span's entry.
pub(crate) struct LayerCache {
    cache: SpanCache,
    index: u32,
    prefix: String,
    name: String,
    /// The layer's directory, for messages.
    path: PathBuf,
    /// Per span.
    entries: Vec<EntryState>,
}

impl LayerCache {
    fn entry(&self, span: usize) -> &EntryState {
        // `entries` has one element per span of the layer, and callers only pass span indexes
        // the span table gave them; fall back to a shared blank state rather than panic.
        static FALLBACK: std::sync::OnceLock<EntryState> = std::sync::OnceLock::new();
        self.entries
            .get(span)
            .unwrap_or_else(|| FALLBACK.get_or_init(EntryState::default))
    }

    /// The path of a span's entry, for messages.
    pub(crate) fn path(&self, info: &SpanInfo) -> PathBuf {
        self.path.join(entry_name(info))
    }

    /// The layer's directory, opened below the cache's `spans` directory without following
    /// symlinks; created first with `create`.
    fn dir(&self, create: bool) -> io::Result<OwnedFd> {
        let spans = &self.cache.inner.spans;
        let prefix_path = self.cache.inner.spans_path.join(&self.prefix);
        let prefix = dir::open_dir_at(spans.as_fd(), &self.prefix, create, &prefix_path)?;
        dir::open_dir_at(prefix.as_fd(), &self.name, create, &self.path)
    }

    /// An open verified entry for the span, if this process has one.
    pub(crate) fn open_entry(&self, span: usize) -> Option<Arc<File>> {
        let file = self.cache.open_entry((self.index, span))?;
        touch(&file, self.entry(span));
        Some(file)
    }

    /// Whether an entry file exists (not verified: for readahead, which only skips it).
    pub(crate) fn exists(&self, span: usize, info: &SpanInfo) -> bool {
        lock(&self.cache.inner.open)
            .map
            .contains_key(&(self.index, span))
            || self
                .dir(false)
                .and_then(|d| dir::stat_at(d.as_fd(), &entry_name(info)))
                .is_ok_and(|st| st.is_file())
    }

    /// Looks up the span's entry. One thread at a time verifies an entry; what the others do
    /// meanwhile is up to `check`.
    pub(crate) fn lookup(&self, span: usize, info: &SpanInfo, check: Check) -> Lookup {
        let key = (self.index, span);
        loop {
            if let Some(file) = self.open_entry(span) {
                return Lookup::Hit(file);
            }
            let claimed = {
                let mut verifying = lock(&self.cache.inner.verifying);
                match verifying.get(&key) {
                    Some(other) => Err(other.clone()),
                    None => {
                        let verification = Arc::new(Verification::default());
                        verifying.insert(key, verification.clone());
                        Ok(Verifying {
                            cache: &self.cache.inner,
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
            if let Some(file) = self.open_entry(span) {
                return Lookup::Hit(file);
            }
            return self.open_and_check(span, info, check);
        }
    }

    /// Opens and checks an entry (the caller is the one verifying it).
    fn open_and_check(&self, span: usize, info: &SpanInfo, check: Check) -> Lookup {
        let name = entry_name(info);
        let path = self.path.join(&name);
        let dir = match self.dir(false) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Lookup::Miss,
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot open cache directory");
                return Lookup::Miss;
            }
        };
        let opened = rustix::fs::openat(
            dir.as_fd(),
            name.as_str(),
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        );
        let file = match opened {
            Ok(fd) => File::from(fd),
            Err(rustix::io::Errno::NOENT) => return Lookup::Miss,
            Err(rustix::io::Errno::LOOP | rustix::io::Errno::NXIO) => {
                return self.not_a_file(&dir, &name, &path, None);
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
            return self.not_a_file(&dir, &name, &path, Some(&meta));
        }
        let state = self.entry(span);
        let len = info.uncompressed_end - info.uncompressed_offset;
        let corrupt = |problem: String| {
            // Whatever was verified before is gone: a new file that gets the same inode
            // number (and, timestamps being coarse, maybe the same times) is not trusted.
            state.forget();
            remove_if_same(&dir, &name, &path, &meta);
            Lookup::Corrupt(problem)
        };
        if meta.len() != HEADER_LEN.saturating_add(len) {
            return corrupt(format!(
                "file is {} bytes, expected {HEADER_LEN} + {len}",
                meta.len()
            ));
        }
        let digest = match entry::read_header(&file, len) {
            Ok(Ok(digest)) => digest,
            Ok(Err(problem)) => return corrupt(problem),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read cache entry");
                return Lookup::Miss;
            }
        };
        if digest != info.content_digest {
            // Maybe a sound entry, but of other content than this index describes for the
            // span: never used for it; a fetch will replace it.
            tracing::warn!(path = %path.display(),
                "cache entry holds other content than this index names for the span; ignoring it");
            return Lookup::Miss;
        }
        // The content hash only when this is not the very file verified before.
        let identity = Identity::of(&meta);
        if !state.is_verified(identity) {
            if matches!(check, Check::Cheap) {
                return Lookup::Miss;
            }
            match entry::check_content(&file, len, &info.content_digest) {
                Ok(Ok(())) => state.set_verified(identity),
                Ok(Err(problem)) => return corrupt(problem),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot read cache entry");
                    return Lookup::Miss;
                }
            }
        }
        let file = Arc::new(file);
        self.cache.remember((self.index, span), file.clone(), &meta);
        touch(&file, state);
        Lookup::Hit(file)
    }

    /// Something other than a regular file sits at an entry path (`opened`: what was opened,
    /// if anything was). When it is ours it is removed (a directory is moved aside and deleted,
    /// its content with it), so that the span can be cached again; otherwise it is left alone
    /// and the span is served from memory.
    fn not_a_file(
        &self,
        dir: &OwnedFd,
        name: &str,
        path: &Path,
        opened: Option<&fs::Metadata>,
    ) -> Lookup {
        let Ok(st) = dir::stat_at(dir.as_fd(), name) else {
            return Lookup::Miss; // gone meanwhile
        };
        if st.is_file() {
            return Lookup::Miss; // replaced by a regular file meanwhile: look again later
        }
        let same = opened.is_none_or(|o| o.dev() == st.dev && o.ino() == st.ino);
        if st.uid != self.cache.inner.uid || !same {
            tracing::warn!(path = %path.display(), owner = st.uid,
                "cache entry path holds something that is not a regular file and not ours to delete; ignoring it");
            return Lookup::Miss;
        }
        let kind = if st.is_dir() {
            "a directory"
        } else {
            "not a regular file"
        };
        let removed = if st.is_dir() {
            // Moved aside first, so that the entry path is free even if what is inside cannot
            // all be deleted.
            let seq = self.cache.inner.temp_seq.fetch_add(1, Ordering::Relaxed);
            let junk = format!("{JUNK_PREFIX}{}-{seq}", std::process::id());
            let moved = rustix::fs::renameat(dir.as_fd(), name, dir.as_fd(), junk.as_str());
            if moved.is_ok() {
                dir::remove_tree(dir.as_fd(), &junk, 8);
            }
            moved.is_ok()
        } else {
            rustix::fs::unlinkat(dir.as_fd(), name, AtFlags::empty()).is_ok()
        };
        if !removed {
            tracing::warn!(path = %path.display(), kind, "cannot remove it from the cache entry path");
        }
        Lookup::Corrupt(format!("{kind}, not a span entry"))
    }

    /// Drops an entry from the open files and forgets its verification (a read of it failed,
    /// or found it changed).
    pub(crate) fn invalidate(&self, span: usize) {
        lock(&self.cache.inner.open).map.remove(&(self.index, span));
        self.entry(span).forget();
    }

    /// Reads `dst.len()` content bytes at `at` of an open entry of the span, and checks that
    /// the file is still the one verified: an entry written to since is an error (the caller
    /// invalidates it, and the next lookup hashes it again).
    pub(crate) fn read(&self, span: usize, file: &File, dst: &mut [u8], at: u64) -> io::Result<()> {
        file.read_exact_at(dst, HEADER_LEN.saturating_add(at))?;
        let meta = file.metadata()?;
        if !self.entry(span).is_verified(Identity::of(&meta)) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the cache entry changed since it was verified",
            ));
        }
        Ok(())
    }

    /// Starts writing the entry of a span whose content must hash to `info.content_digest`.
    pub(crate) fn writer(&self, info: &SpanInfo) -> Result<EntryWriter, FetchError> {
        let dir = self
            .dir(true)
            .map_err(|e| FetchError::cache(&self.path, e))?;
        let name = entry_name(info);
        let seq = self.cache.inner.temp_seq.fetch_add(1, Ordering::Relaxed);
        let temp = format!("{TEMP_PREFIX}{}-{seq}-{name}", std::process::id());
        let temp_path = self.path.join(&temp);
        let fd = rustix::fs::openat(
            dir.as_fd(),
            temp.as_str(),
            OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(dir::FILE_MODE),
        )
        .map_err(|e| FetchError::cache(&temp_path, e.into()))?;
        let mut writer = EntryWriter {
            file: Some(File::from(fd)),
            dir,
            temp,
            name,
            path: self.path.join(entry_name(info)),
            hasher: Sha256::new(),
            written: 0,
            expected: info.content_digest,
            len: info.uncompressed_end - info.uncompressed_offset,
            published: false,
        };
        // Private whatever the umask (which can only have taken bits away).
        if let Some(file) = writer.file.as_mut() {
            file.set_permissions(fs::Permissions::from_mode(dir::FILE_MODE))
                .and_then(|()| file.write_all(&[0u8; HEADER_LEN as usize]))
                .map_err(|e| FetchError::cache(&temp_path, e))?;
        }
        Ok(writer)
    }

    /// Publishes a fully written entry once its content matched the span's content digest:
    /// header, fsync, rename. Returns the open file. A mismatch is
    /// [`FetchError::ContentMismatch`] and leaves nothing behind. Never evicts on the caller's
    /// thread: past the bound it only wakes the evictor.
    pub(crate) fn publish(
        &self,
        mut writer: EntryWriter,
        layer_digest: &str,
        span: usize,
    ) -> Result<Arc<File>, FetchError> {
        let found: [u8; 32] = std::mem::take(&mut writer.hasher).finalize().into();
        if writer.written != writer.len || found != writer.expected {
            return Err(FetchError::ContentMismatch {
                layer_digest: layer_digest.to_string(),
                span,
                expected: hex::encode(writer.expected),
                found: if writer.written == writer.len {
                    hex::encode(found)
                } else {
                    format!("{} of {} bytes", writer.written, writer.len)
                },
            });
        }
        let Some(file) = writer.file.take() else {
            return Err(FetchError::cache(
                &writer.path,
                io::Error::other("entry writer already used"),
            ));
        };
        let temp_path = self.path.join(&writer.temp);
        let fail = |e: io::Error| FetchError::cache(&temp_path, e);
        file.write_all_at(&entry::encode_header(writer.written, &found), 0)
            .map_err(fail)?;
        file.sync_all().map_err(fail)?;
        rustix::fs::renameat(
            writer.dir.as_fd(),
            writer.temp.as_str(),
            writer.dir.as_fd(),
            writer.name.as_str(),
        )
        .map_err(|e| fail(e.into()))?;
        writer.published = true;
        // After the rename (which may change the ctime): this is the file we know is sound.
        let state = self.entry(span);
        let meta = file.metadata().map_err(fail)?;
        state.set_verified(Identity::of(&meta));
        state.touched.store(now_secs(), Ordering::Relaxed);
        let size = HEADER_LEN + writer.written;
        let inner = &self.cache.inner;
        inner.added.fetch_add(size, Ordering::SeqCst);
        inner.bytes.fetch_add(size, Ordering::SeqCst);
        let file = Arc::new(file);
        self.cache.remember((self.index, span), file.clone(), &meta);
        self.cache.request_eviction();
        Ok(file)
    }
}

/// Deletes `name` in `dir` if it is still the file `meta` describes.
fn remove_if_same(dir: &OwnedFd, name: &str, path: &Path, meta: &fs::Metadata) {
    if dir::stat_at(dir.as_fd(), name).is_ok_and(|st| st.dev == meta.dev() && st.ino == meta.ino())
    {
        if let Err(e) = rustix::fs::unlinkat(dir.as_fd(), name, AtFlags::empty()) {
            tracing::warn!(path = %path.display(), error = %e, "cannot delete cache entry");
        }
    }
}

/// Bumps the mtime of an entry on a hit, at most once a minute (it is the LRU clock). The
/// bump changes the file's ctime and mtime: when this process had verified that very file, it
/// remembers the file as it is after the bump (under the lock readers check it with).
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
    let mut verified = lock(&state.verified);
    let before = file.metadata().ok().map(|m| Identity::of(&m));
    if let Err(e) = file.set_modified(SystemTime::now()) {
        tracing::debug!(error = %e, "cannot bump the mtime of a cache entry");
        return;
    }
    if before.is_some() && *verified == before {
        *verified = file.metadata().ok().map(|m| Identity::of(&m));
    }
}

/// An entry being written; deleted on drop unless published.
pub(crate) struct EntryWriter {
    file: Option<File>,
    /// The layer directory it is written in.
    dir: OwnedFd,
    temp: String,
    name: String,
    path: PathBuf,
    hasher: Sha256,
    written: u64,
    expected: [u8; 32],
    len: u64,
    published: bool,
}

impl EntryWriter {
    /// Appends content bytes.
    pub(crate) fn write_all(&mut self, data: &[u8]) -> Result<(), FetchError> {
        let Some(file) = self.file.as_mut() else {
            return Err(FetchError::cache(
                &self.path,
                io::Error::other("entry writer already used"),
            ));
        };
        file.write_all(data)
            .map_err(|e| FetchError::cache(&self.path, e))?;
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
            if let Err(e) =
                rustix::fs::unlinkat(self.dir.as_fd(), self.temp.as_str(), AtFlags::empty())
            {
                tracing::debug!(path = %self.path.display(), error = %e,
                    "cannot remove cache temp file");
            }
        }
    }
}

#[cfg(test)]
mod tests;
