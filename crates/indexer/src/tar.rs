//! A streaming tar header reader that reads headers exactly as Go's `archive/tar` does (docker,
//! containerd and umoci all use it), so that an index agrees with a pull and unpack.
//!
//! [`TarReader`] takes an `io::Read` of an *uncompressed* tar stream, tracks the absolute offset
//! and yields one [`Header`] per entry, with the exact offset of the entry's data in the stream
//! ([`Header::data_offset`]). It owns the byte-level rules only: header blocks, checksums,
//! numeric fields, the ustar/GNU/star/V7 layouts, PAX records and GNU long names, the
//! end-of-archive marker. What an entry *means* (paths, whiteouts, xattr policy, limits on paths)
//! is [`crate::tarwalk`]'s.
//!
//! The rules, as Go applies them:
//!
//! * A header block is valid when its checksum field (octal) equals the unsigned or the signed
//!   sum of the block with the checksum field read as spaces. The magic chooses the layout:
//!   `ustar\0` (ustar/PAX; with a `tar\0` trailer, star), `ustar ` + ` \0` (GNU), else V7.
//! * Numeric fields are octal, leading and trailing spaces and NULs ignored (all NULs is 0), or
//!   base-256 (GNU binary, two's complement) when the first byte has its high bit set.
//! * Hardlinks, symlinks, devices, directories and FIFOs carry no data, whatever their size
//!   field says. Typeflag `\0` is a directory when the name ends in `/`, else a regular file.
//! * `x` (PAX) and `L`/`K` (GNU long name / link name) headers describe the next entry; a later
//!   one of the same kind replaces an earlier one; a GNU long name wins over a PAX `path`. An
//!   empty PAX value keeps the header's own field. Long names are cut at their first NUL.
//! * `g` (PAX global) headers are validated, then ignored (as docker and containerd do), with
//!   one warning per stream; they drop whatever extension headers preceded them.
//! * Two zero blocks end the archive, and so does the stream ending at a header boundary (or
//!   inside the padding of the last entry); a zero block followed by anything else is an error.
//!
//! Memory is bounded whatever the input: extension headers larger than
//! [`MAX_EXTENDED_HEADER`] are refused from their size field, before anything is read, and the
//! number of entries is capped at [`MAX_ENTRIES`].

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Read};

/// The tar block size.
pub const BLOCK: u64 = 512;

/// The largest PAX extended header or GNU long name / link name accepted, in bytes (Go's
/// `maxSpecialFileSize`).
pub const MAX_EXTENDED_HEADER: u64 = 1 << 20;

/// The most entries one stream may hold (extension headers are not entries; global headers are).
pub const MAX_ENTRIES: u64 = 10_000_000;

/// How many bytes of a name an error message shows.
const EXCERPT: usize = 100;

/// The header layout, from the magic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Unix V7: no magic; no owner names, device numbers or prefix.
    V7,
    /// POSIX ustar (and PAX, which is ustar with extended headers).
    Ustar,
    /// GNU tar.
    Gnu,
    /// Jörg Schilling's star (a ustar magic and a `tar\0` trailer).
    Star,
}

/// One entry, with its extension headers applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Offset of the entry's own header block (after any extension headers).
    pub offset: u64,
    /// The layout of that block.
    pub format: Format,
    /// The typeflag, `\0` already resolved to `0` or `5`.
    pub typeflag: u8,
    /// The name: PAX `path`, GNU long name or `prefix/name`; not normalized.
    pub name: Vec<u8>,
    /// The link name: PAX `linkpath`, GNU long link name or the header's field.
    pub linkname: Vec<u8>,
    /// Bytes of data that follow the header (0 for the types that carry none).
    pub size: u64,
    /// The mode field as Go reads it (may hold more than permission bits).
    pub mode: i64,
    pub uid: i64,
    pub gid: i64,
    pub mtime_sec: i64,
    /// Nanoseconds (only a PAX `mtime` has them); always counting forward.
    pub mtime_nsec: u32,
    pub devmajor: i64,
    pub devminor: i64,
    /// `SCHILY.xattr.NAME` records with a non-empty value (Go drops empty ones), by name.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// An old GNU sparse header (`S`) or PAX `GNU.sparse.*` records.
    pub sparse: bool,
}

impl Header {
    /// Where the entry's data starts in the stream.
    pub fn data_offset(&self) -> u64 {
        self.offset + BLOCK
    }
}

/// Why a tar stream cannot be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TarError {
    /// Reading the underlying stream failed (decompression, network). The message is
    /// completed by `source` (print the chain).
    #[error("reading the tar stream at offset {offset} failed")]
    Read {
        /// Offset in the tar stream where the read was attempted.
        offset: u64,
        source: io::Error,
    },
    /// The stream breaks a tar rule.
    #[error("{}: {problem}", entry_context(*.offset, .name.as_deref()))]
    Invalid {
        /// Offset of the header block at fault.
        offset: u64,
        /// The entry's name (an excerpt, quoted and escaped) when it is known.
        name: Option<String>,
        /// Boxed to keep errors small.
        problem: Box<Problem>,
    },
}

impl TarError {
    /// The offset the error is about.
    pub fn offset(&self) -> u64 {
        match self {
            TarError::Read { offset, .. } | TarError::Invalid { offset, .. } => *offset,
        }
    }
}

/// What is wrong with a tar stream.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Problem {
    /// The checksum field does not match the block (or is not octal).
    Checksum { stored: String, unsigned: i64 },
    /// A numeric field is neither octal nor base-256, or overflows.
    Number { field: &'static str, raw: String },
    /// A negative data size.
    NegativeSize(i64),
    /// A zero block (half an end-of-archive marker) followed by a non-zero block.
    DataAfterZeroBlock,
    /// The stream ends inside a header, an extension header or an entry's data.
    Truncated { inside: &'static str, missing: u64 },
    /// An extension header over [`MAX_EXTENDED_HEADER`].
    ExtensionTooLarge { kind: &'static str, size: u64 },
    /// A malformed PAX record.
    PaxRecord(String),
    /// A PAX value that does not parse.
    PaxValue { key: String, value: String },
    /// More than [`MAX_ENTRIES`] entries.
    TooManyEntries,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const CORRUPT: &str = "the layer is corrupt or not a tar stream";
        match self {
            Problem::Checksum { stored, unsigned } => write!(
                f,
                "header checksum mismatch (stored {stored}, computed {unsigned:o}): {CORRUPT}"
            ),
            Problem::Number { field, raw } => {
                write!(f, "invalid number in the {field} field ({raw}): {CORRUPT}")
            }
            Problem::NegativeSize(size) => write!(f, "negative size {size}: {CORRUPT}"),
            Problem::DataAfterZeroBlock => write!(
                f,
                "a zero block is followed by a non-zero block (an end-of-archive marker cut in \
                 half, or a corrupt header): {CORRUPT}"
            ),
            Problem::Truncated { inside, missing } => write!(
                f,
                "the stream ends inside {inside} ({missing} more bytes expected): the layer is \
                 truncated"
            ),
            Problem::ExtensionTooLarge { kind, size } => write!(
                f,
                "{kind} of {size} bytes is larger than the {} MiB limit (Go's archive/tar, used \
                 by docker and containerd, refuses it too)",
                MAX_EXTENDED_HEADER >> 20
            ),
            Problem::PaxRecord(detail) => write!(f, "malformed PAX record: {detail}: {CORRUPT}"),
            Problem::PaxValue { key, value } => {
                write!(
                    f,
                    "PAX record {key} has an invalid value {value}: {CORRUPT}"
                )
            }
            Problem::TooManyEntries => write!(
                f,
                "more than {MAX_ENTRIES} entries in one layer; split the layer"
            ),
        }
    }
}

/// `tar entry "NAME" at offset N`, or `tar header at offset N` when the name is not known.
pub fn entry_context(offset: u64, name: Option<&str>) -> String {
    match name {
        Some(name) => format!("tar entry {name} at offset {offset}"),
        None => format!("tar header at offset {offset}"),
    }
}

/// A quoted, escaped excerpt of a name for messages: at most the first 100 bytes, control
/// characters and invalid UTF-8 escaped, with the full length when cut.
pub fn excerpt(name: &[u8]) -> String {
    let cut = &name[..name.len().min(EXCERPT)];
    let mut out = String::from("\"");
    for chunk in cut.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                c if c.is_control() => out.extend(c.escape_default()),
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out.push('"');
    if name.len() > cut.len() {
        out.push_str(&format!("… ({} bytes)", name.len()));
    }
    out
}

/// Extension headers met before an entry.
#[derive(Default)]
struct Pending {
    pax: Option<BTreeMap<Vec<u8>, Vec<u8>>>,
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
}

impl Pending {
    fn name_hint(&self) -> Option<String> {
        let from_pax = self.pax.as_ref().and_then(|p| p.get(&b"path"[..]));
        self.long_name
            .as_deref()
            .or(from_pax.map(Vec::as_slice))
            .filter(|n| !n.is_empty())
            .map(excerpt)
    }
}

/// Reads headers from an uncompressed tar stream; see the module docs for the rules.
pub struct TarReader<R> {
    inner: R,
    offset: u64,
    /// Data and padding of the last entry not read yet.
    skip: u64,
    /// Data bytes within `skip` (the rest is padding).
    skip_data: u64,
    /// The last entry, for messages about its data.
    last_name: Option<String>,
    last_offset: u64,
    entries: u64,
    global_headers: u64,
    done: bool,
}

impl<R: Read> TarReader<R> {
    pub fn new(inner: R) -> Self {
        TarReader {
            inner,
            offset: 0,
            skip: 0,
            skip_data: 0,
            last_name: None,
            last_offset: 0,
            entries: 0,
            global_headers: 0,
            done: false,
        }
    }

    /// Bytes of the stream consumed so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// PAX global headers met (and ignored) so far.
    pub fn global_headers(&self) -> u64 {
        self.global_headers
    }

    /// The underlying reader, positioned after the end-of-archive marker once
    /// [`TarReader::next_header`] has returned `None`.
    pub fn into_inner(self) -> R {
        self.inner
    }

    /// The next entry, or `None` at the end of the archive. The data of the previous entry is
    /// skipped (and must be present).
    pub fn next_header(&mut self) -> Result<Option<Header>, TarError> {
        if self.done {
            return Ok(None);
        }
        self.skip_previous()?;
        let mut pending = Pending::default();
        loop {
            let offset = self.offset;
            let Some(block) = self.read_header_block(&pending)? else {
                // Extension headers with no entry after them end the archive quietly, as in Go.
                self.done = true;
                return Ok(None);
            };
            let invalid = |problem: Problem, name: Option<String>| TarError::Invalid {
                offset,
                name,
                problem: Box::new(problem),
            };
            let mut raw = parse_block(&block)
                .map_err(|(problem, name)| invalid(problem, name.or(pending.name_hint())))?;
            match raw.header.typeflag {
                typeflag @ (b'x' | b'g') => {
                    let size = data_size(&raw).map_err(|p| invalid(p, None))?;
                    let kind = if typeflag == b'x' {
                        "a PAX extended header"
                    } else {
                        "a PAX global header"
                    };
                    let data = self.read_extension(size, kind, offset)?;
                    let records = parse_pax(&data).map_err(|p| invalid(p, None))?;
                    if typeflag == b'g' {
                        self.count_entry(offset)?;
                        if self.global_headers == 0 {
                            tracing::warn!(
                                offset,
                                "the layer has a PAX global header; its records are ignored, as \
                                 docker and containerd do"
                            );
                        }
                        self.global_headers += 1;
                        pending = Pending::default();
                    } else {
                        pending.pax = Some(records);
                    }
                }
                typeflag @ (b'L' | b'K') => {
                    let size = data_size(&raw).map_err(|p| invalid(p, None))?;
                    let kind = if typeflag == b'L' {
                        "a GNU long name"
                    } else {
                        "a GNU long link name"
                    };
                    let mut data = self.read_extension(size, kind, offset)?;
                    if let Some(nul) = data.iter().position(|&b| b == 0) {
                        data.truncate(nul);
                    }
                    if typeflag == b'L' {
                        pending.long_name = Some(data);
                    } else {
                        pending.long_link = Some(data);
                    }
                }
                _ => {
                    self.count_entry(offset)?;
                    if let Some(pax) = &pending.pax {
                        merge_pax(&mut raw, pax)
                            .map_err(|p| invalid(p, Some(excerpt(&raw.header.name))))?;
                    }
                    let h = &mut raw.header;
                    if let Some(name) = pending.long_name.take().filter(|n| !n.is_empty()) {
                        h.name = name;
                    }
                    if let Some(link) = pending.long_link.take().filter(|n| !n.is_empty()) {
                        h.linkname = link;
                    }
                    if h.typeflag == 0 {
                        h.typeflag = if h.name.ends_with(b"/") { b'5' } else { b'0' };
                    }
                    let size =
                        data_size(&raw).map_err(|p| invalid(p, Some(excerpt(&raw.header.name))))?;
                    let mut h = raw.header;
                    h.offset = offset;
                    h.size = size;
                    self.skip = size.next_multiple_of(BLOCK);
                    self.skip_data = size;
                    self.last_name = Some(excerpt(&h.name));
                    self.last_offset = offset;
                    return Ok(Some(h));
                }
            }
        }
    }

    fn count_entry(&mut self, offset: u64) -> Result<(), TarError> {
        self.entries += 1;
        if self.entries > MAX_ENTRIES {
            return Err(TarError::Invalid {
                offset,
                name: None,
                problem: Box::new(Problem::TooManyEntries),
            });
        }
        Ok(())
    }

    /// Skips the data and padding of the last entry. Missing data is an error; missing padding
    /// is not (Go reads a stream that ends there as ended).
    fn skip_previous(&mut self) -> Result<(), TarError> {
        if self.skip == 0 {
            return Ok(());
        }
        let want = std::mem::take(&mut self.skip);
        let data = std::mem::take(&mut self.skip_data);
        let start = self.offset;
        let got = io::copy(&mut (&mut self.inner).take(want), &mut io::sink()).map_err(|e| {
            TarError::Read {
                offset: start,
                source: e,
            }
        })?;
        self.offset += got;
        if got < data {
            return Err(TarError::Invalid {
                offset: self.last_offset,
                name: self.last_name.take(),
                problem: Box::new(Problem::Truncated {
                    inside: "the entry's data",
                    missing: data - got,
                }),
            });
        }
        if got < want {
            self.done = true;
        }
        Ok(())
    }

    /// Reads up to `buf.len()` bytes; fewer only at the end of the stream.
    fn read_full(&mut self, buf: &mut [u8]) -> Result<usize, TarError> {
        let mut n = 0;
        while n < buf.len() {
            match self.inner.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(TarError::Read {
                        offset: self.offset + n as u64,
                        source: e,
                    })
                }
            }
        }
        self.offset += n as u64;
        Ok(n)
    }

    /// The next header block, `None` at the end of the archive.
    fn read_header_block(&mut self, pending: &Pending) -> Result<Option<[u8; 512]>, TarError> {
        if self.done {
            return Ok(None);
        }
        let mut block = [0u8; 512];
        let offset = self.offset;
        let truncated = |n: usize, pending: &Pending| TarError::Invalid {
            offset,
            name: pending.name_hint(),
            problem: Box::new(Problem::Truncated {
                inside: "a header block",
                missing: BLOCK - n as u64,
            }),
        };
        match self.read_full(&mut block)? {
            0 => return Ok(None),
            512 => {}
            n => return Err(truncated(n, pending)),
        }
        if block.iter().any(|&b| b != 0) {
            return Ok(Some(block));
        }
        // One zero block: the end, unless something other than a second one follows.
        let second = self.offset;
        match self.read_full(&mut block)? {
            0 => return Ok(None),
            512 => {}
            n => {
                return Err(TarError::Invalid {
                    offset: second,
                    name: None,
                    problem: Box::new(Problem::Truncated {
                        inside: "the end-of-archive marker",
                        missing: BLOCK - n as u64,
                    }),
                })
            }
        }
        if block.iter().any(|&b| b != 0) {
            return Err(TarError::Invalid {
                offset: second,
                name: None,
                problem: Box::new(Problem::DataAfterZeroBlock),
            });
        }
        Ok(None)
    }

    /// Reads the data of an extension header (and its padding), refusing oversized ones
    /// before reading anything.
    fn read_extension(
        &mut self,
        size: u64,
        kind: &'static str,
        offset: u64,
    ) -> Result<Vec<u8>, TarError> {
        if size > MAX_EXTENDED_HEADER {
            return Err(TarError::Invalid {
                offset,
                name: None,
                problem: Box::new(Problem::ExtensionTooLarge { kind, size }),
            });
        }
        let padded = size.next_multiple_of(BLOCK);
        let mut data = vec![0u8; padded as usize];
        let got = self.read_full(&mut data)? as u64;
        if got < size {
            return Err(TarError::Invalid {
                offset,
                name: None,
                problem: Box::new(Problem::Truncated {
                    inside: kind,
                    missing: size - got,
                }),
            });
        }
        if got < padded {
            self.done = true;
        }
        data.truncate(size as usize);
        Ok(data)
    }
}

/// Whether entries of this type carry no data whatever their size field says (Go's
/// `isHeaderOnlyType`).
fn header_only(typeflag: u8) -> bool {
    matches!(typeflag, b'1' | b'2' | b'3' | b'4' | b'5' | b'6')
}

/// A header as parsed, before its size is checked.
struct Raw {
    header: Header,
    size: i64,
}

/// The number of data bytes that follow a header.
fn data_size(raw: &Raw) -> Result<u64, Problem> {
    if header_only(raw.header.typeflag) {
        return Ok(0);
    }
    u64::try_from(raw.size).map_err(|_| Problem::NegativeSize(raw.size))
}

/// Field positions in a header block.
mod field {
    use std::ops::Range;
    pub const NAME: Range<usize> = 0..100;
    pub const MODE: Range<usize> = 100..108;
    pub const UID: Range<usize> = 108..116;
    pub const GID: Range<usize> = 116..124;
    pub const SIZE: Range<usize> = 124..136;
    pub const MTIME: Range<usize> = 136..148;
    pub const CHKSUM: Range<usize> = 148..156;
    pub const TYPEFLAG: usize = 156;
    pub const LINKNAME: Range<usize> = 157..257;
    pub const MAGIC: Range<usize> = 257..263;
    pub const VERSION: Range<usize> = 263..265;
    pub const DEVMAJOR: Range<usize> = 329..337;
    pub const DEVMINOR: Range<usize> = 337..345;
    /// ustar's prefix; star's is shorter, GNU has none (atime and ctime live there).
    pub const PREFIX: Range<usize> = 345..500;
    pub const STAR_PREFIX: Range<usize> = 345..476;
    pub const STAR_ATIME: Range<usize> = 476..488;
    pub const STAR_CTIME: Range<usize> = 488..500;
    pub const GNU_ATIME: Range<usize> = 345..357;
    pub const GNU_CTIME: Range<usize> = 357..369;
    pub const STAR_TRAILER: Range<usize> = 508..512;
}

/// Go's `parseString`: up to the first NUL.
fn c_string(b: &[u8]) -> &[u8] {
    match b.iter().position(|&c| c == 0) {
        Some(i) => &b[..i],
        None => b,
    }
}

/// Go's `parseOctal`: spaces and NULs trimmed at both ends, then up to the first NUL, octal.
fn parse_octal(b: &[u8]) -> Option<i64> {
    let start = b.iter().position(|&c| c != b' ' && c != 0);
    let Some(start) = start else { return Some(0) };
    let end = b
        .iter()
        .rposition(|&c| c != b' ' && c != 0)
        .map_or(start, |e| e + 1);
    let digits = c_string(&b[start..end]);
    if digits.is_empty() {
        return None;
    }
    let mut x: u64 = 0;
    for &d in digits {
        if !(b'0'..=b'7').contains(&d) {
            return None;
        }
        x = x.checked_mul(8)?.checked_add(u64::from(d - b'0'))?;
    }
    // Go converts with int64(x): fields are at most 12 digits (36 bits), so this never wraps.
    i64::try_from(x).ok()
}

/// Go's `parseNumeric`: base-256 (two's complement, big-endian) when the high bit of the first
/// byte is set, else octal.
fn parse_numeric(b: &[u8]) -> Option<i64> {
    let first = *b.first()?;
    if first & 0x80 == 0 {
        return parse_octal(b);
    }
    let inv = if first & 0x40 != 0 { 0xff } else { 0 };
    let mut x: u64 = 0;
    for (i, &c) in b.iter().enumerate() {
        let mut c = c ^ inv;
        if i == 0 {
            c &= 0x7f;
        }
        if x >> 56 > 0 {
            return None;
        }
        x = (x << 8) | u64::from(c);
    }
    if x >> 63 > 0 {
        return None;
    }
    let x = x as i64;
    Some(if inv == 0xff { !x } else { x })
}

/// A field's bytes for a message.
fn raw_field(b: &[u8]) -> String {
    format!("\"{}\"", b.escape_ascii())
}

/// Parses one header block (checksum, layout, fields). On error, the name when it could be read.
fn parse_block(b: &[u8; 512]) -> Result<Raw, (Problem, Option<String>)> {
    // The checksum first: nothing else can be trusted without it.
    let (unsigned, signed) = checksums(b);
    let stored = parse_octal(&b[field::CHKSUM]);
    if stored != Some(unsigned) && stored != Some(signed) {
        return Err((
            Problem::Checksum {
                stored: raw_field(&b[field::CHKSUM]),
                unsigned,
            },
            None,
        ));
    }
    let magic = &b[field::MAGIC];
    let format = if magic == b"ustar\0" && &b[field::STAR_TRAILER] == b"tar\0" {
        Format::Star
    } else if magic == b"ustar\0" {
        Format::Ustar
    } else if magic == b"ustar " && &b[field::VERSION] == b" \0" {
        Format::Gnu
    } else {
        Format::V7
    };
    let mut name = c_string(&b[field::NAME]).to_vec();
    let hint = || Some(excerpt(c_string(&b[field::NAME])));
    let num = |range: std::ops::Range<usize>, what: &'static str| {
        parse_numeric(&b[range.clone()]).ok_or_else(|| {
            (
                Problem::Number {
                    field: what,
                    raw: raw_field(&b[range]),
                },
                hint(),
            )
        })
    };
    let size = num(field::SIZE, "size")?;
    let mode = num(field::MODE, "mode")?;
    let uid = num(field::UID, "uid")?;
    let gid = num(field::GID, "gid")?;
    let mtime = num(field::MTIME, "mtime")?;
    let (mut devmajor, mut devminor) = (0, 0);
    if format != Format::V7 {
        devmajor = num(field::DEVMAJOR, "devmajor")?;
        devminor = num(field::DEVMINOR, "devminor")?;
        let prefix: &[u8] = match format {
            Format::Ustar => c_string(&b[field::PREFIX]),
            Format::Star => {
                num(field::STAR_ATIME, "atime")?;
                num(field::STAR_CTIME, "ctime")?;
                c_string(&b[field::STAR_PREFIX])
            }
            // Go reads GNU atime/ctime skeptically: when they do not parse, the block is taken
            // for a pre-Go-1.8 writer's and their bytes as a ustar prefix, if ASCII.
            _ => {
                let parses =
                    |r: std::ops::Range<usize>| b[r.start] == 0 || parse_numeric(&b[r]).is_some();
                let prefix = c_string(&b[field::PREFIX]);
                if parses(field::GNU_ATIME) && parses(field::GNU_CTIME) || !prefix.is_ascii() {
                    &[]
                } else {
                    prefix
                }
            }
        };
        if !prefix.is_empty() {
            let mut full = prefix.to_vec();
            full.push(b'/');
            full.extend_from_slice(&name);
            name = full;
        }
    }
    Ok(Raw {
        header: Header {
            offset: 0,
            format,
            typeflag: b[field::TYPEFLAG],
            name,
            linkname: c_string(&b[field::LINKNAME]).to_vec(),
            size: 0,
            mode,
            uid,
            gid,
            mtime_sec: mtime,
            mtime_nsec: 0,
            devmajor,
            devminor,
            xattrs: Vec::new(),
            sparse: b[field::TYPEFLAG] == b'S',
        },
        size,
    })
}

/// The unsigned and signed sums of a block, its checksum field read as spaces.
fn checksums(b: &[u8; 512]) -> (i64, i64) {
    let (mut unsigned, mut signed) = (0i64, 0i64);
    for (i, &c) in b.iter().enumerate() {
        let c = if field::CHKSUM.contains(&i) { b' ' } else { c };
        unsigned += i64::from(c);
        signed += i64::from(c as i8);
    }
    (unsigned, signed)
}

/// Go's `strconv.ParseInt(s, 10, 64)`: an optional sign, then decimal digits.
fn parse_decimal(s: &[u8]) -> Option<i64> {
    let (negative, digits) = match s.first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if digits.is_empty() {
        return None;
    }
    let mut x: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        let d = i64::from(d - b'0');
        x = x.checked_mul(10)?;
        x = if negative {
            x.checked_sub(d)?
        } else {
            x.checked_add(d)?
        };
    }
    Some(x)
}

/// Parses PAX records (`LEN KEY=VALUE\n`, LEN counting the whole record) as Go's `parsePAX`
/// does; a later record with the same key replaces an earlier one.
fn parse_pax(mut data: &[u8]) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, Problem> {
    let bad = |what: &str| Problem::PaxRecord(what.to_string());
    let mut records = BTreeMap::new();
    let mut sparse_pairs = 0usize;
    while !data.is_empty() {
        let space = data
            .iter()
            .position(|&b| b == b' ')
            .ok_or_else(|| bad("no space after the record length"))?;
        let len = parse_decimal(&data[..space])
            .filter(|&n| n >= 5 && n as u64 <= data.len() as u64)
            .ok_or_else(|| bad("its length is not a number between 5 and the bytes left"))?;
        let len = len as usize;
        if len <= space + 1 {
            return Err(bad("its length is shorter than the length field"));
        }
        let record = &data[space + 1..len - 1];
        if data[len - 1] != b'\n' {
            return Err(bad("it does not end with a newline where its length says"));
        }
        let eq = record
            .iter()
            .position(|&b| b == b'=')
            .ok_or_else(|| bad("no '=' between key and value"))?;
        let (key, value) = (&record[..eq], &record[eq + 1..]);
        if key.is_empty() {
            return Err(bad("empty key"));
        }
        let nul_in = |s: &[u8]| s.contains(&0);
        let valid = match key {
            b"path" | b"linkpath" | b"uname" | b"gname" => !nul_in(value),
            _ => !nul_in(key),
        };
        if !valid {
            return Err(Problem::PaxRecord(format!(
                "a NUL byte in record {}",
                excerpt(key)
            )));
        }
        // GNU sparse 0.0 repeats offset/numbytes pairs; Go checks their order.
        match key {
            b"GNU.sparse.offset" | b"GNU.sparse.numbytes" => {
                let want: &[u8] = if sparse_pairs.is_multiple_of(2) {
                    b"GNU.sparse.offset"
                } else {
                    b"GNU.sparse.numbytes"
                };
                if key != want || value.contains(&b',') {
                    return Err(bad("GNU sparse offsets and sizes out of order"));
                }
                sparse_pairs += 1;
                records.insert(b"GNU.sparse.map".to_vec(), Vec::new());
            }
            _ => {
                records.insert(key.to_vec(), value.to_vec());
            }
        }
        data = &data[len..];
    }
    Ok(records)
}

/// Applies PAX records to a header as Go's `mergePAX` does: an empty value keeps the header's
/// own field; a value that does not parse is an error.
fn merge_pax(raw: &mut Raw, records: &BTreeMap<Vec<u8>, Vec<u8>>) -> Result<(), Problem> {
    let h = &mut raw.header;
    for (key, value) in records {
        if key.starts_with(b"GNU.sparse.") {
            h.sparse = true;
        }
        if value.is_empty() {
            continue;
        }
        let bad = || Problem::PaxValue {
            key: excerpt(key),
            value: excerpt(value),
        };
        match key.as_slice() {
            b"path" => h.name = value.clone(),
            b"linkpath" => h.linkname = value.clone(),
            b"uid" => h.uid = parse_decimal(value).ok_or_else(bad)?,
            b"gid" => h.gid = parse_decimal(value).ok_or_else(bad)?,
            b"size" => raw.size = parse_decimal(value).ok_or_else(bad)?,
            b"mtime" => {
                (h.mtime_sec, h.mtime_nsec) = parse_pax_time(value).ok_or_else(bad)?;
            }
            b"atime" | b"ctime" => {
                parse_pax_time(value).ok_or_else(bad)?;
            }
            _ => {
                if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                    h.xattrs.push((name.to_vec(), value.clone()));
                }
            }
        }
    }
    Ok(())
}

/// Parses a PAX time (`[-]SECONDS[.FRACTION]`) as Go's `parsePAXTime` does, into seconds and
/// nanoseconds counting forward (so `-1.25` is `(-2, 750_000_000)`); digits past the ninth are
/// dropped.
pub fn parse_pax_time(value: &[u8]) -> Option<(i64, u32)> {
    let (secs, frac) = match value.iter().position(|&b| b == b'.') {
        Some(dot) => (&value[..dot], &value[dot + 1..]),
        None => (value, &b""[..]),
    };
    let secs = parse_decimal(secs)?;
    if frac.is_empty() {
        return Some((secs, 0));
    }
    if !frac.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut nanos: u32 = 0;
    for i in 0..9 {
        let d = frac.get(i).map_or(0, |d| u32::from(d - b'0'));
        nanos = nanos * 10 + d;
    }
    if value.first() == Some(&b'-') && nanos > 0 {
        Some((secs.checked_sub(1)?, 1_000_000_000 - nanos))
    } else {
        Some((secs, nanos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hand-built header block.
    #[derive(Clone)]
    struct Block([u8; 512]);

    impl Block {
        /// A ustar header (checksum filled in by [`Block::bytes`]).
        fn new(name: &str, typeflag: u8, size: u64) -> Block {
            let mut b = Block([0; 512]);
            b.put(field::NAME, name.as_bytes());
            b.octal(field::MODE, 0o644);
            b.octal(field::UID, 0);
            b.octal(field::GID, 0);
            b.octal(field::SIZE, size);
            b.octal(field::MTIME, 1_700_000_000);
            b.0[field::TYPEFLAG] = typeflag;
            b.put(field::MAGIC, b"ustar\0");
            b.put(field::VERSION, b"00");
            b
        }
        fn gnu(mut self) -> Block {
            self.put(field::MAGIC, b"ustar ");
            self.put(field::VERSION, b" \0");
            self
        }
        fn v7(mut self) -> Block {
            self.0[257..265].fill(0);
            self
        }
        fn put(&mut self, range: std::ops::Range<usize>, value: &[u8]) {
            self.0[range.clone()].fill(0);
            self.0[range.start..range.start + value.len()].copy_from_slice(value);
        }
        fn octal(&mut self, range: std::ops::Range<usize>, value: u64) {
            let width = range.len() - 1;
            let s = format!("{value:0width$o}");
            self.put(range, s.as_bytes());
        }
        fn with(mut self, range: std::ops::Range<usize>, value: &[u8]) -> Block {
            self.put(range, value);
            self
        }
        /// The block with a valid (unsigned) checksum.
        fn bytes(&self) -> [u8; 512] {
            let mut b = self.0;
            let (unsigned, _) = checksums(&b);
            b[field::CHKSUM].copy_from_slice(format!("{unsigned:06o}\0 ").as_bytes());
            b
        }
    }

    /// A tar stream under construction.
    #[derive(Default)]
    struct Stream(Vec<u8>);

    impl Stream {
        fn header(mut self, b: Block) -> Stream {
            self.0.extend_from_slice(&b.bytes());
            self
        }
        fn raw(mut self, bytes: &[u8]) -> Stream {
            self.0.extend_from_slice(bytes);
            self
        }
        /// Data padded to a block.
        fn data(mut self, data: &[u8]) -> Stream {
            self.0.extend_from_slice(data);
            self.0.resize(self.0.len().next_multiple_of(512), 0);
            self
        }
        fn entry(self, b: Block, data: &[u8]) -> Stream {
            self.header(b).data(data)
        }
        fn pax(self, typeflag: u8, records: &[(&str, &[u8])]) -> Stream {
            let mut data = Vec::new();
            for (k, v) in records {
                let rest = k.len() + v.len() + 3;
                let mut len = rest + 1;
                while len != rest + len.to_string().len() {
                    len = rest + len.to_string().len();
                }
                data.extend_from_slice(format!("{len} {k}=").as_bytes());
                data.extend_from_slice(v);
                data.push(b'\n');
            }
            let h = Block::new("PaxHeaders/x", typeflag, data.len() as u64);
            self.entry(h, &data)
        }
        fn end(mut self) -> Vec<u8> {
            self.0.resize(self.0.len() + 1024, 0);
            self.0
        }
    }

    fn read_all(bytes: &[u8]) -> Result<Vec<Header>, TarError> {
        let mut r = TarReader::new(bytes);
        let mut out = Vec::new();
        while let Some(h) = r.next_header()? {
            out.push(h);
        }
        Ok(out)
    }

    fn names(headers: &[Header]) -> Vec<String> {
        headers
            .iter()
            .map(|h| String::from_utf8_lossy(&h.name).into_owned())
            .collect()
    }

    fn problem(bytes: &[u8]) -> (u64, Problem, String) {
        match read_all(bytes) {
            Err(e @ TarError::Invalid { .. }) => {
                let text = e.to_string();
                let TarError::Invalid {
                    offset, problem, ..
                } = e
                else {
                    unreachable!()
                };
                (offset, *problem, text)
            }
            other => panic!("expected a tar error, got {other:?}"),
        }
    }

    #[test]
    fn data_offsets_are_exact_after_extension_headers() {
        let long = "d/".repeat(80) + "file";
        let tar = Stream::default()
            .entry(Block::new("a", b'0', 5), b"hello")
            .entry(
                Block::new("././@LongLink", b'L', long.len() as u64 + 1).gnu(),
                format!("{long}\0").as_bytes(),
            )
            .entry(Block::new("trunc", b'0', 3).gnu(), b"abc")
            .pax(b'x', &[("path", b"pax/name"), ("size", b"700")])
            .entry(Block::new("short", b'0', 1), &[7; 700])
            .entry(Block::new("last", b'0', 0), b"")
            .end();
        let h = read_all(&tar).unwrap();
        assert_eq!(names(&h), ["a", long.as_str(), "pax/name", "last"]);
        // a: header 0, data 512. L header 1024 + 1 block of name, file header 2048.
        assert_eq!((h[0].offset, h[0].data_offset(), h[0].size), (0, 512, 5));
        assert_eq!(
            (h[1].offset, h[1].data_offset(), h[1].size),
            (2048, 2560, 3)
        );
        assert_eq!(&tar[2560..2563], b"abc");
        // PAX header at 3072, its records at 3584, the entry at 4096, 700 bytes (2 blocks).
        assert_eq!(
            (h[2].offset, h[2].data_offset(), h[2].size),
            (4096, 4608, 700)
        );
        assert_eq!(h[3].offset, 4608 + 1024);
    }

    #[test]
    fn header_only_types_carry_no_data_whatever_their_size() {
        for typeflag in [b'1', b'2', b'3', b'4', b'5', b'6'] {
            // The "data" would swallow the next header if it were skipped.
            let tar = Stream::default()
                .header(Block::new("x", typeflag, 512).with(field::LINKNAME, b"t"))
                .entry(Block::new(".wh.secret", b'0', 0), b"")
                .end();
            let h = read_all(&tar).unwrap();
            assert_eq!(
                names(&h),
                ["x", ".wh.secret"],
                "typeflag {}",
                typeflag as char
            );
            assert_eq!((h[0].size, h[1].offset), (0, 512));
        }
        // A directory's size may even be negative.
        let negative = Block::new("d/", b'5', 0).with(field::SIZE, &[0xff; 12]);
        assert_eq!(
            read_all(&Stream::default().header(negative).end())
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn old_style_typeflag_nul() {
        let tar = Stream::default()
            .header(Block::new("olddir/", 0, 100))
            .entry(Block::new("oldfile", 0, 2), b"hi")
            .end();
        let h = read_all(&tar).unwrap();
        assert_eq!((h[0].typeflag, h[0].size), (b'5', 0));
        assert_eq!((h[1].typeflag, h[1].size, h[1].offset), (b'0', 2, 512));
    }

    #[test]
    fn numeric_fields_as_go_reads_them() {
        assert_eq!(parse_octal(b"  644 \0\0"), Some(0o644));
        assert_eq!(parse_octal(b"\0\0\0\0\0\0\0\0"), Some(0));
        assert_eq!(parse_octal(b"        "), Some(0));
        assert_eq!(parse_octal(b"0000644\0"), Some(0o644));
        assert_eq!(parse_octal(b"12\x0034  "), Some(0o12));
        assert_eq!(parse_octal(b"1 2"), None);
        assert_eq!(parse_octal(b"0008"), None);
        assert_eq!(parse_octal(b"+12"), None);
        // Base-256: positive, negative (-1, -2^33), overflow.
        let mut pos = [0u8; 12];
        pos[0] = 0x80;
        pos[4..12].copy_from_slice(&(1u64 << 40).to_be_bytes());
        assert_eq!(parse_numeric(&pos), Some(1 << 40));
        assert_eq!(parse_numeric(&[0xff; 12]), Some(-1));
        let mut neg = [0xffu8; 12];
        neg[7] = 0xfe;
        neg[8..].fill(0);
        assert_eq!(parse_numeric(&neg), Some(-(1 << 33)));
        let mut big = [0u8; 12];
        big[0] = 0x80;
        big[3] = 1; // 2^64: does not fit
        assert_eq!(parse_numeric(&big), None);
        let mut top = [0u8; 8];
        top[0] = 0x80;
        top[1] = 0x80; // 2^55 in 8 bytes: fits u64 but Go wants x >> 63 == 0 -> fine
        assert_eq!(parse_numeric(&top), Some(1 << 55));

        // Through a header: a negative base-256 mtime, big ids, a bad field.
        let mut b = Block::new("f", b'0', 0);
        b.0[field::MTIME].copy_from_slice(&neg);
        b.0[field::UID].copy_from_slice(&[0x80, 0, 0, 0, 0xff, 0xff, 0xff, 0xfe]);
        let h = read_all(&Stream::default().header(b).end()).unwrap();
        assert_eq!((h[0].mtime_sec, h[0].uid), (-(1 << 33), 0xffff_fffe));
        let bad = Stream::default()
            .entry(Block::new("ok", b'0', 0), b"")
            .header(Block::new("f", b'0', 0).with(field::GID, b"12x\0"))
            .end();
        let (offset, p, text) = problem(&bad);
        assert_eq!(offset, 512);
        assert!(matches!(p, Problem::Number { field: "gid", .. }), "{p:?}");
        assert!(text.starts_with("tar entry \"f\" at offset 512: invalid number in the gid field (\"12x\\x00\\x00\\x00\\x00\\x00\")"), "{text}");
        // A device field matters even on a file (Go parses it for every non-V7 header).
        let bad = Stream::default()
            .header(Block::new("f", b'0', 0).with(field::DEVMAJOR, b"zz"))
            .end();
        assert!(matches!(
            problem(&bad).1,
            Problem::Number {
                field: "devmajor",
                ..
            }
        ));
        // ... but not in V7 headers, which have none.
        let v7 = Block::new("f", b'0', 0).with(field::DEVMAJOR, b"zz").v7();
        assert_eq!(
            read_all(&Stream::default().header(v7).end()).unwrap()[0].format,
            Format::V7
        );
    }

    #[test]
    fn checksums_signed_unsigned_and_bad() {
        // Bytes >= 0x80 make the signed and unsigned sums differ; old writers used the signed.
        let b = Block::new("caf\u{e9}", b'0', 0);
        let mut bytes = b.0;
        let (_, signed) = checksums(&bytes);
        bytes[field::CHKSUM].copy_from_slice(format!("{signed:06o}\0 ").as_bytes());
        let tar = Stream::default().raw(&bytes).end();
        assert_eq!(names(&read_all(&tar).unwrap()), ["caf\u{e9}"]);

        let mut corrupt = Block::new("x", b'0', 0).bytes();
        corrupt[0] = b'y';
        let tar = Stream::default()
            .entry(Block::new("first", b'0', 1), b"1")
            .raw(&corrupt)
            .end();
        let (offset, p, text) = problem(&tar);
        assert_eq!(offset, 1024);
        assert!(matches!(p, Problem::Checksum { .. }));
        assert!(
            text.starts_with("tar header at offset 1024: header checksum mismatch"),
            "{text}"
        );
        assert!(text.contains("corrupt or not a tar stream"), "{text}");
        // Not a tar at all.
        let (offset, p, _) = problem(&[b'{'; 600]);
        assert_eq!(offset, 0);
        assert!(matches!(p, Problem::Checksum { .. }));
    }

    #[test]
    fn gnu_long_names_are_cut_at_nul() {
        let tar = Stream::default()
            .entry(
                Block::new("././@LongLink", b'L', 12).gnu(),
                b"long/name\0xy",
            )
            .entry(Block::new("././@LongLink", b'K', 7).gnu(), b"target\0")
            .header(
                Block::new("short", b'1', 0)
                    .gnu()
                    .with(field::LINKNAME, b"t"),
            )
            .end();
        let h = read_all(&tar).unwrap();
        assert_eq!(
            (&h[0].name[..], &h[0].linkname[..]),
            (&b"long/name"[..], &b"target"[..])
        );
        assert_eq!(h[0].format, Format::Gnu);
    }

    #[test]
    fn pax_records_apply_like_go() {
        let tar = Stream::default()
            .pax(b'g', &[("comment", b"ignored")])
            .pax(b'x', &[("path", b"first")])
            .pax(
                b'x',
                &[
                    ("path", b"p/\xc3\xa9"),
                    ("linkpath", b"lp"),
                    ("uid", b"3000000"),
                    ("gid", b"+7"),
                    ("mtime", b"-1.25"),
                    ("atime", b"5"),
                    ("uname", b""),
                    ("SCHILY.xattr.user.b", b"\0\x01"),
                    ("SCHILY.xattr.user.a", b"x"),
                    ("SCHILY.xattr.user.a", b"last"),
                    ("SCHILY.xattr.user.empty", b""),
                    ("linkpath", b""),
                ],
            )
            .header(Block::new("ustar-name", b'2', 0).with(field::LINKNAME, b"ustar-link"))
            .end();
        let h = read_all(&tar).unwrap();
        assert_eq!(h.len(), 1);
        let h = &h[0];
        assert_eq!(h.name, "p/é".as_bytes());
        // The empty linkpath (the later record) keeps the header's own field.
        assert_eq!(h.linkname, b"ustar-link");
        assert_eq!((h.uid, h.gid), (3_000_000, 7));
        assert_eq!((h.mtime_sec, h.mtime_nsec), (-2, 750_000_000));
        assert_eq!(
            h.xattrs,
            vec![
                (b"user.a".to_vec(), b"last".to_vec()),
                (b"user.b".to_vec(), b"\0\x01".to_vec())
            ]
        );
        assert!(!h.sparse);

        // A global header drops the extension headers before it.
        let tar = Stream::default()
            .pax(b'x', &[("path", b"lost")])
            .pax(b'g', &[("comment", b"x")])
            .entry(Block::new("kept", b'0', 0), b"")
            .end();
        let mut r = TarReader::new(&tar[..]);
        assert_eq!(r.next_header().unwrap().unwrap().name, b"kept");
        assert_eq!(r.global_headers(), 1);

        let sparse = Stream::default()
            .pax(
                b'x',
                &[("GNU.sparse.major", b"1"), ("GNU.sparse.minor", b"0")],
            )
            .entry(Block::new("s", b'0', 0), b"")
            .end();
        assert!(read_all(&sparse).unwrap()[0].sparse);
        let old_sparse = Stream::default()
            .entry(Block::new("s", b'S', 0).gnu(), b"")
            .end();
        assert!(read_all(&old_sparse).unwrap()[0].sparse);
    }

    #[test]
    fn malformed_pax_is_an_error_naming_the_header() {
        let bad_records: &[&[u8]] = &[
            b"5 a=b\n",        // length too short for the record
            b"30 path=x\n",    // length beyond the data
            b"10 pathx\n\n",   // no '='
            b"7 =ab\n",        // empty key
            b"11 path=a\0b\n", // NUL in a path
            b"xx path=a\n",    // not a number
            b"9 path=ab",      // no newline
        ];
        for records in bad_records {
            let tar = Stream::default()
                .entry(Block::new("f0", b'0', 0), b"")
                .entry(
                    Block::new("PaxHeaders/x", b'x', records.len() as u64),
                    records,
                )
                .entry(Block::new("f", b'0', 0), b"")
                .end();
            let (offset, p, text) = problem(&tar);
            assert_eq!(offset, 512, "{}", records.escape_ascii());
            assert!(matches!(p, Problem::PaxRecord(_)), "{p:?}");
            assert!(
                text.starts_with("tar header at offset 512: malformed PAX record"),
                "{text}"
            );
        }
        for (key, value) in [
            ("mtime", &b"1.5x"[..]),
            ("uid", b"12a"),
            ("size", b"-1"),
            ("atime", b".5"),
        ] {
            let tar = Stream::default()
                .pax(b'x', &[(key, value)])
                .entry(Block::new("f", b'0', 0), b"")
                .end();
            let (offset, p, _) = problem(&tar);
            assert_eq!(offset, 1024, "{key}");
            assert!(
                matches!(p, Problem::PaxValue { .. } | Problem::NegativeSize(-1)),
                "{key}: {p:?}"
            );
        }
    }

    #[test]
    fn prefix_fields_by_format() {
        let ustar = Block::new("name", b'0', 0).with(field::PREFIX, b"some/prefix");
        let star = Block::new("name", b'0', 0)
            .with(field::STAR_PREFIX, b"star")
            .with(field::STAR_TRAILER, b"tar\0");
        let gnu = Block::new("name", b'0', 0)
            .gnu()
            .with(field::GNU_ATIME, b"00000000001\0");
        // A GNU header whose atime/ctime do not parse: a pre-Go-1.8 prefix.
        let buggy = Block::new("name", b'0', 0)
            .gnu()
            .with(field::PREFIX, b"old/go");
        let v7 = Block::new("name", b'0', 0)
            .with(field::PREFIX, b"ignored")
            .v7();
        let tar = Stream::default()
            .header(ustar)
            .header(star)
            .header(gnu)
            .header(buggy)
            .header(v7)
            .end();
        let h = read_all(&tar).unwrap();
        assert_eq!(
            names(&h),
            [
                "some/prefix/name",
                "star/name",
                "name",
                "old/go/name",
                "name"
            ]
        );
        let formats: Vec<Format> = h.iter().map(|h| h.format).collect();
        assert_eq!(
            formats,
            [
                Format::Ustar,
                Format::Star,
                Format::Gnu,
                Format::Gnu,
                Format::V7
            ]
        );
    }

    #[test]
    fn end_of_archive_rules() {
        let one = || Stream::default().entry(Block::new("a", b'0', 3), b"abc");
        // Two zero blocks, and whatever follows stays unread.
        let mut tar = one().end();
        tar.extend_from_slice(b"trailing junk");
        let mut r = TarReader::new(&tar[..]);
        assert!(r.next_header().unwrap().is_some());
        assert!(r.next_header().unwrap().is_none());
        assert!(r.next_header().unwrap().is_none());
        assert_eq!(r.offset(), 2048);
        // The stream ending at a block boundary, or after one zero block, or inside the last
        // entry's padding.
        assert_eq!(read_all(&one().0).unwrap().len(), 1);
        assert_eq!(read_all(&one().raw(&[0; 512]).0).unwrap().len(), 1);
        assert_eq!(read_all(&one().0[..512 + 3]).unwrap().len(), 1);
        // A zero block then a header: an error, at the second block.
        let tar = one()
            .raw(&[0; 512])
            .entry(Block::new("b", b'0', 0), b"")
            .end();
        let (offset, p, _) = problem(&tar);
        assert_eq!((offset, p), (1536, Problem::DataAfterZeroBlock));
        // Truncated data or header.
        let (offset, p, text) = problem(&one().0[..512 + 2]);
        assert_eq!(offset, 0);
        assert_eq!(
            p,
            Problem::Truncated {
                inside: "the entry's data",
                missing: 1
            }
        );
        assert!(
            text.starts_with("tar entry \"a\" at offset 0: the stream ends inside"),
            "{text}"
        );
        let (offset, p, _) = problem(&one().entry(Block::new("b", b'0', 0), b"").0[..1024 + 100]);
        assert_eq!(offset, 1024);
        assert_eq!(
            p,
            Problem::Truncated {
                inside: "a header block",
                missing: 412
            }
        );
    }

    /// A reader that must not be read past `limit` bytes.
    struct Guarded<'a> {
        data: &'a [u8],
        limit: usize,
        pos: usize,
    }

    impl Read for Guarded<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            assert!(
                self.pos < self.limit,
                "read past the extension header's own header"
            );
            let n = buf
                .len()
                .min(self.data.len() - self.pos)
                .min(self.limit - self.pos);
            buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
            self.pos += n;
            Ok(n)
        }
    }

    #[test]
    fn oversized_extension_headers_are_refused_before_reading() {
        for typeflag in [b'x', b'g', b'L', b'K'] {
            let mut tar = Block::new("PaxHeaders/huge", typeflag, 1 << 30)
                .bytes()
                .to_vec();
            tar.extend_from_slice(b"10 path=a\n");
            let mut r = TarReader::new(Guarded {
                data: &tar,
                limit: 512,
                pos: 0,
            });
            let err = r.next_header().unwrap_err();
            let text = err.to_string();
            let TarError::Invalid {
                problem, offset, ..
            } = &err
            else {
                panic!("{err:?}");
            };
            assert_eq!(*offset, 0);
            assert!(
                matches!(
                    **problem,
                    Problem::ExtensionTooLarge {
                        size: 1073741824,
                        ..
                    }
                ),
                "{err:?}"
            );
            assert!(text.len() < 200, "{text}");
            assert!(
                text.contains("1073741824 bytes") && text.contains("1 MiB"),
                "{text}"
            );
        }
        // Exactly 1 MiB is fine.
        let name = vec![b'n'; (1 << 20) - 1];
        let mut data = name.clone();
        data.push(0);
        let tar = Stream::default()
            .entry(
                Block::new("././@LongLink", b'L', data.len() as u64).gnu(),
                &data,
            )
            .entry(Block::new("x", b'0', 0).gnu(), b"")
            .end();
        assert_eq!(read_all(&tar).unwrap()[0].name, name);
    }

    #[test]
    fn excerpts_are_short_and_escaped() {
        assert_eq!(excerpt(b"etc/passwd"), "\"etc/passwd\"");
        assert_eq!(
            excerpt(b"a\nb\x1b\"\\\xff"),
            "\"a\\nb\\u{1b}\\\"\\\\\\xff\""
        );
        let long = vec![b'a'; 1 << 20];
        let e = excerpt(&long);
        assert!(e.ends_with("\"… (1048576 bytes)"), "{e}");
        assert!(e.len() < 130, "{e}");
        // Never cuts a character in half.
        let mut utf8 = vec![b'a'; 99];
        utf8.extend_from_slice("é".as_bytes());
        assert!(excerpt(&utf8).contains("\\xc3"));
    }

    #[test]
    fn pax_times() {
        assert_eq!(
            parse_pax_time(b"1700000000.123456789"),
            Some((1700000000, 123456789))
        );
        assert_eq!(
            parse_pax_time(b"1700000000.5"),
            Some((1700000000, 500000000))
        );
        assert_eq!(parse_pax_time(b"12"), Some((12, 0)));
        assert_eq!(parse_pax_time(b"12."), Some((12, 0)));
        assert_eq!(parse_pax_time(b"+12"), Some((12, 0)));
        assert_eq!(parse_pax_time(b"-1.25"), Some((-2, 750000000)));
        assert_eq!(parse_pax_time(b"-0.5"), Some((-1, 500000000)));
        assert_eq!(parse_pax_time(b"1.1234567891"), Some((1, 123456789)));
        for bad in [&b"x"[..], b"1.x", b"", b".5", b" 1", b"1.-5"] {
            assert_eq!(parse_pax_time(bad), None, "{}", bad.escape_ascii());
        }
    }

    #[test]
    fn entry_cap() {
        // The counter is set just below the cap rather than feeding ten million headers.
        let mut r = TarReader::new(&[][..]);
        r.entries = MAX_ENTRIES;
        let Err(TarError::Invalid {
            offset, problem, ..
        }) = r.count_entry(7)
        else {
            panic!("the cap is enforced");
        };
        assert_eq!((offset, *problem), (7, Problem::TooManyEntries));
    }
}
