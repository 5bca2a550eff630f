//! Writes seed inputs for the `read_archive` fuzz target: small valid archives of the current
//! format, complete and metadata-only, so that the fuzzer starts from files that get past the
//! header and explores the reader behind it (`fuzz/run.sh` runs this before fuzzing).
//!
//!   cargo run -p clip-archive --example fuzz_seeds -- DIR

#[path = "../tests/common/mod.rs"]
mod common;

use clip_archive::{write_archive, Archive, FileType, Tree, Window};
use common::*;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args_os().nth(1).ok_or("usage: fuzz_seeds DIR")?;
    let dir = std::path::PathBuf::from(dir);
    std::fs::create_dir_all(&dir)?;

    // A few entries of every kind, three layers, one window.
    let mut small = Tree::new(dir_inode());
    let etc = small.add(0, "etc", dir_inode());
    let mut hosts = file(0o644, 5, 0, 512);
    hosts.xattrs = vec![(b"user.a".to_vec(), b"b".to_vec())];
    let hosts = small.add(etc, "hosts", hosts);
    small.link(0, "hosts-link", hosts);
    small.add(0, "sh", symlink(b"busybox"));
    small.add(0, "null", device(FileType::CharDevice, 1, 3));
    let mut small_layers = layers();
    small_layers[0].spans.truncate(2);
    small_layers[0].spans[1].window = Window::new(&[7; 64])?;

    let (full, _) = full_tree();
    let seeds = [
        ("small", write_archive(&meta(), &small_layers, &small)?),
        ("full", write_archive(&meta(), &layers(), &full)?),
    ];
    for (name, bytes) in seeds {
        let metadata_len = usize::try_from(Archive::open(&bytes)?.metadata_len())?;
        std::fs::write(dir.join(format!("seed-{name}")), &bytes)?;
        std::fs::write(
            dir.join(format!("seed-{name}-metadata")),
            bytes.get(..metadata_len).ok_or("metadata length")?,
        )?;
    }
    Ok(())
}

fn dir_inode() -> clip_archive::Inode {
    dir(0o755)
}
