//! Fuzzes the startup pack reader, which reads packs that come from registries: any bytes give
//! a pack or an error, never a panic, and lookups in a pack that parses stay inside it — both
//! when the pack is parsed whole (`clip_fetch::RangePack::parse`) and when a mount downloads it
//! and uses it as it arrives (`clip_fetch::PackSource::download`).
#![no_main]

use std::sync::Arc;
use std::time::Duration;

use clip_fetch::testing::MemorySource;
use clip_fetch::{BlobSource, PackSource, RangePack};
use libfuzzer_sys::fuzz_target;

/// Digests whose ranges a pack may hold: the first bytes of the digest vary.
fn digest(n: u8) -> String {
    format!("sha256:{}", "0".repeat(62) + &format!("{n:02x}"))
}

const STARTS: [u64; 4] = [0, 1, 7, u64::MAX - 1];
const LENS: [u64; 4] = [0, 1, 100, u64::MAX];

fuzz_target!(|data: &[u8]| {
    if let Ok(pack) = RangePack::parse(data.to_vec()) {
        // Lookups at and around the first bytes of a few digests never panic.
        for n in 0..4u8 {
            for start in STARTS {
                for len in LENS {
                    let _ = pack.get(&digest(n), &(start..start.saturating_add(len)));
                }
            }
        }
        assert!(pack.data_len() <= data.len() as u64);
    }
    // The same bytes downloaded as a pack: reads answer from it or from the source (which
    // holds nothing else: an error), and never panic, whatever the pack says.
    let source = Arc::new(MemorySource::new());
    let blob = source.insert(data.to_vec());
    let packed = PackSource::without_pack(source, Duration::from_secs(10));
    if packed.download(&blob, data.len() as u64).is_err() {
        return;
    }
    for n in 0..2u8 {
        for start in STARTS {
            for len in LENS {
                let _ = packed.read_range(&digest(n), start..start.saturating_add(len));
            }
        }
    }
});
