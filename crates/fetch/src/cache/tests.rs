use std::fs::OpenOptions;
use std::os::unix::fs::FileExt as _;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use super::*;
use sha2::{Digest as _, Sha256};
use std::os::unix::fs::PermissionsExt as _;

const DIGEST: &str = "sha256:abababababababababababababababababababababababababababababababab";

fn cache(dir: &Path, max_bytes: u64) -> SpanCache {
    SpanCache::open(&CacheOptions {
        dir: dir.to_path_buf(),
        max_bytes,
    })
    .unwrap()
}

fn layer(c: &SpanCache, spans: usize) -> LayerCache {
    c.layer(0, DIGEST, spans).unwrap()
}

/// Span 0 at `offset` holding `data`.
fn info(offset: u64, data: &[u8]) -> SpanRef {
    let info = SpanInfo {
        compressed_offset: offset,
        compressed_end: offset + data.len() as u64,
        uncompressed_offset: offset,
        uncompressed_end: offset + data.len() as u64,
        bits: 0,
        digest: [0; 32],
        content_digest: Sha256::digest(data).into(),
        has_window: false,
    };
    SpanRef { index: 0, info }
}

fn put(l: &LayerCache, span: usize, offset: u64, data: &[u8]) -> PathBuf {
    let span = SpanRef {
        index: span,
        ..info(offset, data)
    };
    let mut w = l.writer(&span).unwrap();
    w.write_all(data).unwrap();
    l.publish(w).unwrap();
    l.path(&span.info)
}

fn full() -> Check {
    Check::Full {
        until: Instant::now() + Duration::from_secs(60),
    }
}

fn layer_dir(tmp: &Path) -> PathBuf {
    tmp.join("v2/spans/ab").join(&DIGEST[7..])
}

#[test]
fn layer_dirs_only_from_well_formed_digests() {
    let tmp = tempfile::tempdir().unwrap();
    let c = cache(tmp.path(), 1 << 30);
    let l = layer(&c, 1);
    assert_eq!(l.path, layer_dir(tmp.path()));
    for bad in [
        "sha256:../../etc",
        "sha256:ABABABABABABABABABABABABABABABABABABABABABABABABABABABABABABABAB",
        "md5:abab",
        "sha256",
        "",
    ] {
        assert!(c.layer(0, bad, 1).is_none(), "{bad}");
    }
    let p = l.path(&info(0x10_0000, &[0; 0x1000]).info);
    assert!(p.ends_with("0000000000100000-1000"));
}

#[test]
fn the_cache_is_private_whatever_the_umask() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cache");
    let c = cache(&root, 1 << 30);
    let l = layer(&c, 1);
    let path = put(&l, 0, 0, b"secret");
    let mode = |p: &Path| fs::symlink_metadata(p).unwrap().mode() & 0o7777;
    for dir in [
        root.clone(),
        root.join("v2"),
        root.join("v2/spans"),
        root.join("v2/spans/ab"),
        layer_dir(&root),
    ] {
        assert_eq!(mode(&dir), 0o700, "{}", dir.display());
    }
    assert_eq!(mode(&path), 0o600);
}

#[test]
fn a_cache_made_by_an_earlier_clip_is_tightened_and_its_old_layout_deleted() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cache");
    let old = root.join("v1/spans/ab/cd");
    fs::create_dir_all(&old).unwrap();
    fs::write(old.join("0000000000000000-5"), b"xxxxx").unwrap();
    for d in [&root, &root.join("v1")] {
        fs::set_permissions(d, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let c = cache(&root, 1 << 30);
    assert!(c.wait_evictor_idle(None));
    assert_eq!(fs::metadata(&root).unwrap().mode() & 0o7777, 0o700);
    assert!(!root.join("v1").exists());
    // Someone else's writable directory is refused.
    fs::set_permissions(&root, fs::Permissions::from_mode(0o777)).unwrap();
    let err = SpanCache::open(&CacheOptions {
        dir: root.clone(),
        max_bytes: 1,
    })
    .err()
    .unwrap();
    assert!(matches!(err, FetchError::CacheNotPrivate(_)), "{err}");
}

#[test]
fn published_entries_verify_and_corruption_is_caught() {
    let tmp = tempfile::tempdir().unwrap();
    let c = cache(tmp.path(), 1 << 30);
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let path = put(&layer(&c, 1), 0, 0, &data);
    let span = info(0, &data);

    // A fresh process (new cache handle, new state) verifies and serves it.
    let fresh = layer(&cache(tmp.path(), 1 << 30), 1);
    let Lookup::Hit(file) = fresh.lookup(&span, full()) else {
        panic!("expected a hit");
    };
    let mut buf = [0u8; 10];
    fresh.read(&span, &file, &mut buf, 500).unwrap();
    assert_eq!(buf[..], data[500..510]);

    // An index that says other content: not used, not deleted.
    let mut other = span;
    other.info.content_digest = [8; 32];
    let third = layer(&cache(tmp.path(), 1 << 30), 1);
    assert!(matches!(third.lookup(&other, full()), Lookup::Miss));
    assert!(path.exists());

    // Flip a content byte (even with a header that agrees): the next process deletes it.
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all_at(&[data[1000] ^ 1], HEADER_LEN + 1000)
        .unwrap();
    let fourth = layer(&cache(tmp.path(), 1 << 30), 1);
    assert!(matches!(fourth.lookup(&span, full()), Lookup::Corrupt(_)));
    assert!(!path.exists());
    assert!(matches!(fourth.lookup(&span, full()), Lookup::Miss));
}

#[test]
fn an_entry_written_to_while_open_is_caught_at_the_next_read() {
    let tmp = tempfile::tempdir().unwrap();
    let c = cache(tmp.path(), 1 << 30);
    let l = layer(&c, 1);
    let data = vec![5u8; 50_000];
    let path = put(&l, 0, 0, &data);
    let span = info(0, &data);
    let Lookup::Hit(file) = l.lookup(&span, full()) else {
        panic!("expected a hit");
    };
    let mut buf = [0u8; 16];
    l.read(&span, &file, &mut buf, 0).unwrap();

    // One byte flipped in place: the write changes the ctime, so the read that follows (from
    // the same open file) is refused rather than served.
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all_at(&[6], HEADER_LEN + 3).unwrap();
    drop(f);
    let err = l.read(&span, &file, &mut buf, 0).unwrap_err();
    assert!(
        matches!(&err, FetchError::Cache { error, .. } if error.kind() == io::ErrorKind::InvalidData),
        "{err:?}"
    );
    // The read invalidated it; the next lookup hashes it, finds it corrupt and deletes it.
    assert!(matches!(l.lookup(&span, full()), Lookup::Corrupt(_)));
    assert!(!path.exists());
}

#[test]
fn a_reopened_entry_is_rehashed_unless_it_is_the_very_file_verified() {
    let tmp = tempfile::tempdir().unwrap();
    let c = cache(tmp.path(), 1 << 30);
    let l = layer(&c, 1);
    let data = vec![5u8; 50_000];
    let path = put(&l, 0, 0, &data);
    let span = info(0, &data);

    // Closed (as when more than 256 entries are open), the same file reopens cheaply: no hash
    // needed, so even the cheap check serves it.
    c.close_for_test((0, 0));
    assert!(matches!(l.lookup(&span, Check::Cheap), Lookup::Hit(_)));

    // The file changed in place: the cheap check cannot vouch for it and the full one hashes
    // it and finds it corrupt, its inode number notwithstanding. (Timestamps can be as coarse
    // as a clock tick, so the test moves the mtime out of doubt.)
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all_at(&[6], HEADER_LEN + 10).unwrap();
    f.set_modified(UNIX_EPOCH + Duration::from_secs(1_000_000))
        .unwrap();
    drop(f);
    c.close_for_test((0, 0));
    assert!(matches!(l.lookup(&span, Check::Cheap), Lookup::Miss));
    assert!(path.exists(), "the cheap check deletes nothing");
    assert!(matches!(l.lookup(&span, full()), Lookup::Corrupt(_)));

    // Another file at the path, sound: hashed once, then cheap.
    let fresh = layer(&c, 1);
    let path = put(&fresh, 0, 0, &data);
    assert!(path.exists());
    c.close_for_test((0, 0));
    assert!(matches!(l.lookup(&span, Check::Cheap), Lookup::Miss));
    assert!(matches!(l.lookup(&span, full()), Lookup::Hit(_)));
    c.close_for_test((0, 0));
    assert!(matches!(l.lookup(&span, Check::Cheap), Lookup::Hit(_)));
}

#[test]
fn concurrent_lookups_share_one_verification() {
    let tmp = tempfile::tempdir().unwrap();
    let data = vec![9u8; 300_000];
    put(&layer(&cache(tmp.path(), 1 << 30), 1), 0, 0, &data);
    let span = info(0, &data);
    let fresh = cache(tmp.path(), 1 << 30);
    let l = layer(&fresh, 1);
    // Someone is verifying the entry: a cheap lookup does not wait, a full one with no time
    // left gives up, and both leave the entry alone.
    let guard = fresh.start_verifying_for_test((0, 0));
    assert!(matches!(l.lookup(&span, Check::Cheap), Lookup::Busy));
    let now = Check::Full {
        until: Instant::now(),
    };
    assert!(matches!(l.lookup(&span, now), Lookup::Busy));
    // Readers wait for the verification under way and then find its result.
    let hits = AtomicU64::new(0);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                if matches!(l.lookup(&span, full()), Lookup::Hit(_)) {
                    hits.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
        drop(guard);
    });
    assert_eq!(hits.load(Ordering::SeqCst), 4);
    assert_eq!(fresh.inner.verifying.len(), 0);
}

#[test]
fn unpublished_and_wrong_entries_leave_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let c = cache(tmp.path(), 1 << 30);
    let l = layer(&c, 1);
    let span = info(0, b"abc");
    let mut w = l.writer(&span).unwrap();
    w.write_all(b"abc").unwrap();
    drop(w);
    assert_eq!(fs::read_dir(layer_dir(tmp.path())).unwrap().count(), 0);
    // Content other than the index records is refused at publication.
    let mut w = l.writer(&span).unwrap();
    w.write_all(b"abd").unwrap();
    let err = l.publish(w).unwrap_err();
    assert!(
        matches!(err, FetchError::ContentMismatch { span: 0, .. }),
        "{err}"
    );
    let mut w = l.writer(&span).unwrap();
    w.write_all(b"ab").unwrap();
    assert!(matches!(
        l.publish(w),
        Err(FetchError::ContentMismatch { .. })
    ));
    assert_eq!(fs::read_dir(layer_dir(tmp.path())).unwrap().count(), 0);
}

#[test]
fn a_directory_at_an_entry_path_is_moved_away() {
    let tmp = tempfile::tempdir().unwrap();
    let c = cache(tmp.path(), 1 << 30);
    let l = layer(&c, 1);
    let data = b"hello";
    let span = info(0, data);
    fs::create_dir_all(l.path(&span.info).join("inside")).unwrap();
    assert!(matches!(l.lookup(&span, full()), Lookup::Corrupt(_)));
    // The path is free again: the span can be cached (and not fetched on every miss).
    put(&l, 0, 0, data);
    c.close_for_test((0, 0));
    assert!(matches!(l.lookup(&span, full()), Lookup::Hit(_)));
}

#[test]
fn symlinks_in_the_cache_are_never_followed() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cache");
    let outside = tmp.path().join("outside");
    fs::create_dir_all(&outside).unwrap();
    let precious = outside.join("0000000000000000-5");
    fs::write(&precious, b"keep!").unwrap();
    let c = cache(&root, 1);
    assert!(c.wait_evictor_idle(None));
    // The layer directory is a symlink to somewhere else.
    fs::create_dir_all(root.join("v2/spans/ab")).unwrap();
    std::os::unix::fs::symlink(&outside, layer_dir(&root)).unwrap();
    let l = layer(&c, 1);
    let span = info(0, b"keep!");
    assert!(matches!(l.lookup(&span, full()), Lookup::Miss));
    assert!(l.writer(&span).is_err());
    // Neither the scan nor the eviction (the bound is 1 byte) goes there.
    let (count, _) = evict::scanned_bytes(&c.inner.spans);
    assert_eq!(count, 0);
    c.request_eviction_for_test();
    assert!(c.wait_evictor_idle(None));
    assert_eq!(fs::read(&precious).unwrap(), b"keep!");
    // An entry that is a symlink is removed (it is ours), not followed.
    fs::remove_file(layer_dir(&root)).unwrap();
    fs::create_dir_all(layer_dir(&root)).unwrap();
    std::os::unix::fs::symlink(&precious, l.path(&span.info)).unwrap();
    assert!(matches!(l.lookup(&span, full()), Lookup::Corrupt(_)));
    assert!(fs::symlink_metadata(l.path(&span.info)).is_err());
    assert_eq!(fs::read(&precious).unwrap(), b"keep!");
}

#[test]
fn eviction_keeps_the_directory_under_its_bound() {
    let tmp = tempfile::tempdir().unwrap();
    let entry = HEADER_LEN + 10_000;
    let c = cache(tmp.path(), 5 * entry);
    assert!(c.wait_evictor_idle(None));
    let l = layer(&c, 20);
    for i in 0..20 {
        put(&l, i, i as u64 * 10_000, &[i as u8; 10_000]);
        assert!(c.wait_evictor_idle(None));
        let (_, on_disk) = evict::scanned_bytes(&c.inner.spans);
        assert!(on_disk <= 5 * entry, "{on_disk} bytes after {i} inserts");
    }
    assert!(c.inner.bytes.load(Ordering::Relaxed) <= 5 * entry);
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
        |_, _| Err(io::Error::from_raw_os_error(libc::EACCES)),
    )
    .unwrap();
    assert!(c.wait_evictor_idle(None));
    let l = layer(&c, 30);
    let put_one = |i: usize| {
        put(&l, i, i as u64 * 1_000, &[1; 1_000]);
        assert!(c.wait_evictor_idle(None));
        c.inner.evict.passes.load(Ordering::Relaxed)
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
    assert_eq!(evict::scanned_bytes(&c.inner.spans), (25, 25 * entry));
    assert_eq!(c.inner.bytes.load(Ordering::Relaxed), 25 * entry);
}

#[test]
fn dropping_the_cache_stops_its_evictor() {
    let tmp = tempfile::tempdir().unwrap();
    let c = cache(tmp.path(), 1 << 30);
    assert!(c.wait_evictor_idle(None));
    let evict = c.inner.evict.clone();
    drop(c);
    assert!(evict.is_stopped_for_test());
}
