//! Writing entries: a temp file in the layer's directory, content after a zeroed header, the
//! header written last, then a rename into place, and only for content that matched the span's
//! content digest. Not `fsync`ed: a cache needs no durability, and every entry is hashed
//! again by the next process that opens it, so one whose bytes a crash lost is found, deleted
//! and fetched again (an `fsync` per span cost ~1.4 ms each, serialised by the journal, on a
//! start's critical path).
//!
//! # What it owns, what it must not touch
//!
//! The publication protocol (atomic, private, verified) and the byte count the evictor works
//! from. Content comes either already verified ([`LayerCache::store`], from the pure decoder)
//! or as a stream that is hashed while written ([`LayerCache::writer`] then
//! [`LayerCache::publish`]). It never reads entries back nor deletes published ones.

use std::fs::{self, File};
use std::io::{self, Write as _};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileExt as _, PermissionsExt as _};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use rustix::fs::{AtFlags, Mode, OFlags};
use sha2::{Digest as _, Sha256};

use super::verify::Identity;
use super::{dir, entry, entry_name, now_secs, LayerCache, HEADER_LEN, TEMP_PREFIX};
use crate::decode::{span_len, Verified};
use crate::{FetchError, SpanRef};

impl LayerCache {
    /// Starts writing the entry of a span; its content is hashed as it is written and must
    /// match `span.info.content_digest` to be published ([`LayerCache::publish`]).
    pub(crate) fn writer(&self, span: &SpanRef) -> Result<EntryWriter, FetchError> {
        self.start_entry(span, Some(Sha256::new()))
    }

    /// Stores a span's verified content and publishes it. Returns the open file.
    pub(crate) fn store(
        &self,
        span: &SpanRef,
        content: &Verified<'_>,
    ) -> Result<Arc<File>, FetchError> {
        let mut writer = self.start_entry(span, None)?;
        writer.write_all(content.bytes())?;
        self.publish_as(writer, *content.digest())
    }

    fn start_entry(
        &self,
        span: &SpanRef,
        hasher: Option<Sha256>,
    ) -> Result<EntryWriter, FetchError> {
        let dir = self
            .dir(true)
            .map_err(|e| FetchError::cache(&self.path, e))?;
        let name = entry_name(&span.info);
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
            path: self.path.join(&name),
            name,
            span: span.index,
            hasher,
            written: 0,
            expected: span.info.content_digest,
            len: span_len(&span.info),
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
    /// header, rename. Returns the open file. A mismatch is
    /// [`FetchError::ContentMismatch`] and leaves nothing behind. Never evicts on the caller's
    /// thread: past the bound it only wakes the evictor.
    pub(crate) fn publish(&self, mut writer: EntryWriter) -> Result<Arc<File>, FetchError> {
        let found: [u8; 32] = writer
            .hasher
            .take()
            .map_or([0; 32], |h| h.finalize().into());
        if writer.written != writer.len || found != writer.expected {
            return Err(FetchError::ContentMismatch {
                layer_digest: self.digest.to_string(),
                span: writer.span,
                expected: hex::encode(writer.expected),
                found: if writer.written == writer.len {
                    hex::encode(found)
                } else {
                    format!("{} of {} bytes", writer.written, writer.len)
                },
            });
        }
        self.publish_as(writer, found)
    }

    /// Header (recording `digest`), rename, and the entry is this process's verified file.
    fn publish_as(
        &self,
        mut writer: EntryWriter,
        digest: [u8; 32],
    ) -> Result<Arc<File>, FetchError> {
        let Some(file) = writer.file.take() else {
            return Err(FetchError::cache(
                &writer.path,
                io::Error::other("entry writer already used"),
            ));
        };
        let temp_path = self.path.join(&writer.temp);
        let fail = |e: io::Error| FetchError::cache(&temp_path, e);
        file.write_all_at(&entry::encode_header(writer.written, &digest), 0)
            .map_err(fail)?;
        rustix::fs::renameat(
            writer.dir.as_fd(),
            writer.temp.as_str(),
            writer.dir.as_fd(),
            writer.name.as_str(),
        )
        .map_err(|e| fail(e.into()))?;
        writer.published = true;
        // After the rename (which may change the ctime): this is the file we know is sound.
        let state = self.entry(writer.span);
        let meta = file.metadata().map_err(fail)?;
        state.set_verified(Identity::of(&meta));
        state.touched.store(now_secs(), Ordering::Relaxed);
        let size = HEADER_LEN + writer.written;
        let inner = &self.cache.inner;
        inner.added.fetch_add(size, Ordering::SeqCst);
        inner.bytes.fetch_add(size, Ordering::SeqCst);
        let file = Arc::new(file);
        self.cache
            .remember((self.index, writer.span), file.clone(), &meta);
        self.cache.request_eviction();
        Ok(file)
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
    span: usize,
    /// `None` for content verified already.
    hasher: Option<Sha256>,
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
        if let Some(hasher) = self.hasher.as_mut() {
            hasher.update(data);
        }
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
