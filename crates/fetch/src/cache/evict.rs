//! Keeping the cache within its bound, on a thread of its own.
//!
//! Each process counts the bytes in the directory (one scan at startup, plus what it writes).
//! When a write takes the total past `max_bytes`, the evictor scans the directory and deletes
//! the least recently used entries (oldest mtime) down to 90 % of `max_bytes`; the write itself
//! never waits for it. When a pass can delete nothing (the entries belong to someone else, say)
//! the next pass waits until the count has grown by another 10 % of `max_bytes`. The scan and
//! the deletions open every directory relative to its parent with `O_NOFOLLOW`: a symlink in
//! the cache never leads them elsewhere. The startup scan also deletes temp files older than an
//! hour (left by a process that died) and the directories of earlier cache layouts.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustix::fs::AtFlags;

use super::{Inner, SpanCache, OLD_LAYOUT_DIRS, TEMP_PREFIX};
use crate::sync::{lock, wait_while};
use crate::FetchError;
use clip_sys::private::{self as dir, Stat};

/// Temp files older than this belong to a process that died.
const STALE_TEMP: Duration = Duration::from_secs(3600);
/// Most eviction passes one request for eviction makes.
const MAX_EVICT_PASSES: u32 = 8;

/// How an entry is deleted: `unlinkat(layer_dir, name)` (tests make it fail).
pub(super) type Remove = fn(BorrowedFd<'_>, &str) -> io::Result<()>;

pub(super) fn unlink(dir: BorrowedFd<'_>, name: &str) -> io::Result<()> {
    rustix::fs::unlinkat(dir, name, AtFlags::empty()).map_err(io::Error::from)
}

/// The evictor's mailbox and bookkeeping.
pub(super) struct Evict {
    state: Mutex<State>,
    changed: Condvar,
    /// Byte count at which a pass last could delete nothing (`0`: none did); the next pass
    /// waits for the count to grow by a tenth of `max_bytes` past it.
    stuck_at: AtomicU64,
    /// Eviction passes (directory scans) made.
    pub(super) passes: AtomicU64,
    remove: Remove,
}

#[derive(Default)]
struct State {
    /// Someone asked for an eviction pass.
    requested: bool,
    /// The evictor is scanning or deleting (or doing the startup scan).
    busy: bool,
    stop: bool,
}

impl Evict {
    pub(super) fn new(remove: Remove) -> Evict {
        Evict {
            state: Mutex::new(State {
                busy: true, // the startup scan
                ..State::default()
            }),
            changed: Condvar::new(),
            stuck_at: AtomicU64::new(0),
            passes: AtomicU64::new(0),
            remove,
        }
    }

    pub(super) fn request(&self) {
        lock(&self.state).requested = true;
        self.changed.notify_all();
    }

    pub(super) fn stop(&self) {
        lock(&self.state).stop = true;
        self.changed.notify_all();
    }

    #[cfg(test)]
    pub(super) fn is_stopped_for_test(&self) -> bool {
        lock(&self.state).stop
    }

    /// Waits until the evictor has nothing to do, at most until `deadline`.
    pub(super) fn wait_idle(&self, deadline: Option<Instant>) -> bool {
        wait_while(&self.changed, lock(&self.state), deadline, |state| {
            (state.busy || state.requested) && !state.stop
        })
        .1
    }
}

/// Starts the evictor thread: the startup scan, then an eviction whenever asked, until the
/// cache is gone. It holds the cache only while it works, so that dropping the last handle
/// stops it.
pub(super) fn start(cache: &SpanCache) -> Result<(), FetchError> {
    let weak = Arc::downgrade(&cache.inner);
    let evict = cache.inner.evict.clone();
    std::thread::Builder::new()
        .name("clip-cache-evict".into())
        .spawn(move || run(&weak, &evict))
        .map(|_| ())
        .map_err(|e| FetchError::Thread(Arc::new(e)))
}

fn run(cache: &Weak<Inner>, evict: &Evict) {
    if let Some(inner) = cache.upgrade() {
        initial_scan(&inner);
    }
    loop {
        {
            let mut state = lock(&evict.state);
            state.busy = false;
            evict.changed.notify_all();
            let (mut state, _) = wait_while(&evict.changed, state, None, |state| {
                !state.requested && !state.stop
            });
            if state.stop {
                return;
            }
            state.requested = false;
            state.busy = true;
        }
        let Some(inner) = cache.upgrade() else {
            return;
        };
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| evict_down(&inner)));
        if outcome.is_err() {
            tracing::error!("cache eviction panicked; it will be tried again on the next write");
        }
    }
}

fn initial_scan(inner: &Inner) {
    for old in OLD_LAYOUT_DIRS {
        if dir::stat_at(inner.root.as_fd(), old).is_ok() {
            let gone = dir::remove_tree(inner.root.as_fd(), old, 8);
            tracing::info!(
                layout = old,
                gone,
                "deleted the cache of an earlier clip version"
            );
        }
    }
    // Entries this process writes meanwhile are counted by `publish` and may be counted
    // here too: too high a count only makes the first eviction come sooner.
    let total: u64 = scan(&inner.spans).iter().map(|e| e.stat.size).sum();
    inner.bytes.fetch_add(total, Ordering::SeqCst);
    tracing::debug!(dir = %inner.spans_path.display(), bytes = total, "cache scanned");
    evict_down(inner);
}

/// Evicts least recently used entries while the count is past `max_bytes`. Gives up when a
/// pass deletes nothing, until the count grows by another tenth of `max_bytes`: a directory
/// full of entries we may not delete is not rescanned for every write.
fn evict_down(inner: &Inner) {
    let evict = &inner.evict;
    for _ in 0..MAX_EVICT_PASSES {
        let bytes = inner.bytes.load(Ordering::SeqCst);
        if bytes <= inner.max_bytes {
            evict.stuck_at.store(0, Ordering::SeqCst);
            return;
        }
        let stuck_at = evict.stuck_at.load(Ordering::SeqCst);
        if stuck_at != 0 && bytes < stuck_at.saturating_add((inner.max_bytes / 10).max(1)) {
            return;
        }
        match evict_pass(inner) {
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
                    evict.stuck_at.store(bytes.max(1), Ordering::SeqCst);
                }
                return;
            }
            Some(_) => evict.stuck_at.store(0, Ordering::SeqCst),
        }
    }
}

/// One scan of the directory, deleting the oldest entries when it is past its bound. `None`
/// when the scan found it within bound (the count is corrected); otherwise how many entries
/// were deleted (or found gone).
fn evict_pass(inner: &Inner) -> Option<usize> {
    inner.evict.passes.fetch_add(1, Ordering::Relaxed);
    let added_before = inner.added.load(Ordering::SeqCst);
    let mut entries = scan(&inner.spans);
    let mut total: u64 = entries.iter().map(|e| e.stat.size).sum();
    let target = inner.max_bytes / 10 * 9;
    let mut deleted = std::collections::HashSet::new();
    let mut freed = None;
    if total > inner.max_bytes {
        let mut count = 0;
        entries.sort_by_key(|e| e.stat.mtime);
        for e in entries {
            if total <= target {
                break;
            }
            match remove_entry(inner, &e) {
                Ok(()) => {
                    total = total.saturating_sub(e.stat.size);
                    count += 1;
                    deleted.insert((e.stat.dev, e.stat.ino));
                }
                Err(err) if err.kind() == io::ErrorKind::NotFound => {
                    total = total.saturating_sub(e.stat.size);
                    count += 1;
                }
                Err(err) => {
                    tracing::debug!(entry = %e.display(inner), error = %err,
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
    // Entries written while scanning may or may not have been seen: count them again (too
    // high a count only makes the next eviction come sooner).
    let added_since = inner.added.load(Ordering::SeqCst) - added_before;
    inner.bytes.store(total + added_since, Ordering::SeqCst);
    if !deleted.is_empty() {
        // Open handles would keep the space in use: close them.
        lock(&inner.open)
            .map
            .retain(|_, e| !deleted.contains(&e.id));
    }
    freed
}

/// Deletes a scanned entry, if it is still the file the scan saw.
fn remove_entry(inner: &Inner, e: &Scanned) -> io::Result<()> {
    let prefix = open_existing(inner.spans.as_fd(), &e.prefix)?;
    let layer = open_existing(prefix.as_fd(), &e.layer)?;
    let now = dir::stat_at(layer.as_fd(), &e.name)?;
    if (now.dev, now.ino) != (e.stat.dev, e.stat.ino) {
        return Err(io::Error::from(io::ErrorKind::NotFound));
    }
    (inner.evict.remove)(layer.as_fd(), &e.name)
}

/// A directory below `parent`, never through a symlink (no ownership checks: for listing and
/// deleting only).
fn open_existing(parent: BorrowedFd<'_>, name: &str) -> io::Result<OwnedFd> {
    use rustix::fs::{Mode, OFlags};
    rustix::fs::openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(io::Error::from)
}

/// One entry found by a scan.
pub(super) struct Scanned {
    prefix: String,
    layer: String,
    name: String,
    pub(super) stat: Stat,
}

impl Scanned {
    fn display(&self, inner: &Inner) -> String {
        inner
            .spans_path
            .join(&self.prefix)
            .join(&self.layer)
            .join(&self.name)
            .display()
            .to_string()
    }
}

/// Every entry below the `spans` directory; stale temp files are deleted on the way.
pub(super) fn scan(spans: &OwnedFd) -> Vec<Scanned> {
    let mut out = Vec::new();
    let now = SystemTime::now();
    for prefix in dir::list(spans.as_fd()) {
        let Ok(prefix_dir) = open_existing(spans.as_fd(), &prefix) else {
            continue;
        };
        for layer in dir::list(prefix_dir.as_fd()) {
            let Ok(layer_dir) = open_existing(prefix_dir.as_fd(), &layer) else {
                continue;
            };
            for name in dir::list(layer_dir.as_fd()) {
                let Ok(stat) = dir::stat_at(layer_dir.as_fd(), &name) else {
                    continue;
                };
                if !stat.is_file() {
                    continue;
                }
                if name.starts_with(TEMP_PREFIX) {
                    let mtime = u64::try_from(stat.mtime.0)
                        .map(|s| UNIX_EPOCH + Duration::from_secs(s))
                        .unwrap_or(UNIX_EPOCH);
                    if now.duration_since(mtime).is_ok_and(|age| age > STALE_TEMP) {
                        let _ = unlink(layer_dir.as_fd(), &name);
                    }
                    continue;
                }
                out.push(Scanned {
                    prefix: prefix.clone(),
                    layer: layer.clone(),
                    name,
                    stat,
                });
            }
        }
    }
    out
}

#[cfg(test)]
pub(super) fn scanned_bytes(spans: &OwnedFd) -> (usize, u64) {
    let entries = scan(spans);
    (entries.len(), entries.iter().map(|e| e.stat.size).sum())
}
