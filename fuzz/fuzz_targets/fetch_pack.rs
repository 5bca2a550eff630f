//! Fuzzes the startup pack reader (`clip_fetch::RangePack::parse`), which reads packs that come
//! from registries: any bytes give a pack or an error, never a panic, and lookups in a pack
//! that parses stay inside it.
#![no_main]

use clip_fetch::RangePack;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(pack) = RangePack::parse(data.to_vec()) else {
        return;
    };
    // Lookups at and around the first bytes of a few digests never panic.
    for n in 0..4u8 {
        let digest = format!("sha256:{}", "0".repeat(62) + &format!("{n:02x}"));
        for start in [0u64, 1, 7, u64::MAX - 1] {
            for len in [0u64, 1, 100, u64::MAX] {
                let _ = pack.get(&digest, &(start..start.saturating_add(len)));
            }
        }
    }
    assert!(pack.data_len() <= data.len() as u64);
});
