//! See `proglog::fuzzing::segment_recovery`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    proglog::fuzzing::segment_recovery(data);
});
