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
//!   header last, then renamed into place: a process never sees a partial entry under a final
//!   name. It is not `fsync`ed: after a system crash an entry may have lost its bytes, and the
//!   next process to open it hashes it (below), deletes it and fetches the span again. Temp
//!   files older than an hour are removed by the next scan.
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

//!
//! # Modules
//!
//! - `entry`: the entry codec (the 64-byte header) and the content check of a file.
//! - `verify`: looking entries up and trusting them (what this process knows of each entry,
//!   one verification per entry at a time, the recheck after every read).
//! - `write`: writing and publishing entries.
//! - `evict`: the LRU bound, on a thread of its own.
//!
//! This module holds what they share: the directory, the open entries, and `LayerCache`,
//! the cache of one layer, which owns everything the cache knows of that layer (its digest,
//! its directory, the state of each of its spans' entries). The fetcher names a span
//! (`SpanRef`) and gets bytes, a file or an error back; it never handles paths,
//! identities or counts of the cache.

mod entry;
mod evict;
mod verify;
mod write;

use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use clip_archive::SpanInfo;

use crate::sync::{lock, SingleFlight};
use crate::{CacheOptions, FetchError, SpanRef};
use clip_sys::private as dir;
use clip_sys::private::open_private_dir;
pub use clip_sys::private::PrivateDirError;
pub(crate) use entry::HEADER_LEN;
use verify::EntryState;
pub(crate) use verify::{Check, Lookup};

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
    verifying: Arc<SingleFlight<Key, ()>>,
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
                verifying: Arc::new(SingleFlight::default()),
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
            digest: Arc::from(digest),
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
    fn start_verifying_for_test(&self, key: Key) -> crate::sync::Claim<Key, ()> {
        self.inner
            .verifying
            .try_claim(key, |_| ())
            .expect("nobody verifies it")
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
    /// The layer blob's digest, for errors.
    digest: Arc<str>,
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
    fn open_entry(&self, span: usize) -> Option<Arc<File>> {
        let file = self.cache.open_entry((self.index, span))?;
        verify::touch(&file, self.entry(span));
        Some(file)
    }

    /// Whether an entry file exists (not verified: for readahead, which only skips it).
    pub(crate) fn exists(&self, span: &SpanRef) -> bool {
        lock(&self.cache.inner.open)
            .map
            .contains_key(&(self.index, span.index))
            || self
                .dir(false)
                .and_then(|d| dir::stat_at(d.as_fd(), &entry_name(&span.info)))
                .is_ok_and(|st| st.is_file())
    }
}

#[cfg(test)]
mod tests;
