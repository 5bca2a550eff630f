//! Fuzzes what the registry client's resolver does with fetched bytes: manifests and image
//! indexes of OCI and Docker media types (classified by `mediaType`, `Content-Type` or shape),
//! platform selection on an index, the config descriptor checks, and the platform and layer
//! table taken from the image config. Also image references, which index files name.
//!
//! Errors are fine, panics are bugs.
//!
//! Input: one byte choosing the `Content-Type` of the top manifest (low 3 bits) and of the
//! manifest an index entry leads to (next 3 bits), one byte choosing the platform wanted, then
//! three documents separated by NUL bytes: the top manifest or index, the manifest an index
//! entry leads to, and the image config. (Digests are not verified here: `resolve` checks them
//! before any of this sees the bytes.)
#![no_main]

use clip_registry::{fuzzing, Platform, Reference};
use libfuzzer_sys::fuzz_target;

const CONTENT_TYPES: [Option<&str>; 8] = [
    None,
    Some("application/vnd.oci.image.manifest.v1+json"),
    Some("application/vnd.oci.image.index.v1+json"),
    Some("application/vnd.docker.distribution.manifest.v2+json"),
    Some("application/vnd.docker.distribution.manifest.list.v2+json"),
    Some("application/vnd.docker.distribution.manifest.v1+prettyjws"),
    Some("application/json; charset=utf-8"),
    Some("text/plain"),
];

const PLATFORMS: [&str; 8] = [
    "linux/amd64",
    "linux/arm64",
    "linux/arm/v7",
    "linux/arm",
    "linux/amd64/v3",
    "windows/amd64",
    "linux/s390x",
    "linux/arm64/v8",
];

fuzz_target!(|data: &[u8]| {
    let [selector, platform, rest @ ..] = data else {
        return;
    };
    let content_type = CONTENT_TYPES[usize::from(selector & 7)];
    let child_content_type = CONTENT_TYPES[usize::from((selector >> 3) & 7)];
    let Ok(wanted) = PLATFORMS[usize::from(platform & 7)].parse::<Platform>() else {
        return;
    };
    let mut parts = rest.splitn(3, |&b| b == 0);
    let top = parts.next().unwrap_or_default();
    let child = parts.next().unwrap_or_default();
    let config = parts.next().unwrap_or_default();

    match fuzzing::resolve_bytes(
        top,
        content_type,
        child,
        child_content_type,
        config,
        &wanted,
    ) {
        Ok(resolved) => {
            for layer in &resolved.layers {
                assert!(layer.digest.contains(':') && layer.diff_id.contains(':'));
            }
            let _ = resolved.platform.to_string();
        }
        Err(e) => {
            let _ = e.to_string();
            let _ = e.is_transient();
        }
    }

    // References and platforms as an index file or a user spells them: what parses prints
    // back to something that parses to the same.
    if let Ok(text) = std::str::from_utf8(top) {
        if let Ok(reference) = text.parse::<Reference>() {
            let again: Reference = reference
                .to_string()
                .parse()
                .unwrap_or_else(|e| panic!("{reference} does not parse back: {e}"));
            assert_eq!(again, reference);
            let _ = reference.api_host();
        }
        if let Ok(platform) = text.parse::<Platform>() {
            let again: Platform = platform
                .to_string()
                .parse()
                .unwrap_or_else(|e| panic!("{platform} does not parse back: {e}"));
            assert_eq!(again, platform);
            let _ = wanted.matches(&platform);
        }
    }
});
