//! The fixture language: one line per tar entry.
//!
//! ```text
//! line   := PATH KIND [MODE UID GID] { KEY=VALUE | FLAG } [# comment]
//! ```
//!
//! * `PATH` is absolute (`/etc/hostname`; `/` is the root directory itself) and may be quoted.
//!   A trailing `/` is dropped. The tar name is `PATH` without its leading `/` (`./`-prefixed
//!   with [`LayerOptions::dot_prefix`](crate::LayerOptions::dot_prefix)); directories get a
//!   trailing `/`; the root is written as `./`.
//! * `KIND` is one of `dir`, `file`, `symlink`, `hardlink`, `char`, `block`, `fifo`, `whiteout`
//!   (basename must be `.wh.NAME`), `opaque` (basename must be `.wh..wh..opq`). Whiteouts and
//!   opaque markers are written as empty regular files.
//! * `MODE UID GID` are optional but come together: octal permission bits including the special
//!   bits (`4755`, `1777`), decimal ids up to 2^32-1. Defaults: mode `0755` for `dir`, `0777`
//!   for `symlink`, `0666` for `char`/`block`, `0644` otherwise; uid = gid = 0. (An id of
//!   4294967295 is `(uid_t)-1`, which `chown` reads as "leave unchanged": an unpacked tree shows
//!   0 there. Use 4294967294 as the largest id that survives extraction.)
//!
//! Keys (any order; a key not meaningful for the kind is an error):
//!
//! | key | kinds | meaning |
//! | --- | --- | --- |
//! | `mtime=SEC[.FRACTION]` | all | modification time, up to 9 fraction digits; default [`DEFAULT_MTIME`] |
//! | `content=VALUE` | file | literal content |
//! | `size=N` | file | `N` bytes of pseudo-random content (incompressible) ... |
//! | `seed=N` | file | ... from this seed (default 0) |
//! | `text` (flag) | file | ... as compressible pseudo-text instead |
//! | `target=VALUE` | symlink, hardlink | symlink: the link target, verbatim; hardlink: the absolute fixture path of the target |
//! | `major=N` `minor=N` | char, block | device numbers (default 0) |
//! | `xattr.NAME=VALUE` | all | extended attribute (written as PAX `SCHILY.xattr.NAME`) |
//! | `uname=VALUE` `gname=VALUE` | all | owner names in the header (default empty) |
//! | `pax.KEY=VALUE` | all | an extra PAX record for this entry, written verbatim |
//! | `name=VALUE` | all | write exactly these bytes as the tar name instead (edge cases: `../x`, `a/./b`) |
//! | `linkname=VALUE` | symlink, hardlink | write exactly these bytes as the tar link name |
//!
//! `VALUE` is either bare (up to the next blank) or double-quoted with the escapes `\n`, `\t`,
//! `\r`, `\0`, `\\`, `\"` and `\xHH`. For `content` and `xattr.*`, a bare `0x…` value is hex.
//! A `#` that starts a token (outside quotes) starts a comment; blank lines are ignored.

use std::fmt;

use crate::text;

/// The mtime of entries that do not say `mtime=`.
pub const DEFAULT_MTIME: u64 = 1_700_000_000;

/// What a fixture line describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A directory.
    Dir,
    /// A regular file.
    File,
    /// A symbolic link.
    Symlink,
    /// A hard link to an earlier entry.
    Hardlink,
    /// A character device.
    Char,
    /// A block device.
    Block,
    /// A named pipe.
    Fifo,
    /// A `.wh.NAME` whiteout file.
    Whiteout,
    /// A `.wh..wh..opq` opaque-directory marker.
    Opaque,
}

impl EntryKind {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "dir" => Self::Dir,
            "file" => Self::File,
            "symlink" => Self::Symlink,
            "hardlink" => Self::Hardlink,
            "char" => Self::Char,
            "block" => Self::Block,
            "fifo" => Self::Fifo,
            "whiteout" => Self::Whiteout,
            "opaque" => Self::Opaque,
            _ => return None,
        })
    }

    fn default_mode(self) -> u32 {
        match self {
            Self::Dir => 0o755,
            Self::Symlink => 0o777,
            Self::Char | Self::Block => 0o666,
            _ => 0o644,
        }
    }
}

/// The content of a regular file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// These bytes.
    Literal(Vec<u8>),
    /// `size` incompressible pseudo-random bytes from `seed` ([`text::random_bytes`]).
    Random {
        /// Length in bytes.
        size: u64,
        /// PRNG seed.
        seed: u64,
    },
    /// `size` bytes of compressible pseudo-text from `seed` ([`text::pseudo_text`]).
    Text {
        /// Length in bytes.
        size: u64,
        /// PRNG seed.
        seed: u64,
    },
}

impl Content {
    /// Length in bytes.
    pub fn len(&self) -> u64 {
        match self {
            Self::Literal(b) => b.len() as u64,
            Self::Random { size, .. } | Self::Text { size, .. } => *size,
        }
    }

    /// Whether the content is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends the content to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        match self {
            Self::Literal(b) => out.extend_from_slice(b),
            Self::Random { size, seed } => text::random_bytes_into(out, *size as usize, *seed),
            Self::Text { size, seed } => text::pseudo_text_into(out, *size as usize, *seed),
        }
    }

    /// The content as bytes.
    pub fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len() as usize);
        self.write_to(&mut out);
        out
    }
}

/// One parsed fixture line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FixtureEntry {
    /// Absolute path as written in the fixture (`/` for the root), without a trailing `/`.
    pub path: String,
    /// Entry type.
    pub kind: EntryKind,
    /// Permission and special bits (`0o7777` at most).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, seconds.
    pub mtime: u64,
    /// Modification time, nanoseconds.
    pub mtime_nsec: u32,
    /// File content (empty for everything but files).
    pub content: Content,
    /// Symlink target (verbatim) or hardlink target (absolute fixture path).
    pub target: Option<String>,
    /// Device major number.
    pub major: u32,
    /// Device minor number.
    pub minor: u32,
    /// Extended attributes, in fixture order.
    pub xattrs: Vec<(String, Vec<u8>)>,
    /// Owner name for the header.
    pub uname: Option<String>,
    /// Group name for the header.
    pub gname: Option<String>,
    /// Extra PAX records, in fixture order.
    pub pax: Vec<(String, Vec<u8>)>,
    /// Raw tar name that replaces the one derived from `path`.
    pub raw_name: Option<Vec<u8>>,
    /// Raw tar link name that replaces the one derived from `target`.
    pub raw_linkname: Option<Vec<u8>>,
    /// 1-based line number in the fixture text.
    pub line: usize,
}

impl FixtureEntry {
    fn new(path: String, kind: EntryKind, line: usize) -> Self {
        Self {
            path,
            kind,
            mode: kind.default_mode(),
            uid: 0,
            gid: 0,
            mtime: DEFAULT_MTIME,
            mtime_nsec: 0,
            content: Content::Literal(Vec::new()),
            target: None,
            major: 0,
            minor: 0,
            xattrs: Vec::new(),
            uname: None,
            gname: None,
            pax: Vec::new(),
            raw_name: None,
            raw_linkname: None,
            line,
        }
    }
}

/// A parsed fixture: entries in the order of the text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fixture {
    /// The entries, in order.
    pub entries: Vec<FixtureEntry>,
}

/// A fixture syntax error, with its line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FixtureError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub message: String,
    /// The offending line.
    pub text: String,
}

impl fmt::Display for FixtureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "fixture line {}: {}: `{}`",
            self.line,
            self.message,
            self.text.trim()
        )
    }
}

impl std::error::Error for FixtureError {}

impl Fixture {
    /// Parses fixture text (see the module doc for the grammar).
    pub fn parse(text: &str) -> Result<Fixture, FixtureError> {
        let mut entries = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let err = |message: String| FixtureError {
                line: i + 1,
                message,
                text: line.into(),
            };
            let tokens = tokenize(line).map_err(err)?;
            if tokens.is_empty() {
                continue;
            }
            entries.push(parse_entry(&tokens, i + 1).map_err(err)?);
        }
        Ok(Fixture { entries })
    }

    /// The entry with this path (the last one, if the fixture has several).
    pub fn get(&self, path: &str) -> Option<&FixtureEntry> {
        self.entries.iter().rev().find(|e| e.path == path)
    }
}

/// Splits a line into raw tokens; quotes are kept (and checked to be closed).
fn tokenize(line: &str) -> Result<Vec<String>, String> {
    let mut tokens = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        match chars.peek() {
            None | Some('#') => return Ok(tokens),
            Some(_) => {}
        }
        let mut token = String::new();
        let mut in_quotes = false;
        while let Some(&c) = chars.peek() {
            if !in_quotes && c.is_whitespace() {
                break;
            }
            chars.next();
            token.push(c);
            if c == '"' {
                in_quotes = !in_quotes;
            } else if c == '\\' && in_quotes {
                token.push(chars.next().ok_or("backslash at end of line")?);
            }
        }
        if in_quotes {
            return Err("unclosed quote".into());
        }
        tokens.push(token);
    }
}

/// A value: bare, or double-quoted with escapes. Returns the bytes and whether it was quoted.
fn unquote(raw: &str) -> Result<(Vec<u8>, bool), String> {
    let Some(inner) = raw.strip_prefix('"') else {
        if raw.contains('"') {
            return Err(format!("stray quote in `{raw}`"));
        }
        return Ok((raw.as_bytes().to_vec(), false));
    };
    let inner = inner
        .strip_suffix('"')
        .ok_or_else(|| format!("bad quoting in `{raw}`"))?;
    let mut out = Vec::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '"' {
            return Err(format!("stray quote in `{raw}`"));
        }
        if c != '\\' {
            let mut buf = [0; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            continue;
        }
        match chars.next() {
            Some('n') => out.push(b'\n'),
            Some('t') => out.push(b'\t'),
            Some('r') => out.push(b'\r'),
            Some('0') => out.push(0),
            Some('\\') => out.push(b'\\'),
            Some('"') => out.push(b'"'),
            Some('x') => {
                let hex: String = chars.by_ref().take(2).collect();
                let byte = u8::from_str_radix(&hex, 16)
                    .map_err(|_| format!("bad \\x escape `\\x{hex}` in `{raw}`"))?;
                out.push(byte);
            }
            other => {
                return Err(format!(
                    "unknown escape `\\{}` in `{raw}`",
                    other.unwrap_or(' ')
                ))
            }
        }
    }
    Ok((out, true))
}

fn unquote_string(raw: &str) -> Result<String, String> {
    String::from_utf8(unquote(raw)?.0).map_err(|_| format!("`{raw}` is not UTF-8"))
}

/// A value for `content` and `xattr.*`: a bare `0x…` is hex.
fn unquote_bytes(raw: &str) -> Result<Vec<u8>, String> {
    let (bytes, quoted) = unquote(raw)?;
    match raw.strip_prefix("0x") {
        Some(hex) if !quoted => hex::decode(hex).map_err(|e| format!("bad hex `{raw}`: {e}")),
        _ => Ok(bytes),
    }
}

fn number<T: std::str::FromStr>(what: &str, raw: &str) -> Result<T, String> {
    raw.parse().map_err(|_| format!("bad {what} `{raw}`"))
}

fn parse_mtime(raw: &str) -> Result<(u64, u32), String> {
    let (sec, frac) = raw.split_once('.').unwrap_or((raw, ""));
    let sec = number("mtime", sec)?;
    if frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("bad mtime fraction `{raw}` (at most 9 digits)"));
    }
    let nsec = if frac.is_empty() {
        0
    } else {
        number::<u32>("mtime", frac)?
    };
    Ok((sec, nsec * 10u32.pow(9 - frac.len() as u32)))
}

fn is_number(token: &str) -> bool {
    !token.is_empty() && token.bytes().all(|b| b.is_ascii_digit())
}

fn parse_entry(tokens: &[String], line: usize) -> Result<FixtureEntry, String> {
    let mut path = unquote_string(&tokens[0])?;
    if !path.starts_with('/') {
        return Err(format!("path `{path}` must be absolute"));
    }
    while path.len() > 1 && path.ends_with('/') {
        path.pop();
    }
    let kind_token = tokens.get(1).ok_or("missing entry kind")?;
    let kind =
        EntryKind::parse(kind_token).ok_or_else(|| format!("unknown kind `{kind_token}`"))?;
    let mut e = FixtureEntry::new(path, kind, line);
    let basename = e.path.rsplit('/').next().unwrap_or("");
    match kind {
        EntryKind::Whiteout if !basename.starts_with(".wh.") || basename == ".wh..wh..opq" => {
            return Err("a whiteout's basename must be `.wh.NAME`".into())
        }
        EntryKind::Opaque if basename != ".wh..wh..opq" => {
            return Err("an opaque marker's basename must be `.wh..wh..opq`".into())
        }
        _ => {}
    }

    let mut rest = &tokens[2..];
    let positional = rest.iter().take_while(|t| is_number(t)).count();
    match positional {
        0 => {}
        3 => {
            e.mode = u32::from_str_radix(&rest[0], 8).map_err(|_| "bad octal mode".to_string())?;
            if e.mode > 0o7777 {
                return Err(format!("mode {:o} has bits beyond 07777", e.mode));
            }
            e.uid = number("uid", &rest[1])?;
            e.gid = number("gid", &rest[2])?;
            rest = &rest[3..];
        }
        _ => return Err("MODE UID GID come together (all three or none)".into()),
    }

    let (mut size, mut seed, mut text) = (None, 0u64, false);
    let mut content = None;
    let only = |kinds: &[EntryKind], key: &str| -> Result<(), String> {
        if kinds.contains(&kind) {
            Ok(())
        } else {
            Err(format!("`{key}` does not apply to {kind:?}"))
        }
    };
    use EntryKind::*;
    for token in rest {
        let Some((key, raw)) = token.split_once('=') else {
            match token.as_str() {
                "text" => {
                    only(&[File], "text")?;
                    text = true;
                    continue;
                }
                _ => return Err(format!("unknown flag `{token}`")),
            }
        };
        if let Some(name) = key.strip_prefix("xattr.") {
            e.xattrs.push((name.to_string(), unquote_bytes(raw)?));
            continue;
        }
        if let Some(name) = key.strip_prefix("pax.") {
            e.pax.push((name.to_string(), unquote(raw)?.0));
            continue;
        }
        match key {
            "mtime" => (e.mtime, e.mtime_nsec) = parse_mtime(raw)?,
            "content" => {
                only(&[File], key)?;
                content = Some(unquote_bytes(raw)?);
            }
            "size" => {
                only(&[File], key)?;
                size = Some(number("size", raw)?);
            }
            "seed" => {
                only(&[File], key)?;
                seed = number("seed", raw)?;
            }
            "target" => {
                only(&[Symlink, Hardlink], key)?;
                let target = unquote_string(raw)?;
                if kind == Hardlink && !target.starts_with('/') {
                    return Err("a hardlink target is an absolute fixture path".into());
                }
                e.target = Some(target);
            }
            "major" => {
                only(&[Char, Block], key)?;
                e.major = number("major", raw)?;
            }
            "minor" => {
                only(&[Char, Block], key)?;
                e.minor = number("minor", raw)?;
            }
            "uname" => e.uname = Some(unquote_string(raw)?),
            "gname" => e.gname = Some(unquote_string(raw)?),
            "name" => e.raw_name = Some(unquote(raw)?.0),
            "linkname" => {
                only(&[Symlink, Hardlink], key)?;
                e.raw_linkname = Some(unquote(raw)?.0);
            }
            _ => return Err(format!("unknown key `{key}`")),
        }
    }
    e.content = match (content, size) {
        (Some(_), Some(_)) => return Err("`content` and `size` exclude each other".into()),
        (Some(_), None) | (None, None) if text => return Err("`text` needs `size`".into()),
        (Some(bytes), None) => Content::Literal(bytes),
        (None, Some(size)) if text => Content::Text { size, seed },
        (None, Some(size)) => Content::Random { size, seed },
        (None, None) => Content::Literal(Vec::new()),
    };
    if matches!(kind, Symlink | Hardlink) && e.target.is_none() && e.raw_linkname.is_none() {
        return Err(format!("{kind:?} needs `target=`"));
    }
    Ok(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_examples() {
        let f = Fixture::parse(
            r#"
            # a comment
            /etc                dir   0755 0 0       mtime=1700000000
            /etc/hostname       file  0644 0 0       mtime=1700000000.123456789 content="clip\n"
            /usr/bin/tool       file  4755 0 0       size=100000 seed=7   # trailing comment
            /usr/lib/big.bin    file  0644 1000 1000 size=3000 seed=1 text
            /bin                symlink 0777 0 0     target=usr/bin
            /usr/bin/hl         hardlink target=/usr/bin/tool
            /dev/null           char  0666 0 0 major=1 minor=3
            /tmp/                dir   1777 4294967295 4294967295
            /etc/.wh.hostname   whiteout
            /opt/.wh..wh..opq   opaque
            "/data/a b"         file 0644 0 0 content="x y" xattr.user.k=v xattr.user.bin=0xdeadbeef xattr.user.s="0x\x01"
            "#,
        )
        .unwrap();
        assert_eq!(f.entries.len(), 11);
        let host = f.get("/etc/hostname").unwrap();
        assert_eq!(host.mtime_nsec, 123_456_789);
        assert_eq!(host.content, Content::Literal(b"clip\n".to_vec()));
        assert_eq!(host.line, 4);
        let tool = f.get("/usr/bin/tool").unwrap();
        assert_eq!((tool.mode, tool.content.len()), (0o4755, 100_000));
        assert!(matches!(
            f.get("/usr/lib/big.bin").unwrap().content,
            Content::Text { .. }
        ));
        assert_eq!(f.get("/usr/bin/hl").unwrap().mode, 0o644);
        let tmp = f.get("/tmp").unwrap();
        assert_eq!((tmp.mode, tmp.uid, tmp.gid), (0o1777, u32::MAX, u32::MAX));
        let data = f.get("/data/a b").unwrap();
        assert_eq!(
            data.xattrs,
            vec![
                ("user.k".to_string(), b"v".to_vec()),
                ("user.bin".to_string(), vec![0xde, 0xad, 0xbe, 0xef]),
                ("user.s".to_string(), b"0x\x01".to_vec()),
            ]
        );
        assert_eq!(f.get("/etc").unwrap().mtime_nsec, 0);
        assert_eq!(
            Fixture::parse("/x file mtime=5.5").unwrap().entries[0].mtime_nsec,
            500_000_000
        );
    }

    #[test]
    fn rejects_mistakes_with_the_line_number() {
        for (text, needle) in [
            ("\n/a file 0644 0", "all three"),
            ("\nrel file", "absolute"),
            ("\n/a gadget", "unknown kind"),
            ("\n/a dir content=x", "does not apply"),
            ("\n/a file content=\"x", "unclosed quote"),
            ("\n/a symlink", "needs `target=`"),
            ("\n/a hardlink target=rel", "absolute fixture path"),
            ("\n/a/b whiteout", "`.wh.NAME`"),
            ("\n/a file mtime=1.0123456789", "9 digits"),
            ("\n/a file 0644 4294967296 0", "bad uid"),
            ("\n/a file text", "needs `size`"),
        ] {
            let err = Fixture::parse(text).unwrap_err();
            assert_eq!(err.line, 2, "{text}");
            assert!(
                err.to_string().contains(needle),
                "{err} should mention {needle}"
            );
        }
    }
}
