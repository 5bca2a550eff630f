//! The bytes match docs/FORMAT.md, decoded here by hand, and do not drift unnoticed.

mod common;

use clip_archive::*;
use common::*;

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes(b[o..o + 2].try_into().unwrap())
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}
fn i64_at(b: &[u8], o: usize) -> i64 {
    i64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

/// A fixed input without windows (window bytes depend on the zstd library version).
fn fixed() -> Vec<u8> {
    let mut t = Tree::new(dir(0o755));
    let etc = t.add(0, "etc", dir(0o750));
    let mut hosts = file(0o644, 5, 0, 512);
    hosts.uid = 7;
    hosts.mtime_sec = -2;
    hosts.mtime_nsec = 3;
    hosts.xattrs = vec![(b"user.k".to_vec(), b"v".to_vec())];
    t.add(etc, "hosts", hosts);
    t.add(0, "sh", symlink(b"busybox"));
    t.add(0, "tty", device(FileType::CharDevice, 5, 0));
    let mut l = layers();
    for layer in &mut l {
        for span in &mut layer.spans {
            span.window = Window::default();
        }
    }
    l[0].spans[1].window = Window::new(&[7; 64]).unwrap();
    write_archive(&meta(), &l, &t).unwrap()
}

#[test]
fn bytes_follow_the_documented_layout() {
    let b = fixed();
    // Header.
    assert_eq!(&b[0..8], b"CLIPIDX\0");
    assert_eq!(u32_at(&b, 8), 3);
    assert_eq!(u32_at(&b, 12), 0);
    assert_eq!(u64_at(&b, 16), b.len() as u64);
    let metadata_len = u64_at(&b, 40) as usize;
    assert_eq!(
        u64_at(&b, 24),
        xxhash_rust::xxh3::xxh3_64(&b[32..metadata_len])
    );
    assert_eq!(u32_at(&b, 32), 10);
    assert!(b[36..40].iter().all(|&x| x == 0));
    assert!(b[48..64].iter().all(|&x| x == 0));
    // Section table.
    let mut sec = Vec::new();
    let mut expected = 64 + 10 * 24;
    for i in 0..10 {
        let e = 64 + i * 24;
        assert_eq!(u32_at(&b, e), i as u32 + 1);
        assert_eq!(u32_at(&b, e + 4), 0);
        let (off, len) = (u64_at(&b, e + 8) as usize, u64_at(&b, e + 16) as usize);
        assert_eq!(off, expected);
        expected = off + len;
        sec.push(&b[off..off + len]);
    }
    assert_eq!(expected, b.len());
    let (meta_json, attrs, mtimes, inodes, dirents, strings, xidx, xattrs, spans, windows) = (
        sec[0], sec[1], sec[2], sec[3], sec[4], sec[5], sec[6], sec[7], sec[8], sec[9],
    );
    // The windows come last and alone after the metadata.
    assert_eq!(u64_at(&b, 64 + 9 * 24 + 8) as usize, metadata_len);
    assert!(meta_json.starts_with(br#"{"image":{"reference":"docker.io/library/alpine:3.20","#));
    assert!(std::str::from_utf8(meta_json).unwrap().contains(
        r#""compression":"gzip","compressed_size":3000000,"uncompressed_size":10000000,"diff_id":"sha256:1112","span_size":4194304,"first_span":0,"span_count":3}"#
    ));
    assert_eq!(inodes.len(), 5 * 28);
    assert_eq!(dirents.len(), 4 * 10);
    assert_eq!(spans.len(), 6 * 144);

    // Mtimes: the distinct (seconds, nanoseconds), ascending: hosts' (-2, 3), everyone
    // else's (0, 0).
    assert_eq!(mtimes.len(), 2 * 12);
    let mtime = |i: u32| {
        let m = &mtimes[i as usize * 12..];
        (i64_at(m, 0), u32_at(m, 8))
    };
    assert_eq!((mtime(0), mtime(1)), ((-2, 3), (0, 0)));

    // Inodes, breadth-first in name order: / etc sh tty hosts.
    let inode = |ino: usize| &inodes[(ino - 1) * 28..ino * 28];
    let attr = |i: u32| {
        let a = &attrs[i as usize * 12..];
        (u32_at(a, 0), u32_at(a, 4), u32_at(a, 8))
    };
    for ino in 1..=4 {
        assert_eq!(u32_at(inode(ino), 16), 1, "mtime (0, 0)");
        assert_eq!(u32_at(inode(ino), 0) >> 31, 0, "no xattrs");
    }
    let root = inode(1);
    assert_eq!(attr(u32_at(root, 0)), (0o40755, 0, 0));
    assert_eq!(u32_at(root, 4), 3, "nlink = 2 + one subdirectory");
    assert_eq!(u64_at(root, 8), 1, "the root's parent is the root");
    assert_eq!(u64_at(root, 20), 3 << 32, "entries 0.. (3 of them)");
    let etc = inode(2);
    assert_eq!(attr(u32_at(etc, 0)).0, 0o40750);
    assert_eq!(u64_at(etc, 8), 1);
    assert_eq!(u64_at(etc, 20), 3 | (1 << 32), "entries 3.. (1 of them)");
    let sh = inode(3);
    assert_eq!(attr(u32_at(sh, 0)).0, 0o120777);
    assert_eq!(u64_at(sh, 8), 7);
    let target = u64_at(sh, 20) as usize;
    assert_eq!(&strings[target..target + 7], b"busybox");
    let tty = inode(4);
    assert_eq!(attr(u32_at(tty, 0)).0, 0o20660);
    assert_eq!(u64_at(tty, 20), 5);
    let hosts = inode(5);
    assert_eq!(u32_at(hosts, 0) >> 31, 1, "has-xattrs bit");
    assert_eq!(attr(u32_at(hosts, 0) & !(1 << 31)), (0o100644, 7, 0));
    assert_eq!(u32_at(hosts, 4), 1);
    assert_eq!(u64_at(hosts, 8), 5);
    assert_eq!(u32_at(hosts, 16), 0, "mtime (-2, 3)");
    assert_eq!(u64_at(hosts, 20), 512, "layer 0, offset 512");

    // Dirents.
    let dirent = |i: usize| {
        let d = &dirents[i * 10..];
        let (off, len) = (u32_at(d, 0) as usize, u16_at(d, 4) as usize);
        (&strings[off..off + len], u32_at(d, 6))
    };
    assert_eq!(dirent(0), (&b"etc"[..], 2));
    assert_eq!(dirent(1), (&b"sh"[..], 3));
    assert_eq!(dirent(2), (&b"tty"[..], 4));
    assert_eq!(dirent(3), (&b"hosts"[..], 5));

    // Xattrs.
    assert_eq!(
        (u32_at(xidx, 0), u32_at(xidx, 4), u32_at(xidx, 8)),
        (5, 0, 1)
    );
    let s =
        |o: usize, l: usize| &strings[u32_at(xattrs, o) as usize..][..u32_at(xattrs, l) as usize];
    assert_eq!(s(0, 4), b"user.k");
    assert_eq!(s(8, 12), b"v");

    // Spans: second span of layer 0.
    let sp = &spans[144..288];
    assert_eq!(u64_at(sp, 0), 1_199_999);
    assert_eq!(u64_at(sp, 8), 2_400_000);
    assert_eq!(u64_at(sp, 16), 4_194_400);
    assert_eq!(sp[40], 3);
    assert!(sp[41..48].iter().all(|&x| x == 0), "reserved");
    assert_eq!(&sp[48..50], &[31 * 2, 31 * 2 + 1], "compressed digest");
    assert_eq!(
        &sp[80..82],
        &[(12 * 31 % 256) as u8, (12 * 31 % 256 + 1) as u8],
        "content digest"
    );
    // Its window: the only one, at 0 in WINDOWS, 64 bytes unpacked, with the digest of its
    // stored bytes.
    assert_eq!(u64_at(sp, 24), 0);
    assert_eq!(u32_at(sp, 32) as usize, windows.len());
    assert_eq!(u32_at(sp, 36), 64);
    use sha2::Digest as _;
    assert_eq!(&sp[112..144], &sha2::Sha256::digest(windows)[..]);
    assert_eq!(zstd::bulk::decompress(windows, 64).unwrap(), vec![7; 64]);
    // Spans without a window: offset, lengths and digest all zero.
    let first = &spans[..144];
    assert_eq!(
        (u64_at(first, 24), u32_at(first, 32), u32_at(first, 36)),
        (0, 0, 0)
    );
    assert!(first[112..144].iter().all(|&x| x == 0));
}

#[test]
fn the_format_has_not_drifted() {
    // If this fails, the bytes of the format changed. If that is intended: bump
    // FORMAT_VERSION (see "Compatibility" in docs/FORMAT.md for the one exception: before the
    // first release), update docs/FORMAT.md, then this constant.
    let sum = xxhash_rust::xxh3::xxh3_64(&fixed());
    assert_eq!(
        sum, 0x2f79_018e_c6f1_39c3,
        "format fingerprint is {sum:#018x}"
    );
}
