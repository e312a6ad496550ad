//! See `wsgate_fuzz::ws_decoder` (fuzz/src/lib.rs) for the input format and the
//! invariants checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wsgate_fuzz::ws_decoder(data));
