//! `clip run [OPTIONS] IMAGE|FILE.clip [COMMAND [ARG...]]`: a container from an index, as
//! `docker run` starts one.
//!
//! The image's read-only mount is shared by every run of the image (`clip_run::SharedMounts`,
//! served by a `clip mount` daemon started on first use and unmounted by the last run out);
//! each run gets a bundle of its own (an overlay of a fresh upper directory on the mount, and a
//! `config.json` made from the image config and the flags) and runs it with the OCI runtime in
//! the foreground. Signals are forwarded to the container's init; the exit code is the
//! container's. Everything the run set up is removed when it ends, however it ends (short of
//! SIGKILL, which the next run of the image recovers from as far as the shared mount goes).
//! The reusable parts live in `clip-run`; this module is the glue.

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use clip_archive::Archive;
use clip_run::spec::{self, RunOptions};
use clip_run::{
    BoxError, Bundle, Exit, ImageConfig, ImageMounter, Lease, Runtime, SharedMounts, Signaller,
};

use clip_sys::private::open_private_dir;

use crate::cmd_mount::{self, RecordArgs, ServeArgs};
use crate::source::{self, Located, SourceArgs};

/// The exit code of `clip run` when it fails itself, or the runtime fails before the
/// container runs (docker's 125).
pub const RUN_FAILED: u8 = 125;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Remove everything the run set up when it ends (always so; accepted for docker's sake).
    #[arg(long)]
    pub rm: bool,
    /// Keep the container's stdin attached to clip's (otherwise it reads /dev/null).
    #[arg(short, long)]
    pub interactive: bool,
    /// Give the container a terminal (clip's own must be one).
    #[arg(short, long)]
    pub tty: bool,
    /// Set an environment variable; KEY alone takes its value from clip's environment.
    #[arg(short = 'e', long = "env", value_name = "KEY[=VALUE]")]
    pub env: Vec<String>,
    /// Read environment variables from a file (KEY=VALUE or KEY per line, # comments).
    #[arg(long, value_name = "FILE")]
    pub env_file: Vec<PathBuf>,
    /// The working directory in the container (created if missing).
    #[arg(short = 'w', long, value_name = "DIR")]
    pub workdir: Option<String>,
    /// The user (and group) to run as: names from the image's /etc/passwd and /etc/group, or
    /// numbers.
    #[arg(short = 'u', long, value_name = "USER[:GROUP]")]
    pub user: Option<String>,
    /// Replace the image's Entrypoint ("" clears it); the image's Cmd is then dropped too.
    #[arg(long, value_name = "COMMAND")]
    pub entrypoint: Option<String>,
    /// Bind a host path into the container (SRC absolute; DST created if missing).
    #[arg(short = 'v', long = "volume", value_name = "SRC:DST[:ro]")]
    pub volumes: Vec<String>,
    /// Mount the container's root filesystem read-only.
    #[arg(long)]
    pub read_only: bool,
    /// `none`: a network namespace of its own with only loopback; `host`: the host's network.
    #[arg(long, default_value = "none", value_name = "none|host")]
    pub network: String,
    /// The container's hostname [default: the random part of its name].
    #[arg(long)]
    pub hostname: Option<String>,
    /// The container's name in the runtime (runc list) [default: clip-<12 hex digits>].
    #[arg(long)]
    pub name: Option<String>,
    /// The OCI runtime: runc, crun, runsc, or a path to one.
    #[arg(long, default_value = "runc", value_name = "PATH")]
    pub runtime: PathBuf,
    #[command(flatten)]
    pub serve: ServeArgs,
    #[command(flatten)]
    pub source: SourceArgs,
    #[command(flatten)]
    pub record: RecordArgs,
    /// The image (a reference, or a .clip index file), then the command to run instead of the image's Cmd
    /// and its arguments. Options end at the image, as for `docker run`: what follows it is
    /// the container's.
    #[arg(
        value_name = "IMAGE|FILE.clip [COMMAND [ARG...]]",
        required = true,
        num_args = 1..,
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub image_and_command: Vec<String>,
}

/// Mounts images with `clip mount --daemon` (the same code, started from this binary).
struct DaemonMounter {
    located: Located,
    source: SourceArgs,
    serve: ServeArgs,
    /// `--record`: the mount is this run's alone, and records into `record_to`.
    record: RecordArgs,
    /// The daemon started, with `--record` (whose end is waited for: it writes the profile).
    recording_daemon: Mutex<Option<clip_run::ProcessId>>,
}

/// How long the end of a recording mount daemon is waited for (it writes what it recorded).
const RECORDING_DAEMON_EXIT: std::time::Duration = std::time::Duration::from_secs(60);

impl ImageMounter for DaemonMounter {
    fn mount(&self, dir: &Path, log: &Path) -> Result<u32, BoxError> {
        // `allow_other`: the container's processes may run as any user; the mountpoint
        // itself sits in a private (0700) directory, so no other host user reaches it.
        let (pid, _) = cmd_mount::spawn_daemon(
            &self.located,
            dir,
            &self.source,
            &self.serve,
            &self.record,
            true,
            Some(log),
        )
        .map_err(|e| format!("{e:#}"))?;
        if self.record.record {
            *self
                .recording_daemon
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = clip_run::ProcessId::of(pid);
        }
        Ok(pid)
    }

    fn unmount(&self, dir: &Path) -> Result<(), BoxError> {
        match clip_fuse::unmount(dir) {
            Ok(()) | Err(clip_fuse::MountError::NotMounted { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        let daemon = *self
            .recording_daemon
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(daemon) = daemon {
            if !daemon.wait_exit(RECORDING_DAEMON_EXIT) {
                tracing::warn!(pid = daemon.pid, "the recording mount daemon did not exit");
            }
        }
        Ok(())
    }
}

/// What the signal thread and the main thread share.
#[derive(Default)]
struct SignalState {
    /// A terminating signal received before the container was started: do not start it.
    cancelled: Option<i32>,
    /// Once the container is being run: where signals go.
    signaller: Option<Signaller>,
    /// INT, TERM and HUP received so far.
    terminations: u32,
}

/// `clip run`: the container's exit code, or an error (exit code [`RUN_FAILED`]).
pub fn run(args: Args) -> Result<u8> {
    if !rustix::process::geteuid().is_root() {
        bail!(
            "clip run needs root: it mounts an overlay and runs the container with {} as root",
            args.runtime.display()
        );
    }
    let (image_arg, command) = args
        .image_and_command
        .split_first()
        .context("give an image: clip run [OPTIONS] IMAGE|FILE.clip [COMMAND [ARG...]]")?;
    // The index: the file given, or the image's (local store, its registry, or made here).
    let located = source::locate(image_arg, &args.source, false)?;
    let index = &located.path;
    let (reference, digest, config_json, platform) = {
        let file =
            std::fs::File::open(index).with_context(|| format!("opening {}", index.display()))?;
        let mapping = clip_sys::Mapping::new(&file)
            .with_context(|| format!("mapping {}", index.display()))?;
        let archive =
            Archive::open(&mapping).with_context(|| format!("reading {}", index.display()))?;
        let meta = archive.meta();
        (
            meta.reference.clone(),
            meta.manifest_digest.clone(),
            meta.config.clone(),
            clip_registry::Platform {
                os: meta.platform.os.clone(),
                architecture: meta.platform.architecture.clone(),
                variant: meta.platform.variant.clone(),
            },
        )
    };
    let mut key = digest
        .split_once(':')
        .map(|(_, hex)| hex)
        .filter(|hex| !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_alphanumeric()))
        .with_context(|| format!("the index names an invalid manifest digest {digest:?}"))?
        .to_string();
    // A recording run has a mount of its own: only its container's reads are recorded.
    let mut record = args.record.clone();
    if record.record {
        key.push_str(&format!("rec{}", std::process::id()));
    }
    let image = ImageConfig::from_json(&config_json)
        .with_context(|| format!("the image config of {reference}"))?;

    // Everything the flags and the image decide, checked before anything is set up.
    let (id, short) = match &args.name {
        Some(name) => {
            spec::check_name(name)?;
            (name.clone(), random_hex())
        }
        None => {
            let short = random_hex();
            (format!("clip-{short}"), short)
        }
    };
    let options = options(&args, command)?;
    let plan = spec::plan(&image, &options, &short)?;
    if args.tty
        && !(std::io::stdin().is_terminal()
            || std::io::stdout().is_terminal()
            || std::io::stderr().is_terminal())
    {
        bail!(
            "-t needs a terminal: clip's stdin, stdout or stderr must be one (drop -t otherwise)"
        );
    }
    let mut volume_dirs = Vec::new();
    for v in &options.volumes {
        let meta = std::fs::metadata(&v.source).with_context(|| {
            format!(
                "volume source {} (it must exist; clip run does not create it)",
                v.source.display()
            )
        })?;
        volume_dirs.push(meta.is_dir());
    }
    let runtime = Runtime::new(&args.runtime);

    // Signals are caught from here on: none can leave anything behind.
    let state = Arc::new(Mutex::new(SignalState::default()));
    let mut signals = signal_hook::iterator::Signals::new([
        libc::SIGHUP,
        libc::SIGINT,
        libc::SIGQUIT,
        libc::SIGTERM,
        libc::SIGUSR1,
        libc::SIGUSR2,
    ])
    .context("installing signal handlers")?;
    let signal_handle = signals.handle();
    {
        let state = state.clone();
        let stop_signal = plan.stop_signal;
        std::thread::spawn(move || {
            for signal in signals.forever() {
                on_signal(&state, signal, stop_signal);
            }
        });
    }

    let base = cmd_mount::runtime_dir();
    open_private_dir(&base)?;
    let images = base.join("images");
    let runs = base.join("runs");
    open_private_dir(&images)?;
    open_private_dir(&runs)?;
    // What runs that crashed left behind goes first (their names may be reused).
    Bundle::sweep(&runs);
    if record.record {
        let profiles = base.join("profiles");
        open_private_dir(&profiles)?;
        record.record_to = Some(profiles.join(format!("{key}.json")));
    }
    runtime.check_name_free(&id)?;

    let mut run = Resources {
        runtime: runtime.clone(),
        id: id.clone(),
        bundle: None,
        lease: None,
    };
    let result = run.start(
        &args,
        &plan,
        &options,
        &volume_dirs,
        &key,
        SharedMounts::new(images),
        Arc::new(DaemonMounter {
            located: located.clone(),
            source: args.source.clone(),
            serve: args.serve.clone(),
            record: record.clone(),
            recording_daemon: Mutex::new(None),
        }),
        &runs,
        &state,
    );
    let cleaned = run.cleanup();
    signal_handle.close();
    if let Some(file) = &record.record_to {
        // The mount is gone and its daemon has written what it recorded.
        if result.is_ok() {
            if let Err(e) = keep_recorded(
                file, &digest, &record, &args, &located, &reference, platform,
            ) {
                eprintln!("clip: the startup profile was not kept: {e:#}");
            }
        }
        let _ = std::fs::remove_file(file);
    }
    let code = result?;
    if let Err(e) = cleaned {
        eprintln!("clip: cleaning up after {id}: {e:#}");
    }
    Ok(code)
}

/// `clip run --record`: keeps (and with `--push`, pushes) what the run's mount recorded.
fn keep_recorded(
    file: &Path,
    digest: &str,
    record: &RecordArgs,
    args: &Args,
    located: &Located,
    indexed_from: &str,
    platform: clip_registry::Platform,
) -> Result<()> {
    let bytes = std::fs::read(file)
        .with_context(|| format!("reading what the mount recorded ({})", file.display()))?;
    let recorded = clip_store::Profile::parse(&bytes, digest)?;
    let reference: clip_registry::Reference = match &located.image {
        Some(image) => image.clone(),
        None => indexed_from
            .parse()
            .with_context(|| format!("the index names an invalid image {indexed_from:?}"))?,
    };
    let reference = reference.with_digest(digest);
    cmd_mount::keep_profile(
        recorded,
        record,
        &args.source.registry.cache_dir(),
        &located.path,
        located.windows_blob.as_deref(),
        || {
            crate::registry_client(
                args.source.registry.creds.as_deref(),
                located.image_source(),
                args.source.registry.insecure,
                &reference,
                clip_registry::RetryPolicy::default(),
            )
        },
        &reference,
        platform,
    )
}

fn options(args: &Args, command: &[String]) -> Result<RunOptions> {
    let lookup = |k: &str| std::env::var(k).ok();
    let mut env = Vec::new();
    for file in &args.env_file {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("reading --env-file {}", file.display()))?;
        env.extend(spec::parse_env_file(
            &text,
            &file.display().to_string(),
            lookup,
        )?);
    }
    for e in &args.env {
        env.extend(spec::env_arg(e, lookup)?);
    }
    Ok(RunOptions {
        command: command.to_vec(),
        entrypoint: args.entrypoint.clone(),
        env,
        workdir: args.workdir.clone(),
        user: args.user.clone(),
        terminal: args.tty,
        read_only: args.read_only,
        network: args.network.parse()?,
        hostname: args.hostname.clone(),
        volumes: args
            .volumes
            .iter()
            .map(|v| v.parse())
            .collect::<Result<_, _>>()?,
    })
}

/// A signal for `clip run`: before the container runs, INT, TERM and HUP cancel the run;
/// then every signal goes to the container's init (SIGTERM as the image's StopSignal), and
/// the third INT/TERM/HUP kills it.
fn on_signal(state: &Mutex<SignalState>, signal: i32, stop_signal: i32) {
    let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
    let terminating = matches!(signal, libc::SIGINT | libc::SIGTERM | libc::SIGHUP);
    if terminating {
        s.terminations += 1;
    }
    let Some(signaller) = s.signaller.clone() else {
        if terminating && s.cancelled.is_none() {
            tracing::info!(signal, "signal before the container runs: cancelling");
            s.cancelled = Some(signal);
        }
        return;
    };
    let terminations = s.terminations;
    drop(s);
    if terminating && terminations >= 3 {
        eprintln!("clip: {terminations} signals received: killing the container");
        signaller.signal(libc::SIGKILL);
    } else if signal == libc::SIGTERM {
        signaller.signal(stop_signal);
    } else {
        signaller.signal(signal);
    }
}

/// What a run set up, taken down by [`Resources::cleanup`] whatever happened.
struct Resources {
    runtime: Runtime,
    id: String,
    bundle: Option<Bundle>,
    lease: Option<Lease>,
}

impl Resources {
    #[allow(clippy::too_many_arguments)]
    fn start(
        &mut self,
        args: &Args,
        plan: &spec::Plan,
        options: &RunOptions,
        volume_dirs: &[bool],
        key: &str,
        shared: SharedMounts,
        mounter: Arc<DaemonMounter>,
        runs: &Path,
        state: &Mutex<SignalState>,
    ) -> Result<u8> {
        let cancelled = || state.lock().unwrap_or_else(|p| p.into_inner()).cancelled;
        let lease = self.lease.insert(shared.acquire(key, mounter)?);
        let lower = lease.mountpoint();
        if let Some(signal) = cancelled() {
            return Ok(128 + signal as u8);
        }
        let user = clip_run::user::resolve_in_root(&plan.user, &lower)?;
        let bundle = self
            .bundle
            .insert(Bundle::create(runs, &self.id, &self.runtime)?);
        bundle.mount_overlay(&lower)?;
        bundle.make_dir(&plan.cwd)?;
        for (v, &is_dir) in options.volumes.iter().zip(volume_dirs) {
            bundle.make_mountpoint(&v.destination, is_dir)?;
        }
        bundle.write_spec(&spec::runtime_spec(plan, &user, options)?)?;

        let stdin = if args.interactive && !args.tty {
            // Copied by a thread of ours: the runtime, in a process group of its own, must
            // not read a terminal itself.
            let (reader, mut writer) = std::io::pipe().context("creating the stdin pipe")?;
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut std::io::stdin().lock(), &mut writer);
            });
            Stdio::from(reader)
        } else if args.interactive {
            Stdio::inherit()
        } else {
            Stdio::null()
        };
        let running = {
            let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(signal) = s.cancelled {
                return Ok(128 + signal as u8);
            }
            // Without a terminal the runtime gets a process group of its own: a Ctrl-C
            // reaches clip alone, which forwards it once. With one, the runtime puts the
            // terminal in raw mode and a Ctrl-C is a byte for the container's terminal.
            let running = self
                .runtime
                .run(bundle, &self.id, options.network, stdin, !args.tty)?;
            s.signaller = Some(running.signaller());
            running
        };
        tracing::info!(id = %self.id, pid = running.pid(), "container started");
        let exit = running.wait()?;
        tracing::debug!(id = %self.id, ?exit, "container exited");
        match exit {
            Exit::Exited(code) => Ok(code.clamp(0, 255) as u8),
            Exit::NotStarted(code) => {
                eprintln!(
                    "clip: {} failed to start the container (exit code {code}; its reason is \
                     above)",
                    self.runtime.name()
                );
                Ok(RUN_FAILED)
            }
        }
    }

    /// The runtime's state of the container, the bundle with its overlay, and the hold on
    /// the image mount (unmounted when this was the last run of the image), in that order.
    fn cleanup(&mut self) -> Result<()> {
        let mut first_error: Option<anyhow::Error> = None;
        let mut note = |e: anyhow::Error| {
            tracing::warn!("{e:#}");
            first_error.get_or_insert(e);
        };
        if let Some(bundle) = self.bundle.take() {
            if let Err(e) = self.runtime.delete_if_ours(&self.id, bundle.dir()) {
                note(e.into());
            }
            if let Err(e) = bundle.remove() {
                note(e.into());
            }
            tracing::debug!(id = %self.id, "container deleted, bundle removed");
        }
        if let Some(lease) = self.lease.take() {
            if let Err(e) = lease.release() {
                note(e.into());
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// 12 random hex digits (from the kernel's random bytes, falling back on the clock and pid).
fn random_hex() -> String {
    use std::io::Read as _;
    let mut bytes = [0u8; 6];
    let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    if read.is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let mixed = (t as u64) ^ (u64::from(std::process::id()) << 32);
        bytes.copy_from_slice(&mixed.to_le_bytes()[..6]);
    }
    hex::encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        run: Args,
    }

    fn parse(argv: &[&str]) -> Args {
        Cli::try_parse_from(std::iter::once("run").chain(argv.iter().copied()))
            .unwrap_or_else(|e| panic!("{argv:?}: {e}"))
            .run
    }

    #[test]
    fn options_end_at_the_image() {
        let a = parse(&[
            "-i", "-e", "A=1", "--rm", "img.clip", "sh", "-c", "echo -w", "-t",
        ]);
        assert!(a.interactive && a.rm && !a.tty);
        assert_eq!(a.env, ["A=1"]);
        assert_eq!(
            a.image_and_command,
            ["img.clip", "sh", "-c", "echo -w", "-t"]
        );
        // A flag after the image is the container's command.
        let a = parse(&["img.clip", "-w"]);
        assert_eq!(a.workdir, None);
        assert_eq!(a.image_and_command, ["img.clip", "-w"]);
        let a = parse(&["--entrypoint", "", "-v", "/a:/b:ro", "img.clip"]);
        assert_eq!(a.entrypoint.as_deref(), Some(""));
        assert_eq!(a.volumes, ["/a:/b:ro"]);
        assert!(
            Cli::try_parse_from(["run", "-i"]).is_err(),
            "an image is required"
        );
    }
}
