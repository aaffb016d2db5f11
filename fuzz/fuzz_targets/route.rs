#![no_main]
//! The route matcher on arbitrary request targets: a match never leaves its base.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(target) = std::str::from_utf8(data) else { return };
    if let Some(upstream) = tokenproxy::fuzzing::route(target) {
        assert!(
            upstream.starts_with("https://api.example.com/api/") || upstream.starts_with("https://other.example.com/"),
            "{target} -> {upstream}"
        );
    }
});
