//! Private directories: created `0700` whatever the umask, owned by us, opened without
//! following symlinks below the root. The same rules serve the span cache, the index store and
//! the runtime directory of mount daemons.

use std::fs::{self, File};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{
    DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _,
};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags};

/// Mode of every directory clip keeps private data in.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every file clip keeps private data in.
pub const FILE_MODE: u32 = 0o600;

/// Why a directory cannot hold private data.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {detail}", .path.display())]
pub struct PrivateDirError {
    /// The directory.
    pub path: PathBuf,
    /// What is wrong and what to do.
    pub detail: String,
}

fn private_error(path: &Path, detail: impl Into<String>) -> PrivateDirError {
    PrivateDirError {
        path: path.to_path_buf(),
        detail: detail.into(),
    }
}

/// Makes `path` a private directory of this user and opens it: missing components are created
/// `0700`; an existing directory must belong to us and must not be writable by group or others
/// (someone else could have put anything in it: refused, with what to fix); one that is merely
/// readable by others (a cache made by an earlier clip) is tightened to `0700`. `path` itself
/// must not be a symlink (in a shared directory like `/tmp` someone else could have put it
/// there): give the directory itself.
pub fn open_private_dir(path: &Path) -> Result<OwnedFd, PrivateDirError> {
    let io_error =
        |action: &str, e: io::Error| private_error(path, format!("cannot {action}: {e}"));
    fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(path)
        .map_err(|e| io_error("create it", e))?;
    let dir = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP | libc::ENOTDIR) => private_error(
                path,
                "is a symlink or not a directory; clip does not follow a symlink here: give \
                 the directory itself",
            ),
            _ => io_error("open it", e),
        })?;
    let meta = dir.metadata().map_err(|e| io_error("stat it", e))?;
    if !meta.is_dir() {
        return Err(private_error(path, "is not a directory"));
    }
    check_owned_private(path, &dir, &meta)?;
    Ok(OwnedFd::from(dir))
}

/// The owner and mode rules of [`open_private_dir`] on an open directory.
fn check_owned_private(
    path: &Path,
    dir: &File,
    meta: &fs::Metadata,
) -> Result<(), PrivateDirError> {
    let uid = rustix::process::geteuid().as_raw();
    if meta.uid() != uid {
        return Err(private_error(
            path,
            format!(
                "belongs to uid {}, not to you (uid {uid}); clip keeps private image content \
                 there: use a directory of your own",
                meta.uid()
            ),
        ));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(private_error(
            path,
            format!(
                "is writable by other users (mode {mode:04o}); clip keeps private image content \
                 there and cannot trust what others may have put in it: remove it, or make it \
                 private with `chmod 700`"
            ),
        ));
    }
    if mode != DIR_MODE {
        dir.set_permissions(fs::Permissions::from_mode(DIR_MODE))
            .map_err(|e| private_error(path, format!("cannot make it private (chmod 700): {e}")))?;
        tracing::info!(path = %path.display(), old_mode = format!("{mode:04o}"),
            "made the directory private (0700)");
    }
    Ok(())
}

/// Opens (and with `create`, first creates) the directory `name` below `parent`, never
/// following a symlink, and applies the rules of [`open_private_dir`]. `path` names it in
/// messages.
pub fn open_dir_at(
    parent: BorrowedFd<'_>,
    name: &str,
    create: bool,
    path: &Path,
) -> io::Result<OwnedFd> {
    if create {
        match rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(DIR_MODE)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let fd = rustix::fs::openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let dir = File::from(fd);
    let meta = dir.metadata()?;
    check_owned_private(path, &dir, &meta).map_err(io::Error::other)?;
    Ok(OwnedFd::from(dir))
}

/// `lstat` of `name` below `dir`.
pub fn stat_at(dir: BorrowedFd<'_>, name: &str) -> io::Result<Stat> {
    let st = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
    Ok(Stat::from(&st))
}

/// What we use of a `struct stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// Device.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
    /// Type and permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Size in bytes.
    pub size: u64,
    /// Modification time: seconds and nanoseconds.
    pub mtime: (i64, i64),
}

impl Stat {
    /// A regular file.
    pub fn is_file(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFREG
    }

    /// A directory.
    pub fn is_dir(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFDIR
    }
}

impl From<&rustix::fs::Stat> for Stat {
    // The field types of `struct stat` differ between architectures.
    #[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
    fn from(st: &rustix::fs::Stat) -> Stat {
        Stat {
            dev: st.st_dev as u64,
            ino: st.st_ino as u64,
            mode: st.st_mode as u32,
            uid: st.st_uid as u32,
            size: u64::try_from(st.st_size).unwrap_or(0),
            mtime: (st.st_mtime as i64, st.st_mtime_nsec as i64),
        }
    }
}

/// The names in a directory (without `.` and `..`); unreadable entries are skipped.
pub fn list(dir: BorrowedFd<'_>) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(entries) = rustix::fs::Dir::read_from(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let Ok(name) = entry.file_name().to_str() else {
            continue; // not ours: every name clip writes is ASCII
        };
        if name != "." && name != ".." {
            out.push(name.to_string());
        }
    }
    out
}

/// Deletes `name` below `dir` and, when it is a directory, everything in it, without ever
/// following a symlink; at most `depth` levels deep. Best effort: returns whether it is gone.
pub fn remove_tree(dir: BorrowedFd<'_>, name: &str, depth: u32) -> bool {
    let Ok(st) = stat_at(dir, name) else {
        return true;
    };
    if st.is_dir() {
        if depth == 0 {
            return false;
        }
        let Ok(sub) = rustix::fs::openat(
            dir,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) else {
            return false;
        };
        for child in list(sub.as_fd()) {
            remove_tree(sub.as_fd(), &child, depth - 1);
        }
        rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR).is_ok()
    } else {
        rustix::fs::unlinkat(dir, name, AtFlags::empty()).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_dirs_are_created_0700_and_tightened() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("a/b/cache");
        open_private_dir(&path).unwrap();
        for p in [tmp.path().join("a"), tmp.path().join("a/b"), path.clone()] {
            assert_eq!(
                fs::metadata(&p).unwrap().mode() & 0o7777,
                0o700,
                "{}",
                p.display()
            );
        }
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        open_private_dir(&path).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o7777, 0o700);
    }

    #[test]
    fn dirs_writable_by_others_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("cache");
        fs::create_dir(&path).unwrap();
        for mode in [0o777, 0o770, 0o1777, 0o702] {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            let err = open_private_dir(&path).unwrap_err();
            assert!(err.to_string().contains("writable by other users"), "{err}");
            assert_eq!(
                fs::metadata(&path).unwrap().mode() & 0o7777,
                mode,
                "left alone"
            );
        }
    }

    #[test]
    fn a_symlink_in_place_of_the_dir_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let victim = tmp.path().join("victim");
        fs::create_dir(&victim).unwrap();
        fs::set_permissions(&victim, fs::Permissions::from_mode(0o755)).unwrap();
        let planted = tmp.path().join("clip-1000");
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        let err = open_private_dir(&planted).unwrap_err();
        assert!(err.to_string().contains("symlink"), "{err}");
        assert_eq!(
            fs::metadata(&victim).unwrap().mode() & 0o7777,
            0o755,
            "untouched"
        );
    }

    #[test]
    fn symlinks_below_the_root_are_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let root = open_private_dir(&tmp.path().join("root")).unwrap();
        let elsewhere = tmp.path().join("elsewhere");
        fs::create_dir(&elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, tmp.path().join("root/link")).unwrap();
        let err = open_dir_at(root.as_fd(), "link", true, Path::new("link")).unwrap_err();
        assert!(
            matches!(err.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)),
            "{err}"
        );
        fs::write(elsewhere.join("precious"), b"x").unwrap();
        assert!(remove_tree(root.as_fd(), "link", 4));
        assert!(
            elsewhere.join("precious").exists(),
            "remove_tree removed only the link"
        );
    }
}
