//! clip's artifacts beside an image: OCI image manifests with the empty config, one or two
//! layers, and `subject` = the image manifest they describe. The index artifact
//! (`artifactType` [`ARTIFACT_TYPE`]) carries a `.clip` and, as its second layer, the index's
//! metadata compressed ([`METADATA_MEDIA_TYPE`]: what a node downloads); the profile artifact
//! ([`PROFILE_ARTIFACT_TYPE`]) carries a startup profile ([`crate::Profile`]) and, as its second
//! layer, the startup pack made from it ([`PACK_MEDIA_TYPE`]: the byte ranges its replay reads,
//! opaque here; `clip-fetch` reads it).

use std::collections::BTreeMap;

use clip_archive::{Archive, FORMAT_VERSION};
use clip_registry::{Client, Descriptor, Reference, ReferrersSource, OCI_IMAGE_MANIFEST};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::StoreError;

/// The `artifactType` of a clip index artifact. Stable across archive format versions: the
/// format is in the [`FORMAT_ANNOTATION`].
pub const ARTIFACT_TYPE: &str = "application/vnd.clip.index.v1";
/// The media type of the artifact's one layer: a `.clip` file.
pub const INDEX_MEDIA_TYPE: &str = "application/vnd.clip.index.v1.clip";
/// Annotation (on the artifact manifest and its referrers entry) naming the archive format
/// version of the index, so that a reader picks an index it can read.
pub const FORMAT_ANNOTATION: &str = "dev.clip.index.format";
/// Largest index blob accepted from a registry (the size comes from the artifact manifest).
pub const MAX_INDEX_BYTES: u64 = 2 << 30;
/// Annotation on the index layer: the length of the index's metadata, the prefix of the blob
/// that a node downloads (the seek windows after it are read by range when a span needs one).
pub const METADATA_LENGTH_ANNOTATION: &str = "dev.clip.index.metadata.length";
/// Annotation on the index layer: the sha256 digest of that prefix, which verifies it.
pub const METADATA_DIGEST_ANNOTATION: &str = "dev.clip.index.metadata.digest";
/// The media type of an index artifact's second layer: the index's metadata (the prefix the
/// annotations above name), zstd-compressed — about half the bytes to download before a mount.
pub const METADATA_MEDIA_TYPE: &str = "application/vnd.clip.index.v1.metadata+zstd";
const METADATA_TITLE: &str = "metadata.clip.zst";
/// The zstd level of the compressed metadata: fast to make, a few milliseconds to read.
const METADATA_LEVEL: i32 = 3;

/// The `artifactType` of a startup profile artifact.
pub const PROFILE_ARTIFACT_TYPE: &str = "application/vnd.clip.profile.v1";
/// The media type of its one layer: the profile as JSON.
pub const PROFILE_MEDIA_TYPE: &str = "application/vnd.clip.profile.v1+json";
/// Largest profile blob accepted from a registry.
pub const MAX_PROFILE_BYTES: u64 = 16 << 20;
/// The media type of a profile artifact's second layer: its startup pack.
pub const PACK_MEDIA_TYPE: &str = "application/vnd.clip.profile.v1.pack";
/// Largest startup pack accepted from a registry (the cap `clip-fetch` parses packs with).
pub const MAX_PACK_BYTES: u64 = 512 << 20;
const PACK_TITLE: &str = "startup.pack";
/// When a profile artifact was pushed (RFC 3339, UTC): the newest one is used.
const CREATED_ANNOTATION: &str = "org.opencontainers.image.created";

const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
const EMPTY: &[u8] = b"{}";
const TITLE_ANNOTATION: &str = "org.opencontainers.image.title";

/// The image manifest an index describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    /// Its digest.
    pub digest: String,
    /// Its media type.
    pub media_type: String,
    /// Its size in bytes.
    pub size: u64,
}

/// What [`push`] did.
#[derive(Debug, Clone)]
pub struct PushedIndex {
    /// The artifact manifest, as listed among the image's referrers.
    pub artifact: Descriptor,
    /// How it is discovered: the registry indexes the subject itself (its referrers API), or
    /// the referrers tag was updated.
    pub via: ReferrersSource,
}

/// An index artifact found for an image.
#[derive(Debug, Clone)]
pub struct FoundIndex {
    /// The artifact manifest.
    pub artifact: Descriptor,
    /// Where the listing came from.
    pub via: ReferrersSource,
}

#[derive(Serialize, Deserialize)]
struct ArtifactManifest {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType")]
    media_type: String,
    #[serde(rename = "artifactType")]
    artifact_type: String,
    config: Descriptor,
    layers: Vec<Descriptor>,
    subject: Descriptor,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<String, String>,
}

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

fn format_annotations() -> BTreeMap<String, String> {
    BTreeMap::from([(FORMAT_ANNOTATION.to_string(), FORMAT_VERSION.to_string())])
}

/// The one blob of an artifact, with the annotations of its layer descriptor.
struct Blob<'a> {
    digest: &'a str,
    bytes: &'a [u8],
    annotations: BTreeMap<String, String>,
}

/// One kind of clip artifact.
struct Kind {
    artifact_type: &'static str,
    layer_media_type: &'static str,
    title: &'static str,
    max_bytes: u64,
    /// What the artifact is, in messages.
    noun: &'static str,
    /// The media type and largest size of a second layer it may have.
    second: Option<(&'static str, u64)>,
}

const INDEX: Kind = Kind {
    artifact_type: ARTIFACT_TYPE,
    layer_media_type: INDEX_MEDIA_TYPE,
    title: "index.clip",
    max_bytes: MAX_INDEX_BYTES,
    noun: "clip index",
    second: Some((METADATA_MEDIA_TYPE, MAX_INDEX_BYTES)),
};

const PROFILE: Kind = Kind {
    artifact_type: PROFILE_ARTIFACT_TYPE,
    layer_media_type: PROFILE_MEDIA_TYPE,
    title: "profile.json",
    max_bytes: MAX_PROFILE_BYTES,
    noun: "clip startup profile",
    second: Some((PACK_MEDIA_TYPE, MAX_PACK_BYTES)),
};

/// The artifact manifest of `kind` for a blob of `size` bytes with `digest`, annotated with
/// `annotations`. Deterministic: the same blob and annotations give the same manifest.
fn artifact_manifest(
    kind: &Kind,
    blob: &Blob<'_>,
    second: Option<&Blob<'_>>,
    subject: &Subject,
    annotations: BTreeMap<String, String>,
) -> Vec<u8> {
    let mut layer_annotations = blob.annotations.clone();
    layer_annotations.insert(TITLE_ANNOTATION.to_string(), kind.title.to_string());
    let manifest = ArtifactManifest {
        schema_version: 2,
        media_type: OCI_IMAGE_MANIFEST.to_string(),
        artifact_type: kind.artifact_type.to_string(),
        config: Descriptor {
            media_type: EMPTY_MEDIA_TYPE.to_string(),
            digest: sha256(EMPTY),
            size: EMPTY.len() as u64,
            artifact_type: None,
            annotations: BTreeMap::new(),
        },
        layers: std::iter::once(Descriptor {
            media_type: kind.layer_media_type.to_string(),
            digest: blob.digest.to_string(),
            size: blob.bytes.len() as u64,
            artifact_type: None,
            annotations: layer_annotations,
        })
        .chain(
            second
                .zip(kind.second)
                .map(|(b, (media_type, _))| Descriptor {
                    media_type: media_type.to_string(),
                    digest: b.digest.to_string(),
                    size: b.bytes.len() as u64,
                    artifact_type: None,
                    annotations: b.annotations.clone(),
                }),
        )
        .collect(),
        subject: Descriptor {
            media_type: subject.media_type.clone(),
            digest: subject.digest.clone(),
            size: subject.size,
            artifact_type: None,
            annotations: BTreeMap::new(),
        },
        annotations,
    };
    // A struct of strings and numbers always encodes.
    serde_json::to_vec(&manifest).unwrap_or_default()
}

/// Uploads `archive` (an index of the image `subject`) to the image's repository as an index
/// artifact and makes it discoverable: through the registry's referrers API when it answers
/// the push with `OCI-Subject`, else by adding it to the referrers tag (replacing an earlier
/// clip index of the same format for the same image, keeping every other entry).
pub fn push(
    client: &Client,
    image: &Reference,
    archive: &[u8],
    subject: &Subject,
) -> Result<PushedIndex, StoreError> {
    let what = format!("for {image}");
    let parsed = Archive::open(archive).map_err(|error| StoreError::Archive {
        what: what.clone(),
        error,
    })?;
    if parsed.meta().manifest_digest != subject.digest {
        return Err(StoreError::NotBound {
            what,
            image: image.to_string(),
            reason: format!(
                "it indexes manifest {}, the image is {}",
                parsed.meta().manifest_digest,
                subject.digest
            ),
        });
    }
    if !parsed.has_windows() {
        return Err(StoreError::Archive {
            what,
            error: clip_archive::ArchiveError::WindowsAbsent,
        });
    }
    let metadata = archive
        .get(..usize::try_from(parsed.metadata_len()).unwrap_or(usize::MAX))
        .unwrap_or(archive);
    let compressed =
        zstd::bulk::compress(metadata, METADATA_LEVEL).map_err(|error| StoreError::Compress {
            image: image.to_string(),
            error,
        })?;
    let compressed_digest = client.push_blob(image, &compressed)?;
    let ours = FORMAT_VERSION.to_string();
    push_artifact(
        client,
        image,
        archive,
        BTreeMap::from([
            (
                METADATA_LENGTH_ANNOTATION.to_string(),
                metadata.len().to_string(),
            ),
            (METADATA_DIGEST_ANNOTATION.to_string(), sha256(metadata)),
        ]),
        Some(&Blob {
            digest: &compressed_digest,
            bytes: &compressed,
            annotations: BTreeMap::from([(
                TITLE_ANNOTATION.to_string(),
                METADATA_TITLE.to_string(),
            )]),
        }),
        subject,
        &INDEX,
        format_annotations(),
        &|d: &Descriptor| {
            d.artifact_type.as_deref() == Some(ARTIFACT_TYPE)
                && d.annotations.get(FORMAT_ANNOTATION) == Some(&ours)
        },
    )
}

/// Uploads a startup profile (JSON, of the image `subject`) and its startup pack, if any, as a
/// profile artifact and makes it discoverable like an index, replacing the earlier clip profile
/// in the referrers tag.
pub fn push_profile(
    client: &Client,
    image: &Reference,
    profile: &[u8],
    pack: Option<&[u8]>,
    subject: &Subject,
) -> Result<PushedIndex, StoreError> {
    let created = crate::profile::rfc3339_now();
    let pack = match pack {
        Some(bytes) => {
            let digest = client.push_blob(image, bytes)?;
            Some((digest, bytes))
        }
        None => None,
    };
    let second = pack.as_ref().map(|(digest, bytes)| Blob {
        digest,
        bytes,
        annotations: BTreeMap::from([(TITLE_ANNOTATION.to_string(), PACK_TITLE.to_string())]),
    });
    push_artifact(
        client,
        image,
        profile,
        BTreeMap::new(),
        second.as_ref(),
        subject,
        &PROFILE,
        BTreeMap::from([(CREATED_ANNOTATION.to_string(), created)]),
        &|d: &Descriptor| d.artifact_type.as_deref() == Some(PROFILE_ARTIFACT_TYPE),
    )
}

/// Uploads `blob` as an artifact of `kind` about `subject`, and lists it among the subject's
/// referrers (the registry does it itself, or the referrers tag is updated, dropping the
/// entries `replaces` matches).
#[allow(clippy::too_many_arguments)]
fn push_artifact(
    client: &Client,
    image: &Reference,
    blob: &[u8],
    layer_annotations: BTreeMap<String, String>,
    second: Option<&Blob<'_>>,
    subject: &Subject,
    kind: &Kind,
    annotations: BTreeMap<String, String>,
    replaces: &dyn Fn(&Descriptor) -> bool,
) -> Result<PushedIndex, StoreError> {
    let blob_digest = client.push_blob(image, blob)?;
    client.push_blob(image, EMPTY)?;
    let manifest = artifact_manifest(
        kind,
        &Blob {
            digest: &blob_digest,
            bytes: blob,
            annotations: layer_annotations,
        },
        second,
        subject,
        annotations.clone(),
    );
    let digest = sha256(&manifest);
    let pushed = client.push_manifest(image, &digest, OCI_IMAGE_MANIFEST, &manifest, None)?;
    let artifact = Descriptor {
        media_type: OCI_IMAGE_MANIFEST.to_string(),
        digest: pushed.digest.clone(),
        size: manifest.len() as u64,
        artifact_type: Some(kind.artifact_type.to_string()),
        annotations,
    };
    if pushed.subject_indexed {
        tracing::info!(artifact = %artifact.digest, "the registry indexes the referrer itself");
        return Ok(PushedIndex {
            artifact,
            via: ReferrersSource::Api,
        });
    }
    client.add_referrer(image, &subject.digest, &artifact, replaces)?;
    Ok(PushedIndex {
        artifact,
        via: ReferrersSource::TagSchema,
    })
}

/// clip's artifacts listed among an image manifest's referrers.
#[derive(Debug, Clone, Default)]
pub struct Artifacts {
    /// The index artifact of the format this clip reads (the last listed when there are
    /// several).
    pub index: Option<FoundIndex>,
    /// The newest startup profile artifact.
    pub profile: Option<FoundIndex>,
}

/// The index artifact of the image whose manifest is `subject_digest`, of the format this
/// clip reads, if the registry lists one among the manifest's referrers (the last listed when
/// there are several).
pub fn find(
    client: &Client,
    image: &Reference,
    subject_digest: &str,
) -> Result<Option<FoundIndex>, StoreError> {
    Ok(list(client, image, subject_digest, Some(ARTIFACT_TYPE))?.index)
}

/// The newest startup profile artifact of the image whose manifest is `subject_digest`, if
/// the registry lists one among the manifest's referrers.
pub fn find_profile(
    client: &Client,
    image: &Reference,
    subject_digest: &str,
) -> Result<Option<FoundIndex>, StoreError> {
    Ok(list(client, image, subject_digest, Some(PROFILE_ARTIFACT_TYPE))?.profile)
}

/// The index and profile artifacts of the image whose manifest is `subject_digest`, from one
/// listing of its referrers.
pub fn find_artifacts(
    client: &Client,
    image: &Reference,
    subject_digest: &str,
) -> Result<Artifacts, StoreError> {
    list(client, image, subject_digest, None)
}

fn list(
    client: &Client,
    image: &Reference,
    subject_digest: &str,
    artifact_type: Option<&str>,
) -> Result<Artifacts, StoreError> {
    let referrers = client.referrers(image, subject_digest, artifact_type)?;
    let ours = FORMAT_VERSION.to_string();
    let created = |d: &Descriptor| d.annotations.get(CREATED_ANNOTATION).cloned();
    let mut found = Artifacts::default();
    let via = referrers.source;
    for d in referrers.manifests {
        match d.artifact_type.as_deref() {
            Some(ARTIFACT_TYPE) if d.annotations.get(FORMAT_ANNOTATION) == Some(&ours) => {
                found.index = Some(FoundIndex { artifact: d, via });
            }
            // Listed last wins among equals: the referrers tag appends.
            Some(PROFILE_ARTIFACT_TYPE)
                if found
                    .profile
                    .as_ref()
                    .is_none_or(|p| created(&p.artifact) <= created(&d)) =>
            {
                found.profile = Some(FoundIndex { artifact: d, via });
            }
            _ => {}
        }
    }
    if found.index.is_none() {
        tracing::debug!(image = %image, via = ?via, "no clip index among the referrers");
    }
    Ok(found)
}

/// The profile blob a profile artifact manifest names, and its startup pack's if it has one,
/// after checking the manifest.
pub(crate) fn profile_blob(
    client: &Client,
    image: &Reference,
    artifact: &Descriptor,
    subject_digest: &str,
) -> Result<(Descriptor, Option<Descriptor>), StoreError> {
    artifact_blob(client, image, artifact, subject_digest, &PROFILE, &|_| {
        Ok(())
    })
}

/// The index blob an artifact manifest names, and its compressed metadata's if it has one,
/// after checking the manifest: a clip index artifact, of our format, about `subject_digest`,
/// with one layer of at most [`MAX_INDEX_BYTES`] (and a second of [`METADATA_MEDIA_TYPE`]).
pub(crate) fn index_blob(
    client: &Client,
    image: &Reference,
    artifact: &Descriptor,
    subject_digest: &str,
) -> Result<(Descriptor, Option<Descriptor>), StoreError> {
    artifact_blob(
        client,
        image,
        artifact,
        subject_digest,
        &INDEX,
        &|manifest| {
            let format = manifest.annotations.get(FORMAT_ANNOTATION);
            if format == Some(&FORMAT_VERSION.to_string()) {
                return Ok(());
            }
            Err(format!(
                "it holds an index of format {}, this clip reads {FORMAT_VERSION}",
                format.map_or("(unnamed)", String::as_str)
            ))
        },
    )
}

/// The metadata prefix of an index blob as its layer's annotations name it: its length and
/// sha256 digest; `None` when the layer names none (then the whole blob is the index to
/// download). Annotations that are present but malformed make the artifact bad.
pub(crate) fn index_metadata(
    image: &Reference,
    artifact: &Descriptor,
    blob: &Descriptor,
) -> Result<Option<(u64, String)>, StoreError> {
    let bad = |reason: String| StoreError::BadArtifact {
        digest: artifact.digest.clone(),
        repository: format!("{}/{}", image.registry, image.repository),
        what: INDEX.noun,
        reason,
    };
    let (Some(len), Some(digest)) = (
        blob.annotations.get(METADATA_LENGTH_ANNOTATION),
        blob.annotations.get(METADATA_DIGEST_ANNOTATION),
    ) else {
        return Ok(None);
    };
    let len: u64 = len
        .parse()
        .ok()
        .filter(|&n| n > 0 && n <= blob.size)
        .ok_or_else(|| {
            bad(format!(
                "its metadata length {len:?} is not a length within the {}-byte blob",
                blob.size
            ))
        })?;
    let well_formed = digest.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    });
    if !well_formed {
        return Err(bad(format!(
            "its metadata digest {digest:?} is not a sha256 digest"
        )));
    }
    Ok(Some((len, digest.clone())))
}

/// The sha256 digest of `data`, as `sha256:<hex>`.
pub(crate) fn digest_of(data: &[u8]) -> String {
    sha256(data)
}

/// The one blob an artifact manifest of `kind` names, after checking the manifest: its type,
/// that its subject is `subject_digest`, one layer of the kind's media type and at most its
/// size, and whatever `check` says of it.
fn artifact_blob(
    client: &Client,
    image: &Reference,
    artifact: &Descriptor,
    subject_digest: &str,
    kind: &Kind,
    check: &dyn Fn(&ArtifactManifest) -> Result<(), String>,
) -> Result<(Descriptor, Option<Descriptor>), StoreError> {
    let bad = |reason: String| StoreError::BadArtifact {
        digest: artifact.digest.clone(),
        repository: format!("{}/{}", image.registry, image.repository),
        what: kind.noun,
        reason,
    };
    let fetched = client
        .fetch_manifest(image, &artifact.digest, OCI_IMAGE_MANIFEST)?
        .ok_or_else(|| {
            bad("it is listed among the referrers, but the registry does not have it".into())
        })?;
    let manifest: ArtifactManifest = serde_json::from_slice(&fetched.body)
        .map_err(|e| bad(format!("not an artifact manifest: {e}")))?;
    if manifest.artifact_type != kind.artifact_type {
        return Err(bad(format!("artifactType is {:?}", manifest.artifact_type)));
    }
    if manifest.subject.digest != subject_digest {
        return Err(bad(format!(
            "its subject is {}, not the image's manifest {subject_digest}",
            manifest.subject.digest
        )));
    }
    check(&manifest).map_err(bad)?;
    let (layer, second) = match (manifest.layers.as_slice(), kind.second) {
        ([layer], _) => (layer, None),
        ([layer, second], Some((media_type, max_bytes))) => {
            if second.media_type != media_type {
                return Err(bad(format!(
                    "its second layer is a {:?}",
                    second.media_type
                )));
            }
            if second.size > max_bytes {
                return Err(bad(format!(
                    "its second layer is {} bytes, more than the {max_bytes} accepted",
                    second.size
                )));
            }
            (layer, Some(second.clone()))
        }
        (layers, second) => {
            return Err(bad(format!(
                "{} layers, expected {}",
                layers.len(),
                if second.is_some() { "1 or 2" } else { "1" }
            )))
        }
    };
    if layer.media_type != kind.layer_media_type {
        return Err(bad(format!("its layer is a {:?}", layer.media_type)));
    }
    if layer.size > kind.max_bytes {
        return Err(bad(format!(
            "its blob is {} bytes, more than the {} accepted",
            layer.size, kind.max_bytes
        )));
    }
    Ok((layer.clone(), second))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifact_manifests_are_deterministic_and_well_formed() {
        let subject = Subject {
            digest: format!("sha256:{}", "a".repeat(64)),
            media_type: OCI_IMAGE_MANIFEST.into(),
            size: 1234,
        };
        let digest = format!("sha256:{}", "b".repeat(64));
        let bytes = [0u8; 99];
        let blob = || Blob {
            digest: &digest,
            bytes: &bytes,
            annotations: BTreeMap::from([(METADATA_LENGTH_ANNOTATION.to_string(), "9".into())]),
        };
        let one = artifact_manifest(&INDEX, &blob(), None, &subject, format_annotations());
        assert_eq!(
            one,
            artifact_manifest(&INDEX, &blob(), None, &subject, format_annotations())
        );
        let v: serde_json::Value = serde_json::from_slice(&one).unwrap();
        assert_eq!(v["artifactType"], ARTIFACT_TYPE);
        assert_eq!(v["config"]["mediaType"], EMPTY_MEDIA_TYPE);
        assert_eq!(
            v["config"]["digest"],
            "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
        assert_eq!(v["layers"][0]["mediaType"], INDEX_MEDIA_TYPE);
        assert_eq!(v["layers"][0]["digest"], digest.as_str());
        assert_eq!(v["layers"][0]["size"], 99);
        assert_eq!(
            v["layers"][0]["annotations"][METADATA_LENGTH_ANNOTATION],
            "9"
        );
        assert_eq!(
            v["layers"][0]["annotations"][TITLE_ANNOTATION],
            "index.clip"
        );
        assert_eq!(v["subject"]["digest"], subject.digest.as_str());
        assert_eq!(v["subject"]["size"], 1234);
        assert_eq!(
            v["annotations"][FORMAT_ANNOTATION],
            FORMAT_VERSION.to_string()
        );
        assert_eq!(v["layers"].as_array().unwrap().len(), 1);

        // A profile's startup pack is its second layer; an index's is its compressed metadata.
        let pack = Blob {
            digest: &digest,
            bytes: &bytes[..7],
            annotations: BTreeMap::from([(TITLE_ANNOTATION.to_string(), PACK_TITLE.into())]),
        };
        let profile = artifact_manifest(&PROFILE, &blob(), Some(&pack), &subject, BTreeMap::new());
        let v: serde_json::Value = serde_json::from_slice(&profile).unwrap();
        assert_eq!(v["layers"][0]["mediaType"], PROFILE_MEDIA_TYPE);
        assert_eq!(v["layers"][1]["mediaType"], PACK_MEDIA_TYPE);
        assert_eq!(v["layers"][1]["size"], 7);
        assert_eq!(v["layers"][1]["annotations"][TITLE_ANNOTATION], PACK_TITLE);
        let index = artifact_manifest(&INDEX, &blob(), Some(&pack), &subject, BTreeMap::new());
        let v: serde_json::Value = serde_json::from_slice(&index).unwrap();
        assert_eq!(v["layers"][1]["mediaType"], METADATA_MEDIA_TYPE);
    }
}
