//! `clip inspect IMAGE|FILE.clip`: a summary, `--json`, and `--ls [PATH]` listings.

use std::io::Write;

use anyhow::{Context, Result};
use clip_archive::{Archive, FileType, Ino};
use serde_json::{json, Value};

use crate::source::{locate, Found, SourceArgs};
use crate::units;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The image (a reference: its index is found in the local store or its registry) or a
    /// .clip file.
    pub image: String,
    /// Machine-readable output (see docs/CLI.md for the schema).
    #[arg(long)]
    pub json: bool,
    /// List entries like `ls -l`: the directory at PATH (default `/`), or PATH itself.
    #[arg(long, value_name = "PATH", num_args = 0..=1, default_missing_value = "/")]
    pub ls: Option<String>,
    /// With --ls: list subdirectories recursively.
    #[arg(long, short = 'R', requires = "ls")]
    pub recursive: bool,
    /// List the image's startup profile (`--record`): its spans and files in first-access
    /// order.
    #[arg(long, conflicts_with = "ls")]
    pub profile: bool,
    #[command(flatten)]
    pub source: SourceArgs,
}

/// Reads an archive file (they are small: metadata only).
pub fn load(path: &std::path::Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

pub fn run(args: Args) -> Result<()> {
    let located = locate(&args.image, &args.source, args.json)?;
    let bytes = load(&located.path)?;
    let archive =
        Archive::open(&bytes).with_context(|| format!("reading {}", located.path.display()))?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    // The startup profile kept beside the index, if any (one that is unusable is said).
    let store = clip_store::IndexStore::open(&args.source.registry.cache_dir());
    let digest = &archive.meta().manifest_digest;
    let profile = store
        .as_ref()
        .map_err(|e| e.to_string())
        .and_then(|store| store.profile(digest).map_err(|e| e.to_string()))
        .unwrap_or_else(|e| {
            tracing::warn!("{e}");
            None
        });
    // Its startup pack: the ranges its replay reads, in one blob.
    let pack_bytes = store
        .ok()
        .and_then(|store| store.pack_size(digest).ok().flatten());
    match &args.ls {
        Some(path) => list(&archive, path, args.recursive, args.json, &mut out)?,
        None if args.profile => {
            let Some(profile) = &profile else {
                anyhow::bail!(
                    "no startup profile for {} (record one with `clip run --record`)",
                    args.image
                );
            };
            list_profile(&archive, profile, args.json, &mut out)?;
        }
        None if args.json => {
            let mut summary = summary_json(&archive, bytes.len())?;
            summary["index"] = located.found.json();
            summary["index"]["path"] = json!(located.path);
            summary["profile"] = match &profile {
                Some(p) => {
                    let mut v = profile_summary(&archive, p);
                    v["pack_bytes"] = json!(pack_bytes);
                    v
                }
                None => Value::Null,
            };
            serde_json::to_writer_pretty(&mut out, &summary)?;
            writeln!(out)?;
        }
        None => {
            if located.found != Found::File {
                writeln!(out, "index      {}", located.path.display())?;
                writeln!(out, "from       {}", located.found.describe())?;
            }
            summary_text(&archive, bytes.len(), &mut out)?;
            let line = match &profile {
                Some(p) => {
                    let v = profile_summary(&archive, p);
                    format!(
                        "{} spans ({} to fetch), {} files, over {:.1} s; {}",
                        v["spans"],
                        units::bytes(v["compressed_bytes"].as_u64().unwrap_or(0)),
                        v["files"],
                        v["last_ms"].as_u64().unwrap_or(0) as f64 / 1000.0,
                        match pack_bytes {
                            Some(n) => format!("startup pack {}", units::bytes(n)),
                            None => "no startup pack".to_string(),
                        }
                    )
                }
                None => "none (record one with `clip run --record`)".to_string(),
            };
            writeln!(out, "profile    {line}")?;
        }
    }
    out.flush()?;
    Ok(())
}

/// The spans of a profile that fit this index: (layer index, span index, at_ms, span).
fn profile_spans<'a>(
    archive: &'a Archive<'_>,
    profile: &'a clip_store::Profile,
) -> impl Iterator<Item = (u32, clip_archive::SpanInfo, &'a clip_store::ProfileSpan)> + 'a {
    profile.spans.iter().filter_map(|s| {
        let layer = archive.layers().iter().position(|l| l.digest == s.layer)?;
        let layer = u32::try_from(layer).ok()?;
        let span = archive
            .spans(layer)
            .ok()?
            .get(usize::try_from(s.span).ok()?)
            .ok()?;
        Some((layer, span, s))
    })
}

/// Counts of a profile: spans and files, the bytes its spans cover, its duration.
fn profile_summary(archive: &Archive<'_>, profile: &clip_store::Profile) -> Value {
    let (mut spans, mut compressed, mut uncompressed) = (0u64, 0u64, 0u64);
    for (_, span, _) in profile_spans(archive, profile) {
        spans += 1;
        compressed += span.compressed_end - span.compressed_offset;
        uncompressed += span.uncompressed_end - span.uncompressed_offset;
    }
    let last_ms = profile
        .spans
        .iter()
        .map(|s| s.at_ms)
        .chain(profile.files.iter().map(|f| f.at_ms))
        .max()
        .unwrap_or(0);
    json!({
        "spans": spans,
        "unknown_spans": profile.spans.len() as u64 - spans,
        "files": profile.files.len(),
        "compressed_bytes": compressed,
        "uncompressed_bytes": uncompressed,
        "last_ms": last_ms,
    })
}

/// `--profile`: the spans, then the files, in first-access order.
fn list_profile(
    archive: &Archive<'_>,
    profile: &clip_store::Profile,
    json: bool,
    out: &mut impl Write,
) -> Result<()> {
    if json {
        let spans: Vec<Value> = profile_spans(archive, profile)
            .map(|(layer, span, s)| {
                json!({
                    "at_ms": s.at_ms,
                    "layer": layer,
                    "span": s.span,
                    "compressed_bytes": span.compressed_end - span.compressed_offset,
                    "uncompressed_offset": span.uncompressed_offset,
                })
            })
            .collect();
        let files: Vec<Value> = profile
            .files
            .iter()
            .map(|f| json!({"at_ms": f.at_ms, "path": f.path}))
            .collect();
        serde_json::to_writer_pretty(&mut *out, &json!({"spans": spans, "files": files}))?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(
        out,
        "{:>8}  {:>5} {:>7}  {:>10}",
        "ms", "layer", "span", "fetch"
    )?;
    for (layer, span, s) in profile_spans(archive, profile) {
        writeln!(
            out,
            "{:>8}  {layer:>5} {:>7}  {:>10}",
            s.at_ms,
            s.span,
            units::bytes(span.compressed_end - span.compressed_offset)
        )?;
    }
    writeln!(out, "{:>8}  file", "ms")?;
    for f in &profile.files {
        writeln!(out, "{:>8}  {}", f.at_ms, printable(f.path.as_bytes()))?;
    }
    Ok(())
}

#[derive(Default)]
struct Counts {
    entries: u64,
    directories: u64,
    regular: u64,
    hardlinks: u64,
    symlinks: u64,
    char_devices: u64,
    block_devices: u64,
    fifos: u64,
    content_bytes: u64,
}

fn count(archive: &Archive) -> Result<Counts> {
    let mut c = Counts::default();
    let mut seen = std::collections::HashSet::new();
    // The archive's own walk: each directory is entered once, whatever the file says.
    for item in archive.walk() {
        let (_, ino) = item?;
        let inode = archive.inode(ino)?;
        c.entries += 1;
        match inode.file_type() {
            FileType::Directory => c.directories += 1,
            FileType::Regular => {
                if seen.insert(ino) {
                    c.regular += 1;
                    c.content_bytes += inode.size();
                } else {
                    c.hardlinks += 1;
                }
            }
            FileType::Symlink => c.symlinks += 1,
            FileType::CharDevice => c.char_devices += 1,
            FileType::BlockDevice => c.block_devices += 1,
            FileType::Fifo => c.fifos += 1,
        }
    }
    Ok(c)
}

fn platform_string(p: &clip_archive::Platform) -> String {
    match &p.variant {
        Some(v) => format!("{}/{}/{}", p.os, p.architecture, v),
        None => format!("{}/{}", p.os, p.architecture),
    }
}

fn summary_json(archive: &Archive, file_len: usize) -> Result<Value> {
    let meta = archive.meta();
    let config: Value = serde_json::from_str(&meta.config).unwrap_or(Value::Null);
    let c = count(archive)?;
    let sizes = archive.section_sizes();
    let mut checkpoints = 0u64;
    let layers: Vec<Value> = archive
        .layers()
        .iter()
        .map(|l| {
            checkpoints += l.span_count;
            json!({
                "digest": l.digest,
                "media_type": l.media_type,
                "compression": l.compression,
                "compressed_size": l.compressed_size,
                "uncompressed_size": l.uncompressed_size,
                "diff_id": l.diff_id,
                "span_size": l.span_size,
                "spans": l.span_count,
            })
        })
        .collect();
    let _ = file_len;
    let without_windows = sizes.metadata;
    Ok(json!({
        "format_version": clip_archive::FORMAT_VERSION,
        "image": {
            "reference": meta.reference,
            "manifest_digest": meta.manifest_digest,
            "manifest_media_type": meta.manifest_media_type,
            "platform": platform_string(&meta.platform),
            "config_digest": meta.config_digest,
            "created": config.get("created").cloned().unwrap_or(Value::Null),
            "config": config,
        },
        "layers": layers,
        "entries": {
            "total": c.entries,
            "directories": c.directories,
            "regular": c.regular,
            "hardlinks": c.hardlinks,
            "symlinks": c.symlinks,
            "char_devices": c.char_devices,
            "block_devices": c.block_devices,
            "fifos": c.fifos,
        },
        "inodes": archive.inode_count(),
        "content_bytes": c.content_bytes,
        "index_bytes": sizes.total,
        "metadata_bytes": sizes.metadata,
        "window_bytes": sizes.windows,
        "windows_here": archive.has_windows(),
        "bytes_per_entry": without_windows as f64 / c.entries.max(1) as f64,
        "checkpoints": checkpoints,
    }))
}

fn summary_text(archive: &Archive, file_len: usize, out: &mut impl Write) -> Result<()> {
    let v = summary_json(archive, file_len)?;
    let meta = archive.meta();
    writeln!(out, "image      {}", meta.reference)?;
    writeln!(out, "digest     {}", meta.manifest_digest)?;
    writeln!(out, "platform   {}", platform_string(&meta.platform))?;
    if let Some(created) = v["image"]["created"].as_str() {
        writeln!(out, "created    {created}")?;
    }
    writeln!(out, "layers     {}", archive.layers().len())?;
    for (i, l) in archive.layers().iter().enumerate() {
        writeln!(
            out,
            "  {i:>3}  {}  {:<5} {:>10} → {:>10}  {} spans",
            l.digest,
            format!("{:?}", l.compression).to_lowercase(),
            units::bytes(l.compressed_size),
            units::bytes(l.uncompressed_size),
            l.span_count
        )?;
    }
    let e = &v["entries"];
    writeln!(
        out,
        "entries    {} ({} directories, {} files, {} hardlinks, {} symlinks, {} devices, {} fifos)",
        units::count(e["total"].as_u64().unwrap_or(0)),
        e["directories"],
        e["regular"],
        e["hardlinks"],
        e["symlinks"],
        e["char_devices"].as_u64().unwrap_or(0) + e["block_devices"].as_u64().unwrap_or(0),
        e["fifos"],
    )?;
    writeln!(
        out,
        "content    {}",
        units::bytes(v["content_bytes"].as_u64().unwrap_or(0))
    )?;
    writeln!(
        out,
        "index      {}: metadata {} ({:.1} bytes per entry), seek windows {}{}",
        units::bytes(v["index_bytes"].as_u64().unwrap_or(0)),
        units::bytes(v["metadata_bytes"].as_u64().unwrap_or(0)),
        v["bytes_per_entry"].as_f64().unwrap_or(0.0),
        units::bytes(v["window_bytes"].as_u64().unwrap_or(0)),
        if archive.has_windows() {
            ""
        } else {
            " (in the registry: this file is the metadata)"
        }
    )?;
    let span = archive.layers().first().map_or(0, |l| l.span_size);
    writeln!(
        out,
        "spans      {} each, {} checkpoints",
        units::bytes(span),
        v["checkpoints"]
    )?;
    Ok(())
}

fn type_char(t: FileType) -> char {
    match t {
        FileType::Directory => 'd',
        FileType::Regular => '-',
        FileType::Symlink => 'l',
        FileType::CharDevice => 'c',
        FileType::BlockDevice => 'b',
        FileType::Fifo => 'p',
    }
}

fn type_name(t: FileType) -> &'static str {
    match t {
        FileType::Directory => "dir",
        FileType::Regular => "file",
        FileType::Symlink => "symlink",
        FileType::CharDevice => "char",
        FileType::BlockDevice => "block",
        FileType::Fifo => "fifo",
    }
}

/// `rwsr-xr-t` from permission bits, like ls.
fn mode_string(t: FileType, mode: u32) -> String {
    let mut s = String::with_capacity(10);
    s.push(type_char(t));
    for (shift, special, special_char) in [(6, 0o4000, 's'), (3, 0o2000, 's'), (0, 0o1000, 't')] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        let exec = bits & 1 != 0;
        s.push(match (mode & special != 0, exec) {
            (true, true) => special_char,
            (true, false) => special_char.to_ascii_uppercase(),
            (false, true) => 'x',
            (false, false) => '-',
        });
    }
    s
}

fn entry_json(archive: &Archive, path: &str, ino: Ino) -> Result<Value> {
    let i = archive.inode(ino)?;
    let mut v = json!({
        "path": path,
        "type": type_name(i.file_type()),
        "mode": i.mode(),
        "uid": i.uid(),
        "gid": i.gid(),
        "size": i.size(),
        "mtime": i.mtime_sec(),
        "mtime_nsec": i.mtime_nsec(),
        "nlink": i.nlink(),
        "ino": ino,
    });
    if i.file_type() == FileType::Symlink {
        v["link_target"] = json!(String::from_utf8_lossy(archive.symlink_target(ino)?));
    }
    if matches!(i.file_type(), FileType::CharDevice | FileType::BlockDevice) {
        v["rdev_major"] = json!(i.rdev_major());
        v["rdev_minor"] = json!(i.rdev_minor());
    }
    if i.has_xattrs() {
        let x: serde_json::Map<String, Value> = archive
            .xattrs(ino)?
            .into_iter()
            .map(|(k, val)| {
                (
                    String::from_utf8_lossy(k).into_owned(),
                    json!(hex::encode(val)),
                )
            })
            .collect();
        v["xattrs"] = Value::Object(x);
    }
    if let Some(d) = i.data() {
        v["layer"] = json!(d.layer);
        v["offset"] = json!(d.offset);
    }
    Ok(v)
}

fn entry_line(archive: &Archive, name: &str, ino: Ino) -> Result<String> {
    let i = archive.inode(ino)?;
    let size = match i.file_type() {
        FileType::CharDevice | FileType::BlockDevice => {
            format!("{}, {}", i.rdev_major(), i.rdev_minor())
        }
        _ => i.size().to_string(),
    };
    let mut line = format!(
        "{} {:>3} {:>5} {:>5} {:>10} {} {}",
        mode_string(i.file_type(), i.mode()),
        i.nlink(),
        i.uid(),
        i.gid(),
        size,
        units::datetime(i.mtime_sec()),
        name
    );
    if i.file_type() == FileType::Symlink {
        line.push_str(" -> ");
        line.push_str(&printable(archive.symlink_target(ino)?));
    }
    Ok(line)
}

/// A name as a terminal can show it: control characters escaped (`\n`, `\u{1b}`), bytes that
/// are not UTF-8 as `\xNN`, so that no name in an image can move the cursor or change colours.
fn printable(name: &[u8]) -> String {
    let mut out = String::with_capacity(name.len());
    for chunk in name.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_control() || c == '\\' {
                out.extend(c.escape_default());
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

fn join(dir: &str, name: &[u8]) -> String {
    let name = String::from_utf8_lossy(name);
    if dir == "/" {
        format!("/{name}")
    } else {
        format!("{dir}/{name}")
    }
}

fn list(
    archive: &Archive,
    path: &str,
    recursive: bool,
    json: bool,
    out: &mut impl Write,
) -> Result<()> {
    let ino = archive
        .resolve(path)?
        .with_context(|| format!("{path}: no such file or directory in the archive"))?;
    let norm = {
        let parts: Vec<&str> = path
            .split('/')
            .filter(|p| !p.is_empty() && *p != ".")
            .collect();
        format!("/{}", parts.join("/"))
    };
    let mut json_out = Vec::new();
    if archive.inode(ino)?.file_type() != FileType::Directory {
        if json {
            json_out.push(entry_json(archive, &norm, ino)?);
        } else {
            writeln!(
                out,
                "{}",
                entry_line(archive, &printable(norm.as_bytes()), ino)?
            )?;
        }
    } else {
        if json {
            json_out.push(entry_json(archive, &norm, ino)?);
        }
        let mut queue = std::collections::VecDeque::from([(norm.clone(), ino)]);
        let mut first = true;
        while let Some((dir_path, dir)) = queue.pop_front() {
            if !json && recursive {
                if !first {
                    writeln!(out)?;
                }
                writeln!(out, "{}:", printable(dir_path.as_bytes()))?;
            }
            first = false;
            for child in archive.read_dir(dir)? {
                let (name, child_ino) = child?;
                let child_path = join(&dir_path, name);
                if json {
                    json_out.push(entry_json(archive, &child_path, child_ino)?);
                } else {
                    writeln!(out, "{}", entry_line(archive, &printable(name), child_ino)?)?;
                }
                if recursive && archive.inode(child_ino)?.file_type() == FileType::Directory {
                    queue.push_back((child_path, child_ino));
                }
            }
        }
    }
    if json {
        serde_json::to_writer(&mut *out, &json_out)?;
        writeln!(out)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_render_like_ls() {
        assert_eq!(mode_string(FileType::Regular, 0o4755), "-rwsr-xr-x");
        assert_eq!(mode_string(FileType::Directory, 0o1777), "drwxrwxrwt");
        assert_eq!(mode_string(FileType::Regular, 0o2644), "-rw-r-Sr--");
        assert_eq!(mode_string(FileType::Symlink, 0o777), "lrwxrwxrwx");
    }

    #[test]
    fn names_never_reach_the_terminal_raw() {
        assert_eq!(printable(b"plain-name.txt"), "plain-name.txt");
        assert_eq!(printable("caf\u{e9}".as_bytes()), "caf\u{e9}");
        assert_eq!(printable(b"a\nb"), "a\\nb");
        assert_eq!(printable(b"\x1b[31mred"), "\\u{1b}[31mred");
        assert_eq!(printable(b"bad\xff"), "bad\\xff");
        assert_eq!(printable(b"back\\slash"), "back\\\\slash");
    }
}
