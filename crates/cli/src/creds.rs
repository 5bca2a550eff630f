//! `--creds` (or `$CLIP_CREDS`): `USER:PASS` or `REGISTRY=USER:PASS`, and the one registry the
//! credentials are for. They are never sent to another registry; that one's credentials then
//! come from the auth files, as without `--creds`.

use std::path::Path;

use anyhow::{bail, Result};
use clip_registry::{Credentials, Reference, RegistryCredentials};

/// What `--creds` says.
#[derive(Debug, PartialEq, Eq)]
pub enum CredsArg {
    /// `USER:PASS`: for the registry of the image the user typed.
    Plain(Credentials),
    /// `REGISTRY=USER:PASS`: for that registry.
    For(RegistryCredentials),
}

/// Where the image, and so its registry, comes from.
#[derive(Debug, Clone, Copy)]
pub enum ImageSource<'a> {
    /// Typed by the user (`clip index IMAGE`): a plain `USER:PASS` is for its registry.
    CommandLine,
    /// Named by an index file (`clip mount FILE.clip`): the file, not the user, chose the
    /// registry, so credentials must name the registry they are for.
    IndexFile(&'a Path),
}

const SYNTAX: &str = "--creds (or $CLIP_CREDS) must be USER:PASS or REGISTRY=USER:PASS";

/// Parses `USER:PASS` or `REGISTRY=USER:PASS`. The user name ends at the first `:`; the
/// password is the rest and may hold `:` and `=`. A value is read as `REGISTRY=USER:PASS` when
/// what comes before its first `=` is a registry name (`host.name`, `host:port`, `localhost`)
/// and a `:` follows; write a plain `USER:PASS` whose user name looks like that in the
/// `REGISTRY=` form. Error messages never repeat the value (it holds a password).
pub fn parse(value: &str) -> Result<CredsArg> {
    if let Some((registry, rest)) = value.split_once('=') {
        if rest.contains(':') && is_registry_name(registry) {
            let credentials = user_pass(rest)?;
            return Ok(CredsArg::For(RegistryCredentials::new(
                registry,
                credentials,
            )));
        }
    }
    Ok(CredsArg::Plain(user_pass(value)?))
}

fn user_pass(value: &str) -> Result<Credentials> {
    let Some((username, password)) = value.split_once(':') else {
        bail!("{SYNTAX}");
    };
    if username.is_empty() {
        bail!("{SYNTAX}; the user name is empty");
    }
    Ok(Credentials {
        username: username.to_string(),
        password: password.to_string(),
    })
}

/// Whether `name` is a registry as an image reference spells it (`ghcr.io`, `localhost:5000`,
/// `[::1]:5000`), by the same rules.
fn is_registry_name(name: &str) -> bool {
    let looks_like_host =
        name.contains('.') || name.contains(':') || name.starts_with('[') || name == "localhost";
    looks_like_host
        && format!("{name}/x")
            .parse::<Reference>()
            .is_ok_and(|r| RegistryCredentials::new(name, placeholder()).is_for(&r.registry))
}

fn placeholder() -> Credentials {
    Credentials {
        username: String::new(),
        password: String::new(),
    }
}

/// The explicit credentials to give the client of an image on `registry`, from `--creds`.
///
/// `USER:PASS` is for the image's registry when the user typed the image, and refused when an
/// index file named it. `REGISTRY=USER:PASS` for another registry is not used (with a warning):
/// the image's registry then gets what the auth files say.
pub fn for_registry(
    value: Option<&str>,
    registry: &str,
    source: ImageSource<'_>,
) -> Result<Option<RegistryCredentials>> {
    let Some(value) = value else {
        return Ok(None);
    };
    match (parse(value)?, source) {
        (CredsArg::Plain(credentials), ImageSource::CommandLine) => {
            Ok(Some(RegistryCredentials::new(registry, credentials)))
        }
        (CredsArg::Plain(_), ImageSource::IndexFile(file)) => bail!(
            "--creds USER:PASS names no registry, and the registry here is {registry}, chosen \
             by {} rather than by you; if the credentials are for {registry}, pass --creds \
             {registry}=USER:PASS (or CLIP_CREDS={registry}=USER:PASS)",
            file.display()
        ),
        (CredsArg::For(given), source) => {
            if given.is_for(registry) {
                return Ok(Some(given));
            }
            let whose = match source {
                ImageSource::CommandLine => "the image's registry".to_string(),
                ImageSource::IndexFile(file) => format!("the registry {} names", file.display()),
            };
            tracing::warn!(
                "--creds are for {}, not for {registry} ({whose}): not using them; credentials \
                 for {registry} come from the auth files, if any",
                given.registry
            );
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(user: &str, pass: &str) -> CredsArg {
        CredsArg::Plain(Credentials {
            username: user.into(),
            password: pass.into(),
        })
    }

    fn bound(registry: &str, user: &str, pass: &str) -> CredsArg {
        CredsArg::For(RegistryCredentials::new(
            registry,
            Credentials {
                username: user.into(),
                password: pass.into(),
            },
        ))
    }

    #[test]
    fn parses_both_forms() {
        let p = |v: &str| parse(v).unwrap_or_else(|e| panic!("{v}: {e}"));
        assert_eq!(p("alice:s3cret"), plain("alice", "s3cret"));
        assert_eq!(p("alice:"), plain("alice", ""));
        assert_eq!(p("alice:pa=ss:w=rd"), plain("alice", "pa=ss:w=rd"));
        assert_eq!(p("alice:12=x"), plain("alice", "12=x"));
        assert_eq!(p("al=ice:pw"), plain("al=ice", "pw"));
        assert_eq!(
            p("localhost:5000=user:pa=ss:word"),
            bound("localhost:5000", "user", "pa=ss:word")
        );
        assert_eq!(p("ghcr.io=bob:tok"), bound("ghcr.io", "bob", "tok"));
        assert_eq!(p("localhost=u:p"), bound("localhost", "u", "p"));
        assert_eq!(p("[::1]:5000=u:p"), bound("[::1]:5000", "u", "p"));
        assert_eq!(p("docker.io=u:=:"), bound("docker.io", "u", "=:"));
        // Not registry names: plain credentials whose user name holds '='.
        assert_eq!(p("myreg=u:p"), plain("myreg=u", "p"));
        assert_eq!(p("bad_host.io=u:p"), plain("bad_host.io=u", "p"));
    }

    #[test]
    fn refuses_malformed_values_without_echoing_them() {
        for bad in [
            "",
            "alice",
            ":pw",
            "ghcr.io=:pw",
            "ghcr.io=",
            "hunter2secret",
        ] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(
                e.contains("USER:PASS or REGISTRY=USER:PASS"),
                "{bad:?}: {e}"
            );
            if !bad.is_empty() {
                assert!(!e.contains(bad), "{bad:?} echoed: {e}");
            }
        }
    }

    #[test]
    fn binds_to_one_registry() {
        let creds = |v, registry, source| for_registry(Some(v), registry, source);
        let typed = ImageSource::CommandLine;
        let file = ImageSource::IndexFile(Path::new("app.clip"));

        let c = creds("u:p", "localhost:5000", typed)
            .expect("ok")
            .expect("some");
        assert_eq!(c.registry, "localhost:5000");
        assert!(!c.is_for("localhost:5001"));

        let e = creds("u:p:w", "localhost:5000", file)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("app.clip")
                && e.contains("--creds localhost:5000=USER:PASS")
                && !e.contains("p:w"),
            "{e}"
        );

        for source in [typed, file] {
            let c = creds("localhost:5000=u:p", "localhost:5000", source).expect("ok");
            assert_eq!(c.map(|c| c.registry), Some("localhost:5000".to_string()));
            let c = creds("index.docker.io=u:p", "docker.io", source).expect("ok");
            assert!(c.is_some_and(|c| c.is_for("docker.io")));
            assert_eq!(
                creds("localhost:5001=u:p", "localhost:5000", source).expect("ok"),
                None
            );
            assert_eq!(creds("ghcr.io=u:p", "docker.io", source).expect("ok"), None);
        }
        assert_eq!(for_registry(None, "docker.io", file).expect("ok"), None);
    }
}
