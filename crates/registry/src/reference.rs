//! Image references with docker's rules: `alpine` is `docker.io/library/alpine:latest`.

use std::fmt;
use std::str::FromStr;

use crate::RegistryError;

/// The registry docker uses when a reference names none.
pub const DOCKER_HUB: &str = "docker.io";
/// The host that actually serves Docker Hub's registry API.
const DOCKER_HUB_API: &str = "registry-1.docker.io";
/// Longest repository name the distribution spec allows (with the registry it is 255).
const MAX_NAME: usize = 255;

/// A parsed image reference: `registry/repository[:tag][@digest]`.
///
/// Parsing applies docker's defaults (`docker.io`, `library/`, `:latest` when there is no
/// digest); [`Display`](fmt::Display) prints the canonical full form.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    /// Registry host, with port if any (`docker.io`, `localhost:5000`, `[::1]:5000`).
    pub registry: String,
    /// Repository path (`library/alpine`).
    pub repository: String,
    /// Tag, if any (`latest` is filled in when neither tag nor digest is given).
    pub tag: Option<String>,
    /// Digest (`sha256:<64 hex>`), if pinned.
    pub digest: Option<String>,
}

impl Reference {
    /// The same image pinned to `digest` (the tag, if any, is kept).
    pub fn with_digest(&self, digest: &str) -> Reference {
        Reference {
            digest: Some(digest.to_string()),
            ..self.clone()
        }
    }

    /// The host that serves the registry API (`registry-1.docker.io` for `docker.io`).
    pub fn api_host(&self) -> &str {
        api_host(&self.registry)
    }

    /// What goes after `/manifests/`: the digest when pinned, else the tag.
    pub(crate) fn manifest_ref(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl FromStr for Reference {
    type Err = RegistryError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let bad = |reason: String| RegistryError::InvalidReference {
            input: input.to_string(),
            reason,
        };
        if input.is_empty() {
            return Err(bad("it is empty".into()));
        }
        if let Some(c) = input.chars().find(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad(format!("it contains the character {c:?}")));
        }

        let (rest, digest) = match input.split_once('@') {
            Some((rest, digest)) => {
                check_digest(digest)
                    .map_err(|reason| bad(format!("digest {digest:?} {reason}")))?;
                (rest, Some(digest.to_string()))
            }
            None => (input, None),
        };

        // A tag follows the last ':' that comes after the last '/' (a ':' before it is a port).
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let at = last_slash + i;
                let tag = &rest[at + 1..];
                check_tag(tag).map_err(|reason| bad(format!("tag {tag:?} {reason}")))?;
                (&rest[..at], Some(tag.to_string()))
            }
            None => (rest, None),
        };
        if name.is_empty() {
            return Err(bad("the repository name is empty".into()));
        }

        let (registry, repository) = match name.split_once('/') {
            Some((first, remainder)) if is_registry(first) => {
                (first.to_string(), remainder.to_string())
            }
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        let registry = if registry == "index.docker.io" {
            DOCKER_HUB.to_string()
        } else {
            registry
        };
        check_registry(&registry)
            .map_err(|reason| bad(format!("registry {registry:?} {reason}")))?;
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        check_repository(&repository)
            .map_err(|reason| bad(format!("repository {repository:?} {reason}")))?;
        if registry.len() + 1 + repository.len() > MAX_NAME {
            return Err(bad(format!(
                "the name is longer than {MAX_NAME} characters"
            )));
        }

        let tag = match (tag, &digest) {
            (None, None) => Some("latest".to_string()),
            (tag, _) => tag,
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }
}

/// The host that serves the registry API of `registry`.
pub(crate) fn api_host(registry: &str) -> &str {
    if registry == DOCKER_HUB {
        DOCKER_HUB_API
    } else {
        registry
    }
}

/// Docker's rule: the first component names a registry if it looks like a host.
fn is_registry(first: &str) -> bool {
    first.contains('.')
        || first.contains(':')
        || first == "localhost"
        || first.chars().any(|c| c.is_ascii_uppercase())
}

fn check_registry(registry: &str) -> Result<(), String> {
    let (host, port) = if let Some(rest) = registry.strip_prefix('[') {
        let Some((addr, after)) = rest.split_once(']') else {
            return Err("has an unclosed '['".into());
        };
        if addr.is_empty()
            || !addr
                .chars()
                .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
        {
            return Err("is not a valid IPv6 address".into());
        }
        match after {
            "" => (None, None),
            p => match p.strip_prefix(':') {
                Some(port) => (None, Some(port)),
                None => return Err("has junk after the IPv6 address".into()),
            },
        }
    } else {
        match registry.split_once(':') {
            Some((host, port)) => (Some(host), Some(port)),
            None => (Some(registry), None),
        }
    };
    if let Some(host) = host {
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if !host.split('.').all(label_ok) {
            return Err("is not a valid host name".into());
        }
    }
    if let Some(port) = port {
        if port.is_empty() || port.len() > 5 || !port.chars().all(|c| c.is_ascii_digit()) {
            return Err(format!("has an invalid port {port:?}"));
        }
        if port.parse::<u32>().map_or(true, |p| p == 0 || p > 65535) {
            return Err(format!("has an out-of-range port {port}"));
        }
    }
    Ok(())
}

/// Components of lowercase `[a-z0-9]` runs separated by `.`, `_`, `__` or dashes, joined by `/`.
fn check_repository(repository: &str) -> Result<(), String> {
    for component in repository.split('/') {
        if component.is_empty() {
            return Err("has an empty path component".into());
        }
        if component.chars().any(|c| c.is_ascii_uppercase()) {
            return Err("must be lowercase".into());
        }
        let bytes = component.as_bytes();
        let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        if !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
            return Err(format!(
                "component {component:?} must start and end with a-z or 0-9"
            ));
        }
        let mut i = 0;
        while i < bytes.len() {
            if alnum(bytes[i]) {
                i += 1;
                continue;
            }
            // A separator run: '.', '_', '__' or one or more '-'.
            let start = i;
            while i < bytes.len() && !alnum(bytes[i]) {
                i += 1;
            }
            let sep = &component[start..i];
            let ok = matches!(sep, "." | "_" | "__") || sep.bytes().all(|b| b == b'-');
            if !ok {
                return Err(format!(
                    "component {component:?} has an invalid separator {sep:?} \
                     (allowed: lowercase a-z, 0-9 separated by '.', '_', '__' or '-')"
                ));
            }
        }
    }
    Ok(())
}

/// `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
pub(crate) fn check_tag(tag: &str) -> Result<(), String> {
    let mut chars = tag.chars();
    match chars.next() {
        None => return Err("is empty".into()),
        Some(c) if c.is_ascii_alphanumeric() || c == '_' => {}
        Some(_) => return Err("must start with a letter, digit or '_'".into()),
    }
    if tag.len() > 128 {
        return Err("is longer than 128 characters".into());
    }
    if !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) {
        return Err("may only contain letters, digits, '_', '.' and '-'".into());
    }
    Ok(())
}

/// `sha256:<64 lowercase hex>` or `sha512:<128 lowercase hex>`.
pub(crate) fn check_digest(digest: &str) -> Result<(), String> {
    let Some((algorithm, hex)) = digest.split_once(':') else {
        return Err("must look like sha256:<64 hex digits>".into());
    };
    let want = match algorithm {
        "sha256" => 64,
        "sha512" => 128,
        _ => {
            return Err(format!(
                "uses unsupported algorithm {algorithm:?} (want sha256 or sha512)"
            ))
        }
    };
    if hex.len() != want
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(format!(
            "must have {want} lowercase hex digits after {algorithm}:"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

    fn parse(s: &str) -> Reference {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn docker_defaults_and_forms() {
        let table: &[(&str, &str, &str, Option<&str>, bool)] = &[
            (
                "alpine",
                "docker.io",
                "library/alpine",
                Some("latest"),
                false,
            ),
            (
                "alpine:3.19",
                "docker.io",
                "library/alpine",
                Some("3.19"),
                false,
            ),
            ("user/app", "docker.io", "user/app", Some("latest"), false),
            (
                "docker.io/alpine",
                "docker.io",
                "library/alpine",
                Some("latest"),
                false,
            ),
            (
                "index.docker.io/library/alpine:1",
                "docker.io",
                "library/alpine",
                Some("1"),
                false,
            ),
            (
                "docker.io/user/app:v1",
                "docker.io",
                "user/app",
                Some("v1"),
                false,
            ),
            ("localhost/app", "localhost", "app", Some("latest"), false),
            (
                "localhost:5000/app:dev",
                "localhost:5000",
                "app",
                Some("dev"),
                false,
            ),
            (
                "127.0.0.1:5000/a/b/c:t",
                "127.0.0.1:5000",
                "a/b/c",
                Some("t"),
                false,
            ),
            ("[::1]:5000/app", "[::1]:5000", "app", Some("latest"), false),
            ("ghcr.io/o/r", "ghcr.io", "o/r", Some("latest"), false),
            (
                "quay.io/a-b/c__d.e_f:_x",
                "quay.io",
                "a-b/c__d.e_f",
                Some("_x"),
                false,
            ),
            ("host:5000/app", "host:5000", "app", Some("latest"), false),
            ("a---b/c", "docker.io", "a---b/c", Some("latest"), false),
        ];
        for (input, registry, repository, tag, _) in table {
            let r = parse(input);
            assert_eq!(r.registry, *registry, "{input}");
            assert_eq!(r.repository, *repository, "{input}");
            assert_eq!(r.tag.as_deref(), *tag, "{input}");
            assert_eq!(r.digest, None, "{input}");
        }
    }

    #[test]
    fn digests() {
        let r = parse(&format!("alpine@{D}"));
        assert_eq!(r.tag, None);
        assert_eq!(r.digest.as_deref(), Some(D));
        assert_eq!(r.to_string(), format!("docker.io/library/alpine@{D}"));
        assert_eq!(r.manifest_ref(), D);

        let r = parse(&format!("localhost:5000/app:v2@{D}"));
        assert_eq!(r.tag.as_deref(), Some("v2"));
        assert_eq!(r.digest.as_deref(), Some(D));
        assert_eq!(r.manifest_ref(), D);
        assert_eq!(r.to_string(), format!("localhost:5000/app:v2@{D}"));

        let d512 = format!("sha512:{}", "0".repeat(128));
        assert_eq!(
            parse(&format!("a@{d512}")).digest.as_deref(),
            Some(d512.as_str())
        );
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "alpine",
            "localhost:5000/x/y:z",
            "[::1]:5000/app",
            "ghcr.io/a/b:1.0",
        ] {
            let r = parse(s);
            assert_eq!(parse(&r.to_string()), r);
        }
        assert_eq!(
            parse("alpine").to_string(),
            "docker.io/library/alpine:latest"
        );
    }

    #[test]
    fn with_digest_and_api_host() {
        let r = parse("alpine:3");
        let p = r.with_digest(D);
        assert_eq!(p.tag.as_deref(), Some("3"));
        assert_eq!(p.digest.as_deref(), Some(D));
        assert_eq!(r.api_host(), "registry-1.docker.io");
        assert_eq!(parse("localhost:5000/a").api_host(), "localhost:5000");
    }

    #[test]
    fn invalid_inputs_name_the_bad_part() {
        let table: &[(&str, &str)] = &[
            ("", "empty"),
            ("Alpine", "repository"),
            ("docker.io/Alpine", "lowercase"),
            ("alpine:", "tag"),
            ("alpine:-x", "tag"),
            ("alpine:a/b", "port"),
            ("alpine@sha256:abc", "digest"),
            ("alpine@md5:abc", "algorithm"),
            (
                &format!("alpine@{}", D.to_uppercase().replace("SHA256", "sha256")),
                "digest",
            ),
            ("a b", "' '"),
            ("localhost:99999/a", "port"),
            ("localhost:/a", "port"),
            ("exa_mple.com/a", "host"),
            ("docker.io/", "empty"),
            ("a//b", "empty"),
            ("a/b.", "end"),
            ("a/.b", "start"),
            ("a/b..c", "separator"),
            ("a/b___c", "separator"),
            ("[::1/a", "registry"),
            (":tag", "empty"),
        ];
        for (input, needle) in table {
            match input.parse::<Reference>() {
                Ok(r) => panic!("{input:?} parsed as {r}"),
                Err(e) => {
                    assert!(matches!(e, RegistryError::InvalidReference { .. }));
                    assert!(e.to_string().contains(needle), "{input:?}: {e}");
                }
            }
        }
        let long_tag = format!("a:{}", "t".repeat(129));
        assert!(long_tag.parse::<Reference>().is_err());
        let ok_tag = format!("a:{}", "t".repeat(128));
        assert!(ok_tag.parse::<Reference>().is_ok());
        let long_name = format!("a/{}", "b".repeat(300));
        assert!(long_name.parse::<Reference>().is_err());
    }
}
