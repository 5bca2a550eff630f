//! Images: layers + config → pushed through the registry API as an OCI manifest or a Docker
//! schema 2 manifest; several pushed images → an OCI index or a Docker manifest list.
//!
//! References given to `push` are registry-relative: `repo:tag` pushes the manifest under the
//! tag; a bare `repo` pushes it by digest only (what an index's per-platform images want).

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::client::RegistryClient;
use crate::layer::{sha256_digest, Compression, Layer};
use crate::registry::Registry;
use crate::Error;

/// OCI manifest/index media type.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI index media type.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI config media type.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Docker schema 2 manifest media type.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list media type.
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker config media type.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Docker gzip layer media type (the only layer type the Docker flavour writes).
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// Which manifest dialect to push.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ManifestFlavor {
    /// OCI image manifest / index.
    #[default]
    Oci,
    /// Docker schema 2 manifest / manifest list (gzip layers only).
    Docker,
}

impl ManifestFlavor {
    fn manifest_media_type(self) -> &'static str {
        match self {
            ManifestFlavor::Oci => OCI_MANIFEST,
            ManifestFlavor::Docker => DOCKER_MANIFEST,
        }
    }
}

/// `os/architecture[/variant]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Platform {
    /// `linux`, …
    pub os: String,
    /// `amd64`, `arm64`, …
    pub architecture: String,
    /// `v8`, `v7`, …
    pub variant: Option<String>,
}

impl Platform {
    /// Parses `os/arch` or `os/arch/variant`.
    pub fn parse(s: &str) -> Platform {
        let parts: Vec<&str> = s.split('/').collect();
        assert!(
            matches!(parts.len(), 2 | 3),
            "platform `{s}` is not os/arch[/variant]"
        );
        Platform {
            os: parts[0].into(),
            architecture: parts[1].into(),
            variant: parts.get(2).map(|v| v.to_string()),
        }
    }

    fn to_json(&self) -> Value {
        let mut p = json!({ "architecture": self.architecture, "os": self.os });
        if let Some(v) = &self.variant {
            p["variant"] = json!(v);
        }
        p
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        match &self.variant {
            Some(v) => write!(f, "/{v}"),
            None => Ok(()),
        }
    }
}

/// The image config's fields that tests set. `None`/empty fields are left out of the JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageConfig {
    /// Platform (default `linux/amd64`).
    pub platform: Platform,
    /// `created`, RFC 3339 (default `2023-11-14T22:13:20Z`, the fixtures' default mtime).
    pub created: Option<String>,
    /// `config.Env`.
    pub env: Vec<String>,
    /// `config.Cmd`.
    pub cmd: Option<Vec<String>>,
    /// `config.Entrypoint`.
    pub entrypoint: Option<Vec<String>>,
    /// `config.WorkingDir`.
    pub working_dir: Option<String>,
    /// `config.User`.
    pub user: Option<String>,
    /// `config.Labels`.
    pub labels: BTreeMap<String, String>,
    /// `config.ExposedPorts` keys (`80/tcp`).
    pub exposed_ports: Vec<String>,
    /// `config.Volumes` keys.
    pub volumes: Vec<String>,
    /// `config.StopSignal`.
    pub stop_signal: Option<String>,
}

impl Default for ImageConfig {
    fn default() -> Self {
        ImageConfig {
            platform: Platform::parse("linux/amd64"),
            created: Some("2023-11-14T22:13:20Z".into()),
            env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
            cmd: None,
            entrypoint: None,
            working_dir: None,
            user: None,
            labels: BTreeMap::new(),
            exposed_ports: Vec::new(),
            volumes: Vec::new(),
            stop_signal: None,
        }
    }
}

/// An image to push: layers (bottom first) and a config.
#[derive(Debug, Clone, Default)]
pub struct Image {
    /// Layers, bottom first.
    pub layers: Vec<Layer>,
    /// Config fields.
    pub config: ImageConfig,
}

/// What a push produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushedImage {
    /// `repo:tag` or `repo` as given.
    pub reference: String,
    /// `sha256:…` of the manifest bytes.
    pub manifest_digest: String,
    /// Manifest size in bytes.
    pub manifest_size: u64,
    /// Manifest media type.
    pub manifest_media_type: String,
    /// The manifest JSON, exactly as pushed.
    pub manifest: String,
    /// `sha256:…` of the config bytes.
    pub config_digest: String,
    /// The config JSON, exactly as pushed.
    pub config: String,
    /// The image's platform.
    pub platform: Platform,
    /// The layers, bottom first.
    pub layers: Vec<PushedLayer>,
}

impl PushedImage {
    /// `(platform, manifest digest, manifest size)`: an entry for [`push_index`].
    pub fn index_entry(&self) -> (Platform, String, u64) {
        (
            self.platform.clone(),
            self.manifest_digest.clone(),
            self.manifest_size,
        )
    }
}

/// One pushed layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushedLayer {
    /// Blob digest.
    pub digest: String,
    /// Blob size.
    pub size: u64,
    /// Media type written in the manifest.
    pub media_type: String,
    /// `sha256:…` of the uncompressed tar.
    pub diff_id: String,
    /// Uncompressed tar size.
    pub uncompressed_size: u64,
}

/// What [`push_index`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushedIndex {
    /// `sha256:…` of the index bytes.
    pub digest: String,
    /// Index size in bytes.
    pub size: u64,
    /// Index media type.
    pub media_type: String,
    /// The index JSON, exactly as pushed.
    pub body: String,
}

impl Image {
    /// An empty `linux/amd64` image.
    pub fn new() -> Image {
        Image::default()
    }

    /// Adds a layer on top.
    pub fn layer(mut self, layer: Layer) -> Image {
        self.layers.push(layer);
        self
    }

    /// Sets the platform (`os/arch[/variant]`).
    pub fn platform(mut self, platform: &str) -> Image {
        self.config.platform = Platform::parse(platform);
        self
    }

    /// Changes the config in place.
    pub fn config(mut self, f: impl FnOnce(&mut ImageConfig)) -> Image {
        f(&mut self.config);
        self
    }

    /// The config JSON, with `rootfs.diff_ids` from the layers.
    pub fn config_json(&self) -> String {
        let c = &self.config;
        let mut inner = serde_json::Map::new();
        let mut put = |key: &str, value: Value| {
            inner.insert(key.into(), value);
        };
        if !c.env.is_empty() {
            put("Env", json!(c.env));
        }
        if let Some(v) = &c.entrypoint {
            put("Entrypoint", json!(v));
        }
        if let Some(v) = &c.cmd {
            put("Cmd", json!(v));
        }
        if let Some(v) = &c.working_dir {
            put("WorkingDir", json!(v));
        }
        if let Some(v) = &c.user {
            put("User", json!(v));
        }
        if !c.labels.is_empty() {
            put("Labels", json!(c.labels));
        }
        let set =
            |keys: &[String]| Value::Object(keys.iter().map(|k| (k.clone(), json!({}))).collect());
        if !c.exposed_ports.is_empty() {
            put("ExposedPorts", set(&c.exposed_ports));
        }
        if !c.volumes.is_empty() {
            put("Volumes", set(&c.volumes));
        }
        if let Some(v) = &c.stop_signal {
            put("StopSignal", json!(v));
        }
        let mut config = json!({
            "architecture": c.platform.architecture,
            "os": c.platform.os,
            "config": inner,
            "rootfs": {
                "type": "layers",
                "diff_ids": self.layers.iter().map(Layer::diff_id).collect::<Vec<_>>(),
            },
            "history": self.layers.iter().map(|_| json!({"created_by": "clip-testkit"})).collect::<Vec<_>>(),
        });
        if let Some(v) = &c.platform.variant {
            config["variant"] = json!(v);
        }
        if let Some(v) = &c.created {
            config["created"] = json!(v);
        }
        serde_json::to_string(&config).expect("config JSON")
    }

    /// Pushes blobs, config and manifest with the registry's own credentials. Panics on failure.
    pub fn push(
        &self,
        registry: &Registry,
        reference: &str,
        flavor: ManifestFlavor,
    ) -> PushedImage {
        self.try_push(&registry.client(), reference, flavor)
            .unwrap_or_else(|e| panic!("pushing {reference} to {}: {e}", registry.addr()))
    }

    /// Pushes through `client` (for tests where the push is expected to fail).
    pub fn try_push(
        &self,
        client: &RegistryClient,
        reference: &str,
        flavor: ManifestFlavor,
    ) -> Result<PushedImage, Error> {
        let (repo, tag) = split_reference(reference);
        let mut layers = Vec::new();
        for layer in &self.layers {
            let media_type = layer_media_type(layer.compression(), flavor)?;
            let digest = client.push_blob(repo, layer.blob())?;
            layers.push(PushedLayer {
                digest,
                size: layer.blob().len() as u64,
                media_type,
                diff_id: layer.diff_id().to_string(),
                uncompressed_size: layer.tar().len() as u64,
            });
        }
        let config = self.config_json();
        let config_digest = client.push_blob(repo, config.as_bytes())?;
        let config_media_type = match flavor {
            ManifestFlavor::Oci => OCI_CONFIG,
            ManifestFlavor::Docker => DOCKER_CONFIG,
        };
        let descriptor = |media_type: &str, digest: &str, size: u64| json!({ "mediaType": media_type, "digest": digest, "size": size });
        let manifest_media_type = flavor.manifest_media_type();
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": manifest_media_type,
            "config": descriptor(config_media_type, &config_digest, config.len() as u64),
            "layers": layers.iter().map(|l| descriptor(&l.media_type, &l.digest, l.size)).collect::<Vec<_>>(),
        });
        let manifest = serde_json::to_string(&manifest).expect("manifest JSON");
        let manifest_digest = sha256_digest(manifest.as_bytes());
        let tag = tag.unwrap_or(&manifest_digest);
        client.push_manifest(repo, tag, manifest_media_type, manifest.as_bytes())?;
        Ok(PushedImage {
            reference: reference.to_string(),
            manifest_size: manifest.len() as u64,
            manifest_digest,
            manifest_media_type: manifest_media_type.to_string(),
            manifest,
            config_digest,
            config,
            platform: self.config.platform.clone(),
            layers,
        })
    }
}

/// Pushes an OCI index or a Docker manifest list over manifests already pushed to the same
/// repository (push each platform's image by digest first: `image.push(&reg, "repo", …)`).
pub fn push_index(
    registry: &Registry,
    reference: &str,
    manifests: &[(Platform, String, u64)],
    flavor: ManifestFlavor,
) -> PushedIndex {
    try_push_index(&registry.client(), reference, manifests, flavor)
        .unwrap_or_else(|e| panic!("pushing index {reference} to {}: {e}", registry.addr()))
}

/// [`push_index`] through `client`.
pub fn try_push_index(
    client: &RegistryClient,
    reference: &str,
    manifests: &[(Platform, String, u64)],
    flavor: ManifestFlavor,
) -> Result<PushedIndex, Error> {
    let (repo, tag) = split_reference(reference);
    let media_type = match flavor {
        ManifestFlavor::Oci => OCI_INDEX,
        ManifestFlavor::Docker => DOCKER_MANIFEST_LIST,
    };
    let entries: Vec<Value> = manifests
        .iter()
        .map(|(platform, digest, size)| {
            json!({
                "mediaType": flavor.manifest_media_type(),
                "digest": digest,
                "size": size,
                "platform": platform.to_json(),
            })
        })
        .collect();
    let body = json!({ "schemaVersion": 2, "mediaType": media_type, "manifests": entries });
    let body = serde_json::to_string(&body).expect("index JSON");
    let digest = sha256_digest(body.as_bytes());
    client.push_manifest(repo, tag.unwrap_or(&digest), media_type, body.as_bytes())?;
    Ok(PushedIndex {
        size: body.len() as u64,
        digest,
        media_type: media_type.into(),
        body,
    })
}

/// The media type of a layer with this compression in this manifest flavour.
pub fn layer_media_type(compression: Compression, flavor: ManifestFlavor) -> Result<String, Error> {
    match flavor {
        ManifestFlavor::Oci => Ok(format!(
            "application/vnd.oci.image.layer.v1.tar{}",
            compression.oci_suffix()
        )),
        ManifestFlavor::Docker if compression.oci_suffix() == "+gzip" => {
            Ok(DOCKER_LAYER_GZIP.into())
        }
        ManifestFlavor::Docker => {
            Err(format!("Docker manifests take gzip layers only, not {compression:?}").into())
        }
    }
}

/// `repo:tag` → (`repo`, Some(`tag`)); `repo` → (`repo`, None). A `:` before the last `/` is
/// part of the repository (there is no host part here, but be safe).
fn split_reference(reference: &str) -> (&str, Option<&str>) {
    let slash = reference.rfind('/').map_or(0, |i| i + 1);
    match reference[slash..].rfind(':') {
        Some(i) => (&reference[..slash + i], Some(&reference[slash + i + 1..])),
        None => (reference, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_split() {
        assert_eq!(split_reference("a/b:c"), ("a/b", Some("c")));
        assert_eq!(split_reference("a/b"), ("a/b", None));
        assert_eq!(split_reference("x:1/b"), ("x:1/b", None));
    }

    #[test]
    fn docker_flavour_refuses_zstd() {
        assert!(layer_media_type(Compression::Zstd, ManifestFlavor::Docker).is_err());
        assert_eq!(
            layer_media_type(Compression::GzipMultiMember(2), ManifestFlavor::Oci).unwrap(),
            "application/vnd.oci.image.layer.v1.tar+gzip"
        );
    }
}
