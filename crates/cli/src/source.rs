//! `IMAGE|FILE.clip`: where the index a command works on comes from.
//!
//! A path to an existing file is a `.clip` index. Anything else is an image reference: it is
//! resolved in its registry to the manifest digest of the platform asked for; the index is
//! then taken from the local index store (under the cache directory), else downloaded from the
//! image's repository (the OCI artifact that `clip index --push` put there), else — unless
//! `--no-index` — made here. Whatever its origin, an index is only used once bound to the image:
//! same manifest, config and layer table as the registry describes now.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clip_archive::Archive;
use clip_registry::{Client, Platform, Reference, ReferrersSource, ResolvedImage, RetryPolicy};
use clip_store::{IndexStore, Origin};

use crate::creds::ImageSource;
use crate::units;

/// How to reach an image's registry and where indexes are kept: the flags of every command
/// that names an image.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct RegistryArgs {
    /// Registry credentials: USER:PASS for the registry of the IMAGE typed, or
    /// REGISTRY=USER:PASS (needed with a FILE.clip, whose registry the file names). Sent to
    /// that registry only; otherwise credentials come from $REGISTRY_AUTH_FILE or the docker
    /// config.
    #[arg(
        long,
        env = "CLIP_CREDS",
        hide_env_values = true,
        value_name = "[REGISTRY=]USER:PASS"
    )]
    pub creds: Option<String>,
    /// Speak plain HTTP to the image's registry (always so for localhost and 127.0.0.1).
    #[arg(long)]
    pub insecure: bool,
    /// With an IMAGE: the platform to pick from a multi-arch image, OS/ARCH[/VARIANT].
    /// Default: this machine's.
    #[arg(long)]
    pub platform: Option<String>,
    /// Where fetched spans and indexes are kept, shared by all mounts [default:
    /// /var/cache/clip for root, else ~/.cache/clip].
    #[arg(long, env = "CLIP_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
}

impl RegistryArgs {
    /// The cache directory in use.
    pub fn cache_dir(&self) -> PathBuf {
        self.cache_dir
            .clone()
            .unwrap_or_else(clip_fetch::default_cache_dir)
    }

    /// The platform asked for, else this machine's.
    pub fn platform(&self) -> Result<Platform> {
        Ok(match &self.platform {
            Some(p) => p.parse::<Platform>()?,
            None => Platform::host(),
        })
    }

    /// A client for an image reference typed on the command line (`--creds USER:PASS` is
    /// for its registry).
    pub fn client_for(&self, reference: &Reference) -> Result<Client> {
        self.client_retrying(reference, RetryPolicy::default())
    }

    fn client_retrying(&self, reference: &Reference, retry: RetryPolicy) -> Result<Client> {
        crate::registry_client(
            self.creds.as_deref(),
            ImageSource::CommandLine,
            self.insecure,
            reference,
            retry,
        )
    }
}

/// The flags of every command that takes `IMAGE|FILE.clip`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct SourceArgs {
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// With an IMAGE: fail when its registry holds no index for it, instead of indexing it
    /// here.
    #[arg(long)]
    pub no_index: bool,
}

/// Where a located index came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// The `.clip` file given.
    File,
    /// The local index store, filled earlier.
    Store(Origin),
    /// Downloaded now from the image's repository.
    Registry {
        artifact: String,
        via: ReferrersSource,
        /// The index blob, when only its metadata was downloaded.
        blob: Option<String>,
    },
    /// Made now, the registry having none.
    IndexedHere,
    /// The local index store, for the image as it was last resolved here: its registry
    /// cannot be reached now.
    Remembered {
        origin: Origin,
        manifest_digest: String,
        /// Seconds since the epoch.
        resolved_at: u64,
    },
}

impl Found {
    /// One line for people.
    pub fn describe(&self) -> String {
        let via = |via: &ReferrersSource| match via {
            ReferrersSource::Api => "the referrers API",
            ReferrersSource::TagSchema => "the referrers tag",
        };
        match self {
            Found::File => "the file given".to_string(),
            Found::Store(Origin::Registry { artifact, .. }) => {
                format!("the local index store (downloaded from the registry, artifact {artifact})")
            }
            Found::Store(Origin::Local) => "the local index store (indexed here)".to_string(),
            Found::Registry {
                artifact, via: v, ..
            } => {
                format!(
                    "the image's registry (artifact {artifact}, found through {})",
                    via(v)
                )
            }
            Found::IndexedHere => "indexed here (the registry has no index for it)".to_string(),
            Found::Remembered { resolved_at, .. } => format!(
                "the local index store, for the image as resolved {} (its registry cannot be \
                 reached)",
                resolved_when(*resolved_at)
            ),
        }
    }

    /// For `--json`.
    pub fn json(&self) -> serde_json::Value {
        match self {
            Found::File => serde_json::json!({"source": "file"}),
            Found::Store(origin) => serde_json::json!({"source": "store", "origin": origin}),
            Found::Registry {
                artifact,
                via,
                blob,
            } => serde_json::json!({
                "source": "registry",
                "artifact": artifact,
                "blob": blob,
                "via": match via { ReferrersSource::Api => "referrers-api", ReferrersSource::TagSchema => "referrers-tag" },
            }),
            Found::IndexedHere => serde_json::json!({"source": "indexed-here"}),
            Found::Remembered {
                origin,
                manifest_digest,
                resolved_at,
            } => serde_json::json!({
                "source": "store",
                "origin": origin,
                "offline": true,
                "manifest_digest": manifest_digest,
                "resolved_at": resolved_at,
            }),
        }
    }
}

/// An index ready to open.
#[derive(Debug, Clone)]
pub struct Located {
    /// The `.clip` file.
    pub path: PathBuf,
    /// Where it came from.
    pub found: Found,
    /// The image reference typed, when it was one (its registry is the user's choice).
    pub image: Option<Reference>,
    /// The complete index blob in the image's repository, when `path` holds only the
    /// metadata: where the mount reads seek windows from.
    pub windows_blob: Option<String>,
}

impl Located {
    /// Whose choice the index's registry is, for `--creds`.
    pub fn image_source(&self) -> ImageSource<'_> {
        match self.image {
            Some(_) => ImageSource::CommandLine,
            None => ImageSource::IndexFile(&self.path),
        }
    }
}

/// Finds the index for `arg` (see the module doc). `quiet` hides the progress of indexing
/// here.
pub fn locate(arg: &str, args: &SourceArgs, quiet: bool) -> Result<Located> {
    let as_path = Path::new(arg);
    if as_path.is_file() {
        return Ok(Located {
            path: as_path.to_path_buf(),
            found: Found::File,
            image: None,
            windows_blob: None,
        });
    }
    let reference: Reference = arg
        .parse()
        .with_context(|| format!("{arg:?} is neither a .clip file nor an image reference"))?;
    let platform = args.registry.platform()?;
    let store = IndexStore::open(&args.registry.cache_dir())?;
    // With an index of the image as last resolved here to fall back on, an unreachable
    // registry is not worth waiting long for.
    let fallback = store.recall(&reference.to_string(), &platform.to_string());
    let client = match fallback {
        Some(_) => args.registry.client_retrying(
            &reference,
            RetryPolicy {
                max_attempts: 2,
                deadline: Duration::from_secs(5),
                ..RetryPolicy::default()
            },
        )?,
        None => args.registry.client_for(&reference)?,
    };
    let located = |path: PathBuf, found: Found| Located {
        windows_blob: windows_blob(&found),
        path,
        found,
        image: Some(reference.clone()),
    };
    let resolved = match client.resolve(&reference, &platform) {
        Ok(resolved) => {
            store.remember(
                &reference.to_string(),
                &platform.to_string(),
                &resolved.manifest_digest,
            );
            resolved
        }
        // The registry cannot be reached: the image as it was last resolved here, if its
        // index is in the store (its spans may be in the cache).
        Err(e) if e.is_transient() => {
            let recalled = fallback.and_then(|r| Some((store.get(&r.manifest_digest).ok()??, r)));
            let Some((stored, resolution)) = recalled else {
                return Err(anyhow::Error::new(e).context(format!(
                    "resolving {reference} (its registry cannot be reached, and this machine \
                     has not resolved it before)"
                )));
            };
            eprintln!(
                "clip: the registry of {reference} cannot be reached ({e}); using the image \
                 as resolved {} ({})",
                resolved_when(resolution.resolved_at),
                resolution.manifest_digest
            );
            return Ok(located(
                stored.path,
                Found::Remembered {
                    origin: stored.origin,
                    manifest_digest: resolution.manifest_digest,
                    resolved_at: resolution.resolved_at,
                },
            ));
        }
        Err(e) => return Err(anyhow::Error::new(e).context(format!("resolving {reference}"))),
    };

    if let Some((path, found)) = existing(&store, &client, &reference, &resolved)? {
        return Ok(located(path, found));
    }
    if args.no_index {
        bail!(
            "the registry has no clip index for {reference} (push one with `clip index \
             {reference} --push`), and --no-index forbids indexing it here"
        );
    }
    eprintln!("clip: the registry has no index for {reference}; indexing it here (--no-index to fail instead)");
    let pinned = reference.with_digest(&resolved.manifest_digest);
    let indexed = crate::cmd_index::index(&client, &pinned, &platform, None, None, quiet)?;
    let archive = Archive::open(&indexed.archive).context("reading the new index")?;
    if let Err(reason) = clip_store::check_binding(&archive, &resolved) {
        bail!("the index just made does not fit {reference}: {reason} (did the image change meanwhile?)");
    }
    let stored = store.insert(&resolved.manifest_digest, &indexed.archive, Origin::Local)?;
    Ok(located(stored.path, Found::IndexedHere))
}

/// The complete index blob in the image's repository, when the index was downloaded from it
/// (and so may hold only its metadata): where a mount reads seek windows from.
fn windows_blob(found: &Found) -> Option<String> {
    match found {
        Found::Store(Origin::Registry { blob, .. })
        | Found::Remembered {
            origin: Origin::Registry { blob, .. },
            ..
        }
        | Found::Registry { blob, .. } => blob.clone(),
        _ => None,
    }
}

/// The index of `resolved` that exists already: in the local index store (bound to the image),
/// else beside the image in its registry (downloaded into the store). `None` when neither has
/// one.
fn existing(
    store: &IndexStore,
    client: &Client,
    reference: &Reference,
    resolved: &ResolvedImage,
) -> Result<Option<(PathBuf, Found)>> {
    if let Some(stored) = store.get(&resolved.manifest_digest)? {
        let usable = bound(&stored.path, resolved).and_then(|has_windows| {
            // Without its windows, an index is only usable where they are (its blob).
            match (&stored.origin, has_windows) {
                (_, true) | (Origin::Registry { blob: Some(_), .. }, false) => Ok(()),
                _ => Err("it has no seek windows and names no index blob to read them from".into()),
            }
        });
        match usable {
            Ok(()) => {
                // A profile pushed since the index was stored is worth one more request.
                if matches!(store.profile(&resolved.manifest_digest), Ok(None)) {
                    match clip_store::find_profile(client, reference, &resolved.manifest_digest) {
                        Ok(found) => keep_profile(store, client, reference, found, resolved),
                        Err(e) => tracing::warn!("looking for a startup profile: {e}"),
                    }
                }
                return Ok(Some((stored.path, Found::Store(stored.origin))));
            }
            Err(reason) => {
                tracing::warn!(index = %stored.path.display(), %reason,
                    "the stored index does not fit the image; fetching it again");
                store.remove(&resolved.manifest_digest)?;
            }
        }
    }
    let artifacts = clip_store::find_artifacts(client, reference, &resolved.manifest_digest)?;
    if let Some(found) = artifacts.index {
        // The profile comes down at the same time as the index (kept even if the index
        // download fails: it is used once an index is there).
        let stored = std::thread::scope(|scope| {
            scope.spawn(|| keep_profile(store, client, reference, artifacts.profile, resolved));
            store
                .download(client, reference, &found, resolved)
                .with_context(|| format!("downloading the index of {reference}"))
        })?;
        return Ok(Some((
            stored.path,
            Found::Registry {
                artifact: found.artifact.digest,
                via: found.via,
                blob: match stored.origin {
                    Origin::Registry { blob, .. } => blob,
                    Origin::Local => None,
                },
            },
        )));
    }
    Ok(None)
}

/// The index of image `reference` when one exists already (the local index store, else its
/// registry), never made here: `clip snapshotter`, for which an image without an index is
/// pulled the normal way. The image is resolved in its registry first (no offline fallback).
pub fn find_existing(reference: &Reference, registry: &RegistryArgs) -> Result<Option<Located>> {
    let platform = registry.platform()?;
    let store = IndexStore::open(&registry.cache_dir())?;
    let client = registry.client_for(reference)?;
    let resolved = client
        .resolve(reference, &platform)
        .with_context(|| format!("resolving {reference}"))?;
    store.remember(
        &reference.to_string(),
        &platform.to_string(),
        &resolved.manifest_digest,
    );
    Ok(
        existing(&store, &client, reference, &resolved)?.map(|(path, found)| Located {
            windows_blob: windows_blob(&found),
            path,
            found,
            image: Some(reference.clone()),
        }),
    )
}

/// Downloads the startup profile `found` (if any) into the store, replacing the one kept: the
/// registry's is the fleet's. Best effort: a profile only makes starts faster.
fn keep_profile(
    store: &IndexStore,
    client: &Client,
    reference: &Reference,
    found: Option<clip_store::FoundIndex>,
    image: &ResolvedImage,
) {
    let Some(found) = found else {
        return;
    };
    let kept = store
        .download_profile(client, reference, &found, &image.manifest_digest)
        .and_then(|downloaded| {
            // The pack is named, not downloaded: a mount downloads it if its replay needs it.
            // A pack made here for an earlier profile is not this one's.
            let pack = downloaded.pack.as_ref().map(|p| p.size);
            store.put_pack(&image.manifest_digest, None)?;
            store.put_pack_ref(&image.manifest_digest, downloaded.pack.as_ref())?;
            Ok((store.put_profile(&downloaded.profile)?, pack))
        });
    match kept {
        Ok((path, pack)) => {
            tracing::info!(artifact = %found.artifact.digest, path = %path.display(),
            pack_bytes = ?pack, "startup profile downloaded")
        }
        Err(e) => tracing::warn!("the startup profile of {reference} is not used: {e}"),
    }
}

/// `at 2026-12-01 02:14 UTC`.
fn resolved_when(secs: u64) -> String {
    format!(
        "at {} UTC",
        units::datetime(i64::try_from(secs).unwrap_or(i64::MAX))
    )
}

/// Whether the index at `path` is bound to `image`; then whether it holds its seek windows.
fn bound(path: &Path, image: &ResolvedImage) -> Result<bool, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let archive = Archive::open(&bytes).map_err(|e| e.to_string())?;
    clip_store::check_binding(&archive, image)?;
    Ok(archive.has_windows())
}
