//! [`RegistryError`]: every way talking to a registry can fail, with messages that say which
//! thing failed and what to do about it.

use std::io;

/// An error from the registry client.
///
/// Variants are structured so callers can react to them (`match`, or
/// [`RegistryError::is_transient`]); their messages name the thing that failed and, where
/// there is one, what the user can do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// The image reference could not be parsed.
    #[error("invalid image reference {input:?}: {reason}")]
    InvalidReference { input: String, reason: String },

    /// The platform string could not be parsed.
    #[error("invalid platform {input:?}: {reason} (expected OS/ARCH[/VARIANT], e.g. linux/amd64)")]
    InvalidPlatform { input: String, reason: String },

    /// The registry does not know the repository.
    #[error(
        "no such repository: {reference}; check the name, or your credentials if it is private"
    )]
    RepositoryNotFound { reference: String },

    /// The repository exists but not the tag or digest.
    #[error("no such tag or digest: {reference}")]
    ManifestNotFound { reference: String },

    /// The registry does not have a blob the manifest names.
    #[error("blob {digest} of {reference} is missing from the registry")]
    BlobNotFound { reference: String, digest: String },

    /// Authentication failed or is needed.
    #[error(
        "wrong or missing credentials for {registry}: {reason}; \
         pass --creds {registry}=USER:PASS or run `docker login {registry}`"
    )]
    Unauthorized { registry: String, reason: String },

    /// Authenticated, but not allowed.
    #[error("access denied by {registry}: {reason}; check that this account may pull the image")]
    Denied { registry: String, reason: String },

    /// The registry rate-limits us (HTTP 429), still after retrying.
    #[error(
        "{registry} is rate-limiting requests: {message}; \
         wait, or authenticate to get a higher limit"
    )]
    TooManyRequests { registry: String, message: String },

    /// No manifest in the image index matches the wanted platform.
    #[error(
        "{reference} has no image for platform {wanted}; available: {}; pick one with --platform",
        if available.is_empty() { "none".to_string() } else { available.join(", ") }
    )]
    NoMatchingPlatform {
        reference: String,
        wanted: String,
        available: Vec<String>,
    },

    /// A manifest, config or layer of a kind we cannot use.
    #[error("{reference}: unsupported media type {media_type:?}: {hint}")]
    UnsupportedMediaType {
        reference: String,
        media_type: String,
        hint: String,
    },

    /// Content did not hash to the digest that names it.
    #[error("digest mismatch for {what}: expected {expected}, got {found}")]
    DigestMismatch {
        what: String,
        expected: String,
        found: String,
    },

    /// Content did not have the size its descriptor says.
    #[error("size mismatch for {what}: expected {expected} bytes, got {found}")]
    SizeMismatch {
        what: String,
        expected: u64,
        found: u64,
    },

    /// Something we would have to hold in memory is larger than we accept.
    #[error("{what} is larger than the limit of {limit} bytes")]
    TooLarge { what: String, limit: u64 },

    /// An HTTP status we did not expect.
    #[error("unexpected HTTP status {status} from {url}: {message}")]
    Http {
        url: String,
        status: u16,
        message: String,
    },

    /// Connection, TLS or timeout failure (after retries, when it was transient).
    #[error("cannot talk to {url} (is the registry reachable?)")]
    Transport {
        url: String,
        #[source]
        source: io::Error,
    },

    /// A redirect that is not followed: to a scheme other than http(s), from https down to
    /// http, to a URL with credentials in it, or one hop too many.
    #[error("refusing the redirect from {url} to {location:?}: {reason}")]
    Redirect {
        url: String,
        location: String,
        reason: String,
    },

    /// The registry answered something malformed (JSON, headers, ranges).
    #[error("malformed response from {url}: {detail}")]
    Protocol { url: String, detail: String },

    /// A credentials file or helper could not be used.
    #[error("cannot read credentials from {path}: {detail}")]
    Credentials { path: String, detail: String },

    /// The [`crate::ClientOptions`] are unusable.
    #[error("invalid registry client options: {detail}")]
    InvalidOptions { detail: String },
}

impl RegistryError {
    /// Whether trying again later may succeed: connection failures, timeouts, truncated bodies,
    /// HTTP 408/425/429/500/502/503/504.
    pub fn is_transient(&self) -> bool {
        match self {
            RegistryError::Transport { source, .. } => is_transient_io(source.kind()),
            RegistryError::Http { status, .. } => is_transient_status(*status),
            RegistryError::TooManyRequests { .. } => true,
            RegistryError::InvalidReference { .. }
            | RegistryError::InvalidPlatform { .. }
            | RegistryError::RepositoryNotFound { .. }
            | RegistryError::ManifestNotFound { .. }
            | RegistryError::BlobNotFound { .. }
            | RegistryError::Unauthorized { .. }
            | RegistryError::Denied { .. }
            | RegistryError::NoMatchingPlatform { .. }
            | RegistryError::UnsupportedMediaType { .. }
            | RegistryError::DigestMismatch { .. }
            | RegistryError::SizeMismatch { .. }
            | RegistryError::TooLarge { .. }
            | RegistryError::Redirect { .. }
            | RegistryError::Protocol { .. }
            | RegistryError::Credentials { .. }
            | RegistryError::InvalidOptions { .. } => false,
        }
    }

    /// The `RegistryError` inside an `io::Error` returned by [`crate::BlobReader`], if any.
    pub fn from_io(err: &io::Error) -> Option<&RegistryError> {
        err.get_ref()?.downcast_ref::<RegistryError>()
    }

    /// The `RegistryError` an `io::Error` of a [`crate::BlobReader`] carries, taken out of it;
    /// any other I/O error as a transport failure.
    pub fn from_io_owned(err: io::Error) -> RegistryError {
        let message = err.to_string();
        match err
            .into_inner()
            .map(|inner| inner.downcast::<RegistryError>())
        {
            Some(Ok(r)) => *r,
            Some(Err(other)) => RegistryError::Transport {
                url: String::new(),
                source: io::Error::other(other),
            },
            None => RegistryError::Transport {
                url: String::new(),
                source: io::Error::other(message),
            },
        }
    }
}

/// HTTP statuses worth retrying.
pub(crate) fn is_transient_status(status: u16) -> bool {
    matches!(status, 408 | 425 | 429 | 500 | 502 | 503 | 504)
}

/// I/O error kinds worth retrying (network trouble rather than a wrong address or a bad
/// certificate).
pub(crate) fn is_transient_io(kind: io::ErrorKind) -> bool {
    use io::ErrorKind::*;
    matches!(
        kind,
        ConnectionRefused
            | ConnectionReset
            | ConnectionAborted
            | NotConnected
            | BrokenPipe
            | TimedOut
            | UnexpectedEof
            | Interrupted
            | WouldBlock
            | InvalidData
            | HostUnreachable
            | NetworkUnreachable
            | NetworkDown
    )
}

/// Turns a ureq error into an `io::Error` whose kind tells transient from permanent.
pub(crate) fn ureq_to_io(err: ureq::Error) -> io::Error {
    match err {
        ureq::Error::Io(e) => e,
        ureq::Error::Timeout(t) => io::Error::new(io::ErrorKind::TimedOut, format!("timeout: {t}")),
        e @ ureq::Error::Protocol(_) => io::Error::new(io::ErrorKind::InvalidData, e),
        e @ ureq::Error::HostNotFound => io::Error::new(io::ErrorKind::NotFound, e),
        e @ ureq::Error::ConnectionFailed => io::Error::new(io::ErrorKind::ConnectionRefused, e),
        e => io::Error::other(e),
    }
}

/// An `io::Error` from reading a ureq body: unwraps a ureq error it may carry.
pub(crate) fn body_io_error(err: io::Error) -> io::Error {
    if err.get_ref().is_some_and(|e| e.is::<ureq::Error>()) {
        ureq_to_io(ureq::Error::from(err))
    } else {
        err
    }
}

/// What a request was about, to turn a registry's error answer into the right variant.
#[derive(Debug, Clone)]
pub(crate) enum Target<'a> {
    Manifest { reference: String },
    Blob { reference: String, digest: &'a str },
    Token,
}

#[derive(serde::Deserialize)]
struct ErrorBody {
    #[serde(default)]
    errors: Vec<ErrorEntry>,
}

#[derive(serde::Deserialize)]
struct ErrorEntry {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

/// Maps an unsuccessful response (status, JSON error body) to an error.
///
/// `registry` is the registry the request was for; `url` the URL that answered.
pub(crate) fn error_from_response(
    target: &Target<'_>,
    registry: &str,
    url: &str,
    status: u16,
    body: &[u8],
) -> RegistryError {
    let parsed: Option<ErrorBody> = serde_json::from_slice(body).ok();
    let first = parsed.as_ref().and_then(|b| b.errors.first());
    let code = first.map(|e| e.code.as_str()).unwrap_or("");
    let message = match first {
        Some(e) if !e.message.is_empty() => e.message.clone(),
        _ => summarize_body(body),
    };
    let not_found = |code: &str| match (target, code) {
        (Target::Manifest { reference } | Target::Blob { reference, .. }, "NAME_UNKNOWN") => {
            RegistryError::RepositoryNotFound {
                reference: reference.clone(),
            }
        }
        (Target::Manifest { reference }, _) => RegistryError::ManifestNotFound {
            reference: reference.clone(),
        },
        (Target::Blob { reference, digest }, _) => RegistryError::BlobNotFound {
            reference: reference.clone(),
            digest: (*digest).to_string(),
        },
        (Target::Token, _) => RegistryError::Http {
            url: url.to_string(),
            status,
            message: message.clone(),
        },
    };
    match code {
        "NAME_UNKNOWN" | "MANIFEST_UNKNOWN" | "BLOB_UNKNOWN" => not_found(code),
        "UNAUTHORIZED" => RegistryError::Unauthorized {
            registry: registry.to_string(),
            reason: message,
        },
        "DENIED" => RegistryError::Denied {
            registry: registry.to_string(),
            reason: message,
        },
        "TOOMANYREQUESTS" => RegistryError::TooManyRequests {
            registry: registry.to_string(),
            message,
        },
        _ => match status {
            404 => not_found(""),
            401 => RegistryError::Unauthorized {
                registry: registry.to_string(),
                reason: message,
            },
            403 => RegistryError::Denied {
                registry: registry.to_string(),
                reason: message,
            },
            429 => RegistryError::TooManyRequests {
                registry: registry.to_string(),
                message,
            },
            _ => RegistryError::Http {
                url: url.to_string(),
                status,
                message,
            },
        },
    }
}

/// A short, printable excerpt of a response body for error messages.
pub(crate) fn summarize_body(body: &[u8]) -> String {
    const MAX: usize = 200;
    let text = String::from_utf8_lossy(&body[..body.len().min(MAX * 4)]);
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX)
        .collect();
    let trimmed = out.trim().to_string();
    out = if trimmed.is_empty() {
        "(no details)".to_string()
    } else {
        trimmed
    };
    if text.chars().count() > MAX {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Target<'static> {
        Target::Manifest {
            reference: "docker.io/library/x:latest".into(),
        }
    }

    #[test]
    fn maps_error_codes() {
        let body = br#"{"errors":[{"code":"NAME_UNKNOWN","message":"repository name not known"}]}"#;
        let e = error_from_response(&manifest(), "docker.io", "u", 404, body);
        assert!(
            matches!(e, RegistryError::RepositoryNotFound { .. }),
            "{e:?}"
        );

        let body = br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#;
        let e = error_from_response(&manifest(), "docker.io", "u", 404, body);
        assert!(matches!(e, RegistryError::ManifestNotFound { .. }), "{e:?}");

        let blob = Target::Blob {
            reference: "r".into(),
            digest: "sha256:ab",
        };
        let body = br#"{"errors":[{"code":"BLOB_UNKNOWN"}]}"#;
        let e = error_from_response(&blob, "docker.io", "u", 404, body);
        assert!(
            matches!(e, RegistryError::BlobNotFound { ref digest, .. } if digest == "sha256:ab")
        );

        let body = br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required","detail":[{"Type":"repository"}]}]}"#;
        let e = error_from_response(&manifest(), "docker.io", "u", 401, body);
        assert!(
            matches!(e, RegistryError::Unauthorized { ref reason, .. } if reason == "authentication required")
        );
        assert!(e.to_string().contains("--creds"));

        let body = br#"{"errors":[{"code":"DENIED","message":"no"}]}"#;
        let e = error_from_response(&manifest(), "r", "u", 403, body);
        assert!(matches!(e, RegistryError::Denied { .. }));

        let body = br#"{"errors":[{"code":"TOOMANYREQUESTS","message":"pull rate limit"}]}"#;
        let e = error_from_response(&manifest(), "r", "u", 429, body);
        assert!(matches!(e, RegistryError::TooManyRequests { .. }));
        assert!(e.is_transient());
    }

    #[test]
    fn maps_statuses_without_json() {
        let e = error_from_response(&manifest(), "r", "u", 404, b"not found");
        assert!(matches!(e, RegistryError::ManifestNotFound { .. }));
        let e = error_from_response(&manifest(), "r", "u", 503, b"<html>busy</html>");
        assert!(matches!(e, RegistryError::Http { status: 503, .. }));
        assert!(e.is_transient());
        let e = error_from_response(&manifest(), "r", "u", 400, b"");
        assert!(
            matches!(e, RegistryError::Http { status: 400, ref message, .. } if message == "(no details)")
        );
        assert!(!e.is_transient());
        let e = error_from_response(&Target::Token, "r", "u", 404, b"{}");
        assert!(matches!(e, RegistryError::Http { status: 404, .. }));
    }

    #[test]
    fn transport_kinds() {
        let t = |kind| RegistryError::Transport {
            url: "u".into(),
            source: io::Error::from(kind),
        };
        assert!(t(io::ErrorKind::ConnectionReset).is_transient());
        assert!(t(io::ErrorKind::TimedOut).is_transient());
        assert!(t(io::ErrorKind::UnexpectedEof).is_transient());
        assert!(!t(io::ErrorKind::NotFound).is_transient());
        assert!(!t(io::ErrorKind::Other).is_transient());
        let e = ureq_to_io(ureq::Error::Timeout(ureq::Timeout::PerRead));
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        let wrapped = ureq::Error::Timeout(ureq::Timeout::PerRead).into_io();
        assert_eq!(body_io_error(wrapped).kind(), io::ErrorKind::TimedOut);
    }

    #[test]
    fn summarize_is_bounded() {
        let long = vec![b'a'; 10_000];
        assert!(summarize_body(&long).chars().count() <= 201);
        assert_eq!(summarize_body(b"\x00\xffhi\n"), "\u{fffd}hi");
    }
}
