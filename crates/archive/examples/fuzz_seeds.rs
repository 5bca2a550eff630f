//! Writes seed inputs for the `read_archive` fuzz target: small valid archives of the current
//! format, complete and metadata-only, so that the fuzzer starts from files that get past the
//! header and explores the reader behind it (`fuzz/run.sh` runs this before fuzzing).
//!
//!   cargo run -p clip-archive --example fuzz_seeds -- DIR

#[path = "../tests/common/mod.rs"]
mod common;

use clip_archive::{write_archive, Archive};
use common::*;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args_os().nth(1).ok_or("usage: fuzz_seeds DIR")?;
    let dir = std::path::PathBuf::from(dir);
    std::fs::create_dir_all(&dir)?;

    let (full, _) = full_tree();
    let seeds = [
        ("small", small_archive()),
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
