//! `clip pull IMAGE [OUT.clip]`: the index of an image, into the local index store (and a copy
//! at OUT): from the store if it is there, else from the image's registry, else made here.

use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::source::{locate, SourceArgs};

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
        let bytes = crate::cmd_inspect::load(&located.path)?;
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
