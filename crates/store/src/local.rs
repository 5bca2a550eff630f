//! The local index store: `<cache dir>/indexes/f<format>/<alg>-<hex>.clip`, one index per image
//! manifest digest, with `<alg>-<hex>.json` saying where it came from. Private like the span
//! cache (directories `0700`, files `0600`, nothing below followed through a symlink); entries
//! are published by rename, so a crash never leaves half an index under a final name.

use std::fs::File;
use std::io::{self, Read, Write as _};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use clip_archive::{Archive, FORMAT_VERSION};
use clip_registry::{Client, Descriptor, Reference, RegistryError, ResolvedImage};
use clip_sys::private::{open_dir_at, open_private_dir, FILE_MODE};
use rustix::fs::{AtFlags, Mode, OFlags};
use serde::{Deserialize, Serialize};

use crate::artifact::{digest_of, index_blob, index_metadata, profile_blob};
use crate::{FoundIndex, Profile, StoreError};

/// Where an index in the store came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "source", rename_all = "lowercase")]
pub enum Origin {
    /// Downloaded from the image's repository.
    Registry {
        /// The artifact manifest digest.
        artifact: String,
        /// The index blob's digest, when only its metadata was downloaded: the seek windows
        /// are read from this blob, in the image's repository, by range.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        blob: Option<String>,
    },
    /// Made on this machine (`clip index`).
    Local,
}

/// What an image reference resolved to when its registry was last reached
/// ([`IndexStore::remember`]), so that a machine can start the image while its registry is
/// unreachable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolution {
    /// The reference as typed, normalised (`docker.io/library/alpine:latest`).
    pub reference: String,
    /// The platform it was resolved for (`linux/amd64`).
    pub platform: String,
    /// The manifest digest it resolved to.
    pub manifest_digest: String,
    /// When (seconds since the epoch).
    pub resolved_at: u64,
}

/// The name of a reference's resolution record: the sha256 of reference and platform (a
/// reference may hold any character a path must not).
fn resolution_name(reference: &str, platform: &str) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(format!("{reference}\n{platform}").as_bytes());
    format!("ref-{}.json", hex::encode(digest))
}

/// An index in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredIndex {
    /// The `.clip` file.
    pub path: PathBuf,
    /// Where it came from.
    pub origin: Origin,
}

/// What [`IndexStore::download_profile`] got: the profile, and where its startup pack is if
/// the artifact has one.
#[derive(Debug, Clone)]
pub struct DownloadedProfile {
    /// The profile, checked.
    pub profile: Profile,
    /// The startup pack, not downloaded: the mount that replays the profile downloads it
    /// while it starts, and only when the cache lacks some of the profile's spans.
    pub pack: Option<PackRef>,
}

/// A startup pack in the image's repository: a blob of the profile artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackRef {
    /// Its digest (`sha256:…`).
    pub digest: String,
    /// Its size in bytes, at most [`crate::MAX_PACK_BYTES`].
    pub size: u64,
}

impl PackRef {
    fn check(self) -> Option<PackRef> {
        (self.digest.starts_with("sha256:")
            && file_stem(&self.digest).is_some()
            && self.size <= crate::MAX_PACK_BYTES)
            .then_some(self)
    }
}

/// The local index store of one cache directory.
#[derive(Debug)]
pub struct IndexStore {
    dir: OwnedFd,
    path: PathBuf,
}

static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// The most read of a small record of the store (an origin, a resolution, a pack's place).
const SMALL_FILE_BYTES: u64 = 64 << 10;

/// `sha256:ab…` → `sha256-ab…`, only for well-formed digests (the name becomes a path).
fn file_stem(manifest_digest: &str) -> Option<String> {
    let (algorithm, hex) = manifest_digest.split_once(':')?;
    let len = match algorithm {
        "sha256" => 64,
        "sha512" => 128,
        _ => return None,
    };
    (hex.len() == len && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .then(|| format!("{algorithm}-{hex}"))
}

impl IndexStore {
    /// The store of the cache directory `cache_dir` (created, private; see the module doc).
    pub fn open(cache_dir: &Path) -> Result<IndexStore, StoreError> {
        let root = open_private_dir(cache_dir).map_err(StoreError::NotPrivate)?;
        let indexes = cache_dir.join("indexes");
        let io = |path: &Path, error| StoreError::Io {
            path: path.to_path_buf(),
            error,
        };
        let parent =
            open_dir_at(root.as_fd(), "indexes", true, &indexes).map_err(|e| io(&indexes, e))?;
        let name = format!("f{FORMAT_VERSION}");
        let path = indexes.join(&name);
        let dir = open_dir_at(parent.as_fd(), &name, true, &path).map_err(|e| io(&path, e))?;
        Ok(IndexStore { dir, path })
    }

    /// The directory of the store.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, name: &str, error: io::Error) -> StoreError {
        StoreError::Io {
            path: self.path.join(name),
            error,
        }
    }

    fn stem(&self, manifest_digest: &str) -> Result<String, StoreError> {
        file_stem(manifest_digest).ok_or_else(|| {
            self.io(
                manifest_digest,
                io::Error::new(io::ErrorKind::InvalidInput, "not a sha256/sha512 digest"),
            )
        })
    }

    /// The index of the image with this manifest digest, if the store has one.
    pub fn get(&self, manifest_digest: &str) -> Result<Option<StoredIndex>, StoreError> {
        let stem = self.stem(manifest_digest)?;
        let name = format!("{stem}.clip");
        match clip_sys::private::stat_at(self.dir.as_fd(), &name) {
            Ok(st) if st.is_file() => {}
            Ok(_) => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io(&name, e)),
        }
        let origin = self
            .read_small(&format!("{stem}.json"))
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Origin::Local);
        Ok(Some(StoredIndex {
            path: self.path.join(name),
            origin,
        }))
    }

    /// Records that `reference` resolved to `manifest_digest` for `platform` just now. Best
    /// effort: a record that cannot be written only costs an offline start.
    pub fn remember(&self, reference: &str, platform: &str, manifest_digest: &str) {
        if file_stem(manifest_digest).is_none() {
            return;
        }
        let record = Resolution {
            reference: reference.to_string(),
            platform: platform.to_string(),
            manifest_digest: manifest_digest.to_string(),
            resolved_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        };
        let name = resolution_name(reference, platform);
        let json = serde_json::to_vec(&record).unwrap_or_default();
        let written = self.write_atomically(&name, &json, true);
        if let Err(e) = written {
            tracing::warn!(%reference, error = %e, "cannot record what the reference resolved to");
        }
    }

    /// What `reference` last resolved to for `platform` ([`IndexStore::remember`]), if that
    /// was recorded and names a well-formed digest.
    pub fn recall(&self, reference: &str, platform: &str) -> Option<Resolution> {
        let bytes = self.read_small(&resolution_name(reference, platform))?;
        let record: Resolution = serde_json::from_slice(&bytes).ok()?;
        (record.reference == reference
            && record.platform == platform
            && file_stem(&record.manifest_digest).is_some())
        .then_some(record)
    }

    /// The startup profile kept for the image with this manifest digest, if any. A profile
    /// that does not parse is reported as an error (and left for [`IndexStore::put_profile`]
    /// to replace).
    pub fn profile(&self, manifest_digest: &str) -> Result<Option<Profile>, StoreError> {
        let name = format!("{}.profile.json", self.stem(manifest_digest)?);
        let Some(bytes) = self.read_if_any(&name, crate::MAX_PROFILE_BYTES)? else {
            return Ok(None);
        };
        Profile::parse(&bytes, manifest_digest)
            .map(Some)
            .map_err(|error| StoreError::Profile {
                what: self.path.join(&name).display().to_string(),
                error,
            })
    }

    /// Keeps `profile` as the startup profile of its image (replacing the one kept before;
    /// merging is the caller's choice). Published atomically.
    pub fn put_profile(&self, profile: &Profile) -> Result<PathBuf, StoreError> {
        let name = format!("{}.profile.json", self.stem(&profile.manifest_digest)?);
        self.write_atomically(&name, &profile.to_json(), true)?;
        Ok(self.path.join(name))
    }

    /// Downloads the profile artifact `found` of the image whose manifest is `manifest_digest`:
    /// the artifact manifest checked, the profile blob verified against its digest and size,
    /// the profile parsed and checked ([`Profile::parse`]). Its startup pack, if it has one,
    /// is only named (at most [`crate::MAX_PACK_BYTES`]). Not kept: see
    /// [`IndexStore::put_profile`] and [`IndexStore::put_pack_ref`].
    pub fn download_profile(
        &self,
        client: &Client,
        image: &Reference,
        found: &FoundIndex,
        manifest_digest: &str,
    ) -> Result<DownloadedProfile, StoreError> {
        let (blob, pack) = profile_blob(client, image, &found.artifact, manifest_digest)?;
        let mut reader = client.blob_reader(image, &blob.digest, blob.size)?;
        let mut bytes = Vec::new();
        reader
            .read_to_end(&mut bytes)
            .map_err(RegistryError::from_io_owned)
            .map_err(StoreError::Registry)?;
        let profile =
            Profile::parse(&bytes, manifest_digest).map_err(|error| StoreError::Profile {
                what: format!("{} of {image}", found.artifact.digest),
                error,
            })?;
        Ok(DownloadedProfile {
            profile,
            pack: pack.map(|p| PackRef {
                digest: p.digest,
                size: p.size,
            }),
        })
    }

    /// Keeps where the startup pack of the image with this manifest digest is in its registry
    /// (replacing what was kept), or forgets it when `None`. Published atomically.
    pub fn put_pack_ref(
        &self,
        manifest_digest: &str,
        pack: Option<&PackRef>,
    ) -> Result<(), StoreError> {
        let name = format!("{}.pack.json", self.stem(manifest_digest)?);
        match pack {
            Some(pack) => {
                let json = serde_json::to_vec(pack).unwrap_or_default();
                self.write_atomically(&name, &json, false)
            }
            None => self.unlink_if_any(&name),
        }
    }

    /// Where the startup pack of the image with this manifest digest is in its registry, if
    /// that was kept (a record that does not parse counts as none).
    pub fn pack_ref(&self, manifest_digest: &str) -> Result<Option<PackRef>, StoreError> {
        let name = format!("{}.pack.json", self.stem(manifest_digest)?);
        Ok(self
            .read_if_any(&name, SMALL_FILE_BYTES)?
            .and_then(|bytes| serde_json::from_slice::<PackRef>(&bytes).ok())
            .and_then(PackRef::check))
    }

    /// Keeps `pack` as the startup pack of the image with this manifest digest (replacing the
    /// one kept before), or drops the one kept when `None`. Published atomically.
    pub fn put_pack(&self, manifest_digest: &str, pack: Option<&[u8]>) -> Result<(), StoreError> {
        let name = format!("{}.pack", self.stem(manifest_digest)?);
        let Some(pack) = pack else {
            return self.unlink_if_any(&name);
        };
        // Not synced: a pack is parsed and its bytes verified when used.
        self.write_atomically(&name, pack, false)
    }

    /// The startup pack kept for the image with this manifest digest, if any (at most
    /// [`crate::MAX_PACK_BYTES`]; its format is checked by whoever reads it).
    pub fn pack(&self, manifest_digest: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let name = format!("{}.pack", self.stem(manifest_digest)?);
        self.read_if_any(&name, crate::MAX_PACK_BYTES)
    }

    /// The size of the startup pack of the image with this manifest digest, if any: the one
    /// kept here, else the one named in its registry.
    pub fn pack_size(&self, manifest_digest: &str) -> Result<Option<u64>, StoreError> {
        let name = format!("{}.pack", self.stem(manifest_digest)?);
        match clip_sys::private::stat_at(self.dir.as_fd(), &name) {
            Ok(st) if st.is_file() => Ok(Some(st.size)),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Ok(self.pack_ref(manifest_digest)?.map(|p| p.size))
            }
            Err(e) => Err(self.io(&name, e)),
        }
    }

    /// Removes the index of this manifest digest (one found not to fit its image).
    pub fn remove(&self, manifest_digest: &str) -> Result<(), StoreError> {
        let stem = self.stem(manifest_digest)?;
        for name in [
            format!("{stem}.clip"),
            format!("{stem}.json"),
            format!("{stem}.profile.json"),
            format!("{stem}.pack"),
            format!("{stem}.pack.json"),
        ] {
            self.unlink_if_any(&name)?;
        }
        Ok(())
    }

    /// Stores `bytes` (an index, checked by the caller) as the index of `manifest_digest`.
    pub fn insert(
        &self,
        manifest_digest: &str,
        bytes: &[u8],
        origin: Origin,
    ) -> Result<StoredIndex, StoreError> {
        let stem = self.stem(manifest_digest)?;
        let (temp, mut file) = self.temp_file(&stem)?;
        let written = file
            .write_all(bytes)
            .and_then(|()| file.sync_all())
            .map_err(|e| self.io(&temp, e));
        self.publish(written, &temp, &stem, &origin)
    }

    /// Downloads the index artifact `found` of `image` into the store: the artifact manifest
    /// checked; the index's metadata alone when the manifest names its length and digest
    /// (one range read, verified against that digest: the seek windows stay in the registry,
    /// read by range when a span needs one), else the whole blob (verified against its digest
    /// while it streams to a temp file); the archive opened (checksum, structure) and bound to
    /// `resolved` (the image as the registry describes it now) with [`check_binding`]; only
    /// then published.
    pub fn download(
        &self,
        client: &Client,
        image: &Reference,
        found: &FoundIndex,
        resolved: &ResolvedImage,
    ) -> Result<StoredIndex, StoreError> {
        let (blob, compressed) =
            index_blob(client, image, &found.artifact, &resolved.manifest_digest)?;
        let metadata = index_metadata(image, &found.artifact, &blob)?;
        let stem = self.stem(&resolved.manifest_digest)?;
        let (temp, mut file) = self.temp_file(&stem)?;
        let what = format!("{} of {image}", found.artifact.digest);
        let downloaded = (|| {
            let bytes = match &metadata {
                Some((len, digest)) => {
                    let bytes = download_metadata(
                        client,
                        image,
                        &found.artifact,
                        (&blob, compressed.as_ref()),
                        *len,
                        digest,
                    )?;
                    // Not synced: a downloaded index is checked each time it is used (checksum,
                    // binding), and one a crash tore is downloaded again.
                    file.write_all(&bytes).map_err(|e| self.io(&temp, e))?;
                    bytes
                }
                None => {
                    let mut reader = client.blob_reader(image, &blob.digest, blob.size)?;
                    io::copy(&mut reader, &mut file).map_err(|e| {
                        match RegistryError::from_io(&e) {
                            Some(_) => StoreError::Registry(RegistryError::from_io_owned(e)),
                            None => self.io(&temp, e),
                        }
                    })?;
                    let mut bytes = Vec::new();
                    self.open_file(&temp)?
                        .read_to_end(&mut bytes)
                        .map_err(|e| self.io(&temp, e))?;
                    bytes
                }
            };
            let archive = Archive::open(&bytes).map_err(|error| StoreError::Archive {
                what: what.clone(),
                error,
            })?;
            check_binding(&archive, resolved).map_err(|reason| StoreError::NotBound {
                what: what.clone(),
                image: image.to_string(),
                reason,
            })
        })();
        self.publish(
            downloaded,
            &temp,
            &stem,
            &Origin::Registry {
                artifact: found.artifact.digest.clone(),
                blob: metadata.map(|_| blob.digest.clone()),
            },
        )
    }

    /// A new temp file in the store (`O_EXCL`, `0600` whatever the umask).
    fn temp_file(&self, stem: &str) -> Result<(String, File), StoreError> {
        let seq = TEMP_SEQ.fetch_add(1, Ordering::Relaxed);
        let temp = format!(".tmp-{}-{seq}-{stem}", std::process::id());
        let fd = rustix::fs::openat(
            self.dir.as_fd(),
            temp.as_str(),
            OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(FILE_MODE),
        )
        .map_err(|e| self.io(&temp, e.into()))?;
        let file = File::from(fd);
        file.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))
            .map_err(|e| self.io(&temp, e))?;
        Ok((temp, file))
    }

    fn open_file(&self, name: &str) -> Result<File, StoreError> {
        rustix::fs::openat(
            self.dir.as_fd(),
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map(File::from)
        .map_err(|e| self.io(name, e.into()))
    }

    /// The file `name` of the store, at most `cap` bytes of it (one more, so that the reader
    /// sees it is too long); `None` when there is none.
    fn read_if_any(&self, name: &str, cap: u64) -> Result<Option<Vec<u8>>, StoreError> {
        match self.open_file(name) {
            Ok(file) => {
                let mut bytes = Vec::new();
                file.take(cap + 1)
                    .read_to_end(&mut bytes)
                    .map_err(|e| self.io(name, e))?;
                Ok(Some(bytes))
            }
            Err(StoreError::Io { error, .. }) if error.kind() == io::ErrorKind::NotFound => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Writes `bytes` as the file `name` of the store: a temp file (synced when `sync`)
    /// renamed into place, removed when anything failed.
    fn write_atomically(&self, name: &str, bytes: &[u8], sync: bool) -> Result<(), StoreError> {
        let (temp, mut file) = self.temp_file(name)?;
        let written = file
            .write_all(bytes)
            .and_then(|()| if sync { file.sync_all() } else { Ok(()) })
            .map_err(|e| self.io(&temp, e))
            .and_then(|()| self.rename(&temp, name));
        if written.is_err() {
            let _ = rustix::fs::unlinkat(self.dir.as_fd(), temp.as_str(), AtFlags::empty());
        }
        written
    }

    /// Removes the file `name` of the store, if there is one.
    fn unlink_if_any(&self, name: &str) -> Result<(), StoreError> {
        match rustix::fs::unlinkat(self.dir.as_fd(), name, AtFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(e) => Err(self.io(name, e.into())),
        }
    }

    /// A small record of the store (at most [`SMALL_FILE_BYTES`]), if it can be read.
    fn read_small(&self, name: &str) -> Option<Vec<u8>> {
        self.read_if_any(name, SMALL_FILE_BYTES).ok().flatten()
    }

    /// Renames a finished temp file into place with its origin beside it; removes it when
    /// `done` failed.
    fn publish(
        &self,
        done: Result<(), StoreError>,
        temp: &str,
        stem: &str,
        origin: &Origin,
    ) -> Result<StoredIndex, StoreError> {
        let result = done.and_then(|()| {
            let json = serde_json::to_vec(origin).unwrap_or_default();
            // Not synced, as the index is not: one a crash tore is read as no origin, and an
            // index without its windows and without an origin is downloaded again.
            self.write_atomically(&format!("{stem}.json"), &json, false)?;
            self.rename(temp, &format!("{stem}.clip"))
        });
        match result {
            Ok(()) => Ok(StoredIndex {
                path: self.path.join(format!("{stem}.clip")),
                origin: origin.clone(),
            }),
            Err(e) => {
                let _ = rustix::fs::unlinkat(self.dir.as_fd(), temp, AtFlags::empty());
                Err(e)
            }
        }
    }

    fn rename(&self, from: &str, to: &str) -> Result<(), StoreError> {
        rustix::fs::renameat(self.dir.as_fd(), from, self.dir.as_fd(), to)
            .map_err(|e| self.io(to, e.into()))
    }
}

/// The metadata of index artifact `artifact` (its first `len` bytes, sha256 `digest`): from its
/// compressed metadata blob when it has one (about half the bytes), else read by range from
/// the index blob; either checked against the digest.
fn download_metadata(
    client: &Client,
    image: &Reference,
    artifact: &Descriptor,
    (blob, compressed): (&Descriptor, Option<&Descriptor>),
    len: u64,
    digest: &str,
) -> Result<Vec<u8>, StoreError> {
    let bad = |reason: String| StoreError::BadArtifact {
        digest: artifact.digest.clone(),
        repository: format!("{}/{}", image.registry, image.repository),
        what: "clip index",
        reason,
    };
    let (bytes, from) = match compressed {
        Some(c) => {
            // Compressed, it is not larger than the metadata (zstd's bound).
            if c.size > len.saturating_add(len / 128).saturating_add(1024) {
                return Err(bad(format!(
                    "its compressed metadata is {} bytes, for {len} bytes of metadata",
                    c.size
                )));
            }
            let mut packed = Vec::new();
            client
                .blob_reader(image, &c.digest, c.size)?
                .read_to_end(&mut packed)
                .map_err(RegistryError::from_io_owned)?;
            let cap = usize::try_from(len).unwrap_or(usize::MAX);
            let bytes = zstd::bulk::decompress(&packed, cap).map_err(|e| {
                bad(format!(
                    "its compressed metadata {} does not decompress to at most {len} bytes: {e}",
                    c.digest
                ))
            })?;
            (bytes, format!("its compressed metadata {}", c.digest))
        }
        None => (
            client.fetch_range(image, &blob.digest, 0..len)?,
            format!("the first {len} bytes of its blob {}", blob.digest),
        ),
    };
    if bytes.len() as u64 != len || digest_of(&bytes) != digest {
        return Err(bad(format!(
            "{from} are not the metadata its manifest names ({digest})"
        )));
    }
    Ok(bytes)
}

/// Whether `archive` describes `image` as the registry describes it now: the same manifest
/// digest, config digest and layer table (digest, media type, size and diff_id of every
/// layer). `Err` says what differs.
pub fn check_binding(archive: &Archive<'_>, image: &ResolvedImage) -> Result<(), String> {
    let meta = archive.meta();
    if meta.manifest_digest != image.manifest_digest {
        return Err(format!(
            "it indexes manifest {}, the image is {}",
            meta.manifest_digest, image.manifest_digest
        ));
    }
    if meta.config_digest != image.config_digest {
        return Err(format!(
            "it records config {}, the image has {}",
            meta.config_digest, image.config_digest
        ));
    }
    let ours = archive.layers();
    if ours.len() != image.layers.len() {
        return Err(format!(
            "it has {} layers, the image {}",
            ours.len(),
            image.layers.len()
        ));
    }
    for (i, (a, b)) in ours.iter().zip(&image.layers).enumerate() {
        if a.digest != b.digest
            || a.media_type != b.media_type
            || a.compressed_size != b.size
            || a.diff_id != b.diff_id
        {
            return Err(format!(
                "layer {i} is {} ({}, {} bytes, diff_id {}) in the index, {} ({}, {} bytes, \
                 diff_id {}) in the image",
                a.digest,
                a.media_type,
                a.compressed_size,
                a.diff_id,
                b.digest,
                b.media_type,
                b.size,
                b.diff_id
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_digests_become_file_names() {
        let d = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(file_stem(&d), Some(format!("sha256-{}", "ab".repeat(32))));
        for bad in [
            "sha256:../x",
            "md5:ab",
            "",
            "sha256:AB",
            &format!("sha256:{}", "a".repeat(63)),
        ] {
            assert_eq!(file_stem(bad), None, "{bad}");
        }
    }

    #[test]
    fn entries_are_private_and_carry_their_origin() {
        let tmp = tempfile::tempdir().unwrap();
        let store = IndexStore::open(&tmp.path().join("cache")).unwrap();
        let d = format!("sha256:{}", "cd".repeat(32));
        assert_eq!(store.get(&d).unwrap(), None);
        let origin = Origin::Registry {
            artifact: format!("sha256:{}", "ef".repeat(32)),
            blob: Some(format!("sha256:{}", "01".repeat(32))),
        };
        let stored = store
            .insert(&d, b"not really an index", origin.clone())
            .unwrap();
        assert_eq!(store.get(&d).unwrap(), Some(stored.clone()));
        assert_eq!(stored.origin, origin);
        use std::os::unix::fs::MetadataExt as _;
        assert_eq!(
            std::fs::metadata(&stored.path).unwrap().mode() & 0o777,
            0o600
        );
        assert_eq!(
            std::fs::metadata(store.path()).unwrap().mode() & 0o777,
            0o700
        );
        // Nothing else is left in the directory: no temp files.
        assert_eq!(std::fs::read_dir(store.path()).unwrap().count(), 2);
        store.remove(&d).unwrap();
        assert_eq!(store.get(&d).unwrap(), None);
    }

    #[test]
    fn resolutions_are_recalled_per_reference_and_platform() {
        let tmp = tempfile::tempdir().unwrap();
        let store = IndexStore::open(&tmp.path().join("cache")).unwrap();
        let d1 = format!("sha256:{}", "01".repeat(32));
        let d2 = format!("sha256:{}", "02".repeat(32));
        let image = "registry.example:5000/app:1";
        assert_eq!(store.recall(image, "linux/amd64"), None);
        store.remember(image, "linux/amd64", &d1);
        store.remember(image, "linux/arm64", &d2);
        let got = store.recall(image, "linux/amd64").unwrap();
        assert_eq!(got.manifest_digest, d1);
        assert!(got.resolved_at > 0);
        assert_eq!(
            store.recall(image, "linux/arm64").unwrap().manifest_digest,
            d2
        );
        assert_eq!(
            store.recall("registry.example:5000/app:2", "linux/amd64"),
            None
        );
        // The latest resolution wins; a malformed digest is not recorded.
        store.remember(image, "linux/amd64", &d2);
        store.remember(image, "linux/amd64", "sha256:../../etc");
        assert_eq!(
            store.recall(image, "linux/amd64").unwrap().manifest_digest,
            d2
        );
        use std::os::unix::fs::MetadataExt as _;
        for e in std::fs::read_dir(store.path()).unwrap() {
            let e = e.unwrap();
            assert!(!e.file_name().to_string_lossy().starts_with(".tmp"));
            assert_eq!(e.metadata().unwrap().mode() & 0o777, 0o600);
        }
    }

    #[test]
    fn profiles_are_kept_beside_their_index() {
        let tmp = tempfile::tempdir().unwrap();
        let store = IndexStore::open(&tmp.path().join("cache")).unwrap();
        let d = format!("sha256:{}", "cd".repeat(32));
        assert_eq!(store.profile(&d).unwrap(), None);
        let mut p = Profile::new(&d);
        p.spans.push(crate::ProfileSpan {
            layer: format!("sha256:{}", "ab".repeat(32)),
            span: 4,
            at_ms: 12,
        });
        let path = store.put_profile(&p).unwrap();
        assert_eq!(store.profile(&d).unwrap(), Some(p));
        use std::os::unix::fs::MetadataExt as _;
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        // A damaged profile is an error naming it, not a silent nothing.
        std::fs::write(&path, b"{").unwrap();
        let err = store.profile(&d).unwrap_err().to_string();
        assert!(
            err.contains("profile.json") && err.contains("not a profile"),
            "{err}"
        );
        store.remove(&d).unwrap();
        assert_eq!(store.profile(&d).unwrap(), None);
    }

    #[test]
    fn a_pack_is_kept_here_or_named_in_the_registry() {
        let tmp = tempfile::tempdir().unwrap();
        let store = IndexStore::open(&tmp.path().join("cache")).unwrap();
        let d = format!("sha256:{}", "cd".repeat(32));
        assert_eq!(store.pack_size(&d).unwrap(), None);
        let named = PackRef {
            digest: format!("sha256:{}", "ef".repeat(32)),
            size: 1234,
        };
        store.put_pack_ref(&d, Some(&named)).unwrap();
        assert_eq!(store.pack_ref(&d).unwrap(), Some(named.clone()));
        assert_eq!(store.pack_size(&d).unwrap(), Some(1234));
        // One made here wins (its size is its file's).
        store.put_pack(&d, Some(b"12345")).unwrap();
        assert_eq!(store.pack_size(&d).unwrap(), Some(5));
        store.put_pack(&d, None).unwrap();
        assert_eq!(store.pack_size(&d).unwrap(), Some(1234));
        // A record naming what cannot be a pack is none.
        for bad in [
            PackRef {
                digest: "sha256:../../x".into(),
                size: 1,
            },
            PackRef {
                digest: format!("sha512:{}", "ef".repeat(64)),
                size: 1,
            },
            PackRef {
                size: crate::MAX_PACK_BYTES + 1,
                ..named.clone()
            },
        ] {
            store.put_pack_ref(&d, Some(&bad)).unwrap();
            assert_eq!(store.pack_ref(&d).unwrap(), None, "{bad:?}");
        }
        store.put_pack_ref(&d, Some(&named)).unwrap();
        store.remove(&d).unwrap();
        assert_eq!(store.pack_ref(&d).unwrap(), None);
        store.put_pack_ref(&d, Some(&named)).unwrap();
        store.put_pack_ref(&d, None).unwrap();
        assert_eq!(store.pack_ref(&d).unwrap(), None);
    }
}
