//! Fuzzes resumption of gzip inflation from a checkpoint (`clip_zran::inflate_span`) with
//! arbitrary pending bits, dictionary windows and compressed bytes, as a crafted index or a
//! lying registry could hand them to a mount. And the forward, checkpointing pass over
//! arbitrary bytes, as the indexer runs it on a layer blob.
//!
//! Errors are fine, panics are bugs.
#![no_main]

use std::io::Read;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&head, rest)) = data.split_first() else {
        return;
    };
    if head & 0x80 == 0 {
        // [bits, window length (2 bytes), window, compressed...]; ask for up to 256 KiB.
        let bits = head & 0x0f;
        let Some((len, rest)) = rest.split_first_chunk::<2>() else {
            return;
        };
        let window_len = usize::from(u16::from_le_bytes(*len)).min(rest.len());
        let (window, compressed) = rest.split_at(window_len);
        let out_len = (compressed.len() * 8).min(256 * 1024);
        let _ = clip_zran::inflate_span(bits, window, compressed, out_len);
    } else {
        let span = 1 + u64::from(head & 0x7f) * 512;
        if let Ok(mut inflater) = clip_zran::CheckpointingInflater::new(rest, span, ()) {
            let mut sink = vec![0u8; 64 * 1024];
            while let Ok(n @ 1..) = inflater.read(&mut sink) {
                let _ = n;
            }
        }
    }
});
