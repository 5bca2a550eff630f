//! Fuzzes the registry client's parsers of answer headers and small bodies: `WWW-Authenticate`
//! challenges, token responses, `Content-Range`, `Retry-After`, redirect `Location`s (their
//! resolution, and the same-origin rule that decides whether credentials go along) and
//! registry error bodies.
//!
//! Errors are fine, panics are bugs.
//!
//! Input: the whole input is each of these values in turn. For challenges, lines are separate
//! header values; for redirects, the first line is the current URL and the rest the Location
//! (which is also tried against fixed registry URLs); for `Retry-After`, the first 8 bytes
//! are also the current time, and the next 16 the fields of a well-formed HTTP date.
#![no_main]

use std::time::Duration;

use clip_registry::fuzzing;
use libfuzzer_sys::fuzz_target;

const MONTHS: [&str; 13] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec", "Foo",
];

const BASES: [&str; 3] = [
    "https://registry.fuzz/v2/repo/blobs/sha256:0",
    "https://[::1]:5000/v2/a/b/manifests/latest?x=1",
    "http://127.0.0.1:5000/v2/",
];

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);

    let values: Vec<&str> = text.split('\n').collect();
    for challenge in fuzzing::parse_challenges(&values) {
        assert!(!challenge.scheme.is_empty());
        assert_eq!(challenge.scheme, challenge.scheme.to_ascii_lowercase());
        for (name, _) in &challenge.params {
            assert_eq!(*name, name.to_ascii_lowercase());
        }
    }

    if let Ok((token, valid_for)) = fuzzing::parse_token_response(data) {
        assert!(!token.is_empty() && token.bytes().all(|b| b.is_ascii_graphic()));
        assert!(valid_for >= Duration::from_secs(54));
        assert!(valid_for <= Duration::from_secs(86_400 * 365));
    }

    if let Some((first, last, _total)) = fuzzing::parse_content_range(&text) {
        assert!(first <= last);
    }

    let now = data
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_le_bytes);
    let _ = fuzzing::parse_retry_after(&text, now);
    let _ = fuzzing::parse_retry_after_now(&text);
    // A well-formed date with every field anywhere in its type's range: byte mutations seldom
    // grow a year by ten digits, and no new coverage rewards them for it.
    if let Some(fields) = data.get(8..24) {
        let number = |b: &[u8]| b.try_into().map_or(0, u64::from_le_bytes);
        let (year, rest) = (number(&fields[..8]), number(&fields[8..]));
        let month = MONTHS[(rest % 13) as usize];
        let date = format!(
            "Sun, {:02} {month} {year} {:02}:{:02}:{:02} GMT",
            (rest >> 8) % 33,
            (rest >> 16) % 25,
            (rest >> 24) % 61,
            (rest >> 32) % 62,
        );
        let _ = fuzzing::parse_retry_after(&date, now);
    }

    let (current, location) = text.split_once('\n').unwrap_or((BASES[0], &text));
    for base in [current].into_iter().chain(BASES) {
        let Ok((url, same_origin)) = fuzzing::follow_redirect(base, location) else {
            continue;
        };
        let lower = url.to_ascii_lowercase();
        assert!(
            lower.starts_with("http://") || lower.starts_with("https://"),
            "{base} + {location:?} -> {url}"
        );
        assert!(
            !(base.to_ascii_lowercase().starts_with("https:") && lower.starts_with("http:")),
            "downgrade: {base} + {location:?} -> {url}"
        );
        assert!(fuzzing::same_origin(&url, &url), "{url}");
        assert_eq!(same_origin, fuzzing::same_origin(base, &url));
        assert_eq!(same_origin, fuzzing::same_origin(&url, base));
    }

    for status in [400, 401, 403, 404, 429, 500, 503] {
        let _ = fuzzing::error_from_response(status, data).to_string();
    }
});
