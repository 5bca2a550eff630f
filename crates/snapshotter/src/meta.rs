//! The snapshotter's state, persisted under its root directory.
//!
//! One JSON document, `ROOT/metadata.json`, holds every snapshot (by key or name) and every
//! clip image the snapshots refer to. Each change writes the whole document to
//! `metadata.json.tmp`, fsyncs it, renames it over the old one and fsyncs the directory: a
//! crash (kill -9, power loss) leaves either the old or the new state, never a torn one. The
//! document is small — a few hundred bytes per snapshot — and containerd's calls are few, so
//! rewriting it is cheap next to what each call does (mkdir, mount).
//!
//! Order of effects, so that a crash never leaves metadata pointing at nothing: directories
//! are created before the metadata that names them is written, and removed after the metadata
//! that named them is gone. What a crash can leave is an unnamed directory, which
//! [`crate::Snapshotter::cleanup`] (and every start) removes.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read as _, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// The format version of `metadata.json`; a newer one is refused.
pub const VERSION: u32 = 1;

/// The largest metadata file read back (about a million snapshots).
const MAX_METADATA_BYTES: u64 = 512 << 20;

/// containerd's snapshot kinds (no `Unknown`: nothing is stored without a kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A read-only view of its parent.
    View,
    /// Writable; may be committed.
    Active,
    /// Immutable; may be a parent.
    Committed,
}

impl Kind {
    /// The name filters use.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::View => "view",
            Kind::Active => "active",
            Kind::Committed => "committed",
        }
    }
}

/// A point in time, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Time {
    /// Seconds since the epoch.
    pub secs: u64,
    /// Nanoseconds within the second.
    pub nanos: u32,
}

impl Time {
    /// Now.
    pub fn now() -> Time {
        let d = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        Time {
            secs: d.as_secs(),
            nanos: d.subsec_nanos(),
        }
    }

    /// As a `SystemTime`.
    pub fn system(self) -> SystemTime {
        UNIX_EPOCH + Duration::new(self.secs, self.nanos.min(999_999_999))
    }
}

/// What a snapshot served by clip stands for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Remote {
    /// The image's top layer: its contents are the whole image, the clip mount.
    Top {
        /// The image (its manifest digest; a key of [`State::images`]).
        image: String,
    },
    /// A lower layer of the image: empty, its contents are in the top layer's mount.
    Lower {
        /// The image.
        image: String,
        /// Its position in the image, from the bottom.
        layer: usize,
    },
}

impl Remote {
    /// The image's manifest digest.
    pub fn image(&self) -> &str {
        match self {
            Remote::Top { image } | Remote::Lower { image, .. } => image,
        }
    }
}

/// One snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Its directory: `ROOT/snapshots/ID`.
    pub id: u64,
    /// Its kind.
    pub kind: Kind,
    /// The parent's name, empty for none.
    #[serde(default)]
    pub parent: String,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Created.
    pub created: Time,
    /// Last changed.
    pub updated: Time,
    /// For a committed snapshot: bytes used, measured when committed.
    #[serde(default)]
    pub size: i64,
    /// For a committed snapshot: inodes used, measured when committed.
    #[serde(default)]
    pub inodes: i64,
    /// Set when clip serves this layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<Remote>,
}

/// A clip image the snapshots refer to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// The image reference, pinned to its manifest digest.
    pub reference: String,
    /// Its index (a `.clip` file in clip's local index store).
    pub index: PathBuf,
    /// Number of layers.
    pub layers: usize,
    /// The complete index blob in the image's repository, when `index` holds only the
    /// metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub windows_blob: Option<String>,
}

/// Everything persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// [`VERSION`].
    pub version: u32,
    /// The next snapshot id.
    pub next_id: u64,
    /// Snapshots by key (active, view) or name (committed).
    pub snapshots: BTreeMap<String, Snapshot>,
    /// Clip images by manifest digest.
    #[serde(default)]
    pub images: BTreeMap<String, Image>,
}

impl Default for State {
    fn default() -> State {
        State {
            version: VERSION,
            next_id: 1,
            snapshots: BTreeMap::new(),
            images: BTreeMap::new(),
        }
    }
}

/// Reads and writes [`State`] at `ROOT/metadata.json`.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    path: PathBuf,
}

impl Store {
    /// The store of root directory `dir` (which exists).
    pub fn new(dir: &Path) -> Store {
        Store {
            dir: dir.to_path_buf(),
            path: dir.join("metadata.json"),
        }
    }

    /// The state kept, or a fresh one when there is none yet.
    pub fn load(&self) -> Result<State, Error> {
        let file = match fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(State::default()),
            Err(e) => return Err(Error::io("open", &self.path, e)),
        };
        let mut bytes = Vec::new();
        file.take(MAX_METADATA_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| Error::io("read", &self.path, e))?;
        if bytes.len() as u64 > MAX_METADATA_BYTES {
            return Err(self.bad(format!("larger than {MAX_METADATA_BYTES} bytes")));
        }
        let state: State = serde_json::from_slice(&bytes).map_err(|e| self.bad(e.to_string()))?;
        if state.version != VERSION {
            return Err(self.bad(format!(
                "format version {} (this clip reads {VERSION})",
                state.version
            )));
        }
        if let Some((key, s)) = state.snapshots.iter().find(|(_, s)| s.id >= state.next_id) {
            return Err(self.bad(format!("snapshot {key:?} has id {} ≥ next id", s.id)));
        }
        Ok(state)
    }

    fn bad(&self, reason: String) -> Error {
        Error::Metadata {
            path: self.path.clone(),
            reason,
        }
    }

    /// Replaces the state kept with `state`, atomically and durably.
    pub fn save(&self, state: &State) -> Result<(), Error> {
        let bytes = serde_json::to_vec(state).map_err(|e| self.bad(e.to_string()))?;
        let tmp = self.dir.join("metadata.json.tmp");
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc_o_nofollow())
            .open(&tmp)
            .map_err(|e| Error::io("create", &tmp, e))?;
        file.write_all(&bytes)
            .and_then(|()| file.sync_all())
            .map_err(|e| Error::io("write", &tmp, e))?;
        drop(file);
        fs::rename(&tmp, &self.path).map_err(|e| Error::io("rename", &self.path, e))?;
        fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io("sync", &self.dir, e))
    }
}

fn libc_o_nofollow() -> i32 {
    rustix::fs::OFlags::NOFOLLOW.bits() as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::new(dir.path());
        assert_eq!(store.load().expect("empty"), State::default());
        let mut state = State::default();
        state.snapshots.insert(
            "k".into(),
            Snapshot {
                id: 1,
                kind: Kind::Active,
                parent: String::new(),
                labels: BTreeMap::from([("a".into(), "b".into())]),
                created: Time::now(),
                updated: Time::now(),
                size: 0,
                inodes: 0,
                remote: Some(Remote::Lower {
                    image: "sha256:x".into(),
                    layer: 0,
                }),
            },
        );
        state.next_id = 2;
        store.save(&state).expect("save");
        assert_eq!(store.load().expect("load"), state);

        fs::write(dir.path().join("metadata.json"), b"{\"version\":1,\"next").expect("write");
        assert!(matches!(store.load(), Err(Error::Metadata { .. })));
        fs::write(
            dir.path().join("metadata.json"),
            b"{\"version\":9,\"next_id\":1,\"snapshots\":{}}",
        )
        .expect("write");
        assert!(matches!(store.load(), Err(Error::Metadata { .. })));
    }
}
