//! [`Client::resolve`]: reference + platform → manifest (chosen from an index), config and
//! layer table, every piece digest-verified.

use sha2::{Digest as _, Sha256, Sha512};
use ureq::http::header;
use ureq::ResponseExt as _;

use crate::client::{header_str, parse_json, Method, Req, MAX_MANIFEST};
use crate::error::Target;
use crate::manifest::{
    self, ImageConfig, ImageIndex, ImageManifest, LayerDescriptor, ManifestKind,
};
use crate::reference::check_digest;
use crate::{Client, Platform, Reference, RegistryError};

/// Everything needed about one image for one platform.
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    /// The reference as requested (tag kept).
    pub reference: Reference,
    /// Digest of the selected image manifest.
    pub manifest_digest: String,
    pub manifest_media_type: String,
    /// Raw bytes of the selected image manifest.
    pub manifest: Vec<u8>,
    /// Platform of the selected manifest (from the index entry, or from the config).
    pub platform: Platform,
    pub config_digest: String,
    /// Raw bytes of the image config (digest verified).
    pub config: Vec<u8>,
    pub layers: Vec<LayerDescriptor>,
}

impl Client {
    /// Resolves `reference` for `platform`: the image manifest (chosen from an index if need
    /// be), the image config and the layer table, all digest-verified.
    pub fn resolve(
        &self,
        reference: &Reference,
        platform: &Platform,
    ) -> Result<ResolvedImage, RegistryError> {
        let name = reference.to_string();
        let top = self.get_manifest(reference, reference.manifest_ref())?;
        if let Some(expected) = &reference.digest {
            verify_digest(&format!("manifest of {name}"), expected, &top.body)?;
        } else if let Some(header) = top.header_digest.as_deref() {
            let found = sha256_digest(&top.body);
            if header.starts_with("sha256:") && header != found {
                tracing::warn!(reference = %name, header, computed = %found,
                    "Docker-Content-Digest does not match the manifest received");
            }
        }
        let (media_type, kind) =
            manifest::classify_manifest(&name, &top.url, &top.body, top.content_type.as_deref())?;

        let (manifest_digest, manifest_media_type, manifest_bytes, url, index_platform) = match kind
        {
            ManifestKind::Image => {
                let digest = reference
                    .digest
                    .clone()
                    .unwrap_or_else(|| sha256_digest(&top.body));
                (digest, media_type, top.body, top.url, None)
            }
            ManifestKind::Index => {
                let (desc, selected) = choose_from_index(&name, &top.url, &top.body, platform)?;
                let child = self.get_manifest(reference, &desc.digest)?;
                let what = format!("manifest {} of {name}", desc.digest);
                verify_digest(&what, &desc.digest, &child.body)?;
                check_size(&what, desc.size, child.body.len() as u64)?;
                let child_type = index_child_media_type(
                    &name,
                    &child.url,
                    &child.body,
                    child.content_type.as_deref(),
                    &desc,
                )?;
                (
                    desc.digest,
                    child_type,
                    child.body,
                    child.url,
                    Some(selected),
                )
            }
        };

        let image = image_manifest(&name, &url, &manifest_bytes)?;
        let config_digest = image.config.digest.clone();
        let what = format!("config {config_digest} of {name}");
        let config = self.get_small_blob(reference, &config_digest, &what)?;
        check_size(&what, image.config.size, config.len() as u64)?;
        verify_digest(&what, &config_digest, &config)?;
        let config_url = self.blob_url(reference, &config_digest);
        let (platform, layers) = layer_table(
            &name,
            &url,
            &image,
            &config_url,
            &config,
            platform,
            index_platform,
        )?;

        Ok(ResolvedImage {
            reference: reference.clone(),
            manifest_digest,
            manifest_media_type,
            manifest: manifest_bytes,
            platform,
            config_digest,
            config,
            layers,
        })
    }

    fn get_manifest(
        &self,
        reference: &Reference,
        tag_or_digest: &str,
    ) -> Result<Fetched, RegistryError> {
        let name = if tag_or_digest == reference.manifest_ref() {
            reference.to_string()
        } else {
            reference.with_digest(tag_or_digest).to_string()
        };
        let by_digest = tag_or_digest.contains(':');
        self.read_with_mirrors(reference, by_digest, |endpoint| {
            let url = format!("{}/manifests/{tag_or_digest}", self.base_url(endpoint));
            let req = Req {
                reference: endpoint,
                url,
                method: Method::Get,
                if_match: None,
                accept: Some(manifest::MANIFEST_ACCEPT),
                range: None,
                target: Target::Manifest {
                    reference: name.clone(),
                },
            };
            let resp = self.exchange(&req)?;
            let content_type = header_str(&resp, header::CONTENT_TYPE);
            let header_digest = header_str(&resp, "docker-content-digest");
            let final_url = resp.get_uri().to_string();
            let body = self.read_capped(
                resp,
                MAX_MANIFEST,
                &format!("manifest of {name}"),
                &final_url,
            )?;
            if by_digest {
                // Checked here, so that a mirror serving other bytes falls back to the next.
                verify_digest(&format!("manifest of {name}"), tag_or_digest, &body)?;
            }
            Ok(Fetched {
                body,
                content_type,
                header_digest,
                url: final_url,
            })
        })
    }

    fn get_small_blob(
        &self,
        reference: &Reference,
        digest: &str,
        what: &str,
    ) -> Result<Vec<u8>, RegistryError> {
        self.read_with_mirrors(reference, true, |endpoint| {
            let url = self.blob_url(endpoint, digest);
            let req = Req::get(
                endpoint,
                url,
                Target::Blob {
                    reference: reference.to_string(),
                    digest,
                },
            );
            let resp = self.exchange(&req)?;
            let final_url = resp.get_uri().to_string();
            // A mirror's bytes are checked against the digest here, so that a bad one falls
            // back to the next endpoint rather than failing the read.
            let body = self.read_capped(resp, MAX_MANIFEST, what, &final_url)?;
            verify_digest(what, digest, &body)?;
            Ok(body)
        })
    }
}

/// A manifest response.
struct Fetched {
    body: Vec<u8>,
    content_type: Option<String>,
    header_digest: Option<String>,
    url: String,
}

/// The entry of an image index (or Docker manifest list) to use for `wanted`, and its
/// platform: the body parsed, the platform chosen, the entry's digest and size checked.
pub(crate) fn choose_from_index(
    name: &str,
    url: &str,
    body: &[u8],
    wanted: &Platform,
) -> Result<(manifest::Descriptor, Platform), RegistryError> {
    let index: ImageIndex = parse_json(url, "image index", body)?;
    let (desc, selected) = select_platform(name, &index, wanted)?;
    check_digest(&desc.digest).map_err(|reason| RegistryError::Protocol {
        url: url.to_string(),
        detail: format!("index entry digest {:?} {reason}", desc.digest),
    })?;
    if desc.size > MAX_MANIFEST {
        return Err(RegistryError::TooLarge {
            what: format!("manifest {} of {name}", desc.digest),
            limit: MAX_MANIFEST,
        });
    }
    Ok((desc.clone(), selected))
}

/// The media type of the manifest an index entry `desc` led to (its `Content-Type`, else the
/// entry's media type); it must be an image manifest, not another index.
pub(crate) fn index_child_media_type(
    name: &str,
    url: &str,
    body: &[u8],
    content_type: Option<&str>,
    desc: &manifest::Descriptor,
) -> Result<String, RegistryError> {
    let content_type = content_type.or(Some(desc.media_type.as_str()));
    let (child_type, child_kind) = manifest::classify_manifest(name, url, body, content_type)?;
    if child_kind != ManifestKind::Image {
        return Err(RegistryError::UnsupportedMediaType {
            reference: name.to_string(),
            media_type: child_type,
            hint: "an image index inside an image index is not supported".into(),
        });
    }
    Ok(child_type)
}

/// An image manifest parsed, with its config descriptor checked (media type, digest, size).
pub(crate) fn image_manifest(
    name: &str,
    url: &str,
    body: &[u8],
) -> Result<ImageManifest, RegistryError> {
    let image: ImageManifest = parse_json(url, "image manifest", body)?;
    manifest::check_config_media_type(name, &image.config.media_type)?;
    let config_digest = &image.config.digest;
    check_digest(config_digest).map_err(|reason| RegistryError::Protocol {
        url: url.to_string(),
        detail: format!("config digest {config_digest:?} {reason}"),
    })?;
    if image.config.size > MAX_MANIFEST {
        return Err(RegistryError::TooLarge {
            what: format!("config {config_digest} of {name}"),
            limit: MAX_MANIFEST,
        });
    }
    Ok(image)
}

/// The image's platform and layer table from its manifest and config: the config's platform
/// unless an index entry chose one, every layer's digest, compression and diff_id checked.
pub(crate) fn layer_table(
    name: &str,
    manifest_url: &str,
    image: &ImageManifest,
    config_url: &str,
    config: &[u8],
    wanted: &Platform,
    index_platform: Option<Platform>,
) -> Result<(Platform, Vec<LayerDescriptor>), RegistryError> {
    let parsed: ImageConfig = parse_json(config_url, "image config", config)?;
    let config_platform = Platform {
        os: parsed.os.clone(),
        architecture: parsed.architecture.clone(),
        variant: parsed.variant.clone().filter(|v| !v.is_empty()),
    };
    let platform = match index_platform {
        Some(p) => p,
        None => {
            if !wanted.matches(&config_platform) {
                tracing::warn!(reference = %name, wanted = %wanted, image = %config_platform,
                    "the image is single-platform and does not match the requested platform");
            }
            config_platform
        }
    };

    if parsed.rootfs.diff_ids.len() != image.layers.len() {
        return Err(RegistryError::Protocol {
            url: config_url.to_string(),
            detail: format!(
                "the config lists {} diff_ids but the manifest has {} layers",
                parsed.rootfs.diff_ids.len(),
                image.layers.len()
            ),
        });
    }
    let mut layers = Vec::with_capacity(image.layers.len());
    for (layer, diff_id) in image.layers.iter().zip(&parsed.rootfs.diff_ids) {
        check_digest(&layer.digest).map_err(|reason| RegistryError::Protocol {
            url: manifest_url.to_string(),
            detail: format!("layer digest {:?} {reason}", layer.digest),
        })?;
        check_digest(diff_id).map_err(|reason| RegistryError::Protocol {
            url: config_url.to_string(),
            detail: format!("diff_id {diff_id:?} {reason}"),
        })?;
        let compression = manifest::layer_compression(name, layer)?;
        layers.push(LayerDescriptor {
            digest: layer.digest.clone(),
            media_type: layer.media_type.clone(),
            size: layer.size,
            compression,
            diff_id: diff_id.clone(),
        });
    }
    Ok((platform, layers))
}

fn select_platform<'a>(
    name: &str,
    index: &'a ImageIndex,
    wanted: &Platform,
) -> Result<(&'a manifest::Descriptor, Platform), RegistryError> {
    let candidates: Vec<(&manifest::Descriptor, Platform)> = index
        .manifests
        .iter()
        .filter_map(|d| Some((d, d.platform.as_ref()?.to_platform())))
        .filter(|(_, p)| p.os != "unknown" && p.architecture != "unknown")
        .collect();
    match wanted.select(candidates.iter().map(|(_, p)| p)) {
        Some(i) => Ok(candidates[i].clone()),
        None => {
            let mut available: Vec<String> =
                candidates.iter().map(|(_, p)| p.to_string()).collect();
            available.sort();
            available.dedup();
            Err(RegistryError::NoMatchingPlatform {
                reference: name.to_string(),
                wanted: wanted.to_string(),
                available,
            })
        }
    }
}

pub(crate) fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// Checks `data` against `expected` (`sha256:` or `sha512:`).
pub(crate) fn verify_digest(what: &str, expected: &str, data: &[u8]) -> Result<(), RegistryError> {
    let found = if expected.starts_with("sha512:") {
        format!("sha512:{}", hex::encode(Sha512::digest(data)))
    } else {
        sha256_digest(data)
    };
    if found != expected {
        return Err(RegistryError::DigestMismatch {
            what: what.to_string(),
            expected: expected.to_string(),
            found,
        });
    }
    Ok(())
}

fn check_size(what: &str, expected: u64, found: u64) -> Result<(), RegistryError> {
    if expected != found {
        return Err(RegistryError::SizeMismatch {
            what: what.to_string(),
            expected,
            found,
        });
    }
    Ok(())
}
