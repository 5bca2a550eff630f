//! Fuzzes the `.clip` reader: opens arbitrary bytes and, when that succeeds, walks the whole
//! tree and reads every inode, directory, xattr, symlink, span and window.
//!
//! Errors are fine, panics are bugs.
//!
//! Random bytes almost never carry a valid header, so each input is also tried with its magic,
//! version, lengths and checksum fixed up (the metadata length kept when it lies within the
//! file, else the whole file, a metadata-only index): that fuzzes the bounds checks behind the
//! checksum.
#![no_main]

use clip_archive::{testing, Archive};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(archive) = Archive::open(data) {
        testing::exercise(&archive);
    }
    let mut sealed = data.to_vec();
    let len = sealed.len() as u64;
    if let Some(field) = sealed.get_mut(0..8) {
        field.copy_from_slice(&clip_archive::MAGIC);
    }
    if let Some(field) = sealed.get_mut(8..12) {
        field.copy_from_slice(&clip_archive::FORMAT_VERSION.to_le_bytes());
    }
    if let Some(field) = sealed.get_mut(16..24) {
        field.copy_from_slice(&len.to_le_bytes());
    }
    if let Some(field) = sealed.get_mut(40..48) {
        let stated = u64::from_le_bytes(field.try_into().unwrap_or([0; 8]));
        let metadata_len = if (304..=len).contains(&stated) { stated } else { len };
        field.copy_from_slice(&metadata_len.to_le_bytes());
    }
    testing::reseal(&mut sealed);
    if let Ok(archive) = Archive::open(&sealed) {
        testing::exercise(&archive);
    }
});
