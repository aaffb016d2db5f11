#![no_main]
//! The token response parser on an arbitrary status and body.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let status = 100 + u16::from_le_bytes([data[0], data[1]]) % 500;
    tokenproxy::fuzzing::token_response(status, &data[2..]);
});
