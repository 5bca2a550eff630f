//! Deterministic generated content: incompressible bytes, compressible pseudo-text, and
//! [`big_text_layer`], a fixture of many text files for large-layer tests.
//!
//! Everything is a pure function of `(size, seed)`, so a test can regenerate the expected bytes
//! of any file instead of storing them.

use std::fmt::Write as _;

/// xorshift64*: tiny, fast, good enough for test data.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for this seed (every seed, 0 included, gives a distinct non-zero state).
    pub fn new(seed: u64) -> Self {
        // splitmix64 of the seed, so that nearby seeds diverge at once.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng((z ^ (z >> 31)) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A value in `0..n` (`n > 0`; slightly biased, which does not matter here).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() >> 32) * n) >> 32
    }
}

/// `size` pseudo-random bytes from `seed`.
pub fn random_bytes(size: usize, seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(size);
    random_bytes_into(&mut out, size, seed);
    out
}

/// Appends `size` pseudo-random bytes from `seed` to `out`.
pub fn random_bytes_into(out: &mut Vec<u8>, size: usize, seed: u64) {
    let mut rng = Rng::new(seed);
    let start = out.len();
    out.resize(start + size, 0);
    for chunk in out[start..].chunks_mut(8) {
        let bytes = rng.next_u64().to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
}

/// `size` bytes of pseudo-text from `seed`: words from a fixed vocabulary, in lines. Gzip
/// compresses it to roughly a third.
pub fn pseudo_text(size: usize, seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(size);
    pseudo_text_into(&mut out, size, seed);
    out
}

/// Appends `size` bytes of pseudo-text from `seed` to `out`.
pub fn pseudo_text_into(out: &mut Vec<u8>, size: usize, seed: u64) {
    let vocabulary = vocabulary();
    let mut rng = Rng::new(seed);
    let end = out.len() + size;
    out.reserve(size);
    while out.len() < end {
        // Each random draw picks four words (10 bits each) and a line-break decision.
        let r = rng.next_u64();
        for i in 0..4 {
            out.extend_from_slice(&vocabulary.words[((r >> (10 * i)) & 1023) as usize]);
            out.push(if i == 3 && r >> 60 == 0 { b'\n' } else { b' ' });
        }
    }
    out.truncate(end);
}

struct Vocabulary {
    /// 1024 words of 2 to 9 letters.
    words: Vec<Vec<u8>>,
}

fn vocabulary() -> &'static Vocabulary {
    static VOCABULARY: std::sync::OnceLock<Vocabulary> = std::sync::OnceLock::new();
    VOCABULARY.get_or_init(|| {
        const SYLLABLES: [&str; 32] = [
            "ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "an", "el", "or", "is", "um", "ba",
            "co", "de", "fi", "ga", "ho", "ju", "pe", "qui", "re", "st", "tra", "ver", "wo", "xy",
            "ze", "ion", "ent", "ly",
        ];
        let mut rng = Rng::new(0x7e57);
        let words = (0..1024)
            .map(|_| {
                let mut w = Vec::new();
                for _ in 0..1 + rng.below(3) {
                    w.extend_from_slice(SYLLABLES[rng.below(32) as usize].as_bytes());
                }
                w
            })
            .collect();
        Vocabulary { words }
    })
}

/// Fixture text (see [`crate::fixture`]) for about `total_bytes` of compressible pseudo-text in
/// many files under `/big`: directories `/big/dNNN` of up to 64 files each, file sizes spread
/// log-uniformly from 512 B to 1 MiB (about 800 files per 100 MB), each file with its own seed derived from `seed`.
/// Deterministic; the content is generated when the layer is built.
pub fn big_text_layer(total_bytes: u64, seed: u64) -> String {
    let mut rng = Rng::new(seed);
    let mut out = String::from("/big dir 0755 0 0\n");
    let (mut written, mut file) = (0u64, 0u64);
    while written < total_bytes {
        if file % 64 == 0 {
            writeln!(out, "/big/d{:03} dir 0755 0 0", file / 64).unwrap();
        }
        // 2^9 .. 2^20 bytes, log-uniform.
        let exponent = 9.0 + 11.0 * (rng.below(1 << 20) as f64 / (1 << 20) as f64);
        let size = (exponent.exp2() as u64).min(total_bytes - written).max(1);
        writeln!(
            out,
            "/big/d{:03}/f{:05}.txt file 0644 0 0 size={size} seed={} text",
            file / 64,
            file,
            rng.next_u64() >> 1
        )
        .unwrap();
        written += size;
        file += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_is_deterministic_and_sized() {
        assert_eq!(random_bytes(13, 1), random_bytes(13, 1));
        assert_ne!(random_bytes(13, 1), random_bytes(13, 2));
        assert_eq!(random_bytes(13, 1).len(), 13);
        let t = pseudo_text(10_001, 3);
        assert_eq!(t.len(), 10_001);
        assert_eq!(t, pseudo_text(10_001, 3));
        assert!(t
            .iter()
            .all(|b| b.is_ascii_lowercase() || *b == b' ' || *b == b'\n'));
        assert!(t.contains(&b'\n'));
        // A prefix of a longer text is the shorter text.
        assert_eq!(&pseudo_text(20_000, 3)[..10_001], &t[..]);
    }

    #[test]
    fn big_text_layer_adds_up() {
        let fixture = crate::Fixture::parse(&big_text_layer(5_000_000, 9)).unwrap();
        let total: u64 = fixture.entries.iter().map(|e| e.content.len()).sum();
        assert_eq!(total, 5_000_000);
        assert_eq!(big_text_layer(5_000_000, 9), big_text_layer(5_000_000, 9));
    }
}
