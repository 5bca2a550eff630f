//! One streaming pass over one layer blob: decompress, walk the tar, take seek checkpoints,
//! hash every span's compressed bytes and uncompressed bytes, and the whole uncompressed stream
//! (the layer's diff_id), all at once.

use std::io::{self, BufReader, Read};

use clip_archive::{Compression, Span, Window};
use clip_zran::{Checkpoint, CheckpointingInflater, Observer};
use sha2::{Digest, Sha256};

use crate::tarwalk::{self, LayerEntry};
use crate::LayerError;

/// What one pass learns about a layer.
#[derive(Debug)]
pub struct LayerIndex {
    pub entries: Vec<LayerEntry>,
    pub spans: Vec<Span>,
    pub uncompressed_size: u64,
    pub compressed_size: u64,
    /// `sha256:<hex>` of the uncompressed tar stream: what the image config's diff_id must be.
    pub diff_id: String,
}

const TAR_BUFFER: usize = 256 * 1024;

/// Indexes one layer from its blob stream. `on_entries` is told the running entry count.
pub fn index_layer<R: Read>(
    blob: R,
    compression: Compression,
    span: u64,
    on_entries: &dyn Fn(u64),
) -> Result<LayerIndex, LayerError> {
    let span = span.max(1);
    match compression {
        Compression::Gzip => index_gzip(blob, span, on_entries),
        Compression::Zstd => index_zstd(blob, span, on_entries),
        Compression::None => index_plain(blob, span, on_entries),
    }
}

fn walk_all<R: Read>(
    mut tar_stream: R,
    on_entries: &dyn Fn(u64),
) -> Result<Vec<LayerEntry>, LayerError> {
    let mut entries = Vec::new();
    tarwalk::walk(&mut tar_stream, |e| {
        entries.push(e);
        if entries.len() % 256 == 0 {
            on_entries(entries.len() as u64);
        }
        Ok(())
    })?;
    on_entries(entries.len() as u64);
    // Whatever follows the end-of-archive marker still belongs to the stream (and to its
    // digest): read it all.
    io::copy(&mut tar_stream, &mut io::sink()).map_err(LayerError::Read)?;
    Ok(entries)
}

/// Hashes the compressed bytes of each gzip span as the inflater consumes them.
#[derive(Default)]
struct GzipSpanHasher {
    current: Option<(u64, Sha256)>,
    position: u64,
    last_byte: u8,
    finished: Vec<(u64, u64, [u8; 32])>,
}

impl Observer for GzipSpanHasher {
    fn consumed(&mut self, bytes: &[u8]) {
        if let Some((_, hasher)) = &mut self.current {
            hasher.update(bytes);
        }
        self.position += bytes.len() as u64;
        if let Some(&b) = bytes.last() {
            self.last_byte = b;
        }
    }

    fn checkpoint(&mut self, checkpoint: &Checkpoint) {
        if let Some((start, hasher)) = self.current.take() {
            self.finished
                .push((start, self.position, hasher.finalize().into()));
        }
        let mut hasher = Sha256::new();
        if checkpoint.bits > 0 {
            // The span starts with the byte that holds the checkpoint's pending bits.
            hasher.update([self.last_byte]);
        }
        self.current = Some((checkpoint.compressed_start(), hasher));
    }
}

impl GzipSpanHasher {
    fn finish(mut self) -> Vec<(u64, u64, [u8; 32])> {
        if let Some((start, hasher)) = self.current.take() {
            self.finished
                .push((start, self.position, hasher.finalize().into()));
        }
        self.finished
    }
}

fn index_gzip<R: Read>(
    blob: R,
    span: u64,
    on_entries: &dyn Fn(u64),
) -> Result<LayerIndex, LayerError> {
    let mut inflater = CheckpointingInflater::new(blob, span, GzipSpanHasher::default())
        .map_err(LayerError::Decompress)?;
    let mut content = GzipContent {
        inflater: &mut inflater,
        whole: Sha256::new(),
        hashed: 0,
        seen: 0,
        current: None,
        digests: Vec::new(),
        windows: Vec::new(),
    };
    let entries = walk_all(
        BufReader::with_capacity(TAR_BUFFER, &mut content),
        on_entries,
    )?;
    let (diff_id, content_digests, windows) = content.finish();
    let uncompressed_size = inflater.total_out();
    let compressed_size = inflater.total_in();
    let (_, checkpoints, hasher) = inflater.finish();
    let digests = hasher.finish();
    if digests.len() != checkpoints.len()
        || content_digests.len() != checkpoints.len()
        || windows.len() != checkpoints.len()
    {
        return Err(LayerError::Decompress(clip_zran::ZranError::Truncated {
            detail: "the gzip stream holds no deflate data".into(),
        }));
    }
    let spans = checkpoints
        .into_iter()
        .zip(digests)
        .zip(content_digests)
        .zip(windows)
        .map(
            |(((cp, (start, end, digest)), content_digest), window)| Span {
                compressed_offset: start,
                compressed_end: end,
                uncompressed_offset: cp.uncompressed_offset,
                bits: cp.bits,
                window,
                digest,
                content_digest,
            },
        )
        .collect();
    Ok(LayerIndex {
        entries,
        spans,
        uncompressed_size,
        compressed_size,
        diff_id,
    })
}

/// The uncompressed side of a gzip pass: hashes the whole stream (the diff_id) and each span's
/// bytes, cutting where the inflater has just taken a checkpoint. A checkpoint taken during a
/// `read` sits at the start or the end of the bytes that `read` returned, so the bytes are
/// hashed up to each new checkpoint, then cut, then the rest. Each new checkpoint's window is
/// packed at once: about 13 KiB kept per checkpoint instead of 32, so indexing memory grows
/// with the image far more slowly.
struct GzipContent<'a, R, O> {
    inflater: &'a mut CheckpointingInflater<R, O>,
    whole: Sha256,
    /// Uncompressed bytes hashed so far.
    hashed: u64,
    /// Checkpoints already cut at.
    seen: usize,
    current: Option<Sha256>,
    digests: Vec<[u8; 32]>,
    windows: Vec<Window>,
}

impl<R: Read, O: clip_zran::Observer> Read for GzipContent<'_, R, O> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inflater.read(buf)?;
        let mut rest = &buf[..n];
        while let Some(cp) = self.inflater.checkpoints_mut().get_mut(self.seen) {
            let at = usize::try_from(cp.uncompressed_offset.saturating_sub(self.hashed))
                .unwrap_or(usize::MAX)
                .min(rest.len());
            let window = Window::new(&std::mem::take(&mut cp.window))
                .map_err(|e| io::Error::other(e.to_string()))?;
            self.windows.push(window);
            let (before, after) = rest.split_at(at);
            self.hash(before);
            rest = after;
            if let Some(done) = self.current.replace(Sha256::new()) {
                self.digests.push(done.finalize().into());
            }
            self.seen += 1;
        }
        self.hash(rest);
        Ok(n)
    }
}

impl<R, O> GzipContent<'_, R, O> {
    fn hash(&mut self, bytes: &[u8]) {
        self.whole.update(bytes);
        if let Some(span) = &mut self.current {
            span.update(bytes);
        }
        self.hashed += bytes.len() as u64;
    }

    /// The diff_id, and the content digest and packed window of every span.
    fn finish(mut self) -> (String, Vec<[u8; 32]>, Vec<Window>) {
        if let Some(done) = self.current.take() {
            self.digests.push(done.finalize().into());
        }
        (sha256_id(self.whole), self.digests, self.windows)
    }
}

fn sha256_id(hasher: Sha256) -> String {
    format!("sha256:{}", hex::encode(hasher.finalize()))
}

/// Cuts a stream into spans at positions chosen by the caller and hashes each span, compressed
/// and uncompressed, and the whole uncompressed stream.
struct SpanCutter {
    start_in: u64,
    start_out: u64,
    hasher: Sha256,
    content: Sha256,
    whole: Sha256,
    spans: Vec<Span>,
}

impl SpanCutter {
    fn new() -> Self {
        SpanCutter {
            start_in: 0,
            start_out: 0,
            hasher: Sha256::new(),
            content: Sha256::new(),
            whole: Sha256::new(),
            spans: Vec::new(),
        }
    }

    /// Uncompressed bytes of the current span.
    fn output(&mut self, bytes: &[u8]) {
        self.content.update(bytes);
        self.whole.update(bytes);
    }

    fn cut(&mut self, at_in: u64, at_out: u64) {
        if at_in == self.start_in {
            return;
        }
        let hasher = std::mem::take(&mut self.hasher);
        let content = std::mem::take(&mut self.content);
        self.spans.push(Span {
            compressed_offset: self.start_in,
            compressed_end: at_in,
            uncompressed_offset: self.start_out,
            bits: 0,
            window: Window::default(),
            digest: hasher.finalize().into(),
            content_digest: content.finalize().into(),
        });
        self.start_in = at_in;
        self.start_out = at_out;
    }

    fn diff_id(&mut self) -> String {
        sha256_id(std::mem::take(&mut self.whole))
    }
}

/// An uncompressed layer: spans every `span` bytes, hashed as the tar walk reads them.
struct PlainSpans<R> {
    inner: R,
    span: u64,
    position: u64,
    cutter: SpanCutter,
}

impl<R: Read> Read for PlainSpans<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let room = self.cutter.start_in + self.span - self.position;
        let want = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.cutter.hasher.update(&buf[..n]);
        self.cutter.output(&buf[..n]);
        self.position += n as u64;
        if self.position - self.cutter.start_in == self.span {
            self.cutter.cut(self.position, self.position);
        }
        Ok(n)
    }
}

fn index_plain<R: Read>(
    blob: R,
    span: u64,
    on_entries: &dyn Fn(u64),
) -> Result<LayerIndex, LayerError> {
    let mut reader = PlainSpans {
        inner: blob,
        span,
        position: 0,
        cutter: SpanCutter::new(),
    };
    let entries = walk_all(
        BufReader::with_capacity(TAR_BUFFER, &mut reader),
        on_entries,
    )?;
    let size = reader.position;
    reader.cutter.cut(size, size);
    Ok(LayerIndex {
        entries,
        diff_id: reader.cutter.diff_id(),
        spans: reader.cutter.spans,
        uncompressed_size: size,
        compressed_size: size,
    })
}

/// A zstd layer: decoded frame by frame; spans are runs of whole frames of at least `span`
/// uncompressed bytes (one span for a single-frame layer).
struct ZstdFrames<R> {
    inner: R,
    dctx: zstd::zstd_safe::DCtx<'static>,
    buf: Box<[u8]>,
    pos: usize,
    len: usize,
    eof: bool,
    total_in: u64,
    total_out: u64,
    in_frame: bool,
    span: u64,
    cutter: SpanCutter,
}

impl<R: Read> Read for ZstdFrames<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        loop {
            if self.pos == self.len && !self.eof {
                self.pos = 0;
                self.len = self.inner.read(&mut self.buf)?;
                self.eof = self.len == 0;
            }
            if self.pos == self.len {
                if self.in_frame {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "zstd stream ends inside a frame after {} bytes",
                            self.total_in
                        ),
                    ));
                }
                return Ok(0);
            }
            let mut input = zstd::zstd_safe::InBuffer::around(&self.buf[self.pos..self.len]);
            let mut output = zstd::zstd_safe::OutBuffer::around(&mut *out);
            let hint = self
                .dctx
                .decompress_stream(&mut output, &mut input)
                .map_err(|code| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "zstd stream is corrupt near compressed offset {}: {}",
                            self.total_in,
                            zstd::zstd_safe::get_error_name(code)
                        ),
                    )
                })?;
            let consumed = input.pos();
            let produced = output.pos();
            self.cutter
                .hasher
                .update(&self.buf[self.pos..self.pos + consumed]);
            self.pos += consumed;
            self.total_in += consumed as u64;
            self.total_out += produced as u64;
            self.cutter.output(&out[..produced]);
            self.in_frame = hint != 0;
            if hint == 0 && self.total_out - self.cutter.start_out >= self.span {
                // A frame ended: a span may end here.
                self.cutter.cut(self.total_in, self.total_out);
            }
            if produced > 0 {
                return Ok(produced);
            }
        }
    }
}

fn index_zstd<R: Read>(
    blob: R,
    span: u64,
    on_entries: &dyn Fn(u64),
) -> Result<LayerIndex, LayerError> {
    let mut reader = ZstdFrames {
        inner: blob,
        dctx: zstd::zstd_safe::DCtx::create(),
        buf: vec![0u8; 128 * 1024].into_boxed_slice(),
        pos: 0,
        len: 0,
        eof: false,
        total_in: 0,
        total_out: 0,
        in_frame: false,
        span,
        cutter: SpanCutter::new(),
    };
    let entries = walk_all(
        BufReader::with_capacity(TAR_BUFFER, &mut reader),
        on_entries,
    )?;
    let (total_in, total_out) = (reader.total_in, reader.total_out);
    reader.cutter.cut(total_in, total_out);
    Ok(LayerIndex {
        entries,
        diff_id: reader.cutter.diff_id(),
        spans: reader.cutter.spans,
        uncompressed_size: total_out,
        compressed_size: total_in,
    })
}
