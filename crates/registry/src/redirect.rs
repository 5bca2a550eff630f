//! Redirects, followed by the client itself rather than by `ureq`, so that credentials only
//! ever reach the origin they were sent to: where a `Location` leads, whether that is still the
//! same origin (scheme, host and port), and which redirects are refused.

use ureq::http::Uri;

/// Redirects followed for one request before giving up.
pub(crate) const MAX_REDIRECTS: usize = 10;

/// Whether `status` is a redirect we follow (all keep the method for a GET).
pub(crate) fn is_redirect(status: u16) -> bool {
    matches!(status, 301 | 302 | 303 | 307 | 308)
}

/// The origin of an absolute http(s) URL: scheme, host and port, the way browsers compare them
/// (case-insensitive scheme and host, the scheme's default port filled in).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Origin {
    scheme: String,
    host: String,
    port: u16,
}

impl Origin {
    /// `None` unless `url` is an absolute `http` or `https` URL with a host.
    pub(crate) fn of(url: &str) -> Option<Origin> {
        let uri: Uri = url.parse().ok()?;
        let scheme = uri.scheme_str()?.to_ascii_lowercase();
        let default_port = match scheme.as_str() {
            "http" => 80,
            "https" => 443,
            _ => return None,
        };
        let host = uri.host().filter(|h| !h.is_empty())?.to_ascii_lowercase();
        Some(Origin {
            port: uri.port_u16().unwrap_or(default_port),
            scheme,
            host,
        })
    }
}

/// Whether `a` and `b` are URLs of the same origin (two unparsable URLs are not).
pub(crate) fn same_origin(a: &str, b: &str) -> bool {
    match (Origin::of(a), Origin::of(b)) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

/// Where a redirect from `current` leads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Hop {
    /// The absolute URL to request next.
    pub(crate) url: String,
    /// Whether it has the origin of `current`: only then may `Authorization` go along.
    pub(crate) same_origin: bool,
}

/// Resolves the `Location` of a redirect answered for `current` and checks that we may follow
/// it: only to `http` or `https`, never from `https` down to `http`, and never to a URL that
/// carries credentials itself. `Err` is the reason, for an error message.
pub(crate) fn follow(current: &str, location: &str) -> Result<Hop, String> {
    let base: Uri = current
        .parse()
        .map_err(|_| format!("the current URL {current:?} is not a valid URL"))?;
    let url = resolve(&base, location)?;
    let target: Uri = url
        .parse()
        .map_err(|_| "the Location is not a valid URL".to_string())?;
    let scheme = target.scheme_str().unwrap_or("").to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return Err(format!(
            "only http and https redirects are followed, not {scheme:?}"
        ));
    }
    let Some(authority) = target.authority() else {
        return Err("the Location names no host".into());
    };
    if authority.as_str().contains('@') {
        return Err("the Location carries a user name or password".into());
    }
    if target.host().is_none_or(str::is_empty) {
        return Err("the Location names no host".into());
    }
    if scheme == "http"
        && base
            .scheme_str()
            .is_some_and(|s| s.eq_ignore_ascii_case("https"))
    {
        return Err("it would downgrade from https to plain http".into());
    }
    let same_origin = same_origin(current, &url);
    Ok(Hop { url, same_origin })
}

/// Resolves the reference `location` against `base` (RFC 3986 §5.2), fragment dropped.
fn resolve(base: &Uri, location: &str) -> Result<String, String> {
    let location = location.trim();
    let location = location.split_once('#').map_or(location, |(l, _)| l);
    if location.is_empty() {
        return Err("the Location is empty".into());
    }
    if let Some(scheme) = scheme_of(location) {
        let lower = scheme.to_ascii_lowercase();
        if lower != "http" && lower != "https" {
            return Err(format!(
                "only http and https redirects are followed, not {lower:?}"
            ));
        }
        return Ok(location.to_string());
    }
    let (Some(scheme), Some(authority)) = (base.scheme_str(), base.authority()) else {
        return Err("the current URL is not absolute".into());
    };
    if let Some(rest) = location.strip_prefix("//") {
        return Ok(format!("{scheme}://{rest}"));
    }
    let (path, query) = match location.find('?') {
        Some(i) => location.split_at(i),
        None => (location, ""),
    };
    let path = if path.is_empty() {
        // "?query" only: the current path with a new query.
        base.path().to_string()
    } else if path.starts_with('/') {
        remove_dot_segments(path)
    } else {
        let base_path = base.path();
        let dir = base_path.rfind('/').map_or("/", |i| &base_path[..=i]);
        remove_dot_segments(&format!("{dir}{path}"))
    };
    Ok(format!("{scheme}://{authority}{path}{query}"))
}

/// The scheme of an absolute URL (`http` of `http://…`), `None` for a relative reference.
fn scheme_of(reference: &str) -> Option<&str> {
    let end = reference.find([':', '/', '?', '#'])?;
    let scheme = &reference[..end];
    let valid = reference[end..].starts_with(':')
        && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    valid.then_some(scheme)
}

/// `/a/b/../c/./d` → `/a/c/d`; `..` stops at the root. `path` starts with `/`.
fn remove_dot_segments(path: &str) -> String {
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let mut out: Vec<&str> = Vec::with_capacity(segments.len());
    for (i, segment) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        match *segment {
            "." => {}
            ".." => {
                out.pop();
            }
            s => {
                out.push(s);
                continue;
            }
        }
        if last {
            // `/a/b/..` is the directory `/a/`.
            out.push("");
        }
    }
    format!("/{}", out.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hop(current: &str, location: &str) -> Result<(String, bool), String> {
        follow(current, location).map(|h| (h.url, h.same_origin))
    }

    #[test]
    fn origins() {
        let o = |u: &str| Origin::of(u);
        assert_eq!(o("http://a:80/x"), o("HTTP://A/y?z"));
        assert_eq!(o("https://a/x"), o("https://a:443"));
        assert_ne!(o("http://a/x"), o("https://a/x"));
        assert_ne!(o("http://a:5000/x"), o("http://a:5001/x"));
        assert_ne!(o("http://a/x"), o("http://b/x"));
        assert_eq!(o("http://[::1]:5000/v2/"), o("http://[::1]:5000/x"));
        assert_eq!(o("ftp://a/x"), None);
        assert_eq!(o("/relative"), None);
        assert!(!same_origin("nonsense", "nonsense"));
    }

    #[test]
    fn resolves_locations() {
        let base = "http://127.0.0.1:5000/v2/test/app/blobs/sha256:ab?x=1";
        assert_eq!(
            hop(base, "/storage/1?sig=2"),
            Ok(("http://127.0.0.1:5000/storage/1?sig=2".into(), true))
        );
        assert_eq!(
            hop(base, "other"),
            Ok(("http://127.0.0.1:5000/v2/test/app/blobs/other".into(), true))
        );
        assert_eq!(
            hop(base, "../../../../../up/./x#frag"),
            Ok(("http://127.0.0.1:5000/up/x".into(), true))
        );
        assert_eq!(
            hop(base, "../.."),
            Ok(("http://127.0.0.1:5000/v2/test/".into(), true))
        );
        assert_eq!(
            hop(base, "?y=2"),
            Ok((
                "http://127.0.0.1:5000/v2/test/app/blobs/sha256:ab?y=2".into(),
                true
            ))
        );
        assert_eq!(
            hop(base, "//127.0.0.1:5001/s"),
            Ok(("http://127.0.0.1:5001/s".into(), false))
        );
        assert_eq!(
            hop(base, "http://127.0.0.1:5001/s"),
            Ok(("http://127.0.0.1:5001/s".into(), false))
        );
        assert_eq!(
            hop(base, "https://127.0.0.1:5000/s"),
            Ok(("https://127.0.0.1:5000/s".into(), false)),
            "an upgrade is followed, but it is another origin"
        );
        assert_eq!(
            hop("https://r.io/v2/x", "https://R.IO:443/y"),
            Ok(("https://R.IO:443/y".into(), true))
        );
        assert_eq!(
            hop(
                "https://r.io/v2/x",
                "https://s3.example/b?X-Amz-Signature=1"
            ),
            Ok(("https://s3.example/b?X-Amz-Signature=1".into(), false))
        );
    }

    #[test]
    fn refuses_bad_redirects() {
        let base = "https://r.io/v2/x";
        for (location, why) in [
            ("http://r.io/v2/y", "downgrade"),
            ("ftp://r.io/x", "\"ftp\""),
            ("file:///etc/passwd", "\"file\""),
            ("javascript:alert(1)", "\"javascript\""),
            ("", "empty"),
            ("   ", "empty"),
            ("https://user:pw@r.io/x", "password"),
            ("https:///nohost", "host|valid URL"),
            ("https://r.io/has space", "valid URL"),
        ] {
            let e = hop(base, location).unwrap_err();
            assert!(why.split('|').any(|w| e.contains(w)), "{location:?}: {e}");
        }
        // Never panics on junk.
        for junk in [
            "\u{0}",
            "%",
            "http://[",
            "http://[::1",
            "::",
            "?",
            "#",
            "/\u{7f}",
        ] {
            let _ = hop(base, junk);
            let _ = hop("http://a", junk);
            let _ = hop(junk, "/x");
        }
    }

    #[test]
    fn dot_segments() {
        assert_eq!(remove_dot_segments("/a/b/../c"), "/a/c");
        assert_eq!(remove_dot_segments("/a/b/.."), "/a/");
        assert_eq!(remove_dot_segments("/a/./b/."), "/a/b/");
        assert_eq!(remove_dot_segments("/../../x"), "/x");
        assert_eq!(remove_dot_segments("/"), "/");
        assert_eq!(remove_dot_segments("/a/b/"), "/a/b/");
    }
}
