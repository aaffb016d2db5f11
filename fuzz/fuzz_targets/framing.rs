#![no_main]
//! The HTTP/1 framing reader on arbitrary bytes, read in two pieces cut anywhere:
//! no panic, and the same verdicts as reading them whole.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tokenproxy::fuzzing::framing(data));
