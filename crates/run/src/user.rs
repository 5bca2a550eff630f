//! The container's user: `USER[:GROUP]` resolved against the image's `/etc/passwd` and
//! `/etc/group`, by the rules docker applies (runc's `GetExecUser`):
//!
//! - A name must be in `/etc/passwd`; a number need not be (uid `N`, gid `0`, home `/` when
//!   it is not). A number matches an entry by uid, never by name.
//! - No user at all means root (uid 0), with root's home from `/etc/passwd` when listed.
//! - `:GROUP` sets the primary group: a name must be in `/etc/group`, a number need not be.
//!   Without it, the primary group is the user's from `/etc/passwd`, and the supplementary
//!   groups are those of `/etc/group` that list the user's name as a member. With it, there
//!   are no supplementary groups (docker: they "only make sense in the implicit form").
//! - Ids are 0 to 2147483647.

use std::io::Read as _;
use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{Mode, OFlags, ResolveFlags};

/// The largest id runc accepts (`math.MaxInt32`).
const MAX_ID: u64 = i32::MAX as u64;

/// Bound on the size of `/etc/passwd` or `/etc/group` read from an image.
const MAX_FILE: u64 = 16 << 20;

/// Why a user cannot be resolved.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    /// A user name that `/etc/passwd` does not list.
    #[error(
        "unable to find user {name:?}: no matching entry in the image's /etc/passwd{missing}; \
         give a listed name or a numeric uid (-u 1000 or -u 1000:1000)"
    )]
    NoSuchUser {
        /// The name.
        name: String,
        /// ` (the image has no /etc/passwd)` or empty.
        missing: &'static str,
    },
    /// A group name that `/etc/group` does not list.
    #[error(
        "unable to find group {name:?}: no matching entry in the image's /etc/group{missing}; \
         give a listed name or a numeric gid"
    )]
    NoSuchGroup {
        /// The name.
        name: String,
        /// ` (the image has no /etc/group)` or empty.
        missing: &'static str,
    },
    /// An id out of range.
    #[error("{what} {value} is out of range: ids are 0 to 2147483647")]
    OutOfRange {
        /// `uid` or `gid`.
        what: &'static str,
        /// As given.
        value: String,
    },
    /// An empty user with a group (`:GROUP`) or an empty group (`USER:`).
    #[error("user {spec:?} is not of the form USER[:GROUP] (name or number each)")]
    Malformed {
        /// As given.
        spec: String,
    },
    /// `/etc/passwd` or `/etc/group` cannot be read.
    #[error("cannot read {file} in the image: {source}")]
    Read {
        /// `/etc/passwd` or `/etc/group`.
        file: &'static str,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
}

/// One line of `/etc/passwd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdEntry {
    /// Login name.
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Home directory.
    pub home: String,
}

/// One line of `/etc/group`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEntry {
    /// Group name.
    pub name: String,
    /// Group id.
    pub gid: u32,
    /// Member names.
    pub members: Vec<String>,
}

/// Who the container's process runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecUser {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary group ids, in `/etc/group` order.
    pub additional_gids: Vec<u32>,
    /// Home directory (`HOME` unless the environment sets it).
    pub home: String,
}

fn parse_id(s: &str) -> Option<u32> {
    let v: u64 = s.parse().ok()?;
    (v <= MAX_ID).then_some(v as u32)
}

/// Parses `/etc/passwd` text. Blank lines, comments and malformed lines (too few fields,
/// ids that are not numbers) are skipped, as libc does.
pub fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 4 {
                return None;
            }
            Some(PasswdEntry {
                name: f[0].to_string(),
                uid: parse_id(f[2])?,
                gid: parse_id(f[3])?,
                home: f.get(5).copied().unwrap_or("").to_string(),
            })
        })
        .collect()
}

/// Parses `/etc/group` text, skipping what [`parse_passwd`] skips.
pub fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 3 {
                return None;
            }
            Some(GroupEntry {
                name: f[0].to_string(),
                gid: parse_id(f[2])?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .map(str::trim)
                            .filter(|m| !m.is_empty())
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// A numeric id, or `None` for a name; an error for a number out of range.
fn numeric(s: &str, what: &'static str) -> Result<Option<u32>, UserError> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(None);
    }
    parse_id(s).map(Some).ok_or_else(|| UserError::OutOfRange {
        what,
        value: s.to_string(),
    })
}

/// Resolves `USER[:GROUP]` (empty: root) against parsed files; `None` for a file the image
/// does not have.
pub fn resolve(
    spec: &str,
    passwd: Option<&[PasswdEntry]>,
    group: Option<&[GroupEntry]>,
) -> Result<ExecUser, UserError> {
    let (user_arg, group_arg) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if (user_arg.is_empty() && group_arg.is_some()) || group_arg == Some("") {
        return Err(UserError::Malformed {
            spec: spec.to_string(),
        });
    }
    let user_arg = if user_arg.is_empty() { "0" } else { user_arg };
    let uid_arg = numeric(user_arg, "uid")?;
    let found = passwd.unwrap_or(&[]).iter().find(|e| match uid_arg {
        Some(uid) => e.uid == uid,
        None => e.name == user_arg,
    });
    let mut user = match (found, uid_arg) {
        (Some(e), _) => ExecUser {
            uid: e.uid,
            gid: e.gid,
            additional_gids: Vec::new(),
            home: if e.home.is_empty() {
                "/".to_string()
            } else {
                e.home.clone()
            },
        },
        (None, Some(uid)) => ExecUser {
            uid,
            gid: 0,
            additional_gids: Vec::new(),
            home: "/".to_string(),
        },
        (None, None) => {
            return Err(UserError::NoSuchUser {
                name: user_arg.to_string(),
                missing: if passwd.is_none() {
                    " (the image has no /etc/passwd)"
                } else {
                    ""
                },
            })
        }
    };
    let groups = group.unwrap_or(&[]);
    match group_arg {
        Some(g) => {
            let gid_arg = numeric(g, "gid")?;
            let found = groups.iter().find(|e| match gid_arg {
                Some(gid) => e.gid == gid,
                None => e.name == g,
            });
            user.gid = match (found, gid_arg) {
                (Some(e), _) => e.gid,
                (None, Some(gid)) => gid,
                (None, None) => {
                    return Err(UserError::NoSuchGroup {
                        name: g.to_string(),
                        missing: if group.is_none() {
                            " (the image has no /etc/group)"
                        } else {
                            ""
                        },
                    })
                }
            };
        }
        None => {
            if let Some(name) = found.map(|e| e.name.as_str()) {
                user.additional_gids = groups
                    .iter()
                    .filter(|g| g.members.iter().any(|m| m == name))
                    .map(|g| g.gid)
                    .collect();
            }
        }
    }
    Ok(user)
}

/// Resolves `USER[:GROUP]` against `etc/passwd` and `etc/group` under `root`, read with every
/// path and symlink resolved inside `root` (an image's `/etc/passwd -> /x` never reaches the
/// host's `/x`). Missing files count as empty, as docker takes them.
pub fn resolve_in_root(spec: &str, root: &Path) -> Result<ExecUser, UserError> {
    let passwd = read_in_root(root, "etc/passwd").map_err(|source| UserError::Read {
        file: "/etc/passwd",
        source,
    })?;
    let group = read_in_root(root, "etc/group").map_err(|source| UserError::Read {
        file: "/etc/group",
        source,
    })?;
    let passwd = passwd.as_deref().map(parse_passwd);
    let group = group.as_deref().map(parse_group);
    resolve(spec, passwd.as_deref(), group.as_deref())
}

/// Opens `root` as a directory (following symlinks in `root` itself, which is the caller's).
pub(crate) fn open_root(root: &Path) -> std::io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Reads the text of `path` (relative) under `root`, resolved inside it; `None` if missing.
fn read_in_root(root: &Path, path: &str) -> std::io::Result<Option<String>> {
    let dir = open_root(root)?;
    let fd = match rustix::fs::openat2(
        &dir,
        path,
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    ) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mut bytes = Vec::new();
    std::fs::File::from(fd)
        .take(MAX_FILE)
        .read_to_end(&mut bytes)?;
    Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = include_str!("../tests/fixtures/root/etc/passwd");
    const GROUP: &str = include_str!("../tests/fixtures/root/etc/group");

    fn r(spec: &str) -> Result<ExecUser, UserError> {
        let p = parse_passwd(PASSWD);
        let g = parse_group(GROUP);
        resolve(spec, Some(&p), Some(&g))
    }

    #[test]
    fn parses_and_skips_malformed_lines() {
        let p = parse_passwd(PASSWD);
        let names: Vec<&str> = p.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["root", "daemon", "app", "nohome"]);
        assert_eq!(p[2].home, "/home/app");
        let g = parse_group(GROUP);
        assert_eq!(g[2].members, ["app", "other"]);
        assert_eq!(g[4].members, ["app"]);
    }

    #[test]
    fn a_name_gives_its_ids_home_and_supplementary_groups() {
        let u = r("app").unwrap();
        assert_eq!(
            u,
            ExecUser {
                uid: 1000,
                gid: 1000,
                additional_gids: vec![29, 44],
                home: "/home/app".into()
            }
        );
    }

    #[test]
    fn no_user_is_root_with_roots_home() {
        let u = r("").unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (0, 0, "/root"));
        let u = resolve("", None, None).unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (0, 0, "/"));
    }

    #[test]
    fn numbers_match_by_uid_and_need_not_be_listed() {
        let u = r("1000").unwrap();
        assert_eq!((u.uid, u.gid), (1000, 1000));
        assert_eq!(
            u.additional_gids,
            [29, 44],
            "implicit form: supplementary groups"
        );
        let u = r("4242").unwrap();
        assert_eq!(
            u,
            ExecUser {
                uid: 4242,
                gid: 0,
                additional_gids: vec![],
                home: "/".into()
            }
        );
        // Even without any passwd file.
        assert_eq!(resolve("7:8", None, None).unwrap().gid, 8);
    }

    #[test]
    fn an_explicit_group_sets_the_primary_group_and_no_supplementary_ones() {
        let u = r("1000:1000").unwrap();
        assert_eq!((u.uid, u.gid), (1000, 1000));
        assert!(u.additional_gids.is_empty());
        let u = r("app:audio").unwrap();
        assert_eq!((u.uid, u.gid), (1000, 29));
        assert!(u.additional_gids.is_empty());
        let u = r("app:4343").unwrap();
        assert_eq!(u.gid, 4343);
    }

    #[test]
    fn an_empty_home_is_root() {
        assert_eq!(r("nohome").unwrap().home, "/");
    }

    #[test]
    fn missing_names_are_clear_errors() {
        let e = r("nobody").unwrap_err().to_string();
        assert!(e.contains("unable to find user \"nobody\""), "{e}");
        assert!(e.contains("numeric uid"), "{e}");
        let e = resolve("nobody", None, None).unwrap_err().to_string();
        assert!(e.contains("has no /etc/passwd"), "{e}");
        let e = r("app:wheel").unwrap_err().to_string();
        assert!(e.contains("unable to find group \"wheel\""), "{e}");
    }

    #[test]
    fn malformed_and_out_of_range() {
        assert!(matches!(r(":0"), Err(UserError::Malformed { .. })));
        assert!(matches!(r("app:"), Err(UserError::Malformed { .. })));
        assert!(matches!(
            r("2147483648"),
            Err(UserError::OutOfRange { what: "uid", .. })
        ));
        assert!(matches!(
            r("1:99999999999"),
            Err(UserError::OutOfRange { what: "gid", .. })
        ));
        assert_eq!(r("2147483647").unwrap().uid, 2_147_483_647);
    }

    #[test]
    fn files_are_read_inside_the_root() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("passwd"), "evil:x:0:0::/:/bin/sh\n").unwrap();
        std::fs::create_dir(root.path().join("etc")).unwrap();
        // An absolute symlink that would reach the host's file if followed from the host.
        std::os::unix::fs::symlink(
            outside.path().join("passwd"),
            root.path().join("etc/passwd"),
        )
        .unwrap();
        std::fs::write(root.path().join("etc/group"), GROUP).unwrap();
        let e = resolve_in_root("evil", root.path()).unwrap_err();
        assert!(matches!(e, UserError::NoSuchUser { .. }), "{e}");
        // A symlink resolved inside the root is followed.
        std::fs::remove_file(root.path().join("etc/passwd")).unwrap();
        std::fs::write(root.path().join("etc/passwd.real"), PASSWD).unwrap();
        std::os::unix::fs::symlink("/etc/passwd.real", root.path().join("etc/passwd")).unwrap();
        let u = resolve_in_root("app", root.path()).unwrap();
        assert_eq!(u.additional_gids, [29, 44]);
    }

    #[test]
    fn the_fixture_root_resolves_names_and_groups() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/root");
        let u = resolve_in_root("app", &root).unwrap();
        assert_eq!(
            (u.uid, u.gid, u.additional_gids),
            (1000, 1000, vec![29, 44])
        );
        assert_eq!(resolve_in_root("daemon:staff", &root).unwrap().gid, 50);
        // A root without /etc at all: numbers work, names do not.
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(resolve_in_root("5:6", empty.path()).unwrap().gid, 6);
        assert!(resolve_in_root("app", empty.path()).is_err());
    }
}
