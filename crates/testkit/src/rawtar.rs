//! Tar streams written header by header, for inputs no well-behaved writer produces: header
//! fields with odd spacing or base-256 numbers, signed checksums, sizes on header-only types,
//! V7, GNU and star layouts, hand-made PAX records, missing or broken end-of-archive markers.
//!
//! ```
//! use clip_testkit::{RawHeader, RawTar};
//!
//! let tar = RawTar::new()
//!     .entry(RawHeader::new(b"d/", b'5', 512), b"") // a directory claiming 512 bytes of data
//!     .pax(b'x', &[("path", b"long/name"), ("mtime", b"1.5")])
//!     .entry(RawHeader::new(b"f", b'0', 2), b"hi")
//!     .finish();
//! assert_eq!(tar.len(), 512 * 5 + 1024);
//! ```

use crate::fixture::DEFAULT_MTIME;

/// Offsets of the header fields (ustar layout unless said otherwise).
pub mod field {
    pub const NAME: usize = 0;
    pub const MODE: usize = 100;
    pub const UID: usize = 108;
    pub const GID: usize = 116;
    pub const SIZE: usize = 124;
    pub const MTIME: usize = 136;
    pub const CHKSUM: usize = 148;
    pub const TYPEFLAG: usize = 156;
    pub const LINKNAME: usize = 157;
    pub const MAGIC: usize = 257;
    pub const DEVMAJOR: usize = 329;
    pub const DEVMINOR: usize = 337;
    pub const PREFIX: usize = 345;
    /// star's trailer (`tar\0`).
    pub const STAR_TRAILER: usize = 508;
}

/// One 512-byte header block; the checksum is computed when it is written.
#[derive(Debug, Clone)]
pub struct RawHeader {
    block: [u8; 512],
    signed_checksum: bool,
    checksum: Option<Vec<u8>>,
}

impl RawHeader {
    /// A ustar header (`ustar\0` `00`): mode 0644, owner 0:0, mtime [`DEFAULT_MTIME`].
    pub fn new(name: &[u8], typeflag: u8, size: u64) -> RawHeader {
        let mut h = RawHeader {
            block: [0; 512],
            signed_checksum: false,
            checksum: None,
        };
        h = h
            .field(field::NAME, &name[..name.len().min(100)])
            .field(field::MODE, b"0000644\0")
            .field(field::UID, b"0000000\0")
            .field(field::GID, b"0000000\0")
            .field(field::SIZE, format!("{size:011o}\0").as_bytes())
            .field(field::MTIME, format!("{DEFAULT_MTIME:011o}\0").as_bytes())
            .field(field::MAGIC, b"ustar\x0000");
        h.block[field::TYPEFLAG] = typeflag;
        h
    }

    /// Writes `bytes` at `offset` as they are (no padding, no terminator).
    pub fn field(mut self, offset: usize, bytes: &[u8]) -> RawHeader {
        self.block[offset..offset + bytes.len()].copy_from_slice(bytes);
        self
    }

    /// A numeric field in octal: `width - 1` digits and a NUL.
    pub fn octal(self, offset: usize, width: usize, value: u64) -> RawHeader {
        let digits = format!("{value:0w$o}\0", w = width - 1);
        self.field(offset, digits.as_bytes())
    }

    /// A numeric field in GNU base-256 (two's complement, big-endian, high bit set).
    pub fn base256(self, offset: usize, width: usize, value: i64) -> RawHeader {
        let mut bytes = vec![if value < 0 { 0xff } else { 0 }; width];
        bytes[width - 8..].copy_from_slice(&value.to_be_bytes());
        bytes[0] |= 0x80;
        self.field(offset, &bytes)
    }

    /// The link name field.
    pub fn linkname(self, target: &[u8]) -> RawHeader {
        self.field(field::LINKNAME, target)
    }

    /// Permission bits, octal.
    pub fn mode(self, mode: u32) -> RawHeader {
        self.octal(field::MODE, 8, u64::from(mode))
    }

    /// GNU magic (`ustar ` ` \0`).
    pub fn gnu(self) -> RawHeader {
        self.field(field::MAGIC, b"ustar  \0")
    }

    /// No magic at all: a V7 header.
    pub fn v7(self) -> RawHeader {
        self.field(field::MAGIC, &[0; 8])
    }

    /// Writes the checksum as the signed sum (old writers), not the unsigned one.
    pub fn signed_checksum(mut self) -> RawHeader {
        self.signed_checksum = true;
        self
    }

    /// Writes these bytes in the checksum field instead of a computed checksum.
    pub fn checksum(mut self, raw: &[u8]) -> RawHeader {
        self.checksum = Some(raw.to_vec());
        self
    }

    /// The block, with its checksum.
    pub fn bytes(&self) -> [u8; 512] {
        let mut b = self.block;
        b[field::CHKSUM..field::CHKSUM + 8].fill(b' ');
        let sum: i64 = if self.signed_checksum {
            b.iter().map(|&c| i64::from(c as i8)).sum()
        } else {
            b.iter().map(|&c| i64::from(c)).sum()
        };
        let stored = match &self.checksum {
            Some(raw) => raw.clone(),
            None => format!("{sum:06o}\0 ").into_bytes(),
        };
        let n = stored.len().min(8);
        b[field::CHKSUM..field::CHKSUM + n].copy_from_slice(&stored[..n]);
        b
    }
}

/// A tar stream under construction.
#[derive(Debug, Clone, Default)]
pub struct RawTar {
    bytes: Vec<u8>,
}

impl RawTar {
    pub fn new() -> RawTar {
        RawTar::default()
    }

    /// A header and its data, padded to a block.
    pub fn entry(self, header: RawHeader, data: &[u8]) -> RawTar {
        self.header(header).data(data)
    }

    /// A header block alone.
    pub fn header(mut self, header: RawHeader) -> RawTar {
        self.bytes.extend_from_slice(&header.bytes());
        self
    }

    /// Bytes padded to a block.
    pub fn data(mut self, data: &[u8]) -> RawTar {
        self.bytes.extend_from_slice(data);
        self.bytes.resize(self.bytes.len().next_multiple_of(512), 0);
        self
    }

    /// Bytes as they are.
    pub fn raw(mut self, bytes: &[u8]) -> RawTar {
        self.bytes.extend_from_slice(bytes);
        self
    }

    /// A PAX header (`x`, or `g` for a global one) with these records, lengths computed.
    pub fn pax(self, typeflag: u8, records: &[(&str, &[u8])]) -> RawTar {
        let data = pax_records(records);
        self.entry(
            RawHeader::new(b"PaxHeaders.0/entry", typeflag, data.len() as u64),
            &data,
        )
    }

    /// A GNU `././@LongLink` header: `L` for the next entry's name, `K` for its link name; the
    /// data is written as given (add the NUL yourself).
    pub fn gnu_long(self, typeflag: u8, data: &[u8]) -> RawTar {
        self.entry(
            RawHeader::new(b"././@LongLink", typeflag, data.len() as u64).gnu(),
            data,
        )
    }

    /// The stream with the end-of-archive marker (two zero blocks).
    pub fn finish(mut self) -> Vec<u8> {
        self.bytes.resize(self.bytes.len() + 1024, 0);
        self.bytes
    }

    /// The stream as it is, without an end-of-archive marker.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

/// PAX records: `LEN KEY=VALUE\n`, where LEN counts itself.
pub fn pax_records(records: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (key, value) in records {
        let rest = key.len() + value.len() + 3;
        let mut len = rest + 1;
        while len != rest + len.to_string().len() {
            len = rest + len.to_string().len();
        }
        out.extend_from_slice(format!("{len} {key}=").as_bytes());
        out.extend_from_slice(value);
        out.push(b'\n');
    }
    out
}
