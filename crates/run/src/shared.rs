//! One read-only image mount shared by every run of that image.
//!
//! Layout, under a private directory of the caller (`/run/clip/images` for root), per image
//! key (the manifest digest's hex):
//!
//! ```text
//! KEY/lock          flock(2)ed around every acquire and release
//! KEY/mnt/          the image's mount
//! KEY/daemon        "PID STARTTIME" of the process serving the mount
//! KEY/mount.log     that process's log
//! KEY/runs/PID.N    one registration per run holding the mount: "PID STARTTIME"
//! ```
//!
//! **Acquire** (under the lock): registrations of processes that are gone (no such pid, or
//! a pid now used by a process with another start time) are pruned; a mount whose serving
//! process died (the mountpoint answers `ENOTCONN`) is cleared; if nothing is mounted the
//! [`ImageMounter`] mounts it, in a process of its own that outlives the caller; then the
//! caller's registration is written. **Release** (under the lock): the caller's registration
//! goes, dead ones are pruned, and when none is left the mount is unmounted and the image's
//! directory removed. So two runs started at once never mount twice, a mount stays while any
//! live run uses it, and the last run out — also after others crashed — unmounts it.
//!
//! Removing the directory (lock file included) while another process waits for the lock is
//! safe: a waiter that gets a lock on a file no longer at its path starts over.

use std::fs::{self, File};
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use rustix::fs::FlockOperation;

use crate::error::BoxError;
use crate::mountinfo;
use crate::proc::ProcessId;
use crate::Error;

/// Mounts and unmounts an image's read-only tree; supplied by the caller, who knows what
/// an image is.
pub trait ImageMounter: Send + Sync {
    /// Mounts the image at `dir` (an existing empty directory) in a process that keeps
    /// serving it after the caller exits, logging to `log`; returns once the mount is ready,
    /// with that process's pid.
    fn mount(&self, dir: &Path, log: &Path) -> Result<u32, BoxError>;

    /// Unmounts the image mount at `dir`, also one whose process died; when it is busy,
    /// lazily (it goes away when its last user lets go).
    fn unmount(&self, dir: &Path) -> Result<(), BoxError>;
}

/// The shared mounts under one directory.
#[derive(Debug, Clone)]
pub struct SharedMounts {
    dir: PathBuf,
}

/// A run's hold on an image mount: released (and the mount unmounted when it was the last)
/// by [`Lease::release`], or on drop.
pub struct Lease {
    image_dir: PathBuf,
    registration: PathBuf,
    mounter: Arc<dyn ImageMounter>,
    released: bool,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("image_dir", &self.image_dir)
            .field("registration", &self.registration)
            .finish()
    }
}

/// Tells the registrations of one process apart.
static SEQUENCE: AtomicU32 = AtomicU32::new(0);

/// The lock of one image directory, held while alive.
struct Locked {
    _file: File,
}

fn private_dir(path: &Path) -> Result<(), Error> {
    match fs::DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let meta = fs::symlink_metadata(path).map_err(|e| Error::io("inspect", path, e))?;
            if meta.is_dir() && meta.uid() == rustix::process::geteuid().as_raw() {
                Ok(())
            } else {
                Err(Error::io(
                    "use",
                    path,
                    std::io::Error::other(
                        "it is not a directory of this user (clip does not follow a symlink \
                         here): remove it",
                    ),
                ))
            }
        }
        Err(e) => Err(Error::io("create", path, e)),
    }
}

impl SharedMounts {
    /// The shared mounts kept in `dir`, a private directory of the caller (created if
    /// missing, `0700`).
    pub fn new(dir: impl Into<PathBuf>) -> SharedMounts {
        SharedMounts { dir: dir.into() }
    }

    /// The directory of image `key`.
    pub fn image_dir(&self, key: &str) -> PathBuf {
        self.dir.join(key)
    }

    /// The mountpoint of image `key`.
    pub fn mountpoint(&self, key: &str) -> PathBuf {
        self.image_dir(key).join("mnt")
    }

    /// Holds the mount of image `key` (`[0-9a-z]+`, e.g. the manifest digest's hex),
    /// mounting it with `mounter` unless a live run holds it already.
    pub fn acquire(&self, key: &str, mounter: Arc<dyn ImageMounter>) -> Result<Lease, Error> {
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(Error::io(
                "use the image key",
                key,
                std::io::Error::from(std::io::ErrorKind::InvalidInput),
            ));
        }
        private_dir(&self.dir)?;
        let image_dir = self.image_dir(key);
        let _lock = lock(&image_dir, true)?
            .ok_or_else(|| Error::io("lock", &image_dir, std::io::ErrorKind::NotFound.into()))?;
        let runs = image_dir.join("runs");
        private_dir(&runs)?;
        let live = prune(&runs);
        let mnt = image_dir.join("mnt");
        let mut mounted = mountinfo::is_mountpoint(&mnt);
        if mounted && is_stale(&mnt) {
            tracing::warn!(
                mountpoint = %mnt.display(),
                "the image mount's process died (stale mount): clearing it and mounting again"
            );
            mounter.unmount(&mnt).map_err(|source| Error::ImageMount {
                action: "clearing the stale",
                path: mnt.clone(),
                source,
            })?;
            mounted = false;
        }
        if !mounted {
            private_dir(&mnt)?;
            let log = image_dir.join("mount.log");
            match mounter.mount(&mnt, &log) {
                Ok(pid) => {
                    if let Some(id) = ProcessId::of(pid) {
                        write_file(&image_dir.join("daemon"), &id.to_string())?;
                    }
                    tracing::debug!(mountpoint = %mnt.display(), pid, "image mounted");
                }
                Err(source) => {
                    if live == 0 {
                        remove_image_dir(&image_dir);
                    }
                    return Err(Error::ImageMount {
                        action: "mounting",
                        path: mnt,
                        source,
                    });
                }
            }
        } else {
            tracing::debug!(mountpoint = %mnt.display(), live, "image already mounted: sharing it");
        }
        let me = ProcessId::current_or_error()?;
        let registration = runs.join(format!(
            "{}.{}",
            me.pid,
            SEQUENCE.fetch_add(1, Ordering::Relaxed)
        ));
        write_file(&registration, &me.to_string())?;
        Ok(Lease {
            image_dir,
            registration,
            mounter,
            released: false,
        })
    }
}

impl Lease {
    /// The image's read-only mount.
    pub fn mountpoint(&self) -> PathBuf {
        self.image_dir.join("mnt")
    }

    /// Drops this run's hold; the last run out unmounts the image and removes its
    /// directory.
    pub fn release(mut self) -> Result<(), Error> {
        self.released = true;
        self.release_inner()
    }

    fn release_inner(&self) -> Result<(), Error> {
        let Some(_lock) = lock(&self.image_dir, false)? else {
            return Ok(());
        };
        let _ = fs::remove_file(&self.registration);
        let runs = self.image_dir.join("runs");
        if prune(&runs) > 0 {
            return Ok(());
        }
        let mnt = self.mountpoint();
        if mountinfo::is_mountpoint(&mnt) {
            self.mounter
                .unmount(&mnt)
                .map_err(|source| Error::ImageMount {
                    action: "unmounting",
                    path: mnt.clone(),
                    source,
                })?;
            tracing::debug!(mountpoint = %mnt.display(), "last run out: image unmounted");
        }
        remove_image_dir(&self.image_dir);
        Ok(())
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.released {
            if let Err(e) = self.release_inner() {
                tracing::warn!("{e}");
            }
        }
    }
}

/// Locks `image_dir/lock`, creating the directory when `create`; `None` when the directory
/// is gone and not to be created. Starts over when the locked file was removed meanwhile.
fn lock(image_dir: &Path, create: bool) -> Result<Option<Locked>, Error> {
    let path = image_dir.join("lock");
    loop {
        if create {
            private_dir(image_dir)?;
        }
        let file = match fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if !create && e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("open the lock", &path, e)),
        };
        rustix::fs::flock(&file, FlockOperation::LockExclusive)
            .map_err(|e| Error::io("lock", &path, e.into()))?;
        let held = file.metadata().map_err(|e| Error::io("stat", &path, e))?;
        match fs::symlink_metadata(&path) {
            Ok(now) if now.ino() == held.ino() && now.dev() == held.dev() => {
                return Ok(Some(Locked { _file: file }))
            }
            // Removed (and maybe made again) by a run that released it: start over.
            _ if create => continue,
            _ => return Ok(None),
        }
    }
}

/// Removes the registrations of processes that are gone; returns how many live ones remain.
fn prune(runs: &Path) -> usize {
    let Ok(entries) = fs::read_dir(runs) else {
        return 0;
    };
    let mut live = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        let alive = fs::read_to_string(&path)
            .ok()
            .and_then(|s| ProcessId::parse(&s))
            .is_some_and(|p| p.is_alive());
        if alive {
            live += 1;
        } else {
            tracing::info!(registration = %path.display(), "pruning the registration of a run that is gone");
            let _ = fs::remove_file(&path);
        }
    }
    live
}

/// A FUSE mount whose process died answers `ENOTCONN` — to `statfs`, which always reaches
/// the filesystem; `stat` of its root may be answered from the kernel's attribute cache.
fn is_stale(mnt: &Path) -> bool {
    matches!(rustix::fs::statfs(mnt), Err(e) if e == rustix::io::Errno::NOTCONN)
}

fn write_file(path: &Path, text: &str) -> Result<(), Error> {
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .and_then(|mut f| f.write_all(format!("{text}\n").as_bytes()))
        .map_err(|e| Error::io("write", path, e))
}

/// Removes an image directory once nothing is mounted in it (best effort; the lock file
/// goes last).
fn remove_image_dir(dir: &Path) {
    if !mountinfo::mounts_below(dir).is_empty() {
        tracing::warn!(dir = %dir.display(), "still mounted: left in place");
        return;
    }
    for name in ["mnt", "runs"] {
        let _ = fs::remove_dir(dir.join(name));
    }
    for name in ["daemon", "mount.log", "lock"] {
        let _ = fs::remove_file(dir.join(name));
    }
    if let Err(e) = fs::remove_dir(dir) {
        tracing::debug!(dir = %dir.display(), "not removed: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Records calls; "mounts" by writing its log (no real mount without root).
    #[derive(Default)]
    struct FakeMounter {
        calls: Mutex<Vec<String>>,
    }

    impl ImageMounter for FakeMounter {
        fn mount(&self, _dir: &Path, log: &Path) -> Result<u32, BoxError> {
            self.calls.lock().unwrap().push("mount".into());
            fs::write(log, b"mounted\n")?;
            Ok(std::process::id())
        }
        fn unmount(&self, _dir: &Path) -> Result<(), BoxError> {
            self.calls.lock().unwrap().push("unmount".into());
            Ok(())
        }
    }

    #[test]
    fn registrations_and_cleanup_without_a_real_mount() {
        let tmp = tempfile::tempdir().unwrap();
        let shared = SharedMounts::new(tmp.path().join("images"));
        let mounter = Arc::new(FakeMounter::default());
        // Nothing is really mounted, so every acquire mounts; what matters here is the
        // bookkeeping: registrations, pruning and the directory's removal.
        let a = shared.acquire("abc123", mounter.clone()).unwrap();
        let runs = shared.image_dir("abc123").join("runs");
        assert_eq!(fs::read_dir(&runs).unwrap().count(), 1);
        // A registration of a dead process is pruned by the next acquire.
        fs::write(runs.join("999999999.0"), "999999999 1\n").unwrap();
        let b = shared.acquire("abc123", mounter.clone()).unwrap();
        assert_eq!(fs::read_dir(&runs).unwrap().count(), 2);
        assert!(shared.image_dir("abc123").join("daemon").exists());
        a.release().unwrap();
        assert!(shared.image_dir("abc123").exists(), "b still holds it");
        drop(b);
        assert!(!shared.image_dir("abc123").exists(), "last out removes it");
        assert!(shared.acquire("../x", mounter.clone()).is_err());
    }

    #[test]
    fn a_failed_mount_leaves_nothing() {
        struct Failing;
        impl ImageMounter for Failing {
            fn mount(&self, _: &Path, _: &Path) -> Result<u32, BoxError> {
                Err("registry unreachable".into())
            }
            fn unmount(&self, _: &Path) -> Result<(), BoxError> {
                Ok(())
            }
        }
        let tmp = tempfile::tempdir().unwrap();
        let shared = SharedMounts::new(tmp.path().join("images"));
        let e = shared
            .acquire("k", Arc::new(Failing))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("mounting the image mount") && e.contains("registry unreachable"),
            "{e}"
        );
        assert!(!shared.image_dir("k").exists());
    }
}
