//! Mirrors: where else the content of a registry can be read from, as the configuration users
//! already have says — `registries.conf` (containers-registries.conf(5): `[[registry]]` with
//! `prefix`, `location` and `[[registry.mirror]]` entries) and containerd's `hosts.toml`
//! (`<dir>/<registry>/hosts.toml`: `[host."URL"]` entries with `capabilities`). Reads try the
//! mirrors in order and fall back to the registry itself; writes go to the registry only.
//! Every byte read from a mirror is verified against the same digests as the registry's.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::{Reference, RegistryError};

/// Configuration files larger than this are refused.
const MAX_CONFIG: u64 = 1 << 20;

/// The mirrors of some registries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mirrors {
    rules: Vec<Rule>,
}

/// Mirrors for the images under one prefix (`registry[/namespace]`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    prefix: String,
    mirrors: Vec<Mirror>,
}

/// One mirror.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirror {
    /// `host[:port][/namespace]`: the prefix is replaced by it.
    pub location: String,
    /// Spoken to over plain HTTP.
    pub insecure: bool,
    /// Used for manifests by tag (else only for content addressed by digest).
    pub tags: bool,
}

/// Where one read may go: a mirror (as an image reference on it) or the registry itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The image as this endpoint names it.
    pub reference: Reference,
    /// A mirror (tried before the registry, once, without retries).
    pub mirror: bool,
    /// Plain HTTP.
    pub insecure: bool,
}

#[derive(Deserialize, Default)]
struct RegistriesConf {
    #[serde(default)]
    registry: Vec<RegistryEntry>,
}

#[derive(Deserialize)]
struct RegistryEntry {
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default)]
    location: Option<String>,
    #[serde(default)]
    mirror: Vec<MirrorEntry>,
    #[serde(rename = "mirror-by-digest-only", default)]
    mirror_by_digest_only: bool,
}

#[derive(Deserialize)]
struct MirrorEntry {
    location: String,
    #[serde(default)]
    insecure: bool,
    #[serde(rename = "pull-from-mirror", default)]
    pull_from_mirror: Option<String>,
}

#[derive(Deserialize, Default)]
struct HostsToml {
    #[serde(default)]
    host: toml::Table,
}

impl Mirrors {
    /// No mirrors.
    pub fn none() -> Mirrors {
        Mirrors::default()
    }

    /// The mirrors configured on this machine: `$CONTAINERS_REGISTRIES_CONF` or
    /// `/etc/containers/registries.conf` (with `/etc/containers/registries.conf.d/*.conf`),
    /// the user's `~/.config/containers/registries.conf`, and containerd's `hosts.toml` files
    /// under `$CLIP_REGISTRY_HOSTS_DIR` or `/etc/containerd/certs.d`. Missing files are skipped;
    /// malformed ones are an error (naming the file).
    pub fn from_system() -> Result<Mirrors, RegistryError> {
        let env = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let mut confs = Vec::new();
        match env("CONTAINERS_REGISTRIES_CONF") {
            Some(p) => confs.push(p),
            None => {
                confs.push(PathBuf::from("/etc/containers/registries.conf"));
                let mut dropins: Vec<PathBuf> =
                    std::fs::read_dir("/etc/containers/registries.conf.d")
                        .map(|d| d.flatten().map(|e| e.path()).collect())
                        .unwrap_or_default();
                dropins.retain(|p| p.extension().is_some_and(|e| e == "conf"));
                dropins.sort();
                confs.extend(dropins);
                if let Some(home) = env("HOME") {
                    confs.push(home.join(".config/containers/registries.conf"));
                }
            }
        }
        let hosts = env("CLIP_REGISTRY_HOSTS_DIR")
            .unwrap_or_else(|| PathBuf::from("/etc/containerd/certs.d"));
        Mirrors::load(&confs, &[hosts])
    }

    /// The mirrors that `registries_conf` files and the `hosts.toml` files under `hosts_dirs`
    /// configure. A later rule for the same prefix replaces an earlier one (a user's file
    /// overrides the system's), and `registries.conf` rules come before `hosts.toml` ones.
    pub fn load(
        registries_conf: &[PathBuf],
        hosts_dirs: &[PathBuf],
    ) -> Result<Mirrors, RegistryError> {
        let mut mirrors = Mirrors::default();
        for path in registries_conf {
            let Some(text) = read_config(path)? else {
                continue;
            };
            let conf: RegistriesConf =
                toml::from_str(&text).map_err(|e| bad(path, e.to_string()))?;
            for entry in conf.registry {
                let Some(prefix) = entry
                    .prefix
                    .or(entry.location)
                    .map(|p| normalize_prefix(&p))
                else {
                    continue;
                };
                let list = entry
                    .mirror
                    .into_iter()
                    .map(|m| Mirror {
                        location: m.location.trim_end_matches('/').to_string(),
                        insecure: m.insecure,
                        tags: !entry.mirror_by_digest_only
                            && m.pull_from_mirror.as_deref() != Some("digest-only"),
                    })
                    .collect();
                mirrors.set(prefix, list);
            }
        }
        for dir in hosts_dirs {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            let mut registries: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
            registries.sort();
            for registry_dir in registries {
                let file = registry_dir.join("hosts.toml");
                let Some(text) = read_config(&file)? else {
                    continue;
                };
                let Some(name) = registry_dir.file_name().and_then(|n| n.to_str()) else {
                    continue;
                };
                if name == "_default" {
                    continue;
                }
                let conf: HostsToml =
                    toml::from_str(&text).map_err(|e| bad(&file, e.to_string()))?;
                let mut list = Vec::new();
                for (url, settings) in &conf.host {
                    let capabilities: Vec<&str> = settings
                        .get("capabilities")
                        .and_then(|c| c.as_array())
                        .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
                        .unwrap_or_else(|| vec!["pull", "resolve"]);
                    if !capabilities.contains(&"pull") {
                        continue;
                    }
                    let (insecure, rest) = match url.split_once("://") {
                        Some(("http", rest)) => (true, rest),
                        Some(("https", rest)) => (false, rest),
                        _ => (false, url.as_str()),
                    };
                    let rest = rest.trim_end_matches('/');
                    if rest.contains('/') {
                        tracing::warn!(file = %file.display(), host = %url,
                            "mirrors with a path are not supported; skipping this one");
                        continue;
                    }
                    list.push(Mirror {
                        location: rest.to_string(),
                        insecure,
                        tags: capabilities.contains(&"resolve"),
                    });
                }
                mirrors.set(normalize_prefix(name), list);
            }
        }
        Ok(mirrors)
    }

    /// Adds (or replaces) the mirrors of `prefix`.
    pub fn add(&mut self, prefix: &str, mirrors: Vec<Mirror>) {
        self.set(normalize_prefix(prefix), mirrors);
    }

    fn set(&mut self, prefix: String, mirrors: Vec<Mirror>) {
        self.rules.retain(|r| r.prefix != prefix);
        if !mirrors.is_empty() {
            self.rules.push(Rule { prefix, mirrors });
        }
    }

    /// Whether any mirror is configured.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Every mirror location, to be spoken to over plain HTTP or not.
    pub(crate) fn locations(&self) -> impl Iterator<Item = &Mirror> {
        self.rules.iter().flat_map(|r| r.mirrors.iter())
    }

    /// Where a read of `reference` may go, in order: the mirrors of the longest matching
    /// prefix (those that serve tags, unless the read is by digest), then the registry.
    pub fn endpoints(&self, reference: &Reference, by_digest: bool) -> Vec<Endpoint> {
        let full = format!("{}/{}", reference.registry, reference.repository);
        let rule = self
            .rules
            .iter()
            .filter(|r| full == r.prefix || full.starts_with(&format!("{}/", r.prefix)))
            .max_by_key(|r| r.prefix.len());
        let mut out = Vec::new();
        if let Some(rule) = rule {
            let rest = &full[rule.prefix.len()..];
            for m in rule.mirrors.iter().filter(|m| by_digest || m.tags) {
                let Ok(mut mirrored) = format!("{}{rest}", m.location).parse::<Reference>() else {
                    tracing::warn!(mirror = %m.location, "a mirror location that is not a registry; skipping it");
                    continue;
                };
                mirrored.tag = reference.tag.clone();
                mirrored.digest = reference.digest.clone();
                out.push(Endpoint {
                    reference: mirrored,
                    mirror: true,
                    insecure: m.insecure,
                });
            }
        }
        out.push(Endpoint {
            reference: reference.clone(),
            mirror: false,
            insecure: false,
        });
        out
    }
}

/// `docker.io/library` stays; `index.docker.io` and `registry-1.docker.io` are `docker.io`
/// (references name Docker Hub `docker.io`).
fn normalize_prefix(prefix: &str) -> String {
    let prefix = prefix.trim().trim_end_matches('/');
    let (host, rest) = prefix.split_once('/').unwrap_or((prefix, ""));
    let host = match host {
        "index.docker.io" | "registry-1.docker.io" => "docker.io",
        h => h,
    };
    if rest.is_empty() {
        host.to_string()
    } else {
        format!("{host}/{rest}")
    }
}

fn bad(path: &Path, detail: String) -> RegistryError {
    RegistryError::Credentials {
        path: path.display().to_string(),
        detail: format!("not a valid mirror configuration: {detail}"),
    }
}

fn read_config(path: &Path) -> Result<Option<String>, RegistryError> {
    use std::io::Read as _;
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(bad(path, e.to_string())),
    };
    let mut text = String::new();
    file.take(MAX_CONFIG + 1)
        .read_to_string(&mut text)
        .map_err(|e| bad(path, e.to_string()))?;
    if text.len() as u64 > MAX_CONFIG {
        return Err(bad(path, format!("larger than {MAX_CONFIG} bytes")));
    }
    Ok(Some(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, text: &str) -> PathBuf {
        if let Some(p) = path.parent() {
            std::fs::create_dir_all(p).expect("mkdir");
        }
        std::fs::write(path, text).expect("write");
        path.to_path_buf()
    }

    fn r(s: &str) -> Reference {
        s.parse().expect("reference")
    }

    #[test]
    fn registries_conf_mirrors_rewrite_the_prefix() {
        let tmp = tempfile::tempdir().expect("tmp");
        let conf = write(
            &tmp.path().join("registries.conf"),
            r#"
unqualified-search-registries = ["docker.io"]
[[registry]]
prefix = "docker.io"
location = "registry-1.docker.io"
[[registry.mirror]]
location = "mirror.local:5000/hub"
insecure = true
[[registry.mirror]]
location = "digests.local"
pull-from-mirror = "digest-only"

[[registry]]
location = "quay.io/team"
mirror-by-digest-only = true
[[registry.mirror]]
location = "cache.local/quay-team"
"#,
        );
        let m = Mirrors::load(&[conf], &[]).expect("load");
        let e = m.endpoints(&r("alpine:3"), false);
        assert_eq!(e.len(), 2, "{e:?}");
        assert_eq!(e[0].reference.registry, "mirror.local:5000");
        assert_eq!(e[0].reference.repository, "hub/library/alpine");
        assert_eq!(e[0].reference.tag.as_deref(), Some("3"));
        assert!(e[0].mirror && e[0].insecure);
        assert_eq!(e[1].reference, r("alpine:3"));
        assert!(!e[1].mirror);
        let d = format!("sha256:{}", "a".repeat(64));
        let e = m.endpoints(&r("alpine:3").with_digest(&d), true);
        assert_eq!(e.len(), 3);
        assert_eq!(
            e[1].reference.to_string(),
            format!("digests.local/library/alpine:3@{d}")
        );
        // Digest-only rules never serve tags; other registries have no mirrors.
        assert_eq!(m.endpoints(&r("quay.io/team/app:1"), false).len(), 1);
        let e = m.endpoints(&r("quay.io/team/app:1"), true);
        assert_eq!(e[0].reference.repository, "quay-team/app");
        assert_eq!(m.endpoints(&r("quay.io/other/app:1"), true).len(), 1);
        assert_eq!(m.endpoints(&r("ghcr.io/x/y:1"), true).len(), 1);
    }

    #[test]
    fn containerd_hosts_toml_mirrors() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().join("certs.d");
        write(
            &dir.join("localhost:5000/hosts.toml"),
            r#"
server = "http://localhost:5000"
[host."http://127.0.0.1:6000"]
  capabilities = ["pull", "resolve"]
[host."https://pull-only.local"]
  capabilities = ["pull"]
[host."https://push-only.local"]
  capabilities = ["push"]
[host."https://with.path.local/prefix"]
  capabilities = ["pull"]
"#,
        );
        write(&dir.join("_default/hosts.toml"), "[host.\"https://x\"]\n");
        let m = Mirrors::load(&[], &[dir]).expect("load");
        let e = m.endpoints(&r("localhost:5000/app:1"), false);
        let hosts: Vec<&str> = e.iter().map(|e| e.reference.registry.as_str()).collect();
        assert_eq!(hosts, ["127.0.0.1:6000", "localhost:5000"]);
        assert!(e[0].insecure);
        let d = format!("sha256:{}", "b".repeat(64));
        let e = m.endpoints(&r("localhost:5000/app").with_digest(&d), true);
        let hosts: Vec<&str> = e.iter().map(|e| e.reference.registry.as_str()).collect();
        assert_eq!(
            hosts,
            ["127.0.0.1:6000", "pull-only.local", "localhost:5000"]
        );
    }

    #[test]
    fn malformed_files_name_themselves() {
        let tmp = tempfile::tempdir().expect("tmp");
        let conf = write(&tmp.path().join("r.conf"), "[[registry]\n");
        let err = Mirrors::load(&[conf], &[]).unwrap_err();
        assert!(err.to_string().contains("r.conf"), "{err}");
        assert_eq!(
            Mirrors::load(
                &[tmp.path().join("missing.conf")],
                &[tmp.path().join("nope")]
            )
            .expect("ok"),
            Mirrors::none()
        );
    }
}
