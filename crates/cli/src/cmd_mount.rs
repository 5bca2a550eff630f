//! `clip mount FILE.clip DIR`, `clip umount DIR` and `clip stats DIR`.
//!
//! The mount process owns one FUSE session. In the foreground it runs until the filesystem is
//! unmounted (`clip umount`, `umount`, or SIGINT/SIGTERM, which unmount it cleanly) and then
//! prints its counters. `--daemon` re-executes the same command in the background and returns
//! once the mount is ready, with an exit code that says whether it is. While mounted, the
//! counters are served as JSON on a unix socket named after the mountpoint (`clip stats DIR`).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::OpenOptionsExt as _;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clip_archive::Archive;
use clip_fetch::{
    BlobSource, CacheOptions, FetchOptions, Fetcher, PackSource, RangePack, RecordingSource,
    RegistrySource,
};
use clip_fs::{ContentError, ContentSource, FsCore};
use clip_registry::{Reference, RetryPolicy};
use sha2::{Digest, Sha256};

use crate::record::Recorder;
use crate::source::{locate, Found, Located, SourceArgs};
use crate::units;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The image to mount (a reference: its index is found in the local store or its
    /// registry, and its blobs are read from that registry) or a .clip index (its blobs are
    /// read from the registry the index names).
    pub image: String,
    /// The mountpoint (created if missing).
    pub dir: PathBuf,
    #[command(flatten)]
    pub serve: ServeArgs,
    #[command(flatten)]
    pub record: RecordArgs,
    /// Return once the mount is ready and keep serving it in the background.
    #[arg(long)]
    pub daemon: bool,
    /// Let other users (e.g. a container's non-root user) use the mount.
    #[arg(long)]
    pub allow_other: bool,
    /// With --daemon: where the background mount logs [default: next to its stats socket].
    #[arg(long)]
    pub log_file: Option<PathBuf>,
    /// Internal: report readiness on stdout (used by --daemon).
    #[arg(long, hide = true)]
    pub ready_on_stdout: bool,
    /// Internal: the image reference the user typed, which IMAGE (now a located .clip file)
    /// was (used by --daemon).
    #[arg(long, hide = true)]
    pub from_image: Option<String>,
    /// Internal: the complete index blob in the image's repository, when IMAGE (a located
    /// .clip file) holds only the metadata (used by --daemon).
    #[arg(long, hide = true)]
    pub windows_blob: Option<String>,
    #[command(flatten)]
    pub source: SourceArgs,
}

/// `--record`: the flags `clip mount` and `clip run` share to record a startup profile.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct RecordArgs {
    /// Record which spans (and files) are read, in first-access order: a startup profile,
    /// kept beside the image's index in the local index store when the mount ends (merged
    /// with the one kept there, unless --replace), and replayed by later mounts.
    #[arg(long)]
    pub record: bool,
    /// With --record: record only what is read in the first SECS seconds.
    #[arg(long, value_name = "SECS", requires = "record")]
    pub record_for: Option<u64>,
    /// With --record: replace the profile kept instead of merging with it.
    #[arg(long, requires = "record")]
    pub replace: bool,
    /// With --record: also push the profile to the image's repository, beside its index,
    /// where every machine finds it.
    #[arg(long, requires = "record")]
    pub push: bool,
    /// Internal (used by `clip run --record`): write what was recorded to FILE instead of
    /// keeping it.
    #[arg(long, hide = true, value_name = "FILE", requires = "record")]
    pub record_to: Option<PathBuf>,
}

impl RecordArgs {
    /// The flags again, for a mount daemon.
    fn to_args(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.record {
            out.push("--record".to_string());
        }
        if let Some(secs) = self.record_for {
            out.push(format!("--record-for={secs}"));
        }
        if self.replace {
            out.push("--replace".to_string());
        }
        if self.push {
            out.push("--push".to_string());
        }
        if let Some(file) = &self.record_to {
            out.push(format!("--record-to={}", file.display()));
        }
        out
    }
}

/// How a mount serves its image: the flags `clip mount` and `clip run` share beside
/// [`SourceArgs`].
#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// Bound on the cache; least recently used spans are evicted beyond it.
    #[arg(long, default_value = "10G", value_parser = units::parse_size)]
    pub cache_size: u64,
    /// Seconds each read may take, retries of the registry included; past that it fails with
    /// EIO (the mount stays up).
    #[arg(long, default_value_t = 30)]
    pub read_timeout: u64,
    /// What to fetch before it is read: `profile` replays the image's startup profile (when
    /// one was recorded), `all` then fetches the rest of the image too, at most
    /// --prefetch-rate, so that the node no longer needs the registry; `none` fetches only
    /// what is read.
    #[arg(
        long,
        value_enum,
        default_value = "profile",
        value_name = "profile|all|none"
    )]
    pub prefetch: Prefetch,
    /// Same as --prefetch none.
    #[arg(long, conflicts_with = "prefetch")]
    pub no_prefetch: bool,
    /// With --prefetch all: the most bytes per second the rest of the image is fetched at
    /// (e.g. 50M).
    #[arg(long, default_value = "50M", value_parser = units::parse_size, value_name = "BYTES")]
    pub prefetch_rate: u64,
}

/// What a mount fetches before it is read.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefetch {
    /// The startup profile's spans.
    Profile,
    /// The profile's, then everything else.
    All,
    /// Nothing.
    None,
}

impl ServeArgs {
    fn prefetch_mode(&self) -> Prefetch {
        if self.no_prefetch {
            Prefetch::None
        } else {
            self.prefetch
        }
    }

    /// The flags again, for a mount daemon.
    fn to_args(&self) -> Vec<String> {
        let mode = match self.prefetch_mode() {
            Prefetch::Profile => "profile",
            Prefetch::All => "all",
            Prefetch::None => "none",
        };
        vec![
            format!("--cache-size={}", self.cache_size),
            format!("--read-timeout={}", self.read_timeout),
            format!("--prefetch={mode}"),
            format!("--prefetch-rate={}", self.prefetch_rate),
        ]
    }
}

#[derive(clap::Args, Debug)]
pub struct UmountArgs {
    /// The mountpoint.
    pub dir: PathBuf,
}

#[derive(clap::Args, Debug)]
pub struct StatsArgs {
    /// The mountpoint.
    pub dir: PathBuf,
    /// Print the counters as JSON.
    #[arg(long)]
    pub json: bool,
    /// First wait until the mount fetches nothing in the background (the profile replayed,
    /// with --prefetch all the whole image cached), at most SECS seconds.
    #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "3600")]
    pub wait: Option<u64>,
}

/// Bridges the fetcher to the filesystem core (neither crate knows the other), telling the
/// recorder (`--record`) of every read served.
struct FetchContent {
    fetcher: Arc<Fetcher>,
    recorder: Option<Arc<Recorder>>,
}

impl FetchContent {
    /// A fetch failure as the filesystem core reports it: the fetcher's errno, its message
    /// logged — once per outage when the registry is unreachable (the fetcher announced it).
    fn content_error(&self, e: clip_fetch::FetchError) -> ContentError {
        let outage = (e.is_transient() || matches!(e, clip_fetch::FetchError::Timeout { .. }))
            && self.fetcher.registry_unreachable();
        let error = ContentError::new(e.errno(), e.to_string());
        if outage {
            error.already_logged()
        } else {
            error
        }
    }

    fn served(&self, layer: u32, offset: u64, result: &Result<usize, ContentError>) {
        if let (Some(recorder), Ok(n)) = (&self.recorder, result) {
            recorder.note(layer, offset, *n);
        }
    }
}

impl ContentSource for FetchContent {
    fn read_at(
        &self,
        layer: u32,
        offset: u64,
        buf: &mut [u8],
        file_end: u64,
        since: Instant,
    ) -> Result<usize, ContentError> {
        let result = self
            .fetcher
            .read_file_at(layer, offset, buf, file_end, since)
            .map_err(|e| self.content_error(e));
        self.served(layer, offset, &result);
        result
    }

    fn read_cached(
        &self,
        layer: u32,
        offset: u64,
        buf: &mut [u8],
        file_end: u64,
    ) -> Option<Result<usize, ContentError>> {
        // Only final answers come back as errors (no such layer, past its end); anything a
        // fetch might still fix is `None` from the fetcher, so the read goes to a worker.
        let result = self
            .fetcher
            .read_file_cached(layer, offset, buf, file_end)
            .map(|r| r.map_err(|e| self.content_error(e)))?;
        self.served(layer, offset, &result);
        Some(result)
    }
}

/// Where mount daemons keep their stats sockets and logs: private to the user (`0700`,
/// checked like the cache directory, see [`clip_sys::private::open_private_dir`]).
pub fn runtime_dir() -> PathBuf {
    if rustix::process::geteuid().is_root() {
        return PathBuf::from("/run/clip");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d).join("clip"),
        _ => std::env::temp_dir().join(format!("clip-{}", rustix::process::geteuid().as_raw())),
    }
}

/// The stats socket (and default daemon log) of a mountpoint: named by a hash of its path.
fn mount_files(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let canonical = std::fs::canonicalize(dir)
        .with_context(|| format!("{}: no such directory", dir.display()))?;
    let hash = hex::encode(&Sha256::digest(canonical.as_os_str().as_encoded_bytes())[..8]);
    let base = runtime_dir();
    Ok((
        base.join(format!("{hash}.sock")),
        base.join(format!("{hash}.log")),
    ))
}

pub fn run(args: Args) -> Result<()> {
    let ready_channel = args.ready_on_stdout;
    let mut became_ready = false;
    let result = (|| {
        let located = match &args.from_image {
            Some(image) => Located {
                path: PathBuf::from(&args.image),
                found: Found::File,
                image: Some(image.parse()?),
                windows_blob: args.windows_blob.clone(),
            },
            None => locate(&args.image, &args.source, args.daemon)?,
        };
        if args.daemon {
            return run_daemon(&args, &located);
        }
        serve(&args, &located, &mut became_ready)
    })();
    match result {
        Ok(()) => Ok(()),
        Err(e) if ready_channel && !became_ready => {
            // The waiting parent reads this line and exits with our error. (Once it has read
            // "ready" it is gone, and the error only goes to our log.)
            let _ = writeln!(std::io::stdout(), "error: {e:#}");
            Err(e)
        }
        Err(e) => Err(e),
    }
}

/// `--daemon`: start the same command in the background and wait until it reports.
fn run_daemon(args: &Args, located: &Located) -> Result<()> {
    let (pid, log) = spawn_daemon(
        located,
        &args.dir,
        &args.source,
        &args.serve,
        &args.record,
        args.allow_other,
        args.log_file.as_deref(),
    )?;
    eprintln!(
        "mounted {} at {} (pid {pid}, log {})",
        args.image,
        args.dir.display(),
        log.display()
    );
    Ok(())
}

/// Starts `clip mount FILE DIR` for a located index in the background, in a process group of
/// its own (a Ctrl-C in this terminal does not reach it), logging to `log_file` (default: next
/// to its stats socket), and returns once the mount is ready: its pid and log. A mount that
/// fails is an error with the daemon's reason.
pub fn spawn_daemon(
    located: &Located,
    dir: &Path,
    source: &SourceArgs,
    serve: &ServeArgs,
    record: &RecordArgs,
    allow_other: bool,
    log_file: Option<&Path>,
) -> Result<(u32, PathBuf)> {
    if !dir.exists() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating mountpoint {}", dir.display()))?;
    }
    let (_, default_log) = mount_files(dir)?;
    let opened = match log_file {
        Some(log) => std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(log),
        None => {
            clip_sys::private::open_private_dir(&runtime_dir())?;
            // In our private directory, never through a symlink.
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&default_log)
        }
    };
    let log = log_file.map(Path::to_path_buf).unwrap_or(default_log);
    let log_handle = opened.with_context(|| format!("opening log {}", log.display()))?;
    let exe = std::env::current_exe().context("finding the clip executable")?;
    let mut cmd = Command::new(exe);
    // The daemon mounts the index located here, as the image the user named.
    cmd.arg("mount")
        .arg(&located.path)
        .arg(dir)
        .args(serve.to_args())
        .arg("--ready-on-stdout")
        .arg("--cache-dir")
        .arg(source.registry.cache_dir());
    if let Some(image) = &located.image {
        cmd.arg("--from-image").arg(image.to_string());
    }
    if let Some(blob) = &located.windows_blob {
        cmd.arg("--windows-blob").arg(blob);
    }
    if allow_other {
        cmd.arg("--allow-other");
    }
    cmd.args(record.to_args());
    if source.registry.insecure {
        cmd.arg("--insecure");
    }
    match &source.registry.creds {
        Some(c) => cmd.env("CLIP_CREDS", c),
        None => cmd.env_remove("CLIP_CREDS"),
    };
    // Its own process group: a Ctrl-C in this terminal does not reach the daemon.
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log_handle))
        .process_group(0);
    let mut child = cmd.spawn().context("starting the mount daemon")?;
    let stdout = child.stdout.take().context("daemon stdout")?;
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .context("waiting for the mount daemon")?;
    if line.trim() == "ready" {
        return Ok((child.id(), log));
    }
    let status = child.wait().context("waiting for the mount daemon")?;
    match line.trim().strip_prefix("error: ") {
        Some(msg) => bail!("{msg}"),
        None => bail!(
            "the mount daemon exited ({status}) before the mount was ready; see {}",
            log.display()
        ),
    }
}

fn serve(args: &Args, located: &Located, became_ready: &mut bool) -> Result<()> {
    let path = &located.path;
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    // Mapped, not read: only the parts of the index in use stay resident. The archive owns
    // the mapping (a clone shares it): it is unmapped when the filesystem and the fetcher are
    // gone.
    let mapping =
        clip_sys::Mapping::new(&file).with_context(|| format!("mapping {}", path.display()))?;
    let archive = Arc::new(
        Archive::open_owned(mapping.clone())
            .with_context(|| format!("reading {}", path.display()))?,
    );
    // Opening checked the whole file; let those pages go until something needs them.
    mapping.release_pages();
    drop(mapping);
    if !archive.has_windows() && located.windows_blob.is_none() {
        bail!(
            "{}: {}",
            path.display(),
            clip_archive::ArchiveError::WindowsAbsent
        );
    }
    if !args.dir.exists() {
        std::fs::create_dir_all(&args.dir)
            .with_context(|| format!("creating mountpoint {}", args.dir.display()))?;
    }
    if !args.dir.is_dir() {
        bail!("{} is not a directory", args.dir.display());
    }
    let meta = archive.meta();
    // The blobs are read where the user said the image is, or else where the index says it
    // was indexed from; addressed by digest, with the manifest pinned so that a moved tag
    // cannot matter.
    let reference: Reference = match &located.image {
        Some(image) => image.clone(),
        None => meta
            .reference
            .parse()
            .with_context(|| format!("the index names an invalid image {:?}", meta.reference))?,
    };
    let reference = reference.with_digest(&meta.manifest_digest);
    let timeout = Duration::from_secs(args.serve.read_timeout.max(1));
    let client_with = |retry| {
        crate::registry_client(
            args.source.registry.creds.as_deref(),
            located.image_source(),
            args.source.registry.insecure,
            &reference,
            retry,
        )
    };
    // A fetch retries for as long as a read may wait for it: bounded by time, not by a count
    // of attempts (a registry that refuses connections fails each one at once).
    let client = client_with(RetryPolicy {
        deadline: timeout,
        max_attempts: u32::MAX,
        ..RetryPolicy::default()
    })?;
    let fetch_options = FetchOptions {
        cache: CacheOptions {
            dir: args.source.registry.cache_dir(),
            max_bytes: args.serve.cache_size,
        },
        read_timeout: timeout,
        windows_blob: located.windows_blob.clone(),
        ..FetchOptions::default()
    };
    // The startup pack goes in front of the registry when the profile's replay needs it
    // (`start_prefetch`); a read waits for it no longer than for the registry.
    let packed = Arc::new(PackSource::without_pack(
        Arc::new(RegistrySource::new(client, reference.clone())),
        timeout,
    ));
    let fetcher = Arc::new(
        Fetcher::with_source(archive.clone(), packed.clone(), fetch_options)
            .context("setting up the span cache")?,
    );
    // The registry is checked while the mount is set up (a round trip off every start); the
    // mount is reported ready only once the check passed, and torn down if it failed.
    let probe = {
        let (client, reference) = (client_with(RetryPolicy::default())?, reference.clone());
        let (archive, fetcher) = (archive.clone(), fetcher.clone());
        std::thread::Builder::new()
            .name("clip-probe".into())
            .spawn(move || probe_registry(&client, &reference, &archive, &fetcher))
            .context("starting the registry check")?
    };
    start_prefetch(
        &fetcher,
        &packed,
        &archive,
        &args.serve,
        &args.source.registry.cache_dir(),
    );

    // Signals are caught from before the mount exists, so none can leave a stale mount.
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ])
    .context("installing signal handlers")?;
    let signal_handle = signals.handle();

    let recorder = if args.record.record {
        let window = args.record.record_for.map(Duration::from_secs);
        Some(Arc::new(
            Recorder::new(&archive, window).context("preparing to record")?,
        ))
    } else {
        None
    };
    let core = FsCore::new(
        archive.clone(),
        Arc::new(FetchContent {
            fetcher: fetcher.clone(),
            recorder: recorder.clone(),
        }),
    );
    let mount_options = clip_fuse::MountOptions {
        allow_other: args.allow_other,
        ..clip_fuse::MountOptions::default()
    };
    let mounted = clip_fuse::mount(core, &args.dir, &mount_options)
        .with_context(|| format!("mounting {}", args.dir.display()))?;
    let (socket_path, _) = mount_files(&args.dir)?;
    let stats_server = StatsServer::start(&socket_path, fetcher.clone());
    if let Err(e) = &stats_server {
        tracing::warn!("stats socket unavailable: {e:#}");
    }

    // The first signal unmounts, which ends the session below. If that cannot finish (files
    // still open under a lazy detach), a second signal ends the process.
    let unmounter = mounted.unmounter();
    let dir = args.dir.clone();
    std::thread::spawn(move || {
        let mut seen = 0;
        for sig in signals.forever() {
            seen += 1;
            if seen > 1 {
                tracing::warn!(
                    signal = sig,
                    "second signal: exiting without waiting for the unmount"
                );
                std::process::exit(130);
            }
            tracing::info!(signal = sig, "unmounting");
            if let Err(e) = unmounter.unmount() {
                tracing::error!("unmounting {} after signal {sig}: {e}", dir.display());
            }
        }
    });

    match probe.join() {
        Ok(Ok(())) => {}
        // `mounted` is unmounted as it is dropped.
        Ok(Err(e)) => return Err(e),
        Err(_) => bail!("the registry check panicked"),
    }
    tracing::info!(image = %meta.reference, dir = %args.dir.display(), "mounted");
    if args.ready_on_stdout {
        let mut out = std::io::stdout().lock();
        // A parent that stopped waiting is no reason to tear the mount down.
        let _ = writeln!(out, "ready").and_then(|()| out.flush());
        *became_ready = true;
    }
    let result = mounted.wait();
    signal_handle.close();
    drop(stats_server);
    if let Some(recorder) = recorder {
        // A profile that cannot be kept does not make the mount a failure: said, and logged.
        let kept = match &args.record.record_to {
            Some(file) => crate::cmd_index::write_atomically(file, &recorder.profile().to_json())
                .with_context(|| format!("writing {}", file.display())),
            None => keep_profile(
                recorder.profile(),
                &args.record,
                &args.source.registry.cache_dir(),
                &located.path,
                located.windows_blob.as_deref(),
                || client_with(RetryPolicy::default()),
                &reference,
                clip_registry::Platform {
                    os: meta.platform.os.clone(),
                    architecture: meta.platform.architecture.clone(),
                    variant: meta.platform.variant.clone(),
                },
            ),
        };
        if let Err(e) = kept {
            tracing::error!("the startup profile was not kept: {e:#}");
        }
    }
    let stats = fetcher.stats();
    eprintln!(
        "clip: unmounted {}: {}",
        args.dir.display(),
        stats_line(&serde_json::to_value(stats)?)
    );
    result.with_context(|| format!("serving {}", args.dir.display()))
}

/// `--prefetch`: the image's startup profile replayed (when the index store has one), its
/// startup pack in front of the registry when the cache lacks some of its spans, and with
/// `all` the rest of the image fetched after it. Before the mount is ready, so that fetching
/// starts at once.
fn start_prefetch(
    fetcher: &Fetcher,
    packed: &PackSource,
    archive: &Archive<'_>,
    serve: &ServeArgs,
    cache_dir: &Path,
) {
    let mode = serve.prefetch_mode();
    if mode == Prefetch::None {
        return;
    }
    let digest = &archive.meta().manifest_digest;
    let store = clip_store::IndexStore::open(cache_dir);
    let profile = store
        .as_ref()
        .map_err(|e| e.to_string())
        .and_then(|store| store.profile(digest).map_err(|e| e.to_string()))
        .unwrap_or_else(|e| {
            tracing::warn!("no startup profile replayed: {e}");
            None
        });
    if let Some(profile) = profile {
        let spans = profile_spans(archive, &profile);
        let missing = fetcher.uncached(&spans);
        if missing > 0 {
            if let Ok(store) = &store {
                use_startup_pack(store, digest, packed);
            }
        }
        let queued = fetcher.prefetch(&spans);
        tracing::info!(
            queued,
            missing,
            listed = profile.spans.len(),
            "replaying the startup profile"
        );
    }
    if mode == Prefetch::All {
        let spans = fetcher.fill(Some(serve.prefetch_rate));
        tracing::info!(
            spans,
            rate = serve.prefetch_rate,
            "fetching the rest of the image in the background"
        );
    }
}

/// The spans of `profile` as (layer, span) of `archive`, in profile order (entries of layers
/// the archive does not have are left out).
fn profile_spans(archive: &Archive<'_>, profile: &clip_store::Profile) -> Vec<(u32, usize)> {
    let layers: std::collections::HashMap<&str, u32> = archive
        .layers()
        .iter()
        .zip(0u32..)
        .map(|(l, i)| (l.digest.as_str(), i))
        .collect();
    profile
        .spans
        .iter()
        .filter_map(|s| {
            Some((
                *layers.get(s.layer.as_str())?,
                usize::try_from(s.span).ok()?,
            ))
        })
        .collect()
}

/// Puts the startup pack of the image with this manifest digest in front of the registry:
/// the one kept here (made by this node), else the one its registry has, downloaded while the
/// mount starts. None used (said in the log) when there is none or it is unusable: a pack
/// only makes a start faster.
fn use_startup_pack(store: &clip_store::IndexStore, manifest_digest: &str, packed: &PackSource) {
    let kept = store
        .pack(manifest_digest)
        .map_err(|e| e.to_string())
        .and_then(|bytes| {
            bytes
                .map(RangePack::parse)
                .transpose()
                .map_err(|e| e.to_string())
        });
    match kept {
        Ok(Some(pack)) => {
            tracing::info!(
                ranges = pack.ranges(),
                bytes = pack.data_len(),
                "startup pack"
            );
            packed.put(pack);
            return;
        }
        Ok(None) => {}
        Err(e) => tracing::warn!("the startup pack kept for {manifest_digest} is not used: {e}"),
    }
    match store.pack_ref(manifest_digest) {
        Ok(Some(pack)) => {
            tracing::info!(digest = %pack.digest, bytes = pack.size, "downloading the startup pack");
            if let Err(e) = packed.download(&pack.digest, pack.size) {
                tracing::warn!("the startup pack is not used: {e}");
            }
        }
        Ok(None) => {}
        Err(e) => tracing::warn!("no startup pack used: {e}"),
    }
}

/// The startup pack of `profile`: its replay run on an empty cache of its own (a temporary
/// directory in `cache_dir`), with every range it reads from the registry kept.
fn make_pack(
    index: &Path,
    windows_blob: Option<&str>,
    profile: &clip_store::Profile,
    client: clip_registry::Client,
    reference: &Reference,
    cache_dir: &Path,
) -> Result<Vec<u8>> {
    let file =
        std::fs::File::open(index).with_context(|| format!("opening {}", index.display()))?;
    let mapping =
        clip_sys::Mapping::new(&file).with_context(|| format!("mapping {}", index.display()))?;
    let archive =
        Archive::open(&mapping).with_context(|| format!("reading {}", index.display()))?;
    let mut source: Arc<dyn BlobSource> = Arc::new(RegistrySource::new(client, reference.clone()));
    // Other nodes download the index without its windows and read those a run needs from the
    // index blob: so must this replay, for the pack to hold them. A complete index here is
    // that blob (indexes are deterministic): its windows are read from it, by its digest.
    let (metadata_len, windows_blob) = if archive.has_windows() {
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&mapping[..])));
        let len = usize::try_from(archive.metadata_len()).unwrap_or(usize::MAX);
        source = Arc::new(LocalBlob {
            digest: digest.clone(),
            bytes: mapping.clone(),
            inner: source,
        });
        (len, Some(digest))
    } else {
        (mapping.len(), windows_blob.map(str::to_string))
    };
    drop(archive);
    let archive = Arc::new(
        Archive::open_owned(Prefix(mapping, metadata_len))
            .with_context(|| format!("reading {}", index.display()))?,
    );
    let spans = profile_spans(&archive, profile);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let scratch = cache_dir.join(format!("pack-{}-{nanos}", std::process::id()));
    let recorder = Arc::new(RecordingSource::new(source));
    let rank = pack_rank(&archive, &spans, windows_blob.as_deref());
    let made = (|| {
        let fetcher = Fetcher::with_source(
            archive,
            recorder.clone(),
            FetchOptions {
                cache: CacheOptions {
                    dir: scratch.clone(),
                    max_bytes: u64::MAX,
                },
                windows_blob,
                readahead_spans: 0,
                ..FetchOptions::default()
            },
        )
        .context("setting up a scratch cache")?;
        fetcher.prefetch(&spans);
        if !fetcher.wait_idle(PACK_TIMEOUT) {
            bail!("the profile's spans were not all read in {PACK_TIMEOUT:?}");
        }
        let errors = fetcher.stats().fetch_errors;
        if errors > 0 {
            bail!("{errors} of the profile's spans could not be read (see the log)");
        }
        Ok(recorder.pack_by(rank))
    })();
    if let Err(e) = std::fs::remove_dir_all(&scratch) {
        tracing::warn!(dir = %scratch.display(), "removing the scratch cache: {e}");
    }
    made
}

/// Where a range read by a profile's replay goes in its startup pack: at the profile position of
/// the first span it serves (its compressed bytes, or its seek window in the index blob
/// `windows_blob`), so that a node downloading the pack gets what its start needs first.
fn pack_rank(
    archive: &Archive<'_>,
    spans: &[(u32, usize)],
    windows_blob: Option<&str>,
) -> impl Fn(&str, &std::ops::Range<u64>) -> usize {
    // (blob, start, end, profile position) of every span of the profile and of its window.
    let mut places: Vec<(String, u64, u64, usize)> = Vec::new();
    let layers = archive.layers();
    for (position, &(layer, span)) in spans.iter().enumerate() {
        let (Some(l), Ok(table)) = (layers.get(layer as usize), archive.spans(layer)) else {
            continue;
        };
        if let Ok(info) = table.get(span) {
            places.push((
                l.digest.clone(),
                info.compressed_offset,
                info.compressed_end,
                position,
            ));
        }
        if let (Some(blob), Ok(Some(w))) = (windows_blob, archive.window_ref(layer, span)) {
            let end = w.offset.saturating_add(u64::from(w.len));
            places.push((blob.to_string(), w.offset, end, position));
        }
    }
    move |blob: &str, range: &std::ops::Range<u64>| {
        places
            .iter()
            .filter(|(b, start, end, _)| b == blob && *start < range.end && range.start < *end)
            .map(|p| p.3)
            .min()
            .unwrap_or(usize::MAX)
    }
}

/// The first bytes of a mapping (an index's metadata).
struct Prefix(clip_sys::Mapping, usize);

impl AsRef<[u8]> for Prefix {
    fn as_ref(&self) -> &[u8] {
        self.0.get(..self.1).unwrap_or(&self.0)
    }
}

/// A blob this machine has (a complete index), answered from its bytes; other blobs from
/// `inner`.
struct LocalBlob {
    digest: String,
    bytes: clip_sys::Mapping,
    inner: Arc<dyn BlobSource>,
}

impl BlobSource for LocalBlob {
    fn read_range(
        &self,
        digest: &str,
        range: std::ops::Range<u64>,
    ) -> Result<Vec<u8>, clip_registry::RegistryError> {
        if digest != self.digest {
            return self.inner.read_range(digest, range);
        }
        let slice = usize::try_from(range.start)
            .ok()
            .zip(usize::try_from(range.end).ok())
            .and_then(|(a, b)| self.bytes.get(a..b));
        slice
            .map(<[u8]>::to_vec)
            .ok_or_else(|| clip_registry::RegistryError::Protocol {
                url: self.digest.clone(),
                detail: format!("range {range:?} is outside the local index"),
            })
    }

    fn read_blob(
        &self,
        digest: &str,
        size: u64,
    ) -> Result<Box<dyn Read + Send + '_>, clip_registry::RegistryError> {
        self.inner.read_blob(digest, size)
    }
}

/// How long making a startup pack may take.
const PACK_TIMEOUT: Duration = Duration::from_secs(600);

/// `--record`, at the end of the mount: the profile recorded, merged with the one kept unless
/// `--replace`, kept in the index store and, with `--push`, pushed beside the image's index.
#[allow(clippy::too_many_arguments)]
pub fn keep_profile(
    recorded: clip_store::Profile,
    record: &RecordArgs,
    cache_dir: &Path,
    index: &Path,
    windows_blob: Option<&str>,
    client: impl FnOnce() -> Result<clip_registry::Client>,
    reference: &Reference,
    platform: clip_registry::Platform,
) -> Result<()> {
    let store = clip_store::IndexStore::open(cache_dir)?;
    let mut profile = clip_store::Profile::new(&recorded.manifest_digest);
    if !record.replace {
        match store.profile(&recorded.manifest_digest) {
            Ok(Some(kept)) => profile.merge(kept),
            Ok(None) => {}
            Err(e) => tracing::warn!("replacing an unusable profile: {e}"),
        }
    }
    let (spans, files) = (recorded.spans.len(), recorded.files.len());
    profile.merge(recorded);
    let path = store.put_profile(&profile)?;
    tracing::info!(spans, files, total_spans = profile.spans.len(), path = %path.display(),
        "startup profile recorded");
    eprintln!(
        "clip: recorded {spans} spans and {files} files; the profile of {reference} now has {} \
         spans ({})",
        profile.spans.len(),
        path.display()
    );
    if record.push {
        let client = client()?;
        let image = client
            .resolve(reference, &platform)
            .with_context(|| format!("resolving {reference} to push its profile"))?;
        let subject = clip_store::Subject {
            digest: image.manifest_digest.clone(),
            media_type: image.manifest_media_type.clone(),
            size: image.manifest.len() as u64,
        };
        // Its startup pack goes with it: what its replay reads, so that other nodes read it
        // from one blob instead of a Range request per run of spans. Without one (it could not
        // be made) the profile is still worth pushing.
        let pack = make_pack(
            index,
            windows_blob,
            &profile,
            client.clone(),
            reference,
            cache_dir,
        )
        .and_then(|pack| {
            if pack.len() as u64 > clip_store::MAX_PACK_BYTES {
                bail!(
                    "it would be {} bytes, more than the {} a node accepts",
                    pack.len(),
                    clip_store::MAX_PACK_BYTES
                );
            }
            Ok(pack)
        })
        .map_err(|e| {
            eprintln!("clip: pushing the profile without a startup pack: {e:#}");
        })
        .ok();
        let pushed = clip_store::push_profile(
            &client,
            reference,
            &profile.to_json(),
            pack.as_deref(),
            &subject,
        )
        .with_context(|| format!("pushing the profile of {reference}"))?;
        // This node keeps its pack (the registry's copy is the same bytes).
        store.put_pack(&profile.manifest_digest, pack.as_deref())?;
        store.put_pack_ref(&profile.manifest_digest, None)?;
        eprintln!(
            "clip: pushed the profile{} to {}/{} as artifact {}",
            match &pack {
                Some(p) => format!(" and its startup pack ({})", units::bytes(p.len() as u64)),
                None => String::new(),
            },
            reference.registry,
            reference.repository,
            pushed.artifact.digest
        );
    }
    Ok(())
}

/// One cheap request before mounting (one byte of the first non-empty layer blob), so that a
/// mount whose registry refuses us (credentials, a wrong registry, a deleted image) fails at
/// once with a clear message. A registry that cannot be reached now is no reason not to
/// mount: whatever is in the cache is served, and the rest once it is back.
fn probe_registry(
    client: &clip_registry::Client,
    reference: &Reference,
    archive: &Archive<'_>,
    fetcher: &Fetcher,
) -> Result<()> {
    let Some(layer) = archive.layers().iter().find(|l| l.compressed_size > 0) else {
        return Ok(());
    };
    match client.fetch_range(reference, &layer.digest, 0..1) {
        Ok(_) => Ok(()),
        Err(e) if e.is_transient() => {
            // Mounting anyway: the fetcher announces the outage (once), as for its own fetches.
            fetcher.note_registry_failure(&e);
            Ok(())
        }
        Err(e) => Err(anyhow::Error::new(e).context(format!(
            "checking the registry of {reference} before mounting"
        ))),
    }
}

fn stats_line(v: &serde_json::Value) -> String {
    let n = |k: &str| v[k].as_u64().unwrap_or(0);
    let mut line = format!(
        "{} registry requests, {} fetched in {} spans, {} cache hits, {} misses, {} verification failures",
        n("registry_requests"),
        units::bytes(n("bytes_fetched")),
        n("spans_fetched"),
        n("cache_hits"),
        n("cache_misses"),
        n("verify_failures"),
    );
    if n("prefetch_spans") > 0 {
        line.push_str(&format!(
            "; prefetched {} spans: {} read, {} not (yet)",
            n("prefetch_spans"),
            n("prefetch_hits"),
            n("prefetch_wasted")
        ));
    }
    if n("pack_bytes") > 0 {
        line.push_str(&format!(
            "; {} read from the startup pack",
            units::bytes(n("pack_bytes"))
        ));
    }
    if n("fill_total") > 0 {
        line.push_str(&format!(
            "; {} of {} spans of the image cached",
            n("fill_done"),
            n("fill_total")
        ));
    }
    line
}

/// Serves the fetcher's counters as one JSON document per connection.
struct StatsServer {
    path: PathBuf,
}

impl StatsServer {
    fn start(path: &Path, fetcher: Arc<Fetcher>) -> Result<StatsServer> {
        if let Some(parent) = path.parent() {
            clip_sys::private::open_private_dir(parent)?;
        }
        // A socket left by a mount process that died is stale: replace it.
        let _ = std::fs::remove_file(path);
        let listener =
            UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let fetcher = fetcher.clone();
                // A client that asks to wait holds its connection: one thread each.
                std::thread::spawn(move || answer_stats(stream, &fetcher));
            }
        });
        Ok(StatsServer {
            path: path.to_path_buf(),
        })
    }
}

/// The stats protocol: the client sends one line — empty (or nothing at all: it may just
/// read) for the counters now, `wait SECS` to have them once no background fetch is left (at
/// most SECS seconds) — and reads one JSON document.
fn answer_stats(mut stream: UnixStream, fetcher: &Fetcher) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut request = Vec::new();
    let _ = (&mut stream).take(64).read_to_end(&mut request);
    let request = String::from_utf8_lossy(&request);
    if let Some(secs) = request.trim().strip_prefix("wait ") {
        let secs = secs.parse::<u64>().unwrap_or(0).min(86_400);
        fetcher.wait_idle(Duration::from_secs(secs));
    }
    if let Ok(json) = serde_json::to_vec(&fetcher.stats()) {
        let _ = stream.write_all(&json);
    }
}

impl Drop for StatsServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

pub fn umount(args: UmountArgs) -> Result<()> {
    clip_fuse::unmount(&args.dir).with_context(|| format!("unmounting {}", args.dir.display()))?;
    if let Ok((socket, _)) = mount_files(&args.dir) {
        // A daemon that died leaves its socket behind.
        if UnixStream::connect(&socket).is_err() {
            let _ = std::fs::remove_file(&socket);
        }
    }
    Ok(())
}

pub fn stats(args: StatsArgs) -> Result<()> {
    let (socket, _) = mount_files(&args.dir)?;
    let mut stream = UnixStream::connect(&socket).with_context(|| {
        format!(
            "{} is not served by a running clip mount (no {})",
            args.dir.display(),
            socket.display()
        )
    })?;
    let request = match args.wait {
        Some(secs) => format!("wait {secs}\n"),
        None => "\n".to_string(),
    };
    stream
        .write_all(request.as_bytes())
        .and_then(|()| stream.shutdown(std::net::Shutdown::Write))
        .context("asking the mount for its counters")?;
    let mut body = String::new();
    stream
        .read_to_string(&mut body)
        .context("reading the mount's counters")?;
    let v: serde_json::Value = serde_json::from_str(&body).context("the mount answered garbage")?;
    if args.json {
        println!("{v}");
    } else {
        println!("{}", stats_line(&v));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clip_archive::Compression;
    use clip_fetch::testing::{image, TestLayer};

    #[test]
    fn a_pack_holds_first_what_the_profile_reads_first() {
        let layer = |n: u8| TestLayer {
            content: vec![n; 10 * 100],
            compression: Compression::None,
            span: 100,
        };
        let (archive, _) = image(&[layer(1), layer(2)]).unwrap();
        let digest = |l: usize| archive.layers()[l].digest.clone();
        // The profile: span 5 of layer 0, then span 0 of layer 1, then span 2 of layer 0.
        let rank = pack_rank(&archive, &[(0, 5), (1, 0), (0, 2)], None);
        assert_eq!(rank(&digest(0), &(500..600)), 0);
        assert_eq!(rank(&digest(1), &(0..100)), 1);
        assert_eq!(rank(&digest(0), &(200..300)), 2);
        // A run of spans goes where its earliest span is.
        assert_eq!(rank(&digest(0), &(200..600)), 0);
        // Bytes of no span of the profile (readahead, say), and other blobs: last.
        assert_eq!(rank(&digest(0), &(800..900)), usize::MAX);
        assert_eq!(rank("sha256:other", &(0..100)), usize::MAX);
    }
}
