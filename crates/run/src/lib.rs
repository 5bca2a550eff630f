//! Running a container from a read-only image tree, as `docker run` does: the parts of
//! `clip run` that are not about clip's index.
//!
//! # What this crate owns, and what it must not touch
//!
//! It owns **the container around an image tree**: the OCI runtime config generated from an
//! image config and `docker run`-style options ([`spec`]: command, environment, working
//! directory, user, stop signal, mounts, capabilities, namespaces), the user resolved against
//! the image's `/etc/passwd` and `/etc/group` ([`user`]), the bundle with its overlay — a
//! fresh upper directory on the read-only image as the lower layer ([`Bundle`]), the OCI
//! runtime's invocation and signal forwarding ([`Runtime`]), and the registry of read-only
//! image mounts shared by the runs of one image ([`SharedMounts`]).
//!
//! It **must not know the archive format's bytes nor speak to a registry**: it takes the
//! image config JSON and a lower directory, and mounting an image is the caller's
//! [`ImageMounter`]. It never writes into the lower directory (the overlay's upper layer takes
//! every write) and resolves every path inside the image's root, never through a symlink to
//! the host. No `unsafe`.
//!
//! # A run, in order
//!
//! 1. [`ImageConfig::from_json`] and [`spec::plan`]: everything the options and the image
//!    config decide, checked before anything is mounted.
//! 2. [`SharedMounts::acquire`]: the image's read-only mount, shared with the other runs of
//!    the image.
//! 3. [`user::resolve_in_root`] against that mount, [`Bundle::create`],
//!    [`Bundle::mount_overlay`], [`Bundle::make_dir`] for the working directory,
//!    [`spec::runtime_spec`] and [`Bundle::write_spec`].
//! 4. [`Runtime::run`], [`Running::wait`] while a [`Signaller`] forwards signals.
//! 5. [`Runtime::delete_if_ours`], [`Bundle::remove`], [`Lease::release`] — also on every
//!    error path (the guards do it on drop).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod bundle;
mod error;
mod mountinfo;
mod proc;
mod runtime;
mod shared;
pub mod spec;
pub mod user;

pub use crate::bundle::Bundle;
pub use crate::error::{BoxError, Error};
pub use crate::mountinfo::is_mountpoint;
pub use crate::proc::ProcessId;
pub use crate::runtime::{Exit, Running, Runtime, Signaller};
pub use crate::shared::{ImageMounter, Lease, SharedMounts};
pub use crate::spec::{ImageConfig, Network, Plan, RunOptions, Volume};
pub use crate::user::{ExecUser, UserError};
