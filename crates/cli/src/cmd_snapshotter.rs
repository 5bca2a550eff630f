//! `clip snapshotter --socket PATH --root DIR`: containerd's remote snapshotter.
//!
//! `clip-snapshotter` owns the snapshots and the gRPC service; this module gives it the way
//! to clip images ([`clip_snapshotter::Images`]): an image's index is found as for every
//! command that takes an `IMAGE` (the local index store, else the registry's referrers), but
//! never made here — an image without an index is pulled the normal way — and mounted by a
//! `clip mount` daemon, a process of its own that outlives the snapshotter.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clip_archive::Archive;
use clip_registry::Reference;
use clip_snapshotter::{BoxError, Images, IndexedImage, LayerRequest, MountSource, Snapshotter};

use crate::cmd_mount::{self, RecordArgs, ServeArgs};
use crate::creds::{self, CredsArg};
use crate::source::{self, Found, Located, RegistryArgs, SourceArgs};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The unix socket containerd connects to (`[proxy_plugins.clip] address`); created
    /// `0600`, its directory `0700` when missing.
    #[arg(long, value_name = "PATH")]
    pub socket: PathBuf,
    /// Where snapshots, their metadata and the images' mounts live (made `0700`).
    #[arg(long, value_name = "DIR")]
    pub root: PathBuf,
    #[command(flatten)]
    pub serve: ServeArgs,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// Clip images for the snapshotter, through the index store, the registry and mount daemons.
struct DaemonImages {
    registry: RegistryArgs,
    serve: ServeArgs,
}

impl DaemonImages {
    fn find_index(&self, request: &LayerRequest) -> Result<Option<IndexedImage>> {
        let mut reference: Reference = request
            .reference
            .parse()
            .with_context(|| format!("the image reference {:?}", request.reference))?;
        if let Some(digest) = &request.manifest_digest {
            reference = reference.with_digest(digest);
        }
        let Some(located) = source::find_existing(&reference, &self.registry)? else {
            tracing::info!(%reference, "no clip index: the normal path");
            return Ok(None);
        };
        let path = &located.path;
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let archive =
            Archive::open(&bytes).with_context(|| format!("reading {}", path.display()))?;
        let meta = archive.meta();
        tracing::info!(%reference, index = %path.display(), "clip index found");
        Ok(Some(IndexedImage {
            reference: reference.with_digest(&meta.manifest_digest).to_string(),
            manifest_digest: meta.manifest_digest.clone(),
            index: path.clone(),
            windows_blob: located.windows_blob.clone(),
            layers: archive
                .layers()
                .iter()
                .map(|l| (l.digest.clone(), l.diff_id.clone()))
                .collect(),
        }))
    }
}

impl Images for DaemonImages {
    fn find(&self, request: &LayerRequest) -> Result<Option<IndexedImage>, BoxError> {
        self.find_index(request)
            .map_err(|e| format!("{e:#}").into())
    }

    fn mount(&self, image: &MountSource<'_>, dir: &Path, log: &Path) -> Result<u32, BoxError> {
        let reference: Reference = image
            .reference
            .parse()
            .map_err(|e| format!("the image reference {:?}: {e}", image.reference))?;
        let located = Located {
            path: image.index.to_path_buf(),
            found: Found::File,
            image: Some(reference),
            windows_blob: image.windows_blob.map(str::to_string),
        };
        let source = SourceArgs {
            registry: self.registry.clone(),
            no_index: true,
        };
        // `allow_other`: the containers' processes run as any user; the mountpoint sits in
        // the snapshotter's private root.
        let (pid, _) = cmd_mount::spawn_daemon(
            &located,
            dir,
            &source,
            &self.serve,
            &RecordArgs::default(),
            true,
            Some(log),
        )
        .map_err(|e| format!("{e:#}"))?;
        // The daemon is our child until we exit: reap it when it ends, so that no zombie
        // stays behind an unmounted image.
        std::thread::spawn(move || {
            let _ = rustix::process::waitpid(
                rustix::process::Pid::from_raw(pid as i32),
                rustix::process::WaitOptions::empty(),
            );
        });
        Ok(pid)
    }

    fn unmount(&self, dir: &Path) -> Result<(), BoxError> {
        match clip_fuse::unmount(dir) {
            Ok(()) | Err(clip_fuse::MountError::NotMounted { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

pub fn run(args: Args) -> Result<()> {
    if !rustix::process::geteuid().is_root() {
        bail!(
            "clip snapshotter needs root: it mounts images and containerd mounts overlays of them"
        );
    }
    // The snapshotter serves images from any registry: credentials must say which one they
    // are for.
    if let Some(value) = &args.registry.creds {
        if let CredsArg::Plain(_) = creds::parse(value)? {
            bail!(
                "--creds USER:PASS names no registry, and the snapshotter serves images of any \
                 registry: pass --creds REGISTRY=USER:PASS"
            );
        }
    }
    let images = Arc::new(DaemonImages {
        registry: args.registry.clone(),
        serve: args.serve.clone(),
    });
    let snapshotter = Snapshotter::open(&args.root, images)
        .with_context(|| format!("opening the snapshotter at {}", args.root.display()))?;
    eprintln!(
        "clip snapshotter: serving {} (root {})",
        args.socket.display(),
        snapshotter.root().display()
    );
    clip_snapshotter::service::serve_until_signal(args.socket.clone(), Arc::new(snapshotter))
        .with_context(|| format!("serving {}", args.socket.display()))?;
    eprintln!("clip snapshotter: stopped (clip mounts stay up for running containers)");
    Ok(())
}
