//! Test support: build small images in memory and serve their bytes without a network.
//!
//! [`ImageBuilder`] makes a [`Tree`] from paths (parents are created as needed), lays the file
//! contents out in fake uncompressed tar layers (a 512-byte gap before each file, padding to
//! 512 after it, like tar) and writes the archive. [`MemoryContent`] serves those layers, and
//! plays a local cache for the ranges a test marks as cached; [`Gate`] makes reads of one
//! layer block until a test releases them, so that tests can prove a slow read does not hold
//! up anything else without sleeping.
//!
//! These helpers panic on misuse (a hardlink to a path that does not exist, ...): they are
//! for tests.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use clip_archive::{
    Archive, ArchiveError, Compression, DataLocation, FileType, ImageMeta, Inode, Layer, Platform,
    Span, Tree,
};

use crate::content::{ContentError, ContentSource};

/// Builds an image from paths. See the [module docs](self).
#[derive(Debug)]
pub struct ImageBuilder {
    tree: Tree,
    by_path: HashMap<String, usize>,
    layers: Vec<Vec<u8>>,
}

impl Default for ImageBuilder {
    fn default() -> Self {
        ImageBuilder::new()
    }
}

impl ImageBuilder {
    /// An image with only a root directory (mode 0755, owned by 0:0).
    pub fn new() -> Self {
        let tree = Tree::new(Inode::new(FileType::Directory, 0o755));
        let by_path = HashMap::from([("/".to_string(), tree.root)]);
        ImageBuilder {
            tree,
            by_path,
            layers: vec![Vec::new()],
        }
    }

    /// Adds `inode` at absolute `path` (missing parents become 0755 directories); returns its
    /// index, for [`ImageBuilder::inode_mut`].
    pub fn add(&mut self, path: &str, inode: Inode) -> usize {
        let (parent, name) = split(path);
        let dir = self.ensure_dir(parent);
        let idx = self.tree.add(dir, name, inode);
        self.by_path.insert(path.to_string(), idx);
        idx
    }

    /// Adds a directory.
    pub fn dir(&mut self, path: &str, mode: u32) -> usize {
        if let Some(&idx) = self.by_path.get(path) {
            self.tree.inodes[idx].mode = mode;
            return idx;
        }
        self.add(path, Inode::new(FileType::Directory, mode))
    }

    /// Adds a regular file whose bytes are in layer 0.
    pub fn file(&mut self, path: &str, mode: u32, content: &[u8]) -> usize {
        self.file_in_layer(0, path, mode, content)
    }

    /// Adds a regular file whose bytes are in layer `layer` (layers are created as needed).
    pub fn file_in_layer(&mut self, layer: u32, path: &str, mode: u32, content: &[u8]) -> usize {
        let mut inode = Inode::new(FileType::Regular, mode);
        inode.size = content.len() as u64;
        if !content.is_empty() {
            let offset = self.append(layer, content);
            inode.data = Some(DataLocation { layer, offset });
        }
        self.add(path, inode)
    }

    /// Adds a symbolic link.
    pub fn symlink(&mut self, path: &str, target: &str) -> usize {
        let mut inode = Inode::new(FileType::Symlink, 0o777);
        inode.size = target.len() as u64;
        inode.symlink_target = target.as_bytes().to_vec();
        self.add(path, inode)
    }

    /// Names the inode at `existing` also as `path` (a hardlink).
    pub fn hardlink(&mut self, path: &str, existing: &str) -> usize {
        let idx = *self
            .by_path
            .get(existing)
            .unwrap_or_else(|| panic!("hardlink target {existing} does not exist"));
        let (parent, name) = split(path);
        let dir = self.ensure_dir(parent);
        self.tree.link(dir, name, idx);
        self.by_path.insert(path.to_string(), idx);
        idx
    }

    /// The inode at index `idx`, to set owners, times, xattrs...
    pub fn inode_mut(&mut self, idx: usize) -> &mut Inode {
        &mut self.tree.inodes[idx]
    }

    /// Writes the archive (leaking its bytes, as a mount does with its mapping) and returns it
    /// with a [`MemoryContent`] holding the layers.
    pub fn build(self) -> Result<(Arc<Archive<'static>>, MemoryContent), ArchiveError> {
        let meta = ImageMeta {
            reference: "localhost/clip-test:latest".into(),
            manifest_digest: format!("sha256:{}", "0".repeat(64)),
            manifest_media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            platform: Platform {
                os: "linux".into(),
                architecture: "amd64".into(),
                variant: None,
            },
            config_digest: format!("sha256:{}", "1".repeat(64)),
            config: "{}".into(),
        };
        let layers: Vec<Layer> = self
            .layers
            .iter()
            .enumerate()
            .map(|(i, bytes)| Layer {
                digest: format!("sha256:{i:064x}"),
                media_type: "application/vnd.oci.image.layer.v1.tar".into(),
                compression: Compression::None,
                compressed_size: bytes.len() as u64,
                uncompressed_size: bytes.len() as u64,
                diff_id: format!("sha256:{i:064x}"),
                span_size: 1 << 20,
                spans: vec![Span {
                    compressed_offset: 0,
                    compressed_end: bytes.len() as u64,
                    uncompressed_offset: 0,
                    bits: 0,
                    window: clip_archive::Window::default(),
                    digest: [0; 32],
                    content_digest: [0; 32],
                }],
            })
            .collect();
        let bytes = clip_archive::write_archive(&meta, &layers, &self.tree)?;
        let archive = Archive::open_owned(bytes)?;
        Ok((Arc::new(archive), MemoryContent::new(self.layers)))
    }

    fn ensure_dir(&mut self, path: &str) -> usize {
        match self.by_path.get(path) {
            Some(&idx) => idx,
            None => self.add(path, Inode::new(FileType::Directory, 0o755)),
        }
    }

    fn append(&mut self, layer: u32, content: &[u8]) -> u64 {
        let layer = layer as usize;
        if self.layers.len() <= layer {
            self.layers.resize_with(layer + 1, Vec::new);
        }
        let bytes = &mut self.layers[layer];
        bytes.extend_from_slice(&[0; 512]);
        let offset = bytes.len() as u64;
        bytes.extend_from_slice(content);
        bytes.resize(bytes.len().next_multiple_of(512), 0);
        offset
    }
}

fn split(path: &str) -> (&str, &str) {
    let path = path.trim_end_matches('/');
    match path.rfind('/') {
        Some(0) => ("/", &path[1..]),
        Some(i) => (&path[..i], &path[i + 1..]),
        None => panic!("{path:?} is not an absolute path"),
    }
}

/// Layers held in memory, served as a [`ContentSource`]; counts the calls it gets.
///
/// [`ContentSource::read_at`] serves every layer (after waiting at the layer's [`Gate`], if
/// any). [`ContentSource::read_cached`] plays a local cache: it serves only the ranges marked
/// with [`MemoryContent::cache`] (never waiting at a gate) and answers `None` elsewhere; by
/// default nothing is cached.
#[derive(Debug)]
pub struct MemoryContent {
    layers: Vec<Vec<u8>>,
    gates: HashMap<u32, Arc<Gate>>,
    cached: HashMap<u32, Vec<Range<u64>>>,
    reads: AtomicU64,
    cached_reads: AtomicU64,
}

impl MemoryContent {
    /// Serves `layers` (index = layer number).
    pub fn new(layers: Vec<Vec<u8>>) -> Self {
        MemoryContent {
            layers,
            gates: HashMap::new(),
            cached: HashMap::new(),
            reads: AtomicU64::new(0),
            cached_reads: AtomicU64::new(0),
        }
    }

    /// From now on, `read_cached` serves `range` of `layer`'s stream (as a cache holding those
    /// bytes would), one range at a time: a read that starts in a cached range gets at most
    /// the bytes up to its end. `0..u64::MAX` caches the whole layer.
    pub fn cache(&mut self, layer: u32, range: Range<u64>) {
        self.cached.entry(layer).or_default().push(range);
    }

    /// How many times `read_cached` was called (whatever it answered).
    pub fn cached_reads(&self) -> u64 {
        self.cached_reads.load(Ordering::SeqCst)
    }

    /// From now on, reads of `layer` wait at the returned gate until it opens.
    pub fn gate(&mut self, layer: u32) -> Arc<Gate> {
        self.gates
            .entry(layer)
            .or_insert_with(|| Arc::new(Gate::default()))
            .clone()
    }

    /// How many times `read_at` was called (`read_cached` calls are not counted here).
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::SeqCst)
    }

    /// The bytes of a layer.
    pub fn layer(&self, layer: u32) -> &[u8] {
        self.layers.get(layer as usize).map_or(&[], Vec::as_slice)
    }
}

impl ContentSource for MemoryContent {
    fn read_at(
        &self,
        layer: u32,
        offset: u64,
        buf: &mut [u8],
        _file_end: u64,
        _since: std::time::Instant,
    ) -> Result<usize, ContentError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        if let Some(gate) = self.gates.get(&layer) {
            gate.pass();
        }
        copy_out(
            self.layers.get(layer as usize).map(Vec::as_slice),
            layer,
            offset,
            buf,
        )
    }

    fn read_cached(
        &self,
        layer: u32,
        offset: u64,
        buf: &mut [u8],
        _file_end: u64,
    ) -> Option<Result<usize, ContentError>> {
        self.cached_reads.fetch_add(1, Ordering::SeqCst);
        let range = self
            .cached
            .get(&layer)?
            .iter()
            .find(|r| r.contains(&offset))?;
        let want = usize::try_from(range.end - offset).unwrap_or(usize::MAX);
        let want = buf.len().min(want);
        Some(copy_out(
            self.layers.get(layer as usize).map(Vec::as_slice),
            layer,
            offset,
            &mut buf[..want],
        ))
    }
}

/// Copies the bytes of `layer` at `offset` into `buf`; fewer at the end of the layer.
fn copy_out(
    bytes: Option<&[u8]>,
    layer: u32,
    offset: u64,
    buf: &mut [u8],
) -> Result<usize, ContentError> {
    let bytes = bytes.ok_or_else(|| ContentError::io(format!("no layer {layer}")))?;
    let start = usize::try_from(offset)
        .unwrap_or(usize::MAX)
        .min(bytes.len());
    let n = buf.len().min(bytes.len() - start);
    buf[..n].copy_from_slice(&bytes[start..start + n]);
    Ok(n)
}

/// A gate that readers wait at until a test opens it.
#[derive(Debug, Default)]
pub struct Gate {
    /// (open, number of readers waiting)
    state: Mutex<(bool, usize)>,
    changed: Condvar,
}

impl Gate {
    /// Lets every waiting and future reader through.
    pub fn open(&self) {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).0 = true;
        self.changed.notify_all();
    }

    /// Waits until at least `n` readers are waiting at the gate; false if that did not happen
    /// within `timeout` (a test failure, not a synchronization device).
    pub fn wait_for_waiters(&self, n: usize, timeout: Duration) -> bool {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let (state, _) = self
            .changed
            .wait_timeout_while(state, timeout, |(open, waiting)| !*open && *waiting < n)
            .unwrap_or_else(PoisonError::into_inner);
        state.1 >= n
    }

    fn pass(&self) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.0 {
            return;
        }
        state.1 += 1;
        self.changed.notify_all();
        let mut state = self
            .changed
            .wait_while(state, |(open, _)| !*open)
            .unwrap_or_else(PoisonError::into_inner);
        state.1 -= 1;
    }
}
