//! Startup profiles: which spans (and, for people, which files) a container read while it
//! started, in first-access order, with times since the mount. Recorded once (`clip run
//! --record`), kept beside the index — in the local index store and, pushed, in the registry as
//! an artifact of its own — and replayed by every later mount of the image, which fetches those
//! spans before the container asks. A profile never changes the `.clip`: same image, same index.
//!
//! # Format (JSON, version 1)
//!
//! ```json
//! {
//!   "version": 1,
//!   "manifest_digest": "sha256:…",
//!   "spans": [{"layer": "sha256:…", "span": 12, "at_ms": 3}, …],
//!   "files": [{"path": "/usr/bin/python3.11", "at_ms": 3}, …]
//! }
//! ```
//!
//! `spans` and `files` are sorted by `at_ms` (first access, milliseconds since the mount), then
//! by position; a span or file appears once. A span is named by its layer blob's digest and
//! its index in that layer's span table; a reader checks both against its index and drops
//! what does not fit. Profiles come from registries: [`Profile::parse`] caps the size and the
//! entry counts and checks every field.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// The profile format version this clip writes and reads.
pub const PROFILE_VERSION: u32 = 1;
/// Most spans a profile may list.
pub const MAX_PROFILE_SPANS: usize = 1 << 20;
/// Most files a profile may list.
pub const MAX_PROFILE_FILES: usize = 1 << 20;
/// Longest path a profile may list (PATH_MAX).
const MAX_PATH: usize = 4096;

/// One span of a profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileSpan {
    /// The layer blob's digest.
    pub layer: String,
    /// The span's index in the layer's span table.
    pub span: u64,
    /// First access, in milliseconds since the mount.
    pub at_ms: u64,
}

/// One file of a profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileFile {
    /// Its absolute path in the image.
    pub path: String,
    /// First read, in milliseconds since the mount.
    pub at_ms: u64,
}

/// A startup profile (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    /// [`PROFILE_VERSION`].
    pub version: u32,
    /// The image manifest it was recorded on.
    pub manifest_digest: String,
    /// Spans in first-access order.
    pub spans: Vec<ProfileSpan>,
    /// Files in first-read order.
    pub files: Vec<ProfileFile>,
}

/// Why a profile was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid startup profile: {0}")]
pub struct ProfileError(String);

impl Profile {
    /// An empty profile of an image.
    pub fn new(manifest_digest: &str) -> Profile {
        Profile {
            version: PROFILE_VERSION,
            manifest_digest: manifest_digest.to_string(),
            spans: Vec::new(),
            files: Vec::new(),
        }
    }

    /// Reads a profile (untrusted bytes, at most [`crate::MAX_PROFILE_BYTES`]): the version,
    /// the manifest digest it must be about, well-formed digests, bounded counts and paths;
    /// duplicates are merged and the order restored, so that a parsed profile is canonical.
    pub fn parse(bytes: &[u8], manifest_digest: &str) -> Result<Profile, ProfileError> {
        let bad = |m: String| ProfileError(m);
        if bytes.len() as u64 > crate::MAX_PROFILE_BYTES {
            return Err(bad(format!(
                "{} bytes, more than the {} accepted",
                bytes.len(),
                crate::MAX_PROFILE_BYTES
            )));
        }
        let parsed: Profile =
            serde_json::from_slice(bytes).map_err(|e| bad(format!("not a profile: {e}")))?;
        if parsed.version != PROFILE_VERSION {
            return Err(bad(format!(
                "version {}, this clip reads {PROFILE_VERSION}",
                parsed.version
            )));
        }
        if parsed.manifest_digest != manifest_digest {
            return Err(bad(format!(
                "it was recorded on manifest {}, not {manifest_digest}",
                parsed.manifest_digest
            )));
        }
        if parsed.spans.len() > MAX_PROFILE_SPANS || parsed.files.len() > MAX_PROFILE_FILES {
            return Err(bad(format!(
                "{} spans and {} files, more than the {MAX_PROFILE_SPANS} and \
                 {MAX_PROFILE_FILES} accepted",
                parsed.spans.len(),
                parsed.files.len()
            )));
        }
        if let Some(s) = parsed.spans.iter().find(|s| !is_digest(&s.layer)) {
            return Err(bad(format!(
                "{:?} is not a layer digest",
                excerpt(&s.layer)
            )));
        }
        if let Some(f) = parsed
            .files
            .iter()
            .find(|f| !f.path.starts_with('/') || f.path.len() > MAX_PATH || f.path.contains('\0'))
        {
            return Err(bad(format!("{:?} is not a path", excerpt(&f.path))));
        }
        let mut canonical = Profile::new(manifest_digest);
        canonical.merge(parsed);
        Ok(canonical)
    }

    /// JSON, canonical: what [`Profile::parse`] reads back to an equal profile.
    pub fn to_json(&self) -> Vec<u8> {
        // Strings and numbers always encode.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Adds `other` to this profile: the union of spans and files, each at its earliest
    /// access, in first-access order.
    pub fn merge(&mut self, other: Profile) {
        let mut spans: HashMap<(String, u64), u64> = HashMap::new();
        for s in self.spans.drain(..).chain(other.spans) {
            let at = spans.entry((s.layer, s.span)).or_insert(s.at_ms);
            *at = (*at).min(s.at_ms);
        }
        let mut files: HashMap<String, u64> = HashMap::new();
        for f in self.files.drain(..).chain(other.files) {
            let at = files.entry(f.path).or_insert(f.at_ms);
            *at = (*at).min(f.at_ms);
        }
        self.spans = spans
            .into_iter()
            .map(|((layer, span), at_ms)| ProfileSpan { layer, span, at_ms })
            .collect();
        self.spans
            .sort_by(|a, b| (a.at_ms, &a.layer, a.span).cmp(&(b.at_ms, &b.layer, b.span)));
        self.files = files
            .into_iter()
            .map(|(path, at_ms)| ProfileFile { path, at_ms })
            .collect();
        self.files
            .sort_by(|a, b| (a.at_ms, &a.path).cmp(&(b.at_ms, &b.path)));
    }
}

fn is_digest(s: &str) -> bool {
    let Some((algorithm, hex)) = s.split_once(':') else {
        return false;
    };
    let len = match algorithm {
        "sha256" => 64,
        "sha512" => 128,
        _ => return false,
    };
    hex.len() == len && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// At most 100 bytes of untrusted text, for a message.
fn excerpt(s: &str) -> String {
    match s.char_indices().nth(100) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_string(),
    }
}

/// Now, as RFC 3339 UTC to the second (`2026-12-01T02:14:37Z`), without a date library.
pub(crate) fn rfc3339_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Howard Hinnant's days → civil date.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    fn span(layer: char, span: u64, at_ms: u64) -> ProfileSpan {
        ProfileSpan {
            layer: digest(layer),
            span,
            at_ms,
        }
    }

    #[test]
    fn merging_keeps_the_earliest_access_in_order() {
        let m = digest('0');
        let mut a = Profile::new(&m);
        a.spans = vec![span('a', 1, 5), span('a', 2, 9)];
        a.files = vec![ProfileFile {
            path: "/bin/sh".into(),
            at_ms: 5,
        }];
        let mut b = Profile::new(&m);
        b.spans = vec![span('b', 0, 0), span('a', 2, 3)];
        b.files = vec![
            ProfileFile {
                path: "/bin/sh".into(),
                at_ms: 7,
            },
            ProfileFile {
                path: "/etc/passwd".into(),
                at_ms: 1,
            },
        ];
        a.merge(b);
        assert_eq!(
            a.spans,
            vec![span('b', 0, 0), span('a', 2, 3), span('a', 1, 5)]
        );
        let files: Vec<_> = a.files.iter().map(|f| (f.path.as_str(), f.at_ms)).collect();
        assert_eq!(files, [("/etc/passwd", 1), ("/bin/sh", 5)]);
    }

    #[test]
    fn parsing_round_trips_and_refuses_what_does_not_fit() {
        let m = digest('0');
        let mut p = Profile::new(&m);
        p.spans = vec![span('a', 3, 1), span('a', 3, 0)];
        let json = p.to_json();
        let parsed = Profile::parse(&json, &m).unwrap();
        assert_eq!(parsed.spans, vec![span('a', 3, 0)], "canonical: merged");
        assert_eq!(Profile::parse(&parsed.to_json(), &m).unwrap(), parsed);

        let err = |bytes: &[u8]| Profile::parse(bytes, &m).unwrap_err().to_string();
        assert!(Profile::parse(&json, &digest('1'))
            .unwrap_err()
            .to_string()
            .contains("recorded on manifest"));
        assert!(err(b"{").contains("not a profile"));
        assert!(err(b"[]").contains("not a profile"));
        let v2 = String::from_utf8(json.clone())
            .unwrap()
            .replace("\"version\":1", "\"version\":2");
        assert!(err(v2.as_bytes()).contains("version 2"));
        let bad_layer = format!(
            r#"{{"version":1,"manifest_digest":"{m}","spans":[{{"layer":"../x","span":0,"at_ms":0}}],"files":[]}}"#
        );
        assert!(err(bad_layer.as_bytes()).contains("not a layer digest"));
        let bad_path = format!(
            r#"{{"version":1,"manifest_digest":"{m}","spans":[],"files":[{{"path":"relative","at_ms":0}}]}}"#
        );
        assert!(err(bad_path.as_bytes()).contains("not a path"));
        let huge = vec![b' '; crate::MAX_PROFILE_BYTES as usize + 1];
        assert!(err(&huge).contains("more than"));
    }

    #[test]
    fn timestamps_are_rfc3339() {
        let t = rfc3339_now();
        assert_eq!(t.len(), 20, "{t}");
        assert!(t.ends_with('Z') && t.as_bytes()[10] == b'T', "{t}");
        assert!(t.as_str() > "2025-01-01T00:00:00Z", "{t}");
    }
}
