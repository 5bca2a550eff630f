//! One cache entry on disk: its 64-byte header, and checking its content against the digest
//! the index records for the span.
//!
//! | offset | size | field     | meaning |
//! |-------:|-----:|-----------|---------|
//! | 0      | 8    | magic     | `"CLIPSPAN"` |
//! | 8      | 4    | version   | u32 LE, [`VERSION`] |
//! | 12     | 4    | reserved  | zero |
//! | 16     | 8    | len       | u64 LE, content length |
//! | 24     | 8    | reserved  | zero |
//! | 32     | 32   | digest    | sha256 of the content: the span's content digest in the index |

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt as _;

use sha2::{Digest as _, Sha256};

/// Length of an entry's header; content starts here. Changing it is a cache format break.
pub(crate) const HEADER_LEN: u64 = 64;
/// First bytes of every entry. Changing it is a cache format break.
const MAGIC: [u8; 8] = *b"CLIPSPAN";
/// Entry format version. Changing the layout above is a cache format break: bump it and
/// [`super::LAYOUT_DIR`].
pub(crate) const VERSION: u32 = 2;
/// Buffer for hashing an entry.
const VERIFY_CHUNK: usize = 256 * 1024;

/// The header of an entry with `len` content bytes whose sha256 is `digest`.
pub(crate) fn encode_header(len: u64, digest: &[u8; 32]) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[0..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[16..24].copy_from_slice(&len.to_le_bytes());
    h[32..64].copy_from_slice(digest);
    h
}

/// Reads and checks the fixed fields of an entry's header; returns the digest it records.
/// `Ok(Err(problem))` is a corrupt entry.
pub(crate) fn read_header(file: &File, len: u64) -> io::Result<Result<[u8; 32], String>> {
    let mut header = [0u8; HEADER_LEN as usize];
    if let Err(e) = file.read_exact_at(&mut header, 0) {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            return Ok(Err("shorter than its header".into()));
        }
        return Err(e);
    }
    let mut u32_at = [0u8; 4];
    let mut u64_at = [0u8; 8];
    if header[0..8] != MAGIC {
        return Ok(Err("bad magic".into()));
    }
    u32_at.copy_from_slice(&header[8..12]);
    let version = u32::from_le_bytes(u32_at);
    if version != VERSION || header[12..16] != [0; 4] || header[24..32] != [0; 8] {
        return Ok(Err(format!("version {version}, or reserved bytes set")));
    }
    u64_at.copy_from_slice(&header[16..24]);
    let stored = u64::from_le_bytes(u64_at);
    if stored != len {
        return Ok(Err(format!(
            "header says {stored} content bytes, expected {len}"
        )));
    }
    let mut digest = [0u8; 32];
    digest.copy_from_slice(&header[32..64]);
    Ok(Ok(digest))
}

/// Hashes an entry's `len` content bytes and compares with `expected`. `Ok(Err(problem))` is
/// a corrupt entry.
pub(crate) fn check_content(
    file: &File,
    len: u64,
    expected: &[u8; 32],
) -> io::Result<Result<(), String>> {
    let mut hasher = Sha256::new();
    let mut buf = vec![
        0u8;
        VERIFY_CHUNK
            .min(usize::try_from(len).unwrap_or(VERIFY_CHUNK))
            .max(1)
    ];
    let mut pos = 0u64;
    while pos < len {
        let want = usize::try_from(len - pos).map_or(buf.len(), |n| n.min(buf.len()));
        match file.read_at(&mut buf[..want], HEADER_LEN + pos) {
            Ok(0) => return Ok(Err(format!("ends after {pos} of {len} content bytes"))),
            Ok(n) => {
                hasher.update(&buf[..n]);
                pos += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let found: [u8; 32] = hasher.finalize().into();
    if found != *expected {
        return Ok(Err(format!(
            "content sha256 {}, the index says {}",
            hex::encode(found),
            hex::encode(expected)
        )));
    }
    Ok(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    fn entry(content: &[u8], digest: &[u8; 32]) -> File {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&encode_header(content.len() as u64, digest))
            .unwrap();
        f.write_all(content).unwrap();
        f
    }

    #[test]
    fn headers_round_trip_and_damage_is_named() {
        let digest: [u8; 32] = Sha256::digest(b"hello").into();
        let f = entry(b"hello", &digest);
        assert_eq!(read_header(&f, 5).unwrap().unwrap(), digest);
        assert!(check_content(&f, 5, &digest).unwrap().is_ok());
        assert!(read_header(&f, 6)
            .unwrap()
            .unwrap_err()
            .contains("content bytes"));
        f.write_all_at(b"j", HEADER_LEN).unwrap();
        let problem = check_content(&f, 5, &digest).unwrap().unwrap_err();
        assert!(problem.contains("the index says"), "{problem}");
        f.write_all_at(&3u32.to_le_bytes(), 8).unwrap();
        assert!(read_header(&f, 5).unwrap().is_err());
        let empty = tempfile::tempfile().unwrap();
        assert!(read_header(&empty, 0)
            .unwrap()
            .unwrap_err()
            .contains("shorter"));
    }
}
