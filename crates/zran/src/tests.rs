use super::*;
use std::io::Write;

fn gzip(data: &[u8], level: u32) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// Compressible pseudo-text with some incompressible stretches, deterministic.
fn sample(len: usize, seed: u64) -> Vec<u8> {
    let words: [&[u8]; 8] = [
        b"layer ", b"index ", b"span ", b"clip ", b"\n", b"tar ", b"ok ", b"zran ",
    ];
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if x.is_multiple_of(97) {
            out.extend((0..512).map(|i| (x >> (i % 56)) as u8));
        } else {
            out.extend_from_slice(words[(x % 8) as usize]);
        }
    }
    out.truncate(len);
    out
}

#[derive(Default)]
struct Recorder {
    consumed: Vec<u8>,
    checkpoints_at: Vec<usize>,
}

impl Observer for Recorder {
    fn consumed(&mut self, bytes: &[u8]) {
        self.consumed.extend_from_slice(bytes);
    }
    fn checkpoint(&mut self, cp: &Checkpoint) {
        assert_eq!(cp.compressed_offset as usize, self.consumed.len());
        self.checkpoints_at.push(self.consumed.len());
    }
}

fn index(gz: &[u8], span: u64) -> (Vec<u8>, Vec<Checkpoint>, Recorder) {
    // Read in odd-sized pieces to exercise partial reads.
    let mut inflater = CheckpointingInflater::new(gz, span, Recorder::default()).unwrap();
    let mut out = Vec::new();
    let mut buf = vec![0u8; 7919];
    loop {
        let n = inflater.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    assert_eq!(inflater.total_out(), out.len() as u64);
    let (_, cps, rec) = inflater.finish();
    (out, cps, rec)
}

fn check_every_span(gz: &[u8], data: &[u8], cps: &[Checkpoint]) {
    for (i, cp) in cps.iter().enumerate() {
        let end_out = cps
            .get(i + 1)
            .map_or(data.len() as u64, |n| n.uncompressed_offset);
        let end_in = cps
            .get(i + 1)
            .map_or(gz.len() as u64, |n| n.compressed_offset);
        let input = &gz[cp.compressed_start() as usize..end_in as usize];
        let len = (end_out - cp.uncompressed_offset) as usize;
        let got = inflate_span(cp.bits, &cp.window, input, len).unwrap();
        assert!(
            got == data[cp.uncompressed_offset as usize..end_out as usize],
            "span {i}"
        );
    }
}

#[test]
fn checkpoints_resume_every_span() {
    let data = sample(3_000_000, 1);
    let gz = gzip(&data, 6);
    let (out, cps, rec) = index(&gz, 128 * 1024);
    assert_eq!(out, data);
    assert_eq!(
        rec.consumed, gz,
        "the observer sees every compressed byte, in order"
    );
    assert!(cps.len() > 10, "{} checkpoints", cps.len());
    assert_eq!(cps[0].uncompressed_offset, 0);
    assert!(cps[0].window.is_empty());
    assert!(cps
        .windows(2)
        .all(|w| w[1].uncompressed_offset - w[0].uncompressed_offset >= 128 * 1024));
    assert!(
        cps.iter().any(|c| c.bits > 0),
        "some checkpoints fall mid-byte"
    );
    check_every_span(&gz, &data, &cps);
}

#[test]
fn multi_member_streams_are_crossed() {
    let data = sample(1_500_000, 2);
    let mut gz = Vec::new();
    for part in data.chunks(400_000) {
        gz.extend(gzip(part, 1));
    }
    let (out, cps, _) = index(&gz, 100_000);
    assert_eq!(out, data);
    check_every_span(&gz, &data, &cps);
    // One span read straight across two member boundaries.
    let cp = &cps[1];
    let len = 900_000;
    let got = inflate_span(
        cp.bits,
        &cp.window,
        &gz[cp.compressed_start() as usize..],
        len,
    )
    .unwrap();
    let at = cp.uncompressed_offset as usize;
    assert!(got == data[at..at + len]);
}

#[test]
fn zero_padding_after_the_stream_is_accepted_garbage_is_not() {
    let data = sample(10_000, 3);
    let mut gz = gzip(&data, 6);
    gz.extend([0u8; 1000]);
    let (out, _, rec) = index(&gz, 1 << 20);
    assert_eq!(out, data);
    assert_eq!(rec.consumed.len(), gz.len());

    let mut bad = gzip(&data, 6);
    bad.extend(b"garbage");
    let mut inflater = CheckpointingInflater::new(&bad[..], 1 << 20, ()).unwrap();
    let err = inflater.read_to_end(&mut Vec::new()).unwrap_err();
    assert!(
        err.to_string().contains("after the end of the gzip stream"),
        "{err}"
    );
}

#[test]
fn truncated_and_corrupt_streams_are_errors() {
    let data = sample(200_000, 4);
    let gz = gzip(&data, 6);
    for cut in [1, 10, 11, 100, gz.len() / 2, gz.len() - 9] {
        let mut inflater = CheckpointingInflater::new(&gz[..cut], 1 << 16, ()).unwrap();
        assert!(
            inflater.read_to_end(&mut Vec::new()).is_err(),
            "cut at {cut}"
        );
    }
    let mut corrupt = gz.clone();
    corrupt[gz.len() / 3] ^= 0xff;
    corrupt[gz.len() / 3 + 1] ^= 0x55;
    let mut inflater = CheckpointingInflater::new(&corrupt[..], 1 << 16, ()).unwrap();
    let mut out = Vec::new();
    // Either inflate notices or the gzip CRC does; never the original bytes silently.
    match inflater.read_to_end(&mut out) {
        Err(_) => {}
        Ok(_) => panic!("corruption went unnoticed"),
    }
}

#[test]
fn resumption_rejects_short_input_and_never_panics() {
    let data = sample(2_000_000, 5);
    let gz = gzip(&data, 6);
    let (_, cps, _) = index(&gz, 64 * 1024);
    let cp = &cps[2];
    let start = cp.compressed_start() as usize;
    let err = inflate_span(cp.bits, &cp.window, &gz[start..start + 100], 60_000).unwrap_err();
    assert!(matches!(err, ZranError::Truncated { .. }), "{err}");
    assert!(inflate_span(9, &[], &gz, 10).is_err());
    assert!(inflate_span(0, &vec![0; WINDOW_SIZE + 1], &gz, 10).is_err());
    // Arbitrary bytes as a span: errors are fine, panics are bugs.
    let mut x = 0x9e3779b97f4a7c15u64;
    for round in 0..300 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let len = (x % 4096) as usize;
        let junk: Vec<u8> = (0..len).map(|i| (x >> (i % 57)) as u8 ^ i as u8).collect();
        let _ = inflate_span((round % 8) as u8, &junk[..len.min(100)], &junk, 5000);
    }
}

#[test]
fn incompressible_data_still_gets_checkpoints() {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let data: Vec<u8> = (0..6_000_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    // (zlib-ng/zlib-rs level 1 "quick" deflate writes the whole stream as one block: nothing
    // can be checkpointed inside it. Docker, Go and gzip default to level 6.)
    for level in [6, 9] {
        let gz = gzip(&data, level);
        let (out, cps, _) = index(&gz, 1 << 20);
        assert_eq!(out, data);
        assert!(cps.len() >= 5, "level {level}: {} checkpoints", cps.len());
        check_every_span(&gz, &data, &cps);
    }
}
