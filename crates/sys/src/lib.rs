//! The operating system as clip uses it: the few unsafe system calls it needs, each behind a
//! safe function, and the rules for directories that hold private data. Every other crate of
//! clip forbids `unsafe` (the zlib FFI of `clip-zran` aside).
//!
//! - [`private`]: directories only their user may use (`0700`, owner checked, refused when
//!   others may write to them), files `0600`, and access below them that never follows a
//!   symlink: the span cache, the index store and the runtime directory share these rules.
//! - [`Mapping`]: a read-only memory map of a file, for the `.clip` index a mount serves: only
//!   the pages that are used become resident, and the kernel can drop them again under memory
//!   pressure (they are clean file pages), so a mount's memory does not grow with the parts of
//!   the index it never reads (seek windows of spans that are cached, say).
//! - [`tune_allocator`]: large transient buffers (fetched and inflated spans) go back to the
//!   operating system when freed.
//!
//! # What it must not touch
//!
//! Nothing of clip's formats or logic: it maps bytes and tunes malloc, nothing more.

pub mod private;

use std::fs::File;
use std::io;
use std::ops::Deref;
use std::sync::Arc;

/// Allocations at least this large are served by `mmap` and returned to the system on `free`.
const MMAP_THRESHOLD: i32 = 128 * 1024;

/// A read-only, shared memory map of a whole file.
///
/// The bytes must not change while mapped: clip maps index files, which it writes by rename
/// and never in place. A file *truncated* in place while mapped would make reads past its new
/// end fault (`SIGBUS`); replacing it (a new inode) does no harm.
///
/// Clones share one map, unmapped when the last of them is dropped.
#[derive(Clone)]
pub struct Mapping {
    map: Arc<memmap2::Mmap>,
}

impl Mapping {
    /// Maps all of `file` read-only. An empty file gives an empty mapping.
    pub fn new(file: &File) -> io::Result<Mapping> {
        // SAFETY: the map is read-only and shared; what the type doc says about the file not
        // changing is the caller's contract, and the bytes are only ever read as `&[u8]`
        // (every reader of an index bounds-checks what it reads).
        let map = unsafe { memmap2::MmapOptions::new().map(file)? };
        Ok(Mapping { map: Arc::new(map) })
    }

    /// Drops the mapping's pages from this process's memory (they stay in the page cache and
    /// come back on the next access): after a pass over the whole file, such as a checksum,
    /// only what is used later is resident.
    pub fn release_pages(&self) {
        if self.map.is_empty() {
            return;
        }
        // SAFETY: `MADV_DONTNEED` on a read-only shared file mapping discards nothing that
        // cannot be read again from the file: later accesses fault the same bytes back in.
        // A failure only leaves the pages resident.
        let _ = unsafe {
            self.map
                .unchecked_advise(memmap2::UncheckedAdvice::DontNeed)
        };
    }
}

impl Deref for Mapping {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.map
    }
}

impl AsRef<[u8]> for Mapping {
    fn as_ref(&self) -> &[u8] {
        &self.map
    }
}

impl std::fmt::Debug for Mapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mapping")
            .field("len", &self.map.len())
            .finish()
    }
}

/// Makes malloc serve allocations of 128 KiB and more with `mmap`, always, and give them back
/// to the system when freed. glibc otherwise raises that threshold to the largest block freed
/// so far, after which megabyte-sized transient buffers (a fetched range, an inflated span)
/// are carved out of the heaps of many threads and stay there: a mount's resident memory
/// grows by tens of megabytes for nothing. Call it once, early, before threads start.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` only changes a malloc parameter; called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    #[test]
    fn a_mapping_reads_the_file_and_survives_releasing_its_pages() {
        let mut f = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        f.write_all(&data).unwrap();
        let m = Mapping::new(&f).unwrap();
        assert_eq!(&m[..], &data[..]);
        m.release_pages();
        assert_eq!(&m[..], &data[..]);
        let empty = Mapping::new(&tempfile::tempfile().unwrap()).unwrap();
        assert!(empty.is_empty());
        empty.release_pages();
        tune_allocator();
        assert_eq!(
            vec![7u8; 1 << 20]
                .iter()
                .map(|&b| u64::from(b))
                .sum::<u64>(),
            7 << 20
        );
    }
}
