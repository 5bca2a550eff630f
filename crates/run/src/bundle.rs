//! The bundle of one container: a private directory holding `config.json`, the overlay's
//! upper and work directories and its mountpoint `rootfs`, and the runtime's pid file. It is
//! removed, overlay first, when the container is done.

use std::fs;
use std::io::Write as _;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;
use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::io::Errno;
use rustix::mount::{MountFlags, UnmountFlags};

use crate::mountinfo;
use crate::proc::ProcessId;
use crate::runtime::Runtime;
use crate::spec::ROOTFS;
use crate::Error;

/// The file of a bundle naming its run: `PID STARTTIME`, then the runtime program.
const OWNER: &str = "owner";

/// A container's bundle directory and the overlay mounted in it.
#[derive(Debug)]
pub struct Bundle {
    dir: PathBuf,
    removed: bool,
}

impl Bundle {
    /// Creates `parent/name` (`0700`; it must not exist) with the overlay's directories, for
    /// container `name` run by `runtime`. `parent` must be a private directory of the
    /// caller. The bundle records its owner (this process, with its start time) and runtime,
    /// so that [`Bundle::sweep`] can tell and remove the bundle of a run that crashed.
    pub fn create(parent: &Path, name: &str, runtime: &Runtime) -> Result<Bundle, Error> {
        let dir = parent.join(name);
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| Error::io("create the bundle directory", &dir, e))?;
        let bundle = Bundle {
            dir,
            removed: false,
        };
        for sub in ["upper", "work", ROOTFS] {
            let path = bundle.dir.join(sub);
            fs::DirBuilder::new()
                .mode(0o755)
                .create(&path)
                .map_err(|e| Error::io("create", &path, e))?;
        }
        let me = ProcessId::current_or_error()?;
        let owner = bundle.dir.join(OWNER);
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&owner)
            .and_then(|mut f| write!(f, "{me}\n{}\n", runtime.program().display()))
            .map_err(|e| Error::io("write", &owner, e))?;
        Ok(bundle)
    }

    /// Removes the bundles under `parent` left by runs that are gone (crashed, or killed with
    /// SIGKILL): their owner no longer runs and their container does not run either (one
    /// still running is left alone). For each: the runtime's state of the container, the
    /// overlay, the directory. Returns how many were removed; failures are logged.
    pub fn sweep(parent: &Path) -> usize {
        let Ok(entries) = fs::read_dir(parent) else {
            return 0;
        };
        let mut removed = 0;
        for entry in entries.flatten() {
            let dir = entry.path();
            let Some(name) = dir.file_name().and_then(|n| n.to_str()).map(str::to_string) else {
                continue;
            };
            let Ok(owner) = fs::read_to_string(dir.join(OWNER)) else {
                // Being created (the owner is written right after the directory), or not
                // a bundle of ours.
                continue;
            };
            let mut lines = owner.lines();
            let alive = lines
                .next()
                .and_then(ProcessId::parse)
                .is_none_or(|p| p.is_alive());
            let Some(program) = lines.next().filter(|_| !alive) else {
                continue;
            };
            let runtime = Runtime::new(program);
            match runtime.status(&name) {
                Ok(Some((status, bundle))) if bundle == dir => {
                    if matches!(status.as_str(), "running" | "paused" | "pausing") {
                        tracing::info!(container = %name, "the run that started it is gone, but it still runs: left alone");
                        continue;
                    }
                    if let Err(e) = runtime.delete_if_ours(&name, &dir) {
                        tracing::warn!("sweeping {name}: {e}");
                        continue;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!("sweeping {name}: {e}");
                    continue;
                }
            }
            match remove_bundle(&dir) {
                Ok(()) => {
                    tracing::warn!(bundle = %dir.display(), "removed what a run that crashed left behind");
                    removed += 1;
                }
                Err(e) => tracing::warn!("sweeping {name}: {e}"),
            }
        }
        removed
    }

    /// The bundle directory (`--bundle` of the runtime).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The container's root filesystem: the overlay's mountpoint.
    pub fn rootfs(&self) -> PathBuf {
        self.dir.join(ROOTFS)
    }

    /// The overlay's upper directory: everything the container writes to its root.
    pub fn upper(&self) -> PathBuf {
        self.dir.join("upper")
    }

    /// Where the runtime writes the container's pid once it runs.
    pub fn pid_file(&self) -> PathBuf {
        self.dir.join("pid")
    }

    /// Mounts the root filesystem: an overlay of the bundle's fresh upper directory on
    /// `lower` (the image, read-only).
    ///
    /// `volatile` (Linux ≥ 5.10) where the kernel has it: the upper directory lives as long as
    /// the run and is removed with the bundle (after a crash too, by [`Bundle::sweep`]), so
    /// nothing in it is worth a sync — and without it the overlay's unmount syncs the whole
    /// filesystem the upper directory is on, which at the end of a cold start means writing
    /// back every span the mount just cached there (a fifth of a second on a 16 MB start).
    pub fn mount_overlay(&self, lower: &Path) -> Result<(), Error> {
        let dirs = format!(
            "lowerdir={},upperdir={},workdir={}",
            escape_overlay(lower),
            escape_overlay(&self.upper()),
            escape_overlay(&self.dir.join("work"))
        );
        let rootfs = self.rootfs();
        let mount = |data: String| {
            let data = std::ffi::CString::new(data).map_err(|_| Error::InRoot {
                path: lower.display().to_string(),
                detail: "a path holds a NUL byte".into(),
            })?;
            Ok::<_, Error>(rustix::mount::mount(
                "overlay",
                &rootfs,
                "overlay",
                MountFlags::empty(),
                Some(data.as_c_str()),
            ))
        };
        let volatile = match mount(format!("{dirs},volatile"))? {
            Ok(()) => true,
            // A kernel without the option (before 5.10): the same overlay, synced.
            Err(Errno::INVAL) => {
                mount(dirs)?.map_err(|e| Error::io("mount the overlay at", &rootfs, e.into()))?;
                false
            }
            Err(e) => return Err(Error::io("mount the overlay at", &rootfs, e.into())),
        };
        tracing::debug!(rootfs = %rootfs.display(), lower = %lower.display(), volatile,
            "overlay mounted");
        Ok(())
    }

    /// Creates directory `path` (absolute, in the container) and its missing parents in the
    /// root filesystem (they land in the upper layer), `0755` and owned by root as docker
    /// creates a missing WorkingDir. Every component is resolved inside the root.
    pub fn make_dir(&self, path: &str) -> Result<(), Error> {
        let root = self.open_root()?;
        make_dir_in_root(&root, path)
    }

    /// Makes sure a bind mount's destination exists: a directory, or an empty file when
    /// the source is not a directory.
    pub fn make_mountpoint(&self, path: &str, directory: bool) -> Result<(), Error> {
        let root = self.open_root()?;
        if directory {
            return make_dir_in_root(&root, path);
        }
        let clean = clean(path);
        if let Some((parent, _)) = clean.rsplit_once('/') {
            make_dir_in_root(&root, parent)?;
        }
        let in_root = |e: Errno| Error::InRoot {
            path: path.to_string(),
            detail: std::io::Error::from(e).to_string(),
        };
        match rustix::fs::openat2(
            &root,
            clean.as_str(),
            OFlags::PATH | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        ) {
            Ok(_) => Ok(()),
            Err(Errno::NOENT) => rustix::fs::openat2(
                &root,
                clean.as_str(),
                OFlags::WRONLY | OFlags::CREATE | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o644),
                ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
            )
            .map(drop)
            .map_err(in_root),
            Err(e) => Err(in_root(e)),
        }
    }

    /// Writes `config.json`.
    pub fn write_spec(&self, spec: &Spec) -> Result<(), Error> {
        let path = self.dir.join("config.json");
        let json = serde_json::to_vec_pretty(spec).map_err(|e| Error::WriteSpec {
            path: path.clone(),
            detail: e.to_string(),
        })?;
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .and_then(|mut f| f.write_all(&json))
            .map_err(|e| Error::io("write", &path, e))
    }

    /// Unmounts the overlay (lazily when something still holds it) and removes the
    /// directory. Refuses to remove anything while a mount remains below it.
    pub fn remove(mut self) -> Result<(), Error> {
        self.removed = true;
        remove_bundle(&self.dir)
    }

    fn open_root(&self) -> Result<OwnedFd, Error> {
        crate::user::open_root(&self.rootfs())
            .map_err(|e| Error::io("open the root filesystem", self.rootfs(), e))
    }
}

impl Drop for Bundle {
    fn drop(&mut self) {
        if !self.removed {
            if let Err(e) = remove_bundle(&self.dir) {
                tracing::warn!("{e}");
            }
        }
    }
}

fn remove_bundle(dir: &Path) -> Result<(), Error> {
    let rootfs = dir.join(ROOTFS);
    if mountinfo::is_mountpoint(&rootfs) {
        match rustix::mount::unmount(&rootfs, UnmountFlags::NOFOLLOW) {
            Ok(()) => {}
            Err(Errno::BUSY) => {
                tracing::warn!(rootfs = %rootfs.display(), "overlay busy: detached lazily");
                rustix::mount::unmount(&rootfs, UnmountFlags::DETACH | UnmountFlags::NOFOLLOW)
                    .map_err(|e| Error::io("unmount the overlay at", &rootfs, e.into()))?;
            }
            Err(e) => return Err(Error::io("unmount the overlay at", &rootfs, e.into())),
        }
    }
    if let Some(m) = mountinfo::mounts_below(dir).first() {
        return Err(Error::io(
            "remove the bundle while something is mounted at",
            m,
            std::io::Error::from(std::io::ErrorKind::ResourceBusy),
        ));
    }
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove", dir, e)),
    }
}

/// `path` cleaned lexically: no empty, `.` or `..` components (`..` stops at the root), no
/// leading `/`.
fn clean(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out.join("/")
}

/// `mkdir -p` of `path` inside the directory `root`, resolving every component inside it.
fn make_dir_in_root(root: &impl AsFd, path: &str) -> Result<(), Error> {
    let clean = clean(path);
    let resolve = ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS;
    let open_dir = |rel: &str| {
        rustix::fs::openat2(
            root,
            if rel.is_empty() { "." } else { rel },
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            resolve,
        )
    };
    let fail = |rel: &str, e: Errno| Error::InRoot {
        path: format!("/{rel}"),
        detail: match e {
            Errno::NOTDIR => "exists and is not a directory".to_string(),
            Errno::NOENT => "is a symlink to nowhere".to_string(),
            e => std::io::Error::from(e).to_string(),
        },
    };
    let mut done = String::new();
    for component in clean.split('/').filter(|c| !c.is_empty()) {
        let next = if done.is_empty() {
            component.to_string()
        } else {
            format!("{done}/{component}")
        };
        match open_dir(&next) {
            Ok(_) => {}
            Err(Errno::NOENT) => {
                let parent = open_dir(&done).map_err(|e| fail(&done, e))?;
                match rustix::fs::mkdirat(&parent, component, Mode::from_raw_mode(0o755)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(fail(&next, e)),
                }
                open_dir(&next).map_err(|e| fail(&next, e))?;
            }
            Err(e) => return Err(fail(&next, e)),
        }
        done = next;
    }
    Ok(())
}

/// A path as an overlay mount option value: `\`, `,` and `:` escaped.
fn escape_overlay(path: &Path) -> String {
    let mut out = String::new();
    for c in path.to_string_lossy().chars() {
        if matches!(c, '\\' | ',' | ':') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_paths() {
        assert_eq!(clean("/a/./b//c/"), "a/b/c");
        assert_eq!(clean("/../../x/../y"), "y");
        assert_eq!(clean("/"), "");
    }

    #[test]
    fn make_dir_stays_inside_the_root() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let fd = crate::user::open_root(root.path()).unwrap();
        make_dir_in_root(&fd, "/app/data").unwrap();
        assert!(root.path().join("app/data").is_dir());
        // An absolute symlink is resolved inside the root, never on the host: here it leads
        // nowhere inside the root, which is an error, and the host is untouched.
        std::os::unix::fs::symlink(outside.path(), root.path().join("escape")).unwrap();
        let e = make_dir_in_root(&fd, "/escape/sub")
            .unwrap_err()
            .to_string();
        assert!(e.contains("symlink to nowhere"), "{e}");
        assert!(!outside.path().join("sub").exists());
        // One that leads somewhere inside the root is followed there.
        std::os::unix::fs::symlink("/app", root.path().join("link")).unwrap();
        make_dir_in_root(&fd, "/link/sub").unwrap();
        assert!(root.path().join("app/sub").is_dir());
        // A file in the way is an error naming the path.
        std::fs::write(root.path().join("file"), b"").unwrap();
        let e = make_dir_in_root(&fd, "/file/sub").unwrap_err().to_string();
        assert!(
            e.contains("\"/file\"") && e.contains("not a directory"),
            "{e}"
        );
    }

    #[test]
    fn overlay_escapes() {
        assert_eq!(escape_overlay(Path::new("/a,b:c\\d")), "/a\\,b\\:c\\\\d");
    }
}
