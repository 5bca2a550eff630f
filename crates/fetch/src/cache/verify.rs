//! Looking entries up: opening them without following symlinks, checking them (header,
//! length, the digest the index names, the content hash unless this very file was verified
//! before), one verification per entry at a time, and rechecking after every read that an
//! open entry is still the file that was verified.
//!
//! # What it owns, what it must not touch
//!
//! What this process knows of each entry ([`EntryState`]: the identity of the file it
//! verified, when it last bumped its mtime) and the rules for trusting an entry. It never
//! writes an entry (`write.rs` does) nor evicts one (`evict.rs`); it deletes only an entry it
//! found corrupt, and only if it is still the file it examined.

use std::fs::{self, File};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileExt as _, MetadataExt as _};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use rustix::fs::{AtFlags, Mode, OFlags};

use super::{
    dir, entry, entry_name, now_secs, LayerCache, HEADER_LEN, JUNK_PREFIX, TOUCH_INTERVAL_SECS,
};
use crate::sync::{lock, Joined};
use crate::{FetchError, SpanRef};

/// Which file an entry was when this process verified its content. A file whose identity is
/// the same has not been replaced or written since (writing changes the ctime, and nobody
/// can set the ctime back), so its content need not be hashed again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Identity {
    dev: u64,
    ino: u64,
    len: u64,
    ctime: (i64, i64),
    mtime: (i64, i64),
}

impl Identity {
    pub(super) fn of(meta: &fs::Metadata) -> Identity {
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
pub(super) struct EntryState {
    /// The file whose content was last verified (or written) by this process.
    verified: Mutex<Option<Identity>>,
    /// When the mtime was last bumped (seconds since the epoch).
    pub(super) touched: AtomicU64,
}

impl EntryState {
    pub(super) fn forget(&self) {
        *lock(&self.verified) = None;
    }

    pub(super) fn is_verified(&self, identity: Identity) -> bool {
        *lock(&self.verified) == Some(identity)
    }

    pub(super) fn set_verified(&self, identity: Identity) {
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

impl LayerCache {
    /// Looks up the span's entry. One thread at a time verifies an entry; what the others do
    /// meanwhile is up to `check`.
    pub(crate) fn lookup(&self, span: &SpanRef, check: Check) -> Lookup {
        let key = (self.index, span.index);
        loop {
            if let Some(file) = self.open_entry(span.index) {
                return Lookup::Hit(file);
            }
            let _verifying = match self.cache.inner.verifying.join(key, |_| ()) {
                Joined::Owner(claim) => claim,
                Joined::Waiter(other) => match check {
                    Check::Cheap => return Lookup::Busy,
                    Check::Full { until } => {
                        if other.wait(until).is_none() {
                            return Lookup::Busy;
                        }
                        // Verified (now open, or cheap to reopen), deleted, or refused: look
                        // again.
                        continue;
                    }
                },
            };
            // Someone may have verified it between the first look and the claim.
            if let Some(file) = self.open_entry(span.index) {
                return Lookup::Hit(file);
            }
            // The claim is dropped on return (or unwinding): that wakes the waiters.
            return self.open_and_check(span, check);
        }
    }

    /// Opens and checks an entry (the caller is the one verifying it).
    fn open_and_check(&self, span: &SpanRef, check: Check) -> Lookup {
        let info = &span.info;
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
        let state = self.entry(span.index);
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
        self.cache
            .remember((self.index, span.index), file.clone(), &meta);
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
    fn invalidate(&self, span: usize) {
        lock(&self.cache.inner.open).map.remove(&(self.index, span));
        self.entry(span).forget();
    }

    /// Reads `dst.len()` content bytes at `at` of an open entry of the span, and checks that
    /// the file is still the one verified. An entry that cannot be read, or was written to
    /// since, is invalidated (the next lookup hashes it again) and the read is an error.
    pub(crate) fn read(
        &self,
        span: &SpanRef,
        file: &File,
        dst: &mut [u8],
        at: u64,
    ) -> Result<(), FetchError> {
        let read = file
            .read_exact_at(dst, HEADER_LEN.saturating_add(at))
            .and_then(|()| file.metadata())
            .and_then(|meta| {
                if self.entry(span.index).is_verified(Identity::of(&meta)) {
                    Ok(())
                } else {
                    Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "the cache entry changed since it was verified",
                    ))
                }
            });
        read.map_err(|e| {
            self.invalidate(span.index);
            FetchError::cache(self.path(&span.info), e)
        })
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
pub(super) fn touch(file: &File, state: &EntryState) {
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
