//! The few fields of manifests, indexes and image configs that we need, and media types.

use serde::Deserialize;

use crate::{Platform, RegistryError};

pub(crate) const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(crate) const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub(crate) const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub(crate) const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// The `Accept` header for manifest requests.
pub(crate) const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json";

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// A layer of the selected image manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerDescriptor {
    /// Digest of the (compressed) blob.
    pub digest: String,
    pub media_type: String,
    /// Size of the (compressed) blob in bytes.
    pub size: u64,
    pub compression: Compression,
    /// Digest of the uncompressed tar (from the config's `rootfs.diff_ids`, same index).
    pub diff_id: String,
}

/// A content descriptor.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub(crate) media_type: String,
    pub(crate) digest: String,
    pub(crate) size: u64,
    #[serde(default)]
    pub(crate) urls: Vec<String>,
    #[serde(default)]
    pub(crate) platform: Option<DescriptorPlatform>,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct DescriptorPlatform {
    #[serde(default)]
    pub(crate) os: String,
    #[serde(default)]
    pub(crate) architecture: String,
    #[serde(default)]
    pub(crate) variant: Option<String>,
}

impl DescriptorPlatform {
    pub(crate) fn to_platform(&self) -> Platform {
        Platform {
            os: self.os.clone(),
            architecture: self.architecture.clone(),
            variant: self.variant.clone().filter(|v| !v.is_empty()),
        }
    }
}

/// An image manifest (OCI or Docker schema 2).
#[derive(Debug, Deserialize)]
pub(crate) struct ImageManifest {
    pub(crate) config: Descriptor,
    #[serde(default)]
    pub(crate) layers: Vec<Descriptor>,
}

/// An image index or Docker manifest list.
#[derive(Debug, Deserialize)]
pub(crate) struct ImageIndex {
    #[serde(default)]
    pub(crate) manifests: Vec<Descriptor>,
}

/// The fields of an image config we need.
#[derive(Debug, Deserialize)]
pub(crate) struct ImageConfig {
    #[serde(default)]
    pub(crate) os: String,
    #[serde(default)]
    pub(crate) architecture: String,
    #[serde(default)]
    pub(crate) variant: Option<String>,
    pub(crate) rootfs: RootFs,
}

#[derive(Debug, Deserialize)]
pub(crate) struct RootFs {
    #[serde(default)]
    pub(crate) diff_ids: Vec<String>,
}

/// What a manifest response is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ManifestKind {
    Image,
    Index,
}

#[derive(Deserialize)]
struct Probe {
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    #[serde(rename = "schemaVersion", default)]
    schema_version: Option<u32>,
    #[serde(default)]
    manifests: Option<serde_json::Value>,
    #[serde(default)]
    config: Option<serde_json::Value>,
}

/// Determines the media type and kind of a manifest body: its `mediaType` field, else the
/// `Content-Type` header, else its shape. Schema 1 and unknown types are refused.
pub(crate) fn classify_manifest(
    reference: &str,
    url: &str,
    body: &[u8],
    content_type: Option<&str>,
) -> Result<(String, ManifestKind), RegistryError> {
    let probe: Probe = serde_json::from_slice(body).map_err(|e| RegistryError::Protocol {
        url: url.to_string(),
        detail: format!("manifest is not valid JSON: {e}"),
    })?;
    let header = content_type
        .map(|c| {
            c.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .filter(|c| !c.is_empty() && c != "application/json" && c != "text/plain");
    let media_type = match (probe.media_type.filter(|m| !m.is_empty()), header) {
        (Some(m), _) => m,
        (None, Some(h)) => h,
        (None, None) if probe.schema_version == Some(1) => DOCKER_SCHEMA1.to_string(),
        (None, None) if probe.manifests.is_some() => OCI_INDEX.to_string(),
        (None, None) if probe.config.is_some() => OCI_MANIFEST.to_string(),
        (None, None) => String::new(),
    };
    let kind = match media_type.as_str() {
        OCI_MANIFEST | DOCKER_MANIFEST => ManifestKind::Image,
        OCI_INDEX | DOCKER_LIST => ManifestKind::Index,
        DOCKER_SCHEMA1 | DOCKER_SCHEMA1_SIGNED => {
            return Err(RegistryError::UnsupportedMediaType {
                reference: reference.to_string(),
                media_type,
                hint: "Docker schema 1 manifests are obsolete; re-push the image with a current \
                       docker or buildah"
                    .into(),
            })
        }
        _ => {
            return Err(RegistryError::UnsupportedMediaType {
                reference: reference.to_string(),
                media_type,
                hint: "not an image manifest or index; is this a container image?".into(),
            })
        }
    };
    Ok((media_type, kind))
}

/// Checks the config descriptor's media type: refuses artifacts that are not container images.
pub(crate) fn check_config_media_type(
    reference: &str,
    media_type: &str,
) -> Result<(), RegistryError> {
    match media_type {
        OCI_CONFIG | DOCKER_CONFIG | "" => Ok(()),
        other => Err(RegistryError::UnsupportedMediaType {
            reference: reference.to_string(),
            media_type: other.to_string(),
            hint: "the manifest's config is not a container image config (an OCI artifact?)".into(),
        }),
    }
}

/// The compression of a layer from its media type; foreign layers with URLs, encrypted and
/// unknown layers are refused.
pub(crate) fn layer_compression(
    reference: &str,
    layer: &Descriptor,
) -> Result<Compression, RegistryError> {
    let unsupported = |hint: &str| RegistryError::UnsupportedMediaType {
        reference: reference.to_string(),
        media_type: layer.media_type.clone(),
        hint: format!("layer {}: {hint}", layer.digest),
    };
    let (compression, foreign) = match layer.media_type.as_str() {
        "application/vnd.oci.image.layer.v1.tar" => (Compression::None, false),
        "application/vnd.oci.image.layer.v1.tar+gzip" => (Compression::Gzip, false),
        "application/vnd.oci.image.layer.v1.tar+zstd" => (Compression::Zstd, false),
        "application/vnd.docker.image.rootfs.diff.tar.gzip" => (Compression::Gzip, false),
        "application/vnd.docker.image.rootfs.diff.tar" => (Compression::None, false),
        "application/vnd.oci.image.layer.nondistributable.v1.tar" => (Compression::None, true),
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip" => (Compression::Gzip, true),
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => (Compression::Zstd, true),
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => (Compression::Gzip, true),
        "application/vnd.docker.image.rootfs.foreign.diff.tar" => (Compression::None, true),
        m if m.contains("encrypted") => {
            return Err(unsupported(
                "encrypted layers are not supported; decrypt the image first \
                 (e.g. skopeo copy --decryption-key)",
            ))
        }
        _ => return Err(unsupported("not a known tar layer type")),
    };
    if foreign && !layer.urls.is_empty() {
        return Err(unsupported(
            "foreign (non-distributable) layers stored outside the registry are not supported",
        ));
    }
    Ok(compression)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(media_type: &str, urls: &[&str]) -> Descriptor {
        Descriptor {
            media_type: media_type.into(),
            digest: "sha256:x".into(),
            size: 1,
            urls: urls.iter().map(|u| u.to_string()).collect(),
            platform: None,
        }
    }

    #[test]
    fn layer_types() {
        let c = |m: &str| layer_compression("r", &desc(m, &[]));
        assert_eq!(
            c("application/vnd.oci.image.layer.v1.tar").ok(),
            Some(Compression::None)
        );
        assert_eq!(
            c("application/vnd.oci.image.layer.v1.tar+gzip").ok(),
            Some(Compression::Gzip)
        );
        assert_eq!(
            c("application/vnd.oci.image.layer.v1.tar+zstd").ok(),
            Some(Compression::Zstd)
        );
        assert_eq!(
            c("application/vnd.docker.image.rootfs.diff.tar.gzip").ok(),
            Some(Compression::Gzip)
        );
        assert_eq!(
            c("application/vnd.docker.image.rootfs.diff.tar").ok(),
            Some(Compression::None)
        );
        assert_eq!(
            c("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip").ok(),
            Some(Compression::Gzip)
        );
        let e = c("application/vnd.oci.image.layer.v1.tar+gzip+encrypted").unwrap_err();
        assert!(e.to_string().contains("encrypted"), "{e}");
        assert!(c("application/octet-stream").is_err());
        let foreign = desc(
            "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
            &["https://x"],
        );
        assert!(matches!(
            layer_compression("r", &foreign),
            Err(RegistryError::UnsupportedMediaType { .. })
        ));
    }

    #[test]
    fn manifest_kinds() {
        let k = |body: &str, ct: Option<&str>| classify_manifest("r", "u", body.as_bytes(), ct);
        assert_eq!(
            k(
                r#"{"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#,
                None
            )
            .ok(),
            Some((OCI_INDEX.into(), ManifestKind::Index))
        );
        assert_eq!(
            k(
                r#"{"schemaVersion":2,"config":{}}"#,
                Some("application/vnd.docker.distribution.manifest.v2+json; charset=utf-8")
            )
            .ok(),
            Some((DOCKER_MANIFEST.into(), ManifestKind::Image))
        );
        assert_eq!(
            k(
                r#"{"schemaVersion":2,"config":{}}"#,
                Some("application/json")
            )
            .ok(),
            Some((OCI_MANIFEST.into(), ManifestKind::Image))
        );
        assert_eq!(
            k(r#"{"schemaVersion":2,"manifests":[]}"#, None).ok(),
            Some((OCI_INDEX.into(), ManifestKind::Index))
        );
        let e = k(r#"{"schemaVersion":1,"fsLayers":[]}"#, None).unwrap_err();
        assert!(e.to_string().contains("re-push"), "{e}");
        let e = k(
            r#"{"schemaVersion":1}"#,
            Some("application/vnd.docker.distribution.manifest.v1+prettyjws"),
        )
        .unwrap_err();
        assert!(matches!(e, RegistryError::UnsupportedMediaType { .. }));
        assert!(matches!(
            k("nope", None),
            Err(RegistryError::Protocol { .. })
        ));
        assert!(matches!(
            k("{}", None),
            Err(RegistryError::UnsupportedMediaType { .. })
        ));
    }
}
