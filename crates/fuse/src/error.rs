//! The one error type of this crate.

use std::io;
use std::path::PathBuf;

/// What can go wrong mounting, serving or unmounting. Each message says what to do.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// The mountpoint does not exist.
    #[error("mountpoint {} does not exist; create it first (mkdir -p {path:?})", .path.display())]
    MountpointMissing {
        /// The mountpoint.
        path: PathBuf,
    },

    /// The mountpoint is not a directory.
    #[error("mountpoint {} is not a directory", .path.display())]
    NotADirectory {
        /// The mountpoint.
        path: PathBuf,
    },

    /// Something is already mounted there.
    #[error(
        "{} is already a mount point; unmount it first (`clip umount {path:?}` for a clip mount) \
         or choose another directory",
        .path.display()
    )]
    AlreadyMounted {
        /// The mountpoint.
        path: PathBuf,
    },

    /// A FUSE mount whose process died is still there (`ENOTCONN`).
    #[error(
        "{} is a stale mount whose process has exited (\"transport endpoint is not \
         connected\"); clear it with `clip umount {path:?}`",
        .path.display()
    )]
    StaleMount {
        /// The mountpoint.
        path: PathBuf,
    },

    /// `/dev/fuse` is missing.
    #[error(
        "/dev/fuse is missing: load the FUSE module (`modprobe fuse`), or run the container \
         with `--device /dev/fuse`"
    )]
    NoFuseDevice,

    /// The kernel or `fusermount3` refused.
    #[error(
        "permission denied mounting {}: {detail}; mount as root, or install fuse3 \
         (fusermount3) for unprivileged mounts (--allow-other then needs `user_allow_other` \
         in /etc/fuse.conf)",
        .path.display()
    )]
    PermissionDenied {
        /// The mountpoint.
        path: PathBuf,
        /// What the kernel or fusermount3 said.
        detail: String,
    },

    /// Nothing is mounted there.
    #[error("{} is not a mount point", .path.display())]
    NotMounted {
        /// The mountpoint.
        path: PathBuf,
    },

    /// Something other than a clip mount is mounted there; `clip umount` leaves it alone.
    #[error(
        "{} is a {fstype} mount of {source_name:?}, not a clip mount; use umount(8) if you \
         really mean it",
        .path.display()
    )]
    NotAClipMount {
        /// The mountpoint.
        path: PathBuf,
        /// Its filesystem type.
        fstype: String,
        /// Its source.
        source_name: String,
    },

    /// `fusermount3` (unprivileged unmount) failed.
    #[error(
        "fusermount3 could not unmount {}: {stderr}; try as root: umount -l {path:?}",
        .path.display()
    )]
    Fusermount {
        /// The mountpoint.
        path: PathBuf,
        /// What fusermount3 printed.
        stderr: String,
    },

    /// Another system call failed.
    #[error("cannot {action} {}", .path.display())]
    Io {
        /// What was being done ("mount", "unmount", ...).
        action: &'static str,
        /// The path it was done on.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },

    /// The FUSE session ended with an error (the kernel connection broke).
    #[error("the FUSE session of {} ended with an error", .path.display())]
    Session {
        /// The mountpoint.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },

    /// The FUSE session thread panicked (a bug).
    #[error("the FUSE session of {} panicked (a bug in clip)", .path.display())]
    SessionPanicked {
        /// The mountpoint.
        path: PathBuf,
    },
}
