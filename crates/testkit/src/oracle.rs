//! The reference unpack and tree snapshots.
//!
//! [`oracle_unpack`] pulls an image with `skopeo copy` into an OCI layout and unpacks it with
//! `umoci unpack` (as root), then snapshots `bundle/rootfs`. [`TreeSnapshot::capture`] works on
//! any directory — a clip mount included — so the two can be compared with
//! [`TreeSnapshot::diff`] / [`assert_same_tree`].

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Read as _;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;
use sha2::{Digest as _, Sha256};
use tempfile::TempDir;

use crate::image::Platform;
use crate::registry::Registry;

/// One filesystem entry, as `lstat` and `llistxattr` see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EntrySnapshot {
    /// `dir`, `file`, `symlink`, `char`, `block`, `fifo` (or `socket`).
    pub kind: &'static str,
    /// Permission and special bits (`mode & 0o7777`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size for regular files, else 0.
    pub size: u64,
    /// mtime, seconds.
    pub mtime_sec: i64,
    /// mtime, nanoseconds.
    pub mtime_nsec: i64,
    /// Symlink target.
    pub link_target: Option<String>,
    /// `(major, minor)` for devices.
    pub rdev: Option<(u32, u32)>,
    /// Extended attributes, every namespace the caller may read.
    pub xattrs: BTreeMap<String, Vec<u8>>,
    /// Inode number (only meaningful within one snapshot).
    pub ino: u64,
    /// Link count.
    pub nlink: u64,
    /// `sha256` hex of a regular file's content.
    pub sha256: Option<String>,
}

/// Absolute path (`/` for the root) → entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TreeSnapshot(pub BTreeMap<String, EntrySnapshot>);

impl std::ops::Deref for TreeSnapshot {
    type Target = BTreeMap<String, EntrySnapshot>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for TreeSnapshot {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl TreeSnapshot {
    /// Walks `root` (without following symlinks) and records every entry, the root itself as `/`.
    /// Panics on I/O errors, naming the path.
    pub fn capture(root: &Path) -> TreeSnapshot {
        let mut snapshot = TreeSnapshot::default();
        walk(root, "/", &mut snapshot.0);
        snapshot
    }

    /// Groups of two or more paths that share an inode (hard links), sorted.
    pub fn hardlink_groups(&self) -> Vec<BTreeSet<String>> {
        let mut by_ino: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
        for (path, e) in self.iter().filter(|(_, e)| e.kind != "dir") {
            by_ino.entry(e.ino).or_default().insert(path.clone());
        }
        let mut groups: Vec<_> = by_ino.into_values().filter(|g| g.len() > 1).collect();
        groups.sort();
        groups
    }

    /// Removes `path` and everything below it.
    pub fn remove_subtree(&mut self, path: &str) {
        let below = format!("{}/", path.trim_end_matches('/'));
        self.0.retain(|p, _| p != path && !p.starts_with(&below));
    }

    /// The differences from `self` (expected) to `actual`, one readable line each; empty when
    /// the trees are equal. Inode numbers are compared only through hard-link groups.
    pub fn diff(&self, actual: &TreeSnapshot) -> Vec<String> {
        let mut out = Vec::new();
        for (path, want) in self.iter() {
            let Some(got) = actual.get(path) else {
                out.push(format!("{path}: missing ({} expected)", want.kind));
                continue;
            };
            let mut field = |name: &str, want: String, got: String| {
                if want != got {
                    out.push(format!("{path}: {name} expected {want}, got {got}"));
                }
            };
            field("kind", want.kind.into(), got.kind.into());
            field(
                "mode",
                format!("{:04o}", want.mode),
                format!("{:04o}", got.mode),
            );
            field("uid", want.uid.to_string(), got.uid.to_string());
            field("gid", want.gid.to_string(), got.gid.to_string());
            field("size", want.size.to_string(), got.size.to_string());
            let mtime = |e: &EntrySnapshot| format!("{}.{:09}", e.mtime_sec, e.mtime_nsec);
            field("mtime", mtime(want), mtime(got));
            field(
                "link target",
                format!("{:?}", want.link_target),
                format!("{:?}", got.link_target),
            );
            field(
                "rdev",
                format!("{:?}", want.rdev),
                format!("{:?}", got.rdev),
            );
            field(
                "xattrs",
                format!("{:?}", want.xattrs),
                format!("{:?}", got.xattrs),
            );
            field("nlink", want.nlink.to_string(), got.nlink.to_string());
            field(
                "sha256",
                format!("{:?}", want.sha256),
                format!("{:?}", got.sha256),
            );
        }
        for (path, got) in actual.iter().filter(|(p, _)| !self.contains_key(*p)) {
            out.push(format!("{path}: unexpected {}", got.kind));
        }
        let (want, got) = (self.hardlink_groups(), actual.hardlink_groups());
        if want != got {
            out.push(format!("hardlink groups: expected {want:?}, got {got:?}"));
        }
        out
    }
}

/// Panics with every difference if the trees differ (see [`TreeSnapshot::diff`]).
pub fn assert_same_tree(expected: &TreeSnapshot, actual: &TreeSnapshot) {
    let diff = expected.diff(actual);
    assert!(
        diff.is_empty(),
        "trees differ ({} differences):\n  {}",
        diff.len(),
        diff.join("\n  ")
    );
}

fn walk(path: &Path, name: &str, out: &mut BTreeMap<String, EntrySnapshot>) {
    let entry = snapshot_entry(path);
    let is_dir = entry.kind == "dir";
    out.insert(name.to_string(), entry);
    if !is_dir {
        return;
    }
    let children =
        fs::read_dir(path).unwrap_or_else(|e| panic!("read_dir {}: {e}", path.display()));
    for child in children {
        let child = child.unwrap_or_else(|e| panic!("read_dir {}: {e}", path.display()));
        let child_name = child.file_name().into_string().unwrap_or_else(|n| {
            panic!("non-UTF-8 name {n:?} in {}", path.display());
        });
        let child_path = if name == "/" {
            format!("/{child_name}")
        } else {
            format!("{name}/{child_name}")
        };
        walk(&child.path(), &child_path, out);
    }
}

fn snapshot_entry(path: &Path) -> EntrySnapshot {
    let fail = |what: &str, e: std::io::Error| -> ! { panic!("{what} {}: {e}", path.display()) };
    let md = fs::symlink_metadata(path).unwrap_or_else(|e| fail("lstat", e));
    let ft = md.file_type();
    let kind = if ft.is_dir() {
        "dir"
    } else if ft.is_file() {
        "file"
    } else if ft.is_symlink() {
        "symlink"
    } else if ft.is_char_device() {
        "char"
    } else if ft.is_block_device() {
        "block"
    } else if ft.is_fifo() {
        "fifo"
    } else {
        "socket"
    };
    let link_target = ft.is_symlink().then(|| {
        let target = fs::read_link(path).unwrap_or_else(|e| fail("readlink", e));
        target.to_string_lossy().into_owned()
    });
    let rdev = (ft.is_char_device() || ft.is_block_device())
        .then(|| (rustix::fs::major(md.rdev()), rustix::fs::minor(md.rdev())));
    let sha256 = ft.is_file().then(|| {
        let mut file = fs::File::open(path).unwrap_or_else(|e| fail("open", e));
        let mut hasher = Sha256::new();
        let mut buf = vec![0; 1 << 20];
        loop {
            match file.read(&mut buf).unwrap_or_else(|e| fail("read", e)) {
                0 => break,
                n => hasher.update(&buf[..n]),
            }
        }
        hex::encode(hasher.finalize())
    });
    EntrySnapshot {
        kind,
        mode: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        size: if ft.is_file() { md.size() } else { 0 },
        mtime_sec: md.mtime(),
        mtime_nsec: md.mtime_nsec(),
        link_target,
        rdev,
        xattrs: xattrs(path),
        ino: md.ino(),
        nlink: md.nlink(),
        sha256,
    }
}

/// Every xattr of `path` (not following symlinks).
pub fn xattrs(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let names = match read_xattr_buffer(|buf| rustix::fs::llistxattr(path, buf)) {
        Ok(names) => names,
        // Filesystems without xattr support have none.
        Err(rustix::io::Errno::OPNOTSUPP) => return out,
        Err(e) => panic!("llistxattr {}: {e}", path.display()),
    };
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let name = String::from_utf8_lossy(name).into_owned();
        match read_xattr_buffer(|buf| rustix::fs::lgetxattr(path, name.as_str(), buf)) {
            Ok(value) => {
                out.insert(name, value);
            }
            // Listed but gone, or not readable by us: leave it out.
            Err(rustix::io::Errno::NODATA) => {}
            Err(e) => panic!("lgetxattr {} {name}: {e}", path.display()),
        }
    }
    out
}

/// Calls an xattr syscall with growing buffers until the value fits.
fn read_xattr_buffer(
    mut call: impl FnMut(&mut [u8]) -> rustix::io::Result<usize>,
) -> rustix::io::Result<Vec<u8>> {
    let mut size = 256;
    loop {
        let mut buf = vec![0; size];
        match call(&mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(rustix::io::Errno::RANGE) if size < (1 << 24) => size *= 4,
            Err(e) => return Err(e),
        }
    }
}

/// An unpacked image: the OCI layout and umoci bundle in a `TempDir`, and the rootfs snapshot.
#[derive(Debug)]
pub struct Unpacked {
    dir: TempDir,
    snapshot: TreeSnapshot,
}

impl Unpacked {
    /// `bundle/rootfs`.
    pub fn rootfs(&self) -> PathBuf {
        self.dir.path().join("bundle/rootfs")
    }
    /// The OCI layout skopeo wrote (image tag `clip`).
    pub fn layout(&self) -> PathBuf {
        self.dir.path().join("layout")
    }
    /// The snapshot of `rootfs()`.
    pub fn snapshot(&self) -> &TreeSnapshot {
        &self.snapshot
    }
    /// The snapshot, dropping the files.
    pub fn into_snapshot(self) -> TreeSnapshot {
        self.snapshot
    }
}

/// Pulls `reference` (`repo:tag` or `repo@sha256:…`, registry-relative) with skopeo, unpacks it
/// with umoci and snapshots the rootfs. Uses the registry's credentials. Panics on failure.
pub fn oracle_unpack(registry: &Registry, reference: &str) -> TreeSnapshot {
    oracle_unpack_dir(registry, reference, None).into_snapshot()
}

/// Like [`oracle_unpack`], choosing `platform` from an index, and keeping the files.
pub fn oracle_unpack_dir(
    registry: &Registry,
    reference: &str,
    platform: Option<&Platform>,
) -> Unpacked {
    try_oracle_unpack_dir(registry, reference, platform).unwrap_or_else(|e| panic!("{e}"))
}

/// Like [`oracle_unpack`], but a failing `umoci unpack` (an image the reference refuses) is an
/// `Err` with umoci's output instead of a panic. A failing `skopeo copy` still panics.
pub fn try_oracle_unpack(registry: &Registry, reference: &str) -> Result<TreeSnapshot, String> {
    try_oracle_unpack_dir(registry, reference, None).map(Unpacked::into_snapshot)
}

fn try_oracle_unpack_dir(
    registry: &Registry,
    reference: &str,
    platform: Option<&Platform>,
) -> Result<Unpacked, String> {
    let dir = tempfile::Builder::new()
        .prefix("clip-oracle-")
        .tempdir()
        .expect("tempdir");
    let policy = dir.path().join("policy.json");
    fs::write(
        &policy,
        r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
    )
    .expect("policy");
    let mut skopeo = Command::new("skopeo");
    skopeo
        .env("TMPDIR", dir.path())
        .arg("--policy")
        .arg(&policy);
    // umoci 0.4.7 refuses zstd layers ("blob is not correct mediatype"): have skopeo recompress
    // them to gzip (it keeps gzip layers as they are and compresses uncompressed ones).
    skopeo.args([
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        "--dest-compress-format",
        "gzip",
    ]);
    match registry.credentials() {
        Some((user, password)) => skopeo.arg("--src-creds").arg(format!("{user}:{password}")),
        None => skopeo.arg("--src-no-creds"),
    };
    if let Some(p) = platform {
        skopeo.args(["--override-os", &p.os, "--override-arch", &p.architecture]);
        if let Some(v) = &p.variant {
            skopeo.args(["--override-variant", v]);
        }
    }
    skopeo.arg(format!("docker://{}/{reference}", registry.addr()));
    skopeo.arg(format!("oci:{}:clip", dir.path().join("layout").display()));
    run(skopeo, "skopeo copy");
    let mut umoci = Command::new("umoci");
    umoci
        .arg("unpack")
        .arg("--image")
        .arg(format!("{}:clip", dir.path().join("layout").display()));
    umoci.arg(dir.path().join("bundle"));
    try_run(umoci, "umoci unpack")?;
    let snapshot = TreeSnapshot::capture(&dir.path().join("bundle/rootfs"));
    Ok(Unpacked { dir, snapshot })
}

fn run(cmd: Command, what: &str) {
    try_run(cmd, what).unwrap_or_else(|e| panic!("{e}"));
}

fn try_run(mut cmd: Command, what: &str) -> Result<(), String> {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}
