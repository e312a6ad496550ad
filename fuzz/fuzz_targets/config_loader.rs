//! See `wsgate_fuzz::config_loader` (fuzz/src/lib.rs) for the input format and the
//! invariants checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wsgate_fuzz::config_loader(data));
