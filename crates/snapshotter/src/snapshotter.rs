//! The snapshot operations, synchronous and independent of gRPC.
//!
//! Layout under the root directory (`0700`):
//!
//! ```text
//! metadata.json           every snapshot and clip image (see `meta`)
//! snapshots/ID/fs         a snapshot's directory: its files (normal path), an overlay's upper
//! snapshots/ID/work       an active snapshot's overlay work directory
//! images/HEX/index.clip   a clip image's index (a copy: the snapshotter's own)
//! images/HEX/mnt          its clip mount, shared by every container of the image
//! images/HEX/mount.log    the log of the process serving that mount
//! ```
//!
//! The normal path is containerd's overlayfs snapshotter: a snapshot without parents is a
//! bind mount of its `fs`; an active one with parents is an overlay (`upperdir` its `fs`,
//! `lowerdir` its ancestors' `fs`, nearest first); a view of one parent is a read-only bind of
//! that parent. A clip image enters the chain as one lower directory: walking up from a
//! snapshot, the first clip top layer contributes its mount and ends the walk (its mount
//! already shows every layer below it); a clip lower layer met first cannot be served (see
//! the crate doc).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::filter::{Fields, Filter};
use crate::meta::{Image, Kind, Remote, Snapshot, State, Store, Time};
use crate::remote::{Images, IndexedImage, LayerRequest, MountSource, LABEL_REMOTE, LABEL_TARGET};

/// The longest key or name accepted.
pub const MAX_KEY_LEN: usize = 4096;
/// The most labels one snapshot may carry.
pub const MAX_LABELS: usize = 512;
/// The most bytes of labels (keys and values) one snapshot may carry.
pub const MAX_LABEL_BYTES: usize = 256 * 1024;
/// containerd's own bound on one label (key and value).
pub const MAX_LABEL_LEN: usize = 4096;

/// How long "this image has no index" is believed before asking the registry again.
const NEGATIVE_LOOKUP_TTL: Duration = Duration::from_secs(60);
/// Lookups remembered at most (the memory is cleared when full).
const MAX_LOOKUPS: usize = 1024;

/// A snapshot as the API describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    /// Key or name.
    pub name: String,
    /// Parent name, empty for none.
    pub parent: String,
    /// Kind.
    pub kind: Kind,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Created.
    pub created: Time,
    /// Last changed.
    pub updated: Time,
}

/// A mount as containerd performs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// `bind` or `overlay`.
    pub kind: String,
    /// The source (a directory, or `overlay`).
    pub source: String,
    /// Mount options.
    pub options: Vec<String>,
}

/// Disk use of a snapshot, without its parents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// Bytes.
    pub size: i64,
    /// Inodes.
    pub inodes: i64,
}

/// A directory a snapshot's mounts stack below its own.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Lower {
    Dir(PathBuf),
    Clip(String),
}

struct Lookup {
    at: Instant,
    image: Option<IndexedImage>,
}

/// The snapshotter: its state, its directories, and clip images reached through [`Images`].
pub struct Snapshotter {
    root: PathBuf,
    store: Store,
    state: Mutex<State>,
    images: Arc<dyn Images>,
    lookups: Mutex<HashMap<(String, Option<String>), Lookup>>,
    /// Held while an image is mounted or unmounted, so that it is mounted once.
    mounting: Mutex<()>,
}

impl std::fmt::Debug for Snapshotter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshotter")
            .field("root", &self.root)
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn mkdir(path: &Path, mode: u32) -> Result<(), Error> {
    match fs::DirBuilder::new().mode(mode).create(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(Error::io("create", path, e)),
    }
    // Whatever the umask.
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io("chmod", path, e))
}

/// The root directory: ours, a real directory, `0700`.
fn private_root(root: &Path) -> Result<(), Error> {
    fs::create_dir_all(root).map_err(|e| Error::io("create", root, e))?;
    let meta = fs::symlink_metadata(root).map_err(|e| Error::io("inspect", root, e))?;
    if !meta.is_dir() || meta.uid() != rustix::process::geteuid().as_raw() {
        return Err(Error::io(
            "use",
            root,
            std::io::Error::other("not a directory of this user (a symlink is not followed)"),
        ));
    }
    fs::set_permissions(root, fs::Permissions::from_mode(0o700))
        .map_err(|e| Error::io("chmod", root, e))
}

/// A new snapshot's parent, when it names one, must be a committed snapshot.
fn check_parent(state: &State, parent: &str) -> Result<(), Error> {
    if parent.is_empty() {
        return Ok(());
    }
    match state.snapshots.get(parent) {
        Some(p) if p.kind == Kind::Committed => Ok(()),
        Some(_) => Err(Error::invalid(format!(
            "parent {parent:?} is not a committed snapshot"
        ))),
        None => Err(Error::not_found(parent)),
    }
}

fn check_key(key: &str) -> Result<(), Error> {
    if key.is_empty() {
        return Err(Error::invalid("empty snapshot key"));
    }
    if key.len() > MAX_KEY_LEN {
        return Err(Error::invalid(format!(
            "snapshot key longer than {MAX_KEY_LEN} bytes"
        )));
    }
    Ok(())
}

fn check_labels(labels: &BTreeMap<String, String>) -> Result<(), Error> {
    if labels.len() > MAX_LABELS {
        return Err(Error::invalid(format!("more than {MAX_LABELS} labels")));
    }
    let mut total = 0;
    for (k, v) in labels {
        if k.len() + v.len() > MAX_LABEL_LEN {
            return Err(Error::invalid(format!(
                "label {:?} longer than {MAX_LABEL_LEN} bytes",
                k.chars().take(64).collect::<String>()
            )));
        }
        total += k.len() + v.len();
    }
    if total > MAX_LABEL_BYTES {
        return Err(Error::invalid(format!(
            "labels longer than {MAX_LABEL_BYTES} bytes"
        )));
    }
    Ok(())
}

/// The hex of a digest, for a directory name.
fn digest_hex(digest: &str) -> Result<&str, Error> {
    digest
        .split_once(':')
        .map(|(_, h)| h)
        .filter(|h| !h.is_empty() && h.len() <= 128 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| Error::invalid(format!("bad digest {digest:?}")))
}

/// Disk use of a directory tree: blocks of each inode counted once, symlinks not followed.
fn disk_usage(dir: &Path) -> Result<Usage, Error> {
    let mut seen = HashSet::new();
    let mut usage = Usage::default();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = fs::symlink_metadata(&path).map_err(|e| Error::io("inspect", &path, e))?;
        if seen.insert((meta.dev(), meta.ino())) {
            usage.inodes += 1;
            usage.size += i64::try_from(meta.blocks().saturating_mul(512)).unwrap_or(i64::MAX);
        }
        if meta.is_dir() {
            for entry in fs::read_dir(&path).map_err(|e| Error::io("list", &path, e))? {
                let entry = entry.map_err(|e| Error::io("list", &path, e))?;
                stack.push(entry.path());
            }
        }
    }
    Ok(usage)
}

/// Whether `dir` is a mountpoint whose filesystem answers. A FUSE mount whose process died
/// answers `ENOTCONN` — to `statfs`, which always reaches the daemon; `stat` of its root may
/// still be answered from the kernel's attribute cache.
fn mount_alive(dir: &Path) -> bool {
    clip_run::is_mountpoint(dir) && rustix::fs::statfs(dir).is_ok()
}

impl Snapshotter {
    /// Opens (or creates) the snapshotter at `root`: loads its state, removes directories a
    /// crash left unnamed, and restores the clip mounts of images in use (adopting those still
    /// served, remounting those whose process died).
    pub fn open(root: &Path, images: Arc<dyn Images>) -> Result<Snapshotter, Error> {
        private_root(root)?;
        let root = fs::canonicalize(root).map_err(|e| Error::io("resolve", root, e))?;
        if root.to_string_lossy().contains([',', ':']) {
            // They would split overlay's mount options.
            return Err(Error::invalid(format!(
                "the root directory {} must not contain ',' or ':'",
                root.display()
            )));
        }
        mkdir(&root.join("snapshots"), 0o700)?;
        mkdir(&root.join("images"), 0o700)?;
        let store = Store::new(&root);
        let state = store.load()?;
        let snapshotter = Snapshotter {
            root,
            store,
            state: Mutex::new(state),
            images,
            lookups: Mutex::new(HashMap::new()),
            mounting: Mutex::new(()),
        };
        snapshotter.cleanup()?;
        snapshotter.reconcile();
        Ok(snapshotter)
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn snapshot_dir(&self, id: u64) -> PathBuf {
        self.root.join("snapshots").join(id.to_string())
    }

    fn fs_dir(&self, id: u64) -> PathBuf {
        self.snapshot_dir(id).join("fs")
    }

    fn image_dir(&self, digest: &str) -> Result<PathBuf, Error> {
        Ok(self.root.join("images").join(digest_hex(digest)?))
    }

    /// The mountpoint of a clip image (for `clip stats`).
    pub fn image_mountpoint(&self, digest: &str) -> Result<PathBuf, Error> {
        Ok(self.image_dir(digest)?.join("mnt"))
    }

    /// Restores the mounts of the images containers use: at start, after a crash or restart.
    fn reconcile(&self) {
        let in_use: Vec<String> = {
            let state = lock(&self.state);
            let mut images: Vec<String> = state
                .snapshots
                .values()
                .filter_map(|s| {
                    let parent = state.snapshots.get(&s.parent)?;
                    match &parent.remote {
                        Some(Remote::Top { image }) => Some(image.clone()),
                        _ => None,
                    }
                })
                .collect();
            images.sort();
            images.dedup();
            images
        };
        for image in in_use {
            match self.image_mountpoint(&image) {
                Ok(mnt) if mount_alive(&mnt) => {
                    tracing::info!(%image, mnt = %mnt.display(), "clip mount still served: adopted");
                }
                Ok(_) => match self.ensure_mounted(&image) {
                    Ok(mnt) => tracing::info!(%image, mnt = %mnt.display(), "clip mount restored"),
                    Err(e) => tracing::error!(%image, "restoring the clip mount: {e}"),
                },
                Err(e) => tracing::error!(%image, "{e}"),
            }
        }
    }

    /// Mounts image `digest` unless it is mounted and served; its mountpoint.
    fn ensure_mounted(&self, digest: &str) -> Result<PathBuf, Error> {
        let _mounting = lock(&self.mounting);
        let image = lock(&self.state)
            .images
            .get(digest)
            .cloned()
            .ok_or_else(|| Error::Mount {
                image: digest.to_string(),
                reason: "not known to the snapshotter".into(),
            })?;
        let dir = self.image_dir(digest)?;
        let mnt = dir.join("mnt");
        if mount_alive(&mnt) {
            return Ok(mnt);
        }
        let failed = |reason: String| Error::Mount {
            image: digest.to_string(),
            reason,
        };
        if clip_run::is_mountpoint(&mnt) {
            tracing::warn!(image = %digest, "the process serving the clip mount died: remounting");
            self.images
                .unmount(&mnt)
                .map_err(|e| failed(format!("clearing the dead mount: {e}")))?;
        }
        mkdir(&dir, 0o700)?;
        mkdir(&mnt, 0o755)?;
        let source = MountSource {
            reference: &image.reference,
            index: &image.index,
            windows_blob: image.windows_blob.as_deref(),
        };
        let pid = self
            .images
            .mount(&source, &mnt, &dir.join("mount.log"))
            .map_err(|e| failed(e.to_string()))?;
        tracing::info!(image = %digest, pid, mnt = %mnt.display(), "clip mount started");
        Ok(mnt)
    }

    /// The image and layer `request` names, if clip has an index for it whose chain up to the
    /// layer is `target`.
    fn remote_layer(
        &self,
        request: &LayerRequest,
        target: &str,
    ) -> Result<Option<(IndexedImage, usize)>, Error> {
        let key = (request.reference.clone(), request.manifest_digest.clone());
        for fresh in [false, true] {
            let cached = if fresh {
                None
            } else {
                lock(&self.lookups).get(&key).and_then(|l| match &l.image {
                    Some(image) => Some(Some(image.clone())),
                    None if l.at.elapsed() < NEGATIVE_LOOKUP_TTL => Some(None),
                    None => None,
                })
            };
            let found = match cached {
                Some(found) => found,
                None => {
                    let found = self.images.find(request).map_err(|e| Error::Mount {
                        image: request.reference.clone(),
                        reason: format!("looking for its clip index: {e}"),
                    })?;
                    let mut lookups = lock(&self.lookups);
                    if lookups.len() >= MAX_LOOKUPS {
                        lookups.clear();
                    }
                    lookups.insert(
                        key.clone(),
                        Lookup {
                            at: Instant::now(),
                            image: found.clone(),
                        },
                    );
                    found
                }
            };
            let Some(image) = found else {
                return Ok(None);
            };
            match image.layer(&request.layer_digest) {
                Some((i, chain)) if chain == target => return Ok(Some((image, i))),
                Some(_) => {
                    tracing::warn!(reference = %request.reference, layer = %request.layer_digest,
                        "the clip index's chain of layers differs from containerd's: normal path");
                    return Ok(None);
                }
                // A tag that moved since it was looked up: once more, from the registry.
                None if !fresh => continue,
                None => return Ok(None),
            }
        }
        Ok(None)
    }

    /// Copies the index of `image` into the image's directory (once); the copy's path.
    fn keep_index(&self, image: &IndexedImage) -> Result<PathBuf, Error> {
        let dir = self.image_dir(&image.manifest_digest)?;
        mkdir(&dir, 0o700)?;
        let path = dir.join("index.clip");
        if path.is_file() {
            return Ok(path);
        }
        let tmp = dir.join("index.clip.tmp");
        fs::copy(&image.index, &tmp)
            .and_then(|_| fs::File::open(&tmp)?.sync_all())
            .map_err(|e| Error::io("copy the index to", &tmp, e))?;
        fs::rename(&tmp, &path).map_err(|e| Error::io("rename", &path, e))?;
        Ok(path)
    }

    /// Records layer `layer` of `image` as the committed snapshot `target` (remote: no
    /// directory content). False when the chain does not fit (the normal path is taken).
    fn commit_remote(
        &self,
        target: &str,
        parent: &str,
        labels: &BTreeMap<String, String>,
        image: &IndexedImage,
        layer: usize,
    ) -> Result<bool, Error> {
        let index = self.keep_index(image)?;
        let mut state = lock(&self.state);
        if state.snapshots.contains_key(target) {
            return Ok(true);
        }
        if parent.is_empty() != (layer == 0) {
            tracing::warn!(%target, %parent, layer, "a clip layer with an unexpected parent: normal path");
            return Ok(false);
        }
        check_parent(&state, parent)?;
        let id = state.next_id;
        let dir = self.snapshot_dir(id);
        mkdir(&dir, 0o700)?;
        mkdir(&dir.join("fs"), 0o755)?;
        let mut labels = labels.clone();
        labels.insert(LABEL_REMOTE.into(), "clip".into());
        let top = layer + 1 == image.layers.len();
        let digest = image.manifest_digest.clone();
        let now = Time::now();
        let mut next = state.clone();
        next.next_id = id + 1;
        next.snapshots.insert(
            target.to_string(),
            Snapshot {
                id,
                kind: Kind::Committed,
                parent: parent.to_string(),
                labels,
                created: now,
                updated: now,
                size: 0,
                inodes: 0,
                remote: Some(if top {
                    Remote::Top {
                        image: digest.clone(),
                    }
                } else {
                    Remote::Lower {
                        image: digest.clone(),
                        layer,
                    }
                }),
            },
        );
        next.images.entry(digest.clone()).or_insert(Image {
            reference: image.reference.clone(),
            index,
            layers: image.layers.len(),
            windows_blob: image.windows_blob.clone(),
        });
        if let Err(e) = self.store.save(&next) {
            let _ = fs::remove_dir_all(&dir);
            return Err(e);
        }
        *state = next;
        tracing::info!(%target, image = %digest, layer, layers = image.layers.len(),
            "layer served by clip (remote snapshot)");
        Ok(true)
    }

    /// `Prepare` (`kind` active) or `View` (`kind` view).
    pub fn prepare(
        &self,
        kind: Kind,
        key: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<Vec<Mount>, Error> {
        check_key(key)?;
        check_labels(&labels)?;
        if kind == Kind::Committed {
            return Err(Error::invalid(
                "only active or view snapshots can be created",
            ));
        }
        if let (Kind::Active, Some(target)) = (kind, labels.get(LABEL_TARGET)) {
            {
                let state = lock(&self.state);
                if let Some(t) = state.snapshots.get(target.as_str()) {
                    if t.kind == Kind::Committed && t.parent == parent && t.remote.is_some() {
                        return Err(Error::exists(target));
                    }
                }
            }
            if let Some(request) = LayerRequest::from_labels(&labels) {
                match self.remote_layer(&request, target) {
                    Ok(Some((image, layer))) => {
                        if self.commit_remote(target, parent, &labels, &image, layer)? {
                            return Err(Error::exists(target));
                        }
                    }
                    Ok(None) => {}
                    // The image still works: containerd downloads it.
                    Err(e) => tracing::warn!(%key, "{e}; normal path"),
                }
            }
        }
        {
            let mut state = lock(&self.state);
            if state.snapshots.contains_key(key) {
                return Err(Error::exists(key));
            }
            check_parent(&state, parent)?;
            let id = state.next_id;
            let dir = self.snapshot_dir(id);
            let made = mkdir(&dir, 0o700)
                .and_then(|()| mkdir(&dir.join("fs"), 0o755))
                .and_then(|()| match kind {
                    Kind::Active => mkdir(&dir.join("work"), 0o711),
                    _ => Ok(()),
                });
            let now = Time::now();
            let mut next = state.clone();
            next.next_id = id + 1;
            next.snapshots.insert(
                key.to_string(),
                Snapshot {
                    id,
                    kind,
                    parent: parent.to_string(),
                    labels,
                    created: now,
                    updated: now,
                    size: 0,
                    inodes: 0,
                    remote: None,
                },
            );
            if let Err(e) = made.and_then(|()| self.store.save(&next)) {
                let _ = fs::remove_dir_all(&dir);
                return Err(e);
            }
            *state = next;
        }
        // A snapshot whose mounts cannot be made is of no use: it goes again.
        self.mounts(key).inspect_err(|_| {
            if let Err(e) = self.remove(key) {
                tracing::warn!(%key, "removing a snapshot that cannot be mounted: {e}");
            }
        })
    }

    /// `Mounts`: how to mount an active snapshot or a view.
    pub fn mounts(&self, key: &str) -> Result<Vec<Mount>, Error> {
        check_key(key)?;
        let (snapshot, lowers) = {
            let state = lock(&self.state);
            let s = state
                .snapshots
                .get(key)
                .ok_or_else(|| Error::not_found(key))?
                .clone();
            if s.kind == Kind::Committed {
                return Err(Error::precondition(key, "not an active snapshot or a view"));
            }
            let mut lowers = Vec::new();
            let mut parent = s.parent.clone();
            let mut steps = 0usize;
            while !parent.is_empty() {
                steps += 1;
                let p = state.snapshots.get(&parent).ok_or_else(|| {
                    Error::precondition(key, format!("ancestor {parent:?} is missing"))
                })?;
                if steps > state.snapshots.len() {
                    return Err(Error::precondition(key, "its ancestry loops"));
                }
                match &p.remote {
                    Some(Remote::Top { image }) => {
                        lowers.push(Lower::Clip(image.clone()));
                        break;
                    }
                    Some(Remote::Lower { image, layer }) => {
                        return Err(Error::precondition(
                            key,
                            format!(
                                "its ancestor {parent:?} is layer {layer} of clip image {image}, \
                                 whose files only the image's top layer shows; remove that \
                                 image (or pull this one with another snapshotter)"
                            ),
                        ));
                    }
                    None => lowers.push(Lower::Dir(self.fs_dir(p.id))),
                }
                parent = p.parent.clone();
            }
            (s, lowers)
        };
        let mut dirs = Vec::with_capacity(lowers.len());
        for lower in lowers {
            dirs.push(match lower {
                Lower::Dir(d) => d,
                Lower::Clip(image) => self.ensure_mounted(&image)?,
            });
        }
        let show = |p: &Path| p.to_string_lossy().into_owned();
        let own = self.fs_dir(snapshot.id);
        if dirs.is_empty() {
            let mode = if snapshot.kind == Kind::View {
                "ro"
            } else {
                "rw"
            };
            return Ok(vec![Mount {
                kind: "bind".into(),
                source: show(&own),
                options: vec![mode.into(), "rbind".into()],
            }]);
        }
        if snapshot.kind == Kind::View && dirs.len() == 1 {
            return Ok(vec![Mount {
                kind: "bind".into(),
                source: show(&dirs[0]),
                options: vec!["ro".into(), "rbind".into()],
            }]);
        }
        let mut options = Vec::new();
        if snapshot.kind == Kind::Active {
            options.push(format!(
                "workdir={}",
                show(&self.snapshot_dir(snapshot.id).join("work"))
            ));
            options.push(format!("upperdir={}", show(&own)));
        }
        let lower: Vec<String> = dirs.iter().map(|d| show(d)).collect();
        options.push(format!("lowerdir={}", lower.join(":")));
        Ok(vec![Mount {
            kind: "overlay".into(),
            source: "overlay".into(),
            options,
        }])
    }

    /// `Commit`: the active snapshot `key` becomes the committed `name`.
    pub fn commit(
        &self,
        name: &str,
        key: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<(), Error> {
        check_key(name)?;
        check_key(key)?;
        check_labels(&labels)?;
        let mut state = lock(&self.state);
        let s = state
            .snapshots
            .get(key)
            .ok_or_else(|| Error::not_found(key))?
            .clone();
        if s.kind != Kind::Active {
            return Err(Error::precondition(key, "not an active snapshot"));
        }
        if state.snapshots.contains_key(name) {
            return Err(Error::exists(name));
        }
        let usage = disk_usage(&self.fs_dir(s.id))?;
        let now = Time::now();
        let mut next = state.clone();
        next.snapshots.remove(key);
        next.snapshots.insert(
            name.to_string(),
            Snapshot {
                kind: Kind::Committed,
                labels,
                created: now,
                updated: now,
                size: usage.size,
                inodes: usage.inodes,
                ..s
            },
        );
        self.store.save(&next)?;
        *state = next;
        // An active snapshot's work directory is of no use once committed.
        let _ = fs::remove_dir_all(self.snapshot_dir(s.id).join("work"));
        Ok(())
    }

    /// `Remove`: a snapshot without children. The last snapshot of a clip image takes its
    /// mount with it.
    pub fn remove(&self, key: &str) -> Result<(), Error> {
        check_key(key)?;
        let (id, unmount) = {
            let mut state = lock(&self.state);
            let s = state
                .snapshots
                .get(key)
                .ok_or_else(|| Error::not_found(key))?
                .clone();
            if state.snapshots.values().any(|c| c.parent == key) {
                return Err(Error::precondition(key, "it has children"));
            }
            let mut next = state.clone();
            next.snapshots.remove(key);
            let mut unmount = None;
            if let Some(Remote::Top { image }) = &s.remote {
                unmount = Some(image.clone());
            }
            if let Some(remote) = &s.remote {
                let image = remote.image();
                if !next
                    .snapshots
                    .values()
                    .any(|o| o.remote.as_ref().is_some_and(|r| r.image() == image))
                {
                    next.images.remove(image);
                    unmount = Some(image.to_string());
                }
            }
            self.store.save(&next)?;
            *state = next;
            (s.id, unmount)
        };
        let dir = self.snapshot_dir(id);
        if let Err(e) = fs::remove_dir_all(&dir) {
            tracing::warn!(dir = %dir.display(), "removing a snapshot's directory: {e}");
        }
        if let Some(image) = unmount {
            self.release_image(&image);
        }
        Ok(())
    }

    /// Unmounts image `digest`, and removes its directory when no snapshot names it.
    fn release_image(&self, digest: &str) {
        let _mounting = lock(&self.mounting);
        let Ok(dir) = self.image_dir(digest) else {
            return;
        };
        let mnt = dir.join("mnt");
        if clip_run::is_mountpoint(&mnt) {
            match self.images.unmount(&mnt) {
                Ok(()) => tracing::info!(image = %digest, "clip mount released"),
                Err(e) => {
                    tracing::warn!(image = %digest, "unmounting {}: {e}", mnt.display());
                    return;
                }
            }
        }
        if !lock(&self.state).images.contains_key(digest) {
            if let Err(e) = fs::remove_dir_all(&dir) {
                tracing::warn!(dir = %dir.display(), "removing an image's directory: {e}");
            }
        }
    }

    fn info(name: &str, s: &Snapshot) -> Info {
        Info {
            name: name.to_string(),
            parent: s.parent.clone(),
            kind: s.kind,
            labels: s.labels.clone(),
            created: s.created,
            updated: s.updated,
        }
    }

    /// `Stat`.
    pub fn stat(&self, key: &str) -> Result<Info, Error> {
        check_key(key)?;
        let state = lock(&self.state);
        let s = state
            .snapshots
            .get(key)
            .ok_or_else(|| Error::not_found(key))?;
        Ok(Self::info(key, s))
    }

    /// `Update`: the labels (the only mutable field), all of them (`labels`, or no field
    /// paths) or one (`labels.KEY`; an empty value removes it).
    pub fn update(
        &self,
        name: &str,
        labels: BTreeMap<String, String>,
        paths: &[String],
    ) -> Result<Info, Error> {
        check_key(name)?;
        check_labels(&labels)?;
        if paths.len() > MAX_LABELS {
            return Err(Error::invalid(format!(
                "more than {MAX_LABELS} field paths"
            )));
        }
        let mut state = lock(&self.state);
        let mut s = state
            .snapshots
            .get(name)
            .ok_or_else(|| Error::not_found(name))?
            .clone();
        if paths.is_empty() {
            s.labels = labels;
        } else {
            for path in paths {
                if let Some(k) = path.strip_prefix("labels.") {
                    match labels.get(k) {
                        Some(v) => s.labels.insert(k.to_string(), v.clone()),
                        None => s.labels.remove(k),
                    };
                } else if path == "labels" {
                    s.labels = labels.clone();
                } else {
                    return Err(Error::invalid(format!(
                        "cannot update field {path:?} of snapshot {name:?}"
                    )));
                }
            }
        }
        // containerd stores no empty label.
        s.labels.retain(|_, v| !v.is_empty());
        check_labels(&s.labels)?;
        s.updated = Time::now();
        let mut next = state.clone();
        next.snapshots.insert(name.to_string(), s.clone());
        self.store.save(&next)?;
        *state = next;
        Ok(Self::info(name, &s))
    }

    /// `List`: the snapshots any of `filters` matches (all when none).
    pub fn list(&self, filters: &[String]) -> Result<Vec<Info>, Error> {
        let filter = Filter::parse_all(filters).map_err(|e| Error::invalid(e.to_string()))?;
        let state = lock(&self.state);
        Ok(state
            .snapshots
            .iter()
            .filter(|(name, s)| {
                filter.matches(&Fields {
                    kind: s.kind.as_str(),
                    name,
                    parent: &s.parent,
                    labels: &s.labels,
                })
            })
            .map(|(name, s)| Self::info(name, s))
            .collect())
    }

    /// `Usage`: measured now for an active snapshot, at commit for a committed one.
    pub fn usage(&self, key: &str) -> Result<Usage, Error> {
        check_key(key)?;
        let s = lock(&self.state)
            .snapshots
            .get(key)
            .ok_or_else(|| Error::not_found(key))?
            .clone();
        match s.kind {
            Kind::Active => disk_usage(&self.fs_dir(s.id)),
            Kind::Committed => Ok(Usage {
                size: s.size,
                inodes: s.inodes,
            }),
            Kind::View => Ok(Usage::default()),
        }
    }

    /// `Cleanup`: removes snapshot and image directories no snapshot names (a crash between
    /// the metadata and the directories leaves them), unmounting image mounts among them.
    pub fn cleanup(&self) -> Result<(), Error> {
        let (ids, images): (HashSet<String>, HashSet<String>) = {
            let state = lock(&self.state);
            (
                state.snapshots.values().map(|s| s.id.to_string()).collect(),
                state
                    .images
                    .keys()
                    .filter_map(|d| digest_hex(d).ok().map(str::to_string))
                    .collect(),
            )
        };
        let snapshots = self.root.join("snapshots");
        for entry in fs::read_dir(&snapshots).map_err(|e| Error::io("list", &snapshots, e))? {
            let entry = entry.map_err(|e| Error::io("list", &snapshots, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !ids.contains(&name) {
                tracing::info!(dir = %entry.path().display(), "removing an unnamed snapshot directory");
                if let Err(e) = fs::remove_dir_all(entry.path()) {
                    tracing::warn!(dir = %entry.path().display(), "{e}");
                }
            }
        }
        let dir = self.root.join("images");
        for entry in fs::read_dir(&dir).map_err(|e| Error::io("list", &dir, e))? {
            let entry = entry.map_err(|e| Error::io("list", &dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !images.contains(&name) {
                let mnt = entry.path().join("mnt");
                let _mounting = lock(&self.mounting);
                if clip_run::is_mountpoint(&mnt) {
                    if let Err(e) = self.images.unmount(&mnt) {
                        tracing::warn!(mnt = %mnt.display(), "unmounting an unused image: {e}");
                        continue;
                    }
                }
                if let Err(e) = fs::remove_dir_all(entry.path()) {
                    tracing::warn!(dir = %entry.path().display(), "{e}");
                }
            }
        }
        Ok(())
    }
}
