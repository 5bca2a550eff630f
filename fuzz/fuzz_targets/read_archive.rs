//! Fuzzes the `.clip` reader: opens arbitrary bytes and, when that succeeds, walks the whole
//! tree and reads every inode, directory, xattr, symlink, span and window.
//!
//! Errors are fine, panics are bugs.
//!
//! Random bytes almost never carry a valid checksum, so each input is also tried with its
//! header length and checksum fixed up: that fuzzes the bounds checks behind the checksum.
#![no_main]

use clip_archive::{testing, Archive};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(archive) = Archive::open(data) {
        testing::exercise(&archive);
    }
    let mut sealed = data.to_vec();
    let len = sealed.len() as u64;
    if let Some(field) = sealed.get_mut(16..24) {
        field.copy_from_slice(&len.to_le_bytes());
    }
    testing::reseal(&mut sealed);
    if let Ok(archive) = Archive::open(&sealed) {
        testing::exercise(&archive);
    }
});
