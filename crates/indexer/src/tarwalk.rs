//! One layer's tar stream → a list of [`LayerEntry`]s, with the data offset of every file in
//! the layer's uncompressed stream.
//!
//! Handles ustar, GNU (long names and link names, base-256 numbers) and PAX (long names, large
//! ids, fractional mtimes, `SCHILY.xattr.*`); skips PAX global headers; refuses sparse files.
//! Paths are normalized here and can never leave the root.

use std::io::Read;

use crate::{IndexError, LayerError};

/// A path inside the image, as normalized components (no empty, `.` or `..` components).
pub type PathComponents = Vec<Vec<u8>>;

/// The longest file name Linux accepts (`NAME_MAX`).
const NAME_MAX: usize = 255;

/// What a tar entry does to the merged tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryKind {
    Regular {
        offset: u64,
        size: u64,
    },
    Directory,
    Symlink {
        target: Vec<u8>,
    },
    Hardlink {
        target: PathComponents,
    },
    CharDevice {
        major: u32,
        minor: u32,
    },
    BlockDevice {
        major: u32,
        minor: u32,
    },
    Fifo,
    /// `.wh.NAME`: delete NAME from lower layers. `path` names NAME itself.
    Whiteout,
    /// `.wh..wh..opq`: hide lower-layer content of the directory. `path` names the directory.
    Opaque,
}

/// One entry of one layer, after normalization.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerEntry {
    pub path: PathComponents,
    pub kind: EntryKind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_sec: i64,
    pub mtime_nsec: u32,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Normalizes a tar path: drops `./`, leading `/` and `.`; `..` never climbs above the root.
pub fn normalize(path: &[u8]) -> PathComponents {
    let mut out: PathComponents = Vec::new();
    for part in path.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                out.pop();
            }
            name => out.push(name.to_vec()),
        }
    }
    out
}

/// Renders components as an absolute path for messages.
pub fn display(path: &[u8]) -> String {
    String::from_utf8_lossy(path).into_owned()
}

pub fn display_components(path: &[Vec<u8>]) -> String {
    let mut s = String::new();
    for c in path {
        s.push('/');
        s.push_str(&String::from_utf8_lossy(c));
    }
    if s.is_empty() {
        s.push('/');
    }
    s
}

/// Whether a normalized path lies in `/proc`, `/sys` or `/dev` (or is one of them).
pub fn is_runtime_path(path: &[Vec<u8>]) -> bool {
    matches!(
        path.first().map(Vec::as_slice),
        Some(b"proc" | b"sys" | b"dev")
    )
}

/// Walks a tar stream; `on_entry` is called for every kept entry (runtime directories are
/// dropped here). Stops at the end-of-archive marker; what follows is the caller's to read.
pub fn walk<R: Read>(
    reader: R,
    mut on_entry: impl FnMut(LayerEntry) -> Result<(), IndexError>,
) -> Result<(), LayerError> {
    let mut archive = tar::Archive::new(reader);
    let entries = archive.entries().map_err(|e| LayerError::tar("", 0, e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| LayerError::tar("", 0, e))?;
        let header_pos = entry.raw_header_position();
        let raw_path = entry.path_bytes().into_owned();
        let ctx = |detail: String| LayerError::Entry {
            path: display(&raw_path),
            offset: header_pos,
            detail,
        };
        let entry_type = entry.header().entry_type();
        if entry_type.is_pax_global_extensions() {
            continue;
        }
        if entry_type.is_gnu_sparse() {
            return Err(ctx(
                "sparse files (GNU sparse) are not supported; rebuild the layer without --sparse"
                    .into(),
            ));
        }

        let mut mtime_override = None;
        let mut xattrs = Vec::new();
        if let Some(pax) = entry.pax_extensions().map_err(|e| ctx(e.to_string()))? {
            for ext in pax {
                let ext = ext.map_err(|e| ctx(format!("bad PAX record: {e}")))?;
                let key = ext.key_bytes();
                if key.starts_with(b"GNU.sparse.") {
                    return Err(ctx(
                        "sparse files (PAX GNU.sparse) are not supported; rebuild the layer without sparse files"
                            .into(),
                    ));
                } else if key == b"mtime" {
                    mtime_override = Some(parse_pax_time(ext.value_bytes()).ok_or_else(|| {
                        ctx(format!("bad PAX mtime {:?}", display(ext.value_bytes())))
                    })?);
                } else if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                    xattrs.push((name.to_vec(), ext.value_bytes().to_vec()));
                }
            }
        }
        xattrs.sort();
        xattrs.dedup_by(|a, b| a.0 == b.0);

        let header = entry.header();
        let mode = header.mode().map_err(|e| ctx(format!("bad mode: {e}")))? & 0o7777;
        let uid = id32(header.uid(), "uid").map_err(ctx)?;
        let gid = id32(header.gid(), "gid").map_err(ctx)?;
        let (mtime_sec, mtime_nsec) = match mtime_override {
            Some(t) => t,
            None => {
                let m = header.mtime().map_err(|e| ctx(format!("bad mtime: {e}")))?;
                (
                    i64::try_from(m).map_err(|_| ctx(format!("mtime {m} out of range")))?,
                    0,
                )
            }
        };

        let path = normalize(&raw_path);
        if is_runtime_path(&path) {
            continue;
        }
        if let Some(name) = path.iter().find(|c| c.len() > NAME_MAX) {
            return Err(ctx(format!(
                "a path component is {} bytes long; Linux allows at most {NAME_MAX}",
                name.len()
            )));
        }

        // Whiteouts are recognised by name whatever their entry type.
        let name = path.last().map(Vec::as_slice).unwrap_or_default();
        if let Some(kind) = whiteout_kind(name) {
            // aufs bookkeeping (`.wh..wh.plnk` and friends) is not content.
            let Some(kind) = kind else { continue };
            let target = whiteout_target(path, &kind);
            if is_runtime_path(&target) {
                continue;
            }
            on_entry(LayerEntry {
                path: target,
                kind,
                mode,
                uid,
                gid,
                mtime_sec,
                mtime_nsec,
                xattrs,
            })
            .map_err(|e| ctx(e.to_string()))?;
            continue;
        }

        use tar::EntryType as T;
        let (path, kind) = match entry_type {
            T::Regular | T::Continuous => {
                let size = entry.size();
                (
                    path,
                    EntryKind::Regular {
                        offset: entry.raw_file_position(),
                        size,
                    },
                )
            }
            T::Directory => (path, EntryKind::Directory),
            T::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| ctx("symlink without a target".into()))?
                    .into_owned();
                (path, EntryKind::Symlink { target })
            }
            T::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| ctx("hardlink without a target".into()))?;
                let target = normalize(&target);
                if is_runtime_path(&target) {
                    // Its target was dropped with the runtime directories; so is the link.
                    continue;
                }
                (path, EntryKind::Hardlink { target })
            }
            T::Char | T::Block => {
                let major = header
                    .device_major()
                    .map_err(|e| ctx(format!("bad device major: {e}")))?
                    .unwrap_or(0);
                let minor = header
                    .device_minor()
                    .map_err(|e| ctx(format!("bad device minor: {e}")))?
                    .unwrap_or(0);
                if entry_type == T::Char {
                    (path, EntryKind::CharDevice { major, minor })
                } else {
                    (path, EntryKind::BlockDevice { major, minor })
                }
            }
            T::Fifo => (path, EntryKind::Fifo),
            other => {
                return Err(ctx(format!(
                    "unsupported tar entry type {:?} ({:?})",
                    other.as_byte() as char,
                    other
                )))
            }
        };
        if path.is_empty() && kind != EntryKind::Directory && kind != EntryKind::Opaque {
            return Err(ctx("the image root must be a directory".into()));
        }
        on_entry(LayerEntry {
            path,
            kind,
            mode,
            uid,
            gid,
            mtime_sec,
            mtime_nsec,
            xattrs,
        })
        .map_err(|e| ctx(e.to_string()))?;
    }
    Ok(())
}

/// `Some(Some(kind))` for a whiteout or opaque marker, `Some(None)` for other `.wh..wh.`
/// bookkeeping names, `None` for ordinary names.
fn whiteout_kind(name: &[u8]) -> Option<Option<EntryKind>> {
    if name == b".wh..wh..opq" {
        Some(Some(EntryKind::Opaque))
    } else if name.starts_with(b".wh..wh.") {
        Some(None)
    } else if name.starts_with(b".wh.") && name.len() > 4 {
        Some(Some(EntryKind::Whiteout))
    } else {
        None
    }
}

/// The path a whiteout acts on: the directory for an opaque marker, the hidden name otherwise.
fn whiteout_target(mut path: PathComponents, kind: &EntryKind) -> PathComponents {
    match kind {
        EntryKind::Opaque => {
            path.pop();
        }
        _ => {
            if let Some(last) = path.last_mut() {
                last.drain(..4);
            }
        }
    }
    path
}

fn id32(v: std::io::Result<u64>, what: &str) -> Result<u32, String> {
    let v = v.map_err(|e| format!("bad {what}: {e}"))?;
    u32::try_from(v).map_err(|_| format!("{what} {v} does not fit in 32 bits"))
}

/// Parses a PAX time (`[-]SECONDS[.FRACTION]`) into seconds and nanoseconds, the nanoseconds
/// always counting forward (so `-1.25` is `(-2, 750_000_000)`).
pub fn parse_pax_time(value: &[u8]) -> Option<(i64, u32)> {
    let s = std::str::from_utf8(value).ok()?.trim();
    let (neg, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: i64 = int.parse().ok()?;
    let mut nanos: u32 = 0;
    for (i, d) in frac.bytes().take(9).enumerate() {
        nanos += u32::from(d - b'0') * 10u32.pow(8 - i as u32);
    }
    if neg {
        if nanos == 0 {
            Some((secs.checked_neg()?, 0))
        } else {
            Some((secs.checked_neg()?.checked_sub(1)?, 1_000_000_000 - nanos))
        }
    } else {
        Some((secs, nanos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_never_escape_the_root() {
        let n = |p: &str| display_components(&normalize(p.as_bytes()));
        assert_eq!(n("./etc/passwd"), "/etc/passwd");
        assert_eq!(n("/etc//./passwd"), "/etc/passwd");
        assert_eq!(n("../../etc/passwd"), "/etc/passwd");
        assert_eq!(n("usr/../../../x"), "/x");
        assert_eq!(n("./"), "/");
        assert_eq!(n("a/b/.."), "/a");
    }

    #[test]
    fn runtime_dirs() {
        assert!(is_runtime_path(&normalize(b"./proc")));
        assert!(is_runtime_path(&normalize(b"dev/null")));
        assert!(!is_runtime_path(&normalize(b"devices/x")));
        assert!(!is_runtime_path(&normalize(b"usr/proc")));
    }

    #[test]
    fn pax_times() {
        assert_eq!(
            parse_pax_time(b"1700000000.123456789"),
            Some((1700000000, 123456789))
        );
        assert_eq!(
            parse_pax_time(b"1700000000.5"),
            Some((1700000000, 500000000))
        );
        assert_eq!(parse_pax_time(b"12"), Some((12, 0)));
        assert_eq!(parse_pax_time(b"-1.25"), Some((-2, 750000000)));
        assert_eq!(parse_pax_time(b"1.1234567891"), Some((1, 123456789)));
        assert_eq!(parse_pax_time(b"x"), None);
        assert_eq!(parse_pax_time(b"1.x"), None);
        assert_eq!(parse_pax_time(b""), None);
    }

    #[test]
    fn whiteouts() {
        assert_eq!(
            whiteout_kind(b".wh..wh..opq"),
            Some(Some(EntryKind::Opaque))
        );
        assert_eq!(whiteout_kind(b".wh.foo"), Some(Some(EntryKind::Whiteout)));
        assert_eq!(whiteout_kind(b".wh..wh.plnk"), Some(None));
        assert_eq!(whiteout_kind(b"foo"), None);
        let p = whiteout_target(normalize(b"a/.wh.b"), &EntryKind::Whiteout);
        assert_eq!(display_components(&p), "/a/b");
        let p = whiteout_target(normalize(b"a/.wh..wh..opq"), &EntryKind::Opaque);
        assert_eq!(display_components(&p), "/a");
    }
}
