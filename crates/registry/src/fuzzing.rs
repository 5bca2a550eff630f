//! Entry points for the fuzz targets in `fuzz/`: thin wrappers around the parsers of untrusted
//! registry input, so that they can be fuzzed without a network and without making them public.
//! Not an API: hidden from the docs, may change at any time.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::manifest::{self, ManifestKind};
use crate::{LayerDescriptor, Platform, RegistryError};

const URL: &str = "https://registry.fuzz/v2/repo/manifests/tag";
const CONFIG_URL: &str = "https://registry.fuzz/v2/repo/blobs/sha256:config";
const NAME: &str = "registry.fuzz/repo:tag";

/// What [`resolve_bytes`] found: the media type of the image manifest, the platform and the
/// layer table.
#[derive(Debug)]
pub struct Resolved {
    pub media_type: String,
    pub platform: Platform,
    pub layers: Vec<LayerDescriptor>,
}

/// Does with fetched bytes what [`crate::Client::resolve`] does, minus the network and the
/// digest checks: classifies `top` (a manifest or an index, with the response's
/// `content_type`); for an index, chooses the entry for `wanted` and takes `child` as the
/// manifest it names; parses the image manifest, then the image `config` into the platform
/// and layer table.
pub fn resolve_bytes(
    top: &[u8],
    content_type: Option<&str>,
    child: &[u8],
    child_content_type: Option<&str>,
    config: &[u8],
    wanted: &Platform,
) -> Result<Resolved, RegistryError> {
    let (media_type, kind) = manifest::classify_manifest(NAME, URL, top, content_type)?;
    let (media_type, body, index_platform) = match kind {
        ManifestKind::Image => (media_type, top, None),
        ManifestKind::Index => {
            let (desc, selected) = crate::resolve::choose_from_index(NAME, URL, top, wanted)?;
            let child_type = crate::resolve::index_child_media_type(
                NAME,
                URL,
                child,
                child_content_type,
                &desc,
            )?;
            (child_type, child, Some(selected))
        }
    };
    let image = crate::resolve::image_manifest(NAME, URL, body)?;
    let (platform, layers) = crate::resolve::layer_table(
        NAME,
        URL,
        &image,
        CONFIG_URL,
        config,
        wanted,
        index_platform,
    )?;
    Ok(Resolved {
        media_type,
        platform,
        layers,
    })
}

/// One challenge of a `WWW-Authenticate` header: lowercased scheme and parameters.
#[derive(Debug)]
pub struct Challenge {
    pub scheme: String,
    pub params: Vec<(String, String)>,
}

/// `parse_challenges` of the auth module, over several header values.
pub fn parse_challenges(values: &[&str]) -> Vec<Challenge> {
    crate::auth::parse_challenges(values.iter().copied())
        .into_iter()
        .map(|c| Challenge {
            scheme: c.scheme,
            params: c.params.into_iter().collect(),
        })
        .collect()
}

/// A token service's answer parsed: the token and how long it is used.
pub fn parse_token_response(body: &[u8]) -> Result<(String, Duration), RegistryError> {
    crate::client::parse_token_response("https://auth.fuzz/token", body)
        .map(|t| (t.value, t.valid_for))
}

/// `Content-Range: bytes FIRST-LAST/TOTAL` → `(first, last, total)`.
pub fn parse_content_range(value: &str) -> Option<(u64, u64, Option<u64>)> {
    crate::blob::parse_content_range(value)
}

/// `Retry-After` (seconds or an HTTP date) at `now_secs` since the epoch.
pub fn parse_retry_after(value: &str, now_secs: u64) -> Option<Duration> {
    let now = UNIX_EPOCH.checked_add(Duration::from_secs(now_secs))?;
    crate::retry::parse_retry_after(value, now)
}

/// `Retry-After` at the current time.
pub fn parse_retry_after_now(value: &str) -> Option<Duration> {
    crate::retry::parse_retry_after(value, SystemTime::now())
}

/// Where a redirect from `current` to `location` leads, and whether it stays in the origin
/// (`Err` is the reason it is refused).
pub fn follow_redirect(current: &str, location: &str) -> Result<(String, bool), String> {
    crate::redirect::follow(current, location).map(|hop| (hop.url, hop.same_origin))
}

/// Whether two URLs have the same origin.
pub fn same_origin(a: &str, b: &str) -> bool {
    crate::redirect::same_origin(a, b)
}

/// The error an unsuccessful answer (status, error body) to a blob request becomes.
pub fn error_from_response(status: u16, body: &[u8]) -> RegistryError {
    let target = crate::error::Target::Blob {
        reference: NAME.to_string(),
        digest: "sha256:0",
    };
    crate::error::error_from_response(&target, "registry.fuzz", URL, status, body)
}
