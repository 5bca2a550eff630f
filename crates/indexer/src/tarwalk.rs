//! One layer's tar stream → a list of [`LayerEntry`]s, with the data offset of every file in
//! the layer's uncompressed stream.
//!
//! The bytes are read by [`crate::tar`] (Go's `archive/tar` rules); this module owns what an
//! entry means to the image: names normalized so that they can never leave the root, the runtime
//! directories dropped, whiteouts recognised by name, the entry types an unpack accepts, owners
//! and modes as an unpack applies them, the xattr policy of umoci and Linux (forbidden xattrs and
//! unknown namespaces left out, what the kernel refuses refused), and the limits on names
//! (`PATH_MAX`, `NAME_MAX`). Sparse files are refused.

use std::io::Read;

use crate::tar::{excerpt, Header, TarError, TarReader};
use crate::{IndexError, LayerError};

/// A path inside the image, as normalized components (no empty, `.` or `..` components).
pub type PathComponents = Vec<Vec<u8>>;

/// The longest file name Linux accepts (`NAME_MAX`).
pub const NAME_MAX: usize = 255;

/// The longest name or link target accepted: Linux's `PATH_MAX` (4096) counts the terminating
/// NUL.
pub const PATH_MAX: usize = 4095;

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

/// Renders components as an absolute path for messages: quoted and escaped, cut after 100
/// bytes (see [`excerpt`]).
pub fn display_components(path: &[Vec<u8>]) -> String {
    let mut s = Vec::new();
    for c in path {
        s.push(b'/');
        s.extend_from_slice(c);
    }
    if s.is_empty() {
        s.push(b'/');
    }
    excerpt(&s)
}

/// Whether a normalized path lies in `/proc`, `/sys` or `/dev` (or is one of them).
pub fn is_runtime_path(path: &[Vec<u8>]) -> bool {
    matches!(
        path.first().map(Vec::as_slice),
        Some(b"proc" | b"sys" | b"dev")
    )
}

/// Extended attributes umoci never sets ("ignoring forbidden xattr"): host-specific labels,
/// and overlayfs bookkeeping ([`clip_archive::OVERLAYFS_PRIVATE_XATTRS`]).
fn is_forbidden_xattr(name: &[u8]) -> bool {
    name == b"security.selinux"
        || name == b"system.nfs4_acl"
        || clip_archive::OVERLAYFS_PRIVATE_XATTRS.contains(&name)
}

/// The longest xattr name Linux accepts (`XATTR_NAME_MAX`).
const XATTR_NAME_MAX: usize = 255;
/// The largest xattr value Linux accepts (`XATTR_SIZE_MAX`).
const XATTR_SIZE_MAX: usize = 65536;

/// Extended attributes, `(name, value)`, by name.
type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

/// What the xattr policy set aside in one layer, for one warning.
#[derive(Default)]
struct Dropped {
    count: u64,
    example: Option<(String, String)>,
}

/// Walks a tar stream; `on_entry` is called for every kept entry (runtime directories are
/// dropped here). Stops at the end-of-archive marker; what follows is the caller's to read.
pub fn walk<R: Read>(
    reader: R,
    mut on_entry: impl FnMut(LayerEntry) -> Result<(), IndexError>,
) -> Result<(), LayerError> {
    let mut tar = TarReader::new(reader);
    let mut dropped = Dropped::default();
    while let Some(header) = tar.next_header().map_err(tar_error)? {
        let offset = header.offset;
        let ctx = |detail: String| LayerError::Entry {
            path: excerpt(&header.name),
            offset,
            detail,
        };
        if let Some(entry) = entry_of(&header, &mut dropped).map_err(ctx)? {
            on_entry(entry).map_err(|e| ctx(e.to_string()))?;
        }
    }
    if let Some((name, path)) = dropped.example {
        tracing::warn!(
            "the layer sets {} extended attribute(s) that an unpack leaves out (such as {name} on \
             {path}): host-specific labels and overlayfs bookkeeping are not part of an image",
            dropped.count
        );
    }
    Ok(())
}

/// Stream failures stay what they are (registry, decompression); tar rule violations are tar
/// errors.
fn tar_error(e: TarError) -> LayerError {
    match e {
        TarError::Read { source, .. } => LayerError::Read(source),
        other => LayerError::Tar(other),
    }
}

/// The entry a header makes, `None` for one that is dropped; `Err` says why it cannot be
/// indexed.
fn entry_of(h: &Header, dropped: &mut Dropped) -> Result<Option<LayerEntry>, String> {
    if h.sparse {
        return Err(
            "sparse files are not supported; rebuild the layer without sparse files \
                    (GNU tar --sparse, or PAX GNU.sparse records)"
                .into(),
        );
    }
    if h.name.len() > PATH_MAX {
        return Err(format!(
            "the name is {} bytes long; Linux allows at most {PATH_MAX} (PATH_MAX)",
            h.name.len()
        ));
    }
    let path = normalize(&h.name);
    if let Some(name) = path.iter().find(|c| c.len() > NAME_MAX) {
        return Err(format!(
            "a path component is {} bytes long; Linux allows at most {NAME_MAX} (NAME_MAX)",
            name.len()
        ));
    }
    if is_runtime_path(&path) {
        return Ok(None);
    }
    if path.is_empty() && h.typeflag != b'5' {
        // An unpack refuses to change the root's type (it could become a symlink).
        return Err("the image root must be a directory".into());
    }
    let mode = (h.mode as u64 & 0o7777) as u32;
    let uid = owner(h.uid, "uid")?;
    let gid = owner(h.gid, "gid")?;
    let mut entry = LayerEntry {
        path,
        kind: EntryKind::Directory,
        mode,
        uid,
        gid,
        mtime_sec: h.mtime_sec,
        mtime_nsec: h.mtime_nsec,
        xattrs: Vec::new(),
    };

    // Whiteouts are recognised by name whatever their entry type.
    let name = entry.path.last().map(Vec::as_slice).unwrap_or_default();
    if let Some(kind) = whiteout_kind(name)? {
        // aufs bookkeeping (`.wh..wh.plnk` and friends) is not content.
        let Some(kind) = kind else { return Ok(None) };
        let target = whiteout_target(std::mem::take(&mut entry.path), &kind);
        if is_runtime_path(&target) {
            return Ok(None);
        }
        entry.path = target;
        entry.kind = kind;
        return Ok(Some(entry));
    }

    let link = || -> Result<&[u8], String> {
        if h.linkname.is_empty() {
            return Err("a link without a target".into());
        }
        if h.linkname.len() > PATH_MAX {
            return Err(format!(
                "the link target is {} bytes long; Linux allows at most {PATH_MAX} (PATH_MAX)",
                h.linkname.len()
            ));
        }
        Ok(&h.linkname)
    };
    entry.kind = match h.typeflag {
        b'0' => EntryKind::Regular {
            offset: h.data_offset(),
            size: h.size,
        },
        b'5' => EntryKind::Directory,
        b'2' => {
            // Linux symlinks have no mode of their own.
            entry.mode = 0o777;
            EntryKind::Symlink {
                target: link()?.to_vec(),
            }
        }
        b'1' => {
            let target = normalize(link()?);
            if is_runtime_path(&target) {
                // Its target was dropped with the runtime directories; so is the link.
                return Ok(None);
            }
            // A hardlink has no metadata of its own: it is its target's inode.
            return Ok(Some(LayerEntry {
                kind: EntryKind::Hardlink { target },
                ..entry
            }));
        }
        b'3' | b'4' => {
            // mknod(2) takes a 32-bit dev_t: 12 bits of major, 20 of minor (an unpack
            // truncates larger numbers the same way).
            let major = (h.devmajor as u32) & 0xfff;
            let minor = (h.devminor as u32) & 0xf_ffff;
            if h.typeflag == b'3' {
                EntryKind::CharDevice { major, minor }
            } else {
                EntryKind::BlockDevice { major, minor }
            }
        }
        b'6' => EntryKind::Fifo,
        other => {
            return Err(format!(
                "unsupported tar entry type {:?}{}; docker, containerd and umoci refuse it too",
                char::from(other),
                match other {
                    b'7' => " (contiguous file)",
                    b'V' => " (GNU volume header)",
                    b'M' => " (GNU multi-volume continuation)",
                    b'D' => " (GNU dump directory)",
                    _ => "",
                }
            ))
        }
    };
    entry.xattrs = xattr_policy(&h.xattrs, &entry.kind, &entry.path, dropped)?;
    Ok(Some(entry))
}

/// The owner an unpack gives: `-1` (and its 32-bit form) leaves the owner unchanged, which as
/// root is root; anything else must fit in 32 bits.
fn owner(id: i64, what: &str) -> Result<u32, String> {
    match id {
        -1 | 0xffff_ffff => Ok(0),
        id => u32::try_from(id).map_err(|_| format!("{what} {id} does not fit in 32 bits")),
    }
}

/// The xattrs an unpack sets, as Linux and umoci decide: forbidden ones and unknown
/// namespaces are left out (umoci skips the first and ignores the `EOPNOTSUPP` of the second);
/// what the kernel refuses with another error (and so fails an unpack) is an error here.
fn xattr_policy(
    xattrs: &[(Vec<u8>, Vec<u8>)],
    kind: &EntryKind,
    path: &[Vec<u8>],
    dropped: &mut Dropped,
) -> Result<Xattrs, String> {
    let mut out = Vec::with_capacity(xattrs.len());
    for (name, value) in xattrs {
        let shown = || excerpt(name);
        if is_forbidden_xattr(name) {
            dropped.count += 1;
            dropped
                .example
                .get_or_insert_with(|| (shown(), display_components(path)));
            continue;
        }
        if name.is_empty() || name.len() > XATTR_NAME_MAX {
            return Err(format!(
                "extended attribute name {} is {} bytes long; Linux allows 1 to \
                 {XATTR_NAME_MAX}",
                shown(),
                name.len()
            ));
        }
        if value.len() > XATTR_SIZE_MAX {
            return Err(format!(
                "extended attribute {} has a {}-byte value; Linux allows at most \
                 {XATTR_SIZE_MAX}",
                shown(),
                value.len()
            ));
        }
        let Some(suffix) = [&b"user."[..], b"trusted.", b"security."]
            .iter()
            .find_map(|ns| name.strip_prefix(*ns))
            .or_else(|| {
                matches!(
                    name.as_slice(),
                    b"system.posix_acl_access" | b"system.posix_acl_default"
                )
                .then_some(&b"-"[..])
            })
        else {
            // No such namespace on Linux: setxattr fails with EOPNOTSUPP, which unpacks skip.
            continue;
        };
        if suffix.is_empty() {
            return Err(format!(
                "extended attribute name {} has an empty name after its namespace",
                shown()
            ));
        }
        if name.starts_with(b"user.")
            && !matches!(kind, EntryKind::Regular { .. } | EntryKind::Directory)
        {
            return Err(format!(
                "extended attribute {} is in the user namespace, which Linux allows only on \
                 regular files and directories",
                shown()
            ));
        }
        if name == b"security.capability" && !valid_capability(value) {
            return Err(format!(
                "security.capability holds {} bytes that are not a version 2 (20 bytes) or \
                 version 3 (24 bytes) file capability, which Linux refuses",
                value.len()
            ));
        }
        out.push((name.clone(), value.clone()));
    }
    Ok(out)
}

/// Whether Linux accepts this `security.capability` value (`cap_convert_nscap`).
fn valid_capability(value: &[u8]) -> bool {
    let Some(magic) = value.get(..4) else {
        return false;
    };
    let revision = u32::from_le_bytes([magic[0], magic[1], magic[2], magic[3]]) & 0xff00_0000;
    matches!(
        (value.len(), revision),
        (20, 0x0200_0000) | (24, 0x0300_0000)
    )
}

/// `Some(Some(kind))` for a whiteout or opaque marker, `Some(None)` for other `.wh..wh.`
/// bookkeeping names, `None` for ordinary names.
fn whiteout_kind(name: &[u8]) -> Result<Option<Option<EntryKind>>, String> {
    Ok(if name == b".wh..wh..opq" {
        Some(Some(EntryKind::Opaque))
    } else if name.starts_with(b".wh..wh.") {
        Some(None)
    } else if name.starts_with(b".wh.") {
        // A bare `.wh.` names the directory holding it: its target ends in an empty name.
        Some(Some(EntryKind::Whiteout))
    } else {
        None
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_never_escape_the_root() {
        let n = |p: &str| display_components(&normalize(p.as_bytes())).replace('"', "");
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
    fn whiteouts() {
        assert_eq!(
            whiteout_kind(b".wh..wh..opq"),
            Ok(Some(Some(EntryKind::Opaque)))
        );
        assert_eq!(
            whiteout_kind(b".wh.foo"),
            Ok(Some(Some(EntryKind::Whiteout)))
        );
        assert_eq!(whiteout_kind(b".wh..wh.plnk"), Ok(Some(None)));
        assert_eq!(whiteout_kind(b"foo"), Ok(None));
        assert_eq!(whiteout_kind(b".wh."), Ok(Some(Some(EntryKind::Whiteout))));
        let p = whiteout_target(normalize(b"a/.wh.b"), &EntryKind::Whiteout);
        assert_eq!(display_components(&p), "\"/a/b\"");
        let p = whiteout_target(normalize(b"a/.wh..wh..opq"), &EntryKind::Opaque);
        assert_eq!(display_components(&p), "\"/a\"");
    }

    fn header(name: &str, typeflag: u8) -> Header {
        Header {
            offset: 1024,
            format: crate::tar::Format::Ustar,
            typeflag,
            name: name.as_bytes().to_vec(),
            linkname: b"target".to_vec(),
            size: 0,
            mode: 0o100755,
            uid: -1,
            gid: 0xffff_ffff,
            mtime_sec: 1,
            mtime_nsec: 0,
            devmajor: 0x1_0003,
            devminor: 0x12_3456,
            xattrs: Vec::new(),
            sparse: false,
        }
    }

    fn entry(h: &Header) -> Result<Option<LayerEntry>, String> {
        entry_of(h, &mut Dropped::default())
    }

    #[test]
    fn entries_as_an_unpack_makes_them() {
        let e = entry(&header("bin/tool", b'0')).unwrap().unwrap();
        assert_eq!((e.mode, e.uid, e.gid), (0o755, 0, 0));
        let e = entry(&header("l", b'2')).unwrap().unwrap();
        assert_eq!(e.mode, 0o777, "symlinks have no mode of their own");
        let e = entry(&header("c", b'3')).unwrap().unwrap();
        assert_eq!(
            e.kind,
            EntryKind::CharDevice {
                major: 3,
                minor: 0x2_3456
            }
        );
        assert_eq!(entry(&header("dev/null", b'3')).unwrap(), None);
        let mut big = header("f", b'0');
        big.uid = 1 << 32;
        assert!(entry(&big).unwrap_err().contains("does not fit in 32 bits"));
        for bad in [b'7', b'V', b'D', b'x'] {
            assert!(entry(&header("f", bad))
                .unwrap_err()
                .contains("unsupported tar entry type"));
        }
        let mut long = header("f", b'0');
        long.name = vec![b'a'; PATH_MAX + 1];
        assert!(entry(&long).unwrap_err().contains("PATH_MAX"));
        let mut sparse = header("f", b'0');
        sparse.sparse = true;
        assert!(entry(&sparse).unwrap_err().contains("sparse"));
        assert!(entry(&header("./", b'0')).unwrap_err().contains("root"));
    }

    #[test]
    fn xattr_policy_of_umoci_and_linux() {
        let x = |n: &str, v: &[u8]| (n.as_bytes().to_vec(), v.to_vec());
        let mut cap = vec![0, 0, 0, 2];
        cap.resize(20, 0);
        let mut h = header("f", b'0');
        h.xattrs = vec![
            x("foreign.ns", b"1"),
            x("security.capability", &cap),
            x("security.selinux", b"l"),
            x("system.posix_acl_access", b"a"),
            x("system.other", b"1"),
            x("trusted.overlay.opaque", b"y"),
            x("trusted.overlay.other", b"1"),
            x("user.a", b"1"),
        ];
        let mut dropped = Dropped::default();
        let e = entry_of(&h, &mut dropped).unwrap().unwrap();
        let names: Vec<&[u8]> = e.xattrs.iter().map(|(n, _)| n.as_slice()).collect();
        assert_eq!(
            names,
            [
                &b"security.capability"[..],
                b"system.posix_acl_access",
                b"trusted.overlay.other",
                b"user.a"
            ]
        );
        assert_eq!(dropped.count, 2);
        let refused = |name: &str, value: &[u8], typeflag: u8| {
            let mut h = header("f", typeflag);
            h.xattrs = vec![x(name, value)];
            entry(&h).unwrap_err()
        };
        assert!(refused("user.a", b"1", b'2').contains("user namespace"));
        assert!(refused("user.a", b"1", b'6').contains("user namespace"));
        assert!(refused(&format!("user.{}", "n".repeat(251)), b"1", b'0').contains("1 to 255"));
        assert!(refused("", b"1", b'0').contains("1 to 255"));
        assert!(refused("user.", b"1", b'0').contains("empty name"));
        assert!(refused("user.v", &[0; 65537], b'0').contains("65537-byte"));
        assert!(refused("security.capability", &cap[..12], b'0').contains("version 2"));
        // Hardlinks and whiteouts carry no metadata of their own: nothing to refuse.
        let mut link = header("h", b'1');
        link.xattrs = vec![x("user.a", b"1")];
        assert!(entry(&link).is_ok());
    }
}
