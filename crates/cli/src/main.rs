//! The `clip` command: glue between the stages (index, inspect, mount, umount, stats, run,
//! snapshotter). Each subcommand parses its flags, calls the library crates and renders the
//! result; no format, protocol or filesystem logic lives here. This is the only crate that
//! uses `anyhow`.

#![forbid(unsafe_code)]

mod cmd_index;
mod cmd_inspect;
mod cmd_mount;
mod cmd_pull;
mod cmd_run;
mod cmd_snapshotter;
mod creds;
mod record;
mod source;
mod units;

use std::io::{self, Write};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// clip: start containers from OCI images without pulling them.
#[derive(Parser, Debug)]
#[command(name = "clip", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Index an image in a registry into a metadata-only .clip archive (and push it there).
    Index(cmd_index::Args),
    /// Fetch the index of an image from its registry into the local index store.
    Pull(cmd_pull::Args),
    /// Show what an image's index holds.
    Inspect(cmd_inspect::Args),
    /// Mount an image (or a .clip index) as a lazy, read-only filesystem.
    Mount(cmd_mount::Args),
    /// Unmount a clip mount (also one whose process died).
    Umount(cmd_mount::UmountArgs),
    /// Show the counters of a running clip mount.
    Stats(cmd_mount::StatsArgs),
    /// Run a container from an image (or a .clip index) with an OCI runtime, as `docker run` does.
    Run(Box<cmd_run::Args>),
    /// Serve containerd as a remote snapshotter: images with a clip index start without
    /// pulling their layers, others are pulled as usual.
    Snapshotter(cmd_snapshotter::Args),
}

fn main() -> ExitCode {
    // Before any thread starts: large transient buffers go back to the system when freed.
    clip_sys::tune_allocator();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => {
            return match cmd_run::run(*args) {
                Ok(code) => ExitCode::from(code),
                Err(err) => {
                    let _ = writeln!(io::stderr(), "error: {err:#}");
                    ExitCode::from(cmd_run::RUN_FAILED)
                }
            }
        }
        Command::Index(args) => cmd_index::run(args),
        Command::Pull(args) => cmd_pull::run(args),
        Command::Inspect(args) => cmd_inspect::run(args),
        Command::Mount(args) => cmd_mount::run(args),
        Command::Umount(args) => cmd_mount::umount(args),
        Command::Stats(args) => cmd_mount::stats(args),
        Command::Snapshotter(args) => cmd_snapshotter::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // A closed pipe (`clip inspect --ls / | head`) is not a failure.
            if err.chain().any(|e| {
                e.downcast_ref::<io::Error>()
                    .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
            }) {
                return ExitCode::SUCCESS;
            }
            let _ = writeln!(io::stderr(), "error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// The registry client for `reference`: explicit credentials from `--creds` for its registry
/// only (see [`creds::for_registry`]; else the usual auth files, read by the client on a 401),
/// plain HTTP for its registry with `--insecure`, and the mirrors this machine configures
/// (`registries.conf`, containerd's `hosts.toml`) for reads.
fn registry_client(
    creds: Option<&str>,
    source: creds::ImageSource<'_>,
    insecure: bool,
    reference: &clip_registry::Reference,
    retry: clip_registry::RetryPolicy,
) -> anyhow::Result<clip_registry::Client> {
    let creds = creds::for_registry(creds, &reference.registry, source)?;
    let mut options = clip_registry::ClientOptions {
        creds,
        retry,
        mirrors: clip_registry::Mirrors::from_system()?,
        ..clip_registry::ClientOptions::default()
    };
    if insecure {
        options.insecure_registries.push(reference.registry.clone());
    }
    Ok(clip_registry::Client::new(options)?)
}
