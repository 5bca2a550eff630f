//! Truncated, corrupted, foreign and newer files: always an error, never a panic.
//!
//! The checksum catches random damage at `open`; the "resealed" tests recompute it after the
//! damage to prove that the bounds checks behind it hold on their own.

mod common;

use clip_archive::testing::{exercise, reseal};
use clip_archive::*;
use common::*;

fn small() -> Vec<u8> {
    let mut t = Tree::new(dir(0o755));
    let d = t.add(0, "etc", dir(0o755));
    let mut f = file(0o644, 5, 0, 512);
    f.xattrs = vec![(b"user.a".to_vec(), b"b".to_vec())];
    let f = t.add(d, "hosts", f);
    t.link(0, "hosts-link", f);
    t.add(0, "sh", symlink(b"busybox"));
    t.add(0, "null", device(FileType::CharDevice, 1, 3));
    let mut l = layers();
    l[0].spans.truncate(2);
    l[0].spans[1].window = vec![7; 64];
    write_archive(&meta(), &l, &t).unwrap()
}

fn medium() -> Vec<u8> {
    let (tree, _) = full_tree();
    write_archive(&meta(), &layers(), &tree).unwrap()
}

#[test]
fn every_truncation_is_an_error() {
    let bytes = small();
    for len in 0..bytes.len() {
        let err = Archive::open(&bytes[..len]).unwrap_err();
        assert!(
            matches!(err, ArchiveError::Truncated { .. }),
            "length {len}: {err}"
        );
    }
    assert!(Archive::open(&bytes).is_ok());
}

#[test]
fn every_single_byte_flip_fails_open() {
    let bytes = small();
    let mut copy = bytes.clone();
    for i in 0..bytes.len() {
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
        let i = rng.below(bytes.len() as u64) as usize;
        let x = (rng.below(255) + 1) as u8;
        copy[i] ^= x;
        let err = Archive::open(&copy).unwrap_err();
        if i >= 32 {
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
    bytes[8..12].copy_from_slice(&2u32.to_le_bytes());
    let err = Archive::open(&bytes).unwrap_err();
    assert!(
        matches!(
            err,
            ArchiveError::UnsupportedVersion {
                found: 2,
                supported: FORMAT_VERSION
            }
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
