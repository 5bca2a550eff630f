//! Applies layers bottom to top by the OCI image-spec rules and produces the merged tree,
//! exactly as `umoci unpack` (our reference) extracts them.
//!
//! A layer's entries are applied in tar order. Every path is resolved like an extraction does
//! with securejoin: the name is cleaned lexically, then its parent directory is resolved
//! component by component against the already-resolved prefix, following symlinks inside the
//! image root (`..` at the root stays there, an absolute target restarts at the root, a
//! relative one is relative to the directory holding the link, a missing component is taken as
//! a plain directory name, more than [`MAX_SYMLINKS`] links is an error). Missing directories
//! along the resolved parent are created (mode 0755, root, mtime 0), so an entry below a
//! dangling symlink lands where the link points. The last component is never followed: a new
//! entry replaces whatever is there, except that a directory over a directory only takes the
//! new attributes. A hardlink shares its target's inode (also one of a lower layer); its target
//! is resolved the same way, without following its last component.
//!
//! Whiteouts act where they appear in the tar: `.wh.NAME` removes NAME (its resolved parent's
//! entry, not followed) and an opaque marker empties its (resolved) directory, except for what
//! this layer itself has put there so far (umoci's "upper paths": every path this layer
//! created and its ancestors).

use std::collections::{BTreeMap, HashSet};

use clip_archive::{DataLocation, FileType, Inode, Tree};

#[cfg(test)]
use crate::tarwalk::PathComponents;
use crate::tarwalk::{display_components, is_runtime_path, EntryKind, LayerEntry};

/// How many symlinks one path resolution may follow: securejoin's limit (umoci's resolver),
/// which is more lenient than the kernel's 40.
pub const MAX_SYMLINKS: usize = 255;

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

/// What one layer has created so far, as directory entries `(directory inode, name)`: each
/// created entry and every directory above it.
type Upper = HashSet<(usize, Vec<u8>)>;

/// A path resolved inside the root: no symlinks left; components may not exist.
struct Resolved {
    names: Vec<Vec<u8>>,
    /// The inode of each component, `None` from the first missing one on.
    inodes: Vec<Option<usize>>,
}

impl Resolved {
    /// The inode the whole path names, if it exists.
    fn inode(&self) -> Option<usize> {
        match self.inodes.last() {
            Some(ino) => *ino,
            None => Some(0),
        }
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
        let mut upper = Upper::new();
        for e in entries {
            match e.kind {
                EntryKind::Whiteout | EntryKind::Opaque => self.whiteout(&e, &upper)?,
                _ => self.apply_entry(layer, e, &mut upper)?,
            }
        }
        Ok(())
    }

    fn child(&self, dir: usize, name: &[u8]) -> Option<usize> {
        self.dirs.get(&dir).and_then(|c| c.get(name)).copied()
    }

    /// `.wh.NAME` removes NAME; an opaque marker empties its directory; both spare what this
    /// layer created.
    fn whiteout(&mut self, e: &LayerEntry, upper: &Upper) -> Result<(), MergeError> {
        let err = |m: MergeError| MergeError {
            path: display_components(&e.path),
            detail: m.detail,
        };
        if e.kind == EntryKind::Opaque {
            let dir = self.resolve(&e.path).map_err(err)?;
            if is_runtime_path(&dir.names) {
                return Ok(());
            }
            if let Some(dir) = dir.inode() {
                self.remove_untouched_children(dir, upper);
            }
            return Ok(());
        }
        let Some((name, parent)) = e.path.split_last() else {
            return Ok(());
        };
        let parent = self.resolve(parent).map_err(err)?;
        if name.is_empty() {
            return self.whiteout_self(e, &parent, upper);
        }
        if is_runtime_path(&parent.names) {
            return Ok(());
        }
        let Some(dir) = parent.inode() else {
            return Ok(());
        };
        let Some(child) = self.child(dir, name) else {
            return Ok(());
        };
        if upper.contains(&(dir, name.clone())) {
            self.remove_untouched_children(child, upper);
        } else if let Some(children) = self.dirs.get_mut(&dir) {
            children.remove(name);
        }
        Ok(())
    }

    /// A bare `.wh.` whites out the directory holding it, as an unpack does: what this layer
    /// did not create in it goes; the directory itself, when this layer did not create it,
    /// would go too, which makes the unpack fail (it then restores the directory's metadata).
    fn whiteout_self(
        &mut self,
        e: &LayerEntry,
        dir: &Resolved,
        upper: &Upper,
    ) -> Result<(), MergeError> {
        let Some(ino) = dir.inode() else {
            return Ok(());
        };
        let edge = match dir.names.split_last() {
            Some((name, above)) => {
                let parent = if above.is_empty() {
                    Some(0)
                } else {
                    dir.inodes[above.len() - 1]
                };
                parent.map(|p| (p, name.clone()))
            }
            None => None,
        };
        if edge.is_some_and(|edge| upper.contains(&edge)) {
            self.remove_untouched_children(ino, upper);
            return Ok(());
        }
        Err(MergeError {
            path: display_components(&e.path[..e.path.len() - 1]),
            detail: "a whiteout without a name (.wh.) removes this directory, which an unpack \
                     cannot do (umoci fails on it)"
                .into(),
        })
    }

    /// Removes, below `dir`, everything this layer did not create (descending into what it
    /// did).
    fn remove_untouched_children(&mut self, dir: usize, upper: &Upper) {
        let mut stack = vec![dir];
        while let Some(dir) = stack.pop() {
            let Some(children) = self.dirs.get_mut(&dir) else {
                continue;
            };
            children.retain(|name, child| {
                let keep = upper.contains(&(dir, name.clone()));
                if keep {
                    stack.push(*child);
                }
                keep
            });
        }
    }

    fn apply_entry(
        &mut self,
        layer: u32,
        e: LayerEntry,
        upper: &mut Upper,
    ) -> Result<(), MergeError> {
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
        let resolved = self.resolve(parent_path).map_err(|m| err(m.detail))?;
        if is_runtime_path(&resolved.names) {
            // Through a symlink into /proc, /sys or /dev: left out with them.
            return Ok(());
        }
        let chain = self.make_dirs(&resolved).map_err(|m| err(m.detail))?;
        let parent = chain.last().copied().unwrap_or(0);
        let existing = self.child(parent, name);

        // A directory over a directory keeps its contents and takes the new attributes;
        // anything else replaces what was there.
        if let (EntryKind::Directory, Some(ino)) = (&e.kind, existing) {
            if self.dirs.contains_key(&ino) {
                let d = &mut self.inodes[ino];
                d.mode = e.mode;
                d.uid = e.uid;
                d.gid = e.gid;
                d.mtime_sec = e.mtime_sec;
                d.mtime_nsec = e.mtime_nsec;
                d.xattrs = e.xattrs;
                mark_upper(upper, &resolved.names, &chain, name);
                return Ok(());
            }
        }
        if existing.is_some() {
            if let Some(children) = self.dirs.get_mut(&parent) {
                children.remove(name);
            }
        }

        let new_inode = match e.kind {
            EntryKind::Directory => {
                let ino = self.push(directory(e.mode, e.uid, e.gid, e.mtime_sec, e.mtime_nsec));
                self.inodes[ino].xattrs = e.xattrs;
                self.dirs.insert(ino, BTreeMap::new());
                ino
            }
            EntryKind::Hardlink { ref target } => {
                // Resolved after the replaced entry is gone, as link(2) after the unlink.
                let found = match target.split_last() {
                    Some((target_name, target_parent)) => self
                        .resolve(target_parent)
                        .map_err(|m| err(m.detail))?
                        .inode()
                        .and_then(|dir| self.child(dir, target_name)),
                    None => Some(0),
                };
                let Some(ino) = found else {
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
                    | EntryKind::Opaque => {
                        return Err(err("internal: entry kind handled elsewhere".into()))
                    }
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
        mark_upper(upper, &resolved.names, &chain, name);
        Ok(())
    }

    fn push(&mut self, inode: Inode) -> usize {
        self.inodes.push(inode);
        self.inodes.len() - 1
    }

    /// Resolves `path` inside the root as securejoin does: every component, the last one
    /// included, is looked up in the already-resolved prefix; a symlink is replaced by its
    /// target (relative to the prefix, or to the root when absolute); `..` pops the prefix and
    /// stops at the root; a missing component (or one below a non-directory) is kept as a name.
    fn resolve(&self, path: &[Vec<u8>]) -> Result<Resolved, MergeError> {
        let mut out = Resolved {
            names: Vec::new(),
            inodes: Vec::new(),
        };
        // Components still to resolve, the next one last.
        let mut todo: Vec<&[u8]> = path.iter().rev().map(Vec::as_slice).collect();
        let mut links = 0;
        while let Some(name) = todo.pop() {
            match name {
                b"" | b"." => continue,
                b".." => {
                    out.names.pop();
                    out.inodes.pop();
                    continue;
                }
                _ => {}
            }
            let child = out.inode().and_then(|dir| self.child(dir, name));
            if let Some(ino) = child {
                let inode = &self.inodes[ino];
                if inode.file_type == FileType::Symlink {
                    links += 1;
                    if links > MAX_SYMLINKS {
                        return Err(MergeError {
                            path: display_components(path),
                            detail: format!(
                                "too many levels of symbolic links (more than {MAX_SYMLINKS}; \
                                 a symlink loop?)"
                            ),
                        });
                    }
                    let target = inode.symlink_target.as_slice();
                    if target.first() == Some(&b'/') {
                        out.names.clear();
                        out.inodes.clear();
                    }
                    todo.extend(target.split(|&b| b == b'/').rev());
                    continue;
                }
            }
            out.names.push(name.to_vec());
            out.inodes.push(child);
        }
        Ok(out)
    }

    /// Creates the missing directories of a resolved path (as `mkdir -p`; mode 0755, owned by
    /// root, mtime 0) and returns the inode of each component. A component that exists and is
    /// not a directory is an error.
    fn make_dirs(&mut self, path: &Resolved) -> Result<Vec<usize>, MergeError> {
        let mut chain = Vec::with_capacity(path.names.len());
        let mut dir = 0usize;
        for (i, name) in path.names.iter().enumerate() {
            dir = match self.child(dir, name) {
                Some(child) if self.dirs.contains_key(&child) => child,
                Some(_) => {
                    return Err(MergeError {
                        path: display_components(&path.names[..=i]),
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
            chain.push(dir);
        }
        Ok(chain)
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

/// Records that this layer created `name` in the directory at the end of `chain` (the inodes
/// of `names`), and every directory above it.
fn mark_upper(upper: &mut Upper, names: &[Vec<u8>], chain: &[usize], name: &[u8]) {
    let parent = chain.last().copied().unwrap_or(0);
    if !upper.insert((parent, name.to_vec())) {
        return;
    }
    for i in (0..names.len()).rev() {
        let dir = if i == 0 { 0 } else { chain[i - 1] };
        if !upper.insert((dir, names[i].clone())) {
            // Its ancestors were marked with it.
            break;
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
                let shown: Vec<String> = prefix
                    .iter()
                    .map(|c| format!("/{}", String::from_utf8_lossy(c)))
                    .collect();
                out.insert(shown.concat(), child);
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
