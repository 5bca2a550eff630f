//! `--record`: what a mount's reads touched, in first-access order, as a startup profile
//! ([`clip_store::Profile`]): the spans every read needed (named by layer digest and span
//! index) and, for people, the files it read, each with the time of its first access since the
//! mount. Reads the kernel serves from its page cache never reach the mount, which does not
//! matter: only first accesses count.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clip_archive::{Archive, FileType};
use clip_store::{Profile, ProfileFile, ProfileSpan};

/// A file's bytes in its layer: `[start, end)` of layer `layer`'s uncompressed stream.
struct Location {
    layer: u32,
    start: u64,
    end: u64,
    /// Index into [`Recorder::paths`].
    path: usize,
}

#[derive(Default)]
struct Seen {
    /// (layer, span) → first access, ms since the mount.
    spans: HashMap<(u32, usize), u64>,
    /// Index into `paths` → first read.
    files: HashMap<usize, u64>,
}

/// Records the reads of one mount. Shared by the filesystem's threads.
pub struct Recorder {
    start: Instant,
    /// Reads after this long are not recorded (`--record-for`).
    window: Option<Duration>,
    manifest_digest: String,
    layer_digests: Vec<String>,
    /// Span start offsets of every layer, to find the spans a read needs.
    span_starts: Vec<Vec<u64>>,
    /// Where each file's bytes are, sorted by (layer, start).
    locations: Vec<Location>,
    paths: Vec<String>,
    seen: Mutex<Seen>,
}

impl Recorder {
    /// A recorder for `archive`, counting time from now. Walks the tree once (for file
    /// names) and copies the span offsets: memory in proportion to the index.
    pub fn new(archive: &Archive<'_>, window: Option<Duration>) -> Result<Recorder> {
        let mut span_starts = Vec::with_capacity(archive.layers().len());
        for layer in 0..archive.layers().len() {
            let table = archive.spans(u32::try_from(layer).context("too many layers")?)?;
            let starts = table
                .iter()
                .map(|s| s.map(|s| s.uncompressed_offset))
                .collect::<Result<Vec<_>, _>>()?;
            span_starts.push(starts);
        }
        let mut paths = Vec::new();
        let mut locations = Vec::new();
        let mut named = std::collections::HashSet::new();
        for entry in archive.walk() {
            let (path, ino) = entry?;
            let node = archive.inode(ino)?;
            if node.file_type() != FileType::Regular || !named.insert(ino) {
                continue;
            }
            if let Some(data) = node.data() {
                locations.push(Location {
                    layer: data.layer,
                    start: data.offset,
                    end: data.offset.saturating_add(node.size()),
                    path: paths.len(),
                });
                paths.push(String::from_utf8_lossy(&path).into_owned());
            }
        }
        locations.sort_by_key(|l| (l.layer, l.start));
        Ok(Recorder {
            start: Instant::now(),
            window,
            manifest_digest: archive.meta().manifest_digest.clone(),
            layer_digests: archive.layers().iter().map(|l| l.digest.clone()).collect(),
            span_starts,
            locations,
            paths,
            seen: Mutex::new(Seen::default()),
        })
    }

    /// A read of `len` bytes at `offset` of layer `layer` was served.
    pub fn note(&self, layer: u32, offset: u64, len: usize) {
        self.note_after(layer, offset, len, self.start.elapsed());
    }

    /// [`Recorder::note`], `elapsed` after the mount.
    fn note_after(&self, layer: u32, offset: u64, len: usize, elapsed: Duration) {
        if len == 0 || self.window.is_some_and(|w| elapsed > w) {
            return;
        }
        let at_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
        let Some(starts) = usize::try_from(layer)
            .ok()
            .and_then(|l| self.span_starts.get(l))
        else {
            return;
        };
        let end = offset.saturating_add(len as u64);
        // The span holding `offset`, then every span that starts before `end`.
        let first = starts.partition_point(|&s| s <= offset).saturating_sub(1);
        let last = starts.partition_point(|&s| s < end);
        // Reads fall within one file: the last file starting at or before `offset`.
        let file = self
            .locations
            .partition_point(|l| (l.layer, l.start) <= (layer, offset))
            .checked_sub(1)
            .and_then(|i| self.locations.get(i))
            .filter(|l| l.layer == layer && offset < l.end)
            .map(|l| l.path);
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        for span in first..last.max(first + 1) {
            seen.spans.entry((layer, span)).or_insert(at_ms);
        }
        if let Some(file) = file {
            seen.files.entry(file).or_insert(at_ms);
        }
    }

    /// What was recorded so far, as a profile.
    pub fn profile(&self) -> Profile {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let mut recorded = Profile::new(&self.manifest_digest);
        recorded.spans = seen
            .spans
            .iter()
            .filter_map(|(&(layer, span), &at_ms)| {
                Some(ProfileSpan {
                    layer: self
                        .layer_digests
                        .get(usize::try_from(layer).ok()?)?
                        .clone(),
                    span: span as u64,
                    at_ms,
                })
            })
            .collect();
        recorded.files = seen
            .files
            .iter()
            .filter_map(|(&path, &at_ms)| {
                Some(ProfileFile {
                    path: self.paths.get(path)?.clone(),
                    at_ms,
                })
            })
            .collect();
        // Canonical order.
        let mut profile = Profile::new(&self.manifest_digest);
        profile.merge(recorded);
        profile
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clip_archive::{
        write_archive, Compression, DataLocation, ImageMeta, Inode, Layer, Platform, Span, Tree,
    };

    /// One uncompressed layer of 300 bytes in spans at 0, 100 and 200; `/a` is bytes 0..250,
    /// `/d/b` bytes 250..280.
    fn archive() -> Vec<u8> {
        let mut tree = Tree::new(Inode::new(FileType::Directory, 0o755));
        let file = |offset, size| {
            let mut inode = Inode::new(FileType::Regular, 0o644);
            inode.size = size;
            inode.data = Some(DataLocation { layer: 0, offset });
            inode
        };
        let root = tree.root;
        tree.add(root, b"a", file(0, 250));
        let d = tree.add(root, b"d", Inode::new(FileType::Directory, 0o755));
        tree.add(d, b"b", file(250, 30));
        let span = |at: u64| Span {
            compressed_offset: at,
            compressed_end: (at + 100).min(300),
            uncompressed_offset: at,
            bits: 0,
            window: clip_archive::Window::default(),
            digest: [0; 32],
            content_digest: [0; 32],
        };
        let layer = Layer {
            digest: format!("sha256:{}", "a".repeat(64)),
            media_type: "application/vnd.oci.image.layer.v1.tar".into(),
            compression: Compression::None,
            compressed_size: 300,
            uncompressed_size: 300,
            diff_id: format!("sha256:{}", "a".repeat(64)),
            span_size: 100,
            spans: vec![span(0), span(100), span(200)],
        };
        let meta = ImageMeta {
            reference: "localhost/x:1".into(),
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
        write_archive(&meta, &[layer], &tree).unwrap()
    }

    fn spans(p: &Profile) -> Vec<(u64, u64)> {
        p.spans.iter().map(|s| (s.span, s.at_ms)).collect()
    }

    #[test]
    fn reads_become_spans_and_files_in_first_access_order() {
        let bytes = archive();
        let archive = Archive::open(&bytes).unwrap();
        let r = Recorder::new(&archive, None).unwrap();
        let ms = Duration::from_millis;
        // /d/b first (span 2), then 150 bytes of /a from 90 (spans 0 to 2), then /a again.
        r.note_after(0, 250, 30, ms(5));
        r.note_after(0, 90, 150, ms(7));
        r.note_after(0, 0, 10, ms(9));
        let p = r.profile();
        assert_eq!(spans(&p), [(2, 5), (0, 7), (1, 7)]);
        assert!(p
            .spans
            .iter()
            .all(|s| s.layer == archive.layers()[0].digest));
        let files: Vec<_> = p.files.iter().map(|f| (f.path.as_str(), f.at_ms)).collect();
        assert_eq!(files, [("/d/b", 5), ("/a", 7)]);
        assert_eq!(p.manifest_digest, archive.meta().manifest_digest);
        // Out-of-range input is ignored, not a panic.
        r.note_after(7, 0, 10, ms(1));
        r.note_after(0, u64::MAX - 1, 10, ms(1));
    }

    #[test]
    fn nothing_is_recorded_past_the_window() {
        let bytes = archive();
        let archive = Archive::open(&bytes).unwrap();
        let r = Recorder::new(&archive, Some(Duration::from_secs(10))).unwrap();
        r.note_after(0, 0, 5, Duration::from_secs(11));
        assert!(r.profile().spans.is_empty());
        r.note_after(0, 0, 5, Duration::from_secs(10));
        assert_eq!(spans(&r.profile()), [(0, 10_000)]);
    }
}
