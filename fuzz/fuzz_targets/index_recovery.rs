//! See `proglog::fuzzing::index_recovery`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    proglog::fuzzing::index_recovery(data);
});
