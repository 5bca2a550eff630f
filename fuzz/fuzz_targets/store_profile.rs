//! Fuzzes the startup profile reader (`clip_store::Profile::parse`), which reads profiles that
//! come from registries: any bytes give a profile or an error, never a panic, and a profile
//! that parses is canonical (written again, it parses to the same profile).
#![no_main]

use clip_store::Profile;
use libfuzzer_sys::fuzz_target;

const DIGEST: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

fuzz_target!(|data: &[u8]| {
    if let Ok(profile) = Profile::parse(data, DIGEST) {
        let again = Profile::parse(&profile.to_json(), DIGEST).expect("a parsed profile reparses");
        assert_eq!(again, profile);
    }
});
