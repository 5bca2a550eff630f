//! Writing to a registry and finding what refers to a manifest: blob and manifest uploads,
//! manifests fetched raw, and the OCI 1.1 referrers — through the referrers API where the
//! registry has it (`GET /v2/<name>/referrers/<digest>`), else through the referrers tag schema
//! (an image index under the tag `<alg>-<hex>` of the subject digest), which this module also
//! updates, read-modify-write, keeping every entry others put there.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use ureq::http::header;
use ureq::ResponseExt as _;

use crate::client::{header_str, parse_json, Failure, Method, Req, MAX_MANIFEST};
use crate::error::Target;
use crate::manifest::{OCI_INDEX, OCI_MANIFEST};
use crate::reference::check_digest;
use crate::resolve::{sha256_digest, verify_digest};
use crate::{Client, Reference, RegistryError};

/// How many times a read-modify-write of the referrers tag is tried when another writer got
/// in between.
const REFERRERS_TAG_ATTEMPTS: usize = 5;

/// A content descriptor, with the fields referrers use (OCI image spec 1.1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType")]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(
        rename = "artifactType",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// A manifest (or index) as the registry stores it.
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    /// sha256 of the bytes (checked against the digest asked for, when one was).
    pub digest: String,
    /// The `mediaType` of the document, else the `Content-Type` it was served with.
    pub media_type: String,
    pub body: Vec<u8>,
    /// The `ETag` it was served with, for a conditional write back.
    pub etag: Option<String>,
}

/// What [`Client::push_manifest`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushedManifest {
    /// sha256 of the bytes pushed.
    pub digest: String,
    /// The registry answered `OCI-Subject`: it indexes the manifest's subject itself (it has
    /// the referrers API), so the referrers tag need not be updated.
    pub subject_indexed: bool,
}

/// Where a list of referrers came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReferrersSource {
    /// The registry's referrers API.
    Api,
    /// The referrers tag schema (`sha256-<hex>`), the registry having no referrers API.
    TagSchema,
}

/// The manifests that refer to a subject.
#[derive(Debug, Clone)]
pub struct Referrers {
    pub source: ReferrersSource,
    pub manifests: Vec<Descriptor>,
}

/// The referrers tag of a subject digest: `sha256:ab…` → `sha256-ab…`.
pub fn referrers_tag(subject_digest: &str) -> String {
    subject_digest.replacen(':', "-", 1)
}

#[derive(Serialize, Deserialize)]
struct Index {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct MediaTypeProbe {
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
}

impl Client {
    /// Whether the repository has the blob.
    pub fn blob_exists(&self, reference: &Reference, digest: &str) -> Result<bool, RegistryError> {
        check_digest(digest).map_err(|reason| RegistryError::InvalidReference {
            input: digest.to_string(),
            reason,
        })?;
        let url = self.blob_url(reference, digest);
        let found = self.with_retry(&url, || {
            let mut req = self.blob_req(reference, url.clone(), digest);
            req.method = Method::Head;
            let resp = self.exchange(&req)?;
            self.discard(resp);
            Ok(())
        });
        match found {
            Ok(()) => Ok(true),
            Err(RegistryError::BlobNotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Uploads a blob unless the repository has it already (a monolithic upload: `POST` for
    /// a session, `PUT` of the bytes with their digest); returns the digest.
    pub fn push_blob(&self, reference: &Reference, data: &[u8]) -> Result<String, RegistryError> {
        let digest = sha256_digest(data);
        if self.blob_exists(reference, &digest)? {
            tracing::debug!(%digest, "blob already in the repository");
            return Ok(digest);
        }
        let uploads = format!("{}/blobs/uploads/", self.base_url(reference));
        self.with_retry(&uploads, || {
            let mut start = self.blob_req(reference, uploads.clone(), &digest);
            start.method = Method::Post;
            let resp = self.exchange(&start)?;
            let answered = resp.get_uri().to_string();
            let location = header_str(&resp, header::LOCATION);
            self.discard(resp);
            let location = location.ok_or_else(|| RegistryError::Protocol {
                url: answered.clone(),
                detail: "an upload was started without a Location to send the blob to".into(),
            })?;
            let session = crate::redirect::follow(&answered, &location)
                .map_err(|reason| RegistryError::Protocol {
                    url: answered.clone(),
                    detail: format!("unusable upload Location {location:?}: {reason}"),
                })?
                .url;
            let separator = if session.contains('?') { '&' } else { '?' };
            let put_url = format!("{session}{separator}digest={}", digest.replace(':', "%3A"));
            let mut put = self.blob_req(reference, put_url, &digest);
            put.method = Method::Put {
                body: data,
                content_type: "application/octet-stream",
            };
            let resp = self.exchange(&put)?;
            self.discard(resp);
            Ok(())
        })?;
        Ok(digest)
    }

    /// Puts a manifest (or index) under `tag_or_digest`, optionally only if the current one
    /// still has the `ETag` `if_match` (a registry that checks answers 412 otherwise, reported
    /// as [`RegistryError::Http`] with status 412).
    pub fn push_manifest(
        &self,
        reference: &Reference,
        tag_or_digest: &str,
        media_type: &str,
        body: &[u8],
        if_match: Option<&str>,
    ) -> Result<PushedManifest, RegistryError> {
        let digest = sha256_digest(body);
        if tag_or_digest.contains(':') && tag_or_digest != digest {
            return Err(RegistryError::DigestMismatch {
                what: format!("manifest pushed as {tag_or_digest}"),
                expected: tag_or_digest.to_string(),
                found: digest,
            });
        }
        let url = format!("{}/manifests/{tag_or_digest}", self.base_url(reference));
        let name = reference.with_digest(&digest).to_string();
        self.with_retry(&url, || {
            let req = Req {
                reference,
                url: url.clone(),
                method: Method::Put {
                    body,
                    content_type: media_type,
                },
                accept: None,
                range: None,
                if_match,
                target: Target::Manifest {
                    reference: name.clone(),
                },
            };
            let resp = self.exchange(&req)?;
            let subject_indexed = resp.headers().contains_key("oci-subject");
            self.discard(resp);
            Ok(PushedManifest {
                digest: digest.clone(),
                subject_indexed,
            })
        })
    }

    /// A manifest or index by tag or digest, as stored (capped at 8 MiB; by digest, checked
    /// against it). `Ok(None)` when there is no such tag or digest.
    pub fn fetch_manifest(
        &self,
        reference: &Reference,
        tag_or_digest: &str,
        accept: &'static str,
    ) -> Result<Option<FetchedManifest>, RegistryError> {
        let by_digest = tag_or_digest.contains(':');
        let name = if by_digest {
            reference.with_digest(tag_or_digest).to_string()
        } else {
            format!(
                "{}/{}:{tag_or_digest}",
                reference.registry, reference.repository
            )
        };
        let fetched = self.read_with_mirrors(reference, by_digest, |endpoint| {
            let url = format!("{}/manifests/{tag_or_digest}", self.base_url(endpoint));
            let mut req = Req::get(
                endpoint,
                url,
                Target::Manifest {
                    reference: name.clone(),
                },
            );
            req.accept = Some(accept);
            let resp = self.exchange(&req)?;
            let content_type = header_str(&resp, header::CONTENT_TYPE);
            let etag = header_str(&resp, header::ETAG);
            let answered = resp.get_uri().to_string();
            let body =
                self.read_capped(resp, MAX_MANIFEST, &format!("manifest {name}"), &answered)?;
            if by_digest {
                // Checked here, so that a mirror serving other bytes falls back to the next.
                verify_digest(&format!("manifest {name}"), tag_or_digest, &body)?;
            }
            Ok((body, content_type, etag))
        });
        let (body, content_type, etag) = match fetched {
            Ok(f) => f,
            Err(RegistryError::ManifestNotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let digest = sha256_digest(&body);
        let media_type = serde_json::from_slice::<MediaTypeProbe>(&body)
            .ok()
            .and_then(|p| p.media_type)
            .or(content_type)
            .unwrap_or_default();
        Ok(Some(FetchedManifest {
            digest,
            media_type,
            body,
            etag,
        }))
    }

    /// The manifests that refer to `subject` (a manifest digest in `reference`'s repository),
    /// of `artifact_type` when given: from the referrers API, or, where the registry has none
    /// (it answers 404), from the referrers tag schema. The registry may ignore the filter:
    /// the list is filtered here too.
    pub fn referrers(
        &self,
        reference: &Reference,
        subject: &str,
        artifact_type: Option<&str>,
    ) -> Result<Referrers, RegistryError> {
        check_digest(subject).map_err(|reason| RegistryError::InvalidReference {
            input: subject.to_string(),
            reason,
        })?;
        let keep =
            |d: &Descriptor| artifact_type.is_none_or(|t| d.artifact_type.as_deref() == Some(t));
        // The referrers API and the referrers tag are asked at once: a registry without the
        // API (answered 404) costs no round trip more than one with it.
        let (api, tag) = std::thread::scope(|scope| {
            let tag =
                scope.spawn(|| self.fetch_manifest(reference, &referrers_tag(subject), OCI_INDEX));
            let api = self.referrers_api(reference, subject, artifact_type);
            (
                api,
                tag.join().unwrap_or_else(|e| std::panic::resume_unwind(e)),
            )
        });
        if let Some(mut manifests) = api? {
            manifests.retain(keep);
            return Ok(Referrers {
                source: ReferrersSource::Api,
                manifests,
            });
        }
        let mut manifests = match tag? {
            Some(index) => parse_referrers_index(&index)?,
            None => Vec::new(),
        };
        manifests.retain(keep);
        Ok(Referrers {
            source: ReferrersSource::TagSchema,
            manifests,
        })
    }

    /// `GET /v2/<name>/referrers/<digest>`; `Ok(None)` when the registry has no referrers API.
    /// Mirrors are asked first; one without the API (or failing) passes the question on.
    fn referrers_api(
        &self,
        reference: &Reference,
        subject: &str,
        artifact_type: Option<&str>,
    ) -> Result<Option<Vec<Descriptor>>, RegistryError> {
        let name = reference.with_digest(subject).to_string();
        let mut ask = |endpoint: &Reference| -> Result<Vec<Descriptor>, Failure> {
            let mut url = format!("{}/referrers/{subject}", self.base_url(endpoint));
            if let Some(t) = artifact_type {
                url.push_str(&format!("?artifactType={}", crate::client::encode_query(t)));
            }
            let mut req = Req::get(
                endpoint,
                url,
                Target::Manifest {
                    reference: format!("referrers of {name}"),
                },
            );
            req.accept = Some(OCI_INDEX);
            let resp = self.exchange(&req)?;
            let answered = resp.get_uri().to_string();
            let body = self.read_capped(
                resp,
                MAX_MANIFEST,
                &format!("referrers of {name}"),
                &answered,
            )?;
            let index: Index = parse_json(&answered, "referrers index", &body)?;
            Ok(index.manifests)
        };
        if let Some(found) = self.try_mirrors(reference, true, &mut ask) {
            return Ok(Some(found));
        }
        if self.mirror_answered_no_api(reference) {
            // A mirror that works but has no referrers API (a pull-through cache, typically):
            // the tag schema, through it, rather than a question to the registry itself,
            // which a node behind a mirror may not reach at all.
            return Ok(None);
        }
        let url = format!("{}/referrers/{subject}", self.base_url(reference));
        match self.with_retry(&url, || ask(reference)) {
            Ok(found) => Ok(Some(found)),
            // No such endpoint (or nothing refers to it, which a registry with the API answers
            // with an empty index, not a 404): the tag schema.
            Err(
                RegistryError::ManifestNotFound { .. } | RegistryError::RepositoryNotFound { .. },
            ) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Adds `referrer` to the referrers tag of `subject`, read-modify-write: entries for which
    /// `replaces` is true are dropped (an older version of the same thing), every other entry is
    /// kept. The write is conditional on the `ETag` read (`If-Match`) where the registry
    /// honours it, and read back: when another writer's update replaced ours meanwhile, the
    /// whole cycle runs again (up to five times). On a registry that honours neither, two
    /// writers updating the tag at the same instant can still lose one entry: that is the race
    /// the distribution spec documents for the tag schema.
    pub fn add_referrer(
        &self,
        reference: &Reference,
        subject: &str,
        referrer: &Descriptor,
        replaces: &dyn Fn(&Descriptor) -> bool,
    ) -> Result<(), RegistryError> {
        let tag = referrers_tag(subject);
        let mut last_problem = String::new();
        for attempt in 1..=REFERRERS_TAG_ATTEMPTS {
            let current = self.fetch_manifest(reference, &tag, OCI_INDEX)?;
            let (mut manifests, etag) = match &current {
                Some(index) => (parse_referrers_index(index)?, index.etag.clone()),
                None => (Vec::new(), None),
            };
            manifests.retain(|d| d.digest != referrer.digest && !replaces(d));
            manifests.push(referrer.clone());
            let body = serde_json::to_vec(&Index {
                schema_version: 2,
                media_type: Some(OCI_INDEX.to_string()),
                manifests,
            })
            .map_err(|e| RegistryError::Protocol {
                url: tag.clone(),
                detail: format!("cannot encode the referrers index: {e}"),
            })?;
            match self.push_manifest(reference, &tag, OCI_INDEX, &body, etag.as_deref()) {
                Ok(_) => {}
                Err(RegistryError::Http { status: 412, .. }) => {
                    last_problem = "the tag changed while it was updated (HTTP 412)".into();
                    tracing::debug!(attempt, "referrers tag changed meanwhile; again");
                    continue;
                }
                Err(e) => return Err(e),
            }
            let back = self.fetch_manifest(reference, &tag, OCI_INDEX)?;
            let present = match &back {
                Some(index) => parse_referrers_index(index)?
                    .iter()
                    .any(|d| d.digest == referrer.digest),
                None => false,
            };
            if present {
                return Ok(());
            }
            last_problem = "another writer replaced the tag right after our update".into();
            tracing::debug!(attempt, "our referrers entry was overwritten; again");
        }
        Err(RegistryError::Protocol {
            url: format!("{reference} tag {tag}"),
            detail: format!(
                "could not update the referrers tag in {REFERRERS_TAG_ATTEMPTS} attempts: \
                 {last_problem}"
            ),
        })
    }

    fn blob_req<'a>(&self, reference: &'a Reference, url: String, digest: &'a str) -> Req<'a> {
        Req::get(
            reference,
            url,
            Target::Blob {
                reference: reference.to_string(),
                digest,
            },
        )
    }

    /// Reads what little is left of a response, so that its connection can be reused.
    fn discard(&self, resp: crate::client::Response) {
        let _ = self.read_capped(resp, 64 << 10, "response", "");
    }
}

/// The entries of a referrers index (an OCI image index).
fn parse_referrers_index(index: &FetchedManifest) -> Result<Vec<Descriptor>, RegistryError> {
    let parsed: Index = parse_json("referrers tag", "referrers index", &index.body)?;
    if index.media_type != OCI_INDEX {
        return Err(RegistryError::UnsupportedMediaType {
            reference: "referrers tag".into(),
            media_type: index.media_type.clone(),
            hint: format!("the referrers tag schema uses an OCI image index ({OCI_INDEX})"),
        });
    }
    Ok(parsed.manifests)
}

/// The media type of an OCI image manifest (what an artifact is pushed as).
pub const OCI_IMAGE_MANIFEST: &str = OCI_MANIFEST;
/// The media type of an OCI image index (what a referrers list is).
pub const OCI_IMAGE_INDEX: &str = OCI_INDEX;
