//! Blob reads: [`BlobReader`], a whole blob as a verified, resumable stream, and
//! [`Client::fetch_range`], one byte range.

use std::fmt;
use std::io::{self, Read};

use sha2::{Digest as _, Sha256, Sha512};
use ureq::http::header;
use ureq::ResponseExt as _;

use crate::client::{header_str, Failure, Method, Req};
use crate::error::{body_io_error, Target};
use crate::reference::check_digest;
use crate::retry::Attempts;
use crate::{Client, Reference, RegistryError};

/// Streams one blob from the registry, hashing as it goes; never buffers the whole blob.
///
/// A transient failure mid-body (reset, timeout, a body that ends early) is answered by a new
/// request from the current position (`Range: bytes=<pos>-`), under the client's retry policy;
/// the attempt count starts over whenever bytes arrived since the last failure. At the end the
/// length and digest are checked: a mismatch is an `io::Error` carrying a
/// [`RegistryError::DigestMismatch`] or [`RegistryError::SizeMismatch`] (see
/// [`RegistryError::from_io`]). Every other fatal error also carries its `RegistryError`.
pub struct BlobReader {
    client: Client,
    reference: Reference,
    digest: String,
    size: u64,
    /// The URL that served the current body (after redirects), for error messages.
    url: String,
    body: Option<ureq::BodyReader<'static>>,
    /// Bytes of the current body to discard (the server ignored our Range).
    skip: u64,
    pos: u64,
    hasher: Hasher,
    state: State,
    attempts: Attempts,
    /// Whether bytes arrived since the last failure.
    progressed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Reading,
    Done,
    Failed,
}

enum Hasher {
    Sha256(Sha256),
    Sha512(Sha512),
}

impl Hasher {
    fn for_digest(digest: &str) -> Hasher {
        if digest.starts_with("sha512:") {
            Hasher::Sha512(Sha512::new())
        } else {
            Hasher::Sha256(Sha256::new())
        }
    }

    fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    fn finish(&mut self) -> String {
        match self {
            Hasher::Sha256(h) => format!("sha256:{}", hex::encode(h.finalize_reset())),
            Hasher::Sha512(h) => format!("sha512:{}", hex::encode(h.finalize_reset())),
        }
    }
}

impl fmt::Debug for BlobReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlobReader")
            .field("reference", &self.reference.to_string())
            .field("digest", &self.digest)
            .field("size", &self.size)
            .field("pos", &self.pos)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl BlobReader {
    pub(crate) fn new(
        client: Client,
        reference: Reference,
        digest: String,
        size: u64,
        url: String,
        body: ureq::BodyReader<'static>,
        skip: u64,
    ) -> BlobReader {
        BlobReader {
            client,
            reference,
            hasher: Hasher::for_digest(&digest),
            digest,
            size,
            url,
            body: Some(body),
            skip,
            pos: 0,
            state: State::Reading,
            attempts: Attempts::new(),
            progressed: false,
        }
    }

    /// The blob's digest.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The blob's size, as given.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Bytes delivered so far.
    pub fn position(&self) -> u64 {
        self.pos
    }

    fn what(&self) -> String {
        format!("blob {} of {}", self.digest, self.reference)
    }

    fn fail(&mut self, error: RegistryError) -> io::Error {
        self.state = State::Failed;
        self.body = None;
        io::Error::other(error)
    }

    /// After a failure: give up (permanent, or retries exhausted) or wait before trying again.
    fn backoff(&mut self, failure: Failure) -> io::Result<()> {
        self.body = None;
        if !failure.error.is_transient() {
            return Err(self.fail(failure.error));
        }
        if self.progressed {
            self.attempts = Attempts::new();
            self.progressed = false;
        }
        match self
            .attempts
            .failed(self.client.retry_policy(), failure.retry_after)
        {
            Some(delay) => {
                tracing::warn!(
                    url = %self.url,
                    pos = self.pos,
                    size = self.size,
                    error = %failure.error,
                    delay_ms = delay.as_millis() as u64,
                    "blob download interrupted, resuming"
                );
                self.client.stats_ref().add_retry();
                std::thread::sleep(delay);
                Ok(())
            }
            None => Err(self.fail(failure.error)),
        }
    }

    fn transport(&self, source: io::Error) -> Failure {
        RegistryError::Transport {
            url: self.url.clone(),
            source,
        }
        .into()
    }

    /// Makes sure there is a body to read from, re-requesting from `pos` as needed.
    fn ensure_body(&mut self) -> io::Result<()> {
        while self.body.is_none() {
            match self
                .client
                .open_blob(&self.reference, &self.digest, self.size, self.pos)
            {
                Ok(opened) => {
                    self.body = Some(opened.body);
                    self.skip = opened.skip;
                    self.url = opened.url;
                }
                Err(f) => self.backoff(f)?,
            }
        }
        Ok(())
    }

    /// All `size` bytes are in: check that the body ends here and the digest matches.
    fn finish(&mut self) -> io::Result<usize> {
        if let Some(body) = self.body.as_mut() {
            let mut probe = [0u8; 1];
            if let Ok(n @ 1..) = body.read(&mut probe) {
                self.client.stats_ref().add_bytes(n as u64);
                let (what, size) = (self.what(), self.size);
                return Err(self.fail(RegistryError::SizeMismatch {
                    what,
                    expected: size,
                    found: size + 1,
                }));
            }
        }
        self.body = None;
        let found = self.hasher.finish();
        if found != self.digest {
            let error = RegistryError::DigestMismatch {
                what: self.what(),
                expected: self.digest.clone(),
                found,
            };
            return Err(self.fail(error));
        }
        self.state = State::Done;
        Ok(0)
    }
}

impl Read for BlobReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.state {
            State::Done => return Ok(0),
            State::Failed => return Err(io::Error::other("this blob stream already failed")),
            State::Reading => {}
        }
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if self.pos == self.size && self.skip == 0 {
                return self.finish();
            }
            self.ensure_body()?;
            let Some(body) = self.body.as_mut() else {
                continue;
            };
            let want = if self.skip > 0 {
                self.skip.min(buf.len() as u64) as usize
            } else {
                (self.size - self.pos).min(buf.len() as u64) as usize
            };
            match body.read(&mut buf[..want]) {
                Ok(0) => {
                    let err = io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "body ended at byte {} of {}",
                            self.pos + self.skip,
                            self.size
                        ),
                    );
                    let f = self.transport(err);
                    self.backoff(f)?;
                }
                Ok(n) => {
                    self.client.stats_ref().add_bytes(n as u64);
                    if self.skip > 0 {
                        self.skip -= n as u64;
                        continue;
                    }
                    self.progressed = true;
                    self.hasher.update(&buf[..n]);
                    self.pos += n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let f = self.transport(body_io_error(e));
                    self.backoff(f)?;
                }
            }
        }
    }
}

impl Client {
    /// A streaming, verifying reader of a whole blob of `size` bytes; see [`BlobReader`].
    pub fn blob_reader(
        &self,
        reference: &Reference,
        layer_digest: &str,
        size: u64,
    ) -> Result<BlobReader, RegistryError> {
        check_blob_digest(layer_digest)?;
        let url = self.blob_url(reference, layer_digest);
        let opened = self.with_retry(&url, || self.open_blob(reference, layer_digest, size, 0))?;
        Ok(BlobReader::new(
            self.clone(),
            reference.clone(),
            layer_digest.to_string(),
            size,
            opened.url,
            opened.body,
            opened.skip,
        ))
    }

    /// Reads `range` of a blob with one Range request (retried when transient). The bytes are
    /// not verified: that is the caller's business.
    pub fn fetch_range(
        &self,
        reference: &Reference,
        digest: &str,
        range: std::ops::Range<u64>,
    ) -> Result<Vec<u8>, RegistryError> {
        if range.start >= range.end {
            return Ok(Vec::new());
        }
        check_blob_digest(digest)?;
        self.read_with_mirrors(reference, true, |endpoint| {
            let url = self.blob_url(endpoint, digest);
            self.fetch_range_once(endpoint, digest, &url, &range)
        })
    }

    /// One attempt of [`Client::fetch_range`] (`range` is not empty).
    fn fetch_range_once(
        &self,
        reference: &Reference,
        digest: &str,
        url: &str,
        range: &std::ops::Range<u64>,
    ) -> Result<Vec<u8>, Failure> {
        let (start, last) = (range.start, range.end - 1);
        let what = || format!("bytes {start}-{last} of blob {digest} of {reference}");
        let len = usize::try_from(range.end - start).map_err(|_| RegistryError::TooLarge {
            what: what(),
            limit: usize::MAX as u64,
        })?;
        let req = Req {
            reference,
            url: url.to_string(),
            method: Method::Get,
            if_match: None,
            accept: None,
            range: Some(format!("bytes={start}-{last}")),
            target: Target::Blob {
                reference: reference.to_string(),
                digest,
            },
        };
        let resp = self.exchange(&req)?;
        let final_url = resp.get_uri().to_string();
        let protocol = |detail: String| -> Failure {
            RegistryError::Protocol {
                url: final_url.clone(),
                detail,
            }
            .into()
        };
        let content_length =
            header_str(&resp, header::CONTENT_LENGTH).and_then(|v| v.trim().parse::<u64>().ok());
        let status = resp.status().as_u16();
        let skip = match status {
            206 => {
                let cr = header_str(&resp, header::CONTENT_RANGE).unwrap_or_default();
                if !matches!(parse_content_range(&cr), Some((f, l, _)) if f == start && l == last) {
                    return Err(protocol(format!(
                        "asked for bytes {start}-{last}, got Content-Range {cr:?}"
                    )));
                }
                if let Some(cl) = content_length.filter(|&cl| cl != len as u64) {
                    return Err(protocol(format!(
                        "206 response of {cl} bytes for {len} asked"
                    )));
                }
                0
            }
            200 => {
                tracing::warn!(url = %final_url, start,
                    "the server ignored the Range header; reading and discarding up to the start");
                if let Some(cl) = content_length.filter(|&cl| cl < range.end) {
                    return Err(protocol(format!(
                        "{} is past the end of the blob ({cl} bytes)",
                        what()
                    )));
                }
                start
            }
            other => {
                let message = "expected 206 Partial Content".to_string();
                return Err(RegistryError::Http {
                    url: final_url,
                    status: other,
                    message,
                }
                .into());
            }
        };

        let mut reader = resp.into_body().into_reader();
        let stats = self.stats_ref();
        let cut_short = |detail: String| -> Failure {
            let source = io::Error::new(io::ErrorKind::UnexpectedEof, detail);
            RegistryError::Transport {
                url: final_url.clone(),
                source,
            }
            .into()
        };
        let broken = |e: io::Error| -> Failure {
            RegistryError::Transport {
                url: final_url.clone(),
                source: body_io_error(e),
            }
            .into()
        };
        if skip > 0 {
            let skipped =
                io::copy(&mut (&mut reader).take(skip), &mut io::sink()).map_err(broken)?;
            stats.add_bytes(skipped);
            if skipped < skip {
                return Err(cut_short(format!(
                    "body ended at byte {skipped}, before {skip}"
                )));
            }
        }
        let mut buf = vec![0u8; len];
        let mut filled = 0;
        while filled < len {
            match reader.read(&mut buf[filled..]) {
                Ok(0) => {
                    return Err(cut_short(format!(
                        "body ended after {filled} of {len} bytes"
                    )))
                }
                Ok(n) => {
                    filled += n;
                    stats.add_bytes(n as u64);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(broken(e)),
            }
        }
        if status == 206 && matches!(reader.read(&mut [0u8; 1]), Ok(1..)) {
            return Err(protocol(format!(
                "206 response longer than the {len} bytes asked"
            )));
        }
        Ok(buf)
    }

    /// Opens a blob at `pos` (with `Range: bytes=pos-` when `pos > 0`): from a mirror if one
    /// answers, else (one attempt) from the registry.
    pub(crate) fn open_blob(
        &self,
        reference: &Reference,
        digest: &str,
        size: u64,
        pos: u64,
    ) -> Result<OpenedBlob, Failure> {
        let mut open = |endpoint: &Reference| self.open_blob_at(endpoint, digest, size, pos);
        match self.try_mirrors(reference, true, &mut open) {
            Some(opened) => Ok(opened),
            None => open(reference),
        }
    }

    fn open_blob_at(
        &self,
        reference: &Reference,
        digest: &str,
        size: u64,
        pos: u64,
    ) -> Result<OpenedBlob, Failure> {
        let req = Req {
            reference,
            url: self.blob_url(reference, digest),
            method: Method::Get,
            if_match: None,
            accept: None,
            range: (pos > 0).then(|| format!("bytes={pos}-")),
            target: Target::Blob {
                reference: reference.to_string(),
                digest,
            },
        };
        let resp = self.exchange(&req)?;
        let final_url = resp.get_uri().to_string();
        let what = || format!("blob {digest} of {reference}");
        let content_length =
            header_str(&resp, header::CONTENT_LENGTH).and_then(|v| v.trim().parse::<u64>().ok());
        let skip = match resp.status().as_u16() {
            200 => {
                if let Some(cl) = content_length.filter(|&cl| cl != size) {
                    return Err(RegistryError::SizeMismatch {
                        what: what(),
                        expected: size,
                        found: cl,
                    }
                    .into());
                }
                if pos > 0 {
                    tracing::warn!(
                        url = %final_url,
                        pos,
                        "the server ignored the Range header on resume; re-reading from the start"
                    );
                }
                pos
            }
            206 if pos > 0 => {
                let cr = header_str(&resp, header::CONTENT_RANGE).unwrap_or_default();
                match parse_content_range(&cr) {
                    Some((first, last, total))
                        if first == pos
                            && last.checked_add(1) == Some(size)
                            && total.is_none_or(|t| t == size) => {}
                    _ => {
                        return Err(RegistryError::Protocol {
                            url: final_url,
                            detail: format!(
                                "asked for bytes {pos}- of {size}, got Content-Range {cr:?}"
                            ),
                        }
                        .into())
                    }
                }
                0
            }
            other => {
                return Err(RegistryError::Http {
                    url: final_url,
                    status: other,
                    message: "unexpected status for a blob download".into(),
                }
                .into())
            }
        };
        Ok(OpenedBlob {
            body: resp.into_body().into_reader(),
            skip,
            url: final_url,
        })
    }
}

/// A blob body being received.
pub(crate) struct OpenedBlob {
    body: ureq::BodyReader<'static>,
    /// Bytes of `body` to discard first (the server ignored our Range).
    skip: u64,
    /// The URL that answered (after redirects).
    url: String,
}

/// `bytes FIRST-LAST/TOTAL` (TOTAL may be `*`).
pub(crate) fn parse_content_range(v: &str) -> Option<(u64, u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes")?.trim_start();
    let (range, total) = rest.split_once('/')?;
    let (first, last) = range.split_once('-')?;
    let first: u64 = first.trim().parse().ok()?;
    let last: u64 = last.trim().parse().ok()?;
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    (last >= first).then_some((first, last, total))
}

fn check_blob_digest(digest: &str) -> Result<(), RegistryError> {
    check_digest(digest).map_err(|reason| RegistryError::InvalidReference {
        input: digest.to_string(),
        reason: format!("digest {reason}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range() {
        assert_eq!(
            parse_content_range("bytes 0-99/1234"),
            Some((0, 99, Some(1234)))
        );
        assert_eq!(parse_content_range("bytes 5-5/*"), Some((5, 5, None)));
        assert_eq!(parse_content_range("bytes 9-5/10"), None);
        assert_eq!(parse_content_range("bytes */10"), None);
        assert_eq!(parse_content_range(""), None);
    }

    #[test]
    fn reader_is_send() {
        fn check<T: Send>() {}
        check::<BlobReader>();
    }
}
