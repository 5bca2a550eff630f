//! A minimal registry API client for pushing test images: monolithic blob uploads and manifest
//! PUTs, with optional HTTP basic auth (sent on every request, as docker does after a login;
//! Distribution's htpasswd mode answers requests without it with `401` and a `Basic` challenge).

use std::time::Duration;

use base64::Engine as _;
use ureq::http::Response;
use ureq::Body;

use crate::layer::sha256_digest;
use crate::Error;

/// Talks to one registry over plain HTTP.
#[derive(Debug, Clone)]
pub struct RegistryClient {
    base: String,
    agent: ureq::Agent,
    authorization: Option<String>,
}

impl RegistryClient {
    /// A client for `host:port`, without credentials.
    pub fn new(addr: &str) -> RegistryClient {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .proxy(None)
            .max_redirects(0)
            .timeout_global(Some(Duration::from_secs(120)))
            .user_agent("clip-testkit")
            .build()
            .new_agent();
        RegistryClient {
            base: format!("http://{addr}"),
            agent,
            authorization: None,
        }
    }

    /// The same client, sending `Authorization: Basic` with these credentials.
    pub fn with_basic_auth(mut self, user: &str, password: &str) -> RegistryClient {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        self.authorization = Some(format!("Basic {token}"));
        self
    }

    fn url(&self, path_or_url: &str) -> String {
        if path_or_url.starts_with("http://") || path_or_url.starts_with("https://") {
            path_or_url.to_string()
        } else {
            format!("{}{path_or_url}", self.base)
        }
    }

    fn with_auth<B>(&self, req: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.authorization {
            Some(value) => req.header("Authorization", value),
            None => req,
        }
    }

    /// `GET path` and the status, body discarded (used for log markers).
    pub fn get_status(&self, path: &str) -> Result<u16, Error> {
        let mut resp = self.with_auth(self.agent.get(self.url(path))).call()?;
        let _ = resp.body_mut().read_to_vec();
        Ok(resp.status().as_u16())
    }

    /// Whether the repository has this blob (`HEAD /v2/<repo>/blobs/<digest>`).
    pub fn blob_exists(&self, repo: &str, digest: &str) -> Result<bool, Error> {
        let url = self.url(&format!("/v2/{repo}/blobs/{digest}"));
        let resp = self.with_auth(self.agent.head(url)).call()?;
        match resp.status().as_u16() {
            200 => Ok(true),
            404 => Ok(false),
            _ => Err(failure("HEAD blob", resp)),
        }
    }

    /// Deletes the repository's link to a blob (`DELETE /v2/<repo>/blobs/<digest>`; the test
    /// registry allows deletes): reads of it answer 404 from then on.
    pub fn delete_blob(&self, repo: &str, digest: &str) -> Result<(), Error> {
        let url = self.url(&format!("/v2/{repo}/blobs/{digest}"));
        let resp = self.with_auth(self.agent.delete(url)).call()?;
        match resp.status().as_u16() {
            202 => Ok(()),
            _ => Err(failure("DELETE blob", resp)),
        }
    }

    /// Uploads a blob monolithically (`POST …/blobs/uploads/`, then `PUT <location>&digest=`)
    /// unless `HEAD` says the repository has it already. Returns its digest.
    pub fn push_blob(&self, repo: &str, data: &[u8]) -> Result<String, Error> {
        let digest = sha256_digest(data);
        if self.blob_exists(repo, &digest)? {
            return Ok(digest);
        }
        let url = self.url(&format!("/v2/{repo}/blobs/uploads/"));
        let resp = self.with_auth(self.agent.post(url)).send_empty()?;
        if resp.status().as_u16() != 202 {
            return Err(failure("POST blob upload", resp));
        }
        let location = header(&resp, "location").ok_or("blob upload answer has no Location")?;
        let sep = if location.contains('?') { '&' } else { '?' };
        let url = self.url(&format!("{location}{sep}digest={digest}"));
        let req = self
            .agent
            .put(url)
            .header("Content-Type", "application/octet-stream");
        let resp = self.with_auth(req).send(data)?;
        if resp.status().as_u16() != 201 {
            return Err(failure("PUT blob", resp));
        }
        Ok(digest)
    }

    /// `PUT /v2/<repo>/manifests/<reference>` (a tag or a digest). Returns the manifest digest.
    pub fn push_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> Result<String, Error> {
        let url = self.url(&format!("/v2/{repo}/manifests/{reference}"));
        let req = self.agent.put(url).header("Content-Type", media_type);
        let resp = self.with_auth(req).send(body)?;
        if resp.status().as_u16() != 201 {
            return Err(failure("PUT manifest", resp));
        }
        Ok(sha256_digest(body))
    }

    /// `GET /v2/<repo>/manifests/<reference>` accepting `accept`: the media type and the bytes.
    pub fn get_manifest(
        &self,
        repo: &str,
        reference: &str,
        accept: &str,
    ) -> Result<(String, Vec<u8>), Error> {
        let url = self.url(&format!("/v2/{repo}/manifests/{reference}"));
        let mut resp = self
            .with_auth(self.agent.get(url).header("Accept", accept))
            .call()?;
        if resp.status().as_u16() != 200 {
            return Err(failure("GET manifest", resp));
        }
        let media_type = header(&resp, "content-type").unwrap_or_default();
        Ok((media_type, resp.body_mut().read_to_vec()?))
    }

    /// `GET /v2/<repo>/blobs/<digest>`: the whole blob.
    pub fn get_blob(&self, repo: &str, digest: &str) -> Result<Vec<u8>, Error> {
        let url = self.url(&format!("/v2/{repo}/blobs/{digest}"));
        let mut resp = self.with_auth(self.agent.get(url)).call()?;
        if resp.status().as_u16() != 200 {
            return Err(failure("GET blob", resp));
        }
        Ok(resp
            .body_mut()
            .with_config()
            .limit(u64::MAX)
            .read_to_vec()?)
    }

    /// `GET /v2/<repo>/blobs/<digest>` with `Range: bytes=START-END_INCLUSIVE`: the status
    /// (206 from Distribution) and the body.
    pub fn get_blob_range(
        &self,
        repo: &str,
        digest: &str,
        range: std::ops::Range<u64>,
    ) -> Result<(u16, Vec<u8>), Error> {
        assert!(range.start < range.end, "empty range {range:?}");
        let url = self.url(&format!("/v2/{repo}/blobs/{digest}"));
        let value = format!("bytes={}-{}", range.start, range.end - 1);
        let mut resp = self
            .with_auth(self.agent.get(url).header("Range", value))
            .call()?;
        let status = resp.status().as_u16();
        if !matches!(status, 200 | 206) {
            return Err(failure("GET blob range", resp));
        }
        Ok((
            status,
            resp.body_mut()
                .with_config()
                .limit(u64::MAX)
                .read_to_vec()?,
        ))
    }
}

fn header(resp: &Response<Body>, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// An error naming the step, the status and the registry's error body.
fn failure(what: &str, mut resp: Response<Body>) -> Error {
    let status = resp.status();
    let challenge = header(&resp, "www-authenticate")
        .map(|c| format!(" ({c})"))
        .unwrap_or_default();
    let body = resp.body_mut().read_to_string().unwrap_or_default();
    format!("{what}: {status}{challenge}: {body}").into()
}
