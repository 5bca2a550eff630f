//! Random access into gzip streams.
//!
//! A gzip layer is one long deflate stream (or several concatenated members): to read byte
//! *N* of its output you normally inflate everything before it. This crate removes that cost
//! in two halves, the classic *zran* technique:
//!
//! * [`CheckpointingInflater`] inflates a gzip stream in one forward pass (it is an
//!   [`std::io::Read`] of the uncompressed bytes) and, every `span` bytes of output, records a
//!   [`Checkpoint`] at a deflate block boundary: the compressed offset, the number of pending
//!   bits in the byte before it, the uncompressed offset and the 32 KiB dictionary window.
//!   Every compressed byte it consumes is reported to a [`Observer`], in order, so the caller
//!   can hash each span's compressed bytes in the same pass.
//! * [`inflate_span`] resumes inflation at a checkpoint from nothing but that checkpoint and
//!   the compressed bytes from its offset onward, crossing gzip member boundaries.
//!
//! Multi-member streams are handled: a new member restarts the deflate state, and a
//! checkpoint right after a member header needs no window.
//!
//! This crate owns the zlib FFI and is the only crate of clip with `unsafe` code; it knows
//! nothing of tar, registries or the archive format.
//!
//! ```
//! use std::io::{Read, Write};
//! # fn gzip(data: &[u8]) -> Vec<u8> {
//! #     let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
//! #     e.write_all(data).unwrap();
//! #     e.finish().unwrap()
//! # }
//! let data: Vec<u8> = (0..400_000u32).flat_map(|i| (i * 7 % 251).to_le_bytes()).collect();
//! let gz = gzip(&data);
//! let mut inflater = clip_zran::CheckpointingInflater::new(&gz[..], 256 * 1024, ()).unwrap();
//! let mut out = Vec::new();
//! inflater.read_to_end(&mut out).unwrap();
//! assert_eq!(out, data);
//! let (_, checkpoints, ()) = inflater.finish();
//! let cp = checkpoints.last().unwrap();
//! let start = cp.compressed_start() as usize;
//! let tail = clip_zran::inflate_span(cp.bits, &cp.window, &gz[start..], 1000).unwrap();
//! let at = cp.uncompressed_offset as usize;
//! assert_eq!(tail, data[at..at + 1000]);
//! ```

use std::io::{self, Read};

use libz_rs_sys as z;

/// Size of the deflate dictionary window: the most a back-reference can reach.
pub const WINDOW_SIZE: usize = 32 * 1024;

const INPUT_CHUNK: usize = 128 * 1024;
/// `windowBits` for zlib: 15 bits, +16 selects the gzip wrapper, negative selects raw deflate.
const GZIP_WINDOW_BITS: i32 = 15 + 16;
const RAW_WINDOW_BITS: i32 = -15;
const GZIP_TRAILER_LEN: usize = 8;

/// Errors of inflation and resumption.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ZranError {
    #[error("gzip stream is corrupt at compressed offset {offset}: {detail}")]
    Corrupt { offset: u64, detail: String },
    #[error("gzip stream ends early: {detail}")]
    Truncated { detail: String },
    #[error("zlib could not be initialised (code {0})")]
    Init(i32),
    #[error("zlib's {call} failed (code {code})")]
    Zlib { call: &'static str, code: i32 },
    #[error("reading the compressed stream failed: {0}")]
    Io(#[from] io::Error),
}

impl From<ZranError> for io::Error {
    fn from(e: ZranError) -> io::Error {
        match e {
            ZranError::Io(e) => e,
            other => io::Error::new(io::ErrorKind::InvalidData, other),
        }
    }
}

/// A point where inflation can resume on its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// Offset in the compressed stream of the first *whole* byte after the block boundary.
    pub compressed_offset: u64,
    /// Number of bits (0..=7) of the byte at `compressed_offset - 1` that belong to the next
    /// block; they are the high bits of that byte.
    pub bits: u8,
    /// Offset in the uncompressed output.
    pub uncompressed_offset: u64,
    /// The last (up to) 32 KiB of output before this point: the dictionary to resume with.
    /// Empty at the start of a gzip member.
    pub window: Vec<u8>,
}

impl Checkpoint {
    /// The first compressed byte resumption needs: the byte holding the pending bits, if any.
    pub fn compressed_start(&self) -> u64 {
        self.compressed_offset - u64::from(self.bits > 0)
    }
}

/// Sees every compressed byte the inflater consumes, in stream order, and each checkpoint
/// right after the bytes that precede it.
pub trait Observer {
    fn consumed(&mut self, _bytes: &[u8]) {}
    fn checkpoint(&mut self, _checkpoint: &Checkpoint) {}
}

impl Observer for () {}

/// Owns a heap-allocated zlib stream (zlib keeps a pointer back to it, so it must not move).
struct Stream(Box<z::z_stream>);

// SAFETY: the stream is only used through `&mut self`; zlib state has no thread affinity.
unsafe impl Send for Stream {}

impl Stream {
    fn new(window_bits: i32) -> Result<Stream, ZranError> {
        let mut strm = Box::new(z::z_stream::default());
        // SAFETY: `strm` is a valid, default-initialised z_stream with its allocator set.
        let rc = unsafe {
            z::inflateInit2_(
                &mut *strm,
                window_bits,
                z::zlibVersion(),
                std::mem::size_of::<z::z_stream>() as i32,
            )
        };
        if rc != z::Z_OK {
            return Err(ZranError::Init(rc));
        }
        Ok(Stream(strm))
    }

    /// One `inflate` call over `input` into `output`; returns (rc, consumed, produced).
    fn inflate(&mut self, input: &[u8], output: &mut [u8], flush: i32) -> (i32, usize, usize) {
        let avail_in = input.len().min(u32::MAX as usize) as u32;
        let avail_out = output.len().min(u32::MAX as usize) as u32;
        self.0.next_in = input.as_ptr();
        self.0.avail_in = avail_in;
        self.0.next_out = output.as_mut_ptr();
        self.0.avail_out = avail_out;
        // SAFETY: next_in/next_out point into live slices of at least avail_in/avail_out bytes.
        let rc = unsafe { z::inflate(&mut *self.0, flush) };
        let consumed = (avail_in - self.0.avail_in) as usize;
        let produced = (avail_out - self.0.avail_out) as usize;
        self.0.next_in = std::ptr::null();
        self.0.next_out = std::ptr::null_mut();
        self.0.avail_in = 0;
        self.0.avail_out = 0;
        (rc, consumed, produced)
    }

    fn reset(&mut self, window_bits: i32) -> Result<(), ZranError> {
        // SAFETY: the stream was initialised by inflateInit2_.
        let rc = unsafe { z::inflateReset2(&mut *self.0, window_bits) };
        if rc != z::Z_OK {
            return Err(ZranError::Init(rc));
        }
        Ok(())
    }

    fn prime(&mut self, bits: u8, value: u8) -> Result<(), ZranError> {
        // SAFETY: the stream was initialised by inflateInit2_.
        let rc = unsafe { z::inflatePrime(&mut *self.0, i32::from(bits), i32::from(value)) };
        if rc != z::Z_OK {
            return Err(ZranError::Init(rc));
        }
        Ok(())
    }

    fn set_dictionary(&mut self, window: &[u8]) -> Result<(), ZranError> {
        if window.is_empty() {
            return Ok(());
        }
        // SAFETY: the pointer and length describe a live slice; the stream is initialised raw.
        let rc =
            unsafe { z::inflateSetDictionary(&mut *self.0, window.as_ptr(), window.len() as u32) };
        if rc != z::Z_OK {
            return Err(ZranError::Init(rc));
        }
        Ok(())
    }

    fn dictionary(&mut self) -> Result<Vec<u8>, ZranError> {
        let mut buf = vec![0u8; WINDOW_SIZE];
        let mut len: u32 = 0;
        // SAFETY: `buf` has room for the largest window zlib keeps (32 KiB for windowBits 15).
        let rc = unsafe { z::inflateGetDictionary(&*self.0, buf.as_mut_ptr(), &mut len) };
        if rc != z::Z_OK {
            // A checkpoint without its window would resume into wrong bytes: fail the pass.
            return Err(ZranError::Zlib {
                call: "inflateGetDictionary",
                code: rc,
            });
        }
        buf.truncate((len as usize).min(WINDOW_SIZE));
        Ok(buf)
    }

    fn data_type(&self) -> i32 {
        self.0.data_type
    }

    fn message(&self) -> String {
        if self.0.msg.is_null() {
            return "invalid deflate data".to_string();
        }
        // SAFETY: zlib sets `msg` to a static NUL-terminated string.
        unsafe { std::ffi::CStr::from_ptr(self.0.msg) }
            .to_string_lossy()
            .into_owned()
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        // SAFETY: the stream was initialised by inflateInit2_ and is ended exactly once.
        unsafe {
            z::inflateEnd(&mut *self.0);
        }
    }
}

/// Bits of `z_stream.data_type` after an inflate call with `Z_BLOCK`.
const DT_BLOCK_BOUNDARY: i32 = 128;
const DT_LAST_BLOCK: i32 = 64;
const DT_PENDING_BITS: i32 = 7;

/// Inflates a gzip stream forward, recording checkpoints every `span` output bytes.
pub struct CheckpointingInflater<R, O = ()> {
    inner: R,
    observer: O,
    stream: Stream,
    span: u64,
    buf: Box<[u8]>,
    pos: usize,
    len: usize,
    eof: bool,
    done: bool,
    total_in: u64,
    total_out: u64,
    last_checkpoint: Option<u64>,
    checkpoints: Vec<Checkpoint>,
    members: u64,
}

impl<R: Read, O: Observer> CheckpointingInflater<R, O> {
    /// `span` is the minimum distance, in uncompressed bytes, between checkpoints (the first
    /// one sits at offset 0, right after the gzip header).
    pub fn new(inner: R, span: u64, observer: O) -> Result<Self, ZranError> {
        Ok(CheckpointingInflater {
            inner,
            observer,
            stream: Stream::new(GZIP_WINDOW_BITS)?,
            span: span.max(1),
            buf: vec![0u8; INPUT_CHUNK].into_boxed_slice(),
            pos: 0,
            len: 0,
            eof: false,
            done: false,
            total_in: 0,
            total_out: 0,
            last_checkpoint: None,
            checkpoints: Vec::new(),
            members: 0,
        })
    }

    /// Compressed bytes consumed so far.
    pub fn total_in(&self) -> u64 {
        self.total_in
    }

    /// Uncompressed bytes produced so far.
    pub fn total_out(&self) -> u64 {
        self.total_out
    }

    /// Number of gzip members completed so far.
    pub fn members(&self) -> u64 {
        self.members
    }

    /// The observer, e.g. to read what it accumulated.
    pub fn observer_mut(&mut self) -> &mut O {
        &mut self.observer
    }

    /// The checkpoints taken so far. A checkpoint taken during a `read` sits at the start or
    /// the end of the bytes that `read` returned. Mutable, so that a caller can take the
    /// windows away as they come (to pack them, say) instead of keeping every one until
    /// [`CheckpointingInflater::finish`].
    pub fn checkpoints_mut(&mut self) -> &mut [Checkpoint] {
        &mut self.checkpoints
    }

    /// Ends the pass: the underlying reader, the observer and the checkpoints.
    pub fn finish(self) -> (R, Vec<Checkpoint>, O) {
        (self.inner, self.checkpoints, self.observer)
    }

    fn fill(&mut self) -> io::Result<()> {
        if self.pos < self.len || self.eof {
            return Ok(());
        }
        self.pos = 0;
        self.len = 0;
        loop {
            match self.inner.read(&mut self.buf) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(());
                }
                Ok(n) => {
                    self.len = n;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn consume(&mut self, n: usize) {
        if n > 0 {
            self.observer.consumed(&self.buf[self.pos..self.pos + n]);
            self.pos += n;
            self.total_in += n as u64;
        }
    }

    /// After a member ends: is another gzip member next? Trailing zero padding (written by
    /// some tools) ends the stream; anything else that is not a gzip header is an error.
    fn another_member(&mut self) -> io::Result<bool> {
        self.fill()?;
        if self.pos >= self.len {
            return Ok(false);
        }
        if self.buf[self.pos] == 0x1f {
            return Ok(true);
        }
        // Trailing bytes: accept zero padding only; it is consumed so the observer sees it.
        loop {
            self.fill()?;
            if self.pos >= self.len {
                return Ok(false);
            }
            let chunk = &self.buf[self.pos..self.len];
            if let Some(i) = chunk.iter().position(|&b| b != 0) {
                return Err(ZranError::Corrupt {
                    offset: self.total_in + i as u64,
                    detail: "unexpected bytes after the end of the gzip stream".into(),
                }
                .into());
            }
            let n = self.len - self.pos;
            self.consume(n);
        }
    }
}

impl<R: Read, O: Observer> Read for CheckpointingInflater<R, O> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() || self.done {
            return Ok(0);
        }
        loop {
            self.fill()?;
            let input = &self.buf[self.pos..self.len];
            let (rc, consumed, produced) = self.stream.inflate(input, out, z::Z_BLOCK);
            self.consume(consumed);
            self.total_out += produced as u64;
            match rc {
                z::Z_OK | z::Z_BUF_ERROR => {}
                z::Z_STREAM_END => {
                    self.members += 1;
                    if self.another_member()? {
                        self.stream.reset(GZIP_WINDOW_BITS)?;
                    } else {
                        self.done = true;
                        return Ok(produced);
                    }
                }
                z::Z_NEED_DICT => {
                    return Err(ZranError::Corrupt {
                        offset: self.total_in,
                        detail: "deflate stream asks for a preset dictionary".into(),
                    }
                    .into())
                }
                _ => {
                    return Err(ZranError::Corrupt {
                        offset: self.total_in,
                        detail: self.stream.message(),
                    }
                    .into())
                }
            }
            let dt = self.stream.data_type();
            if rc != z::Z_STREAM_END
                && dt & DT_BLOCK_BOUNDARY != 0
                && dt & DT_LAST_BLOCK == 0
                && self
                    .last_checkpoint
                    .is_none_or(|last| self.total_out - last >= self.span)
            {
                let checkpoint = Checkpoint {
                    compressed_offset: self.total_in,
                    bits: (dt & DT_PENDING_BITS) as u8,
                    uncompressed_offset: self.total_out,
                    window: self.stream.dictionary()?,
                };
                self.observer.checkpoint(&checkpoint);
                self.last_checkpoint = Some(self.total_out);
                self.checkpoints.push(checkpoint);
            }
            if produced > 0 {
                return Ok(produced);
            }
            if rc == z::Z_BUF_ERROR && self.eof && self.pos >= self.len {
                return Err(ZranError::Truncated {
                    detail: format!(
                        "compressed input ended after {} bytes inside a deflate stream",
                        self.total_in
                    ),
                }
                .into());
            }
        }
    }
}

/// Inflates `output_len` bytes starting at a checkpoint.
///
/// `input` must start at the checkpoint's [`Checkpoint::compressed_start`] and hold at least
/// the compressed bytes that produce `output_len` bytes (a whole span, or more). `bits` and
/// `window` are the checkpoint's. Gzip member boundaries inside `input` are crossed.
pub fn inflate_span(
    bits: u8,
    window: &[u8],
    input: &[u8],
    output_len: usize,
) -> Result<Vec<u8>, ZranError> {
    if bits > 7 {
        return Err(ZranError::Corrupt {
            offset: 0,
            detail: format!("checkpoint has {bits} pending bits (at most 7)"),
        });
    }
    if window.len() > WINDOW_SIZE {
        return Err(ZranError::Corrupt {
            offset: 0,
            detail: format!(
                "checkpoint window of {} bytes (at most 32 KiB)",
                window.len()
            ),
        });
    }
    let mut stream = Stream::new(RAW_WINDOW_BITS)?;
    let mut input = input;
    let mut in_offset = 0u64;
    if bits > 0 {
        let Some((&first, rest)) = input.split_first() else {
            return Err(ZranError::Truncated {
                detail: "no compressed bytes at the checkpoint".into(),
            });
        };
        stream.prime(bits, first >> (8 - bits))?;
        input = rest;
        in_offset = 1;
    }
    stream.set_dictionary(window)?;

    let mut out = vec![0u8; output_len];
    let mut filled = 0usize;
    // The span starts inside a member's raw deflate data; later members carry gzip headers.
    let mut raw = true;
    while filled < output_len {
        let (rc, consumed, produced) = stream.inflate(input, &mut out[filled..], z::Z_NO_FLUSH);
        input = &input[consumed..];
        in_offset += consumed as u64;
        filled += produced;
        match rc {
            z::Z_OK => {}
            z::Z_STREAM_END => {
                if filled == output_len {
                    break;
                }
                // End of a member: skip the raw stream's gzip trailer (a gzip-mode stream
                // checked and consumed its own), then let zlib parse the next member's header.
                if raw {
                    if input.len() < GZIP_TRAILER_LEN {
                        return Err(ZranError::Truncated {
                            detail: "compressed bytes end inside a gzip trailer".into(),
                        });
                    }
                    input = &input[GZIP_TRAILER_LEN..];
                    in_offset += GZIP_TRAILER_LEN as u64;
                }
                stream.reset(GZIP_WINDOW_BITS)?;
                raw = false;
            }
            z::Z_BUF_ERROR => {
                if input.is_empty() {
                    return Err(ZranError::Truncated {
                        detail: format!(
                            "span input of {in_offset} bytes produced only {filled} of {output_len} bytes"
                        ),
                    });
                }
            }
            _ => {
                return Err(ZranError::Corrupt {
                    offset: in_offset,
                    detail: stream.message(),
                })
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
