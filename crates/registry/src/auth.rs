//! Authentication: credentials, where they are looked up, and `WWW-Authenticate` challenges.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine as _;

use crate::RegistryError;

/// Auth files larger than this are refused.
const MAX_AUTH_FILE: u64 = 4 << 20;
/// Credential-helper output larger than this is refused.
const MAX_HELPER_OUTPUT: u64 = 1 << 20;

/// A user name and password (or token) for HTTP basic auth and token requests.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl Credentials {
    /// The `Authorization` header value for HTTP basic auth.
    pub(crate) fn basic_header(&self) -> String {
        let raw = format!("{}:{}", self.username, self.password);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Credentials given explicitly (`--creds`) for one registry: the client uses them for that
/// registry only and never sends them anywhere else; every other registry gets what the auth
/// files say about it (see [`crate::ClientOptions::creds`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryCredentials {
    /// The registry they are for, spelled as in [`crate::Reference::registry`]: `ghcr.io`,
    /// `localhost:5000` (the port is part of the name). `docker.io`, `index.docker.io` and
    /// `registry-1.docker.io` are one registry; names compare case-insensitively.
    pub registry: String,
    pub credentials: Credentials,
}

impl RegistryCredentials {
    pub fn new(registry: impl Into<String>, credentials: Credentials) -> RegistryCredentials {
        RegistryCredentials {
            registry: registry.into(),
            credentials,
        }
    }

    /// Whether these credentials are for `registry` (as in [`crate::Reference::registry`]).
    pub fn is_for(&self, registry: &str) -> bool {
        same_registry(&self.registry, registry)
    }
}

/// Whether two registry names are the same registry (Docker Hub's names are one).
pub(crate) fn same_registry(a: &str, b: &str) -> bool {
    let canonical = |r: &str| {
        let r = r.to_ascii_lowercase();
        match registry_aliases(&r).len() {
            1 => r,
            _ => "docker.io".to_string(),
        }
    };
    canonical(a) == canonical(b)
}

// ---------------------------------------------------------------------------------------------
// WWW-Authenticate

/// One challenge of a `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Challenge {
    /// Lowercased scheme: `bearer`, `basic`, …
    pub(crate) scheme: String,
    /// Parameters, names lowercased.
    pub(crate) params: BTreeMap<String, String>,
}

impl Challenge {
    pub(crate) fn param(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }
}

/// Parses every challenge of one or more `WWW-Authenticate` values, e.g.
/// `Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="a,b"`.
/// Never fails: whatever cannot be understood is skipped.
pub(crate) fn parse_challenges<'a>(values: impl IntoIterator<Item = &'a str>) -> Vec<Challenge> {
    let mut out: Vec<Challenge> = Vec::new();
    for value in values {
        let b = value.as_bytes();
        let mut i = 0;
        let is_tchar = |c: u8| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~/:".contains(&c);
        loop {
            while i < b.len() && (b[i] == b' ' || b[i] == b'\t' || b[i] == b',') {
                i += 1;
            }
            if i >= b.len() {
                break;
            }
            let start = i;
            while i < b.len() && is_tchar(b[i]) {
                i += 1;
            }
            if i == start {
                // Not a token: skip the character.
                i += 1;
                continue;
            }
            let token = &value[start..i];
            let mut j = i;
            while j < b.len() && (b[j] == b' ' || b[j] == b'\t') {
                j += 1;
            }
            if j < b.len() && b[j] == b'=' {
                // name=value: a parameter of the current challenge.
                j += 1;
                while j < b.len() && (b[j] == b' ' || b[j] == b'\t') {
                    j += 1;
                }
                let (val, next) = if j < b.len() && b[j] == b'"' {
                    let mut v = Vec::new();
                    let mut k = j + 1;
                    while k < b.len() && b[k] != b'"' {
                        if b[k] == b'\\' && k + 1 < b.len() {
                            k += 1;
                        }
                        v.push(b[k]);
                        k += 1;
                    }
                    (
                        String::from_utf8_lossy(&v).into_owned(),
                        (k + 1).min(b.len()),
                    )
                } else {
                    let mut k = j;
                    while k < b.len() && b[k] != b',' && b[k] != b' ' && b[k] != b'\t' {
                        k += 1;
                    }
                    (value[j..k].to_string(), k)
                };
                if let Some(current) = out.last_mut() {
                    current.params.insert(token.to_ascii_lowercase(), val);
                }
                i = next;
            } else {
                out.push(Challenge {
                    scheme: token.to_ascii_lowercase(),
                    params: BTreeMap::new(),
                });
                i = j;
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Credential lookup

/// Where credentials are looked for; [`CredEnv::from_process`] reads the real environment.
#[derive(Debug, Clone, Default)]
pub(crate) struct CredEnv {
    pub(crate) registry_auth_file: Option<PathBuf>,
    pub(crate) xdg_runtime_dir: Option<PathBuf>,
    pub(crate) docker_config: Option<PathBuf>,
    pub(crate) home: Option<PathBuf>,
}

impl CredEnv {
    pub(crate) fn from_process() -> CredEnv {
        let var = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        CredEnv {
            registry_auth_file: var("REGISTRY_AUTH_FILE"),
            xdg_runtime_dir: var("XDG_RUNTIME_DIR"),
            docker_config: var("DOCKER_CONFIG"),
            home: var("HOME"),
        }
    }

    /// The auth files to consult, in order.
    fn files(&self) -> Vec<PathBuf> {
        let mut files = Vec::new();
        if let Some(p) = &self.registry_auth_file {
            files.push(p.clone());
        }
        if let Some(d) = &self.xdg_runtime_dir {
            files.push(d.join("containers/auth.json"));
        }
        if let Some(d) = &self.docker_config {
            files.push(d.join("config.json"));
        }
        if let Some(h) = &self.home {
            files.push(h.join(".docker/config.json"));
        }
        files
    }
}

/// What an auth file says about a registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Found {
    Basic(Credentials),
    /// Ask `docker-credential-<helper> get` for `server`.
    Helper {
        helper: String,
        server: String,
    },
}

#[derive(serde::Deserialize, Default)]
struct AuthFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: BTreeMap<String, String>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
}

#[derive(serde::Deserialize, Default)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

/// The names a registry can go by in auth files (compared after [`normalize_key`]).
fn registry_aliases(registry: &str) -> Vec<&str> {
    if matches!(
        registry,
        "docker.io" | "index.docker.io" | "registry-1.docker.io"
    ) {
        vec!["docker.io", "index.docker.io", "registry-1.docker.io"]
    } else {
        vec![registry]
    }
}

/// `https://host:port/v1/` → `host:port`.
fn normalize_key(key: &str) -> &str {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    key.split('/').next().unwrap_or(key)
}

/// The server name credential helpers know a registry by.
fn helper_server(registry: &str) -> String {
    if registry_aliases(registry).len() > 1 {
        "https://index.docker.io/v1/".to_string()
    } else {
        registry.to_string()
    }
}

/// Looks `registry` up in the auth files of `env`, in order; the first file that knows it wins.
/// Missing files are skipped; unreadable or malformed ones are an error.
pub(crate) fn find_credentials(
    env: &CredEnv,
    registry: &str,
) -> Result<Option<Found>, RegistryError> {
    for path in env.files() {
        let Some(file) = read_auth_file(&path)? else {
            continue;
        };
        if let Some(found) = lookup_in(&file, registry, &path)? {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

fn read_auth_file(path: &Path) -> Result<Option<AuthFile>, RegistryError> {
    let err = |detail: String| RegistryError::Credentials {
        path: path.display().to_string(),
        detail,
    };
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(err(e.to_string())),
    };
    let mut data = Vec::new();
    file.take(MAX_AUTH_FILE + 1)
        .read_to_end(&mut data)
        .map_err(|e| err(e.to_string()))?;
    if data.len() as u64 > MAX_AUTH_FILE {
        return Err(err(format!("larger than {MAX_AUTH_FILE} bytes")));
    }
    if data.iter().all(u8::is_ascii_whitespace) {
        return Ok(Some(AuthFile::default()));
    }
    serde_json::from_slice(&data)
        .map(Some)
        .map_err(|e| err(format!("not valid JSON: {e}")))
}

fn lookup_in(file: &AuthFile, registry: &str, path: &Path) -> Result<Option<Found>, RegistryError> {
    let aliases = registry_aliases(registry);
    let matches = |key: &str| aliases.contains(&normalize_key(key));

    if let Some((_, helper)) = file.cred_helpers.iter().find(|(k, _)| matches(k)) {
        return Ok(Some(Found::Helper {
            helper: helper.clone(),
            server: helper_server(registry),
        }));
    }
    // Prefer an exact key ("host", then "https://host") over the other spellings.
    let mut entries: Vec<(&String, &AuthEntry)> =
        file.auths.iter().filter(|(k, _)| matches(k)).collect();
    entries.sort_by_key(|(k, _)| (k.as_str() != registry, k.contains("://")));
    for (key, entry) in entries {
        if let Some(auth) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
            let bad = |detail: &str| RegistryError::Credentials {
                path: path.display().to_string(),
                detail: format!("auths[{key:?}].auth {detail}"),
            };
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .map_err(|_| bad("is not valid base64"))?;
            let decoded = String::from_utf8(decoded).map_err(|_| bad("is not UTF-8"))?;
            let (user, pass) = decoded
                .split_once(':')
                .ok_or_else(|| bad("is not USER:PASSWORD"))?;
            return Ok(Some(Found::Basic(Credentials {
                username: user.into(),
                password: pass.into(),
            })));
        }
        if let (Some(u), Some(p)) = (&entry.username, &entry.password) {
            if !u.is_empty() {
                return Ok(Some(Found::Basic(Credentials {
                    username: u.clone(),
                    password: p.clone(),
                })));
            }
        }
        if entry
            .identitytoken
            .as_deref()
            .is_some_and(|t| !t.is_empty())
        {
            tracing::warn!(
                file = %path.display(),
                registry,
                "identity tokens in auth files are not supported; ignoring this entry"
            );
        }
    }
    if let Some(store) = file.creds_store.as_deref().filter(|s| !s.is_empty()) {
        return Ok(Some(Found::Helper {
            helper: store.to_string(),
            server: helper_server(registry),
        }));
    }
    Ok(None)
}

/// Runs `docker-credential-<helper> get` for `server`. A missing helper, or one that knows no
/// credentials for the server, gives `Ok(None)` (with a warning): we then go on anonymously.
pub(crate) fn run_helper(helper: &str, server: &str) -> Result<Option<Credentials>, RegistryError> {
    let program = format!("docker-credential-{helper}");
    let err = |detail: String| RegistryError::Credentials {
        path: program.clone(),
        detail,
    };
    if !helper
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(err(format!("invalid helper name {helper:?}")));
    }
    let mut child = match Command::new(&program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::warn!(
                helper = %program,
                server,
                "credential helper not found; continuing anonymously"
            );
            return Ok(None);
        }
        Err(e) => return Err(err(format!("cannot run: {e}"))),
    };
    if let Some(mut stdin) = child.stdin.take() {
        // A helper that exits without reading its input is not our problem here.
        let _ = stdin.write_all(server.as_bytes());
    }
    let mut stdout = Vec::new();
    if let Some(out) = child.stdout.take() {
        out.take(MAX_HELPER_OUTPUT)
            .read_to_end(&mut stdout)
            .map_err(|e| err(e.to_string()))?;
    }
    let mut stderr = Vec::new();
    if let Some(e) = child.stderr.take() {
        let _ = e.take(4096).read_to_end(&mut stderr);
    }
    let status = child.wait().map_err(|e| err(e.to_string()))?;
    if !status.success() {
        let msg = String::from_utf8_lossy(if stdout.is_empty() { &stderr } else { &stdout })
            .trim()
            .to_string();
        tracing::warn!(
            helper = %program,
            server,
            %msg,
            "credential helper found no credentials; continuing anonymously"
        );
        return Ok(None);
    }
    #[derive(serde::Deserialize)]
    struct HelperOutput {
        #[serde(rename = "Username", default)]
        username: String,
        #[serde(rename = "Secret", default)]
        secret: String,
    }
    let out: HelperOutput =
        serde_json::from_slice(&stdout).map_err(|e| err(format!("printed invalid JSON: {e}")))?;
    if out.username == "<token>" {
        tracing::warn!(
            helper = %program,
            server,
            "identity tokens from credential helpers are not supported; continuing anonymously"
        );
        return Ok(None);
    }
    Ok(Some(Credentials {
        username: out.username,
        password: out.secret,
    }))
}

/// Credentials for `registry` from the auth files and helpers of `env`.
pub(crate) fn credentials_for(
    env: &CredEnv,
    registry: &str,
) -> Result<Option<Credentials>, RegistryError> {
    match find_credentials(env, registry)? {
        None => Ok(None),
        Some(Found::Basic(c)) => Ok(Some(c)),
        Some(Found::Helper { helper, server }) => run_helper(&helper, &server),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_password() {
        let c = Credentials {
            username: "u".into(),
            password: "hunter2".into(),
        };
        let s = format!("{c:?}");
        assert!(s.contains('u') && !s.contains("hunter2"), "{s}");
        assert_eq!(c.basic_header(), "Basic dTpodW50ZXIy");
    }

    #[test]
    fn explicit_credentials_are_for_one_registry() {
        let c = Credentials {
            username: "u".into(),
            password: "p".into(),
        };
        let hub = RegistryCredentials::new("index.docker.io", c.clone());
        for name in [
            "docker.io",
            "index.docker.io",
            "registry-1.docker.io",
            "Docker.IO",
        ] {
            assert!(hub.is_for(name), "{name}");
        }
        for name in ["ghcr.io", "docker.io:5000", "evil.docker.io", ""] {
            assert!(!hub.is_for(name), "{name}");
        }
        let local = RegistryCredentials::new("localhost:5000", c);
        assert!(local.is_for("localhost:5000") && local.is_for("LocalHost:5000"));
        assert!(!local.is_for("localhost") && !local.is_for("localhost:5001"));
        assert!(!local.is_for("127.0.0.1:5000"));
        assert!(!format!("{local:?}").contains("\"p\""), "{local:?}");
    }

    #[test]
    fn challenges() {
        let c = parse_challenges([
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull,push""#,
        ]);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].scheme, "bearer");
        assert_eq!(c[0].param("realm"), Some("https://auth.docker.io/token"));
        assert_eq!(c[0].param("service"), Some("registry.docker.io"));
        assert_eq!(
            c[0].param("scope"),
            Some("repository:library/alpine:pull,push")
        );

        let c = parse_challenges([
            r#"Basic realm="Registry Realm", Bearer realm=https://x/t , service = "a\"b""#,
        ]);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].scheme, "basic");
        assert_eq!(c[0].param("realm"), Some("Registry Realm"));
        assert_eq!(c[1].scheme, "bearer");
        assert_eq!(c[1].param("realm"), Some("https://x/t"));
        assert_eq!(c[1].param("service"), Some("a\"b"));

        let c = parse_challenges([
            "basic realm=\"a\"",
            "BEARER REALM=\"r\",error=\"insufficient_scope\"",
        ]);
        assert_eq!(c.len(), 2);
        assert_eq!(c[1].param("realm"), Some("r"));
        assert_eq!(c[1].param("error"), Some("insufficient_scope"));

        // Garbage never panics.
        for junk in [
            "",
            "=",
            "\"",
            "Bearer realm=\"unterminated",
            ",,,",
            "Bearer =x",
            "Négociée a=é",
            "Negotiate abc==",
        ] {
            let _ = parse_challenges([junk]);
        }
        assert!(
            parse_challenges(["Bearer realm=\"unterminated"])[0].param("realm")
                == Some("unterminated")
        );
    }

    struct Dirs {
        _tmp: tempfile::TempDir,
        env: CredEnv,
        root: PathBuf,
    }

    fn dirs() -> Dirs {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().to_path_buf();
        let env = CredEnv {
            registry_auth_file: None,
            xdg_runtime_dir: Some(root.join("run")),
            docker_config: Some(root.join("dockercfg")),
            home: Some(root.join("home")),
        };
        Dirs {
            _tmp: tmp,
            env,
            root,
        }
    }

    fn write(path: &Path, json: &str) {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, json).expect("write");
    }

    fn basic(u: &str, p: &str) -> Option<Found> {
        Some(Found::Basic(Credentials {
            username: u.into(),
            password: p.into(),
        }))
    }

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn key_forms() {
        let d = dirs();
        let cfg = d.root.join("home/.docker/config.json");
        for key in [
            "myreg:5000",
            "https://myreg:5000",
            "http://myreg:5000",
            "https://myreg:5000/v1/",
        ] {
            write(
                &cfg,
                &format!(r#"{{"auths":{{"{key}":{{"auth":"{}"}}}}}}"#, b64("u:p:w")),
            );
            assert_eq!(
                find_credentials(&d.env, "myreg:5000").expect("ok"),
                basic("u", "p:w"),
                "{key}"
            );
            assert_eq!(
                find_credentials(&d.env, "myreg").expect("ok"),
                None,
                "{key}"
            );
            assert_eq!(
                find_credentials(&d.env, "other:5000").expect("ok"),
                None,
                "{key}"
            );
        }
        for key in [
            "https://index.docker.io/v1/",
            "index.docker.io",
            "registry-1.docker.io",
            "docker.io",
        ] {
            write(
                &cfg,
                &format!(r#"{{"auths":{{"{key}":{{"username":"hub","password":"pw"}}}}}}"#),
            );
            assert_eq!(
                find_credentials(&d.env, "docker.io").expect("ok"),
                basic("hub", "pw"),
                "{key}"
            );
        }
    }

    #[test]
    fn file_order_and_fallthrough() {
        let mut d = dirs();
        let auth_file = d.root.join("custom/auth.json");
        write(
            &auth_file,
            &format!(r#"{{"auths":{{"a.io":{{"auth":"{}"}}}}}}"#, b64("first:1")),
        );
        write(
            &d.root.join("run/containers/auth.json"),
            &format!(
                r#"{{"auths":{{"a.io":{{"auth":"{}"}},"b.io":{{"auth":"{}"}}}}}}"#,
                b64("second:2"),
                b64("xdg:b")
            ),
        );
        write(
            &d.root.join("dockercfg/config.json"),
            &format!(r#"{{"auths":{{"c.io":{{"auth":"{}"}}}}}}"#, b64("dc:c")),
        );
        write(
            &d.root.join("home/.docker/config.json"),
            &format!(
                r#"{{"auths":{{"c.io":{{"auth":"{}"}},"d.io":{{"auth":"{}"}}}}}}"#,
                b64("home:c"),
                b64("home:d")
            ),
        );

        assert_eq!(
            find_credentials(&d.env, "a.io").expect("ok"),
            basic("second", "2")
        );
        d.env.registry_auth_file = Some(auth_file);
        assert_eq!(
            find_credentials(&d.env, "a.io").expect("ok"),
            basic("first", "1")
        );
        assert_eq!(
            find_credentials(&d.env, "b.io").expect("ok"),
            basic("xdg", "b")
        );
        assert_eq!(
            find_credentials(&d.env, "c.io").expect("ok"),
            basic("dc", "c")
        );
        assert_eq!(
            find_credentials(&d.env, "d.io").expect("ok"),
            basic("home", "d")
        );
        assert_eq!(find_credentials(&d.env, "e.io").expect("ok"), None);
        assert_eq!(
            find_credentials(&CredEnv::default(), "a.io").expect("ok"),
            None
        );
    }

    #[test]
    fn helpers_and_odd_entries() {
        let d = dirs();
        let cfg = d.root.join("dockercfg/config.json");
        write(
            &cfg,
            r#"{"auths":{"a.io":{},"t.io":{"identitytoken":"x"}},"credHelpers":{"gcr.io":"gcloud"},"credsStore":"desktop"}"#,
        );
        assert_eq!(
            find_credentials(&d.env, "gcr.io").expect("ok"),
            Some(Found::Helper {
                helper: "gcloud".into(),
                server: "gcr.io".into()
            })
        );
        assert_eq!(
            find_credentials(&d.env, "a.io").expect("ok"),
            Some(Found::Helper {
                helper: "desktop".into(),
                server: "a.io".into()
            })
        );
        assert_eq!(
            find_credentials(&d.env, "docker.io").expect("ok"),
            Some(Found::Helper {
                helper: "desktop".into(),
                server: "https://index.docker.io/v1/".into()
            })
        );
        write(
            &cfg,
            r#"{"auths":{"t.io":{"identitytoken":"x"},"e.io":{"auth":""}}}"#,
        );
        assert_eq!(find_credentials(&d.env, "t.io").expect("ok"), None);
        assert_eq!(find_credentials(&d.env, "e.io").expect("ok"), None);
        // A missing helper binary is a warning, not an error.
        assert_eq!(
            run_helper("clip-test-no-such-helper", "x.io").expect("ok"),
            None
        );
        assert!(run_helper("../evil", "x.io").is_err());
    }

    #[test]
    fn malformed_files_are_errors() {
        let d = dirs();
        let cfg = d.root.join("dockercfg/config.json");
        write(&cfg, "{not json");
        let e = find_credentials(&d.env, "a.io").unwrap_err();
        assert!(
            matches!(e, RegistryError::Credentials { ref path, .. } if path.ends_with("config.json")),
            "{e}"
        );
        write(&cfg, r#"{"auths":{"a.io":{"auth":"!!!"}}}"#);
        assert!(find_credentials(&d.env, "a.io")
            .unwrap_err()
            .to_string()
            .contains("base64"));
        write(
            &cfg,
            &format!(r#"{{"auths":{{"a.io":{{"auth":"{}"}}}}}}"#, b64("nocolon")),
        );
        assert!(find_credentials(&d.env, "a.io")
            .unwrap_err()
            .to_string()
            .contains("USER:PASSWORD"));
        write(&cfg, "  \n");
        assert_eq!(find_credentials(&d.env, "a.io").expect("ok"), None);
    }
}
