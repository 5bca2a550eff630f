//! `clip pull IMAGE [OUT.clip]`: the index of an image, into the local index store (and a copy
//! at OUT): from the store if it is there, else from the image's registry, else made here.
//!
//! The store keeps what a mount needs up front: an index downloaded from a registry is its
//! metadata only (the seek windows stay in the registry, read by range). OUT is always the
//! complete file, usable without the registry's index blob: for a metadata-only index, the
//! whole blob is downloaded (verified against its digest) and checked to extend the stored
//! metadata.

use std::path::PathBuf;

use std::io::Read as _;

use anyhow::{bail, Context, Result};
use clip_archive::Archive;

use crate::source::{locate, Located, SourceArgs};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The image, docker style: `alpine`, `registry:5000/app:1.2`, `app@sha256:…`.
    pub image: String,
    /// Where to copy the index, besides the local index store.
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub source: SourceArgs,
    /// No progress display.
    #[arg(long, short)]
    pub quiet: bool,
    /// Print where the index came from as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> Result<()> {
    let located = locate(&args.image, &args.source, args.quiet || args.json)?;
    if let Some(out) = &args.out {
        let bytes = complete(&located, &args.source)?;
        crate::cmd_index::write_atomically(out, &bytes)
            .with_context(|| format!("writing {}", out.display()))?;
    }
    if args.json {
        let mut v = located.found.json();
        v["path"] = serde_json::json!(located.path);
        v["output"] = serde_json::json!(args.out);
        println!("{v}");
    } else {
        println!(
            "{}: index {} from {}",
            args.image,
            located.path.display(),
            located.found.describe()
        );
    }
    Ok(())
}

/// The complete index of `located`: the stored file, or, when that is the metadata alone, the
/// index blob from the registry (at most [`clip_store::MAX_INDEX_BYTES`], verified against its
/// digest), which must begin with exactly the stored metadata.
fn complete(located: &Located, source: &SourceArgs) -> Result<Vec<u8>> {
    let stored = crate::cmd_inspect::load(&located.path)?;
    let archive =
        Archive::open(&stored).with_context(|| format!("reading {}", located.path.display()))?;
    if archive.has_windows() {
        return Ok(stored);
    }
    let (Some(image), Some(blob)) = (&located.image, &located.windows_blob) else {
        bail!(
            "{} holds the metadata of an index only, and where its complete file is is not \
             known",
            located.path.display()
        );
    };
    let size = archive.complete_len();
    if size > clip_store::MAX_INDEX_BYTES {
        bail!(
            "the index of {image} is {size} bytes, more than the {} accepted",
            clip_store::MAX_INDEX_BYTES
        );
    }
    let client = source.registry.client_for(image)?;
    let what = || format!("downloading the complete index of {image} ({blob})");
    let mut bytes = Vec::new();
    // The reader stops at `size` bytes and checks the digest at the end.
    client
        .blob_reader(image, blob, size)
        .with_context(what)?
        .read_to_end(&mut bytes)
        .with_context(what)?;
    if !bytes.starts_with(&stored) {
        bail!(
            "the index blob {blob} of {image} does not begin with the metadata kept for it; \
             run `clip pull` again after removing the cache's index store entry"
        );
    }
    let complete = Archive::open(&bytes)
        .with_context(|| format!("reading the complete index of {image} ({blob})"))?;
    if !complete.has_windows() {
        bail!("the index blob {blob} of {image} is not a complete index");
    }
    drop(complete);
    Ok(bytes)
}
