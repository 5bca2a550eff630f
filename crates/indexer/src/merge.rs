//! Applies layers bottom to top by the OCI image-spec rules and produces the merged tree.
//!
//! For each layer, its whiteouts act first and only on what lower layers left (`.wh.NAME`
//! removes NAME and its subtree; an opaque marker empties its directory of lower content),
//! then its entries are applied in tar order: a later entry replaces an earlier one, a
//! directory over a directory only updates attributes, a hardlink shares its target's inode
//! (also a target of a lower layer). Parent directories are resolved like a real extraction
//! does: a symlink in the middle of a path is followed, but never out of the root.

use std::collections::BTreeMap;

use clip_archive::{DataLocation, FileType, Inode, Tree};

#[cfg(test)]
use crate::tarwalk::PathComponents;
use crate::tarwalk::{display_components, EntryKind, LayerEntry};

/// How many symlinks one path resolution may follow (Linux's `MAXSYMLINKS`).
const MAX_SYMLINKS: usize = 40;

/// Why a layer cannot be applied.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {detail}")]
pub struct MergeError {
    pub path: String,
    pub detail: String,
}

/// The merged tree under construction. Inode 0 is the root directory.
pub struct Merger {
    inodes: Vec<Inode>,
    /// Directory contents, by inode index; present exactly for directory inodes.
    dirs: BTreeMap<usize, BTreeMap<Vec<u8>, usize>>,
}

impl Default for Merger {
    fn default() -> Self {
        Self::new()
    }
}

fn directory(mode: u32, uid: u32, gid: u32, mtime_sec: i64, mtime_nsec: u32) -> Inode {
    Inode {
        file_type: FileType::Directory,
        mode,
        uid,
        gid,
        size: 0,
        mtime_sec,
        mtime_nsec,
        rdev_major: 0,
        rdev_minor: 0,
        xattrs: Vec::new(),
        symlink_target: Vec::new(),
        data: None,
    }
}

impl Merger {
    pub fn new() -> Self {
        let mut dirs = BTreeMap::new();
        dirs.insert(0, BTreeMap::new());
        Merger {
            inodes: vec![directory(0o755, 0, 0, 0, 0)],
            dirs,
        }
    }

    /// Applies one layer's entries (in tar order).
    pub fn apply_layer(&mut self, layer: u32, entries: Vec<LayerEntry>) -> Result<(), MergeError> {
        // Whiteouts first: they only concern lower layers, whatever their position in the tar.
        for e in entries
            .iter()
            .filter(|e| matches!(e.kind, EntryKind::Whiteout | EntryKind::Opaque))
        {
            match e.kind {
                EntryKind::Opaque => {
                    if let Some(dir) = self.find(&e.path, true)? {
                        if let Some(children) = self.dirs.get_mut(&dir) {
                            children.clear();
                        }
                    }
                }
                _ => {
                    let Some((name, parent)) = e.path.split_last() else {
                        continue;
                    };
                    if let Some(dir) = self.find(parent, true)? {
                        if let Some(children) = self.dirs.get_mut(&dir) {
                            children.remove(name);
                        }
                    }
                }
            }
        }
        for e in entries {
            if matches!(e.kind, EntryKind::Whiteout | EntryKind::Opaque) {
                continue;
            }
            self.apply_entry(layer, e)?;
        }
        Ok(())
    }

    fn apply_entry(&mut self, layer: u32, e: LayerEntry) -> Result<(), MergeError> {
        let err = |detail: String| MergeError {
            path: display_components(&e.path),
            detail,
        };
        let Some((name, parent_path)) = e.path.split_last() else {
            // The root itself: only its attributes can change.
            if e.kind == EntryKind::Directory {
                let root = &mut self.inodes[0];
                root.mode = e.mode;
                root.uid = e.uid;
                root.gid = e.gid;
                root.mtime_sec = e.mtime_sec;
                root.mtime_nsec = e.mtime_nsec;
                root.xattrs = e.xattrs;
            }
            return Ok(());
        };
        let parent = self.make_dirs(parent_path).map_err(|m| err(m.detail))?;
        let existing = self.dirs.get(&parent).and_then(|c| c.get(name)).copied();

        let new_inode = match e.kind {
            EntryKind::Directory => {
                if let Some(ino) = existing.filter(|i| self.dirs.contains_key(i)) {
                    // A directory over a directory keeps its contents and takes the new
                    // attributes.
                    let d = &mut self.inodes[ino];
                    d.mode = e.mode;
                    d.uid = e.uid;
                    d.gid = e.gid;
                    d.mtime_sec = e.mtime_sec;
                    d.mtime_nsec = e.mtime_nsec;
                    d.xattrs = e.xattrs;
                    return Ok(());
                }
                let ino = self.push(directory(e.mode, e.uid, e.gid, e.mtime_sec, e.mtime_nsec));
                self.inodes[ino].xattrs = e.xattrs;
                self.dirs.insert(ino, BTreeMap::new());
                ino
            }
            EntryKind::Hardlink { ref target } => {
                let Some(ino) = self.find(target, false)? else {
                    return Err(err(format!(
                        "hardlink to {}, which does not exist",
                        display_components(target)
                    )));
                };
                if self.dirs.contains_key(&ino) {
                    return Err(err(format!(
                        "hardlink to the directory {}",
                        display_components(target)
                    )));
                }
                if existing == Some(ino) {
                    return Ok(());
                }
                ino
            }
            kind => {
                let (file_type, size, data, target, major, minor) = match kind {
                    EntryKind::Regular { offset, size } => (
                        FileType::Regular,
                        size,
                        (size > 0).then_some(DataLocation { layer, offset }),
                        Vec::new(),
                        0,
                        0,
                    ),
                    EntryKind::Symlink { target } => {
                        (FileType::Symlink, target.len() as u64, None, target, 0, 0)
                    }
                    EntryKind::CharDevice { major, minor } => {
                        (FileType::CharDevice, 0, None, Vec::new(), major, minor)
                    }
                    EntryKind::BlockDevice { major, minor } => {
                        (FileType::BlockDevice, 0, None, Vec::new(), major, minor)
                    }
                    EntryKind::Fifo => (FileType::Fifo, 0, None, Vec::new(), 0, 0),
                    EntryKind::Directory
                    | EntryKind::Hardlink { .. }
                    | EntryKind::Whiteout
                    | EntryKind::Opaque => unreachable!("handled above"),
                };
                self.push(Inode {
                    file_type,
                    mode: e.mode,
                    uid: e.uid,
                    gid: e.gid,
                    size,
                    mtime_sec: e.mtime_sec,
                    mtime_nsec: e.mtime_nsec,
                    rdev_major: major,
                    rdev_minor: minor,
                    xattrs: e.xattrs,
                    symlink_target: target,
                    data,
                })
            }
        };
        if let Some(children) = self.dirs.get_mut(&parent) {
            children.insert(name.clone(), new_inode);
        }
        Ok(())
    }

    fn push(&mut self, inode: Inode) -> usize {
        self.inodes.push(inode);
        self.inodes.len() - 1
    }

    /// Resolves `path`, following symlinks in intermediate components (within the root), and
    /// in the last one when `follow_last`. `Ok(None)` when something does not exist.
    fn find(&self, path: &[Vec<u8>], follow_last: bool) -> Result<Option<usize>, MergeError> {
        let mut budget = MAX_SYMLINKS;
        self.walk(0, path, follow_last, &mut budget)
    }

    fn walk(
        &self,
        start: usize,
        path: &[Vec<u8>],
        follow_last: bool,
        budget: &mut usize,
    ) -> Result<Option<usize>, MergeError> {
        // The directory chain walked so far, so that `..` inside a link target can go up.
        let mut stack = vec![start];
        for (i, name) in path.iter().enumerate() {
            let Some(&dir) = stack.last() else {
                return Ok(None);
            };
            let Some(children) = self.dirs.get(&dir) else {
                return Ok(None);
            };
            let Some(&child) = children.get(name) else {
                return Ok(None);
            };
            let last = i + 1 == path.len();
            let inode = &self.inodes[child];
            if inode.file_type == FileType::Symlink && (!last || follow_last) {
                if *budget == 0 {
                    return Err(MergeError {
                        path: display_components(path),
                        detail: "too many levels of symbolic links".into(),
                    });
                }
                *budget -= 1;
                let target = &inode.symlink_target;
                let resolved = if target.first() == Some(&b'/') {
                    self.walk(0, &crate::tarwalk::normalize(target), true, budget)?
                } else {
                    let mut base = path[..i].to_vec();
                    for part in target.split(|&b| b == b'/') {
                        match part {
                            b"" | b"." => {}
                            b".." => {
                                base.pop();
                            }
                            p => base.push(p.to_vec()),
                        }
                    }
                    self.walk(0, &base, true, budget)?
                };
                let Some(resolved) = resolved else {
                    return Ok(None);
                };
                stack.push(resolved);
            } else {
                stack.push(child);
            }
        }
        Ok(stack.last().copied())
    }

    /// Resolves a parent directory, creating missing directories on the way (as an
    /// extraction would; with mode 0755, root-owned, mtime 0).
    fn make_dirs(&mut self, path: &[Vec<u8>]) -> Result<usize, MergeError> {
        let mut dir = 0usize;
        for (i, name) in path.iter().enumerate() {
            let existing = self.dirs.get(&dir).and_then(|c| c.get(name)).copied();
            dir = match existing {
                Some(child) if self.dirs.contains_key(&child) => child,
                Some(child) if self.inodes[child].file_type == FileType::Symlink => {
                    match self.find(&path[..=i], true)? {
                        Some(d) if self.dirs.contains_key(&d) => d,
                        _ => {
                            return Err(MergeError {
                                path: display_components(&path[..=i]),
                                detail: "is a symlink that does not lead to a directory".into(),
                            })
                        }
                    }
                }
                Some(_) => {
                    return Err(MergeError {
                        path: display_components(&path[..=i]),
                        detail: "is not a directory, yet the layer puts entries under it".into(),
                    })
                }
                None => {
                    let child = self.push(directory(0o755, 0, 0, 0, 0));
                    self.dirs.insert(child, BTreeMap::new());
                    if let Some(children) = self.dirs.get_mut(&dir) {
                        children.insert(name.clone(), child);
                    }
                    child
                }
            };
        }
        Ok(dir)
    }

    /// The merged tree, for the archive writer.
    pub fn into_tree(self) -> Tree {
        let mut children = vec![Vec::new(); self.inodes.len()];
        for (ino, entries) in self.dirs {
            children[ino] = entries.into_iter().collect();
        }
        Tree {
            inodes: self.inodes,
            root: 0,
            children,
        }
    }
}

/// For tests: the merged tree as `path → inode index`.
#[cfg(test)]
pub(crate) fn paths(m: &Merger) -> BTreeMap<String, usize> {
    fn rec(m: &Merger, dir: usize, prefix: &mut PathComponents, out: &mut BTreeMap<String, usize>) {
        if let Some(children) = m.dirs.get(&dir) {
            for (name, &child) in children {
                prefix.push(name.clone());
                out.insert(display_components(prefix), child);
                rec(m, child, prefix, out);
                prefix.pop();
            }
        }
    }
    let mut out = BTreeMap::new();
    out.insert("/".to_string(), 0);
    rec(m, 0, &mut Vec::new(), &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tarwalk::normalize;

    fn entry(path: &str, kind: EntryKind) -> LayerEntry {
        LayerEntry {
            path: normalize(path.as_bytes()),
            kind,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime_sec: 1,
            mtime_nsec: 0,
            xattrs: vec![],
        }
    }
    fn file(path: &str, offset: u64) -> LayerEntry {
        entry(path, EntryKind::Regular { offset, size: 10 })
    }
    fn dir(path: &str) -> LayerEntry {
        entry(path, EntryKind::Directory)
    }

    #[test]
    fn whiteouts_act_on_lower_layers_only() {
        let mut m = Merger::new();
        m.apply_layer(
            0,
            vec![
                dir("a"),
                file("a/x", 0),
                file("a/y", 512),
                dir("b"),
                file("b/z", 1024),
            ],
        )
        .unwrap();
        m.apply_layer(
            1,
            vec![
                file("a/new", 0),
                entry("a", EntryKind::Opaque),
                entry("b", EntryKind::Whiteout),
                file("c", 512),
                entry("c", EntryKind::Whiteout), // whiteout of a name the same layer adds
            ],
        )
        .unwrap();
        let p = paths(&m);
        assert_eq!(
            p.keys().cloned().collect::<Vec<_>>(),
            ["/", "/a", "/a/new", "/c"]
        );
    }

    #[test]
    fn replacement_rules() {
        let mut m = Merger::new();
        m.apply_layer(
            0,
            vec![
                dir("d"),
                file("d/f", 0),
                file("g", 0),
                dir("h"),
                file("h/x", 0),
            ],
        )
        .unwrap();
        let mut d2 = dir("d");
        d2.mode = 0o700;
        m.apply_layer(1, vec![d2, dir("g"), file("h", 512)])
            .unwrap();
        let p = paths(&m);
        assert!(p.contains_key("/d/f"), "dir over dir keeps children");
        assert_eq!(m.inodes[p["/d"]].mode, 0o700);
        assert_eq!(m.inodes[p["/g"]].file_type, FileType::Directory);
        assert_eq!(m.inodes[p["/h"]].file_type, FileType::Regular);
        assert!(!p.contains_key("/h/x"));
    }

    #[test]
    fn hardlinks_share_inodes_across_layers() {
        let mut m = Merger::new();
        m.apply_layer(0, vec![dir("bin"), file("bin/tool", 0)])
            .unwrap();
        m.apply_layer(
            1,
            vec![entry(
                "bin/alias",
                EntryKind::Hardlink {
                    target: normalize(b"./bin/tool"),
                },
            )],
        )
        .unwrap();
        // Replacing the original later leaves the link on the old inode.
        m.apply_layer(2, vec![file("bin/tool", 4096)]).unwrap();
        let p = paths(&m);
        assert_ne!(p["/bin/alias"], p["/bin/tool"]);
        assert_eq!(
            m.inodes[p["/bin/alias"]].data,
            Some(DataLocation {
                layer: 0,
                offset: 0
            })
        );
        let err = m
            .apply_layer(
                3,
                vec![entry(
                    "x",
                    EntryKind::Hardlink {
                        target: normalize(b"nope"),
                    },
                )],
            )
            .unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
    }

    #[test]
    fn parents_through_symlinks_stay_in_the_root() {
        let mut m = Merger::new();
        m.apply_layer(
            0,
            vec![
                dir("usr"),
                dir("usr/lib"),
                entry(
                    "lib",
                    EntryKind::Symlink {
                        target: b"usr/lib".to_vec(),
                    },
                ),
                entry(
                    "up",
                    EntryKind::Symlink {
                        target: b"../../../usr".to_vec(),
                    },
                ),
                entry(
                    "loop",
                    EntryKind::Symlink {
                        target: b"loop".to_vec(),
                    },
                ),
            ],
        )
        .unwrap();
        m.apply_layer(1, vec![file("lib/libc.so", 0), file("up/escaped", 0)])
            .unwrap();
        let p = paths(&m);
        assert!(p.contains_key("/usr/lib/libc.so"));
        assert!(p.contains_key("/usr/escaped"));
        let err = m.apply_layer(2, vec![file("loop/x", 0)]).unwrap_err();
        assert!(err.to_string().contains("symbolic links"), "{err}");
    }

    #[test]
    fn missing_parents_are_created() {
        let mut m = Merger::new();
        m.apply_layer(0, vec![file("a/b/c", 0)]).unwrap();
        let p = paths(&m);
        assert_eq!(m.inodes[p["/a/b"]].file_type, FileType::Directory);
        assert_eq!(m.inodes[p["/a/b"]].mode, 0o755);
    }
}
