//! Layers: fixture → uncompressed tar (hand-written headers) → compressed blob.
//!
//! Headers are written byte by byte rather than through `tar::Builder`, so that every dialect
//! detail is under the test's control (and so that names the `tar` crate refuses, like `../x`,
//! can be written on purpose):
//!
//! | need | [`TarFlavor::Ustar`] | [`TarFlavor::Gnu`] | [`TarFlavor::Pax`] |
//! | --- | --- | --- | --- |
//! | name > 100 bytes | `prefix` field split, else error | `././@LongLink` type `L` | `prefix` split, else PAX `path` |
//! | link name > 100 bytes | error | `././@LongLink` type `K` | PAX `linkpath` |
//! | uid/gid > 2097151 | error | base-256 | PAX `uid`/`gid` |
//! | sub-second mtime | error | error | PAX `mtime=SEC.FRACTION` |
//! | mtime ≥ 2^33 s | error | base-256 | PAX `mtime` |
//! | xattrs | error | error | PAX `SCHILY.xattr.NAME` |
//!
//! A PAX header (`x`, named `PaxHeaders.0/BASENAME`) is written only for entries that need one
//! (or that carry `pax.*` records, in any flavour). Ustar and PAX headers carry the `ustar\0`
//! `00` magic, GNU headers `ustar  \0`.

use std::io::Write as _;

use sha2::{Digest as _, Sha256};

use crate::fixture::{EntryKind, Fixture, FixtureEntry};
use crate::Error;

/// The tar dialect of a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TarFlavor {
    /// POSIX ustar only: anything it cannot express is an error.
    Ustar,
    /// GNU: long names through `././@LongLink`, big numbers in base-256.
    Gnu,
    /// POSIX pax: ustar headers, with a PAX extended header where needed.
    #[default]
    Pax,
}

/// How a layer's tar is compressed into its blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// The blob is the tar.
    None,
    /// One gzip member.
    #[default]
    Gzip,
    /// This many independent gzip members, concatenated, splitting the tar evenly (at arbitrary
    /// byte positions, not entry boundaries).
    GzipMultiMember(usize),
    /// One zstd frame.
    Zstd,
    /// Independent zstd frames of this many uncompressed bytes each (the last may be shorter).
    ZstdMultiFrame(usize),
}

impl Compression {
    /// `""`, `"+gzip"` or `"+zstd"`: the suffix of the OCI layer media type.
    pub fn oci_suffix(self) -> &'static str {
        match self {
            Compression::None => "",
            Compression::Gzip | Compression::GzipMultiMember(_) => "+gzip",
            Compression::Zstd | Compression::ZstdMultiFrame(_) => "+zstd",
        }
    }
}

/// How [`Layer::from_fixture_with`] writes a layer. Chainable setters; see [`Default`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerOptions {
    /// Tar dialect (default PAX).
    pub flavor: TarFlavor,
    /// Blob compression (default one gzip member).
    pub compression: Compression,
    /// Gzip level 0-9 (default 6, gzip's own default; 1 is much faster for big layers).
    pub gzip_level: u32,
    /// Zstd level (default 3).
    pub zstd_level: i32,
    /// Write names as `./etc/hostname` instead of `etc/hostname` (hardlink names too).
    pub dot_prefix: bool,
    /// When set, the tar starts with a PAX global header (`g`, named `pax_global_header`) with
    /// these records. umoci 0.4.7 refuses such layers (`unknown typeflag '\x67'`), so
    /// [`oracle_unpack`](crate::oracle_unpack) cannot unpack them.
    pub global_header: Option<Vec<(String, Vec<u8>)>>,
}

impl Default for LayerOptions {
    fn default() -> Self {
        Self {
            flavor: TarFlavor::Pax,
            compression: Compression::Gzip,
            gzip_level: 6,
            zstd_level: 3,
            dot_prefix: false,
            global_header: None,
        }
    }
}

impl LayerOptions {
    /// Sets the tar dialect.
    pub fn flavor(mut self, flavor: TarFlavor) -> Self {
        self.flavor = flavor;
        self
    }
    /// Sets the compression.
    pub fn compression(mut self, compression: Compression) -> Self {
        self.compression = compression;
        self
    }
    /// Sets the gzip level.
    pub fn gzip_level(mut self, level: u32) -> Self {
        self.gzip_level = level;
        self
    }
    /// Sets the zstd level.
    pub fn zstd_level(mut self, level: i32) -> Self {
        self.zstd_level = level;
        self
    }
    /// `./`-prefixed names.
    pub fn dot_prefix(mut self, on: bool) -> Self {
        self.dot_prefix = on;
        self
    }
    /// A leading PAX global header with these records.
    pub fn global_header(mut self, records: &[(&str, &str)]) -> Self {
        let records = records
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()));
        self.global_header = Some(records.collect());
        self
    }
}

/// One image layer: its tar, its blob, and their digests.
#[derive(Debug, Clone)]
pub struct Layer {
    tar: Vec<u8>,
    blob: Vec<u8>,
    compression: Compression,
    diff_id: String,
    digest: String,
    fixture: Option<Fixture>,
}

impl Layer {
    /// A PAX, gzip layer from fixture text. Panics (with the fixture line) on a bad fixture.
    pub fn from_fixture(text: &str) -> Layer {
        Self::from_fixture_with(text, &LayerOptions::default())
    }

    /// A layer from fixture text with these options. Panics (with the fixture line) on a bad
    /// fixture or one the flavour cannot express.
    pub fn from_fixture_with(text: &str, options: &LayerOptions) -> Layer {
        Self::try_from_fixture_with(text, options).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Layer::from_fixture_with`] returning the error (for tests of what a flavour refuses).
    pub fn try_from_fixture_with(text: &str, options: &LayerOptions) -> Result<Layer, Error> {
        let fixture = Fixture::parse(text)?;
        let tar = write_tar(&fixture, options)?;
        let mut layer = Self::from_tar(tar, options.compression, options);
        layer.fixture = Some(fixture);
        Ok(layer)
    }

    /// A layer from a ready-made tar, compressed as `options` say.
    pub fn from_tar(tar: Vec<u8>, compression: Compression, options: &LayerOptions) -> Layer {
        let blob = compress(&tar, compression, options.gzip_level, options.zstd_level);
        Self::from_raw(tar, blob, compression)
    }

    /// A layer from a tar and a blob taken as they are: the blob need not be the tar compressed
    /// (for diff_id mismatch tests); `compression` only chooses the media type.
    pub fn from_raw(tar: Vec<u8>, blob: Vec<u8>, compression: Compression) -> Layer {
        Layer {
            diff_id: sha256_digest(&tar),
            digest: sha256_digest(&blob),
            tar,
            blob,
            compression,
            fixture: None,
        }
    }

    /// The uncompressed tar.
    pub fn tar(&self) -> &[u8] {
        &self.tar
    }
    /// The blob as pushed.
    pub fn blob(&self) -> &[u8] {
        &self.blob
    }
    /// The compression of the blob.
    pub fn compression(&self) -> Compression {
        self.compression
    }
    /// `sha256:…` of the tar (the image config's `rootfs.diff_ids` entry).
    pub fn diff_id(&self) -> &str {
        &self.diff_id
    }
    /// `sha256:…` of the blob.
    pub fn digest(&self) -> &str {
        &self.digest
    }
    /// The parsed fixture, for layers built from one.
    pub fn fixture(&self) -> Option<&Fixture> {
        self.fixture.as_ref()
    }
}

/// `sha256:HEX` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// Compresses `tar` as `compression` says.
pub fn compress(tar: &[u8], compression: Compression, gzip_level: u32, zstd_level: i32) -> Vec<u8> {
    let gzip = |part: &[u8]| {
        let level = flate2::Compression::new(gzip_level);
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), level);
        enc.write_all(part).expect("gzip into memory");
        enc.finish().expect("gzip into memory")
    };
    let zstd = |part: &[u8]| zstd::stream::encode_all(part, zstd_level).expect("zstd into memory");
    match compression {
        Compression::None => tar.to_vec(),
        Compression::Gzip => gzip(tar),
        Compression::GzipMultiMember(n) => {
            assert!(n > 0, "GzipMultiMember needs at least one member");
            (0..n)
                .flat_map(|i| gzip(&tar[i * tar.len() / n..(i + 1) * tar.len() / n]))
                .collect()
        }
        Compression::Zstd => zstd(tar),
        Compression::ZstdMultiFrame(frame) => {
            assert!(frame > 0, "ZstdMultiFrame needs a frame size");
            tar.chunks(frame).flat_map(zstd).collect()
        }
    }
}

const BLOCK: usize = 512;
const MAX_OCTAL_8: u64 = 0o7777777;
const MAX_OCTAL_12: u64 = 0o77777777777;

/// Writes the fixture as an uncompressed tar.
pub fn write_tar(fixture: &Fixture, options: &LayerOptions) -> Result<Vec<u8>, Error> {
    let mut w = TarWriter {
        out: Vec::new(),
        flavor: options.flavor,
    };
    if let Some(records) = &options.global_header {
        let data = pax_records(records);
        let h = w.header(b"pax_global_header", b'g', data.len() as u64);
        w.entry(h, &data);
    }
    for e in &fixture.entries {
        w.fixture_entry(e, options.dot_prefix)
            .map_err(|m| format!("fixture line {}: {m}", e.line))?;
    }
    w.out.resize(w.out.len() + 2 * BLOCK, 0);
    Ok(w.out)
}

fn tar_name(path: &str, dir: bool, dot_prefix: bool) -> Vec<u8> {
    if path == "/" {
        return b"./".to_vec();
    }
    let mut name = if dot_prefix { "." } else { "" }.to_string();
    name.push_str(if dot_prefix { path } else { &path[1..] });
    if dir {
        name.push('/');
    }
    name.into_bytes()
}

fn pax_records(records: &[(String, Vec<u8>)]) -> Vec<u8> {
    let borrowed: Vec<(&str, &[u8])> = records
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_slice()))
        .collect();
    crate::rawtar::pax_records(&borrowed)
}

struct TarWriter {
    out: Vec<u8>,
    flavor: TarFlavor,
}

impl TarWriter {
    /// A header block with the magic of the flavour, the name (truncated) and type set.
    fn header(&self, name: &[u8], typeflag: u8, size: u64) -> [u8; BLOCK] {
        let mut h = [0u8; BLOCK];
        put_bytes(&mut h[0..100], name);
        put_octal(&mut h[100..108], 0o644);
        put_octal(&mut h[108..116], 0);
        put_octal(&mut h[116..124], 0);
        put_octal(&mut h[124..136], size);
        put_octal(&mut h[136..148], 0);
        h[156] = typeflag;
        if self.flavor == TarFlavor::Gnu {
            h[257..265].copy_from_slice(b"ustar  \0");
        } else {
            h[257..265].copy_from_slice(b"ustar\x0000");
        }
        h
    }

    /// Appends a header (after filling in its checksum) and its data, padded to a block.
    fn entry(&mut self, h: [u8; BLOCK], data: &[u8]) {
        self.entry_with(h, |out| out.extend_from_slice(data));
    }

    /// Like [`TarWriter::entry`], the data appended by `write_data`.
    fn entry_with(&mut self, mut h: [u8; BLOCK], write_data: impl FnOnce(&mut Vec<u8>)) {
        h[148..156].fill(b' ');
        let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
        h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        self.out.extend_from_slice(&h);
        write_data(&mut self.out);
        self.out.resize(self.out.len().next_multiple_of(BLOCK), 0);
    }

    fn fixture_entry(&mut self, e: &FixtureEntry, dot_prefix: bool) -> Result<(), String> {
        let flavor = self.flavor;
        let (typeflag, size) = match e.kind {
            EntryKind::Dir => (b'5', 0),
            EntryKind::File | EntryKind::Whiteout | EntryKind::Opaque => (b'0', e.content.len()),
            EntryKind::Symlink => (b'2', 0),
            EntryKind::Hardlink => (b'1', 0),
            EntryKind::Char => (b'3', 0),
            EntryKind::Block => (b'4', 0),
            EntryKind::Fifo => (b'6', 0),
        };
        let name = match &e.raw_name {
            Some(raw) => raw.clone(),
            None => tar_name(&e.path, e.kind == EntryKind::Dir, dot_prefix),
        };
        let linkname = match (&e.raw_linkname, &e.target) {
            (Some(raw), _) => raw.clone(),
            (None, Some(t)) if e.kind == EntryKind::Hardlink => tar_name(t, false, dot_prefix),
            (None, Some(t)) => t.clone().into_bytes(),
            (None, None) => Vec::new(),
        };

        let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
        let mut h = self.header(b"", typeflag, size);

        // Name: the ustar prefix split where the flavour has it, else the flavour's extension.
        let split = if flavor == TarFlavor::Gnu {
            None
        } else {
            ustar_split(&name)
        };
        if name.len() <= 100 {
            put_bytes(&mut h[0..100], &name);
        } else if let Some((prefix, rest)) = split {
            put_bytes(&mut h[345..500], prefix);
            put_bytes(&mut h[0..100], rest);
        } else {
            match flavor {
                TarFlavor::Ustar => {
                    return Err(format!("name of {} bytes needs Gnu or Pax", name.len()))
                }
                TarFlavor::Gnu => self.long_link(b'L', &name),
                TarFlavor::Pax => pax.push(("path".into(), name.clone())),
            }
            put_bytes(&mut h[0..100], &name[..100]);
        }
        if linkname.len() <= 100 {
            put_bytes(&mut h[157..257], &linkname);
        } else {
            match flavor {
                TarFlavor::Ustar => return Err("link name > 100 bytes needs Gnu or Pax".into()),
                TarFlavor::Gnu => self.long_link(b'K', &linkname),
                TarFlavor::Pax => pax.push(("linkpath".into(), linkname.clone())),
            }
            put_bytes(&mut h[157..257], &linkname[..100]);
        }

        put_octal(&mut h[100..108], u64::from(e.mode));
        for (id, range, key) in [(e.uid, 108..116, "uid"), (e.gid, 116..124, "gid")] {
            let id = u64::from(id);
            if id <= MAX_OCTAL_8 {
                put_octal(&mut h[range], id);
                continue;
            }
            match flavor {
                TarFlavor::Ustar => return Err(format!("{key} {id} > 2097151 needs Gnu or Pax")),
                TarFlavor::Gnu => put_base256(&mut h[range], id),
                TarFlavor::Pax => {
                    put_octal(&mut h[range], 0);
                    pax.push((key.into(), id.to_string().into_bytes()));
                }
            }
        }
        let big_mtime = e.mtime > MAX_OCTAL_12;
        if big_mtime {
            match flavor {
                TarFlavor::Ustar => return Err("mtime beyond 2^33-1 needs Gnu or Pax".into()),
                TarFlavor::Gnu => put_base256(&mut h[136..148], e.mtime),
                TarFlavor::Pax => put_octal(&mut h[136..148], 0),
            }
        } else {
            put_octal(&mut h[136..148], e.mtime);
        }
        if e.mtime_nsec != 0 || (big_mtime && flavor == TarFlavor::Pax) {
            if flavor != TarFlavor::Pax {
                return Err("a sub-second mtime needs Pax".into());
            }
            let mut value = e.mtime.to_string();
            if e.mtime_nsec != 0 {
                let fraction = format!("{:09}", e.mtime_nsec);
                value = format!("{value}.{}", fraction.trim_end_matches('0'));
            }
            pax.push(("mtime".into(), value.into_bytes()));
        }
        if let Some(uname) = &e.uname {
            put_bytes(&mut h[265..297], uname.as_bytes());
        }
        if let Some(gname) = &e.gname {
            put_bytes(&mut h[297..329], gname.as_bytes());
        }
        if matches!(e.kind, EntryKind::Char | EntryKind::Block) {
            put_octal(&mut h[329..337], u64::from(e.major));
            put_octal(&mut h[337..345], u64::from(e.minor));
        }
        if !e.xattrs.is_empty() && flavor != TarFlavor::Pax {
            return Err("xattrs need Pax".into());
        }
        pax.extend(
            e.xattrs
                .iter()
                .map(|(k, v)| (format!("SCHILY.xattr.{k}"), v.clone())),
        );
        pax.extend(e.pax.iter().cloned());

        if !pax.is_empty() {
            let data = pax_records(&pax);
            let base = name
                .rsplit(|&b| b == b'/')
                .find(|s| !s.is_empty())
                .unwrap_or(b".");
            let mut pax_name = b"PaxHeaders.0/".to_vec();
            pax_name.extend_from_slice(&base[..base.len().min(87)]);
            let mut ph = self.header(&pax_name, b'x', data.len() as u64);
            put_octal(&mut ph[136..148], e.mtime.min(MAX_OCTAL_12));
            self.entry(ph, &data);
        }
        self.entry_with(h, |out| e.content.write_to(out));
        Ok(())
    }

    /// A GNU `././@LongLink` entry carrying the next entry's long name (`L`) or link name (`K`).
    fn long_link(&mut self, typeflag: u8, name: &[u8]) {
        let mut data = name.to_vec();
        data.push(0);
        let mut h = self.header(b"././@LongLink", typeflag, data.len() as u64);
        put_octal(&mut h[100..108], 0);
        self.entry(h, &data);
    }
}

/// Splits a name into ustar `prefix` (≤ 155) and `name` (≤ 100) at a `/`, if possible.
fn ustar_split(name: &[u8]) -> Option<(&[u8], &[u8])> {
    let trimmed = name.strip_suffix(b"/").unwrap_or(name);
    (0..trimmed.len())
        .rev()
        .filter(|&i| trimmed[i] == b'/')
        .find_map(|i| {
            let (prefix, rest) = (&name[..i], &name[i + 1..]);
            (prefix.len() <= 155 && rest.len() <= 100 && !rest.is_empty()).then_some((prefix, rest))
        })
}

fn put_bytes(field: &mut [u8], value: &[u8]) {
    let n = value.len().min(field.len());
    field[..n].copy_from_slice(&value[..n]);
}

/// Zero-padded octal with a trailing NUL; panics if it does not fit (callers check).
fn put_octal(field: &mut [u8], value: u64) {
    let digits = format!("{value:0width$o}", width = field.len() - 1);
    assert_eq!(
        digits.len(),
        field.len() - 1,
        "{value} does not fit an octal tar field"
    );
    field[..digits.len()].copy_from_slice(digits.as_bytes());
    field[digits.len()] = 0;
}

/// GNU base-256: high bit of the first byte set, big-endian value in the rest.
fn put_base256(field: &mut [u8], value: u64) {
    field.fill(0);
    let n = field.len();
    field[n - 8..].copy_from_slice(&value.to_be_bytes());
    field[0] |= 0x80;
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::*;

    /// What the `tar` crate reads back: name, uid, link name, data.
    struct ReadBack {
        name: String,
        uid: u64,
        link: Option<String>,
        data: Vec<u8>,
    }

    fn entries(tar: &[u8]) -> Vec<ReadBack> {
        let mut archive = tar::Archive::new(tar);
        let mut out = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let name = String::from_utf8(entry.path_bytes().into_owned()).unwrap();
            let link = entry
                .link_name_bytes()
                .map(|l| String::from_utf8(l.into_owned()).unwrap());
            let uid = entry.header().uid().unwrap();
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            out.push(ReadBack {
                name,
                uid,
                link,
                data,
            });
        }
        out
    }

    const LONG: &str = "/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa/f";

    #[test]
    fn every_flavour_reads_back_with_the_tar_crate() {
        let fixture = format!(
            "/etc dir\n/etc/x file 0644 3000000 5 content=\"hi\"\n{LONG} file content=y\n\
             /l symlink target={}\n",
            &LONG[1..]
        );
        for flavor in [TarFlavor::Gnu, TarFlavor::Pax] {
            let opts = LayerOptions::default()
                .flavor(flavor)
                .compression(Compression::None);
            let layer = Layer::from_fixture_with(&fixture, &opts);
            let got = entries(layer.tar());
            assert_eq!(got.len(), 4, "{flavor:?}");
            assert_eq!(got[0].name, "etc/");
            assert_eq!(got[1].name, "etc/x");
            assert_eq!(got[1].data, b"hi");
            assert_eq!(got[2].name, &LONG[1..]);
            assert_eq!(got[3].link.as_deref(), Some(&LONG[1..]));
            assert_eq!(layer.blob(), layer.tar());
            // The tar crate applies a PAX uid, and decodes GNU base-256 itself.
            assert_eq!(got[1].uid, 3_000_000, "{flavor:?}");
        }
        let ustar = LayerOptions::default().flavor(TarFlavor::Ustar);
        let err = write_tar(&Fixture::parse(&fixture).unwrap(), &ustar).unwrap_err();
        assert!(err.to_string().contains("line 2: uid 3000000"), "{err}");
    }

    #[test]
    fn pax_records_hold_mtime_xattrs_and_lengths() {
        let opts = LayerOptions::default()
            .compression(Compression::None)
            .dot_prefix(true)
            .global_header(&[("comment", "made by clip-testkit")]);
        let layer = Layer::from_fixture_with(
            "/d/f file mtime=12.5 xattr.user.a=0x00ff\n/d/h hardlink target=/d/f",
            &opts,
        );
        let mut archive = tar::Archive::new(layer.tar());
        let mut it = archive.entries().unwrap();
        let global = it.next().unwrap().unwrap();
        assert_eq!(global.header().entry_type(), tar::EntryType::XGlobalHeader);
        let mut f = it.next().unwrap().unwrap();
        assert_eq!(&*f.path_bytes(), b"./d/f");
        let pax: Vec<(String, Vec<u8>)> = f
            .pax_extensions()
            .unwrap()
            .unwrap()
            .map(|e| e.unwrap())
            .map(|e| (e.key().unwrap().to_string(), e.value_bytes().to_vec()))
            .collect();
        assert_eq!(
            pax,
            vec![
                ("mtime".into(), b"12.5".to_vec()),
                ("SCHILY.xattr.user.a".into(), vec![0, 255])
            ]
        );
        let h = it.next().unwrap().unwrap();
        assert_eq!(&*h.link_name_bytes().unwrap(), b"./d/f");
        // A record whose length crosses a power of ten.
        assert_eq!(pax_records(&[("k".into(), vec![b'v'; 93])]).len(), 99);
        let record = pax_records(&[("k".into(), vec![b'v'; 94])]);
        assert_eq!(record.len(), 101);
        assert!(record.starts_with(b"101 k="));
    }

    #[test]
    fn compressions_round_trip() {
        let tar = crate::text::pseudo_text(300_000, 1);
        for c in [
            Compression::Gzip,
            Compression::GzipMultiMember(3),
            Compression::Zstd,
            Compression::ZstdMultiFrame(65536),
        ] {
            let blob = compress(&tar, c, 6, 3);
            let mut back = Vec::new();
            match c.oci_suffix() {
                "+gzip" => {
                    flate2::read::MultiGzDecoder::new(&blob[..])
                        .read_to_end(&mut back)
                        .unwrap();
                }
                _ => back = zstd::stream::decode_all(&blob[..]).unwrap(),
            }
            assert_eq!(back, tar, "{c:?}");
        }
        let members = compress(&tar, Compression::GzipMultiMember(3), 6, 3);
        let mut first = Vec::new();
        flate2::read::GzDecoder::new(&members[..])
            .read_to_end(&mut first)
            .unwrap();
        assert_eq!(first, &tar[..100_000]);
        let frames = compress(&tar, Compression::ZstdMultiFrame(65536), 6, 3);
        let magic = [0x28, 0xb5, 0x2f, 0xfd];
        assert_eq!(frames.windows(4).filter(|w| *w == magic).count(), 5);
    }
}
