//! The error types of this crate.

use std::io;
use std::path::PathBuf;

/// A boxed error from a caller-supplied [`ImageMounter`](crate::ImageMounter).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What can go wrong building or running a container. Each message names what was wrong and,
/// where there is one, what to do.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The image config JSON cannot be read.
    #[error("the image config is not valid JSON of an OCI image config: {detail}")]
    ImageConfig {
        /// What the parser said.
        detail: String,
    },

    /// Neither the image nor the command line gives a command to run.
    #[error(
        "no command to run: the image has neither Entrypoint nor Cmd; give one after the image \
         (clip run IMAGE COMMAND [ARG...])"
    )]
    NoCommand,

    /// A working directory that is not absolute.
    #[error("the working directory {dir:?} ({source_of_it}) is not an absolute path; give one that starts with /")]
    RelativeWorkdir {
        /// The directory.
        dir: String,
        /// Where it came from (`-w` or the image's WorkingDir).
        source_of_it: &'static str,
    },

    /// An environment setting (`-e`, `--env-file`, the image's Env) is malformed.
    #[error("environment variable {entry:?}{at}: {detail}")]
    Env {
        /// The offending entry.
        entry: String,
        /// Where it was (` in FILE line N`), or empty.
        at: String,
        /// What is wrong with it.
        detail: &'static str,
    },

    /// A `-v SRC:DST[:OPTS]` that cannot be used.
    #[error("volume {spec:?}: {detail}")]
    Volume {
        /// The volume as given.
        spec: String,
        /// What is wrong with it.
        detail: String,
    },

    /// A signal name or number that is not a signal.
    #[error(
        "{signal:?} ({source_of_it}) is not a signal; use a name like SIGTERM or TERM, or a number"
    )]
    Signal {
        /// As given.
        signal: String,
        /// Where it came from.
        source_of_it: &'static str,
    },

    /// An option value that is not acceptable (container name, hostname, network mode).
    #[error("{option} {value:?}: {detail}")]
    Option {
        /// The option (`--name`, `--hostname`, `--network`).
        option: &'static str,
        /// The value given.
        value: String,
        /// What is wrong with it.
        detail: &'static str,
    },

    /// The container's user cannot be resolved.
    #[error(transparent)]
    User(#[from] crate::user::UserError),

    /// A system call on a path failed.
    #[error("cannot {action} {}: {source}", .path.display())]
    Io {
        /// What was being done (`create`, `mount the overlay at`, ...).
        action: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The system's error.
        #[source]
        source: io::Error,
    },

    /// A path inside the container's root that cannot be created or used.
    #[error("{path:?} in the container's root filesystem: {detail}")]
    InRoot {
        /// The path inside the container.
        path: String,
        /// What went wrong.
        detail: String,
    },

    /// The image's read-only mount could not be set up or taken down.
    #[error("{action} the image mount at {}: {source}", .path.display())]
    ImageMount {
        /// `mounting`, `unmounting`.
        action: &'static str,
        /// The mountpoint.
        path: PathBuf,
        /// What the mounter said.
        #[source]
        source: BoxError,
    },

    /// The OCI runtime could not be started or answered with an error.
    #[error("{runtime} {action}: {detail}")]
    Runtime {
        /// The runtime program.
        runtime: String,
        /// What it was asked (`run`, `kill`, `delete`).
        action: &'static str,
        /// What happened.
        detail: String,
    },

    /// A container of that name exists already.
    #[error(
        "a container named {name:?} exists already ({runtime} list shows it); choose another \
         --name, or remove it with `{runtime} delete --force {name}`"
    )]
    ContainerExists {
        /// The name.
        name: String,
        /// The runtime program.
        runtime: String,
    },

    /// The runtime config could not be built (a bug: every required field is set).
    #[error("cannot build the runtime config's {part}: {detail}")]
    BuildSpec {
        /// Which part.
        part: &'static str,
        /// What the builder said.
        detail: String,
    },

    /// Writing `config.json` failed.
    #[error("cannot write the runtime config {}: {detail}", .path.display())]
    WriteSpec {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
}

impl Error {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Error {
        Error::Io {
            action,
            path: path.into(),
            source,
        }
    }
}
