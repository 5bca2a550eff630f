//! Mounting, unmounting, and reading `/proc/self/mountinfo`.

use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread::{self, JoinHandle};

use clip_fs::FsCore;
use fuser::{Config, MountOption, Session, SessionACL};
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use rustix::mount::{MountFlags, UnmountFlags};
use tracing::{debug, info, warn};

use crate::adapter::ClipFs;
use crate::error::MountError;

/// The name clip mounts carry: the source in `/proc/mounts` and the type's subtype
/// (`fuse.clip`). `unmount` only touches mounts that carry it.
const FS_NAME: &str = "clip";

/// Read-ahead window set on the mount's backing device, in KiB: larger than the 128 KiB the
/// kernel offers at init, and a multiple of the largest FUSE request (`max_pages_limit`,
/// 1 MiB by default), so sequential readers make fewer, larger requests.
const READ_AHEAD_KB: u32 = 1024;

/// How to mount.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountOptions {
    /// Let every user in (`allow_other`, and no uid filter in the session). Needed when
    /// processes of other users read the mount directly, e.g. a container running as a
    /// non-root `USER` without an overlay in between. Unprivileged mounts need
    /// `user_allow_other` in `/etc/fuse.conf` for it.
    pub allow_other: bool,
    /// Threads reading requests from the kernel (lookups, getattr, listings, xattrs).
    pub threads: usize,
    /// Threads serving file reads that may wait on a fetch (reads of bytes that are not
    /// cached). Such reads beyond this many in flight queue; metadata requests and reads of
    /// cached bytes never do.
    pub read_workers: usize,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            allow_other: false,
            threads: 8,
            read_workers: 8,
        }
    }
}

/// A live mount, served by threads of this process until it is unmounted.
///
/// [`Mounted::wait`] blocks until someone unmounts it (`clip umount`, `umount`, or
/// [`Unmounter::unmount`] from another thread); [`Mounted::unmount`] unmounts and waits.
/// Dropping it unmounts too (best effort).
#[derive(Debug)]
pub struct Mounted {
    mountpoint: PathBuf,
    session: Option<JoinHandle<io::Result<()>>>,
}

/// Unmounts a [`Mounted`] from another thread (a signal handler thread, typically) while its
/// owner waits in [`Mounted::wait`]. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Unmounter {
    mountpoint: PathBuf,
}

/// Mounts `core` read-only at `mountpoint` and returns once the kernel has the mount (the
/// FUSE handshake is done and the serving threads are started): a process may signal
/// readiness right after.
///
/// The mount is read-only, `nodev` and `nosuid`, named `clip` (type `fuse.clip`), with the
/// kernel checking permissions (`default_permissions`) against the image's modes and owners.
pub fn mount(
    core: FsCore,
    mountpoint: &Path,
    options: &MountOptions,
) -> Result<Mounted, MountError> {
    if !Path::new("/dev/fuse").exists() {
        return Err(MountError::NoFuseDevice);
    }
    let path = check_mountpoint(mountpoint)?;
    let fs = ClipFs::new(core, options.read_workers).map_err(|source| MountError::Io {
        action: "start read threads for",
        path: path.clone(),
        source,
    })?;
    let config = config(options);
    let session = if rustix::process::geteuid().is_root() {
        // As root clip mounts with mount(2) itself and hands fuser the connection: the session
        // then never unmounts anything on its own (fuser 0.18 would, at the end of a session,
        // unmount whatever is at the path by then, logging "Invalid argument" when it is
        // nothing). Unmounting is ours alone.
        let fd = mount_syscall(&path, options).map_err(|e| mount_error(&path, e))?;
        Session::from_fd(fs, fd, config.acl, config).map_err(|e| {
            let _ = rustix::mount::unmount(&path, UnmountFlags::DETACH);
            mount_error(&path, e)
        })?
    } else {
        // Unprivileged: fuser goes through the setuid fusermount3.
        Session::new(fs, &path, &config).map_err(|e| mount_error(&path, e))?
    };
    set_read_ahead(&path);
    let thread = thread::Builder::new()
        .name("clip-fuse".into())
        .spawn(move || session.run())
        .map_err(|source| MountError::Io {
            action: "start the FUSE session for",
            path: path.clone(),
            source,
        })?;
    info!(mountpoint = %path.display(), "mounted");
    Ok(Mounted {
        mountpoint: path,
        session: Some(thread),
    })
}

impl Mounted {
    /// Where it is mounted (canonical path).
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// A handle that unmounts this mount from any thread.
    pub fn unmounter(&self) -> Unmounter {
        Unmounter {
            mountpoint: self.mountpoint.clone(),
        }
    }

    /// False once the session has ended (the mount is gone).
    pub fn is_running(&self) -> bool {
        self.session.as_ref().is_some_and(|s| !s.is_finished())
    }

    /// Serves until the mount goes away: unmounted from outside (`clip umount`, `umount`,
    /// [`Unmounter::unmount`]) or the kernel connection ends. Not interrupted by signals:
    /// unmount from a signal-handling thread to end it. After a lazy detach (the mount was
    /// busy) it returns when the last open file there is closed.
    pub fn wait(mut self) -> Result<(), MountError> {
        join(&self.mountpoint, self.session.take())
    }

    /// Unmounts (as [`unmount`] does) and waits for the session to end. When the mount was
    /// busy and had to be detached lazily, returns at once: processes that still have files
    /// open keep being served while this process lives, and get errors once it exits. When
    /// someone else unmounted it already, returns `Ok` too.
    pub fn unmount(mut self) -> Result<(), MountError> {
        match unmount_path(&self.mountpoint) {
            Ok(Unmounted::Clean) => join(&self.mountpoint, self.session.take()),
            Ok(Unmounted::Detached) => {
                self.session.take();
                Ok(())
            }
            // Unmounted by someone else meanwhile: the session ends by itself (at once, or when
            // the last file of a lazily detached mount closes); never wait for the latter.
            Err(MountError::NotMounted { .. }) => match self.session.take() {
                Some(s) if s.is_finished() => join(&self.mountpoint, Some(s)),
                _ => Ok(()),
            },
            // Still mounted and served while this process lives; the caller decides.
            Err(e) => {
                self.session.take();
                Err(e)
            }
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let Some(session) = self.session.take() else {
            return;
        };
        match unmount_path(&self.mountpoint) {
            Ok(Unmounted::Clean) => {
                let _ = session.join();
            }
            Ok(Unmounted::Detached) | Err(MountError::NotMounted { .. }) => {}
            Err(e) => warn!(mountpoint = %self.mountpoint.display(), "{e}"),
        }
    }
}

impl Unmounter {
    /// Unmounts, as [`unmount`] does; the owner's [`Mounted::wait`] then returns.
    pub fn unmount(&self) -> Result<(), MountError> {
        unmount_path(&self.mountpoint).map(|_| ())
    }
}

/// Unmounts the clip mount at `mountpoint`, live or stale (its process died: `ENOTCONN`).
///
/// Tries `umount2(2)`; when the mount is busy (a process has a file open or its working
/// directory there), detaches it lazily (`MNT_DETACH`: it disappears from the tree now and is
/// freed when the last user lets go). Without the privilege for `umount2` it runs
/// `fusermount3 -u` (then `-u -z` when busy). Refuses mounts that are not clip mounts.
pub fn unmount(mountpoint: &Path) -> Result<(), MountError> {
    unmount_path(mountpoint).map(|_| ())
}

/// Whether `path` is a mount point (of anything), from `/proc/self/mountinfo`. Works on a
/// stale FUSE mount, which cannot be `stat`ed.
pub fn is_mountpoint(path: &Path) -> bool {
    let Ok(path) = resolve_no_follow(path) else {
        return false;
    };
    find_mount(&path).is_some()
}

fn config(options: &MountOptions) -> Config {
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName(FS_NAME.into()),
        // A kernel mount option as root, passed on to fusermount3 otherwise: either way the
        // type shows as `fuse.clip`.
        MountOption::CUSTOM(format!("subtype={FS_NAME}")),
        MountOption::RO,
        MountOption::NoDev,
        // The image's setuid binaries must not gain host privileges through this mount; an
        // overlay mounted on top (a container's rootfs) has its own nosuid setting.
        MountOption::NoSuid,
        MountOption::DefaultPermissions,
    ];
    // `All` makes fuser pass `allow_other` and filter no uid. `Owner` (fuser refuses other
    // uids with EACCES) matches what the kernel does without `allow_other` anyway: only the
    // mounting user gets in. An overlay on top reaches this mount with its mounter's
    // credentials, so a root-mounted lower layer serves containers of any USER.
    config.acl = if options.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(options.threads.max(1));
    config.clone_fd = true;
    config
}

/// Opens `/dev/fuse` and mounts the connection at `path` (root only); returns the connection.
/// The same options as [`config`] gives fuser: `ro,nodev,nosuid,default_permissions`, source
/// `clip`, type `fuse.clip`, and `allow_other` when asked for.
fn mount_syscall(path: &Path, options: &MountOptions) -> io::Result<OwnedFd> {
    use std::os::fd::AsRawFd as _;
    use std::os::unix::fs::MetadataExt as _;
    let dev = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")?;
    let root_mode = std::fs::metadata(path)?.mode() & libc_s_ifmt();
    let mut data = format!(
        "fd={},rootmode={root_mode:o},user_id={},group_id={},default_permissions",
        dev.as_raw_fd(),
        rustix::process::getuid().as_raw(),
        rustix::process::getgid().as_raw(),
    );
    if options.allow_other {
        data.push_str(",allow_other");
    }
    let data = CString::new(data).map_err(io::Error::other)?;
    rustix::mount::mount(
        FS_NAME,
        path,
        format!("fuse.{FS_NAME}"),
        MountFlags::RDONLY | MountFlags::NODEV | MountFlags::NOSUID,
        data.as_c_str(),
    )?;
    Ok(OwnedFd::from(dev))
}

/// The file type bits of a mode (`S_IFMT`).
const fn libc_s_ifmt() -> u32 {
    0o170_000
}

fn check_mountpoint(mountpoint: &Path) -> Result<PathBuf, MountError> {
    let given = mountpoint.to_path_buf();
    match std::fs::metadata(mountpoint) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => return Err(MountError::NotADirectory { path: given }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(MountError::MountpointMissing { path: given })
        }
        Err(e) if e.raw_os_error() == Some(Errno::NOTCONN.raw_os_error()) => {
            return Err(MountError::StaleMount { path: given })
        }
        Err(source) => {
            return Err(MountError::Io {
                action: "use as a mountpoint",
                path: given,
                source,
            })
        }
    }
    let path = std::fs::canonicalize(mountpoint).map_err(|source| MountError::Io {
        action: "resolve the mountpoint",
        path: given,
        source,
    })?;
    if find_mount(&path).is_some() {
        return Err(MountError::AlreadyMounted { path });
    }
    Ok(path)
}

fn mount_error(path: &Path, e: io::Error) -> MountError {
    let path = path.to_path_buf();
    match e.kind() {
        io::ErrorKind::PermissionDenied => MountError::PermissionDenied {
            path,
            detail: e.to_string(),
        },
        _ if e.raw_os_error() == Some(Errno::PERM.raw_os_error()) => MountError::PermissionDenied {
            path,
            detail: e.to_string(),
        },
        _ => MountError::Io {
            action: "mount",
            path,
            source: e,
        },
    }
}

/// Raises the read-ahead of the mount's backing device (best effort: root only).
fn set_read_ahead(path: &Path) {
    let Some(entry) = find_mount(path) else {
        return;
    };
    let file = format!("/sys/class/bdi/{}/read_ahead_kb", entry.dev);
    match std::fs::write(&file, READ_AHEAD_KB.to_string()) {
        Ok(()) => debug!("{file} = {READ_AHEAD_KB}"),
        Err(e) => debug!("cannot set {file}: {e}"),
    }
}

fn join(path: &Path, session: Option<JoinHandle<io::Result<()>>>) -> Result<(), MountError> {
    let Some(session) = session else {
        return Ok(());
    };
    match session.join() {
        Ok(Ok(())) => {
            info!(mountpoint = %path.display(), "unmounted");
            Ok(())
        }
        Ok(Err(source)) => Err(MountError::Session {
            path: path.to_path_buf(),
            source,
        }),
        Err(_) => Err(MountError::SessionPanicked {
            path: path.to_path_buf(),
        }),
    }
}

/// How an unmount went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Unmounted {
    /// Gone.
    Clean,
    /// Busy: detached from the tree, freed when its last user lets go.
    Detached,
}

fn unmount_path(mountpoint: &Path) -> Result<Unmounted, MountError> {
    let target = MountTarget::open(mountpoint)?;
    let path = target.path.clone();
    let Some(entry) = target.mount() else {
        return Err(MountError::NotMounted { path });
    };
    if !entry.is_clip() {
        return Err(MountError::NotAClipMount {
            path,
            fstype: entry.fstype,
            source_name: entry.source,
        });
    }
    // The descriptor would keep the mount busy: let go of it, and unmount the path it resolved
    // to, never following a symlink there.
    drop(target);
    let nofollow = UnmountFlags::NOFOLLOW;
    match rustix::mount::unmount(&path, nofollow) {
        Ok(()) => Ok(Unmounted::Clean),
        Err(Errno::BUSY) => {
            rustix::mount::unmount(&path, nofollow | UnmountFlags::DETACH).map_err(|e| {
                MountError::Io {
                    action: "detach the busy mount",
                    path: path.clone(),
                    source: e.into(),
                }
            })?;
            warn!(
                mountpoint = %path.display(),
                "the mount was busy (files open, or a working directory there): detached it; \
                 it is freed when the last user lets go"
            );
            Ok(Unmounted::Detached)
        }
        Err(Errno::INVAL) => Err(MountError::NotMounted { path }),
        Err(Errno::PERM) => fusermount_unmount(&path),
        Err(e) => Err(MountError::Io {
            action: "unmount",
            path,
            source: e.into(),
        }),
    }
}

/// A mountpoint opened without following a symlink at its last component (`O_PATH |
/// O_NOFOLLOW`, which works on a stale FUSE mount too), the path the kernel resolved it to,
/// and the id of the mount it is on: what is checked is the object the path named when it was
/// opened, identified by mount id rather than by a second lookup of the path.
struct MountTarget {
    /// Held while the checks run.
    _pinned: OwnedFd,
    /// The path as the kernel resolved it.
    path: PathBuf,
    /// The id of the mount the descriptor is on (`/proc/self/fdinfo`).
    mount_id: Option<u64>,
}

impl MountTarget {
    fn open(mountpoint: &Path) -> Result<MountTarget, MountError> {
        let io_err = |action: &'static str, source: io::Error| MountError::Io {
            action,
            path: mountpoint.to_path_buf(),
            source,
        };
        let fd = rustix::fs::open(
            mountpoint,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io_err("open", e.into()))?;
        let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
        let path =
            std::fs::read_link(format!("/proc/self/fd/{raw}")).map_err(|e| io_err("resolve", e))?;
        let mount_id = std::fs::read_to_string(format!("/proc/self/fdinfo/{raw}"))
            .ok()
            .and_then(|info| {
                info.lines()
                    .find_map(|l| l.strip_prefix("mnt_id:"))
                    .and_then(|v| v.trim().parse().ok())
            });
        Ok(MountTarget {
            _pinned: fd,
            path,
            mount_id,
        })
    }

    /// The mount whose root the descriptor is, if it is the root of one (not a directory
    /// inside a mount, nor a symlink).
    fn mount(&self) -> Option<MountEntry> {
        let id = self.mount_id?;
        let text = std::fs::read("/proc/self/mountinfo").ok()?;
        parse_mountinfo(&text)
            .into_iter()
            .find(|m| m.id == id)
            .filter(|m| m.mount_point == self.path)
    }
}

/// Unprivileged unmount through the setuid helper.
fn fusermount_unmount(path: &Path) -> Result<Unmounted, MountError> {
    let run = |lazy: bool| {
        let mut cmd = Command::new("fusermount3");
        cmd.arg("-u");
        if lazy {
            cmd.arg("-z");
        }
        cmd.arg("--").arg(path).output()
    };
    let fail = |stderr: String| MountError::Fusermount {
        path: path.to_path_buf(),
        stderr,
    };
    let out =
        run(false).map_err(|e| fail(format!("cannot run fusermount3: {e} (install fuse3)")))?;
    if out.status.success() {
        return Ok(Unmounted::Clean);
    }
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if !stderr.contains("busy") {
        return Err(fail(stderr));
    }
    let out = run(true).map_err(|e| fail(format!("cannot run fusermount3: {e}")))?;
    if out.status.success() {
        warn!(mountpoint = %path.display(), "the mount was busy: detached it lazily");
        Ok(Unmounted::Detached)
    } else {
        Err(fail(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ))
    }
}

/// An absolute path whose parent is canonical; the last component is not followed or
/// `stat`ed (a stale FUSE mount cannot be).
fn resolve_no_follow(path: &Path) -> io::Result<PathBuf> {
    let abs = std::path::absolute(path)?;
    match (abs.parent(), abs.file_name()) {
        (Some(parent), Some(name)) => Ok(std::fs::canonicalize(parent)?.join(name)),
        _ => Ok(abs),
    }
}

/// One line of `/proc/self/mountinfo`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct MountEntry {
    /// The mount's id.
    id: u64,
    /// `major:minor` of the mounted filesystem.
    dev: String,
    mount_point: PathBuf,
    fstype: String,
    source: String,
}

impl MountEntry {
    fn is_clip(&self) -> bool {
        self.source == FS_NAME || self.fstype == format!("fuse.{FS_NAME}")
    }
}

/// The topmost mount at `path`, if any.
fn find_mount(path: &Path) -> Option<MountEntry> {
    let text = std::fs::read("/proc/self/mountinfo").ok()?;
    parse_mountinfo(&text)
        .into_iter()
        .rev()
        .find(|m| m.mount_point == path)
}

fn parse_mountinfo(text: &[u8]) -> Vec<MountEntry> {
    text.split(|&b| b == b'\n')
        .filter_map(|line| {
            let fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
            let sep = fields.iter().position(|f| *f == b"-")?;
            let text = |f: &[u8]| String::from_utf8_lossy(&unescape(f)).into_owned();
            Some(MountEntry {
                id: std::str::from_utf8(fields.first()?).ok()?.parse().ok()?,
                dev: text(fields.get(2)?),
                mount_point: PathBuf::from(OsString::from_vec(unescape(fields.get(4)?))),
                fstype: text(fields.get(sep + 1)?),
                source: text(fields.get(sep + 2)?),
            })
        })
        .collect()
}

/// Undoes the kernel's octal escapes (`\040` for a space, ...).
fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while let Some(&b) = field.get(i) {
        let octal = field
            .get(i + 1..i + 4)
            .filter(|d| b == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)))
            .map(|d| d.iter().fold(0u32, |n, c| n * 8 + u32::from(c - b'0')));
        match octal.and_then(|n| u8::try_from(n).ok()) {
            Some(byte) => {
                out.push(byte);
                i += 4;
            }
            None => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_are_parsed_and_unescaped() {
        let text = b"22 1 0:21 / /proc rw,nosuid - proc proc rw\n\
            95 30 0:52 / /tmp/my\\040dir rw,nosuid,nodev,relatime shared:7 - fuse.clip clip ro,user_id=0\n\
            garbage\n";
        let entries = parse_mountinfo(text);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].mount_point, Path::new("/proc"));
        assert!(!entries[0].is_clip());
        assert_eq!(
            entries[1],
            MountEntry {
                id: 95,
                dev: "0:52".into(),
                mount_point: "/tmp/my dir".into(),
                fstype: "fuse.clip".into(),
                source: "clip".into(),
            }
        );
        assert!(entries[1].is_clip());
        assert_eq!(unescape(b"a\\134b\\01"), b"a\\b\\01");
    }

    #[test]
    fn options_ask_for_a_read_only_permission_checked_mount() {
        let c = config(&MountOptions::default());
        for o in [
            MountOption::RO,
            MountOption::NoDev,
            MountOption::NoSuid,
            MountOption::DefaultPermissions,
        ] {
            assert!(c.mount_options.contains(&o), "{o:?}");
        }
        assert_eq!(c.acl, SessionACL::Owner);
        assert_eq!(c.n_threads, Some(8));
        let c = config(&MountOptions {
            allow_other: true,
            threads: 0,
            read_workers: 1,
        });
        assert_eq!(c.acl, SessionACL::All);
        assert_eq!(c.n_threads, Some(1));
    }

    #[test]
    fn the_root_is_never_a_clip_mount_to_unmount() {
        assert!(is_mountpoint(Path::new("/")));
        assert!(matches!(
            unmount(Path::new("/")),
            Err(MountError::NotAClipMount { .. })
        ));
    }
}
