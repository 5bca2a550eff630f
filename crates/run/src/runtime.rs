//! The OCI runtime (`runc`, `crun`, `runsc`): `run` in the foreground with the caller's
//! stdio, `kill`, and `delete` of what a run left behind.
//!
//! The runtime runs the container in the foreground (`RUNTIME run --bundle B --pid-file P
//! ID`): it sets up the terminal when the config asks for one (raw mode on the caller's
//! terminal, window size, copying), copies stdio otherwise, and exits with the container's
//! status (`128+N` when it was killed by signal N). Signals are forwarded with `RUNTIME kill
//! ID SIG` by a [`Signaller`]; one that arrives before the container runs (before the runtime
//! has written its pid file) is held and sent as soon as it does, so none is lost to the
//! window where there is no container yet to signal.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use rustix::event::{PollFd, PollFlags};
use rustix::fs::inotify;
use rustix::io::Errno;

use crate::bundle::Bundle;
use crate::spec::Network;
use crate::Error;

/// An OCI runtime program.
#[derive(Debug, Clone)]
pub struct Runtime {
    program: PathBuf,
    kind: Kind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Runsc,
    Other,
}

/// How the container ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The container ran and exited with this code (`128+N` when killed by signal N).
    Exited(i32),
    /// The runtime failed before the container's process ran (it wrote no pid file), with
    /// this exit code; it said why on stderr.
    NotStarted(i32),
}

impl Runtime {
    /// The runtime `program` (a name looked up in `PATH`, or a path). A program named
    /// `runsc` (gVisor) gets its network from a flag rather than from the config's network
    /// namespace: `--network=none` or `--network=host`.
    pub fn new(program: impl Into<PathBuf>) -> Runtime {
        let program = program.into();
        let kind = match program.file_name().and_then(|n| n.to_str()) {
            Some("runsc") => Kind::Runsc,
            _ => Kind::Other,
        };
        Runtime { program, kind }
    }

    /// The program, for messages.
    pub fn name(&self) -> String {
        self.program.display().to_string()
    }

    fn command(&self) -> Command {
        Command::new(&self.program)
    }

    fn error(&self, action: &'static str, detail: impl Into<String>) -> Error {
        Error::Runtime {
            runtime: self.name(),
            action,
            detail: detail.into(),
        }
    }

    fn output(&self, action: &'static str, args: &[&str]) -> Result<std::process::Output, Error> {
        self.command()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| self.spawn_error(action, e))
    }

    fn spawn_error(&self, action: &'static str, e: io::Error) -> Error {
        let hint = if e.kind() == io::ErrorKind::NotFound {
            " (is it installed? give its path with --runtime)"
        } else {
            ""
        };
        self.error(action, format!("cannot start it: {e}{hint}"))
    }

    /// The program.
    pub fn program(&self) -> &Path {
        &self.program
    }

    /// The status (`created`, `running`, `stopped`, ...) and bundle directory of container
    /// `id`, if the runtime knows such a container.
    pub fn status(&self, id: &str) -> Result<Option<(String, PathBuf)>, Error> {
        let out = self.output("state", &["state", id])?;
        if !out.status.success() {
            return Ok(None);
        }
        let state: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| {
            self.error("state", format!("answered something that is not JSON: {e}"))
        })?;
        Ok(Some((
            state["status"].as_str().unwrap_or("").to_string(),
            PathBuf::from(state["bundle"].as_str().unwrap_or("")),
        )))
    }

    /// The bundle directory of container `id`, if the runtime knows such a container.
    pub fn bundle_of(&self, id: &str) -> Result<Option<PathBuf>, Error> {
        Ok(self.status(id)?.map(|(_, bundle)| bundle))
    }

    /// Fails with [`Error::ContainerExists`] when the runtime knows a container `id`.
    pub fn check_name_free(&self, id: &str) -> Result<(), Error> {
        match self.bundle_of(id)? {
            Some(_) => Err(Error::ContainerExists {
                name: id.to_string(),
                runtime: self.name(),
            }),
            None => Ok(()),
        }
    }

    /// Starts the container of `bundle` as `id` in the foreground. Its stdout and stderr are
    /// this process's; its stdin is `stdin`. With `own_process_group` the runtime gets a
    /// process group of its own, so that a terminal's signals (Ctrl-C) reach only this
    /// process, which forwards them (without a terminal for the container); without it, the
    /// runtime can use this process's terminal (with one).
    pub fn run(
        &self,
        bundle: &Bundle,
        id: &str,
        network: Network,
        stdin: Stdio,
        own_process_group: bool,
    ) -> Result<Running, Error> {
        let pid_file = bundle.pid_file();
        // Watch for the pid file before the runtime can write it.
        let watch = inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK)
            .and_then(|fd| {
                inotify::add_watch(
                    &fd,
                    bundle.dir(),
                    inotify::WatchFlags::CLOSE_WRITE | inotify::WatchFlags::MOVED_TO,
                )
                .map(|_| fd)
            })
            .map_err(|e| Error::io("watch", bundle.dir(), e.into()))?;
        let mut cmd = self.command();
        if self.kind == Kind::Runsc {
            cmd.arg(match network {
                Network::None => "--network=none",
                Network::Host => "--network=host",
            });
        }
        cmd.arg("run")
            .arg("--bundle")
            .arg(bundle.dir())
            .arg("--pid-file")
            .arg(&pid_file)
            .arg(id)
            .stdin(stdin);
        if own_process_group {
            std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        }
        tracing::debug!(?cmd, "starting the container");
        let child = cmd.spawn().map_err(|e| self.spawn_error("run", e))?;
        let signaller = Signaller {
            runtime: self.clone(),
            id: id.to_string(),
            phase: Arc::new(Mutex::new(Phase::Starting(Vec::new()))),
        };
        Ok(Running {
            child,
            pid_file,
            watch,
            signaller,
        })
    }

    /// Sends `signal` to the init process of container `id`.
    pub fn kill(&self, id: &str, signal: i32) -> Result<(), Error> {
        let out = self.output("kill", &["kill", id, &signal.to_string()])?;
        if out.status.success() {
            Ok(())
        } else {
            Err(self.error(
                "kill",
                String::from_utf8_lossy(&out.stderr).trim().to_string(),
            ))
        }
    }

    /// Deletes container `id` (`delete --force`) if the runtime still knows it and it is
    /// the container of `bundle` (never another one that happens to have the name).
    /// Returns whether there was one to delete.
    pub fn delete_if_ours(&self, id: &str, bundle: &Path) -> Result<bool, Error> {
        match self.bundle_of(id)? {
            Some(b) if b == bundle => {}
            _ => return Ok(false),
        }
        let out = self.output("delete", &["delete", "--force", id])?;
        if out.status.success() {
            Ok(true)
        } else {
            Err(self.error(
                "delete",
                String::from_utf8_lossy(&out.stderr).trim().to_string(),
            ))
        }
    }
}

/// A container being run by its runtime.
#[derive(Debug)]
pub struct Running {
    child: Child,
    pid_file: PathBuf,
    watch: OwnedFd,
    signaller: Signaller,
}

#[derive(Debug)]
enum Phase {
    /// No container process yet: signals wait here.
    Starting(Vec<i32>),
    Started,
    Done,
}

/// Forwards signals to a container's init process; cheap to clone, usable from any thread.
#[derive(Debug, Clone)]
pub struct Signaller {
    runtime: Runtime,
    id: String,
    phase: Arc<Mutex<Phase>>,
}

impl Signaller {
    /// Sends `signal` to the container's init process now, or as soon as it runs; nothing
    /// once the container has exited.
    pub fn signal(&self, signal: i32) {
        {
            let mut phase = self.phase.lock().unwrap_or_else(|p| p.into_inner());
            match &mut *phase {
                Phase::Starting(pending) => {
                    tracing::debug!(signal, "container not running yet: signal held");
                    pending.push(signal);
                    return;
                }
                Phase::Done => return,
                Phase::Started => {}
            }
        }
        self.send(signal);
    }

    fn send(&self, signal: i32) {
        tracing::debug!(signal, id = %self.id, "forwarding");
        if let Err(e) = self.runtime.kill(&self.id, signal) {
            // The container may have exited meanwhile.
            tracing::debug!("forwarding signal {signal}: {e}");
        }
    }

    fn started(&self) {
        let pending = {
            let mut phase = self.phase.lock().unwrap_or_else(|p| p.into_inner());
            match std::mem::replace(&mut *phase, Phase::Started) {
                Phase::Starting(pending) => pending,
                other => {
                    *phase = other;
                    return;
                }
            }
        };
        for signal in pending {
            self.send(signal);
        }
    }

    fn done(&self) {
        *self.phase.lock().unwrap_or_else(|p| p.into_inner()) = Phase::Done;
    }
}

impl Running {
    /// Forwards signals to this container.
    pub fn signaller(&self) -> Signaller {
        self.signaller.clone()
    }

    /// The runtime process.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn pid_file_written(&self) -> bool {
        std::fs::read_to_string(&self.pid_file).is_ok_and(|s| s.trim().parse::<u32>().is_ok())
    }

    /// Waits until the runtime exits, releasing held signals once the container runs.
    pub fn wait(mut self) -> Result<Exit, Error> {
        let pidfd = rustix::process::pidfd_open(
            rustix::process::Pid::from_raw(self.child.id() as i32)
                .ok_or_else(|| Error::io("watch", "the runtime", Errno::SRCH.into()))?,
            rustix::process::PidfdFlags::empty(),
        );
        match pidfd {
            Ok(pidfd) => self.watch_until_exit(&pidfd)?,
            // Without pidfds (before Linux 5.3) held signals go when the runtime exits.
            Err(e) => tracing::debug!("pidfd_open: {e}"),
        }
        let status = self
            .child
            .wait()
            .map_err(|e| self.runtime_error("wait for", e))?;
        let started = self.pid_file_written();
        if started {
            self.signaller.started();
        }
        self.signaller.done();
        let code = match (
            status.code(),
            std::os::unix::process::ExitStatusExt::signal(&status),
        ) {
            (Some(c), _) => c,
            (None, Some(s)) => 128 + s,
            (None, None) => 128,
        };
        Ok(if started || code == 0 {
            Exit::Exited(code)
        } else {
            Exit::NotStarted(code)
        })
    }

    fn runtime_error(&self, action: &'static str, e: io::Error) -> Error {
        self.signaller.runtime.error(action, e.to_string())
    }

    fn watch_until_exit(&self, pidfd: &impl AsFd) -> Result<(), Error> {
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 4096];
        let mut started = false;
        loop {
            let mut fds = [
                PollFd::new(pidfd, PollFlags::IN),
                PollFd::new(&self.watch, PollFlags::IN),
            ];
            match rustix::event::poll(&mut fds, None) {
                Ok(_) => {}
                Err(Errno::INTR) => continue,
                Err(e) => return Err(self.runtime_error("wait for", e.into())),
            }
            let exited = !fds[0].revents().is_empty();
            if !fds[1].revents().is_empty() {
                // Drain the events; the pid file itself says whether the container runs.
                let mut reader = inotify::Reader::new(&self.watch, &mut buf);
                while reader.next().is_ok() {}
                if !started && self.pid_file_written() {
                    started = true;
                    self.signaller.started();
                }
            }
            if exited {
                return Ok(());
            }
        }
    }
}
