//! The size target: at most 64 bytes per entry on average, seek windows aside.

mod common;

use std::time::Instant;

use clip_archive::*;
use common::*;

/// Bytes per entry without windows, after printing the breakdown.
fn measure(what: &str, tree: &Tree) -> f64 {
    let names: Vec<usize> = tree
        .children
        .iter()
        .flatten()
        .map(|(name, _)| name.len())
        .collect();
    let avg_name = names.iter().sum::<usize>() as f64 / names.len() as f64;
    let bytes = write_archive(&meta(), &[synthetic_layer()], tree).unwrap();
    let a = Archive::open(&bytes).unwrap();
    let s = a.section_sizes();
    let entries = a.entry_count();
    let per_entry = (s.total - s.windows) as f64 / entries as f64;
    println!(
        "{what}: {entries} entries ({} inodes, {} distinct mtimes), names {avg_name:.1} bytes \
         on average: {} bytes, {per_entry:.1} bytes/entry without windows \
         (inodes {}, dirents {}, strings {}, attrs {}, mtimes {}, meta {}, spans {}, header {})",
        a.inode_count(),
        s.mtimes / 12,
        s.total,
        s.inodes,
        s.dirents,
        s.strings,
        s.attrs,
        s.mtimes,
        s.meta,
        s.spans,
        s.header,
    );
    assert!(entries >= 10_000);
    assert!(
        (11.0..14.0).contains(&avg_name),
        "names should look realistic: {avg_name}"
    );
    per_entry
}

#[test]
fn at_most_64_bytes_per_entry_without_windows() {
    // Few distinct mtimes, as in real images (a layer's build time, a package's release).
    let tree = synthetic_tree(10_000, 300, 99);
    let per_entry = measure("synthetic", &tree);
    assert!(per_entry <= 64.0, "{per_entry:.1} bytes per entry");
}

#[test]
fn at_most_64_bytes_per_entry_even_when_every_mtime_differs() {
    // The worst case for the MTIMES table: one 12-byte record per inode on top of the inode's
    // 4-byte index (the old inline layout cost 12).
    let mut tree = synthetic_tree(10_000, 300, 99);
    for (i, inode) in tree.inodes.iter_mut().enumerate() {
        inode.mtime_sec = 1_700_000_000 + i as i64;
        inode.mtime_nsec = (i as u32 * 7_919) % 1_000_000_000;
    }
    let per_entry = measure("every mtime distinct", &tree);
    assert!(per_entry <= 64.0, "{per_entry:.1} bytes per entry");
}

#[test]
fn open_of_100k_entries_is_cheap() {
    // Reports only: tests do not assert timings (see the benchmarks).
    let tree = synthetic_tree(100_000, 3_000, 5);
    let bytes = write_archive(&meta(), &[synthetic_layer()], &tree).unwrap();
    let start = Instant::now();
    let a = Archive::open(&bytes).unwrap();
    let opened = start.elapsed();
    let start = Instant::now();
    let mut found = 0;
    for (path, ino) in a.walk().map(Result::unwrap).step_by(97) {
        assert_eq!(a.resolve_bytes(&path).unwrap(), Some(ino));
        found += 1;
    }
    let resolved = start.elapsed();
    println!(
        "{} entries, {} bytes: open {:?}; walk + {found} resolves {:?}",
        a.entry_count(),
        bytes.len(),
        opened,
        resolved
    );
}
