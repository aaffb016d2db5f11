#![no_main]
//! The configuration parser and validator on arbitrary text.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        tokenproxy::fuzzing::config(text);
    }
});
