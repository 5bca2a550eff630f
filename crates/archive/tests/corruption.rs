//! Truncated, corrupted, foreign and newer files: always an error, never a panic.
//!
//! The checksum catches random damage at `open`; the "resealed" tests recompute it after the
//! damage to prove that the bounds checks behind it hold on their own.

mod common;

use clip_archive::testing::{exercise, reseal};
use clip_archive::*;
use common::*;

fn small() -> Vec<u8> {
    small_archive()
}

fn medium() -> Vec<u8> {
    let (tree, _) = full_tree();
    write_archive(&meta(), &layers(), &tree).unwrap()
}

/// Length of the metadata (the header's `metadata_len`).
fn metadata_len(b: &[u8]) -> usize {
    u64::from_le_bytes(b[40..48].try_into().unwrap()) as usize
}

#[test]
fn every_truncation_is_an_error_but_the_metadata_alone() {
    let bytes = small();
    let metadata = metadata_len(&bytes);
    assert!(metadata < bytes.len(), "the small archive has a window");
    for len in 0..bytes.len() {
        if len == metadata {
            continue;
        }
        let err = Archive::open(&bytes[..len]).unwrap_err();
        assert!(
            matches!(err, ArchiveError::Truncated { .. }),
            "length {len}: {err}"
        );
    }
    assert!(Archive::open(&bytes).unwrap().has_windows());
    // The metadata alone is a metadata-only index: everything but the windows.
    let only = Archive::open(&bytes[..metadata]).unwrap();
    assert!(!only.has_windows());
    assert_eq!(
        only.window(0, 0).unwrap(),
        Vec::<u8>::new(),
        "span 0 has no window"
    );
    assert!(matches!(
        only.window(0, 1),
        Err(ArchiveError::WindowsAbsent)
    ));
    let w = only.window_ref(0, 1).unwrap().unwrap();
    let complete = Archive::open(&bytes).unwrap();
    let packed = &bytes[w.offset as usize..w.offset as usize + w.len as usize];
    assert_eq!(w.unpack(packed).unwrap(), complete.window(0, 1).unwrap());
    assert_eq!(w.unpack(packed).unwrap(), vec![7; 64]);
    assert_eq!(only.walk().count(), complete.walk().count());
}

#[test]
fn a_damaged_window_fails_when_it_is_read_and_nothing_else_does() {
    let bytes = small();
    let metadata = metadata_len(&bytes);
    for i in metadata..bytes.len() {
        let mut copy = bytes.clone();
        copy[i] ^= 0x01;
        let a = Archive::open(&copy).expect("the windows are outside the checksum");
        assert!(
            matches!(
                a.window(0, 1),
                Err(ArchiveError::WindowMismatch { layer: 0, span: 1 })
            ),
            "flip at {i}"
        );
        let w = a.window_ref(0, 1).unwrap().unwrap();
        assert!(w
            .unpack(&copy[w.offset as usize..][..w.len as usize])
            .is_err());
    }
}

#[test]
fn every_single_byte_flip_of_the_metadata_fails_open() {
    let bytes = small();
    let mut copy = bytes.clone();
    for i in 0..metadata_len(&bytes) {
        for x in [0x01, 0x80, 0xFF] {
            copy[i] ^= x;
            assert!(
                Archive::open(&copy).is_err(),
                "flip {x:#x} at {i} was accepted"
            );
            copy[i] ^= x;
        }
    }
}

#[test]
fn sampled_byte_flips_in_a_medium_archive_fail_open() {
    let bytes = medium();
    let mut rng = Rng(42);
    let mut copy = bytes.clone();
    for _ in 0..2000 {
        let i = rng.below(metadata_len(&bytes) as u64) as usize;
        let x = (rng.below(255) + 1) as u8;
        copy[i] ^= x;
        let err = Archive::open(&copy).unwrap_err();
        // The metadata length (40..48) says what the checksum covers: checked before it.
        if i >= 32 && !(40..48).contains(&i) {
            assert!(
                matches!(err, ArchiveError::ChecksumMismatch { .. }),
                "{err}"
            );
        }
        copy[i] ^= x;
    }
}

#[test]
fn resealed_single_byte_corruption_never_panics() {
    // Every byte of the small archive, several values each, checksum fixed.
    let bytes = small();
    let mut opened = 0;
    let mut failed_reads = 0;
    for i in 32..bytes.len() {
        for v in [
            0x00,
            0x01,
            0x7F,
            0x80,
            0xFF,
            bytes[i] ^ 0x01,
            bytes[i].wrapping_add(1),
        ] {
            let mut copy = bytes.clone();
            copy[i] = v;
            reseal(&mut copy);
            if let Ok(a) = Archive::open(&copy) {
                opened += 1;
                failed_reads += exercise(&a).errors;
            }
        }
    }
    println!("small: {opened} corrupted archives opened, {failed_reads} failed reads");
    assert!(opened > 0);
}

#[test]
fn resealed_random_corruption_never_panics() {
    let bytes = medium();
    let mut rng = Rng(1234);
    let mut opened = 0;
    for round in 0..2000 {
        let mut copy = bytes.clone();
        // 1 to 4 damaged spots; some are whole little-endian fields set to edge values.
        for _ in 0..=rng.below(4) {
            let i = 32 + rng.below(bytes.len() as u64 - 32) as usize;
            if round % 2 == 0 {
                copy[i] = rng.next() as u8;
            } else {
                let edge: [u8; 4] = match rng.below(5) {
                    0 => [0; 4],
                    1 => [0xFF; 4],
                    2 => 1u32.to_le_bytes(),
                    3 => 0x8000_0000u32.to_le_bytes(),
                    _ => (rng.next() as u32).to_le_bytes(),
                };
                let end = (i + 4).min(copy.len());
                copy[i..end].copy_from_slice(&edge[..end - i]);
            }
        }
        reseal(&mut copy);
        if let Ok(a) = Archive::open(&copy) {
            opened += 1;
            exercise(&a);
        }
    }
    println!("medium: {opened} of 2000 corrupted archives opened and were fully read");
    assert!(opened > 0);
}

#[test]
fn resealed_truncations_and_extensions_never_panic() {
    let bytes = small();
    for len in 32..bytes.len() + 64 {
        let mut copy = bytes.clone();
        copy.resize(len, 0);
        copy[16..24].copy_from_slice(&(len as u64).to_le_bytes());
        reseal(&mut copy);
        if let Ok(a) = Archive::open(&copy) {
            exercise(&a);
        }
    }
}

#[test]
fn foreign_files_are_not_archives() {
    let png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x06\0\0\0\x1f\x15\xc4\x89";
    let err = Archive::open(png).unwrap_err();
    assert!(matches!(&err, ArchiveError::NotAnArchive { found } if found == b"\x89PNG\r\n\x1a\n"));
    assert!(err.to_string().contains("not a .clip index"), "{err}");
    assert!(matches!(
        Archive::open(b"{}"),
        Err(ArchiveError::NotAnArchive { .. })
    ));
    assert!(matches!(
        Archive::open(b"CLIPID"),
        Err(ArchiveError::Truncated { .. })
    ));
    assert!(matches!(
        Archive::open(b""),
        Err(ArchiveError::Truncated { .. })
    ));
}

#[test]
fn newer_versions_ask_for_an_upgrade() {
    let mut bytes = small();
    let newer = FORMAT_VERSION + 1;
    bytes[8..12].copy_from_slice(&newer.to_le_bytes());
    let err = Archive::open(&bytes).unwrap_err();
    assert!(
        matches!(
            err,
            ArchiveError::UnsupportedVersion {
                found,
                supported: FORMAT_VERSION
            } if found == newer
        ),
        "{err}"
    );
    assert!(err.to_string().contains("upgrade clip"), "{err}");
    // Even when the rest of a newer file looks nothing like version 1.
    let mut future = b"CLIPIDX\0".to_vec();
    future.extend_from_slice(&7u32.to_le_bytes());
    assert!(matches!(
        Archive::open(&future),
        Err(ArchiveError::UnsupportedVersion { found: 7, .. })
    ));
}

#[test]
fn trailing_bytes_and_bad_header_fields_are_errors() {
    let bytes = small();
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(matches!(
        Archive::open(&longer),
        Err(ArchiveError::Corrupt {
            section: "header",
            ..
        })
    ));
    let mut flags = bytes.clone();
    flags[12] = 1;
    assert!(matches!(
        Archive::open(&flags),
        Err(ArchiveError::Corrupt {
            section: "header",
            ..
        })
    ));
    let mut checksum = bytes.clone();
    checksum[24] ^= 1;
    let err = Archive::open(&checksum).unwrap_err();
    assert!(
        matches!(err, ArchiveError::ChecksumMismatch { .. }),
        "{err}"
    );
}

/// (offset, length) of the section of kind `kind`, from the section table.
fn section(b: &[u8], kind: usize) -> (usize, usize) {
    let e = 64 + (kind - 1) * 24;
    let at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap()) as usize;
    (at(e + 8), at(e + 16))
}

const MTIMES: usize = 3;
const INODES: usize = 4;

fn corrupt_section(err: ArchiveError) -> &'static str {
    match err {
        ArchiveError::Corrupt { section, .. } => section,
        other => panic!("expected Corrupt, got {other}"),
    }
}

#[test]
fn the_mtime_table_is_checked_at_open() {
    let bytes = medium();
    let (off, len) = section(&bytes, MTIMES);
    assert_eq!(len, 3 * 12, "three distinct mtimes in the full tree");
    assert!(Archive::open(&bytes).is_ok());

    // Out of order: swap the first two records.
    let mut swapped = bytes.clone();
    swapped[off..off + 24].rotate_left(12);
    reseal(&mut swapped);
    assert_eq!(
        corrupt_section(Archive::open(&swapped).unwrap_err()),
        "mtimes"
    );

    // A duplicate: record 1 = record 0.
    let mut dup = bytes.clone();
    dup.copy_within(off..off + 12, off + 12);
    reseal(&mut dup);
    assert_eq!(corrupt_section(Archive::open(&dup).unwrap_err()), "mtimes");

    // Nanoseconds of the last (largest) record out of range, order kept.
    for nsec in [1_000_000_000u32, u32::MAX] {
        let mut bad = bytes.clone();
        bad[off + 32..off + 36].copy_from_slice(&nsec.to_le_bytes());
        reseal(&mut bad);
        assert_eq!(corrupt_section(Archive::open(&bad).unwrap_err()), "mtimes");
    }

    // A table whose length is not a multiple of 12.
    let mut short = bytes.clone();
    let e = 64 + (MTIMES - 1) * 24;
    short[e + 16..e + 24].copy_from_slice(&(len as u64 - 1).to_le_bytes());
    let next = 64 + MTIMES * 24;
    short[next + 8..next + 16].copy_from_slice(&((off + len - 1) as u64).to_le_bytes());
    short[next + 16..next + 24]
        .copy_from_slice(&(section(&bytes, INODES).1 as u64 + 1).to_le_bytes());
    reseal(&mut short);
    assert_eq!(
        corrupt_section(Archive::open(&short).unwrap_err()),
        "mtimes"
    );
}

#[test]
fn mtime_indexes_are_checked_at_open() {
    let bytes = medium();
    let (off, _) = section(&bytes, INODES);
    let a = Archive::open(&bytes).unwrap();
    let ino = a.resolve("/usr/bin/passwd").unwrap().unwrap();
    let rec = off + (ino as usize - 1) * 28;
    for idx in [3u32, 1 << 31, u32::MAX] {
        let mut bad = bytes.clone();
        bad[rec + 16..rec + 20].copy_from_slice(&idx.to_le_bytes());
        reseal(&mut bad);
        let err = Archive::open(&bad).unwrap_err();
        assert_eq!(corrupt_section(err), "inodes");
    }
    // The root's too.
    let mut bad = bytes.clone();
    bad[off + 16..off + 20].copy_from_slice(&3u32.to_le_bytes());
    reseal(&mut bad);
    assert_eq!(corrupt_section(Archive::open(&bad).unwrap_err()), "inodes");
}

#[test]
fn the_has_xattrs_bit_is_not_part_of_the_attr_index() {
    let bytes = medium();
    let (off, _) = section(&bytes, INODES);
    let a = Archive::open(&bytes).unwrap();
    let ino = a.resolve("/tmp/fifo").unwrap().unwrap();
    let want = a.inode(ino).unwrap();
    assert!(!want.has_xattrs());
    let rec = off + (ino as usize - 1) * 28;

    // Flag set without an xattr index entry: the inode reads the same, its xattrs do not.
    let mut flagged = bytes.clone();
    flagged[rec + 3] |= 0x80;
    reseal(&mut flagged);
    let b = Archive::open(&flagged).unwrap();
    let got = b.inode(ino).unwrap();
    assert!(got.has_xattrs());
    assert_eq!(
        (got.uid(), got.gid(), got.mode()),
        (want.uid(), want.gid(), want.mode())
    );
    assert_eq!(corrupt_section(b.xattrs(ino).unwrap_err()), "xattr index");

    // An attr index beyond ATTRS (bit 30) is out of range, flag or not: refused at open.
    for top in [0x40, 0xC0] {
        let mut bad = bytes.clone();
        bad[rec + 3] = top;
        reseal(&mut bad);
        assert_eq!(corrupt_section(Archive::open(&bad).unwrap_err()), "inodes");
    }
}

const DIRENTS: usize = 5;
const STRINGS: usize = 6;
const SPANS: usize = 9;
const SPAN_LEN: usize = 144;

/// Runs `patch` on a copy of `bytes`, reseals it, and returns the section `open` blames.
fn open_patched(bytes: &[u8], patch: impl FnOnce(&mut Vec<u8>)) -> &'static str {
    let mut bad = bytes.to_vec();
    patch(&mut bad);
    reseal(&mut bad);
    corrupt_section(Archive::open(&bad).unwrap_err())
}

#[test]
fn span_tables_that_go_backwards_are_refused_at_open() {
    // A crafted table whose compressed offsets decrease made one coalesced request cover (and
    // pre-allocate) the whole claimed blob.
    let bytes = small();
    let (off, _) = section(&bytes, SPANS);
    let second = off + SPAN_LEN;
    let put = |b: &mut Vec<u8>, at: usize, v: u64| b[at..at + 8].copy_from_slice(&v.to_le_bytes());
    assert_eq!(open_patched(&bytes, |b| put(b, second, 5)), "spans");
    assert_eq!(
        open_patched(&bytes, |b| put(b, off + 8, 2_999_000)),
        "spans"
    );
    // The first span of a layer starts at uncompressed offset 0.
    assert_eq!(open_patched(&bytes, |b| put(b, off + 16, 1)), "spans");
    // Uncompressed offsets strictly increase.
    assert_eq!(open_patched(&bytes, |b| put(b, second + 16, 0)), "spans");
}

#[test]
fn names_with_slashes_or_nuls_are_refused_at_open() {
    let bytes = small();
    let (off, len) = section(&bytes, STRINGS);
    let at = off
        + bytes[off..off + len]
            .windows(3)
            .position(|w| w == b"etc")
            .unwrap();
    for bad_name in [&b"e/c"[..], b"e\0c", b"..\0"] {
        let section = open_patched(&bytes, |b| b[at..at + 3].copy_from_slice(bad_name));
        assert_eq!(section, "dirents", "{}", bad_name.escape_ascii());
    }
    // A name that shrinks to "." (length 1).
    let (doff, _) = section(&bytes, DIRENTS);
    let section = open_patched(&bytes, |b| {
        b[at] = b'.';
        b[doff + 4..doff + 6].copy_from_slice(&1u16.to_le_bytes());
    });
    assert_eq!(section, "dirents");
}

#[test]
fn a_directory_whose_parent_is_not_a_directory_is_refused_at_open() {
    let bytes = small();
    let a = Archive::open(&bytes).unwrap();
    let etc = a.resolve("/etc").unwrap().unwrap();
    let sh = a.resolve("/sh").unwrap().unwrap();
    let (off, _) = section(&bytes, INODES);
    let rec = off + (etc as usize - 1) * 28;
    let section = open_patched(&bytes, |b| {
        b[rec + 8..rec + 16].copy_from_slice(&sh.to_le_bytes())
    });
    // Found either as a directory not named in its parent, or as a parent that is not one.
    assert!(matches!(section, "inodes" | "dirents"), "{section}");
}

#[test]
fn directory_cycles_are_refused_at_open() {
    // / ─ a ─ c, / ─ b; then c's entry is pointed at a: a is its own grandchild.
    let mut t = Tree::new(dir(0o755));
    let a = t.add(0, "a", dir(0o755));
    t.add(0, "b", dir(0o755));
    t.add(a, "c", dir(0o755));
    let bytes = write_archive(&meta(), &layers(), &t).unwrap();
    let archive = Archive::open(&bytes).unwrap();
    let a_ino = archive.resolve("/a").unwrap().unwrap() as u32;
    let c_ino = archive.resolve("/a/c").unwrap().unwrap() as u32;
    let (off, len) = section(&bytes, DIRENTS);
    let entry = (0..len / 10)
        .map(|i| off + i * 10)
        .find(|&e| u32::from_le_bytes(bytes[e + 6..e + 10].try_into().unwrap()) == c_ino)
        .unwrap();
    let section = open_patched(&bytes, |b| {
        b[entry + 6..entry + 10].copy_from_slice(&a_ino.to_le_bytes())
    });
    assert_eq!(section, "dirents");
    // Pointing it at the root is refused too.
    let section = open_patched(&bytes, |b| {
        b[entry + 6..entry + 10].copy_from_slice(&1u32.to_le_bytes())
    });
    assert_eq!(section, "dirents");
}
