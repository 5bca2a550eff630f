//! The size target: at most 64 bytes per entry on average, seek windows aside.

mod common;

use std::time::Instant;

use clip_archive::*;
use common::*;

#[test]
fn at_most_64_bytes_per_entry_without_windows() {
    let tree = synthetic_tree(10_000, 300, 99);
    let names: Vec<usize> = tree
        .children
        .iter()
        .flatten()
        .map(|(name, _)| name.len())
        .collect();
    let avg_name = names.iter().sum::<usize>() as f64 / names.len() as f64;
    let bytes = write_archive(&meta(), &[synthetic_layer()], &tree).unwrap();
    let a = Archive::open(&bytes).unwrap();
    let s = a.section_sizes();
    let entries = a.entry_count();
    let per_entry = (s.total - s.windows) as f64 / entries as f64;
    println!(
        "{entries} entries ({} inodes), names {avg_name:.1} bytes on average: {} bytes, \
         {per_entry:.1} bytes/entry without windows \
         (inodes {}, dirents {}, strings {}, attrs {}, meta {}, spans {}, header {})",
        a.inode_count(),
        s.total,
        s.inodes,
        s.dirents,
        s.strings,
        s.attrs,
        s.meta,
        s.spans,
        s.header,
    );
    assert!(entries >= 10_000);
    assert!(
        (11.0..14.0).contains(&avg_name),
        "names should look realistic: {avg_name}"
    );
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
