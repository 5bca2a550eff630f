//! `clip index IMAGE [OUT.clip] [--push]`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clip_indexer::{IndexOptions, Progress};
use clip_registry::{Platform, Reference};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::source::RegistryArgs;
use crate::units;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Image reference, docker style: `alpine`, `registry:5000/app:1.2`, `app@sha256:…`.
    pub image: String,
    /// Where to write the index (as well as keeping it in the local index store).
    pub out: Option<PathBuf>,
    /// Upload the index to the image's own repository, as an OCI artifact referring to the
    /// image manifest, where any machine finds it (`clip pull`, `clip mount IMAGE`, `clip run
    /// IMAGE`).
    #[arg(long)]
    pub push: bool,
    /// Uncompressed bytes between seek checkpoints (e.g. 128k, 1M): smaller spans fetch less
    /// per read, larger spans make a smaller index (its seek windows; what a node downloads
    /// hardly changes).
    #[arg(long, default_value = "128k", value_parser = units::parse_size)]
    pub span: u64,
    /// Layers indexed in parallel. Default: the number of cores.
    #[arg(long)]
    pub jobs: Option<usize>,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// No progress display.
    #[arg(long, short)]
    pub quiet: bool,
    /// Print the final summary as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> Result<()> {
    let reference: Reference = args.image.parse()?;
    let platform = args.registry.platform()?;
    let client = args.registry.client_for(&reference)?;
    let indexed = index(
        &client,
        &reference,
        &platform,
        Some(args.span),
        args.jobs,
        args.quiet,
    )?;

    if let Some(out) = &args.out {
        write_atomically(out, &indexed.archive)
            .with_context(|| format!("writing {}", out.display()))?;
    }
    let archive = clip_archive::Archive::open(&indexed.archive).context("reading the new index")?;
    let meta = archive.meta();
    let pushed = if args.push {
        let subject = clip_store::Subject {
            digest: meta.manifest_digest.clone(),
            media_type: meta.manifest_media_type.clone(),
            size: indexed.manifest_size,
        };
        let image = reference.with_digest(&meta.manifest_digest);
        Some(
            clip_store::push(&client, &image, &indexed.archive, &subject)
                .with_context(|| format!("pushing the index of {reference}"))?,
        )
    } else {
        None
    };
    let origin = match &pushed {
        // The complete file is kept: its windows are local.
        Some(p) => clip_store::Origin::Registry {
            artifact: p.artifact.digest.clone(),
            blob: None,
        },
        None => clip_store::Origin::Local,
    };
    let store = clip_store::IndexStore::open(&args.registry.cache_dir())
        .context("opening the local index store")?;
    let stored = store
        .insert(&meta.manifest_digest, &indexed.archive, origin)
        .context("keeping the index in the local store")?;
    store.remember(
        &reference.to_string(),
        &platform.to_string(),
        &meta.manifest_digest,
    );

    let mut out = std::io::stdout().lock();
    // What a node downloads: the index without its seek windows.
    let metadata_len = archive.metadata_len();
    if args.json {
        let summary = serde_json::json!({
            "image": reference.to_string(),
            "manifest_digest": meta.manifest_digest,
            "output": args.out,
            "stored": stored.path,
            "pushed": pushed.as_ref().map(|p| serde_json::json!({
                "artifact": p.artifact.digest,
                "via": match p.via {
                    clip_registry::ReferrersSource::Api => "referrers-api",
                    clip_registry::ReferrersSource::TagSchema => "referrers-tag",
                },
            })),
            "entries": indexed.entries,
            "layers": indexed.layers,
            "index_bytes": indexed.archive.len(),
            "metadata_bytes": metadata_len,
            "compressed_bytes": indexed.compressed_bytes,
            "uncompressed_bytes": indexed.uncompressed_bytes,
            "seconds": indexed.elapsed.as_secs_f64(),
        });
        writeln!(out, "{summary}")?;
    } else {
        writeln!(
            out,
            "indexed {reference}: {} entries, {} layers, index {} (metadata {}) in {} ({} of \
             layers, {})",
            units::count(indexed.entries),
            indexed.layers,
            units::bytes(indexed.archive.len() as u64),
            units::bytes(metadata_len),
            units::seconds(indexed.elapsed),
            units::bytes(indexed.compressed_bytes),
            units::rate(indexed.compressed_bytes, indexed.elapsed),
        )?;
        if let Some(p) = &pushed {
            writeln!(
                out,
                "pushed to {}/{} as artifact {} ({})",
                reference.registry,
                reference.repository,
                p.artifact.digest,
                match p.via {
                    clip_registry::ReferrersSource::Api => "listed by the registry's referrers API",
                    clip_registry::ReferrersSource::TagSchema => "listed in the referrers tag",
                }
            )?;
        }
    }
    Ok(())
}

/// Indexes `reference` with progress on a terminal (unless `quiet`). `span` and `jobs`
/// default to [`clip_indexer::DEFAULT_SPAN`] and the number of cores.
pub fn index(
    client: &clip_registry::Client,
    reference: &Reference,
    platform: &Platform,
    span: Option<u64>,
    jobs: Option<usize>,
    quiet: bool,
) -> Result<clip_indexer::Indexed> {
    let jobs = jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if jobs == 0 {
        anyhow::bail!("--jobs must be at least 1");
    }
    let span = span.unwrap_or(clip_indexer::DEFAULT_SPAN);
    if span < 64 * 1024 {
        anyhow::bail!("--span must be at least 64k (a checkpoint costs up to 32 KiB of window)");
    }
    let opts = IndexOptions {
        platform: platform.clone(),
        span,
        jobs,
    };
    let display = Display::new(quiet);
    let indexed = clip_indexer::index_image(client, reference, &opts, &display)
        .with_context(|| format!("indexing {reference}"));
    display.clear();
    indexed
}

/// Writes `bytes` to `path` via a temporary file in the same directory and a rename, so a
/// crash never leaves a partial index under the final name.
pub fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // A fresh file (O_EXCL): never one that exists already, nor the target of a symlink
    // someone left at the temporary name.
    let mut attempt = 0u32;
    let (tmp, mut file) = loop {
        let tmp = dir.join(format!(".{name}.tmp.{}.{attempt}", std::process::id()));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
        {
            Ok(f) => break (tmp, f),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < 100 => {
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    };
    let result = file
        .write_all(bytes)
        .and_then(|()| file.sync_all())
        .and_then(|()| std::fs::rename(&tmp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Progress on a terminal: one bar per layer (compressed bytes read, entries seen).
struct Display {
    multi: MultiProgress,
    bars: std::sync::OnceLock<Vec<ProgressBar>>,
}

impl Display {
    fn new(quiet: bool) -> Self {
        let target = if quiet {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        };
        Display {
            multi: MultiProgress::with_draw_target(target),
            bars: Default::default(),
        }
    }

    fn clear(&self) {
        if let Some(bars) = self.bars.get() {
            for b in bars {
                b.finish_and_clear();
            }
        }
        let _ = self.multi.clear();
    }

    fn bar(&self, layer: usize) -> Option<&ProgressBar> {
        self.bars.get().and_then(|b| b.get(layer))
    }
}

impl Progress for Display {
    fn resolved(&self, layers: &[clip_registry::LayerDescriptor]) {
        let style = ProgressStyle::with_template(
            "{prefix:>9} {bar:30.cyan/blue} {bytes:>10}/{total_bytes:<10} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        let bars = layers
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let bar = self.multi.add(ProgressBar::new(l.size));
                bar.set_style(style.clone());
                let short = l.digest.split(':').nth(1).unwrap_or(&l.digest);
                bar.set_prefix(format!("{i}:{}", &short[..short.len().min(7)]));
                bar
            })
            .collect();
        let _ = self.bars.set(bars);
    }

    fn layer_bytes(&self, layer: usize, compressed_bytes: u64) {
        if let Some(b) = self.bar(layer) {
            b.set_position(compressed_bytes);
        }
    }

    fn layer_entries(&self, layer: usize, entries: u64) {
        if let Some(b) = self.bar(layer) {
            b.set_message(format!("{} entries", units::count(entries)));
        }
    }

    fn layer_done(&self, layer: usize) {
        if let Some(b) = self.bar(layer) {
            b.finish();
        }
    }
}
